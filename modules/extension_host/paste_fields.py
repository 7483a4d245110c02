"""A1111's "paste parameters" surface for extensions (`modules.infotext_utils`, formerly
`modules.generation_parameters_copypaste`): which component an infotext key fills, and the buttons
that send an infotext to a tab.

- `Script.infotext_fields = [(component, "Infotext key" or callable(params))]`, set in `ui()`: a
  tab's paste button and PNG Info's "Send to txt2img"/"Send to img2img" fill those controls from a
  pasted infotext (`pasted_updates`), after the `on_infotext_pasted(infotext, params)` callbacks
  edited the parsed dict. Each tab has its own script instances, so its own fields. The
  `Script.paste_field_names` (infotext keys) are collected with them, in `paste_fields[tab]`.
- `register_generation_tab(runner, "txt2img" | "img2img", init_img, own_fields, override_component)`
  makes a generation tab A1111's destination of that name, its fields followed by its scripts'
  `infotext_fields` (call it once the tab's scripts panel is built).
- `add_paste_fields(tabname, init_img, fields, override_settings_component=None)` makes a tab a
  destination; `register_paste_params_button(ParamBinding(...))`, `create_buttons` and
  `bind_buttons` add "Send to <tab>" buttons; the app wires them once its page is built
  (`connect_paste_params_buttons`).

The registrations belong to the app (`PasteRegistry`, held by its ScriptRunner); A1111's module
names `paste_fields` and `registered_param_bindings` resolve to the running app's when read.
Gradio is imported only by the functions that make or wire components.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

log = logging.getLogger(__name__)

SKIP = object()  # `pasted_value`: leave the component as it is


class PasteField(tuple):
    """A1111's `PasteField(component, target, api=None)`: `target` is an infotext key or a function
    of the parsed parameters."""

    def __new__(cls, component, target, *, api=None):
        return super().__new__(cls, (component, target))

    def __init__(self, component, target, *, api=None):
        super().__init__()
        self.component = component
        self.label = target if isinstance(target, str) else None
        self.function = target if callable(target) else None
        self.api = api


class ParamBinding:
    """A1111's binding of a "send to" button: clicking `paste_button` pastes `source_text_component`'s
    infotext (or the source tab's fields named in `paste_field_names`) into tab `tabname`."""

    def __init__(self, paste_button, tabname: str, source_text_component=None, source_image_component=None,
                 source_tabname: str | None = None, override_settings_component=None,
                 paste_field_names: Sequence[str] | None = None):
        self.paste_button = paste_button
        self.tabname = tabname
        self.source_text_component = source_text_component
        self.source_image_component = source_image_component
        self.source_tabname = source_tabname
        self.override_settings_component = override_settings_component
        self.paste_field_names = list(paste_field_names or [])


class PasteRegistry:
    """One app's paste destinations (`paste_fields`, by tab name) and "send to" buttons, and for each
    script whose controls the page built, those controls and its `infotext_fields` (for the API's
    `infotext`, `infotext_script_args`)."""

    def __init__(self):
        self.paste_fields: dict[str, dict[str, Any]] = {}
        self.bindings: list[ParamBinding] = []
        self.connected: set[int] = set()  # ids of the bindings already wired
        self.script_controls: dict[Any, tuple[tuple, list]] = {}  # Script -> (ui() components, infotext_fields)

    def record_controls(self, script, components) -> None:
        self.script_controls[script] = (tuple(components), list(getattr(script, "infotext_fields", None) or ()))

    def add_paste_fields(self, tabname: str, init_img, fields, override_settings_component=None) -> None:
        fields = list(fields or [])
        known = self.paste_fields.get(tabname, {})
        self.paste_fields[tabname] = {"init_img": init_img, "fields": fields,
                                      "override_settings_component": override_settings_component,
                                      "paste_field_names": known.get("paste_field_names", [])}

    def register(self, binding: ParamBinding) -> None:
        self.bindings.append(binding)


def register_generation_tab(runner, tabname: str, init_img, own_fields: Sequence[tuple[Any, Any]],
                            override_settings_component=None) -> list[tuple[Any, Any]]:
    """Make the generation tab `tabname` ("txt2img" or "img2img") A1111's paste destination of that
    name (`paste_fields[tabname]`): `own_fields` (`(component, infotext key)` pairs), then the
    `infotext_fields` of the scripts that tab shows, with their `paste_field_names`. `runner`: the
    app's ScriptRunner. Returns the scripts' fields (what a paste fills besides the tab's own)."""
    if tabname not in ("txt2img", "img2img"):
        raise ValueError(f"tabname must be 'txt2img' or 'img2img', got {tabname!r}")
    script_fields, field_names = script_infotext_fields(runner.tab(tabname == "img2img").scripts)
    runner.paste.add_paste_fields(tabname, init_img, [*own_fields, *script_fields], override_settings_component)
    runner.paste.paste_fields[tabname]["paste_field_names"] = field_names
    return script_fields


def script_infotext_fields(scripts) -> tuple[list[tuple[Any, Any]], list[str]]:
    """The `(component, key)` pairs and `paste_field_names` of `scripts` (those one tab shows),
    in load order. A malformed entry is logged with its extension and left out."""
    import gradio as gr

    fields, names = [], []
    for script in scripts:
        for entry in getattr(script, "infotext_fields", None) or ():
            try:
                component, key = entry[0], entry[1]
            except (TypeError, IndexError, KeyError):
                component = key = None
            if not isinstance(component, gr.components.Component) or not (isinstance(key, str) or callable(key)):
                log.error("Extension %s: script %r has infotext_fields entry %r; expected (gradio component, "
                          "infotext key or function of the parameters). Left out of pasting.",
                          getattr(script, "extension", "?"), script.title(), entry)
                continue
            fields.append((component, key))
        names += [str(name) for name in getattr(script, "paste_field_names", None) or ()]
    return fields, names


def pasted_value(key, params: Mapping[str, Any], current: Any) -> Any:
    """What pasting `params` puts into a component whose value is `current`, as A1111 converts it:
    `key` is an infotext key or a function of `params` (which may return a `gr.update` dict); a
    missing key, or a value that does not convert to `current`'s type, is `SKIP`."""
    try:
        value = key(params) if callable(key) else params.get(key)
    except Exception:  # an extension's function: a failure leaves the component as it is
        log.exception("A paste field's function failed for %r", key)
        return SKIP
    if value is None:
        return SKIP
    if isinstance(value, dict):  # gr.update(...)
        return value
    if current is None:
        return value
    kind = type(current)
    try:
        if kind is bool:
            return value if isinstance(value, bool) else str(value).strip().lower() == "true"
        if kind is int:
            return float(value)  # A1111's rule: a slider's int value takes "7.5"
        return kind(value)
    except Exception:  # pasted text into an arbitrary value type (a list, a file, ...): leave it
        return SKIP


def pasted_updates(fields: Sequence[tuple[Any, Any]], params: Mapping[str, Any]) -> list:
    """Gradio updates for `fields` (`(component, key)` pairs) from the parsed infotext `params`."""
    import gradio as gr

    updates = []
    for component, key in fields:
        value = pasted_value(key, params, getattr(component, "value", None))
        updates.append(gr.skip() if value is SKIP else value if isinstance(value, dict) else gr.update(value=value))
    return updates


def infotext_script_args(runner, params: Mapping[str, Any], given: Mapping[str, Sequence[Any]], *,
                         is_img2img: bool = False) -> dict[str, tuple]:
    """A1111's API `infotext` for always-on scripts of the txt2img tab (the img2img tab's with
    `is_img2img`): each script whose controls the page built and whose `infotext_fields` the
    infotext mentions gets its default arguments with those values (as the paste button converts
    them), then the arguments the request gave it (`given`, by lowercase title) on top. Returns only
    the scripts the infotext changed. `runner`: the app's ScriptRunner."""
    result = {}
    for script in runner.tab(is_img2img).alwayson:
        components, fields = runner.paste.script_controls.get(script, ((), []))
        if not fields:
            continue
        args = list(runner.default_args(script))
        changed = False
        for entry in fields:
            component, key = entry[0], entry[1]
            index = next((i for i, control in enumerate(components) if control is component), None)
            if index is None or index >= len(args):
                continue
            value = pasted_value(key, params, args[index])
            if isinstance(value, dict):  # gr.update(value=...)
                value = value.get("value", SKIP)
            if value is SKIP:
                continue
            args[index], changed = value, True
        if changed:
            explicit = list(given.get(script.name, ()))
            args[:len(explicit)] = explicit
            result[script.name] = tuple(args)
    return result


# --- A1111's module-level functions (modules.infotext_utils) ----------------------------------------


def current_registry() -> PasteRegistry:
    """The running app's PasteRegistry (its ScriptRunner's)."""
    from modules.extension_host.callbacks import current_scope_or_none
    from modules.extension_host.environment import current_app_or_none

    scope = current_scope_or_none()
    runner = getattr(scope.registry, "scripts", None) if scope is not None else None
    if runner is None:
        context = current_app_or_none()
        runtime = getattr(context, "extensions", None)
        runner = runtime.scripts if runtime is not None else None
    if runner is None:
        raise RuntimeError("infotext_utils paste registrations need a running Atelier app with extensions "
                           "loaded; call them from a script's ui() or a UI callback (on_ui_tabs, on_after_component)")
    return runner.paste


def add_paste_fields(tabname, init_img, fields, override_settings_component=None):
    current_registry().add_paste_fields(tabname, init_img, fields, override_settings_component)


def register_paste_params_button(binding: ParamBinding):
    current_registry().register(binding)


def create_buttons(tabs_list):
    """A1111: one "Send to <tab>" button per tab name, by name."""
    import gradio as gr

    buttons = {}
    for tab in tabs_list:
        buttons[tab] = gr.Button(f"Send to {tab}", elem_id=f"{tab}_tab")
    return buttons


def bind_buttons(buttons, send_image, send_generate_info):
    """A1111: bind `create_buttons`' buttons; `send_generate_info` is the infotext component (or a
    tab name whose fields are copied)."""
    import gradio as gr

    for tabname, button in buttons.items():
        text = send_generate_info if isinstance(send_generate_info, gr.components.Component) else None
        source_tab = send_generate_info if isinstance(send_generate_info, str) else None
        register_paste_params_button(ParamBinding(paste_button=button, tabname=tabname, source_text_component=text,
                                                  source_image_component=send_image, source_tabname=source_tab))


def connect_paste(button, paste_fields, input_comp, override_settings_component=None, tabname=None, *,
                  callbacks=None):
    """A1111: clicking `button` pastes `input_comp`'s infotext into `paste_fields`, after the
    `on_infotext_pasted` callbacks (of `callbacks`, else of the extension calling this)."""
    from modules.extension_host.callbacks import current_scope_or_none
    from modules.outputs.infotext import parse_generation_parameters

    scope = current_scope_or_none()
    registry = callbacks if callbacks is not None else scope.registry if scope is not None else None
    fields = [(field[0], field[1]) for field in paste_fields]

    def paste(text):
        params = parse_generation_parameters(text or "")
        if registry is not None and registry.has("infotext_pasted"):
            registry.infotext_pasted(text or "", params)
        updates = pasted_updates(fields, params)
        return updates[0] if len(updates) == 1 else updates

    button.click(paste, inputs=[input_comp], outputs=[field[0] for field in fields], show_progress="hidden")


def connect_paste_params_buttons():
    """A1111 calls it once the page is built; Atelier's app does (modules.ui.app), so an extension
    calling it again does nothing more."""


def module_getattr(name: str):
    """The façade's module `__getattr__`: A1111's globals, the running app's."""
    if name == "paste_fields":
        return current_registry().paste_fields
    if name == "registered_param_bindings":
        return current_registry().bindings
    raise AttributeError(f"module 'modules.infotext_utils' has no attribute {name!r}")
