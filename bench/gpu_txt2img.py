"""GPU check for the txt2img engine: Atelier's loop vs a diffusers pipeline call, and offload modes.

    python bench/gpu_txt2img.py --out DIR [--runs 3] [--steps 20] [--archs sd1 sdxl]

Full-size random-weights checkpoints in fp16. Per arch: Atelier's `generate` (Euler and DPM++ 2M)
and diffusers' pipeline (Euler) on the same loaded components, conditioning + sampling timed (no
decode), alternating, median of --runs; then SD1.5 under --medvram and --lowvram: time and peak VRAM.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT_DIR, ensure_checkpoint, machine_description, median  # noqa: E402

PX = {"sd1": 512, "sdxl": 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", nargs="*", default=["sd1", "sdxl"])
    parser.add_argument("--size", default="full", choices=("tiny", "full"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args()

    import torch
    from diffusers.models.attention_processor import AttnProcessor2_0

    from gpu_check import build_pipeline, sync
    from modules.library.devices import memory_stats, reset_peak_memory
    from modules.library.model_loader import LoadOptions, load_checkpoint
    from modules.library.model_runtime import ModelRuntime
    from modules.generation.engine import GenerationRequest, generate

    device = torch.device(args.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    report: dict = {"machine": machine_description(), "steps": args.steps, "runs": args.runs}
    print(report["machine"], flush=True)
    for arch in args.archs:
        px = PX[arch] if device.type == "cuda" else 64
        path = ensure_checkpoint(arch, args.size, seed=0)
        model = load_checkpoint(path, LoadOptions(device=device, dtype=dtype, vae_dtype=dtype))
        model.unet.set_attn_processor(AttnProcessor2_0())
        pipe = build_pipeline(model, arch)
        pipe.set_progress_bar_config(disable=True)

        def atelier(sampler: str) -> float:
            request = GenerationRequest(prompt="a photo of a cat", steps=args.steps, width=px, height=px,
                                        sampler_name=sampler, seed=1)
            result = generate(model, request)
            return result.timings["conditioning"] + result.timings["sampling"]

        def diffusers_call() -> float:
            sync(args.device)
            started = time.perf_counter()
            pipe("a photo of a cat", negative_prompt="", num_inference_steps=args.steps, guidance_scale=7.0,
                 height=px, width=px, generator=torch.Generator().manual_seed(1), output_type="latent")
            sync(args.device)
            return time.perf_counter() - started

        atelier("Euler"), atelier("DPM++ 2M"), diffusers_call()
        samples = {"atelier Euler": [], "atelier DPM++ 2M": [], "diffusers Euler": []}
        for _ in range(args.runs):
            samples["atelier Euler"].append(atelier("Euler"))
            samples["atelier DPM++ 2M"].append(atelier("DPM++ 2M"))
            samples["diffusers Euler"].append(diffusers_call())
        reset_peak_memory(device)
        atelier("Euler")
        peak = memory_stats(device)
        results = {name: {"seconds": median(v), "it_per_s": args.steps / median(v), "samples": v}
                   for name, v in samples.items()}
        overhead = results["atelier Euler"]["seconds"] / results["diffusers Euler"]["seconds"] - 1
        report[arch] = {"px": px, "results": results, "overhead": overhead, "memory": str(peak.summary())}
        for name, r in results.items():
            print(f"{arch} {px}² {args.steps} steps {name:17s}: {r['it_per_s']:6.2f} it/s ({r['seconds']:.3f} s)",
                  flush=True)
        print(f"{arch}: Atelier vs diffusers (Euler) overhead {overhead * 100:+.1f}%; {peak.summary()}", flush=True)

        if arch == "sd1" and device.type == "cuda":
            del pipe
            model.to(torch.device("cpu"))
            torch.cuda.empty_cache()
            offload = {}
            for flag in ("medvram", "lowvram"):
                flags = SimpleNamespace(medvram=flag == "medvram", lowvram=flag == "lowvram", medvram_sdxl=False,
                                        xformers=False, force_enable_xformers=False, opt_sdp_attention=False,
                                        opt_sdp_no_mem_attention=False, disable_opt_split_attention=False)
                runtime = ModelRuntime(flags, device)
                runtime.attach(model)
                reset_peak_memory(device)
                seconds = atelier("Euler")
                stats = memory_stats(device)
                runtime.detach(model)
                torch.cuda.empty_cache()
                offload[flag] = {"seconds": seconds, "memory": stats.summary(),
                                 "peak_allocated_bytes": torch.cuda.max_memory_allocated()}
                print(f"sd1 --{flag}: {seconds:.2f} s for {args.steps} steps; {stats.summary()}", flush=True)
            report["offload"] = offload
        path.unlink()
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_txt2img.json").write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
