"""What POST /sdapi/v1/txt2img and /sdapi/v1/img2img share: the request fields they have in common
(`GenerationApiRequest`) checked and mapped the same way, the job submitted and waited for, and
A1111's `{images, parameters, info}` answer.

Each route module maps its own fields (txt2img's hires fix, img2img's images and mask) and calls the
pieces here in order: `apply_infotext`, `refuse_unsupported`, `prompts`, `checked_overrides`,
`common_request_fields`, `submission`; then `submit_and_wait`.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from pydantic import ValidationError

from modules.api.callers import operators_only
from modules.api.errors import bad_request, describe_validation_error, exception_to_api_error
from modules.api.images import encode_png
from modules.api.routes_models import api_setting_errors
from modules.api.schemas import GenerationApiRequest
from modules.api.state import require_running_queue
from modules.extension_host.scripts import ScriptSelection
from modules.generation.engine import GenerationRequest, PromptTooLongError, check_prompt_length
from modules.serving.generation_service import (
    FinishedGeneration,
    GenerationSubmission,
    finished_generation,
    submit_generation,
)
from modules.serving.accounts import SHARED_USER, User
from modules.serving.settings import validate_changes
from modules.serving.settings_change import change_user_choices
from modules.serving.user_choices import USER_CHOICE_KEYS

log = logging.getLogger(__name__)

ATELIER_VERSION = "atelier"

# Settings a request may not override (yet), with the way to get the same effect.
UNSUPPORTED_OVERRIDES = {
    "sd_vae": "a per-request VAE is not supported yet; choose the VAE with POST /sdapi/v1/options {\"sd_vae\": ...}",
}

# img2img's infotext keys that A1111 keeps in `extra_generation_params` (Processed.js() shows them).
IMG2IMG_EXTRA_KEYS = ("Denoising strength", "Image CFG scale", "Conditional mask weight", "Mask mode", "Mask blur",
                      "Inpaint area", "Masked area padding", "Masked content", "Noise multiplier")


@dataclass(frozen=True)
class PreparedGeneration:
    """A validated API request: the body as sent (with its infotext applied), and what goes to the
    generation service."""

    body: GenerationApiRequest
    submission: GenerationSubmission

    @property
    def generation(self) -> GenerationRequest:
        return self.submission.request


def apply_infotext(body: GenerationApiRequest, current_settings, *, img2img: bool = False,
                   upscaler_names: Sequence[str] | None = None) -> GenerationApiRequest:
    """A1111's `infotext` field, read as the paste button reads it
    (`modules.generation.infotext_fields`, with img2img's keys for an img2img request): the
    parameters it holds fill the fields the request left unset, and its setting fields become
    overrides unless equal to the current value or already overridden. A value Atelier cannot use
    is a 422 naming its key. `upscaler_names`: the upscaler library's names a "Hires upscaler" may give."""
    if not body.infotext:
        return body
    from modules.generation.infotext_fields import read_infotext

    reading = read_infotext(body.infotext, current_settings, img2img=img2img, mask_defaults=False,
                            upscaler_names=upscaler_names)
    if reading.problems:
        raise bad_request("infotext: " + "; ".join(reading.problems))
    given = body.model_dump(exclude_unset=True)
    filled = {name: value for name, value in reading.values.items() if name not in given}
    overrides = {**reading.overrides, **(body.override_settings or {})}
    try:
        return type(body).model_validate({**filled, **given, "override_settings": overrides or None})
    except ValidationError as e:
        raise bad_request(f"infotext: {describe_validation_error(e)}") from None


def refuse_unsupported(body: GenerationApiRequest) -> None:
    """The shared fields Atelier cannot honour yet: a 422 naming the field, never silently ignored."""
    def refuse(field: str, why: str) -> None:
        raise bad_request(f"{field}: {why}")

    if body.restore_faces:
        refuse("restore_faces", "face restoration is not available in Atelier; send false or leave it out")
    if body.refiner_checkpoint not in (None, "", "None"):
        refuse("refiner_checkpoint", f"the refiner is not supported yet (got {body.refiner_checkpoint!r}); "
                                     "leave it out")
    if body.s_churn:
        refuse("s_churn", f"sigma churn is not supported yet (got {body.s_churn}); send 0 or leave it out")
    if body.s_noise not in (None, 1, 1.0):
        refuse("s_noise", f"only 1.0 is supported (got {body.s_noise})")
    if body.s_min_uncond:
        refuse("s_min_uncond", f"skipping the negative prompt at low sigma is not supported yet "
                               f"(got {body.s_min_uncond}); send 0 or leave it out")


def prompts(body: GenerationApiRequest, context) -> tuple[str, str]:
    """The prompt and negative prompt with the request's styles applied (and extra networks removed
    with `disable_extra_networks`), checked against the `prompt_max_length` setting."""
    prompt, negative = body.prompt, body.negative_prompt
    if body.styles:
        try:
            prompt, negative = context.prompt_styles.styled_prompts(prompt, negative, body.styles)
        except ValueError as error:
            raise bad_request(str(error)) from None
    if body.disable_extra_networks:
        from modules.networks.syntax import parse_prompt

        prompt = parse_prompt(prompt)[0]
    try:  # before the overrides: the length, not an override the request may not make, is what is wrong
        check_prompt_length(prompt, negative, context.settings.current()["prompt_max_length"])
    except PromptTooLongError as error:
        raise bad_request(str(error)) from None
    return prompt, negative


def script_selection(body: GenerationApiRequest, context, *, is_img2img: bool = False) -> ScriptSelection | None:
    """`script_name`, `script_args` and `alwayson_scripts` as the request's ScriptSelection, from
    the txt2img or the img2img tab's scripts; a name this server does not have is a 422 that says
    where the list is."""
    runtime = getattr(context, "extensions", None)
    if runtime is None:
        why = "no extensions are loaded in this server (started with --disable-all-extensions?)"
        if body.script_name:
            raise bad_request(f"script_name: script {body.script_name!r} not found; {why}")
        if body.alwayson_scripts:
            raise bad_request(f"alwayson_scripts: always-on script {next(iter(body.alwayson_scripts))!r} not "
                              f"found; {why}")
        return None
    try:
        selection = runtime.scripts.selection_from_api(body.script_name, body.script_args, body.alwayson_scripts,
                                                       is_img2img=is_img2img)
    except ValueError as error:
        raise bad_request(f"{error}; GET /sdapi/v1/scripts lists the scripts") from None
    if body.infotext:
        # A1111: the infotext also sets the always-on scripts' controls it names (their infotext_fields).
        from modules.extension_host.paste_fields import infotext_script_args
        from modules.outputs.infotext import parse_generation_parameters

        from_infotext = infotext_script_args(runtime.scripts, parse_generation_parameters(body.infotext),
                                             selection.alwayson_args, is_img2img=is_img2img)
        if from_infotext:
            selection = replace(selection, alwayson_args={**selection.alwayson_args, **from_infotext})
    return selection


def checked_overrides(body: GenerationApiRequest, context) -> dict[str, Any]:
    """`override_settings`, validated as POST /options validates them; a checkpoint override is
    resolved to its title (404 when there is none by that name)."""
    overrides = dict(body.override_settings or {})
    for key, why in UNSUPPORTED_OVERRIDES.items():
        if key in overrides:
            raise bad_request(f"override_settings.{key}: {why}")
    checkpoints = context.checkpoints
    errors = api_setting_errors(context, overrides)
    if errors:
        raise bad_request("override_settings: " + "; ".join(errors))
    clean = validate_changes(overrides, context.settings.specs_by_key())  # ValueError naming key and rule -> 422
    wanted = clean.get("sd_model_checkpoint")
    if wanted:
        # CheckpointNotFoundError -> 404; a file known not to load -> 422 (BrokenCheckpointError)
        clean["sd_model_checkpoint"] = checkpoints.check_loadable(checkpoints.find(wanted)).title
        # The field, not the stored setting, decides for this request (A1111's API default is true).
        clean["override_settings_restore_afterwards"] = body.override_settings_restore_afterwards
    return clean


def common_request_fields(body: GenerationApiRequest, prompt: str, negative: str,
                          overrides: dict[str, Any]) -> dict[str, Any]:
    """The `GenerationRequest` fields both routes map the same way (A1111's API defaults applied)."""
    resize = body.seed_resize_from_w > 0 and body.seed_resize_from_h > 0
    return dict(
        prompt=prompt,
        negative_prompt=negative,
        styles=tuple(body.styles or ()),
        seed=body.seed,
        subseed=body.subseed,
        subseed_strength=body.subseed_strength,
        seed_resize_from_w=body.seed_resize_from_w if resize else 0,
        seed_resize_from_h=body.seed_resize_from_h if resize else 0,
        sampler_name=body.sampler_name or body.sampler_index,
        scheduler=body.scheduler or "Automatic",
        steps=body.steps,
        cfg_scale=body.cfg_scale,
        width=body.width,
        height=body.height,
        batch_size=body.batch_size,
        n_iter=body.n_iter,
        eta=body.eta,
        tiling=bool(body.tiling),
        denoising_strength=0.75 if body.denoising_strength is None else body.denoising_strength,
        override_settings=overrides,
    )


def submission(body: GenerationApiRequest, generation: GenerationRequest, overrides: dict[str, Any],
               selection: ScriptSelection | None) -> GenerationSubmission:
    """The job as the generation service takes it. A1111's API saves samples and grids only with
    `save_images` (do_not_save_grid = not save_images)."""
    keep = {} if body.override_settings_restore_afterwards else {
        k: v for k, v in overrides.items() if k != "override_settings_restore_afterwards"}
    return GenerationSubmission(generation, selection=selection,
                                save=body.save_images and not body.do_not_save_samples,
                                save_grid=body.save_images, keep_overrides=keep)


def log_unknown_fields(route: str, body: GenerationApiRequest) -> None:
    if body.model_extra:
        log.info("%s: ignoring fields Atelier does not know: %s", route, ", ".join(sorted(body.model_extra)))


def build_response(context, prepared: PreparedGeneration, job, *,
                   hidden_parameters: frozenset[str] = frozenset()) -> dict[str, Any]:
    """A1111's `{images, parameters, info}`; `info` is the JSON text of Processed.js().
    `hidden_parameters`: request fields echoed as null (img2img's images, unless asked for)."""
    if job.exception is not None:
        raise exception_to_api_error(job.exception)
    finished = finished_generation(context.settings.current(), prepared.submission, job)
    encoded = ([encode_png(image, text) for image, text in zip(finished.images, finished.infotexts)]
               if prepared.body.send_images else [])
    info = processed_info(prepared, job, finished)
    parameters = prepared.body.model_dump(exclude=set(prepared.body.model_extra or ()))
    parameters.update(dict.fromkeys(hidden_parameters & parameters.keys()))
    return {"images": encoded, "parameters": parameters, "info": json.dumps(info, ensure_ascii=False)}


def processed_info(prepared: PreparedGeneration, job, finished: FinishedGeneration) -> dict[str, Any]:
    from modules.outputs.infotext import parse_generation_parameters
    from modules.generation.requests import Img2ImgRequest
    from modules.generation.sampling.registry import resolve_sampler

    generation, result = prepared.generation, finished.result
    # What the images were made with, read back from their infotext (the override checkpoint may
    # already have been swapped back when the job returns).
    used = parse_generation_parameters(result.infotexts[0]) if result.infotexts else {}
    sampler, _ = resolve_sampler(generation.sampler_name)
    seeds, subseeds = result.seeds or [generation.seed], result.subseeds or [generation.subseed]
    started = dt.datetime.fromtimestamp(job.started_at or job.created_at)
    img2img = isinstance(generation, Img2ImgRequest)
    return {
        "prompt": result.prompts[0] if result.prompts else generation.prompt,
        "all_prompts": list(result.prompts),
        "negative_prompt": result.negative_prompts[0] if result.negative_prompts else generation.negative_prompt,
        "all_negative_prompts": list(result.negative_prompts),
        "seed": seeds[0],
        "all_seeds": list(seeds),
        "subseed": subseeds[0],
        "all_subseeds": list(subseeds),
        "subseed_strength": generation.subseed_strength,
        "width": generation.width,
        "height": generation.height,
        "sampler_name": sampler.name,
        "cfg_scale": generation.cfg_scale,
        "steps": generation.steps,
        "batch_size": generation.batch_size,
        "restore_faces": False,
        "face_restoration_model": None,
        "sd_model_name": used.get("Model"),
        "sd_model_hash": used.get("Model hash"),
        "sd_vae_name": used.get("VAE"),
        "sd_vae_hash": used.get("VAE hash"),
        "seed_resize_from_w": prepared.body.seed_resize_from_w,
        "seed_resize_from_h": prepared.body.seed_resize_from_h,
        "denoising_strength": generation.denoising_strength,
        "extra_generation_params": {key: used[key] for key in IMG2IMG_EXTRA_KEYS if key in used} if img2img else {},
        "index_of_first_image": finished.index_of_first_image,
        "infotexts": finished.infotexts,
        "styles": list(generation.styles),
        "job_timestamp": started.strftime("%Y%m%d%H%M%S"),
        "clip_skip": int(used.get("Clip skip", 1)),
        # The engine writes "Conditional mask weight" whenever an inpainting checkpoint got its
        # mask and masked-image channels (A1111's is_using_inpainting_conditioning).
        "is_using_inpainting_conditioning": img2img and "Conditional mask weight" in used,
        "version": ATELIER_VERSION,
        # Atelier's additions: which job made the images, and what went wrong on the way.
        "job_id": job.id,
        "interrupted": result.interrupted or job.state.value == "interrupted",
        "warnings": list(result.warnings),
    }


def submit_and_wait(context, state, prepared: PreparedGeneration, *,
                    hidden_parameters: frozenset[str] = frozenset(), user: User = SHARED_USER) -> dict[str, Any]:
    """Queue the prepared request as `user`'s job (FIFO with every other job; between the users of
    a shared server, in turns), wait for it, answer as A1111. A user at their limit of waiting jobs
    gets `QueueFullError` (429)."""
    require_running_queue(context.jobs)
    prepared, own_choices = for_user(context, prepared, user)
    job = submit_generation(context, prepared.submission)
    if prepared.body.force_task_id:
        state.client_task_ids.remember(prepared.body.force_task_id, job.id, owner=user.owner)
    job.wait()
    if own_choices and job.state.value == "done":
        change_user_choices(context, user, own_choices, api=True)
    return build_response(context, prepared, job, hidden_parameters=hidden_parameters)


def for_user(context, prepared: PreparedGeneration, user: User) -> tuple[PreparedGeneration, dict[str, Any]]:
    """`prepared` as `user`'s job, and the overrides to keep as their own choices once it has run.

    `override_settings_restore_afterwards=false` makes the overrides the settings (A1111). On a
    server shared with `--multi-user` those are global, so for a user who is not an operator the
    request may keep only their own checkpoint and clip skip (stored as their choices, as
    `POST /options` would); any other kept key is refused (403) before the job is queued."""
    submission = replace(prepared.submission, owner=user.owner)
    kept = dict(submission.keep_overrides)
    if user.admin or not kept:
        return replace(prepared, submission=submission), {}
    global_keys = sorted(key for key in kept if key not in USER_CHOICE_KEYS)
    if global_keys:
        raise operators_only(f"keeping override_settings {global_keys} as the global settings "
                             "(override_settings_restore_afterwards=false)",
                             "send override_settings_restore_afterwards=true (the default) to use them for this "
                             "request only")
    return replace(prepared, submission=replace(submission, keep_overrides={})), kept
