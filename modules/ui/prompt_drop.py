"""A picture dropped on a prompt box fills the tab's fields from its parameters (A1111's drop on the prompt).

The file travels as any upload does: the page's drop handler (`prompt_drop_js`) puts it into a hidden
`gr.File` of the tab (`#<tab>_prompt_image`), so Gradio's upload size limit and file rules apply. The
server reads the picture's infotext as the PNG Info tab does (modules.outputs.png_info.read_png_info: metadata
only, the pixels are never decoded) and pastes it as the tab's ↙️ button does
(modules.ui.generation_form.paste_updates). A file that is not an image, or a picture without
parameters, leaves the fields as they are and says so where the paste note goes.

Dropped text still goes into the box as text; only files are taken.
"""

from __future__ import annotations

import html
from typing import Any, Sequence

import gradio as gr

NO_PARAMETERS = ("The dropped picture carries no generation parameters (PNG Info finds no infotext in it); "
                 "the fields are unchanged.")


def prompt_image_id(tabname: str) -> str:
    """The hidden upload's element id (A1111's `<tab>_prompt_image`)."""
    return f"{tabname}_prompt_image"


def dropped_updates(context, path: str | None, field_names: Sequence[str],
                    script_fields: Sequence[tuple[Any, Any]] = (), *, img2img: bool = False) -> tuple[list, str]:
    """The field updates (as `generation_form.paste_updates` makes them) and the HTML note for the
    picture uploaded at `path`; when it cannot be read or has no infotext, every field is skipped."""
    from modules.ui.generation_form import error_html, paste_updates
    from modules.outputs.png_info import read_png_info

    skipped = [gr.skip()] * (len(field_names) + len(script_fields))
    if not path:
        return skipped, ""
    info = read_png_info(path)
    if info.error:
        return skipped, error_html(f"The dropped file: {info.error}")
    if not info.infotext:
        return skipped, f"<p class='job-note'>{html.escape(NO_PARAMETERS)}</p>"
    return paste_updates(context, info.infotext, field_names, script_fields, img2img=img2img)


def wire(context, tabname: str, top, results, field_names: Sequence[str], fields: dict[str, Any],
         script_fields: Sequence[tuple[Any, Any]] = (), *, img2img: bool = False) -> gr.File:
    """Add the tab's hidden upload and paste what a picture dropped on its prompt box carries into
    `fields` (`field_names` order, then `script_fields`), with the note in the results' message line
    (`html_log_<tab>`: the shown infotext stays).
    `top` is the tab's PromptRow, `results` its ResultsColumn."""
    # "hidden" (not False): Gradio leaves invisible components out of the page, and the drop handler
    # needs this one's file input.
    upload = gr.File(file_count="single", type="filepath", visible="hidden", label="Dropped picture",
                     elem_id=prompt_image_id(tabname))

    def on_upload(path: str | None):
        updates, note = dropped_updates(context, path, field_names, script_fields, img2img=img2img)
        return (*updates, note, None)  # emptied, so the same picture can be dropped again

    # `upload`, not `change`: emptying the component must not run the handler again.
    upload.upload(on_upload, inputs=upload,
                  outputs=[*(fields[name] for name in field_names), *(component for component, _ in script_fields),
                           results.log, upload],
                  show_progress="hidden")
    return upload


# The page's drop handler: a file dropped on a tab's prompt boxes goes into that tab's hidden upload.
DROP_JS = r"""
const atelierDroppedFiles = (event) => event.dataTransfer && Array.from(event.dataTransfer.types || []).includes('Files');
const atelierDropTarget = (event) => {
    const box = event.target && event.target.closest &&
        event.target.closest('[id$=_toprow] [id$=_prompt], [id$=_toprow] [id$=_neg_prompt]');
    if (!box) return null;
    const tab = box.closest('[id$=_toprow]').id.replace(/_toprow$/, '');
    return document.querySelector('#' + tab + '_prompt_image input[type=file]');
};
document.addEventListener('dragover', (event) => {
    if (!atelierDroppedFiles(event) || !atelierDropTarget(event)) return;
    event.preventDefault();
    event.dataTransfer.dropEffect = 'copy';
}, true);
document.addEventListener('drop', (event) => {
    if (!atelierDroppedFiles(event)) return;
    const input = atelierDropTarget(event);
    if (!input || !event.dataTransfer.files.length) return;
    event.preventDefault();
    event.stopPropagation();
    const one = new DataTransfer();
    one.items.add(event.dataTransfer.files[0]);
    input.files = one.files;
    input.dispatchEvent(new Event('change', {bubbles: true}));
}, true);
"""


def prompt_drop_js() -> str:
    """Statements for the page's load script (modules.ui.app `JS`)."""
    return DROP_JS
