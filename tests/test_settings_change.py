"""One settings-change path (modules.serving.settings_change) for `POST /sdapi/v1/options`, the top
bar and the Settings tab: when a new value cannot be applied to the loaded model (here a VAE file of
garbage bytes), the previous value comes back everywhere — `settings.current()`, config.json on
disk, GET options, the widget — and the message names the key and the reason (A1111's `opts.set`
puts the old value back when the setting's onchange raises).

Names added with the shared path are imported inside the tests that need them, so each test that
checks a behaviour fails on the old code by its assertion, not by an import error."""

from __future__ import annotations

import html
import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from modules.api.server import create_app
from modules.ui import top_bar
from modules.ui.settings_tab import SettingsHandlers, tab_specs
from tests.ui_support import make_context

BROKEN_VAE = "broken.vae.safetensors"
# The VAE a checkpoint's user metadata asks for: used when the SD VAE setting does not override it.
CHECKPOINT = "tiny.safetensors"


@pytest.fixture
def context(tmp_path):
    """A loaded tiny checkpoint using its own VAE (`sd_vae` = None, overriding per-model choices),
    with a VAE file of garbage bytes listed, which its user metadata (`tiny.json`) names: choosing
    that file, Automatic, or letting the per-model choice win all fail to apply."""
    (tmp_path / "models" / "VAE").mkdir(parents=True)
    (tmp_path / "models" / "VAE" / BROKEN_VAE).write_bytes(b"not a safetensors file" * 8)
    (tmp_path / "models" / "Stable-diffusion").mkdir(parents=True)
    (tmp_path / "models" / "Stable-diffusion" / "tiny.json").write_text(json.dumps({"vae": BROKEN_VAE}))
    (tmp_path / "config.json").write_text(json.dumps({"sd_vae": "None", "jpeg_quality": 70}))
    context = make_context(tmp_path, (CHECKPOINT,))
    assert BROKEN_VAE in context.vaes.choices() and context.models.current().vae_file is None
    yield context
    context.jobs.shutdown()


def on_disk(context) -> dict:
    return json.loads(Path(context.paths.config_file).read_text(encoding="utf-8"))


def assert_previous_vae_everywhere(context, previous: str = "None") -> None:
    assert context.settings.current()["sd_vae"] == previous
    assert on_disk(context).get("sd_vae", "Automatic") == previous
    assert context.models.current().vae_file is None  # the model kept the VAE it had


# ---------------------------------------------------------------------------------------- the API


def test_api_puts_a_vae_that_fails_to_apply_back_and_says_why(context):
    client = TestClient(create_app(context, api=True))
    response = client.post("/sdapi/v1/options", json={"sd_vae": BROKEN_VAE, "jpeg_quality": 55})
    # A broken file the client chose is bad input (as a broken checkpoint is): 422, A1111's error shape.
    assert response.status_code == 422, response.text
    message = response.json()["errors"]
    assert "'sd_vae'" in message and "back to 'None'" in message and BROKEN_VAE in message
    assert "CheckpointLoadError" in message  # the reason: the file is not a safetensors file
    assert "jpeg_quality" in message  # what was changed beside it is said too
    assert_previous_vae_everywhere(context)
    assert client.get("/sdapi/v1/options").json()["sd_vae"] == "None"
    # The valid key applied beside it stays changed, as each key goes through A1111's opts.set.
    assert context.settings.current()["jpeg_quality"] == 55 and on_disk(context)["jpeg_quality"] == 55


def test_api_answers_a_fault_of_the_server_with_500_and_still_puts_the_value_back(context):
    client = TestClient(create_app(context, api=True))

    def out_of_memory():
        raise RuntimeError("CUDA out of memory")

    context.models.refresh_vae = out_of_memory  # an instance attribute: this test's seam only
    response = client.post("/sdapi/v1/options", json={"sd_vae_overrides_per_model_preferences": False})
    assert response.status_code == 500, response.text
    message = response.json()["errors"]
    assert "'sd_vae_overrides_per_model_preferences'" in message and "CUDA out of memory" in message
    assert context.settings.current()["sd_vae_overrides_per_model_preferences"] is True
    assert "sd_vae_overrides_per_model_preferences" not in on_disk(context)  # it was never stored before


def test_api_may_post_back_a_vae_whose_file_is_gone(context):
    """A value equal to the one in effect always passes (clients post back what GET options returned),
    as for every other check of the settings policy."""
    client = TestClient(create_app(context, api=True))
    context.settings.apply({"sd_vae": "gone.vae.pt"})  # config.json names a file deleted since
    options = client.get("/sdapi/v1/options").json()
    assert client.post("/sdapi/v1/options", json=options).status_code == 200
    response = client.post("/sdapi/v1/options", json={"sd_vae": "other-missing.pt"})
    assert response.status_code == 422 and "'sd_vae' must be one of" in response.json()["errors"]


# ------------------------------------------------------------------------------------- the top bar


def test_top_bar_vae_that_fails_to_apply_comes_back_with_the_key_and_reason(context):
    message, shown = top_bar.apply_vae(context, BROKEN_VAE)
    text = html.unescape(message)
    assert shown == "None"  # the dropdown shows the VAE in effect again
    assert "'sd_vae'" in text and "back to 'None'" in text and "CheckpointLoadError" in text
    assert_previous_vae_everywhere(context)
    # Automatic lets the checkpoint's user metadata pick the broken file: put back too.
    message, shown = top_bar.apply_vae(context, "Automatic")
    assert shown == "None" and "'sd_vae'" in html.unescape(message)
    assert_previous_vae_everywhere(context)


def test_top_bar_quicksetting_that_fails_to_apply_comes_back(context):
    key = "sd_vae_overrides_per_model_preferences"
    # Off: the checkpoint's own choice (its user metadata: the broken file) wins over SD VAE = None.
    text = html.unescape(top_bar.apply_quicksetting(context, key, False))
    assert f"'{key}'" in text and "back to True" in text and "CheckpointLoadError" in text
    assert context.settings.current()[key] is True and on_disk(context).get(key, True) is True
    assert context.models.current().vae_file is None

    from modules.ui.top_bar import quicksetting_changed

    status, shown = quicksetting_changed(context, key, False)
    assert shown is True and f"'{key}'" in html.unescape(status)  # the checkbox is ticked again


def test_top_bar_clip_skip_goes_through_the_settings_rules(context):
    """Clip skip is stored through the same path: a fraction is refused with the rule (it was cut
    to a whole number and saved), the range is checked, and a valid value is saved."""
    assert "whole number" in html.unescape(top_bar.apply_clip_skip(context, 2.5))
    assert context.settings.current()["CLIP_stop_at_last_layers"] == 1
    assert "must be between 1 and 12" in top_bar.apply_clip_skip(context, 13)
    assert "Loaded" in top_bar.apply_clip_skip(context, 2.0)
    assert context.settings.current()["CLIP_stop_at_last_layers"] == 2 and on_disk(context)["CLIP_stop_at_last_layers"] == 2


# ---------------------------------------------------------------------------------- the Settings tab


def settings_tab(context) -> SettingsHandlers:
    """The tab's handlers with SD VAE shown in the tab (out of the top bar's quicksettings_list)."""
    context.settings.apply({"quicksettings_list": ["sd_model_checkpoint"]})
    return SettingsHandlers(context, tab_specs(context.settings.current()))


def edited(handlers: SettingsHandlers, **changes) -> list:
    values = handlers.current_values()
    keys = [spec.key for spec in handlers.specs]
    for key, value in changes.items():
        values[keys.index(key)] = value
    return values


def test_settings_tab_puts_a_vae_that_fails_to_apply_back_and_reports_why(context):
    handlers = settings_tab(context)
    report, snapshot = handlers.apply(handlers.snapshot(), *edited(handlers, sd_vae=BROKEN_VAE, jpeg_quality=60))
    text = html.unescape(report)
    assert "sd_vae" in text and "back to 'None'" in text and "CheckpointLoadError" in text
    assert "1 setting changed: jpeg_quality." in text  # the other field is saved
    assert snapshot["sd_vae"] == "None" and snapshot["jpeg_quality"] == 60
    assert_previous_vae_everywhere(context)
    assert on_disk(context)["jpeg_quality"] == 60


def test_settings_tab_shows_the_previous_value_in_the_field_put_back(context):
    import gradio as gr

    handlers = settings_tab(context)
    keys = [spec.key for spec in handlers.specs]
    report, snapshot, *widgets = handlers.apply_and_show(handlers.snapshot(),
                                                         *edited(handlers, sd_vae=BROKEN_VAE, jpeg_quality=61))
    assert widgets[keys.index("sd_vae")] == "None"
    # Fields not put back keep what they hold (a refused one can be fixed where it was typed).
    assert widgets[keys.index("jpeg_quality")] == gr.skip()


def test_settings_tab_refuses_a_vae_that_is_not_listed(context):
    handlers = settings_tab(context)
    report, _ = handlers.apply(handlers.snapshot(), *edited(handlers, sd_vae="nope.vae.pt"))
    text = html.unescape(report)
    assert "Not saved" in text and "Unknown VAE 'nope.vae.pt'" in text and BROKEN_VAE in text
    assert context.settings.current()["sd_vae"] == "None"


# ----------------------------------------------------------------------------- the service itself


def test_one_report_for_every_caller(context):
    from modules.serving.settings_change import change_settings

    report = change_settings(context, {"sd_vae": BROKEN_VAE, "jpeg_quality": 0, "eta_ddim": 0.5}, api=False)
    assert report.changed == ("eta_ddim",) and set(report.refused) == {"jpeg_quality"}
    assert set(report.reverted) == {"sd_vae"} and report.failure is not None and not report.ok
    # The API's rules: one refusal and nothing at all is stored.
    report = change_settings(context, {"eta_ddim": 0.25, "jpeg_quality": 0}, api=True)
    assert report.changed == () and set(report.refused) == {"jpeg_quality"}
    assert context.settings.current()["eta_ddim"] == 0.5
    # Read-only keys are dropped; an unchanged VAE is not looked up again.
    report = change_settings(context, {"sd_checkpoint_hash": "x", "sd_vae": "None"}, api=True)
    assert report.ok and report.changed == ()


def test_put_back_leaves_a_value_someone_else_changed_since(tmp_path):
    from modules.serving.settings import SettingsStore

    store = SettingsStore(tmp_path / "config.json")
    store.apply({"sd_vae": "None", "eta_ddim": 0.5})
    before = store.stored()
    store.apply({"sd_vae": "a.pt", "jpeg_quality": 50, "eta_ddim": 0.7})
    store.apply({"eta_ddim": 0.9})  # another client, after this change
    put_back = store.put_back(before, {"sd_vae": "a.pt", "jpeg_quality": 50, "eta_ddim": 0.7})
    assert put_back == ["sd_vae", "jpeg_quality"]
    on_file = json.loads((tmp_path / "config.json").read_text())
    assert on_file == {"sd_vae": "None", "eta_ddim": 0.9}  # jpeg_quality was not stored before: removed again
    assert store.current()["jpeg_quality"] == 80
