"""The Checkpoint Merger tab: A1111's merger form (A1111.md §6) plus Atelier's methods, block weights
and "Merge and load".

The form's widget values become a `MergeForm`, which turns into the same `MergeRequest` the API
takes; the merge runs as a job (`modules.merging.service`), and the tab follows the job's progress
until it finishes, then lists the new checkpoint in every checkpoint dropdown at once. Handlers are
methods of `MergerHandlers` (widget values in, plain values and `gr.update`s out), so tests call them
without a browser.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any

import gradio as gr
from pydantic import ValidationError

from modules.library.checkpoints import CheckpointNotFoundError
from modules.serving.accounts import SHARED_USER, User, caller
from modules.ui import operators
from modules.serving.jobs import Job, JobState
from modules.merging.blocks import BLOCK_LAYOUTS, SD_PRESETS, block_names
from modules.merging.methods import MERGE_METHODS
from modules.merging.service import submit_merge
from modules.merging.merger import (CONFIG_SOURCES, MergeError, MergeOutputExists, MergeRequest, MergeResult,
                                    check_merge, output_name)
from modules.merging.service import merge_options, merge_output_dir
from modules.ui.generation import error_html, follow_job
from modules.common.validation import validation_problems

DEFAULT_METHOD = "Weighted sum"
MODEL_PICKER_MIN_WIDTH = 380
DEFAULT_NAME_HINT = "default: from the models and the multiplier, e.g. 0.7(A) + 0.3(B)"
NO_PRESET = "None"
# The methods that take options beyond M and N, and which `MergeOptions` fields they read.
METHOD_OPTION_FIELDS: dict[str, tuple[str, ...]] = {
    "Add difference (TIES)": ("ties_density",),
    "Add difference (DARE)": ("dare_drop_rate", "seed"),
}
# Block layouts offered for the sliders. SDXL's 20 block names are a subset of SD1/SD2's 26, so one
# slider per SD1 block serves both; the SDXL layout hides IN09-IN11 and OUT09-OUT11.
LAYOUT_CHOICES = [("SD1 / SD2 (26 weights)", "sd1"), ("SDXL (20 weights)", "sdxl")]
ALL_BLOCKS = block_names("sd1")
WEIGHT_COUNTS = sorted({len(layout) for layout in BLOCK_LAYOUTS.values()})
BLOCK_WEIGHTS_HELP = (
    "26 numbers for SD1/SD2 (BASE, IN00-IN11, M00, OUT00-OUT11) or 20 for SDXL (BASE, IN00-IN08, M00, "
    f"OUT00-OUT08), separated by commas, or a preset name ({', '.join(SD_PRESETS)})"
)
OVERWRITE_LABEL = "Overwrite"
# What the form's fields are called on screen, for error messages about them: a message shown in the
# tab names a field by its label, never by the request's key (the API's messages keep the keys).
FIELD_LABELS = {
    "primary_model_name": "Primary model (A)",
    "secondary_model_name": "Secondary model (B)",
    "tertiary_model_name": "Tertiary model (C)",
    "interpolation_method": "Interpolation Method",
    "multiplier": "Multiplier (M)",
    "multiplier2": "Multiplier (N)",
    "save_as_half": "Save as float16",
    "custom_name": "Custom Name",
    "checkpoint_format": "Checkpoint format",
    "config_source": "Copy config from",
    "bake_in_vae": "Bake in VAE",
    "discard_weights": "Discard weights with matching name",
    "save_metadata": "Save metadata",
    "add_merge_recipe": "Add merge recipe metadata",
    "copy_metadata_fields": "Copy metadata from merged models",
    "metadata_json": "Metadata in JSON format",
    "block_weights": "Block weights",
    "method_options": "Method options",
    "ties_density": "TIES density",
    "dare_drop_rate": "DARE drop rate",
    "overwrite": OVERWRITE_LABEL,
}
# Keys that are plain words too ("seed", "multiplier") are replaced only where they are keys (above,
# by position); these, with an underscore, cannot be anything else in a message.
_KEY_PATTERN = re.compile(r"\b(" + "|".join(sorted((k for k in FIELD_LABELS if "_" in k), key=len, reverse=True))
                          + r")\b")


class MergeFormError(ValueError):
    """The form cannot become a merge request; the message names the field and the fix."""


def for_people(message: str) -> str:
    """A merge message as the tab shows it: the request's keys (`discard_weights`) become the labels
    of the fields they come from."""
    return _KEY_PATTERN.sub(lambda match: FIELD_LABELS[match[1]], message)


def exists_message(error: MergeOutputExists) -> str:
    """The tab's answer to an output that exists: the choice it offers, not the API's flag."""
    return (f"{error.path.name} already exists in {error.path.parent}. Tick \"{OVERWRITE_LABEL}\" to replace "
            "it, or change Custom Name.")


@dataclass(frozen=True)
class MergeForm:
    """The merger form's widget values, in the order the tab passes them."""

    primary: str | None
    secondary: str | None
    tertiary: str | None
    method: str
    multiplier: float
    multiplier2: float
    custom_name: str
    checkpoint_format: str
    save_as_half: bool
    config_source: int | None
    bake_in_vae: str | None
    discard_weights: str
    save_metadata: bool
    add_merge_recipe: bool
    copy_metadata_fields: bool
    metadata_json: str
    block_weights: str
    seed: float | None
    ties_density: float
    dare_drop_rate: float
    overwrite: bool = False

    def to_request(self) -> MergeRequest:
        """The `MergeRequest` these values ask for; `MergeFormError` when they cannot make one."""
        method = MERGE_METHODS.get(self.method)
        if method is None:
            raise MergeFormError(f"Unknown interpolation method {self.method!r}; choose one of "
                                 f"{', '.join(MERGE_METHODS)}.")
        if not self.primary:
            raise MergeFormError("Choose the primary model (A).")
        # A1111's wording, and where to fix it.
        if method.needs_b and not self.secondary:
            raise MergeFormError(f"Interpolation method ({method.name}) requires a secondary model: "
                                 "choose one in Secondary model (B).")
        if method.needs_c and not self.tertiary:
            raise MergeFormError(f"Interpolation method ({method.name}) requires a tertiary model: "
                                 "choose one in Tertiary model (C).")
        try:
            return MergeRequest(
                primary_model_name=self.primary,
                secondary_model_name=self.secondary if method.needs_b else None,
                tertiary_model_name=self.tertiary if method.needs_c else None,
                interpolation_method=method.name,
                multiplier=self.multiplier,
                multiplier2=self.multiplier2 if method.uses_beta else 0.0,
                save_as_half=self.save_as_half,
                custom_name=(self.custom_name or "").strip(),
                checkpoint_format=self.checkpoint_format,
                config_source=self.config_source if self.config_source is not None else 0,
                bake_in_vae=self.bake_in_vae or "None",
                discard_weights=self.discard_weights or "",
                save_metadata=self.save_metadata,
                add_merge_recipe=self.add_merge_recipe,
                copy_metadata_fields=self.copy_metadata_fields,
                metadata_json=self.metadata_json or "{}",
                block_weights=parse_block_weights(self.block_weights),
                method_options=self._method_options(method.name),
                overwrite=bool(self.overwrite),
            )
        except ValidationError as e:
            raise MergeFormError("\n".join(validation_problems(e, FIELD_LABELS))) from None

    def _method_options(self, method: str) -> dict[str, Any]:
        options: dict[str, Any] = {}
        for name in METHOD_OPTION_FIELDS.get(method, ()):
            value = getattr(self, name)
            if name == "seed":
                if value is None or not float(value).is_integer():
                    raise MergeFormError(f"Seed (DARE) must be a whole number, got {value!r}.")
                value = int(value)
            options[name] = value
        return options


def parse_block_weights(text: str | None) -> tuple[float, ...] | None:
    """The block weights typed in the text field: None when empty, a preset's weights for its name,
    else the numbers (26 or 20) separated by commas or spaces. `MergeFormError` says what is wrong."""
    text = (text or "").strip()
    if not text:
        return None
    if text.upper() in SD_PRESETS:
        return SD_PRESETS[text.upper()]
    items = [item for item in re.split(r"[,\s]+", text) if item]
    values = []
    for position, item in enumerate(items, 1):
        try:
            value = float(item)
        except ValueError:
            raise MergeFormError(f"Block weights: {item!r} (item {position}) is not a number. "
                                 f"Write {BLOCK_WEIGHTS_HELP}.") from None
        if not math.isfinite(value):
            raise MergeFormError(f"Block weights: {item!r} (item {position}) is not a finite number.")
        values.append(value)
    if len(values) not in WEIGHT_COUNTS:
        raise MergeFormError(f"Block weights: got {len(values)} numbers. Write {BLOCK_WEIGHTS_HELP}.")
    return tuple(values)


def format_block_weights(values: Sequence[float]) -> str:
    return ",".join(f"{float(v):g}" for v in values)


def block_layout_of(context, title: str | None) -> str | None:
    """The block layout ("sd1" or "sdxl") of checkpoint `title`, read from its safetensors header;
    None when unknown (a .ckpt, an unreadable file, no choice)."""
    from modules.library.model_detection import architecture_of_file

    if not title:
        return None
    try:
        info = context.checkpoints.find(title)
    except CheckpointNotFoundError:
        return None
    architecture = architecture_of_file(info.filename)
    if architecture is None:
        return None
    return "sdxl" if block_names(architecture.family.value) == block_names("sdxl") else "sd1"


def method_help(method_name: str) -> str:
    """One line under the method choice: what it computes and which models it needs."""
    method = MERGE_METHODS.get(method_name)
    if method is None:
        return ""
    needs = "A" + (", B" if method.needs_b else "") + (" and C" if method.needs_c else "")
    return f"**{html.escape(method.name)}**: {html.escape(method.description)} (uses {needs})"


def result_text(job: Job, load: bool) -> tuple[str, bool]:
    """(message, is_error) for a finished merge job."""
    result = job.result if isinstance(job.result, MergeResult) else None
    if job.state is JobState.DONE and result is not None:
        if load:
            lines = [(f"Loaded {result.title} as the current model without saving it to the checkpoint list. "
                      "To keep it, press Merge with the same settings.")]
        else:
            lines = [f"Checkpoint saved to {result.path}"]
        lines += [f"Warning: {w}" for w in result.warnings]
        return "\n".join(lines), False
    if job.state is JobState.INTERRUPTED or job.interrupt_requested:
        return "Interrupted: nothing was saved.", True
    if isinstance(job.exception, MergeOutputExists):  # written by another merge since the check
        return f"Not merged: {exists_message(job.exception)}", True
    # Bad input (a ValueError or a checkpoint not found) explains itself; anything else keeps its type.
    if isinstance(job.exception, (ValueError, CheckpointNotFoundError)):
        return f"Failed: {for_people(str(job.exception))}", True
    return f"Failed: {job.error or 'the merge did not finish; see the console'}", True


def message_html(text: str, error: bool = False) -> str:
    if error:
        return error_html(text)
    return "<p class='modelmerger-message'>" + "<br>".join(html.escape(line) for line in text.split("\n")) + "</p>"


class MergerHandlers:
    """The tab's event handlers, bound to the app context (no gradio components inside)."""

    def __init__(self, context, *, top_bar_dropdown: bool = False, poll_seconds: float = 0.5):
        self.context = context
        self.top_bar_dropdown = top_bar_dropdown  # outputs end with the top bar's dropdown and status line
        self.poll_seconds = poll_seconds

    # -- choices -------------------------------------------------------------------------------

    def checkpoint_choices(self) -> list[tuple[str, str]]:
        """`(label, title)`: a file known not to load says why in its label (its value is the title)."""
        return self.context.checkpoints.choices()

    def vae_choices(self) -> list[str]:
        return ["None", *self.context.vaes.names()]

    def _title(self, value: str | None) -> str | None:
        """The current title of the checkpoint `value` names (titles gain a hash once it is computed)."""
        if not value:
            return None
        try:
            return self.context.checkpoints.find(value).title
        except CheckpointNotFoundError:
            return None

    def model_dropdown_updates(self, *selected: str | None, loaded: bool = False) -> list[dict]:
        """Fresh choices for A, B, C (their selections kept, under their current titles), then for the
        top bar's dropdown when there is one: its choices include the model in use (a trial merge
        too), and after "Merge and load" (`loaded`) it shows that model; otherwise its selection is
        the top bar's business."""
        choices = self.checkpoint_choices()
        updates = [gr.update(choices=choices, value=self._title(value)) for value in selected]
        if self.top_bar_dropdown:
            from modules.ui.top_bar import checkpoint_choices, current_checkpoint_title, model_status

            top_bar = gr.update(choices=checkpoint_choices(self.context))
            if loaded:
                top_bar = gr.update(choices=top_bar["choices"], value=current_checkpoint_title(self.context))
            # The status line says what is loaded now: after "Merge and load", the trial merge.
            updates += [top_bar, model_status(self.context)[0]]
        return updates

    def refresh(self, primary, secondary, tertiary, bake_in_vae) -> list[dict]:
        """The refresh button: rescan the checkpoint and VAE folders."""
        self.context.checkpoints.refresh()
        self.context.vaes.refresh()
        vaes = self.vae_choices()
        return [*self.model_dropdown_updates(primary, secondary, tertiary)[:3],
                gr.update(choices=vaes, value=bake_in_vae if bake_in_vae in vaes else "None")]

    def choices_on_load(self) -> list[dict]:
        """On page load: the lists as they are now (the page may be older than the last merge)."""
        choices = self.checkpoint_choices()
        return [gr.update(choices=choices), gr.update(choices=choices), gr.update(choices=choices),
                gr.update(choices=self.vae_choices())]

    # -- merging -------------------------------------------------------------------------------

    def merge(self, *values, user: User = SHARED_USER) -> Iterator[list]:
        """The Merge button: outputs are (result, job id, Overwrite, A, B, C[, top bar dropdown, model status]).
        `user`: who asks (with --multi-user only operators merge; modules.ui.operators)."""
        yield from self._run(values, load=False, user=user)

    def merge_and_load(self, *values, user: User = SHARED_USER) -> Iterator[list]:
        """The Merge and load button: the result becomes the current model without being saved."""
        yield from self._run(values, load=True, user=user)

    def _run(self, values: Sequence[Any], load: bool, user: User = SHARED_USER) -> Iterator[list]:
        skip_dropdowns = [gr.skip()] * (5 if self.top_bar_dropdown else 3)
        refused = operators.refusal(user, "Merging checkpoints")
        if refused:
            yield [message_html(refused, error=True), None, gr.skip(), *skip_dropdowns]
            return
        form = MergeForm(*values)
        try:
            request = form.to_request()
            self.check(request, load)
        except MergeOutputExists as e:
            yield [message_html(f"Not merged: {exists_message(e)}", error=True), None, gr.skip(), *skip_dropdowns]
            return
        except (MergeFormError, MergeError, CheckpointNotFoundError) as e:
            yield [message_html(f"Failed: {for_people(str(e))}", error=True), None, gr.skip(), *skip_dropdowns]
            return
        job = submit_merge(self.context, request, load_without_saving=load)
        job_id = job.id
        for update in follow_job(job, poll_seconds=self.poll_seconds):
            yield [update.progress_html, job_id, gr.skip(), *skip_dropdowns]
        text, failed = result_text(job, load)
        dropdowns = self.model_dropdown_updates(form.primary, form.secondary, form.tertiary,
                                                loaded=load and not failed)
        # Overwrite is a choice for one merge: once a file was written it is unticked again, so a later
        # merge cannot replace another file unasked.
        yield [message_html(text, error=failed), None, gr.skip() if failed else False, *dropdowns]

    def check(self, request: MergeRequest, load: bool) -> None:
        """Refuse at once what the merge job would refuse (an existing output, models that do not fit
        together), so the answer is a message in the tab rather than a failed job. "Merge and load"
        writes to the trial folder, where an old trial is always replaced."""
        check_merge(request, self.context.checkpoints, merge_output_dir(self.context.paths), check_output=not load,
                    **merge_options(self.context))

    def default_name(self, primary, secondary, tertiary, method_name, multiplier, checkpoint_format) -> dict:
        """The Custom Name box's placeholder: the file name an empty box gives (A1111's rule,
        `merger.output_name`), e.g. `0.7(a) + 0.3(b).safetensors`, for the models chosen now."""
        method = MERGE_METHODS.get(method_name)
        names = [self._info(value) for value in (primary, secondary, tertiary)]
        a, b, c = names[0], names[1] if method and method.needs_b else None, names[2] if method and method.needs_c else None
        if method is None or a is None or (method.needs_b and b is None) or (method.needs_c and c is None):
            return gr.update(placeholder=DEFAULT_NAME_HINT)
        try:
            request = MergeRequest(primary_model_name=a.title, interpolation_method=method.name,
                                   multiplier=multiplier, checkpoint_format=checkpoint_format or "safetensors")
        except ValidationError:
            return gr.update(placeholder=DEFAULT_NAME_HINT)
        # An inpainting or instruct-pix2pix A adds its suffix too; known only when the files are read.
        return gr.update(placeholder=f"default: {output_name(request, a, b, c, None)}")

    def _info(self, value: str | None):
        if not value:
            return None
        try:
            return self.context.checkpoints.find(value)
        except CheckpointNotFoundError:
            return None

    def interrupt(self, job_id: str | None, user: User = SHARED_USER) -> None:
        """Stop this page's merge (only it: another user's job is not touched); nothing is saved."""
        job = self.context.jobs.get(job_id) if job_id else None
        if job is not None and user.owns(job.owner):
            self.context.jobs.interrupt(job_id)

    # -- form helpers --------------------------------------------------------------------------

    def read_metadata(self, primary, secondary, tertiary) -> str:
        """A1111's "Read metadata from selected checkpoints": A's, then B's, then C's safetensors metadata."""
        metadata: dict[str, Any] = {}
        for value in (primary, secondary, tertiary):
            if not value:
                continue
            try:
                info = self.context.checkpoints.find(value)
            except CheckpointNotFoundError:
                continue
            metadata.update(info.metadata or {})
        return json.dumps(metadata, indent=4, ensure_ascii=False)

    @staticmethod
    def on_method_change(method_name: str) -> list[dict]:
        """(help text, N slider, method options group, TIES density, DARE drop rate, DARE seed)."""
        method = MERGE_METHODS.get(method_name)
        option_fields = METHOD_OPTION_FIELDS.get(method_name, ())
        return [
            gr.update(value=method_help(method_name)),
            gr.update(visible=bool(method and method.uses_beta)),
            gr.update(visible=bool(option_fields)),
            gr.update(visible="ties_density" in option_fields),
            gr.update(visible="dare_drop_rate" in option_fields),
            gr.update(visible="seed" in option_fields),
        ]

    @staticmethod
    def on_format_change(checkpoint_format: str) -> dict:
        """A1111 shows the metadata options only for safetensors (a .ckpt has no metadata)."""
        return gr.update(visible=checkpoint_format == "safetensors")

    def on_primary_change(self, primary: str | None) -> dict:
        """Pick the slider layout that fits model A."""
        layout = block_layout_of(self.context, primary)
        return gr.update(value=layout) if layout else gr.skip()

    @staticmethod
    def slider_visibility(layout: str) -> list[dict]:
        names = set(block_names(layout or "sd1"))
        return [gr.update(visible=name in names) for name in ALL_BLOCKS]

    @staticmethod
    def weights_from_sliders(layout: str, *values: float) -> str:
        """The text field after a slider moved: the layout's weights in order."""
        names = block_names(layout or "sd1")
        by_name = dict(zip(ALL_BLOCKS, values))
        return format_block_weights([by_name[name] for name in names])

    @staticmethod
    def sliders_from_text(text: str) -> list:
        """(message, layout, 26 sliders) after the text field was edited. The sliders follow numbers in
        0-1; other values stay in the text only."""
        keep = [gr.skip()] * (1 + len(ALL_BLOCKS))
        try:
            weights = parse_block_weights(text)
        except MergeFormError as e:
            return [message_html(str(e), error=True), *keep]
        if weights is None:
            return ["", *keep]
        layout = "sd1" if len(weights) == len(block_names("sd1")) else "sdxl"
        by_name = dict(zip(block_names(layout), weights))
        if not all(0.0 <= w <= 1.0 for w in weights):
            return ["", gr.update(value=layout), *([gr.skip()] * len(ALL_BLOCKS))]
        return ["", gr.update(value=layout),
                *[gr.update(value=by_name[name]) if name in by_name else gr.skip() for name in ALL_BLOCKS]]

    @staticmethod
    def apply_preset(preset: str) -> list:
        """(text, layout, 26 sliders) for a preset (presets are SD1/SD2 lists)."""
        if not preset or preset == NO_PRESET:
            return [gr.skip()] * (2 + len(ALL_BLOCKS))
        weights = SD_PRESETS[preset]
        return [format_block_weights(weights), gr.update(value="sd1"), *[gr.update(value=w) for w in weights]]


@dataclass
class _MergerControls:
    """The merger form's components that are not `MergeForm` fields (those go in `form`)."""

    refresh: gr.Button
    method_info: gr.Markdown
    method_options: gr.Group
    metadata_accordion: gr.Accordion
    read_metadata: gr.Button
    preset: gr.Dropdown
    layout: gr.Radio
    sliders: list[gr.Slider]
    merge: gr.Button
    merge_and_load: gr.Button
    interrupt: gr.Button


def build(context, shared) -> None:
    """Build the tab inside the current `gr.Tab` (see modules.ui.shared for the element ids)."""
    top_bar = [shared.checkpoint_dropdown, shared.model_status] if shared.checkpoint_dropdown is not None else []
    handlers = MergerHandlers(context, top_bar_dropdown=bool(top_bar))
    form: dict[str, Any] = {}

    gr.HTML("<p>A merger of the selected checkpoints. The result is saved in the checkpoint folder "
            "and listed at once; <b>Merge and load</b> tries it as the current model without saving.</p>")
    # The pickers take the page's whole width: real checkpoint titles are long.
    refresh = _build_model_pickers(form, handlers.checkpoint_choices())
    with gr.Row(equal_height=False):
        controls = _build_form_column(handlers, form, refresh)
        with gr.Column(variant="compact", scale=1, min_width=240):
            result = gr.HTML(elem_id="modelmerger_result")
            job_id = gr.State(None)

    _wire_merger(handlers, shared, form, controls, result, job_id, top_bar)


def _build_form_column(handlers: MergerHandlers, form: dict[str, Any], refresh: gr.Button) -> _MergerControls:
    """The left column: the rest of the merge form (into `form`) and the Merge / Merge and load /
    Interrupt row."""
    with gr.Column(variant="compact", scale=2):
        method_info, method_options = _build_method_fields(form)
        _build_output_fields(form, handlers.vae_choices())
        metadata_accordion, read_metadata = _build_metadata_fields(form)
        preset, layout, sliders = _build_block_weight_fields(form)
        with gr.Row():
            merge = gr.Button("Merge", variant="primary", elem_id="modelmerger_merge")
            merge_and_load = gr.Button("Merge and load", elem_id="modelmerger_merge_and_load")
            interrupt = gr.Button("Interrupt", elem_id="modelmerger_interrupt")
    return _MergerControls(refresh, method_info, method_options, metadata_accordion, read_metadata, preset, layout,
                           sliders, merge, merge_and_load, interrupt)


def _build_model_pickers(form: dict[str, Any], checkpoints: list[tuple[str, str]]) -> gr.Button:
    """Models A, B and C with the refresh button; returns that button."""
    # Real titles are long (`sub/realisticVisionV60B1_v51HyperVAE.safetensors [3c5e8f0a1b]`): each
    # picker keeps room for one, and the row wraps to one picker a line on narrow screens.
    with gr.Row(elem_id="modelmerger_models"):
        form["primary"] = gr.Dropdown(checkpoints, value=None, label="Primary model (A)",
                                      elem_id="modelmerger_primary_model_name", min_width=MODEL_PICKER_MIN_WIDTH)
        form["secondary"] = gr.Dropdown(checkpoints, value=None, label="Secondary model (B)",
                                        elem_id="modelmerger_secondary_model_name", min_width=MODEL_PICKER_MIN_WIDTH)
        form["tertiary"] = gr.Dropdown(checkpoints, value=None, label="Tertiary model (C)",
                                       elem_id="modelmerger_tertiary_model_name", min_width=MODEL_PICKER_MIN_WIDTH)
        refresh = gr.Button("🔄", elem_id="modelmerger_refresh", scale=0, min_width=40)
    return refresh


def _build_method_fields(form: dict[str, Any]) -> tuple[gr.Markdown, gr.Group]:
    """Custom name, the multipliers, the method with its help text and its options; returns the help
    text and the options group, which change with the method."""
    with gr.Row(equal_height=True):
        form["custom_name"] = gr.Textbox(label="Custom Name (Optional)", elem_id="modelmerger_custom_name",
                                         placeholder=DEFAULT_NAME_HINT, scale=4)
        form["overwrite"] = gr.Checkbox(value=False, label=OVERWRITE_LABEL, elem_id="modelmerger_overwrite",
                                        info="replace a checkpoint of the same name", scale=1, min_width=160)
    form["multiplier"] = gr.Slider(0.0, 1.0, value=0.3, step=0.05, label="Multiplier (M) - set to 0 to get "
                                   "model A", elem_id="modelmerger_interp_amount")
    form["multiplier2"] = gr.Slider(0.0, 1.0, value=0.0, step=0.05, label="Multiplier (N) - the share of "
                                    "model C", elem_id="modelmerger_interp_amount2", visible=False)
    form["method"] = gr.Radio(list(MERGE_METHODS), value=DEFAULT_METHOD, label="Interpolation Method",
                              elem_id="modelmerger_interp_method")
    method_info = gr.Markdown(method_help(DEFAULT_METHOD), elem_id="modelmerger_interp_description")
    with gr.Group(visible=False, elem_id="modelmerger_method_options") as method_options:
        form["ties_density"] = gr.Slider(0.01, 1.0, value=0.2, step=0.01, visible=False,
                                         label="TIES density: share of each difference kept",
                                         elem_id="modelmerger_ties_density")
        form["dare_drop_rate"] = gr.Slider(0.0, 0.99, value=0.9, step=0.01, visible=False,
                                           label="DARE drop rate", elem_id="modelmerger_dare_drop_rate")
        form["seed"] = gr.Number(value=0, precision=0, visible=False, label="DARE seed",
                                 elem_id="modelmerger_dare_seed")
    return method_info, method_options


def _build_output_fields(form: dict[str, Any], vae_choices: list[str]) -> None:
    """What the saved checkpoint looks like: format, precision, config, baked-in VAE, discarded weights."""
    with gr.Row():
        form["checkpoint_format"] = gr.Radio(["ckpt", "safetensors"], value="safetensors",
                                             label="Checkpoint format",
                                             elem_id="modelmerger_checkpoint_format")
        form["save_as_half"] = gr.Checkbox(value=False, label="Save as float16",
                                           elem_id="modelmerger_save_as_half")
    form["config_source"] = gr.Radio(list(CONFIG_SOURCES), value=CONFIG_SOURCES[0], type="index",
                                     label="Copy config from", elem_id="modelmerger_config_method")
    with gr.Row():
        form["bake_in_vae"] = gr.Dropdown(vae_choices, value="None", label="Bake in VAE",
                                          elem_id="modelmerger_bake_in_vae")
    form["discard_weights"] = gr.Textbox(label="Discard weights with matching name",
                                         elem_id="modelmerger_discard_weights",
                                         placeholder="a regular expression, e.g. ^model_ema")


def _build_metadata_fields(form: dict[str, Any]) -> tuple[gr.Accordion, gr.Button]:
    """The Metadata accordion; returns it (hidden for ckpt) and its "Read metadata" button."""
    with gr.Accordion("Metadata", open=False, elem_id="modelmerger_metadata") as metadata_accordion:
        form["save_metadata"] = gr.Checkbox(value=True, label="Save metadata",
                                            elem_id="modelmerger_save_metadata")
        form["add_merge_recipe"] = gr.Checkbox(value=True, label="Add merge recipe metadata",
                                               elem_id="modelmerger_add_recipe")
        form["copy_metadata_fields"] = gr.Checkbox(value=True, label="Copy metadata from merged models",
                                                   elem_id="modelmerger_copy_metadata")
        form["metadata_json"] = gr.Textbox("{}", label="Metadata in JSON format", lines=4,
                                           elem_id="modelmerger_metadata_json")
        read_metadata = gr.Button("Read metadata from selected checkpoints",
                                  elem_id="modelmerger_read_metadata")
    return metadata_accordion, read_metadata


def _build_block_weight_fields(form: dict[str, Any]) -> tuple[gr.Dropdown, gr.Radio, list[gr.Slider]]:
    """The Block weights accordion: preset, the weights text, the slider layout and one slider per block."""
    with gr.Accordion("Block weights", open=False, elem_id="modelmerger_block_weights_accordion"):
        preset = gr.Dropdown([NO_PRESET, *SD_PRESETS], value=NO_PRESET, label="Preset (SD1/SD2)",
                             elem_id="modelmerger_block_weights_preset")
        form["block_weights"] = gr.Textbox(
            label="Block weights (empty: the multiplier M for the whole model)",
            elem_id="modelmerger_block_weights", info=BLOCK_WEIGHTS_HELP + "; each replaces M in its block",
        )
        layout = gr.Radio(LAYOUT_CHOICES, value="sd1", label="Slider layout",
                          elem_id="modelmerger_block_layout")
        sliders = []
        with gr.Row(elem_id="modelmerger_block_sliders"):
            for name in ALL_BLOCKS:
                sliders.append(gr.Slider(0.0, 1.0, value=0.5, step=0.05, label=name, min_width=120,
                                         elem_id=f"modelmerger_block_{name}"))
    return preset, layout, sliders


def _wire_merger(handlers: MergerHandlers, shared, form: dict[str, Any], controls: _MergerControls,
                 result: gr.HTML, job_id: gr.State, top_bar: list) -> None:
    """Connect the form to `handlers`: merging, refresh, metadata, method options and block weights."""
    c = controls
    inputs = [form[f.name] for f in fields(MergeForm)]
    model_dropdowns = [form["primary"], form["secondary"], form["tertiary"]]
    merge_outputs = [result, job_id, form["overwrite"], *model_dropdowns, *top_bar]
    private = {"api_visibility": "private"}

    context = handlers.context

    def on_merge(request: gr.Request | None, *values):
        yield from handlers.merge(*values, user=caller(context, request))

    def on_merge_and_load(request: gr.Request | None, *values):
        yield from handlers.merge_and_load(*values, user=caller(context, request))

    def on_interrupt(job: str | None, request: gr.Request | None = None) -> None:
        handlers.interrupt(job, user=caller(context, request))

    c.merge.click(on_merge, inputs=inputs, outputs=merge_outputs, show_progress="hidden",
                  concurrency_limit=None, **private)
    c.merge_and_load.click(on_merge_and_load, inputs=inputs, outputs=merge_outputs, show_progress="hidden",
                           concurrency_limit=None, **private)
    c.interrupt.click(on_interrupt, inputs=[job_id], outputs=None, queue=False, **private)
    c.refresh.click(handlers.refresh, inputs=[*model_dropdowns, form["bake_in_vae"]],
                    outputs=[*model_dropdowns, form["bake_in_vae"]], **private)
    shared.page_loads.append((handlers.choices_on_load, [*model_dropdowns, form["bake_in_vae"]]))
    name_inputs = [*model_dropdowns, form["method"], form["multiplier"], form["checkpoint_format"]]
    gr.on([form["primary"].change, form["secondary"].change, form["tertiary"].change, form["method"].change,
           form["multiplier"].change, form["checkpoint_format"].change], handlers.default_name, inputs=name_inputs,
          outputs=[form["custom_name"]], show_progress="hidden", trigger_mode="always_last", **private)
    c.read_metadata.click(handlers.read_metadata, inputs=model_dropdowns, outputs=[form["metadata_json"]], **private)
    form["method"].change(handlers.on_method_change, inputs=[form["method"]],
                          outputs=[c.method_info, form["multiplier2"], c.method_options, form["ties_density"],
                                   form["dare_drop_rate"], form["seed"]], **private)
    form["checkpoint_format"].change(handlers.on_format_change, inputs=[form["checkpoint_format"]],
                                     outputs=[c.metadata_accordion], **private)
    form["primary"].input(handlers.on_primary_change, inputs=[form["primary"]], outputs=[c.layout], **private)
    c.layout.change(handlers.slider_visibility, inputs=[c.layout], outputs=c.sliders, **private)
    gr.on([s.release for s in c.sliders], handlers.weights_from_sliders, inputs=[c.layout, *c.sliders],
          outputs=[form["block_weights"]], **private)
    gr.on([form["block_weights"].submit, form["block_weights"].blur], handlers.sliders_from_text,
          inputs=[form["block_weights"]], outputs=[result, c.layout, *c.sliders], **private)
    c.preset.input(handlers.apply_preset, inputs=[c.preset], outputs=[form["block_weights"], c.layout, *c.sliders],
                   **private)
