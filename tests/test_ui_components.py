"""A1111's `modules.ui_components`, used the way extensions use it: what the browser is sent for each
class (read from the Blocks config), and InputAccordion as an input whose value is a bool."""

from __future__ import annotations

import textwrap
from types import SimpleNamespace

import gradio as gr
import pytest

from modules.extension_host.extensions import ExtensionFolders, load_extensions, parser_with_preloads
from modules.serving.settings import SettingsStore
from tests.ui_support import run_event


def _components(demo: gr.Blocks) -> dict[str, dict]:
    """The browser's view of `demo`: each component with an elem_id, as {elem_id: {**props, "block", "id"}}."""
    found = {}
    for component in demo.get_config_file()["components"]:
        elem_id = component["props"].get("elem_id")
        if elem_id:
            found[elem_id] = {**component["props"], "block": component["type"], "id": component["id"]}
    return found


def _parents(demo: gr.Blocks) -> dict[int, int]:
    """child id -> parent id, from the config's layout tree."""
    parents = {}

    def walk(node):
        for child in node.get("children", []):
            parents[child["id"]] = node["id"]
            walk(child)

    walk(demo.get_config_file()["layout"])
    return parents


def _call(demo: gr.Blocks, target: tuple[int, str], inputs: list):
    """Run the event handler bound to `target` (block id, event name) as the server would for a browser."""
    return run_event(demo, *target, inputs)


def test_extension_style_import_builds_each_component_as_its_gradio_widget():
    from modules.ui_components import (DropdownEditable, DropdownMulti, FormColorPicker, FormColumn, FormGroup,
                                       FormHTML, FormRow, ResizeHandleRow, ToolButton)

    with gr.Blocks() as demo:
        with ResizeHandleRow(elem_id="resize"):
            with FormColumn(elem_id="form_column"):
                with FormRow(elem_id="form_row"):
                    ToolButton(value="🔄", elem_id="refresh", tooltip="Refresh the list")
                    ToolButton("⇅", elem_id="hidden_tool", visible=False, elem_classes="mine")
                with FormGroup(elem_id="form_group"):
                    DropdownMulti(choices=["a", "b", "c"], value=["a", "c"], label="Many", elem_id="multi")
                    DropdownEditable(choices=["x"], value="x", label="Edit", elem_id="editable")
                FormHTML("<b>note</b>", elem_id="note")
                FormColorPicker("#ff0000", label="Colour", elem_id="colour")
    seen = _components(demo)

    assert seen["refresh"]["block"] == "button" and seen["refresh"]["value"] == "🔄"
    assert "tool" in seen["refresh"]["elem_classes"] and seen["refresh"]["visible"] is True
    assert seen["hidden_tool"]["visible"] is False and seen["hidden_tool"]["elem_classes"] == ["mine", "tool"]
    assert (seen["multi"]["block"], seen["multi"]["multiselect"], seen["multi"]["value"]) == ("dropdown", True,
                                                                                           ["a", "c"])
    assert seen["editable"]["allow_custom_value"] is True and not seen["editable"].get("multiselect")
    assert (seen["note"]["block"], seen["note"]["value"]) == ("html", "<b>note</b>")
    assert (seen["colour"]["block"], seen["colour"]["value"]) == ("colorpicker", "#ff0000")
    assert [seen[name]["block"] for name in ("resize", "form_column", "form_row", "form_group")] == [
        "row", "column", "row", "group"]
    assert "resize-handle-row" in seen["resize"]["elem_classes"]
    # A1111's Form classes sit in a form block, as Gradio's own form components do.
    types = {component["id"]: component["type"] for component in demo.get_config_file()["components"]}
    parents = _parents(demo)
    assert types[parents[seen["form_row"]["id"]]] == "form"
    assert types[parents[seen["refresh"]["id"]]] == "form"


def test_tool_button_keeps_the_tooltip_and_takes_the_value_positionally():
    from modules.ui_components import ToolButton

    with gr.Blocks():
        button = ToolButton("🎲", elem_id="dice", tooltip="Random")
    assert (button.value, button.tooltip, button.elem_id) == ("🎲", "Random", "dice")
    assert isinstance(button, gr.Button)


def test_input_accordion_is_a_context_and_an_input_whose_value_is_a_bool():
    from modules.ui_components import InputAccordion, ToolButton

    with gr.Blocks() as demo:
        with InputAccordion(False, label="My extension", elem_id="my_ext") as enabled:
            with enabled.extra():
                ToolButton("🔄", elem_id="my_ext_refresh")
            strength = gr.Slider(0, 1, value=0.5, elem_id="my_ext_strength")
        gr.Textbox(elem_id="after")
        out = gr.JSON()
        go = gr.Button("Go")
        go.click(lambda on, strength: {"on": on, "is_bool": isinstance(on, bool), "strength": strength},
                 inputs=[enabled, strength], outputs=out)
    seen = _components(demo)
    parents = _parents(demo)

    assert isinstance(enabled, gr.components.Component) and isinstance(enabled.accordion, gr.Accordion)
    assert (seen["my_ext"]["block"], seen["my_ext"]["open"], seen["my_ext"]["label"]) == ("accordion", False,
                                                                                        "My extension")
    assert "input-accordion" in seen["my_ext"]["elem_classes"]
    checkbox = seen["my_ext-checkbox"]
    assert (checkbox["block"], checkbox["value"], checkbox["visible"]) == ("checkbox", False, True)
    assert checkbox["id"] == enabled._id

    def ancestors(block_id):
        while block_id in parents:
            block_id = parents[block_id]
            yield block_id

    accordion_id = seen["my_ext"]["id"]
    for inside in ("my_ext-checkbox", "my_ext-extra", "my_ext_refresh", "my_ext_strength"):
        assert accordion_id in ancestors(seen[inside]["id"]), inside
    assert seen["my_ext-extra"]["id"] in ancestors(seen["my_ext_refresh"]["id"])
    assert accordion_id not in ancestors(seen["after"]["id"])  # `with` left the accordion

    # The value the page sends reaches the handler as a bool, beside the other inputs.
    [result] = _call(demo, (go._id, "click"), [True, 0.25])
    assert result.root == {"on": True, "is_bool": True, "strength": 0.25}
    [result] = _call(demo, (go._id, "click"), [False, 0.25])
    assert result.root["on"] is False


def test_input_accordion_keeps_the_checkbox_and_the_accordion_in_step():
    from modules.ui_components import InputAccordion

    with gr.Blocks() as demo:
        enabled = InputAccordion(True, label="On by default")
    assert enabled.value is True and enabled.accordion.open is True
    # Setting the checkbox (a click, or a pasted infotext) opens or closes the accordion ...
    assert _call(demo, (enabled._id, "change"), [False]) == [{"open": False, "__type__": "update"}]
    assert _call(demo, (enabled._id, "change"), [True]) == [{"open": True, "__type__": "update"}]
    # ... and opening or closing the accordion checks or unchecks it.
    assert _call(demo, (enabled.accordion._id, "expand"), []) == [True]
    assert _call(demo, (enabled.accordion._id, "collapse"), []) == [False]


def test_input_accordion_ids_default_to_a1111s_numbering_within_each_page():
    from modules.ui_components import InputAccordion

    pages = []
    for _ in range(2):
        with gr.Blocks():
            first = InputAccordion(False)
            second = InputAccordion(True, label="Named")
        pages.append((first.accordion_id, second.accordion_id, first.elem_id, second.accordion.label))
    # Numbered per page, so a page built twice (a reload, a test) gives the browser the same ids.
    assert pages[0] == pages[1] == ("input-accordion-0", "input-accordion-1", "input-accordion-0-checkbox",
                                    "Named")


EXTENSION_SCRIPT = '''
import gradio as gr

from modules import scripts
from modules.ui_components import FormRow, InputAccordion, ToolButton


class StyleTemplate(scripts.Script):
    def title(self):
        return "Style template"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        with InputAccordion(False, label="Style template", elem_id="style_template") as enabled:
            with FormRow():
                template = gr.Textbox(value="{prompt}, watercolor", label="Template")
                ToolButton(value="🔄", elem_id="style_template_reset", tooltip="Reset")
        return [enabled, template]
'''


@pytest.fixture
def extension_dir(tmp_path):
    folder = tmp_path / "extensions" / "style-template" / "scripts"
    folder.mkdir(parents=True)
    (folder / "style_template.py").write_text(textwrap.dedent(EXTENSION_SCRIPT), encoding="utf-8")
    (tmp_path / "builtin").mkdir()
    return tmp_path


def test_a_script_returning_an_input_accordion_gets_its_controls_on_the_page(extension_dir):
    from modules.ui import scripts_panel

    argv = ["--data-dir", str(extension_dir)]
    runtime = load_extensions(SettingsStore(extension_dir / "config.json"), parser_with_preloads(argv).parse_args(argv),
                              ExtensionFolders(user=extension_dir / "extensions", builtin=extension_dir / "builtin"))
    assert [ext.name for ext in runtime.active()] == ["style-template"], runtime.failed()
    with gr.Blocks() as demo:
        panel = scripts_panel.build(SimpleNamespace(extensions=runtime))
    [script] = runtime.scripts.alwayson
    assert [type(control).__name__ for control in panel.inputs[1:]] == ["InputAccordion", "Textbox"]
    assert runtime.scripts.default_args(script) == (False, "{prompt}, watercolor")
    selection = panel.selection(["None", True, "{prompt}, ink"])
    assert selection.alwayson_args == {script.name: (True, "{prompt}, ink")}
    assert {"style_template", "style_template-checkbox", "style_template_reset"} <= set(_components(demo))
