"""One prepared GPU check: checkpoint load time (Atelier vs diffusers' from_single_file) and fp16
generation speed with SDPA vs xformers, on full-size random-weights SD1.5 and SDXL checkpoints.

    python bench/gpu_check.py --out DIR [--archs sd1 sdxl] [--runs 3] [--steps 20]

Random weights draw noise, but every layer runs at its real size, so speed and memory are real.
Generation uses diffusers' pipelines assembled from the components Atelier loaded (Atelier's own
denoise loop arrives with the txt2img engine); the point here is the loaded model on the device.
Runs of peers alternate; medians are reported.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT_DIR, PIPELINES, ensure_checkpoint, machine_description, median, write_diffusers_config_folder  # noqa: E402

RESOLUTION = {"sd1": 512, "sd2": 768, "sdxl": 1024}


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def free(device: str) -> None:
    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def time_loads(path: Path, arch: str, device: str, dtype, runs: int) -> dict:
    import diffusers
    import torch

    from modules.library.model_loader import LoadOptions, load_checkpoint

    config = write_diffusers_config_folder(path, OUT_DIR / f"diffusers-config-{path.stem}")
    pipeline_cls = getattr(diffusers, PIPELINES[arch])
    extra = {"safety_checker": None} if arch != "sdxl" else {}
    times = {"atelier": [], "diffusers": []}
    for _ in range(runs):
        started = time.perf_counter()
        model = load_checkpoint(path, LoadOptions(device=torch.device(device), dtype=dtype, vae_dtype=dtype))
        sync(device)
        times["atelier"].append(time.perf_counter() - started)
        summary = model.load_summary
        del model
        free(device)
        started = time.perf_counter()
        pipe = pipeline_cls.from_single_file(str(path), config=str(config), local_files_only=True,
                                             torch_dtype=dtype, **extra)
        pipe.to(device)
        sync(device)
        times["diffusers"].append(time.perf_counter() - started)
        del pipe
        free(device)
    return {"atelier_seconds": median(times["atelier"]), "diffusers_seconds": median(times["diffusers"]),
            "runs": times, "atelier_summary": summary}


def build_pipeline(model, arch: str):
    import diffusers

    scheduler = diffusers.EulerDiscreteScheduler.from_config(model.config.scheduler)
    if arch == "sdxl":
        return diffusers.StableDiffusionXLPipeline(
            vae=model.vae, text_encoder=model.text_encoders[0], text_encoder_2=model.text_encoders[1],
            tokenizer=model.tokenizers[0], tokenizer_2=model.tokenizers[1], unet=model.unet, scheduler=scheduler)
    return diffusers.StableDiffusionPipeline(
        vae=model.vae, text_encoder=model.text_encoders[0], tokenizer=model.tokenizers[0], unet=model.unet,
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def time_generation(path: Path, arch: str, device: str, dtype, runs: int, steps: int) -> dict:
    import torch
    from diffusers.models.attention_processor import AttnProcessor2_0

    from modules.library.model_loader import LoadOptions, load_checkpoint

    model = load_checkpoint(path, LoadOptions(device=torch.device(device), dtype=dtype, vae_dtype=dtype))
    pipe = build_pipeline(model, arch)
    pipe.set_progress_bar_config(disable=True)
    size = RESOLUTION[arch] if device.startswith("cuda") else 64
    backends = ["sdpa"]
    if device.startswith("cuda"):
        try:
            import xformers.ops

            q = torch.zeros(1, 16, 8, 64, device=device, dtype=torch.float16)
            xformers.ops.memory_efficient_attention(q, q, q)  # a wheel built for another torch fails here
            backends.append("xformers")
        except Exception as e:  # reported, not fatal: xformers is optional
            print(f"xformers unavailable: {type(e).__name__}: {str(e).splitlines()[0]}", flush=True)

    def use(backend: str) -> None:
        if backend == "xformers":
            pipe.enable_xformers_memory_efficient_attention()
        else:
            pipe.unet.set_attn_processor(AttnProcessor2_0())
            pipe.vae.set_attn_processor(AttnProcessor2_0())

    def one(backend: str) -> tuple[float, float, int]:
        use(backend)
        generator = torch.Generator(device="cpu").manual_seed(0)
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        sync(device)
        started = time.perf_counter()
        latents = pipe("a photo of a cat", num_inference_steps=steps, guidance_scale=7.0, height=size, width=size,
                       generator=generator, output_type="latent").images
        sync(device)
        denoise = time.perf_counter() - started
        started = time.perf_counter()
        with torch.no_grad():
            pipe.vae.decode(latents / pipe.vae.config.scaling_factor)
        sync(device)
        decode = time.perf_counter() - started
        peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else 0
        return denoise, decode, peak

    results: dict[str, dict] = {}
    for backend in backends:  # warm-up: kernels, cuDNN/cuBLAS autotuning
        one(backend)
    samples = {b: [] for b in backends}
    for _ in range(runs):
        for backend in backends:
            samples[backend].append(one(backend))
    for backend, values in samples.items():
        denoise = median([v[0] for v in values])
        results[backend] = {"it_per_s": steps / denoise, "denoise_seconds": denoise,
                            "decode_seconds": median([v[1] for v in values]),
                            "peak_vram_bytes": max(v[2] for v in values), "samples": values}
    results["resolution"] = size
    results["weights_bytes"] = model.weights_nbytes()
    return results  # the pipeline and model go with this frame; main() frees the device memory


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

    dtype = torch.float16 if args.device.startswith("cuda") else torch.float32
    report = {"machine": machine_description(), "steps": args.steps, "runs": args.runs}
    print(report["machine"], flush=True)
    for arch in args.archs:
        path = ensure_checkpoint(arch, args.size, seed=0)
        loads = time_loads(path, arch, args.device, dtype, args.runs)
        print(f"{arch}: load atelier {loads['atelier_seconds']:.2f}s, diffusers {loads['diffusers_seconds']:.2f}s "
              f"({loads['atelier_summary']})", flush=True)
        gen = time_generation(path, arch, args.device, dtype, args.runs, args.steps)
        free(args.device)
        report[arch] = {"load": loads, "generation": gen}
        for backend in ("sdpa", "xformers"):
            if backend in gen:
                g = gen[backend]
                print(f"{arch} {gen['resolution']}² {args.steps} steps {backend:8s}: {g['it_per_s']:.2f} it/s, "
                      f"denoise {g['denoise_seconds']:.2f}s, VAE decode {g['decode_seconds']:.3f}s, "
                      f"peak VRAM {g['peak_vram_bytes'] / 2**30:.2f} GiB", flush=True)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
        path.unlink()  # full-size files are regenerated on demand, never kept


if __name__ == "__main__":
    main()
