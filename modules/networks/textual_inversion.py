"""Textual-inversion embeddings: reading the files and keeping the list of them (A1111.md §4).

This module only finds, reads and sorts embeddings. Putting their vectors into the text encoder's
input belongs to the prompt-encoding code.

An `Embedding` holds its vectors per text encoder. SD1/SD2 files give one `[n, dim]` matrix under
the key `"default"`. SDXL files give `{"clip_l": [n, 768], "clip_g": [n, 1280]}`. All formats A1111
reads are read here:
- `.pt` / `.bin`, through the restricted unpickler: A1111's `{"string_to_param": {"*": [n, dim]},
  "name", "step", "sd_checkpoint", "sd_checkpoint_name", ...}` (a `ParameterDict` is unwrapped),
  or a diffusers concept `{"<token>": [dim]}`.
- `.safetensors`: a single tensor such as `emb_params`, or SDXL `clip_l` + `clip_g`.
- `.png` `.webp` `.jxl` `.avif`: the PNG text chunk `sd-ti-embedding` (base64 JSON, tensors as
  `{"TORCHTENSOR": nested lists}`), or the same JSON zlib-compressed and hidden in the image's
  side bands (see `decode_pixel_embedding`). An image with neither is a preview and is ignored;
  `*.preview.*` images are never opened.

The trigger word is the file name without its extension. Image embeddings are the exception: they
use the `name` stored in them. A name found later replaces an earlier one, as in A1111. Folders
are walked in natural order, in the order given, and `os.walk` follows links. The list comes out
sorted case-insensitively.

`EmbeddingDatabase` rescans only when a watched folder's mtime changed, or when asked to. It reads
again only files whose size, mtime, ctime or inode changed. `for_model` splits the list into what
fits a model's text encoders and what does not, and gives a reason for each one skipped.

Deliberate differences from A1111 (v1.10.1):
- Every folder under an embeddings root is watched, not only the root. A1111 misses a file added
  to a sub-folder until the next forced reload. The mtime comparison is `!=`, not `>`, so a folder
  restored from a backup still counts as changed.
- "Racy" mtimes: if a folder or file changed within `RACY_SECONDS` of a scan, the next `refresh`
  looks again. Such a file may still have been copying while it was read. Files that are
  unchanged are not read again.
- Model compatibility is a view (`for_model`), not part of loading. Changing model does not read
  any file again, where A1111 reloads the whole folder after each model load.
- Widths are compared per text encoder. A1111 compares only the total (`clip_l + clip_g` = 2048),
  so it would accept an SDXL file whose two halves are swapped.
- An SDXL embedding on an SD1 model is skipped, as in A1111. Its `clip_l` half targets the same
  CLIP ViT-L encoder, but it was trained together with the `clip_g` half for SDXL's UNet. Using it
  alone would give results A1111 users never see.
- An image whose side bands do not decode (a preview with black borders, say) is treated as a
  preview. A1111 reports an error for it.
- Vectors with NaN or inf values, 3-D tensors, and SDXL files whose `clip_l`/`clip_g` row counts
  differ are reported as errors. A1111 loads them, and they break generation later.
- Vectors are copied into float32 tensors that own their memory, on the CPU. The caller moves them
  to its device. A1111 puts them on the device at load time.
- The sha256 is taken through `HashCache` under A1111's title `textual_inversion/<name>`. It is
  computed once per file version and read from the cache after that.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import functools
import json
import logging
import os
import stat
import threading
import time
import types
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from modules.library.checkpoints import walk_sorted
from modules.library.hashes import HashCache, sha256_of_file
from modules.library.safe_unpickle import load_pickled_checkpoint
from modules.library.safetensors_io import SafetensorsReader, save_file

if TYPE_CHECKING:
    import torch

# torch is imported by the functions that use it: the database scans its folders while the server
# starts, before torch is imported (tests/test_startup_imports.py); reading a file imports it.

logger = logging.getLogger(__name__)

PICKLE_EXTENSIONS = frozenset({".pt", ".bin"})
SAFETENSORS_EXTENSION = ".safetensors"
IMAGE_EXTENSIONS = frozenset({".png", ".webp", ".jxl", ".avif"})
EMBEDDING_EXTENSIONS = PICKLE_EXTENSIONS | IMAGE_EXTENSIONS | {SAFETENSORS_EXTENSION}

PNG_TEXT_KEY = "sd-ti-embedding"
JSON_TENSOR_KEY = "TORCHTENSOR"
CACHE_TITLE_PREFIX = "textual_inversion/"

DEFAULT_ENCODER = "default"
SDXL_ENCODERS = ("clip_l", "clip_g")

# Text-encoder input widths per model family, in the form `for_model` takes.
SD1_WIDTHS: Mapping[str, int] = types.MappingProxyType({DEFAULT_ENCODER: 768})
SD2_WIDTHS: Mapping[str, int] = types.MappingProxyType({DEFAULT_ENCODER: 1024})
SDXL_WIDTHS: Mapping[str, int] = types.MappingProxyType({"clip_l": 768, "clip_g": 1280})

# A folder or file that changed this close to a scan may have changed again during it. Two seconds
# cover coarse file-system timestamps (FAT: 2 s) as well as a copy that is still running.
RACY_SECONDS = 2.0

# The largest JSON accepted from an image's pixels. An SDXL embedding with 75 vectors is about
# 3.5 MB of JSON. The cap stops a zlib bomb in a downloaded "preview".
MAX_PIXEL_JSON_BYTES = 64 * 1024 * 1024

# A1111 writes the token id of "*" in CLIP's vocabulary into `string_to_token`. Nothing reads it,
# but tools that inspect .pt files expect the key.
_A1111_STAR_TOKEN_ID = 265

# Parameters of the linear congruential generator that whitens A1111's pixel-embedded data
# (Numerical Recipes constants, seed 0). Each value is reduced mod 255 and its low nibble is XORed
# into one byte of the side bands.
_LCG_MULTIPLIER = 1664525
_LCG_INCREMENT = 1013904223
_LCG_MODULUS_MASK = 0xFFFFFFFF  # modulus 2**32

# Said when a file holds several tensors: the usual cause is a model put in the wrong folder.
_ONE_EMBEDDING_HINT = ("an embedding holds one tensor (a diffusers concept, or 'emb_params') or SDXL's 'clip_l' + "
                       "'clip_g'. A LoRA or a checkpoint belongs in models/Lora or models/Stable-diffusion")

_FAMILY_BY_WIDTH: Mapping[int, str] = types.MappingProxyType({768: "SD 1.x", 1024: "SD 2.x"})


class EmbeddingFormatError(ValueError):
    """A file in the embeddings folder cannot be read as an embedding. `path` names it."""

    def __init__(self, message: str, path: str | os.PathLike[str]) -> None:
        super().__init__(message)
        self.path = Path(path)


@dataclass(frozen=True, eq=False)
class Embedding:
    """One textual-inversion embedding. Equality is identity: tensors have no plain `==`.

    `vectors` maps a text-encoder key to a float32 CPU tensor of shape `[vector_count, width]`.
    The key is `"default"` for SD1/SD2 files, and `"clip_l"` + `"clip_g"` for SDXL files. The
    mapping is read-only. Do not change the tensors in place either: snapshots share them.
    """

    name: str
    vectors: Mapping[str, torch.Tensor]
    filename: Path
    step: int | None = None
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None
    sha256: str | None = None

    def __post_init__(self) -> None:
        if not self.vectors:
            raise ValueError(f"Embedding {self.name!r} from {self.filename} has no vectors")
        rows = {key: tensor.shape[0] for key, tensor in self.vectors.items()}
        for key, tensor in self.vectors.items():
            if tensor.ndim != 2 or tensor.shape[0] == 0 or tensor.shape[1] == 0:
                raise ValueError(f"Embedding {self.name!r} from {self.filename}: vectors {key!r} have shape "
                                 f"{list(tensor.shape)}, expected [vectors, width]")
        if len(set(rows.values())) != 1:
            raise ValueError(f"Embedding {self.name!r} from {self.filename}: the text encoders have different "
                             f"vector counts {rows}")
        object.__setattr__(self, "vectors", types.MappingProxyType(dict(self.vectors)))

    @property
    def vector_count(self) -> int:
        """Number of token positions the embedding fills in a prompt (A1111's `vectors`)."""
        return next(iter(self.vectors.values())).shape[0]

    @property
    def widths(self) -> dict[str, int]:
        return {key: tensor.shape[1] for key, tensor in self.vectors.items()}

    @property
    def shape(self) -> int:
        """A1111's `shape`: the vector width. For SDXL it is the sum `clip_l + clip_g` = 2048."""
        return sum(self.widths.values())

    @property
    def hash(self) -> str | None:
        """A1111's shorthash for embeddings: the first 12 hex digits of the file's sha256."""
        return self.sha256[:12] if self.sha256 else None

    @property
    def cache_title(self) -> str:
        return CACHE_TITLE_PREFIX + self.name


@dataclass(frozen=True)
class EmbeddingSet:
    """The embeddings one model can use, and why each of the others is skipped.

    Both dicts are sorted case-insensitively by name.
    """

    loaded: dict[str, Embedding]
    skipped: dict[str, str]  # name -> reason
    expected_widths: dict[str, int]


# ----------------------------------------------------------------------------------------------
# Reading one file


def is_embedding_candidate(filename: str) -> bool:
    """Whether a file name is one the scanner reads: a known extension, and not a `*.preview.*` image."""
    stem, ext = os.path.splitext(filename)
    ext = ext.lower()
    if ext not in EMBEDDING_EXTENSIONS:
        return False
    # `x.preview.png` is the extra-networks card image of `x.pt`. A1111 skips it only among
    # images; a `.preview.pt` is still read.
    return not (ext in IMAGE_EXTENSIONS and os.path.splitext(stem)[1].lower() == ".preview")


def load_embedding_file(path: str | os.PathLike[str], *, allow_unsafe_pickle: bool = False) -> Embedding | None:
    """Read one embedding file. Returns None only for an image that holds no embedding (a preview).

    `allow_unsafe_pickle` is `--disable-safe-unpickle`. Raises `EmbeddingFormatError` when the
    content is not an embedding, including images Pillow cannot open. Also passes on
    `PickledCheckpointError` (a refused or corrupt pickle), `SafetensorsFormatError` and `OSError`.
    Every one of these names the file. The result has no `sha256`: `EmbeddingDatabase` adds it
    through its hash cache.
    """
    path = Path(path)
    stem, ext = os.path.splitext(path.name)
    ext = ext.lower()
    if ext in PICKLE_EXTENSIONS:
        data = load_pickled_checkpoint(path, allow_unsafe=allow_unsafe_pickle)
        return embedding_from_data(data, name=stem, path=path)
    if ext == SAFETENSORS_EXTENSION:
        return embedding_from_data(_read_safetensors(path), name=stem, path=path)
    if ext in IMAGE_EXTENSIONS:
        data = read_image_embedding_data(path)
        if data is None:
            return None
        stored = data.get("name")
        return embedding_from_data(data, name=stored if isinstance(stored, str) and stored else stem, path=path)
    raise EmbeddingFormatError(
        f"{path}: {ext or 'no extension'} is not an embedding file type; expected one of "
        f"{', '.join(sorted(EMBEDDING_EXTENSIONS))}",
        path,
    )


def embedding_from_data(data: object, *, name: str, path: Path) -> Embedding:
    """Interpret what a file held, trying the shapes in A1111's order:
    `string_to_param`, then SDXL `clip_l` + `clip_g`, then a single-tensor diffusers concept.
    """
    import torch

    if not isinstance(data, Mapping) or not data:
        raise EmbeddingFormatError(
            f"{path} holds a {type(data).__name__}, not an embedding. An embedding file holds a dict: "
            "A1111's {'string_to_param': ...}, a diffusers concept {'<token>': tensor}, or SDXL "
            "{'clip_l': ..., 'clip_g': ...}",
            path,
        )
    if "string_to_param" in data:
        params = data["string_to_param"]
        # A1111 .pt files from the original textual-inversion code keep an nn.ParameterDict here. Its
        # entries live in `_parameters`; the module itself is not a Mapping.
        params = getattr(params, "_parameters", params)
        if not isinstance(params, Mapping):
            raise EmbeddingFormatError(f"{path}: 'string_to_param' is a {type(params).__name__}, expected a dict "
                                       "of one tensor; the file is damaged or was written by another tool", path)
        if len(params) != 1:
            raise EmbeddingFormatError(
                f"{path}: 'string_to_param' holds {len(params)} terms ({_key_list(params)}); an embedding file "
                "holds exactly one. Split it into one file per term", path)
        vectors = {DEFAULT_ENCODER: _as_matrix(next(iter(params.values())), path, "string_to_param")}
    elif all(key in data for key in SDXL_ENCODERS):
        vectors = {key: _as_matrix(data[key], path, key) for key in SDXL_ENCODERS}
        rows = {key: tensor.shape[0] for key, tensor in vectors.items()}
        if len(set(rows.values())) != 1:
            raise EmbeddingFormatError(
                f"{path}: the SDXL halves have different vector counts (clip_l {rows['clip_l']}, clip_g "
                f"{rows['clip_g']}); each vector needs both halves. The file is damaged", path)
    elif isinstance(next(iter(data.values())), torch.Tensor):
        if len(data) != 1:
            raise EmbeddingFormatError(
                f"{path} holds {len(data)} tensors ({_key_list(data)}); {_ONE_EMBEDDING_HINT}", path)
        token, tensor = next(iter(data.items()))
        vectors = {DEFAULT_ENCODER: _as_matrix(tensor, path, str(token))}
    else:
        raise EmbeddingFormatError(
            f"{path} is neither an A1111 embedding ('string_to_param'), a diffusers concept "
            f"({{'<token>': tensor}}) nor an SDXL embedding ('clip_l' + 'clip_g'); its keys are "
            f"{_key_list(data)}", path)
    return Embedding(
        name=name,
        vectors=vectors,
        filename=path,
        step=_optional_int(data.get("step")),
        sd_checkpoint=_optional_str(data.get("sd_checkpoint")),
        sd_checkpoint_name=_optional_str(data.get("sd_checkpoint_name")),
    )


def _as_matrix(value: object, path: Path, label: str) -> torch.Tensor:
    import torch

    if not isinstance(value, torch.Tensor):
        raise EmbeddingFormatError(f"{path}: {label!r} is a {type(value).__name__}, expected a tensor", path)
    if not value.dtype.is_floating_point:
        raise EmbeddingFormatError(f"{path}: {label!r} is a {value.dtype} tensor; embedding vectors are floats",
                                   path)
    if value.ndim == 1:
        value = value.unsqueeze(0)  # diffusers concepts store a single vector as [dim]
    if value.ndim != 2 or value.shape[0] == 0 or value.shape[1] == 0:
        raise EmbeddingFormatError(
            f"{path}: {label!r} has shape {list(value.shape)}; embedding vectors have shape [vectors, width]", path)
    # A copy owns its memory. Pickled zip files are memory-mapped, and a view of the mapping would
    # keep the file open and change if the file were rewritten in place.
    matrix = value.detach().to(device="cpu", dtype=torch.float32, copy=True).contiguous()
    if not torch.isfinite(matrix).all():
        raise EmbeddingFormatError(
            f"{path}: {label!r} contains NaN or infinite values (the training diverged); it would turn every "
            "image it is used in black. Use an earlier save of this embedding or delete it", path)
    return matrix


def _optional_int(value: object) -> int | None:
    # `step` is an int, a numpy integer or a 0-d tensor, depending on the tool that wrote it.
    if value is None or isinstance(value, bool):
        return None
    try:
        number = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError, RuntimeError):
        logger.debug("Ignoring step value %r that is not an integer", value)
        return None
    return number


def _optional_str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _key_list(mapping: Mapping[Any, Any], limit: int = 5) -> str:
    keys = [repr(key) for key in list(mapping)[:limit]]
    return ", ".join(keys) + (", ..." if len(mapping) > limit else "")


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors an embedding needs. The header is checked first, so a misplaced LoRA is not read."""
    with SafetensorsReader(path) as reader:
        shapes = reader.header.shapes()
        if all(key in shapes for key in SDXL_ENCODERS):
            keys: Sequence[str] = SDXL_ENCODERS
        elif len(shapes) == 1:
            keys = list(shapes)
        else:
            raise EmbeddingFormatError(
                f"{path} holds {len(shapes)} tensors ({_key_list(shapes)}); {_ONE_EMBEDDING_HINT}", path)
        for key in keys:
            if len(shapes[key]) not in (1, 2):
                raise EmbeddingFormatError(
                    f"{path}: {key!r} has shape {list(shapes[key])}; embedding vectors have shape [vectors, width]",
                    path)
        return {key: reader.read(key) for key in keys}


# ----------------------------------------------------------------------------------------------
# Image embeddings


def read_image_embedding_data(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The embedding dict stored in an image, or None when the image holds none.

    The PNG text chunk `sd-ti-embedding` comes first, then the pixels. Pillow exposes text chunks
    only on PNGs (`image.text`), so A1111's WebP embeddings carry their data in the pixels only.
    """
    path = Path(path)
    try:
        image = Image.open(path)
    except Image.UnidentifiedImageError as e:
        raise EmbeddingFormatError(
            f"{path}: Pillow cannot read this image ({e}). JPEG XL needs the pillow-jxl-plugin package and AVIF "
            "a Pillow built with AVIF; or convert the image to PNG", path) from e
    except Image.DecompressionBombError as e:
        raise EmbeddingFormatError(f"{path}: {e}; an embedding image is never that large. Move it out of the "
                                   "embeddings folder", path) from e
    with image:
        text = getattr(image, "text", None)
        if isinstance(text, Mapping) and PNG_TEXT_KEY in text:
            return decode_text_embedding(text[PNG_TEXT_KEY], path)
        return decode_pixel_embedding(image, path)


def decode_text_embedding(text: str | bytes, path: str | os.PathLike[str]) -> dict[str, Any]:
    """Decode the `sd-ti-embedding` chunk: base64 of JSON with tensors as `{"TORCHTENSOR": [...]}`."""
    try:
        raw = base64.b64decode(text)
    except (binascii.Error, ValueError) as e:
        raise EmbeddingFormatError(f"{path}: the '{PNG_TEXT_KEY}' text chunk is not base64 ({e}); the image "
                                   "was edited by a tool that damaged its metadata", path) from e
    return _decode_embedding_json(raw, path, where=f"the '{PNG_TEXT_KEY}' text chunk")


def _decode_embedding_json(raw: bytes, path: str | os.PathLike[str], *, where: str) -> dict[str, Any]:
    import torch

    def tensor_hook(obj: dict[str, Any]) -> Any:
        if JSON_TENSOR_KEY in obj:
            # JSON numbers are doubles. float64 keeps every float32 value exactly until the cast to
            # float32 in `_as_matrix`.
            try:
                return torch.tensor(obj[JSON_TENSOR_KEY], dtype=torch.float64)
            except (TypeError, ValueError, RuntimeError) as e:
                raise EmbeddingFormatError(f"{path}: a tensor in {where} is not a rectangular list of numbers "
                                           f"({e})", path) from e
        return obj

    try:
        data = json.loads(raw, object_hook=tensor_hook)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EmbeddingFormatError(f"{path}: {where} is not valid JSON ({e})", path) from e
    if not isinstance(data, dict):
        raise EmbeddingFormatError(f"{path}: {where} holds a JSON {type(data).__name__}, expected an object", path)
    return data


def lcg_nibbles(count: int) -> np.ndarray:
    """The first `count` values of A1111's whitening stream: LCG output mod 255, low nibble only.

    The generator is `x <- (1664525 x + 1013904223) mod 2**32` from seed 0. Its n-fold composition
    is again affine, `x -> A_n x + C_n`, so the stream is built by doubling: each block is the
    previous block shifted by one composed step, in numpy. This is O(log count) Python steps,
    where a value-by-value loop would take about 0.1 s for a 512-pixel-tall image.
    """
    values = np.empty(count, dtype=np.uint64)
    if count == 0:
        return values.astype(np.uint8)
    values[0] = _LCG_INCREMENT  # one step from seed 0
    filled = 1
    mult, incr = _LCG_MULTIPLIER, _LCG_INCREMENT  # the map for `filled` steps
    while filled < count:
        n = min(filled, count - filled)
        # Both factors are < 2**32, so the product plus increment stays below 2**64 (no wrap).
        values[filled:filled + n] = (values[:n] * np.uint64(mult) + np.uint64(incr)) & np.uint64(_LCG_MODULUS_MASK)
        filled += n
        mult, incr = (mult * mult) & _LCG_MODULUS_MASK, (mult * incr + incr) & _LCG_MODULUS_MASK
    return ((values % np.uint64(255)) & np.uint64(0x0F)).astype(np.uint8)


def decode_pixel_embedding(image: Image.Image, path: str | os.PathLike[str] = "<image>") -> dict[str, Any] | None:
    """Read the embedding A1111's trainer hides in the pixels of its preview images. None if there is none.

    The layout, from A1111's writer (`insert_image_data_embed`): the zlib-compressed JSON is split
    into nibbles. The low nibbles fill a band on the left of the picture and the high nibbles a
    band of the same size on the right. Each band is laid out row-major as `[height, columns, RGB]`
    and padded by repeating the data. The first pixel holds the first nibble of R, G, B. Both bands
    are XORed with `lcg_nibbles`. Each band is separated from the picture by one black column. The
    high nibbles of the band pixels carry a decorative dot pattern and are ignored.

    How it is read back, and how A1111's reader does it: the canvas is cropped to the box of pixels
    whose three channels are all non-zero. Only low nibbles are kept. The first and last columns
    whose low nibbles are all zero are the separators. The bands are XORed with the stream again
    and put back together as `high << 4 | low`. zlib ignores the padding after the end of its
    stream.
    """
    rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    if rgb.ndim != 3 or rgb.size == 0:
        return None
    lit = (rgb > 0).all(axis=2)
    rows, cols = np.flatnonzero(lit.any(axis=1)), np.flatnonzero(lit.any(axis=0))
    if rows.size == 0:
        return None
    nibbles = rgb[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] & 0x0F
    separators = np.flatnonzero(~nibbles.any(axis=(0, 2)))
    if separators.size < 2:
        return None
    low_band = nibbles[:, :separators[0]].reshape(-1)
    high_band = nibbles[:, separators[-1] + 1:].reshape(-1)
    if low_band.size == 0 or low_band.size != high_band.size:
        return None  # an ordinary picture with dark stripes, not two equal data bands
    mask = lcg_nibbles(low_band.size)
    payload = (((high_band ^ mask) << 4) | (low_band ^ mask)).astype(np.uint8).tobytes()

    decompressor = zlib.decompressobj()
    try:
        raw = decompressor.decompress(payload, MAX_PIXEL_JSON_BYTES)
    except zlib.error as e:
        # A1111 fails on these images. They are almost always previews with dark borders, so they
        # are treated as images without an embedding.
        logger.debug("%s: side bands are not zlib data (%s); treating it as a preview image", path, e)
        return None
    if decompressor.unconsumed_tail:
        raise EmbeddingFormatError(f"{path}: the data hidden in the image expands to more than "
                                   f"{MAX_PIXEL_JSON_BYTES} bytes; that is not an embedding", path)
    if not decompressor.eof:
        logger.debug("%s: side bands end inside a zlib stream; treating it as a preview image", path)
        return None
    return _decode_embedding_json(raw, path, where="the data hidden in the image")


# ----------------------------------------------------------------------------------------------
# Writing (tests and tools)


def save_embedding(
    path: str | os.PathLike[str],
    vectors: torch.Tensor | Mapping[str, torch.Tensor],
    *,
    name: str | None = None,
    step: int | None = None,
    sd_checkpoint: str | None = None,
    sd_checkpoint_name: str | None = None,
) -> Path:
    """Write an embedding in a format A1111 reads. The file extension chooses the format.

    - `.pt`: A1111's own layout. It takes one `[n, dim]` tensor, or `{"default": tensor}`.
    - `.safetensors`: `{"emb_params": tensor}`, or SDXL `{"clip_l": ..., "clip_g": ...}`. The
      metadata arguments are not stored: A1111 reads none from safetensors embeddings.

    Both are written to a temporary name and renamed into place, so a scan never sees a file
    half-written.
    """
    import torch

    path = Path(path)
    encoders = dict(vectors) if isinstance(vectors, Mapping) else {DEFAULT_ENCODER: vectors}
    ext = path.suffix.lower()
    if ext == SAFETENSORS_EXTENSION:
        if set(encoders) == {DEFAULT_ENCODER}:
            tensors = {"emb_params": encoders[DEFAULT_ENCODER]}
        elif set(encoders) == set(SDXL_ENCODERS):
            tensors = {key: encoders[key] for key in SDXL_ENCODERS}
        else:
            raise ValueError(f"{path}: expected one tensor or SDXL's clip_l + clip_g, got {', '.join(encoders)}")
        save_file({key: t.detach().cpu().contiguous() for key, t in tensors.items()}, path, overwrite=True)
        return path
    if ext != ".pt":
        raise ValueError(f"{path}: can write .pt or .safetensors embeddings, not {ext or 'no extension'}")
    if set(encoders) != {DEFAULT_ENCODER}:
        raise ValueError(f"{path}: A1111's .pt layout holds one tensor; write SDXL embeddings "
                         f"({', '.join(encoders)}) as .safetensors")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")  # no embedding extension: scans skip it
    try:
        torch.save({
            "string_to_token": {"*": _A1111_STAR_TOKEN_ID},
            "string_to_param": {"*": encoders[DEFAULT_ENCODER].detach().cpu()},
            "name": name if name is not None else path.stem,
            "step": step,
            "sd_checkpoint": sd_checkpoint,
            "sd_checkpoint_name": sd_checkpoint_name,
        }, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# ----------------------------------------------------------------------------------------------
# Compatibility with a model


def describe_widths(widths: Mapping[str, int]) -> str:
    """`768` for one encoder; `clip_l 768 + clip_g 1280 = 2048` for several."""
    if set(widths) == {DEFAULT_ENCODER}:
        return str(widths[DEFAULT_ENCODER])
    parts = " + ".join(f"{key} {width}" for key, width in widths.items())
    return f"{parts} = {sum(widths.values())}"


def _family(widths: Mapping[str, int]) -> str | None:
    if dict(widths) == dict(SDXL_WIDTHS):
        return "SDXL"
    if set(widths) == {DEFAULT_ENCODER}:
        return _FAMILY_BY_WIDTH.get(widths[DEFAULT_ENCODER])
    return None


def compatibility_problem(embedding: Embedding, expected_widths: Mapping[str, int]) -> str | None:
    """Why `embedding` cannot be used with text encoders of `expected_widths`; None when it can."""
    have = embedding.widths
    if set(have) == set(expected_widths) and all(have[key] == expected_widths[key] for key in have):
        return None
    family = _family(have)
    made_for = f"; it was made for {family}" if family else ""
    return (f"vectors are {describe_widths(have)} wide but this model's text encoder expects "
            f"{describe_widths(expected_widths)}{made_for}")


def _checked_widths(expected_widths: Mapping[str, int]) -> dict[str, int]:
    if not expected_widths:
        raise ValueError("expected_widths is empty; pass e.g. {'default': 768} for SD1 or "
                         "{'clip_l': 768, 'clip_g': 1280} for SDXL")
    for key, width in expected_widths.items():
        if not isinstance(key, str) or not isinstance(width, int) or isinstance(width, bool) or width <= 0:
            raise ValueError(f"expected_widths entry {key!r}: {width!r} must map an encoder name to a positive "
                             "int width")
    return dict(expected_widths)


def ti_hashes_infotext(calls: Sequence[Sequence[Embedding]]) -> str | None:
    """The infotext's `TI hashes` value, built as A1111 builds it; None when nothing is to be listed.

    `calls` lists, per text-encoder call in the order they ran, the embeddings each placed (see
    `conditioning.embedding_uses`). Each call lists its embeddings once as `name: <12 hex>` (`:` and
    `,` removed from the name; embeddings without a hash left out) in front of what the earlier
    calls wrote. The value is plain text: the infotext writer adds the JSON quotes.
    """
    value = None
    for used in calls:
        entries = [f"{embedding.name.replace(':', '').replace(',', '')}: {embedding.hash}"
                   for embedding in used if embedding.hash]
        if entries:
            value = ", ".join(entries + ([value] if value else []))
    return value


# ----------------------------------------------------------------------------------------------
# The database


EmbeddingLoader = Callable[[Path], "Embedding | None"]


@dataclass(frozen=True)
class _Failure:
    message: str


# What reading a file gave: an embedding, None (a preview image), or the error.
_Outcome = Embedding | None | _Failure
_StatSignature = tuple[int, int, int, int]


@dataclass(frozen=True)
class _FileRecord:
    signature: _StatSignature  # size, mtime_ns, ctime_ns, inode: any change means "read again"
    outcome: _Outcome


@dataclass(frozen=True)
class _Snapshot:
    embeddings: dict[str, Embedding]
    errors: dict[Path, str]


# Errors that mean "this file is bad", shown without a traceback: `EmbeddingFormatError`,
# `PickledCheckpointError` and `SafetensorsFormatError` are ValueErrors, and Pillow and file access
# raise OSErrors. Anything else is a bug, and its traceback is logged.
_EXPECTED_ERRORS = (ValueError, OSError)


class EmbeddingDatabase:
    """The textual-inversion embeddings in some folders, kept up to date cheaply.

    Call `refresh()` before each generation. It returns at once when no watched folder changed.
    Call `refresh(force=True)` for the refresh button: it reads every file again. `for_model`
    picks the embeddings that fit a model. Readers get snapshots and never wait for a scan.

    A file rewritten in place under the same name leaves its folder's mtime alone, as in A1111. It is
    read again at the next forced refresh, or when anything else in its folder changes.

    `dirs`: the embedding folders (`--embeddings-dir`), walked in order; a later file wins a name.
    `hash_cache`: where sha256 hashes persist (title `textual_inversion/<name>`). Without one,
    hashes are computed once per file version and kept in memory. `hashing_enabled=False`
    (`--no-hashing`) uses cached hashes only. `loader` reads one file; tests inject a counting one.
    """

    def __init__(
        self,
        dirs: Sequence[str | os.PathLike[str]],
        hash_cache: HashCache | None = None,
        *,
        hashing_enabled: bool = True,
        allow_unsafe_pickle: bool = False,
        loader: EmbeddingLoader | None = None,
    ) -> None:
        self._dirs = list(dict.fromkeys(os.path.abspath(d) for d in dirs))
        self._hash_cache = hash_cache
        self._hashing_enabled = hashing_enabled
        self._loader: EmbeddingLoader = loader or functools.partial(
            load_embedding_file, allow_unsafe_pickle=allow_unsafe_pickle)
        self._refresh_lock = threading.Lock()
        # Everything below is written only while holding `_refresh_lock`. `_snapshot` is swapped
        # in one assignment, so readers take no lock.
        self._folder_mtimes: dict[str, int | None] | None = None  # None: never scanned
        self._racy = False
        self._files: dict[str, _FileRecord] = {}
        self._snapshot = _Snapshot({}, {})
        self._last_summary: tuple[tuple[str, ...], int] | None = None
        self._last_duplicates: frozenset[tuple[str, str, str]] = frozenset()

    @property
    def dirs(self) -> list[str]:
        return list(self._dirs)

    @property
    def embeddings(self) -> dict[str, Embedding]:
        """Every embedding found, whatever model it fits, sorted case-insensitively (a copy)."""
        return dict(self._snapshot.embeddings)

    @property
    def errors(self) -> dict[Path, str]:
        """Files that could not be read in the last scan, with the reason (a copy)."""
        return dict(self._snapshot.errors)

    def get(self, name: str) -> Embedding | None:
        return self._snapshot.embeddings.get(name)

    def __len__(self) -> int:
        return len(self._snapshot.embeddings)

    def for_model(self, expected_widths: Mapping[str, int]) -> EmbeddingSet:
        """Split the embeddings into those that fit text encoders of `expected_widths` and the rest.

        Use `SD1_WIDTHS`, `SD2_WIDTHS` or `SDXL_WIDTHS`, or the model's own widths.
        """
        expected = _checked_widths(expected_widths)
        loaded: dict[str, Embedding] = {}
        skipped: dict[str, str] = {}
        for name, embedding in self._snapshot.embeddings.items():
            problem = compatibility_problem(embedding, expected)
            if problem is None:
                loaded[name] = embedding
            else:
                skipped[name] = problem
        return EmbeddingSet(loaded=loaded, skipped=skipped, expected_widths=expected)

    # ----- scanning

    def refresh(self, force: bool = False) -> bool:
        """Rescan if a watched folder changed, a previous scan was racy, or `force`. Returns whether it scanned.

        Unchanged files keep what was read from them. `force` reads every file again.
        """
        with self._refresh_lock:
            if not force and not self._needs_rescan():
                return False
            self._scan(reread=force)
            return True

    def _needs_rescan(self) -> bool:
        if self._folder_mtimes is None or self._racy:
            return True
        for folder, recorded in self._folder_mtimes.items():
            if _folder_mtime_ns(folder) != recorded:
                logger.debug("Embedding folder %s changed; rescanning", folder)
                return True
        return False

    def _scan(self, *, reread: bool) -> None:
        started = time.time()
        folder_mtimes: dict[str, int | None] = {}
        records: dict[str, _FileRecord] = {}
        found: dict[str, Embedding] = {}
        origin: dict[str, Path] = {}
        duplicates: set[tuple[str, str, str]] = set()
        errors: dict[Path, str] = {}
        racy = False
        visited: set[str] = set()

        def recent(mtime_ns: int | None) -> bool:
            return mtime_ns is not None and abs(started - mtime_ns / 1e9) < RACY_SECONDS

        for root in self._dirs:
            # Recorded even when the folder is missing, so that creating it later triggers a scan.
            folder_mtimes[root] = _folder_mtime_ns(root)
            for folder, filenames in walk_sorted(root, visited=visited):
                # Taken after the listing: a file added in between makes the mtime recent (racy).
                mtime = _folder_mtime_ns(folder)
                folder_mtimes[folder] = mtime
                racy |= recent(mtime)
                for filename in filenames:
                    if not is_embedding_candidate(filename):
                        continue
                    path = os.path.join(folder, filename)
                    record = self._examine(path, reread)
                    if record is None:
                        continue
                    records[path] = record
                    racy |= recent(record.signature[1])
                    outcome = record.outcome
                    if isinstance(outcome, _Failure):
                        errors[Path(path)] = outcome.message
                    elif isinstance(outcome, Embedding):
                        if outcome.name in found:
                            duplicates.add((outcome.name, str(origin[outcome.name]), path))
                            del found[outcome.name]  # later replaces earlier (A1111)
                        found[outcome.name] = outcome
                        origin[outcome.name] = Path(path)

        for name, embedding in found.items():
            if embedding.sha256 is None:
                found[name] = self._with_hash(embedding)
                path = str(origin[name])
                records[path] = dataclasses.replace(records[path], outcome=found[name])  # reused next scan
        for name, hidden, winner in sorted(duplicates - self._last_duplicates):
            logger.warning("Embedding %r is in both %s and %s; using %s, the one found later. Rename one "
                           "file to use both", name, hidden, winner, winner)
        if self._hash_cache is not None:
            self._hash_cache.flush()
        self._files = records
        self._folder_mtimes = folder_mtimes
        self._racy = racy
        self._last_duplicates = frozenset(duplicates)
        self._snapshot = _Snapshot(dict(sorted(found.items(), key=lambda item: item[0].lower())), errors)
        self._log_summary(time.time() - started)

    def _examine(self, path: str, reread: bool) -> _FileRecord | None:
        """Stat one candidate file and read it if needed. None: not a file to list (empty, gone, not regular)."""
        try:
            st = os.stat(path)
        except FileNotFoundError:
            if os.path.islink(path):
                return _FileRecord((0, 0, 0, 0), _Failure(
                    f"{path} is a broken symlink (its target {os.readlink(path)} does not exist); fix or delete it"))
            return None  # removed while the folder was listed
        except OSError as e:
            return _FileRecord((0, 0, 0, 0), _Failure(f"Cannot read {path} ({e.strerror}); check its permissions"))
        if not stat.S_ISREG(st.st_mode) or st.st_size == 0:
            return None  # A1111 skips zero-byte files silently; they are usually downloads in progress
        signature = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
        previous = self._files.get(path)
        if previous is not None and previous.signature == signature and not reread:
            return previous
        return _FileRecord(signature, self._load(Path(path)))

    def _load(self, path: Path) -> _Outcome:
        # One bad file must not hide the others, so every failure is kept as this file's outcome.
        try:
            return self._loader(path)
        except _EXPECTED_ERRORS as e:
            message = str(e) if str(path) in str(e) else f"{path}: {e}"
            logger.warning("Skipping embedding file: %s", message)
            return _Failure(message)
        except Exception as e:  # a bug in reading one file must not stop the scan
            logger.warning("Skipping embedding file %s: unexpected %s", path, type(e).__name__, exc_info=True)
            return _Failure(f"{path}: unexpected {type(e).__name__}: {e}")

    def _with_hash(self, embedding: Embedding) -> Embedding:
        """`embedding` with its sha256 from the cache, computed when hashing is enabled.

        Only embeddings that won their name are hashed. Two files with one name share a cache
        title (A1111's key), and hashing both would replace each other's entry on every start.
        """
        path = embedding.filename
        try:
            if self._hash_cache is not None:
                sha256 = self._hash_cache.sha256(embedding.cache_title, path, compute=self._hashing_enabled)
            else:
                sha256 = sha256_of_file(path) if self._hashing_enabled else None
        except OSError as e:
            logger.warning("Cannot hash embedding file %s (%s); its hash is left out of infotexts", path, e)
            return embedding
        return embedding if sha256 is None else dataclasses.replace(embedding, sha256=sha256)

    def _log_summary(self, seconds: float) -> None:
        snapshot = self._snapshot
        summary = (tuple(snapshot.embeddings), len(snapshot.errors))
        if summary == self._last_summary:
            return
        self._last_summary = summary
        names = ", ".join(snapshot.embeddings) or "none"
        logger.info("Textual inversion embeddings loaded (%d) in %.2f s: %s", len(snapshot.embeddings), seconds,
                    names)
        if snapshot.errors:
            logger.warning("%d embedding files could not be loaded: %s", len(snapshot.errors),
                           ", ".join(str(p) for p in snapshot.errors))


def _folder_mtime_ns(folder: str) -> int | None:
    try:
        st = os.stat(folder)
    except OSError:
        return None
    return st.st_mtime_ns if stat.S_ISDIR(st.st_mode) else None
