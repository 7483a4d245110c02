"""Test-wide settings: offline, one torch thread (2-core machines spin-wait with more; see PITFALLS)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_OFFLINE", "1")

import torch  # noqa: E402

torch.set_num_threads(1)


import pytest  # noqa: E402


@pytest.fixture
def queue():
    """A started job queue of its own, stopped after the test (running work interrupted)."""
    from modules.serving.jobs import JobQueue

    queue = JobQueue("test")
    queue.start()
    yield queue
    queue.interrupt()
    queue.shutdown(wait=True, timeout=30.0)
