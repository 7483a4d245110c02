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
    prompt = field(page, "txt2img_prompt")
    prompt.fill("a castle")

    hypernetwork = panel.locator(".extra-network-item[data-kind='hypernetwork'][data-name='tiny-hn']")
    hypernetwork.click()
    expect(prompt).to_have_value("a castle <hypernet:tiny-hn:1>", timeout=30_000)
    hypernetwork.click()  # a second click takes it out again
    expect(prompt).to_have_value("a castle", timeout=30_000)

    panel.locator(".extra-network-item[data-kind='textual_inversion'][data-name='fits-tiny']").click()
    expect(prompt).to_have_value("a castle fits-tiny", timeout=30_000)

    skipped = panel.locator(".extra-network-skipped[data-name='too-wide']")
    expect(skipped).to_contain_text("skipped")
    assert not panel.locator(".extra-network-item[data-name='too-wide']").count()
