"""img2img Batch (A1111's `process_batch`, A1111.md §13.1): one job that runs img2img on many files.

The files come from Gradio uploads or from a folder on the server. Every file runs as one
`Img2ImgRequest` through the same path as a single img2img (the extensions' scripts included):

- the seed (and variation seed) is fixed once, so every file shares it; each file runs with
  `init_images = [image] × batch_size`;
- a folder is walked recursively and natural-sorted (folders by path, names within each), taking
  `.png .jpg .jpeg .webp .tif .tiff` (any case);
- the inpaint mask folder is flat: a single file there masks every image; otherwise the first
  `<stem>.*` file (natural order) masks the image of that stem, and an image without one is skipped
  with a warning;
- "Append png info to prompts" reads each file's infotext (or that of the same-named file in the
  PNG info folder): for the ticked keys, Prompt and Negative prompt are appended after a space, Seed,
  CFG scale, Sampler (with its schedule type, when the infotext names one) and Steps replace the
  tab's values, and Model hash picks the checkpoint of that hash for the file;
- with an output folder, the images are saved there flat, with the filename pattern `<stem>` (or
  `<stem>-[generation_number]` when batch count or size is over 1); the other saving settings apply
  as usual (`save_images_add_number` on, the default, still puts `NNNNN-` before the name, as in A1111);
- the gallery keeps the first `img2img_batch_show_results_limit` images (32; -1 = all; 0 = none);
  later ones are still generated and saved.

Deliberate differences from A1111:
- A file is never overwritten. A1111 drops its "Add number suffix" override when no selectable script
  runs, so its default `Replace` overwrites a same-named file; here a taken name always becomes
  `<name>-1`, `<name>-2`, ... (`save_images_replace_action` "Add number suffix" for every file).
- With an output folder the images are saved whatever the `samples_save` setting (A1111 writes
  nothing there when it is off); without one, `samples_save` decides, as for a single img2img.
- A file that is not a readable image, is larger than `MAX_BATCH_IMAGE_PIXELS`, or fails as a
  request (a mask that selects nothing, a name the filename rules refuse) is skipped with a warning
  naming it; A1111 stops the whole batch on most of these.

Security (DESIGN.md "Security": a logged-in user on `--listen` is not the operator):
- Folders are the operator's to open: directory mode (input, output, mask and PNG info folders) is
  refused when `cmd_args.dir_config_locked` holds: with `--hide-ui-dir-config` (A1111's rule), and on
  a server others can reach (`--listen`, `--server-name`) unless started with `--allow-ui-dir-config`.
  Uploads (which Gradio's own file rules limit to files the user uploaded) always work.
- Where folders are allowed, each is resolved (symbolic links followed, `..` collapsed; a relative
  path is taken from the data folder, as the output folder settings are) before it is checked. The
  output folder may not lie inside the install folder, the data folder or the Python environment,
  except in `<data-dir>/outputs` or an `--allow-output-dir` folder: a `<stem>.txt`
  (`save_txt`) written there could become a `requirements.txt` that the next start installs from.
  Special file systems (`/dev`, `/proc`, `/sys`) are refused too.
- Only regular files are read (no device, FIFO or socket: reading `/dev/zero` never ends), and only
  files whose real path lies in the folder named (a symbolic link that leads out is skipped). An
  image's size is read from its header before any pixel is decoded.
- On a server shared with `--multi-user`, a batch submitted with an `owner` is that user's job (the
  queue's turns and limits, their checkpoint, VAE and clip skip, their output folders, as a single
  img2img of theirs: modules.serving.generation_service.for_owner), and a user who is not an operator
  may name only folders inside their own output folders (`owner_folders`; `outputs/<user>/...`), for
  every folder of the batch: another user's images are not theirs to read, nor their folders to fill.
"""

from __future__ import annotations

import logging
import os
import stat
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, UnidentifiedImageError

from modules.generation.engine import GenerationResult, check_prompt_length
from modules.generation.img2img_images import fix_image
from modules.generation.requests import MAX_INIT_IMAGE_PIXELS
from modules.serving.generation_service import IMG2IMG_JOB_KIND
from modules.serving.cmd_args import UPSCALER_FOLDERS

if TYPE_CHECKING:
    from modules.extension_host.scripts import ScriptSelection
    from modules.generation.requests import Img2ImgRequest
    from modules.serving.app_context import AppContext
    from modules.serving.jobs import Job, JobControl

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff")
# A1111's "PNG info" checkbox group, in its order.
PNG_INFO_PROPS = ("Prompt", "Negative prompt", "Seed", "CFG scale", "Sampler", "Steps", "Model hash")
# Every caller's limit for an init image (checked here from the header, before decoding): a small
# compressed file can decode into gigabytes.
MAX_BATCH_IMAGE_PIXELS = MAX_INIT_IMAGE_PIXELS
# A folder that lists more image files than this is refused before the job starts (a typo such as
# "/" would otherwise walk the whole disk); a long video's frames still fit.
MAX_BATCH_FILES = 100_000
# cmd_args attributes naming model folders (checkpoints, VAEs, embeddings, ...) an output folder may not be in.
MODEL_DIR_FLAGS = ("models_dir", "ckpt_dir", "vae_dir", "embeddings_dir", "hypernetwork_dir", "lora_dir",
                   *(f"{family.lower()}_models_path" for family, _ in UPSCALER_FOLDERS))
BATCH_JOB_KIND = IMG2IMG_JOB_KIND  # a batch is img2img work: the tab's Interrupt stops it
# The gallery's notes list this many of a batch's warnings (a folder of 5000 images without masks
# would give 5000); the console has them all.
MAX_WARNINGS_SHOWN = 20
SOURCES = ("upload", "directory")
# Request fields the batch sets per file; a template that carries them is a caller's mistake.
PER_FILE_FIELDS = ("init_images", "mask")
SPECIAL_FILE_SYSTEMS = (Path("/dev"), Path("/proc"), Path("/sys"))


class BatchRefused(ValueError):
    """The batch cannot run as given (a refused or missing folder, no images); nothing was queued."""


class SkippedFile(Exception):
    """One file cannot be used; the message (naming it) becomes a warning and the batch goes on."""


@dataclass(frozen=True)
class BatchSpec:
    """What the Batch sub-tab asks for (A1111's batch inputs), checked for shape only; the folders
    are checked against the server's rules by `plan_batch`.

    `source` "upload": `uploaded_files` are the paths of Gradio's uploaded temp files, and the output
    and mask folders are not used (A1111 empties them). "directory": `input_dir` and the optional
    `output_dir` and `inpaint_mask_dir`. `png_info_dir` (either source): where same-named files hold
    the infotexts, "" = each file's own. Build with `BatchSpec.upload(...)` / `BatchSpec.directory(...)`.
    """

    source: str
    uploaded_files: tuple[str, ...] = ()
    input_dir: str = ""
    output_dir: str = ""
    inpaint_mask_dir: str = ""
    use_png_info: bool = False
    png_info_dir: str = ""
    png_info_props: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"batch source must be one of {SOURCES}, got {self.source!r}")
        for name in ("input_dir", "output_dir", "inpaint_mask_dir", "png_info_dir"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise ValueError(f"{name} must be text (a folder path), got {type(value).__name__}")
            object.__setattr__(self, name, value.strip())
        object.__setattr__(self, "uploaded_files", tuple(str(path) for path in self.uploaded_files))
        object.__setattr__(self, "png_info_props", tuple(self.png_info_props))
        unknown = [prop for prop in self.png_info_props if prop not in PNG_INFO_PROPS]
        if unknown:
            raise ValueError(f"PNG info: unknown key(s) {unknown}; the keys are {list(PNG_INFO_PROPS)}")
        if self.source == "upload":
            if self.input_dir or self.output_dir or self.inpaint_mask_dir:
                raise ValueError("an upload batch has no input, output or inpaint mask folder (A1111 ignores them); "
                                 "use BatchSpec.directory for a folder")
            if not self.uploaded_files:
                raise ValueError("Batch (Upload): no files uploaded; drop the images to process on the Upload tab")
        elif not self.input_dir:
            raise ValueError("Input directory: empty; name the folder that holds the images")

    @classmethod
    def upload(cls, files: Iterable[str], *, use_png_info: bool = False, png_info_dir: str = "",
               png_info_props: Iterable[str] = ()) -> BatchSpec:
        return cls("upload", uploaded_files=tuple(files), use_png_info=use_png_info, png_info_dir=png_info_dir,
                   png_info_props=tuple(png_info_props))

    @classmethod
    def directory(cls, input_dir: str, output_dir: str = "", inpaint_mask_dir: str = "", *,
                  use_png_info: bool = False, png_info_dir: str = "", png_info_props: Iterable[str] = ()) -> BatchSpec:
        return cls("directory", input_dir=input_dir, output_dir=output_dir, inpaint_mask_dir=inpaint_mask_dir,
                   use_png_info=use_png_info, png_info_dir=png_info_dir, png_info_props=tuple(png_info_props))

    def folders(self) -> dict[str, str]:
        """{field label: value} for each server folder this batch names (what the folder rule governs)."""
        named = {"Input directory": self.input_dir, "Output directory": self.output_dir,
                 "Inpaint batch mask directory": self.inpaint_mask_dir,
                 "PNG info directory": self.png_info_dir if self.use_png_info else ""}
        return {label: value for label, value in named.items() if value}


def directories_refusal(args) -> str | None:
    """Why server folders cannot be named in a batch on this server, or None (see the module docstring)."""
    from modules.serving.cmd_args import dir_config_locked

    if not dir_config_locked(args):
        return None
    if getattr(args, "hide_ui_dir_config", False):
        return ("batch folders are off on this server (--hide-ui-dir-config); upload the images instead (img2img "
                "Batch's Upload tab, Extras' Batch Process)")
    return ("batch folders are off on this server: it listens beyond localhost (--listen or --server-name), and a "
            "folder would let users read and write the server's files; upload the images instead (img2img Batch's "
            "Upload tab, Extras' Batch Process), or ask its owner to start it with --allow-ui-dir-config")


@dataclass(frozen=True)
class BatchFile:
    """One file to process: its path, the folder it must stay in (None for an upload) and its mask."""

    path: Path
    root: Path | None = None
    mask: Path | None = None
    mask_root: Path | None = None


@dataclass
class BatchPlan:
    """The checked batch: the files in order, where images go, and what was skipped while listing."""

    files: list[BatchFile]
    output_dir: Path | None = None
    png_info_dir: Path | None = None
    png_info_props: tuple[str, ...] = ()
    warnings: list[str] = field(default_factory=list)


def plan_batch(spec: BatchSpec, args, data_dir: Path, *, allowed_folders: Sequence[Path] | None = None) -> BatchPlan:
    """Check `spec` against the server's rules (`args`: the flags; `data_dir`: the data folder) and
    list its files. `allowed_folders`: the only folders (real paths) the batch may name, on a
    `--multi-user` server (`owner_folders`); None: any the rules allow. Raises `BatchRefused` naming
    the field."""
    refusal = directories_refusal(args) if spec.folders() else None
    if refusal is not None:
        raise BatchRefused(f"{', '.join(spec.folders())}: {refusal}")
    for label, value in spec.folders().items():
        check_owner_folder(_resolved(value, label, data_dir), label, value, allowed_folders)
    warnings: list[str] = []
    png_info_dir = None
    if spec.use_png_info and spec.png_info_dir:
        png_info_dir = existing_dir(spec.png_info_dir, "PNG info directory", data_dir)
    if spec.source == "upload":
        files = [BatchFile(Path(path)) for path in spec.uploaded_files]
        return BatchPlan(files, None, png_info_dir, spec.png_info_props if spec.use_png_info else (), warnings)
    input_dir = existing_dir(spec.input_dir, "Input directory", data_dir)
    output_dir = batch_output_dir(spec.output_dir, args, data_dir) if spec.output_dir else None
    images = _list_images(input_dir, warnings)
    if spec.inpaint_mask_dir:
        mask_dir = existing_dir(spec.inpaint_mask_dir, "Inpaint batch mask directory", data_dir)
        files = _with_masks(images, input_dir, mask_dir, warnings)
    else:
        files = [BatchFile(path, input_dir) for path in images]
    if not files:
        first = f"; {warnings[0]}" if warnings else ""
        raise BatchRefused(f"Input directory: no images to process in {input_dir} (looked for "
                           f"{' '.join(IMAGE_EXTENSIONS)}, in subfolders too){first}")
    return BatchPlan(files, output_dir, png_info_dir, spec.png_info_props if spec.use_png_info else (), warnings)


def owner_folders(context: AppContext, owner: str | None) -> list[Path] | None:
    """The folders (real paths) a batch of `owner` may name on a `--multi-user` server: their own
    output folders (modules.outputs.output_paths.user_folders). None (no limit beyond the server's
    folder rules): no `--multi-user`, no owner (the server's own work), or an operator."""
    accounts = getattr(context, "accounts", None)
    if owner is None or accounts is None or not accounts.multi_user or accounts.user(owner).admin:
        return None
    from modules.outputs.output_paths import user_folders

    return [Path(os.path.realpath(folder))
            for folder in user_folders(context.settings.current(), owner, context.paths.data_dir)]


def check_owner_folder(folder: Path, label: str, value: str, allowed: Sequence[Path] | None) -> None:
    """Refuse `folder` (resolved; `value` as the user wrote it) unless it lies in one of `allowed`."""
    if allowed is None or any(is_inside(folder, root) for root in allowed):
        return
    shown = f"{value!r}" + (f" (that is {folder})" if str(folder) != value else "")
    mine = allowed[0] if allowed else "your outputs folder"
    raise BatchRefused(f"{label}: {shown} is not one of your folders; on this shared server (--multi-user) a batch "
                       f"reads and writes only inside your own output folders, such as {mine} (give "
                       f"'{mine}/batch' or a folder below it), unless an operator (--admin-users) runs it")


def _resolved(value: str, label: str, data_dir: Path) -> Path:
    """`value` with `~`, `..` and symbolic links resolved; a relative path is taken from the data
    folder, as the output folder settings are."""
    if "\x00" in value:
        raise BatchRefused(f"{label}: contains a NUL character")
    return Path(os.path.realpath(Path(data_dir, os.path.expanduser(value))))


def existing_dir(value: str, label: str, data_dir: Path) -> Path:
    folder = _resolved(value, label, data_dir)
    if not folder.is_dir():
        raise BatchRefused(f"{label}: {value!r} is not a folder on the server" +
                           (f" (it leads to {folder})" if str(folder) != value else ""))
    return folder


def is_inside(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


def batch_output_dir(value: str, args, data_dir: Path) -> Path:
    """The output folder, resolved, once it passed the rule of the module docstring."""
    from modules.outputs.output_paths import OutputDirRules
    from modules.serving.paths import REPO_ROOT

    folder = _resolved(value, "Output directory", data_dir)
    if folder.exists() and not folder.is_dir():
        raise BatchRefused(f"Output directory: {value!r} is a file, not a folder")
    rules = OutputDirRules.from_args(args, data_dir)
    allowed = [Path(os.path.realpath(root)) for root in rules.roots()]
    if any(is_inside(folder, root) for root in allowed):
        return folder
    # The model folders the command line may put outside the data folder are the program's too.
    model_dirs = [getattr(args, name, None) for name in MODEL_DIR_FLAGS]
    protected = {Path(os.path.realpath(p)) for p in (REPO_ROOT, data_dir, sys.prefix, sys.base_prefix,
                                                      *SPECIAL_FILE_SYSTEMS, *filter(None, model_dirs))} - {Path("/")}
    for root in sorted(protected, key=str):
        if is_inside(folder, root):
            return _refuse_output(value, folder, root, allowed)
    return folder


def _refuse_output(value: str, folder: Path, root: Path, allowed: Sequence[Path]):
    shown = f"{value!r}" + (f" (that is {folder})" if str(folder) != value else "")
    raise BatchRefused(f"Output directory: {shown} is inside {root}, which holds the program, its settings or its "
                       f"environment; pick a folder elsewhere, or inside {' or '.join(str(a) for a in allowed)}")


def _list_images(root: Path, warnings: list[str]) -> list[Path]:
    from modules.library.checkpoints import walk_sorted

    images, outside = [], []
    for folder, names in walk_sorted(root):
        for name in names:
            if not name.lower().endswith(IMAGE_EXTENSIONS):
                continue
            path = Path(folder, name)
            if not is_inside(Path(os.path.realpath(path)), root):
                outside.append(str(path))
                continue
            images.append(path)
            if len(images) > MAX_BATCH_FILES:
                raise BatchRefused(f"Input directory: {root} holds more than {MAX_BATCH_FILES:,} images; split the "
                                   "batch into smaller folders")
    if outside:
        warnings.append(_outside_warning(outside, root))
    return images


def _outside_warning(paths: Sequence[str], root: Path) -> str:
    shown = ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
    return f"skipped {len(paths)} file(s) whose symbolic link leads out of {root}: {shown}"


def _with_masks(images: Sequence[Path], input_dir: Path, mask_dir: Path, warnings: list[str]) -> list[BatchFile]:
    """Each image with its mask (A1111's rule, module docstring); images without one are left out."""
    from modules.library.checkpoints import natural_sort_key

    try:
        names = sorted((n for n in os.listdir(mask_dir) if not n.startswith(".")), key=natural_sort_key)
    except OSError as error:
        raise BatchRefused(f"Inpaint batch mask directory: cannot list {mask_dir} ({error.strerror})") from None
    masks = [mask_dir / name for name in names if (mask_dir / name).is_file()]
    if not masks:  # A1111: an empty mask folder means no inpainting
        return [BatchFile(path, input_dir) for path in images]
    # A1111's "first <stem>.*": every name prefix ending before a dot, first mask (natural order) wins;
    # built once, so a big folder is not searched once per image.
    by_stem: dict[str, Path] = {}
    for mask in masks:
        parts = mask.name.split(".")
        for end in range(1, len(parts)):
            by_stem.setdefault(".".join(parts[:end]), mask)
    files = []
    for image in images:
        if len(masks) == 1:
            mask = masks[0]
        else:
            mask = by_stem.get(image.stem)
            if mask is None:
                warnings.append(f"{image}: no mask named {image.stem}.* in {mask_dir}; skipped")
                continue
        files.append(BatchFile(image, input_dir, mask, mask_dir))
    return files


def _open_regular(real: Path, shown: Path):
    """`real` opened for reading, or `SkippedFile` when it is not a regular file. Opened without blocking
    and checked on the open file: a FIFO swapped in after a check would block `open`, and a device
    such as /dev/zero never ends."""
    nonblocking = getattr(os, "O_NONBLOCK", 0)  # POSIX; Windows has no FIFOs to block on
    try:
        fd = os.open(real, os.O_RDONLY | nonblocking | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0))
    except OSError as error:
        raise SkippedFile(f"{shown}: cannot read it ({error.strerror}); skipped") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise SkippedFile(f"{shown}: not a regular file (a device, pipe or folder); skipped")
    if nonblocking:
        os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def read_image(path: Path, root: Path | None, what: str = "image") -> Image.Image:
    """The image at `path`, decoded, EXIF-rotated, transparency kept (A1111's `images.read`);
    `SkippedFile` with the reason when it is not a regular file inside `root`, not an image, or too large."""
    real = Path(os.path.realpath(path))
    if root is not None and not is_inside(real, root):
        raise SkippedFile(f"{path}: its symbolic link leads out of {root}; skipped")
    try:
        with _open_regular(real, path) as file:
            image = Image.open(file)
            width, height = image.size
            if width * height > MAX_BATCH_IMAGE_PIXELS:
                raise SkippedFile(f"{path}: the {what} is {width}x{height} ({width * height / 1e6:.0f} megapixels), more "
                            f"than the {MAX_BATCH_IMAGE_PIXELS / 1e6:.0f} megapixels allowed; skipped")
            image.load()
    except SkippedFile:
        raise
    except Image.DecompressionBombError:
        raise SkippedFile(f"{path}: the {what} decodes to more pixels than allowed; skipped") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise SkippedFile(f"{path}: not an image Pillow can read ({type(error).__name__}); skipped") from None
    return fix_image(image)


def submit_batch(context: AppContext, template: Mapping[str, Any], spec: BatchSpec,
                 selection: ScriptSelection | None = None, *, scale_by: float | None = None,
                 owner: str | None = None) -> Job:
    """Check the batch and queue it as one job; returns the job at once. Its result is a
    `GenerationResult`: the gallery's images (the first `img2img_batch_show_results_limit`), their
    infotexts and seeds, every saved path and the warnings (skipped files).

    `template`: `Img2ImgRequest` fields for every file, without `init_images` or `mask`. `scale_by`:
    the tab's "Resize by" factor, or None for its width and height; each file is then
    `int(w·s)×int(h·s)` rounded down to a multiple of 8 (at least 64), as requests need.
    `owner`: the submitting user on a `--multi-user` server (see the module docstring); None: the
    shared user of a single-user server. Raises `BatchRefused` (or another ValueError naming the
    field, or the queue's `QueueFullError`) and queues nothing."""
    stand_in = _check_template(template)
    template = {name: value for name, value in template.items() if name not in PER_FILE_FIELDS}
    settings = context.settings.current()
    check_prompt_length(template.get("prompt", ""), template.get("negative_prompt", ""), settings["prompt_max_length"])
    if scale_by is not None and not 0 < scale_by <= 8:
        raise ValueError(f"Resize by: {scale_by!r} must be a number in (0, 8]")
    plan = plan_batch(spec, context.args, context.paths.data_dir, allowed_folders=owner_folders(context, owner))
    owner = owner if getattr(getattr(context, "accounts", None), "multi_user", False) else None
    if owner is not None:
        template = {**template, "override_settings": _owner_overrides(context, stand_in, owner)}
    description = f"img2img batch: {len(plan.files)} file{'s' if len(plan.files) != 1 else ''}"
    from modules.serving.generation_service import expected_steps

    return context.jobs.submit(lambda control: run_batch(context, template, plan, control, selection,
                                                         scale_by=scale_by, owner=owner),
                               kind=BATCH_JOB_KIND, description=description, owner=owner,
                               expected_steps=expected_steps(stand_in) * len(plan.files))


def _owner_overrides(context: AppContext, stand_in: Img2ImgRequest, owner: str) -> dict[str, Any]:
    """The override settings a single img2img of `owner` runs with (their folders and clip skip, with
    Ray workers their checkpoint and VAE): the batch's files are that user's images too."""
    from modules.serving.generation_service import GenerationSubmission, for_owner

    return dict(for_owner(context, GenerationSubmission(stand_in, owner=owner)).request.override_settings)


def _check_template(template: Mapping[str, Any]) -> Img2ImgRequest:
    from modules.generation.requests import Img2ImgRequest

    given = [name for name in PER_FILE_FIELDS if template.get(name) is not None]
    if given:
        raise ValueError(f"batch template: {given} are set per file by the batch; leave them out")
    unknown = sorted(set(template) - set(Img2ImgRequest.model_fields))
    if unknown:
        raise ValueError(f"batch template: unknown img2img field(s) {unknown}")
    # Every field checked now, against a stand-in image, so a bad value fails before the job is queued.
    return Img2ImgRequest(**{**template, "init_images": [Image.new("RGB", (64, 64))], "mask": None})


def _fixed_seeds(template: dict[str, Any]) -> dict[str, Any]:
    from modules.generation.rng import get_fixed_seed

    return {**template, "seed": get_fixed_seed(template.get("seed", -1)),
            "subseed": get_fixed_seed(template.get("subseed", -1))}


class _FileProgress:
    """The job's control as file `index` of `count` sees it: its steps are placed in the whole
    batch's, so the progress bar and ETA cover every file, not each file again from 0."""

    def __init__(self, control, index: int, count: int):
        self._control, self._index, self._count = control, index, count

    def report(self, step: int, total: int, preview_factory: Callable[[], Any] | None = None) -> None:
        self._control.report(self._index * total + step, self._count * total, preview_factory)

    def __getattr__(self, name: str) -> Any:  # check, interrupted, consume_skip, add_info, ...
        return getattr(self._control, name)


def run_batch(context: AppContext, template: Mapping[str, Any], plan: BatchPlan, control: JobControl | None = None,
              selection: ScriptSelection | None = None, *, scale_by: float | None = None,
              owner: str | None = None) -> GenerationResult:
    """The job's work: every file of `plan`, in order (see the module docstring). `owner`: the user
    of a `--multi-user` server whose checkpoint and VAE the files run with."""
    from modules.generation.engine import NullControl
    from modules.serving.jobs import JobInterrupted

    control = control or NullControl()
    base = _fixed_seeds(dict(template))
    count = len(plan.files)
    limit = int(context.settings.current()["img2img_batch_show_results_limit"])
    combined = GenerationResult(warnings=list(plan.warnings))
    for warning in plan.warnings:
        log.warning("img2img batch: %s", warning)
        control.add_info(warning)
    control.set_info("job_count", count * int(base.get("n_iter", 1)))
    save = True if plan.output_dir is not None else None
    with _batch_models(context, base.get("override_settings") or {}, owner):
        for index, item in enumerate(plan.files):
            if control.interrupted:
                combined.interrupted = True
                break
            control.consume_skip()  # a skip asked between two files is not carried to the next one
            control.add_info(f"Batch file {index + 1} of {count}: {item.path.name}")
            notes: list[str] = []
            try:
                request = _file_request(context, base, plan, item, scale_by, notes)
            except (SkippedFile, ValueError) as error:
                _warn(combined, control,
                      str(error) if isinstance(error, SkippedFile) else f"{item.path}: {error}; skipped")
                continue
            finally:
                for note in notes:
                    _warn(combined, control, note)
            try:
                result = _run_one(context, request, _FileProgress(control, index, count), save, selection)
            except JobInterrupted:
                combined.interrupted = True
                break
            except ValueError as error:  # bad input for this file (an empty mask, ...): the others still run
                _warn(combined, control, f"{item.path}: {error}; skipped")
                continue
            _collect(combined, result, limit)
            if result.interrupted:
                combined.interrupted = True
                break
    combined.warnings = _shown_warnings(combined.warnings)
    return combined


@contextmanager
def _batch_models(context: AppContext, overrides: Mapping[str, Any], owner: str | None) -> Iterator[None]:
    """Inside, the checkpoint the files run on is current: the owner's (with their VAE) on a
    `--multi-user` server, else the loaded one (the start-up choice when none is). A checkpoint the
    template names is loaded by each file's request; with Ray workers each file's request loads its
    checkpoint on its worker."""
    if context.cluster is not None:
        yield
        return
    if owner is not None:
        from modules.serving.generation_service import owner_models

        with owner_models(context, owner, overrides):
            yield
        return
    if "sd_model_checkpoint" not in overrides:
        context.load_default_model()
    yield


def _shown_warnings(warnings: Sequence[str]) -> list[str]:
    """The warnings for the gallery: each once (every file repeats the engine's notes), at most
    `MAX_WARNINGS_SHOWN` of them; the log has every one."""
    unique = list(dict.fromkeys(warnings))
    if len(unique) <= MAX_WARNINGS_SHOWN:
        return unique
    rest = len(unique) - MAX_WARNINGS_SHOWN
    return [*unique[:MAX_WARNINGS_SHOWN], f"... and {rest} more warning{'s' if rest != 1 else ''} (see the console)"]


def _warn(result: GenerationResult, control, message: str) -> None:
    log.warning("img2img batch: %s", message)
    result.warnings.append(message)
    control.add_info(message)


def _run_one(context, request: Img2ImgRequest, control, save: bool | None, selection) -> GenerationResult:
    """One file through the path of a single img2img: the img2img tab's scripts and callbacks (on a
    Ray worker when there are workers: the files are read here, the request travels)."""
    from modules.extension_host.scripts import run_img2img

    if context.cluster is not None:
        from modules.serving.generation_service import GenerationSubmission

        return context.cluster.run_generation(GenerationSubmission(request, selection, save=save), control)
    return run_img2img(context, request, control, save=save, selection=selection)


def _collect(combined: GenerationResult, result: GenerationResult, limit: int) -> None:
    """Add one file's result; the gallery keeps the first `limit` images (-1 = all)."""
    if not combined.images and not combined.infotexts:
        combined.index_of_first_image = result.index_of_first_image
    room = len(result.images) if limit < 0 else max(0, limit - len(combined.images))
    for name in ("images", "seeds", "subseeds", "prompts", "negative_prompts", "infotexts"):
        getattr(combined, name).extend(getattr(result, name)[:room])
    combined.saved_paths.extend(result.saved_paths)
    combined.warnings.extend(result.warnings)
    for key, seconds in result.timings.items():
        combined.timings[key] = combined.timings.get(key, 0.0) + seconds
    result.images.clear()  # what the gallery does not keep is not held until the batch ends


def _file_request(context, base: dict[str, Any], plan: BatchPlan, item: BatchFile,
                  scale_by: float | None, notes: list[str]) -> Img2ImgRequest:
    """The request for one file; what the user should know about it is added to `notes`."""
    from modules.generation.requests import Img2ImgRequest

    image = read_image(item.path, item.root)
    fields = dict(base)
    fields["override_settings"] = dict(base.get("override_settings") or {})
    if item.mask is not None:
        fields["mask"] = read_image(item.mask, item.mask_root, "mask")
    if scale_by is not None:
        fields["width"], fields["height"] = (max(64, int(side * scale_by) // 8 * 8) for side in image.size)
    if plan.png_info_props:
        _apply_png_info(context, fields, item, plan, base, notes)
    if plan.output_dir is not None:
        fields["override_settings"].update(_output_overrides(plan.output_dir, item.path.stem, fields))
    fields["init_images"] = [image] * int(fields.get("batch_size", 1))
    return Img2ImgRequest(**fields)


def _output_overrides(output_dir: Path, stem: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    """A1111's overrides for a batch output folder, with "Add number suffix" always (never overwrite)."""
    from modules.outputs.images import pattern_problem

    several = int(fields.get("n_iter", 1)) > 1 or int(fields.get("batch_size", 1)) > 1
    pattern = f"{stem}-[generation_number]" if several else stem
    problem = pattern_problem(pattern)
    if problem is not None:
        raise SkippedFile(f"{stem}: its name cannot name an output file ({problem}); rename it; skipped")
    return {"outdir_samples": "", "outdir_img2img_samples": str(output_dir), "save_to_dirs": False,
            "samples_filename_pattern": pattern, "save_images_replace_action": "Add number suffix"}


def _infotext_of(item: BatchFile, plan: BatchPlan) -> str | None:
    from modules.outputs.image_metadata import ImageMetadataError, read_image_metadata

    if plan.png_info_dir is not None:
        source, root = plan.png_info_dir / item.path.name, plan.png_info_dir
    else:
        source, root = item.path, item.root
    real = Path(os.path.realpath(source))
    if root is not None and not is_inside(real, root):
        raise SkippedFile(f"{source}: its symbolic link leads out of {root}")
    if not os.path.lexists(real):
        raise SkippedFile(f"{source}: not found")
    try:
        with _open_regular(real, source) as file:
            return read_image_metadata(file)[0]
    except (OSError, ImageMetadataError) as error:
        raise SkippedFile(f"{source}: {error}") from None


def _apply_png_info(context, fields: dict[str, Any], item: BatchFile, plan: BatchPlan, base: Mapping[str, Any],
                    notes: list[str]) -> None:
    """The ticked infotext keys (module docstring); an unreadable infotext leaves the tab's values."""
    from modules.generation.infotext_fields import read_infotext
    from modules.library.checkpoints import CheckpointNotFoundError

    try:
        text = _infotext_of(item, plan)
    except SkippedFile as error:
        notes.append(f"{item.path}: no PNG info ({error}); the tab's values are used")
        return
    if not text:
        return
    reading = read_infotext(text, context.settings.current(), img2img=True)
    values, props = reading.values, plan.png_info_props
    for prop, name in (("Prompt", "prompt"), ("Negative prompt", "negative_prompt")):
        if prop in props and values.get(name):
            fields[name] = f"{base.get(name, '')} {values[name]}"
    for prop, name in (("Seed", "seed"), ("CFG scale", "cfg_scale"), ("Steps", "steps"), ("Sampler", "sampler_name")):
        if prop in props and name in values:
            fields[name] = values[name]
    if "Sampler" in props and "scheduler" in values:
        fields["scheduler"] = values["scheduler"]
    model_hash = reading.parameters.get("Model hash")
    if "Model hash" in props and model_hash:
        try:
            fields["override_settings"]["sd_model_checkpoint"] = context.checkpoints.find(str(model_hash)).title
        except CheckpointNotFoundError:
            notes.append(f"{item.path}: no checkpoint has the hash {model_hash}; the tab's checkpoint is used")
