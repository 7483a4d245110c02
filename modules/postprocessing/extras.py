"""The Extras tab's work as one request and one job (A1111's `run_postprocessing`, A1111.md §14.5).

`ExtrasRequest` is what the Extras tab and the API send: the images (mode 0, single image; mode 1,
uploads) as (source name, image) pairs, or mode 1's uploaded files as (source name, path) pairs
(`files`: only their headers are read at submit, each decoded on the worker when its turn comes), or
a server folder (mode 2, `input_dir`, optional `output_dir`); each step's keyword arguments by step
name (`script_args`, e.g. {"Upscale": {...}}); whether to save. At most `MAX_EXTRAS_IMAGES` images or
files in one request. `submit_extras(context, request)` checks it and queues one job of kind
"extras"; the job's result is an `ExtrasResult`, which its caller takes with `take_extras_result`
(the job, kept in the queue's history, then no longer holds the images).

Per image: the steps run (modules.postprocessing.runner), then for the image and each extra image a
step made:

- the postprocessing text is `pp.info` written as an infotext parameter line
  (`Postprocess upscale by: 4, Postprocess upscaler: Lanczos`);
- the image keeps the source's text chunks (`parameters` and the others) and gets `postprocessing` =
  that text (when `enable_pnginfo`); a saved PNG also gets `extras` = the text, a JPEG or WebP only an
  EXIF UserComment with it (A1111: the original `parameters` is then lost);
- saving (`save`): into `outdir_samples` when set, else `outdir_extras_samples`
  (`outputs/extras-images`), or mode 2's output folder; no date subfolder; `NNNNN.<samples_format>`,
  or with `use_original_name_batch` and a named source (modes 1 and 2) `<source stem><suffix>`, the
  suffix from the image's name tags; a step's caption goes to `<file>.txt` by
  `postprocessing_existing_caption_action`;
- the gallery shows every image, except in mode 2 without `show_results`.
`html_info` is the last image's text in a `<p>`.

Mode 2 follows img2img Batch's folder rules (modules.generation.img2img_batch): refused where the
server locks folder settings (`--hide-ui-dir-config`, or listening beyond localhost without
`--allow-ui-dir-config`); folders resolved and checked (the output folder only where outputs may go).

On a server shared with `--multi-user` a request submitted with an `owner` is that user's job (the
queue's turns and limits) and saves into their folders (`outputs/<user>/extras-images`:
modules.outputs.output_paths.user_output_dir); mode 2's folders must be inside their own output
folders unless they are an operator, as img2img Batch's.
The listing is A1111's: not recursive, dotfiles skipped, natural order; a file that is not a readable
image (or is too large) is skipped with a warning (A1111 skips it silently).

Before anything is queued, the Upscale step's arguments are checked for every image (an uploaded
file from its header, without decoding it): an argument out of range, an unknown upscaler, or a
result over `upscale_max_pixels`, is refused with its reason (for a folder, the arguments and the
upscaler names). The results of one request together may not exceed the output budget, twice
`upscale_max_pixels` (`output_budget`): modes 0 and 1 add up the final sizes before queueing and
refuse a request over it. A folder's sizes are known only as its files are read, and extension steps
may add images: while running, a result that would take the images kept for the gallery (or, unsaved,
for the caller) over the budget is saved but not kept, with a warning; when nothing is saved, the run
stops there with a warning. In a batch (modes 1 and 2), an image a step refuses while running (a
folder's file too large to upscale) is skipped with a warning naming it; the others go on.
"""

from __future__ import annotations

import dataclasses
import html
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageOps, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from modules.generation.requests import MAX_INIT_IMAGE_PIXELS
from modules.common.job_control import NullControl
from modules.serving.accounts import is_multi_user
from modules.postprocessing.runner import PostprocessingStopped
from modules.postprocessing.scripts import PostprocessedImage
from modules.postprocessing.upscale import UPSCALE_SCRIPT

if TYPE_CHECKING:
    from modules.serving.jobs import Job

log = logging.getLogger(__name__)

EXTRAS_JOB_KIND = "extras"
MODES = (0, 1, 2)  # A1111's extras_mode: Single Image, Batch Process, Batch from Directory
# The largest image a request may hold (and a folder's file may decode into): img2img's limit.
MAX_EXTRAS_IMAGE_PIXELS = MAX_INIT_IMAGE_PIXELS
MAX_FOLDER_FILES = 100_000
# The most images (or uploaded files) one request may hold: each is a job step, a gallery entry and,
# over the API, a decoded image; more belongs in a folder batch or several requests.
MAX_EXTRAS_IMAGES = 1000
# The results of one request together: this many times `upscale_max_pixels` (module docstring).
OUTPUT_BUDGET_FACTOR = 2
EXIF_ORIENTATION = 0x0112
SWAPPING_ORIENTATIONS = (5, 6, 7, 8)  # the EXIF rotations by 90° that `exif_transpose` applies


class ExtrasRequest(BaseModel):
    """One Extras run (module docstring). Images are PIL images; `images[i][0]` is the source's name
    (a file name; "" for the single image)."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True, extra="forbid")

    mode: int = Field(0, description="0 = Single Image, 1 = Batch Process (uploads), 2 = Batch from Directory")
    images: list[tuple[str, Image.Image]] = Field(default_factory=list)
    files: list[tuple[str, str]] = Field(default_factory=list, description="Batch Process: (name, path) of "
                                         "uploaded files, read on the worker")
    input_dir: str = ""
    output_dir: str = ""
    show_results: bool = True
    script_args: dict[str, dict[str, Any]] = Field(default_factory=dict)
    save: bool = True

    @field_validator("mode")
    @classmethod
    def _mode(cls, value: int) -> int:
        if value not in MODES:
            raise ValueError(f"must be 0 (Single Image), 1 (Batch Process) or 2 (Batch from Directory), got {value!r}")
        return value

    @field_validator("images")
    @classmethod
    def _images(cls, value: list[tuple[str, Image.Image]]) -> list[tuple[str, Image.Image]]:
        for name, image in value:
            if image.width * image.height > MAX_EXTRAS_IMAGE_PIXELS:
                raise ValueError(f"{name or 'the image'} is {image.width}x{image.height}; images of at most "
                                 f"{MAX_EXTRAS_IMAGE_PIXELS:,} pixels (8192x8192) are accepted: scale it down first")
        return value

    @model_validator(mode="after")
    def _inputs(self) -> ExtrasRequest:
        count = len(self.images) + len(self.files)
        if self.mode == 2:
            if count:
                raise ValueError("Batch from Directory takes a folder (input_dir), not images")
            if not self.input_dir.strip():
                raise ValueError("Input directory: empty; name the folder that holds the images")
        else:
            if self.input_dir or self.output_dir:
                raise ValueError("input_dir and output_dir are for Batch from Directory (mode 2) only")
            if not count:
                raise ValueError("no image: " + ("drop an image on Source" if self.mode == 0 else
                                                 "upload the images to process"))
            if self.mode == 0 and (self.files or len(self.images) != 1):
                raise ValueError(f"Single Image takes one image, got {count}; use Batch Process (mode 1)")
            if count > MAX_EXTRAS_IMAGES:
                raise ValueError(f"{count} images in one request; at most {MAX_EXTRAS_IMAGES} are taken: split the "
                                 "batch into several requests")
        return self


@dataclass
class ExtrasResult:
    """What an Extras job made: the gallery's images with their postprocessing texts, the HTML shown
    under the gallery, the files written, and what was skipped."""

    images: list[Image.Image] = field(default_factory=list)
    infotexts: list[str] = field(default_factory=list)
    html_info: str = ""
    saved_paths: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    interrupted: bool = False
    over_budget: bool = False  # stopped: the next result would not fit the output budget
    budget_noted: bool = False  # results beyond the budget were saved but not kept


@dataclass(frozen=True)
class _Source:
    name: str | None  # the name files are named after (None: the single image, numbered)
    image: Image.Image | None = None
    path: Path | None = None  # an uploaded file or (with `root`) a folder's: read on the worker
    root: Path | None = None


@dataclass(frozen=True)
class _Plan:
    request: ExtrasRequest
    sources: tuple[_Source, ...]
    output_dir: Path
    warnings: tuple[str, ...] = ()
    output_budget: int = 0


def output_budget(settings) -> int:
    """The pixels the results of one request may hold together (module docstring)."""
    return OUTPUT_BUDGET_FACTOR * int(settings["upscale_max_pixels"])


def _over_budget(what: str, pixels: int, budget: int) -> str:
    return (f"{what} would come to {pixels:,} pixels, more than the {budget:,} one Extras request may make "
            f"({OUTPUT_BUDGET_FACTOR} x the setting upscale_max_pixels)")


def load_upload(path: str | os.PathLike, name: str | None = None) -> tuple[str, Image.Image]:
    """(name, image) for an uploaded file, decoded and turned upright; a ValueError naming the file
    when it is not an image Pillow can read or is too large (`upload_size`, from the header first)."""
    shown = name or os.path.basename(str(path))
    upload_size(path, shown)
    try:
        with Image.open(path) as opened:
            opened.load()
            image = ImageOps.exif_transpose(opened)
            image.info = dict(opened.info)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, EOFError) as error:
        raise ValueError(f"{shown}: not an image Pillow can read ({type(error).__name__}); upload a PNG, JPEG or "
                         "WebP file") from None
    return shown, image


def upload_size(path: str | os.PathLike, name: str | None = None) -> tuple[int, int]:
    """The size an uploaded file decodes into (turned upright by its EXIF orientation when the header
    states one), from its header only; a ValueError naming the file when it is not an image Pillow
    can read or is over the per-image limit."""
    shown = name or os.path.basename(str(path))
    try:
        with Image.open(path) as opened:  # reads the header; the pixels are not decoded
            width, height = opened.size
            raw_exif = opened.info.get("exif")
            if isinstance(raw_exif, bytes):
                exif = Image.Exif()
                exif.load(raw_exif)
                if exif.get(EXIF_ORIENTATION) in SWAPPING_ORIENTATIONS:
                    width, height = height, width
    except Image.DecompressionBombError:
        raise ValueError(f"{shown}: the image is larger than Pillow's limit; images of at most "
                         f"{MAX_EXTRAS_IMAGE_PIXELS:,} pixels (8192x8192) are accepted") from None
    except (UnidentifiedImageError, OSError, SyntaxError, EOFError, ValueError) as error:
        raise ValueError(f"{shown}: not an image Pillow can read ({type(error).__name__}); upload a PNG, JPEG or "
                         "WebP file") from None
    if width * height > MAX_EXTRAS_IMAGE_PIXELS:
        raise ValueError(f"{shown}: the image is {width}x{height}; images of at most {MAX_EXTRAS_IMAGE_PIXELS:,} "
                         "pixels (8192x8192) are accepted")
    return width, height


def _output_folder(context, request: ExtrasRequest, owner: str | None = None) -> Path:
    settings = context.settings.current()
    if request.mode == 2 and request.output_dir.strip():
        from modules.generation.img2img_batch import BatchRefused, batch_output_dir, check_owner_folder, owner_folders

        value = request.output_dir.strip()
        try:
            folder = batch_output_dir(value, context.args, context.paths.data_dir)
            check_owner_folder(folder, "Output directory", value, owner_folders(context, owner))
        except BatchRefused as error:
            raise ValueError(str(error)) from None
        return folder
    folder = settings["outdir_samples"] or settings["outdir_extras_samples"] or "outputs/extras-images"
    if owner is not None:
        from modules.outputs.output_paths import user_output_dir

        return user_output_dir(folder, owner, context.paths.data_dir)
    return Path(context.paths.data_dir, folder)


def _folder_sources(context, request: ExtrasRequest, warnings: list[str], owner: str | None = None) -> list[_Source]:
    """Mode 2's files (module docstring)."""
    from modules.generation.img2img_batch import (BatchRefused, check_owner_folder, directories_refusal,
                                                  existing_dir, is_inside, owner_folders)
    from modules.library.checkpoints import natural_sort_key

    refusal = directories_refusal(context.args)
    if refusal is not None:
        raise ValueError(f"Batch from Directory: {refusal}")
    try:
        value = request.input_dir.strip()
        folder = existing_dir(value, "Input directory", context.paths.data_dir)
        check_owner_folder(folder, "Input directory", value, owner_folders(context, owner))
    except BatchRefused as error:
        raise ValueError(str(error)) from None
    try:
        names = sorted((name for name in os.listdir(folder) if not name.startswith(".")), key=natural_sort_key)
    except OSError as error:
        raise ValueError(f"Input directory: cannot list {folder} ({error.strerror})") from None
    if len(names) > MAX_FOLDER_FILES:
        raise ValueError(f"Input directory: {folder} holds more than {MAX_FOLDER_FILES:,} files; split the batch")
    sources = []
    for name in names:
        path = folder / name
        if path.is_dir():
            continue  # not recursive, as A1111
        if not is_inside(Path(os.path.realpath(path)), folder):
            warnings.append(f"{path}: its symbolic link leads out of {folder}; skipped")
            continue
        sources.append(_Source(name, path=path, root=folder))
    if not sources:
        raise ValueError(f"Input directory: no files to process in {folder}")
    return sources


def plan_extras(context, request: ExtrasRequest, owner: str | None = None) -> _Plan:
    """Check `request` against the app (its steps, upscalers, folders, the output budget) without
    doing any work: uploaded files are measured from their headers, nothing is decoded. `owner`: the
    user of a `--multi-user` server it is for (their folders; see the module docstring)."""
    owner = owner if is_multi_user(context) else None
    steps = context.postprocessing
    steps.check_args(request.script_args)
    budget = output_budget(context.settings.current())
    warnings: list[str] = []
    upscale_args = request.script_args.get(UPSCALE_SCRIPT)
    upscale = steps.find(UPSCALE_SCRIPT) if upscale_args is not None else None
    if request.mode == 2:
        sources = _folder_sources(context, request, warnings, owner)
        if upscale is not None:  # the images are read on the worker; the arguments can be checked now
            _step_check(None, lambda: upscale.check_names(**upscale_args))
    else:
        batch = request.mode == 1
        sources = [_Source(name if batch else None, image=image) for name, image in request.images]
        sources += [_Source(name, path=Path(path)) for name, path in request.files]
        total = 0
        for source in sources:
            if source.image is not None:
                size = source.image.size
            else:
                size = upload_size(source.path, source.name)
            if upscale is not None:
                size = _step_check(source.name, lambda size=size: upscale.final_size(*size, **upscale_args))
            total += size[0] * size[1]
        if total > budget:
            count = len(sources)
            raise ValueError(_over_budget(f"the {count} result{'s' if count != 1 else ''}", total, budget)
                             + ": send fewer images, or upscale by a smaller factor")
    return _Plan(request, tuple(sources), _output_folder(context, request, owner), tuple(warnings), budget)


def _step_check(name: str | None, check):
    """`check()`'s answer; its refusal named after the source `name` (when it has one)."""
    try:
        return check()
    except TypeError as error:  # an argument the step does not take
        raise ValueError(f"script_args[{UPSCALE_SCRIPT!r}]: {error}") from None
    except ValueError as error:
        if not name:
            raise
        raise ValueError(f"{name}: {error}") from None


def submit_extras(context, request: ExtrasRequest, *, owner: str | None = None) -> Job:
    """Check `request` (raises ValueError naming the problem; nothing is queued then) and queue it as
    one job of kind "extras"; the job's result is an `ExtrasResult`. `owner`: the submitting user of
    a `--multi-user` server (`User.owner`; the job is theirs and saves into their folders), None for
    the shared user of a single-user server; their waiting limit raises `QueueFullError`."""
    owner = owner if is_multi_user(context) else None
    plan = plan_extras(context, request, owner)
    count = len(plan.sources)
    description = f"extras: {count} image{'s' if count != 1 else ''}"
    return context.jobs.submit(lambda control: run_extras_plan(context, plan, control), kind=EXTRAS_JOB_KIND,
                               description=description, owner=owner)


def take_extras_result(job: Job) -> ExtrasResult:
    """The finished `job`'s ExtrasResult for its caller (an empty one when it made none), the job's
    own list of images emptied: the queue keeps the last jobs for status queries, and their images
    would stay in memory after the tab or the API delivered them (as `finished_generation` does)."""
    result = job.result if isinstance(job.result, ExtrasResult) else ExtrasResult()
    taken = dataclasses.replace(result, images=list(result.images), infotexts=list(result.infotexts),
                                saved_paths=list(result.saved_paths), warnings=list(result.warnings))
    result.images.clear()
    return taken


def _read_source(source: _Source) -> Image.Image:
    if source.image is not None:
        return source.image
    if source.root is None:  # an uploaded file
        return load_upload(source.path, source.name)[1]
    from modules.generation.img2img_batch import SkippedFile, read_image

    try:
        return read_image(source.path, source.root)
    except SkippedFile as skip:
        raise ValueError(str(skip)) from None


def postprocessing_text(info: dict[str, Any]) -> str:
    """`pp.info` as an infotext parameter line (None values left out; a value equal to its key
    written as the bare key)."""
    from modules.outputs.infotext import format_parameters

    return format_parameters(info)


def run_extras_plan(context, plan: _Plan, control: Any = None) -> ExtrasResult:
    """The job's work (module docstring)."""
    from modules.outputs.images import FilenameContext, SaveOptions, save_image
    from modules.outputs.infotext import read_info_from_image

    control = control or NullControl()
    request = plan.request
    owner = context.postprocessing
    settings = context.settings.current()
    options = SaveOptions.from_settings(settings)
    use_original_name = bool(settings["use_original_name_batch"])
    result = ExtrasResult(warnings=list(plan.warnings))
    for warning in plan.warnings:
        log.warning("extras: %s", warning)
    count = len(plan.sources)
    control.set_info("job_count", count)
    infotext = ""
    kept_pixels = 0
    for index, source in enumerate(plan.sources):
        if result.over_budget:
            break
        if control.interrupted:
            result.interrupted = True
            break
        control.consume_skip()
        control.report(index, count)
        try:
            image = _read_source(source)
        except ValueError as error:
            _warn(result, control, str(error))
            continue
        image = image if image.mode in ("RGBA", "RGB") else image.convert("RGB")
        parameters, existing = read_info_from_image(image)
        chunks = {key: value for key, value in existing.items() if isinstance(key, str) and isinstance(value, str)}
        if parameters:
            chunks["parameters"] = parameters
        pp = PostprocessedImage(image)
        try:
            owner.run(pp, request.script_args, control=control, warnings=result.warnings)
        except PostprocessingStopped:
            result.interrupted = True
            break
        except ValueError as error:
            # One file of a batch the steps refuse (too large to upscale, ...) does not stop the others;
            # a single image's refusal is the request's.
            if request.mode == 0:
                raise
            _warn(result, control, f"{source.name}: {error}; skipped")
            continue
        if control.skip_requested and control.consume_skip():
            continue
        used_suffixes: dict[str, int] = {}
        for single in (pp, *pp.extra_images):
            suffix = single.get_suffix(used_suffixes)
            infotext = postprocessing_text(single.info)
            info = dict(chunks)
            if options.enable_pnginfo:
                info["postprocessing"] = infotext
            if single.image is source.image:  # no step changed it: the caller's image keeps its own info
                single.image = single.image.copy()
            single.image.info = info
            if request.save:
                forced = None
                if use_original_name and source.name:
                    forced = os.path.splitext(os.path.basename(source.name))[0] + suffix
                saved = save_image(single.image, plan.output_dir, "", context=FilenameContext(), options=options,
                                   infotext=infotext, extension=settings["samples_format"], short_filename=True,
                                   suffix=suffix, forced_filename=forced, save_to_dirs=False,
                                   existing_pnginfo=info, pnginfo_section_name="extras")
                result.saved_paths.append(saved.path)
                if single.caption:
                    _write_caption(saved.path, single.caption, settings["postprocessing_existing_caption_action"])
            if request.mode != 2 or request.show_results:
                pixels = single.image.width * single.image.height
                if not _may_keep(result, control, plan, request.save, kept_pixels + pixels):
                    if result.over_budget:
                        break
                    continue
                kept_pixels += pixels
                result.images.append(single.image)
                result.infotexts.append(infotext)
    control.report(count, count)
    result.html_info = f"<p>{html.escape(infotext)}</p>"
    return result


def _may_keep(result: ExtrasResult, control, plan: _Plan, saved: bool, pixels: int) -> bool:
    """Whether a result may join the kept ones, which would then hold `pixels`: not once they reached
    the budget (module docstring); the first refusal is warned (saved: the rest are not shown; unsaved:
    the run stops)."""
    if result.over_budget or result.budget_noted:
        return False
    if not plan.output_budget or pixels <= plan.output_budget:
        return True
    shown = len(result.images)
    if saved:
        result.budget_noted = True
        _warn(result, control, _over_budget("the results shown", pixels, plan.output_budget)
              + f": the first {shown} are shown; the rest are saved but not shown")
    else:
        result.over_budget = True
        _warn(result, control, _over_budget("the results", pixels, plan.output_budget)
              + f": stopped after {shown}; process the rest in another request")
    return False


def _warn(result: ExtrasResult, control, message: str) -> None:
    log.warning("extras: %s", message)
    result.warnings.append(message)
    control.add_info(message)


def _write_caption(image_path: str, caption: str, action: str) -> None:
    """`<image>.txt` with a step's caption, joined with an existing one by
    `postprocessing_existing_caption_action` (A1111)."""
    from modules.common.atomic_files import write_bytes

    path = Path(os.path.splitext(image_path)[0] + ".txt")
    existing = path.read_text(encoding="utf8").strip() if path.is_file() else ""
    if existing and action == "Keep":
        return
    if existing and action == "Prepend":
        caption = f"{caption} {existing}"
    elif existing and action == "Append":
        caption = f"{existing} {caption}"
    write_bytes(path, caption.strip().encode("utf8"), what=f"the caption {path.name}")


def run_extras_now(context, request: ExtrasRequest, *, owner: str | None = None) -> ExtrasResult:
    """Run `request` and wait for it: on the job worker when called from elsewhere (an extension's
    handler), directly when already there (an extension's script inside a job). `owner`: as for
    `submit_extras`."""
    owner = owner if is_multi_user(context) else None
    plan = plan_extras(context, request, owner)
    if context.jobs.on_worker():
        return run_extras_plan(context, plan)
    job = context.jobs.submit(lambda control: run_extras_plan(context, plan, control), kind=EXTRAS_JOB_KIND,
                              description=f"extras: {len(plan.sources)} image(s)", owner=owner)
    job.wait()
    if job.exception is not None:
        raise job.exception
    return take_extras_result(job)
