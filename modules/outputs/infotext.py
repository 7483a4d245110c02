"""Infotext: the `parameters` text A1111 writes into every image, and the parser that reads it back.

The format (A1111.md §7.2) is what users paste between tools, so it is reproduced exactly:

    <prompt, possibly several lines>
    Negative prompt: <negative, possibly several lines>     (omitted when the negative prompt is empty)
    Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 123, Size: 512x512, ...

- `create_infotext` writes it from a prompt, a negative prompt and an ordered parameter mapping;
  `generation_parameters` builds that mapping in A1111's key order from a typed `GenerationInfo`.
- `parse_generation_parameters` returns the dict A1111's parser returns, defaults and back-compat
  flags included.
- `read_info_from_image` finds the text in a PNG `parameters` chunk, a JPEG/WebP EXIF UserComment,
  a GIF comment, or a NovelAI PNG; `exif_with_user_comment` encodes the EXIF block A1111 writes.

Values are written with `str()`, so the caller's types show: `7` gives `CFG scale: 7`, `7.0` gives
`CFG scale: 7.0` (A1111's UI sliders give ints, its API defaults give floats). Parsed values come
back as strings, except the defaults A1111 fills in as ints or bools (listed in `_DEFAULTS`).
"""

from __future__ import annotations

import json
import logging
import math
import re
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from packaging.version import InvalidVersion, Version
from PIL import Image

log = logging.getLogger(__name__)

# A1111's `re_param`: one `key: value` pair of the last line; a value is a JSON string or runs to a comma.
RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
RE_IMAGESIZE = re.compile(r"^(\d+)x(\d+)$")

NEGATIVE_PROMPT_PREFIX = "Negative prompt:"

# Filled in by the parser when the key is absent, in A1111's order (`parse_generation_parameters`).
# The types are A1111's: a missing key means the setting had its default when the image was made.
_DEFAULTS: tuple[tuple[str, Any], ...] = (
    ("Hires sampler", "Use same sampler"),
    ("Hires checkpoint", "Use same checkpoint"),
    ("Hires prompt", ""),
    ("Hires negative prompt", ""),
    ("Mask mode", "Inpaint masked"),
    ("Masked content", "original"),
    ("Inpaint area", "Whole picture"),
    ("Masked area padding", 32),
)
_DEFAULTS_AFTER_HIRES_FIX: tuple[tuple[str, Any], ...] = (
    ("RNG", "GPU"),
    ("Schedule type", "Automatic"),
    ("Schedule max sigma", 0),
    ("Schedule min sigma", 0),
    ("Schedule rho", 0),
    ("VAE Encoder", "Full"),
    ("VAE Decoder", "Full"),
    ("FP8 weight", "Disable"),
)

# Versions at which A1111 changed behaviour; older infotexts switch the old behaviour back on.
_V160 = Version("1.6.0")
_V170_TSNR = Version("v1.7.0-225")
_V180 = Version("1.8.0")

# A1111 sampler names and aliases, lower-cased, to the UI name: how a NovelAI sampler is translated
# (A1111.md §7.1). Anything else becomes "Euler a", as in A1111.
_SAMPLER_ALIASES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("DPM++ 2M", ("k_dpmpp_2m",)),
    ("DPM++ SDE", ("k_dpmpp_sde",)),
    ("DPM++ 2M SDE", ("k_dpmpp_2m_sde",)),
    ("DPM++ 2M SDE Heun", ("k_dpmpp_2m_sde_heun",)),
    ("DPM++ 2S a", ("k_dpmpp_2s_a",)),
    ("DPM++ 3M SDE", ("k_dpmpp_3m_sde",)),
    ("Euler a", ("k_euler_a", "k_euler_ancestral")),
    ("Euler", ("k_euler",)),
    ("LMS", ("k_lms",)),
    ("Heun", ("k_heun",)),
    ("DPM2", ("k_dpm_2",)),
    ("DPM2 a", ("k_dpm_2_a",)),
    ("DPM fast", ("k_dpm_fast",)),
    ("DPM adaptive", ("k_dpm_ad",)),
    ("Restart", ("restart",)),
    ("DDIM", ("ddim",)),
    ("DDIM CFG++", ("ddim_cfgpp",)),
    ("PLMS", ("plms",)),
    ("UniPC", ("unipc",)),
    ("LCM", ("k_lcm",)),
)
SAMPLER_NAME_MAP: Mapping[str, str] = MappingProxyType(
    {key.lower(): name for name, aliases in _SAMPLER_ALIASES for key in (name, *aliases)}
)

# EXIF tags (TIFF/EXIF 2.3) used to carry the infotext in JPEG and WebP files.
EXIF_IFD_POINTER = 0x8769
EXIF_USER_COMMENT = 0x9286
_TIFF_LONG = 4
_TIFF_UNDEFINED = 7
# UserComment's 8-byte character-code prefixes (EXIF 2.3 table 9), and the codecs piexif uses for them.
_USER_COMMENT_CODES = {b"UNICODE\x00": "utf_16_be", b"ASCII\x00\x00\x00": "ascii", b"JIS\x00\x00\x00\x00\x00": "shift_jis"}


# ---------------------------------------------------------------------------------------- writing


def quote(value: Any) -> Any:
    """`value` as written after `key: `: JSON-quoted when its text holds `,`, a newline or `:`.

    Only then is `json.dumps` applied, to the value itself, so a list becomes a JSON list and a string
    a JSON string; every other value is returned unchanged and formatted with `str()` by the caller.
    """
    text = str(value)
    if "," not in text and "\n" not in text and ":" not in text:
        return value
    try:
        return json.dumps(value, ensure_ascii=False)
    except TypeError as error:
        raise ValueError(
            f"infotext value {value!r} ({type(value).__name__}) contains ',', ':' or a newline and "
            "cannot be JSON-quoted; pass it as a str"
        ) from error


def unquote(text: str) -> str:
    """The JSON string in `text` decoded, or `text` unchanged when it is not a valid JSON string."""
    if len(text) == 0 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def format_parameters(params: Mapping[str, Any]) -> str:
    """The parameter line: `k: v` pairs joined by `, `, None values skipped, a value equal to its
    key written as the bare key (how extensions write flags)."""
    parts = []
    for key, value in params.items():
        if value is None:
            continue
        if key == value:
            parts.append(key)
            continue
        try:
            parts.append(f"{key}: {quote(value)}")
        except ValueError as error:
            raise ValueError(f"infotext key {key!r}: {error}") from error
    return ", ".join(parts)


def create_infotext(prompt: str, negative_prompt: str, params: Mapping[str, Any]) -> str:
    """A1111's infotext from the image's prompt, negative prompt and ordered parameters.

    The `Negative prompt:` line is left out when the negative prompt is empty; the whole text is
    `.strip()`-ed, so an empty prompt leaves no blank first line.
    """
    negative_line = f"\n{NEGATIVE_PROMPT_PREFIX} {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative_line}\n{format_parameters(params)}".strip()


@dataclass(frozen=True)
class GenerationInfo:
    """What one image's infotext says, with A1111's conditions left to `generation_parameters`.

    Give numbers in the type the user chose them in (see the module docstring): `cfg_scale=7` and
    `cfg_scale=7.0` are written differently, as in A1111. `extra` is A1111's
    `p.extra_generation_params` (Hires fix, Lora hashes, TI hashes, Schedule type, scripts...), in
    insertion order; callables and per-image lists are not resolved here: give final values.
    """

    steps: int
    sampler: str
    cfg_scale: float
    seed: int
    width: int
    height: int
    schedule_type: str | None = "Automatic"  # A1111 writes p.scheduler; the sampler may update it via `extra`
    image_cfg_scale: float | None = None
    face_restoration: str | None = None  # the face restoration model, when restore_faces is on
    model_hash: str | None = None  # 10-hex shorthash, when add_model_hash_to_info
    model: str | None = None  # checkpoint `name_for_extra`, when add_model_name_to_info
    fp8_weight: str | None = None
    cache_fp16_weight_for_lora: bool | None = None
    vae_hash: str | None = None
    vae: str | None = None
    variation_seed: int | None = None
    variation_seed_strength: float = 0  # Variation seed and strength are written only when non-zero
    seed_resize_from: tuple[int, int] = (0, 0)  # (w, h); written only when both are > 0
    denoising_strength: float | None = None
    conditional_mask_weight: float | None = None
    clip_skip: int = 1  # written only when > 1
    eta_noise_seed_delta: int = 0  # ENSD
    eta: float = 1.0  # the eta in effect; ENSD is not written when it is 0
    sampler_uses_ensd: bool = False  # the sampler config's `uses_ensd` option
    token_merging_ratio: float = 0
    token_merging_ratio_hr: float = 0
    enable_hr: bool = False
    init_image_hash: str | None = None
    rng: str = "GPU"  # written only when not GPU
    tiling: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)
    version: str | None = None  # e.g. "v1.10.1", when add_version_to_infotext
    user: str | None = None  # when add_user_name_to_info


def generation_parameters(info: GenerationInfo) -> dict[str, Any]:
    """The parameter mapping in A1111's key order (A1111.md §7.2), None where a key is not written.

    Extra keys that already appear in the fixed part (Schedule type, Denoising strength, ...) are
    updated in place, which is how the sampler's "Schedule type: Karras" lands after "Sampler".
    """
    uses_ensd = info.eta_noise_seed_delta != 0 and info.eta != 0 and info.sampler_uses_ensd
    has_variation = info.variation_seed_strength != 0
    resize_w, resize_h = info.seed_resize_from
    params: dict[str, Any] = {
        "Steps": info.steps,
        "Sampler": info.sampler,
        "Schedule type": info.schedule_type,
        "CFG scale": info.cfg_scale,
        "Image CFG scale": info.image_cfg_scale,
        "Seed": info.seed,
        "Face restoration": info.face_restoration,
        "Size": f"{info.width}x{info.height}",
        "Model hash": info.model_hash,
        "Model": info.model,
        "FP8 weight": info.fp8_weight,
        "Cache FP16 weight for LoRA": info.cache_fp16_weight_for_lora,
        "VAE hash": info.vae_hash,
        "VAE": info.vae,
        "Variation seed": info.variation_seed if has_variation else None,
        "Variation seed strength": info.variation_seed_strength if has_variation else None,
        "Seed resize from": f"{resize_w}x{resize_h}" if resize_w > 0 and resize_h > 0 else None,
        "Denoising strength": info.denoising_strength,
        "Conditional mask weight": info.conditional_mask_weight,
        "Clip skip": info.clip_skip if info.clip_skip > 1 else None,
        "ENSD": info.eta_noise_seed_delta if uses_ensd else None,
        "Token merging ratio": info.token_merging_ratio or None,
        "Token merging ratio hr": info.token_merging_ratio_hr if info.enable_hr and info.token_merging_ratio_hr else None,
        "Init image hash": info.init_image_hash,
        "RNG": info.rng if info.rng != "GPU" else None,
        "Tiling": "True" if info.tiling else None,
    }
    params.update(info.extra)
    # As in A1111's dict literal: an extra named "Version" or "User" keeps its place, not its value.
    params["Version"] = info.version
    params["User"] = info.user
    return params


# ---------------------------------------------------------------------------------------- parsing


def old_hires_fix_first_pass_dimensions(width: int, height: int) -> tuple[int, int]:
    """A1111's pre-1.0 automatic first-pass size: about 512x512 pixels, sides rounded up to 64."""
    scale = math.sqrt(512 * 512 / (width * height))
    return math.ceil(scale * width / 64) * 64, math.ceil(scale * height / 64) * 64


def _restore_old_hires_fix_params(res: dict[str, Any], use_old_hires_fix_width_height: bool) -> None:
    """Turn an old `First pass size` infotext into today's Size + Hires resize."""
    first_w = res.get("First pass size-1")
    first_h = res.get("First pass size-2")
    if use_old_hires_fix_width_height:
        hires_w = int(res.get("Hires resize-1", 0))
        hires_h = int(res.get("Hires resize-2", 0))
        if hires_w and hires_h:
            res["Size-1"], res["Size-2"] = hires_w, hires_h
            return
    if first_w is None or first_h is None:
        return
    first_w, first_h = int(first_w), int(first_h)
    width = int(res.get("Size-1", 512))
    height = int(res.get("Size-2", 512))
    if first_w == 0 or first_h == 0:
        first_w, first_h = old_hires_fix_first_pass_dimensions(width, height)
    res["Size-1"], res["Size-2"] = first_w, first_h
    res["Hires resize-1"], res["Hires resize-2"] = width, height


def parse_infotext_version(text: str | None) -> Version | None:
    """The `Version` field as a comparable version; `v1.7.0-225-gabcdef` compares as `v1.7.0-225`."""
    if text is None:
        return None
    match = re.match(r"([^-]+-[^-]+)-.*", text)
    if match:
        text = match.group(1)
    try:
        return Version(text)
    except InvalidVersion:
        return None


def _apply_backcompat(res: dict[str, Any]) -> None:
    """Flags that make a newer program reproduce an image made by an older A1111."""
    version = parse_infotext_version(res.get("Version"))
    if version is None:
        return
    if version < _V160 and "[" in res.get("Prompt", ""):
        res["Old prompt editing timelines"] = True
    if version < _V160 and res.get("Sampler", "") in ("DDIM", "PLMS"):
        res["Pad conds v0"] = True
    if version < _V170_TSNR:
        res["Downcast alphas_cumprod"] = True
    if version < _V180 and res.get("Refiner"):
        res["Refiner switch by sampling steps"] = True


StyleExtractor = Callable[[str, str], tuple[list[str], str, str]]


def _split_infotext(text: str) -> tuple[str, str, str]:
    """`(prompt, negative prompt, settings line)` of an infotext; the settings line is "" when the
    last line has fewer than 3 `key: value` pairs (it then belongs to the prompt)."""
    *lines, last_line = text.strip().split("\n")
    if len(RE_PARAM.findall(last_line)) < 3:
        lines.append(last_line)
        last_line = ""

    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    in_negative = False
    for line in lines:
        line = line.strip()
        if line.startswith(NEGATIVE_PROMPT_PREFIX):
            in_negative = True
            line = line[len(NEGATIVE_PROMPT_PREFIX):].strip()
        (negative_lines if in_negative else prompt_lines).append(line)
    return "\n".join(prompt_lines), "\n".join(negative_lines), last_line


def _parse_settings_line(line: str) -> dict[str, str]:
    """The `key: value` pairs of the settings line, decoded: JSON-quoted values unquoted, `WxH`
    split into `<key>-1`/`<key>-2`, empty values dropped."""
    res: dict[str, str] = {}
    for key, value in RE_PARAM.findall(line):
        if not value:
            # A1111 indexes value[0] here, fails, logs and skips the pair: an empty value is dropped.
            log.debug("infotext: skipping %r with an empty value", key)
            continue
        if value[0] == '"' and value[-1] == '"':
            value = unquote(value)
        size = RE_IMAGESIZE.match(value)
        if size is not None:
            res[f"{key}-1"] = size.group(1)
            res[f"{key}-2"] = size.group(2)
        else:
            res[key] = value
    return res


def _fill_defaults(res: dict[str, Any], use_old_hires_fix_width_height: bool) -> None:
    """A1111's values for absent keys, in its order, plus the legacy hypernet prompt tag."""
    res.setdefault("Clip skip", "1")

    hypernet = res.get("Hypernet")
    if hypernet is not None:
        res["Prompt"] += f"<hypernet:{hypernet}:{res.get('Hypernet strength', '1.0')}>"

    if "Hires resize-1" not in res:
        res["Hires resize-1"] = 0
        res["Hires resize-2"] = 0
    for key, default in _DEFAULTS:
        res.setdefault(key, default)
    _restore_old_hires_fix_params(res, use_old_hires_fix_width_height)
    for key, default in _DEFAULTS_AFTER_HIRES_FIX:
        res.setdefault(key, default)
    if "Cache FP16 weight for LoRA" not in res and res["FP8 weight"] != "Disable":
        res["Cache FP16 weight for LoRA"] = False


def parse_generation_parameters(
    text: str,
    *,
    auto_backcompat: bool = True,
    skip_keys: Iterable[str] = (),
    use_old_hires_fix_width_height: bool = False,
    extract_styles: StyleExtractor | None = None,
) -> dict[str, Any]:
    """The dict A1111's `parse_generation_parameters` returns for `text`.

    - The last line holds the parameters only if `RE_PARAM` finds at least 3 pairs in it; otherwise
      it belongs to the prompt. Every other line is stripped; lines from `Negative prompt:` on are the
      negative prompt, earlier ones the prompt, joined with newlines.
    - `WxH` values become `<key>-1` and `<key>-2`; JSON-quoted values are unquoted. A pair with an
      empty value is dropped (A1111 fails on it and moves on).
    - Legacy `Hypernet: X, Hypernet strength: Y` appends `<hypernet:X:Y>` to the prompt.
    - Absent keys get A1111's defaults: `Clip skip` "1", `Hires resize-1/-2` 0, `Hires sampler`
      "Use same sampler", `Hires checkpoint` "Use same checkpoint", `Hires prompt` "",
      `Hires negative prompt` "", `Mask mode` "Inpaint masked", `Masked content` "original",
      `Inpaint area` "Whole picture", `Masked area padding` 32, `RNG` "GPU", `Schedule type`
      "Automatic", `Schedule max sigma`/`min sigma`/`rho` 0, `VAE Encoder`/`VAE Decoder` "Full",
      `FP8 weight` "Disable", and `Cache FP16 weight for LoRA` False when FP8 is on.
    - An old `Version` adds `Old prompt editing timelines`, `Pad conds v0`, `Downcast alphas_cumprod`
      or `Refiner switch by sampling steps` (A1111's `auto_backcompat` setting, default on).

    `skip_keys` is A1111's `infotext_skip_pasting` setting. `extract_styles(prompt, negative)` ->
    `(styles, prompt, negative)` is A1111's "Apply if any" style handling; without it styles stay in
    the prompt, as with an empty styles.csv.
    """
    prompt, negative_prompt, last_line = _split_infotext(text)
    res: dict[str, Any] = {}
    if extract_styles is not None:
        found_styles, prompt, negative_prompt = extract_styles(prompt, negative_prompt)
        if found_styles:
            res["Styles array"] = found_styles
    res["Prompt"] = prompt
    res["Negative prompt"] = negative_prompt
    res.update(_parse_settings_line(last_line))
    _fill_defaults(res, use_old_hires_fix_width_height)
    if auto_backcompat:
        _apply_backcompat(res)

    skip = set(skip_keys)
    return {k: v for k, v in res.items() if k not in skip}


def stated_keys(text: str) -> set[str]:
    """The keys `text`'s settings line states (the parser adds A1111's defaults for others)."""
    return set(_parse_settings_line(_split_infotext(text)[2]))


# ---------------------------------------------------------------------------------- image metadata


def exif_with_user_comment(text: str) -> bytes:
    """An `Exif\\0\\0` block whose only tag is a UNICODE UserComment holding `text`, laid out as piexif
    lays it out for A1111 (big-endian TIFF, IFD0 -> Exif IFD -> UserComment of type UNDEFINED).

    Written by hand because Pillow's `Exif` stores an unknown bytes tag as BYTE, which piexif (and so
    A1111) cannot decode as a UserComment.
    """
    comment = b"UNICODE\x00" + text.encode("utf_16_be")
    # Header (8) + IFD0 with one entry (2 + 12 + 4) = 26: the Exif IFD starts there.
    exif_ifd_offset = 8 + 2 + 12 + 4
    comment_offset = exif_ifd_offset + 2 + 12 + 4
    tiff = b"".join(
        (
            b"MM\x00\x2a" + struct.pack(">I", 8),
            struct.pack(">H", 1),
            struct.pack(">HHII", EXIF_IFD_POINTER, _TIFF_LONG, 1, exif_ifd_offset),
            struct.pack(">I", 0),
            struct.pack(">H", 1),
            struct.pack(">HHII", EXIF_USER_COMMENT, _TIFF_UNDEFINED, len(comment), comment_offset),
            struct.pack(">I", 0),
            comment,
        )
    )
    return b"Exif\x00\x00" + tiff


def decode_user_comment(data: bytes) -> str:
    """A UserComment's text, decoded by its 8-byte character-code prefix.

    An unknown prefix is read as UTF-8 of the whole value, ignoring bad bytes, as A1111 does. The
    UNICODE text is read as UTF-16BE whatever the TIFF byte order, which is what piexif writes.
    """
    codec = _USER_COMMENT_CODES.get(bytes(data[:8]))
    if codec is None:
        return bytes(data).decode("utf8", errors="ignore")
    return bytes(data[8:]).decode(codec)


# `image.info` keys that are file-format bookkeeping, not generation info (dropped from the items).
_IGNORED_INFO_KEYS = frozenset(
    {
        "jfif", "jfif_version", "jfif_unit", "jfif_density", "dpi", "exif", "loop", "background",
        "timestamp", "duration", "progressive", "progression", "icc_profile", "chromaticity", "photoshop",
    }
)


def read_info_from_image(
    image: Image.Image, *, sampler_names: Mapping[str, str] = SAMPLER_NAME_MAP
) -> tuple[str | None, dict[str, Any]]:
    """(infotext or None, the image's other metadata items), as A1111's `read_info_from_image`.

    The infotext is the PNG `parameters` text chunk; an EXIF UserComment (JPEG, WebP) wins over it
    when non-empty; a GIF `comment` is used when there is no EXIF. A NovelAI PNG
    (`Software: NovelAI`) is converted to an infotext, its sampler translated with `sampler_names`.
    """
    items = dict(image.info or {})
    geninfo = items.pop("parameters", None)

    if "exif" in items:
        try:
            comment = image.getexif().get_ifd(EXIF_IFD_POINTER).get(EXIF_USER_COMMENT, b"")
        except (OSError, ValueError, SyntaxError, struct.error) as error:  # damaged EXIF: keep the PNG text
            log.warning("could not read EXIF from image: %s", error)
            comment = b""
        if isinstance(comment, str):
            text = comment
        else:
            text = decode_user_comment(bytes(comment))
        if text:
            geninfo = text
    elif "comment" in items:
        comment = items["comment"]
        geninfo = comment.decode("utf8", errors="ignore") if isinstance(comment, bytes) else comment

    for key in _IGNORED_INFO_KEYS:
        items.pop(key, None)

    if items.get("Software") == "NovelAI":
        try:
            geninfo = _novelai_infotext(items, image.width, image.height, sampler_names)
        except (KeyError, TypeError, ValueError) as error:
            log.warning("could not convert NovelAI parameters (%s: %s)", type(error).__name__, error)

    return geninfo, items


def _novelai_infotext(items: Mapping[str, Any], width: int, height: int, sampler_names: Mapping[str, str]) -> str:
    """A1111's reading of a NovelAI PNG: Description is the prompt, Comment JSON the rest; NovelAI
    always used CLIP skip 2 and ENSD 31337."""
    meta = json.loads(items["Comment"])
    sampler = sampler_names.get(meta["sampler"], "Euler a")
    return (
        f"{items['Description']}\n"
        f"{NEGATIVE_PROMPT_PREFIX} {meta['uc']}\n"
        f"Steps: {meta['steps']}, Sampler: {sampler}, CFG scale: {meta['scale']}, Seed: {meta['seed']}, "
        f"Size: {width}x{height}, Clip skip: 2, ENSD: 31337"
    )


def read_parameters_from_image(image: Image.Image, **parse_options: Any) -> dict[str, Any] | None:
    """The parsed infotext of `image`, or None when the image carries none."""
    geninfo, _ = read_info_from_image(image)
    if not geninfo:
        return None
    return parse_generation_parameters(geninfo, **parse_options)
