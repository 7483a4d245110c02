"""Settings tab additions: the search box, the "Live previews" and "Extra Networks" sections, and the
default extra-network multiplier's effect on the cards."""

from __future__ import annotations

import gradio as gr
import pytest

from modules.serving.app_context import AppContext
from modules.serving.cmd_args import parse_args
from modules.serving.settings import SCHEMA_BY_KEY, SECTIONS, SettingsValidationError
from modules.ui import settings_tab
from modules.ui.extra_networks_panel import HYPERNETWORK, apply_card_click, insertion_text, list_networks
from modules.ui.settings_tab import SettingsHandlers, tab_specs
from modules.ui.shared import UiShared

LIVE_PREVIEW_KEYS = ("show_progressbar", "live_previews_enable", "live_previews_image_format", "show_progress_grid",
                     "show_progress_every_n_steps", "show_progress_type", "live_preview_content",
                     "live_preview_refresh_period", "live_preview_fast_interrupt")


@pytest.fixture
def context(tmp_path):
    return AppContext.from_args(parse_args(["--data-dir", str(tmp_path)]))


def built(context) -> gr.Blocks:
    with gr.Blocks() as demo, gr.Tab("Settings"):
        settings_tab.build(context, UiShared())
    return demo


def test_the_tab_shows_the_live_previews_and_extra_networks_sections(context):
    demo = built(context)
    ids = {block.elem_id for block in demo.blocks.values() if getattr(block, "elem_id", None)}
    assert {"settings_section_live-previews", "settings_section_extra-networks"} <= ids
    for key in (*LIVE_PREVIEW_KEYS, "extra_networks_default_multiplier"):
        assert f"setting_{key}" in ids, key
    assert SECTIONS["live-previews"] == "Live previews" and SECTIONS["extra-networks"] == "Extra Networks"


def test_the_search_box_filters_in_the_page_only(context):
    demo = built(context)
    [search] = [block for block in demo.blocks.values() if getattr(block, "elem_id", None) == "settings_search"]
    assert isinstance(search, gr.Textbox)
    events = [dep for dep in demo.config["dependencies"] if search._id in [t[0] for t in dep["targets"]]]
    assert len(events) == 1
    [event] = events
    # No server function: typing costs no request; the page's script hides and shows the settings.
    assert event["backend_fn"] is False and event["js"] == settings_tab.SEARCH_JS
    assert "[id^=\"setting_\"]" in event["js"] and "settings_section_" in event["js"]


def test_live_preview_settings_are_applied_from_the_tab(context, tmp_path):
    handlers = SettingsHandlers(context, tab_specs(context.settings.current()))
    keys = [spec.key for spec in handlers.specs]
    values = handlers.current_values()
    for key, value in (("show_progress_every_n_steps", 3), ("show_progress_type", "Full"),
                       ("show_progress_grid", False)):
        values[keys.index(key)] = value
    report, _, *_ = handlers.apply_and_show(handlers.snapshot(), *values)
    assert "3 settings changed" in report
    current = context.settings.current()
    assert (current["show_progress_every_n_steps"], current["show_progress_type"], current["show_progress_grid"]) \
        == (3, "Full", False)


@pytest.mark.parametrize("key, bad", [("show_progress_every_n_steps", -2), ("show_progress_every_n_steps", 33),
                                      ("show_progress_type", "Approx fancy"),
                                      ("extra_networks_default_multiplier", 2.5)])
def test_out_of_range_values_are_refused_naming_the_setting(context, key, bad):
    with pytest.raises(SettingsValidationError) as refused:
        context.settings.apply({key: bad})
    assert str(bad) in refused.value.errors[key]


def test_the_default_multiplier_goes_into_the_text_a_card_inserts(context):
    hypernetworks = context.paths.data_dir / "models" / "hypernetworks"
    hypernetworks.mkdir(parents=True, exist_ok=True)
    (hypernetworks / "anime.pt").write_bytes(b"not read to list it")
    context.hypernetworks.refresh()
    assert "anime" in context.hypernetworks.names()
    context.settings.apply({"extra_networks_default_multiplier": 0.35})
    card = list_networks(context).card(HYPERNETWORK, "anime")
    assert card.text == "<hypernet:anime:0.35>" == insertion_text(HYPERNETWORK, "anime", 0.35)
    assert apply_card_click(context, HYPERNETWORK, "anime", "a cat", "")[0] == "a cat <hypernet:anime:0.35>"
    context.settings.apply({"extra_networks_default_multiplier": SCHEMA_BY_KEY[
        "extra_networks_default_multiplier"].default})
    assert list_networks(context).card(HYPERNETWORK, "anime").text == "<hypernet:anime:1>"
