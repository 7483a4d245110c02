"""Which attention kernel the UNet and VAE use, chosen from A1111's flags, set through diffusers' seam.

Backends (the `--opt-*` / `--xformers` flags → `select_attention_backend`):
  SDPA         torch's `scaled_dot_product_attention` (diffusers' `AttnProcessor2_0`): the default,
               and what `--opt-sdp-attention` asks for. torch picks flash / memory-efficient / math.
  SDPA_NO_MEM  SDPA limited to the flash and math kernels (`--opt-sdp-no-mem-attention`). A1111 calls
               it deterministic: the memory-efficient kernel is the one whose results can vary.
  XFORMERS     xformers' `memory_efficient_attention` (`--xformers`), only on CUDA and only after a
               tiny fp16 call succeeded: wheels built for another torch import fine and fail at the
               first kernel call (PITFALLS.md), which would otherwise fail every job.
  PLAIN        diffusers' `AttnProcessor` (softmax(QKᵀ)V with the whole matrix in memory): what
               `--disable-opt-split-attention` leaves in A1111 when nothing else is asked for.

A1111's other attention flags (`--opt-split-attention`, `-v1`, `-invokeai`, `--opt-sub-quad-attention`)
are slicing schemes that predate SDPA; they are accepted and give SDPA, whose memory-efficient kernel
does the same job without slicing.

Processors are set per model with `Attention.set_processor` (via `set_attn_processor`); nothing in
torch or diffusers is replaced. Layers holding a processor that is not plain attention (IP-Adapter,
trained processors) keep it.
"""

from __future__ import annotations

import argparse
import enum
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Self

import torch
from diffusers.models.attention_processor import (
    AttnProcessor,
    AttnProcessor2_0,
    XFormersAttnProcessor,
)
from torch.nn.attention import SDPBackend, sdpa_kernel

log = logging.getLogger(__name__)


class AttentionBackend(str, enum.Enum):
    SDPA = "sdpa"
    SDPA_NO_MEM = "sdpa-no-mem"
    XFORMERS = "xformers"
    PLAIN = "plain"

    @property
    def title(self) -> str:
        """A1111's short name for it (its "Cross attention optimization" setting)."""
        return {"sdpa": "sdp", "sdpa-no-mem": "sdp-no-mem", "xformers": "xformers", "plain": "None"}[self.value]


@dataclass(frozen=True)
class XformersStatus:
    """Outcome of `probe_xformers`: `usable` only when a real kernel call worked on the device."""

    usable: bool
    importable: bool
    detail: str


XformersProbe = Callable[[torch.device], XformersStatus]


def probe_xformers(device: torch.device) -> XformersStatus:
    """Import xformers and run `memory_efficient_attention` once, in fp16, on `device`.

    Shapes: a UNet-like head (64 wide) and the VAE's single 512-wide head, since both get the
    processor. The result is compared with SDPA so that a kernel that runs but computes garbage
    (an ABI mismatch can do that) is not used either.
    """
    if device.type != "cuda":
        return XformersStatus(False, False, f"xformers runs on CUDA only; the device is {device}")
    try:
        import xformers.ops
    except Exception as e:  # noqa: BLE001 - a broken binary raises ImportError, OSError or RuntimeError
        return XformersStatus(False, False, f"xformers does not import ({type(e).__name__}: {e}); "
                                            "install a wheel built for this torch or leave out --xformers")
    version = getattr(xformers, "__version__", "?")
    from diffusers.utils import is_xformers_available

    if not is_xformers_available():
        return XformersStatus(False, True, f"xformers {version} imports but diffusers does not see it installed")
    try:
        for heads, head_dim in ((2, 64), (1, 512)):
            generator = torch.Generator(device=device).manual_seed(0)
            q, k, v = (torch.randn(1, 16, heads, head_dim, device=device, dtype=torch.float16, generator=generator)
                       for _ in range(3))
            out = xformers.ops.memory_efficient_attention(q, k, v)
            reference = torch.nn.functional.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
            torch.cuda.synchronize(device)
            if not torch.allclose(out.float(), reference.float(), atol=2e-2, rtol=2e-2):
                return XformersStatus(False, True, f"xformers {version} gives results that differ from SDPA "
                                                   f"(head width {head_dim}) on torch {torch.__version__}")
    except Exception as e:  # noqa: BLE001 - "no kernel for this build" surfaces as several exception types
        return XformersStatus(False, True, f"xformers {version} imports but its kernels fail on torch "
                                           f"{torch.__version__} ({type(e).__name__}: {e}); it was probably "
                                           "built for another torch version")
    return XformersStatus(True, True, f"xformers {version}")


def select_attention_backend(args: argparse.Namespace, device: torch.device,
                             xformers_probe: XformersProbe = probe_xformers) -> AttentionBackend:
    """Flags → backend. Precedence as in A1111: xformers (when it works) > `--opt-sdp-no-mem-attention`
    > `--opt-sdp-attention` > `--disable-opt-split-attention` (plain attention) > SDPA by default.

    `--force-enable-xformers` implies `--xformers` and overrides a failed kernel test (A1111's flag
    skips its GPU checks), but not a missing import or a non-CUDA device, where xformers cannot run
    at all. `xformers_probe` is called only when xformers is asked for; tests pass a stand-in.
    """
    forced = bool(getattr(args, "force_enable_xformers", False))
    if forced or getattr(args, "xformers", False):
        status = xformers_probe(device)
        if status.usable:
            log.info("Attention: %s", status.detail)
            return AttentionBackend.XFORMERS
        if forced and status.importable and device.type == "cuda":
            log.warning("Attention: --force-enable-xformers: using xformers although its test failed: %s",
                        status.detail)
            return AttentionBackend.XFORMERS
        fallback = _sdpa_choice(args)
        log.warning("Attention: --xformers ignored, using %s: %s", fallback.title, status.detail)
        return fallback
    return _sdpa_choice(args)


def _sdpa_choice(args: argparse.Namespace) -> AttentionBackend:
    if getattr(args, "opt_sdp_no_mem_attention", False):
        return AttentionBackend.SDPA_NO_MEM
    if getattr(args, "opt_sdp_attention", False):
        return AttentionBackend.SDPA
    if getattr(args, "disable_opt_split_attention", False):
        return AttentionBackend.PLAIN
    return AttentionBackend.SDPA


class SDPAFlashMathAttnProcessor(AttnProcessor2_0):
    """`AttnProcessor2_0` with SDPA limited to the flash and math kernels for the call.

    `sdpa_kernel` restores the previous kernel selection on exit. The selection is process-wide,
    which is safe here because one job runs at a time.
    """

    def __call__(self, attn: Any, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.MATH]):
            return super().__call__(attn, hidden_states, *args, **kwargs)


# Processors computing plain attention from to_q/to_k/to_v; others carry behaviour of their own.
PLAIN_PROCESSORS: tuple[type, ...] = (AttnProcessor, AttnProcessor2_0, XFormersAttnProcessor)


def make_processor(backend: AttentionBackend) -> object:
    """A fresh diffusers attention processor for `backend` (stateless; one serves every layer)."""
    if backend is AttentionBackend.SDPA:
        return AttnProcessor2_0()
    if backend is AttentionBackend.SDPA_NO_MEM:
        return SDPAFlashMathAttnProcessor()
    if backend is AttentionBackend.XFORMERS:
        return XFormersAttnProcessor()
    if backend is AttentionBackend.PLAIN:
        return AttnProcessor()
    raise ValueError(f"unknown attention backend {backend!r}; expected one of {[b.value for b in AttentionBackend]}")


def _is_plain(processor: object) -> bool:
    return isinstance(processor, PLAIN_PROCESSORS)  # subclasses count: SDPAFlashMathAttnProcessor


class AppliedAttention:
    """The processors a model had before `apply_attention_backend`; `restore()` puts them back."""

    def __init__(self, backend: AttentionBackend, previous: Mapping[str, tuple[torch.nn.Module, dict[str, object]]]):
        self.backend = backend
        self._previous = dict(previous)

    @property
    def components(self) -> tuple[str, ...]:
        return tuple(self._previous)

    def restore(self) -> None:
        for module, processors in self._previous.values():
            module.set_attn_processor(dict(processors))  # set_attn_processor consumes the dict
        self._previous.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()


def _attention_components(model: Any) -> Iterator[tuple[str, torch.nn.Module]]:
    """The diffusers models of `model` (UNet, VAE, the idle built-in VAE); text encoders are
    transformers models with their own SDPA attention and are left alone."""
    for name, module in model.modules().items():
        if hasattr(module, "set_attn_processor") and hasattr(module, "attn_processors"):
            yield name, module


def apply_attention_backend(model: Any, backend: AttentionBackend) -> AppliedAttention:
    """Give every plain attention layer of the model's UNet and VAE the processor of `backend`.

    Returns the previous processors; the model manager can ignore the result (the backend is set
    for the model's lifetime) or call `restore()`. Not to be called while a job has hypernetworks
    attached: their processors are not plain and would be kept, and their exit would then put the
    old processors back over the new ones.
    """
    if not isinstance(backend, AttentionBackend):
        raise TypeError(f"backend must be an AttentionBackend, got {backend!r}")
    processor = make_processor(backend)
    previous: dict[str, tuple[torch.nn.Module, dict[str, object]]] = {}
    for name, module in _attention_components(model):
        current = dict(module.attn_processors)
        if not current:
            continue
        kept = {layer for layer, p in current.items() if not _is_plain(p)}
        if kept:
            example = min(kept)
            log.warning("%s: %d attention layers keep their own processor (%s, e.g. %s)", name, len(kept),
                        type(current[example]).__name__, example)
        module.set_attn_processor({layer: (p if layer in kept else processor) for layer, p in current.items()})
        previous[name] = (module, current)
    log.debug("Attention backend %s set on %s", backend.value, ", ".join(previous) or "nothing")
    return AppliedAttention(backend, previous)
