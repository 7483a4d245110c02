"""Turn a single-file checkpoint into diffusers/transformers components, offline.

The path of one load:
  header (key names and shapes; for `.safetensors` no tensor is read yet) → architecture detection →
  configs (repo's LDM yaml + sizes from shapes, or the user's `.yaml`) → read the tensors the models
  use in one pass in file order, each straight into its target dtype and device, hashing the file
  in the same pass when its sha256 is wanted → diffusers' LDM→diffusers key conversion → models
  built on the meta device and given the tensors with `load_state_dict(assign=True)`.

So no weight is randomly initialised and then overwritten, no second full copy is made and the file
is read once: peak memory is the loaded weights plus the few tensors being read (see
docs/BENCHMARKS.md). Keys no model uses (EMA copies, training buffers) are hashed but never converted.
"""

from __future__ import annotations

import copy
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Mapping

from modules.library.model_config import ModelConfig, TextEncoderSpec, build_model_config, infer_vae_sizes, vae_config_from_ldm
from modules.library.model_detection import (
    UNET_PREFIX,
    VAE_PREFIX,
    Architecture,
    Architectures,
    Detection,
    UnsupportedCheckpointError,
    detect_architecture,
    normalize_keys,
)
from modules.library.safetensors_io import SafetensorsFormatError, SafetensorsReader

if TYPE_CHECKING:
    import torch

# torch, diffusers and transformers are imported by the functions that use them: the server imports
# this module while it starts, before torch is imported (tests/test_startup_imports.py).

log = logging.getLogger(__name__)

# EMA bookkeeping scalars some VAE files carry; not weights.
VAE_TRAINING_SCALARS = ("model_ema.decay", "model_ema.num_updates")


class CheckpointLoadError(ValueError):
    """Loading a checkpoint failed; the message names the file and what to do."""

    short_reason = "cannot be loaded"  # how checkpoint lists mark the file


def _cpu() -> torch.device:
    import torch

    return torch.device("cpu")


def _float32() -> torch.dtype:
    import torch

    return torch.float32


@dataclass(frozen=True)
class LoadOptions:
    device: torch.device = field(default_factory=_cpu)
    dtype: torch.dtype = field(default_factory=_float32)  # UNet and text encoders
    vae_dtype: torch.dtype = field(default_factory=_float32)
    allow_unsafe_pickle: bool = False  # --disable-safe-unpickle


class PhaseTimer:
    """Wall time per named phase, for the "Model loaded in …" line."""

    def __init__(self) -> None:
        self.phases: dict[str, float] = {}
        self._start = time.perf_counter()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.phases[name] = self.phases.get(name, 0.0) + time.perf_counter() - start

    @property
    def total(self) -> float:
        return time.perf_counter() - self._start

    def summary(self, total: float | None = None) -> str:
        total = self.total if total is None else total
        parts = ", ".join(f"{name} {seconds:.2f}s" for name, seconds in self.phases.items())
        return f"{total:.2f}s ({parts})"


@dataclass
class StableDiffusionModel:
    """The components of one loaded checkpoint. Owned by the model manager; never a global."""

    name: str
    path: Path
    architecture: Architecture
    config: ModelConfig
    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoders: tuple[torch.nn.Module, ...]
    tokenizers: tuple[object, ...]
    device: torch.device
    dtype: torch.dtype
    vae_dtype: torch.dtype
    load_summary: str = ""
    # The checkpoint's own VAE, kept while an external VAE file is swapped in, so "None" restores it
    # without touching the disk.
    builtin_vae: torch.nn.Module | None = None
    vae_file: Path | None = None

    @property
    def prediction_type(self) -> str:
        return self.config.prediction_type

    def modules(self) -> dict[str, torch.nn.Module]:
        parts = {"unet": self.unet, "vae": self.vae}
        for i, encoder in enumerate(self.text_encoders):
            parts[f"text_encoder{'' if i == 0 else '_' + str(i + 1)}"] = encoder
        if self.builtin_vae is not None and self.builtin_vae is not self.vae:
            parts["builtin_vae"] = self.builtin_vae
        return parts

    def weights_nbytes(self) -> int:
        seen: set[int] = set()
        total = 0
        for module in self.modules().values():
            for tensor in list(module.parameters()) + list(module.buffers()):
                if id(tensor) not in seen:
                    seen.add(id(tensor))
                    total += tensor.numel() * tensor.element_size()
        return total

    def to(self, device: torch.device) -> None:
        for module in self.modules().values():
            module.to(device)
        self.device = device


# --- reading -----------------------------------------------------------------------------------


class TensorSource:
    """Shapes and tensors of one checkpoint file, whatever its format."""

    def __init__(self, path: Path, allow_unsafe_pickle: bool = False):
        self.path = path
        self._reader: SafetensorsReader | None = None
        self._tensors: Mapping[str, torch.Tensor] | None = None
        if not path.is_file():
            raise CheckpointLoadError(f"checkpoint file not found: {path}")
        if path.suffix.lower() == ".safetensors":
            try:
                self._reader = SafetensorsReader(path)
            except SafetensorsFormatError as e:
                raise CheckpointLoadError(f"{e}. Re-download the file or pick another checkpoint.") from e
            self.shapes = {name: spec.shape for name, spec in self._reader.header.tensors.items()}
            self.metadata = self._reader.header.metadata
        else:
            from modules.library.safe_unpickle import load_pickled_checkpoint, unwrap_state_dict

            obj = load_pickled_checkpoint(path, allow_unsafe=allow_unsafe_pickle)
            self._tensors = unwrap_state_dict(obj)
            self.shapes = {name: tuple(t.shape) for name, t in self._tensors.items()}
            self.metadata = {}

    def dtype(self, key: str) -> torch.dtype:
        """The stored dtype of `key`, without reading the tensor."""
        if self._reader is not None:
            return self._reader.header.tensors[key].dtype
        assert self._tensors is not None
        return self._tensors[key].dtype

    def read(self, key: str, dtype: torch.dtype | None, device: torch.device) -> torch.Tensor:
        if self._reader is not None:
            return self._reader.read(key, dtype, device)
        assert self._tensors is not None
        tensor = self._tensors[key]
        if dtype is not None and tensor.is_floating_point() and tensor.dtype != dtype:
            tensor = tensor.to(dtype)
        else:
            # A pickled file is memory-mapped: copy so the model does not pin the file's pages.
            tensor = tensor.clone()
        return tensor.to(device) if tensor.device != device else tensor

    def read_many(self, dtypes: Mapping[str, torch.dtype | None], device: torch.device,
                  digest=None) -> dict[str, torch.Tensor]:
        """The tensors `dtypes` names, each in its dtype (floating tensors only) on `device`, read in
        one pass in file order. With `digest` (a `hashlib` object) the whole file is fed to it in the
        same pass: from the very pages being converted for a safetensors file, by a thread reading
        the file beside the conversion for a pickle; the file is never read a second time to hash it."""
        if self._reader is not None:
            return self._reader.read_many(dtypes, device, digest)
        from concurrent.futures import ThreadPoolExecutor

        from modules.library.hashes import update_with_file

        with ThreadPoolExecutor(1, thread_name_prefix="checkpoint-hash") as pool:
            hashed = pool.submit(update_with_file, digest, self.path) if digest is not None else None
            tensors = {key: self.read(key, dtype, device) for key, dtype in dtypes.items()}
            if hashed is not None:
                hashed.result()
        return tensors

    def read_into(self, key: str, start: int, out: torch.Tensor) -> None:
        """Elements [start, start + len(out)) of the flattened `key`, as stored, into the 1-D `out`."""
        if self._reader is not None:
            self._reader.read_into(key, start, out)
            return
        assert self._tensors is not None
        out.copy_(self._tensors[key].reshape(-1)[start:start + out.numel()])

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
        self._tensors = None

    def __enter__(self) -> "TensorSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --- building ----------------------------------------------------------------------------------


def _build_on_meta(factory: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """Construct a module with parameters on the meta device (no allocation, no random init)."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        return factory()


def _assign_weights(module: torch.nn.Module, state_dict: dict[str, torch.Tensor], what: str, path: Path) -> None:
    expected = module.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong_shape = [
        f"{k} (file {list(state_dict[k].shape)}, model {list(expected[k].shape)})"
        for k in expected
        if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or wrong_shape:
        details = []
        if missing:
            details.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if wrong_shape:
            details.append(f"{len(wrong_shape)} with other shapes (e.g. {', '.join(wrong_shape[:2])})")
        raise CheckpointLoadError(
            f"{path}: the {what} weights do not match the model built from the config: {'; '.join(details)}. "
            "If a .yaml sits beside the checkpoint, it may describe another model: remove or fix it."
        )
    module.load_state_dict(state_dict, strict=True, assign=True)
    still_meta = [name for name, p in module.named_parameters() if p.is_meta]
    still_meta += [name for name, b in module.named_buffers() if b.is_meta]
    if still_meta:
        # diffusers/transformers can silently leave tensors on meta (PITFALLS.md); fail here, not later.
        raise CheckpointLoadError(f"{path}: {what} tensors left without weights: {', '.join(still_meta[:5])}")


def _finish(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    module.to(device)  # buffers were created on the CPU; parameters are already on `device`
    module.eval()
    module.requires_grad_(False)
    return module


def build_unet(config: dict, weights: dict[str, torch.Tensor], device: torch.device, path: Path) -> torch.nn.Module:
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    converted = convert_ldm_unet_checkpoint(weights, config)
    unet = _build_on_meta(lambda: UNet2DConditionModel(**config))
    _assign_weights(unet, converted, "UNet", path)
    return _finish(unet, device)


def build_vae(config: dict, weights: dict[str, torch.Tensor], device: torch.device, path: Path) -> torch.nn.Module:
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    if any(k.startswith(("encoder.down_blocks.", "decoder.up_blocks.")) for k in weights):
        converted = dict(weights)  # already in diffusers layout (a VAE file saved by diffusers)
    else:
        converted = convert_ldm_vae_checkpoint(weights, config)
    vae = _build_on_meta(lambda: AutoencoderKL(**config))
    _assign_weights(vae, converted, "VAE", path)
    return _finish(vae, device)


def build_text_encoder(spec: TextEncoderSpec, weights: dict[str, torch.Tensor], device: torch.device,
                       path: Path) -> torch.nn.Module:
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(**spec.config)
    model_cls = CLIPTextModelWithProjection if spec.with_projection else CLIPTextModel
    model = _build_on_meta(lambda: model_cls(config))
    if spec.layout == "open-clip":
        converted = convert_open_clip_checkpoint(model, weights, prefix=spec.prefix)
    else:
        converted = {"text_model." + k[len(spec.prefix):]: v for k, v in weights.items()}
    # transformers >= 5.6 dropped the `text_model.` level from CLIPTextModel's own keys (PITFALLS.md).
    if not any(k.startswith("text_model.") for k in model.state_dict()):
        converted = {k.removeprefix("text_model."): v for k, v in converted.items()}
    for key in ("embeddings.position_ids", "text_model.embeddings.position_ids"):
        position_ids = converted.pop(key, None)
        if position_ids is not None:
            _check_position_ids(position_ids, path)
    _assign_weights(model, converted, "text encoder", path)
    return _finish(model, device)


def _check_position_ids(position_ids: torch.Tensor, path: Path) -> None:
    """Position ids are a constant 0..76; merges that interpolated them as floats broke many models.

    They are never taken from the file (the model makes its own), so a damaged copy costs nothing;
    the warning tells the user why this file misbehaves elsewhere.
    """
    import torch

    expected = torch.arange(position_ids.shape[-1], device=position_ids.device)
    if position_ids.is_floating_point() or not torch.equal(position_ids.reshape(-1).long(), expected):
        log.warning("%s: text encoder position_ids are damaged (a bad merge?); using correct ones", path.name)


def _used_file_keys(config: ModelConfig, canonical_to_file: Mapping[str, str]) -> dict[str, list[str]]:
    """Canonical keys each component reads, grouped by component."""
    groups: dict[str, list[str]] = {"unet": [], "vae": []}
    for i in range(len(config.text_encoders)):
        groups[f"text_encoder_{i}"] = []
    for key in canonical_to_file:
        if key.startswith(UNET_PREFIX):
            groups["unet"].append(key)
        elif key.startswith(VAE_PREFIX):
            groups["vae"].append(key)
        else:
            for i, spec in enumerate(config.text_encoders):
                if key.startswith(spec.prefix) and _text_key_used(spec, key):
                    groups[f"text_encoder_{i}"].append(key)
                    break
    return groups


def _text_key_used(spec: TextEncoderSpec, key: str) -> bool:
    rest = key[len(spec.prefix):]
    if spec.layout == "open-clip":
        if rest == "logit_scale" or (rest == "text_projection" and not spec.with_projection):
            return False
        for layer in spec.dropped_layers:
            if rest.startswith(f"transformer.resblocks.{layer}."):
                return False
    return True


def load_checkpoint(path: str | Path, options: LoadOptions | None = None, config_path: Path | None = None,
                    name: str | None = None, digest=None) -> StableDiffusionModel:
    """Load a single-file checkpoint (with `options`, default `LoadOptions()`: CPU, float32). Raises
    `CheckpointLoadError` (or a subclass of ValueError for a file that is not a supported
    checkpoint); never returns a half-built model.

    With `digest` (a `hashlib` object such as `hashlib.sha256()`), every byte of the file is fed to
    it in the same pass as the tensor reads (`TensorSource.read_many`): a checkpoint's first load
    gets its hash without a second read of the file.
    """
    options = LoadOptions() if options is None else options
    path = Path(path)
    timer = PhaseTimer()
    with timer.phase("header"):
        source = TensorSource(path, options.allow_unsafe_pickle)
    with source:
        canonical_to_file = normalize_keys(list(source.shapes), source.shapes)
        shapes = {canonical: source.shapes[file_key] for canonical, file_key in canonical_to_file.items()}
        with timer.phase("detect"):
            detection = detect_architecture(shapes, source=str(path))
            model_config = build_model_config(detection.architecture, shapes, user_yaml=config_path)
        groups = _used_file_keys(model_config, canonical_to_file)
        # Every tensor the models use, in one pass in file order (and the file's hash with it).
        wanted = {canonical_to_file[key]: options.vae_dtype if group == "vae" else options.dtype
                  for group, keys in groups.items() for key in keys}
        with timer.phase("read" if digest is None else "read + sha256"):
            tensors = source.read_many(wanted, options.device, digest)

    def weights(group: str) -> dict[str, torch.Tensor]:
        return {key: tensors[canonical_to_file[key]] for key in groups[group]}

    with timer.phase("unet"):
        unet = build_unet(model_config.unet, weights("unet"), options.device, path)
    with timer.phase("vae"):
        vae = build_vae(model_config.vae, weights("vae"), options.device, path)
    text_encoders = []
    with timer.phase("text encoders"):
        for i, spec in enumerate(model_config.text_encoders):
            text_encoders.append(build_text_encoder(spec, weights(f"text_encoder_{i}"), options.device, path))
    with timer.phase("tokenizers"):
        tokenizers = tuple(_load_tokenizer(spec) for spec in model_config.text_encoders)

    if detection.needs_v_prediction_test and not model_config.user_config:
        with timer.phase("v-prediction test"):
            if uses_v_prediction(unet):
                model_config = build_model_config(Architectures.SD2_V, shapes, force_prediction_type="v_prediction")
                detection = Detection(Architectures.SD2_V)

    model = StableDiffusionModel(
        name=name or path.name,
        path=path,
        architecture=detection.architecture,
        config=model_config,
        unet=unet,
        vae=vae,
        text_encoders=tuple(text_encoders),
        tokenizers=tokenizers,
        device=options.device,
        dtype=options.dtype,
        vae_dtype=options.vae_dtype,
    )
    model.builtin_vae = vae
    total = timer.total
    model.load_summary = f"{model.architecture} model {model.name} loaded in {timer.summary(total)}"
    return model


def _load_tokenizer(spec: TextEncoderSpec):
    from modules.library.clip_tokenizer import load_clip_tokenizer

    return load_clip_tokenizer(spec.tokenizer_kind, spec.tokenizer_dir)


def uses_v_prediction(unet: torch.nn.Module) -> bool:
    """A1111's test for SD2 checkpoints (A1111.md §1.7): one UNet pass on a constant input at t=999.

    An epsilon model predicts noise of roughly unit scale; a v-prediction model at t≈T predicts
    ≈ -x0, which pulls the mean of (output - input) below -1.
    """
    import torch

    param = next(unet.parameters())
    x = torch.full((1, int(unet.config.in_channels), 8, 8), 0.5, device=param.device, dtype=param.dtype)
    context = torch.full((1, 2, int(unet.config.cross_attention_dim)), 0.5, device=param.device, dtype=param.dtype)
    timestep = torch.tensor([999], device=param.device)
    with torch.no_grad():
        out = unet(x, timestep, encoder_hidden_states=context).sample
    return bool((out.float() - x.float()).mean() < -1)


def load_vae_file(path: str | Path, model: StableDiffusionModel, allow_unsafe_pickle: bool = False) -> torch.nn.Module:
    """Build an AutoencoderKL from a standalone VAE file to use with `model`.

    A1111's VAE files hold the autoencoder's keys without `first_stage_model.` (some keep it, some
    add `loss.*` training weights, which are skipped); diffusers-layout files load as they are. The
    scaling factor stays the checkpoint's: it belongs to the latent space the UNet was trained on.
    """
    import torch

    path = Path(path)
    with TensorSource(path, allow_unsafe_pickle) as source:
        keys = [k for k in source.shapes if not k.startswith("loss.") and k not in VAE_TRAINING_SCALARS]
        prefix = VAE_PREFIX if any(k.startswith(VAE_PREFIX) for k in keys) else ""
        keys = [k for k in keys if k.startswith(prefix)]
        shapes = {k[len(prefix):]: source.shapes[k] for k in keys}
        if "encoder.conv_in.weight" not in shapes:
            raise UnsupportedCheckpointError(
                f"{path}: not a VAE file (no encoder.conv_in.weight); VAE files hold encoder.*/decoder.* weights")
        if "encoder.down.0.block.0.conv1.weight" in shapes:  # LDM layout: sizes from the file's shapes
            ldm = copy.deepcopy(model.config.ldm)
            ldm["model"]["params"]["first_stage_config"]["params"]["ddconfig"].update(infer_vae_sizes(shapes, ""))
            config = vae_config_from_ldm(ldm, {k: torch.empty(tuple(v), device="meta") for k, v in shapes.items()})
            config["scaling_factor"] = model.config.vae["scaling_factor"]
        else:
            config = dict(model.config.vae)
        weights = {k[len(prefix):]: source.read(k, model.vae_dtype, model.device) for k in keys}
    return build_vae(config, weights, model.device, path)
