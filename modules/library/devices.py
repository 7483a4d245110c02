"""Device-level choices and figures for the engine: the sampler's dtype, and memory for the timing line.

`sampling_dtype` maps `--precision` / `--upcast-sampling` to the dtype of the sampler's latents.

Memory figures for a job's timing line: CUDA allocator peaks when on a GPU, process RSS otherwise.

The engine calls `reset_peak_memory(device)` when a job starts and `memory_stats(device).summary()`
when it ends. On CUDA the line has A1111's form, "A: 2.54 GB, R: 3.61 GB, Sys: 4.5/23.6 GB (19.1%)":
A = peak allocated by torch, R = peak reserved by its caching allocator, Sys = device memory in use by
every process at the end of the job (A1111 polls it in a thread for a peak; one reading costs nothing).
GB here are GiB, as in A1111.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

GIB = 1024 ** 3
_PROC_STATUS = Path("/proc/self/status")
_PROC_CLEAR_REFS = Path("/proc/self/clear_refs")


@dataclass(frozen=True)
class MemoryStats:
    """Bytes. CUDA fields are None off CUDA; `peak_rss` is None where the OS does not report it."""

    device: str
    rss: int
    peak_rss: int | None
    peak_allocated: int | None = None
    peak_reserved: int | None = None
    allocated: int | None = None
    reserved: int | None = None
    device_used: int | None = None
    device_total: int | None = None

    def summary(self) -> str:
        if self.peak_allocated is not None and self.peak_reserved is not None:
            text = f"A: {self.peak_allocated / GIB:.2f} GB, R: {self.peak_reserved / GIB:.2f} GB"
            if self.device_used is not None and self.device_total:
                percent = 100 * self.device_used / self.device_total
                text += f", Sys: {self.device_used / GIB:.1f}/{self.device_total / GIB:.1f} GB ({percent:.1f}%)"
            return text
        text = f"RAM: {self.rss / GIB:.2f} GB"
        if self.peak_rss is not None:
            text += f" (peak {self.peak_rss / GIB:.2f} GB)"
        return text


def _proc_status_bytes(field: str) -> int | None:
    try:
        for line in _PROC_STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # reported in kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def process_rss() -> tuple[int, int | None]:
    """(current RSS, peak RSS since start or the last `reset_peak_memory`) of this process."""
    rss = _proc_status_bytes("VmRSS")
    peak = _proc_status_bytes("VmHWM")
    if rss is None:
        import psutil

        rss = int(psutil.Process(os.getpid()).memory_info().rss)
    if peak is None and sys.platform != "win32":
        import resource  # Unix only

        # ru_maxrss is KiB on Linux, bytes on macOS; it cannot be reset.
        max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak = max_rss if sys.platform == "darwin" else max_rss * 1024
    return rss, peak


def _is_cuda(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_available()


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak window: CUDA's peak counters, and on Linux the process' peak RSS (VmHWM)."""
    device = torch.device(device)
    if _is_cuda(device):
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        _PROC_CLEAR_REFS.write_text("5")  # Linux: "5" resets VmHWM to the current RSS
    except OSError:
        log.debug("peak RSS cannot be reset here; it covers the whole process lifetime")


def memory_stats(device: torch.device) -> MemoryStats:
    """Memory figures for `device` (a CUDA device or anything else, which reports process RSS)."""
    device = torch.device(device)
    rss, peak_rss = process_rss()
    if not _is_cuda(device):
        return MemoryStats(device=str(device), rss=rss, peak_rss=peak_rss)
    free, total = torch.cuda.mem_get_info(device)
    return MemoryStats(
        device=str(device), rss=rss, peak_rss=peak_rss,
        peak_allocated=torch.cuda.max_memory_allocated(device),
        peak_reserved=torch.cuda.max_memory_reserved(device),
        allocated=torch.cuda.memory_allocated(device),
        reserved=torch.cuda.memory_reserved(device),
        device_used=total - free, device_total=total,
    )


def sampling_dtype(args: argparse.Namespace, unet_dtype: torch.dtype) -> torch.dtype:
    """dtype of the sampler's latents (noise, x, denoised) for a UNet whose weights are `unet_dtype`.

    A1111 keeps them in fp32 with a half UNet under `--precision autocast` (the default: autocast
    casts at each op) and under `--upcast-sampling` (it casts x to fp16 at the UNet call and the
    output back), and in fp16 only with `--precision half` alone. The engine casts at the UNet
    boundary: `unet(x.to(unet_dtype), ...).to(x.dtype)`. fp32 steps keep small sigmas' updates from
    rounding away and cost nothing measurable next to the UNet.
    """
    if unet_dtype not in (torch.float16, torch.bfloat16):
        return unet_dtype
    precision = getattr(args, "precision", "autocast")
    if precision not in ("full", "half", "autocast"):
        raise ValueError(f"--precision {precision!r} is not one of 'full', 'half', 'autocast'")
    if getattr(args, "upcast_sampling", False) or precision == "autocast":
        return torch.float32
    return unet_dtype
