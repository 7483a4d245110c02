"""A1111's paste surface for extensions: an always-on script's `infotext_fields` (an InputAccordion
and a slider) get their values back when the infotext of an image it made is pasted (the paste
button, PNG Info's "Send to txt2img", and an extension's own "Send to txt2img" button made with
`infotext_utils.create_buttons`/`bind_buttons`); `on_infotext_pasted` callbacks see the parsed
parameters first and may change them."""

from __future__ import annotations

import pytest

from modules.extension_host.environment import app_scope
from modules.extension_host.extensions import BUILTIN_DIR, ExtensionFolders, load_extensions
from modules.extension_host.paste_fields import SKIP, pasted_value
from modules.extension_host.scripts import ScriptSelection, run_txt2img
from modules.generation.engine import GenerationRequest
from tests.ui_support import SMALL_REQUEST, make_context

STYLE_TEMPLATE = '''
import gradio as gr

from modules import infotext_utils, script_callbacks, scripts
from modules.ui_components import InputAccordion

PASTED = []


class StyleTemplate(scripts.Script):
    def title(self):
        return "Style template"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        with InputAccordion(False, label="Style template", elem_id="style_template_enabled") as enabled:
            strength = gr.Slider(0, 2, value=1.0, step=0.05, label="Template strength")
            template = gr.Textbox(value="", label="Template")
        self.infotext_fields = [
            (enabled, lambda params: "Template strength" in params),
            (strength, "Template strength"),
            (template, "Template"),
        ]
        self.paste_field_names = ["Template strength", "Template"]
        return [enabled, strength, template]

    def process(self, p, enabled, strength, template):
        if enabled:
            p.extra_generation_params["Template strength"] = strength
            p.extra_generation_params["Template"] = template


def on_infotext_pasted(infotext, params):
    PASTED.append(dict(params))
    if "Template" in params:
        params["Template"] = params["Template"] + " (pasted)"


def on_ui_tabs():
    with gr.Blocks(analytics_enabled=False) as tab:
        box = gr.Textbox(label="Infotext", elem_id="style_template_box")
        buttons = infotext_utils.create_buttons(["txt2img", "img2img"])
        infotext_utils.bind_buttons(buttons, None, box)
    return [(tab, "Style template", "style_template_tab")]


script_callbacks.on_infotext_pasted(on_infotext_pasted)
script_callbacks.on_ui_tabs(on_ui_tabs)
'''


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from modules.ui.app import build_ui

    data_dir = tmp_path_factory.mktemp("paste")
    context = make_context(data_dir)
    folder = data_dir / "extensions" / "style-template" / "scripts"
    folder.mkdir(parents=True)
    (folder / "style_template.py").write_text(STYLE_TEMPLATE, encoding="utf-8")
    context.extensions = load_extensions(context.settings, context.args,
                                         ExtensionFolders(user=data_dir / "extensions", builtin=BUILTIN_DIR))
    context.extensions.scripts.bind_app(context)
    with app_scope(context):
        demo = build_ui(context)
    yield context, demo
    context.jobs.shutdown(timeout=60)


def extension_module(context):
    return next(entry.module for entry in context.extensions.scripts.scripts_data()
                if entry.script_class.__name__ == "StyleTemplate")


def handler(demo, elem_id: str):
    """The click handler of the button `elem_id`, with its output components."""
    [button] = [block for block in demo.blocks.values() if getattr(block, "elem_id", None) == elem_id]
    [fn] = [fn for fn in demo.fns.values() if fn.targets and fn.targets[0] == (button._id, "click")]
    return fn.fn, fn.outputs


def generated_infotext(context) -> str:
    request = GenerationRequest(prompt="a cat", **SMALL_REQUEST)
    selection = ScriptSelection(alwayson_args={"style template": (True, 1.5, "ink wash")})
    with app_scope(context):
        result = run_txt2img(context, request, selection=selection, save=False)
    assert "Template strength: 1.5, Template: ink wash" in result.infotexts[0]
    return result.infotexts[0]


def script_values(outputs, updates) -> dict:
    """The updates sent to the script's three controls, by label."""
    by_name = {}
    for component, update in zip(outputs, updates):
        by_name[getattr(component, "label", None)] = by_name[getattr(component, "elem_id", None)] = update
    return {label: by_name[name].get("value") for label, name in (
        ("Style template", "style_template_enabled-checkbox"), ("Template strength", "Template strength"),
        ("Template", "Template"))}


@pytest.mark.parametrize("button", ["paste", "pnginfo_send_to_txt2img", "txt2img_tab"])
def test_a_pasted_infotext_sets_the_always_on_scripts_controls(app, button):
    context, demo = app
    infotext = generated_infotext(context)
    extension_module(context).PASTED.clear()
    fn, outputs = handler(demo, button)
    with app_scope(context):
        updates = fn(infotext, {}) if button == "paste" else fn(infotext)
    assert script_values(outputs, updates) == {"Style template": True, "Template strength": 1.5,
                                               "Template": "ink wash (pasted)"}
    # The callback saw the parsed parameters before the fields were set.
    [params] = extension_module(context).PASTED
    assert params["Template"] == "ink wash" and params["Prompt"] == "a cat"
    prompt_update = updates[[getattr(c, "elem_id", None) for c in outputs].index("txt2img_prompt")]
    assert prompt_update == "a cat"


def test_an_infotext_without_the_scripts_keys_leaves_its_slider_alone(app):
    context, demo = app
    fn, outputs = handler(demo, "paste")
    with app_scope(context):
        updates = fn("a dog\nSteps: 3, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 64x64", {})
    values = script_values(outputs, updates)
    assert values["Style template"] is False  # the callable key: no "Template strength" in the text
    assert values["Template strength"] is None and values["Template"] is None  # skipped


def test_paste_registrations_belong_to_the_app(app):
    from modules import generation_parameters_copypaste, infotext_utils

    context, _ = app
    with app_scope(context):
        destination = infotext_utils.paste_fields["txt2img"]
        bindings = infotext_utils.registered_param_bindings
        assert generation_parameters_copypaste.paste_fields is destination or \
            generation_parameters_copypaste.paste_fields["txt2img"] is destination
    keys = [key for _, key in destination["fields"] if isinstance(key, str)]
    assert {"Prompt", "Negative prompt", "Steps", "Seed", "Template strength", "Template"} <= set(keys)
    assert destination["paste_field_names"] == ["Template strength", "Template"]
    assert sorted(binding.tabname for binding in bindings) == ["img2img", "txt2img"]
    with pytest.raises(RuntimeError, match="running Atelier app"):
        infotext_utils.paste_fields  # noqa: B018 - no app in scope


@pytest.mark.parametrize(("key", "params", "current", "expected"), [
    ("Steps", {"Steps": "7"}, 3, 7.0),  # A1111 pastes numbers into int controls as float
    ("On", {"On": "False"}, True, False),
    ("On", {"On": "True"}, False, True),
    ("Name", {"Name": "x"}, "", "x"),
    ("Scale", {"Scale": "big"}, 1.0, SKIP),  # does not convert: the control keeps its value
    ("Missing", {}, 1.0, SKIP),
    ("File", {"File": "/etc/passwd"}, {"path": "a.png"}, SKIP),  # text never becomes another kind of value
    (lambda params: 1 / 0, {}, 1.0, SKIP),  # an extension's function that fails
])
def test_values_are_converted_to_the_controls_type_as_a1111_does(key, params, current, expected):
    assert pasted_value(key, params, current) == expected if expected is not SKIP else \
        pasted_value(key, params, current) is SKIP


def test_the_apis_infotext_sets_the_always_on_scripts_arguments(app):
    """A1111's API: `infotext` fills what the request left out, the scripts' controls it names
    included; arguments the request gives a script win."""
    from modules.api.schemas import Txt2ImgApiRequest
    from modules.api.txt2img import prepare

    context, _ = app
    infotext = generated_infotext(context)
    with app_scope(context):
        prepared = prepare(Txt2ImgApiRequest(infotext=infotext), context)
        assert prepared.submission.selection.alwayson_args["style template"] == (True, 1.5, "ink wash")
        given = prepare(Txt2ImgApiRequest(infotext=infotext, alwayson_scripts={"Style template": {"args": [False]}}),
                        context)
        assert given.submission.selection.alwayson_args["style template"] == (False, 1.5, "ink wash")
        plain = prepare(Txt2ImgApiRequest(infotext="a dog\nSteps: 3, Seed: 1"), context)
        # The callable key says "off" when the infotext has no Template strength: the defaults.
        assert plain.submission.selection.alwayson_args.get("style template", (False, 1.0, "")) == (False, 1.0, "")
        result = run_txt2img(context, prepared.generation, selection=prepared.submission.selection, save=False)
    assert "Template strength: 1.5, Template: ink wash" in result.infotexts[0]
