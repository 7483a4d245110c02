"""The img2img tab in Chromium: img2img from an uploaded image, inpainting with a mask drawn with the
mouse and with touch (pixels far from the mask come back unchanged), and txt2img's "Send to
inpaint"."""

from __future__ import annotations

import io
import re
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Page, expect

from tests.browser.harness import open_page
from tests.browser.ui import (
    CHECKPOINT_DROPDOWN,
    GENERATION_TIMEOUT_MS,
    choose,
    fill,
    gallery_images,
    generate,
    open_ui,
    small_job,
    unique_prompt,
)

SIZE = 128  # the test image; the brush's default radius is 25 image pixels


def _select(page: Page, tab_elem_id: str) -> None:
    """Open a tab by its button's id (Gradio 6: `<elem_id>-button`): the main tab and the first mode
    sub-tab are both labelled "img2img", as in A1111."""
    button = page.locator(f"#{tab_elem_id}-button")
    button.click()
    expect(button).to_have_attribute("aria-selected", "true")


def _noise_png(folder: Path, seed: int = 0) -> tuple[Path, np.ndarray]:
    pixels = np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    path = folder / f"noise-{seed}.png"
    Image.fromarray(pixels).save(path)
    return path, pixels


def _img2img_job(page: Page, steps: int = 2) -> None:
    fill(page, "img2img_width", SIZE)
    fill(page, "img2img_height", SIZE)
    fill(page, "img2img_steps", steps)


def _generate_img2img(page: Page, prompt: str) -> str:
    fill(page, "img2img_prompt", prompt)
    page.locator("#img2img_generate").click()
    info = page.locator("#html_info_img2img")
    expect(info).to_contain_text(prompt, timeout=GENERATION_TIMEOUT_MS)
    return info.inner_text()


def _result_pixels(page: Page, server_url: str) -> np.ndarray:
    [src] = gallery_images(page, "img2img_gallery")
    url = src if src.startswith("http") else server_url + "/" + src.lstrip("/")
    response = page.request.get(url)
    assert response.ok, (url, response.status)
    return np.asarray(Image.open(io.BytesIO(response.body())).convert("RGB"))


def _editor_shows_a_picture(page: Page, elem_id: str = "img2maskimg", timeout_s: float = 30) -> None:
    """Wait until the editor's canvas shows a picture (the noise images here; the txt2img output of
    a tiny model): the middle of its screenshot is not one flat colour, as the empty canvas is. The
    editor loads an image asynchronously; drawing before that paints on a blank canvas."""
    deadline = time.monotonic() + timeout_s
    spread = 0.0
    while time.monotonic() < deadline:
        shot = np.asarray(Image.open(io.BytesIO(page.locator(f"#{elem_id} canvas").first.screenshot())).convert("L"))
        h, w = shot.shape
        spread = float(shot[h // 3:2 * h // 3, w // 3:2 * w // 3].std())
        if spread > 10:
            return
        page.wait_for_timeout(200)
    raise AssertionError(f"#{elem_id} shows no picture after {timeout_s} s (middle's spread {spread:.1f})")


def _upload_to_editor(page: Page, elem_id: str, image: Path) -> None:
    """Upload into an ImageEditor once its canvas exists: the editor sets up its canvas after its
    sub-tab opens (Gradio 6 mounts a tab when first opened), and an upload before that is lost."""
    expect(page.locator(f"#{elem_id} canvas").first).to_be_attached(timeout=60_000)
    page.locator(f"#{elem_id} input[type=file]").set_input_files(str(image))
    _editor_shows_a_picture(page, elem_id)


def _open_inpaint_with(page: Page, image: Path) -> None:
    _select(page, "tab_img2img")
    _select(page, "img2img_inpaint_tab")
    _upload_to_editor(page, "img2maskimg", image)
    expect(page.locator("#img2maskimg button[aria-label='Brush']")).to_be_visible()
    page.locator("#img2maskimg button[aria-label='Brush']").click()
    expect(page.locator("#inpaint_controls").first).to_be_visible()


def _canvas_centre(page: Page, elem_id: str = "img2maskimg") -> tuple[float, float]:
    """The editor shows the image fitted and centred in its canvas: the canvas's centre is the image's."""
    box = page.locator(f"#{elem_id} canvas").first.bounding_box()
    return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2


def _assert_inpainted_centre_only(result: np.ndarray, original: np.ndarray) -> None:
    """A stroke at the centre with the brush's radius 25 masks at most 64 ± 30 px; Mask blur 4
    reaches 10 px further (kernel 2·int(2.5·4+0.5)+1 = 21 taps). Outside 64 ± 44 the overlay is the
    original's pixels."""
    assert result.shape == original.shape
    band = 16
    for part in (np.s_[:band, :], np.s_[-band:, :], np.s_[:, :band], np.s_[:, -band:]):
        assert (result[part] == original[part]).all(), "a pixel far from the mask changed"
    centre = np.s_[SIZE // 2 - 4:SIZE // 2 + 4, SIZE // 2 - 4:SIZE // 2 + 4]
    assert not (result[centre] == original[centre]).all(), "the masked centre was not repainted"


def test_img2img_from_an_uploaded_image(page: Page, atelier_server, tmp_path):
    image, _ = _noise_png(tmp_path)
    open_ui(page, atelier_server.url)
    choose(page, CHECKPOINT_DROPDOWN, "alpha")
    _select(page, "tab_img2img")
    expect(page.locator("#img2img_denoising_strength input[type=number]")).to_have_value("0.75")
    page.locator("#img2img_image input[type=file]").set_input_files(str(image))
    expect(page.locator("#img2img_image img")).to_be_visible()
    _img2img_job(page)
    info = _generate_img2img(page, unique_prompt("a mossy stone"))
    assert "Denoising strength: 0.75" in info and f"Size: {SIZE}x{SIZE}" in info, info
    assert "Mask blur" not in info  # plain img2img
    assert len(gallery_images(page, "img2img_gallery")) == 1
    # "Copy image to: inpaint" opens Inpaint with the picture.
    page.locator("#img2img_copy_to_img2img").get_by_role("button", name="inpaint", exact=True).click()
    expect(page.locator("#img2img_inpaint_tab-button")).to_have_attribute("aria-selected", "true")
    _editor_shows_a_picture(page)


def test_a_generate_without_an_image_says_so(page: Page, atelier_server):
    open_ui(page, atelier_server.url)
    _select(page, "tab_img2img")
    fill(page, "img2img_prompt", "no picture")
    page.locator("#img2img_generate").click()
    expect(page.locator("#html_info_img2img")).to_contain_text("no image")


def test_inpaint_a_mask_drawn_with_the_mouse(page: Page, atelier_server, tmp_path):
    image, original = _noise_png(tmp_path, seed=1)
    open_ui(page, atelier_server.url)
    choose(page, CHECKPOINT_DROPDOWN, "alpha")
    _open_inpaint_with(page, image)
    x, y = _canvas_centre(page)
    page.mouse.move(x - 3, y)
    page.mouse.down()
    page.mouse.move(x, y + 2, steps=3)
    page.mouse.move(x + 3, y, steps=3)
    page.mouse.up()
    _img2img_job(page)
    fill(page, "img2img_denoising_strength", 1)
    info = _generate_img2img(page, unique_prompt("a red door"))
    assert "Mask blur: 4" in info and "Denoising strength: 1" in info, info
    _assert_inpainted_centre_only(_result_pixels(page, atelier_server.url), original)


def test_inpaint_sketch_repaints_where_the_sketch_differs(page: Page, atelier_server, tmp_path):
    image, original = _noise_png(tmp_path, seed=3)
    open_ui(page, atelier_server.url)
    choose(page, CHECKPOINT_DROPDOWN, "alpha")
    _select(page, "tab_img2img")
    _select(page, "img2img_inpaint_sketch_tab")
    _upload_to_editor(page, "inpaint_sketch", image)
    expect(page.locator("#img2img_mask_alpha")).to_be_visible()  # Mask transparency: this tab only
    page.locator("#inpaint_sketch button[aria-label='Brush']").click()
    x, y = _canvas_centre(page, "inpaint_sketch")
    page.mouse.move(x - 3, y)
    page.mouse.down()
    page.mouse.move(x + 3, y, steps=4)
    page.mouse.up()
    _img2img_job(page)
    fill(page, "img2img_denoising_strength", 1)
    info = _generate_img2img(page, unique_prompt("a green roof"))
    assert "Mask blur: 4" in info, info
    _assert_inpainted_centre_only(_result_pixels(page, atelier_server.url), original)
    _select(page, "img2img_inpaint_tab")
    expect(page.locator("#img2img_mask_alpha")).to_be_hidden()


@pytest.fixture
def touch_page(browser, request, artifacts_dir, atelier_server):
    """A page in a context with a touchscreen."""
    yield from open_page(browser, request, artifacts_dir, atelier_server, has_touch=True)


def test_inpaint_a_mask_drawn_by_touch(touch_page: Page, atelier_server, tmp_path):
    """The editor paints from pointer events; Chromium turns the touch points sent here (CDP
    Input.dispatchTouchEvent, as a touchscreen sends them) into pointer events of type "touch"."""
    page = touch_page
    image, original = _noise_png(tmp_path, seed=2)
    open_ui(page, atelier_server.url)
    choose(page, CHECKPOINT_DROPDOWN, "alpha")
    _open_inpaint_with(page, image)
    x, y = _canvas_centre(page)
    touch = page.context.new_cdp_session(page)
    points = [(x - 3, y), (x - 1, y + 1), (x + 1, y + 1), (x + 3, y)]
    touch.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [{"x": points[0][0],
                                                                                  "y": points[0][1]}]})
    for px, py in points[1:]:
        touch.send("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [{"x": px, "y": py}]})
    touch.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    _img2img_job(page)
    fill(page, "img2img_denoising_strength", 1)
    _generate_img2img(page, unique_prompt("a blue window"))
    _assert_inpainted_centre_only(_result_pixels(page, atelier_server.url), original)


def test_send_to_inpaint_from_txt2img(page: Page, atelier_server):
    open_ui(page, atelier_server.url)
    choose(page, CHECKPOINT_DROPDOWN, "alpha")
    small_job(page)
    prompt = unique_prompt("a quiet harbour")
    generate(page, prompt)
    fill(page, "txt2img_neg_prompt", "fog")  # copied as it is now, as A1111's button does
    fill(page, "txt2img_seed", 1234)

    page.locator("#txt2img_send_to_inpaint").click()

    expect(page.locator("#tab_img2img-button")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#img2img_inpaint_tab-button")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#img2img_prompt textarea")).to_have_value(prompt)
    expect(page.locator("#img2img_neg_prompt textarea")).to_have_value("fog")
    expect(page.locator("#img2img_seed input")).to_have_value("1234")
    expect(page.locator("#img2img_steps input[type=number]")).to_have_value("4")
    expect(page.locator("#img2maskimg canvas").first).to_be_visible()
    _editor_shows_a_picture(page)  # the generated image
    expect(page.locator("#inpaint_controls").first).to_be_visible()


def test_send_to_img2img_sets_the_size_and_ctrl_enter_generates(page: Page, atelier_server):
    open_ui(page, atelier_server.url)
    choose(page, CHECKPOINT_DROPDOWN, "alpha")
    small_job(page)
    fill(page, "txt2img_width", 72)  # the image's size is what img2img's Width/Height get
    generate(page, unique_prompt("a lantern"))

    page.locator("#txt2img_send_to_img2img").click()

    expect(page.locator("#tab_img2img-button")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#img2img_img2img_tab-button")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#img2img_image img")).to_be_visible()
    expect(page.locator("#img2img_width input[type=number]")).to_have_value("72")
    expect(page.locator("#img2img_height input[type=number]")).to_have_value("64")
    prompt = unique_prompt("ctrl enter")
    fill(page, "img2img_prompt", prompt)
    page.locator("#img2img_prompt textarea").press("Control+Enter")
    expect(page.locator("#html_info_img2img")).to_contain_text(re.compile(re.escape(prompt) + ".*Size: 72x64",
                                                                          re.S), timeout=GENERATION_TIMEOUT_MS)
