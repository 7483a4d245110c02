"""Shared pieces of the API tests (this module holds no tests): an app context on tiny checkpoints,
a live uvicorn server in a thread for real HTTP clients, and an engine wrapper that pauses a job at
chosen steps so a test can look at it mid-run without depending on timing."""

from __future__ import annotations

import base64
import io
import queue
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Self

import torch
import uvicorn
from PIL import Image

from modules.serving.app_context import AppContext
from modules.serving.cmd_args import parse_args
from modules.library.synthetic_checkpoints import write_checkpoint

WAIT = 120.0  # bounds how long a broken test may hang; never decides a result


def make_context(data_dir: Path, names: Iterable[str] = ("a",), args: Iterable[str] = (), *,
                 load: bool = True, start_jobs: bool = True) -> AppContext:
    """Tiny SD1 checkpoints `<name>.safetensors` (different weights each), the first one loaded."""
    folder = data_dir / "models" / "Stable-diffusion"
    folder.mkdir(parents=True, exist_ok=True)
    for seed, name in enumerate(names):
        write_checkpoint(folder / f"{name}.safetensors", "sd1", size="tiny", dtype=torch.float32, seed=seed)
    context = AppContext.from_args(parse_args(["--data-dir", str(data_dir), "--no-demo-checkpoint", *args]))
    context.refresh()
    if load and len(context.checkpoints):
        context.models.load(context.checkpoints.list()[0].title)
    if start_jobs:
        context.jobs.start()
    return context


class LiveServer:
    """uvicorn serving `app` on a free local port, in a background thread. `lifespan="on"` for an app
    with Gradio mounted (its queue starts on the app's startup)."""

    def __init__(self, app, *, lifespan: str = "off"):
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan=lifespan))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]},
                                        name="test-uvicorn", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        deadline = time.monotonic() + WAIT
        while not self._server.started:
            assert self._thread.is_alive() and time.monotonic() < deadline, "the test server did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self._server.should_exit = True
        self._thread.join(WAIT)
        self._sock.close()


@contextmanager
def serving(app) -> Iterator[LiveServer]:
    with LiveServer(app) as server:
        yield server


class _PausingControl:
    """A JobControl that stops after reporting one of `steps` until the test releases it."""

    def __init__(self, inner, steps: set[int], gate: GatedEngine):
        self._inner = inner
        self._steps = steps
        self._gate = gate

    def report(self, step, total, preview_factory=None) -> None:
        self._inner.report(step, total, preview_factory)
        if step in self._steps:
            self._gate.reached.put(step)
            assert self._gate.release.get(timeout=WAIT) is None

    def __getattr__(self, name):
        return getattr(self._inner, name)


class GatedEngine:
    """Wraps the real engine; `arm(steps)` makes the next generation pause at those steps.

    The test waits with `reached.get()` (it returns the step), looks at the server, then lets the
    job go on with `release.put(None)`.
    """

    def __init__(self, engine):
        self.engine = engine
        self.reached: queue.Queue[int] = queue.Queue()
        self.release: queue.Queue[None] = queue.Queue()
        self._armed: set[int] = set()
        self._lock = threading.Lock()

    def arm(self, steps: Iterable[int]) -> None:
        with self._lock:
            self._armed = set(steps)

    def wait_until_paused(self) -> int:
        return self.reached.get(timeout=WAIT)

    def go_on(self) -> None:
        self.release.put(None)

    def generate(self, request, control=None, *, save=None):
        with self._lock:
            steps, self._armed = self._armed, set()
        if steps:
            control = _PausingControl(control, steps, self)
        return self.engine.generate(request, control, save=save)


def decode_png(data: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(data)))
    image.load()
    return image


def png_base64(image: Image.Image, parameters: str | None = None) -> str:
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    if parameters is not None:
        info.add_text("parameters", parameters)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return base64.b64encode(buffer.getvalue()).decode()


def basic_auth(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


ERROR_KEYS = {"error", "detail", "body", "errors"}  # A1111's error body


def assert_error(response, status: int, *fragments: str) -> dict:
    """`response` is an A1111-shaped error with `status` whose message holds every fragment."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == ERROR_KEYS, body
    for fragment in fragments:
        assert fragment in body["errors"], body
    return body
