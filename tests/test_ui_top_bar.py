"""The top bar: checkpoint switching through the job queue (waits for a running job; a failed load
shows the error and keeps the previous model), model status while loading, VAE and clip skip."""

from __future__ import annotations

import threading

import pytest

from modules.ui.top_bar import (
    apply_clip_skip,
    apply_vae,
    checkpoint_choices,
    current_checkpoint_title,
    model_status,
    switch_checkpoint,
)
from tests.ui_support import make_context

WAIT = 30.0


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("topbar")
    context = make_context(data_dir, ("a.safetensors", "b.safetensors"))
    # A checkpoint whose tensors are cut off: listed (the header is fine), but it cannot load.
    good = (data_dir / "models" / "Stable-diffusion" / "a.safetensors").read_bytes()
    (data_dir / "models" / "Stable-diffusion" / "broken.safetensors").write_bytes(good[: len(good) // 3])
    context.checkpoints.refresh()
    yield context
    context.jobs.shutdown()


def final(updates):
    updates = list(updates)
    assert updates[-1].finished and all(not u.finished for u in updates[:-1])
    return updates, updates[-1]


def test_status_says_what_is_loaded_and_while_loading(context):
    status, loading = model_status(context)
    assert not loading and "Loaded" in status and context.models.current_info().name in status
    with context.load_state.lock:
        context.load_state.loading = True
    try:
        status, loading = model_status(context)
        assert loading and "Loading checkpoint…" in status
    finally:
        with context.load_state.lock:
            context.load_state.loading = False


def test_switch_loads_the_checkpoint_and_remembers_it(context):
    b_title = next(title for _, title in checkpoint_choices(context) if title.startswith("b.safetensors"))
    _, done = final(switch_checkpoint(context, b_title, poll_seconds=0.01))
    assert context.models.current_info().name == "b.safetensors"
    assert done.title == current_checkpoint_title(context) == context.models.current_info().title
    assert "Loaded" in done.status_html and "b.safetensors" in done.status_html
    assert context.settings.current()["sd_model_checkpoint"] == context.models.current_info().title
    # Picking the loaded one again does nothing but say so.
    updates, again = final(switch_checkpoint(context, done.title))
    assert len(updates) == 1 and again.title == done.title


def test_failed_switch_shows_the_error_and_keeps_the_previous_model(context):
    before = context.models.current_info()
    broken = next(title for _, title in checkpoint_choices(context) if title.startswith("broken"))
    _, done = final(switch_checkpoint(context, broken, poll_seconds=0.01))
    assert "Could not load broken.safetensors" in done.status_html and "class='error'" in done.status_html
    assert f"Still using {before.title}" in done.status_html
    assert done.title == before.title  # the dropdown goes back
    assert context.models.current_info().filename == before.filename
    assert context.models.current() is not None


def test_switch_waits_for_the_running_job(context):
    started, release = threading.Event(), threading.Event()

    def blocker(control):
        started.set()
        assert release.wait(WAIT)

    job = context.jobs.submit(blocker, kind="test")
    assert started.wait(WAIT)
    other = "a.safetensors" if context.models.current_info().name != "a.safetensors" else "b.safetensors"
    target = next(title for _, title in checkpoint_choices(context) if title.startswith(other))
    updates = switch_checkpoint(context, target, poll_seconds=0.01)
    first = next(updates)
    assert not first.finished and "after the running job" in first.status_html
    assert context.models.current_info().name != other  # not while the job runs
    release.set()
    rest = list(updates)
    assert rest[-1].finished and context.models.current_info().name == other
    assert job.wait(WAIT).state.value == "done"


def test_clip_skip_and_vae_settings(context):
    assert "Loaded" in apply_clip_skip(context, 2.0)
    assert context.settings.current()["CLIP_stop_at_last_layers"] == 2
    assert "must be between 1 and 12" in apply_clip_skip(context, 13)
    assert context.settings.current()["CLIP_stop_at_last_layers"] == 2
    apply_clip_skip(context, 1)

    message, shown = apply_vae(context, "no-such.vae.pt")
    assert "Unknown VAE &#x27;no-such.vae.pt&#x27;" in message and context.settings.current()["sd_vae"] == "Automatic"
    assert shown == "Automatic"  # the dropdown goes back to what is in effect
    message, shown = apply_vae(context, "None")
    assert "Loaded" in message and shown == "None" and context.settings.current()["sd_vae"] == "None"

    def broken_refresh():
        raise RuntimeError("the VAE file is damaged")

    context.models.refresh_vae = broken_refresh  # an instance attribute, for this test only
    try:
        message, shown = apply_vae(context, "Automatic")
    finally:
        del context.models.refresh_vae
    assert "Could not apply VAE Automatic" in message and "damaged" in message
    assert shown == "None" and context.settings.current()["sd_vae"] == "None"
    assert "Loaded" in apply_vae(context, "Automatic")[0]


def test_status_does_not_wait_for_a_job_holding_the_model(context):
    # A generation holds the model manager's lock from start to end; the top bar, page loads and
    # the token counter read the current model meanwhile and must not wait for it.
    holding, release = threading.Event(), threading.Event()

    def hold():
        with context.models.lock:
            holding.set()
            release.wait(WAIT)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert holding.wait(WAIT)
        answers = []
        reader = threading.Thread(target=lambda: answers.append((model_status(context), current_checkpoint_title(context))))
        reader.start()
        reader.join(WAIT)
        assert not reader.is_alive() and "Loaded" in answers[0][0][0]
    finally:
        release.set()
        holder.join(WAIT)


def test_quicksettings_list_decides_what_the_top_bar_shows(tmp_path):
    """A setting in `quicksettings_list` moves from the Settings tab to the top bar (A1111's rule);
    the checkpoint is always there."""
    import gradio as gr

    from modules.serving.settings import SettingsStore
    from modules.ui import settings_tab, top_bar
    from modules.ui.shared import UiShared

    context = make_context(tmp_path, load=False)
    try:
        SettingsStore(context.paths.config_file).apply({"quicksettings_list": ["samples_format", "sd_vae", "nope"]})
        context.settings = SettingsStore(context.paths.config_file)  # as read at the next start
        shared = UiShared()
        with gr.Blocks() as page:
            top_bar.build(context, shared)
            settings_tab.build(context, shared)
        ids = [getattr(block, "elem_id", None) for block in page.blocks.values()]
        assert ids.count("setting_samples_format") == 1 and ids.count("setting_sd_vae") == 1
        assert "setting_CLIP_stop_at_last_layers" in ids  # back in the Settings tab
        assert ids.index("setting_samples_format") < ids.index("settings_submit")  # in the top bar
        for load, outputs in shared.page_loads:
            assert len(load()) == len(outputs)
        assert "jpg" not in top_bar.apply_quicksetting(context, "samples_format", "jpg")
        assert context.settings.current()["samples_format"] == "jpg"
        assert "Pillow can write" in top_bar.apply_quicksetting(context, "samples_format", "nonsense")
        assert context.settings.current()["samples_format"] == "jpg"
    finally:
        context.jobs.shutdown()


def test_status_says_loudly_when_the_demo_checkpoint_is_loaded(tmp_path):
    from modules.serving.app_context import DEMO_CHECKPOINT_NAME

    context = make_context(tmp_path, (DEMO_CHECKPOINT_NAME,))
    try:
        status, _ = model_status(context)
        assert "RANDOM weights" in status and str(context.paths.checkpoints_dir) in status
    finally:
        context.jobs.shutdown()
    other = make_context(tmp_path / "real")
    try:
        assert "RANDOM" not in model_status(other)[0]
    finally:
        other.jobs.shutdown()
