"""The embedded (default) mode's one worker, described with the Ray workers' type, so that
`GET /atelier/v1/workers` has one shape in both modes. No Ray import, no torch import: everything is
read from the context's model manager and job queue.
"""

from __future__ import annotations

import socket

from modules.cluster.types import EMBEDDED_WORKER_ID, WorkerInfo
from modules.serving.jobs import JobState


def embedded_workers(context) -> list[WorkerInfo]:
    """The in-process worker: this host, the loaded model's device ("" before a load), busy while the
    job queue runs a job.

    `jobs_done` and `last_error` are counted over the queue's kept history (its `history_limit`
    newest finished jobs), not since start-up: older jobs are forgotten by the queue.
    """
    jobs = context.jobs
    running = jobs.current()
    known = jobs.jobs()
    failed = [job for job in known if job.state is JobState.FAILED]
    newest_failure = max(failed, key=lambda job: job.finished_at or 0.0) if failed else None
    model = context.models.current()
    return [WorkerInfo(
        id=EMBEDDED_WORKER_ID,
        node=socket.gethostname(),
        device=str(model.device) if model is not None else "",
        state="busy" if running is not None else "idle",
        # Read without the model lock, which a generation holds from start to end.
        loaded_checkpoints=tuple(context.models.loaded_titles()),
        current_job=running.id if running is not None else None,
        jobs_done=sum(1 for job in known if job.state is JobState.DONE),
        last_error=newest_failure.error if newest_failure is not None else None,
    )]
