"""What the server knows about its workers, as the API and the UI show it. No Ray import: the
embedded mode describes its one worker with the same type."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

EMBEDDED_WORKER_ID = "embedded"


@dataclass(frozen=True)
class WorkerInfo:
    """One worker at one moment (`GET /atelier/v1/workers`, the status line).

    `state`: "idle", "busy", "starting" (its actor is being created or restarted by Ray) or "dead"
    (gone; its job, if any, was handed to another worker). `device`: "cuda:0", "cpu", ... as the
    worker reported it; "" until it has started. `loaded_checkpoints`: titles, most recently used
    first. `current_job`: the queue's job id it runs, or None.
    """

    id: str
    node: str
    device: str
    state: str
    loaded_checkpoints: tuple[str, ...] = ()
    current_job: str | None = None
    jobs_done: int = 0
    last_error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def busy(self) -> bool:
        return self.state == "busy"

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["loaded_checkpoints"] = list(self.loaded_checkpoints)
        return data


def workers_summary(workers: list[WorkerInfo]) -> str:
    """The status line's words: "3 workers, 2 busy" (dead workers are not counted, starting ones are)."""
    alive = [worker for worker in workers if worker.state != "dead"]
    busy = sum(1 for worker in alive if worker.busy)
    noun = "worker" if len(alive) == 1 else "workers"
    return f"{len(alive)} {noun}, {busy} busy"
