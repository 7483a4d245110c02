"""Extension scripts in img2img, as A1111's `scripts_img2img`: every script class has one instance per
tab (show/ui asked with that tab's `is_img2img`, each tab its own args layout and defaults); an
img2img request runs the img2img tab's scripts on a `StableDiffusionProcessingImg2Img` whose edits
reach the engine; the API's names, the scripts panel, the component hooks and the paste registry
each work per tab; the generation service runs an img2img job of kind "img2img"."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from modules.extension_host.processing_objects import (
    StableDiffusionProcessingImg2Img,
    StableDiffusionProcessingTxt2Img,
    processing_for,
)
from modules.extension_host.scripts import ScriptSelection, run_img2img, run_txt2img
from modules.generation.engine import GenerationRequest, generate
from modules.generation.requests import Img2ImgRequest
from modules.outputs.infotext import parse_generation_parameters
from tests.test_extensions import DirectEngine, load, write_extension

SIZE = 64
SMALL = dict(width=SIZE, height=SIZE, steps=4, sampler_name="Euler", seed=5, prompt="a cat")
REPLACED_STRENGTH = 0.35  # what the always-on script's process() sets in img2img (its slider's default below)

SCRIPT = f'''
import gradio as gr

from modules import scripts
from modules.processing import StableDiffusionProcessingImg2Img, process_images

SEEN = []  # (title, tab, what) from every hook
REPLACEMENT = {{}}  # "image": the init image the always-on script puts on p (set by the tests)


def tab_of(script):
    return "img2img" if script.is_img2img else "txt2img"


class OnlyImg2Img(scripts.Script):
    def title(self):
        return "Only img2img"

    def show(self, is_img2img):
        return is_img2img

    def ui(self, is_img2img):
        return [gr.Slider(0, 1, value=0.5, label="Strength", elem_id=self.elem_id("strength"))]

    def run(self, p, strength):
        SEEN.append((self.title(), tab_of(self), "run", type(p).__name__))
        p.denoising_strength = strength
        return process_images(p)


class OnlyTxt2Img(scripts.Script):
    def title(self):
        return "Only txt2img"

    def show(self, is_img2img):
        return not is_img2img

    def ui(self, is_img2img):
        return [gr.Checkbox(False, label="Nothing")]

    def run(self, p, nothing):
        return process_images(p)


class BothTabs(scripts.Script):
    def __init__(self):
        self.built_for = None  # per-tab state: which tab's ui() built this instance's controls

    def title(self):
        return "Both tabs"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        self.built_for = "img2img" if is_img2img else "txt2img"
        enabled = gr.Checkbox(False, label="Replace", elem_id=self.elem_id("enabled"))
        if not is_img2img:
            return [enabled]
        strength = gr.Slider(0, 1, value={REPLACED_STRENGTH}, label="New strength", elem_id=self.elem_id("strength"))
        self.infotext_fields = [(strength, "Both tabs strength")]
        return [enabled, strength]

    def process(self, p, enabled, *rest):
        SEEN.append((self.title(), tab_of(self), "process", type(p).__name__, (enabled, *rest)))
        SEEN.append((self.title(), tab_of(self), "p.scripts", [s.title() for s in p.scripts.scripts],
                     p.script_args[self.args_from:self.args_to]))
        if enabled and isinstance(p, StableDiffusionProcessingImg2Img):
            p.denoising_strength = rest[0]
            p.init_images = [REPLACEMENT["image"]]
            p.extra_generation_params["Both tabs strength"] = rest[0]

    def process_before_every_sampling(self, p, *args, x, noise, c, uc, **kwargs):
        if isinstance(p, StableDiffusionProcessingImg2Img):
            SEEN.append((self.title(), tab_of(self), "init_latent", p.init_latent is x, p.outpath_samples))

    def after_component(self, component, **kwargs):
        SEEN.append((self.title(), tab_of(self), "after_component", kwargs.get("elem_id")))
'''

MODULE = "atelier_extensions.tabs.scripts.tabs"


def picture(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def sd1(tmp_path_factory):
    from modules.library.model_loader import load_checkpoint
    from modules.library.synthetic_checkpoints import write_checkpoint

    return load_checkpoint(write_checkpoint(tmp_path_factory.mktemp("i2i-scripts") / "tiny.safetensors", "sd1",
                                            dtype=torch.float32))


@pytest.fixture
def runtime(tmp_path):
    write_extension(tmp_path / "extensions", "tabs", {"scripts/tabs.py": SCRIPT})
    runtime = load(tmp_path)
    module = sys.modules[MODULE]
    module.SEEN.clear()
    module.REPLACEMENT["image"] = picture(2)
    return runtime


def _titles(scripts) -> list[str]:
    return [script.title() for script in scripts]


def test_each_tab_has_its_own_instances_shown_by_show_is_img2img(runtime):
    scripts = runtime.scripts
    assert _titles(scripts.txt2img_scripts) == ["Only txt2img", "Both tabs"]
    assert _titles(scripts.img2img_scripts) == ["Only img2img", "Both tabs"]
    assert _titles(scripts.img2img_tab.selectable) == ["Only img2img"]
    assert _titles(scripts.img2img_tab.alwayson) == ["Both tabs"]
    both_txt, both_img = scripts.txt2img_tab.find("both tabs"), scripts.img2img_tab.find("BOTH TABS")
    assert both_txt is not both_img and type(both_txt) is type(both_img)
    assert (both_txt.is_txt2img, both_txt.is_img2img) == (True, False)
    assert (both_img.is_txt2img, both_img.is_img2img) == (False, True)
    # A1111's elem_id: the tab name only when show() does not depend on the tab.
    assert both_img.elem_id("x") == "script_img2img_both_tabs_x"
    assert both_txt.elem_id("x") == "script_txt2img_both_tabs_x"
    assert scripts.img2img_tab.find("only img2img").elem_id("x") == "script_only_img2img_x"
    # Per-tab ui(): each instance has its own defaults and args layout.
    assert scripts.default_args(both_txt) == (False,)
    assert scripts.default_args(both_img) == (False, REPLACED_STRENGTH)
    assert (both_txt.built_for, both_img.built_for) == ("txt2img", "img2img")
    assert scripts.txt2img_tab.layout() == 1 + 1 + 1  # selected index, Only txt2img (1), Both tabs (1)
    assert scripts.img2img_tab.layout() == 1 + 1 + 2
    assert (both_txt.args_from, both_txt.args_to) == (2, 3) and (both_img.args_from, both_img.args_to) == (2, 4)
    # The class is one entry of A1111's scripts_data, and the old single-tab API still means txt2img.
    assert [entry.script_class.__name__ for entry in scripts.scripts_data()] == ["OnlyImg2Img", "OnlyTxt2Img",
                                                                                 "BothTabs"]
    assert scripts.selectable == scripts.txt2img_tab.selectable and scripts.find("both tabs") is both_txt
    # A1111's module globals for the two runners, resolved for the running app.
    import modules.scripts as a1111_scripts
    from modules.extension_host.environment import app_scope

    with app_scope(SimpleNamespace(extensions=runtime)):
        assert a1111_scripts.scripts_img2img is scripts.img2img_tab
        assert a1111_scripts.scripts_txt2img is scripts.txt2img_tab
        assert _titles(a1111_scripts.scripts_img2img.alwayson_scripts) == ["Both tabs"]
        assert a1111_scripts.scripts_img2img.script("only img2img").is_img2img


def test_api_names_and_selection_per_tab(runtime):
    scripts = runtime.scripts
    assert scripts.api_titles() == {"txt2img": ["only txt2img", "both tabs"], "img2img": ["only img2img", "both tabs"]}
    selection = scripts.selection_from_api("only IMG2IMG", [0.25], {"Both tabs": {"args": [True]}}, is_img2img=True)
    assert selection == ScriptSelection(script="Only img2img", script_args=(0.25,),
                                        alwayson_args={"both tabs": (True,)})
    with pytest.raises(ValueError, match="'only img2img' not found in txt2img"):
        scripts.selection_from_api("only img2img", [], {})
    with pytest.raises(ValueError, match="'only txt2img' not found in img2img"):
        scripts.selection_from_api("only txt2img", [], {}, is_img2img=True)


def test_always_on_process_edits_of_init_images_and_strength_reach_the_engine(runtime, sd1, tmp_path):
    from modules.outputs.images import SaveOptions, img2img_output_dirs
    from modules.serving.settings import SettingsStore

    module = sys.modules[MODULE]
    engine = DirectEngine(sd1, tmp_path / "out")
    engine.settings = SettingsStore(tmp_path / "config.json")  # so p gets its output folders
    context = SimpleNamespace(extensions=runtime, engine=engine)
    request = Img2ImgRequest(init_images=[picture(1)], denoising_strength=0.9, **SMALL)
    selection = runtime.scripts.selection_from_api(None, [], {"both tabs": {"args": [True]}}, is_img2img=True)
    result = run_img2img(context, request, selection=selection)

    # What the script set, run without scripts: the same pixels, and the infotext says the new strength.
    expected = generate(sd1, request.model_copy(update={"init_images": (module.REPLACEMENT["image"],),
                                                        "denoising_strength": REPLACED_STRENGTH}))
    assert np.array_equal(np.asarray(result.images[0]), np.asarray(expected.images[0]))
    params = parse_generation_parameters(result.infotexts[0])
    assert params["Denoising strength"] == str(REPLACED_STRENGTH)
    assert params["Both tabs strength"] == str(REPLACED_STRENGTH) and result.warnings == []
    process_calls = [entry for entry in module.SEEN if entry[2] == "process"]
    assert process_calls == [("Both tabs", "img2img", "process", "StableDiffusionProcessingImg2Img",
                              (True, REPLACED_STRENGTH))]
    # p.scripts is the img2img tab's runner, p.script_args its flat args (A1111's layout).
    assert [entry for entry in module.SEEN if entry[2] == "p.scripts"] == [
        ("Both tabs", "img2img", "p.scripts", ["Only img2img", "Both tabs"], (True, REPLACED_STRENGTH))]
    images_dir, _ = img2img_output_dirs(tmp_path / "out", SaveOptions.from_settings(engine.settings.current()))
    [sampling] = [entry for entry in module.SEEN if entry[2] == "init_latent"]
    assert sampling == ("Both tabs", "img2img", "init_latent", True, str(images_dir))
    # Its txt2img instance does not run for img2img, nor the img2img one for txt2img.
    module.SEEN.clear()
    run_txt2img(context, GenerationRequest(**SMALL), selection=ScriptSelection(alwayson_args={"both tabs": (True,)}))
    assert [entry[:4] for entry in module.SEEN if entry[2] == "process"] == [
        ("Both tabs", "txt2img", "process", "StableDiffusionProcessingTxt2Img")]


def test_selected_img2img_script_runs_on_an_img2img_p(runtime, sd1):
    module = sys.modules[MODULE]
    context = SimpleNamespace(extensions=runtime, engine=DirectEngine(sd1))
    request = Img2ImgRequest(init_images=[picture(1)], denoising_strength=0.9, **SMALL)
    selection = runtime.scripts.selection_from_api("only img2img", [0.5], {}, is_img2img=True)
    result = run_img2img(context, request, selection=selection)
    assert ("Only img2img", "img2img", "run", "StableDiffusionProcessingImg2Img") in module.SEEN
    expected = generate(sd1, request.model_copy(update={"denoising_strength": 0.5}))
    assert np.array_equal(np.asarray(result.images[0]), np.asarray(expected.images[0]))
    # A txt2img-only script cannot be chosen for img2img (the request's tab decides).
    with pytest.raises(ValueError, match="not found in img2img"):
        run_img2img(context, request, selection=ScriptSelection(script="Only txt2img"))
    with pytest.raises(TypeError, match="Img2ImgRequest"):
        run_img2img(context, GenerationRequest(**SMALL))


def test_img2img_p_has_a1111_fields_and_round_trips():
    init, mask = picture(1), Image.new("L", (SIZE, SIZE), 255)
    request = Img2ImgRequest(init_images=[init], mask=mask, mask_blur_x=3, mask_blur_y=6, resize_mode=2,
                             inpainting_fill=1, inpaint_full_res=False, inpaint_full_res_padding=32,
                             inpainting_mask_invert=1, image_cfg_scale=1.5, initial_noise_multiplier=0.9, **SMALL)
    p = processing_for(request)
    assert isinstance(p, StableDiffusionProcessingImg2Img)
    assert p.init_images == [init] and p.image_mask is mask and p.mask is None and p.latent_mask is None
    assert (p.mask_blur_x, p.mask_blur_y, p.mask_blur) == (3, 6, None)  # unequal axes read as None
    assert (p.resize_mode, p.inpainting_fill, p.inpaint_full_res, p.inpaint_full_res_padding) == (2, 1, False, 32)
    assert (p.inpainting_mask_invert, p.image_cfg_scale, p.initial_noise_multiplier) == (1, 1.5, 0.9)
    assert p.to_request() == request
    p.mask_blur = 8  # an int sets both axes (A1111's property)
    p.inpainting_mask_invert = True  # a checkbox's value
    again = p.to_request()
    assert (again.mask_blur_x, again.mask_blur_y, again.inpainting_mask_invert, p.mask_blur) == (8, 8, 1, 8)
    # A1111's constructor: `mask` goes to image_mask, `mask_blur` sets both axes, img2img defaults.
    made = StableDiffusionProcessingImg2Img(init_images=[init], mask=mask, mask_blur=2)
    assert made.image_mask is mask and made.mask is None and (made.mask_blur_x, made.mask_blur_y) == (2, 2)
    assert made.denoising_strength == Img2ImgRequest.model_fields["denoising_strength"].default
    with pytest.raises(ValueError, match="init_images"):
        StableDiffusionProcessingImg2Img().to_request()
    # copy_with (a grid cell) keeps the img2img fields of the new request and the scripts' attributes.
    p.from_setup = "kept"
    cell = p.copy_with(request.model_copy(update={"denoising_strength": 0.2}))
    assert isinstance(cell, StableDiffusionProcessingImg2Img) and cell.from_setup == "kept"
    assert cell.denoising_strength == 0.2 and cell.image_mask is mask and cell.init_images == [init]
    assert cell.to_request() == request.model_copy(update={"denoising_strength": 0.2})
    # A txt2img p given an img2img request becomes an img2img p, and back.
    txt = processing_for(GenerationRequest(**SMALL))
    assert isinstance(txt, StableDiffusionProcessingTxt2Img)
    assert isinstance(txt.copy_with(request), StableDiffusionProcessingImg2Img)
    back = cell.copy_with(GenerationRequest(**SMALL))
    assert type(back) is StableDiffusionProcessingTxt2Img and back.from_setup == "kept"
    assert not any(hasattr(back, name) for name in ("init_images", "image_mask", "latent_mask", "mask_blur"))
    assert back.to_request() == GenerationRequest(**SMALL)


def test_scripts_panel_and_component_hooks_per_tab(runtime):
    import gradio as gr

    from modules.extension_host.paste_fields import infotext_script_args, register_generation_tab
    from modules.ui import scripts_panel
    from modules.ui.component_hooks import ComponentHooks

    module = sys.modules[MODULE]
    context = SimpleNamespace(extensions=runtime)
    with gr.Blocks() as page:
        hooks = ComponentHooks.for_context(context, is_img2img=True)
        prompt = hooks.create(gr.Textbox, elem_id="img2img_prompt")
        panel = scripts_panel.build(context, None, is_img2img=True)
    assert ("Both tabs", "img2img", "after_component", "img2img_prompt") in module.SEEN
    assert not [entry for entry in module.SEEN if entry[1] == "txt2img"]  # the txt2img instances stay out
    ids = {block.elem_id for block in page.blocks.values() if getattr(block, "elem_id", None)}
    assert {"img2img_script_container", "script_list", "script_img2img_both_tabs_strength",
            "script_only_img2img_strength"} <= ids
    assert panel.dropdown.choices == [("None", "None"), ("Only img2img", "Only img2img")]
    # The page's values: the selected script, then Both tabs' two controls and Only img2img's slider.
    selection = panel.selection(["Only img2img", True, 0.6, 0.2])
    assert selection == ScriptSelection(script="Only img2img", script_args=(0.2,),
                                        alwayson_args={"both tabs": (True, 0.6)})

    # The img2img tab as A1111's paste destination, with its scripts' infotext_fields.
    both_img = runtime.scripts.img2img_tab.find("both tabs")
    script_fields = register_generation_tab(runtime.scripts, "img2img", None, [(prompt, "Prompt")])
    assert script_fields == both_img.infotext_fields
    assert runtime.scripts.paste.paste_fields["img2img"]["fields"] == [(prompt, "Prompt"), *both_img.infotext_fields]
    given = infotext_script_args(runtime.scripts, {"Both tabs strength": "0.8"}, {}, is_img2img=True)
    assert given == {"both tabs": (False, 0.8)}
    assert infotext_script_args(runtime.scripts, {"Both tabs strength": "0.8"}, {}) == {}  # txt2img has no field


def test_generation_service_runs_img2img_as_an_img2img_job(tmp_path):
    from modules.extension_host.environment import app_scope
    from modules.extension_host.extensions import ExtensionFolders, load_extensions
    from modules.outputs.images import SaveOptions, img2img_output_dirs
    from modules.serving.generation_service import GenerationSubmission, job_kind, submit_generation
    from tests.ui_support import make_context

    write_extension(tmp_path / "extensions", "tabs", {"scripts/tabs.py": SCRIPT})
    (tmp_path / "builtin").mkdir()
    context = make_context(tmp_path)
    try:
        folders = ExtensionFolders(user=tmp_path / "extensions", builtin=tmp_path / "builtin")
        context.extensions = load_extensions(context.settings, context.args, folders)
        sys.modules[MODULE].REPLACEMENT["image"] = picture(2)
        request = Img2ImgRequest(init_images=[picture(1)], **SMALL)
        assert job_kind(request) == "img2img" and job_kind(GenerationRequest(**SMALL)) == "txt2img"
        selection = context.extensions.scripts.selection_from_api(None, [], {"both tabs": {"args": [True]}},
                                                                  is_img2img=True)
        with app_scope(context):
            job = submit_generation(context, GenerationSubmission(request, selection=selection, save=True))
            job.wait(timeout=120)
        assert job.kind == "img2img" and job.error is None, job.error
        [saved] = job.result.saved_paths
        options = SaveOptions.from_settings(context.settings.current())
        images_dir, _ = img2img_output_dirs(context.engine.save_dir, options)
        assert Path(saved).is_relative_to(images_dir) and images_dir.name == "img2img-images"
        params = parse_generation_parameters(job.result.infotexts[0])
        assert params["Denoising strength"] == str(REPLACED_STRENGTH)
    finally:
        context.jobs.shutdown()


EXTRA_NOISE_EXTENSION = '''
import torch

from modules import script_callbacks

SEEN = []


def zero_the_extra_noise(params):
    SEEN.append((tuple(params.noise.shape), tuple(params.x.shape), tuple(params.xi.shape)))
    params.noise = torch.zeros_like(params.noise)


script_callbacks.on_extra_noise(zero_the_extra_noise)
'''


def test_on_extra_noise_callbacks_replace_the_extra_noise(tmp_path, sd1):
    """A1111's on_extra_noise: called with (noise, x, xi) when `img2img_extra_noise` > 0; the noise it
    leaves is what is added, so zeroing it gives the run without extra noise."""
    from modules.generation.engine import EngineSettings

    write_extension(tmp_path / "extensions", "quiet", {"scripts/quiet.py": EXTRA_NOISE_EXTENSION})
    runtime = load(tmp_path)
    seen = next(module.SEEN for name, module in list(sys.modules.items())
                if name.endswith("quiet") and hasattr(module, "SEEN"))

    class ExtraNoiseEngine(DirectEngine):
        def generate(self, request, control=None, *, save=None, hooks=None):
            return generate(self.model, request, EngineSettings(img2img_extra_noise=0.5), hooks=hooks)

    context = SimpleNamespace(extensions=runtime, engine=ExtraNoiseEngine(sd1))
    request = Img2ImgRequest(init_images=[picture(1)], denoising_strength=0.6, **SMALL)
    result = run_img2img(context, request)
    latent = (1, 4, SIZE // 8, SIZE // 8)
    assert seen == [(latent, latent, latent)]
    plain = generate(sd1, request)
    assert np.array_equal(np.asarray(result.images[0]), np.asarray(plain.images[0]))
    assert "Extra noise: 0.5" in result.infotexts[0]
    with_noise = generate(sd1, request, EngineSettings(img2img_extra_noise=0.5))
    assert not np.array_equal(np.asarray(with_noise.images[0]), np.asarray(plain.images[0]))
