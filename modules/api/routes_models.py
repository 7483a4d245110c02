"""Checkpoints, VAEs, settings and merging: `sd-models`, `sd-vae`, the refresh/reload/unload routes,
`options` and Atelier's `merge-checkpoints`.

Anything that changes the loaded model runs on the job worker (`AppContext.between_jobs`), after the jobs
already queued, so a generation submitted before a switch still sees the model it was submitted
against (A1111's FIFO `queue_lock`).

On a server shared with `--multi-user` (modules.serving.accounts), `options` is per caller: GET shows
the global settings with the caller's own checkpoint, VAE and clip skip in place of the global ones,
and POST stores those three as the caller's own choices (their next job loads them; nothing changes
under anyone else). Every other setting, and reloading, unloading and merging checkpoints, is for the
operators (`--admin-users`): a 403 for anyone else (modules.api.callers).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Request

from modules.serving.accounts import caller
from modules.api.callers import operators_only, require_operator
from modules.api.errors import ApiError, bad_request, exception_to_api_error
from modules.api.schemas import MergeResponse, SDModelItem, SDVaeItem
from modules.api.state import ApiState, require_running_queue
from modules.merging.merger import MergeRequest
from modules.serving.accounts import SHARED_USER, User
from modules.serving.settings import describe_changes, redact_secrets, secrets_unchanged
from modules.serving.settings_change import change_settings
from modules.serving.user_choices import USER_CHOICE_KEYS

CHECKPOINT = "sd_model_checkpoint"
OptionsBody = Annotated[dict[str, Any], Body(examples=[{"sd_model_checkpoint": "model.safetensors"}])]


def current_options(context, user: User = SHARED_USER) -> dict[str, Any]:
    """The settings in effect; secret ones (tokens) masked as "<redacted>", which a POST of the same
    body leaves unchanged. For a user of a shared server, with their own choices (`user_options`)."""
    values = redact_secrets(context.settings.current(), context.settings.specs_by_key())
    info = context.models.current_info()
    if info is not None:
        values["sd_model_checkpoint"] = info.title
        values["sd_checkpoint_hash"] = info.sha256 or ""
    if user.name and context.accounts.multi_user:
        values.update(user_options(context, user))
    return values


def user_options(context, user: User) -> dict[str, Any]:
    """The checkpoint, VAE and clip skip `user`'s next job runs with (modules.serving.user_choices:
    theirs, else the global setting; with no checkpoint chosen by anyone, the start-up one, as
    modules.serving.generation_service loads it), the checkpoint as its title with its hash. A
    checkpoint chosen but no longer listed is shown as chosen, without a hash."""
    from modules.library.checkpoints import CheckpointNotFoundError

    choices = context.user_choices.effective(user.name, context.settings.current())
    values = {key: choices[key] for key in USER_CHOICE_KEYS if key != CHECKPOINT}
    wanted = choices[CHECKPOINT] or context.startup_checkpoint_title()
    if wanted:
        try:
            info = context.checkpoints.find(wanted)
        except CheckpointNotFoundError:
            values.update({CHECKPOINT: wanted, "sd_checkpoint_hash": ""})
        else:
            values.update({CHECKPOINT: info.title, "sd_checkpoint_hash": info.sha256 or ""})
    return values


def api_setting_errors(context, changes: dict[str, Any]) -> list[str]:
    """What an API client may not change (modules.serving.settings_policy: locked directory settings, output
    folders outside the allowed ones, extension settings without extension access, `restrict_api`
    settings, keys that are no setting). Any key may be sent back with the value it has (clients
    post what GET options returned), keys of another program's in config.json included."""
    return list(context.settings_policy.refusals(changes, context.settings.current(), api=True,
                                                 specs=context.settings.specs_by_key()).values())


def set_options(context, changes: dict[str, Any], user: User = SHARED_USER) -> None:
    """Change settings through the one settings-change path (modules.serving.settings_change).

    Refused keys: 422 naming each, before anything changes. A checkpoint that does not exist: 404;
    one known not to load: 422. A value that could not be applied (a broken VAE file, a checkpoint
    that fails to load) is put back, and the answer is an error naming the key and why, with the
    status of the cause (422 for a bad file, 500 for a fault of the server); keys applied beside it
    stay changed, and the message lists them.

    A user of a shared server who is not an operator changes only their own checkpoint, VAE and
    clip skip; any other key sent with a new value is a 403 naming `--admin-users`, and then
    nothing is stored. Keys sent back as GET showed them change nothing."""
    if not user.admin:
        changes = unchanged_removed(context, changes, user)
    report = change_settings(context, changes, api=True, user=user)
    global_keys = [key for key in report.refused if key not in USER_CHOICE_KEYS]
    if global_keys and not user.admin:
        raise operators_only(f"changing {global_keys}", "your own settings are "
                             f"{list(USER_CHOICE_KEYS)}; POST only those, or ask an operator")
    if report.refused:
        raise bad_request("; ".join(report.refused.values()))
    if report.reverted:
        cause = exception_to_api_error(report.failure)
        detail = "; ".join([*report.reverted.values(), *report.notes])
        if report.changed:
            detail += f"; {describe_changes(report.changed)}"
        raise ApiError(cause.status_code, detail, name=cause.name)


def unchanged_removed(context, changes: dict[str, Any], user: User) -> dict[str, Any]:
    """`changes` without what a client posts back unchanged from GET options, for a user who may
    change only their own choices: masked secrets, global settings at their current value (compared
    as validated: JSON turns a setting's tuple into a list), and the user's own choices at the value
    GET showed when they have not chosen it (so posting the whole body back does not turn the global
    checkpoint into a choice of their own)."""
    changes = secrets_unchanged(changes, context.settings.specs_by_key())
    current = context.settings.current()
    clean, _ = context.settings.validate_each({k: v for k, v in changes.items() if k not in USER_CHOICE_KEYS})
    unchanged = {key for key, value in clean.items() if key in current and current[key] == value}
    if user.name and context.accounts.multi_user:
        shown, own = current_options(context, user), context.user_choices.of(user.name)
        unchanged |= {key for key in USER_CHOICE_KEYS if key in changes and key not in own
                      and shown.get(key) == changes[key]}
    return {key: value for key, value in changes.items() if key not in unchanged}


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
    def get_options(request: Request) -> dict[str, Any]:
        """Every setting (A1111's names); `sd_model_checkpoint` is the loaded checkpoint's title (on
        a shared server, the caller's own checkpoint, VAE and clip skip)."""
        return current_options(context, caller(context, request))

    @router.post("/options")
    async def post_options(changes: OptionsBody, request: Request) -> None:
        """Change settings and save them to config.json. `sd_model_checkpoint` loads that checkpoint
        (after the queued jobs) and is remembered for the next start. On a shared server a user who
        is not an operator sets only their own checkpoint, VAE and clip skip (loaded by their next job)."""
        user = caller(context, request)
        await state.blocking(lambda: set_options(context, changes, user))

    @router.post("/reload-checkpoint")
    async def reload_checkpoint(request: Request) -> None:
        """Read the current checkpoint again from disk; with none loaded, load the start-up one."""
        require_operator(caller(context, request), "reloading the checkpoint")

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
    async def unload_checkpoint(request: Request) -> None:
        """Free every loaded checkpoint and upscaler model; the next generation loads one again."""
        require_operator(caller(context, request), "unloading checkpoints")

        def unload() -> None:
            context.models.unload_all()
            context.upscalers.free()
            if context.cluster is not None:  # and on every Ray worker
                context.cluster.broadcast("unload")

        await state.blocking(lambda: context.between_jobs(unload))

    @router.post("/merge-checkpoints", response_model=MergeResponse)
    async def merge(body: MergeRequest, request: Request, load_without_saving: bool = False) -> MergeResponse:
        """Atelier's merge route (A1111 has none): A1111's merger field names plus block weights and
        method options; runs on the job queue, so a generation in progress finishes first. With
        `?load_without_saving=true` the result is loaded as the current model without being saved
        ("merge and load": try a ratio, then merge again normally to keep it)."""
        require_operator(caller(context, request), "merging checkpoints")
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
