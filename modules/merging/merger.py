"""Checkpoint merging that streams: one tensor of each input at a time, written as it is computed.

Peers load two or three whole checkpoints into RAM (A1111 §6); here `plan_merge` first decides, from
the inputs' headers alone, everything that is the same for every key (a frozen `MergePlan`: the output
header, how each key is produced, each key's multiplier), then `write_merge` reads every key from
A/B/C, merges it in float32 by a per-tensor method (`modules.merging.methods`), checks it for NaN/Inf,
casts it to the output dtype and writes it, so peak memory is a few tensors whatever the model size. The output is written to a temp file and renamed only
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
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, field_validator

from modules.common.atomic_files import ensure_space, temp_path_for
from modules.library.model_detection import ModelFamily, detect_architecture, normalize_keys

if TYPE_CHECKING:
    import torch

    from modules.merging.methods import MergeMethod, MergeParams

# torch is imported by the functions that use it: the merge request types are imported while the
# server starts, before torch is imported (tests/test_startup_imports.py).

log = logging.getLogger(__name__)

POSITION_IDS_SUFFIX = "embeddings.position_ids"
CONFIG_SOURCES = ("A, B or C", "B", "C", "Don't")


# A file name's limit on common file systems (ext4, NTFS, APFS), in bytes of UTF-8.
MAX_FILE_NAME_BYTES = 255
# A custom name leaves room for the longest suffix merges add (".instruct-pix2pix.safetensors").
MAX_CUSTOM_NAME_BYTES = 200


class MergeError(ValueError):
    """A merge that cannot run as asked; the message names the input and the fix."""


class MergeOutputExists(MergeError):
    """The output file exists and the request does not allow replacing it. `path` lets each front end
    say how to allow it there (the tab's Overwrite checkbox; the API's and the script's flags are in
    the message)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        super().__init__(f"{self.path} already exists; choose another custom name, or replace it with "
                         "\"overwrite\": true (API) / --overwrite (scripts/merge_checkpoints.py)")

    def __reduce__(self):
        # Rebuilt from the path when it crosses a process boundary (a merge on a Ray worker).
        return type(self), (self.path,)


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
            raise ValueError(f"must be 'safetensors' or 'ckpt', got {value!r}")
        return value

    @field_validator("custom_name")
    @classmethod
    def _file_name(cls, value: str) -> str:
        # A name, not a path: the merge is written in the checkpoint folder and nowhere else (A1111
        # joins the name to the folder as it is, so "../x" would leave it; Atelier refuses that).
        if (any(part in value for part in ("/", "\\", "\0")) or value.strip() in (".", "..")
                or value.startswith(".")):
            raise ValueError(f"must be a file name without folders, got {value!r}; leave out "
                             "'/', '\\' and a leading '.' (the merge is saved in the checkpoint folder)")
        if len(value.encode("utf-8")) > MAX_CUSTOM_NAME_BYTES:
            # The file system's limit is 255 bytes for the whole name, suffixes included; a longer one
            # would fail as an OSError at the first look at the folder.
            raise ValueError(f"is {len(value.encode('utf-8'))} bytes long; keep it under "
                             f"{MAX_CUSTOM_NAME_BYTES} (the file name limit, with room for the extension)")
        return value

    @field_validator("discard_weights")
    @classmethod
    def _regex(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as e:
            raise ValueError(f"not a valid regular expression: {e}") from None
        return value

    @field_validator("metadata_json")
    @classmethod
    def _metadata(cls, value: str) -> str:
        try:
            data = json.loads(value or "{}")
        except json.JSONDecodeError as e:
            raise ValueError(f"not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise ValueError("must be a JSON object, e.g. {\"author\": \"me\"}")
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
    to a scratch folder; see `merge_and_load`). The work is `plan_merge` once, then `write_merge`:
    a loop over the planned keys."""
    started = time.perf_counter()
    method = _method_of(request)
    inputs = _open_inputs(request, method, registry, allow_unsafe_pickle)
    try:
        with _compute_threads():
            plan = plan_merge(request, method, inputs, output_dir, vae_files=vae_files, control=control)
            sha256 = write_merge(plan)
        title = registry.add_file(plan.path, sha256=sha256).title if register else f"{plan.path.name} [{sha256[:10]}]"
        _copy_config(request.config_source, list(inputs), plan.path)
        return MergeResult(path=plan.path, title=title, sha256=sha256,
                           timings={"total": time.perf_counter() - started})
    finally:
        for item in inputs:
            if item is not None:
                item.source.close()


def _method_of(request: MergeRequest) -> MergeMethod:
    """The request's method, refused here when a model it needs was not given."""
    from modules.merging.methods import get_method

    try:
        method = get_method(request.interpolation_method)
    except ValueError as e:
        raise MergeError(str(e)) from e
    if method.needs_b and not request.secondary_model_name:
        raise MergeError(f"Interpolation method ({method.name}) requires a secondary model.")
    if method.needs_c and not request.tertiary_model_name:
        raise MergeError(f"Interpolation method ({method.name}) requires a tertiary model.")
    return method


class _Inputs(NamedTuple):
    """The opened models in their roles; B and C are None when the method does not use them (a
    name given for a model the method ignores is not even opened)."""

    a: _Input
    b: _Input | None
    c: _Input | None


def _open_inputs(request: MergeRequest, method: MergeMethod, registry, allow_unsafe_pickle: bool, *,
                 hashed: bool = True) -> _Inputs:
    """`hashed=False`: the files' hashes are not needed (a check before the merge), so a file not
    hashed yet is not read whole here."""
    names = (request.primary_model_name,
             request.secondary_model_name if method.needs_b else None,
             request.tertiary_model_name if method.needs_c else None)
    infos = [(registry.ensure_hash(registry.find(n)) if hashed else registry.find(n)) if n else None for n in names]
    return _Inputs(*(_open(info, allow_unsafe_pickle) if info else None for info in infos))


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


class Route(Enum):
    """How one output tensor is produced; decided per key when the merge is planned."""

    BAKE = "bake"  # the baked-in VAE's tensor
    COPY = "copy"  # A's tensor, cast: keys A1111 does not merge, integer buffers, No interpolation
    BLOCKS = "blocks"  # an elementwise method on inputs of one shape: merged block by block as it is written
    WHOLE = "whole"  # whole tensors in memory: a method that is not elementwise, or an inpainting A's wider conv


@dataclass(frozen=True)
class PlannedKey:
    """One tensor of the output: its name, dtype and shape in the file, and how it is produced."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    route: Route


@dataclass(frozen=True)
class MergePlan:
    """Everything about one merge that is the same for every key, decided once before the first
    tensor is read. The per-key stages take this plan and one key; and every check that can refuse
    the merge (families, channels, block weights, method options, VAE, output name) has run before
    the output file is created."""

    method: MergeMethod
    inputs: _Inputs
    params: MergeParams  # M, N and the method options
    block_weight: Callable[[str], float | None] | None  # a key's M from block weights; None: M for all
    vae: Mapping[str, torch.Tensor] | None  # the VAE to bake in, keyed as inside `first_stage_model.`
    keys: tuple[PlannedKey, ...]  # the output in A's key order: discarded keys left out, save-as-half applied
    path: Path
    stage: Path | None  # `.ckpt` output: the safetensors file streamed first, then rewritten as a pickle
    metadata: dict[str, str]
    overwrite: bool
    control: Any = None  # progress and interrupt (a JobControl); None: neither

    def params_for(self, key: str) -> MergeParams:
        """What `key` is merged with: its block's weight as M where block weights are given (keys in
        no block, e.g. EMA's, keep M)."""
        if self.block_weight is not None:
            weight = self.block_weight(key)
            if weight is not None:
                return replace(self.params, alpha=weight)
        return self.params

    def operands(self, key: str) -> tuple[_Input, ...]:
        return _operands_of(key, self.inputs, self.method)


def plan_merge(request: MergeRequest, method: MergeMethod, inputs: _Inputs, output_dir: Path, *,
               vae_files: Mapping[str, Path] | None = None, control=None) -> MergePlan:
    """Check `request` against the opened inputs and decide everything the key loop needs. Raises
    `MergeError` for inputs or options that cannot be merged (ValueError for a block-weight list of
    the wrong length), before any file is written."""
    from modules.merging.blocks import block_weights_for
    from modules.merging.methods import MergeParams

    a, b, c = inputs
    flags = _check_compatible(a, [x for x in (b, c) if x is not None])
    block_weight = None
    if request.block_weights is not None:
        block_weight = block_weights_for(a.family.value, request.block_weights)
    options = _merge_options(request)
    discard = re.compile(request.discard_weights) if request.discard_weights else None
    vae = _vae_tensors(request.bake_in_vae, vae_files) if request.bake_in_vae not in ("", "None") else None
    keys = tuple(_plan_key(key, inputs, method, vae, request.save_as_half) for key in a.source.shapes
                 if discard is None or not discard.search(key))

    infos = (a.info, b.info if b else None, c.info if c else None)
    path = _output_path(request, inputs, flags, output_dir)
    if path.exists() and not request.overwrite:
        raise MergeOutputExists(path)
    metadata = _metadata(request, [x for x in inputs if x is not None], _recipe(request, *infos, flags))
    # `.ckpt` output: the merge streams into a safetensors stage file next to the output, which is
    # then rewritten as a pickle (modules.merging.ckpt_writer); the stage file never outlives the merge.
    # It is a hidden temp file (modules.common.atomic_files), so a checkpoint refresh meanwhile does not
    # list it, and the next start removes it if the server is killed before the end.
    stage = temp_path_for(path.with_name(f"{path.name}.stage")) if request.checkpoint_format == "ckpt" else None
    return MergePlan(method=method, inputs=inputs, params=MergeParams(request.multiplier, request.multiplier2, options),
                     block_weight=block_weight, vae=vae, keys=keys, path=path, stage=stage, metadata=metadata,
                     overwrite=request.overwrite, control=control)


def _merge_options(request: MergeRequest):
    from modules.merging.methods import MergeOptions

    try:
        return MergeOptions.from_mapping(request.method_options or {})
    except (TypeError, ValueError) as e:
        raise MergeError(f"method_options: {e}") from e


def _output_path(request: MergeRequest, inputs: _Inputs, flags: dict[str, bool], output_dir: Path) -> Path:
    a, b, c = inputs
    flag = "inpainting" if flags["is_inpainting"] else "instruct-pix2pix" if flags["is_instruct_pix2pix"] else None
    name = output_name(request, a.info, b.info if b else None, c.info if c else None, flag)
    if len(name.encode("utf-8")) > MAX_FILE_NAME_BYTES:  # a default name from two long model names
        raise MergeError(f"the output name {name[:60]!r}… is {len(name.encode('utf-8'))} bytes, over the file "
                         f"system's {MAX_FILE_NAME_BYTES}; write a shorter custom_name")
    return Path(output_dir) / name


def check_merge(request: MergeRequest, registry, output_dir: Path, *, vae_files: Mapping[str, Path] | None = None,
                allow_unsafe_pickle: bool = False, check_output: bool = True) -> Path:
    """What `plan_merge` refuses, found from the inputs' headers before a job is queued (the tab
    answers at once, and a refusal is a message, not a failed job in the log): a model the method
    needs is missing or unknown, the models do not fit together, block weights or method options are
    wrong, the VAE to bake in is unknown, or (with `check_output`) the output exists and `overwrite`
    is off (`MergeOutputExists`). With a `.ckpt`/`.pt` input, only what needs no tensors. Returns the
    output path."""
    from modules.merging.blocks import block_weights_for

    method = _method_of(request)
    names = (request.primary_model_name, request.secondary_model_name if method.needs_b else None,
             request.tertiary_model_name if method.needs_c else None)
    infos = [registry.find(name) if name else None for name in names]  # an unknown name is refused here
    if any(info is not None and Path(info.filename).suffix.lower() != ".safetensors" for info in infos):
        # A pickle has no header to read: checking it would load the whole file once more before the
        # job loads it. Only what needs no tensors is checked; the job refuses the rest.
        _merge_options(request)
        if request.bake_in_vae not in ("", "None") and request.bake_in_vae not in (vae_files or {}):
            _vae_tensors(request.bake_in_vae, vae_files)
        path = Path(output_dir) / output_name(request, *infos, None)
        if check_output and request.custom_name and path.exists() and not request.overwrite:
            raise MergeOutputExists(path)
        return path
    inputs = _open_inputs(request, method, registry, allow_unsafe_pickle, hashed=False)
    try:
        flags = _check_compatible(inputs.a, [x for x in (inputs.b, inputs.c) if x is not None])
        if request.block_weights is not None:
            try:
                block_weights_for(inputs.a.family.value, request.block_weights)
            except ValueError as e:
                raise MergeError(f"block_weights: {e}") from e
        _merge_options(request)
        if request.bake_in_vae not in ("", "None") and request.bake_in_vae not in (vae_files or {}):
            _vae_tensors(request.bake_in_vae, vae_files)  # raises the MergeError that names the known ones
        path = _output_path(request, inputs, flags, output_dir)
        if check_output and path.exists() and not request.overwrite:
            raise MergeOutputExists(path)
        return path
    finally:
        for item in inputs:
            if item is not None:
                item.source.close()


def _plan_key(key: str, inputs: _Inputs, method: MergeMethod, vae, save_as_half: bool) -> PlannedKey:
    import torch

    a = inputs.a
    route = _route(key, inputs, method, vae)
    dtype = a.source.dtype(key)
    # A1111's save-as-half: float32 tensors become float16 when they are merged or baked (every key
    # with No interpolation, which merges nothing); the rest (e.g. `alphas_cumprod`) keep their dtype.
    if save_as_half and dtype == torch.float32 and (inputs.b is None or route is not Route.COPY):
        dtype = torch.float16
    return PlannedKey(key, dtype, tuple(a.source.shapes[key]), route)


def _route(key: str, inputs: _Inputs, method: MergeMethod, vae) -> Route:
    a, b, _ = inputs
    if _is_baked(key, vae):
        return Route.BAKE
    if b is None or not _is_merged(key, a, b, method):
        return Route.COPY
    shape = a.source.shapes[key]
    if method.elementwise and all(item.source.shapes[key] == shape for item in _operands_of(key, inputs, method)):
        return Route.BLOCKS
    return Route.WHOLE


def _operands_of(key: str, inputs: _Inputs, method: MergeMethod) -> tuple[_Input, ...]:
    """The models in the roles of `method` for `key`: A and B, and C for methods that use it; a key
    C lacks takes B's value as C, a zero difference (A1111)."""
    a, b, c = inputs
    if not method.needs_c:
        return (a, b)
    return (a, b, c if key in c.source.shapes else b)


def write_merge(plan: MergePlan) -> str:
    """Write every planned key, in order, and return the output's sha256 (computed while writing).
    Nothing is left behind on failure or interrupt."""
    from modules.library.safetensors_io import SafetensorsWriter

    specs = [(planned.name, planned.dtype, planned.shape) for planned in plan.keys]
    buffers = _BlockBuffers()
    try:
        with SafetensorsWriter(plan.stage or plan.path, specs, plan.metadata,
                               overwrite=plan.overwrite or plan.stage is not None,
                               what=f"the checkpoint {plan.path.name}") as writer:
            if plan.stage is not None:  # the stage file and the .ckpt written from it exist together at the end
                ensure_space(plan.path.parent, 2 * writer.size, f"the checkpoint {plan.path.name} (and its stage file)")
            for index, planned in enumerate(plan.keys):
                _check_in(plan, index)
                _write_key(plan, writer, planned, buffers)
            writer.commit()
        sha256 = writer.sha256
        if plan.stage is not None:
            from modules.merging.ckpt_writer import safetensors_to_ckpt

            sha256 = safetensors_to_ckpt(plan.stage, plan.path, overwrite=plan.overwrite)
    finally:
        if plan.stage is not None:
            plan.stage.unlink(missing_ok=True)
    return sha256


def _check_in(plan: MergePlan, index: int) -> None:
    """Stop if the job was interrupted; else report that key `index` (0-based) is under way."""
    if plan.control is None:
        return
    if getattr(plan.control, "interrupted", False):
        raise MergeInterrupted("merge interrupted; nothing was written")
    plan.control.report(index + 1, len(plan.keys))


def _write_key(plan: MergePlan, writer, planned: PlannedKey, buffers: _BlockBuffers) -> None:
    """Compute the output tensor `planned` and hand it to `writer`."""
    import torch

    key, dtype, shape = planned.name, planned.dtype, planned.shape
    if planned.route is Route.BAKE:
        writer.write(key, plan.vae[key[len("first_stage_model."):]].to(dtype).reshape(shape))
    elif planned.route is Route.COPY:
        writer.write(key, plan.inputs.a.source.read(key, dtype, torch.device("cpu")).to(dtype).reshape(shape))
    elif planned.route is Route.BLOCKS:
        writer.write_blocks(key, dtype, shape, _elementwise_filler(plan, key, buffers))
    else:
        merged = _merge_whole(plan, key).to(dtype)
        _check_finite(key, merged)
        writer.write(key, merged.reshape(shape))


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


def _is_merged(key: str, a: _Input, b: _Input, method: MergeMethod) -> bool:
    """A1111 merges only keys whose name contains "model" and that B has; others keep A's value.
    Integer tensors (CLIP position_ids of any family, EMA's update counter) are always A's:
    interpolating them breaks the model (A1111 skips only SD1's position_ids by name)."""
    return (a.source.dtype(key).is_floating_point and not key.endswith(POSITION_IDS_SUFFIX) and "model" in key
            and (key in b.source.shapes or not method.needs_b))


def _is_baked(key: str, vae: Mapping[str, torch.Tensor] | None) -> bool:
    return vae is not None and key.startswith("first_stage_model.") and key[len("first_stage_model."):] in vae


def _merge_whole(plan: MergePlan, key: str) -> torch.Tensor:
    """`key` merged from whole float32 tensors (the result in float32)."""
    from modules.merging.methods import merge_tensor

    operands = plan.operands(key)
    ta, tb = _read(operands[0], key), _read(operands[1], key)
    tc = None
    if len(operands) == 3:
        tc = tb if operands[2] is operands[1] else _read(operands[2], key)  # B as C: read once
    params = plan.params_for(key)
    if tb.shape != ta.shape:
        return _merge_first_channels(plan.method, key, (ta, tb, tc), params)
    return merge_tensor(plan.method, ta, tb, tc, params, key=key)


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


def _elementwise_filler(plan: MergePlan, key: str, buffers: _BlockBuffers):
    """A `fill(out, start, end)` for `SafetensorsWriter.write_blocks`: reads elements [start, end) of
    `key` from each input into a reused buffer (pread: no fresh pages), merges them with the plan's
    method (in cache-sized float32 steps, or with its exact same-dtype kernel where every input already
    has the output's dtype), casts into `out` and checks for NaN/Inf. Equal to merging whole tensors
    because the method is elementwise."""
    from modules.merging.methods import merge_tensor

    method, params, inputs = plan.method, plan.params_for(key), plan.operands(key)
    dtypes = [item.source.dtype(key) for item in inputs]

    def fill(out: torch.Tensor, start: int, end: int) -> None:
        parts = []
        for index, (item, dtype) in enumerate(zip(inputs, dtypes)):
            part = buffers.get(index, dtype, end - start)
            item.source.read_into(key, start, part)
            parts.append(part)
        parts += [None] * (3 - len(parts))
        if method.same_dtype_kernel is not None and all(d == out.dtype for d in dtypes):
            method.same_dtype_kernel(*parts, params, out)
        else:
            for step in range(0, end - start, CHUNK_ELEMENTS):
                stop = min(end - start, step + CHUNK_ELEMENTS)
                part_a, part_b, part_c = (p[step:stop] if p is not None else None for p in parts)
                out[step:stop].copy_(merge_tensor(method, part_a, part_b, part_c, params, key=key))
        _check_finite(key, out)

    return fill


def _merge_first_channels(method: MergeMethod, key: str, tensors: tuple, params: MergeParams) -> torch.Tensor:
    """Inpainting/pix2pix A with a 4-channel B: merge A's first 4 input channels (A1111)."""
    from modules.merging.methods import merge_tensor

    ta, tb, tc = tensors
    if ta.ndim < 2 or ta.shape[0] != tb.shape[0] or ta.shape[2:] != tb.shape[2:] or tb.shape[1] > ta.shape[1]:
        raise MergeError(f"bad dimensions for merged layer {key}: A {list(ta.shape)}, B {list(tb.shape)}")
    width = tb.shape[1]
    out = ta.clone()
    tc_part = tc if tc is None or tc.shape == tb.shape else tc[:, :width]
    out[:, :width] = merge_tensor(method, ta[:, :width], tb, tc_part, params, key=key)
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
        models.load_temporary(result.path, f"(merge trial) {result.path.name}", result.sha256)
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
