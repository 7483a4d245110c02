"""img2img and inpainting per-step time vs txt2img at the same size, on the same loaded model.

    python bench/bench_img2img.py [--size full] [--px 256] [--steps 4] [--runs 3] [--device cpu]

Euler, CFG 7, batch 1. img2img runs at denoising strength 1.0, so it samples as many steps as
txt2img (int(0.999·steps) + 1 = steps); inpainting adds a blurred mask over the left half (Whole
picture, masked content "fill"). Timed per run: init preparation (resize, mask, fill, VAE encode)
+ conditioning + sampling; the VAE decode, the same for all three, is not counted. Per step =
that time / steps. The three kinds alternate inside each run; median of --runs after a warm-up.
The issue's target: img2img's overhead (encoding and masking) ≤ 5% of txt2img.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT_DIR, ensure_checkpoint, machine_description, median  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="full", choices=("tiny", "full"))
    parser.add_argument("--arch", default="sd1", choices=("sd1", "sdxl"))
    parser.add_argument("--px", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    import numpy as np
    import torch
    from PIL import Image

    from modules.generation.engine import GenerationRequest, generate
    from modules.generation.requests import Img2ImgRequest
    from modules.library.model_loader import LoadOptions, load_checkpoint

    dtype = torch.float16 if args.device.startswith("cuda") else torch.float32
    model = load_checkpoint(ensure_checkpoint(args.arch, args.size, seed=0),
                            LoadOptions(device=torch.device(args.device), dtype=dtype, vae_dtype=dtype))
    rng = np.random.default_rng(0)
    init = Image.fromarray(rng.integers(0, 256, (args.px, args.px, 3), dtype=np.uint8))
    mask = np.zeros((args.px, args.px), dtype=np.uint8)
    mask[:, : args.px // 2] = 255
    common = dict(prompt="a photo of a cat", negative_prompt="", steps=args.steps, width=args.px, height=args.px,
                  cfg_scale=7.0, sampler_name="Euler", seed=1)
    requests = {
        "txt2img": GenerationRequest(**common),
        "img2img": Img2ImgRequest(**common, init_images=[init], denoising_strength=1.0),
        "inpaint": Img2ImgRequest(**common, init_images=[init], denoising_strength=1.0,
                                  mask=Image.fromarray(mask, mode="L"), inpaint_full_res=False, inpainting_fill=0),
    }

    from modules.library.devices import memory_stats, reset_peak_memory

    device = torch.device(args.device)
    peaks: dict[str, int] = {}

    def timed(request) -> tuple[float, float]:
        reset_peak_memory(device)
        timings = generate(model, request).timings
        if device.type == "cuda":  # the engine's timings end where its tensors do; the peak is per kind
            torch.cuda.synchronize(device)
            kind = next(name for name, value in requests.items() if value is request)
            peaks[kind] = max(peaks.get(kind, 0), memory_stats(device).peak_allocated or 0)
        prepare = timings.get("encode", 0.0)
        return prepare + timings["conditioning"] + timings["sampling"], prepare

    for request in requests.values():  # warm-up
        timed(request)
    samples: dict[str, list[float]] = {name: [] for name in requests}
    prepare: dict[str, list[float]] = {name: [] for name in requests}
    for _ in range(args.runs):
        for name, request in requests.items():
            total, encode = timed(request)
            samples[name].append(total)
            prepare[name].append(encode)
    medians = {name: median(values) for name, values in samples.items()}
    base = medians["txt2img"]
    report = {"machine": machine_description(), "arch": args.arch, "size": args.size, "px": args.px,
              "steps": args.steps, "runs": args.runs, "device": args.device, "samples": samples,
              "prepare": prepare, "peak_vram_bytes": peaks,
              "per_step_s": {name: value / args.steps for name, value in medians.items()},
              "overhead_vs_txt2img": {name: value / base - 1 for name, value in medians.items()}}
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / f"img2img-{args.arch}-{args.size}-{args.px}-{args.device.replace(':', '')}.json").write_text(
        json.dumps(report, indent=2))
    print(f"{report['machine']}\n{args.arch} {args.size} {args.px}² {args.steps} steps Euler CFG 7, median of "
          f"{args.runs}:")
    for name in requests:
        print(f"  {name:8s} {medians[name] / args.steps * 1000:8.1f} ms/step  "
              f"{[round(x, 3) for x in samples[name]]}  prepare {[round(x, 3) for x in prepare[name]]}  "
              f"{report['overhead_vs_txt2img'][name] * 100:+.1f}%"
              + (f"  peak VRAM {peaks[name] / 2**30:.2f} GiB" if name in peaks else ""))


if __name__ == "__main__":
    main()
