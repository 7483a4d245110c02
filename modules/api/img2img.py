"""POST /sdapi/v1/img2img: A1111's request mapped onto an `Img2ImgRequest`, run as a job.

As txt2img (`modules.api.txt2img`, with which it shares `modules.api.generation_api`): A1111's field
names and API defaults (Euler, 50 steps, denoising 0.75, 512x512 whatever the image's size; for
inpainting fill, Only masked, padding 0), one job on the queue, `{images, parameters, info}` back.
What img2img adds:

- `init_images` and `mask` are base64 (a `data:image/...;base64,` prefix is allowed) or http(s)
  URLs fetched behind the SSRF guard of `modules.api.images` when `api_enable_requests` allows. Each
  is decoded with a size limit on the text and on the pixels, turned upright by its EXIF
  orientation; a bad one is a 422 naming it (`init_images[1]`, `mask`). No init image is A1111's
  404 "Init image not found".
- `mask_blur` (when not null) sets both blur axes; `latent_mask` is accepted only as null (A1111
  never decodes it either).
- What the engine refuses while running (an empty mask, an inpainting checkpoint without a mask)
  comes back as a 422 with its message; what it did to the input (a mask of another size resized)
  is in `info.warnings`.
- `parameters.init_images` and `parameters.mask` are null unless `include_init_images`.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import ValidationError

from modules.api import generation_api as shared
from modules.serving.accounts import caller
from modules.api.errors import bad_request, describe_validation_error, not_found
from modules.api.generation_api import PreparedGeneration
from modules.api.images import MAX_API_IMAGE_PIXELS, PixelBudget, decode_input_image
from modules.api.schemas import ImageToImageResponse, Img2ImgApiRequest
from modules.generation.requests import Img2ImgRequest
from modules.serving.accounts import SHARED_USER, User

# All images of one request together: the largest image the API takes and a mask of its size.
MAX_REQUEST_PIXELS = 2 * MAX_API_IMAGE_PIXELS

# Echoed as null in `parameters` unless the request sets include_init_images (A1111).
IMAGE_PARAMETERS = frozenset({"init_images", "mask"})


def _refuse_unsupported(body: Img2ImgApiRequest) -> None:
    shared.refuse_unsupported(body)
    if body.latent_mask is not None:
        raise bad_request("latent_mask: a separate mask for the latent blend is not supported (A1111 takes the "
                          "field but never uses it); send null or leave it out, and put the area in `mask`")


def _images(body: Img2ImgApiRequest, settings) -> tuple[list, Any]:
    """The decoded init images and mask (None without one); each failure a 422 naming its field.
    Counted first: more images than the batch is refused before any is decoded (A1111's rule,
    which Img2ImgRequest checks too), and the pixels of all of them share one budget."""
    count, batch = len(body.init_images), max(body.batch_size, 1)
    if count > batch:
        raise bad_request(f"init_images: {count} images for a batch of {batch}; send one image (used for every "
                          "image of the batch) or at most batch_size images")
    budget = PixelBudget(MAX_REQUEST_PIXELS)
    images = [decode_input_image(value, settings, field=f"init_images[{index}]", budget=budget)
              for index, value in enumerate(body.init_images)]
    mask = decode_input_image(body.mask, settings, field="mask", budget=budget) if body.mask else None
    return images, mask


def prepare(body: Img2ImgApiRequest, context) -> PreparedGeneration:
    """Validate `body`, decode its images and map it onto an `Img2ImgRequest`; raises ApiError
    (404 without an init image, 422 for bad input)."""
    shared.log_unknown_fields("img2img", body)
    if not body.init_images:  # A1111's 404, before anything else is looked at
        raise not_found("Init image not found: send init_images as a list of base64 images (or URLs)",
                        name="HTTPException")
    settings = context.settings.current()
    body = shared.apply_infotext(body, settings, img2img=True)
    _refuse_unsupported(body)
    prompt, negative = shared.prompts(body, context)
    overrides = shared.checked_overrides(body, context)
    images, mask = _images(body, settings)
    blur_x, blur_y = (body.mask_blur, body.mask_blur) if body.mask_blur is not None else \
        (body.mask_blur_x, body.mask_blur_y)
    try:
        generation = Img2ImgRequest(
            **shared.common_request_fields(body, prompt, negative, overrides),
            init_images=images,
            resize_mode=body.resize_mode,
            image_cfg_scale=body.image_cfg_scale,
            initial_noise_multiplier=body.initial_noise_multiplier,
            mask=mask,
            mask_blur_x=blur_x,
            mask_blur_y=blur_y,
            mask_round=body.mask_round,
            inpainting_fill=body.inpainting_fill,
            inpaint_full_res=body.inpaint_full_res,
            inpaint_full_res_padding=body.inpaint_full_res_padding,
            inpainting_mask_invert=body.inpainting_mask_invert,
        )
    except ValidationError as e:
        raise bad_request(describe_validation_error(e)) from None
    selection = shared.script_selection(body, context, is_img2img=True)
    return PreparedGeneration(body, shared.submission(body, generation, overrides, selection))


def submit_and_wait(context, state, body: Img2ImgApiRequest, user: User = SHARED_USER) -> dict[str, Any]:
    prepared = prepare(body, context)
    hidden = frozenset() if body.include_init_images else IMAGE_PARAMETERS
    return shared.submit_and_wait(context, state, prepared, hidden_parameters=hidden, user=user)


def build_router(context, state) -> APIRouter:
    router = APIRouter(prefix="/sdapi/v1", tags=["generation"])

    @router.post("/img2img", response_model=ImageToImageResponse)
    async def img2img(body: Img2ImgApiRequest, request: Request) -> dict[str, Any]:
        """A1111's img2img and inpainting with its API defaults (Euler, 50 steps, 512x512, denoising
        0.75; with a mask: fill, Only masked, padding 0; nothing saved unless `save_images`).
        Requests run one at a time in arrival order with txt2img's; `info.job_id` names the job."""
        user = caller(context, request)
        return await state.blocking(lambda: submit_and_wait(context, state, body, user))

    return router
