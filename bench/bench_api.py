"""Requests per second and latency of POST /sdapi/v1/txt2img on a tiny model, and the API's overhead
over calling the engine in-process.

    python bench/bench_api.py [--requests 40] [--clients 8] [--steps 4] [--px 64] [--threads 1] [--device cpu]

Four measurements, same request (Euler, CFG 7, batch 1, one seed per request, nothing saved):
  engine      `Txt2ImgEngine.generate` called in this process (no queue, no HTTP): the floor;
  queue       the same through `JobQueue.submit` + `wait` (the worker thread hand-off);
  http x1     one client, requests one after another, to `webui.py --nowebui` in a child process;
  http xN     N clients at once (`--clients`), each sending its share of the requests.
engine and queue alternate request by request, so machine noise hits both alike. Latency is per
request as the client sees it (with N clients it includes waiting in the FIFO: one worker runs one
generation at a time, as in A1111). The API's overhead is measured per http x1 request: the client's
latency minus the job's own run time on the server's worker (`GET /sdapi/v1/jobs`), i.e. HTTP,
validation, the queue hand-off and encoding the response. Torch runs
with `--threads` threads on both sides (1 by default: on a shared 2-core machine more threads
spin-wait, see PITFALLS.md). Writes bench/out/bench_api.json.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT_DIR, REPO_ROOT, machine_description  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def summary(name: str, latencies: list[float], wall: float) -> dict:
    row = {"name": name, "requests": len(latencies), "rps": len(latencies) / wall,
           "p50_ms": 1000 * statistics.median(latencies), "p95_ms": 1000 * percentile(latencies, 95)}
    print(f"{name:>10}: {row['rps']:7.2f} req/s  p50 {row['p50_ms']:8.1f} ms  p95 {row['p95_ms']:8.1f} ms  "
          f"({len(latencies)} requests, {wall:.2f} s)", flush=True)
    return row


def payload(args, seed: int) -> dict:
    return {"prompt": "a lighthouse at dusk", "steps": args.steps, "width": args.px, "height": args.px,
            "sampler_name": "Euler", "cfg_scale": 7.0, "seed": seed}


def prepare_data_dir(args) -> Path:
    import torch

    from modules.library.synthetic_checkpoints import write_checkpoint

    data_dir = OUT_DIR / "api-bench"
    checkpoint = data_dir / "models" / "Stable-diffusion" / "tiny.safetensors"
    if not checkpoint.exists():
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        write_checkpoint(checkpoint, "sd1", size="tiny", dtype=torch.float32, seed=0)
    config = data_dir / "config.json"
    if config.exists():
        config.unlink()
    return data_dir


def in_process(args, data_dir: Path) -> list[dict]:
    import torch

    from modules.serving.app_context import AppContext
    from modules.serving.cmd_args import parse_args
    from modules.generation.engine import GenerationRequest

    torch.set_num_threads(args.threads)
    flags = ["--data-dir", str(data_dir), "--no-demo-checkpoint"] + (["--use-cpu", "all"] if args.device == "cpu" else [])
    context = AppContext.from_args(parse_args(flags))
    context.refresh()
    context.load_startup_model()
    if context.models.current() is None:
        raise RuntimeError(f"the tiny checkpoint did not load: {context.load_state.error}")
    requests = [GenerationRequest(**payload(args, seed)) for seed in range(args.requests)]
    context.jobs.start()

    def engine(request) -> None:
        context.engine.generate(request, save=False)

    def queue(request) -> None:
        context.jobs.submit(lambda control: context.engine.generate(request, control, save=False),
                            kind="txt2img").wait()

    for warm_up in requests[:2]:
        engine(warm_up)
        queue(warm_up)
    latencies: dict[str, list[float]] = {"engine": [], "queue": []}
    for request in requests:
        for name, call in (("engine", engine), ("queue", queue)):
            t = time.perf_counter()
            call(request)
            latencies[name].append(time.perf_counter() - t)
    context.jobs.shutdown()
    return [summary(name, values, sum(values)) for name, values in latencies.items()]


def start_server(args, data_dir: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1"}
    flags = ["--nowebui", "--data-dir", str(data_dir), "--port", str(port), "--no-demo-checkpoint"]
    if args.device == "cpu":
        flags += ["--use-cpu", "all"]
    server = subprocess.Popen([sys.executable, str(REPO_ROOT / "webui.py"), *flags], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    import requests

    deadline = time.monotonic() + 300
    while True:
        if server.poll() is not None:
            raise RuntimeError("the server exited during start-up")
        try:
            if requests.get(f"{url}/sdapi/v1/options", timeout=5).json().get("sd_model_checkpoint"):
                return server, url
        except (requests.RequestException, ValueError):
            pass
        if time.monotonic() > deadline:
            server.terminate()
            raise RuntimeError("the server did not load its checkpoint in 300 s")
        time.sleep(0.2)


def over_http(args, url: str, clients: int, count: int) -> dict:
    import requests

    share = [list(range(i, count, clients)) for i in range(clients)]
    latencies: list[float] = []
    job_latencies: dict[str, float] = {}
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)

    def client(seeds: list[int]) -> None:
        session = requests.Session()
        barrier.wait()
        for seed in seeds:
            t = time.perf_counter()
            response = session.post(f"{url}/sdapi/v1/txt2img", json=payload(args, seed))
            elapsed = time.perf_counter() - t
            response.raise_for_status()
            info = json.loads(response.json()["info"])
            assert info["all_seeds"] == [seed]
            with lock:
                latencies.append(elapsed)
                job_latencies[info["job_id"]] = elapsed

    threads = [threading.Thread(target=client, args=(seeds,)) for seeds in share]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    assert len(latencies) == count, "requests were lost"
    row = summary(f"http x{clients}", latencies, wall)
    # The server's own account of each job (started/finished on the worker): what is left of the
    # client's latency is HTTP, validation, queue hand-off and encoding the response.
    jobs = {job["id"]: job for job in requests.get(f"{url}/sdapi/v1/jobs").json()}
    if clients == 1:
        overheads = [latency - (jobs[job_id]["finished_at"] - jobs[job_id]["started_at"])
                     for job_id, latency in job_latencies.items()]
        row["overhead_p50_ms"] = 1000 * statistics.median(overheads)
        row["overhead_p95_ms"] = 1000 * percentile(overheads, 95)
        print(f"{'':>10}  outside the job (same requests): p50 {row['overhead_p50_ms']:.1f} ms, "
              f"p95 {row['overhead_p95_ms']:.1f} ms", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--px", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = parser.parse_args()

    data_dir = prepare_data_dir(args)
    print(machine_description(), flush=True)
    print(f"tiny SD1, {args.px}x{args.px}, {args.steps} steps Euler, {args.requests} requests, "
          f"torch threads {args.threads}, {args.device}", flush=True)
    rows = in_process(args, data_dir)
    server, url = start_server(args, data_dir)
    try:
        import requests

        for seed in range(2):  # warm-up
            requests.post(f"{url}/sdapi/v1/txt2img", json=payload(args, seed)).raise_for_status()
        rows.append(over_http(args, url, 1, args.requests))
        rows.append(over_http(args, url, args.clients, args.requests))
    finally:
        server.terminate()
        server.wait(timeout=30)
    by_name = {row["name"]: row for row in rows}
    overhead = by_name["http x1"]["p50_ms"] - by_name["engine"]["p50_ms"]
    print(f"http x1 p50 − engine p50 (two processes): {overhead:.1f} ms per request", flush=True)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / "bench_api.json").write_text(json.dumps(
        {"machine": machine_description(), "args": vars(args), "rows": rows, "overhead_ms": overhead}, indent=2))


if __name__ == "__main__":
    main()
