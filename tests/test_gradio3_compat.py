"""Gradio 3.41 idioms in an extension's UI (modules.extension_host.gradio3_compat): an extension
written for A1111 on Gradio 3 loads through the real loader, its UI reaches the browser translated,
its handlers run translated, and none of it leaks into Gradio outside the extension's code."""

from __future__ import annotations

import inspect
import logging
import textwrap
import threading
from types import SimpleNamespace

from PIL import Image

import gradio as gr
import numpy as np
import pytest
from gradio.blocks import Block
from gradio.component_meta import ComponentMeta
from gradio.components.image_editor import EditorData
from gradio.data_classes import FileData

from modules.extension_host import gradio3_compat as compat
from modules.extension_host.extensions import ExtensionFolders, load_extensions, parser_with_preloads
from modules.serving.settings import SettingsStore
from tests.ui_support import run_event

EXTENSION_SCRIPT = '''
import gradio as gr

from modules import script_callbacks, scripts
from modules.ui_components import ToolButton


class RatioButton(ToolButton):  # as aspect-ratio extensions subclass A1111's ToolButton
    def __init__(self, ratio=1.0, **kwargs):
        super().__init__(**kwargs)
        self.ratio = ratio


def refresh_models(current):
    # 3.41: a static update of the Dropdown, built at run time in the handler.
    return gr.Dropdown.update(choices=["model-a", "model-b", current.upper()], value="model-b")


def show_panel(flag):
    return gr.Box.update(visible=bool(flag))


class OldStyle(scripts.Script):
    def title(self):
        return "Old style"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        with gr.Box(elem_id="old_style_box", elem_classes="boxed") as box:
            with gr.Row().style(equal_height=True):
                model = gr.Dropdown(["model-a"], value="model-a", label="Model", elem_id="old_style_model")
                refresh = gr.Button("Refresh", elem_id="old_style_refresh").style(full_width=False, rounded=False)
            gallery = gr.Gallery(elem_id="old_style_gallery").style(grid=3, height=240)
            RatioButton(ratio=1.5, value="3:2", elem_id="old_style_ratio")
            image = gr.Image(source="upload", tool="sketch", type="pil", brush_color="#ffffff",
                             label="Mask me", elem_id="old_style_image")
        flag = gr.Checkbox(True, label="Show", elem_id="old_style_flag")
        refresh.click(refresh_models, inputs=[model], outputs=[model], _js="old_style_before_refresh")
        flag.change(show_panel, inputs=[flag], outputs=[box]).then(
            fn=None, _js="(x) => { console.log(x); return x; }", inputs=[flag], outputs=[flag])
        return [model, flag]


def add_tab():
    with gr.Blocks(analytics_enabled=False) as tab:
        with gr.Box(elem_id="old_style_tab_box"):
            gr.Textbox("", label="Notes", elem_id="old_style_notes").style(container=False)
    return [(tab, "Old style", "old_style_tab")]


script_callbacks.on_ui_tabs(add_tab)
'''


@pytest.fixture
def runtime(tmp_path):
    folder = tmp_path / "extensions" / "old-style" / "scripts"
    folder.mkdir(parents=True)
    (folder / "old_style.py").write_text(textwrap.dedent(EXTENSION_SCRIPT), encoding="utf-8")
    (tmp_path / "builtin").mkdir()
    argv = ["--data-dir", str(tmp_path)]
    loaded = load_extensions(SettingsStore(tmp_path / "config.json"), parser_with_preloads(argv).parse_args(argv),
                             ExtensionFolders(user=tmp_path / "extensions", builtin=tmp_path / "builtin"))
    assert [ext.name for ext in loaded.active()] == ["old-style"], loaded.failed()
    return loaded


def _components(demo: gr.Blocks) -> dict[str, dict]:
    """What the browser is sent: {elem_id: {**props, "block": type, "id": id}}."""
    return {component["props"]["elem_id"]: {**component["props"], "block": component["type"], "id": component["id"]}
            for component in demo.get_config_file()["components"] if component["props"].get("elem_id")}


def _dependency(demo: gr.Blocks, target_id: int, event: str) -> dict:
    [dependency] = [dep for dep in demo.get_config_file()["dependencies"] if [target_id, event] in
                    [list(target) for target in dep["targets"]]]
    return dependency


def _run(demo: gr.Blocks, target_id: int, event: str, inputs: list):
    """The handler bound to (target_id, event), run as the server runs it for a browser."""
    return run_event(demo, target_id, event, inputs)


def _shims_absent() -> bool:
    return (not hasattr(gr, "Box") and not hasattr(gr.Dropdown, "update") and not hasattr(Block, "style")
            and "__call__" not in ComponentMeta.__dict__ and "__dir__" not in ComponentMeta.__dict__ and gr.on is gr.events.on)


def _build_page(runtime):
    from modules.ui import extensions_tab, scripts_panel

    context = SimpleNamespace(extensions=runtime)
    tabs = runtime.callbacks.ui_tabs()
    with gr.Blocks() as demo:
        panel = scripts_panel.build(context)
        with gr.Tabs():
            extensions_tab.render_extension_tabs(tabs)
    return demo, panel


def test_a_gradio3_extension_ui_reaches_the_browser_translated(runtime, caplog):
    caplog.set_level(logging.INFO, logger=compat.__name__)
    demo, panel = _build_page(runtime)
    seen = _components(demo)

    assert seen["old_style_box"]["block"] == "group" and seen["old_style_box"]["elem_classes"] == ["boxed"]
    assert seen["old_style_tab_box"]["block"] == "group"
    assert seen["old_style_notes"]["container"] is False
    assert seen["old_style_refresh"]["scale"] == 0
    assert (seen["old_style_gallery"]["columns"], seen["old_style_gallery"]["height"]) == (3, 240)
    image = seen["old_style_image"]
    assert (image["block"], image["sources"], image["type"], image["label"]) == ("imageeditor", ["upload"], "pil",
                                                                                 "Mask me")
    assert image["brush"]["colors"] == ["#ffffff"] and image["brush"]["color_mode"] == "fixed"
    row_id = next(component["id"] for component in demo.get_config_file()["components"]
                  if component["type"] == "row" and component["props"].get("equal_height"))
    assert row_id  # the .style(equal_height=True) row

    refresh = _dependency(demo, seen["old_style_refresh"]["id"], "click")
    assert refresh["backend_fn"] is True
    # 3.41 called the function with the inputs' values and then the outputs': the output is an input too.
    assert "(...args) => old_style_before_refresh(...args)" in refresh["js"]
    model_id = seen["old_style_model"]["id"]
    assert refresh["inputs"] == [model_id, model_id] and refresh["outputs"] == [model_id]
    then = [dep for dep in demo.get_config_file()["dependencies"] if dep["js"] and "console.log" in dep["js"]]
    assert len(then) == 1 and then[0]["backend_fn"] is False

    assert [type(control).__name__ for control in panel.inputs[1:]] == ["Dropdown", "Checkbox"]
    messages = [record.getMessage() for record in caplog.records if record.name == compat.__name__]
    assert any("old-style" in message and "gr.Box" in message for message in messages)
    assert any("old-style" in message and "tool='sketch'" in message for message in messages)
    assert sum("gr.Box" in message for message in messages) == 1  # once per idiom per extension
    assert _shims_absent()


def test_handlers_of_a_gradio3_extension_run_with_its_static_updates(runtime):
    demo, _ = _build_page(runtime)
    seen = _components(demo)
    assert _shims_absent()  # outside the handlers, Gradio is plain Gradio 6 again

    # The page sends the _js function's result: the input's value, then a null in place of the output's.
    [update] = _run(demo, seen["old_style_refresh"]["id"], "click", ["model-a", None])
    assert update["__type__"] == "update" and update["value"] == "model-b"
    assert [choice[0] for choice in update["choices"]] == ["model-a", "model-b", "MODEL-A"]
    [visibility] = _run(demo, seen["old_style_flag"]["id"], "change", [False])
    assert visibility == {"__type__": "update", "visible": False}
    assert _shims_absent()


def test_outside_the_scope_gradio3_idioms_are_rejected_as_plain_gradio_does():
    with gr.Blocks():
        button = gr.Button()
        with pytest.raises(TypeError, match="_js"):
            button.click(lambda: None, _js="f")
        with pytest.raises(TypeError, match="source"):
            gr.Image(source="upload")
    assert _shims_absent()


def test_the_scope_is_reentrant_and_other_threads_keep_plain_gradio():
    inside, release = threading.Event(), threading.Event()
    outcome = {}

    def extension_thread():
        with compat.gradio3_compat():
            with compat.gradio3_compat():
                pass
            outcome["nested_exit_kept_shims"] = hasattr(gr.Dropdown, "update")
            inside.set()
            release.wait(10)

    worker = threading.Thread(target=extension_thread)
    worker.start()
    try:
        assert inside.wait(10)
        # Another thread (Atelier's own code) while the extension is inside: Gradio 6 as usual.
        assert not hasattr(gr.Dropdown, "update") and not hasattr(gr.Textbox(render=False), "style")
        with gr.Blocks():
            with pytest.raises(TypeError, match="_js"):
                gr.Button().click(lambda: None, _js="f")
        with pytest.raises(TypeError, match="source"):
            gr.Image(source="upload", render=False)
    finally:
        release.set()
        worker.join(10)
    assert outcome["nested_exit_kept_shims"] is True
    assert _shims_absent()


def test_wrapped_handlers_keep_what_gradio_reads_from_them():
    def handler(text: str, request: gr.Request):
        return text

    def stream(text):
        yield gr.Textbox.update(value=text + "1")
        yield gr.Textbox.update(value=text + "2", show_copy_button=True, not_a_keyword=1)

    async def coroutine(text):
        return text

    with gr.Blocks(), compat.gradio3_compat():
        box = gr.Textbox()
        wrapped = compat.run_in_scope(handler, "ext", box)
        assert inspect.signature(wrapped) == inspect.signature(handler) and wrapped.__name__ == "handler"
        assert inspect.iscoroutinefunction(compat.run_in_scope(coroutine, "ext", box))
        streamed = compat.run_in_scope(stream, "ext", box)
    assert inspect.isgeneratorfunction(streamed)
    # Outside any scope, as Gradio's worker thread calls it: each step runs inside the scope, and the
    # 3.41 keywords of the update are made ones the Textbox takes.
    first, second = list(streamed("x"))
    assert first == {"__type__": "update", "value": "x1"}
    assert second == {"__type__": "update", "value": "x2", "buttons": ["copy"]}
    assert _shims_absent()


@pytest.mark.parametrize(("given", "expected"), [
    ("switch_to_txt2img", "(...args) => switch_to_txt2img(...args)"),
    ("gradioApp.helpers.go", "(...args) => gradioApp.helpers.go(...args)"),
    ("(x) => x", "(x) => x"),
    ("function(a, b){ return [b, a]; }", "function(a, b){ return [b, a]; }"),
])
def test_js_names_of_global_functions_become_calls(given, expected):
    assert compat.js_source(given) == expected


def _png(path, image) -> FileData:
    image.save(path)
    return FileData(path=str(path), orig_name=path.name)


def test_sketch_images_hand_their_handler_gradio3_values(tmp_path):
    background = Image.new("RGB", (8, 6), (200, 30, 30))
    strokes = Image.new("RGBA", (8, 6), (0, 0, 0, 0))
    for x, y in [(1, 1), (2, 1), (5, 4)]:
        strokes.putpixel((x, y), (255, 255, 255, 255))
    painted = background.copy()
    painted.paste(strokes, mask=strokes)
    payload = EditorData(background=_png(tmp_path / "bg.png", background), layers=[_png(tmp_path / "l.png", strokes)],
                         composite=_png(tmp_path / "c.png", painted))

    with gr.Blocks(), compat.gradio3_compat():
        sketch = gr.Image(source="upload", tool="sketch", type="numpy", brush_radius=12)
        colour = gr.Image(source="upload", tool="color-sketch", type="pil", brush_color="#00ff00")
    assert sketch.get_config()["name"] == "imageeditor" and sketch.brush.default_size == 12
    assert colour.brush.default_color == "#00ff00" and colour.brush.color_mode == "defaults"

    value = sketch.preprocess(payload)
    assert np.array_equal(value["image"], np.asarray(background))
    expected_mask = np.zeros((6, 8, 3), dtype=np.uint8)
    for x, y in [(1, 1), (2, 1), (5, 4)]:
        expected_mask[y, x] = 255
    assert np.array_equal(value["mask"], expected_mask)
    assert np.array_equal(np.asarray(colour.preprocess(payload)), np.asarray(painted))
    assert sketch.preprocess(None) is None


def test_keywords_of_an_extensions_own_component_class_reach_it(runtime):
    demo, _ = _build_page(runtime)
    [ratio] = [block for block in demo.blocks.values() if getattr(block, "elem_id", None) == "old_style_ratio"]
    assert (ratio.ratio, ratio.value) == (1.5, "3:2")  # its own keyword reached it, Gradio's too
    with gr.Blocks(), compat.gradio3_compat():
        plain = gr.Button("plain", no_such_keyword=True)  # Gradio's own class: a 3.x-only keyword is dropped
    assert plain.value == "plain"


def test_ui_callbacks_run_in_the_scope_and_the_others_do_not(runtime):
    seen = {}
    registry = runtime.callbacks
    registry.add("ui_settings", lambda: seen.setdefault("ui_settings", compat.in_scope()), extension="old-style")
    registry.add("before_ui", lambda: seen.setdefault("before_ui", compat.in_scope()), extension="old-style")
    registry.add("app_started", lambda demo, app: seen.setdefault("app_started", compat.in_scope()),
                 extension="old-style")
    registry.ui_settings()
    registry.before_ui()
    registry.app_started(None, None)
    assert seen == {"ui_settings": True, "before_ui": True, "app_started": False}
    assert _shims_absent()


def test_a_handler_with_js_still_gets_gradio_request_and_only_its_inputs():
    def handler(text, request: gr.Request):
        return f"{text}:{type(request).__name__}"

    with gr.Blocks() as demo, compat.gradio3_compat():
        source, target = gr.Textbox(), gr.Textbox()
        button = gr.Button()
        button.click(handler, inputs=[source], outputs=[target], _js="probe")
    dependency = _dependency(demo, button._id, "click")
    assert dependency["inputs"] == [source._id, target._id]
    # Gradio puts the request where the signature has it, before the output's (null) value.
    [result] = _run(demo, button._id, "click", ["abc", None])
    assert result == "abc:NoneType"  # no HTTP request in this direct call; the null output is not passed


def test_invisible_blocks_of_an_extension_stay_in_the_page_hidden_as_in_gradio3():
    """3.41 put `visible=False` blocks in the page (display: none) and extensions' scripts clone or
    click them; inside the scope they become Gradio 6's `visible="hidden"`, outside nothing changes."""
    with gr.Blocks() as demo:
        with compat.gradio3_compat():
            gr.Checkbox(False, visible=False, elem_id="ext_template")
            gr.Button("go", elem_id="ext_shown")
        gr.Button(visible=False, elem_id="core_hidden")
    props = {c["props"].get("elem_id"): c["props"] for c in demo.get_config_file()["components"]}
    assert props["ext_template"]["visible"] == "hidden"
    assert props["ext_shown"]["visible"] is True
    assert props["core_hidden"]["visible"] is False
