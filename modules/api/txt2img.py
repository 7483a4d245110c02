"""POST /sdapi/v1/txt2img: A1111's request mapped onto the one `GenerationRequest`, run as a job.

The mapping is explicit, field by field, and applies A1111's API defaults (Euler through
`sampler_index`, 50 steps, denoising 0.75, images not saved). What Atelier cannot do yet (face
restoration, refiner, hires with another checkpoint/sampler/prompt, scripts) is refused with 422 and
a message naming the field, never silently ignored. The handler submits to the job queue and waits
in a worker thread, so the event loop stays free and requests run in FIFO order.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter
from pydantic import ValidationError

from modules.api.errors import bad_request, describe_validation_error, exception_to_api_error
from modules.api.images import encode_png
from modules.api.routes_models import api_setting_errors
from modules.api.schemas import TextToImageResponse, Txt2ImgApiRequest
from modules.api.state import require_running_queue
from modules.api.styles import apply_styles, read_styles
from modules.generation.engine import GenerationRequest, GenerationResult, PromptTooLongError, check_prompt_length
from modules.extension_host.scripts import ScriptSelection, run_txt2img
from modules.serving.settings import validate_changes

log = logging.getLogger(__name__)

ATELIER_VERSION = "atelier"

# "Use same ..." values A1111's UI sends for the hires fields; None and "" mean the same.
_SAME = {"hr_checkpoint_name": "Use same checkpoint", "hr_sampler_name": "Use same sampler",
         "hr_scheduler": "Use same scheduler"}

# Infotext field -> request field, for `infotext` (A1111 fills only the fields the request did not set).
_INFOTEXT_FIELDS = {
    "Prompt": "prompt", "Negative prompt": "negative_prompt", "Steps": "steps", "Sampler": "sampler_name",
    "Schedule type": "scheduler", "CFG scale": "cfg_scale", "Seed": "seed", "Size-1": "width", "Size-2": "height",
    "Variation seed": "subseed", "Variation seed strength": "subseed_strength",
    "Seed resize from-1": "seed_resize_from_w", "Seed resize from-2": "seed_resize_from_h",
    "Denoising strength": "denoising_strength", "Hires upscale": "hr_scale", "Hires upscaler": "hr_upscaler",
    "Hires steps": "hr_second_pass_steps", "Hires resize-1": "hr_resize_x", "Hires resize-2": "hr_resize_y",
}
# Infotext field -> setting, as per-request overrides (A1111's `infotext=` option labels).
_INFOTEXT_SETTINGS = {"Clip skip": "CLIP_stop_at_last_layers", "ENSD": "eta_noise_seed_delta",
                      "RNG": "randn_source", "Emphasis": "emphasis", "Pad conds": "pad_cond_uncond",
                      "Pad conds v0": "pad_cond_uncond_v0"}
_INT_SETTINGS = {"CLIP_stop_at_last_layers", "eta_noise_seed_delta"}
_BOOL_SETTINGS = {"pad_cond_uncond", "pad_cond_uncond_v0"}

# Settings a request may not override (yet), with the way to get the same effect.
_UNSUPPORTED_OVERRIDES = {
    "sd_vae": "a per-request VAE is not supported yet; choose the VAE with POST /sdapi/v1/options {\"sd_vae\": ...}",
}


@dataclass(frozen=True)
class PreparedTxt2Img:
    """A validated API request: the core request, and what the handler does around the job."""

    body: Txt2ImgApiRequest
    generation: GenerationRequest
    save: bool
    persist_overrides: dict[str, Any]  # override_settings_restore_afterwards=false: kept after the job
    settings: Mapping[str, Any]  # the snapshot in effect (grid layout of the returned grid)
    selection: ScriptSelection | None = None


def apply_infotext(body: Txt2ImgApiRequest, current_settings) -> Txt2ImgApiRequest:
    """A1111's `infotext` field: the parameters it holds fill the fields the request left unset, and
    its setting fields become overrides unless equal to the current value or already overridden."""
    if not body.infotext:
        return body
    from modules.outputs.infotext import parse_generation_parameters

    params = parse_generation_parameters(body.infotext)
    given = body.model_dump(exclude_unset=True)
    filled = {field: params[key] for key, field in _INFOTEXT_FIELDS.items() if key in params and field not in given}
    if "enable_hr" not in given and "Denoising strength" in params and any(
            key in params for key in ("Hires upscale", "Hires upscaler")):
        filled["enable_hr"] = True
    overrides = dict(body.override_settings or {})
    for key, setting in _INFOTEXT_SETTINGS.items():
        if key not in params or setting in overrides:
            continue
        value = params[key]
        if setting in _INT_SETTINGS:
            try:
                value = int(value)
            except (TypeError, ValueError):
                raise bad_request(f"infotext: {key} {value!r} is not a whole number") from None
        elif setting in _BOOL_SETTINGS:
            value = str(value).lower() == "true"
        if current_settings.get(setting) != value:
            overrides[setting] = value
    try:
        return Txt2ImgApiRequest.model_validate({**filled, **given, "override_settings": overrides or None})
    except ValidationError as e:
        raise bad_request(f"infotext: {describe_validation_error(e)}") from None


def _refuse_unsupported(body: Txt2ImgApiRequest) -> None:
    def refuse(field: str, why: str) -> None:
        raise bad_request(f"{field}: {why}")

    if body.restore_faces:
        refuse("restore_faces", "face restoration is not available in Atelier; send false or leave it out")
    if body.refiner_checkpoint not in (None, "", "None"):
        refuse("refiner_checkpoint", f"the refiner is not supported yet (got {body.refiner_checkpoint!r}); "
                                     "leave it out")
    if body.firstpass_image:
        refuse("firstpass_image", "a first-pass image is not supported yet; leave it out")
    if body.s_churn:
        refuse("s_churn", f"sigma churn is not supported yet (got {body.s_churn}); send 0 or leave it out")
    if body.s_noise not in (None, 1, 1.0):
        refuse("s_noise", f"only 1.0 is supported (got {body.s_noise})")
    if body.s_min_uncond:
        refuse("s_min_uncond", f"skipping the negative prompt at low sigma is not supported yet "
                               f"(got {body.s_min_uncond}); send 0 or leave it out")
    sampler = body.sampler_name or body.sampler_index
    for field, same in _SAME.items():
        value = getattr(body, field)
        if value in (None, "", same) or (field == "hr_sampler_name" and value == sampler) \
                or (field == "hr_scheduler" and value == (body.scheduler or "Automatic")):
            continue
        refuse(field, f"a different {field.removeprefix('hr_').removesuffix('_name')} for the hires pass is not "
                      f"supported yet (got {value!r}); leave it out or send {same!r}")
    for field, base in (("hr_prompt", body.prompt), ("hr_negative_prompt", body.negative_prompt)):
        value = getattr(body, field)
        if value and value != base:
            refuse(field, "a separate hires prompt is not supported yet; leave it empty")


def script_selection(body: Txt2ImgApiRequest, context) -> ScriptSelection | None:
    """`script_name`, `script_args` and `alwayson_scripts` as the request's ScriptSelection; a name
    this server does not have is a 422 that says where the list is."""
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
        return runtime.scripts.selection_from_api(body.script_name, body.script_args, body.alwayson_scripts)
    except ValueError as error:
        raise bad_request(f"{error}; GET /sdapi/v1/scripts lists the scripts") from None


def _checked_overrides(body: Txt2ImgApiRequest, context) -> dict[str, Any]:
    overrides = dict(body.override_settings or {})
    for key, why in _UNSUPPORTED_OVERRIDES.items():
        if key in overrides:
            raise bad_request(f"override_settings.{key}: {why}")
    checkpoints = context.checkpoints
    errors = api_setting_errors(context, overrides)
    if errors:
        raise bad_request("override_settings: " + "; ".join(errors))
    clean = validate_changes(overrides)  # ValueError naming key and rule -> 422
    wanted = clean.get("sd_model_checkpoint")
    if wanted:
        # CheckpointNotFoundError -> 404; a file known not to load -> 422 (BrokenCheckpointError)
        clean["sd_model_checkpoint"] = checkpoints.check_loadable(checkpoints.find(wanted)).title
        # The field, not the stored setting, decides for this request (A1111's API default is true).
        clean["override_settings_restore_afterwards"] = body.override_settings_restore_afterwards
    return clean


def prepare(body: Txt2ImgApiRequest, context) -> PreparedTxt2Img:
    """Validate `body` and map it onto a `GenerationRequest`; raises ApiError (422/404)."""
    if body.model_extra:
        log.info("txt2img: ignoring fields Atelier does not know: %s", ", ".join(sorted(body.model_extra)))
    body = apply_infotext(body, context.settings.current())
    _refuse_unsupported(body)
    prompt, negative = body.prompt, body.negative_prompt
    if body.styles:
        prompt, negative = apply_styles(prompt, negative, body.styles,
                                        read_styles(context.paths.data_dir / "styles.csv"))
    if body.disable_extra_networks:
        from modules.networks.syntax import parse_prompt

        prompt = parse_prompt(prompt)[0]
    try:
        check_prompt_length(prompt, negative, context.settings.current()["prompt_max_length"])
    except PromptTooLongError as error:
        raise bad_request(str(error)) from None
    overrides = _checked_overrides(body, context)
    resize = body.seed_resize_from_w > 0 and body.seed_resize_from_h > 0
    try:
        generation = GenerationRequest(
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
            enable_hr=body.enable_hr,
            hr_scale=body.hr_scale,
            hr_upscaler=body.hr_upscaler or "Latent",
            hr_second_pass_steps=body.hr_second_pass_steps,
            hr_resize_x=body.hr_resize_x,
            hr_resize_y=body.hr_resize_y,
            denoising_strength=0.75 if body.denoising_strength is None else body.denoising_strength,
            override_settings=overrides,
        )
    except ValidationError as e:
        raise bad_request(describe_validation_error(e)) from None
    persist = {} if body.override_settings_restore_afterwards else {
        k: v for k, v in overrides.items() if k != "override_settings_restore_afterwards"}
    return PreparedTxt2Img(body, generation, save=body.save_images and not body.do_not_save_samples,
                           persist_overrides=persist, selection=script_selection(body, context),
                           settings=context.settings.current().with_overrides(overrides))


def run_job(prepared: PreparedTxt2Img, context, control) -> GenerationResult:
    """The work function: on the worker thread, with the GPU to itself."""
    generation = prepared.generation
    control.set_info("job_count", generation.n_iter)
    if "sd_model_checkpoint" not in generation.override_settings:
        # The loaded model; with none (start-up load skipped or failed, or unloaded), the start-up
        # choice, loaded as A1111 does on first use (a 404 or a 422 that says why when none loads).
        context.load_default_model()
    result = run_txt2img(context, generation, control, save=prepared.save, selection=prepared.selection)
    if prepared.persist_overrides:
        # override_settings_restore_afterwards=false: the overrides become the settings (A1111).
        persisted = dict(prepared.persist_overrides)
        info = context.models.current_info()
        if "sd_model_checkpoint" in persisted and info is not None:
            persisted["sd_model_checkpoint"] = info.title
            persisted["sd_checkpoint_hash"] = info.sha256 or ""
        context.settings.apply(persisted)
    return result


def build_response(prepared: PreparedTxt2Img, job, result: GenerationResult | None) -> dict[str, Any]:
    """A1111's `{images, parameters, info}`; `info` is the JSON text of Processed.js()."""
    if job.exception is not None:
        raise exception_to_api_error(job.exception)
    result = result or GenerationResult()
    generation = prepared.generation
    infotexts = list(result.infotexts)
    images = list(zip(result.images, infotexts))
    index_of_first_image = result.index_of_first_image
    script_ran = prepared.selection is not None and prepared.selection.script is not None
    if prepared.save and len(result.images) > 1 and not script_ran:
        # A1111 returns the grid first when it makes one (only when saving, for the API).
        from modules.outputs.images import image_grid

        settings = prepared.settings
        grid = image_grid(result.images, batch_size=generation.batch_size, n_rows=settings["n_rows"],
                          prevent_empty_spots=settings["grid_prevent_empty_spots"])
        images.insert(0, (grid, infotexts[0]))
        infotexts.insert(0, infotexts[0])
        index_of_first_image = 1
    encoded = [encode_png(image, text) for image, text in images] if prepared.body.send_images else []
    # The queue keeps the last jobs' results for status queries; the pictures are the client's now,
    # and 100 batches of them would pin gigabytes.
    result.images.clear()
    info = processed_info(prepared, job, result, infotexts, index_of_first_image)
    parameters = prepared.body.model_dump(exclude=set(prepared.body.model_extra or ()))
    return {"images": encoded, "parameters": parameters, "info": json.dumps(info, ensure_ascii=False)}


def processed_info(prepared: PreparedTxt2Img, job, result: GenerationResult, infotexts: list[str],
                   index_of_first_image: int) -> dict[str, Any]:
    from modules.outputs.infotext import parse_generation_parameters
    from modules.generation.sampling.registry import resolve_sampler

    generation = prepared.generation
    # What the images were made with, read back from their infotext (the override checkpoint may
    # already have been swapped back when the job returns).
    used = parse_generation_parameters(result.infotexts[0]) if result.infotexts else {}
    sampler, _ = resolve_sampler(generation.sampler_name)
    seeds, subseeds = result.seeds or [generation.seed], result.subseeds or [generation.subseed]
    started = dt.datetime.fromtimestamp(job.started_at or job.created_at)
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
        "extra_generation_params": {},
        "index_of_first_image": index_of_first_image,
        "infotexts": infotexts,
        "styles": list(generation.styles),
        "job_timestamp": started.strftime("%Y%m%d%H%M%S"),
        "clip_skip": int(used.get("Clip skip", 1)),
        "is_using_inpainting_conditioning": False,
        "version": ATELIER_VERSION,
        # Atelier's additions: which job made the images, and what went wrong on the way.
        "job_id": job.id,
        "interrupted": result.interrupted or job.state.value == "interrupted",
        "warnings": list(result.warnings),
    }


def submit_and_wait(context, state, body: Txt2ImgApiRequest) -> dict[str, Any]:
    prepared = prepare(body, context)
    require_running_queue(context.jobs)
    generation = prepared.generation
    description = f"{generation.prompt[:60]!r} {generation.width}x{generation.height}, {generation.steps} steps"
    job = context.jobs.submit(lambda control: run_job(prepared, context, control), kind="txt2img",
                              description=description)
    if body.force_task_id:
        state.client_task_ids.remember(body.force_task_id, job.id)
    job.wait()
    return build_response(prepared, job, job.result)


def build_router(context, state) -> APIRouter:
    router = APIRouter(prefix="/sdapi/v1", tags=["generation"])

    @router.post("/txt2img", response_model=TextToImageResponse)
    async def txt2img(body: Txt2ImgApiRequest) -> dict[str, Any]:
        """A1111's txt2img with its API defaults (Euler, 50 steps, nothing saved unless
        `save_images`). Requests run one at a time in arrival order; `info.job_id` names the job."""
        return await state.blocking(lambda: submit_and_wait(context, state, body))

    return router
