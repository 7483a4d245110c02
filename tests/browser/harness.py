"""What the browser tests stand on: the real server in a subprocess (tiny checkpoints, a free port, a
temporary data folder, stopped with its whole process group), finding Chromium, and a page whose
screenshot is saved when the test ends."""

from __future__ import annotations

import base64
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS_DIR = Path(os.environ.get("ATELIER_TEST_ARTIFACTS", REPO_ROOT / "test-artifacts")) / "browser"
CHECKPOINTS = ("alpha", "beta")
START_TIMEOUT_S = 180


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def find_chromium() -> str | None:
    """$ATELIER_CHROMIUM, else `chromium` (Debian) or `chromium-browser` on PATH."""
    override = os.environ.get("ATELIER_CHROMIUM")
    if override:
        return override if os.access(override, os.X_OK) else None
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_tiny_checkpoints(data_dir: Path, names: tuple[str, ...]) -> None:
    """One tiny random SD1 checkpoint per name (a different seed each), in the real file layout."""
    from modules.library.synthetic_checkpoints import write_checkpoint

    folder = data_dir / "models" / "Stable-diffusion"
    folder.mkdir(parents=True, exist_ok=True)
    for seed, name in enumerate(names):
        write_checkpoint(folder / f"{name}.safetensors", "sd1", size="tiny", seed=seed)


def write_extra_networks(data_dir: Path) -> None:
    """A textual-inversion embedding that fits the tiny checkpoints, one too wide for them (listed as
    skipped, with the reason), and a hypernetwork file (listed by name)."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    checkpoint = data_dir / "models" / "Stable-diffusion" / f"{CHECKPOINTS[0]}.safetensors"
    with safe_open(str(checkpoint), framework="pt") as tensors:
        key = next(k for k in tensors.keys() if k.endswith("token_embedding.weight"))
        width = tensors.get_slice(key).get_shape()[1]
    embeddings = data_dir / "embeddings"
    embeddings.mkdir(parents=True, exist_ok=True)
    save_file({"emb_params": torch.zeros(1, width)}, str(embeddings / "fits-tiny.safetensors"))
    save_file({"emb_params": torch.zeros(1, width + 8)}, str(embeddings / "too-wide.safetensors"))
    hypernetworks = data_dir / "models" / "hypernetworks"
    hypernetworks.mkdir(parents=True, exist_ok=True)
    torch.save({}, hypernetworks / "tiny-hn.pt")


def basic_auth_header(credentials: tuple[str, str]) -> dict[str, str]:
    token = base64.b64encode(f"{credentials[0]}:{credentials[1]}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def http_status(url: str, method: str = "GET", headers: dict[str, str] | None = None,
                body: bytes | None = None, timeout: float = 10) -> tuple[int, dict[str, str]]:
    """Status and headers of one request; HTTP errors are answers, not exceptions."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers)
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers)


@dataclass
class RunningServer:
    url: str
    data_dir: Path
    log_path: Path
    process: subprocess.Popen
    credentials: tuple[str, str] | None = None

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no server log)"

    def stop(self) -> None:
        """SIGTERM to the process group (uvicorn and anything it started), SIGKILL if it lingers."""
        if self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=15)
        except ProcessLookupError:
            pass


def start_server(data_dir: Path, log_path: Path, extra_args: list[str] = (),
                 credentials: tuple[str, str] | None = None) -> RunningServer:
    """Start `webui.py` on a free port and return once `/` answers 200 (with `credentials`, if any)."""
    port = free_port()
    command = [sys.executable, str(REPO_ROOT / "webui.py"), "--data-dir", str(data_dir), "--port", str(port),
               "--api", *extra_args]
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "HF_HUB_OFFLINE": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
        # One torch thread: on a 2-core machine shared with Chromium and pytest, two OpenMP threads
        # spin-wait and make each step 10-100x slower (PITFALLS.md).
        "OMP_NUM_THREADS": "1",
    }
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:  # the child keeps its own descriptor
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    server = RunningServer(f"http://127.0.0.1:{port}", data_dir, log_path, process, credentials)
    headers = basic_auth_header(credentials) if credentials else {}
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited with code {process.returncode} before answering:\n"
                                   f"{server.log_tail()}")
            try:
                if http_status(server.url + "/", headers=headers, timeout=5)[0] == 200:
                    return server
            except OSError:
                pass  # not listening yet
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not answer 200 on / within {START_TIMEOUT_S} s:\n"
                                   f"{server.log_tail()}")
            time.sleep(0.25)
    except BaseException:
        server.stop()
        raise


def _artifact_name(item) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", item.nodeid.split("::", 1)[-1])


def save_page_artifacts(page, item, artifacts_dir: Path, console: list[str], server: RunningServer | None) -> None:
    """A screenshot always; on failure also the HTML, the console and the server log's tail."""
    from playwright.sync_api import Error as PlaywrightError

    call = getattr(item, "report_call", None)
    failed = call is None or call.failed  # no call report: the setup failed
    name = _artifact_name(item) + ("-FAILED" if failed else "")
    try:
        page.screenshot(path=str(artifacts_dir / f"{name}.png"), full_page=True, timeout=15_000)
    except PlaywrightError as e:  # a dead page must not hide the test's own failure
        (artifacts_dir / f"{name}.screenshot-error.txt").write_text(repr(e))
    if failed:
        try:
            (artifacts_dir / f"{name}.html").write_text(page.content())
        except PlaywrightError as e:
            (artifacts_dir / f"{name}.html").write_text(f"<!-- page content unavailable: {e!r} -->")
        (artifacts_dir / f"{name}.console.txt").write_text("\n".join(console))
        if server is not None:
            (artifacts_dir / f"{name}.server-log.txt").write_text(server.log_tail(20_000))


def open_page(browser, request, artifacts_dir: Path, server: RunningServer, **context_options):
    """A fresh browser context and page (a generator for fixtures); saves the artifacts at the end."""
    context_options.setdefault("viewport", {"width": 1400, "height": 1000})
    context = browser.new_context(**context_options)
    page = context.new_page()
    page.set_default_timeout(30_000)
    console: list[str] = []
    page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
    page.on("pageerror", lambda error: console.append(f"pageerror: {error}"))
    try:
        yield page
    finally:
        save_page_artifacts(page, request.node, artifacts_dir, console, server)
        context.close()
