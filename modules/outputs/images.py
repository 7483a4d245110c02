"""Saving generated images the way A1111 lays them out on disk (A1111.md §7.3), and grids.

    outputs/txt2img-images/2024-07-27/00000-123456.png      save_image(..., basename="")
    outputs/txt2img-grids/2024-07-27/grid-0000.png          save_image(..., basename="grid", grid=True)

- `SaveOptions` holds A1111's saving settings under A1111's names and defaults.
- `FilenameContext` is what the filename pattern tags (`[seed]`, `[prompt_words]`, ...) may read;
  `FilenameGenerator.apply` expands a pattern from it.
- `save_image` picks the folder and the next free number, encodes the image in memory and writes it
  through a temp file renamed into place (modules.common.atomic_files), so a watcher never sees a
  half-written image, a failure or a kill leaves nothing under the final name, and a full disk is
  reported with the folder and the bytes needed. PNGs get the infotext as a `parameters` text
  chunk, JPEG/WebP as an EXIF UserComment.
- Patterns and tags never lead out of the output folder: what they expand to is one file name and
  at most one folder name (separators and `.`/`..` are made harmless by `safe_name_part`), and
  `save_image` refuses a final path outside the folder it was given.
- `image_grid` pastes images into rows as A1111 does.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import logging
import math
import os
import re
import string
import zoneinfo
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

from modules.common.atomic_files import DiskFullError, free_space, is_disk_full, write_bytes
from modules.outputs.infotext import exif_with_user_comment

log = logging.getLogger(__name__)

# Characters no file name part may hold (Windows' set, plus '#' which breaks URLs, and controls).
INVALID_FILENAME_CHARS = '#<>:"/\\|?*\n\r\t'
MAX_FILENAME_PART_LENGTH = 128
DEFAULT_TIME_FORMAT = "%Y%m%d%H%M%S"
# Retries past the computed next number, for files another process saved in the meantime.
SEQUENCE_RETRIES = 500
# Used when the platform cannot tell the file system's name limit (no statvfs): the common limit.
DEFAULT_NAME_MAX = 255

RE_NONLETTERS = re.compile(r"[\s" + re.escape(string.punctuation) + "]+")
# A pattern is literal text and [tag] or [tag<arg1><arg2>] groups (A1111's filename pattern syntax).
RE_PATTERN = re.compile(r"(.*?)(?:\[([^\[\]]+)\]|$)")
RE_PATTERN_ARG = re.compile(r"(.*)<([^>]*)>$")


class _SkipPreviousText:
    """Returned by a tag with nothing to say: the tag and the literal text before it are dropped, so
    `[seed]-[seed_last]` is `123` for a single image, not `123-`."""

    def __repr__(self) -> str:
        return "SKIP_PREVIOUS_TEXT"


SKIP_PREVIOUS_TEXT = _SkipPreviousText()


@dataclass(frozen=True)
class SaveOptions:
    """A1111's image-saving settings (`modules/shared_options.py`), same names and defaults."""

    outdir_samples: str = ""  # overrides outdir_txt2img_samples when set
    outdir_txt2img_samples: str = "outputs/txt2img-images"
    outdir_grids: str = ""
    outdir_txt2img_grids: str = "outputs/txt2img-grids"
    outdir_img2img_samples: str = "outputs/img2img-images"
    outdir_img2img_grids: str = "outputs/img2img-grids"
    samples_format: str = "png"
    grid_format: str = "png"
    save_to_dirs: bool = True
    grid_save_to_dirs: bool = True
    directories_filename_pattern: str = "[date]"
    directories_max_prompt_words: int = 8
    samples_filename_pattern: str = ""
    save_images_add_number: bool = True
    save_images_replace_action: str = "Replace"  # or "Add number suffix"
    grid_extended_filename: bool = False
    enable_pnginfo: bool = True
    jpeg_quality: int = 80
    webp_lossless: bool = False
    export_for_4chan: bool = True
    img_downscale_threshold: float = 4.0  # MB
    target_side_length: int = 4000
    save_txt: bool = False
    n_rows: int = -1
    grid_prevent_empty_spots: bool = False

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> SaveOptions:
        """The options found in `settings` (e.g. a `Settings`), defaults for the rest."""
        known = {f.name for f in fields(cls)}
        return cls(**{key: settings[key] for key in known if key in settings})

    def __post_init__(self) -> None:
        if self.save_images_replace_action not in ("Replace", "Add number suffix"):
            raise ValueError(
                f"save_images_replace_action must be 'Replace' or 'Add number suffix', "
                f"got {self.save_images_replace_action!r}"
            )


def txt2img_output_dirs(data_dir: str | os.PathLike, options: SaveOptions) -> tuple[Path, Path]:
    """(images folder, grids folder) for txt2img; relative settings are under `data_dir`. An empty
    txt2img folder setting means its default (A1111 wrote into the folder it was started from,
    which is the install folder)."""
    samples = options.outdir_samples or options.outdir_txt2img_samples or SaveOptions.outdir_txt2img_samples
    grids = options.outdir_grids or options.outdir_txt2img_grids or SaveOptions.outdir_txt2img_grids
    return Path(data_dir, samples), Path(data_dir, grids)


def img2img_output_dirs(data_dir: str | os.PathLike, options: SaveOptions) -> tuple[Path, Path]:
    """(images folder, grids folder) for img2img, by the same rules as `txt2img_output_dirs`."""
    samples = options.outdir_samples or options.outdir_img2img_samples or SaveOptions.outdir_img2img_samples
    grids = options.outdir_grids or options.outdir_img2img_grids or SaveOptions.outdir_img2img_grids
    return Path(data_dir, samples), Path(data_dir, grids)


@dataclass(frozen=True)
class FilenameContext:
    """What the filename pattern tags read. None means "unknown": the tag is then left as written
    (except `[seed]`, which A1111 writes as empty).

    `prompt` is this image's prompt (styles applied); `request_prompt` the prompt as the user typed
    it (A1111's `p.prompt`, used by `[full_prompt_hash]`), defaulting to `prompt`.
    """

    seed: int | None = None
    all_seeds: tuple[int, ...] = ()
    prompt: str | None = None
    negative_prompt: str | None = None
    request_prompt: str | None = None
    styles: tuple[str, ...] = ()
    style_prompts: tuple[str, ...] = ()  # the styles' prompt texts, for [prompt_no_styles]
    steps: int | None = None
    cfg_scale: float | None = None
    width: int | None = None  # used when no image is given; the image's size wins otherwise
    height: int | None = None
    sampler_name: str | None = None
    scheduler: str | None = None  # the UI label, "Automatic" included
    sampler_default_scheduler: str | None = None  # what "Automatic" means for this sampler, e.g. "karras"
    model_hash: str | None = None
    model_name: str | None = None
    vae_filename: str | None = None  # the VAE file path or name; None shows as "NoneType", as in A1111
    job_timestamp: str | None = None
    batch_size: int = 1
    n_iter: int = 1
    batch_index: int = 0
    iteration: int = 0
    clip_skip: int = 1
    denoising_strength: float | None = None
    user: str | None = None
    max_prompt_words: int = 8  # directories_max_prompt_words
    now: dt.datetime | None = None  # fixed "now" for [date]/[datetime]; None reads the clock


def sanitize_filename_part(text: str | None, replace_spaces: bool = True) -> str | None:
    """`text` made safe as part of a file name: bad characters to `_`, no leading spaces, no
    trailing spaces or dots, at most 128 characters."""
    if text is None:
        return None
    if replace_spaces:
        text = text.replace(" ", "_")
    text = text.translate({ord(c): "_" for c in INVALID_FILENAME_CHARS})
    text = text.lstrip(" ")[:MAX_FILENAME_PART_LENGTH]
    return text.rstrip(" .")


# Characters that would make a name a path, or that no name should hold: separators and controls.
_UNSAFE_IN_NAME = {ord(c): "_" for c in "/\\"} | {code: "_" for code in range(32)}


def safe_name_part(text: str) -> str:
    """`text` as (part of) one file or folder name: path separators and control characters become
    `_`, and a name of dots only (`.`, `..`) becomes underscores, so it never leads out of its folder."""
    text = text.translate(_UNSAFE_IN_NAME)
    bare = text.strip(" ")
    if bare and set(bare) == {"."}:
        text = text.replace(".", "_")
    return text


def pattern_problem(pattern: str) -> str | None:
    """What is wrong with a file or folder name pattern, or None. A pattern names one file or one
    folder inside the output folder: its literal text (outside [tags]) may hold no path separator
    and may not be only dots. (Tag values are made safe when expanded, see `safe_name_part`.)"""
    literal = "".join(match.group(1) for match in RE_PATTERN.finditer(pattern))
    separators = [c for c in ("/", "\\") if c in literal]
    if separators:
        return (f"must not contain {' or '.join(repr(c) for c in separators)} outside [tags]: a pattern names one "
                f"file or one folder inside the output folder, not a path (got {pattern!r})")
    if any(ord(c) < 32 for c in pattern):
        return f"must not contain control characters (got {pattern!r})"
    bare = pattern.strip(" ")
    if bare and set(bare) == {"."}:
        return f"must not be only dots: {pattern!r} names the folder itself or the one above it"
    return None


def _string_hash(text: str, *args: str) -> str:
    length = int(args[0]) if args and args[0] != "" else 8
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def _scheduler_label(ctx: FilenameContext) -> str | None:
    """The scheduler in effect, as A1111 names it in file names ("Automatic" resolved, capitalised)."""
    if ctx.scheduler is None:
        return None
    name = ctx.scheduler
    if name == "Automatic" and ctx.sampler_default_scheduler:
        name = ctx.sampler_default_scheduler
    return name.capitalize()


def _vae_file_stem(path: str | None) -> str:
    if path is None:
        return "NoneType"
    parts = os.path.basename(path).split(".")
    # ".vae.pt" style names: the stem is the part after the leading dot.
    return parts[1] if len(parts) > 1 and parts[0] == "" else parts[0]


class FilenameGenerator:
    """Expands A1111 filename patterns such as `[seed]-[prompt_words]` or `[datetime<%Y%m%d><UTC>]`.

    Tag names are case-insensitive. An unknown tag, a tag whose value is unknown, or a tag that fails
    (a bad `<arg>`) is left in the name as written, as in A1111.
    """

    def __init__(self, ctx: FilenameContext, image: Image.Image | None = None):
        self.ctx = ctx
        self.image = image
        self._tags: dict[str, Callable[..., Any]] = {
            "seed": lambda: ctx.seed if ctx.seed is not None else "",
            "seed_first": self._seed_first,
            "seed_last": self._seed_last,
            "steps": lambda: ctx.steps,
            "cfg": lambda: ctx.cfg_scale,
            "width": lambda: image.width if image is not None else ctx.width,
            "height": lambda: image.height if image is not None else ctx.height,
            "styles": lambda: sanitize_filename_part(
                ", ".join(s for s in ctx.styles if s != "None") or "None", replace_spaces=False
            ),
            "sampler": lambda: sanitize_filename_part(ctx.sampler_name, replace_spaces=False),
            "scheduler": lambda: sanitize_filename_part(_scheduler_label(ctx), replace_spaces=False),
            "sampler_scheduler": self._sampler_scheduler,
            "model_hash": lambda: ctx.model_hash,
            "model_name": lambda: sanitize_filename_part(ctx.model_name, replace_spaces=False),
            "date": lambda: self._now().strftime("%Y-%m-%d"),
            "datetime": self._datetime,
            "job_timestamp": lambda: ctx.job_timestamp,
            "prompt_hash": lambda *args: None if ctx.prompt is None else _string_hash(ctx.prompt, *args),
            "negative_prompt_hash": lambda *args: (
                None if ctx.negative_prompt is None else _string_hash(ctx.negative_prompt, *args)
            ),
            # The space keeps "a b"+"" and "a"+"b" apart.
            "full_prompt_hash": lambda *args: _string_hash(
                f"{ctx.request_prompt or ctx.prompt or ''} {ctx.negative_prompt or ''}", *args
            ),
            "prompt": lambda: sanitize_filename_part(ctx.prompt),
            "prompt_no_styles": self._prompt_no_styles,
            "prompt_spaces": lambda: sanitize_filename_part(ctx.prompt, replace_spaces=False),
            "prompt_words": self._prompt_words,
            "batch_number": lambda: SKIP_PREVIOUS_TEXT if ctx.batch_size == 1 else ctx.batch_index + 1,
            "batch_size": lambda: ctx.batch_size,
            "generation_number": self._generation_number,
            "hasprompt": self._hasprompt,
            "clip_skip": lambda: ctx.clip_skip,
            "denoising": lambda: ctx.denoising_strength if ctx.denoising_strength else SKIP_PREVIOUS_TEXT,
            "user": lambda: ctx.user,
            "vae_filename": lambda: _vae_file_stem(ctx.vae_filename),
            "none": lambda: "",  # a pattern of just [none] gives a name that is only the number
            "image_hash": self._image_hash,
        }

    def _now(self) -> dt.datetime:
        return self.ctx.now if self.ctx.now is not None else dt.datetime.now()

    def _seed_first(self) -> Any:
        if self.ctx.batch_size == 1 or not self.ctx.all_seeds:
            return self.ctx.seed
        return self.ctx.all_seeds[0]

    def _seed_last(self) -> Any:
        if self.ctx.batch_size == 1 or not self.ctx.all_seeds:
            return SKIP_PREVIOUS_TEXT
        return self.ctx.all_seeds[-1]

    def _generation_number(self) -> Any:
        ctx = self.ctx
        if ctx.n_iter == 1 and ctx.batch_size == 1:
            return SKIP_PREVIOUS_TEXT
        return ctx.iteration * ctx.batch_size + ctx.batch_index + 1

    def _sampler_scheduler(self) -> str | None:
        if self.ctx.sampler_name is None or self.ctx.scheduler is None:
            return None
        return sanitize_filename_part(f"{self.ctx.sampler_name} {_scheduler_label(self.ctx)}", replace_spaces=False)

    def _prompt_no_styles(self) -> str | None:
        prompt = self.ctx.prompt
        if prompt is None:
            return None
        for style in self.ctx.style_prompts:
            if not style:
                continue
            for part in style.split("{prompt}"):
                prompt = prompt.replace(part, "").replace(", ,", ",").strip().strip(",")
            prompt = prompt.replace(style, "").strip().strip(",").strip()
        return sanitize_filename_part(prompt, replace_spaces=False)

    def _prompt_words(self) -> str | None:
        words = [w for w in RE_NONLETTERS.split(self.ctx.prompt or "") if w]
        if not words:
            words = ["empty"]
        return sanitize_filename_part(" ".join(words[: self.ctx.max_prompt_words]), replace_spaces=False)

    def _datetime(self, *args: str) -> str | None:
        time_format = args[0] if args and args[0] != "" else DEFAULT_TIME_FORMAT
        zone = None
        if len(args) > 1:
            try:
                zone = zoneinfo.ZoneInfo(args[1])
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                log.warning("filename pattern: unknown time zone %r, using local time", args[1])
        moment = self._now().astimezone(zone)
        try:
            formatted = moment.strftime(time_format)
        except (ValueError, TypeError):
            formatted = moment.strftime(DEFAULT_TIME_FORMAT)
        return sanitize_filename_part(formatted, replace_spaces=False)

    def _hasprompt(self, *args: str) -> str | None:
        """`[hasprompt<word|default><word2>]`: each word if the prompt contains it, else its default."""
        if self.ctx.prompt is None:
            return None
        lower = self.ctx.prompt.lower()
        out = ""
        for arg in args:
            if arg == "":
                continue
            expected, _, default = arg.partition("|")
            expected = expected.lower()
            out += expected if expected in lower else default
        return sanitize_filename_part(out)

    def _image_hash(self, *args: str) -> str | None:
        if self.image is None:
            return None
        length = int(args[0]) if args and args[0] != "" else None
        return hashlib.sha256(self.image.tobytes()).hexdigest()[:length]

    def apply(self, pattern: str) -> str:
        """`pattern` with every known tag replaced (tag values are sanitised, literal text is not)."""
        result = ""
        for match in RE_PATTERN.finditer(pattern):
            text, tag = match.groups()
            if tag is None:
                result += text
                continue
            name, args = tag, []
            while (arg_match := RE_PATTERN_ARG.match(name)) is not None:
                name, arg = arg_match.groups()
                args.insert(0, arg)
            replace = self._tags.get(name.lower())
            if replace is not None:
                try:
                    value = replace(*args)
                except (TypeError, ValueError, IndexError) as error:
                    log.warning("filename pattern: cannot expand [%s] (%s); left as written", tag, error)
                    value = None
                if value is SKIP_PREVIOUS_TEXT:
                    continue
                if value is not None:
                    result += text + str(value)
                    continue
            result += f"{text}[{tag}]"
        return result


def get_next_sequence_number(path: str | os.PathLike, basename: str) -> int:
    """1 + the largest leading number among `path`'s files (after `<basename>-` if given); 0 if none."""
    prefix = f"{basename}-" if basename else ""
    highest = -1
    for name in os.listdir(path):
        if not name.startswith(prefix):
            continue
        first = os.path.splitext(name[len(prefix):])[0].split("-")[0]
        try:
            highest = max(int(first), highest)
        except ValueError:
            continue
    return highest + 1


def _name_max(folder: str | os.PathLike) -> int:
    if hasattr(os, "statvfs"):
        return os.statvfs(folder).f_namemax
    return DEFAULT_NAME_MAX


def truncate_filename(name: str, extension: str, name_max: int) -> str:
    """`name` shortened so that `name + extension`, and `name + ".tmp"`, fit in `name_max` bytes.

    Counted in UTF-8 bytes, which is what file systems limit; a multi-byte character is never split.
    """
    budget = name_max - max(4, len(extension.encode()))
    encoded = name.encode()
    if len(encoded) <= budget:
        return name
    return encoded[:budget].decode("utf8", errors="ignore")


def _format_for(extension: str) -> str:
    image_format = Image.registered_extensions().get(extension.lower())
    if image_format is None:
        raise ValueError(f"cannot save images as {extension!r}: Pillow knows no format with that extension")
    return image_format


def write_image_with_geninfo(
    image: Image.Image,
    destination: Any,
    extension: str,
    infotext: str | None,
    options: SaveOptions,
    existing_pnginfo: Mapping[str, Any] | None = None,
    pnginfo_section_name: str = "parameters",
) -> None:
    """Write `image` to `destination` (path or file object) as `extension`, carrying `infotext`:
    PNG text chunk, JPEG/WebP EXIF UserComment, GIF comment; nothing when `enable_pnginfo` is off."""
    ext = extension.lower()
    image_format = _format_for(ext)
    with_info = options.enable_pnginfo and infotext is not None
    if ext == ".png":
        pnginfo = None
        if options.enable_pnginfo:
            pnginfo = PngImagePlugin.PngInfo()
            for key, value in {**(existing_pnginfo or {}), **({pnginfo_section_name: infotext} if with_info else {})}.items():
                # add_text writes an iTXt (UTF-8) chunk itself when the text is not Latin-1.
                pnginfo.add_text(key, str(value))
        image.save(destination, format=image_format, pnginfo=pnginfo)
    elif ext in (".jpg", ".jpeg", ".webp"):
        # JPEG has no alpha; A1111 drops it for WebP too, and maps 16-bit grey into 8 bits.
        if image.mode == "RGBA":
            image = image.convert("RGB")
        elif image.mode == "I;16":
            image = image.point(lambda p: p * 0.0038910505836576).convert("RGB" if ext == ".webp" else "L")
        extra: dict[str, Any] = {"quality": options.jpeg_quality}
        if ext == ".webp":
            extra["lossless"] = options.webp_lossless
        if with_info:
            extra["exif"] = exif_with_user_comment(infotext)
        image.save(destination, format=image_format, **extra)
    elif ext == ".gif":
        image.save(destination, format=image_format, **({"comment": infotext} if with_info else {}))
    else:
        image.save(destination, format=image_format, quality=options.jpeg_quality)


def _write_file(final_path: str, data: bytes, add_number_suffix: bool, what: str) -> str:
    """Write `data` to `final_path` whole or not at all (or to `final_path` with `-1`, `-2`, ... when
    `add_number_suffix` and it exists); returns the path written. Raises `DiskFullError` when the
    folder has no room for it."""
    def choose(final: Path) -> Path:
        stem, extension = os.path.splitext(final)
        target, n = final, 0
        while add_number_suffix and target.exists():
            n += 1
            target = Path(f"{stem}-{n}{extension}")
        return target

    return str(write_bytes(final_path, data, what=what, choose_target=choose))


def _check_inside(path: str, folder: str | os.PathLike) -> None:
    """Refuse a path outside `folder`, whatever the patterns, tags or names that built it."""
    if not Path(os.path.abspath(path)).is_relative_to(os.path.abspath(folder)):
        raise ValueError(f"refusing to save {path!r}: it is outside the output folder {str(folder)!r} "
                         "(check the filename and directory patterns)")


@dataclass(frozen=True)
class SavedImage:
    path: str
    txt_path: str | None = None
    jpg_copy_path: str | None = None  # the export_for_4chan downscaled JPEG, when written


def save_image(
    image: Image.Image,
    path: str | os.PathLike,
    basename: str = "",
    *,
    context: FilenameContext,
    options: SaveOptions = SaveOptions(),
    infotext: str | None = None,
    extension: str | None = None,
    grid: bool = False,
    short_filename: bool = False,
    suffix: str = "",
    forced_filename: str | None = None,
    save_to_dirs: bool | None = None,
    existing_pnginfo: Mapping[str, Any] | None = None,
    pnginfo_section_name: str = "parameters",
) -> SavedImage:
    """Save `image` under `path` with A1111's folder and file naming, atomically.

    - Subfolder (when `save_to_dirs`, default from the options): `directories_filename_pattern`, or
      `[prompt_words]` when that is empty.
    - Name: `NNNNN-<pattern>.<ext>` (`<basename>-NNNN...` with a basename, e.g. `grid-0000.png`),
      where the pattern is `samples_filename_pattern`, else `[seed]` (with save_to_dirs) or
      `[seed]-[prompt_spaces]`; none with `short_filename` or when the seed is unknown. NNNNN is
      1 + the largest leading number in the folder, moved on while that name exists.
    - The name is cut to the file system's name limit; the image goes to `<name>.tmp`, then is
      renamed; `save_images_replace_action` "Add number suffix" renames to `<name>-1.<ext>` rather
      than replace an existing file.
    """
    extension = (extension or options.samples_format).lstrip(".")
    _format_for(f".{extension}")  # fail before touching the disk
    namegen = FilenameGenerator(context, image)
    if save_to_dirs is None:
        save_to_dirs = options.grid_save_to_dirs if grid else options.save_to_dirs
    folder = _prepare_folder(path, namegen, options, save_to_dirs)

    if forced_filename is None:
        name = _choose_name(folder, basename, extension, namegen, options,
                            short_filename=short_filename or context.seed is None, suffix=suffix)
    else:
        name = forced_filename
    name = truncate_filename(safe_name_part(name), f".{extension}", _name_max(folder))
    final_path = os.path.join(folder, f"{name}.{extension}")
    _check_inside(final_path, path)

    def encoded(ext: str, picture: Image.Image) -> bytes:
        # In memory first: the exact size is known before the disk is touched (a full disk is then
        # refused up front, with the size), and the file exists only for the time of one write.
        buffer = io.BytesIO()
        write_image_with_geninfo(picture, buffer, ext, infotext, options, existing_pnginfo, pnginfo_section_name)
        return buffer.getvalue()

    add_suffix = options.save_images_replace_action != "Replace"
    full_path = _write_file(final_path, encoded(f".{extension}", image), add_suffix,
                            what=f"the image {name}.{extension}")
    stem = os.path.splitext(full_path)[0]
    jpg_copy = _write_jpeg_copy(image, full_path, extension, options, encoded, add_suffix)

    txt_path = None
    if options.save_txt and infotext is not None:
        txt_path = _write_file(f"{stem}.txt", (infotext + "\n").encode("utf8"), add_number_suffix=False,
                               what=f"the infotext {os.path.basename(stem)}.txt")
    return SavedImage(path=full_path, txt_path=txt_path, jpg_copy_path=jpg_copy)


def _prepare_folder(path: str | os.PathLike, namegen: FilenameGenerator, options: SaveOptions,
                    save_to_dirs: bool) -> str:
    """The folder the image goes to (`path`, or its subfolder from `directories_filename_pattern`),
    checked to lie inside `path` and created; a full disk raises DiskFullError."""
    folder = str(path)
    if save_to_dirs:
        dirname = namegen.apply(options.directories_filename_pattern or "[prompt_words]").lstrip(" ").rstrip("\\ /")
        folder = os.path.join(folder, safe_name_part(dirname))
    _check_inside(folder, path)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as error:
        if is_disk_full(error):
            raise DiskFullError(folder, None, free_space(path), f"the folder {os.path.basename(folder)}") from error
        raise
    return folder


def _choose_name(folder: str, basename: str, extension: str, namegen: FilenameGenerator,
                 options: SaveOptions, *, short_filename: bool, suffix: str) -> str:
    """The file name without extension: the `samples_filename_pattern` decoration, led by the next
    free sequence number (`NNNNN` or `<basename>-NNNN`) unless numbering is off."""
    if short_filename:
        decoration = ""
    elif options.save_to_dirs:
        decoration = options.samples_filename_pattern or "[seed]"
    else:
        decoration = options.samples_filename_pattern or "[seed]-[prompt_spaces]"
    add_number = options.save_images_add_number or decoration == ""
    if decoration and add_number:
        decoration = f"-{decoration}"
    decoration = namegen.apply(decoration) + suffix
    if not add_number:
        return decoration
    start = get_next_sequence_number(folder, basename)
    for i in range(SEQUENCE_RETRIES):
        number = f"{start + i:05}" if basename == "" else f"{basename}-{start + i:04}"
        name = f"{number}{decoration}"
        if not os.path.exists(os.path.join(folder, f"{name}.{extension}")):
            break
    return name


def _write_jpeg_copy(image: Image.Image, full_path: str, extension: str, options: SaveOptions,
                     encoded: Callable[[str, Image.Image], bytes], add_suffix: bool) -> str | None:
    """With `export_for_4chan`, a JPEG beside a non-JPEG image that is over `target_side_length` on a
    side (resized to fit) or over `img_downscale_threshold` MB; its path, or None."""
    oversize = image.width > options.target_side_length or image.height > options.target_side_length
    too_big = os.stat(full_path).st_size > options.img_downscale_threshold * 1024 * 1024
    if not (options.export_for_4chan and extension.lower() not in ("jpg", "jpeg") and (oversize or too_big)):
        return None
    copy = image
    if oversize:
        side = options.target_side_length
        if image.width > image.height:
            size = (round(side), round(image.height * side / image.width))
        else:
            size = (round(image.width * side / image.height), round(side))
        copy = image.resize(size, Image.Resampling.LANCZOS)
    stem = os.path.splitext(full_path)[0]
    return _write_file(f"{stem}.jpg", encoded(".jpg", copy), add_suffix,
                       what=f"the JPEG copy {os.path.basename(stem)}.jpg")


def grid_rows(count: int, *, batch_size: int = 1, n_rows: int = -1, prevent_empty_spots: bool = False) -> int:
    """A1111's grid row count: `n_rows` if > 0; the batch size if 0; otherwise round(sqrt(count)),
    or with `prevent_empty_spots` the largest divisor of `count` not above floor(sqrt(count))."""
    if count < 1:
        raise ValueError(f"a grid needs at least one image, got {count}")
    if n_rows > 0:
        return n_rows
    if n_rows == 0:
        return batch_size
    if prevent_empty_spots:
        rows = math.floor(math.sqrt(count))
        while count % rows != 0:
            rows -= 1
        return rows
    return round(math.sqrt(count))


def image_grid(
    images: Sequence[Image.Image],
    rows: int | None = None,
    *,
    batch_size: int = 1,
    n_rows: int = -1,
    prevent_empty_spots: bool = False,
) -> Image.Image:
    """The images pasted left to right, top to bottom, on black, every cell the first image's size.

    `rows` None uses `grid_rows` with the `n_rows`/`grid_prevent_empty_spots` settings.
    """
    if not images:
        raise ValueError("image_grid needs at least one image, got none")
    if rows is None:
        rows = grid_rows(len(images), batch_size=batch_size, n_rows=n_rows, prevent_empty_spots=prevent_empty_spots)
    if rows < 1:
        raise ValueError(f"grid rows must be >= 1, got {rows}")
    cols = math.ceil(len(images) / rows)
    width, height = images[0].size
    grid = Image.new("RGB", size=(cols * width, rows * height), color="black")
    for i, picture in enumerate(images):
        grid.paste(picture, box=(i % cols * width, i // cols * height))
    return grid
