"""Running a generation request as a job: what the txt2img and img2img tabs, `/sdapi/v1/txt2img`,
`/sdapi/v1/img2img` and the X/Y/Z plot (a script run by any of them) share, so they cannot drift
apart, as `modules.merging.service` does for merges.

- `submit_generation` turns a `GenerationSubmission` into a job on the queue. The job loads the
  start-up checkpoint when none is loaded (unless the request overrides the checkpoint), runs the
  request with the extensions' scripts of its tab (`run_txt2img`, or `run_img2img` for an
  `Img2ImgRequest`), and keeps the overrides the API asked to keep. The job's kind is "txt2img" or
  "img2img" (`job_kind`): a tab's Interrupt button without a job of its own stops only its kind.
- With `--multi-user` a submission carries its `owner` (modules.serving.accounts): the job is theirs
  (only they and operators see and stop it), its images go to their folders (`outputs/<user>/...`),
  and it runs with their checkpoint, VAE and clip skip (modules.serving.user_choices): the job loads
  their checkpoint (the model manager keeps its cache), uses their VAE for its duration and their
  clip skip as an override. A choice the request makes itself (`override_settings`) wins.
- `finished_generation` turns the finished job into what every caller shows: the images with their
  infotexts, the grid first when A1111 would return one, and the job's images released (the queue
  keeps the last jobs for status queries, and a hundred finished batches would pin gigabytes).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from modules.generation.engine import GenerationRequest, GenerationResult, check_prompt_length
from modules.generation.requests import Img2ImgRequest, check_hires_upscaler

if TYPE_CHECKING:
    from modules.extension_host.scripts import ScriptSelection
    from modules.serving.app_context import AppContext
    from modules.serving.jobs import Job, JobControl

GENERATION_JOB_KIND = "txt2img"
IMG2IMG_JOB_KIND = "img2img"


def job_kind(request: GenerationRequest) -> str:
    """The queue's kind for a job running `request`."""
    return IMG2IMG_JOB_KIND if isinstance(request, Img2ImgRequest) else GENERATION_JOB_KIND


@dataclass(frozen=True)
class GenerationSubmission:
    """One request as a caller hands it over.

    `save`: None follows the `samples_save` setting (the web UI); the API says (its `save_images`).
    `save_grid`: whether a grid may be made and returned (A1111's `do_not_save_grid` negated; the API
    ties it to `save_images`). `keep_overrides`: settings to store once the job has run (the API's
    `override_settings_restore_afterwards=false`).
    """

    request: GenerationRequest
    selection: ScriptSelection | None = None
    save: bool | None = None
    save_grid: bool = True
    keep_overrides: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    # The user of a --multi-user server who submits it (None: the shared user of a single-user server).
    owner: str | None = None

    def describe(self) -> str:
        """A short job description for the queue and the console."""
        prompt = " ".join(self.request.prompt.split())
        return (prompt[:60] + "…") if len(prompt) > 60 else prompt


@dataclass
class FinishedGeneration:
    """A finished generation job as the callers show it. `images[i]` goes with `infotexts[i]`; with a
    grid first, it carries the first image's infotext, seed and subseed (A1111's gallery).
    `images` is empty for a job that failed before making any."""

    images: list = field(default_factory=list)
    infotexts: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    subseeds: list[int] = field(default_factory=list)
    index_of_first_image: int = 0
    result: GenerationResult = field(default_factory=GenerationResult)  # prompts, warnings


def submit_generation(context: AppContext, submission: GenerationSubmission) -> Job:
    """Queue `submission` on the job queue and return its job at once. A prompt over the
    `prompt_max_length` setting raises `PromptTooLongError` (a ValueError), a hires upscaler that is
    not listed a ValueError naming the choices; nothing is queued then."""
    request = submission.request
    check_prompt_length(request.prompt, request.negative_prompt, context.settings.current()["prompt_max_length"])
    check_hires_upscaler(request, getattr(context, "upscalers", None))
    submission = for_owner(context, submission)
    queued = {"kind": job_kind(request), "description": submission.describe(), "owner": submission.owner,
              "expected_steps": expected_steps(request)}
    if context.cluster is not None:  # Ray workers: the job's work waits on them (modules.cluster.pool)
        cluster = context.cluster
        return context.jobs.submit(lambda control: cluster.run_generation(submission, control), **queued)
    return context.jobs.submit(lambda control: run_generation(context, submission, control), **queued)


def expected_steps(request: GenerationRequest) -> int:
    """About the steps the job will report, for the wait estimate of the jobs behind it."""
    steps = max(1, int(request.steps))
    hires_steps = 0
    if getattr(request, "enable_hr", False):  # the second pass takes the first's steps unless set
        hires_steps = int(getattr(request, "hr_second_pass_steps", 0) or 0) or steps
    return (steps + hires_steps) * max(1, int(request.n_iter))


def for_owner(context: AppContext, submission: GenerationSubmission) -> GenerationSubmission:
    """The submission as its owner's job runs it on a --multi-user server: their output folders and
    clip skip as overrides (see the module docstring); unchanged on a single-user server."""
    owner = submission.owner
    if owner is None or not context.accounts.multi_user:
        return submission
    from modules.outputs.output_paths import user_output_overrides

    request = submission.request
    snapshot = context.settings.current().with_overrides(request.override_settings)
    overrides = dict(request.override_settings)
    # Folders always the owner's, whatever the request asked (a request's folder moves under theirs).
    overrides.update(user_output_overrides(snapshot, owner, context.paths.data_dir))
    choices = context.user_choices.effective(owner, context.settings.current())
    overrides.setdefault("CLIP_stop_at_last_layers", choices["CLIP_stop_at_last_layers"])
    if context.cluster is not None:  # a Ray worker loads what the request names
        for key in ("sd_model_checkpoint", "sd_vae"):
            if choices[key]:
                overrides.setdefault(key, choices[key])
    return replace(submission, request=request.model_copy(update={"override_settings": overrides}))


def run_generation(context: AppContext, submission: GenerationSubmission, control: JobControl) -> GenerationResult:
    """The job's work, on the worker thread with the GPU to itself: the request with its tab's
    scripts (img2img's for an Img2ImgRequest)."""
    from modules.extension_host.scripts import run_img2img, run_txt2img

    request = submission.request
    control.set_info("job_count", request.n_iter)  # /sdapi/v1/progress reports "Batch i out of n"
    run = run_img2img if isinstance(request, Img2ImgRequest) else run_txt2img
    if submission.owner is not None and context.accounts.multi_user:
        with owner_models(context, submission.owner, request.override_settings):
            result = run(context, request, control, save=submission.save, selection=submission.selection)
    else:
        if "sd_model_checkpoint" not in request.override_settings:
            # The loaded model; with none (start-up load skipped or failed, or unloaded), the start-up
            # choice, loaded as A1111 does on first use (an error that says why when none loads).
            context.load_default_model()
        result = run(context, request, control, save=submission.save, selection=submission.selection)
    if submission.keep_overrides:
        _keep_overrides(context, submission.keep_overrides)
    return result


@contextmanager
def owner_models(context: AppContext, owner: str, overrides: Mapping[str, Any]) -> Iterator[None]:
    """Inside the block the owner's checkpoint is current (loaded from the model manager's cache
    when it holds it) and carries the owner's VAE; afterwards the model gets the VAE the global
    settings choose back. A checkpoint or VAE named in the request's `overrides` wins."""
    choices = context.user_choices.effective(owner, context.settings.current())
    if "sd_model_checkpoint" not in overrides:
        # Nobody chose (no global setting either): what the server starts with, not whatever another
        # user's job left loaded.
        wanted = choices["sd_model_checkpoint"] or context.startup_checkpoint_title()
        if wanted:
            title = context.checkpoints.find(wanted).title
            current = context.models.current_info()
            if current is None or current.title != title:
                context.models.load(title)
        else:
            context.load_default_model()
    vae = overrides.get("sd_vae", choices["sd_vae"])
    if vae == context.settings.current()["sd_vae"]:
        yield
        return
    current = context.settings.current()
    info = context.models.current_info()
    choice = context.vaes.resolve_vae(info, vae, current["sd_vae_overrides_per_model_preferences"],
                                      Path(context.args.vae_path) if getattr(context.args, "vae_path", None) else None)
    with context.models.temporary_vae(choice.path):
        yield


def _keep_overrides(context: AppContext, overrides: Mapping[str, Any]) -> None:
    """`override_settings_restore_afterwards=false`: the overrides become the settings (A1111)."""
    kept = dict(overrides)
    info = context.models.current_info()
    if "sd_model_checkpoint" in kept and info is not None:
        kept["sd_model_checkpoint"] = info.title
        kept["sd_checkpoint_hash"] = info.sha256 or ""
    context.settings.apply(kept)


def returns_grid(settings: Mapping[str, Any], submission: GenerationSubmission, result: GenerationResult) -> bool:
    """A1111's rule: a grid of several images comes first when `return_grid` is on and the grid is
    not turned off for the request (the API's `save_images`). A script that put its own grids first
    (the X/Y/Z plot) gets none added; one that ran the generation itself gets the grid A1111's
    `process_images` would have made for it."""
    return (settings["return_grid"] and submission.save_grid and len(result.images) > 1
            and result.index_of_first_image == 0 and bool(result.infotexts))


def finished_generation(settings: Mapping[str, Any], submission: GenerationSubmission, job: Job) -> FinishedGeneration:
    """The finished `job`'s images for the caller (see the module's docstring). `settings`: the
    current ones; with the request's overrides they decide the grid and its layout (`return_grid`,
    `n_rows`, `grid_prevent_empty_spots`)."""
    result = job.result if isinstance(job.result, GenerationResult) else GenerationResult()
    finished = FinishedGeneration(images=list(result.images), infotexts=list(result.infotexts),
                                  seeds=list(result.seeds), subseeds=list(result.subseeds),
                                  index_of_first_image=result.index_of_first_image, result=result)
    for image, infotext in zip(finished.images, finished.infotexts):
        image.info["parameters"] = infotext  # written into the PNG the gallery serves
    settings = {**settings, **submission.request.override_settings}
    if returns_grid(settings, submission, result):
        _put_grid_first(finished, submission.request.batch_size, settings)
    result.images.clear()
    return finished


def _put_grid_first(finished: FinishedGeneration, batch_size: int, settings: Mapping[str, Any]) -> None:
    from modules.outputs.images import image_grid

    grid = image_grid(finished.images, batch_size=batch_size, n_rows=settings["n_rows"],
                      prevent_empty_spots=settings["grid_prevent_empty_spots"])
    grid.info["parameters"] = finished.infotexts[0]
    finished.images.insert(0, grid)
    finished.infotexts.insert(0, finished.infotexts[0])
    for values in (finished.seeds, finished.subseeds):
        if values:
            values.insert(0, values[0])
    finished.index_of_first_image = 1
