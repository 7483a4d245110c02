"""A picture dropped on the prompt box fills the tab's fields from its parameters (modules.ui.prompt_drop):
the drop event goes through the page's handler and Gradio's upload, as a user's drag from a file manager."""

from __future__ import annotations

import base64
import io

from PIL import Image, PngImagePlugin
from playwright.sync_api import Page, expect

from tests.browser.ui import field, open_ui, unique_prompt

# Dispatches dragenter / dragover / drop on the element, carrying one file, as a real drag does.
DROP_FILE = """([selector, name, type, data]) => {
    const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
    const transfer = new DataTransfer();
    transfer.items.add(new File([bytes], name, {type: type}));
    const target = document.querySelector(selector);
    for (const kind of ['dragenter', 'dragover', 'drop']) {
        target.dispatchEvent(new DragEvent(kind, {dataTransfer: transfer, bubbles: true, cancelable: true}));
    }
}"""


def _png(parameters: str | None) -> bytes:
    info = PngImagePlugin.PngInfo()
    if parameters is not None:
        info.add_text("parameters", parameters)
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 120, 40)).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def _drop(page: Page, tab: str, name: str, mime: str, data: bytes) -> None:
    page.evaluate(DROP_FILE, [f"#{tab}_prompt textarea", name, mime, base64.b64encode(data).decode()])


def test_a_png_dropped_on_the_prompt_fills_the_fields(page: Page, atelier_server):
    open_ui(page, atelier_server.url)
    prompt = unique_prompt("a castle on a hill")
    infotext = f"{prompt}\nNegative prompt: thick fog\nSteps: 7, Sampler: Euler, CFG scale: 4.5, Seed: 4242, Size: 64x96"
    _drop(page, "txt2img", "castle.png", "image/png", _png(infotext))

    expect(field(page, "txt2img_prompt")).to_have_value(prompt, timeout=30_000)
    expect(field(page, "txt2img_neg_prompt")).to_have_value("thick fog")
    for elem_id, value in (("txt2img_steps", "7"), ("txt2img_seed", "4242"), ("txt2img_cfg_scale", "4.5"),
                           ("txt2img_width", "64"), ("txt2img_height", "96")):
        expect(field(page, elem_id)).to_have_value(value)
    expect(page.locator("#html_log_txt2img")).to_contain_text("Pasted")


def test_img2img_prompt_takes_a_dropped_png_too(page: Page, atelier_server):
    open_ui(page, atelier_server.url)
    page.get_by_role("tab", name="img2img", exact=True).first.click()
    expect(field(page, "img2img_prompt")).to_be_visible()
    prompt = unique_prompt("an old mill")
    _drop(page, "img2img", "mill.png", "image/png", _png(f"{prompt}\nSteps: 9, Seed: 99, Size: 64x64"))
    expect(field(page, "img2img_prompt")).to_have_value(prompt, timeout=30_000)
    expect(field(page, "img2img_steps")).to_have_value("9")


def test_a_png_without_parameters_or_a_text_file_leaves_the_fields_and_says_why(page: Page, atelier_server):
    open_ui(page, atelier_server.url)
    prompt = unique_prompt("my own prompt")
    box = field(page, "txt2img_prompt")
    box.fill(prompt)
    info = page.locator("#html_log_txt2img")  # the message line: the infotext shown stays

    _drop(page, "txt2img", "plain.png", "image/png", _png(None))
    expect(info).to_contain_text("carries no generation parameters", timeout=30_000)
    expect(box).to_have_value(prompt)

    _drop(page, "txt2img", "notes.txt", "text/plain", b"Steps: 3, Seed: 1")
    expect(info).to_contain_text("not an image file", timeout=30_000)
    expect(box).to_have_value(prompt)

    # The upload is emptied after each drop: the same picture again is read again.
    _drop(page, "txt2img", "plain.png", "image/png", _png(None))
    expect(info).to_contain_text("carries no generation parameters", timeout=30_000)
