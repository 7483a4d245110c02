"""The Extras tab in Chromium: an uploaded image scaled by 2 with Lanczos comes back twice its size
(and as Pillow's Lanczos makes it), and "Send to Extras" from PNG Info and from txt2img opens the tab
with the picture (a generated one keeps its infotext through the upscale)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image
from playwright.sync_api import Page, expect

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

SIZE = (64, 48)


def _select(page: Page, tab_elem_id: str) -> None:
    button = page.locator(f"#{tab_elem_id}-button")
    button.click()
    expect(button).to_have_attribute("aria-selected", "true")


def _noise_png(folder: Path, seed: int = 0) -> tuple[Path, Image.Image]:
    pixels = np.random.default_rng(seed).integers(0, 256, (SIZE[1], SIZE[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    path = folder / f"noise-{seed}.png"
    image.save(path)
    return path, image


def _gallery_image(page: Page, server_url: str, elem_id: str) -> Image.Image:
    [src] = gallery_images(page, elem_id)
    url = src if src.startswith("http") else server_url + "/" + src.lstrip("/")
    response = page.request.get(url)
    assert response.ok, (url, response.status)
    return Image.open(io.BytesIO(response.body()))


def test_scale_by_2_with_lanczos_doubles_the_upload(page: Page, atelier_server, tmp_path):
    path, image = _noise_png(tmp_path)
    open_ui(page, atelier_server.url)
    _select(page, "tab_extras")
    expect(page.locator("#extras_upscaling_resize input[type=number]")).to_have_value("4")  # A1111's default
    page.locator("#extras_image input[type=file]").set_input_files(str(path))
    expect(page.locator("#extras_image img")).to_be_visible()
    choose(page, "extras_upscaler_1", "Lanczos")
    fill(page, "extras_upscaling_resize", 2)
    page.locator("#extras_generate").click()
    info = page.locator("#html_info_extras")
    expect(info).to_contain_text("Postprocess upscale by: 2", timeout=GENERATION_TIMEOUT_MS)
    expect(info).to_contain_text("Postprocess upscaler: Lanczos")
    result = _gallery_image(page, atelier_server.url, "extras_gallery")
    assert result.size == (SIZE[0] * 2, SIZE[1] * 2)
    # 128×96 is a multiple of 8 already: one Lanczos resize of the upload (opaque, so RGB compares).
    expected = np.asarray(image.resize(result.size, Image.LANCZOS), dtype=int)
    assert np.abs(np.asarray(result.convert("RGB"), dtype=int) - expected).max() <= 1
    assert "Postprocess upscale by: 2" in result.info.get("postprocessing", "")


def test_scale_to_a_box_with_crop(page: Page, atelier_server, tmp_path):
    path, _ = _noise_png(tmp_path, seed=2)
    open_ui(page, atelier_server.url)
    _select(page, "tab_extras")
    page.locator("#extras_image input[type=file]").set_input_files(str(path))
    expect(page.locator("#extras_image img")).to_be_visible()
    choose(page, "extras_upscaler_1", "Lanczos")
    _select(page, "extras_scale_to_tab")
    fill(page, "extras_upscaling_resize_w", 96)
    fill(page, "extras_upscaling_resize_h", 96)
    page.locator("#extras_generate").click()
    info = page.locator("#html_info_extras")
    expect(info).to_contain_text("Postprocess crop to: 96x96", timeout=GENERATION_TIMEOUT_MS)
    # 64×48 covers 96×96 at max(96/64, 96/48) = 2, and is then cropped to the box.
    assert _gallery_image(page, atelier_server.url, "extras_gallery").size == (96, 96)


def test_send_to_extras_from_png_info_opens_the_tab_with_the_image(page: Page, atelier_server, tmp_path):
    path, _ = _noise_png(tmp_path, seed=1)
    open_ui(page, atelier_server.url)
    _select(page, "tab_pnginfo")
    page.locator("#pnginfo_image input[type=file]").set_input_files(str(path))
    expect(page.locator("#pnginfo_image img")).to_be_visible()
    page.locator("#pnginfo_send_to_extras").click()
    expect(page.locator("#tab_extras-button")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#extras_single_tab-button")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#extras_image img")).to_be_visible()


def test_send_to_extras_from_txt2img_then_upscale(page: Page, atelier_server):
    open_ui(page, atelier_server.url)
    choose(page, CHECKPOINT_DROPDOWN, "alpha")
    small_job(page)
    prompt = unique_prompt("a pebble")
    generate(page, prompt)
    page.locator("#txt2img_send_to_extras").click()
    expect(page.locator("#tab_extras-button")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#extras_image img")).to_be_visible()
    choose(page, "extras_upscaler_1", "Nearest")
    fill(page, "extras_upscaling_resize", 2)
    page.locator("#extras_generate").click()
    expect(page.locator("#html_info_extras")).to_contain_text("Postprocess upscaler: Nearest",
                                                              timeout=GENERATION_TIMEOUT_MS)
    result = _gallery_image(page, atelier_server.url, "extras_gallery")
    assert result.size == (128, 128)  # the 64×64 image × 2
    # The source's infotext is kept and the postprocessing text added (A1111's PNG chunks).
    assert prompt in result.info.get("parameters", ""), result.info
    assert "Postprocess upscaler: Nearest" in result.info.get("postprocessing", "")
