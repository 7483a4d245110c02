"""The Extras tab (A1111.md §14.5): upscale (and any extension's postprocessing steps) one image, a
batch of uploads or a folder, in A1111's layout and element ids.

    left    #mode_extras: Single Image #extras_single_tab (#extras_image, RGBA)
                          Batch Process #extras_batch_process_tab (#extras_image_batch)
                          Batch from Directory #extras_batch_directory_tab (#extras_batch_input_dir,
                              #extras_batch_output_dir, #extras_show_extras_results)
            the postprocessing steps in their preferred order: Upscale (modules.ui.extras_upscale_ui),
            then each extension script's own `ui()`
    right   #extras_generate, #extras_interrupt, #extras_skip; #extras_progress, #extras_gallery,
            #extras_send_to_img2img, #extras_send_to_inpaint (the image only), #html_info_extras

The handler is thin: widget values -> `ExtrasRequest` (`extras_request`, a plain function) ->
`submit_extras` (a job of kind "extras" on the queue every tab shares) -> gallery and infotext. The
Batch Process uploads go as paths: at submit only their headers are read (each file's size against
the per-image limit, all results against the request's output budget), and the worker decodes one
file at a time. Building and submitting the request runs in a worker thread, off the event loop.
Each step's widgets come back as a dict keyed by its `process()` keyword names, so the request's
`script_args[step name]` is that dict's values (A1111's `script.controls`).

On a server whose folders are closed to its users (`--hide-ui-dir-config`, or `--listen` without
`--allow-ui-dir-config`; img2img Batch's rule, `img2img_batch.directories_refusal`) the folder
fields are not made at all and the sub-tab says why; the core refuses folders there anyway.

"Send to Extras" (`wire_send_to_extras`): the txt2img/img2img galleries' 📐 buttons, PNG Info's and
the extensions' "extras" bindings put the image into #extras_image and open this tab (only the
image is sent, as in A1111).
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
from pydantic import ValidationError

from modules.generation.img2img_batch import directories_refusal
from modules.postprocessing.extras import EXTRAS_JOB_KIND  # Interrupt/Skip stop only these jobs
from modules.serving.accounts import caller
from modules.serving.jobs import QueueFullError
from modules.ui import extras_upscale_ui
from modules.ui.generation import error_html, follow_job_async, follow_options, render_progress
from modules.ui.generation_form import selected_image, selected_info_html, stop_job
from modules.ui.icons import icon_label
from modules.ui.shared import UiShared

log = logging.getLogger(__name__)

TAB_ID = "extras"  # the main tab's id in modules.ui.app.TAB_IDS
SINGLE, BATCH, DIRECTORY = 0, 1, 2  # A1111's `extras_mode`
MODE_TAB_IDS = ("single_image", "batch_process", "batch_from_directory")
LABELS = {
    "image": "Single Image",
    "files": "Batch Process",
    "input_dir": "Input directory",
    "output_dir": "Output directory",
    "show_results": "Show result images",
}


class ExtrasInputError(ValueError):
    """The tab's values make no request; the message names the widget and says what to do."""


@dataclass
class ScriptControls:
    """One postprocessing step's widgets, by its `process()` keyword name."""

    name: str
    controls: dict[str, Any]


@dataclass
class ExtrasTab:
    """The components other tabs send to, and what tests look up."""

    mode_tabs: Any
    mode: Any
    image: Any
    files: Any
    input_dir: Any
    output_dir: Any
    show_results: Any
    generate: Any
    gallery: Any
    info: Any
    progress: Any
    scripts: list[ScriptControls] = field(default_factory=list)
    refusal: str | None = None

    @property
    def script_inputs(self) -> list:
        return [component for script in self.scripts for component in script.controls.values()]


# --- plain functions -----------------------------------------------------------------------------


def script_args(scripts: Sequence[ScriptControls], values: Sequence[Any]) -> dict[str, dict[str, Any]]:
    """`script_args` for the request: each step's widget values (in `ExtrasTab.script_inputs` order)
    keyed by its `process()` keyword names."""
    expected = sum(len(script.controls) for script in scripts)
    if len(values) != expected:
        raise ValueError(f"the postprocessing steps have {expected} inputs, got {len(values)} values")
    args: dict[str, dict[str, Any]] = {}
    position = 0
    for script in scripts:
        names = list(script.controls)
        args[script.name] = dict(zip(names, values[position:position + len(names)]))
        position += len(names)
    return args


def upload_files(files: Sequence[Any] | None) -> list[tuple[str, str]]:
    """The Batch Process uploads as (file name, path), in upload order, nothing read yet: the core
    checks each file's header at submit (a file that is no readable image, or too large, fails the
    whole batch there, as in A1111) and decodes them one at a time on the worker."""
    from modules.postprocessing.extras import MAX_EXTRAS_IMAGES
    from modules.ui.img2img_batch_tab import upload_path

    if not files:
        raise ExtrasInputError(f"{LABELS['files']}: no files uploaded; drop the images to process there, or use the "
                               "Single Image tab")
    if len(files) > MAX_EXTRAS_IMAGES:
        raise ExtrasInputError(f"{LABELS['files']}: {len(files)} files uploaded; one run takes at most "
                               f"{MAX_EXTRAS_IMAGES}: process them in several runs")
    uploads = []
    for item in files:
        try:
            path = upload_path(item)
        except ValueError as error:
            raise ExtrasInputError(str(error)) from None
        uploads.append((Path(path).name, path))
    return uploads


def extras_request(mode: int, image: Any, files: Sequence[Any] | None, input_dir: str | None,
                   output_dir: str | None, show_results: bool, args: dict[str, dict[str, Any]], *,
                   refusal: str | None = None):
    """The `ExtrasRequest` the Generate button sends for sub-tab `mode` (A1111's `extras_mode`):
    the single image, the uploads, or the folders; results are saved (the Extras tab always saves,
    A1111's `save_output`). Raises ExtrasInputError naming the widget."""
    from modules.postprocessing.extras import ExtrasRequest

    mode = int(mode or 0)
    request: dict[str, Any] = {"mode": mode, "script_args": args, "save": True}
    if mode == SINGLE:
        if image is None:
            raise ExtrasInputError(f"{LABELS['image']}: no image; upload one (or use the Batch Process tab)")
        request["images"] = [("", image)]
    elif mode == BATCH:
        request["files"] = upload_files(files)
    elif mode == DIRECTORY:
        if refusal is not None:
            raise ExtrasInputError(refusal)
        folder = (input_dir or "").strip()
        if not folder:
            raise ExtrasInputError(f"{LABELS['input_dir']}: empty; name a folder on the machine where the server "
                                   "runs")
        request.update(input_dir=folder, output_dir=(output_dir or "").strip(), show_results=bool(show_results))
    else:
        raise ExtrasInputError(f"unknown Extras mode {mode}; expected 0 (Single Image), 1 (Batch Process) or 2 "
                               "(Batch from Directory)")
    try:
        return ExtrasRequest(**request)
    except ValidationError as error:  # an image over the size limit, ...
        raise ExtrasInputError("; ".join(_message(detail) for detail in error.errors())) from None


def _message(detail: dict[str, Any]) -> str:
    """One pydantic error as a sentence: the field, then the validator's own message."""
    text = str(detail.get("msg", "")).removeprefix("Value error, ")
    where = ".".join(str(part) for part in detail.get("loc", ()) if not isinstance(part, int))
    return f"{where}: {text}" if where else text


def finished_view(job) -> tuple[list, str, dict[str, Any]]:
    """The finished job as the tab shows it: (gallery images, html info, state for picking an image).
    The info is the last image's postprocessing text, as A1111 shows, with the job's warnings."""
    from modules.postprocessing.extras import take_extras_result
    from modules.serving.jobs import JobState

    # An ExtrasResult, also after an interrupt (what was finished by then); taken, so the job kept in
    # the queue's history no longer holds the images.
    result = take_extras_result(job)
    images = list(result.images)
    infotexts = list(result.infotexts)
    notes = list(result.warnings)
    error = None
    if job.state is JobState.FAILED:
        error = job.error or "the job failed; see the console"
    elif job.state is JobState.INTERRUPTED or getattr(result, "interrupted", False):
        notes.append(f"Interrupted; {len(images)} image{'s' if len(images) != 1 else ''} finished." if images
                     else "Interrupted before an image was finished.")
    if job.started_at is not None and job.finished_at is not None:
        notes.append(f"Time taken: {job.finished_at - job.started_at:.1f} s")
    state = {"infotexts": infotexts, "notes": notes, "error": error, "index": max(0, len(infotexts) - 1)}
    return images, selected_info_html(state, state["index"]), state


# --- gradio ---------------------------------------------------------------------------------------


def _build_scripts(context) -> list[ScriptControls]:
    """Each postprocessing step's widgets, in the preferred order; a step whose `ui()` fails or returns
    no dict of components is left out with a note in the log (the others still show)."""
    from modules.postprocessing.runner import postprocessing_scripts
    from modules.postprocessing.upscale import UPSCALE_SCRIPT

    built: list[ScriptControls] = []
    for script in postprocessing_scripts(context):
        name = getattr(script, "name", None) or type(script).__name__
        if name == UPSCALE_SCRIPT:
            controls = extras_upscale_ui.build(context)
        else:
            try:
                with _extension_scope(context, script), gr.Group(elem_classes=["extras-script"]):
                    controls = script.ui()
            except (Exception, SystemExit):  # an extension's bug must not take the tab down
                log.exception("Extension %s: ui() of the postprocessing script %r failed; it is left out of Extras",
                              getattr(script, "extension", None), name)
                continue
            controls = _components_only(name, controls)
            if controls is None:
                continue
        script.controls = controls  # A1111 keeps them on the script (extensions read `controls`)
        built.append(ScriptControls(name, controls))
    return built


@contextlib.contextmanager
def _extension_scope(context, script):
    """Where an extension's `ui()` runs: its callback scope (A1111's module-level `on_*` and `shared`
    reach this app) and the Gradio 3 compatibility context, as the txt2img scripts' `ui()`."""
    from modules.extension_host.callbacks import registry_scope
    from modules.ui.component_hooks import extension_ui_scope

    runtime = getattr(context, "extensions", None)
    callbacks = getattr(runtime, "callbacks", None) if runtime is not None else None
    with contextlib.ExitStack() as stack:
        if callbacks is not None:
            stack.enter_context(registry_scope(callbacks, getattr(script, "extension", None)))
        stack.enter_context(extension_ui_scope())
        yield


def _components_only(name: str, controls: Any) -> dict[str, Any] | None:
    if not controls:
        return {}
    if not isinstance(controls, dict):
        log.warning("The postprocessing script %r: ui() returned a %s, not a dict of components by process() "
                    "argument; it is left out of Extras", name, type(controls).__name__)
        return None
    kept = {}
    for key, component in controls.items():
        if isinstance(component, gr.components.Component):
            kept[str(key)] = component
        else:
            log.warning("The postprocessing script %r: ui()[%r] is a %s, not a component; it is not passed to "
                        "process()", name, key, type(component).__name__)
    return kept


def build(context, shared: UiShared) -> ExtrasTab:
    """Build the tab inside the current `gr.Tab`; fills `shared.extras`."""
    from modules.ui.component_hooks import ComponentHooks, next_block_id

    first_id = next_block_id()
    refusal = directories_refusal(context.args)
    folders: dict[str, Any] = {"input_dir": None, "output_dir": None}
    with gr.Row(equal_height=False, elem_id="extras_main"):
        with gr.Column(scale=1, elem_id="extras_settings"):
            with gr.Tabs(elem_id="mode_extras", selected=MODE_TAB_IDS[SINGLE]) as mode_tabs:
                with gr.Tab("Single Image", id=MODE_TAB_IDS[SINGLE], elem_id="extras_single_tab") as single_tab:
                    image = gr.Image(label="Source", type="pil", image_mode="RGBA", format="png",
                                     sources=["upload", "clipboard"], elem_id="extras_image", height=480)
                with gr.Tab("Batch Process", id=MODE_TAB_IDS[BATCH], elem_id="extras_batch_process_tab") as batch_tab:
                    files = gr.Files(label=LABELS["files"], interactive=True, file_count="multiple",
                                     type="filepath", elem_id="extras_image_batch")
                with gr.Tab("Batch from Directory", id=MODE_TAB_IDS[DIRECTORY],
                            elem_id="extras_batch_directory_tab") as directory_tab:
                    if refusal is not None:
                        gr.HTML(f"<p class='job-note'>{html.escape(refusal)}</p>", elem_id="extras_batch_dirs_refused")
                    else:
                        folders["input_dir"] = gr.Textbox(
                            label=LABELS["input_dir"], elem_id="extras_batch_input_dir",
                            placeholder="A directory on the same machine where the server is running.")
                        folders["output_dir"] = gr.Textbox(
                            label=LABELS["output_dir"], elem_id="extras_batch_output_dir",
                            placeholder="Leave blank to save images to the default path.")
                    show_results = gr.Checkbox(value=True, label=LABELS["show_results"],
                                               elem_id="extras_show_extras_results", visible=refusal is None)
            mode = gr.Number(value=SINGLE, precision=0, visible=False, elem_id="extras_selected_mode")
            scripts = _build_scripts(context)
        with gr.Column(scale=1, elem_id="extras_results"):
            with gr.Row(elem_id="extras_generate_box"):
                generate = gr.Button("Generate", variant="primary", elem_id="extras_generate", scale=3)
                interrupt = gr.Button("Interrupt", variant="stop", elem_id="extras_interrupt", min_width=60)
                skip = gr.Button("Skip", elem_id="extras_skip", min_width=60)
            progress = gr.HTML("", elem_id="extras_progress", js_on_load=None)
            gallery = gr.Gallery(format="png", label="Output", show_label=False, elem_id="extras_gallery", columns=4,
                                 object_fit="contain", interactive=False, buttons=["download", "fullscreen"])
            with gr.Row(elem_id="image_buttons_extras"):
                send_buttons = {mode: gr.Button(value=icon_label(f"extras_send_to_{name}"),
                                                elem_id=f"extras_send_to_{name}", elem_classes=["tool"], size="sm",
                                                scale=0, min_width=40)
                                for name, mode in (("img2img", 0), ("inpaint", 2))}
            info = gr.HTML("", elem_id="html_info_extras", elem_classes=["html-info"], js_on_load=None)
    for index, tab in enumerate((single_tab, batch_tab, directory_tab)):
        tab.select(lambda index=index: index, outputs=mode, show_progress="hidden", queue=False)

    tab = ExtrasTab(mode_tabs, mode, image, files, folders["input_dir"], folders["output_dir"], show_results,
                    generate, gallery, info, progress, scripts, refusal)
    view_state = _wire_generate(context, tab, interrupt, skip)
    if shared.img2img is not None:  # the results' own 🖼️/🎨️ buttons (A1111's output panel): the image only
        from modules.ui.img2img import wire_send_image

        for img2img_mode, button in send_buttons.items():
            wire_send_image(context, shared, button, gallery, view_state, img2img_mode)
    for script in scripts:
        if extras_upscale_ui.is_upscale_controls(script.controls):
            shared.page_loads.append(extras_upscale_ui.refresh_choices(context, script.controls))
    image.change(lambda: _images_changed(context), inputs=None, outputs=None, show_progress="hidden", queue=False)
    _register_paste_destination(context, image)
    # A1111 fires the extensions' on_after_component for every component of the page; here, for this
    # tab's, once it is built (what a hook adds goes at the end of the tab).
    runtime = getattr(context, "extensions", None)
    ComponentHooks(callbacks=getattr(runtime, "callbacks", None)).fire_after_for_new_blocks(first_id)
    shared.extras = tab
    return tab


def _images_changed(context) -> None:
    """A new single image: the steps drop what they cached for the last one (A1111's `image_changed`)."""
    context.postprocessing.image_changed()


def _register_paste_destination(context, image) -> None:
    """A1111's `add_paste_fields("extras", extras_image, None)`: extensions find the tab's image there."""
    runtime = getattr(context, "extensions", None)
    scripts = getattr(runtime, "scripts", None) if runtime is not None else None
    if scripts is not None:
        scripts.paste.add_paste_fields("extras", image, [])


def _wire_generate(context, tab: ExtrasTab, interrupt, skip):
    """Generate / Interrupt / Skip and picking a result; returns the state of the shown results."""
    job_id_state = gr.State(None)
    view_state = gr.State({})
    own = [tab.mode, tab.image, tab.files, tab.input_dir, tab.output_dir, tab.show_results]
    present = [component for component in own if component is not None]

    def submit(values, owner):
        given = iter(values)
        own_values = [next(given) if component is not None else None for component in own]
        request = extras_request(*own_values, script_args(tab.scripts, list(given)), refusal=tab.refusal)
        return _submit(context, request, owner)

    async def on_generate(request: gr.Request | None, *values):
        user = caller(context, request)
        owner = user.owner
        try:
            # Reading the uploads' headers and checking the plan touch the disk: off the event loop.
            job = await asyncio.to_thread(submit, values, owner)
        except (ExtrasInputError, QueueFullError) as error:
            yield gr.skip(), error_html(str(error)), "", gr.skip(), gr.skip()
            return
        yield gr.skip(), "", render_progress(job), gr.skip(), job.id
        async for update in follow_job_async(job, loading=lambda: False,
                                             **follow_options(context.settings.current())):
            yield gr.skip(), gr.skip(), update.progress_html, gr.skip(), job.id
        images, info_html, state = finished_view(job)
        if owner is not None:  # --multi-user: the gallery's files are the user's (modules.ui.user_files)
            from modules.ui.user_files import gallery_files

            images = await asyncio.to_thread(gallery_files, images, user)
        yield images, info_html, "", state, job.id

    tab.generate.click(on_generate, inputs=[*present, *tab.script_inputs],
                       outputs=[tab.gallery, tab.info, tab.progress, view_state, job_id_state],
                       show_progress="hidden", concurrency_limit=None)
    def on_interrupt(job_id, request: gr.Request | None = None):
        stop_job(context, job_id, kind=EXTRAS_JOB_KIND, user=caller(context, request))

    def on_skip(job_id, request: gr.Request | None = None):
        stop_job(context, job_id, skip=True, kind=EXTRAS_JOB_KIND,
                 user=caller(context, request))

    interrupt.click(on_interrupt, inputs=job_id_state, outputs=None, show_progress="hidden", queue=False)
    skip.click(on_skip, inputs=job_id_state, outputs=None, show_progress="hidden", queue=False)

    def on_select(state: dict, event: gr.SelectData):
        state = dict(state or {})
        state["index"] = int(event.index) if isinstance(event.index, int) else 0
        return selected_info_html(state, state["index"]), state

    tab.gallery.select(on_select, inputs=view_state, outputs=[tab.info, view_state], show_progress="hidden")
    return view_state


def _submit(context, request, owner: str | None = None):
    """Queue the request (as `owner`'s job with --multi-user); a refusal the core raises at submit (an
    unknown upscaler, a size over the limit, a folder refused) is shown like the tab's own input errors."""
    from modules.postprocessing.extras import submit_extras

    mine = {"owner": owner} if owner is not None else {}  # single-user: the call as it always was
    try:
        return submit_extras(context, request, **mine)
    except ValueError as error:
        raise ExtrasInputError(str(error)) from None


# --- Send to Extras ------------------------------------------------------------------------------


def wire_send_to_extras(shared: UiShared, button, source, state=None) -> None:
    """`button` puts the image of `source` (a gallery: its selected image, per `state`, else the first;
    or an image/file component) into #extras_image and opens the Extras tab on Single Image. Nothing
    else is sent (A1111's "Send to extras")."""
    from modules.ui.img2img import open_gallery_image, reads_files_safely

    tab: ExtrasTab | None = shared.extras
    if tab is None:
        return
    if not reads_files_safely(source):
        raise TypeError(f"send to extras: the source is a {type(source).__name__}; it must be an image, gallery or "
                        "file component")
    has_state = state is not None

    def on_send(value, state_value=None):
        picked = selected_image(value, state_value) if isinstance(value, (list, tuple)) else value
        image = open_gallery_image(picked)
        if image is None:
            note = "<p class='job-note'>Nothing to send: there is no image yet.</p>"
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), note
        return image, gr.Tabs(selected=TAB_ID), gr.Tabs(selected=MODE_TAB_IDS[SINGLE]), SINGLE, ""

    button.click(on_send, inputs=[source, *([state] if has_state else [])],
                 outputs=[tab.image, shared.tabs, tab.mode_tabs, tab.mode, tab.info], show_progress="hidden")



def wire_send_from_generation_tabs(shared: UiShared) -> None:
    """txt2img's and img2img's 📐 buttons under their galleries (call after the Extras tab is built)."""
    sources = [(shared.txt2img_results, shared.txt2img_generation_state)]
    if shared.img2img is not None:
        sources.append((shared.img2img.results, shared.img2img.generation_state))
    for results, state in sources:
        if results is not None and results.send_to_extras is not None:
            wire_send_to_extras(shared, results.send_to_extras, results.gallery, state)
