"""The extra-networks panel: what a card inserts, toggling in the prompt, and skipped embeddings with reasons."""

from __future__ import annotations

import pytest
import torch

from modules.networks.activation import embedding_widths
from modules.library.safetensors_io import save_file
from modules.networks.textual_inversion import save_embedding
from modules.ui.extra_networks_panel import (
    HYPERNETWORK,
    LORA,
    TEXTUAL_INVERSION,
    apply_card_click,
    insertion_text,
    list_networks,
    render_html,
    toggle_in_prompt,
)
from tests.ui_support import make_context


def test_insertion_text():
    assert insertion_text(HYPERNETWORK, "anime") == "<hypernet:anime:1>"
    assert insertion_text(LORA, "detail_tweaker", 0.8) == "<lora:detail_tweaker:0.8>"
    assert insertion_text(TEXTUAL_INVERSION, "EasyNegative") == "EasyNegative"
    with pytest.raises(ValueError, match="unknown extra network kind"):
        insertion_text("checkpoint", "x")


def test_toggle_adds_with_one_space_and_removes_again():
    assert toggle_in_prompt("", "<lora:x:1>") == "<lora:x:1>"
    assert toggle_in_prompt("a cat", "<lora:x:1>") == "a cat <lora:x:1>"
    assert toggle_in_prompt("a cat\n", "<lora:x:1>") == "a cat\n<lora:x:1>"
    # A tag already there goes away whatever its multiplier.
    assert toggle_in_prompt("a cat <lora:x:0.4>", "<lora:x:1>") == "a cat"
    assert toggle_in_prompt("<lora:x:0.4> a cat", "<lora:x:1>") == "a cat"
    assert toggle_in_prompt("a <lora:xy:1>", "<lora:x:1>") == "a <lora:xy:1> <lora:x:1>"
    # An embedding's name is a whole word, not part of another.
    assert toggle_in_prompt("bad hands, EasyNegative", "EasyNegative") == "bad hands,"
    assert toggle_in_prompt("EasyNegativeV2", "EasyNegative") == "EasyNegativeV2 EasyNegative"


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("networks")
    context = make_context(data_dir)
    width = embedding_widths(context.models.current())["default"]
    save_embedding(data_dir / "embeddings" / "fits.pt", torch.zeros(2, width))
    save_embedding(data_dir / "embeddings" / "sd2only.safetensors", torch.zeros(1, 1024))
    (data_dir / "embeddings" / "garbage.pt").write_bytes(b"this is not an embedding")
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(1, 4)}, data_dir / "models" / "Lora" / "detail.safetensors",
              metadata={"ss_output_name": "detail_v2"})
    (data_dir / "models" / "hypernetworks" / "anime.pt").write_bytes(b"listed by name; loaded only when used")
    context.refresh()
    yield context
    context.jobs.shutdown()


def test_listing_marks_skipped_embeddings_with_reasons(context):
    listing = list_networks(context)
    cards = {(card.kind, card.name): card for card in listing.cards}
    assert cards[(TEXTUAL_INVERSION, "fits")].text == "fits"
    assert cards[(TEXTUAL_INVERSION, "fits")].description == "2 vectors"
    assert cards[(HYPERNETWORK, "anime")].text == "<hypernet:anime:1>"
    assert cards[(LORA, "detail")].text == "<lora:detail:1>"
    assert "detail_v2" in cards[(LORA, "detail")].description
    skipped = {entry.name: entry.reason for entry in listing.skipped}
    assert "1024 wide" in skipped["sd2only"] and "SD 2.x" in skipped["sd2only"]
    assert skipped["garbage.pt"].startswith("could not be read")
    assert (TEXTUAL_INVERSION, "sd2only") not in cards


def test_html_has_the_cards_the_browser_tests_click(context):
    page = render_html(list_networks(context))
    assert "class='extra-network-item' data-kind='hypernetwork' data-name='anime'" in page
    assert "class='extra-network-skipped'" in page and "sd2only" in page and "1024 wide" in page


def test_default_multiplier_setting_is_used(context):
    try:
        context.settings.apply({"extra_networks_default_multiplier": 0.6})
        assert list_networks(context).card(LORA, "detail").text == "<lora:detail:0.6>"
    finally:
        context.settings.apply({"extra_networks_default_multiplier": 1.0})


def test_card_click_inserts_into_the_right_prompt(context):
    assert apply_card_click(context, HYPERNETWORK, "anime", "a cat", "") == ("a cat <hypernet:anime:1>", "")
    assert apply_card_click(context, TEXTUAL_INVERSION, "fits", "a cat", "lowres", to_negative=True) == (
        "a cat", "lowres fits")
    # Tags are not parsed in the negative prompt, so they always go to the prompt.
    assert apply_card_click(context, LORA, "detail", "a", "b", to_negative=True) == ("a <lora:detail:1>", "b")
    # Unknown or skipped names (e.g. a forged click) change nothing.
    assert apply_card_click(context, TEXTUAL_INVERSION, "sd2only", "a", "b") == ("a", "b")
    assert apply_card_click(context, LORA, "nope", "a", "b") == ("a", "b")
