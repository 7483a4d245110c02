"""The PNG Info tab: drop an image, see the A1111 parameters it carries (PNG `parameters` chunk,
JPEG/WebP EXIF comment, NovelAI PNGs), parsed into a table, and send them to txt2img, or with the
image to img2img / inpaint; "Send to extras" sends the image alone.

The image arrives as the uploaded file itself (`type="filepath"`, no mode conversion), so nothing
re-encodes it and its text chunks survive.
"""

from __future__ import annotations

import html
from typing import Any

import gradio as gr

from modules.outputs.png_info import PngInfo, read_png_info  # noqa: F401  (the tab's reader, re-exported)
from modules.ui.shared import UiShared

def _written_parameters(infotext: str, parameters: dict[str, Any]) -> dict[str, Any]:
    """The parsed parameters the infotext itself states, in its order: the parser also fills in
    A1111's defaults (`Clip skip: 1`, `RNG: GPU`, …) and splits sizes into `-1`/`-2` keys, which
    are put back together here (`Size: 64x64`)."""
    settings_line = infotext.strip().splitlines()[-1] if infotext.strip() else ""
    shown: dict[str, Any] = {}
    for key, value in parameters.items():
        if key in ("Prompt", "Negative prompt"):
            continue
        base = key[:-2] if key.endswith(("-1", "-2")) else key
        if f"{base}: " not in settings_line:
            continue
        if key.endswith("-1"):
            shown[base] = f"{value}x{parameters.get(base + '-2', '')}"
        elif not key.endswith("-2"):
            shown[key] = value
    return shown


def render_png_info(info: PngInfo) -> str:
    if info.error:
        return f"<div class='error'>{html.escape(info.error)}</div>"
    if info.infotext is None:
        extra = _table(info.items) if info.items else ""
        return f"<p class='job-note'>This image carries no generation parameters.</p>{extra}"
    shown = _written_parameters(info.infotext, info.parameters)
    prompt = html.escape(str(info.parameters.get("Prompt", "")))
    negative = html.escape(str(info.parameters.get("Negative prompt", "")))
    parts = [f"<div class='pnginfo-prompt'><b>Prompt</b><p>{prompt or '<i>empty</i>'}</p></div>"]
    if negative:
        parts.append(f"<div class='pnginfo-prompt'><b>Negative prompt</b><p>{negative}</p></div>")
    parts.append(_table(shown))
    if info.items:
        parts.append("<h4>Other metadata</h4>" + _table(info.items))
    return "".join(parts)


def _table(values: dict[str, Any]) -> str:
    rows = "".join(f"<tr><th>{html.escape(str(key))}</th><td>{html.escape(str(value))}</td></tr>"
                   for key, value in values.items())
    return f"<table class='pnginfo-table'>{rows}</table>"


def build(context, shared: UiShared) -> None:
    """Build the tab inside the current `gr.Tab`; needs `shared.txt2img_fields`, `shared.img2img` and
    `shared.extras` (txt2img, img2img and Extras are built first)."""
    from modules.ui.txt2img import wire_send_to_txt2img

    with gr.Row(equal_height=False):
        with gr.Column():
            image = gr.Image(type="filepath", image_mode=None, label="Source", sources=["upload", "clipboard"],
                             elem_id="pnginfo_image", height=480)
        with gr.Column():
            parameters = gr.HTML("", elem_id="pnginfo_parameters", js_on_load=None)
            generation_info = gr.Textbox(label="Parameters (infotext)", lines=6, interactive=False,
                                         elem_id="pnginfo_generation_info", buttons=["copy"])
            with gr.Row():
                send = gr.Button("Send to txt2img", variant="primary", elem_id="pnginfo_send_to_txt2img")
                send_img2img = gr.Button("Send to img2img", elem_id="pnginfo_send_to_img2img")
                send_inpaint = gr.Button("Send to inpaint", elem_id="pnginfo_send_to_inpaint")
                send_extras = gr.Button("Send to extras", elem_id="pnginfo_send_to_extras")

    def on_image(path: str | None):
        info = read_png_info(path)
        return render_png_info(info) if path else "", info.infotext or ""

    image.change(on_image, inputs=image, outputs=[parameters, generation_info], show_progress="hidden")

    wire_send_to_txt2img(context, shared, send, generation_info)
    if shared.img2img is not None:
        from modules.ui.img2img import IMG2IMG_MODE, INPAINT_MODE, wire_send_infotext

        wire_send_infotext(context, shared, send_img2img, generation_info, image, IMG2IMG_MODE)
        wire_send_infotext(context, shared, send_inpaint, generation_info, image, INPAINT_MODE)
    if shared.extras is not None:  # the image only, as A1111's "Send to extras"
        from modules.ui.extras_tab import wire_send_to_extras

        wire_send_to_extras(shared, send_extras, image)
