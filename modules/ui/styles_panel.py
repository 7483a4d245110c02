"""txt2img's Styles picker, as A1111 has it: a multiselect of the styles in `styles.csv` under the
Generate button (the selected styles go into the request's `styles` and are merged into the prompts
when the job is submitted), and the 🖌️ button that opens the style editor: pick or type a style
name, edit its prompt and negative prompt, Save or Delete it in `styles.csv`, 📝 copy the main
prompts into the editor, 📋 apply the selected styles to the main prompts (which clears the
selection), 🔄 re-read the file.

The database is the app's (`context.prompt_styles`, modules.generation.styles): it validates names
and sizes, writes only the configured styles file, and reports a file it cannot read; the handlers
here only turn that into component updates. The plain functions take the database, so tests call
them without a browser.

A1111's editor is a popup over the page; here it is a panel that opens under the prompts (the same
element ids), so it needs no page script.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from modules.generation.styles import StyleDatabase, StyleError
from modules.ui.generation import error_html
from modules.ui.icons import icon_label

STYLE_HELP = ("Styles add text to the prompt. Put {prompt} in a style's text and the prompt replaces it when "
              "the style is applied; otherwise the style's text is added at the end of the prompt.")


# --- plain functions -----------------------------------------------------------------------------


def style_choices(database: StyleDatabase) -> list[str]:
    return database.names()


def problems_html(database: StyleDatabase) -> str:
    """What is wrong with the styles files (unreadable file, skipped rows), for the editor."""
    errors, warnings = database.errors, database.warnings
    parts = [error_html(message) for message in errors]
    parts += [f"<p class='job-note'>{html.escape(message)}</p>" for message in warnings[:20]]
    if len(warnings) > 20:
        parts.append(f"<p class='job-note'>… and {len(warnings) - 20} more skipped rows (see the console)</p>")
    return "".join(parts)


@dataclass(frozen=True)
class StyleSelection:
    """The editor after a name is picked or typed: the style's texts (None: keep what is typed,
    for a new name), and which buttons show."""

    prompt: str | None
    negative_prompt: str | None
    exists: bool  # Delete shows
    can_save: bool  # Save shows


def select_style(database: StyleDatabase, name: str | None) -> StyleSelection:
    style = database.styles.get(name) if name else None
    if style is None:
        return StyleSelection(None, None, exists=False, can_save=bool(name and name.strip()))
    return StyleSelection(style.prompt, style.negative_prompt, exists=True, can_save=True)


def save_style(database: StyleDatabase, name: str | None, prompt: str, negative_prompt: str) -> str:
    """Save one style into the styles file; returns the note to show. Raises `StyleError`."""
    style = database.set_style(name or "", prompt or "", negative_prompt or "")
    return f"Saved style {style.name!r} in {Path(style.path).name}."  # the file's name: no server paths on pages


def delete_style(database: StyleDatabase, name: str | None) -> str:
    """Delete one style from its file; returns the note to show. Raises `StyleError` when the
    file cannot be written (an unreadable file is never overwritten)."""
    if not name:
        return "Pick the style to delete."
    if not database.delete_style(name):
        return f"There is no style named {name!r}."
    return f"Deleted style {name!r}."


def materialize_styles(database: StyleDatabase, prompt: str, negative_prompt: str,
                       names: Sequence[str] | None) -> tuple[str, str]:
    """A1111's "Apply all selected styles to prompts": both prompts with the selected styles merged
    in (unknown names, such as a style deleted meanwhile, are skipped, as A1111 does)."""
    names = list(names or ())
    return (database.apply_styles_to_prompt(prompt or "", names),
            database.apply_negative_styles_to_prompt(negative_prompt or "", names))


# --- gradio ---------------------------------------------------------------------------------------


@dataclass
class StylesPicker:
    """The multiselect and the edit button (in the prompt row's action column)."""

    dropdown: gr.Dropdown
    edit_button: gr.Button


@dataclass
class StylesDialog:
    """The style editor."""

    panel: gr.Column
    selection: gr.Dropdown
    refresh: gr.Button
    materialize: gr.Button
    copy: gr.Button
    prompt: gr.Textbox
    negative_prompt: gr.Textbox
    save: gr.Button
    delete: gr.Button
    close: gr.Button
    status: gr.HTML


def _tool_button(elem_id: str) -> gr.Button:
    """A small icon button (its SVG icon and tooltip are in modules.ui.icons, under `elem_id`)."""
    return gr.Button(icon_label(elem_id), elem_id=elem_id, elem_classes=["tool"], scale=0, min_width=40)


def build_picker(context, tabname: str = "txt2img", create=None) -> StylesPicker:
    """The Styles multiselect and the 🖌️ button, in the current layout. `create(cls, *args, **kwargs)`
    makes the dropdown (the tab's component hooks, so extensions see `txt2img_styles`)."""
    create = create or (lambda cls, *args, **kwargs: cls(*args, **kwargs))
    with gr.Row(elem_id=f"{tabname}_styles_row", equal_height=True):
        dropdown = create(gr.Dropdown, style_choices(context.prompt_styles), value=[], multiselect=True,
                          label="Styles", show_label=False, elem_id=f"{tabname}_styles", scale=4, min_width=120)
        edit_button = _tool_button(f"{tabname}_styles_edit_button")
    return StylesPicker(dropdown, edit_button)


def build_dialog(context, tabname: str = "txt2img") -> StylesDialog:
    """The style editor, hidden until the 🖌️ button opens it."""
    choices = style_choices(context.prompt_styles)
    with gr.Column(visible=False, elem_id=f"{tabname}_styles_dialog", elem_classes=["popup-dialog"]) as panel:
        with gr.Row(equal_height=True):
            selection = gr.Dropdown(choices, value=None, allow_custom_value=True, label="Styles", info=STYLE_HELP,
                                    elem_id=f"{tabname}_styles_edit_select", scale=4)
            refresh = _tool_button(f"refresh_{tabname}_styles")
            materialize = _tool_button(f"{tabname}_style_apply_dialog")
            copy = _tool_button(f"{tabname}_style_copy")
        prompt = gr.Textbox(label="Prompt", lines=3, elem_id=f"{tabname}_edit_style_prompt", elem_classes=["prompt"])
        negative_prompt = gr.Textbox(label="Negative prompt", lines=3, elem_id=f"{tabname}_edit_style_neg_prompt",
                                     elem_classes=["prompt"])
        with gr.Row():
            save = gr.Button("Save", variant="primary", visible=False, elem_id=f"{tabname}_edit_style_save")
            delete = gr.Button("Delete", variant="primary", visible=False, elem_id=f"{tabname}_edit_style_delete")
            close = gr.Button("Close", variant="secondary", elem_id=f"{tabname}_edit_style_close")
        status = gr.HTML(problems_html(context.prompt_styles), elem_id=f"{tabname}_styles_status", js_on_load=None)
    return StylesDialog(panel, selection, refresh, materialize, copy, prompt, negative_prompt, save, delete, close,
                        status)


def wire(context, picker: StylesPicker, dialog: StylesDialog, main_prompt: gr.Textbox,
         main_negative: gr.Textbox, page_loads: list | None = None) -> None:
    """The picker's and the editor's events; `page_loads` (UiShared's) gets the list refresh a page
    runs when it opens (styles.csv may have changed since start-up)."""
    database = context.prompt_styles

    def choices_updates(selected=None):
        """The picker's and the editor's choices; with `selected` (the picker's value), the picker
        also drops styles that are gone (a value outside its choices would be refused)."""
        names = style_choices(database)
        if selected is None:
            return gr.Dropdown(choices=names), gr.Dropdown(choices=names)
        return gr.Dropdown(choices=names, value=[n for n in selected if n in names]), gr.Dropdown(choices=names)

    def on_select(name):
        selected = select_style(database, name)
        return (gr.skip() if selected.prompt is None else selected.prompt,
                gr.skip() if selected.negative_prompt is None else selected.negative_prompt,
                gr.Button(visible=selected.exists), gr.Button(visible=selected.can_save))

    def on_save(name, prompt, negative):
        try:
            note = f"<p class='job-note'>{html.escape(save_style(database, name, prompt, negative))}</p>"
        except StyleError as error:
            return (error_html(str(error)), gr.skip(), *choices_updates())
        return (note, gr.Button(visible=True), *choices_updates())

    def on_delete(name, selected):
        try:
            note = f"<p class='job-note'>{html.escape(delete_style(database, name))}</p>"
        except StyleError as error:
            return (error_html(str(error)), gr.skip(), gr.skip(), gr.skip(), gr.skip())
        picker_update, _ = choices_updates(selected or [])
        return (note, gr.Dropdown(value=None, choices=style_choices(database)), "", "", picker_update)

    def on_refresh(selected):
        database.reload()
        return (problems_html(database), *choices_updates(selected or []))

    def on_materialize(prompt, negative, names):
        prompt, negative = materialize_styles(database, prompt, negative, names)
        return prompt, negative, gr.Dropdown(value=[]), gr.Column(visible=False)

    picker.edit_button.click(lambda: gr.Column(visible=True), outputs=dialog.panel, show_progress="hidden",
                             queue=False)
    dialog.close.click(lambda: gr.Column(visible=False), outputs=dialog.panel, show_progress="hidden", queue=False)
    dialog.selection.change(on_select, inputs=dialog.selection,
                            outputs=[dialog.prompt, dialog.negative_prompt, dialog.delete, dialog.save],
                            show_progress="hidden")
    dialog.save.click(on_save, inputs=[dialog.selection, dialog.prompt, dialog.negative_prompt],
                      outputs=[dialog.status, dialog.delete, picker.dropdown, dialog.selection],
                      show_progress="hidden")
    # A1111 asks before deleting; an empty name (answered "no") deletes nothing.
    dialog.delete.click(on_delete, inputs=[dialog.selection, picker.dropdown],
                        outputs=[dialog.status, dialog.selection, dialog.prompt, dialog.negative_prompt,
                                 picker.dropdown],
                        js="(name, selected) => [(name && confirm(`Delete style ${name}?`)) ? name : '', selected]",
                        show_progress="hidden")
    dialog.refresh.click(on_refresh, inputs=picker.dropdown,
                         outputs=[dialog.status, picker.dropdown, dialog.selection], show_progress="hidden")
    dialog.materialize.click(on_materialize, inputs=[main_prompt, main_negative, picker.dropdown],
                             outputs=[main_prompt, main_negative, picker.dropdown, dialog.panel],
                             show_progress="hidden")
    dialog.copy.click(lambda prompt, negative: (prompt, negative), inputs=[main_prompt, main_negative],
                      outputs=[dialog.prompt, dialog.negative_prompt], show_progress="hidden", queue=False)
    def on_page_load():
        return (*choices_updates(), problems_html(database))

    if page_loads is not None:
        page_loads.append((on_page_load, [picker.dropdown, dialog.selection, dialog.status]))
