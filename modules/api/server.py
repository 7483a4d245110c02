"""The FastAPI app: A1111's `/sdapi/v1` API (when enabled) and, without a web UI, a status page.

`create_app` only assembles; the routes live in one module per area (txt2img, img2img, models and options,
networks, progress and jobs, info). Handlers translate HTTP to calls on the AppContext and never
touch torch; generation and anything that changes the loaded model go through the job queue.
Auth is added by `modules.api.auth.install_auth` once everything is mounted (webui.py).
"""

from __future__ import annotations

import html
import threading

from fastapi import FastAPI
from fastapi.responses import HTMLResponse

from modules.api import (extras, img2img, progress, routes_info, routes_model_sources, routes_models, routes_networks,
                         routes_workers, txt2img)
from modules.api.errors import ApiError, install_error_handlers
from modules.api.middleware import ProcessTimeMiddleware
from modules.api.state import ApiState
from modules.serving.app_context import AppContext


def create_app(context: AppContext, *, api: bool = True, ui: bool = False) -> FastAPI:
    """The app for `context`: the `/sdapi/v1` routes when `api`; a status page at `/` unless a web UI
    will be mounted there (`ui`)."""
    app = FastAPI(title="Atelier", description="A1111-compatible Stable Diffusion API", docs_url="/docs",
                  redoc_url="/redoc")
    install_error_handlers(app)
    if not ui:
        _add_status_page(app, context)
    # Atelier's own namespace, with or without --api: the Models tab and /docs use it.
    app.include_router(routes_model_sources.build_router(context))
    app.include_router(routes_workers.build_router(context))
    if api:
        state = ApiState()
        app.state.api = state
        app.include_router(txt2img.build_router(context, state))
        app.include_router(img2img.build_router(context, state))
        app.include_router(extras.build_router(context, state))
        app.include_router(progress.build_router(context.jobs, state, context.accounts))
        app.include_router(routes_models.build_router(context, state))
        app.include_router(routes_networks.build_router(context))
        app.include_router(routes_info.build_router(context))
        app.add_middleware(ProcessTimeMiddleware, log_requests=bool(getattr(context.args, "api_log", False)))
    else:
        _add_api_off_answer(app)
    return app


def _add_api_off_answer(app: FastAPI) -> None:
    """Without --api, an A1111 client gets a 404 that says how to turn the API on (A1111 answers a
    bare "Not Found", and clients report it as a broken server)."""
    @app.api_route("/sdapi/{path:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"], include_in_schema=False)
    def api_off(path: str) -> None:
        raise ApiError(404, f"/sdapi/{path}: the API is off on this server; start Atelier with --api "
                            "(beside the web UI) or --nowebui (the API alone)", name="NotFound")


def _add_status_page(app: FastAPI, context: AppContext) -> None:
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def status_page() -> str:
        model = context.models.current()
        state = context.load_state
        if model is not None:
            line = f"Loaded: <b>{html.escape(model.name)}</b> ({html.escape(str(model.architecture))}, " \
                   f"{html.escape(model.device.type)}, {str(model.dtype).removeprefix('torch.')})"
            if state.skipped:
                line += html.escape(f"; skipped {len(state.skipped)} that cannot be loaded: "
                                    + "; ".join(f"{s.title} ({s.reason})" for s in state.skipped))
        elif state.loading:
            line = "Loading checkpoint…"
        elif state.error:
            line = f"Load failed: {html.escape(state.error)}"
        else:
            line = "No checkpoint loaded."
        items = "".join(f"<li>{html.escape(info.label)}</li>" for info in context.checkpoints.list())
        return (f"<!doctype html><title>Atelier</title><h1>Atelier</h1><p>{line}</p>"
                f"<h2>Checkpoints</h2><ul>{items or '<li>none</li>'}</ul>"
                "<p>This server runs without the web UI; the API is described at <a href='/docs'>/docs</a>.</p>")


def start_background_load(context: AppContext) -> threading.Thread:
    """Load the start-up checkpoint without holding up the server (A1111 does the same)."""
    thread = threading.Thread(target=context.load_startup_model, name="startup-model-load", daemon=True)
    thread.start()
    return thread
