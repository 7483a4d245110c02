"""The Settings tab: the settings of `modules.serving.settings.SCHEMA` by section, Apply settings and Reload UI
(A1111.md §10), and A1111's search box over every section.

Apply saves `config.json` through the `SettingsStore` (A1111's flat format) and reports, as A1111
does, "N settings changed: a, b."; a value that breaks its setting's rule is refused with the field
named, while the other fields are saved; a change that cannot be applied to the loaded model (a
broken VAE file) is put back, in config.json and in its field, and the report says why (the one
settings-change path, modules.serving.settings_change). Only the fields edited on this page are
applied, so a page opened before another client (the API, another browser) changed a setting does
not put the old value back. The settings shown at the top of the page (`quicksettings_list`:
checkpoint, VAE and Clip skip by default) are edited there, not here, as in A1111 where
quicksettings leave the Settings tab.

Widget values are read back from the store each time the page loads, so Reload UI (a page reload)
shows the values in effect. The Blocks are built once at start-up, so a setting read while building
them (marked "requires restart") takes effect when Atelier is started again; A1111's Reload UI
rebuilt them instead.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import gradio as gr

from modules.serving.settings import (
    SCHEMA,
    SCHEMA_BY_KEY,
    SECRET_MASK,
    SECTIONS,
    SettingSpec,
    describe_changes,
    locked_settings,
)
from modules.serving.accounts import SHARED_USER, User, caller
from modules.serving.settings_change import UPSCALER_SETTINGS, change_settings

log = logging.getLogger(__name__)

RESTART_MARK = " (requires restart)"

# The search box (A1111's): typing keeps, across every section, the settings whose text (label, help
# line, choices) holds what was typed, and hides the sections left empty; an empty box shows all again.
# It runs in the page only: nothing goes to the server.
SEARCH_JS = """
(query) => {
    const text = (query || '').trim().toLowerCase();
    document.querySelectorAll('#settings [id^="settings_section_"]').forEach((section) => {
        let shown = 0;
        section.querySelectorAll('[id^="setting_"]').forEach((item) => {
            if (item.parentElement.closest('[id^="setting_"]')) return;  // a part of a setting, not one
            const match = !text || item.textContent.toLowerCase().includes(text);
            item.style.display = match ? '' : 'none';
            if (match) shown += 1;
        });
        section.querySelectorAll('.settings-info').forEach((info) => { info.style.display = text ? 'none' : ''; });
        section.style.display = shown || !text ? '' : 'none';
    });
    return [];
}
"""


def top_bar_keys(current: Mapping[str, Any], locked: frozenset[str] = frozenset(),
                 specs: Mapping[str, SettingSpec] = SCHEMA_BY_KEY) -> list[str]:
    """The settings the top bar edits (A1111's quicksettings; their `setting_<key>` element ids are the
    top bar's): the checkpoint, then the `quicksettings_list` settings known to `specs` (the store's:
    extensions' options included), in order; never a `locked` one
    (modules.serving.settings.locked_settings)."""
    keys = ["sd_model_checkpoint"]
    for key in current["quicksettings_list"]:
        spec = specs.get(key)
        if spec is not None and spec.visible and key not in keys and key not in locked:
            keys.append(key)
    return keys


def tab_specs(current: Mapping[str, Any], locked: frozenset[str] = frozenset(),
              specs: Sequence[SettingSpec] = SCHEMA) -> list[SettingSpec]:
    """The settings this tab shows (not those at the top of the page, nor `locked` ones, which
    A1111 hides too), grouped by section: SECTIONS' order, then the extensions' sections in the
    order they were first used. `specs`: every setting (`SettingsStore.specs()` adds the
    extensions' options)."""
    hidden = set(top_bar_keys(current, specs={spec.key: spec for spec in specs})) | locked
    shown = [spec for spec in specs if spec.visible and spec.key not in hidden]
    sections = list(SECTIONS) + [section for section in dict.fromkeys(spec.section for spec in shown)
                                 if section not in SECTIONS]
    return [spec for section in sections for spec in shown if spec.section == section]


def section_title(section: str, extension_titles: Mapping[str, str] = MappingProxyType({})) -> str:
    return SECTIONS.get(section) or extension_titles.get(section) or section.replace("-", " ").capitalize()


def widget_value(spec: SettingSpec, value: Any) -> Any:
    """A setting's value as its widget holds it (lists for list settings; a secret that is set as the
    mask, so the page never holds it and an untouched field is no edit)."""
    if spec.secret:
        return SECRET_MASK if value else ""
    return list(value) if isinstance(spec.default, tuple) else value


def same_widget_value(a: Any, b: Any) -> bool:
    """Whether a widget still holds the value it was loaded with (1 and 1.0 are the same number)."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) == list(b)
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return a == b


def quicksettings_choices(current: Mapping[str, Any], specs: Sequence[SettingSpec] = SCHEMA) -> list[str]:
    """Every setting key (`specs`: the store's, extensions' options included), and keys already in
    the list that none of them is (an extension not loaded now)."""
    keys = [spec.key for spec in specs if spec.visible]
    return keys + [key for key in current["quicksettings_list"] if key not in keys]


class SettingsHandlers:
    """The tab's handlers for the settings `specs`, in the order of the tab's widgets."""

    def __init__(self, context, specs: Sequence[SettingSpec]):
        self.context = context
        self.specs = list(specs)

    def current_values(self) -> list:
        settings = self.context.settings.current()
        return [widget_value(spec, settings[spec.key]) for spec in self.specs]

    def snapshot(self) -> dict[str, Any]:
        """The widget values as loaded, kept per page to tell which fields the user edited."""
        return {spec.key: value for spec, value in zip(self.specs, self.current_values())}

    def load(self) -> list:
        """Page load: (snapshot, every widget's value)."""
        snapshot = self.snapshot()
        return [snapshot, *snapshot.values()]

    def apply(self, loaded: Mapping[str, Any] | None, *values: Any, user: User = SHARED_USER) -> list:
        """Apply settings: saves the fields edited since the page loaded; returns (report html, snapshot).
        `user`: who asks; with --multi-user only operators change global settings (the others' fields
        are refused, naming --admin-users)."""
        return self._apply(loaded, values, user)[:2]

    def apply_and_show(self, loaded: Mapping[str, Any] | None, *values: Any, user: User = SHARED_USER) -> list:
        """`apply`, then each widget's value: a setting put back because applying it failed shows
        its value in effect again; every other widget keeps what it holds (`gr.skip()`), a refused
        field included, so it can be fixed."""
        report_html, snapshot, reverted = self._apply(loaded, values, user)
        return [report_html, snapshot,
                *(snapshot[spec.key] if spec.key in reverted else gr.skip() for spec in self.specs)]

    def _apply(self, loaded: Mapping[str, Any] | None, values: Sequence[Any],
               user: User = SHARED_USER) -> tuple[str, Any, frozenset[str]]:
        """(report html, snapshot, keys put back) after saving the edited fields through the one
        settings-change path (modules.serving.settings_change): the valid ones are saved, the refused
        ones listed; a change that cannot be applied to the model is put back and said why."""
        edited = {spec.key: value for spec, value in zip(self.specs, values)
                  if loaded is None or spec.key not in loaded or not same_widget_value(loaded[spec.key], value)}
        try:
            # The page's user is not the operator: the settings policy applies (output folders); with
            # --multi-user a user outside --admin-users changes no global setting at all.
            report = change_settings(self.context, edited, api=False, user=user)
        except OSError as error:  # config.json could not be written (a full disk): nothing changed
            log.error("Saving settings failed: %s", error)
            return f"<div class='error'><b>Not saved</b>: {html.escape(str(error))}</div>", loaded, frozenset()
        if report.reverted:
            log.error("Settings put back because applying them failed: %s", "; ".join(report.reverted.values()))
        html_report = self.report_html(report.changed, report.refused, report.notes, report.reverted)
        return html_report, self.snapshot(), frozenset(report.reverted)

    def report_html(self, changed: Sequence[str], refused: Mapping[str, str], notes: Sequence[str] = (),
                    reverted: Mapping[str, str] | None = None) -> str:
        specs = self.context.settings.specs_by_key()

        def label(key: str) -> str:
            spec = specs.get(key)
            return spec.label if spec else key

        parts = [f"<p>{html.escape(describe_changes(list(changed)))}</p>"]
        restart = [label(key) for key in changed if key in specs and specs[key].needs_restart]
        if restart:
            parts.append(f"<p>Restart Atelier for {html.escape(', '.join(restart))} to take effect.</p>")
        parts += [f"<p>{html.escape(note)}</p>" for note in notes]

        def listed(title: str, problems: Mapping[str, str]) -> str:
            items = "".join(f"<li><b>{html.escape(label(key))}</b> ({html.escape(key)}): "
                            f"{html.escape(message)}</li>" for key, message in problems.items())
            return f"<div class='error'><b>{title}</b><ul>{items}</ul></div>"

        if reverted:
            parts.append(listed("Could not be applied; the previous value is back", reverted))
        if refused:
            parts.append(listed("Not saved", refused))
        return "".join(parts)


def _run_time_choices(context, key: str, current: Mapping[str, Any]) -> list[str] | None:
    """The choices of a setting whose values depend on the server (its settings, its model files)."""
    if key == "quicksettings_list":
        return quicksettings_choices(current, context.settings.specs())
    if key in UPSCALER_SETTINGS and getattr(context, "upscalers", None) is not None:
        return context.upscalers.registry.names()
    return None


def setting_component(spec: SettingSpec, value: Any, choices: Sequence[str] | None = None):
    """The widget for one setting, with A1111's element id `setting_<key>`."""
    common = {"label": spec.label + (RESTART_MARK if spec.needs_restart else ""),
              "elem_id": f"setting_{spec.key}", "info": spec.info or None}
    value = widget_value(spec, value)
    if isinstance(spec.default, bool):
        return gr.Checkbox(value=value, **common)
    if isinstance(spec.default, tuple):
        return gr.Dropdown(choices=list(choices or spec.choices or ()), value=value, multiselect=True,
                           allow_custom_value=spec.choices is None, **common)
    if isinstance(spec.default, str):
        if spec.choices is not None:
            return gr.Radio(list(spec.choices), value=value, **common)
        if choices is not None:  # choices known only at run time (the listed upscalers)
            return gr.Dropdown(choices=list(choices), value=value, **common)
        return gr.Textbox(value=value, lines=1, type="password" if spec.secret else "text", **common)
    if spec.step is not None and spec.minimum is not None and spec.maximum is not None:
        return gr.Slider(spec.minimum, spec.maximum, value=value, step=spec.step, **common)
    # No minimum/maximum on the widget: the store's check names the rule instead of a bare refusal.
    return gr.Number(value=value, precision=0 if isinstance(spec.default, int) else None, **common)


OPERATORS_ONLY_NOTE = ("This server is shared (--multi-user): these settings are global, and only its operators "
                       "(the users of --admin-users) can change them. Your own checkpoint, VAE and clip skip "
                       "are at the top of the page.")


def build(context, shared) -> None:
    """Build the tab inside the current `gr.Tab` (element ids: modules.ui.shared)."""
    from modules.ui.extension_settings import extension_setting_component

    current = context.settings.current()
    specs = tab_specs(current, locked_settings(context.args), context.settings.specs())
    if not context.accounts.multi_user:  # the queue between users means nothing with one user
        specs = [spec for spec in specs if spec.section != "sharing"]
    handlers = SettingsHandlers(context, specs)
    options = context.extension_options
    titles = options.section_titles()

    with gr.Row():
        submit = gr.Button("Apply settings", variant="primary", elem_id="settings_submit")
        reload_ui = gr.Button("Reload UI", elem_id="settings_restart_gradio")
    result = gr.HTML(elem_id="settings_result")
    search = gr.Textbox(placeholder="Search...", show_label=False, max_lines=1, elem_id="settings_search",
                        container=False)
    gr.HTML("<p>The checkpoint, the VAE and Clip skip are set at the top of the page.</p>")
    if getattr(getattr(context, "accounts", None), "multi_user", False):
        gr.HTML(f"<p class='job-note'>{html.escape(OPERATORS_ONLY_NOTE)}</p>", elem_id="settings_operators_only")
    loaded = gr.State(None)
    components = []
    # Sections are open accordions, not tabs: Gradio 6 puts a tab's content in the page only once the
    # tab is opened, and extensions' page scripts look up `setting_<key>` elements at load, as A1111's
    # page had them all.
    with gr.Column(elem_id="settings"):
        for section in dict.fromkeys(spec.section for spec in specs):
            with gr.Accordion(section_title(section, titles), open=True, elem_id=f"settings_section_{section}"):
                for spec in specs:
                    if spec.section != section:
                        continue
                    option = options.get(spec.key)
                    if option is not None:
                        components.append(extension_setting_component(context, option, spec, current[spec.key]))
                        continue
                    choices = _run_time_choices(context, spec.key, current)
                    components.append(setting_component(spec, current[spec.key], choices))
                for block in options.html_blocks():
                    if block.section[0] == section:
                        gr.HTML(str(block.info.default), elem_classes="settings-info")

    private = {"api_visibility": "private"}

    def on_apply(request: gr.Request | None, loaded_values, *values):
        return handlers.apply_and_show(loaded_values, *values, user=caller(context, request))

    submit.click(on_apply, inputs=[loaded, *components], outputs=[result, loaded, *components], **private)
    search.change(None, inputs=[search], js=SEARCH_JS, **private)  # typing, pasting, clearing
    # A page reload: the page's load events read the values in effect again (see SettingsHandlers.load).
    reload_ui.click(None, js="() => { window.location.reload(); }", **private)
    shared.page_loads.append((handlers.load, [loaded, *components]))
