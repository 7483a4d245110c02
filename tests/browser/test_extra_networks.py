"""The extra-networks panel: a click on a card puts its tag into the prompt (and takes it out again);
an embedding that does not fit the model is listed as skipped, with the reason."""

from __future__ import annotations

from playwright.sync_api import Page, expect

from tests.browser.ui import CHECKPOINT_DROPDOWN, choose, field, open_ui


def test_cards_insert_and_remove_tags_and_skipped_embeddings_say_why(page: Page, atelier_server):
    open_ui(page, atelier_server.url)
    choose(page, CHECKPOINT_DROPDOWN, "alpha")  # which embeddings fit is decided by the loaded model
    expect(page.locator("#model_status")).to_contain_text("Loaded alpha.safetensors", timeout=60_000)
    panel = page.locator("#txt2img_extra_networks")
    # The cards are re-rendered once the model is loaded (which embeddings fit); a click sent while
    # that re-render shifts the layout would land between cards, so wait for the new listing first.
    skipped = panel.locator(".extra-network-skipped[data-name='too-wide']")
    expect(skipped).to_contain_text("skipped", timeout=30_000)
    prompt = field(page, "txt2img_prompt")
    prompt.fill("a castle")

    hypernetwork = panel.locator(".extra-network-item[data-kind='hypernetwork'][data-name='tiny-hn']")
    hypernetwork.click()
    expect(prompt).to_have_value("a castle <hypernet:tiny-hn:1>", timeout=30_000)
    hypernetwork.click()  # a second click takes it out again
    expect(prompt).to_have_value("a castle", timeout=30_000)

    panel.locator(".extra-network-item[data-kind='textual_inversion'][data-name='fits-tiny']").click()
    expect(prompt).to_have_value("a castle fits-tiny", timeout=30_000)

    assert not panel.locator(".extra-network-item[data-name='too-wide']").count()


def test_cards_show_preview_description_trigger_words_and_a_checkpoint_card_loads_it(page: Page, atelier_server):
    import io
    import json
    import re

    import torch
    from PIL import Image
    from safetensors.torch import save_file

    lora_dir = atelier_server.data_dir / "models" / "Lora"
    lora_dir.mkdir(parents=True, exist_ok=True)
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(1, 4)}, str(lora_dir / "carded.safetensors"))
    (lora_dir / "carded.json").write_text(json.dumps({
        "description": "<p>Crisp <b>lines</b></p><img src=x onerror=\"document.body.dataset.pwned='1'\">",
        "activation text": "tw1, tw2", "preferred weight": 0.6}))
    out = io.BytesIO()
    Image.new("RGB", (16, 12), (200, 40, 40)).save(out, format="PNG")
    (lora_dir / "carded.preview.png").write_bytes(out.getvalue())

    open_ui(page, atelier_server.url)
    page.locator("#txt2img_extra_refresh").click()
    panel = page.locator("#txt2img_extra_networks")
    card = panel.locator(".extra-network-item[data-kind='lora'][data-name='carded']")
    expect(card.locator(".trigger-words")).to_have_text("tw1, tw2", timeout=30_000)
    expect(card.locator(".about b")).to_have_text("lines")
    preview = card.locator("img.preview")
    expect(preview).to_have_js_property("naturalWidth", 16)  # served through /file=, decoded by the browser
    assert page.evaluate("document.body.dataset.pwned") is None

    prompt = field(page, "txt2img_prompt")
    prompt.fill("a castle")
    card.click()
    expect(prompt).to_have_value("a castle <lora:carded:0.6> tw1, tw2", timeout=30_000)
    card.click()
    expect(prompt).to_have_value("a castle", timeout=30_000)

    panel.locator(".extra-network-item[data-kind='checkpoint'][data-name='beta.safetensors']").click()
    expect(page.locator("#model_status")).to_contain_text("Loaded beta.safetensors", timeout=60_000)
    expect(page.locator(f"#{CHECKPOINT_DROPDOWN} input").first).to_have_value(re.compile(r"^beta\.safetensors"))
    panel.locator(".extra-network-item[data-kind='checkpoint'][data-name='alpha.safetensors']").click()
    expect(page.locator("#model_status")).to_contain_text("Loaded alpha.safetensors", timeout=60_000)
