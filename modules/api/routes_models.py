"""Checkpoints, VAEs, settings and merging: `sd-models`, `sd-vae`, the refresh/reload/unload routes,
`options` and Atelier's `merge-checkpoints`.

Anything that changes the loaded model runs on the job worker (`AppContext.between_jobs`), after the jobs
already queued, so a generation submitted before a switch still sees the model it was submitted
against (A1111's FIFO `queue_lock`).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body

from modules.api.errors import ApiError, bad_request, exception_to_api_error
from modules.api.schemas import MergeResponse, SDModelItem, SDVaeItem
from modules.api.state import ApiState, require_running_queue
from modules.merging.merger import MergeRequest
from modules.serving.settings import describe_changes, redact_secrets
from modules.serving.settings_change import change_settings

OptionsBody = Annotated[dict[str, Any], Body(examples=[{"sd_model_checkpoint": "model.safetensors"}])]


def current_options(context) -> dict[str, Any]:
    """The settings in effect; secret ones (tokens) masked as "<redacted>", which a POST of the same
    body leaves unchanged."""
    values = redact_secrets(context.settings.current(), context.settings.specs_by_key())
    info = context.models.current_info()
    if info is not None:
        values["sd_model_checkpoint"] = info.title
        values["sd_checkpoint_hash"] = info.sha256 or ""
    return values


def api_setting_errors(context, changes: dict[str, Any]) -> list[str]:
    """What an API client may not change (modules.serving.settings_policy: locked directory settings, output
    folders outside the allowed ones, extension settings without extension access, `restrict_api`
    settings, keys that are no setting). Any key may be sent back with the value it has (clients
    post what GET options returned), keys of another program's in config.json included."""
    return list(context.settings_policy.refusals(changes, context.settings.current(), api=True,
                                                 specs=context.settings.specs_by_key()).values())


def set_options(context, changes: dict[str, Any]) -> None:
    """Change settings through the one settings-change path (modules.serving.settings_change).

    Refused keys: 422 naming each, before anything changes. A checkpoint that does not exist: 404;
    one known not to load: 422. A value that could not be applied (a broken VAE file, a checkpoint
    that fails to load) is put back, and the answer is an error naming the key and why, with the
    status of the cause (422 for a bad file, 500 for a fault of the server); keys applied beside it
    stay changed, and the message lists them."""
    report = change_settings(context, changes, api=True)
    if report.refused:
        raise bad_request("; ".join(report.refused.values()))
    if report.reverted:
        cause = exception_to_api_error(report.failure)
        detail = "; ".join([*report.reverted.values(), *report.notes])
        if report.changed:
            detail += f"; {describe_changes(report.changed)}"
        raise ApiError(cause.status_code, detail, name=cause.name)


def build_router(context, state: ApiState) -> APIRouter:
    router = APIRouter(prefix="/sdapi/v1", tags=["models"])

    @router.get("/sd-models", response_model=list[SDModelItem])
    def sd_models() -> list[SDModelItem]:
        return [
            SDModelItem(title=info.title, model_name=info.model_name, hash=info.shorthash, sha256=info.sha256,
                        filename=str(info.filename), config=str(info.config_path) if info.config_path else None)
            for info in context.checkpoints.list()
        ]

    @router.post("/refresh-checkpoints")
    def refresh_checkpoints() -> None:
        """Rescan the checkpoint folders, and the upscaler folders with them (A1111 has no upscaler
        refresh route; it rescans those on Reload UI)."""
        context.checkpoints.refresh()
        if context.upscalers is not None:
            context.upscalers.registry.refresh()

    @router.get("/sd-vae", response_model=list[SDVaeItem])
    def sd_vae() -> list[SDVaeItem]:
        return [SDVaeItem(model_name=f.name, filename=str(f.path)) for f in context.vaes.files()]

    @router.post("/refresh-vae")
    def refresh_vae() -> None:
        context.vaes.refresh()

    @router.get("/options")
    def get_options() -> dict[str, Any]:
        """Every setting (A1111's names); `sd_model_checkpoint` is the loaded checkpoint's title."""
        return current_options(context)

    @router.post("/options")
    async def post_options(changes: OptionsBody) -> None:
        """Change settings and save them to config.json. `sd_model_checkpoint` loads that checkpoint
        (after the queued jobs) and is remembered for the next start."""
        await state.blocking(lambda: set_options(context, changes))

    @router.post("/reload-checkpoint")
    async def reload_checkpoint() -> None:
        """Read the current checkpoint again from disk; with none loaded, load the start-up one."""
        def reload() -> None:
            if context.cluster is not None:  # every worker reads it again when a job next needs it
                context.cluster.broadcast("unload")
                info = context.current_checkpoint_info()
                if info is not None:
                    context.switch_checkpoint(info.title)
                return
            if context.models.current_info() is not None:
                context.models.reload_current()
                return
            context.load_default_model()

        await state.blocking(lambda: context.between_jobs(reload))

    @router.post("/unload-checkpoint")
    async def unload_checkpoint() -> None:
        """Free every loaded checkpoint and upscaler model; the next generation loads one again."""
        def unload() -> None:
            context.models.unload_all()
            context.upscalers.free()
            if context.cluster is not None:  # and on every Ray worker
                context.cluster.broadcast("unload")

        await state.blocking(lambda: context.between_jobs(unload))

    @router.post("/merge-checkpoints", response_model=MergeResponse)
    async def merge(body: MergeRequest, load_without_saving: bool = False) -> MergeResponse:
        """Atelier's merge route (A1111 has none): A1111's merger field names plus block weights and
        method options; runs on the job queue, so a generation in progress finishes first. With
        `?load_without_saving=true` the result is loaded as the current model without being saved
        ("merge and load": try a ratio, then merge again normally to keep it)."""
        return await state.blocking(lambda: _merge(context, body, load_without_saving))

    return router


def _merge(context, body: MergeRequest, load_without_saving: bool) -> MergeResponse:
    from modules.merging.service import submit_merge
    from modules.merging.merger import MergeInterrupted

    require_running_queue(context.jobs)
    # The same job as the Checkpoint Merger tab's (output folder, trial folder, VAE files).
    job = submit_merge(context, body, load_without_saving=load_without_saving)
    job.wait()
    if job.state.value == "interrupted" or isinstance(job.exception, MergeInterrupted):
        raise ApiError(409, f"merge {job.id} was interrupted; nothing was written", name="MergeInterrupted")
    if job.exception is not None:
        raise exception_to_api_error(job.exception)
    result = job.result
    return MergeResponse(title=result.title, sha256=result.sha256, filename=str(result.path),
                         timings=result.timings, job_id=job.id)
