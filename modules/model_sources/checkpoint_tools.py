"""Checkpoint tools: inspect a file; write a `.safetensors` copy of a `.ckpt`, one without its EMA
weights, or one in float16.

Inspecting a `.safetensors` file reads its header and, of the tensor data, only the CLIP
`position_ids` buffers; a pickled file is opened through the restricted unpickler
(`modules.library.safe_unpickle`; zip-format files are memory-mapped, legacy ones cannot be), never
through a plain `torch.load`, unless the operator started with `--disable-safe-unpickle`.

The writers stream: each tensor is copied block by block into the recycled 4 MiB blocks of
`SafetensorsWriter.write_blocks` (`pread` from a `.safetensors` input, cast on the way if need be),
and the writer hashes and writes each block on its own thread, so peak memory does not grow with the
model (docs/BENCHMARKS.md, "Checkpoint tools"). A legacy (non-zip) `.ckpt` is the exception: torch
reads it whole. Every tool writes a new file and never replaces one:

- the data goes to a hidden temp file beside the destination (`temp_path_for`: never listed,
  removed at the next start if a kill leaves it), and appears under its final name only when
  complete, through a hard link that fails rather than replaces when the name was taken meanwhile;
- a taken name gets a number: `model-fp16.safetensors`, then `model-fp16-1.safetensors`, ...;
- the result carries the new file's sha256, computed while writing, so the caller lists it
  without reading it again.

Decisions, and their price:
- **Broken `position_ids`.** CLIP keeps the constant 0..76 as an int64 buffer; merges that
  interpolated it as floats left values such as 75.9999 that a loader truncates to the wrong
  position, and the model then follows prompts worse. Atelier's loader never uses the stored
  buffer, but other programs do, so every copy written here holds correct int64 values (the
  result says so; `fix_position_ids=False` keeps the damaged ones byte for byte).
- **Prune** keeps the regular weights and drops the EMA copies (`model_ema.*`, flattened names
  such as `model_ema.diffusion_modelinput_blocks00weight`). `use_ema=True` gives what releases
  call "emaonly": the EMA copies become the UNet weights (`model.diffusion_model.*`). A `.ckpt`'s
  optimizer state and other non-tensor entries are dropped by every tool (the result lists them).
- **fp16** casts float32 tensors to float16. bfloat16 is kept unless `include_bf16=True` (it has
  float32's range; fp16 overflows where bf16 does not); float64 buffers (SD1/SD2's noise schedule,
  a few KiB) are kept, as the loader computes sigmas from them. A tensor whose finite values would
  overflow float16 is refused, naming it: an fp16 copy would hold inf.
- **Shared storage.** A `.ckpt` may hold keys that are views of one storage, which the
  `safetensors` package refuses to save; here every key's bytes are written on their own, so each
  becomes an independent tensor (as a clone would).
- Outputs keep the source's metadata (merge recipe, training fields), with `format: pt` and
  `atelier.converted_from` / `atelier.conversion` added and `modelspec.hash_sha256` (a hash of the
  old weights) removed.
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from modules.common.atomic_files import format_size, numbered_names, place_without_replacing, temp_path_for
from modules.library.hashes import decode_safetensors_metadata
from modules.library.model_detection import UnsupportedCheckpointError, detect_architecture, normalize_keys
from modules.library.safetensors_io import SafetensorsFormatError, SafetensorsReader, torch_dtypes
from modules.model_sources.types import ModelSourceError

if TYPE_CHECKING:
    import torch

# torch is imported by the functions that read tensors: the service that imports this module is
# built while the server starts, before torch is imported (tests/test_startup_imports.py).

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
POSITION_IDS_SUFFIX = "embeddings.position_ids"  # CLIP-L's: SD1 cond_stage_model, SDXL embedders.0
EMA_PREFIX = "model_ema."
# LitEma's bookkeeping, kept by "ema-pruned" releases too; not EMA weights.
EMA_SCALARS = frozenset({"model_ema.decay", "model_ema.num_updates"})
UNET_WRAPPER_PREFIX = "model."  # LitEma names the wrapper's parameters without it, dots removed
VAE_PREFIX = "first_stage_model."
TOP_TAGS = 20
# The metadata key of a hash of the weights (Stability's model spec); wrong once weights change.
_STALE_METADATA = ("modelspec.hash_sha256",)
_MAX_NAME_NUMBER = 10_000

_POSITION_IDS_FIX_HINT = (
    "Atelier uses correct ones when it loads the model; to fix the file for other programs, save a "
    "copy with Save as fp16, Prune EMA or Convert (they write correct int64 position_ids)"
)

# kohya-ss training fields worth a line of their own, in display order.
_TRAINING_FIELDS = (
    ("ss_sd_model_name", "base model"),
    ("ss_base_model_version", "base model version"),
    ("ss_network_module", "network module"),
    ("ss_network_dim", "network dim"),
    ("ss_network_alpha", "network alpha"),
    ("ss_num_epochs", "epochs"),
    ("ss_epoch", "epoch"),
    ("ss_max_train_steps", "max train steps"),
    ("ss_steps", "steps"),
    ("ss_resolution", "resolution"),
    ("ss_learning_rate", "learning rate"),
    ("ss_num_train_images", "training images"),
    ("ss_clip_skip", "clip skip"),
    ("ss_mixed_precision", "mixed precision"),
    ("ss_output_name", "output name"),
)


class CheckpointToolError(ModelSourceError):
    """A tool could not read its input or refuses to write; the message says why and what to do.

    `forbidden` names the globals the safe unpickler refused (empty for other failures).
    """

    def __init__(self, message: str, *, status: int = 422, forbidden: Iterable[str] = ()):
        super().__init__(message, status=status)
        self.forbidden = tuple(forbidden)


class CheckpointToolCancelled(CheckpointToolError):
    """The caller's `cancel` event was set; nothing was written."""


# `progress(bytes_written, total_bytes)` after each tensor of the output.
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class CheckpointReport:
    """What `inspect_checkpoint` found in one file."""

    path: Path
    format: str  # "safetensors" or "pickle"
    architecture: str  # "SD 1.x", "SDXL", ..., or "unknown (<what the file seems to be>)"
    architecture_name: str | None  # Architectures' name ("sd1", "sdxl-inpaint", ...); None when unknown
    dtypes: dict[str, int]  # torch dtype name -> number of tensors
    tensor_count: int
    total_bytes: int  # bytes of tensor data
    file_size: int
    has_ema: bool  # EMA copies of the weights (`model_ema.*` beyond LitEma's two scalars)
    ema_tensor_count: int
    has_baked_vae: bool  # `first_stage_model.*` present
    clip_position_ids: str  # "ok", "absent", or "broken: <which key, why, and the fix>"
    merge_recipe: dict | None  # `sd_merge_recipe`, decoded
    merge_models: dict | None  # `sd_merge_models`, decoded
    training_metadata: dict[str, Any]  # kohya `ss_*` fields summarised; a .ckpt's global step / epoch
    metadata: dict[str, Any]  # the whole `__metadata__`, JSON values decoded, thumbnail dropped
    dropped: tuple[str, ...] = ()  # a pickle's non-tensor entries ("optimizer_states (list)", ...)

    def summary_lines(self) -> list[str]:
        """The report as short lines for the UI."""
        lines = [
            f"File: {self.path.name} ({self.format}, {format_size(self.file_size)})",
            f"Architecture: {self.architecture}",
            f"Tensors: {self.tensor_count} ({format_size(self.total_bytes)}): "
            + ", ".join(f"{n} {dtype}" for dtype, n in sorted(self.dtypes.items(), key=lambda x: -x[1])),
            "EMA weights: " + (f"yes ({self.ema_tensor_count} tensors under model_ema.*)" if self.has_ema else "no"),
            "Baked VAE: " + ("yes (first_stage_model.*)" if self.has_baked_vae else "no"),
            f"CLIP position_ids: {self.clip_position_ids}",
        ]
        if self.merge_recipe is not None:
            recipe = self.merge_recipe
            lines.append(f"Merge recipe: {recipe.get('interp_method', '?')}, multiplier {recipe.get('multiplier', '?')}"
                         + (f", {len(self.merge_models)} source models" if self.merge_models else ""))
        for label, value in self.training_metadata.items():
            if label == "top tags":
                value = ", ".join(f"{tag} ({count})" for tag, count in value)
            lines.append(f"Training {label}: {value}")
        if self.dropped:
            lines.append(f"Not tensors (left out of converted copies): {', '.join(self.dropped)}")
        return lines

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, for the API."""
        return {
            "path": str(self.path), "format": self.format, "architecture": self.architecture,
            "architecture_name": self.architecture_name, "dtypes": dict(self.dtypes),
            "tensor_count": self.tensor_count, "total_bytes": self.total_bytes, "file_size": self.file_size,
            "has_ema": self.has_ema, "ema_tensor_count": self.ema_tensor_count,
            "has_baked_vae": self.has_baked_vae, "clip_position_ids": self.clip_position_ids,
            "merge_recipe": self.merge_recipe, "merge_models": self.merge_models,
            "training_metadata": self.training_metadata, "metadata": self.metadata, "dropped": list(self.dropped),
        }


@dataclass(frozen=True)
class ToolResult:
    """A file a tool wrote. Path-like (`os.fspath(result)` is the new file)."""

    path: Path
    sha256: str  # of the whole new file, computed while writing it
    size: int
    report_line: str  # one sentence for the UI: what was written and what changed
    tensor_count: int
    dropped: tuple[str, ...] = ()  # what the copy left out (EMA tensors, a pickle's non-tensor entries)
    position_ids_fixed: tuple[str, ...] = ()  # keys written as correct int64 position ids

    def __fspath__(self) -> str:
        return os.fspath(self.path)


# ------------------------------------------------------------------------------------------------
# Reading either format through one interface


@dataclass
class _Source:
    """The tensors of one checkpoint: names in file order, stored dtype and shape, one read at a time."""

    path: Path
    format: str
    dtypes: dict[str, torch.dtype]
    shapes: dict[str, tuple[int, ...]]
    metadata: dict[str, str]  # raw `__metadata__` strings (safetensors only)
    read: Callable[[str], torch.Tensor]  # a whole tensor, in its stored dtype (position_ids)
    # `read_into(name, start, out)`: elements [start, start + len(out)) of the flattened `name` into
    # the 1-D `out` of its stored dtype
    read_into: Callable[[str, int, torch.Tensor], None]
    close: Callable[[], None]
    dropped: tuple[str, ...] = ()
    extras: dict[str, Any] = field(default_factory=dict)  # a pickle's global_step / epoch

    def __enter__(self) -> "_Source":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _open_source(path: Path, allow_unsafe_pickle: bool) -> _Source:
    if not path.exists():
        raise CheckpointToolError(f"{path} does not exist; pick a file from the checkpoint list", status=404)
    if not path.is_file():
        raise CheckpointToolError(f"{path} is not a file; pick a checkpoint file", status=400)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return _open_safetensors(path)
    if suffix in PICKLE_SUFFIXES:
        return _open_pickle(path, allow_unsafe_pickle)
    raise CheckpointToolError(
        f"{path.name}: {suffix or 'no suffix'} is not a checkpoint format the tools read; they read "
        f".safetensors and pickled {', '.join(PICKLE_SUFFIXES)} files", status=400)


def _open_safetensors(path: Path) -> _Source:
    try:
        reader = SafetensorsReader(path)
    except SafetensorsFormatError as error:
        raise CheckpointToolError(f"{error}. Re-download the file (or pick another one).") from error
    specs = reader.header.tensors
    return _Source(path, "safetensors", {name: spec.dtype for name, spec in specs.items()},
                   {name: spec.shape for name, spec in specs.items()}, dict(reader.header.metadata),
                   reader.read, reader.read_into, reader.close)


def _open_pickle(path: Path, allow_unsafe: bool) -> _Source:
    import torch

    from modules.library.safe_unpickle import (PickledCheckpointError, UnsafeCheckpointError,
                                               load_pickled_checkpoint, unwrap_state_dict)

    try:
        obj = load_pickled_checkpoint(path, allow_unsafe=allow_unsafe)
        tensors = unwrap_state_dict(obj, path)
    except UnsafeCheckpointError as error:  # its message names the globals and the flag
        raise CheckpointToolError(str(error), forbidden=error.forbidden) from error
    except PickledCheckpointError as error:
        raise CheckpointToolError(str(error)) from error
    dropped, extras = _non_tensor_entries(obj, tensors)
    for name, tensor in tensors.items():
        if tensor.layout != torch.strided or tensor.is_quantized:
            raise CheckpointToolError(f"{path.name}: tensor {name!r} is {tensor.layout} / quantized; the tools "
                                      "convert plain (dense) checkpoints only", status=400)

    flat: dict[str, torch.Tensor] = {}  # the tensor being copied, flattened (a view unless non-contiguous)

    def read_into(name: str, start: int, out: torch.Tensor) -> None:
        if name not in flat:
            flat.clear()
            flat[name] = tensors[name].reshape(-1)
        _serial_copy(out, flat[name][start:start + out.numel()])

    def close() -> None:
        tensors.clear()
        flat.clear()

    return _Source(path, "pickle", {n: t.dtype for n, t in tensors.items()},
                   {n: tuple(t.shape) for n, t in tensors.items()}, {}, tensors.__getitem__, read_into, close,
                   dropped, extras)


def _non_tensor_entries(obj: Any, tensors: Mapping[str, Any]) -> tuple[tuple[str, ...], dict[str, Any]]:
    """What `unwrap_state_dict` leaves out (optimizer state, step counters...), as `name (type)`,
    and the training counters worth reporting. Mirrors its rule: the `state_dict` entry, when it is
    a dict, holds the weights; everything else is left out."""
    def described(key: Any, value: Any) -> str:
        return f"{key if isinstance(key, str) else repr(key)} ({type(value).__name__})"

    wrapped = isinstance(obj.get("state_dict"), Mapping)
    state = obj["state_dict"] if wrapped else obj
    outer = [described(key, value) for key, value in obj.items() if key != "state_dict"] if wrapped else []
    inner = [described(key, value) for key, value in state.items() if key not in tensors]
    counters = (("global_step", "global step"), ("epoch", "epoch"))
    extras = {label: obj[key] for key, label in counters
              if wrapped and isinstance(obj.get(key), int) and not isinstance(obj.get(key), bool)}
    return tuple(outer + inner), extras


# ------------------------------------------------------------------------------------------------
# Inspect


def inspect_checkpoint(path: str | os.PathLike, *, allow_unsafe_pickle: bool = False) -> CheckpointReport:
    """What `path` holds: architecture, dtypes, sizes, EMA, baked VAE, CLIP position_ids, merge
    recipe and training metadata. Reads a `.safetensors` header and its position_ids only."""
    path = Path(path)
    with _open_source(path, allow_unsafe_pickle) as source:
        architecture, architecture_name = _architecture(source.shapes, path.name)
        dtype_counts = Counter(str(dtype).removeprefix("torch.") for dtype in source.dtypes.values())
        total_bytes = sum(_numel(shape) * source.dtypes[name].itemsize for name, shape in source.shapes.items())
        ema = [name for name in source.shapes if name.startswith(EMA_PREFIX) and name not in EMA_SCALARS]
        position_ids = _position_ids_status(source)
        raw = source.metadata
        metadata = decode_safetensors_metadata(raw)
        training = _training_summary(raw)
        training.update(source.extras)
        return CheckpointReport(
            path=path, format=source.format, architecture=architecture, architecture_name=architecture_name,
            dtypes=dict(dtype_counts), tensor_count=len(source.shapes), total_bytes=total_bytes,
            file_size=path.stat().st_size, has_ema=bool(ema), ema_tensor_count=len(ema),
            has_baked_vae=any(name.startswith(VAE_PREFIX) for name in source.shapes),
            clip_position_ids=position_ids, merge_recipe=_json_object(raw.get("sd_merge_recipe")),
            merge_models=_json_object(raw.get("sd_merge_models")), training_metadata=training,
            metadata=metadata, dropped=source.dropped,
        )


def _architecture(shapes: Mapping[str, tuple[int, ...]], name: str) -> tuple[str, str | None]:
    canonical = normalize_keys(list(shapes), shapes)
    try:
        detection = detect_architecture({c: shapes[f] for c, f in canonical.items()}, source=name)
    except UnsupportedCheckpointError as error:
        return f"unknown ({str(error).removeprefix(f'{name}: ')})", None
    label = detection.architecture.label
    if detection.needs_v_prediction_test:
        label += " (epsilon or v-prediction: the keys are the same; told apart when loaded)"
    return label, detection.architecture.name


def _position_ids_keys(shapes: Iterable[str]) -> list[str]:
    return [name for name in shapes if name.endswith(POSITION_IDS_SUFFIX)]


def _position_ids_status(source: _Source) -> str:
    keys = _position_ids_keys(source.shapes)
    if not keys:
        return "absent"
    problems = [f"{key}: {problem}" for key in keys if (problem := position_ids_problem(source.read(key)))]
    if not problems:
        return "ok"
    return f"broken: {'; '.join(problems)}. {_POSITION_IDS_FIX_HINT}"


def position_ids_problem(tensor: torch.Tensor) -> str | None:
    """What is wrong with a CLIP position_ids buffer (None when it is exactly int64 0..n-1)."""
    import torch

    shape = list(tensor.shape)
    n = shape[-1] if shape else 0
    flat = tensor.reshape(-1)
    if flat.numel() != n or n == 0:
        return f"shape {shape}, expected [1, n] (77 for CLIP)"
    expected = torch.arange(n, dtype=torch.int64)
    dtype = str(tensor.dtype).removeprefix("torch.")
    if tensor.is_floating_point():
        # What a loader makes of them: copying into CLIP's int64 buffer truncates toward zero.
        wrong = (flat.to(torch.int64) != expected).nonzero().reshape(-1)
        if wrong.numel():
            first = int(wrong[0])
            drift = float((flat.double() - expected.double()).abs().max())
            return (f"stored as {dtype} with values off by up to {drift:.3g}; {wrong.numel()} of {n} positions "
                    f"truncate to the wrong integer (position {first} holds {float(flat[first]):.6g}), so the "
                    "text encoder mixes up token positions")
        return f"stored as {dtype} instead of int64 (the values are still whole numbers)"
    wrong = (flat.to(torch.int64) != expected).nonzero().reshape(-1)
    if wrong.numel():
        first = int(wrong[0])
        return f"{wrong.numel()} of {n} positions hold wrong values (position {first} holds {int(flat[first])})"
    if tensor.dtype != torch.int64:
        return f"stored as {dtype} instead of int64"
    return None


def _training_summary(raw: Mapping[str, str]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for key, label in _TRAINING_FIELDS:
        value = raw.get(key)
        if value not in (None, "", "None"):
            summary[label] = value
    frequency = _json_object(raw.get("ss_tag_frequency"))
    if frequency:
        counts: Counter[str] = Counter()
        for tags in frequency.values():  # {dataset folder: {tag: count}}
            if isinstance(tags, Mapping):
                for tag, count in tags.items():
                    if isinstance(count, (int, float)) and not isinstance(count, bool):
                        counts[str(tag).strip()] += int(count)
        if counts:
            summary["distinct tags"] = len(counts)
            summary["top tags"] = [[tag, count] for tag, count in counts.most_common(TOP_TAGS)]
    others = [key for key in raw if key.startswith("ss_")
              and key not in dict(_TRAINING_FIELDS) and key != "ss_tag_frequency"]
    if others:
        summary["other ss_* fields"] = len(others)
    return summary


def _json_object(value: str | None) -> dict | None:
    if not value:
        return None
    try:
        decoded = json.loads(value)
    except (TypeError, ValueError):
        return None
    return decoded if isinstance(decoded, dict) else None


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


# ------------------------------------------------------------------------------------------------
# Writers


@dataclass(frozen=True)
class _Planned:
    """One tensor of the output: its name, dtype and shape, and where it comes from: the stored
    tensor `stored` (cast to `dtype` if that differs), or, when `stored` is None, `make()`."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    stored: str | None
    make: Callable[[], torch.Tensor] | None = None


def convert_to_safetensors(path: str | os.PathLike, destination: str | os.PathLike | None = None, *,
                           allow_unsafe_pickle: bool = False, fix_position_ids: bool = True,
                           progress: Progress | None = None, cancel: threading.Event | None = None) -> ToolResult:
    """Write the tensors of a pickled checkpoint (`.ckpt`, `.pt`, `.pth`, `.bin`) as `.safetensors`
    (default `<stem>.safetensors` beside it). Loaded through the safe unpickler; the `state_dict`
    wrapper is unwrapped; non-tensor entries (optimizer state, step counters) are left out and listed."""
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        raise CheckpointToolError(f"{path.name} is already a .safetensors file; nothing to convert", status=400)
    with _open_source(path, allow_unsafe_pickle) as source:
        plan, fixed = _copy_plan(source, source.shapes, fix_position_ids)
        target = _destination(path, destination, "")
        note = f"converted to safetensors{_fixed_note(fixed)}"
        return _write(source, target, plan, "ckpt to safetensors", source.dropped, fixed, note, progress, cancel)


def prune_ema(path: str | os.PathLike, destination: str | os.PathLike | None = None, *, use_ema: bool = False,
              allow_unsafe_pickle: bool = False, fix_position_ids: bool = True,
              progress: Progress | None = None, cancel: threading.Event | None = None) -> ToolResult:
    """Write a copy without the EMA weights (`model_ema.*`) as `.safetensors` (default
    `<stem>-pruned.safetensors`). With `use_ema` the EMA copies replace the UNet weights first
    ("emaonly", default `<stem>-emaonly.safetensors`)."""
    path = Path(path)
    with _open_source(path, allow_unsafe_pickle) as source:
        ema_keys = [name for name in source.shapes if name.startswith(EMA_PREFIX)]
        if not set(ema_keys) - EMA_SCALARS and source.format == "safetensors":
            found = " (only LitEma's model_ema.decay / num_updates scalars)" if ema_keys else ""
            raise CheckpointToolError(f"{path.name} has no EMA weights{found}; nothing to prune", status=400)
        kept = {name: shape for name, shape in source.shapes.items() if not name.startswith(EMA_PREFIX)}
        plan, fixed = _copy_plan(source, kept, fix_position_ids)
        swapped = 0
        if use_ema:
            plan, swapped = _use_ema_weights(source, plan)
        target = _destination(path, destination, "-emaonly" if use_ema else "-pruned")
        dropped = ((f"{len(ema_keys)} EMA tensors (model_ema.*)",) if ema_keys else ()) + source.dropped
        what = f"EMA weights used as the UNet's ({swapped} tensors)" if use_ema else "EMA weights dropped"
        note = f"{what}, {len(ema_keys)} model_ema.* tensors left out{_fixed_note(fixed)}"
        kind = "EMA pruned, EMA weights kept as the model" if use_ema else "EMA pruned, regular weights kept"
        return _write(source, target, plan, kind, dropped, fixed, note, progress, cancel)


def save_fp16(path: str | os.PathLike, destination: str | os.PathLike | None = None, *, include_bf16: bool = False,
              allow_unsafe_pickle: bool = False, fix_position_ids: bool = True,
              progress: Progress | None = None, cancel: threading.Event | None = None) -> ToolResult:
    """Write a copy with float32 (and, with `include_bf16`, bfloat16) tensors cast to float16 as
    `.safetensors` (default `<stem>-fp16.safetensors`). Integer buffers keep their dtype."""
    import torch

    path = Path(path)
    castable = {torch.float32} | ({torch.bfloat16} if include_bf16 else set())
    with _open_source(path, allow_unsafe_pickle) as source:
        plan, fixed = _copy_plan(source, source.shapes, fix_position_ids)
        cast = 0
        for index, item in enumerate(plan):
            # position_ids are never cast: even damaged ones stay as stored when not fixed.
            if item.dtype in castable and not item.name.endswith(POSITION_IDS_SUFFIX):
                plan[index] = replace(item, dtype=torch.float16)
                cast += 1
        if not cast and not fixed and source.format == "safetensors":
            kinds = "float32 or bfloat16" if include_bf16 else "float32"
            raise CheckpointToolError(f"{path.name} has no {kinds} tensors; it is already as small as fp16 makes it",
                                      status=400)
        target = _destination(path, destination, "-fp16")
        note = f"{cast} tensors cast to float16{_fixed_note(fixed)}"
        return _write(source, target, plan, "fp16", source.dropped, fixed, note, progress, cancel)


def _copy_plan(source: _Source, shapes: Mapping[str, tuple[int, ...]],
               fix_position_ids: bool) -> tuple[list[_Planned], tuple[str, ...]]:
    """Every tensor of `shapes` as stored, except broken position ids when `fix_position_ids`."""
    import torch

    storable = set(torch_dtypes().values())
    plan: list[_Planned] = []
    fixed: list[str] = []
    for name, shape in shapes.items():
        dtype = source.dtypes[name]
        if name == "__metadata__":  # only a pickle can name a tensor so; in a header it is the metadata
            raise CheckpointToolError(f"{source.path.name}: a tensor is named '__metadata__', which a safetensors "
                                      "header reserves for metadata; this file cannot be converted as it is",
                                      status=400)
        if dtype not in storable:
            raise CheckpointToolError(f"{source.path.name}: tensor {name!r} is {dtype}, which the safetensors "
                                      "format used here cannot store", status=400)
        if fix_position_ids and name.endswith(POSITION_IDS_SUFFIX) and position_ids_problem(source.read(name)):
            n = shape[-1]
            plan.append(_Planned(name, torch.int64, shape, None,
                                 lambda n=n, shape=shape: torch.arange(n, dtype=torch.int64).expand(shape).clone()))
            fixed.append(name)
            continue
        plan.append(_Planned(name, dtype, shape, name))
    return plan, tuple(fixed)


def _use_ema_weights(source: _Source, plan: list[_Planned]) -> tuple[list[_Planned], int]:
    """Replace each `model.<name>` by LitEma's copy `model_ema.<name without dots>`."""
    out: list[_Planned] = []
    swapped = 0
    for item in plan:
        ema_name = EMA_PREFIX + item.name[len(UNET_WRAPPER_PREFIX):].replace(".", "")
        if item.name.startswith(UNET_WRAPPER_PREFIX) and ema_name in source.shapes:
            if source.shapes[ema_name] != item.shape or not source.dtypes[ema_name].is_floating_point:
                raise CheckpointToolError(
                    f"{source.path.name}: the EMA copy {ema_name} is {source.dtypes[ema_name]} "
                    f"{list(source.shapes[ema_name])}, but {item.name} is {item.dtype} {list(item.shape)}; the "
                    "file's EMA weights do not belong to its model. Prune with use_ema off instead", status=400)
            out.append(_Planned(item.name, source.dtypes[ema_name], item.shape, ema_name))
            swapped += 1
        else:
            out.append(item)
    if not swapped:
        raise CheckpointToolError(
            f"{source.path.name} has no EMA copies of its UNet weights (model_ema.diffusion_model*); "
            "there is nothing to use instead of them. Prune with use_ema off to drop the model_ema.* entries",
            status=400)
    return out, swapped


# Slices one torch call works on stay below its intra-op grain size (32768 elements), so torch runs
# them on the calling thread: on two busy cores its worker threads spin against the writer's and
# other processes' (a cast of a 2 Mi-element block took 8 ms with 2 threads, 0.3 ms with one). The
# same rule as the safetensors reader's; torch's thread setting is process-wide, so not changed here.
_SERIAL_ELEMENTS = 32767


def _serial_copy(out: torch.Tensor, source: torch.Tensor) -> None:
    """`out.copy_(source)` for 1-D tensors, casting as needed, on this thread only."""
    for start in range(0, out.numel(), _SERIAL_ELEMENTS):
        out[start:start + _SERIAL_ELEMENTS].copy_(source[start:start + _SERIAL_ELEMENTS])


class _BlockCopier:
    """Fills the writer's output blocks (`SafetensorsWriter.write_blocks`) from the source
    (`pread` for safetensors), casting through one reused staging buffer when the dtype changes:
    no mapped pages and no fresh buffer per tensor, which is what made the merger fast
    (docs/BENCHMARKS.md, "Checkpoint merging")."""

    def __init__(self, source: _Source):
        self.source = source
        self.staging: dict[torch.dtype, torch.Tensor] = {}

    def filler(self, item: _Planned) -> Callable[[torch.Tensor, int, int], None]:
        assert item.stored is not None
        stored, read_into = item.stored, self.source.read_into
        stored_dtype = self.source.dtypes[stored]

        def fill(out: torch.Tensor, start: int, end: int) -> None:
            if stored_dtype == item.dtype:
                read_into(stored, start, out)
                return
            staging = self._staging(stored_dtype, end - start)
            read_into(stored, start, staging)
            _serial_copy(out, staging)
            _check_cast(out, lambda: staging, stored, self.source.path)

        return fill

    def _staging(self, dtype: torch.dtype, numel: int) -> torch.Tensor:
        import torch

        buffer = self.staging.get(dtype)
        if buffer is None or buffer.numel() < numel:
            buffer = self.staging[dtype] = torch.empty(numel, dtype=dtype)
        return buffer[:numel]


def _check_cast(cast: torch.Tensor, stored: Callable[[], torch.Tensor], name: str, path: Path) -> None:
    """Refuse a cast that turned finite values into inf (float16 ends at 65504)."""
    import torch

    # Min/max find inf (and NaN, which propagates); `isfinite` on float16 took 6.8 s of a 16 s
    # SD1.5 conversion on the bench machine.
    if not cast.is_floating_point():
        return
    for start in range(0, cast.numel(), _SERIAL_ELEMENTS):
        if not all(math.isfinite(float(v)) for v in torch.aminmax(cast[start:start + _SERIAL_ELEMENTS])):
            break
    else:
        return
    values = stored()  # rare: was it finite before the cast?
    if bool(torch.isfinite(values).all()):
        dtype = str(cast.dtype).removeprefix("torch.")
        largest = float(values.abs().max())
        raise CheckpointToolError(
            f"{path.name}: tensor {name!r} holds values up to {largest:.6g}, beyond {dtype}'s range "
            f"(±{torch.finfo(cast.dtype).max:.6g}); a {dtype} copy would hold inf there. Keep this model in "
            "float32 (or bfloat16). Nothing was written", status=400)


def _fixed_note(fixed: tuple[str, ...]) -> str:
    return f"; CLIP position_ids fixed ({len(fixed)})" if fixed else ""


def _destination(source: Path, destination: str | os.PathLike | None, tag: str) -> Path:
    """The requested destination, or `<stem><tag>.safetensors` beside the source; a taken name
    gets the next free number (`-1`, `-2`, ...)."""
    if destination is None:
        target = source.with_name(f"{source.stem}{tag}.safetensors")
    else:
        target = Path(destination)
        if target.suffix.lower() != ".safetensors":
            raise CheckpointToolError(f"the destination {target.name} must end in .safetensors: the tools write "
                                      "safetensors only", status=400)
        if not target.parent.is_dir():
            raise CheckpointToolError(f"the destination folder {target.parent} does not exist", status=400)
    return free_name(target)


def free_name(path: Path) -> Path:
    """`path` if nothing is there, else `<stem>-1<suffix>`, `<stem>-2<suffix>`, ... (the first free)."""
    for candidate in numbered_names(path, _MAX_NAME_NUMBER):
        if not os.path.lexists(candidate):
            return candidate
    raise CheckpointToolError(f"{path.parent} already holds {path.stem}-1 ... -{_MAX_NAME_NUMBER - 1}; choose "
                              "another name", status=409)


def _output_metadata(source: _Source, kind: str) -> dict[str, str]:
    metadata = {key: value for key, value in source.metadata.items() if key not in _STALE_METADATA}
    metadata["format"] = "pt"
    metadata["atelier.converted_from"] = source.path.name
    metadata["atelier.conversion"] = kind
    return metadata


def _write(source: _Source, target: Path, plan: list[_Planned], kind: str, dropped: tuple[str, ...],
           fixed: tuple[str, ...], note: str, progress: Progress | None, cancel: threading.Event | None) -> ToolResult:
    """Stream `plan` into a stage file beside `target`, then give it the first free name from
    `target` on (see `_place`)."""
    from modules.library.safetensors_io import SafetensorsWriter

    stage = temp_path_for(target)  # hidden and marked like any temp file: never listed, swept at start
    specs = [(item.name, item.dtype, item.shape) for item in plan]
    total = sum(_numel(item.shape) * item.dtype.itemsize for item in plan)
    done = 0
    blocks = _BlockCopier(source)
    try:
        with SafetensorsWriter(stage, specs, _output_metadata(source, kind), overwrite=True,
                               what=f"the checkpoint {target.name}") as writer:
            for item in plan:
                if cancel is not None and cancel.is_set():
                    raise CheckpointToolCancelled(f"{kind} of {source.path.name} cancelled; nothing was written",
                                                  status=409)
                if item.stored is not None:
                    writer.write_blocks(item.name, item.dtype, item.shape, blocks.filler(item))
                else:
                    assert item.make is not None
                    writer.write(item.name, item.make())
                done += _numel(item.shape) * item.dtype.itemsize
                if progress is not None:
                    progress(done, total)
            writer.commit()
        sha256, size = writer.sha256, writer.size
        assert sha256 is not None
        final = _place(stage, target)
    finally:
        stage.unlink(missing_ok=True)
    line = f"Wrote {final.name} ({format_size(size)}, {len(plan)} tensors): {note}"
    if dropped:
        line += f"; left out: {', '.join(dropped)}"
    return ToolResult(final, sha256, size, line + ".", len(plan), dropped, fixed)


def _place(stage: Path, target: Path) -> Path:
    """Give the finished `stage` file the first free name from `target` on, never replacing a file
    that appeared since the name was chosen (modules.common.atomic_files.place_without_replacing)."""
    for candidate in numbered_names(target, _MAX_NAME_NUMBER):
        if place_without_replacing(stage, candidate):
            return candidate
    raise CheckpointToolError(f"{target.parent} already holds {target.stem}-1 ... -{_MAX_NAME_NUMBER - 1}; "
                              "choose another name", status=409)
