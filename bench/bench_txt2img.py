"""Per-step time of Atelier's denoise loop vs a plain diffusers StableDiffusionPipeline call.

    python bench/bench_txt2img.py [--size full] [--px 256] [--steps 4] [--runs 3] [--device cpu]

Same model (Atelier's loaded components, shared by both), same size, steps, CFG 7, batch 1, Euler;
runs alternate, median of --runs. Timed: conditioning + sampling (diffusers: `output_type="latent"`,
so neither side decodes). Per-step = that time / steps. The target is Atelier's overhead ≤ 3%.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
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

    import torch
    from diffusers.models.attention_processor import AttnProcessor2_0

    from gpu_check import build_pipeline, sync
    from modules.library.model_loader import LoadOptions, load_checkpoint
    from modules.generation.engine import GenerationRequest, generate

    dtype = torch.float16 if args.device.startswith("cuda") else torch.float32
    model = load_checkpoint(ensure_checkpoint(args.arch, args.size, seed=0),
                            LoadOptions(device=torch.device(args.device), dtype=dtype, vae_dtype=dtype))
    model.unet.set_attn_processor(AttnProcessor2_0())
    pipe = build_pipeline(model, args.arch)
    pipe.set_progress_bar_config(disable=True)
    request = GenerationRequest(prompt="a photo of a cat", negative_prompt="", steps=args.steps, width=args.px,
                                height=args.px, cfg_scale=7.0, sampler_name="Euler", seed=1)

    def atelier() -> float:
        result = generate(model, request)
        return result.timings["conditioning"] + result.timings["sampling"]

    def diffusers_call() -> float:
        sync(args.device)
        started = time.perf_counter()
        pipe("a photo of a cat", negative_prompt="", num_inference_steps=args.steps, guidance_scale=7.0,
             height=args.px, width=args.px, generator=torch.Generator().manual_seed(1), output_type="latent")
        sync(args.device)
        return time.perf_counter() - started

    atelier(), diffusers_call()  # warm-up
    samples = {"atelier": [], "diffusers": []}
    for _ in range(args.runs):
        samples["atelier"].append(atelier())
        samples["diffusers"].append(diffusers_call())
    a, d = median(samples["atelier"]), median(samples["diffusers"])
    report = {"machine": machine_description(), "arch": args.arch, "size": args.size, "px": args.px,
              "steps": args.steps, "runs": args.runs, "device": args.device, "samples": samples,
              "atelier_per_step_s": a / args.steps, "diffusers_per_step_s": d / args.steps, "overhead": a / d - 1}
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / f"txt2img-{args.arch}-{args.size}-{args.px}-{args.device.replace(':', '')}.json").write_text(
        json.dumps(report, indent=2))
    print(f"{report['machine']}\n{args.arch} {args.size} {args.px}² {args.steps} steps Euler CFG 7, median of {args.runs}:"
          f"\n  Atelier   {a / args.steps * 1000:8.1f} ms/step  {[round(x, 3) for x in samples['atelier']]}"
          f"\n  diffusers {d / args.steps * 1000:8.1f} ms/step  {[round(x, 3) for x in samples['diffusers']]}"
          f"\n  overhead  {report['overhead'] * 100:+.1f}%")


if __name__ == "__main__":
    main()
