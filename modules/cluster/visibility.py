"""What one user may see of the workers on a server shared with `--multi-user`: the API's
`GET /atelier/v1/workers` and the UI's workers line both filter through here, so they cannot
drift apart.

A user who is not an operator sees another user's job on a worker as nothing: `current_job` only
when the job is theirs, `last_error` never (another user's job may have failed with their prompt,
or a path, in the message). Operators, and everyone without `--multi-user`, see everything. No Ray
import: the embedded mode uses it too.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Iterable

from modules.cluster.types import WorkerInfo
from modules.serving.accounts import User


def worker_as_seen_by(worker: WorkerInfo, context, user: User) -> WorkerInfo:
    """`worker` as `user` may see it (the module docstring); `context.jobs` tells whose job it runs."""
    if user.admin:
        return worker
    jobs = getattr(context, "jobs", None)
    job = jobs.get(worker.current_job) if worker.current_job and jobs is not None else None
    own = job is not None and user.owns(job.owner)
    return replace(worker, current_job=worker.current_job if own else None, last_error=None)


def workers_as_seen_by(workers: Iterable[WorkerInfo], context, user: User) -> list[WorkerInfo]:
    return [worker_as_seen_by(worker, context, user) for worker in workers]
