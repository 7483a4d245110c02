"""A1111's `modules.extras` for extensions: `run_pnginfo` (what its PNG Info tab shows)."""

from __future__ import annotations

import html


def run_pnginfo(image):
    """('', infotext or '', an HTML list of the image's metadata) for a PIL image, as A1111's
    `run_pnginfo`: the infotext first, under `parameters`, then the other text items."""
    from modules.outputs.infotext import read_info_from_image

    if image is None:
        return "", "", ""
    geninfo, items = read_info_from_image(image)
    shown = {"parameters": geninfo} if geninfo else {}
    shown.update({key: value for key, value in items.items() if isinstance(value, (str, int, float))})
    info = "".join(f"<div><p><b>{html.escape(str(key))}</b></p><p>{html.escape(str(value))}</p></div>\n"
                   for key, value in shown.items())
    return "", geninfo or "", info or "<div><p>Nothing found in the image.</p></div>"
