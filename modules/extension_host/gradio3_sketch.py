"""Gradio 3.41's `gr.Image(tool="sketch")` and `gr.Image(tool="color-sketch")` as Gradio 6 image editors.

In 3.41 an Image with a drawing tool gave its handler (A1111.md §15.8):
  tool="sketch"        {"image": the uploaded image, "mask": white where painted, black elsewhere (RGB)}
  tool="color-sketch"  the uploaded image with the strokes painted on it
Gradio 6 moved drawing to `gr.ImageEditor`, whose value is {background, layers, composite}. These two
editors draw as `gr.ImageEditor` in the browser and hand the handler 3.41's value, in the component's
`type` (numpy, pil or filepath). modules.extension_host.gradio3_compat builds them for an extension's
`gr.Image(tool=...)`.
"""

from __future__ import annotations

from io import BytesIO
from typing import Any

import gradio as gr
import numpy as np
from gradio import image_utils
from gradio.components.image_editor import EditorData
from gradio.data_classes import FileData
from PIL import Image


def _open(file: FileData | bytes | None) -> Image.Image | None:
    if file is None:
        return None
    return Image.open(file.path if isinstance(file, FileData) else BytesIO(file))


class SketchMaskImage(gr.ImageEditor):
    """3.41 `gr.Image(tool="sketch")`: the handler gets {"image", "mask"}."""

    def get_block_name(self) -> str:
        return "imageeditor"

    def get_block_class(self) -> str:
        return "imageeditor"

    def preprocess(self, payload: EditorData | None) -> dict[str, Any] | None:
        if payload is None:
            return None
        # The layers (with their alpha) are read before Gradio's preprocess, which flattens them to
        # the image mode and forgets blobs it has read.
        source = self.blob_storage.get(payload.id) if payload.id is not None else payload
        layers = [_open(layer) for layer in (source.layers if source is not None else []) or [] if layer is not None]
        value = super().preprocess(payload)
        if value is None or value["background"] is None:
            return None
        size = _open_size(value["background"])
        painted = np.zeros((size[1], size[0]), dtype=bool)
        for layer in layers:
            alpha = np.asarray(layer.convert("RGBA").resize(size).getchannel("A"))
            painted |= alpha > 0
        mask = Image.fromarray((painted * 255).astype(np.uint8), "L").convert("RGB")
        return {"image": value["background"],
                "mask": image_utils.format_image(mask, self.type, self.GRADIO_CACHE, format="png", name="mask")}


class ColorSketchImage(gr.ImageEditor):
    """3.41 `gr.Image(tool="color-sketch")`: the handler gets the painted image."""

    def get_block_name(self) -> str:
        return "imageeditor"

    def get_block_class(self) -> str:
        return "imageeditor"

    def preprocess(self, payload: EditorData | None) -> Any:
        value = super().preprocess(payload)
        return None if value is None else value["composite"]


def _open_size(image: Any) -> tuple[int, int]:
    """(width, height) of an image in any of the three `type`s."""
    if isinstance(image, np.ndarray):
        return image.shape[1], image.shape[0]
    if isinstance(image, Image.Image):
        return image.size
    with Image.open(image) as opened:
        return opened.size


def editor_keywords(tool: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The 3.41 Image keywords of an Image with `tool` as this editor's: the brush from
    `brush_color` / `brush_radius` (fixed colour for a mask, a palette default for colour sketch),
    no layer panel (3.41 had none), RGB images unless `image_mode` says otherwise; `mask_opacity` has
    no equivalent and is dropped."""
    result = dict(kwargs)
    color = result.pop("brush_color", None)
    radius = result.pop("brush_radius", None)
    result.pop("mask_opacity", None)
    result.pop("tool", None)
    brush: dict[str, Any] = {}
    if radius is not None:
        brush["default_size"] = int(radius)
    if tool == "sketch":
        brush.update(colors=[color or "#000000"], color_mode="fixed")
    elif color:
        brush.update(colors=[color], default_color=color, color_mode="defaults")
    if brush:
        result.setdefault("brush", gr.Brush(**brush))
    result.setdefault("layers", False)
    result.setdefault("image_mode", "RGB")  # gr.Image's default in 3.41; ImageEditor's is RGBA
    return result


EDITORS = {"sketch": SketchMaskImage, "color-sketch": ColorSketchImage}
