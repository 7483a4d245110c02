"""Checks the "NV" noise (modules/rng_philox.py) against real CUDA `torch.randn`.

    python bench/check_philox_cuda.py

Prints, per seed and shape, the max abs difference between `PhiloxGenerator(seed).randn(shape)`
and `torch.randn(shape, generator=torch.Generator("cuda").manual_seed(seed), device="cuda")`, for
the first and the second draw of the same generator. Expected: a few 1e-6 (at most 2.5e-5 in
the tails) (float32
rounding: CUDA's Box–Muller is float32, ours float64) up to the GPU's thread capacity. The last
shape is larger than that capacity, where CUDA threads make several elements each; neither A1111
nor Atelier imitates that, so a large difference there is expected, not a failure.
Exit status 1 when a shape within the capacity differs by more than 1e-4.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from modules.generation.rng_philox import PhiloxGenerator

SEEDS = [0, 1, 12345, 4294967293, 4294967293 + 31337]  # the last one has a non-zero high key word
SHAPES = [(3, 4), (4, 64, 64), (4, 96, 64), (4, 128, 128), (16, 128, 128)]
# Absolute: CUDA's Box–Muller runs in float32, ours in float64, so the tails (|x| ≈ 5) differ by a
# few float32 steps. Measured on an H100: at most 2.5e-5, typically 2e-6 (docs/BENCHMARKS.md).
TOLERANCE = 1e-4


def thread_capacity() -> int:
    props = torch.cuda.get_device_properties(0)
    threads_per_sm = getattr(props, "max_threads_per_multi_processor", 2048)
    return props.multi_processor_count * threads_per_sm


def main() -> int:
    if not torch.cuda.is_available():
        print("CUDA is not available; nothing to compare.")
        return 2
    capacity = thread_capacity()
    print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, thread capacity {capacity} elements")
    shapes = SHAPES + [(4, 1 + capacity // 4)]
    failed = False
    for shape in shapes:
        within = math.prod(shape) <= capacity
        for seed in SEEDS:
            cuda_generator = torch.Generator("cuda").manual_seed(seed)
            nv_generator = PhiloxGenerator(seed)
            diffs = []
            for _draw in range(2):
                expected = torch.randn(shape, generator=cuda_generator, device="cuda").cpu().numpy()
                diffs.append(float(np.abs(nv_generator.randn(shape) - expected).max()))
            bad = within and max(diffs) > TOLERANCE
            failed |= bad
            note = "FAIL" if bad else ("ok" if within else "beyond capacity: difference expected")
            print(f"shape={shape!s:18} seed={seed:<11} first={diffs[0]:.3g} second={diffs[1]:.3g}  {note}")
    print("FAILED" if failed else "all shapes within capacity match")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
