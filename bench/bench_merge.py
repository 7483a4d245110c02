"""Checkpoint merge benchmark: Atelier's streaming merger vs sd-mecha vs an A1111-style whole-dict
merge, and the I/O floor, side by side.

    python bench/bench_merge.py [--arch sd1] [--runs 3] [--methods ws ad]

Inputs: full-size random fp16 checkpoints with the exact key sets of real files (two for Weighted
sum, three for Add difference). Each measurement runs in a fresh process (wall time and its own peak
RSS); runs of the peers alternate; medians. sd-mecha must be installed (`pip install sd-mecha==1.1.8`;
it keeps the torch that is there). The A1111-style merge is a short re-statement of A1111's approach
(load every input whole with safetensors, merge key by key in place, save), not A1111's code.
The I/O floor reads every input once and writes a file of the output's size. The A1111-style run
ends with the sha256 of the new file, as A1111's merger does (Atelier hashes while writing).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT_DIR, ensure_checkpoint, machine_description, median, peak_rss_bytes, run_child  # noqa: E402

SCRIPT = Path(__file__).resolve()
REPO = SCRIPT.parent.parent


def child(kind: str, method: str, inputs: list[str], output: str) -> dict:
    started = time.perf_counter()
    if kind == "atelier":
        from modules.library.checkpoints import CheckpointRegistry
        from modules.library.hashes import HashCache
        from modules.merging.merger import MergeRequest, merge_checkpoints

        folder = Path(inputs[0]).parent
        registry = CheckpointRegistry([folder], HashCache(OUT_DIR / "merge-bench-cache.json"))
        registry.refresh()
        for path in inputs:  # hashes are cached by the first run, as in normal use
            registry.ensure_hash(registry.find(Path(path).name))
        started = time.perf_counter()
        names = [Path(p).name for p in inputs]
        request = MergeRequest(primary_model_name=names[0], secondary_model_name=names[1],
                               tertiary_model_name=names[2] if len(names) > 2 else None,
                               interpolation_method="Weighted sum" if method == "ws" else "Add difference",
                               multiplier=0.3, custom_name=Path(output).stem, overwrite=True)
        merge_checkpoints(request, registry, Path(output).parent)
    elif kind == "a1111":
        import safetensors.torch

        theta = [safetensors.torch.load_file(p) for p in inputs]
        if method == "ad":
            for key in theta[1]:
                if "model" in key and key in theta[2]:
                    theta[1][key] = theta[1][key] - theta[2][key]
            del theta[2]
        for key in theta[0]:
            if "model" in key and key in theta[1] and theta[0][key].is_floating_point() \
                    and not key.endswith("position_ids"):
                a, b = theta[0][key], theta[1][key]
                theta[0][key] = a * 0.7 + b * 0.3 if method == "ws" else a + b * 0.3
        safetensors.torch.save_file(theta[0], output)
        # A1111 then lists the new file and computes its sha256 (list_models + calculate_shorthash,
        # A1111.md §6), reading it back.
        import hashlib

        digest = hashlib.sha256()
        with open(output, "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    elif kind == "sd-mecha":
        import sd_mecha

        models = [sd_mecha.model(p) for p in inputs]
        recipe = (sd_mecha.weighted_sum(models[0], models[1], alpha=0.3) if method == "ws"
                  else sd_mecha.add_difference(models[0], models[1], models[2], alpha=0.3))
        sd_mecha.merge(recipe, output=output, output_dtype=__import__("torch").float16)
    elif kind == "io-floor":
        # One reused buffer each way (fresh 16 MiB `bytes` per read cost page faults of their own),
        # and an fsync at the end as every merger that renames a finished file should do.
        buffer = bytearray(1 << 24)
        view = memoryview(buffer)
        for path in inputs:
            with open(path, "rb", buffering=0) as f:
                while f.readinto(view):
                    pass
        size = os.path.getsize(inputs[0])
        with open(output, "wb", buffering=0) as f:
            for _ in range(size // len(buffer)):
                f.write(view)
            f.write(view[: size % len(buffer)])
            os.fsync(f.fileno())
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "peak_rss": peak_rss_bytes()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="sd1", choices=("sd1", "sdxl"))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--methods", nargs="*", default=["ws", "ad"], choices=("ws", "ad"))
    parser.add_argument("--peers", nargs="*", default=["atelier", "a1111", "sd-mecha", "io-floor"])
    parser.add_argument("--settle", type=float, default=6.0,
                        help="seconds to wait after deleting each output (see the note in main)")
    parser.add_argument("--child", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, method, output, *inputs = args.child
        print(json.dumps(child(kind, method, inputs, output)))
        return

    inputs = [str(ensure_checkpoint(args.arch, "full", seed=s)) for s in (0, 1, 2)]
    report = {"machine": machine_description(), "arch": args.arch, "runs": args.runs, "results": {}}
    for method in args.methods:
        used = inputs[:2] if method == "ws" else inputs
        samples: dict[str, list[dict]] = {peer: [] for peer in args.peers}
        for run in range(args.runs):
            for peer in args.peers:
                output = str(OUT_DIR / f"merged-{peer}-{method}.safetensors")
                # Inputs in the page cache for every peer: a peer that used much memory (the
                # whole-dict merge, sd-mecha) evicts them, and the next would read from disk.
                for path in used:
                    with open(path, "rb") as f:
                        while f.read(1 << 24):
                            pass
                result = run_child(SCRIPT, ["--child", peer, method, output, *used])
                samples[peer].append(result)
                Path(output).unlink(missing_ok=True)
                # The disk is mounted with `discard`: a deleted 2-7 GB file is trimmed at the next
                # journal commit (every 5 s), which slowed whichever peer ran next by up to 5 s.
                os.sync()
                time.sleep(args.settle)
                print(f"{method} run {run + 1} {peer:9s} {result['seconds']:6.1f}s  peak RSS "
                      f"{result['peak_rss'] / 2**30:5.2f} GiB", flush=True)
        report["results"][method] = {peer: {"seconds": median([r["seconds"] for r in rs]),
                                            "peak_rss": median([r["peak_rss"] for r in rs]), "samples": rs}
                                     for peer, rs in samples.items()}
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / f"merge-{args.arch}.json").write_text(json.dumps(report, indent=2))
    print(report["machine"])
    for method, peers in report["results"].items():
        for peer, r in peers.items():
            print(f"  {method} {peer:9s} {r['seconds']:6.1f}s  peak RSS {r['peak_rss'] / 2**30:5.2f} GiB")


if __name__ == "__main__":
    main()
