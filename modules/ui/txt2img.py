"""The txt2img tab: prompts with token counters, A1111's generation parameters, Generate / Interrupt /
Skip, a live progress bar with ETA and preview, the gallery with the infotext under it, paste
parameters back, the output folder, and the extra-networks panel.

Handlers are thin: widget values -> `GenerationRequest` (modules.ui.request_fields) -> a job through
the generation service the API uses too (modules.serving.generation_service) -> gallery values. What
they compute lives in plain functions here and in those modules, so tests call it without a browser.
"""

from __future__ import annotations

import html
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import gradio as gr

from modules.generation.engine import LATENT_UPSCALE_MODES, PromptTooLongError
from modules.generation.styles import StyleError, apply_request_styles
from modules.ui import extra_networks_panel, scripts_panel, styles_panel
from modules.ui.component_hooks import ComponentHooks
from modules.serving.generation_service import GenerationSubmission, submit_generation
from modules.ui.generation import error_html, follow_job_async, infotext_html, outcome_of, render_progress
from modules.ui.icons import icon_label
from modules.ui.request_fields import (
    TXT2IMG_FIELDS,
    RequestError,
    build_request,
    field_default,
    paste_parameters,
    slider_args,
)
from modules.ui.shared import UiShared
from modules.ui.token_counter import TokenCounter, format_token_count
from modules.extension_host.paste_fields import pasted_updates, script_infotext_fields


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


def paste_values(context, text: str):
    """`PastedParameters` for `text`, against the current settings, samplers and checkpoint; the
    extensions' `on_infotext_pasted` callbacks see (and may edit) the parsed parameters first."""
    info = context.models.current_info()
    runtime = getattr(context, "extensions", None)
    callbacks = runtime.callbacks if runtime is not None else None
    on_parsed = callbacks.infotext_pasted if callbacks is not None and callbacks.has("infotext_pasted") else None
    return paste_parameters(text, context.settings.current(), available_samplers=sampler_choices(),
                            current_model_hash=info.shorthash if info is not None else None,
                            extract_styles=context.prompt_styles.extract_styles_from_prompt, on_parsed=on_parsed)


def reused_seed(state: dict | None) -> int | None:
    """The seed of the selected (else first) image of the last generation, for the ♻️ button."""
    state = state or {}
    seeds = state.get("seeds") or []
    index = state.get("index", 0)
    if not seeds:
        return None
    return int(seeds[index] if 0 <= index < len(seeds) else seeds[0])


def stop_job(context, job_id: str | None, *, skip: bool = False) -> bool:
    """Interrupt (or skip an image of) this page's job. A page with no job of its own (reloaded
    while its job runs) stops the running txt2img job, as A1111's button does; never a merge or
    another kind of job, and once the page's own job has finished, nothing."""
    jobs = context.jobs
    if job_id is None:
        running = jobs.current()
        if running is None or running.kind != "txt2img":
            return False
        job_id = running.id
    return jobs.skip(job_id) if skip else jobs.interrupt(job_id)


def selected_info_html(state: dict | None, index: int) -> str:
    state = state or {}
    infotexts = state.get("infotexts") or []
    infotext = infotexts[index] if 0 <= index < len(infotexts) else ""
    return infotext_html(infotext, state.get("notes") or [], state.get("error"))


def output_folder(context) -> Path:
    """Where txt2img images are saved today (A1111's folder layout)."""
    from modules.outputs.images import FilenameContext, FilenameGenerator, SaveOptions, txt2img_output_dirs

    options = SaveOptions.from_settings(context.settings.current())
    images_dir, _ = txt2img_output_dirs(context.paths.data_dir, options)
    if options.save_to_dirs and options.directories_filename_pattern:
        # [date] and the like; a pattern that needs a prompt ([prompt_words]) stays unexpanded.
        subfolder = FilenameGenerator(FilenameContext()).apply(options.directories_filename_pattern)
        if subfolder and "[" not in subfolder:
            return images_dir / subfolder
    return images_dir


def open_output_folder(context) -> str:
    """Say where the images are; on a local server (no --listen), also open the folder there."""
    folder = output_folder(context)
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


# --- gradio ---------------------------------------------------------------------------------------


def paste_updates(context, text: str | None, script_fields: Sequence[tuple[Any, Any]] = ()) -> tuple[list, str]:
    """Component updates for every txt2img field (in `TXT2IMG_FIELDS` order), then for each of the
    scripts' `script_fields` (`(component, infotext key or function)`, A1111's `infotext_fields`),
    from an infotext, and the HTML note to show. Fields the text does not set are skipped."""
    if not text or not text.strip():
        note = ("<p class='job-note'>Nothing to paste: put an infotext (a picture's parameters) into the prompt "
                "box, or generate first.</p>")
        return [gr.skip()] * (len(TXT2IMG_FIELDS) + len(script_fields)), note
    pasted = paste_values(context, text)
    updates: list = []
    for name in TXT2IMG_FIELDS:
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
    set_count = sum(1 for name in TXT2IMG_FIELDS if name in pasted.values and name != "override_settings")
    script_updates = pasted_updates(script_fields, pasted.parameters)
    set_count += sum(1 for update in script_updates if "value" in update)
    notes = "".join(f"<p class='job-note'>{html.escape(note)}</p>" for note in pasted.notes)
    return [*updates, *script_updates], f"<p class='job-note'>Pasted {set_count} parameters.</p>{notes}"


def wire_send_to_txt2img(context, shared: UiShared, button, source) -> None:
    """`button` pastes the infotext in `source` (a text component) into the txt2img tab, its
    scripts' controls included, and switches to it (PNG Info's and the extensions' "Send to txt2img")."""
    fields = [shared.txt2img_fields[name] for name in TXT2IMG_FIELDS]
    script_fields = list(shared.txt2img_paste_fields)

    def on_send(text: str):
        updates, note = paste_updates(context, text, script_fields)
        tab = gr.Tabs(selected="txt2img") if text and text.strip() else gr.skip()
        return (*updates, tab, note)

    button.click(on_send, inputs=source, outputs=[*fields, *(component for component, _ in script_fields),
                                                  shared.tabs, shared.txt2img_html_info], show_progress="hidden")


@dataclass
class _PromptRow:
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
class _SettingsColumn:
    """The settings column's components that are not request fields (those go in `fields`)."""

    hires_group: gr.Column
    res_switch: gr.Button
    random_seed: gr.Button
    reuse_seed: gr.Button
    scripts: Any
    networks_panel: Any


@dataclass
class _ResultsColumn:
    progress: gr.HTML
    gallery: gr.Gallery
    open_folder: gr.Button
    info: gr.HTML


def build(context, shared: UiShared) -> None:
    """Build the tab inside the current `gr.Tab`; fills `shared.txt2img_*`."""
    counter = TokenCounter()
    fields: dict[str, Any] = {}

    hooks = ComponentHooks.for_context(context)
    top = _build_prompt_row(hooks, context)
    styles_dialog = styles_panel.build_dialog(context)
    with gr.Row(elem_id="txt2img_main", equal_height=False):
        settings = _build_settings_column(context, shared, fields, top, hooks)
        results = _build_results_column(hooks)

    fields["prompt"], fields["negative_prompt"] = top.prompt, top.negative
    fields["styles"] = top.styles.dropdown
    field_components = [fields[name] for name in TXT2IMG_FIELDS]
    shared.txt2img_paste_fields = _register_paste_fields(context, fields)
    generation_state = gr.State({})
    job_id_state = gr.State(None)

    _wire_generation(context, top, settings.scripts, results, field_components, generation_state, job_id_state)
    _wire_form_tools(context, counter, top, settings, results, fields, field_components, generation_state,
                     shared.txt2img_paste_fields)

    styles_panel.wire(context, top.styles, styles_dialog, top.prompt, top.negative, shared.page_loads)
    shared.txt2img_fields = fields
    shared.txt2img_html_info = results.info
    # A page opened later shows the folders as they are then, not as they were at start-up.
    shared.page_loads.append((lambda: extra_networks_panel.render_html(extra_networks_panel.list_networks(context)),
                              [settings.networks_panel]))


def _register_paste_fields(context, fields: dict[str, Any]) -> list[tuple[Any, Any]]:
    """The scripts' `infotext_fields` (what a paste fills besides the request fields), and the tab as
    A1111's paste destination "txt2img" (`infotext_utils.paste_fields`), for extensions that read it."""
    from modules.generation.infotext_fields import REQUEST_FIELDS

    runtime = getattr(context, "extensions", None)
    if runtime is None:
        return []
    script_fields, field_names = script_infotext_fields(runtime.scripts.txt2img_scripts)
    own = [(fields["prompt"], "Prompt"), (fields["negative_prompt"], "Negative prompt")]
    own += [(fields[name], key) for key, (name, _) in REQUEST_FIELDS.items() if name in fields]
    runtime.scripts.paste.add_paste_fields("txt2img", None, [*own, *script_fields], fields["override_settings"])
    runtime.scripts.paste.paste_fields["txt2img"]["paste_field_names"] = field_names
    return script_fields


def _build_prompt_row(hooks: ComponentHooks, context) -> _PromptRow:
    with gr.Row(elem_id="txt2img_toprow"):
        with gr.Column(scale=6, elem_id="txt2img_prompt_container"):
            with gr.Group(elem_classes=["prompt-box"]):
                prompt = hooks.create(gr.Textbox, label="Prompt", lines=3, max_lines=20, elem_id="txt2img_prompt",
                                                  placeholder="Prompt (Ctrl+Enter to generate, ↙️ to read parameters from an "
                                                              "infotext pasted here)")
                token_counter = hooks.create(gr.HTML, value=format_token_count(0, 75), elem_id="txt2img_token_counter",
                                                      elem_classes=["token-counter-box"], js_on_load=None)
            with gr.Group(elem_classes=["prompt-box"]):
                negative = hooks.create(gr.Textbox, label="Negative prompt", lines=2, max_lines=20, elem_id="txt2img_neg_prompt",
                                                    placeholder="Negative prompt")
                negative_counter = hooks.create(gr.HTML, value=format_token_count(0, 75), elem_id="txt2img_negative_token_counter",
                                                         elem_classes=["token-counter-box"], js_on_load=None)
        with gr.Column(scale=1, min_width=220, elem_id="txt2img_actions_column"):
            generate = hooks.create(gr.Button, value="Generate", variant="primary", elem_id="txt2img_generate")
            with gr.Row():
                interrupt = hooks.create(gr.Button, value="Interrupt", variant="stop", elem_id="txt2img_interrupt", min_width=60)
                skip = hooks.create(gr.Button, value="Skip", elem_id="txt2img_skip", min_width=60)
            paste = hooks.create(gr.Button, value=icon_label("paste", "Read parameters"), elem_id="paste", size="sm")
            styles = styles_panel.build_picker(context, create=hooks.create)
    return _PromptRow(prompt, token_counter, negative, negative_counter, generate, interrupt, skip, paste, styles)


def _build_settings_column(context, shared: UiShared, fields: dict[str, Any], top: _PromptRow,
                           hooks: ComponentHooks) -> _SettingsColumn:
    """The left column: A1111's generation parameters (into `fields`), scripts and extra networks."""
    with gr.Column(scale=1, elem_id="txt2img_settings"):
        hires_group = _build_sampling_fields(fields, hooks)
        res_switch = _build_size_fields(fields, hooks)
        fields["cfg_scale"] = hooks.create(gr.Slider, **slider_args("cfg_scale"), label="CFG Scale", elem_id="txt2img_cfg_scale")
        random_seed, reuse_seed = _build_seed_fields(fields, hooks)
        fields["override_settings"] = hooks.create(gr.Dropdown, choices=[], value=[], multiselect=True, allow_custom_value=True,
                                                                label="Override settings", visible=False,
                                                                elem_id="txt2img_override_settings")
        scripts = scripts_panel.build(context, shared)
        networks_panel = extra_networks_panel.build(context, shared, top.prompt, top.negative)
    return _SettingsColumn(hires_group, res_switch, random_seed, reuse_seed, scripts, networks_panel)


def _build_sampling_fields(fields: dict[str, Any], hooks: ComponentHooks) -> gr.Column:
    """Sampler, schedule, steps and the hires. fix group; returns that group (hidden until enabled)."""
    with gr.Row():
        fields["sampler_name"] = hooks.create(gr.Dropdown, choices=sampler_choices(), value=field_default("sampler_name"), label="Sampling method",
                                                           elem_id="txt2img_sampling")
        fields["scheduler"] = hooks.create(gr.Dropdown, choices=scheduler_choices(), value=field_default("scheduler"), label="Schedule type",
                                                        elem_id="txt2img_scheduler")
    fields["steps"] = hooks.create(gr.Slider, **slider_args("steps"), label="Sampling steps", elem_id="txt2img_steps")
    fields["enable_hr"] = hooks.create(gr.Checkbox, value=field_default("enable_hr"), label="Hires. fix", elem_id="txt2img_hr")
    with gr.Column(visible=False, elem_id="txt2img_hires_fix") as hires_group:
        with gr.Row():
            fields["hr_upscaler"] = hooks.create(gr.Dropdown, choices=list(LATENT_UPSCALE_MODES), value=field_default("hr_upscaler"), label="Upscaler",
                                                              elem_id="txt2img_hr_upscaler")
            fields["hr_second_pass_steps"] = hooks.create(gr.Slider, **slider_args("hr_second_pass_steps"), label="Hires steps",
                                                                     elem_id="txt2img_hires_steps")
            fields["denoising_strength"] = hooks.create(gr.Slider, **slider_args("denoising_strength"), label="Denoising strength",
                                                                   elem_id="txt2img_denoising_strength")
        with gr.Row():
            fields["hr_scale"] = hooks.create(gr.Slider, **slider_args("hr_scale"), label="Upscale by",
                                                         elem_id="txt2img_hr_scale")
            fields["hr_resize_x"] = hooks.create(gr.Slider, **slider_args("hr_resize_x"), label="Resize width to",
                                                            elem_id="txt2img_hr_resize_x")
            fields["hr_resize_y"] = hooks.create(gr.Slider, **slider_args("hr_resize_y"), label="Resize height to",
                                                            elem_id="txt2img_hr_resize_y")
    return hires_group


def _build_size_fields(fields: dict[str, Any], hooks: ComponentHooks) -> gr.Button:
    """Width/height with the swap button, batch count and size; returns the swap button."""
    with gr.Row(equal_height=True):
        with gr.Column(scale=4):
            fields["width"] = hooks.create(gr.Slider, **slider_args("width"), label="Width", elem_id="txt2img_width")
            fields["height"] = hooks.create(gr.Slider, **slider_args("height"), label="Height", elem_id="txt2img_height")
        res_switch = hooks.create(gr.Button, value=icon_label("txt2img_res_switch_btn"), elem_id="txt2img_res_switch_btn", elem_classes=["tool"],
                                             scale=0, min_width=40)
        with gr.Column(scale=2):
            fields["n_iter"] = hooks.create(gr.Slider, **slider_args("n_iter"), label="Batch count",
                                                       elem_id="txt2img_batch_count")
            fields["batch_size"] = hooks.create(gr.Slider, **slider_args("batch_size"), label="Batch size",
                                                           elem_id="txt2img_batch_size")
    return res_switch


def _build_seed_fields(fields: dict[str, Any], hooks: ComponentHooks) -> tuple[gr.Button, gr.Button]:
    """Seed with its 🎲/♻️ buttons, the variation seed and "Resize seed from"; returns the two buttons."""
    with gr.Row(equal_height=True, elem_id="txt2img_seed_row"):
        fields["seed"] = hooks.create(gr.Number, value=field_default("seed"), label="Seed", precision=0, elem_id="txt2img_seed", scale=4)
        random_seed = hooks.create(gr.Button, value=icon_label("txt2img_random_seed"), elem_id="txt2img_random_seed", elem_classes=["tool"],
                                              scale=0, min_width=40)
        reuse_seed = hooks.create(gr.Button, value=icon_label("txt2img_reuse_seed"), elem_id="txt2img_reuse_seed", elem_classes=["tool"],
                                             scale=0, min_width=40)
    with gr.Row(equal_height=True, elem_id="txt2img_subseed_row"):
        fields["subseed"] = hooks.create(gr.Number, value=field_default("subseed"), label="Variation seed", precision=0, elem_id="txt2img_subseed")
        fields["subseed_strength"] = hooks.create(gr.Slider, **slider_args("subseed_strength"), label="Variation strength",
                                                             elem_id="txt2img_subseed_strength")
    with gr.Accordion("Resize seed from", open=False, elem_id="txt2img_seed_resize"), gr.Row():
        fields["seed_resize_from_w"] = hooks.create(gr.Slider, **slider_args("seed_resize_from_w"), label="Resize seed from width",
                                                               elem_id="txt2img_seed_resize_from_w")
        fields["seed_resize_from_h"] = hooks.create(gr.Slider, **slider_args("seed_resize_from_h"), label="Resize seed from height",
                                                               elem_id="txt2img_seed_resize_from_h")
    return random_seed, reuse_seed


def _build_results_column(hooks: ComponentHooks) -> _ResultsColumn:
    """The right column: progress, gallery, the output-folder button and the infotext."""
    with gr.Column(scale=1, elem_id="txt2img_results"):
        progress = hooks.create(gr.HTML, value="", elem_id="txt2img_progress", js_on_load=None)
        gallery = hooks.create(gr.Gallery, format="png", label="Output", show_label=False, elem_id="txt2img_gallery",
                                           columns=4, object_fit="contain", interactive=False,
                                           buttons=["download", "fullscreen"])
        with gr.Row():
            open_folder = hooks.create(gr.Button, value=icon_label("open_folder_txt2img", "Output folder"), elem_id="open_folder_txt2img", size="sm",
                                                  scale=0)
        info = hooks.create(gr.HTML, value="", elem_id="html_info_txt2img", js_on_load=None)
        # A1111's hidden button at the very bottom of the results: extensions hook after_component on
        # it to add their controls under the gallery (Config Presets, ...).
        hooks.create(gr.Button, visible=False, elem_id="txt2img_generation_info_button")
    return _ResultsColumn(progress, gallery, open_folder, info)


def _wire_generation(context, top: _PromptRow, scripts, results: _ResultsColumn, field_components: list,
                     generation_state: gr.State, job_id_state: gr.State) -> None:
    """Generate / Interrupt / Skip, and picking a gallery image (which shows its infotext)."""

    async def on_generate(*values):
        field_values, script_values = values[:len(TXT2IMG_FIELDS)], values[len(TXT2IMG_FIELDS):]
        try:
            request = apply_request_styles(build_request(dict(zip(TXT2IMG_FIELDS, field_values))),
                                           context.prompt_styles)
            submission = GenerationSubmission(request,
                                              selection=scripts.selection(script_values))
            job = submit_generation(context, submission)
        except (RequestError, PromptTooLongError, StyleError) as error:
            yield gr.skip(), error_html(str(error)), "", gr.skip(), gr.skip()
            return
        yield gr.skip(), "", render_progress(job), gr.skip(), job.id
        async for update in follow_job_async(job, loading=lambda: context.load_state.loading):
            preview = [update.preview] if update.preview is not None else gr.skip()
            yield preview, gr.skip(), update.progress_html, gr.skip(), job.id
        outcome = outcome_of(context.settings.current(), submission, job)
        # The id is kept: Interrupt pressed just after the job ended must not reach the next one.
        yield outcome.images, outcome.info_html(0), "", outcome.to_state(), job.id

    top.generate.click(on_generate, inputs=[*field_components, *scripts.inputs],
                       outputs=[results.gallery, results.info, results.progress, generation_state, job_id_state],
                       show_progress="hidden", concurrency_limit=None)
    top.interrupt.click(lambda job_id: _discard(stop_job(context, job_id)), inputs=job_id_state, outputs=None,
                        show_progress="hidden", queue=False)
    top.skip.click(lambda job_id: _discard(stop_job(context, job_id, skip=True)), inputs=job_id_state, outputs=None,
                   show_progress="hidden", queue=False)

    def on_select(state: dict, event: gr.SelectData):
        state = dict(state or {})
        state["index"] = int(event.index) if isinstance(event.index, int) else 0
        return selected_info_html(state, state["index"]), state

    results.gallery.select(on_select, inputs=generation_state, outputs=[results.info, generation_state],
                           show_progress="hidden")


def _wire_form_tools(context, counter: TokenCounter, top: _PromptRow, settings: _SettingsColumn,
                     results: _ResultsColumn, fields: dict[str, Any], field_components: list,
                     generation_state: gr.State, script_fields: Sequence[tuple[Any, Any]] = ()) -> None:
    """Token counters, paste, the hires. fix toggle, the seed and size buttons and the output folder."""
    for box, counter_html, positive in ((top.prompt, top.token_counter, True),
                                        (top.negative, top.negative_counter, False)):
        box.change(lambda text, steps, positive=positive: count_tokens(context, counter, text, steps,
                                                                       is_positive=positive),
                   inputs=[box, fields["steps"]], outputs=counter_html, show_progress="hidden",
                   trigger_mode="always_last", queue=False)

    def on_paste(prompt_text: str, state: dict):
        updates, note = paste_updates(context, paste_source(prompt_text, state), script_fields)
        return (*updates, note)

    top.paste.click(on_paste, inputs=[top.prompt, generation_state],
                    outputs=[*field_components, *(component for component, _ in script_fields), results.info],
                    show_progress="hidden")
    fields["enable_hr"].change(lambda enabled: gr.Column(visible=bool(enabled)), inputs=fields["enable_hr"],
                               outputs=settings.hires_group, show_progress="hidden", queue=False)
    settings.random_seed.click(lambda: -1, outputs=fields["seed"], show_progress="hidden", queue=False)
    settings.reuse_seed.click(lambda state: _or_skip(reused_seed(state)), inputs=generation_state,
                              outputs=fields["seed"], show_progress="hidden")
    settings.res_switch.click(lambda width, height: (height, width), inputs=[fields["width"], fields["height"]],
                              outputs=[fields["width"], fields["height"]], show_progress="hidden", queue=False)
    results.open_folder.click(lambda: open_output_folder(context), outputs=results.info, show_progress="hidden")


def _or_skip(value: Any) -> Any:
    return gr.skip() if value is None else value


def _discard(_: Any) -> None:
    return None
