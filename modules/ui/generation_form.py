"""What the txt2img and img2img tabs share: the prompt row, the sampling / size / seed fields, the
results column (progress, gallery, send-to buttons, infotext), Generate / Interrupt / Skip with
progress and live preview, paste and the seed buttons. Each builder takes the tab's name
("txt2img" or "img2img") and gives A1111's element ids for it (`<tab>_prompt`, `<tab>_generate`,
`<tab>_gallery`, `<tab>_seed`, `html_info_<tab>`, ...), so both tabs run one code.

The plain functions (sampler lists, the paste source, the seed to reuse, which job Interrupt stops)
take and return plain values, so tests call them without a browser.
"""

from __future__ import annotations

import asyncio
import html
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr

from modules.generation.engine import LATENT_UPSCALE_MODES, PromptTooLongError
from modules.generation.requests import HIRES_SAME_SAMPLER, UnknownHiresUpscalerError
from modules.upscaling.service import UpscaleTooLargeError
from modules.generation.styles import StyleError
from modules.serving.accounts import SHARED_USER, User, caller
from modules.serving.generation_service import GenerationSubmission, submit_generation
from modules.serving.jobs import QueueFullError
from modules.ui import styles_panel
from modules.ui.component_hooks import ComponentHooks
from modules.ui.generation import (
    error_html,
    follow_job_async,
    follow_options,
    infotext_html,
    outcome_of,
    render_progress,
)
from modules.ui.icons import icon_label
from modules.ui.my_queue import PageJobs, page_of, queue_note_html
from modules.ui.request_fields import RequestError, field_default, paste_parameters, slider_args
from modules.ui.token_counter import TokenCounter, format_token_count
from modules.extension_host.paste_fields import pasted_updates

TABNAMES = ("txt2img", "img2img")  # also the job kinds (generation_service.job_kind) each tab's buttons stop


# --- plain functions -----------------------------------------------------------------------------


def sampler_choices() -> list[str]:
    """A1111's sampler list, without the ones Atelier does not implement yet."""
    from modules.generation.sampling.registry import SAMPLERS

    return [info.name for info in SAMPLERS if info.implemented]


def scheduler_choices() -> list[str]:
    from modules.generation.sampling.registry import SCHEDULERS

    return [info.label for info in SCHEDULERS]


def count_tokens(context, counter: TokenCounter, text: str, steps: int, *, is_positive: bool) -> str:
    """The token counter's HTML for `text`, with the settings and embeddings of the current model."""
    from modules.generation.conditioning import ConditioningOptions

    settings = context.settings.current()
    limit = settings["prompt_max_length"]
    if limit and len(text or "") > limit:
        # Not tokenized: a prompt that will be refused would only hold the counter's lock for seconds.
        return (f"<span class='token-counter over' title='longer than the prompt_max_length setting'>"
                f"{len(text):,}/{limit:,} characters</span>")
    options = ConditioningOptions(comma_padding_backtrack=settings["comma_padding_backtrack"],
                                  emphasis=settings["emphasis"])
    model = context.models.current()
    embeddings: dict = {}
    if model is not None:
        from modules.networks.activation import embedding_widths

        embeddings = context.embeddings.for_model(embedding_widths(model)).loaded
    used, capacity = counter.count(text or "", steps or 1, is_positive=is_positive, embeddings=embeddings,
                                   options=options)
    return format_token_count(used, capacity)


def paste_source(prompt: str, state: dict | None) -> str | None:
    """The text the paste button reads: the prompt box, or the last generation's infotext when the
    box is empty (A1111 reads its last generation then)."""
    if prompt and prompt.strip():
        return prompt
    state = state or {}
    infotexts = state.get("infotexts") or []
    index = state.get("index", 0)
    return infotexts[index] if 0 <= index < len(infotexts) else None


def paste_values(context, text: str, *, img2img: bool = False):
    """`PastedParameters` for `text`, against the current settings, samplers and checkpoint; the
    extensions' `on_infotext_pasted` callbacks see (and may edit) the parsed parameters first.
    `img2img`: the values are an img2img request's (denoising strength, mask keys; no hires fix)."""
    info = context.current_checkpoint_info()
    runtime = getattr(context, "extensions", None)
    callbacks = runtime.callbacks if runtime is not None else None
    on_parsed = callbacks.infotext_pasted if callbacks is not None and callbacks.has("infotext_pasted") else None
    upscalers = getattr(context, "upscalers", None)  # None: a context without the upscaler library
    return paste_parameters(text, context.settings.current(), available_samplers=sampler_choices(),
                            current_model_hash=info.shorthash if info is not None else None,
                            extract_styles=context.prompt_styles.extract_styles_from_prompt, on_parsed=on_parsed,
                            img2img=img2img, upscaler_names=upscalers.registry.names() if upscalers else None)


def reused_seed(state: dict | None) -> int | None:
    """The seed of the selected (else first) image of the last generation, for the ♻️ button."""
    state = state or {}
    seeds = state.get("seeds") or []
    index = state.get("index", 0)
    if not seeds:
        return None
    return int(seeds[index] if 0 <= index < len(seeds) else seeds[0])


def selected_image(images: Any, state: dict | None) -> Any:
    """The gallery image the send-to buttons send: the selected one, else the first (A1111 sends the
    first when none is selected). `images`: the gallery's value (items or (image, caption) pairs)."""
    if not images:
        return None
    index = (state or {}).get("index", 0)
    item = images[index] if 0 <= index < len(images) else images[0]
    if isinstance(item, (tuple, list)):
        item = item[0]
    if isinstance(item, dict):  # a Gradio GalleryImage as a dict
        item = item.get("image", item)
        if isinstance(item, dict):
            item = item.get("path")
    return item


def stop_job(context, job_id: str | None, *, skip: bool = False, kind: str = "txt2img",
             user: User = SHARED_USER) -> bool:
    """Interrupt (or skip an image of) this page's job. A page with no job of its own (reloaded
    while its job runs) stops the running job of its tab's `kind`, as A1111's button does; never a
    merge or another kind of job, and once the page's own job has finished, nothing. `user` (with
    `--multi-user`): only a job they own is reached (an operator's: any), whatever id the page sends."""
    jobs = context.jobs
    if job_id is None:
        if user.name is None:  # single-user: the running job, as before
            running = jobs.current()
        else:
            running = next((job for job in jobs.running_jobs() if job.kind == kind and user.owns(job.owner)), None)
        if running is None or running.kind != kind:
            return False
        job_id = running.id
    job = jobs.get(job_id)
    if job is None or not user.owns(job.owner):
        return False
    return jobs.skip(job_id) if skip else jobs.interrupt(job_id)


def selected_info_html(state: dict | None, index: int) -> str:
    state = state or {}
    infotexts = state.get("infotexts") or []
    infotext = infotexts[index] if 0 <= index < len(infotexts) else ""
    return infotext_html(infotext, state.get("notes") or [], state.get("error"))


def output_folder(context, tabname: str = "txt2img", user: User = SHARED_USER) -> Path:
    """Where the tab's images are saved today (A1111's folder layout); with --multi-user, `user`'s."""
    from modules.outputs.images import (
        FilenameContext,
        FilenameGenerator,
        SaveOptions,
        img2img_output_dirs,
        txt2img_output_dirs,
    )

    settings = context.settings.current()
    if user.name:  # a --multi-user user's jobs save into their own folders (generation_service.for_owner)
        from modules.outputs.output_paths import user_output_overrides

        settings = settings.with_overrides(user_output_overrides(settings, user.name, context.paths.data_dir))
    options = SaveOptions.from_settings(settings)
    dirs = img2img_output_dirs if tabname == "img2img" else txt2img_output_dirs
    images_dir, _ = dirs(context.paths.data_dir, options)
    if options.save_to_dirs and options.directories_filename_pattern:
        # [date] and the like; a pattern that needs a prompt ([prompt_words]) stays unexpanded.
        subfolder = FilenameGenerator(FilenameContext()).apply(options.directories_filename_pattern)
        if subfolder and "[" not in subfolder:
            return images_dir / subfolder
    return images_dir


def open_output_folder(context, tabname: str = "txt2img", user: User = SHARED_USER) -> str:
    """Say where the images are; on a local server (no --listen), also open the folder there."""
    folder = output_folder(context, tabname, user)
    shown = folder if folder.is_dir() else folder.parent
    opened = _open_in_file_manager(shown) if _is_local(context) and shown.is_dir() else False
    action = "Opened" if opened else "Images are saved in"
    return f"<p class='job-note'>{action} <code>{html.escape(str(shown))}</code></p>"


def _is_local(context) -> bool:
    args = context.args
    return not getattr(args, "listen", False) and not getattr(args, "server_name", None)


def _open_in_file_manager(folder: Path) -> bool:
    if sys.platform == "win32":
        os.startfile(folder)
        return True
    opener = "open" if sys.platform == "darwin" else "xdg-open"
    if shutil.which(opener) is None or (sys.platform.startswith("linux") and not os.environ.get("DISPLAY")
                                        and not os.environ.get("WAYLAND_DISPLAY")):
        return False
    subprocess.Popen([opener, str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return True


def paste_updates(context, text: str | None, field_names: Sequence[str],
                  script_fields: Sequence[tuple[Any, Any]] = (), *, img2img: bool = False) -> tuple[list, str]:
    """Component updates for every field of `field_names` (the tab's field order), then for each of
    the scripts' `script_fields` (`(component, infotext key or function)`, A1111's `infotext_fields`),
    from an infotext, and the HTML note to show. Fields the text does not set are skipped."""
    if not text or not text.strip():
        note = ("<p class='job-note'>Nothing to paste: put an infotext (a picture's parameters) into the prompt "
                "box, or generate first.</p>")
        return [gr.skip()] * (len(field_names) + len(script_fields)), note
    pasted = paste_values(context, text, img2img=img2img)
    updates: list = []
    for name in field_names:
        if name == "override_settings":
            entries = pasted.values.get(name, [])
            updates.append(gr.update(value=entries, choices=entries, visible=bool(entries)))
        elif name == "styles":  # the styles found in the infotext's prompts (A1111's "Styles array")
            styles = pasted.values.get(name)
            updates.append(gr.update(value=styles, choices=context.prompt_styles.names()) if styles else gr.skip())
        elif name in pasted.values:
            updates.append(pasted.values[name])
        else:
            updates.append(gr.skip())
    set_count = sum(1 for name in field_names if name in pasted.values and name != "override_settings")
    script_updates = pasted_updates(script_fields, pasted.parameters)
    set_count += sum(1 for update in script_updates if "value" in update)
    notes = "".join(f"<p class='job-note'>{html.escape(note)}</p>" for note in pasted.notes)
    return [*updates, *script_updates], f"<p class='job-note'>Pasted {set_count} parameters.</p>{notes}"


# --- gradio builders ----------------------------------------------------------------------------


@dataclass
class PromptRow:
    """The top row: both prompt boxes with their token counters, and the action buttons."""

    prompt: gr.Textbox
    token_counter: gr.HTML
    negative: gr.Textbox
    negative_counter: gr.HTML
    generate: gr.Button
    interrupt: gr.Button
    skip: gr.Button
    paste: gr.Button
    styles: Any = None  # modules.ui.styles_panel.StylesPicker, under the buttons as in A1111


@dataclass
class ResultsColumn:
    progress: gr.HTML
    gallery: gr.Gallery
    open_folder: gr.Button
    send_to_img2img: gr.Button
    send_to_inpaint: gr.Button
    info: gr.HTML
    send_to_extras: Any = None  # 📐, wired by modules.ui.app once the Extras tab is built
    # A1111's `html_log_<tab>`: the buttons' messages (Output folder, Read parameters, Send to), on a
    # line of their own so the selected image's infotext stays.
    log: Any = None


def paste_button_id(tabname: str) -> str:
    """A1111's txt2img ↙️ button is `paste`; img2img's gets its own id (one id per page)."""
    return "paste" if tabname == "txt2img" else f"{tabname}_paste"


def build_prompt_row(hooks: ComponentHooks, context, tabname: str) -> PromptRow:
    with gr.Row(elem_id=f"{tabname}_toprow"):
        with gr.Column(scale=6, elem_id=f"{tabname}_prompt_container"):
            with gr.Group(elem_classes=["prompt-box"]):
                prompt = hooks.create(gr.Textbox, label="Prompt", lines=3, max_lines=20, elem_id=f"{tabname}_prompt",
                                      placeholder="Prompt (Ctrl+Enter to generate, ↙️ to read parameters from an "
                                                  "infotext pasted here)")
                token_counter = hooks.create(gr.HTML, value=format_token_count(0, 75),
                                             elem_id=f"{tabname}_token_counter", elem_classes=["token-counter-box"],
                                             js_on_load=None)
            with gr.Group(elem_classes=["prompt-box"]):
                negative = hooks.create(gr.Textbox, label="Negative prompt", lines=2, max_lines=20,
                                        elem_id=f"{tabname}_neg_prompt", placeholder="Negative prompt")
                negative_counter = hooks.create(gr.HTML, value=format_token_count(0, 75),
                                                elem_id=f"{tabname}_negative_token_counter",
                                                elem_classes=["token-counter-box"], js_on_load=None)
        with gr.Column(scale=1, min_width=220, elem_id=f"{tabname}_actions_column"):
            generate = hooks.create(gr.Button, value="Generate", variant="primary", elem_id=f"{tabname}_generate")
            with gr.Row(elem_id=f"{tabname}_interrupt_row"):  # shown only while a job runs (progress_display)
                interrupt = hooks.create(gr.Button, value="Interrupt", variant="stop", elem_id=f"{tabname}_interrupt",
                                         min_width=60)
                skip = hooks.create(gr.Button, value="Skip", elem_id=f"{tabname}_skip", min_width=60)
            paste_id = paste_button_id(tabname)
            paste = hooks.create(gr.Button, value=icon_label(paste_id, "Read parameters"), elem_id=paste_id, size="sm")
            styles = styles_panel.build_picker(context, tabname, create=hooks.create)
    return PromptRow(prompt, token_counter, negative, negative_counter, generate, interrupt, skip, paste, styles)


def build_sampling_fields(fields: dict[str, Any], hooks: ComponentHooks, tabname: str, *,
                          hires: bool, hr_upscalers: Sequence[str] = ()) -> gr.Column | None:
    """Sampler, schedule and steps; with `hires` (txt2img), the hires. fix group too, returned
    (hidden until enabled). `hr_upscalers`: the hires upscaler choices
    (`requests.hires_upscaler_choices`: latent modes, then the upscaler library's names; txt2img
    lists them again when a page opens); empty: the latent modes only."""
    with gr.Row():
        fields["sampler_name"] = hooks.create(gr.Dropdown, choices=sampler_choices(), value=field_default("sampler_name"),
                                              label="Sampling method", elem_id=f"{tabname}_sampling")
        fields["scheduler"] = hooks.create(gr.Dropdown, choices=scheduler_choices(), value=field_default("scheduler"),
                                           label="Schedule type", elem_id=f"{tabname}_scheduler")
    fields["steps"] = hooks.create(gr.Slider, **slider_args("steps"), label="Sampling steps", elem_id=f"{tabname}_steps")
    if not hires:
        return None
    fields["enable_hr"] = hooks.create(gr.Checkbox, value=field_default("enable_hr"), label="Hires. fix",
                                       elem_id=f"{tabname}_hr")
    with gr.Column(visible=False, elem_id=f"{tabname}_hires_fix") as hires_group:
        with gr.Row():
            fields["hr_upscaler"] = hooks.create(gr.Dropdown, choices=list(hr_upscalers or LATENT_UPSCALE_MODES),
                                                 value=field_default("hr_upscaler"), label="Upscaler",
                                                 elem_id=f"{tabname}_hr_upscaler")
            fields["hr_second_pass_steps"] = hooks.create(gr.Slider, **slider_args("hr_second_pass_steps"),
                                                          label="Hires steps", elem_id=f"{tabname}_hires_steps")
            fields["denoising_strength"] = hooks.create(gr.Slider, **slider_args("denoising_strength"),
                                                        label="Denoising strength",
                                                        elem_id=f"{tabname}_denoising_strength")
        with gr.Row():
            fields["hr_scale"] = hooks.create(gr.Slider, **slider_args("hr_scale"), label="Upscale by",
                                              elem_id=f"{tabname}_hr_scale")
            fields["hr_resize_x"] = hooks.create(gr.Slider, **slider_args("hr_resize_x"), label="Resize width to",
                                                 elem_id=f"{tabname}_hr_resize_x")
            fields["hr_resize_y"] = hooks.create(gr.Slider, **slider_args("hr_resize_y"), label="Resize height to",
                                                 elem_id=f"{tabname}_hr_resize_y")
        # A1111's id and choices; shown with the `hires_fix_show_sampler` setting (a page load applies
        # it). Hidden, it still takes a pasted "Hires sampler", as A1111's does.
        fields["hr_sampler_name"] = hooks.create(gr.Dropdown, choices=[HIRES_SAME_SAMPLER, *sampler_choices()],
                                                 value=HIRES_SAME_SAMPLER, label="Hires sampling method",
                                                 elem_id="hr_sampler", visible=False)
    return hires_group


def build_dimension_fields(fields: dict[str, Any], hooks: ComponentHooks, tabname: str) -> gr.Button:
    """Width and height with the ⇅ swap button beside them; returns the swap button."""
    with gr.Column(scale=4):
        fields["width"] = hooks.create(gr.Slider, **slider_args("width"), label="Width", elem_id=f"{tabname}_width")
        fields["height"] = hooks.create(gr.Slider, **slider_args("height"), label="Height", elem_id=f"{tabname}_height")
    return hooks.create(gr.Button, value=icon_label(f"{tabname}_res_switch_btn"), elem_id=f"{tabname}_res_switch_btn",
                        elem_classes=["tool"], scale=0, min_width=40)


def build_batch_fields(fields: dict[str, Any], hooks: ComponentHooks, tabname: str) -> None:
    with gr.Column(scale=2):
        fields["n_iter"] = hooks.create(gr.Slider, **slider_args("n_iter"), label="Batch count",
                                        elem_id=f"{tabname}_batch_count")
        fields["batch_size"] = hooks.create(gr.Slider, **slider_args("batch_size"), label="Batch size",
                                            elem_id=f"{tabname}_batch_size")


def build_size_fields(fields: dict[str, Any], hooks: ComponentHooks, tabname: str) -> gr.Button:
    """Width/height with the swap button, batch count and size (txt2img's row); returns the swap button."""
    with gr.Row(equal_height=True):
        res_switch = build_dimension_fields(fields, hooks, tabname)
        build_batch_fields(fields, hooks, tabname)
    return res_switch


def build_seed_fields(fields: dict[str, Any], hooks: ComponentHooks, tabname: str) -> tuple[gr.Button, gr.Button]:
    """Seed with its 🎲/♻️ buttons, the variation seed and "Resize seed from"; returns the two buttons."""
    with gr.Row(equal_height=True, elem_id=f"{tabname}_seed_row"):
        fields["seed"] = hooks.create(gr.Number, value=field_default("seed"), label="Seed", precision=0,
                                      elem_id=f"{tabname}_seed", scale=4)
        random_seed = hooks.create(gr.Button, value=icon_label(f"{tabname}_random_seed"),
                                   elem_id=f"{tabname}_random_seed", elem_classes=["tool"], scale=0, min_width=40)
        reuse_seed = hooks.create(gr.Button, value=icon_label(f"{tabname}_reuse_seed"), elem_id=f"{tabname}_reuse_seed",
                                  elem_classes=["tool"], scale=0, min_width=40)
    with gr.Row(equal_height=True, elem_id=f"{tabname}_subseed_row"):
        fields["subseed"] = hooks.create(gr.Number, value=field_default("subseed"), label="Variation seed", precision=0,
                                         elem_id=f"{tabname}_subseed")
        fields["subseed_strength"] = hooks.create(gr.Slider, **slider_args("subseed_strength"),
                                                  label="Variation strength", elem_id=f"{tabname}_subseed_strength")
    with gr.Accordion("Resize seed from", open=False, elem_id=f"{tabname}_seed_resize"), gr.Row():
        fields["seed_resize_from_w"] = hooks.create(gr.Slider, **slider_args("seed_resize_from_w"),
                                                    label="Resize seed from width",
                                                    elem_id=f"{tabname}_seed_resize_from_w")
        fields["seed_resize_from_h"] = hooks.create(gr.Slider, **slider_args("seed_resize_from_h"),
                                                    label="Resize seed from height",
                                                    elem_id=f"{tabname}_seed_resize_from_h")
    return random_seed, reuse_seed


def build_override_field(fields: dict[str, Any], hooks: ComponentHooks, tabname: str) -> None:
    fields["override_settings"] = hooks.create(gr.Dropdown, choices=[], value=[], multiselect=True,
                                               allow_custom_value=True, label="Override settings", visible=False,
                                               elem_id=f"{tabname}_override_settings")


def build_results_column(hooks: ComponentHooks, tabname: str) -> ResultsColumn:
    """The right column: progress, gallery, the output-folder and send-to buttons, and the infotext."""
    with gr.Column(scale=1, elem_id=f"{tabname}_results"):
        progress = hooks.create(gr.HTML, value="", elem_id=f"{tabname}_progress", js_on_load=None)
        gallery = hooks.create(gr.Gallery, format="png", label="Output", show_label=False, elem_id=f"{tabname}_gallery",
                               columns=4, object_fit="contain", interactive=False, buttons=["download", "fullscreen"])
        with gr.Row(elem_id=f"image_buttons_{tabname}"):
            open_folder = hooks.create(gr.Button, value=icon_label(f"open_folder_{tabname}", "Output folder"),
                                       elem_id=f"open_folder_{tabname}", size="sm", scale=0)
            send_to_img2img = hooks.create(gr.Button, value=icon_label(f"{tabname}_send_to_img2img"),
                                           elem_id=f"{tabname}_send_to_img2img", elem_classes=["tool"], size="sm",
                                           scale=0, min_width=40)
            send_to_inpaint = hooks.create(gr.Button, value=icon_label(f"{tabname}_send_to_inpaint"),
                                           elem_id=f"{tabname}_send_to_inpaint", elem_classes=["tool"], size="sm",
                                           scale=0, min_width=40)
            send_to_extras = hooks.create(gr.Button, value=icon_label(f"{tabname}_send_to_extras"),
                                          elem_id=f"{tabname}_send_to_extras", elem_classes=["tool"], size="sm",
                                          scale=0, min_width=40)
        info = hooks.create(gr.HTML, value="", elem_id=f"html_info_{tabname}", elem_classes=["html-info"],
                            js_on_load=None)
        log = hooks.create(gr.HTML, value="", elem_id=f"html_log_{tabname}", elem_classes=["html-log"],
                           js_on_load=None)
        # A1111's hidden button at the very bottom of the results: extensions hook after_component on
        # it to add their controls under the gallery (Config Presets, ...).
        hooks.create(gr.Button, visible=False, elem_id=f"{tabname}_generation_info_button")
    return ResultsColumn(progress, gallery, open_folder, send_to_img2img, send_to_inpaint, info, send_to_extras, log)


def register_paste_fields(context, tabname: str, fields: dict[str, Any], init_img=None) -> list[tuple[Any, Any]]:
    """Make the tab A1111's paste destination `tabname` (`infotext_utils.paste_fields`, for
    extensions that read it): its own fields by infotext key, then its scripts' `infotext_fields`,
    which are returned (what a paste fills besides the request fields)."""
    from modules.extension_host.paste_fields import register_generation_tab
    from modules.generation.infotext_fields import IMG2IMG_CHOICES, IMG2IMG_FIELDS, REQUEST_FIELDS

    runtime = getattr(context, "extensions", None)
    if runtime is None or getattr(runtime, "scripts", None) is None:
        return []
    keys = {key: name for key, (name, _) in REQUEST_FIELDS.items()}
    if tabname == "img2img":  # the radios hold the infotext's own words ("Only masked", "fill")
        keys.update({key: name for key, (name, _) in {**IMG2IMG_FIELDS, **IMG2IMG_CHOICES}.items()})
        keys["Mask blur"] = "mask_blur"
    own = [(fields["prompt"], "Prompt"), (fields["negative_prompt"], "Negative prompt")]
    own += [(fields[name], key) for key, name in keys.items() if name in fields]
    return register_generation_tab(runtime.scripts, tabname, init_img, own, fields["override_settings"])


# --- wiring --------------------------------------------------------------------------------------


@dataclass
class QueuedWork:
    """What a tab queues itself instead of one request (img2img's Batch): `submit(selection, owner=...)`
    queues it (as `owner`'s job with --multi-user; None otherwise) and returns the job (raising one of
    `SHOWN_ERRORS`), `outcome(job)` is the finished job's `GenerationOutcome`."""

    submit: Callable[[Any], Any]
    outcome: Callable[[Any], Any]
    notes: list = field(default_factory=list)


# Errors a handler shows in the tab's infotext area instead of failing the event (RequestError
# includes img2img's InputError: no image, an empty mask).
# UnknownHiresUpscalerError: a model file removed since the page listed it; UpscaleTooLargeError: a hires
# size whose model upscale would exceed upscale_max_pixels.
SHOWN_ERRORS = (RequestError, PromptTooLongError, StyleError, UnknownHiresUpscalerError, UpscaleTooLargeError)


def wire_generation(context, tabname: str, top: PromptRow, scripts, results: ResultsColumn, inputs: list,
                    make_request: Callable[[Sequence[Any]], Any], generation_state: gr.State,
                    job_id_state: gr.State) -> None:
    """Generate / Interrupt / Skip, and picking a gallery image (which shows its infotext).

    `inputs`: the tab's components whose values `make_request(values)` turns into a request (styles
    applied), into `(request, notes)` (notes shown with the result) or into `QueuedWork`, raising one
    of `SHOWN_ERRORS` with a message for the user; the scripts' inputs follow.

    With `--multi-user` the job is the caller's (modules.serving.accounts), Generate stays pressable
    while the tab's job runs (each click queues a job of its own; a full queue is shown as an error),
    and a later click's handler waits quietly for the page's earlier one (modules.ui.my_queue.PageJobs).
    Interrupt and Skip reach only the caller's own jobs."""
    count = len(inputs)
    multi_user = bool(getattr(getattr(context, "accounts", None), "multi_user", False))
    page_jobs = PageJobs()

    async def on_generate(request: gr.Request, *values):
        own, script_values = values[:count], values[count:]
        user = caller(context, request)
        try:
            made = make_request(own)
            if isinstance(made, QueuedWork):
                job = made.submit(scripts.selection(script_values), owner=user.owner)
                notes, finish = made.notes, made.outcome
            else:
                request_made, notes = made if isinstance(made, tuple) else (made, [])
                submission = GenerationSubmission(request_made, selection=scripts.selection(script_values),
                                                  owner=user.owner)
                job = submit_generation(context, submission)
                finish = lambda job, submission=submission: outcome_of(context.settings.current(), submission, job)  # noqa: E731
        except (*SHOWN_ERRORS, QueueFullError) as error:
            if multi_user:  # an earlier job of this page may be shown: leave its bar and gallery be
                yield gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), error_html(str(error))
            else:
                yield gr.skip(), error_html(str(error)), "", gr.skip(), gr.skip(), ""
            return
        following = follow_options(context.settings.current())
        # Keyed by user too: calls without a page session (Gradio's /call API) must not wait on
        # another user's; and such calls are not serialised at all.
        page = page_of(request)
        page = f"{user.owner}/{page}" if multi_user and page is not None else None
        if page is not None:
            page_jobs.add(page, tabname, job)
        try:
            # A later click of the same page waits its turn, showing only where its job stands.
            shown_note = None
            while page_jobs.earlier(page, tabname, job):
                note = queue_note_html(job)
                if note != shown_note:  # sent when its place or wait changes, not at every poll
                    yield gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), note
                    shown_note = note
                await asyncio.sleep(following["poll_seconds"])
            cancelled = (gr.skip(), gr.skip(), "", gr.skip(), gr.skip(),
                         f"<p class='job-note'>{html.escape(job.description or job.id)}: cancelled before it started.</p>")
            if multi_user and job.finished and job.started_at is None:  # cancelled from My queue while waiting
                yield cancelled  # the page keeps the results it shows
                return
            # An earlier button's message goes when a job starts.
            yield gr.skip(), "", render_progress(job, show_bar=following["show_bar"]), gr.skip(), job.id, ""
            async for update in follow_job_async(job, loading=lambda: context.load_state.loading, **following):
                # A live preview goes to Gradio's cache as it is (a name only its page learns), not
                # into the user's gallery folder: a file per poll would pile up until restart.
                preview = [update.preview] if update.preview is not None else gr.skip()
                yield preview, gr.skip(), update.progress_html, gr.skip(), job.id, gr.skip()
            if multi_user and job.started_at is None:
                yield cancelled
                return
            outcome = finish(job)
            outcome.notes[:0] = notes
            images = await _gallery(multi_user, outcome.images, user)
            # The id is kept: Interrupt pressed just after the job ended must not reach the next one.
            yield images, outcome.info_html(0), "", outcome.to_state(), job.id, gr.skip()
        finally:
            page_jobs.remove(page, tabname, job)

    kind = tabname
    top.generate.click(on_generate, inputs=[*inputs, *scripts.inputs],
                       outputs=[results.gallery, results.info, results.progress, generation_state, job_id_state,
                                results.log],
                       show_progress="hidden", concurrency_limit=None,
                       trigger_mode="multiple" if multi_user else "once")

    def on_interrupt(job_id: str | None, request: gr.Request | None = None) -> None:
        stop_job(context, job_id, kind=kind, user=caller(context, request))

    def on_skip(job_id: str | None, request: gr.Request | None = None) -> None:
        stop_job(context, job_id, skip=True, kind=kind, user=caller(context, request))

    top.interrupt.click(on_interrupt, inputs=job_id_state, outputs=None, show_progress="hidden", queue=False)
    top.skip.click(on_skip, inputs=job_id_state, outputs=None, show_progress="hidden", queue=False)

    def on_select(state: dict, event: gr.SelectData):
        state = dict(state or {})
        state["index"] = int(event.index) if isinstance(event.index, int) else 0
        return selected_info_html(state, state["index"]), state

    results.gallery.select(on_select, inputs=generation_state, outputs=[results.info, generation_state],
                           show_progress="hidden")


async def _gallery(multi_user: bool, images: list, user: User) -> list:
    """The gallery's value: with --multi-user the images written as `user`'s files (modules.ui.user_files:
    their URLs are served to them and operators only), off the event loop; else the images as they are."""
    if not multi_user:
        return images
    from modules.ui.user_files import gallery_files

    return await asyncio.to_thread(gallery_files, images, user)


def wire_token_counters(context, counter: TokenCounter, top: PromptRow, steps: Any) -> None:
    for box, counter_html, positive in ((top.prompt, top.token_counter, True),
                                        (top.negative, top.negative_counter, False)):
        box.change(lambda text, steps, positive=positive: count_tokens(context, counter, text, steps,
                                                                       is_positive=positive),
                   inputs=[box, steps], outputs=counter_html, show_progress="hidden",
                   trigger_mode="always_last", queue=False)


def wire_paste(context, top: PromptRow, results: ResultsColumn, field_names: Sequence[str],
               fields: dict[str, Any], generation_state: gr.State, script_fields: Sequence[tuple[Any, Any]] = (),
               *, img2img: bool = False) -> None:
    """The ↙️ button: the infotext in the prompt box (or the last generation's) into the fields."""
    def on_paste(prompt_text: str, state: dict):
        updates, note = paste_updates(context, paste_source(prompt_text, state), field_names, script_fields,
                                      img2img=img2img)
        return (*updates, note)

    top.paste.click(on_paste, inputs=[top.prompt, generation_state],
                    outputs=[*(fields[name] for name in field_names), *(component for component, _ in script_fields),
                             results.log],
                    show_progress="hidden")


def wire_seed_and_size_buttons(context, tabname: str, fields: dict[str, Any], random_seed: gr.Button,
                               reuse_seed: gr.Button, res_switch: gr.Button, results: ResultsColumn,
                               generation_state: gr.State) -> None:
    random_seed.click(lambda: -1, outputs=fields["seed"], show_progress="hidden", queue=False)
    reuse_seed.click(lambda state: _or_skip(reused_seed(state)), inputs=generation_state,
                     outputs=fields["seed"], show_progress="hidden")
    res_switch.click(lambda width, height: (height, width), inputs=[fields["width"], fields["height"]],
                     outputs=[fields["width"], fields["height"]], show_progress="hidden", queue=False)
    def on_open_folder(request: gr.Request | None = None) -> str:
        return open_output_folder(context, tabname, caller(context, request))

    results.open_folder.click(on_open_folder, outputs=results.log, show_progress="hidden")


def _or_skip(value: Any) -> Any:
    return gr.skip() if value is None else value
