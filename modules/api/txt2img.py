"""POST /sdapi/v1/txt2img: A1111's request mapped onto the one `GenerationRequest`, run as a job.

The mapping is explicit, field by field, and applies A1111's API defaults (Euler through
`sampler_index`, 50 steps, denoising 0.75, images not saved). What Atelier cannot do yet (face
restoration, refiner, hires with another checkpoint/sampler/prompt) is refused with 422 and a
message naming the field, never silently ignored. What txt2img shares with img2img (the common
fields, overrides, scripts, the answer) lives in `modules.api.generation_api`. The handler submits
to the job queue and waits in a worker thread, so the event loop stays free and requests run in
FIFO order.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import ValidationError

from modules.api import generation_api as shared
from modules.serving.accounts import caller
from modules.api.errors import bad_request, describe_validation_error
from modules.api.generation_api import PreparedGeneration
from modules.api.schemas import TextToImageResponse, Txt2ImgApiRequest
from modules.generation.engine import GenerationRequest
from modules.serving.accounts import SHARED_USER, User

# Kept under its old name: a prepared txt2img request is a PreparedGeneration.
PreparedTxt2Img = PreparedGeneration

# "Use same ..." values A1111's UI sends for the hires fields Atelier cannot vary yet; None and ""
# mean the same. (`hr_sampler_name` is the request's: "Use same sampler" there means the first pass's.)
_SAME = {"hr_checkpoint_name": "Use same checkpoint", "hr_scheduler": "Use same scheduler"}


def apply_infotext(body: Txt2ImgApiRequest, current_settings, upscalers=None) -> Txt2ImgApiRequest:
    """A1111's `infotext` field for txt2img (see `generation_api.apply_infotext`); its "Hires
    upscaler" may name any of `upscalers`' (the upscaler library's) names."""
    names = upscalers.registry.names() if upscalers is not None else None
    return shared.apply_infotext(body, current_settings, upscaler_names=names)


def _refuse_unsupported(body: Txt2ImgApiRequest) -> None:
    shared.refuse_unsupported(body)

    def refuse(field: str, why: str) -> None:
        raise bad_request(f"{field}: {why}")

    if body.firstpass_image:
        refuse("firstpass_image", "a first-pass image is not supported yet; leave it out")
    for field, same in _SAME.items():
        value = getattr(body, field)
        if value in (None, "", same) or (field == "hr_scheduler" and value == (body.scheduler or "Automatic")):
            continue
        refuse(field, f"a different {field.removeprefix('hr_').removesuffix('_name')} for the hires pass is not "
                      f"supported yet (got {value!r}); leave it out or send {same!r}")
    for field, base in (("hr_prompt", body.prompt), ("hr_negative_prompt", body.negative_prompt)):
        value = getattr(body, field)
        if value and value != base:
            refuse(field, "a separate hires prompt is not supported yet; leave it empty")


def prepare(body: Txt2ImgApiRequest, context) -> PreparedGeneration:
    """Validate `body` and map it onto a `GenerationRequest`; raises ApiError (422/404)."""
    shared.log_unknown_fields("txt2img", body)
    body = apply_infotext(body, context.settings.current(), getattr(context, "upscalers", None))
    _refuse_unsupported(body)
    prompt, negative = shared.prompts(body, context)
    overrides = shared.checked_overrides(body, context)
    try:
        generation = GenerationRequest(
            **shared.common_request_fields(body, prompt, negative, overrides),
            enable_hr=body.enable_hr,
            hr_scale=body.hr_scale,
            hr_upscaler=body.hr_upscaler or "Latent",
            hr_sampler_name=body.hr_sampler_name,
            hr_second_pass_steps=body.hr_second_pass_steps,
            hr_resize_x=body.hr_resize_x,
            hr_resize_y=body.hr_resize_y,
        )
    except ValidationError as e:
        raise bad_request(describe_validation_error(e)) from None
    selection = shared.script_selection(body, context)
    return PreparedGeneration(body, shared.submission(body, generation, overrides, selection))


def submit_and_wait(context, state, body: Txt2ImgApiRequest, user: User = SHARED_USER) -> dict[str, Any]:
    return shared.submit_and_wait(context, state, prepare(body, context), user=user)


def build_router(context, state) -> APIRouter:
    router = APIRouter(prefix="/sdapi/v1", tags=["generation"])

    @router.post("/txt2img", response_model=TextToImageResponse)
    async def txt2img(body: Txt2ImgApiRequest, request: Request) -> dict[str, Any]:
        """A1111's txt2img with its API defaults (Euler, 50 steps, nothing saved unless
        `save_images`). Requests run one at a time in arrival order (between the users of a shared
        server, in turns); `info.job_id` names the job."""
        user = caller(context, request)
        return await state.blocking(lambda: submit_and_wait(context, state, body, user))

    return router
