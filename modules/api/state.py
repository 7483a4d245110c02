"""What one API app keeps between requests: a thread pool for waiting on jobs, the clients' own task
ids, and the last encoded preview. One instance per `create_app`; nothing here is module-global."""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from modules.api.errors import ApiError

T = TypeVar("T")

# Handlers that wait for a job park one thread each here, not in Starlette's shared pool (40
# threads), so a long queue of generations never starves the quick routes (progress, interrupt).
WAIT_THREADS = 64
CLIENT_TASK_IDS_KEPT = 1000


class ClientTaskIds:
    """A request's `force_task_id` (A1111's way for a client to name its task) -> our job id.

    The names are the clients' own, so each owner (a user of `--multi-user`; None on a single-user
    server) has their own: one user's client id never finds, or replaces, another user's job."""

    def __init__(self, limit: int = CLIENT_TASK_IDS_KEPT):
        self._limit = limit
        self._lock = threading.Lock()
        self._by_client: OrderedDict[tuple[str | None, str], str] = OrderedDict()
        self._by_job: dict[str, str] = {}

    def remember(self, client_id: str, job_id: str, owner: str | None = None) -> None:
        with self._lock:
            previous = self._by_client.pop((owner, client_id), None)
            if previous is not None:
                self._by_job.pop(previous, None)
            self._by_client[(owner, client_id)] = job_id
            self._by_job[job_id] = client_id
            while len(self._by_client) > self._limit:
                _, old_job = self._by_client.popitem(last=False)
                self._by_job.pop(old_job, None)

    def job_id(self, client_id: str, owner: str | None = None) -> str | None:
        with self._lock:
            return self._by_client.get((owner, client_id))

    def client_id(self, job_id: str) -> str | None:
        with self._lock:
            return self._by_job.get(job_id)


class PreviewCache:
    """The base64 PNG of the latest preview, so polling clients share one encoding per step."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: tuple[str, int | None] | None = None
        self._encoded: str | None = None

    def get(self, key: tuple[str, int | None], encode: Callable[[], str]) -> str:
        with self._lock:
            if key != self._key:
                self._encoded, self._key = encode(), key
            return self._encoded


class ApiState:
    def __init__(self) -> None:
        self.client_task_ids = ClientTaskIds()
        self.previews = PreviewCache()
        self._waiters = ThreadPoolExecutor(max_workers=WAIT_THREADS, thread_name_prefix="api-wait")

    async def blocking(self, fn: Callable[[], T]) -> T:
        """Run `fn` (which may wait for the job queue) off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._waiters, fn)


def require_running_queue(jobs) -> None:
    """Submitting to a stopped queue would wait forever: say so instead."""
    if not jobs.running:
        raise ApiError(503, f"the job queue {jobs.name!r} is not running, so no job can run; the server is "
                            "starting or shutting down", name="ServiceUnavailable")
