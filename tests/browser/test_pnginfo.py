"""PNG Info tab: an image generated in the page, saved from the gallery, shows its parameters."""

from __future__ import annotations

from io import BytesIO

from PIL import Image
from playwright.sync_api import Page, expect

from tests.browser.ui import CHECKPOINT_DROPDOWN, choose, field, generate, open_ui, select_tab, small_job, unique_prompt


def test_png_info_shows_the_parameters_of_a_generated_image(page: Page, atelier_server, tmp_path):
    open_ui(page, atelier_server.url)
    choose(page, CHECKPOINT_DROPDOWN, "alpha")
    small_job(page)
    prompt = unique_prompt("a teapot on a windowsill")
    infotext = generate(page, prompt)

    # What a user drags or saves from the gallery: the image the gallery serves.
    src = page.locator("#txt2img_gallery button[aria-label^='Thumbnail'] img").first.get_attribute("src")
    response = page.request.get(src if src.startswith("http") else atelier_server.url + src)
    assert response.ok, f"{src}: {response.status}"
    image = Image.open(BytesIO(response.body()))
    assert image.format == "PNG", f"the gallery serves {image.format}, which carries no parameters"
    carried = image.info.get("parameters", "")
    assert prompt in carried, image.info
    for line in carried.split("\n"):
        assert line in infotext, f"the gallery image's parameters differ from the infotext shown: {line!r}"
    path = tmp_path / "from-gallery.png"
    path.write_bytes(response.body())

    select_tab(page, "PNG Info")
    page.locator("#pnginfo_image input[type=file]").set_input_files(str(path))
    parameters = field(page, "pnginfo_generation_info")
    expect(parameters).to_have_value(carried, timeout=30_000)
    table = page.locator("#pnginfo_parameters")
    expect(table).to_contain_text(prompt)
    seed = infotext.split("Seed: ", 1)[1].split(",", 1)[0]
    for value in ("alpha", seed):
        expect(table).to_contain_text(value)
