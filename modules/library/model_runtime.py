"""How a loaded model runs on the device: attention backend and VRAM offload, set up per model.

The model manager calls `attach` after a model (or a new VAE) is in place and `detach` before it
moves, swaps its VAE or is unloaded, so hooks and processors never outlive the placement they were
made for.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field

import torch

from modules.library.attention_backends import AttentionBackend, apply_attention_backend, select_attention_backend
from modules.library.model_detection import ModelFamily
from modules.library.offload import OffloadMode, enable_offload, select_offload_mode

log = logging.getLogger(__name__)


@dataclass
class ModelRuntime:
    """Flags → what every loaded model gets. `handles` maps a model's id to its offload handle."""

    args: argparse.Namespace
    device: torch.device
    backend: AttentionBackend | None = None
    handles: dict[int, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.backend is None:
            self.backend = select_attention_backend(self.args, self.device)

    @property
    def may_offload(self) -> bool:
        """Whether any model may be offloaded (then models are read into RAM, not VRAM)."""
        return self.device.type == "cuda" and any(
            getattr(self.args, flag, False) for flag in ("medvram", "lowvram", "medvram_sdxl"))

    def offload_mode(self, model) -> OffloadMode:
        is_sdxl = model.architecture.family in (ModelFamily.SDXL, ModelFamily.SDXL_REFINER)
        return select_offload_mode(self.args, is_sdxl, self.device)

    def attach(self, model) -> None:
        apply_attention_backend(model, self.backend)
        mode = self.offload_mode(model)
        if mode is not OffloadMode.NONE:
            self.handles[id(model)] = enable_offload(model, mode, self.device)

    def detach(self, model) -> None:
        handle = self.handles.pop(id(model), None)
        if handle is not None:
            handle.remove()

    def is_offloaded(self, model) -> bool:
        return id(model) in self.handles
