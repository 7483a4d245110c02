"""The extra-networks panel: what a card inserts, toggling in the prompt, and skipped embeddings with reasons."""

from __future__ import annotations

import pytest
import torch

from modules.networks.activation import embedding_widths
from modules.library.safetensors_io import save_file
from modules.networks.textual_inversion import save_embedding
from modules.ui.extra_networks_panel import (
    CHECKPOINT,
    HYPERNETWORK,
    LORA,
    TEXTUAL_INVERSION,
    apply_card_click,
    checkpoint_for_card,
    insertion_text,
    list_networks,
    preview_url,
    render_html,
    toggle_in_prompt,
)
from tests.ui_support import make_context


def test_insertion_text():
    assert insertion_text(HYPERNETWORK, "anime") == "<hypernet:anime:1>"
    assert insertion_text(LORA, "detail_tweaker", 0.8) == "<lora:detail_tweaker:0.8>"
    assert insertion_text(TEXTUAL_INVERSION, "EasyNegative") == "EasyNegative"
    # A LoRA's activation text follows its tag after a space (A1111); other kinds take none.
    assert insertion_text(LORA, "x", 0.5, "tw1,  tw2\n") == "<lora:x:0.5> tw1, tw2"
    assert insertion_text(HYPERNETWORK, "anime", 1, "words") == "<hypernet:anime:1>"
    with pytest.raises(ValueError, match="unknown extra network kind"):
        insertion_text("vae", "x")
    with pytest.raises(ValueError, match="loads the checkpoint"):
        insertion_text(CHECKPOINT, "x")


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
    # A tag with its activation text: both go in, both come out (the text only where it still follows).
    added = toggle_in_prompt("a cat", "<lora:x:0.7> tw1, tw2")
    assert added == "a cat <lora:x:0.7> tw1, tw2"
    assert toggle_in_prompt(added, "<lora:x:0.7> tw1, tw2") == "a cat"
    assert toggle_in_prompt("<lora:x:1> tw1, tw2, a cat", "<lora:x:0.7> tw1, tw2") == ", a cat"
    assert toggle_in_prompt("a <lora:x:1>, tw1, tw2", "<lora:x:0.7> tw1, tw2") == "a, tw1, tw2"


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


# --- cards: preview, description, trigger words; checkpoints; previews served ---------------------

HOSTILE = ("<p>Sharp <b>details</b></p><img src=x onerror=\"alert(1)\"><script>alert(2)</script>"
           "<a href=\"javascript:alert(3)\" onclick=\"alert(4)\">link</a><svg onload=alert(5)><text>svg</text></svg>"
           "&lt;script&gt;")


def _png() -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 200, 30)).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def carded(tmp_path_factory):
    """A context whose LoRA, checkpoint and hypernetwork have cards (A1111's files beside them)."""
    import json

    data_dir = tmp_path_factory.mktemp("cards")
    (data_dir / "models" / "Stable-diffusion" / "sub").mkdir(parents=True)
    context = make_context(data_dir, ("alpha.safetensors", "sub/beta.safetensors"))
    lora_dir = data_dir / "models" / "Lora"
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(1, 4)}, lora_dir / "styled.safetensors")
    (lora_dir / "styled.json").write_text(json.dumps({
        "description": HOSTILE, "activation text": "tw1, tw2", "preferred weight": 0.7, "sd version": "SD1"}))
    (lora_dir / "styled.preview.png").write_bytes(_png())
    (lora_dir / "stray.png").write_bytes(_png())  # an image that is no listed model's preview
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(1, 4)}, lora_dir / "plain.safetensors")
    ckpt_dir = data_dir / "models" / "Stable-diffusion"
    (ckpt_dir / "alpha.json").write_text(json.dumps({"description": "", "activation text": "masterpiece"}))
    (ckpt_dir / "alpha.txt").write_text("A1111's description file")
    (ckpt_dir / "alpha.png").write_bytes(_png())
    (ckpt_dir / "alpha.json.bad").write_text("{}")
    (data_dir / "models" / "hypernetworks" / "anime.pt").write_bytes(b"listed by name")
    (data_dir / "models" / "hypernetworks" / "anime.description.txt").write_text("hn words")
    context.refresh()
    yield context
    context.jobs.shutdown()


def test_lora_card_has_preview_description_and_trigger_words(carded):
    listing = list_networks(carded)
    styled = listing.card(LORA, "styled")
    assert styled.preview is not None and styled.preview.name == "styled.preview.png"
    assert styled.trigger_words == "tw1, tw2"
    # The preferred weight replaces the default multiplier; the activation text follows the tag.
    assert styled.text == "<lora:styled:0.7> tw1, tw2"
    assert listing.card(LORA, "plain").text == "<lora:plain:1>"
    assert listing.card(HYPERNETWORK, "anime").about == "hn words"


def test_lora_click_inserts_tag_and_activation_text_and_a_second_click_removes_both(carded):
    prompt, negative = apply_card_click(carded, LORA, "styled", "a cat", "")
    assert prompt == "a cat <lora:styled:0.7> tw1, tw2" and negative == ""
    assert apply_card_click(carded, LORA, "styled", prompt, "") == ("a cat", "")


def test_description_html_is_sanitized_in_the_card(carded):
    page = render_html(list_networks(carded))
    start = page.index("data-name='styled'")
    card = page[start:page.index("</button>", start)]
    assert "Sharp <b>details</b>" in card
    lowered = card.lower()
    for forbidden in ("<img src=x", "onerror", "<script", "alert(2)", "javascript:", "onclick", "<svg", "onload"):
        assert forbidden not in lowered, forbidden
    assert "&lt;script&gt;" in card  # an escaped tag in the source stays text
    assert "<span class='trigger-words' title='Activation text'>tw1, tw2</span>" in card


def test_checkpoint_cards_show_their_card_and_a_click_names_the_checkpoint(carded):
    listing = list_networks(carded)
    alpha = listing.card(CHECKPOINT, "alpha.safetensors")
    beta = listing.card(CHECKPOINT, "sub/beta.safetensors")
    assert alpha.preview.name == "alpha.png" and alpha.about == "A1111's description file"  # empty json description
    assert alpha.trigger_words == "masterpiece" and alpha.text == ""
    assert beta.label == "beta" and beta.preview is None
    assert checkpoint_for_card(carded, "sub/beta.safetensors") == carded.checkpoints.get("sub/beta.safetensors").title
    assert checkpoint_for_card(carded, "../../etc/passwd") is None
    # A checkpoint card puts nothing into the prompt.
    assert apply_card_click(carded, CHECKPOINT, "alpha.safetensors", "a", "b") == ("a", "b")
    page = render_html(listing)
    assert "class='extra-network-item' data-kind='checkpoint' data-name='sub/beta.safetensors'" in page


def test_previews_are_served_and_nothing_else_in_the_model_folders(carded):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from modules.ui.file_route import install_file_route

    app = FastAPI()
    install_file_route(app, carded)
    client = TestClient(app)
    listing = list_networks(carded)
    for card in (listing.card(LORA, "styled"), listing.card(CHECKPOINT, "alpha.safetensors")):
        url = preview_url(card.preview)
        assert f"src='{url}'" in render_html(listing)
        response = client.get("/" + url)
        assert response.status_code == 200 and response.content == card.preview.read_bytes()
        assert response.headers["x-content-type-options"] == "nosniff"
    lora_dir = carded.paths.lora_dir
    ckpt_dir = carded.paths.checkpoints_dir
    refused = [
        lora_dir / "styled.safetensors",  # the weights
        lora_dir / "styled.json",  # the user metadata
        lora_dir / "stray.png",  # an image that is no listed model's preview
        ckpt_dir / "alpha.safetensors", ckpt_dir / "alpha.txt", ckpt_dir / "alpha.json.bad",
    ]
    for path in refused:
        assert client.get(f"/file={path}").status_code == 403, path
    # Traversal (sent as is, as an attacker's client does) and links: `..` parts are refused; a
    # preview-named link to a file elsewhere is not served.
    from tests.test_file_route import _raw_get

    assert _raw_get(app, f"/file={lora_dir}/../Lora/styled.preview.png".encode()) == 403
    assert _raw_get(app, f"/file={lora_dir}/..%2f..%2f..%2fconfig.json".encode()) == 403
    assert _raw_get(app, f"/file={lora_dir}/styled.preview.png/../styled.safetensors".encode()) == 403
    secret = carded.paths.data_dir / "config.json"
    (lora_dir / "plain.png").symlink_to(secret)
    try:
        assert client.get(f"/file={lora_dir}/plain.png").status_code == 403
    finally:
        (lora_dir / "plain.png").unlink()
    # A preview name of a listed model that does not exist is 404, not someone else's file.
    assert client.get(f"/file={lora_dir}/plain.preview.png").status_code == 404
