"""The img2img tab, in A1111's layout and element ids (A1111.md §13.1): the prompt row, the mode
sub-tabs in `#mode_img2img` (img2img, Sketch, Inpaint, Inpaint sketch, Inpaint upload, Batch), the
resize / sampling / denoising / seed fields, the inpaint controls (shown on the Inpaint tabs only),
the Outpaint preset, the scripts, and the same results column as txt2img (modules.ui.generation_form
builds both tabs).

Handlers are thin: the mode's images -> init image and mask (modules.ui.img2img_inputs, pure
functions) -> `Img2ImgRequest` with the UI's defaults (modules.ui.request_fields) -> the generation
service's job queue -> gallery values.

Batch (mode 5) is its own sub-tab (modules.ui.img2img_batch_tab): Generate there queues one job
over the files (`batch_work`) with the tab's fields as every file's template.

The brush (Inpaint) and the sketches are Gradio 6's ImageEditor, which draws from pointer events, so
mouse, pen and touch all paint (a finger on the canvas does not scroll the page: `touch-action:
none` in modules.ui.app's CSS). The Inpaint mask is the brush layer's alpha, thresholded as A1111's
create_binary_mask (the brush is white at 60 % opacity, so the picture shows through; the eraser
unpaints).

Outpaint preset (the issue's; A1111 has only the Outpainting scripts): the image of the current
sub-tab (img2img, Inpaint or Inpaint upload) is fitted into the "Resize to" width × height as
"Resize and fill" places it (edges stretched into the new bands), and sent to Inpaint upload with a
mask that is white over the new border and 8 px into the picture (so the seam is repainted); the
resize mode is set to "Resize and fill" (the canvas already has the target size, so nothing is
resized again) and masked content to "fill" (the bands start as blurred surroundings, not stretched
lines).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import gradio as gr

from modules.generation.requests import Img2ImgRequest
from modules.generation.styles import apply_request_styles
from modules.ui import generation_form, img2img_batch_tab, prompt_drop, scripts_panel, styles_panel
from modules.ui.component_hooks import ComponentHooks
from modules.ui.generation_form import ResultsColumn, paste_updates, selected_image
from modules.ui.img2img_inputs import (
    INPAINT_MODES,
    INPAINT_SKETCH_MODE,
    MAX_SIZE,
    MIN_SIZE,
    SIZE_STEP,
    InputError,
    mode_inputs,
    outpaint_canvas,
    resize_by_size,
)
from modules.ui.request_fields import (
    IMG2IMG_FIELDS,
    IMG2IMG_UI_DEFAULTS,
    INPAINT_AREA_LABELS,
    INPAINT_FIELDS,
    MASK_MODE_LABELS,
    MASKED_CONTENT_LABELS,
    RESIZE_MODE_LABELS,
    RequestError,
    build_img2img_request,
    slider_args,
)
from modules.ui.shared import UiShared
from modules.ui.token_counter import TokenCounter

log = logging.getLogger(__name__)

TABNAME = "img2img"
# Sub-tab ids inside `#mode_img2img` (gr.Tabs(selected=...) picks one), by A1111's mode index.
MODE_TAB_IDS = ("mode_img2img", "mode_sketch", "mode_inpaint", "mode_inpaint_sketch", "mode_inpaint_upload",
                "mode_batch")
IMG2IMG_MODE, INPAINT_MODE, UPLOAD_MODE, BATCH_MODE = 0, 2, 4, 5
OUTPAINT_OVERLAP = 8
# The images a generation reads besides the fields, in this order (`request_from_widgets`).
IMAGE_INPUTS = ("mode", "image", "sketch", "inpaint", "inpaint_sketch", "upload_base", "upload_mask", "mask_alpha",
                "resize_by", "scale")


def is_edit_model(context) -> bool:
    """Whether the model generations use now is instruct-pix2pix (A1111's `cond_stage_key == "edit"`):
    the library detects it by its 8-channel UNet (modules.library.model_detection, "sd1-pix2pix")."""
    from modules.library.model_detection import Architectures

    return context.current_architecture() == Architectures.SD1_PIX2PIX


@dataclass
class Img2ImgTab:
    """The components other tabs send to (txt2img's and PNG Info's send-to buttons)."""

    fields: dict[str, Any]
    mode_tabs: gr.Tabs
    mode: gr.Number
    image: gr.Image
    sketch: gr.ImageEditor
    inpaint: gr.ImageEditor
    inpaint_sketch: gr.ImageEditor
    upload_base: gr.Image
    upload_mask: gr.Image
    results: ResultsColumn
    generation_state: gr.State
    paste_fields: list


# --- plain functions -----------------------------------------------------------------------------


def request_from_widgets(context, values: dict[str, Any], images: dict[str, Any]) -> tuple[Img2ImgRequest, list[str]]:
    """The request the Generate button sends, and notes for the user: `values` keyed by
    `IMG2IMG_FIELDS`, `images` by `IMAGE_INPUTS` (the mode, each sub-tab's value, Mask transparency,
    whether "Resize by" is the open size tab, and its scale). Raises RequestError (InputError)
    naming the widget."""
    mode = int(images.get("mode") or 0)
    values = dict(values)
    invert = values.get("inpainting_mask_invert") == MASK_MODE_LABELS[1]
    mask_blur = values.get("mask_blur")
    picked = mode_inputs(mode, image=images.get("image"), sketch=images.get("sketch"), inpaint=images.get("inpaint"),
                         inpaint_sketch=images.get("inpaint_sketch"), upload_base=images.get("upload_base"),
                         upload_mask=images.get("upload_mask"), mask_transparency=images.get("mask_alpha") or 0,
                         mask_blur=IMG2IMG_UI_DEFAULTS["mask_blur"] if mask_blur is None else mask_blur,
                         invert=invert)
    notes: list[str] = []
    if images.get("resize_by"):
        try:
            scaled = resize_by_size(picked.image.size, float(images.get("scale") or 0))
        except ValueError as error:
            raise InputError(str(error)) from None
        values["width"], values["height"] = scaled.size
        notes += [scaled.note] if scaled.note else []
    if picked.mask is None:  # plain img2img: the inpaint controls do not apply
        for name in INPAINT_FIELDS:
            values.pop(name, None)
    request = build_img2img_request(values, [picked.image], picked.mask,
                                    edit_model=is_edit_model(context))
    return apply_request_styles(request, context.prompt_styles), notes


def batch_work(context, values: dict[str, Any], images: dict[str, Any], batch, batch_values: Sequence[Any]):
    """The Batch sub-tab's Generate: every field of the tab as the template of each file's request
    (the inpaint controls too: a mask folder makes it inpainting), "Resize by" applied per file, one
    job over the files (modules.generation.img2img_batch)."""
    from PIL import Image

    from modules.generation.img2img_batch import submit_batch

    stand_in = Image.new("RGB", (64, 64))  # the fields are checked now; each file brings its own image
    request = build_img2img_request(values, [stand_in], None, edit_model=is_edit_model(context))
    template = apply_request_styles(request, context.prompt_styles).model_dump(exclude={"init_images", "mask"})
    try:
        spec = batch.spec(*batch_values)
    except ValueError as error:
        raise InputError(str(error)) from None
    scale_by = float(images.get("scale") or 0) if images.get("resize_by") else None

    def submit(selection, owner=None):
        # `owner` only with --multi-user: the batch runs as that user's job, in their folders.
        mine = {"owner": owner} if owner is not None else {}
        try:
            return submit_batch(context, template, spec, selection, scale_by=scale_by, **mine)
        except RequestError:
            raise
        except ValueError as error:  # BatchRefused, a field the batch refuses, an over-long prompt
            raise InputError(str(error)) from None

    return generation_form.QueuedWork(submit, lambda job: img2img_batch_tab.batch_outcome(context, job))


def resize_by_preview(image, scale: float) -> str:
    """The line under "Resize by": the size it gives the open sub-tab's image."""
    if image is None:
        return "<p class='job-note'>Resize by scales the image of the open sub-tab; upload one.</p>"
    try:
        scaled = resize_by_size(image.size, float(scale or 0))
    except ValueError as error:
        return generation_form.error_html(str(error))
    text = f"Resize from {image.width}x{image.height} to {scaled.size[0]}x{scaled.size[1]}"
    if scaled.note:
        text += f" ({scaled.exact[0]}x{scaled.exact[1]} rounded to multiples of {SIZE_STEP})"
    return f"<p class='job-note'>{text}</p>"


def _mode_image(mode, image, sketch, inpaint, inpaint_sketch, upload_base) -> Any:
    """The picture of sub-tab `mode` (an editor's background), None when it has none."""
    mode = int(mode or 0)
    value = {0: image, 1: sketch, 2: inpaint, 3: inpaint_sketch, 4: upload_base}.get(mode)
    return _editor_background(value) if isinstance(value, dict) else value


def outpaint_preset(image, width: int, height: int):
    """The Outpaint button: (canvas, mask) for `image` extended to width×height — the picture fitted
    and its edges stretched into the new bands ("Resize and fill"), the mask white over the bands and
    `OUTPAINT_OVERLAP` px into the picture. Raises InputError when there is no image or no border."""
    from modules.generation.img2img_images import resize_image

    if image is None:
        raise InputError("Outpaint: no image; upload one on the img2img or Inpaint tab first")
    canvas = outpaint_canvas(image.size, int(width), int(height), overlap=OUTPAINT_OVERLAP)
    if not canvas.has_border:
        raise InputError(f"Outpaint: the image ({image.width}x{image.height}) already has the aspect ratio of "
                         f"{width}x{height}, so there is no border to fill; make Width or Height (Resize to) "
                         "larger in one direction")
    return resize_image(RESIZE_MODE_LABELS.index("Resize and fill"), image.convert("RGB"), int(width),
                        int(height)), canvas.mask


def _editor_background(value) -> Any:
    return value.get("background") if isinstance(value, dict) else None


def open_gallery_image(item) -> Any:
    """What a send-to button sends, as a loaded PIL image (or None): a gallery's value (its selected
    item is picked by the caller), a file path, a numpy array or a PIL image."""
    from PIL import Image

    if isinstance(item, (list, tuple)):  # a gallery value: its first item
        item = selected_image(item, None)
    if isinstance(item, dict):
        item = item.get("path") or item.get("background")
    if item is None or isinstance(item, Image.Image):
        return item
    if not isinstance(item, str):
        try:
            import numpy as np

            return Image.fromarray(np.asarray(item).astype("uint8"))
        except (TypeError, ValueError) as error:
            log.warning("send to img2img: cannot read a %s as an image: %s", type(item).__name__, error)
            return None
    try:
        with Image.open(item) as image:
            image.load()
            return image.copy()
    except (OSError, Image.DecompressionBombError) as error:
        log.warning("send to img2img: cannot open the image: %s", error)
        return None


# --- gradio ---------------------------------------------------------------------------------------


def build(context, shared: UiShared) -> Img2ImgTab:
    """Build the tab inside the current `gr.Tab`; fills `shared.img2img`."""
    counter = TokenCounter()
    fields: dict[str, Any] = {}
    hooks = ComponentHooks.for_context(context, is_img2img=True)
    top = generation_form.build_prompt_row(hooks, context, TABNAME)
    styles_dialog = styles_panel.build_dialog(context, TABNAME)
    with gr.Row(elem_id="img2img_main", equal_height=False):
        with gr.Column(scale=1, elem_id="img2img_settings"):
            modes = _build_mode_tabs(context, hooks)
            controls = _build_settings(context, shared, fields, hooks)
        results = generation_form.build_results_column(hooks, TABNAME)

    fields["prompt"], fields["negative_prompt"] = top.prompt, top.negative
    fields["styles"] = top.styles.dropdown
    generation_state = gr.State({})
    job_id_state = gr.State(None)
    paste_fields = generation_form.register_paste_fields(context, TABNAME, fields, modes["image"])
    tab = Img2ImgTab(fields, modes["tabs"], modes["mode"], modes["image"], modes["sketch"], modes["inpaint"],
                     modes["inpaint_sketch"], modes["upload_base"], modes["upload_mask"], results, generation_state,
                     paste_fields)

    image_inputs = [modes["mode"], modes["image"], modes["sketch"], modes["inpaint"], modes["inpaint_sketch"],
                    modes["upload_base"], modes["upload_mask"], controls["mask_alpha"], controls["resize_by"],
                    controls["scale"]]
    count, images_end = len(IMG2IMG_FIELDS), len(IMG2IMG_FIELDS) + len(image_inputs)
    batch = modes["batch"]

    def make_request(values: Sequence[Any]):
        fields_values = dict(zip(IMG2IMG_FIELDS, values[:count]))
        images = dict(zip(IMAGE_INPUTS, values[count:images_end]))
        if int(images.get("mode") or 0) == BATCH_MODE:
            return batch_work(context, fields_values, images, batch, values[images_end:])
        return request_from_widgets(context, fields_values, images)

    generation_form.wire_generation(context, TABNAME, top, controls["scripts"], results,
                                    [*(fields[name] for name in IMG2IMG_FIELDS), *image_inputs, *batch.inputs],
                                    make_request,
                                    generation_state, job_id_state)
    generation_form.wire_token_counters(context, counter, top, fields["steps"])
    generation_form.wire_paste(context, top, results, IMG2IMG_FIELDS, fields, generation_state, paste_fields,
                               img2img=True)
    prompt_drop.wire(context, TABNAME, top, results, IMG2IMG_FIELDS, fields, paste_fields, img2img=True)
    generation_form.wire_seed_and_size_buttons(context, TABNAME, fields, controls["random_seed"],
                                               controls["reuse_seed"], controls["res_switch"], results,
                                               generation_state)
    _wire_mode_controls(modes, controls)
    preview_inputs = [modes["mode"], modes["image"], modes["sketch"], modes["inpaint"], modes["inpaint_sketch"],
                      modes["upload_base"], controls["scale"]]

    def on_preview(*values):
        return resize_by_preview(_mode_image(*values[:-1]), values[-1])

    for event in (controls["scale"].release, controls["resize_by_tab"].select):
        event(on_preview, inputs=preview_inputs, outputs=controls["scale_preview"], show_progress="hidden")
    _wire_outpaint(tab, controls)
    styles_panel.wire(context, top.styles, styles_dialog, top.prompt, top.negative, shared.page_loads)

    def image_cfg_visibility():
        return gr.update(visible=is_edit_model(context))

    shared.page_loads.append((image_cfg_visibility, [fields["image_cfg_scale"]]))
    if shared.checkpoint_switched is not None:
        shared.checkpoint_switched.then(image_cfg_visibility, outputs=fields["image_cfg_scale"],
                                        show_progress="hidden")
    shared.img2img = tab
    # The gallery's own send-to buttons (A1111's output panel): only the image moves.
    wire_send_image(context, shared, results.send_to_img2img, results.gallery, generation_state, IMG2IMG_MODE)
    wire_send_image(context, shared, results.send_to_inpaint, results.gallery, generation_state, INPAINT_MODE)
    return tab


def _build_mode_tabs(context, hooks: ComponentHooks) -> dict[str, Any]:
    """The mode sub-tabs and the hidden number holding the open one (A1111's `mode`)."""
    editor = {"type": "pil", "image_mode": "RGBA", "format": "png", "sources": ["upload", "clipboard"],
              "transforms": [], "height": 480}
    # Semi-transparent white, so the picture shows through the mask; its alpha (0.6 → 153) is above
    # create_binary_mask's threshold of 128, so a stroke is fully masked.
    mask_brush = gr.Brush(colors=[("#ffffff", 0.6)], default_color=("#ffffff", 0.6), color_mode="fixed")
    parts: dict[str, Any] = {}
    copies: list[tuple[Any, int, int]] = []
    with gr.Tabs(elem_id="mode_img2img", selected=MODE_TAB_IDS[0]) as tabs:
        with gr.Tab("img2img", id=MODE_TAB_IDS[0], elem_id="img2img_img2img_tab") as tab0:
            parts["image"] = hooks.create(gr.Image, label="Image for img2img", type="pil", image_mode="RGBA",
                                          format="png", sources=["upload", "clipboard"], elem_id="img2img_image",
                                          height=480)
            copies += _copy_row(0)
        with gr.Tab("Sketch", id=MODE_TAB_IDS[1], elem_id="img2img_img2img_sketch_tab") as tab1:
            parts["sketch"] = hooks.create(gr.ImageEditor, label="Image for img2img", elem_id="img2img_sketch",
                                           brush=gr.Brush(color_mode="defaults"), layers=False, **editor)
            copies += _copy_row(1)
        with gr.Tab("Inpaint", id=MODE_TAB_IDS[2], elem_id="img2img_inpaint_tab") as tab2:
            parts["inpaint"] = hooks.create(gr.ImageEditor, label="Image for inpainting with mask",
                                            elem_id="img2maskimg", brush=mask_brush, layers=False, **editor)
            copies += _copy_row(2)
        with gr.Tab("Inpaint sketch", id=MODE_TAB_IDS[3], elem_id="img2img_inpaint_sketch_tab") as tab3:
            parts["inpaint_sketch"] = hooks.create(gr.ImageEditor, label="Color sketch inpainting",
                                                   elem_id="inpaint_sketch", brush=gr.Brush(color_mode="defaults"),
                                                   layers=False, **editor)
            copies += _copy_row(3)
        with gr.Tab("Inpaint upload", id=MODE_TAB_IDS[4], elem_id="img2img_inpaint_upload_tab") as tab4:
            parts["upload_base"] = hooks.create(gr.Image, label="Image", type="pil", image_mode="RGBA", format="png",
                                                sources=["upload", "clipboard"], elem_id="img_inpaint_base")
            parts["upload_mask"] = hooks.create(gr.Image, label="Mask", type="pil", image_mode="RGBA", format="png",
                                                sources=["upload", "clipboard"], elem_id="img_inpaint_mask")
        with gr.Tab("Batch", id=MODE_TAB_IDS[5], elem_id="img2img_batch_tab") as tab5:
            parts["batch"] = img2img_batch_tab.build(context)
    parts["tabs"] = tabs
    parts["mode"] = gr.Number(value=0, precision=0, visible=False, elem_id="img2img_selected_mode")
    for index, tab in enumerate((tab0, tab1, tab2, tab3, tab4, tab5)):
        tab.select(lambda index=index: index, outputs=parts["mode"], show_progress="hidden", queue=False)
    _wire_copies(parts, copies)
    return parts


# A1111's "Copy image to:" rows, by mode: (button text, A1111's id part, the component's key in parts).
COPY_TARGETS = {0: ("img2img", "img2img", "image"), 1: ("sketch", "sketch", "sketch"),
                2: ("inpaint", "inpaint", "inpaint"), 3: ("inpaint sketch", "inpaint_sketch", "inpaint_sketch")}


def _copy_row(source: int) -> list[tuple[Any, int, int]]:
    """A1111's "Copy image to:" row of sub-tab `source` (modes 0–3, `#img2img_copy_to_<name>`): a
    button per other mode; returns (button, source, target) for each."""
    name = COPY_TARGETS[source][1]
    buttons = []
    with gr.Row(elem_id=f"img2img_copy_to_{name}", equal_height=True):
        gr.HTML("Copy image to:", elem_id=f"img2img_label_copy_to_{name}", js_on_load=None)
        for target, (title, _, _) in COPY_TARGETS.items():
            if target != source:
                buttons.append((gr.Button(title, size="sm", min_width=60), source, target))
    return buttons


def copied_image(value) -> Any:
    """What "Copy image to" copies: an image as it is, an editor's picture with its strokes (its
    composite, else its background)."""
    if isinstance(value, dict):
        composite = value.get("composite")
        return composite if composite is not None else value.get("background")
    return value


def _wire_copies(parts: dict[str, Any], copies: list[tuple[Any, int, int]]) -> None:
    for button, source, target in copies:
        button.click(lambda value, target=target: (copied_image(value), gr.Tabs(selected=MODE_TAB_IDS[target]),
                                                   target),
                     inputs=parts[COPY_TARGETS[source][2]],
                     outputs=[parts[COPY_TARGETS[target][2]], parts["tabs"], parts["mode"]], show_progress="hidden")


def _build_settings(context, shared: UiShared, fields: dict[str, Any], hooks: ComponentHooks) -> dict[str, Any]:
    """Resize, sampling, size, CFG, denoising, seed, the inpaint controls and the scripts (into
    `fields` for the request's, the rest returned)."""
    controls: dict[str, Any] = {}
    with gr.Row():
        fields["resize_mode"] = hooks.create(gr.Radio, choices=list(RESIZE_MODE_LABELS),
                                             value=IMG2IMG_UI_DEFAULTS["resize_mode"], label="Resize mode",
                                             elem_id="resize_mode", scale=4)
        controls["outpaint"] = hooks.create(gr.Button, value="Outpaint", elem_id="img2img_outpaint", size="sm",
                                            scale=0, min_width=90)
    generation_form.build_sampling_fields(fields, hooks, TABNAME, hires=False)
    with gr.Row(equal_height=True):
        with gr.Column(scale=4):
            with gr.Tabs(elem_id="img2img_dimensions_row"):
                with gr.Tab("Resize to", elem_id="img2img_tab_resize_to") as resize_to_tab:
                    with gr.Row(equal_height=True):
                        controls["res_switch"] = generation_form.build_dimension_fields(fields, hooks, TABNAME)
                with gr.Tab("Resize by", elem_id="img2img_tab_resize_by") as resize_by_tab:
                    controls["scale"] = hooks.create(gr.Slider, minimum=0.05, maximum=4.0, step=0.05, value=1.0,
                                                     label="Scale", elem_id="img2img_scale")
                    controls["scale_preview"] = gr.HTML("", elem_id="img2img_scale_resolution_preview",
                                                        js_on_load=None)
        generation_form.build_batch_fields(fields, hooks, TABNAME)
    controls["resize_by"] = gr.State(False)
    resize_to_tab.select(lambda: False, outputs=controls["resize_by"], show_progress="hidden", queue=False)
    resize_by_tab.select(lambda: True, outputs=controls["resize_by"], show_progress="hidden", queue=False)
    controls["resize_by_tab"] = resize_by_tab
    with gr.Row():
        fields["cfg_scale"] = hooks.create(gr.Slider, **slider_args("cfg_scale"), label="CFG Scale",
                                           elem_id="img2img_cfg_scale")
        fields["image_cfg_scale"] = hooks.create(gr.Slider, **{**slider_args("image_cfg_scale", Img2ImgRequest),
                                                               "value": IMG2IMG_UI_DEFAULTS["image_cfg_scale"]},
                                                 label="Image CFG Scale", elem_id="img2img_image_cfg_scale",
                                                 visible=False)
    fields["denoising_strength"] = hooks.create(gr.Slider, **slider_args("denoising_strength", Img2ImgRequest),
                                                label="Denoising strength", elem_id="img2img_denoising_strength")
    controls["random_seed"], controls["reuse_seed"] = generation_form.build_seed_fields(fields, hooks, TABNAME)
    with gr.Group(visible=False, elem_id="inpaint_controls") as inpaint_group:
        with gr.Row():
            fields["mask_blur"] = hooks.create(gr.Slider, **slider_args("mask_blur_x", Img2ImgRequest),
                                               label="Mask blur", elem_id="img2img_mask_blur")
            controls["mask_alpha"] = hooks.create(gr.Slider, minimum=0, maximum=100, step=1, value=0,
                                                  label="Mask transparency", elem_id="img2img_mask_alpha",
                                                  visible=False)
        fields["inpainting_mask_invert"] = hooks.create(gr.Radio, choices=list(MASK_MODE_LABELS),
                                                        value=IMG2IMG_UI_DEFAULTS["inpainting_mask_invert"],
                                                        label="Mask mode", elem_id="img2img_mask_mode")
        fields["inpainting_fill"] = hooks.create(gr.Radio, choices=list(MASKED_CONTENT_LABELS),
                                                 value=IMG2IMG_UI_DEFAULTS["inpainting_fill"], label="Masked content",
                                                 elem_id="img2img_inpainting_fill")
        with gr.Row():
            fields["inpaint_full_res"] = hooks.create(gr.Radio, choices=list(INPAINT_AREA_LABELS),
                                                      value=IMG2IMG_UI_DEFAULTS["inpaint_full_res"],
                                                      label="Inpaint area", elem_id="img2img_inpaint_full_res")
            fields["inpaint_full_res_padding"] = hooks.create(
                gr.Slider, **{**slider_args("inpaint_full_res_padding", Img2ImgRequest),
                              "value": IMG2IMG_UI_DEFAULTS["inpaint_full_res_padding"]},
                label="Only masked padding, pixels", elem_id="img2img_inpaint_full_res_padding")
    controls["inpaint_group"] = inpaint_group
    generation_form.build_override_field(fields, hooks, TABNAME)
    controls["scripts"] = scripts_panel.build(context, shared, is_img2img=True)
    return controls


def _wire_mode_controls(modes: dict[str, Any], controls: dict[str, Any]) -> None:
    """The inpaint controls show on the Inpaint tabs (2–4); Mask transparency on Inpaint sketch only."""
    def on_mode(mode):
        mode = int(mode or 0)
        return gr.update(visible=mode in INPAINT_MODES), gr.update(visible=mode == INPAINT_SKETCH_MODE)

    modes["mode"].change(on_mode, inputs=modes["mode"], outputs=[controls["inpaint_group"], controls["mask_alpha"]],
                         show_progress="hidden", queue=False)


def _wire_outpaint(tab: Img2ImgTab, controls: dict[str, Any]) -> None:
    fields = tab.fields

    def on_outpaint(mode, image, inpaint, base, width, height):
        mode = int(mode or 0)
        source = {0: image, 2: _editor_background(inpaint), 4: base}.get(mode) or image or \
            _editor_background(inpaint) or base
        try:
            canvas, mask = outpaint_preset(source, width, height)
        except InputError as error:
            return (gr.skip(),) * 6 + (generation_form.error_html(str(error)),)
        note = (f"<p class='job-note'>Outpaint: the image is fitted into {int(width)}x{int(height)} and the mask "
                "covers the new border; press Generate.</p>")
        return (canvas, mask, "Resize and fill", "fill", gr.Tabs(selected=MODE_TAB_IDS[UPLOAD_MODE]), UPLOAD_MODE,
                note)

    controls["outpaint"].click(on_outpaint,
                               inputs=[tab.mode, tab.image, tab.inpaint, tab.upload_base, fields["width"],
                                       fields["height"]],
                               outputs=[tab.upload_base, tab.upload_mask, fields["resize_mode"],
                                        fields["inpainting_fill"], tab.mode_tabs, tab.mode, tab.results.log],
                               show_progress="hidden")


def _request_side(pixels: int) -> int:
    """An image side as the Width/Height sliders take it: a multiple of 8 in 64–2048."""
    return min(MAX_SIZE, max(MIN_SIZE, pixels - pixels % SIZE_STEP))


def reads_files_safely(component) -> bool:
    """Whether a send-to source's value is an image or a file Gradio checked (uploads and outputs in
    its cache), so it may be opened: a text box's "path" is whatever a user typed."""
    return isinstance(component, (gr.Image, gr.Gallery, gr.ImageEditor, gr.File))


def _target(tab: Img2ImgTab, mode: int):
    return tab.inpaint if mode == INPAINT_MODE else tab.image


def wire_send_image(context, shared: UiShared, button, gallery, state, mode: int, *, copy_from: dict | None = None):
    """`button` sends the gallery's selected image (or an image component's image) to img2img (`mode`
    0, `#img2img_image`) or inpaint (`mode` 2, `#img2maskimg`) and opens that tab and sub-tab.
    Sending to img2img also sets Width/Height to the image's size (A1111's `send_size`; rounded down
    to the multiple of 8 a request needs). `copy_from` (txt2img's fields by request
    name): prompt, negative prompt, steps and (with `send_seed`) the seed are copied too (A1111 copies
    them from txt2img only)."""
    if not reads_files_safely(gallery):
        raise TypeError(f"send to img2img: the source is a {type(gallery).__name__}; it must be an image, gallery "
                        "or file component")
    tab: Img2ImgTab = shared.img2img
    copied = [name for name in ("prompt", "negative_prompt", "steps", "seed") if copy_from]
    sizes = mode != INPAINT_MODE

    has_state = state is not None

    def on_send(images, *rest):
        state_value, values = (rest[0], rest[1:]) if has_state else (None, rest)
        picked = selected_image(images, state_value) if isinstance(images, (list, tuple)) else images
        image = open_gallery_image(picked)
        if image is None:
            note = "<p class='job-note'>Nothing to send: generate an image first.</p>"
            return (gr.skip(),) * (1 + len(copied) + 2 * sizes + 3) + (note,)
        updates: list = [image]
        for name, value in zip(copied, values):
            skip_seed = name == "seed" and not context.settings.current()["send_seed"]
            updates.append(gr.skip() if skip_seed else value)
        if sizes:
            send_size = context.settings.current()["send_size"]
            updates += [_request_side(image.width), _request_side(image.height)] if send_size else [gr.skip()] * 2
        return (*updates, gr.Tabs(selected="img2img"), gr.Tabs(selected=MODE_TAB_IDS[mode]), mode, "")

    outputs = [_target(tab, mode), *(tab.fields[name] for name in copied)]
    if sizes:
        outputs += [tab.fields["width"], tab.fields["height"]]
    outputs += [shared.tabs, tab.mode_tabs, tab.mode, tab.results.log]
    button.click(on_send, inputs=[gallery, *([state] if has_state else []), *(copy_from[name] for name in copied)],
                 outputs=outputs, show_progress="hidden")


def wire_send_infotext(context, shared: UiShared, button, source, image_path, mode: int) -> None:
    """PNG Info's (and extensions') "Send to img2img" / "Send to inpaint": the whole infotext in
    `source` pasted into the img2img fields (img2img keys included), the image of `image_path` (an
    image or file component, or None) into `#img2img_image` or `#img2maskimg`, and the tab and
    sub-tab opened."""
    tab: Img2ImgTab = shared.img2img
    script_fields = list(tab.paste_fields)
    if image_path is not None and not reads_files_safely(image_path):
        log.warning("send to img2img: the image source is a %s, not an image or file component; only the "
                    "infotext is sent", type(image_path).__name__)
        image_path = None

    def on_send(text: str, path=None):
        updates, note = paste_updates(context, text, IMG2IMG_FIELDS, script_fields, img2img=True)
        image = open_gallery_image(path) if path is not None else None
        return (*updates, image if image is not None else gr.skip(), gr.Tabs(selected="img2img"),
                gr.Tabs(selected=MODE_TAB_IDS[mode]), mode, note)

    button.click(on_send, inputs=[source, *([image_path] if image_path is not None else [])],
                 outputs=[*(tab.fields[name] for name in IMG2IMG_FIELDS), *(component for component, _ in script_fields),
                          _target(tab, mode), shared.tabs, tab.mode_tabs, tab.mode, tab.results.log],
                 show_progress="hidden")


def wire_send_from_txt2img(context, shared: UiShared) -> None:
    """txt2img's 🖼️ and 🎨️ buttons under its gallery (call after both tabs are built)."""
    results = shared.txt2img_results
    if results is None or shared.img2img is None:
        return
    copy_from = shared.txt2img_fields
    for button, mode in ((results.send_to_img2img, IMG2IMG_MODE), (results.send_to_inpaint, INPAINT_MODE)):
        wire_send_image(context, shared, button, results.gallery, shared.txt2img_generation_state, mode,
                        copy_from=copy_from)

