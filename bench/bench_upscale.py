"""4× upscale of a 512² image with a full-size RRDBNet (ESRGAN/Real-ESRGAN x4plus layout, random
weights): time and peak RSS (on CUDA, fp16 and peak allocated memory), tiled (A1111's ESRGAN_tile 192, overlap 8) vs untiled (tile 0).

    python bench/bench_upscale.py [--px 512] [--runs 3] [--device cpu] [--tiles 192 0]

Each measurement runs in a fresh process, so its peak RSS is its own; the processes of the peers
alternate (tiled, untiled, tiled, ...). A process loads the model through Atelier's upscaler owner
(`modules.upscaling.service.Upscalers`, the path hires fix and Extras take), upscales once to warm
up (CUDA only) and then once timed. Reported: median time of --runs processes, median peak RSS and,
on CUDA, peak allocated memory. Random weights: the output is noise, the work is real.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT_DIR, machine_description, median, peak_rss_bytes, run_child  # noqa: E402

MODEL_NAME = "RRDBNet-x4-full-bench"


def ensure_model() -> Path:
    """The full-size RRDBNet written once (new BasicSR layout wrapped in params_ema, as Real-ESRGAN's
    RealESRGAN_x4plus.pth) and reused."""
    from modules.upscaling.synthetic import rrdbnet_state_dict, write_state_dict

    path = OUT_DIR / "upscalers" / "ESRGAN" / f"{MODEL_NAME}.pth"
    if not path.exists():
        write_state_dict(path, rrdbnet_state_dict(layout="new", size="full", scale=4, seed=0), wrap="params_ema")
    return path


def child(args: argparse.Namespace) -> None:
    import numpy as np
    import torch
    from PIL import Image

    from modules.upscaling.registry import UpscalerRegistry
    from modules.upscaling.loader import UpscalerDevice
    from modules.upscaling.service import Upscalers

    model_dir = ensure_model().parent
    settings = {"ESRGAN_tile": args.tile, "ESRGAN_tile_overlap": 8, "upscaler_models_limit": 1,
                "upscale_max_pixels": 2 ** 31 - 1, "realesrgan_enabled_models": (), "dat_enabled_models": ()}
    registry = UpscalerRegistry(lambda family: [model_dir] if family == "ESRGAN" else [],
                                lambda: settings)
    cuda = args.device.startswith("cuda")
    upscalers = Upscalers(registry, lambda: settings, device=UpscalerDevice(args.device, half=cuda))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (args.px, args.px, 3), dtype=np.uint8))
    if cuda:
        upscalers.upscale(image, MODEL_NAME, 4)  # warm-up: cuDNN picks its kernels
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    result = upscalers.upscale(image, MODEL_NAME, 4)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    print(json.dumps({"tile": args.tile, "seconds": seconds, "size": list(result.size),
                      "peak_rss": peak_rss_bytes(),
                      "cuda_peak": torch.cuda.max_memory_allocated() if cuda else None}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--px", type=int, default=512)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tiles", type=int, nargs="+", default=[192, 0])
    parser.add_argument("--tile", type=int, help=argparse.SUPPRESS)  # a child process's one measurement
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    ensure_model()
    samples: dict[int, list[dict]] = {tile: [] for tile in args.tiles}
    for run in range(args.runs):
        for tile in args.tiles:
            sample = run_child(Path(__file__), ["--child", "--tile", str(tile), "--px", str(args.px),
                                                "--device", args.device])
            samples[tile].append(sample)
            print(f"run {run + 1}: tile {tile}: {sample['seconds']:.2f} s, peak RSS "
                  f"{sample['peak_rss'] / 2 ** 30:.2f} GiB", flush=True)
    rows = []
    for tile, runs in samples.items():
        row = {"tile": tile, "overlap": 8 if tile else None, "seconds": median([r["seconds"] for r in runs]),
               "peak_rss_gib": median([r["peak_rss"] for r in runs]) / 2 ** 30,
               "output": runs[0]["size"], "runs": len(runs)}
        if runs[0]["cuda_peak"] is not None:
            row["cuda_peak_gib"] = median([r["cuda_peak"] for r in runs]) / 2 ** 30
        rows.append(row)
    report = {"machine": machine_description(), "device": args.device, "px": args.px, "model": "RRDBNet 23 blocks, "
              "64 features, 4x (random weights)", "rows": rows}
    print(json.dumps(report, indent=2))
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / f"upscale-{args.device.replace(':', '')}.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
