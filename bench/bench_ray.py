"""Ray workers (issue 18): throughput with 1 vs N workers, the latency a job gains through Ray, and
the model loads checkpoint affinity saves, in one run, the configurations side by side.

    python bench/bench_ray.py [--runs 3] [--jobs 8] [--device cpu] [--quick]

Every repeat runs, in this order: the embedded mode (this process, no Ray), a local Ray with 1 worker,
a local Ray with 2 workers (on CUDA: one worker per GPU), each Ray cluster started through
`modules.cluster.startup.start_workers` with `--ray-local N` and shut down before the next one.
Jobs go through `submit_generation`, as the UI's and the API's do; times come from the jobs'
own `created_at`/`finished_at` (submit → finished).

1. **Throughput**: `--jobs` independent txt2img jobs (one image each, their own seeds) submitted at
   once, after a warm-up job on every worker; images/s = jobs / (last finish − first submit).
   CPU workers run torch with one thread each (`--ray-worker-cpus 1`); the embedded reference row
   runs with `torch.set_num_threads(<cores, at most 2>)`. Default work on the CPU: the tiny SD1
   checkpoint (random weights, `modules.library.synthetic_checkpoints`), 256², 10 Euler steps
   (≈3 s a job on one thread); on CUDA the full-size SD1, 512², 20 steps.
2. **Added latency**: `--latency-jobs` tiny jobs (tiny SD1, 64², 1 step) one after the other;
   p50/p95 of their wall time through a 1-worker pool minus the same in the embedded mode with one
   torch thread. Target ≤ 50 ms.
3. **Model loads**: `--affinity-jobs` jobs (tiny SD1, 64², 4 steps) for two checkpoints a and b, half
   each in a shuffled, seeded order, each naming its checkpoint in `override_settings` (as API
   clients do; `override_settings_restore_afterwards` left at its default), on 2 workers with `sd_checkpoints_limit` 1, with checkpoint
   affinity on and off (`WorkerPool.affinity`); once one job at a time (a client waiting for each
   answer), once all submitted at once. Loads = the workers' `model_loads` after minus before, their
   caches emptied first (so the two first loads count too).

The single-checkpoint parts select their checkpoint first (`AppContext.switch_checkpoint`, the
UI's switch), so their jobs name none and nothing is reloaded between jobs.

Medians of `--runs` repeats. Prints Markdown tables and writes JSON to
$ATELIER_BENCH_DIR (default bench/out/) as ray-<device>.json. Other processes sharing the machine
change the figures: the load average before and after is printed with them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT_DIR, ensure_checkpoint, machine_description, median  # noqa: E402

log = logging.getLogger("bench_ray")

PROMPT = "a photo of a cat"
LOAD_KEYS = tuple(f"loads_{order}_affinity_{on}" for order in ("sequential", "burst") for on in ("on", "off"))


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile, linear between the closest ranks (numpy's default)."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def data_dir(arch: str, size: str) -> Path:
    """A data folder whose models are hard links to the bench's checkpoints: `work` (the throughput
    model), `a` and `b` (two different tiny SD1 files, for the latency and affinity parts)."""
    folder = OUT_DIR / "ray-data"
    models = folder / "models" / "Stable-diffusion"
    models.mkdir(parents=True, exist_ok=True)
    files = {"work": ensure_checkpoint(arch, size, seed=0), "a": ensure_checkpoint("sd1", "tiny", seed=1),
             "b": ensure_checkpoint("sd1", "tiny", seed=2)}
    for name, source in files.items():
        target = models / f"{name}.safetensors"
        if target.exists() and os.path.samefile(target, source):
            continue
        target.unlink(missing_ok=True)
        try:
            os.link(source, target)
        except OSError:  # another file system: a copy (symbolic links could be refused as leaving the folder)
            shutil.copyfile(source, target)
    return folder


def server_args(folder: Path, device: str, ray_workers: int | None):
    from modules.serving.cmd_args import parse_args

    argv = ["--data-dir", str(folder), "--no-demo-checkpoint"]
    if device == "cpu":
        argv += ["--use-cpu", "all"]
    if ray_workers is not None:
        argv += ["--ray-local", str(ray_workers), "--ray-worker-cpus", "1"]
    return parse_args(argv)


def new_context(folder: Path, device: str, ray_workers: int | None):
    """A server context: embedded (`ray_workers` None) or with a started, ready Ray pool."""
    from modules.serving.app_context import AppContext

    args = server_args(folder, device, ray_workers)
    context = AppContext.from_args(args)
    context.refresh()
    context.settings.apply({"sd_checkpoints_limit": 1})
    pool = None
    if ray_workers is not None:
        from modules.cluster.startup import start_workers

        pool = start_workers(context, args)
        pool.wait_ready(timeout=600)
    context.jobs.start()
    return context, pool


def close(context, pool) -> None:
    context.jobs.shutdown(wait=True, timeout=60)
    if pool is not None:
        pool.shutdown()  # kills the actors, then ray.shutdown(): the next configuration starts a fresh cluster


def request(px: int, steps: int, seed: int, checkpoint: str | None = None):
    """A txt2img request; `checkpoint`: named per request, as API clients do (`override_settings`),
    else the selected checkpoint is used."""
    from modules.generation.engine import GenerationRequest

    overrides = {"sd_model_checkpoint": checkpoint} if checkpoint else {}
    return GenerationRequest(prompt=PROMPT, negative_prompt="", width=px, height=px, steps=steps, cfg_scale=7.0,
                             sampler_name="Euler", seed=seed, override_settings=overrides)


def select(context, name: str) -> None:
    """Make `name` the selected checkpoint (the UI's and /sdapi/v1/options' switch): loaded here, or on
    one worker, the others loading it with their first job (the warm-up)."""
    context.switch_checkpoint(context.checkpoints.find(name).title)


def run_jobs(context, requests: list) -> list:
    """Submit all `requests` at once; wait for them; the jobs (each checked to have succeeded)."""
    from modules.serving.generation_service import GenerationSubmission, submit_generation

    jobs = [submit_generation(context, GenerationSubmission(r, save=False)) for r in requests]
    for job in jobs:
        job.wait(1800)
        if job.error is not None or job.finished_at is None:
            raise RuntimeError(f"bench job {job.id} ended {job.state}: {job.error}")
    return jobs


def throughput(context, workers: int, opts) -> float:
    """Seconds from the first submit to the last finish of `opts.jobs` jobs, after a warm-up wave."""
    select(context, "work")
    run_jobs(context, [request(opts.px, opts.steps, seed=1000 + w) for w in range(workers)])
    jobs = run_jobs(context, [request(opts.px, opts.steps, seed=i) for i in range(opts.jobs)])
    return max(job.finished_at for job in jobs) - min(job.created_at for job in jobs)


def latencies(context, opts) -> list[float]:
    """Wall time (submit → finished) of tiny jobs run one at a time, after 3 warm-up jobs."""
    select(context, "a")
    run_jobs(context, [request(64, 1, seed=2000 + i) for i in range(3)])
    times = []
    for i in range(opts.latency_jobs):
        (job,) = run_jobs(context, [request(64, 1, seed=i)])
        times.append(job.finished_at - job.created_at)
    return times


def affinity_loads(context, pool, affinity: bool, burst: bool, opts, seed: int) -> int:
    """Model loads of the workers for the mixed a/b workload, from empty caches: the jobs submitted
    at once (`burst`) or one after the other (a client waiting for each answer)."""
    pool.affinity = affinity
    errors = pool.broadcast("unload")
    if errors:
        raise RuntimeError(f"unloading the workers failed: {errors}")
    order = ["a", "b"] * (opts.affinity_jobs // 2)
    random.Random(seed).shuffle(order)
    before = sum(info.extra["model_loads"] for info in pool.describe())
    requests = [request(64, 4, seed=i, checkpoint=name) for i, name in enumerate(order)]
    if burst:
        run_jobs(context, requests)
    else:
        for one in requests:
            run_jobs(context, [one])
    return sum(info.extra["model_loads"] for info in pool.describe()) - before


def loadavg() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=8, help="jobs of the throughput workload")
    parser.add_argument("--latency-jobs", type=int, default=30)
    parser.add_argument("--affinity-jobs", type=int, default=12)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--size", choices=("tiny", "full"), help="throughput checkpoint (cpu: tiny, cuda: full)")
    parser.add_argument("--px", type=int, help="throughput image size (cpu: 256, cuda: 512)")
    parser.add_argument("--steps", type=int, help="throughput steps (cpu: 10, cuda: 20)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 repeat, fewer and smaller jobs")
    opts = parser.parse_args()
    gpu = opts.device == "cuda"
    opts.size = opts.size or ("full" if gpu else "tiny")
    opts.px = opts.px or (512 if gpu else 256)
    opts.steps = opts.steps or (20 if gpu else 10)
    if opts.quick:
        opts.runs, opts.jobs, opts.latency_jobs, opts.affinity_jobs = 1, 4, 8, 6
        opts.px, opts.steps = min(opts.px, 128), min(opts.steps, 4)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)

    import torch

    if gpu:
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: torch sees no CUDA device here; run with --device cpu")
        many = torch.cuda.device_count()  # one worker per GPU
    else:
        many = min(2, os.cpu_count() or 1)
    if many < 2:
        log.warning("only one %s: the 2-worker rows and the affinity part are skipped", "GPU" if gpu else "core")
    embedded_threads = min(2, os.cpu_count() or 1)
    folder = data_dir("sd1", opts.size)
    samples: dict[str, list] = {"embedded_s": [], "ray1_s": [], f"ray{many}_s": [], "latency_embedded": [],
                                "latency_ray1": [], **{key: [] for key in LOAD_KEYS}}
    loads: list[str] = [f"start {loadavg()}"]
    started = time.perf_counter()

    embedded, _ = new_context(folder, opts.device, None)
    try:
        for run in range(opts.runs):
            log.info("repeat %d/%d: embedded (torch threads %d, then 1)", run + 1, opts.runs, embedded_threads)
            torch.set_num_threads(embedded_threads)
            samples["embedded_s"].append(throughput(embedded, 1, opts))
            torch.set_num_threads(1)
            samples["latency_embedded"].append(latencies(embedded, opts))
            torch.set_num_threads(embedded_threads)

            log.info("repeat %d/%d: Ray, 1 worker", run + 1, opts.runs)
            context, pool = new_context(folder, opts.device, 1)
            try:
                samples["ray1_s"].append(throughput(context, 1, opts))
                samples["latency_ray1"].append(latencies(context, opts))
            finally:
                close(context, pool)

            if many >= 2:
                log.info("repeat %d/%d: Ray, %d workers", run + 1, opts.runs, many)
                context, pool = new_context(folder, opts.device, many)
                try:
                    samples[f"ray{many}_s"].append(throughput(context, many, opts))
                    # Alternate which goes first, so neither always meets a warmer page cache.
                    for burst in (False, True):
                        for on in ((True, False) if run % 2 == 0 else (False, True)):
                            key = f"loads_{'burst' if burst else 'sequential'}_affinity_{'on' if on else 'off'}"
                            samples[key].append(affinity_loads(context, pool, on, burst, opts, seed=run))
                finally:
                    close(context, pool)
            loads.append(f"after repeat {run + 1} {loadavg()}")
    finally:
        embedded.jobs.shutdown(wait=True, timeout=60)

    rate = {name: opts.jobs / median(samples[f"{name}_s"]) for name in ("embedded", "ray1", f"ray{many}")
            if samples[f"{name}_s"]}
    lat = {}
    for name in ("embedded", "ray1"):
        runs = samples[f"latency_{name}"]
        lat[name] = {"p50": median([percentile(r, 50) for r in runs]), "p95": median([percentile(r, 95) for r in runs])}
    added = {q: median([percentile(ray, q) - percentile(emb, q)
                        for ray, emb in zip(samples["latency_ray1"], samples["latency_embedded"])])
             for q in (50, 95)}
    report = {"machine": machine_description(), "device": opts.device, "runs": opts.runs, "quick": opts.quick,
              "throughput_workload": {"checkpoint": f"sd1 {opts.size}", "px": opts.px, "steps": opts.steps,
                                      "jobs": opts.jobs, "sampler": "Euler", "cfg": 7.0},
              "embedded_threads": embedded_threads, "workers": many, "images_per_s": rate,
              "ratio": rate.get(f"ray{many}", 0) / rate["ray1"] if many >= 2 else None,
              "latency_s": lat, "added_latency_s": {"p50": added[50], "p95": added[95]},
              "model_loads": {k: median(samples[k]) for k in LOAD_KEYS if samples[k]},
              "samples": samples, "load_average": loads, "wall_s": time.perf_counter() - started}
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    out = OUT_DIR / f"ray-{opts.device}{'-quick' if opts.quick else ''}.json"
    out.write_text(json.dumps(report, indent=2))
    print(markdown(report, samples, opts, many))
    print(f"\nJSON: {out}; load average (1/5/15 min): {'; '.join(loads)}; whole run {report['wall_s']:.0f} s")


def markdown(report: dict, samples: dict, opts, many: int) -> str:
    def runs(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
        return ", ".join(f"{v * scale:.{digits}f}" for v in values)

    kind = "GPU" if opts.device == "cuda" else "CPU"
    rate = report["images_per_s"]
    base = rate["ray1"]
    lines = [f"{report['machine']}; median of {opts.runs}", "",
             f"Throughput: {opts.jobs} txt2img jobs submitted at once, SD1 {opts.size} (random weights), "
             f"{opts.px}², {opts.steps} Euler steps, CFG 7, one image each", "",
             "| configuration | images/s | vs 1 worker | seconds for the jobs (runs) |", "|---|---|---|---|"]
    rows = [("embedded", f"embedded, torch threads {report['embedded_threads']}"),
            ("ray1", f"Ray, 1 {kind} worker"), (f"ray{many}", f"Ray, {many} {kind} workers")]
    for key, label in rows[:3 if many >= 2 else 2]:
        if key in rate and f"{key}_s" in samples and samples[f"{key}_s"]:
            lines.append(f"| {label} | {rate[key]:.3f} | {rate[key] / base:.2f}× | {runs(samples[f'{key}_s'])} |")
    lat, added = report["latency_s"], report["added_latency_s"]
    p = {name: [(percentile(r, 50), percentile(r, 95)) for r in samples[f"latency_{name}"]] for name in lat}
    lines += ["", f"Added latency: {opts.latency_jobs} jobs one at a time (SD1 tiny, 64², 1 step), submit → finished",
              "", "| | p50 | p95 | per run p50 / p95 (ms) |", "|---|---|---|---|"]
    for name, label in (("embedded", "embedded, 1 torch thread"), ("ray1", "Ray, 1 worker")):
        per_run = ", ".join(f"{a * 1000:.0f} / {b * 1000:.0f}" for a, b in p[name])
        lines.append(f"| {label} | {lat[name]['p50'] * 1000:.0f} ms | {lat[name]['p95'] * 1000:.0f} ms | {per_run} |")
    lines.append(f"| **added by Ray** (median of per-run differences) | **{added['p50'] * 1000:+.0f} ms** | "
                 f"**{added['p95'] * 1000:+.0f} ms** | |")
    loads = report["model_loads"]
    if loads:
        lines += ["", f"Model loads: {opts.affinity_jobs} jobs for two SD1 checkpoints (tiny, 64², 4 steps; half each, "
                  f"shuffled with a fixed seed), each named in the request's override_settings, {many} workers, sd_checkpoints_limit 1, caches emptied first",
                  "", "| jobs | checkpoint affinity (default) | no affinity (the worker idle longest) |",
                  "|---|---|---|"]
        for order, label in (("sequential", "one at a time"), ("burst", "submitted at once")):
            on, off = f"loads_{order}_affinity_on", f"loads_{order}_affinity_off"
            lines.append(f"| {label} | {loads[on]:g} ({', '.join(map(str, samples[on]))}) | "
                         f"{loads[off]:g} ({', '.join(map(str, samples[off]))}) |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
