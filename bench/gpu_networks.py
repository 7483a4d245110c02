"""GPU check for the prompt features: conditioning time, and what LoRA and hypernetworks cost a job.

    python bench/gpu_networks.py --out DIR [--runs 3] [--steps 20]

On a full-size random-weights SD1.5 checkpoint in fp16: the 300-token conditioning benchmark
(cold/cached), LoRA (rank 32 on every attention/projection layer and the text encoder) attach +
detach time, and denoising speed with no network, with the LoRA unfused and fused, and with a
hypernetwork (widths 768/320/640/1280) attached. Medians of --runs, peers alternating.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import OUT_DIR, ensure_checkpoint, machine_description, median  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="full", choices=("tiny", "full"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args()

    import torch
    from diffusers.models.attention_processor import AttnProcessor2_0

    from bench_conditioning import build_prompt
    from gpu_check import build_pipeline, sync
    from modules.generation.conditioning import ConditioningCache, TextConditioner, get_multicond_learned_conditioning
    from modules.networks.hypernetwork_files import HypernetworkRegistry
    from modules.networks.lora import LoraRegistry, LoraRequest, apply_loras
    from modules.library.model_loader import LoadOptions, load_checkpoint
    from modules.networks.activation import activate_extra_networks
    from tests.test_hypernetworks import relu_hypernetwork_file
    from tests.test_lora import kohya_lora, write_lora

    cuda = args.device.startswith("cuda")
    dtype = torch.float16 if cuda else torch.float32
    size = 512 if cuda else 64
    model = load_checkpoint(ensure_checkpoint("sd1", args.size, seed=0),
                            LoadOptions(device=torch.device(args.device), dtype=dtype, vae_dtype=dtype))
    report: dict = {"machine": machine_description(), "steps": args.steps, "runs": args.runs}

    def timed(fn) -> float:
        sync(args.device)
        started = time.perf_counter()
        fn()
        sync(args.device)
        return time.perf_counter() - started

    # Conditioning: the 300-token prompt with 4 emphasis groups and 2 embeddings.
    from types import SimpleNamespace

    width = model.text_encoders[0].config.hidden_size
    embeddings = {n: SimpleNamespace(name=n, vectors={"default": torch.randn(k, width) * 0.01}, vector_count=k)
                  for n, k in (("embA", 2), ("embB", 3))}
    conditioner = TextConditioner(model, embeddings)
    prompt = build_prompt(model.tokenizers[0])
    with torch.inference_mode():
        get_multicond_learned_conditioning(conditioner, [prompt], 20)
        cold, cached = [], []
        for _ in range(5):
            cache = ConditioningCache()
            cold.append(timed(lambda: get_multicond_learned_conditioning(conditioner, [prompt], 20, cache=cache)))
            cached.append(timed(lambda: get_multicond_learned_conditioning(conditioner, [prompt], 20, cache=cache)))
    report["conditioning"] = {"cold_ms": median(cold) * 1e3, "cached_ms": median(cached) * 1e3}
    print(f"conditioning 300 tokens: cold {median(cold) * 1e3:.1f} ms, cached {median(cached) * 1e3:.3f} ms", flush=True)

    # Networks on disk.
    folder = OUT_DIR / "networks"
    (folder / "Lora").mkdir(parents=True, exist_ok=True)
    (folder / "hypernetworks").mkdir(exist_ok=True)
    write_lora(folder / "Lora", "rank32", {k: v.half() if v.ndim else v for k, v in kohya_lora(model, rank=32).items()})
    relu_hypernetwork_file(folder / "hypernetworks" / "hn.pt", dims=[768, 320, 640, 1280] if args.size == "full"
                           else [model.unet.config.cross_attention_dim])
    loras = LoraRegistry([folder / "Lora"])
    loras.refresh()
    hypernetworks = HypernetworkRegistry(folder / "hypernetworks")
    hypernetworks.refresh()

    request = [LoraRequest("rank32", 1.0, 1.0)]
    attach = []
    for _ in range(args.runs + 1):
        sync(args.device)
        started = time.perf_counter()
        with apply_loras(model, request, loras):
            sync(args.device)
        attach.append(time.perf_counter() - started)
    report["lora_attach_detach_s"] = median(attach[1:])  # the first includes reading + converting the file
    report["lora_first_use_s"] = attach[0]
    print(f"LoRA rank 32 attach+detach: {median(attach[1:]):.3f} s (first use {attach[0]:.3f} s)", flush=True)

    pipe = build_pipeline(model, "sd1")
    pipe.set_progress_bar_config(disable=True)
    pipe.unet.set_attn_processor(AttnProcessor2_0())

    def denoise() -> float:
        generator = torch.Generator(device="cpu").manual_seed(0)
        return timed(lambda: pipe("a photo of a cat", num_inference_steps=args.steps, guidance_scale=7.0,
                                  height=size, width=size, generator=generator, output_type="latent"))

    from modules.networks.syntax import parse_prompts

    variants = {
        "base": lambda: None,
        "lora unfused": lambda: apply_loras(model, request, loras),
        "lora fused": lambda: apply_loras(model, request, loras, fuse=True),
        "hypernetwork": lambda: activate_extra_networks(model, parse_prompts(["<hypernet:hn:1>"])[1], hypernetworks),
    }
    samples = {name: [] for name in variants}
    for round_ in range(args.runs + 1):  # round 0 warms up every variant
        for name, make in variants.items():
            context = make()
            if context is None:
                seconds = denoise()
            else:
                with context:
                    seconds = denoise()
            if round_:
                samples[name].append(seconds)
    report["denoise"] = {name: {"it_per_s": args.steps / median(values), "seconds": median(values), "samples": values}
                         for name, values in samples.items()}
    for name, values in report["denoise"].items():
        print(f"SD1.5 {size}² {args.steps} steps, {name:13s}: {values['it_per_s']:.2f} it/s", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_networks.json").write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
