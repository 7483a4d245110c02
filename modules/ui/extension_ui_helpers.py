"""A1111's small page helpers of `modules.ui_common` that extensions import, besides
`create_refresh_button` (modules.ui.refresh_button)."""

from __future__ import annotations

import html


def plaintext_to_html(text: str, classname: str | None = None) -> str:
    """`text` as one HTML paragraph, escaped, its lines joined by `<br>` (A1111's output)."""
    lines = "<br>\n".join(html.escape(line) for line in str(text).split("\n"))
    return f"<p class='{html.escape(classname, quote=True)}'>{lines}</p>" if classname else f"<p>{lines}</p>"


def save_files(js_data, images, do_make_zip, index):
    """A1111's gallery "Save" button (a copy into `log/images` and a line in `log.csv`): Atelier's
    gallery has no such button; extensions that call it get this error and use their own way."""
    raise NotImplementedError("modules.ui_common.save_files: Atelier's gallery has no 'Save' log folder; copy the "
                              "files yourself (they are under the output folders)")
