"""Helpers for the UI tests: an application context over a data folder of tiny real-layout checkpoints."""

from __future__ import annotations

from pathlib import Path

import torch

from modules.serving.app_context import AppContext
from modules.serving.cmd_args import parse_args
from modules.library.synthetic_checkpoints import write_checkpoint

# Small enough that a generation takes a fraction of a second on one CPU thread.
SMALL_REQUEST = {"width": 64, "height": 64, "steps": 2, "sampler_name": "Euler", "seed": 5}


def make_context(data_dir: Path, checkpoints: tuple[str, ...] = ("tiny.safetensors",), *, load: bool = True,
                 extra_args: tuple[str, ...] = ()) -> AppContext:
    """An AppContext on `data_dir` with tiny SD1 checkpoints, the job queue started and (with
    `load`) the first checkpoint loaded. Call `context.jobs.shutdown()` when done."""
    folder = data_dir / "models" / "Stable-diffusion"
    folder.mkdir(parents=True, exist_ok=True)
    for seed, name in enumerate(checkpoints):
        write_checkpoint(folder / name, "sd1", dtype=torch.float32, seed=seed)
    context = AppContext.from_args(parse_args(["--data-dir", str(data_dir), "--no-demo-checkpoint", *extra_args]))
    context.refresh()
    context.jobs.start()
    if load:
        context.load_startup_model()
        assert context.models.current() is not None, context.load_state.error
    return context


def run_event(demo, target_id: int, event: str, inputs: list, *, state=None, context=None) -> list:
    """The handler bound to (`target_id`, `event`) in `demo`, run as the server runs it for a browser:
    on a worker thread with a fresh event loop (asyncio.run refuses to start where a loop is already
    running, which a CI run hit), inside `context`'s app scope when given. Returns its output data."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from gradio.state_holder import SessionState

    from modules.extension_host.environment import app_scope

    [fn] = [fn for fn in demo.fns.values() if fn.targets and fn.targets[0] == (target_id, event)]
    session = state if state is not None else SessionState(demo)

    def run():
        loop = asyncio.new_event_loop()
        try:
            with app_scope(context):
                return loop.run_until_complete(demo.process_api(block_fn=fn, inputs=inputs, state=session))
        finally:
            loop.close()

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(run).result()["data"]
