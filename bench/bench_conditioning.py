"""Conditioning time for a long A1111 prompt on SD1.5-size CLIP (random weights).

    python bench/bench_conditioning.py [--runs 5] [--device cpu]

A ~300-token prompt with 4 emphasis groups and 2 textual-inversion embeddings (2 and 3 vectors),
encoded through `get_multicond_learned_conditioning`: "cold" with an empty cache (tokenize, chunk,
encode every chunk), "cached" when the same prompt comes again in the job (a cache hit). Also the
chunking alone. Median of --runs.
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

WORDS = ("masterpiece best quality detailed portrait of a woman standing in a field of flowers at sunset "
         "soft light film grain bokeh depth of field wearing a red dress and a straw hat looking at the "
         "camera with a gentle smile wind in her hair mountains in the background clouds").split()


def build_prompt(tokenizer, target_tokens: int = 300) -> str:
    groups = ["(masterpiece:1.2)", "((detailed eyes))", "[blurry background]", "(film grain:0.8)"]
    parts = groups[:2] + ["embA", "embB"] + groups[2:]
    words = []
    while len(tokenizer(" ".join(parts + words), add_special_tokens=False)["input_ids"]) < target_tokens:
        words.append(WORDS[len(words) % len(WORDS)] + ("," if len(words) % 7 == 6 else ""))
    return " ".join(parts[:3] + words[: len(words) // 2] + parts[3:] + words[len(words) // 2:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    import torch

    from modules.generation.conditioning import ConditioningCache, TextConditioner, get_multicond_learned_conditioning
    from modules.library.model_loader import LoadOptions, load_checkpoint

    torch.manual_seed(0)
    path = ensure_checkpoint("sd1", "full", seed=0)
    model = load_checkpoint(path, LoadOptions(device=torch.device(args.device)))
    width = model.text_encoders[0].config.hidden_size
    embeddings = {name: SimpleNamespace(name=name, vectors={"default": torch.randn(n, width) * 0.01}, vector_count=n)
                  for name, n in (("embA", 2), ("embB", 3))}
    conditioner = TextConditioner(model, embeddings)
    prompt = build_prompt(model.tokenizers[0])
    chunks, tokens = conditioner.tokenizer.chunks(prompt)

    def timed(fn):
        started = time.perf_counter()
        fn()
        return time.perf_counter() - started

    chunking, cold, cached = [], [], []
    with torch.inference_mode():
        get_multicond_learned_conditioning(conditioner, [prompt], steps=20)  # warm-up (first-call costs)
        for _ in range(args.runs):
            chunking.append(timed(lambda: conditioner.tokenizer.chunks(prompt)))
            cache = ConditioningCache()
            cold.append(timed(lambda: get_multicond_learned_conditioning(conditioner, [prompt], 20, cache=cache)))
            cached.append(timed(lambda: get_multicond_learned_conditioning(conditioner, [prompt], 20, cache=cache)))
    report = {"machine": machine_description(), "tokens": tokens, "chunks": len(chunks), "runs": args.runs,
              "chunking_ms": median(chunking) * 1e3, "cold_ms": median(cold) * 1e3, "cached_ms": median(cached) * 1e3,
              "samples": {"chunking": chunking, "cold": cold, "cached": cached}}
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / f"conditioning-{args.device}.json").write_text(json.dumps(report, indent=2))
    print(f"{report['machine']}\n{tokens}-token prompt, {len(chunks)} chunks, 4 emphasis groups, 2 embeddings; "
          f"median of {args.runs}:\n  chunking {report['chunking_ms']:.2f} ms\n  cold     {report['cold_ms']:.1f} ms"
          f"\n  cached   {report['cached_ms']:.3f} ms")


if __name__ == "__main__":
    main()
