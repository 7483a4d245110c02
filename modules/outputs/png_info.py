"""What an image file says about how it was made (A1111's PNG Info): its infotext, parsed, and its
other metadata, read without decoding the pixels. The PNG Info tab and a picture dropped on a prompt
box (modules.ui.prompt_drop) both read images through `read_png_info`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class PngInfo:
    """What an image carries: the infotext (None when it has none), parsed, and other metadata."""

    infotext: str | None
    parameters: dict[str, Any] = field(default_factory=dict)
    items: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def read_png_info(path: str | None) -> PngInfo:
    """Read the generation parameters of the image file at `path` (A1111's PNG Info). Only its
    metadata is read: the pixels are never decoded, whatever the image's size."""
    from modules.outputs.image_metadata import ImageMetadataError, read_image_metadata
    from modules.outputs.infotext import parse_generation_parameters

    if not path:
        return PngInfo(None)
    try:
        with open(path, "rb") as file:
            infotext, items, _ = read_image_metadata(file)
    except (OSError, ImageMetadataError) as error:
        # The message never names the path: it is the server's copy of the upload.
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        return PngInfo(None, error=f"Cannot read the image: {reason}")
    shown_items = {key: value for key, value in items.items() if isinstance(value, (str, int, float))}
    if not infotext:
        return PngInfo(None, items=shown_items)
    return PngInfo(infotext, parse_generation_parameters(infotext), shown_items)
