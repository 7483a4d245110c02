"""Block-weighted merging (MBW): one multiplier per UNet block instead of one for the whole model.

Block names follow the merge tools users know (sd-webui-merge-block-weighted-gui, supermerger):
- SD1.x / SD2.x, 26 weights: BASE, IN00–IN11, M00, OUT00–OUT11 (the LDM UNet's 12 input blocks,
  its middle block and 12 output blocks). The SDXL refiner's UNet has the same 12/1/12 layout, so
  it uses the same 26 names (no tool we know defines refiner blocks).
- SDXL base, 20 weights: BASE, IN00–IN08, M00, OUT00–OUT08.

Where the keys outside the numbered blocks go (the tools disagree):
- `input_blocks.0` (the UNet's input conv) is IN00 and `out.` (its final norm and conv) is the last
  OUT block: every tool agrees.
- `time_embed` and SDXL's `label_emb` go to BASE, as in sd-mecha's supermerger-block conversion.
  They are the timestep/size-conditioning MLPs whose output feeds every ResBlock, so they belong
  to no single block. sd-webui-merge-block-weighted-gui puts `time_embed` in IN00, and current
  supermerger does not merge them at all (they keep A's values), which makes an all-ones weight
  list fail to give B; with BASE, weights of all 1 reproduce B exactly and all 0 reproduce A.
- Text encoders (`cond_stage_model.`, `conditioner.embedders.`) and the VAE (`first_stage_model.`)
  go to BASE, as in all three tools for SD1 (supermerger's SDXL mode has an extra VAE slot, which
  the 20-weight list users type has no place for).
- Anything else (the LDM noise-schedule buffers, `model_ema.*`) belongs to no block: the weight
  function returns None and the engine applies its own rule for such keys.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType

__all__ = [
    "BLOCK_LAYOUTS",
    "SD_PRESETS",
    "block_names",
    "block_of",
    "block_weights_for",
    "sd_preset",
]

UNET_PREFIX = "model.diffusion_model."
# Text encoders of SD1/SD2 and SDXL, and the VAE: merged with the BASE weight.
BASE_PREFIXES: tuple[str, ...] = ("cond_stage_model.", "conditioner.embedders.", "first_stage_model.")


def _layout(input_blocks: int, output_blocks: int) -> tuple[str, ...]:
    return (
        ("BASE",)
        + tuple(f"IN{i:02d}" for i in range(input_blocks))
        + ("M00",)
        + tuple(f"OUT{i:02d}" for i in range(output_blocks))
    )


_SD_LAYOUT = _layout(12, 12)
_SDXL_LAYOUT = _layout(9, 9)

# Keyed by `model_detection.ModelFamily` values (a str enum, so its members look up the same).
BLOCK_LAYOUTS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "sd1": _SD_LAYOUT,
    "sd2": _SD_LAYOUT,
    "sdxl": _SDXL_LAYOUT,
    "sdxl-refiner": _SD_LAYOUT,
})

_UNET_BLOCK = re.compile(r"(input_blocks|output_blocks)\.(\d+)\.")
# Global UNet parts that are in no numbered block (see the module docstring for why BASE).
_UNET_GLOBAL_PREFIXES = ("time_embed.", "label_emb.")


def block_names(arch_family: str) -> tuple[str, ...]:
    """The block names of a model family, in weight-list order."""
    layout = BLOCK_LAYOUTS.get(arch_family)
    if layout is None:
        raise ValueError(
            f"block-weighted merging has no block layout for {arch_family!r}; "
            f"known families: {', '.join(BLOCK_LAYOUTS)}"
        )
    return layout


def block_of(arch_family: str, key: str) -> str | None:
    """The block a checkpoint key belongs to, or None for keys outside the networks.

    A UNet key that fits no block of the family (e.g. `input_blocks.11` in an SDXL file) raises:
    it means the family is wrong, and guessing a block would silently merge with the wrong weight.
    """
    layout = block_names(arch_family)
    if key.startswith(BASE_PREFIXES):
        return "BASE"
    if not key.startswith(UNET_PREFIX):
        return None
    rest = key[len(UNET_PREFIX) :]
    if rest.startswith(_UNET_GLOBAL_PREFIXES):
        return "BASE"
    if rest.startswith("out."):
        return layout[-1]
    if rest.startswith("middle_block."):
        return "M00"
    match = _UNET_BLOCK.match(rest)
    if match is not None:
        name = f"{'IN' if match[1] == 'input_blocks' else 'OUT'}{int(match[2]):02d}"
        if name in layout:
            return name
    raise ValueError(f"{key!r} is in no {arch_family} UNet block; blocks are {', '.join(layout)}")


def block_weights_for(arch_family: str, weights: Sequence[float]) -> Callable[[str], float | None]:
    """A key → multiplier function from one weight per block (BASE first, as the tools list them).

    The function returns None for keys in no block (see `block_of`).
    """
    layout = block_names(arch_family)
    if len(weights) != len(layout):
        raise ValueError(
            f"{arch_family} block merging needs {len(layout)} weights, got {len(weights)}; "
            f"in this order: {', '.join(layout)}"
        )
    by_block = dict(zip(layout, (float(w) for w in weights)))

    def weight_of(key: str) -> float | None:
        block = block_of(arch_family, key)
        return None if block is None else by_block[block]

    return weight_of


def _sd_preset(ins: Sequence[float], mid: float, outs: Sequence[float], base: float = 0.0) -> tuple[float, ...]:
    assert len(ins) == 12 and len(outs) == 12
    return tuple(float(w) for w in (base, *ins, mid, *outs))


# Presets of sd-webui-merge-block-weighted-gui (`csv/preset.tsv`, 25 weights without BASE) as
# supermerger lists them (`scripts/mbwpresets.txt`, BASE first, 0 except in ALL_B). SD1/SD2 only:
# supermerger derives its SDXL lists by slicing these, which is no block-for-block mapping.
SD_PRESETS: Mapping[str, tuple[float, ...]] = MappingProxyType({
    "GRAD_V": _sd_preset([(12 - i) / 12 for i in range(12)], 0.0, [(i + 1) / 12 for i in range(12)]),
    "GRAD_A": _sd_preset([i / 12 for i in range(12)], 1.0, [(11 - i) / 12 for i in range(12)]),
    "FLAT_25": _sd_preset([0.25] * 12, 0.25, [0.25] * 12),
    "FLAT_75": _sd_preset([0.75] * 12, 0.75, [0.75] * 12),
    "WRAP08": _sd_preset([1] * 4 + [0] * 8, 0, [0] * 8 + [1] * 4),
    "WRAP12": _sd_preset([1] * 6 + [0] * 6, 0, [0] * 6 + [1] * 6),
    "WRAP14": _sd_preset([1] * 7 + [0] * 5, 0, [0] * 5 + [1] * 7),
    "WRAP16": _sd_preset([1] * 8 + [0] * 4, 0, [0] * 4 + [1] * 8),
    "MID12_50": _sd_preset([0] * 5 + [0.5] * 7, 0.5, [0.5] * 6 + [0] * 6),
    "OUT07": _sd_preset([0] * 12, 0, [0] * 5 + [1] * 7),
    "OUT12": _sd_preset([0] * 12, 0, [1] * 12),
    "OUT12_5": _sd_preset([0] * 12, 0.5, [1] * 12),
    "ALL_A": _sd_preset([0] * 12, 0, [0] * 12),
    "ALL_B": _sd_preset([1] * 12, 1, [1] * 12, base=1.0),
})


def sd_preset(name: str) -> tuple[float, ...]:
    """The 26 weights of an SD1/SD2 preset; an unknown name raises listing the presets."""
    weights = SD_PRESETS.get(name)
    if weights is None:
        raise ValueError(f"unknown block-weight preset {name!r}; presets: {', '.join(SD_PRESETS)}")
    return weights
