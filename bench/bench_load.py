"""Checkpoint loading benchmark: Atelier vs diffusers' `from_single_file`, side by side.

    python bench/bench_load.py [--arch sd1] [--size full] [--runs 3] [--device cpu] [--dtype float32]

Measures, each in a fresh process, median of --runs:
  - cold load time and peak RSS: Atelier's loader vs `from_single_file` given a local config folder
    (both read the same fp16 file into --dtype on --device; runs alternate between the two);
  - cold switch through the API: `POST /sdapi/v1/options` from checkpoint A (loaded) to B (never
    loaded, its sha256 not cached yet, so the first hash is included), with A evicted first
    (`sd_checkpoints_limit` 1) or kept (limit 2), against `from_single_file` of B in the same
    situation (pipeline A freed just before, or kept); peak RSS during the switch over the process
    without models, against the weights held at that peak;
  - cached switch time between two loaded checkpoints (sd_checkpoints_limit 2);
  - RSS drift over 20 alternating switches that reload from disk (sd_checkpoints_limit 1).
The file is in the page cache for every run (the first run of all warms it), so times compare the
loaders, not the disk. `--cleanup` deletes the generated checkpoints at the end.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    OUT_DIR,
    PIPELINES,
    ensure_checkpoint,
    machine_description,
    median,
    peak_rss_bytes,
    run_child,
    write_diffusers_config_folder,
)

SCRIPT = Path(__file__).resolve()


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _import_libraries() -> None:
    """Both loaders use the same libraries; import them before the clock starts for either."""
    import accelerate  # noqa: F401
    import diffusers.loaders.single_file_utils  # noqa: F401
    from diffusers import AutoencoderKL, StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel  # noqa: F401
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer  # noqa: F401


def child_atelier(path: Path, device: str, dtype: str) -> dict:
    import torch

    from modules.library.model_loader import LoadOptions, load_checkpoint

    _import_libraries()
    before = _rss()
    started = time.perf_counter()
    dt = getattr(torch, dtype)
    model = load_checkpoint(path, LoadOptions(device=torch.device(device), dtype=dt, vae_dtype=dt))
    _sync(device)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "peak_rss": peak_rss_bytes(), "rss_before": before, "rss_after": _rss(),
            "weights_bytes": model.weights_nbytes(), "summary": model.load_summary}


def child_diffusers(path: Path, device: str, dtype: str, arch_family: str) -> dict:
    import diffusers
    import torch

    config = write_diffusers_config_folder(path, OUT_DIR / f"diffusers-config-{path.stem}")
    _import_libraries()
    pipeline_cls = getattr(diffusers, PIPELINES[arch_family])
    before = _rss()
    started = time.perf_counter()
    kwargs = {"safety_checker": None} if arch_family != "sdxl" else {}
    pipe = pipeline_cls.from_single_file(str(path), config=str(config), local_files_only=True,
                                         torch_dtype=getattr(torch, dtype), **kwargs)
    pipe.to(device)
    _sync(device)
    seconds = time.perf_counter() - started
    weights = sum(p.numel() * p.element_size() for name in ("unet", "vae", "text_encoder", "text_encoder_2")
                  if getattr(pipe, name, None) is not None for p in getattr(pipe, name).parameters())
    return {"seconds": seconds, "peak_rss": peak_rss_bytes(), "rss_before": before, "rss_after": _rss(),
            "weights_bytes": weights}


def _cpu() -> tuple[float, float, int]:
    """(user seconds, system seconds, minor page faults) of this process so far."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime, usage.ru_minflt


def _cpu_since(start: tuple[float, float, int]) -> dict:
    user, system, faults = (now - then for now, then in zip(_cpu(), start))
    return {"user": user, "sys": system, "faults": faults}


def _reset_peak_rss() -> None:
    """Start VmHWM again from the current RSS (Linux: writing 5 to clear_refs)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _free_memory() -> None:
    import gc

    from modules.library.model_manager import release_memory

    gc.collect()
    release_memory()


def child_api_switch(a: Path, b: Path, device: str, dtype: str, limit: int) -> dict:
    """A's checkpoint loaded through the API, then the timed switch to B, both with empty hash caches."""
    import logging
    import tempfile

    from fastapi.testclient import TestClient

    from modules.api.server import create_app
    from modules.serving.app_context import AppContext
    from modules.serving.cmd_args import parse_args
    from modules.library.hashes import sha256_of_file

    _import_libraries()
    data_dir = Path(tempfile.mkdtemp(prefix="bench-switch-"))
    folder = data_dir / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    (folder / "a.safetensors").symlink_to(a)
    (folder / "b.safetensors").symlink_to(b)
    flags = ["--data-dir", str(data_dir), "--no-demo-checkpoint"] + (["--use-cpu", "all"] if device == "cpu" else [])
    context = AppContext.from_args(parse_args(flags))
    context.refresh()
    context.settings.apply({"sd_checkpoints_limit": limit})
    context.jobs.start()
    summaries: list[str] = []

    class Summaries(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if " loaded in " in record.getMessage():
                summaries.append(record.getMessage())

    logging.getLogger("modules.library.model_manager").addHandler(Summaries())
    logging.getLogger("modules.library.model_manager").setLevel(logging.INFO)
    client = TestClient(create_app(context, api=True))
    _free_memory()
    baseline = _rss()
    response = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "a.safetensors"})
    assert response.status_code == 200, response.text
    weights_a = context.models.current().weights_nbytes()
    _free_memory()
    before = _rss()
    _reset_peak_rss()
    cpu = _cpu()
    started = time.perf_counter()
    response = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "b.safetensors"})
    seconds = time.perf_counter() - started
    peak = peak_rss_bytes()
    cpu = _cpu_since(cpu)
    assert response.status_code == 200, response.text
    info, model = context.models.current_info(), context.models.current()
    held = model.weights_nbytes() + (weights_a if limit > 1 else 0)
    result = {"seconds": seconds, "peak_rss": peak, "rss_before": before, "baseline": baseline,
              "peak_over_baseline": peak - baseline, "weights_held": held, "weights_bytes": model.weights_nbytes(),
              "summary": summaries[-1] if summaries else "", "loaded": context.models.loaded_names(), **cpu}
    result["sha256_ok"] = info.sha256 == sha256_of_file(b)  # checked after the clock stopped
    context.jobs.shutdown()
    shutil.rmtree(data_dir, ignore_errors=True)  # links, config.json and cache.json of this run only
    return result


def child_diffusers_switch(a: Path, b: Path, device: str, dtype: str, arch_family: str, keep_a: bool) -> dict:
    """`from_single_file` of B after A's pipeline: dropped first (as an eviction does) or kept."""
    import diffusers
    import torch

    config = write_diffusers_config_folder(a, OUT_DIR / f"diffusers-config-{a.stem}")
    _import_libraries()
    pipeline_cls = getattr(diffusers, PIPELINES[arch_family])
    kwargs = {"safety_checker": None} if arch_family != "sdxl" else {}

    def load(path: Path):
        pipe = pipeline_cls.from_single_file(str(path), config=str(config), local_files_only=True,
                                             torch_dtype=getattr(torch, dtype), **kwargs)
        pipe.to(device)
        _sync(device)
        return pipe

    def weights(pipe) -> int:
        return sum(p.numel() * p.element_size() for name in ("unet", "vae", "text_encoder", "text_encoder_2")
                   if getattr(pipe, name, None) is not None for p in getattr(pipe, name).parameters())

    from modules.library.model_manager import configure_allocator

    configure_allocator()  # the same allocator settings as Atelier's process
    _free_memory()
    baseline = _rss()
    first = load(a)
    weights_a = weights(first)
    _free_memory()
    before = _rss()
    _reset_peak_rss()
    cpu = _cpu()
    started = time.perf_counter()
    if not keep_a:
        del first  # inside the clock, as Atelier's switch evicts A inside it
    pipe = load(b)
    seconds = time.perf_counter() - started
    peak = peak_rss_bytes()
    cpu = _cpu_since(cpu)
    held = weights(pipe) + (weights_a if keep_a else 0)
    return {"seconds": seconds, "peak_rss": peak, "rss_before": before, "baseline": baseline,
            "peak_over_baseline": peak - baseline, "weights_held": held, "weights_bytes": weights(pipe), **cpu}


def _manager(paths: list[Path], device: str, dtype: str, limit: int):
    import tempfile

    import torch

    from modules.library.checkpoints import CheckpointRegistry
    from modules.library.hashes import HashCache
    from modules.library.model_loader import LoadOptions
    from modules.library.model_manager import ModelManager, configure_allocator

    configure_allocator()
    registry = CheckpointRegistry([paths[0].parent], HashCache(Path(tempfile.mkdtemp()) / "cache.json"),
                                  hashing_enabled=False)
    registry.refresh()
    dt = getattr(torch, dtype)
    return ModelManager(registry, LoadOptions(device=torch.device(device), dtype=dt, vae_dtype=dt),
                        limit=lambda: limit)


def child_switch(a: Path, b: Path, device: str, dtype: str) -> dict:
    manager = _manager([a, b], device, dtype, limit=2)
    manager.load(a.name)
    manager.load(b.name)
    times = []
    for i in range(10):
        started = time.perf_counter()
        manager.load(a.name if i % 2 == 0 else b.name)
        _sync(device)
        times.append(time.perf_counter() - started)
    return {"switch_median": median(times), "switch_max": max(times)}


def child_drift(a: Path, b: Path, device: str, dtype: str, switches: int) -> dict:
    import gc

    manager = _manager([a, b], device, dtype, limit=1)
    series = []
    for i in range(switches):
        manager.load(a.name if i % 2 == 0 else b.name)
        gc.collect()
        series.append(_rss())
    return {"rss_series": series, "drift": series[-1] - series[0], "drift_after_2": series[-1] - series[1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="sd1", choices=("sd1", "sd2", "sdxl"))
    parser.add_argument("--size", default="full", choices=("tiny", "full"))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--switches", type=int, default=20)
    parser.add_argument("--skip", nargs="*", default=[],
                        choices=("diffusers", "cold-load", "cold-switch", "switch", "drift"))
    parser.add_argument("--cleanup", action="store_true", help="delete the generated checkpoints at the end")
    parser.add_argument("--child", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        kind, *rest = args.child
        if kind == "atelier":
            result = child_atelier(Path(rest[0]), args.device, args.dtype)
        elif kind == "diffusers":
            result = child_diffusers(Path(rest[0]), args.device, args.dtype, args.arch)
        elif kind == "switch":
            result = child_switch(Path(rest[0]), Path(rest[1]), args.device, args.dtype)
        elif kind == "api-switch":
            result = child_api_switch(Path(rest[0]), Path(rest[1]), args.device, args.dtype, int(rest[2]))
        elif kind == "diffusers-switch":
            result = child_diffusers_switch(Path(rest[0]), Path(rest[1]), args.device, args.dtype, args.arch,
                                            keep_a=int(rest[2]) > 1)
        else:
            result = child_drift(Path(rest[0]), Path(rest[1]), args.device, args.dtype, args.switches)
        print(json.dumps(result))
        return

    a = ensure_checkpoint(args.arch, args.size, seed=0)
    b = ensure_checkpoint(args.arch, args.size, seed=1)
    common = ["--arch", args.arch, "--device", args.device, "--dtype", args.dtype]
    if "diffusers" not in args.skip:
        write_diffusers_config_folder(a, OUT_DIR / f"diffusers-config-{a.stem}")
    a.read_bytes() if a.stat().st_size < 8e9 else None  # warm the page cache once for everyone

    runs: dict[str, list[dict]] = {"atelier": [], "diffusers": []}
    for run in range(args.runs if "cold-load" not in args.skip else 0):
        for kind in ("atelier", "diffusers"):
            if kind in args.skip:
                continue
            result = run_child(SCRIPT, [*common, "--child", kind, str(a)])
            runs[kind].append(result)
            print(f"run {run + 1} {kind:9s} {result['seconds']:6.2f}s  peak RSS {result['peak_rss'] / 2**30:5.2f} GiB"
                  f"  (before load {result['rss_before'] / 2**30:4.2f} GiB)", flush=True)

    report = {"machine": machine_description(), "arch": args.arch, "size": args.size, "dtype": args.dtype,
              "device": args.device, "file_bytes": a.stat().st_size, "runs": runs}
    for kind, results in runs.items():
        if results:
            report[kind] = {
                "seconds": median([r["seconds"] for r in results]),
                "peak_rss": median([r["peak_rss"] for r in results]),
                "peak_over_baseline": median([r["peak_rss"] - r["rss_before"] for r in results]),
                "weights_bytes": results[0]["weights_bytes"],
            }
    if "cold-switch" not in args.skip:
        report["cold_switch"] = cold_switch(args, common, a, b)
    if "switch" not in args.skip:
        switch = [run_child(SCRIPT, [*common, "--child", "switch", str(a), str(b)]) for _ in range(args.runs)]
        report["cached_switch_seconds"] = median([s["switch_median"] for s in switch])
        report["cached_switch_max_seconds"] = max(s["switch_max"] for s in switch)
    if "drift" not in args.skip:
        drift = run_child(SCRIPT, [*common, "--switches", str(args.switches), "--child", "drift", str(a), str(b)])
        report["drift"] = drift

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    out = OUT_DIR / f"load-{args.arch}-{args.size}-{args.device.replace(':', '')}-{args.dtype}.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"\n{report['machine']}\n{args.arch} {args.size}, file {report['file_bytes'] / 2**30:.2f} GiB fp16 → "
          f"{args.dtype} on {args.device}, median of {args.runs}")
    for kind in ("atelier", "diffusers"):
        if kind in report:
            r = report[kind]
            print(f"  {kind:9s} cold load {r['seconds']:6.2f}s  peak RSS {r['peak_rss'] / 2**30:5.2f} GiB "
                  f"(+{r['peak_over_baseline'] / 2**30:4.2f} over the process before loading; weights "
                  f"{r['weights_bytes'] / 2**30:4.2f} GiB → {r['peak_over_baseline'] / r['weights_bytes']:.2f}x)")
    if "cached_switch_seconds" in report:
        print(f"  cached switch median {report['cached_switch_seconds'] * 1000:.1f} ms "
              f"(max {report['cached_switch_max_seconds'] * 1000:.1f} ms)")
    if "drift" in report:
        d = report["drift"]
        print(f"  RSS drift over {args.switches} switches: {d['drift'] / 2**20:+.1f} MiB "
              f"(from switch 2: {d['drift_after_2'] / 2**20:+.1f} MiB)")
    if "cold_switch" in report:
        print_cold_switch(report["cold_switch"], args.runs)
    print(f"  → {out}")
    if args.cleanup:
        for path in (a, b):
            path.unlink(missing_ok=True)
        print(f"  deleted {a.name} and {b.name}")


COLD_SWITCH_PEERS = ("atelier", "diffusers")


def cold_switch(args, common: list[str], a: Path, b: Path) -> dict:
    """Peers side by side: per run and per limit, Atelier's API switch then diffusers' in the same
    situation, each in a fresh process."""
    results: dict[str, dict[str, list[dict]]] = {f"limit {limit}": {peer: [] for peer in COLD_SWITCH_PEERS}
                                                 for limit in (1, 2)}
    for run in range(args.runs):
        for limit in (1, 2):
            for peer in COLD_SWITCH_PEERS:
                if peer == "diffusers" and "diffusers" in args.skip:
                    continue
                kind = "api-switch" if peer == "atelier" else "diffusers-switch"
                result = run_child(SCRIPT, [*common, "--child", kind, str(a), str(b), str(limit)])
                results[f"limit {limit}"][peer].append(result)
                print(f"run {run + 1} limit {limit} {peer:9s} {result['seconds']:6.2f}s  peak "
                      f"{result['peak_over_baseline'] / result['weights_held']:.2f}x of the weights held; "
                      f"CPU user {result['user']:.2f}s sys {result['sys']:.2f}s, {result['faults']} page faults"
                      + (f"  {result['summary']}" if result.get("summary") else ""), flush=True)
    return results


def print_cold_switch(results: dict, runs: int) -> None:
    print(f"  cold switch A → B (B's sha256 not cached), median of {runs}:")
    for situation, peers in results.items():
        seconds = {peer: median([r["seconds"] for r in rs]) for peer, rs in peers.items() if rs}
        for peer, rs in peers.items():
            if not rs:
                continue
            ratio = median([r["peak_over_baseline"] / r["weights_held"] for r in rs])
            versus = (f" = {seconds[peer] / seconds['diffusers']:.2f}x diffusers"
                      if peer != "diffusers" and "diffusers" in seconds else "")
            each = ", ".join(f"{r['seconds']:.2f}" for r in rs)
            print(f"    {situation}: {peer:9s} {seconds[peer]:6.2f}s{versus} (runs {each}); "
                  f"peak {ratio:.2f}x the weights held")


if __name__ == "__main__":
    main()
