"""Upscaler state dicts with random weights in the real key layouts, for tests and benchmarks.

Each layout is the one users' files have, so spandrel identifies them through the same path as a
downloaded model:
- `rrdbnet` "new": BasicSR's RRDBNet (Real-ESRGAN, most community ESRGAN models): `conv_first`,
  `body.N.rdbK.convJ`, `conv_body`, `conv_up1`/`conv_up2`, `conv_hr`, `conv_last`; Real-ESRGAN's own
  files wrap it in `{"params_ema": ...}` (`wrap="params_ema"`).
- `rrdbnet` "old": the original ESRGAN layout (`model.0`, `model.1.sub.N.RDBK.convJ.0`, `model.1.sub.<nb>`,
  upsampling convs at `model.3`, `model.6`, …), any power-of-two scale.
- `compact`: Real-ESRGAN's SRVGGNetCompact ("R-ESRGAN General 4xV3", "AnimeVideo"): `body.0` conv,
  `body.1` PReLU, then conv/PReLU pairs, the last conv feeding a pixel shuffle.
- `swinir`: SwinIR, made by spandrel's own SwinIR module (its key names are the official repo's).

`size="tiny"` is for tests (a few kB, milliseconds per image); `size="full"` is the real size
(RRDBNet 64 features, 23 blocks, 4×: Real-ESRGAN x4plus, 16.7 M parameters) for benchmarks.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Literal

import torch

Size = Literal["tiny", "full"]


def _conv(state: dict[str, torch.Tensor], name: str, out_ch: int, in_ch: int, generator: torch.Generator,
          gain: float = 1.0) -> None:
    # Kaiming-like scale keeps activations in range, so outputs are images rather than saturated noise.
    std = gain * math.sqrt(2.0 / (in_ch * 9))
    state[f"{name}.weight"] = torch.randn(out_ch, in_ch, 3, 3, generator=generator) * std
    state[f"{name}.bias"] = torch.randn(out_ch, generator=generator) * 0.01


def rrdbnet_state_dict(*, layout: Literal["new", "old"] = "new", size: Size = "tiny", scale: int = 4,
                       num_feat: int | None = None, num_blocks: int | None = None, num_grow: int | None = None,
                       in_ch: int = 3, out_ch: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    """An RRDBNet (ESRGAN) state dict. "new" is BasicSR's layout (4× only, as BasicSR's RRDBNet
    without pixel-unshuffle); "old" takes any power-of-two `scale`."""
    if scale < 1 or scale & (scale - 1):
        raise ValueError(f"RRDBNet scale must be a power of two, got {scale}")
    if layout == "new" and scale != 4:
        raise ValueError("BasicSR's RRDBNet layout upsamples 4× (its 2× and 1× models pixel-unshuffle the input); "
                         "use layout='old' for other scales")
    nf = num_feat or (64 if size == "full" else 8)
    nb = num_blocks or (23 if size == "full" else 1)
    gc = num_grow or 32  # spandrel builds RRDBNet with 32 growth channels (every released model has them)
    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    ups = int(math.log2(scale))
    if layout == "new":
        names = {"first": "conv_first", "body": "conv_body", "hr": "conv_hr", "last": "conv_last"}
        up_names = [f"conv_up{i + 1}" for i in range(ups)]

        def rdb_conv(block: int, rdb: int, conv: int) -> str:
            return f"body.{block}.rdb{rdb}.conv{conv}"
    else:
        # model.0 conv, model.1 the residual trunk, then [upsample, conv, lrelu] per 2×, conv_hr, lrelu, conv_last
        names = {"first": "model.0", "body": f"model.1.sub.{nb}", "hr": f"model.{3 * ups + 2}",
                 "last": f"model.{3 * ups + 4}"}
        up_names = [f"model.{3 * (i + 1)}" for i in range(ups)]

        def rdb_conv(block: int, rdb: int, conv: int) -> str:
            return f"model.1.sub.{block}.RDB{rdb}.conv{conv}.0"

    _conv(state, names["first"], nf, in_ch, g)
    for block in range(nb):
        for rdb in (1, 2, 3):
            for conv in range(1, 6):
                out = nf if conv == 5 else gc
                # The residual blocks are scaled by 0.2 in the network; small weights keep the sum tame.
                _conv(state, rdb_conv(block, rdb, conv), out, nf + (conv - 1) * gc, g, gain=0.2)
    _conv(state, names["body"], nf, nf, g)
    for name in up_names:
        _conv(state, name, nf, nf, g)
    _conv(state, names["hr"], nf, nf, g)
    _conv(state, names["last"], out_ch, nf, g, gain=0.1)
    return state


def compact_state_dict(*, size: Size = "tiny", scale: int = 4, num_feat: int | None = None,
                       num_conv: int | None = None, in_ch: int = 3, out_ch: int = 3,
                       seed: int = 0) -> dict[str, torch.Tensor]:
    """An SRVGGNetCompact state dict (Real-ESRGAN General/AnimeVideo). Full size = General 4xV3
    (64 features, 32 convs)."""
    nf = num_feat or (64 if size == "full" else 8)
    nc = num_conv if num_conv is not None else (32 if size == "full" else 2)
    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    _conv(state, "body.0", nf, in_ch, g)
    state["body.1.weight"] = torch.full((nf,), 0.25)  # PReLU slopes, PyTorch's default value
    for i in range(nc):
        _conv(state, f"body.{2 * i + 2}", nf, nf, g)
        state[f"body.{2 * i + 3}.weight"] = torch.full((nf,), 0.25)
    _conv(state, f"body.{2 * nc + 2}", out_ch * scale * scale, nf, g, gain=0.1)
    return state


def swinir_state_dict(*, size: Size = "tiny", scale: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """A SwinIR state dict ("nearest+conv" upsampling, as the real-world SR models A1111 lists).
    Tiny: embed 12, one stage of two blocks, window 8; full: SwinIR-M (embed 180, 6×6 blocks)."""
    import modules  # noqa: F401 - torchvision importable beside a CPU torch, before spandrel
    from spandrel.architectures.SwinIR import SwinIR

    if scale not in (2, 4, 8):
        raise ValueError(f"SwinIR nearest+conv upsampling is 2×, 4× or 8×; got {scale}")
    torch.manual_seed(seed)
    if size == "tiny":
        kwargs = dict(img_size=16, embed_dim=12, depths=[2], num_heads=[2], window_size=8, mlp_ratio=2.0)
    else:
        kwargs = dict(img_size=64, embed_dim=180, depths=[6] * 6, num_heads=[6] * 6, window_size=8, mlp_ratio=2.0)
    upsampler = "nearest+conv" if scale == 4 else "pixelshuffle"
    model = SwinIR(upscale=scale, upsampler=upsampler, resi_connection="1conv", **kwargs)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def write_state_dict(path: str | os.PathLike[str], state: dict[str, torch.Tensor], *,
                     wrap: str | None = None) -> Path:
    """Write `state` as the file a user would have: `.safetensors` (flat; `wrap` is not possible
    there) or a pickled `.pth`/`.pt` (`torch.save`, optionally `{wrap: state}` as Real-ESRGAN does)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        if wrap:
            raise ValueError("safetensors files hold flat tensor dicts; wrap only .pth/.pt files")
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, os.fspath(path))
    else:
        torch.save({wrap: state} if wrap else state, path)
    return path
