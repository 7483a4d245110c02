"""A UI-only sample extension in A1111's shape, used by the component-hook tests and the browser test:
its always-on script adds two aspect-ratio ToolButtons right after `txt2img_width` (A1111's
`after_component` idiom) that set width and height, and its JavaScript marks the page from
`onUiLoaded` after finding `txt2img_width` through `gradioApp()`."""

from __future__ import annotations

import textwrap
from pathlib import Path

NAME = "sample-aspect"
SQUARE = (512, 512)
WIDE = (768, 512)

SCRIPT = f'''
import gradio as gr

from modules import script_callbacks, scripts
from modules.ui_components import ToolButton

SEEN = []  # (who, elem_id) in the order the hooks ran


class AspectButtons(scripts.Script):
    def __init__(self):
        self.width = self.height = None
        self.on_after_component(lambda on: SEEN.append(("on_after_component", on.component.elem_id)),
                                elem_id="txt2img_generate")

    def title(self):
        return "Aspect buttons"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        return [gr.Checkbox(False, label="Aspect buttons enabled", elem_id="sample_aspect_enabled")]

    def before_component(self, component, **kwargs):
        SEEN.append(("script.before", kwargs.get("elem_id")))

    def after_component(self, component, **kwargs):
        elem_id = kwargs.get("elem_id")
        SEEN.append(("script.after", elem_id))
        if elem_id == "txt2img_width":
            self.width = component
            self.square = ToolButton(value="1:1", elem_id="sample_aspect_square")
            self.wide = ToolButton(value="3:2", elem_id="sample_aspect_wide")
        elif elem_id == "txt2img_height":
            self.height = component
            self.square.click(lambda: {SQUARE!r}, outputs=[self.width, self.height])
            self.wide.click(lambda: {WIDE!r}, outputs=[self.width, self.height])


def before(component, **kwargs):
    SEEN.append(("callback.before", kwargs.get("elem_id")))


def after(component, **kwargs):
    SEEN.append(("callback.after", kwargs.get("elem_id")))


script_callbacks.on_before_component(before)
script_callbacks.on_after_component(after)
'''

JAVASCRIPT = '''
titles["3:2"] = "Sample: a 3:2 picture";
onUiLoaded(function() {
    var width = gradioApp().getElementById('txt2img_width');
    document.body.setAttribute('data-sample-aspect', width ? 'width-found' : 'width-missing');
});
onOptionsAvailable(function() {
    document.body.setAttribute('data-sample-opts', String(opts.samples_format));
});
'''

BROKEN_HOOK_SCRIPT = '''
from modules import script_callbacks, scripts


class Broken(scripts.Script):
    def title(self):
        return "Broken hook"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def after_component(self, component, **kwargs):
        if kwargs.get("elem_id") == "txt2img_width":
            raise RuntimeError("sample failure in after_component")


def before(component, **kwargs):
    if kwargs.get("elem_id") == "txt2img_height":
        raise ValueError("sample failure in on_before_component")


script_callbacks.on_before_component(before)
'''


def write_sample(extensions_dir: Path, name: str = NAME, *, broken: bool = False) -> Path:
    """The sample extension (or, with `broken`, one whose hooks raise) in `extensions_dir/name`."""
    folder = extensions_dir / name
    (folder / "scripts").mkdir(parents=True, exist_ok=True)
    if broken:
        (folder / "scripts" / "broken.py").write_text(textwrap.dedent(BROKEN_HOOK_SCRIPT), encoding="utf-8")
        return folder
    (folder / "scripts" / "aspect.py").write_text(SCRIPT, encoding="utf-8")
    (folder / "javascript").mkdir(exist_ok=True)
    (folder / "javascript" / "aspect.js").write_text(JAVASCRIPT, encoding="utf-8")
    (folder / "style.css").write_text("#sample_aspect_square { outline: 1px dashed; }\n", encoding="utf-8")
    return folder
