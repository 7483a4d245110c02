"""A model's card, in the files A1111 and its extensions read beside the model.

- `<stem>.json`: A1111's user metadata (what its "edit metadata" dialog writes): `description`,
  `activation text` (put into the prompt after a LoRA's tag), `sd version` ("SD1", "SD2", "SDXL",
  "Unknown"), `preferred weight` (0 means "the default multiplier"), `negative text`, `notes`, and
  for checkpoints `vae`. Written with indent 4 and UTF-8 text, as A1111 writes it. A download fills
  the fields the user left empty and never changes one they set; keys it does not know are kept.
- `<stem>.civitai.info`: Civitai's model-version JSON, verbatim (indent 4, as Civitai Helper writes
  it), for the extensions that read it.
- `<stem>.preview.png`: a preview image, re-encoded by Pillow (whatever the source said it was),
  written only when the model has no preview yet under any of A1111's preview names.

A corrupt `<stem>.json` (not JSON, not an object, unreadable) is read as empty; a merge moves it
aside to `<stem>.json.bad` (`.json.bad-2`, ... when that exists) before writing a new one, so the
user's text is never destroyed and the card still gets written. Every file is written through a
temp file and renamed into place (modules.common.atomic_files).
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from modules.common.atomic_files import write_bytes
from modules.model_sources.types import CONTENT_LEVELS, ModelSourceError, PreviewImage, RemoteFile, RemoteModel

log = logging.getLogger(__name__)

USER_METADATA_SUFFIX = ".json"
CIVITAI_INFO_SUFFIX = ".civitai.info"
PREVIEW_SUFFIX = ".preview.png"
# A1111's preview names, in the order it looks: for each extension `<stem>.<ext>`, then
# `<stem>.preview.<ext>`.
PREVIEW_EXTENSIONS = ("png", "jpg", "jpeg", "webp", "gif")
SD_VERSIONS = ("SD1", "SD2", "SDXL", "Unknown")
VIDEO_EXTENSIONS = (".mp4", ".webm", ".mov", ".m4v", ".avi", ".mkv")

# A user-metadata file is a few KB; anything this large is not one (and is not read into memory).
MAX_USER_METADATA_BYTES = 4 << 20
# Previews: the encoded image a source may send, the pixels it may claim before it is decoded
# (a small file can declare a huge image: a decompression bomb), and the size it is stored at
# (cards show a few hundred pixels; a full 4K render would make every card load slowly).
MAX_PREVIEW_BYTES = 32 << 20
MAX_PREVIEW_PIXELS = 40_000_000
PREVIEW_MAX_SIDE = 1024
_PREVIEW_FORMATS = frozenset({"PNG", "JPEG", "WEBP", "GIF"})
_OUTPUT_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}


class PreviewRefused(ModelSourceError):
    """Bytes that are not an image Atelier stores as a preview; the message says what they were."""


# --- user metadata (<stem>.json) -------------------------------------------------------------------


def user_metadata_path(model_file: Path) -> Path:
    model_file = Path(model_file)
    return model_file.with_name(model_file.stem + USER_METADATA_SUFFIX)


def _load_user_metadata(path: Path) -> dict:
    """The object in `path`; {} when there is no file; ValueError saying why when it is not one."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return {}
    if size > MAX_USER_METADATA_BYTES:
        raise ValueError(f"{size} bytes, more than a user-metadata file has ({MAX_USER_METADATA_BYTES})")
    try:
        data = json.loads(path.read_bytes().decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"not JSON: {error}") from None
    if not isinstance(data, dict):
        raise ValueError(f"a JSON {type(data).__name__}, not an object")
    return data


def read_user_metadata(model_file: Path) -> dict:
    """A1111's user metadata of `model_file` (`<stem>.json`): {} when there is none, or when it
    cannot be read (logged; as A1111, a broken file never hides the model)."""
    path = user_metadata_path(model_file)
    try:
        return _load_user_metadata(path)
    except (OSError, ValueError) as error:
        log.warning("Ignoring the user metadata %s: %s", path, error)
        return {}


def _is_empty(key: str, value: Any) -> bool:
    """Whether a field holds nothing the user chose (A1111's editor saves empty strings, weight 0
    and "Unknown" for fields left alone)."""
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip() or (key == "sd version" and value.strip() == "Unknown")
    if key == "preferred weight":
        try:
            return float(value) == 0.0
        except (TypeError, ValueError):
            return False
    return False


def _set_aside(path: Path) -> Path:
    """Rename a broken `<stem>.json` to the first free `<stem>.json.bad[-N]`; returns the new path."""
    candidate = path.with_name(path.name + ".bad")
    number = 2
    while candidate.exists():
        candidate = path.with_name(f"{path.name}.bad-{number}")
        number += 1
    os.replace(path, candidate)
    return candidate


def merge_user_metadata(model_file: Path, updates: Mapping) -> Path:
    """Fill the empty or missing fields of `model_file`'s `<stem>.json` from `updates`; fields the
    user set and keys this code does not know stay as they are. A corrupt file is moved aside first
    (see the module docstring). Writes only when something changed; returns the file's path."""
    path = user_metadata_path(model_file)
    try:
        current = _load_user_metadata(path)
    except (OSError, ValueError) as error:
        kept = _set_aside(path)
        log.warning("The user metadata %s could not be read (%s); it was moved to %s and a new one written",
                    path, error, kept.name)
        current = {}
    merged = dict(current)
    for key, value in updates.items():
        if not _is_empty(key, merged.get(key)) or (_is_empty(key, value) and key in merged):
            continue
        merged[key] = value
    if merged != current or not path.exists():
        text = json.dumps(merged, indent=4, ensure_ascii=False)
        write_bytes(path, text.encode("utf-8"), what=f"the card of {Path(model_file).name}")
    return path


# --- card fields from a source ---------------------------------------------------------------------


def sd_version(base_model: str | None) -> str:
    """A1111's `sd version` for a source's base model name (Civitai's `baseModel`): "SD 1.4/1.5..."
    → SD1, "SD 2.x" → SD2, "SDXL ..." and the SDXL families (Pony, Illustrious, NoobAI) → SDXL,
    anything else (SD 3, Flux, video models, unknown) → Unknown."""
    name = re.sub(r"\s+", " ", (base_model or "").strip().lower())
    if re.match(r"sd ?1(\.\d+)?(\b|$)", name):
        return "SD1"
    if re.match(r"sd ?2(\.\d+)?(\b|$)", name):
        return "SD2"
    if name.startswith("sdxl") or name.split(" ")[0] in ("pony", "illustrious", "noobai"):
        return "SDXL"
    return "Unknown"


def _file_for(remote: RemoteModel, name: str | None) -> RemoteFile | None:
    for candidate in remote.files:
        if candidate.name == name:
            return candidate
    return None


def card_fields(remote: RemoteModel, *, file: RemoteFile | None = None) -> dict:
    """The user-metadata fields a source fills: `description` (as the source gives it: Civitai's is
    HTML, shown sanitized), `activation text` (trigger words joined with ", "), `sd version`,
    `preferred weight` (0: sources publish none, A1111 then uses the default multiplier) and `notes`
    (where it came from: page, version, license, file and its sha256 when `file` is given)."""
    notes = []
    if remote.page_url:
        notes.append(f"Source: {remote.page_url}")
    title = remote.name + (f" ({remote.version_name})" if remote.version_name else "")
    notes.append(f"Model: {title}")
    if remote.base_model:
        notes.append(f"Base model: {remote.base_model}")
    if remote.license:
        notes.append(f"License: {remote.license}")
    if file is not None:
        notes.append(f"File: {file.name}")
        if file.sha256:
            notes.append(f"SHA256: {file.sha256.lower()}")
    words = [w.strip() for w in remote.trigger_words if isinstance(w, str) and w.strip()]
    return {
        "description": remote.description or "",
        "activation text": ", ".join(words),
        "sd version": sd_version(remote.base_model),
        "preferred weight": 0.0,
        "notes": "\n".join(notes),
    }


# --- previews --------------------------------------------------------------------------------------


def preview_names(stem: str) -> list[str]:
    """A1111's preview file names for a model named `stem`, in the order it looks for them."""
    return [name for ext in PREVIEW_EXTENSIONS for name in (f"{stem}.{ext}", f"{stem}.preview.{ext}")]


def preview_stems(filename: str) -> list[str]:
    """The model stems a file of this name would be a preview of (`a.preview.png` is one for `a`
    and, by A1111's first rule, for `a.preview`); [] for a name that is no preview name."""
    stems = []
    for ext in PREVIEW_EXTENSIONS:
        if filename.endswith(f".preview.{ext}"):
            stems.append(filename[:-len(f".preview.{ext}")])
        if filename.endswith(f".{ext}"):
            stems.append(filename[:-len(f".{ext}")])
    return [stem for stem in stems if stem]


def find_preview(model_file: Path) -> Path | None:
    """The model's preview as A1111 finds it (`<stem>.png`, `<stem>.preview.png`, then .jpg,
    .jpeg, .webp, .gif): the first that is a regular file, or None."""
    model_file = Path(model_file)
    for name in preview_names(model_file.stem):
        candidate = model_file.with_name(name)
        if candidate.is_file():
            return candidate
    return None


def _is_video(image: PreviewImage) -> bool:
    if (image.media_type or "image").lower() != "image":
        return True
    return urlsplit(image.url).path.lower().endswith(VIDEO_EXTENSIONS)


def _rating(level: Any) -> int | None:
    """The rating bit of a Civitai `nsfwLevel` (the highest bit set: a model's level ORs its
    images'); None when the image is not rated (0, missing or not a number)."""
    if isinstance(level, bool) or not isinstance(level, int) or level <= 0:
        return None
    return 1 << (level.bit_length() - 1)


def choose_preview(remote: RemoteModel, max_level: int) -> PreviewImage | None:
    """The first image of the source's list (its own order: the author's choice first) rated at
    most `max_level` (a value of CONTENT_LEVELS). Videos are skipped. Images the source has not
    rated yet are taken only when the limit is the highest level (XXX): unrated can be anything."""
    levels = sorted(CONTENT_LEVELS.values())
    if isinstance(max_level, bool) or max_level not in levels:
        names = ", ".join(f"{name}={value}" for name, value in CONTENT_LEVELS.items())
        raise ValueError(f"content limit {max_level!r} is not a content level; use one of {names}")
    for image in remote.previews:
        if _is_video(image):
            continue
        rating = _rating(image.nsfw_level)
        if rating is None:
            if max_level == levels[-1]:
                return image
            continue
        if rating <= max_level:
            return image
    return None


def convert_preview(data: bytes, *, output_format: str = "PNG") -> bytes:
    """`data` decoded as an image (PNG, JPEG, WebP or GIF, told by its bytes, never by a name),
    scaled to at most PREVIEW_MAX_SIDE pixels a side, and encoded as `output_format` without the
    source's metadata. Raises PreviewRefused for anything else, a truncated file, or an image that
    claims more than MAX_PREVIEW_PIXELS (checked from the header, before decoding)."""
    from PIL import Image, UnidentifiedImageError

    # What Pillow's decoders raise on damaged data (SyntaxError: "broken PNG file"; struct.error and
    # EOFError from short headers); DecompressionBombError is an Exception, not an OSError.
    decode_errors = (OSError, ValueError, SyntaxError, EOFError, struct.error, Image.DecompressionBombError)

    if len(data) > MAX_PREVIEW_BYTES:
        raise PreviewRefused(f"the preview is {len(data)} bytes, more than {MAX_PREVIEW_BYTES}; not stored")
    try:
        image = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, *decode_errors) as error:
        start = data[:16]
        raise PreviewRefused(f"the preview is not an image Pillow can read ({error}); it starts with {start!r}") \
            from None
    with image:
        if image.format not in _PREVIEW_FORMATS:
            raise PreviewRefused(f"the preview is a {image.format} image; only {sorted(_PREVIEW_FORMATS)} are stored")
        width, height = image.size
        if width <= 0 or height <= 0 or width * height > MAX_PREVIEW_PIXELS:
            raise PreviewRefused(f"the preview claims {width}x{height} pixels, more than {MAX_PREVIEW_PIXELS}; "
                                 "not decoded")
        try:
            image.seek(0)  # the first frame of an animation
            image.load()
            frame = image.convert("RGBA" if _has_alpha(image) else "RGB")
        except decode_errors as error:
            raise PreviewRefused(f"the preview image could not be decoded ({error})") from None
    frame.thumbnail((PREVIEW_MAX_SIDE, PREVIEW_MAX_SIDE), Image.Resampling.LANCZOS)
    if output_format == "JPEG" and frame.mode == "RGBA":
        frame = frame.convert("RGB")
    out = io.BytesIO()
    frame.save(out, format=output_format)
    return out.getvalue()


def _has_alpha(image) -> bool:
    return image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)


# --- all sidecars ----------------------------------------------------------------------------------


def civitai_info_path(model_file: Path) -> Path:
    model_file = Path(model_file)
    return model_file.with_name(model_file.stem + CIVITAI_INFO_SUFFIX)


def write_sidecars(model_file: Path, remote: RemoteModel, *, preview: bytes | None, preview_ext: str = ".png",
                   file: RemoteFile | None = None) -> list[Path]:
    """Write the card files of `model_file` (see the module docstring) and return those written:
    the user metadata merged (never clobbering the user's fields), `.civitai.info` when the source
    is Civitai, and `preview` (encoded bytes of any image format) as `<stem>.preview<preview_ext>`
    unless the model already has a preview. `file` is the source's file that `model_file` holds
    (default: the one of the same name), for the notes. A preview that is not a usable image is
    skipped with a warning in the log: the model and the rest of its card are fine without it."""
    model_file = Path(model_file)
    fmt = _OUTPUT_FORMATS.get(preview_ext.lower())
    if fmt is None:
        raise ValueError(f"preview_ext {preview_ext!r} is not one of {sorted(_OUTPUT_FORMATS)}")
    written = [merge_user_metadata(model_file, card_fields(remote, file=file or _file_for(remote, model_file.name)))]
    if remote.source == "civitai" and remote.raw_version is not None:
        text = json.dumps(remote.raw_version, indent=4)
        written.append(write_bytes(civitai_info_path(model_file), text.encode("utf-8"),
                                   what=f"the Civitai info of {model_file.name}"))
    if preview is not None:
        existing = find_preview(model_file)
        if existing is not None:
            log.info("%s already has a preview (%s); the source's is not stored", model_file.name, existing.name)
        else:
            try:
                encoded = convert_preview(preview, output_format=fmt)
            except PreviewRefused as error:
                log.warning("No preview stored for %s: %s", model_file.name, error)
            else:
                target = model_file.with_name(f"{model_file.stem}.preview{preview_ext.lower()}")
                try:
                    written.append(write_bytes(target, encoded, what=f"the preview of {model_file.name}",
                                               choose_target=_no_preview_yet(model_file)))
                except FileExistsError as error:
                    log.info("%s", error)
    return written


def _no_preview_yet(model_file: Path):
    """`choose_target` for a preview: looks again right before the rename, so a preview the user
    saved meanwhile is not replaced."""
    def choose(final: Path) -> Path:
        existing = find_preview(model_file)
        if existing is not None:
            raise FileExistsError(f"{model_file.name} got a preview meanwhile ({existing.name}); not replaced")
        return final
    return choose
