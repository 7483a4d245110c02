"""The Settings tab: its widgets and ids, Apply (A1111's flat config.json, the report, per-field
refusals, only edited fields) and a corrupt config.json at start-up."""

from __future__ import annotations

import json

import gradio as gr
import pytest

from modules.serving.app_context import AppContext
from modules.serving.cmd_args import parse_args
from modules.ui import settings_tab
from modules.ui.settings_tab import SettingsHandlers, tab_specs, top_bar_keys
from modules.ui.shared import UiShared


def make_context(data_dir) -> AppContext:
    return AppContext.from_args(parse_args(["--data-dir", str(data_dir)]))


@pytest.fixture
def context(tmp_path):
    return make_context(tmp_path)


def element_ids(blocks: gr.Blocks) -> set[str]:
    return {block.elem_id for block in blocks.blocks.values() if getattr(block, "elem_id", None)}


def edit(handlers: SettingsHandlers, **changes) -> list:
    """The widget values after the user changed `changes` on a freshly loaded page."""
    values = handlers.current_values()
    keys = [spec.key for spec in handlers.specs]
    for key, value in changes.items():
        values[keys.index(key)] = value
    return values


def test_build_gives_every_setting_its_a1111_id(context):
    shared = UiShared()
    with gr.Blocks() as demo, gr.Tab("Settings"):
        settings_tab.build(context, shared)
    ids = element_ids(demo)
    [(load, outputs)] = shared.page_loads  # the shell runs it when a page opens
    assert len(load()) == len(outputs)
    assert {"settings_submit", "settings_result", "settings_restart_gradio"} <= ids
    for key in ("sd_checkpoints_limit", "sd_vae_overrides_per_model_preferences", "samples_format",
                "outdir_txt2img_samples", "samples_filename_pattern", "add_model_hash_to_info", "randn_source",
                "eta_noise_seed_delta", "emphasis", "comma_padding_backtrack", "quicksettings_list"):
        assert f"setting_{key}" in ids, key
    # The top bar's settings keep their ids there; two widgets with one id would break A1111's CSS/JS.
    on_top = top_bar_keys(context.settings.current())
    assert on_top == ["sd_model_checkpoint", "sd_vae", "CLIP_stop_at_last_layers"]  # the default quicksettings
    assert not {f"setting_{key}" for key in on_top} & ids
    assert "setting_sd_checkpoint_hash" not in ids  # kept by the program, not edited


def test_apply_writes_a1111_flat_config_and_reports_changes(context, tmp_path):
    handlers = SettingsHandlers(context, tab_specs(context.settings.current()))
    loaded = handlers.snapshot()
    report, snapshot = handlers.apply(loaded, *edit(handlers, sd_checkpoints_limit=3, randn_source="CPU"))
    assert "2 settings changed: sd_checkpoints_limit, randn_source." in report
    config = tmp_path / "config.json"
    assert json.loads(config.read_text()) == {"sd_checkpoints_limit": 3, "randn_source": "CPU"}
    assert '\n    "sd_checkpoints_limit": 3' in config.read_text()
    assert snapshot["sd_checkpoints_limit"] == 3
    # Applying again without edits changes nothing.
    report, _ = handlers.apply(snapshot, *handlers.current_values())
    assert "0 settings changed." in report


def test_widget_numbers_are_stored_with_the_settings_type(context, tmp_path):
    handlers = SettingsHandlers(context, tab_specs(context.settings.current()))
    handlers.apply(handlers.snapshot(), *edit(handlers, jpeg_quality=95.0, eta_noise_seed_delta=31337.0))
    stored = json.loads((tmp_path / "config.json").read_text())
    assert stored == {"jpeg_quality": 95, "eta_noise_seed_delta": 31337}
    assert all(isinstance(v, int) for v in stored.values())


def test_a_bad_value_is_refused_with_the_field_named_and_the_rest_saved(context, tmp_path):
    handlers = SettingsHandlers(context, tab_specs(context.settings.current()))
    report, snapshot = handlers.apply(handlers.snapshot(),
                                      *edit(handlers, jpeg_quality=500, comma_padding_backtrack=10,
                                            samples_format="nope"))
    assert "1 setting changed: comma_padding_backtrack." in report
    assert "Not saved" in report and "Quality for saved jpeg and webp images" in report and "jpeg_quality" in report
    assert "between 1 and 100" in report and "samples_format" in report and "image file extension" in report
    assert "Traceback" not in report
    assert json.loads((tmp_path / "config.json").read_text()) == {"comma_padding_backtrack": 10}
    assert snapshot["jpeg_quality"] == 80  # the value in effect


def test_only_fields_edited_on_the_page_are_applied(context):
    handlers = SettingsHandlers(context, tab_specs(context.settings.current()))
    loaded = handlers.snapshot()
    values = edit(handlers, sd_checkpoints_limit=2)
    context.settings.apply({"randn_source": "NV"})  # another client, after this page loaded
    report, _ = handlers.apply(loaded, *values)
    assert "1 setting changed: sd_checkpoints_limit." in report
    assert context.settings.current()["randn_source"] == "NV"


def test_quicksettings_list_is_saved_as_a_list_and_asks_for_a_restart(context, tmp_path):
    handlers = SettingsHandlers(context, tab_specs(context.settings.current()))
    report, _ = handlers.apply(handlers.snapshot(),
                               *edit(handlers, quicksettings_list=["sd_model_checkpoint", "sd_vae"]))
    assert "Restart Atelier for Quicksettings list" in report
    assert json.loads((tmp_path / "config.json").read_text()) == {
        "quicksettings_list": ["sd_model_checkpoint", "sd_vae"]}
    assert handlers.snapshot()["quicksettings_list"] == ["sd_model_checkpoint", "sd_vae"]


def test_page_load_reads_the_values_in_effect(context):
    handlers = SettingsHandlers(context, tab_specs(context.settings.current()))
    context.settings.apply({"samples_format": "webp"})
    loaded, *values = handlers.load()
    index = [spec.key for spec in handlers.specs].index("samples_format")
    assert values[index] == "webp" and loaded["samples_format"] == "webp"


def test_corrupt_config_is_moved_aside_and_the_tab_shows_defaults(tmp_path, caplog):
    (tmp_path / "config.json").write_text('{"sd_checkpoints_limit": 3,')
    context = make_context(tmp_path)
    assert (tmp_path / "tmp" / "config.json").read_text() == '{"sd_checkpoints_limit": 3,'
    assert not (tmp_path / "config.json").exists() and "corrupted" in caplog.text
    handlers = SettingsHandlers(context, tab_specs(context.settings.current()))
    assert handlers.snapshot()["sd_checkpoints_limit"] == 1
    with gr.Blocks():
        settings_tab.build(context, UiShared())


def test_hide_ui_dir_config_keeps_folders_and_patterns_out_of_the_page(tmp_path):
    """A1111's --hide-ui-dir-config: where files are written is the server owner's choice."""
    from modules.serving.settings import DIR_CONFIG_SETTINGS

    context = AppContext.from_args(parse_args(["--data-dir", str(tmp_path), "--hide-ui-dir-config"]))
    context.settings.apply({"quicksettings_list": ["sd_model_checkpoint", "outdir_txt2img_samples"]})
    shared = UiShared()
    with gr.Blocks() as demo, gr.Tab("Settings"):
        from modules.ui import top_bar

        top_bar.build(context, shared)
        settings_tab.build(context, shared)
    ids = element_ids(demo)
    assert not {f"setting_{key}" for key in DIR_CONFIG_SETTINGS} & ids
    assert "setting_samples_format" in ids  # the rest of the saving section stays
    open_context = make_context(tmp_path / "open")
    assert "setting_outdir_txt2img_samples" in {f"setting_{spec.key}" for spec in
                                                tab_specs(open_context.settings.current())}


def test_sd_vae_changed_in_the_tab_is_applied_to_the_loaded_model(tmp_path):
    """With SD VAE out of the top bar (quicksettings_list), the Settings tab edits it and the loaded
    model gets it at once, as from the top bar."""
    from tests.ui_support import make_context as loaded_context

    context = loaded_context(tmp_path)
    try:
        context.settings.apply({"quicksettings_list": ["sd_model_checkpoint"]})
        handlers = SettingsHandlers(context, tab_specs(context.settings.current()))
        applied = []
        refresh = context.models.refresh_vae
        context.models.refresh_vae = lambda: (applied.append(True), refresh())[1]  # this test's probe only
        report, _ = handlers.apply(handlers.snapshot(), *edit(handlers, sd_vae="None"))
        assert "The VAE of the current model was updated." in report and applied == [True]
        assert context.settings.current()["sd_vae"] == "None"
    finally:
        context.jobs.shutdown()
