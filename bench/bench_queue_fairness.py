"""Sharing one server between users (--multi-user): how long each user waits with round-robin vs FIFO,
and what each user's own checkpoint costs when their jobs alternate.

    python bench/bench_queue_fairness.py [--batch 6] [--other 3] [--steps 4] [--runs 3]

Setup: a --multi-user context with two tiny SD1 checkpoints (real single-file layout), alice's and
bob's. Alice submits `--batch` txt2img jobs, then bob submits `--other` (bob's arrive while alice's
first runs), each job 64x64, `--steps` Euler steps. Measured per order (round-robin, FIFO), `--runs`
times alternating the two orders, medians reported:
  start order   which user's job started when (first run; the same every run);
  bob waits     seconds from bob's submit to the start of his first job, and until his last job ends;
  alice ends    seconds until alice's last job ends (what round-robin costs the heavy user).
With "own checkpoints", alice's jobs use checkpoint a and bob's b, so alternation switches the model
between jobs: the model manager's cache keeps both (`sd_checkpoints_limit` 2), which is what
`switch cost` shows (median job time with alternation minus without). Writes bench/out/bench_queue_fairness.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT_DIR, machine_description  # noqa: E402


def make_context(folder: Path, checkpoints_limit: int):
    import torch

    from modules.library.synthetic_checkpoints import write_checkpoint
    from modules.serving.app_context import AppContext
    from modules.serving.cmd_args import parse_args

    models = folder / "models" / "Stable-diffusion"
    models.mkdir(parents=True, exist_ok=True)
    for seed, name in enumerate(("a", "b")):
        write_checkpoint(models / f"{name}.safetensors", "sd1", size="tiny", dtype=torch.float32, seed=seed)
    context = AppContext.from_args(parse_args(["--data-dir", str(folder), "--no-demo-checkpoint", "--multi-user",
                                               "--gradio-auth", "alice:a,bob:b"]))
    context.refresh()
    context.settings.apply({"sd_checkpoints_limit": checkpoints_limit, "samples_save": False})
    context.jobs.start()
    return context


def run_once(context, order: str, batch: int, other: int, steps: int, own_checkpoints: bool) -> dict:
    from modules.serving.generation_service import GenerationSubmission, submit_generation
    from modules.serving.settings_change import change_user_choices
    from modules.ui.request_fields import build_request

    context.settings.apply({"queue_order": order, "multi_user_queue_limit": 0})
    for user, title in (("alice", "a"), ("bob", "b" if own_checkpoints else "a")):
        change_user_choices(context, context.accounts.user(user), {"sd_model_checkpoint": title})
    request = build_request({"prompt": "a fox", "width": 64, "height": 64, "steps": steps, "sampler_name": "Euler",
                             "seed": 1})
    t0 = time.perf_counter()
    jobs = [("alice", submit_generation(context, GenerationSubmission(request, owner="alice", save=False)))
            for _ in range(batch)]
    bob_submitted = time.perf_counter()
    jobs += [("bob", submit_generation(context, GenerationSubmission(request, owner="bob", save=False)))
             for _ in range(other)]
    for _, job in jobs:
        job.wait(600)
        assert job.state.value == "done", job.error
    started = sorted(jobs, key=lambda item: item[1].started_at)
    bob_jobs = [job for user, job in jobs if user == "bob"]
    alice_jobs = [job for user, job in jobs if user == "alice"]
    wall_origin = time.time() - (time.perf_counter() - t0)
    durations = [job.finished_at - job.started_at for _, job in jobs]
    return {
        "start_order": "".join(user[0] for user, _ in started),
        "bob_first_start": min(job.started_at for job in bob_jobs) - (wall_origin + (bob_submitted - t0)),
        "bob_last_end": max(job.finished_at for job in bob_jobs) - (wall_origin + (bob_submitted - t0)),
        "alice_last_end": max(job.finished_at for job in alice_jobs) - wall_origin,
        "median_job": statistics.median(durations),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=6)
    parser.add_argument("--other", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    options = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as folder:
        context = make_context(Path(folder), checkpoints_limit=2)
        try:
            run_once(context, "fifo", 1, 1, options.steps, True)  # warm-up: both models loaded once
            for _ in range(options.runs):
                for order in ("round-robin", "fifo"):
                    for own in (False, True):
                        key = f"{order}, {'own checkpoints' if own else 'same checkpoint'}"
                        results.setdefault(key, []).append(run_once(context, order, options.batch, options.other,
                                                                     options.steps, own))
        finally:
            context.jobs.shutdown(timeout=60)
    summary = {}
    print(f"{machine_description()}\nalice submits {options.batch} jobs, then bob {options.other}; "
          f"{options.steps} steps at 64x64, tiny SD1; medians of {options.runs} runs")
    print(f"{'order':<36} {'start order':<14} {'bob 1st start':>13} {'bob done':>9} {'alice done':>10} {'job':>7}")
    for key, runs in results.items():
        row = {name: statistics.median(run[name] for run in runs)
               for name in ("bob_first_start", "bob_last_end", "alice_last_end", "median_job")}
        row["start_order"] = runs[0]["start_order"]
        summary[key] = row
        print(f"{key:<36} {row['start_order']:<14} {row['bob_first_start']:>12.2f}s {row['bob_last_end']:>8.2f}s "
              f"{row['alice_last_end']:>9.2f}s {row['median_job']:>6.3f}s")
    for order in ("round-robin", "fifo"):
        cost = summary[f"{order}, own checkpoints"]["median_job"] - summary[f"{order}, same checkpoint"]["median_job"]
        print(f"switch cost per job ({order}): {cost * 1000:+.0f} ms")
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / "bench_queue_fairness.json").write_text(json.dumps({"machine": machine_description(),
                                                                  "options": vars(options), "results": summary},
                                                                 indent=2))


if __name__ == "__main__":
    main()
