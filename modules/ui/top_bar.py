"""The top bar (A1111's quicksettings): checkpoint dropdown with refresh, then the settings of
`quicksettings_list` (SD VAE and Clip skip by default; any other setting gets its Settings-tab
widget here), and the model status line ("Loading checkpoint…", what is loaded, what failed).

A checkpoint switch is a job on the generation queue, so it waits for a running generation and the
next job uses the new model; a failed load shows the error and keeps the previous model (the model
manager's rule). The dropdown reacts to `.input` (the user's choice) rather than `.change`, so the
handler can put the previous title back after a failure without starting another switch.

On a server shared with `--multi-user` (modules.serving.accounts) the checkpoint, VAE and clip skip
are each user's own choice (modules.serving.user_choices): the bar shows the caller's choice when a
page opens, a change stores it (`change_user_choices`) and loads nothing now (their next job loads
it, so no one's model changes under another user's job), and the status line, which stays the
server's, says so. Other quicksettings are global settings: only operators change them.
"""

from __future__ import annotations

import html
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr

from modules.library.checkpoints import BrokenCheckpointError, CheckpointNotFoundError
from modules.serving.accounts import SHARED_USER, User, caller
from modules.serving.app_context import DEMO_CHECKPOINT_NAME
from modules.serving.jobs import JobState
from modules.serving.settings_change import SettingsChangeReport, change_settings, change_user_choices
from modules.ui.generation import error_html
from modules.ui.shared import UiShared

REFRESH_SYMBOL = "\U0001f504"  # 🔄
POLL_SECONDS = 0.25
WATCH_SECONDS = 5.0  # how soon an open page shows a checkpoint another page loaded


# --- plain functions (no gradio values in or out) -------------------------------------------------


TRIAL_NOTE = "not saved"
UNLISTED_NOTE = "loaded; no longer in the checkpoint folder"


def checkpoint_choices(context) -> list[tuple[str, str]]:
    """`(label, title)` pairs: a file known not to load says why in its label; the value stays the
    title, which is what the setting stores and A1111 clients send. The model in use is always a
    choice, so the dropdown can show it: a "Merge and load" trial (embedded or on Ray workers) or a
    loaded file since removed from the folder is added at the end, labelled as such."""
    choices = list(context.checkpoints.choices())
    current = context.current_checkpoint_info()
    if current is not None and current.title not in {title for _label, title in choices}:
        choices.append((_unlisted_label(context, current), current.title))
    return choices


def _unlisted_label(context, info) -> str:
    from modules.merging.service import merge_trial_dir

    trial = Path(info.filename).parent == merge_trial_dir(context.paths)
    return f"{info.title} ({TRIAL_NOTE if trial else UNLISTED_NOTE})"


def current_checkpoint_title(context) -> str | None:
    """The loaded checkpoint's title; before a load, the one the start-up load picks (`--ckpt`, the
    setting, else the first listed)."""
    info = context.current_checkpoint_info()
    return info.title if info is not None else context.startup_checkpoint_title()


def skipped_note(skipped) -> str:
    """The checkpoints the start-up load passed over, for the status line (empty when none)."""
    if not skipped:
        return ""
    listed = "; ".join(f"{s.title} ({s.reason})" for s in skipped)
    return (f"<span class='model-status skipped'> — skipped {len(skipped)} that cannot be loaded: "
            f"{html.escape(listed)}. They stay in the list, marked, until their files change.</span>")


def model_status(context) -> tuple[str, bool]:
    """(status HTML, whether the start-up load is still running)."""
    state = context.load_state
    with state.lock:
        loading, error, skipped = state.loading, state.error, state.skipped
    if loading:
        return "<span class='model-status loading'>Loading checkpoint…</span>", True
    if context.cluster is not None and error is None:
        return _workers_model_status(context, skipped), False
    model, info = context.models.current(), context.models.current_info()
    if model is not None:
        name = info.title if info is not None else model.name
        details = f"{model.architecture}, {model.device.type}, {str(model.dtype).removeprefix('torch.')}"
        status = (f"<span class='model-status loaded'>Loaded <b>{html.escape(name)}</b> "
                  f"({html.escape(details)})</span>")
        status += skipped_note(skipped)
        if info is not None and Path(info.filename).name == DEMO_CHECKPOINT_NAME:
            folder = html.escape(str(context.paths.checkpoints_dir))
            status += (f"<span class='model-status demo'> — a demo checkpoint with RANDOM weights: it draws noise. "
                       f"Put real checkpoints in {folder} and press the refresh button beside the list.</span>")
        return status, False
    if error:
        return error_html(f"Loading the checkpoint failed: {error}"), False
    if not checkpoint_choices(context):
        folders = ", ".join(str(d) for d in context.paths.checkpoint_dirs)
        return (f"<span class='model-status empty'>No checkpoints found. Put .safetensors or .ckpt files in "
                f"{html.escape(folders)} and press the refresh button beside the list.</span>"), False
    return "<span class='model-status empty'>No checkpoint loaded; pick one above.</span>", False


def _workers_model_status(context, skipped) -> str:
    """The status with Ray workers: the selected checkpoint and how many workers hold it."""
    info = context.current_checkpoint_info()
    if info is None:
        if not checkpoint_choices(context):
            folders = ", ".join(str(d) for d in context.paths.checkpoint_dirs)
            return (f"<span class='model-status empty'>No checkpoints found. Put .safetensors or .ckpt files in "
                    f"{html.escape(folders)} and press the refresh button beside the list.</span>")
        return "<span class='model-status empty'>No checkpoint loaded; pick one above.</span>"
    workers = [worker for worker in context.cluster.describe() if worker.state != "dead"]
    holders = context.cluster.holders(info.title)
    status = (f"<span class='model-status loaded'>Loaded <b>{html.escape(info.title)}</b> "
              f"(on {holders} of {len(workers)} Ray workers; the others load it when they need it)</span>")
    return status + skipped_note(skipped)


@dataclass
class SwitchUpdate:
    """One step of a checkpoint switch: the status to show and, once finished, the dropdown's value."""

    status_html: str
    finished: bool = False
    title: str | None = None


def switch_checkpoint(context, title: str, poll_seconds: float = POLL_SECONDS) -> Iterator[SwitchUpdate]:
    """Switch to `title` through the job queue, yielding the status while it waits and loads."""
    current = context.current_checkpoint_info()
    if not title:
        yield SwitchUpdate(model_status(context)[0], True, current_checkpoint_title(context))
        return
    if current is not None and title in current.aliases:
        yield SwitchUpdate(model_status(context)[0], True, current.title)
        return
    # Exclusive: with Ray workers several jobs run at once, and a job queued after the switch must see it.
    job = context.jobs.submit(lambda control: context.switch_checkpoint(title), kind="checkpoint",
                              description=title, exclusive=True)
    name = html.escape(title)
    while not job.finished:
        if job.state is JobState.QUEUED:
            text = f"Loading {name} after the running job…"
        else:
            text = f"Loading {name}…"
        yield SwitchUpdate(f"<span class='model-status loading'>{text}</span>")
        try:
            job.wait(poll_seconds)
        except TimeoutError:
            pass
    if job.state is JobState.DONE:
        took = (job.finished_at or 0) - (job.started_at or 0)
        status, _ = model_status(context)
        yield SwitchUpdate(f"{status} <span class='model-status took'>in {took:.1f} s</span>", True,
                           current_checkpoint_title(context))
        return
    previous = context.current_checkpoint_info()
    kept = f" Still using {previous.title}." if previous is not None else " No checkpoint is loaded."
    reason = job.error or "the load was cancelled"
    yield SwitchUpdate(error_html(f"Could not load {title}: {reason}.{kept}"), True,
                       previous.title if previous is not None else None)


def own_choices(user: User) -> bool:
    """Whether the bar's checkpoint, VAE and clip skip are `user`'s own (a --multi-user user) rather
    than the global settings."""
    return user.name is not None


def shown_choices(context, user: User) -> dict[str, Any]:
    """The checkpoint title, VAE and clip skip the bar shows `user`: their own choices with
    `--multi-user` (the global settings where they chose nothing), else the server's."""
    current = context.settings.current()
    if not own_choices(user):
        return {"sd_model_checkpoint": current_checkpoint_title(context), "sd_vae": current["sd_vae"],
                "CLIP_stop_at_last_layers": current["CLIP_stop_at_last_layers"]}
    chosen = dict(context.user_choices.effective(user.name, current))
    chosen["sd_model_checkpoint"] = chosen["sd_model_checkpoint"] or current_checkpoint_title(context)
    return chosen


NEXT_JOB_NOTE = "<span class='model-status own-choice'>Your {what} is {value}: your next job uses it.</span>"


def change_own_choice(context, user: User, key: str, value) -> tuple[str, Any]:
    """Store one of `user`'s own choices (--multi-user). Returns (status line, the value the bar
    shows afterwards: the new one, or after a refusal the previous one)."""
    what = {"sd_model_checkpoint": "checkpoint", "sd_vae": "VAE", "CLIP_stop_at_last_layers": "clip skip"}[key]
    try:
        report = change_user_choices(context, user, {key: value})
    except (CheckpointNotFoundError, BrokenCheckpointError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
        return error_html(f"Could not choose {value}: {message}"), shown_choices(context, user)[key]
    except OSError as error:  # the choices file could not be written (a full disk): nothing changed
        return error_html(f"Not saved: {error}"), shown_choices(context, user)[key]
    if report.refused:
        return error_html(report.refused.get(key, "; ".join(report.refused.values()))), shown_choices(context, user)[key]
    shown = shown_choices(context, user)[key]
    return NEXT_JOB_NOTE.format(what=what, value=html.escape(str(shown))), shown


def _change_setting(context, key: str, value, user: User = SHARED_USER) -> tuple[str, SettingsChangeReport | None]:
    """Change one setting through the settings-change path (modules.serving.settings_change: the
    settings policy, the value's rules, applied to the loaded model, put back when that fails;
    a --multi-user user who is not an operator is refused a global setting).
    Returns the status line and the report (None when config.json could not be written)."""
    try:
        report = change_settings(context, {key: value}, api=False, user=user)
    except OSError as error:  # config.json could not be written (a full disk): nothing changed
        return error_html(f"Not saved: {error}"), None
    if report.refused:
        return error_html(report.refused[key]), report
    if report.reverted:
        return error_html(report.reverted[key]), report
    return model_status(context)[0], report


def apply_vae(context, name: str) -> tuple[str, str]:
    """Set the SD VAE setting and re-apply the VAE to the loaded model, between jobs. Returns the
    status line and the VAE in effect: after a refusal or a failure to apply, the previous choice,
    in the setting and in the dropdown (A1111 puts back a setting whose change fails)."""
    status, report = _change_setting(context, "sd_vae", name)
    if report is not None and report.reverted:
        status = error_html(f"Could not apply VAE {name}: {report.reverted['sd_vae']}")
    return status, context.settings.current()["sd_vae"]


def apply_quicksetting(context, key: str, value) -> str:
    """A setting from `quicksettings_list` other than the checkpoint, VAE and Clip skip: saved at
    once, refused with the rule it breaks (or the settings policy's, e.g. an output folder), or put
    back with the reason when applying it fails."""
    return _change_setting(context, key, value)[0]


def quicksetting_changed(context, key: str, value, user: User = SHARED_USER) -> tuple[str, Any]:
    """The handler of a quicksetting widget: (status line, the widget's value). When the change was
    put back, the widget shows the value in effect again; otherwise it keeps what it holds
    (`gr.skip()`), so a refused typed value can be fixed."""
    from modules.ui.settings_tab import widget_value

    status, report = _change_setting(context, key, value, user)
    if report is None or not report.reverted:
        return status, gr.skip()
    return status, widget_value(context.settings.specs_by_key()[key], context.settings.current()[key])


def apply_clip_skip(context, value: float) -> str:
    """Clip skip from the top bar's slider, through the same path as every setting (the settings
    policy and the setting's range: 1 to 12, whole numbers)."""
    return _change_setting(context, "CLIP_stop_at_last_layers", value)[0]


# --- gradio ---------------------------------------------------------------------------------------


@dataclass
class _QuickSettings:
    """The quicksettings row's widgets; the VAE and Clip skip ones exist only when listed."""

    checkpoint: gr.Dropdown
    refresh_checkpoints: gr.Button
    vae: gr.Dropdown | None = None
    refresh_vaes: gr.Button | None = None
    clip_skip: gr.Slider | None = None
    others: dict[str, gr.components.Component] = field(default_factory=dict)


def build(context, shared: UiShared) -> None:
    """The quicksettings row; fills `shared.checkpoint_dropdown`, `shared.checkpoint_switched` and
    `shared.model_status`."""
    row = _build_quicksettings_row(context)
    status = gr.HTML(model_status(context)[0], elem_id="model_status", js_on_load=None)
    timer = gr.Timer(1.0, active=True)

    switched = _wire_quicksettings(context, row, status)
    _wire_status_refresh(context, shared, row, status, timer)
    shared.checkpoint_dropdown = row.checkpoint
    shared.checkpoint_switched = switched
    shared.model_status = status


def _build_quicksettings_row(context) -> _QuickSettings:
    """Checkpoint dropdown with refresh, then one widget per `quicksettings_list` entry."""
    from modules.serving.settings import locked_settings
    from modules.ui.extension_settings import extension_setting_component
    from modules.ui.settings_tab import setting_component, top_bar_keys

    settings = context.settings.current()
    specs = context.settings.specs_by_key()
    keys = top_bar_keys(settings, locked_settings(context.args), specs)
    vae_locked = bool(getattr(context.args, "vae_path", None))
    with gr.Row(elem_id="quicksettings", equal_height=True):
        checkpoint = gr.Dropdown(choices=checkpoint_choices(context), value=current_checkpoint_title(context),
                                 label="Stable Diffusion checkpoint", elem_id="setting_sd_model_checkpoint",
                                 scale=4, min_width=320)
        refresh_checkpoints = gr.Button(REFRESH_SYMBOL, elem_id="refresh_sd_model_checkpoint",
                                        elem_classes=["tool"], scale=0, min_width=40)
        row = _QuickSettings(checkpoint, refresh_checkpoints)
        for key in keys[1:]:
            if key == "sd_vae":
                row.vae = gr.Dropdown(choices=context.vaes.choices(), value=settings["sd_vae"], label="SD VAE",
                                      elem_id="setting_sd_vae", interactive=not vae_locked, scale=2, min_width=200,
                                      info="fixed by --vae-path" if vae_locked else None)
                row.refresh_vaes = gr.Button(REFRESH_SYMBOL, elem_id="refresh_sd_vae", elem_classes=["tool"], scale=0,
                                             min_width=40)
            elif key == "CLIP_stop_at_last_layers":
                row.clip_skip = gr.Slider(1, 12, value=settings["CLIP_stop_at_last_layers"], step=1,
                                          label="Clip skip", elem_id="setting_CLIP_stop_at_last_layers", scale=2,
                                          min_width=200)
            elif context.extension_options.get(key) is not None:
                row.others[key] = extension_setting_component(context, context.extension_options.get(key),
                                                              specs[key], settings[key])
            else:
                row.others[key] = setting_component(specs[key], settings[key])
    return row


def switch_outputs(context, title: str, user: User = SHARED_USER):
    """`switch_checkpoint` as (status line, checkpoint dropdown) updates, for any control that
    switches the checkpoint (the dropdown, a checkpoint card). With `--multi-user`, `user`'s own
    checkpoint is chosen instead (nothing loads now; see the module docstring)."""
    if own_choices(user):
        status, shown = change_own_choice(context, user, "sd_model_checkpoint", title)
        yield status, gr.update(choices=checkpoint_choices(context), value=shown)
        return
    for update in switch_checkpoint(context, title):
        if update.finished:
            yield update.status_html, gr.update(choices=checkpoint_choices(context), value=update.title)
        else:
            yield update.status_html, gr.skip()


def _wire_quicksettings(context, row: _QuickSettings, status: gr.HTML):
    """What choosing a checkpoint, VAE, Clip skip or other quicksetting does; returns the checkpoint
    switch's event (other tabs chain on it)."""
    def on_switch(title: str, request: gr.Request | None = None):
        yield from switch_outputs(context, title, caller(context, request))

    checkpoint = row.checkpoint
    switched = checkpoint.input(on_switch, inputs=checkpoint, outputs=[status, checkpoint], show_progress="hidden",
                                concurrency_limit=None)
    def on_refresh_checkpoints(request: gr.Request | None = None):
        return _refreshed_checkpoints(context, caller(context, request))

    row.refresh_checkpoints.click(on_refresh_checkpoints, outputs=checkpoint, show_progress="hidden")
    if row.vae is not None:
        def on_vae(name: str, request: gr.Request | None = None):
            user = caller(context, request)
            if own_choices(user):
                yield change_own_choice(context, user, "sd_vae", name)
                return
            yield "<p class='model-status loading'>Applying the VAE (after any running job)…</p>", gr.skip()
            yield apply_vae(context, name)

        row.vae.input(on_vae, inputs=row.vae, outputs=[status, row.vae], show_progress="hidden",
                      concurrency_limit=None)
        def on_refresh_vaes(request: gr.Request | None = None):
            return _refreshed_vaes(context, caller(context, request))

        row.refresh_vaes.click(on_refresh_vaes, outputs=row.vae, show_progress="hidden")
    if row.clip_skip is not None:
        # The slider shows the value in effect afterwards: the previous one after a refusal.
        def on_clip_skip(value: float, request: gr.Request | None = None):
            user = caller(context, request)
            if own_choices(user):
                return change_own_choice(context, user, "CLIP_stop_at_last_layers", value)
            return apply_clip_skip(context, value), context.settings.current()["CLIP_stop_at_last_layers"]

        row.clip_skip.release(on_clip_skip, inputs=row.clip_skip, outputs=[status, row.clip_skip],
                              show_progress="hidden")
    for key, component in row.others.items():
        def on_other(value, request: gr.Request | None = None, key=key):
            return quicksetting_changed(context, key, value, caller(context, request))

        component.input(on_other, inputs=component, outputs=[status, component], show_progress="hidden")
    return switched


def _server_view(context, user: User = SHARED_USER) -> dict[str, Any]:
    """What the top bar shows of the server's state, comparable between ticks (plain JSON values);
    the title is `user`'s own choice with --multi-user."""
    choices = [list(choice) if isinstance(choice, (list, tuple)) else choice for choice in checkpoint_choices(context)]
    return {"title": shown_choices(context, user)["sd_model_checkpoint"], "choices": choices,
            "status": model_status(context)[0]}


def _wire_status_refresh(context, shared: UiShared, row: _QuickSettings, status: gr.HTML, timer: gr.Timer) -> None:
    """Keep the row current: the timer follows a load in progress, and each page load re-reads it all."""
    from modules.ui.settings_tab import widget_value

    checkpoint, vae, clip_skip, others = row.checkpoint, row.vae, row.clip_skip, row.others

    def on_tick(request: gr.Request | None = None):
        html_status, loading = model_status(context)
        if loading:
            return html_status, gr.skip(), gr.skip()
        title = shown_choices(context, caller(context, request))["sd_model_checkpoint"]
        return html_status, gr.update(choices=checkpoint_choices(context), value=title), gr.Timer(active=False)

    shared.model_status_ticks = timer.tick(on_tick, outputs=[status, checkpoint, timer], show_progress="hidden",
                                           concurrency_limit=None)

    # Every open page follows what another page (or the API) changed: a checkpoint switched or a
    # "Merge and load" trial elsewhere reaches this dropdown within WATCH_SECONDS. Only a change is
    # sent; a switch this page started and is still waiting for is not undone (the server's title
    # has not changed yet, so nothing is sent).
    seen = gr.State(None)

    def on_watch(last, request: gr.Request | None = None):
        now = _server_view(context, caller(context, request))
        if now == last:
            return gr.skip(), gr.skip(), gr.skip()
        return now["status"], gr.update(choices=[tuple(c) if isinstance(c, list) else c for c in now["choices"]],
                                        value=now["title"]), now

    gr.Timer(WATCH_SECONDS).tick(on_watch, inputs=seen, outputs=[status, checkpoint, seen], show_progress="hidden",
                                 queue=False)

    def on_page_load(request: gr.Request | None = None):
        user = caller(context, request)
        html_status, loading = model_status(context)
        current = context.settings.current()
        shown = shown_choices(context, user)
        updates = [gr.update(choices=checkpoint_choices(context), value=shown["sd_model_checkpoint"]),
                   html_status, gr.Timer(active=loading)]
        if vae is not None:
            updates.append(gr.update(choices=context.vaes.choices(), value=shown["sd_vae"]))
        if clip_skip is not None:
            updates.append(shown["CLIP_stop_at_last_layers"])
        specs = context.settings.specs_by_key()
        updates += [widget_value(specs[key], current[key]) for key in others]
        return [*updates, _server_view(context, user)]

    outputs = [checkpoint, status, timer, *(c for c in (vae, clip_skip) if c is not None), *others.values(), seen]
    shared.page_loads.append((on_page_load, outputs))


def _refreshed_checkpoints(context, user: User = SHARED_USER):
    context.checkpoints.refresh()
    if context.upscalers is not None:  # A1111 rescans upscalers only on Reload UI; one button is handier
        context.upscalers.registry.refresh()
    return gr.update(choices=checkpoint_choices(context), value=shown_choices(context, user)["sd_model_checkpoint"])


def _refreshed_vaes(context, user: User = SHARED_USER):
    context.vaes.refresh()
    return gr.update(choices=context.vaes.choices(), value=shown_choices(context, user)["sd_vae"])
