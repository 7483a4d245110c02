"""Test-wide settings: offline, one torch thread (2-core machines spin-wait with more; see PITFALLS)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_OFFLINE", "1")
# Ray reads this when it is first imported: a local Ray started by a test then listens on loopback
# only, whichever earlier test imported Ray (modules.cluster.ray_runtime refuses otherwise; servers
# set it before their one import).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

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


# Modules that start Ray inside the test process. Importing and starting Ray changes process-wide
# state no later test expects (its native libraries' memory allocator, threads that stay after
# ray.shutdown; tests/test_model_manager.py's RSS check saw 24 MiB more with them): they run last.
STARTS_RAY_IN_PROCESS = ("test_cluster_ray.py", "test_security_ray.py")


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: item.path.name in STARTS_RAY_IN_PROCESS)  # stable: the order otherwise stays
