"""The Settings tab's widget for an extension's option (A1111's `OptionInfo.component` and
`component_args`, element id `setting_<key>`), built in the extension's scope; an option whose
widget cannot be built gets the plain widget of its type, and the log names the extension."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import gradio as gr

from modules.extension_host.option_registry import RegisteredOption, component_args
from modules.serving.settings import SettingSpec

log = logging.getLogger(__name__)

RESTART_MARK = " (requires restart)"
# Given by the tab, whatever component_args say.
_TAB_KEYS = ("label", "value", "elem_id")


def _extension_scope(context, option: RegisteredOption):
    """The scope extension UI code runs in: its callback registry and the Gradio 3 idioms."""
    stack = contextlib.ExitStack()
    runtime = getattr(context, "extensions", None)
    if runtime is not None and option.extension is not None:
        from modules.extension_host.callbacks import registry_scope

        stack.enter_context(registry_scope(runtime.callbacks, option.extension))
    from modules.extension_host.gradio3_compat import gradio3_compat

    stack.enter_context(gradio3_compat())
    return stack


def _plain_component(spec: SettingSpec, value: Any, common: dict):
    default = spec.default
    if isinstance(default, bool):
        return gr.Checkbox(value=value, **common)
    if isinstance(default, (int, float)):
        if spec.minimum is not None and spec.maximum is not None:
            return gr.Slider(spec.minimum, spec.maximum, value=value, **common)
        return gr.Number(value=value, precision=0 if isinstance(default, int) else None, **common)
    if isinstance(default, (list, tuple)):
        return gr.Dropdown(choices=[str(item) for item in value or []], value=list(value or []), multiselect=True,
                           allow_custom_value=True, **common)
    return gr.Textbox(value="" if value is None else str(value), lines=1, **common)


def extension_setting_component(context, option: RegisteredOption, spec: SettingSpec, value: Any):
    """The widget of `option` holding `value`, with a 🔄 button beside it when the option has
    `refresh` (it calls refresh() and reloads the widget's choices from `component_args`)."""
    info = option.info
    label = spec.label + (RESTART_MARK if spec.needs_restart else "")
    common = {"label": label, "elem_id": f"setting_{spec.key}"}
    value = list(value) if isinstance(value, tuple) else value
    component = None
    with gr.Row() if info.refresh else contextlib.nullcontext():
        if info.component is not None:
            args = {key: item for key, item in component_args(info).items() if key not in _TAB_KEYS}
            try:
                with _extension_scope(context, option):
                    component = info.component(value=value, **common, **args)
            except Exception:  # noqa: BLE001 - an extension's widget; the option stays editable
                log.exception("Extension %s: the settings widget of option %r could not be built; a plain one is "
                              "shown", option.extension, spec.key)
        if component is None:
            component = _plain_component(spec, value, {**common, "info": spec.info or None})
        if info.refresh:
            _refresh_button(context, option, component)
    return component


def _refresh_button(context, option: RegisteredOption, component) -> None:
    from modules.ui.extension_components import ToolButton

    def refresh():
        with _extension_scope(context, option):
            option.info.refresh()
            args = component_args(option.info)
        return gr.update(**{key: item for key, item in args.items() if key not in _TAB_KEYS})

    button = ToolButton("🔄", elem_id=f"refresh_setting_{option.key}", tooltip="Refresh the choices")
    button.click(refresh, outputs=[component], api_visibility="private")
