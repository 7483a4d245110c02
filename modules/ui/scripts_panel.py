"""The scripts part of the txt2img or img2img tab: the always-on scripts' controls, then A1111's
"Script" dropdown with each selectable script's controls shown when it is picked.

`build(context, shared, is_img2img=...)` renders it where it is called, from that tab's script
instances (`ScriptRunner.tab(is_img2img)`: `ui(is_img2img)` per tab, each tab its own defaults and
args layout), inside `#txt2img_script_container` or `#img2img_script_container`; the dropdown is
`#script_list` in both tabs, as in A1111. It returns a `ScriptsPanel`: add
`panel.inputs` to the Generate button's inputs and turn their values into the request's
`ScriptSelection` with `panel.selection(values)`. Each script's `ui()` runs in its extension's
callback scope; one that raises is logged with the extension's name and the script runs with no
arguments from the page.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import gradio as gr

from modules.extension_host.callbacks import registry_scope
from modules.extension_host.scripts import Script, ScriptSelection
from modules.ui.component_hooks import ComponentHooks, extension_ui_scope, next_block_id

log = logging.getLogger(__name__)

NONE_TITLE = "None"


@dataclass
class ScriptsPanel:
    dropdown: Any = None
    inputs: list = field(default_factory=list)  # the dropdown, then every script's components
    slices: dict[Script, tuple[int, int]] = field(default_factory=dict)  # positions in inputs[1:]

    def selection(self, values: Sequence[Any]) -> ScriptSelection | None:
        """`values` of `inputs`, as the request's ScriptSelection (None without scripts)."""
        if not self.inputs:
            return None
        title, rest = values[0], list(values[1:])
        alwayson = {script.name: tuple(rest[a:b]) for script, (a, b) in self.slices.items() if script.alwayson}
        chosen = None if title in (None, "", NONE_TITLE) else title
        script_args: tuple = ()
        for script, (a, b) in self.slices.items():
            if chosen is not None and not script.alwayson and script.title() == chosen:
                script_args = tuple(rest[a:b])
        return ScriptSelection(script=chosen, script_args=script_args, alwayson_args=alwayson)


def _script_controls(runner, script: Script, hooks: ComponentHooks | None = None) -> list:
    first_id = next_block_id()
    try:
        with registry_scope(runner.callbacks, script.extension), extension_ui_scope():
            controls = list(script.ui(script.is_img2img) or [])
    except (Exception, SystemExit):
        log.exception("Extension %s: ui() of script %r failed; its controls are missing", script.extension,
                      script.title())
        controls = []
    if not all(isinstance(control, gr.components.Component) for control in controls):
        # Gradio would refuse them as event inputs, and the whole page would fail to build.
        log.error("Extension %s: ui() of script %r returned %r, not only Gradio components; the script runs "
                  "with its default arguments", script.extension, script.title(), controls)
        controls = []
    runner.record_ui(script, controls)
    if hooks is not None:
        # A1111 fires the component hooks while ui() builds; here, once it has returned.
        hooks.fire_after_for_new_blocks(first_id)
    return controls


def build(context, shared=None, *, is_img2img: bool = False) -> ScriptsPanel:
    """The txt2img tab's scripts panel, or with `is_img2img` the img2img tab's; an empty panel (no
    inputs, `selection` gives None) when the tab shows no script."""
    runtime = getattr(context, "extensions", None)
    runner = runtime.scripts.tab(is_img2img) if runtime is not None and runtime.scripts is not None else None
    if runner is None or not runner.scripts:
        return ScriptsPanel()
    panel = ScriptsPanel()
    components: list = []
    hooks = ComponentHooks.for_context(context, is_img2img=is_img2img)

    def add(script: Script) -> None:
        controls = _script_controls(runner, script, hooks)
        panel.slices[script] = (len(components), len(components) + len(controls))
        components.extend(controls)

    with gr.Group(elem_id=f"{runner.name}_script_container"):
        for script in runner.alwayson:
            add(script)
        selectable = runner.selectable
        panel.dropdown = hooks.create(gr.Dropdown, choices=[NONE_TITLE, *(script.title() for script in selectable)],
                                      value=NONE_TITLE, label="Script", elem_id="script_list",
                                      visible=bool(selectable))
        groups = []
        for script in selectable:
            with gr.Group(visible=False) as group:
                add(script)
            groups.append(group)
    if groups:
        def show_chosen(title: str):
            updates = [gr.update(visible=title == script.title()) for script in selectable]
            # Gradio takes a handler's value as the one output's when there is one output, list or not.
            return updates[0] if len(updates) == 1 else updates

        panel.dropdown.change(show_chosen, inputs=panel.dropdown, outputs=groups, show_progress="hidden", queue=False)
    runner.layout()
    panel.inputs = [panel.dropdown, *components]
    return panel
