"""Hires fix with a model upscaler vs a latent upscaler vs Lanczos, on the same loaded checkpoint.

    python bench/bench_hires.py [--arch sd1] [--size full] [--px 512] [--scale 2] [--steps 20]
                                [--hr-steps 10] [--runs 3] [--device cuda]

One image per request: Euler, CFG 7, denoising 0.5, first pass px², hires pass px·scale². The model
upscaler is a full-size RRDBNet 4× (random weights, the layout of RealESRGAN_x4plus.pth) with
A1111's tiles (ESRGAN_tile 192, overlap 8). Timed: the whole `generate` call (first pass, VAE
decode and encode where the path has them, the upscale, the hires pass, the final decode). The
three upscalers alternate inside each run; median of --runs after a warm-up of each. Reported with
the engine's own timings split, and on CUDA the peak allocated memory per upscaler.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_upscale import MODEL_NAME, ensure_model  # noqa: E402
from common import OUT_DIR, ensure_checkpoint, machine_description, median  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="sd1", choices=("sd1", "sdxl"))
    parser.add_argument("--size", default="full", choices=("tiny", "full"))
    parser.add_argument("--px", type=int, default=512)
    parser.add_argument("--scale", type=float, default=2.0)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--hr-steps", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()

    import torch

    from modules.generation.engine import GenerationRequest, GenerationResources, generate
    from modules.library.devices import memory_stats, reset_peak_memory
    from modules.library.model_loader import LoadOptions, load_checkpoint
    from modules.upscaling.loader import UpscalerDevice
    from modules.upscaling.registry import UpscalerRegistry
    from modules.upscaling.service import Upscalers

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    dtype = torch.float16 if cuda else torch.float32
    model = load_checkpoint(ensure_checkpoint(args.arch, args.size, seed=0),
                            LoadOptions(device=device, dtype=dtype, vae_dtype=dtype))
    model_dir = ensure_model().parent
    settings = {"ESRGAN_tile": 192, "ESRGAN_tile_overlap": 8, "upscaler_models_limit": 1,
                "upscale_max_pixels": 8192 * 8192, "realesrgan_enabled_models": (), "dat_enabled_models": ()}
    registry = UpscalerRegistry(lambda family: [model_dir] if family == "ESRGAN" else [], lambda: settings)
    upscalers = Upscalers(registry, lambda: settings, device=UpscalerDevice(str(device), half=cuda))
    resources = GenerationResources(upscalers=upscalers)

    names = ("Latent", "Lanczos", MODEL_NAME)
    requests = {name: GenerationRequest(prompt="a photo of a cat", negative_prompt="", steps=args.steps,
                                        width=args.px, height=args.px, cfg_scale=7.0, sampler_name="Euler", seed=1,
                                        enable_hr=True, hr_scale=args.scale, hr_upscaler=name,
                                        hr_second_pass_steps=args.hr_steps, denoising_strength=0.5)
                for name in names}
    peaks: dict[str, int] = {}

    def timed(name: str) -> tuple[float, dict]:
        reset_peak_memory(device)
        started = time.perf_counter()
        result = generate(model, requests[name], resources=resources)
        if cuda:
            torch.cuda.synchronize(device)
            peaks[name] = max(peaks.get(name, 0), memory_stats(device).peak_allocated or 0)
        return time.perf_counter() - started, dict(result.timings)

    for name in names:  # warm-up (cuDNN, the upscaler model's first load)
        timed(name)
    samples: dict[str, list[float]] = {name: [] for name in names}
    timings: dict[str, list[dict]] = {name: [] for name in names}
    for _ in range(args.runs):
        for name in names:
            seconds, parts = timed(name)
            samples[name].append(seconds)
            timings[name].append(parts)
    report = {"machine": machine_description(), "arch": args.arch, "size": args.size, "px": args.px,
              "scale": args.scale, "steps": args.steps, "hr_steps": args.hr_steps, "runs": args.runs,
              "device": args.device, "samples": samples, "timings": timings,
              "median_s": {name: median(values) for name, values in samples.items()},
              "peak_vram_gib": {name: value / 2 ** 30 for name, value in peaks.items()}}
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / f"hires-{args.arch}-{args.px}-{args.device.replace(':', '')}.json").write_text(
        json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
