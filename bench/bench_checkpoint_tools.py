"""Save-as-fp16 benchmark: Atelier's streaming tool vs the usual whole-dict script, side by side.

    python bench/bench_checkpoint_tools.py [--arch sd1] [--runs 3]

Input: a full-size random float32 checkpoint with the exact key set of the released file (SD1.5:
4.3 GB). "whole-dict" is what conversion scripts usually do: `safetensors.torch.load_file`, `.half()`
on every float32 tensor, `save_file`, then a sha256 of the new file (Atelier computes it while
writing, and the new file is listed with it; it also fsyncs before the rename, which the script does
not). The I/O floor reads the input and writes a file of the output's size (half the input) with an
fsync, doing no maths and no hashing. Each measurement is a fresh process (wall time and its
own peak RSS); peers alternate within each run; medians.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT_DIR, ensure_checkpoint, machine_description, median, peak_rss_bytes, run_child  # noqa: E402

SCRIPT = Path(__file__).resolve()


def child(kind: str, source: str, output: str) -> dict:
    started = time.perf_counter()
    if kind == "atelier":
        from modules.model_sources.checkpoint_tools import save_fp16

        save_fp16(Path(source), Path(output))
    elif kind == "whole-dict":
        import safetensors.torch
        import torch

        tensors = safetensors.torch.load_file(source)
        tensors = {k: v.half() if v.dtype == torch.float32 else v for k, v in tensors.items()}
        safetensors.torch.save_file(tensors, output, metadata={"format": "pt"})
        digest = hashlib.sha256()
        with open(output, "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    elif kind == "io-floor":
        # Read the input once and write a file of the output's size with one reused buffer and an
        # fsync: no casting, no hashing.
        buffer = bytearray(1 << 24)
        view = memoryview(buffer)
        with open(source, "rb", buffering=0) as f:
            while f.readinto(view):
                pass
        size = os.path.getsize(source) // 2
        with open(output, "wb", buffering=0) as f:
            for _ in range(size // len(buffer)):
                f.write(view)
            f.write(view[: size % len(buffer)])
            os.fsync(f.fileno())
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "peak_rss": peak_rss_bytes(), "output_bytes": os.path.getsize(output)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="sd1", choices=("sd1", "sdxl"))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--peers", nargs="*", default=["atelier", "whole-dict", "io-floor"])
    parser.add_argument("--settle", type=float, default=6.0, help="seconds after deleting each output (disk trim)")
    parser.add_argument("--child", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, source, output = args.child
        print(json.dumps(child(kind, source, output)))
        return

    source = ensure_checkpoint(args.arch, "full", seed=0, dtype_name="float32")
    report = {"machine": machine_description(), "arch": args.arch, "source_bytes": source.stat().st_size,
              "runs": args.runs, "results": {}}
    samples: dict[str, list[dict]] = {peer: [] for peer in args.peers}
    for run in range(args.runs):
        for peer in args.peers:
            output = OUT_DIR / f"fp16-{peer}.safetensors"
            output.unlink(missing_ok=True)
            with open(source, "rb") as f:  # the input in the page cache for every peer
                while f.read(1 << 24):
                    pass
            result = run_child(SCRIPT, ["--child", peer, str(source), str(output)])
            samples[peer].append(result)
            output.unlink(missing_ok=True)
            os.sync()
            time.sleep(args.settle)
            print(f"run {run + 1} {peer:10s} {result['seconds']:6.1f}s  peak RSS {result['peak_rss'] / 2**30:5.2f} GiB",
                  flush=True)
    report["results"] = {peer: {"seconds": median([r["seconds"] for r in rs]),
                                "peak_rss": median([r["peak_rss"] for r in rs]), "samples": rs}
                         for peer, rs in samples.items()}
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / f"fp16-{args.arch}.json").write_text(json.dumps(report, indent=2))
    print(report["machine"], f"source {report['source_bytes'] / 2**30:.2f} GiB")
    for peer, r in report["results"].items():
        print(f"  {peer:10s} {r['seconds']:6.1f}s  peak RSS {r['peak_rss'] / 2**30:5.2f} GiB")


if __name__ == "__main__":
    main()
