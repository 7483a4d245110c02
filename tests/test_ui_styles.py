"""txt2img's Styles picker and style editor: the handlers (select, save, delete, refresh, apply to
prompts, copy) run as the server runs them, the txt2img request carrying the selected styles into
the prompts and the infotext, and pasting that infotext selecting the styles again."""

from __future__ import annotations

import csv
import html
import io
from types import SimpleNamespace

import gradio as gr
import pytest
from gradio.state_holder import SessionState

from modules.generation.styles import StyleDatabase
from modules.ui import styles_panel
from tests.ui_support import run_event

STYLES_CSV = ("name,prompt,negative_prompt\n"
              'noir,"black and white, film grain",color\n'
              'frame,"masterpiece, {prompt}",\n')


def rows_of(path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_bytes().decode("utf-8-sig"), newline="")))


class Page:
    """The picker and editor in a page of their own, with main prompt boxes; `run` calls a handler
    as the server does for one browser session (a worker thread with a fresh event loop)."""

    def __init__(self, database: StyleDatabase):
        self.context = SimpleNamespace(prompt_styles=database)
        self.page_loads: list = []
        with gr.Blocks() as self.demo:
            self.prompt = gr.Textbox(elem_id="txt2img_prompt")
            self.negative = gr.Textbox(elem_id="txt2img_neg_prompt")
            self.picker = styles_panel.build_picker(self.context)
            self.dialog = styles_panel.build_dialog(self.context)
            styles_panel.wire(self.context, self.picker, self.dialog, self.prompt, self.negative, self.page_loads)
        self.state = SessionState(self.demo)

    def run(self, component, event: str, inputs: list) -> list:
        return run_event(self.demo, component._id, event, inputs, state=self.state)


def choices_of(update: dict) -> list[str]:
    return [value for _, value in update["choices"]]


@pytest.fixture
def styles_file(tmp_path):
    path = tmp_path / "styles.csv"
    path.write_text(STYLES_CSV, encoding="utf-8")
    return path


@pytest.fixture
def page(styles_file):
    return Page(StyleDatabase(styles_file))


def test_picker_and_editor_have_a1111_ids(page):
    ids = {block.elem_id for block in page.demo.blocks.values()}
    assert {"txt2img_styles", "txt2img_styles_edit_button", "txt2img_styles_dialog", "txt2img_styles_edit_select",
            "txt2img_edit_style_prompt", "txt2img_edit_style_neg_prompt", "txt2img_edit_style_save",
            "txt2img_edit_style_delete", "txt2img_edit_style_close", "refresh_txt2img_styles",
            "txt2img_style_apply_dialog", "txt2img_style_copy"} <= ids
    assert page.picker.dropdown.multiselect and [v for _, v in page.picker.dropdown.choices] == ["noir", "frame"]


def test_edit_button_opens_and_close_hides_the_editor(page):
    assert page.dialog.panel.visible is False
    assert page.run(page.picker.edit_button, "click", [])[0]["visible"] is True
    assert page.run(page.dialog.close, "click", [])[0]["visible"] is False


def test_selecting_a_style_shows_its_text_and_buttons(page):
    prompt, negative, delete, save = page.run(page.dialog.selection, "change", ["noir"])
    assert (prompt, negative) == ("black and white, film grain", "color")
    assert delete["visible"] is True and save["visible"] is True
    prompt, negative, delete, save = page.run(page.dialog.selection, "change", ["brand new"])
    assert prompt == {"__type__": "update"} and negative == {"__type__": "update"}  # what is typed stays
    assert delete["visible"] is False and save["visible"] is True


def test_save_writes_styles_csv_and_refreshes_both_lists(page, styles_file):
    status, delete, picker, selection = page.run(page.dialog.save, "click", ["sunny", "golden hour", "rain"])
    assert "Saved style 'sunny' in styles.csv." in html.unescape(status) and delete["visible"] is True
    assert str(styles_file.parent) not in status
    assert choices_of(picker) == choices_of(selection) == ["noir", "frame", "sunny"]
    assert rows_of(styles_file)[-1] == {"name": "sunny", "prompt": "golden hour", "negative_prompt": "rain"}
    assert (styles_file.parent / "styles.csv.bak").read_text(encoding="utf-8") == STYLES_CSV
    # The new style can be selected in this session at once (the picker's choices were updated).
    page.run(page.dialog.copy, "click", ["", ""])
    prompt, negative, *_ = page.run(page.dialog.materialize, "click", ["a field", "", ["sunny"]])
    assert (prompt, negative) == ("a field, golden hour", "rain")


def test_invalid_save_is_an_error_and_writes_nothing(page, styles_file):
    status, *_ = page.run(page.dialog.save, "click", ["bad\nname", "x", ""])
    assert "class='error'" in status and "line breaks" in status
    status, *_ = page.run(page.dialog.save, "click", ["   ", "x", ""])
    assert "class='error'" in status and "empty" in status
    assert styles_file.read_text(encoding="utf-8") == STYLES_CSV


def test_delete_removes_the_style_and_drops_it_from_the_selection(page, styles_file):
    status, selection, prompt, negative, picker = page.run(page.dialog.delete, "click", ["noir", ["noir", "frame"]])
    assert "Deleted style 'noir'" in html.unescape(status) and (prompt, negative) == ("", "")
    assert selection["value"] is None and choices_of(selection) == ["frame"]
    assert choices_of(picker) == ["frame"] and picker["value"] == ["frame"]
    assert [r["name"] for r in rows_of(styles_file)] == ["frame"]
    # Declined in the confirm dialog: the page script sends an empty name, nothing is deleted.
    status, *_ = page.run(page.dialog.delete, "click", ["", ["frame"]])
    assert "Pick the style" in status and [r["name"] for r in rows_of(styles_file)] == ["frame"]


def test_apply_moves_selected_styles_into_the_prompts_and_clears_the_selection(page):
    prompt, negative, picker, panel = page.run(page.dialog.materialize, "click",
                                               ["a cat", "blurry", ["noir", "frame"]])
    assert prompt == "masterpiece, a cat, black and white, film grain"
    assert negative == "blurry, color"
    assert picker["value"] == [] and panel["visible"] is False


def test_copy_puts_the_main_prompts_in_the_editor(page):
    assert page.run(page.dialog.copy, "click", ["main prompt", "main negative"]) == ["main prompt", "main negative"]


def test_refresh_reads_edits_and_reports_a_broken_file(page, styles_file):
    styles_file.write_text(STYLES_CSV + "late,added later,\n", encoding="utf-8")
    status, picker, selection = page.run(page.dialog.refresh, "click", [["noir"]])
    assert choices_of(picker) == ["noir", "frame", "late"] and picker["value"] == ["noir"] and status == ""
    styles_file.write_bytes("name,prompt\ncafé,x\n".encode("latin-1"))
    status, picker, selection = page.run(page.dialog.refresh, "click", [["noir"]])
    assert "class='error'" in status and "not UTF-8" in status
    assert choices_of(picker) == [] and picker["value"] == []
    # Saving is refused while the file cannot be read: it is not overwritten.
    status, *_ = page.run(page.dialog.save, "click", ["new", "x", ""])
    assert "not saved" in status and styles_file.read_bytes() == "name,prompt\ncafé,x\n".encode("latin-1")


def test_page_load_refreshes_the_choices_and_the_problems(page, styles_file):
    [(load, outputs)] = page.page_loads
    assert outputs == [page.picker.dropdown, page.dialog.selection, page.dialog.status]
    styles_file.write_text(STYLES_CSV + "late,added later,\n", encoding="utf-8")
    picker, selection, status = load()
    assert [value for _, value in picker.choices] == ["noir", "frame", "late"] and status == ""
    styles_file.write_bytes(b"\xff\xfe garbage")
    picker, selection, status = load()
    assert picker.choices == [] and "not UTF-8" in status


# --- the txt2img tab -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    from tests.ui_support import make_context

    data_dir = tmp_path_factory.mktemp("styles_ui")
    (data_dir / "styles.csv").write_text(STYLES_CSV, encoding="utf-8")
    context = make_context(data_dir)
    yield context
    context.jobs.shutdown()


def test_generate_sends_the_selected_styles(context):
    from modules.ui.app import build_ui
    from modules.ui.request_fields import TXT2IMG_FIELDS

    demo = build_ui(context)
    by_id = {block.elem_id: block for block in demo.blocks.values() if getattr(block, "elem_id", None)}
    generate = [fn for fn in demo.fns.values() if fn.targets and fn.targets[0] == (by_id["txt2img_generate"]._id,
                                                                                     "click")]
    [fn] = generate
    inputs = [block._id for block in fn.inputs]
    assert inputs[TXT2IMG_FIELDS.index("styles")] == by_id["txt2img_styles"]._id
    assert by_id["txt2img_styles_edit_button"] is not None and by_id["txt2img_styles_dialog"] is not None


def test_styles_reach_the_prompt_infotext_and_paste_selects_them_again(context):
    from modules.generation.styles import apply_request_styles
    from modules.serving.generation_service import GenerationSubmission
    from modules.ui.generation import follow_until_done
    from modules.ui.request_fields import build_request
    from modules.ui.txt2img import paste_updates
    from modules.ui.request_fields import TXT2IMG_FIELDS
    from tests.ui_support import SMALL_REQUEST

    request = apply_request_styles(build_request({**SMALL_REQUEST, "prompt": "a cat", "negative_prompt": "blurry",
                                                  "styles": ["noir", "frame"]}), context.prompt_styles)
    outcome = follow_until_done(context, GenerationSubmission(request, save=False))
    assert outcome.error is None, outcome.error
    infotext = outcome.infotexts[0]
    assert infotext.startswith("masterpiece, a cat, black and white, film grain\nNegative prompt: blurry, color\n")

    updates, _ = paste_updates(context, infotext)
    values = dict(zip(TXT2IMG_FIELDS, updates))
    assert values["prompt"] == "a cat" and values["negative_prompt"] == "blurry"
    pasted_styles = values["styles"]["value"]
    assert sorted(pasted_styles) == ["frame", "noir"] and "noir" in values["styles"]["choices"]
    # Here both orders make the same text (frame has no negative prompt): what matters is that the
    # pasted styles rebuild the prompts of the image.
    assert context.prompt_styles.styled_prompts("a cat", "blurry", pasted_styles) == \
        ("masterpiece, a cat, black and white, film grain", "blurry, color")


def test_unknown_style_in_a_request_names_the_known_ones(context):
    from modules.generation.styles import StyleError, apply_request_styles
    from modules.ui.request_fields import build_request

    with pytest.raises(StyleError, match="unknown style 'gone'; known styles: 'noir', 'frame'"):
        apply_request_styles(build_request({"prompt": "x", "styles": ["gone"]}), context.prompt_styles)


def test_paste_without_styles_leaves_the_picker_alone(context):
    from modules.ui.request_fields import TXT2IMG_FIELDS
    from modules.ui.txt2img import paste_updates

    updates, _ = paste_updates(context, "a dog\nSteps: 5, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 64x64")
    values = dict(zip(TXT2IMG_FIELDS, updates))
    assert values["styles"] == {"__type__": "update"} and values["prompt"] == "a dog"
