"""Keyboard shortcuts (modules.ui.shortcuts): the emphasis arithmetic of Ctrl+Up/Down, its settings,
and the page script that carries the keys; and the prompt box's PNG drop (modules.ui.prompt_drop).

The weight cases below are run by node here when it is installed, and always by Chromium in
tests/browser/test_shortcuts.py. Each expected text is worked out by hand from the rules: a step of
`attention` (0.1 unless given) on the weight, an unweighted word counting as 1, a weight back at 1
losing its parentheses, `[...]` being plain text to Ctrl+Up/Down.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import gradio as gr
import pytest
from PIL import Image, PngImagePlugin

from modules.ui.prompt_drop import NO_PARAMETERS, dropped_updates, prompt_drop_js, prompt_image_id
from modules.ui.shortcuts import EDIT_WEIGHT_JS, shortcuts_js
from tests.ui_support import make_context


def case(text: str, selected: str | tuple[int, int], up: bool, expected: str | None, options: dict | None = None,
         occurrence: int = 0):
    """(text, start, end, up, options, expected text or None). `selected`: the selected substring (its
    `occurrence`-th match), or a (start, end) pair; a cursor is a pair with start == end."""
    if isinstance(selected, str):
        start = -1
        for _ in range(occurrence + 1):
            start = text.index(selected, start + 1)
        selected = (start, start + len(selected))
    return [text, selected[0], selected[1], up, options or {}, expected]


WEIGHT_CASES = [
    # The word at the cursor: wrapped with 1 + 0.1, then 1.1 + 0.1 = 1.2, and 1.1 - 0.1 = 1: plain again.
    case("a lighthouse at dusk", (5, 5), True, "a (lighthouse:1.1) at dusk"),
    case("a (lighthouse:1.1) at dusk", (6, 6), True, "a (lighthouse:1.2) at dusk"),
    case("a (lighthouse:1.1) at dusk", (6, 6), False, "a lighthouse at dusk"),
    case("a lighthouse", "lighthouse", False, "a (lighthouse:0.9)"),
    # A selection that is a whole weighted group, and the word inside one: the group's weight changes.
    case("x (a:1.3) y", "(a:1.3)", True, "x (a:1.4) y"),
    case("x (a:1.3) y", "a", False, "x (a:1.2) y"),
    # Nested groups: the innermost weighted group around the cursor.
    case("((a:1.2), b:1.1)", (10, 10), True, "((a:1.2), b:1.2)"),
    case("((a:1.2), b:1.1)", (2, 2), False, "((a:1.1), b:1.1)"),
    # [word] is text: editing another word leaves it as it is, and at the cursor it is wrapped whole.
    case("[word] and sky", (12, 12), True, "[word] and (sky:1.1)"),
    case("a [word] b", (4, 4), True, "a ([word]:1.1) b"),
    # Rounded to the step: 0.7 - 0.1 is 0.6 (not 0.6000000000000001), 0.2 + 0.1 is 0.3, 1.9 + 0.1 is 2.0.
    case("(a:0.7)", (1, 1), False, "(a:0.6)"),
    case("(a:0.2)", (1, 1), True, "(a:0.3)"),
    case("(a:1.9)", (1, 1), True, "(a:2.0)"),
    # The step and delimiters are the settings' values.
    case("(a:1.1)", (1, 1), True, "(a:1.15)", {"attention": 0.05}),
    case("red car, blue", (5, 5), True, "(red car:1.1), blue", {"delimiters": ",", "whitespace": ""}),
    # An extra network's multiplier takes keyedit_precision_extra (0.05): 0.8 + 0.05.
    case("<lora:x:0.8> cat", (3, 3), True, "<lora:x:0.85> cat"),
    # Nothing at the cursor: no change.
    case("a  b", (2, 2), True, None),
]


# Alt+Left/Right: (text, start, end, left, expected text, expected selected text or the text after the cursor).
MOVE_CASES = [
    ["a cat, a dog, a bird", 9, 9, True, "a dog, a cat, a bird", "dog, a cat, a bird"],
    ["a cat, a dog, a bird", 9, 9, False, "a cat, a bird, a dog", "dog"],
    ["a cat, a dog", 3, 5, False, "a dog, a cat", "at"],  # a selection moves with its element
    ["a cat, a dog", 1, 1, True, None, None],  # no element to its left
]


def _run_node(script: str):
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed; tests/browser/test_shortcuts.py runs the same cases in Chromium")
    done = subprocess.run([node, "-e", "const window = {};\n" + EDIT_WEIGHT_JS + "\n" + script], capture_output=True,
                          text=True, timeout=60, check=True)
    return json.loads(done.stdout)


# Runs MOVE_CASES in a JavaScript engine: [text, selected text or text after the cursor] per case.
RUN_MOVE_CASES = """cases => cases.map(c => { const r = window.atelierMoveElement(c[0], c[1], c[2], c[3]);
    return r && [r.text, r.start === r.end ? r.text.slice(r.start) : r.text.slice(r.start, r.end)]; })"""


def test_move_cases_in_node():
    results = _run_node(f"console.log(JSON.stringify(({RUN_MOVE_CASES})({json.dumps(MOVE_CASES)})));")
    for given, result in zip(MOVE_CASES, results):
        expected = None if given[4] is None else [given[4], given[5]]
        assert result == expected, f"{given[:4]}: got {result!r}, expected {expected!r}"


def test_emphasis_cases_in_node():
    script = ("const cases = " + json.dumps(WEIGHT_CASES) + ";\n"
              "console.log(JSON.stringify(cases.map(c => { const r = window.atelierEditWeight(c[0], c[1], c[2], c[3], c[4]);"
              " return r && r.text; })));")
    results = _run_node(script)
    for given, result in zip(WEIGHT_CASES, results):
        assert result == given[5], f"{given[0]!r} {given[1:4]} {given[4]}: got {result!r}, expected {given[5]!r}"


def test_keyedit_settings_are_a1111s_with_its_defaults(tmp_path):
    from modules.extension_host.a1111_defaults import A1111_ONLY_DEFAULTS
    from modules.serving.settings import SCHEMA_BY_KEY
    from modules.ui.page_script import options_json

    expected = {"keyedit_precision_attention": 0.1, "keyedit_precision_extra": 0.05,
                "keyedit_delimiters": ".,\\/!?%^*;:{}=`~() ",
                "keyedit_delimiters_whitespace": ("Tab", "Carriage Return", "Line Feed"), "keyedit_move": True}
    for key, default in expected.items():
        assert SCHEMA_BY_KEY[key].default == default and SCHEMA_BY_KEY[key].visible, key
        assert key not in A1111_ONLY_DEFAULTS, f"{key} is a real setting now, not a read-only A1111 default"
    with pytest.raises(ValueError, match="keyedit_precision_attention"):
        SCHEMA_BY_KEY["keyedit_precision_attention"].validate(5)
    context = make_context(tmp_path, load=False)
    try:
        page_opts = json.loads(options_json(context))  # what the page's `opts` holds
    finally:
        context.jobs.shutdown()
    for key, default in expected.items():
        assert page_opts[key] == (list(default) if isinstance(default, tuple) else default), key


def test_the_page_script_carries_the_keys_and_the_drop(tmp_path):
    from fastapi import FastAPI

    from modules.ui.app import mount_ui

    context = make_context(tmp_path, load=False)
    try:
        blocks = mount_ui(FastAPI(), context)
    finally:
        context.jobs.shutdown()
    assert shortcuts_js() in blocks.js and prompt_drop_js() in blocks.js
    assert "%SHORTCUTS%" not in blocks.js
    for key in ("'Escape'", "'ArrowUp'", "'ArrowLeft'", "'Enter'", "'drop'"):
        assert key in blocks.js, key
    uploads = {block.elem_id: block for block in blocks.blocks.values() if isinstance(block, gr.File)}
    for tab in ("txt2img", "img2img"):
        upload = uploads[prompt_image_id(tab)]
        assert upload.visible == "hidden"  # in the page (the drop handler needs its input), not shown


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    context = make_context(tmp_path_factory.mktemp("prompt-drop"), load=False)
    yield context
    context.jobs.shutdown()


FIELDS = ["prompt", "negative_prompt", "steps", "seed", "width", "height", "cfg_scale"]


def _png(path, parameters: str | None):
    info = PngImagePlugin.PngInfo()
    if parameters is not None:
        info.add_text("parameters", parameters)
    Image.new("RGB", (8, 8), (10, 20, 30)).save(path, pnginfo=info)
    return str(path)


def test_a_dropped_png_fills_the_fields_from_its_parameters(context, tmp_path):
    text = "a castle on a hill\nNegative prompt: fog\nSteps: 7, Sampler: Euler, CFG scale: 4.5, Seed: 4242, Size: 64x96"
    updates, note = dropped_updates(context, _png(tmp_path / "a.png", text), FIELDS)
    values = dict(zip(FIELDS, updates))
    assert values["prompt"] == "a castle on a hill" and values["negative_prompt"] == "fog"
    assert (values["steps"], values["seed"], values["cfg_scale"]) == (7, 4242, 4.5)
    assert (values["width"], values["height"]) == (64, 96)  # Size is width x height
    assert "Pasted" in note


def test_a_png_without_parameters_or_a_non_image_changes_nothing_and_says_why(context, tmp_path):
    plain = _png(tmp_path / "plain.png", None)
    updates, note = dropped_updates(context, plain, FIELDS)
    assert all(isinstance(update, type(gr.skip())) and update == gr.skip() for update in updates)
    assert "no generation parameters" in note and NO_PARAMETERS.split(" (")[0] in note

    text_file = tmp_path / "notes.txt"
    text_file.write_text("Steps: 7", encoding="utf-8")
    updates, note = dropped_updates(context, str(text_file), FIELDS)
    assert all(update == gr.skip() for update in updates)
    assert "class='error'" in note and "not an image" in note
    assert str(tmp_path) not in note  # the server's copy of the upload is not named
