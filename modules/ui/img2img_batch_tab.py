"""The img2img tab's Batch sub-tab (A1111's layout and element ids, A1111.md §13.1): Upload or From
directory, and the "PNG info" accordion. The img2img tab builds it inside its
`gr.Tab("Batch", elem_id="img2img_batch_tab")`, passes `BatchTab.inputs` to its Generate handler and
turns their values into a `BatchSpec` with `BatchTab.spec(*values)`; the job itself is
`modules.generation.img2img_batch.submit_batch`.

On a server whose folders are closed to its users (`img2img_batch.directories_refusal`: `--listen`
without `--allow-ui-dir-config`, or `--hide-ui-dir-config`) the folder fields are not made at all
(the reason is shown instead), so no value for them can reach the server; the core refuses folders
there anyway.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from modules.generation.img2img_batch import PNG_INFO_PROPS, BatchSpec, directories_refusal

# The hidden source field's values, A1111's (extensions read them).
SOURCE_UPLOAD = "upload"
SOURCE_DIRECTORY = "from dir"
LABELS = {  # field -> the label shown (errors name it)
    "upload": "Batch Process",
    "input_dir": "Input directory",
    "output_dir": "Output directory",
    "inpaint_mask_dir": "Inpaint batch mask directory (required for inpaint batch processing only)",
    "use_png_info": "Append png info to prompts",
    "png_info_dir": "PNG info directory",
    "png_info_props": "Parameters to take from png info",
}
FROM_DIRECTORY_HINT = ("Process images in a folder on the machine where the server runs (subfolders included). "
                       "Leave the output directory empty to save the images as usual; name an inpaint batch mask "
                       "directory to inpaint with the mask of the same name (or its one file for every image).")


@dataclass
class BatchTab:
    """The Batch sub-tab's components. `inputs`: what the Generate handler passes on, in the order
    `spec` reads them; the folder fields are None (and left out of `inputs`) where folders are refused."""

    source: Any
    upload: Any
    use_png_info: Any
    png_info_props: Any
    input_dir: Any = None
    output_dir: Any = None
    inpaint_mask_dir: Any = None
    png_info_dir: Any = None
    refusal: str | None = None
    names: tuple[str, ...] = field(default=(), init=False)

    def __post_init__(self) -> None:
        order = ("source", "upload", "input_dir", "output_dir", "inpaint_mask_dir", "use_png_info", "png_info_dir",
                 "png_info_props")
        self.names = tuple(name for name in order if getattr(self, name) is not None)

    @property
    def inputs(self) -> list:
        return [getattr(self, name) for name in self.names]

    def spec(self, *values: Any) -> BatchSpec:
        """The `BatchSpec` for the values of `inputs`; a ValueError naming the field when they make none."""
        if len(values) != len(self.names):
            raise ValueError(f"the Batch tab has {len(self.names)} inputs ({', '.join(self.names)}), got {len(values)}")
        given = dict(zip(self.names, values))
        if given.get("source") == SOURCE_DIRECTORY and self.refusal is not None:
            raise ValueError(f"{LABELS['input_dir']}: {self.refusal}")
        return spec_from_values(given)


def spec_from_values(given: dict[str, Any]) -> BatchSpec:
    """`BatchSpec` from the sub-tab's values by field name (see `BatchTab.spec`)."""
    props = given.get("png_info_props") or ()
    use_png_info = bool(given.get("use_png_info"))
    png_info_dir = _text(given, "png_info_dir")
    if given.get("source", SOURCE_UPLOAD) == SOURCE_DIRECTORY:
        return BatchSpec.directory(_text(given, "input_dir"), _text(given, "output_dir"),
                                   _text(given, "inpaint_mask_dir"), use_png_info=use_png_info,
                                   png_info_dir=png_info_dir, png_info_props=props)
    files = [upload_path(item) for item in (given.get("upload") or ())]
    if not files:
        raise ValueError(f"{LABELS['upload']}: no files uploaded; drop the images to process on the Upload tab, or "
                         "pick the From directory tab")
    return BatchSpec.upload(files, use_png_info=use_png_info, png_info_dir=png_info_dir, png_info_props=props)


def _text(given: dict[str, Any], name: str) -> str:
    value = given.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{LABELS[name]}: expected a folder path as text, got {type(value).__name__}")
    return value.strip()


def upload_path(item: Any) -> str:
    """A `gr.Files` value's item: a path (Gradio 4+), or a file object with `.path`/`.name` (older)."""
    if isinstance(item, str):
        return item
    for attribute in ("path", "name"):
        value = getattr(item, attribute, None)
        if isinstance(value, str):
            return value
    raise ValueError(f"{LABELS['upload']}: an uploaded item is a {type(item).__name__}, not a file")


def build(context) -> BatchTab:
    """Create the Batch controls inside the caller's current `gr.Tab`."""
    refusal = directories_refusal(context.args)
    folders: dict[str, Any] = {}
    source = gr.Textbox(value=SOURCE_UPLOAD, visible=False, elem_id="img2img_batch_source_type")
    with gr.Tabs(elem_id="img2img_batch_source"):
        with gr.Tab("Upload", id="batch_upload", elem_id="img2img_batch_upload_tab") as upload_tab:
            upload = gr.Files(label=LABELS["upload"], interactive=True, file_count="multiple", type="filepath",
                              elem_id="img2img_image_batch")
        with gr.Tab("From directory", id="batch_from_dir", elem_id="img2img_batch_from_dir_tab") as directory_tab:
            if refusal is not None:
                gr.HTML(f"<p class='text-gray-500'>{_escape(refusal)}</p>", elem_id="img2img_batch_dirs_refused")
            else:
                gr.HTML(f"<p style='padding-bottom: 1em;' class='text-gray-500'>{_escape(FROM_DIRECTORY_HINT)}</p>")
                folders["input_dir"] = gr.Textbox(label=LABELS["input_dir"], elem_id="img2img_batch_input_dir")
                folders["output_dir"] = gr.Textbox(label=LABELS["output_dir"], elem_id="img2img_batch_output_dir")
                folders["inpaint_mask_dir"] = gr.Textbox(label=LABELS["inpaint_mask_dir"],
                                                         elem_id="img2img_batch_inpaint_mask_dir")
    upload_tab.select(lambda: SOURCE_UPLOAD, inputs=[], outputs=[source], show_progress="hidden")
    directory_tab.select(lambda: SOURCE_DIRECTORY, inputs=[], outputs=[source], show_progress="hidden")
    with gr.Accordion("PNG info", open=False):
        use_png_info = gr.Checkbox(label=LABELS["use_png_info"], elem_id="img2img_batch_use_png_info")
        if refusal is None:
            folders["png_info_dir"] = gr.Textbox(label=LABELS["png_info_dir"],
                                                 placeholder="Leave empty to use the input images' own",
                                                 elem_id="img2img_batch_png_info_dir")
        png_info_props = gr.CheckboxGroup(list(PNG_INFO_PROPS), label=LABELS["png_info_props"],
                                          info="Prompts from png info are appended to the prompts set in the UI.",
                                          elem_id="img2img_batch_png_info_props")
    return BatchTab(source=source, upload=upload, use_png_info=use_png_info, png_info_props=png_info_props,
                    refusal=refusal, **folders)


def _escape(text: str) -> str:
    import html

    return html.escape(text)


def batch_outcome(context, job) -> Any:
    """The finished batch job as the gallery shows it (`modules.ui.generation.GenerationOutcome`):
    the kept images with their infotexts, the skipped files as notes; a batch never gets a grid."""
    from modules.generation.requests import GenerationRequest
    from modules.serving.generation_service import GenerationSubmission
    from modules.ui.generation import outcome_of

    # The submission only decides the grid: none for a batch (save_grid=False), whatever the request.
    return outcome_of(context.settings.current(), GenerationSubmission(GenerationRequest(), save_grid=False), job)


def values_for(tab: BatchTab, **values: Any) -> Sequence[Any]:
    """`tab.inputs`' values from keyword values by field name (tests, scripts)."""
    return [values.get(name) for name in tab.names]
