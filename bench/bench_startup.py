"""Start-up time: from `python launch.py` to the first HTTP 200 on `/` and to the first image, beside
the time `import gradio` alone takes in a fresh process (the floor of the first page).

    python bench/bench_startup.py [--runs 3] [--python PATH] [--steps 4] [--px 64] [--imports]

Each run is a fresh process, `PYTHON launch.py --data-dir <fresh folder> --port <free> --api`, on a
data folder holding one tiny SD1 checkpoint (random weights in the real layout). launch.py's
bootstrap check runs as a user's would: PYTHON (default: this interpreter) must be an already
prepared virtual environment, where the check only compares requirements.txt's hash with the stamp
it left at the last install (a first run with no stamp runs `pip install -r requirements.txt` once:
that is the untimed warm-up run). Outside a venv launch.py would create ./venv and install several
GB, so that case is refused.

Timed from just before the process is spawned: "page" = the first 200 on `/` (polled every 20 ms);
"image" = the first `POST /sdapi/v1/txt2img` answer carrying an image, sent as soon as `/` answers
(the start-up checkpoint loads in the background meanwhile; the job waits for it). In the same rounds,
"gradio" = a fresh `PYTHON -c "import gradio"` from spawn to exit, and "torch" the same for torch.
Medians of --runs, after one untimed warm-up round (page cache, bootstrap stamp). Writes
bench/out/startup.json.

--imports adds the question of where the model stack's import belongs on 2 cores: fresh processes
that import gradio alone, gradio then torch + diffusers + transformers, and the same two at once
(torch's on a thread started first, as a server would do it to get ahead); for each, when gradio is
imported and when both are.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT_DIR, REPO_ROOT, machine_description, median  # noqa: E402

PAGE_TIMEOUT_S = 300
IMAGE_TIMEOUT_S = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def in_virtualenv(python: str) -> bool:
    probe = subprocess.run([python, "-c", "import sys; print(sys.prefix != sys.base_prefix)"],
                           capture_output=True, text=True, check=True)
    return probe.stdout.strip() == "True"


def prepare_data_dir(template: Path, extensions: Path | None = None) -> Path:
    """A fresh data folder per run (no config.json, no hash cache), holding a copy of the checkpoint,
    and a copy of the `extensions` folder when given."""
    data_dir = Path(tempfile.mkdtemp(prefix="atelier-startup-", dir=OUT_DIR))
    folder = data_dir / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    (folder / template.name).write_bytes(template.read_bytes())
    if extensions is not None:
        shutil.copytree(extensions, data_dir / "extensions")
    return data_dir


def stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=20)
    except ProcessLookupError:
        pass


def one_run(python: str, template: Path, steps: int, px: int, log_path: Path, extensions: Path | None = None) -> dict:
    data_dir = prepare_data_dir(template, extensions)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
    env.pop("ATELIER_SKIP_INSTALL", None)  # the bootstrap check is part of what is timed
    command = [python, str(REPO_ROOT / "launch.py"), "--data-dir", str(data_dir), "--port", str(port), "--api"]
    with open(log_path, "w") as log:
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        page_s = None
        while page_s is None:
            if process.poll() is not None:
                raise RuntimeError(f"launch.py exited with {process.returncode}; see {log_path}")
            if time.perf_counter() - started > PAGE_TIMEOUT_S:
                raise RuntimeError(f"no 200 on / within {PAGE_TIMEOUT_S} s; see {log_path}")
            try:
                with urllib.request.urlopen(base + "/", timeout=5) as response:
                    if response.status == 200:
                        page_s = time.perf_counter() - started
            except (OSError, urllib.error.HTTPError):
                time.sleep(0.02)
        body = json.dumps({"prompt": "a lighthouse at dusk", "steps": steps, "width": px, "height": px,
                           "seed": 1}).encode()
        request = urllib.request.Request(base + "/sdapi/v1/txt2img", data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=IMAGE_TIMEOUT_S) as response:
            answer = json.load(response)
        image_s = time.perf_counter() - started
        image = base64.b64decode(answer["images"][0].split(",", 1)[-1])
        if not image.startswith(b"\x89PNG"):
            raise RuntimeError(f"txt2img answered without a PNG image: {str(answer)[:300]}")
        return {"page_s": page_s, "image_s": image_s}
    finally:
        stop(process)
        shutil.rmtree(data_dir, ignore_errors=True)


def import_seconds(python: str, module: str) -> float:
    """Wall time of a fresh `python -c "import <module>"`, spawn to exit."""
    started = time.perf_counter()
    subprocess.run([python, "-c", f"import {module}"], check=True, cwd=REPO_ROOT,
                   env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"})
    return time.perf_counter() - started


# The model stack as the start-up load imports it.
MODEL_STACK = "import torch, diffusers.models, transformers.models.clip"
IMPORT_ORDERS = {
    "gradio alone": "import gradio\nmarks['gradio'] = clock()",
    "gradio, then the model stack": f"import gradio\nmarks['gradio'] = clock()\n{MODEL_STACK}",
    "both at once (model stack on a thread)": (
        "import threading\n"
        f"stack = threading.Thread(target=lambda: exec({MODEL_STACK!r}))\nstack.start()\n"
        "import gradio\nmarks['gradio'] = clock()\nstack.join()"),
}
IMPORT_PROBE = """
import json, time
clock = lambda: time.perf_counter() - started
started = time.perf_counter()
marks = {{}}
{body}
marks['all'] = clock()
print(json.dumps(marks))
"""


def import_orders(python: str, runs: int) -> dict[str, dict[str, float]]:
    """Median seconds (from the first line of the probe) until gradio is imported and until all is."""
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in IMPORT_ORDERS}
    for index in range(runs + 1):
        for name, body in IMPORT_ORDERS.items():
            done = subprocess.run([python, "-c", IMPORT_PROBE.format(body=body)], check=True, capture_output=True,
                                  text=True, cwd=REPO_ROOT, env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"})
            marks = json.loads(done.stdout.strip().splitlines()[-1])
            if index:  # the first round warms the page cache
                samples[name].append(marks)
                print(f"{name}: gradio {marks['gradio']:.2f} s, all {marks['all']:.2f} s", flush=True)
    return {name: {key: median([m[key] for m in marks]) for key in ("gradio", "all")}
            for name, marks in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter that runs launch.py: an already prepared venv (default: this one)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--px", type=int, default=64)
    parser.add_argument("--imports", action="store_true", help="also time the import orders (see above)")
    args = parser.parse_args()

    if not in_virtualenv(args.python) and not (REPO_ROOT / "venv").exists():
        sys.exit(f"{args.python} is not in a virtual environment and {REPO_ROOT / 'venv'} does not exist: "
                 "launch.py would create ./venv and install several GB first. Run `python3 launch.py` once, "
                 "or pass --python <venv>/bin/python.")

    from modules.library.synthetic_checkpoints import write_checkpoint

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    template = OUT_DIR / "startup-tiny-sd1.safetensors"
    if not template.exists():
        write_checkpoint(template, "sd1", size="tiny", seed=0)

    runs = []
    for index in range(args.runs + 1):
        run = {"gradio_s": import_seconds(args.python, "gradio"), "torch_s": import_seconds(args.python, "torch")}
        run.update(one_run(args.python, template, args.steps, args.px, OUT_DIR / f"startup-run{index}.log"))
        label = "warm-up" if index == 0 else f"run {index}"
        print(f"{label}: import gradio alone {run['gradio_s']:.2f} s, import torch alone {run['torch_s']:.2f} s, "
              f"first 200 on / {run['page_s']:.2f} s, first image {run['image_s']:.2f} s", flush=True)
        if index:
            runs.append(run)

    from importlib.metadata import version

    result = {
        "command": f"{args.python} launch.py --data-dir <fresh> --port <free> --api",
        "request": {"steps": args.steps, "width": args.px, "height": args.px, "model": "tiny SD1 (random weights)"},
        "runs": runs,
        "median_gradio_import_s": median([r["gradio_s"] for r in runs]),
        "median_torch_import_s": median([r["torch_s"] for r in runs]),
        "median_page_s": median([r["page_s"] for r in runs]),
        "median_image_s": median([r["image_s"] for r in runs]),
        "machine": machine_description(),
        "python": platform.python_version(),
        "versions": {name: version(name) for name in ("gradio", "fastapi", "uvicorn", "torch", "diffusers")},
    }
    if args.imports:
        result["import_orders"] = import_orders(args.python, args.runs)
    (OUT_DIR / "startup.json").write_text(json.dumps(result, indent=2))
    print(f"median: import gradio alone {result['median_gradio_import_s']:.2f} s, import torch alone "
          f"{result['median_torch_import_s']:.2f} s, first 200 on / {result['median_page_s']:.2f} s "
          f"({result['median_page_s'] - result['median_gradio_import_s']:+.2f} s after gradio alone), "
          f"first image {result['median_image_s']:.2f} s ({result['machine']})")
    for name, marks in result.get("import_orders", {}).items():
        print(f"median {name}: gradio imported at {marks['gradio']:.2f} s, all at {marks['all']:.2f} s")


if __name__ == "__main__":
    main()
