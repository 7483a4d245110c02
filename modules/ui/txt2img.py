"""The txt2img tab: prompts with token counters, A1111's generation parameters, Generate / Interrupt /
Skip, a live progress bar with ETA and preview, the gallery with the infotext under it, paste
parameters back, the output folder, and the extra-networks panel.

Handlers are thin: widget values -> `GenerationRequest` (modules.ui.request_fields) -> a job through
the generation service the API uses too (modules.serving.generation_service) -> gallery values. The
builders and handlers are the img2img tab's too (modules.ui.generation_form, by tab name); what they
compute lives in plain functions there and in those modules, so tests call it without a browser.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import gradio as gr

from modules.generation.requests import hires_upscaler_choices
from modules.generation.styles import apply_request_styles
from modules.ui import extra_networks_panel, generation_form, prompt_drop, scripts_panel, styles_panel
from modules.ui.component_hooks import ComponentHooks
from modules.ui.generation_form import (  # noqa: F401  (re-exported: tests and other tabs use these names)
    PromptRow,
    ResultsColumn,
    count_tokens,
    open_output_folder,
    output_folder,
    paste_source,
    paste_values,
    reused_seed,
    sampler_choices,
    scheduler_choices,
    selected_info_html,
    stop_job,
)
from modules.ui.request_fields import TXT2IMG_FIELDS, build_request, slider_args
from modules.ui.shared import UiShared
from modules.ui.token_counter import TokenCounter

TABNAME = "txt2img"


def paste_updates(context, text: str | None, script_fields: Sequence[tuple[Any, Any]] = ()) -> tuple[list, str]:
    """Component updates for every txt2img field (in `TXT2IMG_FIELDS` order), then for each of the
    scripts' `script_fields` (`(component, infotext key or function)`, A1111's `infotext_fields`),
    from an infotext, and the HTML note to show. Fields the text does not set are skipped."""
    return generation_form.paste_updates(context, text, TXT2IMG_FIELDS, script_fields)


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
                                                  shared.tabs, shared.txt2img_html_log], show_progress="hidden")


@dataclass
class _SettingsColumn:
    """The settings column's components that are not request fields (those go in `fields`)."""

    hires_group: gr.Column
    res_switch: gr.Button
    random_seed: gr.Button
    reuse_seed: gr.Button
    scripts: Any
    networks_panel: Any


def build(context, shared: UiShared) -> None:
    """Build the tab inside the current `gr.Tab`; fills `shared.txt2img_*`."""
    counter = TokenCounter()
    fields: dict[str, Any] = {}

    hooks = ComponentHooks.for_context(context)
    top = generation_form.build_prompt_row(hooks, context, TABNAME)
    styles_dialog = styles_panel.build_dialog(context)
    with gr.Row(elem_id="txt2img_main", equal_height=False):
        settings = _build_settings_column(context, shared, fields, top, hooks)
        results = generation_form.build_results_column(hooks, TABNAME)

    fields["prompt"], fields["negative_prompt"] = top.prompt, top.negative
    fields["styles"] = top.styles.dropdown
    field_components = [fields[name] for name in TXT2IMG_FIELDS]
    shared.txt2img_paste_fields = generation_form.register_paste_fields(context, TABNAME, fields)
    generation_state = gr.State({})
    job_id_state = gr.State(None)

    def make_request(values):
        return apply_request_styles(build_request(dict(zip(TXT2IMG_FIELDS, values))), context.prompt_styles)

    generation_form.wire_generation(context, TABNAME, top, settings.scripts, results, field_components,
                                    make_request, generation_state, job_id_state)
    generation_form.wire_token_counters(context, counter, top, fields["steps"])
    generation_form.wire_paste(context, top, results, TXT2IMG_FIELDS, fields, generation_state,
                               shared.txt2img_paste_fields)
    prompt_drop.wire(context, TABNAME, top, results, TXT2IMG_FIELDS, fields, shared.txt2img_paste_fields)
    fields["enable_hr"].change(lambda enabled: gr.Column(visible=bool(enabled)), inputs=fields["enable_hr"],
                               outputs=settings.hires_group, show_progress="hidden", queue=False)
    generation_form.wire_seed_and_size_buttons(context, TABNAME, fields, settings.random_seed, settings.reuse_seed,
                                               settings.res_switch, results, generation_state)

    styles_panel.wire(context, top.styles, styles_dialog, top.prompt, top.negative, shared.page_loads)
    shared.txt2img_fields = fields
    shared.txt2img_html_info = results.info
    shared.txt2img_html_log = results.log
    shared.txt2img_results = results
    shared.txt2img_generation_state = generation_state
    # (The networks panel re-reads the folders at each page load itself: extra_networks_panel.build.)
    # A1111's "Hires sampling method" shows with its setting, as the settings are when the page opens.
    shared.page_loads.append((lambda: gr.update(visible=bool(context.settings.current().get("hires_fix_show_sampler"))),
                              [fields["hr_sampler_name"]]))
    # The hires upscalers as they are then too (the Extras tab's page load rescans the folders).
    shared.page_loads.append((lambda: gr.update(choices=hires_upscaler_choices(context.upscalers)),
                              [fields["hr_upscaler"]]))


def _build_settings_column(context, shared: UiShared, fields: dict[str, Any], top: PromptRow,
                           hooks: ComponentHooks) -> _SettingsColumn:
    """The left column: A1111's generation parameters (into `fields`), scripts and extra networks."""
    with gr.Column(scale=1, elem_id="txt2img_settings"):
        hires_group = generation_form.build_sampling_fields(
            fields, hooks, TABNAME, hires=True, hr_upscalers=hires_upscaler_choices(context.upscalers))
        res_switch = generation_form.build_size_fields(fields, hooks, TABNAME)
        fields["cfg_scale"] = hooks.create(gr.Slider, **slider_args("cfg_scale"), label="CFG Scale",
                                           elem_id="txt2img_cfg_scale")
        random_seed, reuse_seed = generation_form.build_seed_fields(fields, hooks, TABNAME)
        generation_form.build_override_field(fields, hooks, TABNAME)
        scripts = scripts_panel.build(context, shared)
        networks_panel = extra_networks_panel.build(context, shared, top.prompt, top.negative)
    return _SettingsColumn(hires_group, res_switch, random_seed, reuse_seed, scripts, networks_panel)
