"""`--medvram` / `--lowvram`: keep weights in CPU RAM and move each part to the GPU only while it runs.

Modes (A1111's `modules/lowvram.py`, A1111.md §9):
  MEDVRAM  whole components are the unit: each text encoder, the UNet, the VAE. One of them is on the
           GPU at a time (diffusers' `enable_model_cpu_offload` does the same).
  LOWVRAM  the UNet is split finer: every resnet, transformer and down/upsampler of its down, mid and
           up blocks is a unit, while the UNet's small ends (conv_in, time/class embeddings, the
           output norm and conv) stay on the GPU; text encoders and the VAE are units as in MEDVRAM.
`--medvram-sdxl` is MEDVRAM for SDXL models (base and refiner) and nothing for others; `--lowvram`
wins over both medvram flags, as in A1111.

How: an accelerate `ModelHook` on every unit (the hook seam `add_hook_to_module`; diffusers'
`@apply_forward_hook` calls it for `AutoencoderKL.encode/decode` too). Its `pre_forward` makes the
unit resident: the previously resident unit goes back to the CPU, this one to the GPU, and the
inputs follow. Units leave the GPU only when another unit needs it, not after their forward, so a
caller may still touch a unit's weights right after calling it (conditioning applies CLIP's
`final_layer_norm` after the encoder's forward for clip skip) and a second call of the same unit
(every sampling step) moves nothing in MEDVRAM. One shared residency instead of accelerate's
`cpu_offload_with_hook` chain because the order of units is not fixed (hires fix runs the UNet again
after the VAE; SDXL has two encoders).

`enable_offload` returns an `OffloadHandle`; `remove()` (or leaving its `with` block) takes the hooks
off and puts every module back on the device it was on before, and restores `model.device`. While
offload is on, `model.device` is the execution device, so the engine keeps creating latents and token
ids there. Remove the handle before `model.to(...)`, a VAE swap or unloading the model, and enable it
again after a swap (the new VAE has no hook).
"""

from __future__ import annotations

import argparse
import enum
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Self

import torch
from accelerate.hooks import ModelHook, add_hook_to_module, remove_hook_from_module
from accelerate.utils import send_to_device

log = logging.getLogger(__name__)


class OffloadMode(str, enum.Enum):
    NONE = "none"
    MEDVRAM = "medvram"
    LOWVRAM = "lowvram"


def select_offload_mode(args: argparse.Namespace, is_sdxl: bool, device: torch.device) -> OffloadMode:
    """Flags → mode for one model. `is_sdxl` covers base and refiner (A1111 tests for `conditioner`).

    Offload only makes sense with an accelerator; on the CPU the flags are ignored (logged).
    """
    lowvram = bool(getattr(args, "lowvram", False))
    medvram = bool(getattr(args, "medvram", False)) or (bool(getattr(args, "medvram_sdxl", False)) and is_sdxl)
    if not (lowvram or medvram):
        return OffloadMode.NONE
    if device.type == "cpu":
        log.info("--%s ignored: the model runs on the CPU", "lowvram" if lowvram else "medvram")
        return OffloadMode.NONE
    return OffloadMode.LOWVRAM if lowvram else OffloadMode.MEDVRAM


def batch_cond_uncond_allowed(mode: OffloadMode) -> bool:
    """A1111 evaluates cond and uncond in separate UNet calls under --medvram/--lowvram (half the
    activation memory); the engine should do the same when this is False."""
    return mode is OffloadMode.NONE


class _Residency:
    """Which unit is on the execution device now. One per `OffloadHandle`, shared by its hooks."""

    def __init__(self, execution_device: torch.device, offload_device: torch.device) -> None:
        self.execution_device = execution_device
        self.offload_device = offload_device
        self.current: torch.nn.Module | None = None
        self.moves = 0  # units moved to the execution device, for tests and debug logs

    def activate(self, module: torch.nn.Module) -> None:
        if self.current is module:
            return
        if self.current is not None:
            self.current.to(self.offload_device)
        module.to(self.execution_device)
        self.current = module
        self.moves += 1

    def release(self) -> None:
        if self.current is not None:
            self.current.to(self.offload_device)
            self.current = None


class ResidencyHook(ModelHook):
    """Makes its module the resident unit before it runs and sends the inputs to the execution device."""

    def __init__(self, residency: _Residency, name: str) -> None:
        self.residency = residency
        self.name = name

    def pre_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        # `@apply_forward_hook` (VAE encode/decode) calls this with no inputs; the move is what counts.
        self.residency.activate(module)
        device = self.residency.execution_device
        return send_to_device(args, device), send_to_device(kwargs, device)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


@dataclass
class OffloadHandle:
    """Hooks and saved placement of one model under offload. `remove()` is idempotent."""

    mode: OffloadMode
    execution_device: torch.device
    units: dict[str, torch.nn.Module] = field(default_factory=dict)  # hooked modules by qualified name
    _model: Any = None
    _residency: _Residency | None = None
    _placement: list[tuple[torch.nn.Module, torch.device]] = field(default_factory=list)
    _model_device: torch.device | None = None
    _forward_in_dict: dict[int, bool] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self._model is not None

    @property
    def resident(self) -> torch.nn.Module | None:
        return self._residency.current if self._residency else None

    @property
    def moves(self) -> int:
        return self._residency.moves if self._residency else 0

    def remove(self) -> None:
        if self._model is None:
            return
        for module in self.units.values():
            remove_hook_from_module(module)
            # accelerate leaves the original bound method in the instance dict; drop it, so the module
            # is as before (and holds no reference cycle through its own `forward`).
            if not self._forward_in_dict.get(id(module), False):
                module.__dict__.pop("forward", None)
        if self._residency is not None:
            self._residency.current = None
        # Those going to the CPU first, so VRAM is freed before the rest arrives.
        for module, device in sorted(self._placement, key=lambda item: item[1].type != "cpu"):
            module.to(device)
        self._model.device = self._model_device
        log.info("Offload (%s) removed from %s", self.mode.value, getattr(self._model, "name", "model"))
        self._model = None
        self.units.clear()
        self._placement.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def _single_device(name: str, module: torch.nn.Module) -> torch.device:
    devices = {t.device for t in list(module.parameters()) + list(module.buffers())}
    if len(devices) > 1:
        raise ValueError(f"{name} has tensors on several devices ({sorted(map(str, devices))}); offload needs "
                         "each component on one device (is offload already enabled on this model?)")
    return devices.pop() if devices else torch.device("cpu")


def _has_direct_tensors(module: torch.nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False))


def unet_block_units(unet: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """LOWVRAM's UNet units: each child (or each item of a child list) of every down/mid/up block.

    A block with tensors of its own (none in diffusers' blocks) becomes one unit, so that no weight is
    left outside both the units and the resident ends.
    """
    blocks: list[tuple[str, torch.nn.Module]] = []
    for list_name in ("down_blocks", "up_blocks"):
        blocks += [(f"{list_name}.{i}", block) for i, block in enumerate(getattr(unet, list_name, ()))]
    if getattr(unet, "mid_block", None) is not None:
        blocks.append(("mid_block", unet.mid_block))
    units: list[tuple[str, torch.nn.Module]] = []
    for block_name, block in blocks:
        if _has_direct_tensors(block):
            units.append((block_name, block))
            continue
        for child_name, child in block.named_children():
            if isinstance(child, torch.nn.ModuleList):
                units += [(f"{block_name}.{child_name}.{i}", item) for i, item in enumerate(child)]
            elif any(True for _ in child.parameters()):
                units.append((f"{block_name}.{child_name}", child))
    return units


def _place_outside(module: torch.nn.Module, unit_ids: set[int], device: torch.device) -> None:
    """Move everything of `module` that is not inside a unit to `device`, without touching units."""
    if id(module) in unit_ids:
        return
    if not any(id(m) in unit_ids for m in module.modules()):
        module.to(device)
        return
    if _has_direct_tensors(module):
        raise ValueError(f"{type(module).__name__} holds tensors of its own and contains offload units; "
                         "it cannot be split (use --medvram for this model)")
    for child in module.children():
        _place_outside(child, unit_ids, device)


def _plan_units(model: Any, mode: OffloadMode) -> tuple[list[tuple[str, torch.nn.Module]], list[torch.nn.Module]]:
    """(units, UNet parts that stay on the execution device)."""
    units = [(f"text_encoder{'' if i == 0 else '_' + str(i + 1)}", enc) for i, enc in enumerate(model.text_encoders)]
    residents: list[torch.nn.Module] = []
    if mode is OffloadMode.LOWVRAM and not _has_direct_tensors(model.unet):
        blocks = unet_block_units(model.unet)
        units += [(f"unet.{name}", module) for name, module in blocks]
        residents.append(model.unet)
    else:
        if mode is OffloadMode.LOWVRAM:
            log.warning("--lowvram: %s has weights of its own; offloading it whole (as --medvram)",
                        type(model.unet).__name__)
        units.append(("unet", model.unet))
    units.append(("vae", model.vae))
    return units, residents


def enable_offload(model: Any, mode: OffloadMode, execution_device: torch.device,
                   offload_device: torch.device | None = None) -> OffloadHandle:
    """Put `model` (a `StableDiffusionModel`) under `mode`; returns the handle that undoes it.

    Weights wait on `offload_device` (the CPU by default) and run on `execution_device`. With
    `OffloadMode.NONE` nothing changes and the handle's `remove()` does nothing, so callers need not
    branch. Raises `TypeError` for a `mode` that is not an `OffloadMode`, `ValueError` if the model
    already has accelerate hooks or a component is spread over several devices.
    """
    if not isinstance(mode, OffloadMode):
        raise TypeError(f"mode must be an OffloadMode, got {mode!r}")
    execution_device = torch.device(execution_device)
    offload_device = torch.device("cpu") if offload_device is None else torch.device(offload_device)
    handle = OffloadHandle(mode, execution_device)
    if mode is OffloadMode.NONE:
        return handle

    components: dict[str, torch.nn.Module] = model.modules()
    for name, component in components.items():
        hooked = [sub for sub, m in component.named_modules() if hasattr(m, "_hf_hook")]
        if hooked:
            raise ValueError(f"{name} already has accelerate hooks (on {hooked[0] or name!r}); remove the "
                             "previous offload handle before enabling offload again")
    placement = [(component, _single_device(name, component)) for name, component in components.items()]

    units, residents = _plan_units(model, mode)
    unit_ids = {id(module) for _, module in units}
    residency = _Residency(execution_device, offload_device)
    # Everything to the offload device first (frees VRAM if the model was loaded on the GPU), then the
    # UNet's small ends back to the execution device.
    for component in components.values():
        component.to(offload_device)
    for component in residents:
        _place_outside(component, unit_ids, execution_device)

    handle._forward_in_dict = {id(m): "forward" in m.__dict__ for _, m in units}
    for name, module in units:
        add_hook_to_module(module, ResidencyHook(residency, name))
        handle.units[name] = module
    handle._model = model
    handle._residency = residency
    handle._placement = placement
    handle._model_device = model.device
    model.device = execution_device
    log.info("Offload (%s) on %s: %d units move between %s and %s", mode.value, getattr(model, "name", "model"),
             len(units), offload_device, execution_device)
    return handle


def hooked_modules(modules: Iterable[torch.nn.Module]) -> list[torch.nn.Module]:
    """Submodules carrying an accelerate hook (for checks that nothing is left behind)."""
    return [m for root in modules for m in root.modules() if hasattr(m, "_hf_hook")]
