"""The HTTP server until the web UI lands: a status page and A1111's checkpoint routes.

Handlers translate HTTP to calls on the AppContext; they never touch torch. Route shapes follow
A1111's `/sdapi/v1` (A1111.md §8) so clients written for it work for these routes already.
"""

from __future__ import annotations

import html
import threading

from fastapi import FastAPI, HTTPException
from fastapi.responses import HTMLResponse
from pydantic import BaseModel

from modules.app_context import AppContext
from modules.checkpoints import CheckpointNotFoundError
from modules.merger import MergeRequest


class SDModelItem(BaseModel):
    title: str
    model_name: str
    hash: str | None
    sha256: str | None
    filename: str
    config: str | None


class SDVaeItem(BaseModel):
    model_name: str
    filename: str


class CheckpointSwitch(BaseModel):
    sd_model_checkpoint: str


def create_app(context: AppContext) -> FastAPI:
    app = FastAPI(title="Atelier", docs_url="/docs")

    @app.get("/", response_class=HTMLResponse)
    def status_page() -> str:
        model = context.models.current()
        state = context.load_state
        if model is not None:
            line = f"Loaded: <b>{html.escape(model.name)}</b> ({html.escape(str(model.architecture))}, " \
                   f"{html.escape(model.device.type)}, {str(model.dtype).removeprefix('torch.')})"
        elif state.loading:
            line = "Loading checkpoint…"
        elif state.error:
            line = f"Load failed: {html.escape(state.error)}"
        else:
            line = "No checkpoint loaded."
        items = "".join(f"<li>{html.escape(info.title)}</li>" for info in context.checkpoints.list())
        return (f"<!doctype html><title>Atelier</title><h1>Atelier</h1><p>{line}</p>"
                f"<h2>Checkpoints</h2><ul>{items or '<li>none</li>'}</ul>"
                "<p>The web UI arrives with a later release; the API is at <a href='/docs'>/docs</a>.</p>")

    @app.get("/sdapi/v1/sd-models", response_model=list[SDModelItem])
    def sd_models() -> list[SDModelItem]:
        return [
            SDModelItem(title=info.title, model_name=info.model_name, hash=info.shorthash, sha256=info.sha256,
                        filename=str(info.filename), config=str(info.config_path) if info.config_path else None)
            for info in context.checkpoints.list()
        ]

    @app.post("/sdapi/v1/refresh-checkpoints")
    def refresh_checkpoints() -> None:
        context.checkpoints.refresh()

    @app.get("/sdapi/v1/sd-vae", response_model=list[SDVaeItem])
    def sd_vae() -> list[SDVaeItem]:
        return [SDVaeItem(model_name=f.name, filename=str(f.path)) for f in context.vaes.files()]

    @app.post("/sdapi/v1/refresh-vae")
    def refresh_vae() -> None:
        context.vaes.refresh()

    @app.post("/sdapi/v1/options")
    def set_checkpoint(body: CheckpointSwitch) -> None:
        try:
            context.switch_checkpoint(body.sd_model_checkpoint)
        except CheckpointNotFoundError as e:
            raise HTTPException(status_code=404, detail=str(e)) from e
        except ValueError as e:
            raise HTTPException(status_code=422, detail=str(e)) from e

    @app.post("/sdapi/v1/merge-checkpoints")
    def merge(body: MergeRequest, load_without_saving: bool = False) -> dict:
        """Atelier's merge route (A1111 has none): A1111's merger field names plus block weights and
        method options; runs on the job queue, so a generation in progress finishes first. With
        `?load_without_saving=true` the result is loaded as the current model without being saved
        ("merge and load": try a ratio, then merge again normally to keep it)."""
        from modules.merger import merge_and_load, merge_checkpoints

        output_dir = context.paths.ckpt_dir or context.paths.checkpoints_dir
        vae_files = {f.name: f.path for f in context.vaes.files()}
        options = dict(vae_files=vae_files, allow_unsafe_pickle=context.args.disable_safe_unpickle)
        if load_without_saving:
            scratch = context.paths.data_dir / "cache" / "merge-trials"
            work = lambda control: merge_and_load(body, context.checkpoints, context.models, scratch,  # noqa: E731
                                                  control=control, **options)
        else:
            work = lambda control: merge_checkpoints(body, context.checkpoints, output_dir,  # noqa: E731
                                                     control=control, **options)
        job = context.jobs.submit(work, kind="merge", description=body.interpolation_method)
        job.wait()
        if job.state != "done":
            error = job.error or "merge did not finish"
            status = 404 if error.startswith("CheckpointNotFoundError") else 422
            raise HTTPException(status_code=status, detail=error)
        result = job.result
        return {"title": result.title, "sha256": result.sha256, "filename": str(result.path),
                "timings": result.timings, "job_id": job.id}

    @app.post("/sdapi/v1/reload-checkpoint")
    def reload_checkpoint() -> None:
        context.models.reload_current()

    @app.post("/sdapi/v1/unload-checkpoint")
    def unload_checkpoint() -> None:
        context.models.unload_all()

    return app


def start_background_load(context: AppContext) -> threading.Thread:
    """Load the start-up checkpoint without holding up the server (A1111 does the same)."""
    thread = threading.Thread(target=context.load_startup_model, name="startup-model-load", daemon=True)
    thread.start()
    return thread
