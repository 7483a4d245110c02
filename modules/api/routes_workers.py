"""`GET /atelier/v1/workers`: who runs the jobs. In Ray mode (`--ray-address`, `--ray-local`) one entry
per worker actor, as the pool last saw it; in the embedded (default) mode the one in-process worker.

Atelier's own namespace, like `/atelier/v1/models`: served with or without `--api` and behind the API's
credentials (modules.api.auth). The answer is read from memory (the pool's last report, the job queue,
the model manager), never by a round trip to the workers, so polling it is cheap.

On a server shared with `--multi-user`, a user who is not an operator sees another user's job on a
worker as nothing: `current_job` only when the job is theirs, `last_error` (another user's job may
have failed with their prompt in the message) never (modules.cluster.visibility, shared with the
UI's workers line).
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from modules.serving.accounts import caller
from modules.cluster.embedded import embedded_workers
from modules.cluster.types import workers_summary
from modules.cluster.visibility import workers_as_seen_by
from modules.serving.accounts import SHARED_USER, User

PATH = "/atelier/v1/workers"


class WorkerItem(BaseModel):
    """One worker (modules.cluster.types.WorkerInfo as JSON)."""

    id: str = Field(description="The worker's id: `embedded` for the in-process worker.")
    node: str = Field(description="The host (embedded) or Ray node it runs on.")
    device: str = Field(description="cuda:0, cpu, ... as the worker reported it; empty until it has loaded "
                                    "a model (embedded) or started (Ray).")
    state: Literal["idle", "busy", "starting", "dead"] = Field(description=(
        "`starting`: Ray is creating or restarting its actor; `dead`: gone (its job, if any, went to another "
        "worker)."))
    loaded_checkpoints: list[str] = Field(description="Titles of the checkpoints it holds, most recently used first.")
    current_job: str | None = Field(None, description="The id of the job it runs (as in the per-job routes).")
    jobs_done: int = Field(description=(
        "Jobs it finished successfully; in the embedded mode counted over the job queue's kept history "
        "(its newest finished jobs), not since start-up."))
    last_error: str | None = Field(None, description="The error of its newest failed job (as kept).")
    extra: dict[str, Any] = Field(default_factory=dict, description="Mode-specific details.")


class WorkersResponse(BaseModel):
    mode: Literal["ray", "embedded"] = Field(description="`ray` with a Ray flag, else `embedded`.")
    summary: str = Field(description="The UI's status-bar words: dead workers are not counted.")
    workers: list[WorkerItem]

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "mode": "ray", "summary": "2 workers, 1 busy", "workers": [
            {"id": "worker-0", "node": "f1c3a9", "device": "cuda:0", "state": "busy",
             "loaded_checkpoints": ["v1-5-pruned-emaonly.safetensors [6ce0161689]"], "current_job": "job-12",
             "jobs_done": 41, "last_error": None, "extra": {}},
            {"id": "worker-1", "node": "f1c3a9", "device": "cuda:1", "state": "idle", "loaded_checkpoints": [],
             "current_job": None, "jobs_done": 38,
             "last_error": "cannot read /models/b.safetensors: not on this node", "extra": {}}]}]})


def workers_response(context, user: User = SHARED_USER) -> WorkersResponse:
    """The answer for `context`: its Ray pool's view when it has one (`context.cluster`), else the
    embedded worker; as `user` may see it (the module docstring)."""
    cluster = getattr(context, "cluster", None)
    if cluster is not None:
        mode, workers, summary = "ray", cluster.describe(), cluster.summary()
    else:
        workers = embedded_workers(context)
        mode, summary = "embedded", workers_summary(workers)
    items = [WorkerItem.model_validate(worker.as_json()) for worker in workers_as_seen_by(workers, context, user)]
    return WorkersResponse(mode=mode, summary=summary, workers=items)


def build_router(context) -> APIRouter:
    router = APIRouter(tags=["workers"])

    @router.get(PATH, response_model=WorkersResponse)
    def workers(request: Request) -> WorkersResponse:
        """The workers that run generation and merge jobs: id, node, device, state, loaded checkpoints,
        current job, jobs done and last error, with the status bar's summary ("3 workers, 2 busy")."""
        return workers_response(context, caller(context, request))

    return router
