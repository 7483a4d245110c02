"""Progress and control: A1111's `progress`, `interrupt`, `skip`, and Atelier's per-job status.

`progress` follows A1111's shape and describes whatever job the queue is running (a generation, a
merge), with the job's live preview as `current_image`. Several clients sharing one server each
follow their own job through `GET /sdapi/v1/jobs/{id}`: the id is in a txt2img response's `info`
(`job_id`), or is the `force_task_id` the request carried.

On a server shared with `--multi-user` (modules.serving.accounts) a user reaches only their own jobs:
`progress` describes their running job, else their first waiting one (progress 0, `eta_relative` the
wait estimate, `textinfo` its place in the queue), else nothing; `interrupt` and `skip` act on their
running job only; `jobs` lists theirs; another user's job is "not found" by id (404, the same answer
as for an id that never existed, so ids cannot be probed) and `force_task_id` names are each user's
own. Operators (`--admin-users`) see and control every job, as everyone does on a single-user
server; `JobStatus.owner` says whose a job is.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import APIRouter, Request

from modules.api.errors import not_found
from modules.api.images import encode_png
from modules.api.schemas import JobStatus, ProgressResponse, ProgressState
from modules.api.state import ApiState
from modules.serving.accounts import SHARED_USER, Accounts, User, ordinal, user_of
from modules.serving.jobs import Job, JobQueue

JOBS_LISTED = 100


def _timestamp(seconds: float | None) -> str:
    return dt.datetime.fromtimestamp(seconds).strftime("%Y%m%d%H%M%S") if seconds else "0"


def running_job_of(queue: JobQueue, user: User) -> Job | None:
    """The job `progress`, `interrupt` and `skip` are about for `user`: the earliest-started running
    job (A1111's one job), or for a user who is not an operator, their own earliest-started one."""
    if user.admin:
        return queue.current()
    return next((job for job in queue.running_jobs() if job.owner == user.owner), None)


def progress_of(queue: JobQueue, state: ApiState, skip_current_image: bool = False,
                user: User = SHARED_USER) -> ProgressResponse:
    """A1111's numbers for the running job: `progress = 0.01 + step/total` (its formula over batches,
    `0.01 + job_no/job_count + sampling_step/sampling_steps/job_count`, is the same number). For a
    user of a shared server who is not an operator, their own job (see the module docstring)."""
    job = running_job_of(queue, user)
    if job is None and not user.admin:
        waiting = next((job for job in queue.waiting_jobs() if job.owner == user.owner), None)
        if waiting is not None:
            return waiting_progress(waiting)
    if job is None:
        return ProgressResponse(progress=0.0, eta_relative=0.0, state=ProgressState())
    info = job.info
    job_count = max(1, int(info.get("job_count", 1)))
    step, total = job.step, job.total_steps
    per_batch = total / job_count if total else 0
    job_no = min(int(step // per_batch), job_count - 1) if per_batch else 0
    current_image = None
    if not skip_current_image:
        preview, preview_step = job.latest_preview()  # reading it asks the worker for a fresh one
        if preview is not None:
            current_image = state.previews.get((job.id, preview_step), lambda: encode_png(preview))
    lines = info["lines"]
    return ProgressResponse(
        progress=min(1.0, 0.01 + job.progress) if total else 0.01,
        eta_relative=job.eta_seconds or 0.0,
        state=ProgressState(
            skipped=job.skip_requested,
            interrupted=job.interrupt_requested,
            job=f"Batch {job_no + 1} out of {job_count}" if job_count > 1 else job.kind,
            job_count=job_count,
            job_timestamp=_timestamp(job.started_at),
            job_no=job_no,
            sampling_step=int(step - job_no * per_batch),
            sampling_steps=int(per_batch),
        ),
        current_image=current_image,
        textinfo=lines[-1] if lines else None,
        current_task=job.id,
    )


def waiting_progress(job: Job) -> ProgressResponse:
    """`progress` for a job that waits in the queue: nothing done, the wait estimate as its ETA and
    its place in the queue as `textinfo` ("Waiting in the queue: 2nd, about 40 s")."""
    position, wait = job.queue_position, job.wait_estimate
    place = ordinal(position + 1) if position is not None else "next"
    textinfo = f"Waiting in the queue: {place}" + (f", about {round(wait)} s" if wait is not None else "")
    return ProgressResponse(progress=0.0, eta_relative=wait or 0.0, state=ProgressState(job=job.kind),
                            textinfo=textinfo, current_task=job.id)


def result_summary(result: Any) -> dict[str, Any] | None:
    """What a finished job produced, small enough to poll (images themselves come with the response)."""
    from modules.merging.merger import MergeResult
    from modules.generation.engine import GenerationResult

    if result is None:
        return None
    if isinstance(result, GenerationResult):
        # One infotext per finished image (the API hands the images over and drops them).
        return {"images": len(result.infotexts), "seeds": list(result.seeds), "infotexts": list(result.infotexts),
                "saved_paths": list(result.saved_paths), "interrupted": result.interrupted,
                "warnings": list(result.warnings)}
    if isinstance(result, MergeResult):
        return {"title": result.title, "sha256": result.sha256, "filename": str(result.path),
                "warnings": list(result.warnings)}
    return {"type": type(result).__name__}


def job_status(job: Job, client_task_id: str | None = None) -> JobStatus:
    return JobStatus(
        id=job.id, kind=job.kind, description=job.description, state=job.state.value,
        queue_position=job.queue_position, step=job.step, total_steps=job.total_steps, progress=job.progress,
        eta_relative=job.eta_seconds, created_at=job.created_at, started_at=job.started_at,
        finished_at=job.finished_at, error=job.error, info=job.info["lines"], client_task_id=client_task_id,
        result=result_summary(job.result) if job.finished else None, owner=job.owner,
    )


def build_router(queue: JobQueue, state: ApiState, accounts: Accounts | None = None) -> APIRouter:
    """The routes over `queue`; `accounts`: the users of a shared server (None: one shared user)."""
    router = APIRouter(prefix="/sdapi/v1", tags=["progress"])

    def caller(request: Request) -> User:
        return user_of(accounts, request)

    def find(job_id: str, user: User) -> Job:
        """The job named by its id or by the caller's own `force_task_id`; another user's job is not
        found, with the answer an unknown id gets."""
        job = queue.get(job_id) or queue.get(state.client_task_ids.job_id(job_id, user.owner) or "")
        if job is None or not user.owns(job.owner):
            raise not_found(f"job {job_id!r} not found; it may never have existed or be older than the "
                            "last finished jobs the server keeps. GET /sdapi/v1/jobs lists the known ones",
                            name="JobNotFoundError")
        return job

    def status(job: Job) -> JobStatus:
        return job_status(job, state.client_task_ids.client_id(job.id))

    @router.get("/progress", response_model=ProgressResponse)
    def progress(request: Request, skip_current_image: bool = False) -> ProgressResponse:
        """The running job's progress (A1111). On a shared server, the caller's own job: the running
        one, else the first waiting one with its place in the queue (`textinfo`) and wait (`eta_relative`)."""
        return progress_of(queue, state, skip_current_image, caller(request))

    @router.post("/interrupt")
    def interrupt(request: Request) -> dict:
        """Stop the running job (on a shared server, the caller's own); its finished images are
        returned to its client (A1111)."""
        job = running_job_of(queue, caller(request))
        if job is not None:
            queue.interrupt(job.id)
        return {}

    @router.post("/skip")
    def skip(request: Request) -> dict:
        """Skip the image being made (on a shared server, by the caller's own job); the job goes on
        with the next one."""
        job = running_job_of(queue, caller(request))
        if job is not None:
            queue.skip(job.id)
        return {}

    @router.get("/jobs", response_model=list[JobStatus])
    def jobs(request: Request) -> list[JobStatus]:
        """Queued, running and recently finished jobs, oldest first (ids increase in submission
        order); on a shared server the caller's own (an operator's: everyone's, with `owner`)."""
        user = caller(request)
        return [status(job) for job in queue.jobs() if user.owns(job.owner)][-JOBS_LISTED:]

    @router.get("/jobs/{job_id}", response_model=JobStatus)
    def job(job_id: str, request: Request) -> JobStatus:
        """One job by its id, or by the `force_task_id` its request carried."""
        return status(find(job_id, caller(request)))

    @router.post("/jobs/{job_id}/interrupt", response_model=JobStatus)
    def interrupt_job(job_id: str, request: Request) -> JobStatus:
        """Interrupt this job if it runs, or take it out of the queue if it waits."""
        found = find(job_id, caller(request))
        queue.interrupt(found.id)
        return status(found)

    return router
