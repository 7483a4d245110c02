"""Progress and control: A1111's `progress`, `interrupt`, `skip`, and Atelier's per-job status.

`progress` follows A1111's shape and describes whatever job the queue is running (a generation, a
merge), with the job's live preview as `current_image`. Several clients sharing one server each
follow their own job through `GET /sdapi/v1/jobs/{id}`: the id is in a txt2img response's `info`
(`job_id`), or is the `force_task_id` the request carried.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import APIRouter

from modules.api.errors import not_found
from modules.api.images import encode_png
from modules.api.schemas import JobStatus, ProgressResponse, ProgressState
from modules.api.state import ApiState
from modules.serving.jobs import Job, JobQueue

JOBS_LISTED = 100


def _timestamp(seconds: float | None) -> str:
    return dt.datetime.fromtimestamp(seconds).strftime("%Y%m%d%H%M%S") if seconds else "0"


def progress_of(queue: JobQueue, state: ApiState, skip_current_image: bool = False) -> ProgressResponse:
    """A1111's numbers for the running job: `progress = 0.01 + step/total` (its formula over batches,
    `0.01 + job_no/job_count + sampling_step/sampling_steps/job_count`, is the same number)."""
    job = queue.current()
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
        result=result_summary(job.result) if job.finished else None,
    )


def build_router(queue: JobQueue, state: ApiState) -> APIRouter:
    router = APIRouter(prefix="/sdapi/v1", tags=["progress"])

    def find(job_id: str) -> Job:
        job = queue.get(job_id) or queue.get(state.client_task_ids.job_id(job_id) or "")
        if job is None:
            raise not_found(f"job {job_id!r} not found; it may never have existed or be older than the "
                            "last finished jobs the server keeps. GET /sdapi/v1/jobs lists the known ones",
                            name="JobNotFoundError")
        return job

    @router.get("/progress", response_model=ProgressResponse)
    def progress(skip_current_image: bool = False) -> ProgressResponse:
        return progress_of(queue, state, skip_current_image)

    @router.post("/interrupt")
    def interrupt() -> dict:
        """Stop the running job; its finished images are returned to its client (A1111)."""
        queue.interrupt()
        return {}

    @router.post("/skip")
    def skip() -> dict:
        """Skip the image being made; the job goes on with the next one."""
        queue.skip()
        return {}

    @router.get("/jobs", response_model=list[JobStatus])
    def jobs() -> list[JobStatus]:
        """Queued, running and recently finished jobs, oldest first (ids increase in run order)."""
        return [job_status(job, state.client_task_ids.client_id(job.id)) for job in queue.jobs(JOBS_LISTED)]

    @router.get("/jobs/{job_id}", response_model=JobStatus)
    def job(job_id: str) -> JobStatus:
        """One job by its id, or by the `force_task_id` its request carried."""
        found = find(job_id)
        return job_status(found, state.client_task_ids.client_id(found.id))

    @router.post("/jobs/{job_id}/interrupt", response_model=JobStatus)
    def interrupt_job(job_id: str) -> JobStatus:
        """Interrupt this job if it runs, or take it out of the queue if it waits."""
        found = find(job_id)
        queue.interrupt(found.id)
        return job_status(found, state.client_task_ids.client_id(found.id))

    return router
