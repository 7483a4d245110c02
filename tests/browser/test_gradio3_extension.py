"""An extension written for Gradio 3.41, in Chromium: its `_js=` functions (a global's name, and
source with no Python handler) run in the page as 3.41 ran them, its `gr.Dropdown.update` handler
changes the dropdown, and its `gr.Box` / `.style()` UI is drawn."""

from __future__ import annotations

import textwrap

import pytest
from playwright.sync_api import Page, expect

from tests.browser.harness import CHECKPOINTS, open_page, start_server, write_tiny_checkpoints
from tests.browser.ui import dropdown_choices, field, fill, open_ui

SCRIPT = '''
import gradio as gr

from modules import scripts


def shout(text):
    return text.upper()


def more_choices(current):
    return gr.Dropdown.update(choices=["one", "two", "three"], value="three")


class JsProbe(scripts.Script):
    def title(self):
        return "JS probe"

    def show(self, is_img2img):
        # txt2img only: its elem_ids are fixed, and a script shown in both tabs builds them twice
        # (A1111 too), which the locators below would find twice.
        return False if is_img2img else scripts.AlwaysVisible

    def ui(self, is_img2img):
        with gr.Box(elem_id="js_probe_box"):
            text = gr.Textbox("", label="Probe input", elem_id="js_probe_in").style(container=False)
            with gr.Row():
                go = gr.Button("Go", elem_id="js_probe_go").style(full_width=False)
                bang = gr.Button("Bang", elem_id="js_probe_bang")
                grow = gr.Button("Grow", elem_id="js_probe_grow")
            out = gr.Textbox("seed", label="Probe output", elem_id="js_probe_out")
            choice = gr.Dropdown(["one"], value="one", label="Probe choice", elem_id="js_probe_choice")
        # The browser function runs first with the inputs' and then the outputs' values (3.41); what it
        # returns is what the Python handler receives.
        go.click(shout, inputs=[text], outputs=[out], _js="js_probe_double")
        # No Python handler: the function is the whole event.
        bang.click(None, inputs=[text], outputs=[out], _js="(x, current) => [x + '!' + current]")
        grow.click(more_choices, inputs=[choice], outputs=[choice])
        return [text]
'''

PAGE_SCRIPT = '''
function js_probe_double(text, previous) {
    return [text + text + "|" + previous];
}
'''


@pytest.fixture(scope="module")
def gradio3_server(browser, tmp_path_factory, artifacts_dir):
    data_dir = tmp_path_factory.mktemp("atelier-gradio3-data")
    write_tiny_checkpoints(data_dir, CHECKPOINTS)
    extension = data_dir / "extensions" / "js-probe"
    (extension / "scripts").mkdir(parents=True)
    (extension / "javascript").mkdir()
    (extension / "scripts" / "js_probe.py").write_text(textwrap.dedent(SCRIPT), encoding="utf-8")
    (extension / "javascript" / "js_probe.js").write_text(PAGE_SCRIPT, encoding="utf-8")
    server = start_server(data_dir, artifacts_dir / "server-gradio3.log")
    yield server
    server.stop()


@pytest.fixture
def gradio3_page(browser, request, artifacts_dir, gradio3_server):
    yield from open_page(browser, request, artifacts_dir, gradio3_server)


def test_gradio3_js_and_static_updates_run_in_the_page(gradio3_page: Page, gradio3_server):
    page = gradio3_page
    open_ui(page, gradio3_server.url)
    expect(page.locator("#js_probe_box").first).to_be_visible()  # Gradio 6 puts a group's id on two nested divs
    fill(page, "js_probe_in", "ab")

    page.locator("#js_probe_go").click()
    # Doubled in the page with the output's value appended, then upper-cased by the handler.
    expect(field(page, "js_probe_out")).to_have_value("ABAB|SEED")

    page.locator("#js_probe_bang").click()
    expect(field(page, "js_probe_out")).to_have_value("ab!ABAB|SEED")

    page.locator("#js_probe_grow").click()
    expect(page.locator("#js_probe_choice input").first).to_have_value("three")
    assert dropdown_choices(page, "js_probe_choice") == ["one", "two", "three"]
