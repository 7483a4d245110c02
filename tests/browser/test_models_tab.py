"""Models tab: paste a Civitai URL, see the card, download the checkpoint, find it in the checkpoint
dropdown and its trigger words on its card in the extra-networks panel; the downloads list survives a
reload.

Civitai is the fake one of tests/fake_model_hosts (its API and its signed-URL storage on two loopback
ports), which the server reaches through `ATELIER_CIVITAI_ENDPOINT` with `model_sources_allow_private`
on (loopback is refused otherwise). The pasted URL is the real civitai.com form.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.browser.harness import open_page, start_server, write_tiny_checkpoints
from tests.browser.ui import CHECKPOINT_DROPDOWN, dropdown_choices, open_ui, select_tab
from tests.fake_model_hosts.civitai import FakeCivitai, tiny_png

FILE_NAME = "browser-civitai.safetensors"
TRIGGER_WORDS = ("bcv style", "crisp lines")
DOWNLOAD_TIMEOUT_MS = 120_000


def tiny_checkpoint_bytes() -> bytes:
    """A tiny SD1 checkpoint in the real layout, as the bytes Civitai would serve."""
    import torch

    from modules.library.synthetic_checkpoints import write_checkpoint

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.safetensors"
        write_checkpoint(path, "sd1", size="tiny", dtype=torch.float16, seed=7)
        return path.read_bytes()


@pytest.fixture(scope="module")
def civitai():
    fake = FakeCivitai()
    yield fake
    fake.close()


@pytest.fixture(scope="module")
def models_server(browser, tmp_path_factory, artifacts_dir, civitai):
    data_dir = tmp_path_factory.mktemp("atelier-models")
    write_tiny_checkpoints(data_dir, ("alpha",))
    (data_dir / "config.json").write_text(json.dumps({"model_sources_allow_private": True}), encoding="utf-8")
    with pytest.MonkeyPatch.context() as env:  # the server process copies the environment when it starts
        env.setenv("ATELIER_CIVITAI_ENDPOINT", civitai.base_url)
        server = start_server(data_dir, artifacts_dir / "models-server.log")
    yield server
    server.stop()


@pytest.fixture
def models_page(browser, request, artifacts_dir, models_server):
    yield from open_page(browser, request, artifacts_dir, models_server)


def test_paste_a_civitai_url_download_and_find_the_checkpoint_with_its_trigger_words(models_page: Page, models_server,
                                                                                     civitai, artifacts_dir):
    page = models_page
    data = tiny_checkpoint_bytes()
    model_id, version_id = civitai.add_model(
        "Browser Civitai Model", type="Checkpoint", base_model="SD 1.5", files=[(FILE_NAME, data)],
        trained_words=TRIGGER_WORDS, images=[(tiny_png(), 1)],
        description="<p>Made for <b>tests</b></p><img src=x onerror=\"document.body.dataset.pwned='1'\">")

    open_ui(page, models_server.url)
    assert not any(c.startswith(FILE_NAME) for c in dropdown_choices(page, CHECKPOINT_DROPDOWN))
    select_tab(page, "Models")
    source = page.locator("#models_source textarea, #models_source input").first
    source.fill(f"https://civitai.com/models/{model_id}?modelVersionId={version_id}")
    page.locator("#models_lookup").click()

    card = page.locator("#models_card")
    expect(card.locator(".models-name")).to_have_text("Browser Civitai Model", timeout=60_000)
    expect(card).to_contain_text("SD 1.5")
    expect(card.locator(".models-trigger-word")).to_have_text(list(TRIGGER_WORDS))
    expect(card.locator(".models-description b")).to_have_text("tests")
    # The preview came through the server (a data: URI), decoded by the browser.
    preview = card.locator("img.models-preview")
    expect(preview).to_have_js_property("naturalWidth", 1)
    assert preview.get_attribute("src").startswith("data:image/png;base64,")
    assert page.evaluate("document.body.dataset.pwned") is None
    expect(page.locator("#models_files")).to_contain_text(FILE_NAME)
    expect(page.locator("#models_file input").first).to_have_value(FILE_NAME)

    page.locator("#models_download").click()
    finished = page.locator("#models_downloads .models-download[data-state='done']")
    expect(finished).to_contain_text(FILE_NAME, timeout=DOWNLOAD_TIMEOUT_MS)
    path = models_server.data_dir / "models" / "Stable-diffusion" / FILE_NAME
    assert path.read_bytes() == data
    page.screenshot(path=str(artifacts_dir / "models-tab-after-download.png"), full_page=True)

    # The timer tick that showed the download done also refreshed the top bar's checkpoint list.
    choices = dropdown_choices(page, CHECKPOINT_DROPDOWN)
    assert any(c.startswith(FILE_NAME) for c in choices), choices

    # A reload finds the download in the list (the server keeps it, not the page).
    open_ui(page, models_server.url)
    select_tab(page, "Models")
    expect(page.locator("#models_downloads .models-download[data-state='done']")).to_contain_text(FILE_NAME)

    # Its card in the extra-networks panel shows the trigger words Civitai published.
    select_tab(page, "txt2img")
    page.locator("#txt2img_extra_refresh").click()
    checkpoint_card = page.locator(f"#txt2img_extra_networks .extra-network-item[data-kind='checkpoint']"
                                   f"[data-name='{FILE_NAME}']")
    expect(checkpoint_card.locator(".trigger-words")).to_have_text(re.compile(
        r"\s*,?\s*".join(re.escape(w) for w in TRIGGER_WORDS)), timeout=30_000)
