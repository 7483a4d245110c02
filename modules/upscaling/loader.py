"""Reading an upscaler file and building its model through spandrel.

spandrel (the library A1111 ≥1.8, ComfyUI and chaiNNer use) identifies the architecture from the
state dict's keys and shapes and builds the network. Files are read here, not by spandrel's own
`ModelLoader.load_from_file`: `.safetensors` through `library.safetensors_io`, pickled `.pt`/`.pth`
only through `library.safe_unpickle` (spandrel's loader would try TorchScript for `.pt` and uses
its own, looser unpickler). `--disable-safe-unpickle` is the only way to a plain pickle load.

Models are fed as A1111 feeds them, BGR [0, 1] tensors (modules.upscaling.service.image_to_tensor).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modules.library.safe_unpickle import load_pickled_checkpoint

if TYPE_CHECKING:
    import torch
    from spandrel import ImageModelDescriptor

log = logging.getLogger(__name__)

# Wrappers training code puts around the weights (BasicSR: params_ema/params; Lightning: state_dict).
WRAPPER_KEYS = ("params_ema", "params-ema", "params", "state_dict", "model_state_dict", "model", "net")


class UpscalerModelError(ValueError):
    """A file that cannot be used as an upscaler: not identified by spandrel, unreadable, or not an
    image-to-image model. The message names the file and says what it looks like."""

    def __init__(self, message: str, path: str | os.PathLike[str] | None = None):
        super().__init__(message)
        self.path = Path(path) if path is not None else None


@dataclass(frozen=True)
class UpscalerDevice:
    """Where upscaler models run: `device` (a torch device string) and whether they run in fp16."""

    device: str = "cpu"
    half: bool = False

    @classmethod
    def from_args(cls, args: Any, cuda_available: bool | None = None) -> "UpscalerDevice":
        """The SD model's rule (`model_manager.default_load_options`): CUDA when torch has it and no
        `--use-cpu` was given (any value means the CPU in Atelier), fp16 there unless `--no-half` or
        `--precision full`."""
        if cuda_available is None:
            import torch

            cuda_available = torch.cuda.is_available()
        use_cpu = bool(getattr(args, "use_cpu", None))
        if not cuda_available or use_cpu:
            return cls("cpu", False)
        device_id = getattr(args, "device_id", None)
        half = not getattr(args, "no_half", False) and getattr(args, "precision", "autocast") != "full"
        return cls(f"cuda:{device_id}" if device_id is not None else "cuda", half)


def supported_architectures() -> list[str]:
    """The names of the architectures spandrel identifies, in its detection order."""
    import modules  # noqa: F401 - makes torchvision importable beside a CPU torch before spandrel
    from spandrel import MAIN_REGISTRY

    return [support.architecture.name for support in MAIN_REGISTRY.architectures("detection")]


def _unwrap(obj: object, path: Path) -> dict[str, "torch.Tensor"]:
    """The flat {name: tensor} dict inside a loaded file, through one of the known wrappers."""
    import torch

    if not isinstance(obj, Mapping):
        raise UpscalerModelError(
            f"{path} holds a {type(obj).__module__}.{type(obj).__qualname__}, not a state dict (a dict of tensors): "
            "it is not an upscaler model file Atelier can read.", path)
    state: Mapping = obj
    for key in WRAPPER_KEYS:
        inner = state.get(key)
        if isinstance(inner, Mapping) and any(isinstance(v, torch.Tensor) for v in inner.values()):
            state = inner
            break
    tensors = {k: v.detach() if isinstance(v, torch.nn.Parameter) else v
               for k, v in state.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        keys = ", ".join(repr(k) for k in list(state)[:8]) or "none"
        raise UpscalerModelError(f"{path} contains no tensors (top-level keys: {keys}); it is not an upscaler model.",
                                 path)
    # "module." (DataParallel) and "netG." prefixes: spandrel strips them too, but only on a dict it
    # canonicalizes itself; doing it here keeps the error text below about the real keys.
    for prefix in ("module.", "netG."):
        if all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix):]: v for k, v in tensors.items()}
    return tensors


def read_state_dict(path: str | os.PathLike[str], *, allow_unsafe_pickle: bool = False) -> dict[str, "torch.Tensor"]:
    """The weights in an upscaler file, on the CPU.

    `.safetensors` never runs code. `.pt`/`.pth` go through the restricted unpickler: a file that
    needs anything outside its allow-list raises `UnsafeCheckpointError` (nothing in it runs); a
    truncated or corrupt one `CorruptCheckpointError` (both `ValueError`s naming the file).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from modules.library.safetensors_io import SafetensorsReader

        with SafetensorsReader(path) as reader:  # SafetensorsFormatError names a truncated/corrupt file
            state = {name: reader.read(name) for name in reader.keys()}
        return _unwrap(state, path)
    if suffix in (".pt", ".pth", ".ckpt", ".bin"):
        return _unwrap(load_pickled_checkpoint(path, allow_unsafe=allow_unsafe_pickle), path)
    raise UpscalerModelError(f"{path}: unsupported file type {suffix!r}; upscaler models are .pth, .pt or .safetensors",
                             path)


def describe_keys(state: Mapping[str, Any], limit: int = 6) -> str:
    """A few key names, with shapes, and the count: what a state dict looks like, for an error."""
    shown = []
    for key in list(state)[:limit]:
        shape = getattr(state[key], "shape", None)
        shown.append(f"{key} {list(shape)}" if shape is not None else key)
    more = f", … ({len(state)} keys in all)" if len(state) > limit else f" ({len(state)} keys)"
    return ", ".join(shown) + more


def _looks_like(state: Mapping[str, Any]) -> str:
    """A hint for common files that are not upscalers."""
    keys = list(state)
    if any(k.startswith("model.diffusion_model.") for k in keys):
        return " It looks like a Stable Diffusion checkpoint: put it in models/Stable-diffusion."
    if any(k.startswith(("lora_unet_", "lora_te")) or ".lora_down." in k for k in keys):
        return " It looks like a LoRA: put it in models/Lora."
    if any(k.startswith(("encoder.", "decoder.")) for k in keys) and any("quant_conv" in k for k in keys):
        return " It looks like a VAE: put it in models/VAE."
    return ""


def build_model(state: dict[str, "torch.Tensor"], path: str | os.PathLike[str]) -> "ImageModelDescriptor":
    """spandrel's model for `state` (on the CPU, fp32, eval mode). Raises UpscalerModelError when
    spandrel does not identify it or it is not an image-to-image model."""
    import modules  # noqa: F401 - torchvision importable beside a CPU torch
    from spandrel import ImageModelDescriptor, MAIN_REGISTRY, UnsupportedModelError

    path = Path(path)
    try:
        descriptor = MAIN_REGISTRY.load(state)
    except UnsupportedModelError:
        raise UpscalerModelError(
            f"{path.name} is not an upscaler model spandrel can identify. Its weights look like: "
            f"{describe_keys(state)}.{_looks_like(state)} Supported architectures: "
            f"{', '.join(supported_architectures())}.", path) from None
    except (KeyError, ValueError, RuntimeError, AssertionError, IndexError, TypeError) as error:
        # The keys matched an architecture but the shapes or the rest of the keys did not.
        raise UpscalerModelError(
            f"{path.name} looks like an upscaler but spandrel could not build it ({type(error).__name__}: "
            f"{error}). The file may be damaged or a variant spandrel does not support. Its weights look like: "
            f"{describe_keys(state)}.", path) from error
    if not isinstance(descriptor, ImageModelDescriptor):
        raise UpscalerModelError(
            f"{path.name} is a {descriptor.architecture.name} model ({type(descriptor).__name__}), not an "
            "image-to-image upscaler (inpainting models need a mask).", path)
    return descriptor.eval()


def load_upscaler_model(path: str | os.PathLike[str], device: UpscalerDevice, *,
                        allow_unsafe_pickle: bool = False) -> "ImageModelDescriptor":
    """Read `path` and build its model on `device`: fp16 on CUDA when the model supports it (spandrel's
    `supports_half`) and the device allows it, eval mode, gradients off."""
    import torch

    path = Path(path)
    state = read_state_dict(path, allow_unsafe_pickle=allow_unsafe_pickle)
    descriptor = build_model(state, path)
    del state
    descriptor.model.requires_grad_(False)
    descriptor.to(torch.device(device.device))
    if device.half and descriptor.supports_half:
        descriptor.half()
    log.info("Loaded upscaler %s: %s %d× on %s (%s)", path.name, descriptor.architecture.name, descriptor.scale,
             device.device, descriptor.dtype)
    return descriptor
