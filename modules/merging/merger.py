"""Checkpoint merging that streams: one tensor of each input at a time, written as it is computed.

Peers load two or three whole checkpoints into RAM (A1111 §6); here the output header is planned from
the inputs' headers, then every key is read from A/B/C, merged in float32 by a per-tensor method
(`modules.merging.methods`), checked for NaN/Inf, cast to the output dtype and written, so peak memory
is a few tensors whatever the model size. The output is written to a temp file and renamed only
when complete; its sha256 is computed while writing, so the new checkpoint is listed at once
without being read again.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

from pydantic import BaseModel, ConfigDict, Field, field_validator

from modules.common.atomic_files import ensure_space, temp_path_for
from modules.library.model_detection import ModelFamily, detect_architecture, normalize_keys

if TYPE_CHECKING:
    import torch

# torch is imported by the functions that use it: the merge request types are imported while the
# server starts, before torch is imported (tests/test_startup_imports.py).

log = logging.getLogger(__name__)

POSITION_IDS_SUFFIX = "embeddings.position_ids"
CONFIG_SOURCES = ("A, B or C", "B", "C", "Don't")


class MergeError(ValueError):
    """A merge that cannot run as asked; the message names the input and the fix."""


class MergeInterrupted(Exception):
    """The merge was interrupted; nothing was written."""


class MergeRequest(BaseModel):
    """A1111's merger fields (and names), plus Atelier's: `multiplier2`, block weights, method options."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    primary_model_name: str
    secondary_model_name: str | None = None
    tertiary_model_name: str | None = None
    interpolation_method: str = "Weighted sum"
    multiplier: float = Field(0.3, ge=-2.0, le=2.0)
    multiplier2: float = Field(0.0, ge=-2.0, le=2.0)  # beta for Triple sum / Sum twice
    save_as_half: bool = False
    custom_name: str = ""
    checkpoint_format: str = "safetensors"
    config_source: int = Field(0, ge=0, le=3)
    bake_in_vae: str = "None"
    discard_weights: str = ""
    save_metadata: bool = True
    add_merge_recipe: bool = True
    copy_metadata_fields: bool = True
    metadata_json: str = "{}"
    block_weights: tuple[float, ...] | None = None
    method_options: dict[str, Any] = Field(default_factory=dict)
    overwrite: bool = False

    @field_validator("checkpoint_format")
    @classmethod
    def _format(cls, value: str) -> str:
        if value not in ("safetensors", "ckpt"):
            raise ValueError(f"checkpoint_format must be 'safetensors' or 'ckpt', got {value!r}")
        return value

    @field_validator("discard_weights")
    @classmethod
    def _regex(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as e:
            raise ValueError(f"discard_weights is not a valid regular expression: {e}") from None
        return value

    @field_validator("metadata_json")
    @classmethod
    def _metadata(cls, value: str) -> str:
        try:
            data = json.loads(value or "{}")
        except json.JSONDecodeError as e:
            raise ValueError(f"metadata_json is not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise ValueError("metadata_json must be a JSON object")
        return value


@dataclass
class MergeResult:
    path: Path
    title: str
    sha256: str
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Input:
    info: Any  # CheckpointInfo
    source: Any  # model_loader.TensorSource
    family: ModelFamily
    in_channels: int


def _open(info, allow_unsafe_pickle: bool) -> _Input:
    from modules.library.model_loader import TensorSource

    source = TensorSource(Path(info.filename), allow_unsafe_pickle)
    canonical = normalize_keys(list(source.shapes), source.shapes)
    shapes = {c: source.shapes[f] for c, f in canonical.items()}
    detection = detect_architecture(shapes, source=str(info.filename))
    in_channels = int(shapes["model.diffusion_model.input_blocks.0.0.weight"][1])
    return _Input(info, source, detection.architecture.family, in_channels)


def output_name(request: MergeRequest, a, b, c, flag: str | None) -> str:
    """A1111's default file name: `0.7(a) + 0.3(b)`, `a + 0.3(b - c)`, or `a`; or the custom name."""
    if request.custom_name:
        name = request.custom_name
    elif request.interpolation_method == "Weighted sum":
        m = request.multiplier
        name = f"{round(1 - m, 2)}({a.model_name}) + {round(m, 2)}({b.model_name})"
    elif request.interpolation_method == "Add difference":
        name = f"{a.model_name} + {round(request.multiplier, 2)}({b.model_name} - {c.model_name})"
    elif request.interpolation_method == "No interpolation":
        name = a.model_name
    else:
        parts = [a.model_name] + [x.model_name for x in (b, c) if x is not None]
        name = f"{request.interpolation_method} {round(request.multiplier, 2)} " + " + ".join(parts)
    if flag:
        name += f".{flag}"
    return f"{name}.{request.checkpoint_format}"


def _recipe(request: MergeRequest, a, b, c, flags: dict[str, bool]) -> dict[str, Any]:
    return {
        "type": "webui",
        "primary_model_hash": a.sha256,
        "secondary_model_hash": b.sha256 if b else None,
        "tertiary_model_hash": c.sha256 if c else None,
        "interp_method": request.interpolation_method,
        "multiplier": request.multiplier,
        "save_as_half": request.save_as_half,
        "custom_name": request.custom_name,
        "config_source": request.config_source,
        "bake_in_vae": request.bake_in_vae,
        "discard_weights": request.discard_weights,
        "is_inpainting": flags["is_inpainting"],
        "is_instruct_pix2pix": flags["is_instruct_pix2pix"],
        # Atelier's additions (A1111 ignores unknown recipe fields):
        "multiplier2": request.multiplier2,
        "block_weights": list(request.block_weights) if request.block_weights else None,
        "method_options": request.method_options or None,
    }


def _metadata(request: MergeRequest, inputs: list[_Input], recipe: dict[str, Any]) -> dict[str, str]:
    """A1111's metadata: copied fields of A, B, C; metadata_json; `sd_merge_recipe` and `sd_merge_models`.
    Every value is a string (the safetensors format requires it; A1111 can crash here)."""
    metadata: dict[str, Any] = {}
    if request.save_metadata and request.copy_metadata_fields:
        for item in inputs:
            metadata.update(item.source.metadata or {})
    if request.save_metadata:
        metadata.update(json.loads(request.metadata_json or "{}"))
        metadata["format"] = "pt"
    if request.save_metadata and request.add_merge_recipe:
        metadata["sd_merge_recipe"] = recipe
        models: dict[str, Any] = {}
        for item in inputs:
            own = item.source.metadata or {}
            try:
                models.update(json.loads(own.get("sd_merge_models", "{}")))
            except (json.JSONDecodeError, TypeError):
                pass
            try:
                own_recipe = json.loads(own["sd_merge_recipe"]) if "sd_merge_recipe" in own else None
            except json.JSONDecodeError:
                own_recipe = None
            models[item.info.sha256] = {"name": item.info.name, "legacy_hash": item.info.hash,
                                        "sd_merge_recipe": own_recipe}
        metadata["sd_merge_models"] = models
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}


def merge_checkpoints(request: MergeRequest, registry, output_dir: Path, *, vae_files=None, control=None,
                      allow_unsafe_pickle: bool = False, register: bool = True) -> MergeResult:
    """Run `request`; returns the new checkpoint's path, title and hash. Raises `MergeError` before any
    work for inputs that cannot be merged; leaves nothing behind on failure or interrupt.

    `register=False` leaves the result out of the checkpoint list (a "merge and load" trial written
    to a scratch folder; see `merge_and_load`)."""
    from modules.merging.methods import get_method

    started = time.perf_counter()
    try:
        method = get_method(request.interpolation_method)
    except ValueError as e:
        raise MergeError(str(e)) from e
    names = [request.primary_model_name, request.secondary_model_name, request.tertiary_model_name]
    if method.needs_b and not request.secondary_model_name:
        raise MergeError(f"Interpolation method ({method.name}) requires a secondary model.")
    if method.needs_c and not request.tertiary_model_name:
        raise MergeError(f"Interpolation method ({method.name}) requires a tertiary model.")
    wanted = [n if (i == 0 or (i == 1 and method.needs_b) or (i == 2 and method.needs_c)) else None
              for i, n in enumerate(names)]
    infos = [registry.ensure_hash(registry.find(n)) if n else None for n in wanted]
    inputs = [_open(info, allow_unsafe_pickle) if info else None for info in infos]
    a, b, c = inputs
    try:
        with _compute_threads():
            return _merge(request, method, a, b, c, registry, output_dir, vae_files, control, started, register)
    finally:
        for item in inputs:
            if item is not None:
                item.source.close()


@contextmanager
def _compute_threads() -> Iterator[None]:
    """Leave two cores to the writer's write and hash threads while merging (restored after).

    The merge maths are cheap next to the I/O; with torch's intra-op threads on every core, they
    spin against the writer threads, and on the 2-core bench machine lerp and the NaN check ran
    6-9x slower than with one thread. Merges run as jobs, one at a time, so nothing else is computing."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, min(previous, (os.cpu_count() or 1) - 2)))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _check_compatible(a: _Input, others: list[_Input]) -> dict[str, bool]:
    flags = {"is_inpainting": a.in_channels == 9, "is_instruct_pix2pix": a.in_channels == 8}
    for other in others:
        if other.family != a.family:
            raise MergeError(f"{other.info.name} is {other.family.value} but {a.info.name} is {a.family.value}; "
                             "models of different families cannot be merged")
        if other.in_channels != a.in_channels:
            if a.in_channels == 4 and other.in_channels == 9:
                raise MergeError(f"{other.info.name} is an inpainting model: it must be the primary (A) model")
            if a.in_channels == 4 and other.in_channels == 8:
                raise MergeError(f"{other.info.name} is an instruct-pix2pix model: it must be the primary (A) model")
            if other.in_channels != 4:
                raise MergeError(f"UNet input channels differ: {a.info.name} has {a.in_channels}, "
                                 f"{other.info.name} has {other.in_channels}")
    return flags


def _merge(request, method, a, b, c, registry, output_dir, vae_files, control, started, register) -> MergeResult:
    import torch

    from modules.merging.blocks import block_weights_for
    from modules.merging.methods import MergeOptions
    from modules.library.safetensors_io import SafetensorsWriter

    flags = _check_compatible(a, [x for x in (b, c) if x is not None])
    weight_for: Callable[[str], float | None] | None = None
    if request.block_weights is not None:
        weight_for = block_weights_for(a.family.value, request.block_weights)
    try:
        options = MergeOptions.from_mapping(request.method_options or {})
    except (TypeError, ValueError) as e:
        raise MergeError(f"method_options: {e}") from e
    discard = re.compile(request.discard_weights) if request.discard_weights else None
    vae = _vae_tensors(request.bake_in_vae, vae_files) if request.bake_in_vae not in ("", "None") else None

    a_keys = list(a.source.shapes)
    b_keys = set(b.source.shapes) if b else set()
    c_keys = set(c.source.shapes) if c else set()
    out_dtype: dict[str, torch.dtype] = {}
    specs = []
    for key in a_keys:
        if discard is not None and discard.search(key):
            continue
        dtype = a.source.dtype(key)
        # A1111's save-as-half: float32 tensors become float16 when they are merged or baked (every
        # key with No interpolation); the rest (e.g. `alphas_cumprod`) keep their dtype.
        if request.save_as_half and dtype == torch.float32 and (
                b is None or _is_merged(key, a, b, b_keys, method) or _is_baked(key, vae)):
            dtype = torch.float16
        out_dtype[key] = dtype
        specs.append((key, dtype, tuple(a.source.shapes[key])))

    flag = "inpainting" if flags["is_inpainting"] else "instruct-pix2pix" if flags["is_instruct_pix2pix"] else None
    filename = output_name(request, a.info, b.info if b else None, c.info if c else None, flag)
    path = Path(output_dir) / filename
    if path.exists() and not request.overwrite:
        raise MergeError(f"{path} already exists; choose another custom name, or replace it with "
                         "\"overwrite\": true (API) / --overwrite (scripts/merge_checkpoints.py)")
    recipe = _recipe(request, a.info, b.info if b else None, c.info if c else None, flags)
    metadata = _metadata(request, [x for x in (a, b, c) if x is not None], recipe)
    # `.ckpt` output: the merge streams into a safetensors stage file next to the output, which is
    # then rewritten as a pickle (modules.merging.ckpt_writer); the stage file never outlives the merge.
    # It is a hidden temp file (modules.common.atomic_files), so a checkpoint refresh meanwhile does not
    # list it, and the next start removes it if the server is killed before the end.
    stage = temp_path_for(path.with_name(f"{path.name}.stage")) if request.checkpoint_format == "ckpt" else None
    total = len(specs)
    warnings: list[str] = []
    buffers = _BlockBuffers()
    try:
        with SafetensorsWriter(stage or path, specs, metadata, overwrite=request.overwrite or stage is not None,
                               what=f"the checkpoint {path.name}") as writer:
            if stage is not None:  # the stage file and the .ckpt written from it exist together at the end
                ensure_space(path.parent, 2 * writer.size, f"the checkpoint {path.name} (and its stage file)")
            for index, (key, dtype, shape) in enumerate(specs):
                if control is not None:
                    if getattr(control, "interrupted", False):
                        raise MergeInterrupted("merge interrupted; nothing was written")
                    control.report(index + 1, total)
                _write_merged(writer, key, dtype, shape, a, b, c, b_keys, c_keys, method, request, weight_for,
                              options, vae, buffers)
            writer.commit()
        sha256 = writer.sha256
        if stage is not None:
            from modules.merging.ckpt_writer import safetensors_to_ckpt

            sha256 = safetensors_to_ckpt(stage, path, overwrite=request.overwrite)
    finally:
        if stage is not None:
            stage.unlink(missing_ok=True)
    title = registry.add_file(path, sha256=sha256).title if register else f"{path.name} [{sha256[:10]}]"
    _copy_config(request.config_source, [x for x in (a, b, c)], path)
    return MergeResult(path=path, title=title, sha256=sha256,
                       timings={"total": time.perf_counter() - started}, warnings=warnings)


def _read(item: _Input, key: str) -> torch.Tensor:
    """A tensor in float32 (integers as they are), converted straight from the mapped file."""
    import torch

    return item.source.read(key, torch.float32, torch.device("cpu"))


def _check_finite(key: str, tensor: torch.Tensor) -> None:
    """Refuse NaN/Inf in a merged tensor, checked after the cast to the output dtype so that an
    overflow of float16 is caught too. torch's min/max propagate NaN, so one `aminmax` pass (a few
    times cheaper than `isfinite().all()` or a float32 sum) tells whether any element is not finite."""
    import torch

    if not tensor.is_floating_point() or tensor.numel() == 0:
        return
    low, high = torch.aminmax(tensor)
    if not bool(torch.isfinite(low) & torch.isfinite(high)):
        raise MergeError(f"the merged tensor {key} has NaN or Inf values; check the inputs and the "
                         "multiplier (nothing was saved)")


def _is_merged(key: str, a: _Input, b: _Input, b_keys: set[str], method) -> bool:
    """A1111 merges only keys whose name contains "model" and that B has; others keep A's value.
    Integer tensors (CLIP position_ids of any family, EMA's update counter) are always A's:
    interpolating them breaks the model (A1111 skips only SD1's position_ids by name)."""
    return (a.source.dtype(key).is_floating_point and not key.endswith(POSITION_IDS_SUFFIX) and "model" in key
            and (key in b_keys or not method.needs_b))


def _is_baked(key: str, vae: Mapping[str, torch.Tensor] | None) -> bool:
    return vae is not None and key.startswith("first_stage_model.") and key[len("first_stage_model."):] in vae


def _write_merged(writer, key, out_dtype, shape, a, b, c, b_keys, c_keys, method, request, weight_for, options,
                  vae, buffers: _BlockBuffers) -> None:
    """Compute the output tensor `key` and hand it to `writer`."""
    import torch

    from modules.merging.methods import merge_tensor

    if _is_baked(key, vae):
        writer.write(key, vae[key[len("first_stage_model."):]].to(out_dtype).reshape(shape))
        return
    if b is None or not _is_merged(key, a, b, b_keys, method):
        writer.write(key, a.source.read(key, out_dtype, torch.device("cpu")).to(out_dtype).reshape(shape))
        return
    alpha = request.multiplier
    if weight_for is not None:
        weight = weight_for(key)
        if weight is not None:
            alpha = weight
    has_c = method.needs_c and key in c_keys
    same_shape = key in b_keys and b.source.shapes[key] == a.source.shapes[key] and (
        not has_c or c.source.shapes[key] == a.source.shapes[key])
    if method.elementwise and same_shape:
        roles = [a, b] + ([c if has_c else b] if method.needs_c else [])  # no C value: a zero difference (A1111)
        fill = _elementwise_filler(method, key, roles, buffers, alpha=alpha, beta=request.multiplier2, options=options)
        writer.write_blocks(key, out_dtype, shape, fill)
        return
    ta = _read(a, key)
    tb = _read(b, key) if key in b_keys else None
    tc = None
    if method.needs_c:
        tc = _read(c, key) if has_c else tb
    if tb is not None and tb.shape != ta.shape:
        merged = _merge_first_channels(key, ta, tb, tc, method, alpha, request, options)
    else:
        merged = merge_tensor(method, ta, tb, tc, alpha=alpha, beta=request.multiplier2, options=options, key=key)
    merged = merged.to(out_dtype)
    _check_finite(key, merged)
    writer.write(key, merged.reshape(shape))


# Elements per step of an elementwise merge in float32: the temporaries of one step (a few times
# 512 KiB) stay in the CPU cache and under glibc's mmap threshold, so they are neither streamed
# through RAM nor page-faulted in afresh; on the SD1.5 bench, whole-tensor float32 maths spent more
# time in conversions and fresh pages than in arithmetic.
CHUNK_ELEMENTS = 1 << 17


class _BlockBuffers:
    """One reused input buffer per operand (A, B, C) for the block-by-block elementwise path."""

    def __init__(self) -> None:
        self._buffers: list[torch.Tensor] = []

    def get(self, index: int, dtype: torch.dtype, numel: int) -> torch.Tensor:
        import torch

        while len(self._buffers) <= index:
            self._buffers.append(torch.empty(0, dtype=torch.uint8))
        nbytes = numel * torch.empty((), dtype=dtype).element_size()
        if self._buffers[index].numel() < nbytes:
            self._buffers[index] = torch.empty(nbytes, dtype=torch.uint8)
        return self._buffers[index][:nbytes].view(dtype)


def _elementwise_filler(method, key, inputs, buffers: _BlockBuffers, *, alpha, beta, options):
    """A `fill(out, start, end)` for `SafetensorsWriter.write_blocks`: reads elements [start, end) of
    `key` from each input into a reused buffer (pread: no fresh pages), merges them with `method`
    (in cache-sized float32 steps, or with its exact same-dtype kernel where every input already has
    the output's dtype), casts into `out` and checks for NaN/Inf. Equal to merging whole tensors
    because the method is elementwise."""
    from modules.merging.methods import merge_tensor

    dtypes = [item.source.dtype(key) for item in inputs]

    def fill(out: torch.Tensor, start: int, end: int) -> None:
        parts = []
        for index, (item, dtype) in enumerate(zip(inputs, dtypes)):
            part = buffers.get(index, dtype, end - start)
            item.source.read_into(key, start, part)
            parts.append(part)
        parts += [None] * (3 - len(parts))
        if method.same_dtype_kernel is not None and all(d == out.dtype for d in dtypes):
            method.same_dtype_kernel(*parts, alpha, beta, out)
        else:
            for step in range(0, end - start, CHUNK_ELEMENTS):
                stop = min(end - start, step + CHUNK_ELEMENTS)
                part_a, part_b, part_c = (p[step:stop] if p is not None else None for p in parts)
                merged = merge_tensor(method, part_a, part_b, part_c, alpha=alpha, beta=beta, options=options, key=key)
                out[step:stop].copy_(merged)
        _check_finite(key, out)

    return fill


def _merge_first_channels(key, ta, tb, tc, method, alpha, request, options) -> torch.Tensor:
    """Inpainting/pix2pix A with a 4-channel B: merge A's first 4 input channels (A1111)."""
    from modules.merging.methods import merge_tensor

    if ta.ndim < 2 or ta.shape[0] != tb.shape[0] or ta.shape[2:] != tb.shape[2:] or tb.shape[1] > ta.shape[1]:
        raise MergeError(f"bad dimensions for merged layer {key}: A {list(ta.shape)}, B {list(tb.shape)}")
    width = tb.shape[1]
    out = ta.clone()
    tc_part = tc if tc is None or tc.shape == tb.shape else tc[:, :width]
    out[:, :width] = merge_tensor(method, ta[:, :width], tb, tc_part, alpha=alpha, beta=request.multiplier2,
                                  options=options, key=key)
    return out


def _vae_tensors(name: str, vae_files: Mapping[str, Path] | None) -> Mapping[str, torch.Tensor]:
    """The weights of the VAE file `name` (a key of `vae_files`: VAE name → path), keyed as inside
    `first_stage_model.`."""
    import torch

    from modules.library.model_loader import TensorSource

    path = (vae_files or {}).get(name)
    if path is None:
        raise MergeError(f"bake_in_vae {name!r} is not a known VAE; choose one of {sorted(vae_files or {})} "
                         "or None")
    with TensorSource(Path(path)) as source:
        prefix = "first_stage_model." if any(k.startswith("first_stage_model.") for k in source.shapes) else ""
        return {k[len(prefix):]: source.read(k, None, torch.device("cpu")) for k in source.shapes
                if k.startswith(prefix) and not k.startswith("loss.")}


def _copy_config(config_source: int, inputs: list, output: Path) -> None:
    """A1111's config copy: the `.yaml` of A, else B, else C (0); only B (1); only C (2); none (3)."""
    candidates = {0: inputs, 1: inputs[1:2], 2: inputs[2:3], 3: []}[config_source]
    for item in candidates:
        if item is not None and item.info.config_path:
            shutil.copyfile(item.info.config_path, output.with_suffix(".yaml"))
            return


def merge_and_load(request: MergeRequest, registry, models, scratch_dir: Path, **kwargs) -> MergeResult:
    """Merge into a scratch folder (not listed) and make the result the current model, so it can be
    tried before it is saved. Saving later is a normal merge with the same request. Earlier trials in
    the scratch folder are removed unless loaded."""
    scratch_dir = Path(scratch_dir)
    scratch_dir.mkdir(parents=True, exist_ok=True)
    _remove_old_trials(scratch_dir, keep=set(models.loaded_files()))
    trial = request.model_copy(update={"overwrite": True, "save_metadata": True})
    result = merge_checkpoints(trial, registry, scratch_dir, register=False, **kwargs)
    try:
        models.load_temporary(result.path, f"(merge trial) {result.title}", result.sha256)
    except BaseException:
        remove_trial(result.path)  # a trial that cannot be loaded is only a large file in the way
        raise
    return result


def remove_trial(path: Path) -> None:
    """Delete a merge trial and its copied config; a file that cannot go (still mapped on Windows) is
    logged and left (the trial folder is never scanned for checkpoints)."""
    for leftover in (path, path.with_suffix(".yaml")):
        try:
            leftover.unlink(missing_ok=True)
        except OSError as error:
            log.warning("Could not delete the merge trial %s: %s", leftover, error)


def _remove_old_trials(scratch_dir: Path, keep: set[Path]) -> None:
    """Trials of earlier merges (each several GB) that no loaded model uses any more."""
    for path in scratch_dir.iterdir():
        if path.is_file() and path.suffix in (".safetensors", ".ckpt") and path not in keep:
            remove_trial(path)
