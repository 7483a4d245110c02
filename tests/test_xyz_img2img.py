"""The X/Y/Z plot in img2img (A1111.md §11, §13.11): each tab's axis list and A1111's per-tab axis
indices, cells built from the base Img2ImgRequest (init images, mask and every img2img field kept),
values checked against the field's range, and grids run on tiny pix2pix and inpainting checkpoints
whose cells' infotexts carry the axis values."""

from __future__ import annotations

import importlib.util
import itertools
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from modules.extension_host.extensions import BUILTIN_DIR
from modules.extension_host.xyz.extension_axes import (
    AxisOption,
    AxisOptionImg2Img,
    AxisOptionTxt2Img,
    apply_field,
    extension_axis_types,
)
from modules.extension_host.xyz_grid import (
    AxisSpec,
    AxisValueError,
    GridOptions,
    GridServices,
    axis_types,
    plan_grid,
    run_grid,
)
from modules.generation.engine import Txt2ImgEngine
from modules.generation.requests import GenerationRequest, Img2ImgRequest
from modules.outputs.infotext import parse_generation_parameters

SIZE = 64

# A1111's master axis list as its xyz_grid.py orders it up to VAE, each entry with the tab it is
# limited to (AxisOptionTxt2Img / AxisOptionImg2Img) or None; its dropdowns filter this per tab.
A1111_MASTER = (
    ("Nothing", None), ("Seed", None), ("Var. seed", None), ("Var. strength", None), ("Steps", None),
    ("Hires steps", "txt2img"), ("CFG Scale", None), ("Image CFG Scale", "img2img"), ("Prompt S/R", None),
    ("Prompt order", None), ("Sampler", "txt2img"), ("Hires sampler", "txt2img"), ("Sampler", "img2img"),
    ("Checkpoint name", None), ("Negative Guidance minimum sigma", None), ("Sigma Churn", None),
    ("Sigma min", None), ("Sigma max", None), ("Sigma noise", None), ("Schedule type", None),
    ("Schedule min sigma", None), ("Schedule max sigma", None), ("Schedule rho", None),
    ("Beta schedule alpha", None), ("Beta schedule beta", None), ("Eta", None), ("Clip skip", None),
    ("Denoising", None), ("Initial noise multiplier", None), ("Extra noise", None), ("Hires upscaler", "txt2img"),
    ("Cond. Image Mask Weight", "img2img"),
)
IMG2IMG_ONLY = {"Image CFG Scale", "Cond. Image Mask Weight", "Initial noise multiplier"}


def a1111_list(tab: str) -> list[str]:
    return [label for label, only in A1111_MASTER if only in (None, tab)]


def picture(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    rgb = np.stack([x / SIZE * 255, y / SIZE * 255, (x + y) / (2 * SIZE) * 255], axis=-1)
    return Image.fromarray(np.clip(rgb + rng.normal(0, 8, rgb.shape), 0, 255).astype(np.uint8))


def left_half_mask() -> Image.Image:
    mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
    mask[:, : SIZE // 2] = 255
    return Image.fromarray(mask, mode="L")


def img2img(**fields) -> Img2ImgRequest:
    return Img2ImgRequest(**{"init_images": [picture()], "width": SIZE, "height": SIZE, "steps": 3, "prompt": "a cat",
                             "seed": 7, "sampler_name": "Euler", **fields})


def labels(axes) -> list[str]:
    return [axis.label for axis in axes]


def in_order(listed: list[str], reference: list[str]) -> bool:
    """Whether the labels both lists have come in the same order."""
    return [label for label in listed if label in reference] == [label for label in reference if label in listed]


NO_MODELS = GridServices(engine=None, models=None, checkpoints=None)


@pytest.fixture(scope="module")
def xyz_script():
    """The built-in script file as a module (the extension system loads it the same way, by path)."""
    spec = importlib.util.spec_from_file_location("xyz_grid_under_test",
                                                  BUILTIN_DIR / "xyz-grid" / "scripts" / "xyz_grid.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # while it runs: its dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


# -------------------------------------------------------------------------------- axis lists


def test_each_tab_lists_its_axes_in_a1111_order():
    txt2img, img2img_axes = labels(axis_types(is_img2img=False)), labels(axis_types(is_img2img=True))
    assert set(img2img_axes) - set(txt2img) == IMG2IMG_ONLY
    assert set(txt2img) - set(img2img_axes) == {"Hires steps", "Hires sampler", "Hires upscaler"}
    assert {"Denoising", "Sampler", "CFG Scale", "Seed"} <= set(txt2img) & set(img2img_axes)
    assert in_order(txt2img, a1111_list("txt2img")) and in_order(img2img_axes, a1111_list("img2img"))
    # The list of every axis (what extensions see in axis_options) has both tabs' axes.
    assert set(labels(axis_types())) == set(txt2img) | set(img2img_axes)


def test_the_api_indices_follow_each_tabs_a1111_list(xyz_script):
    txt2img_fixed, img2img_fixed = a1111_list("txt2img"), a1111_list("img2img")
    # Fixed up to the entry before VAE, where the lists' versions start to differ.
    assert list(xyz_script.A1111_TXT2IMG_AXES) == txt2img_fixed
    assert list(xyz_script.A1111_IMG2IMG_AXES) == img2img_fixed
    label = xyz_script.axis_label
    for tab, listed in (("txt2img", txt2img_fixed), ("img2img", img2img_fixed)):
        for name in ("CFG Scale", "Denoising", "Sampler", "Eta", "Seed"):
            assert label("X", listed.index(name), tab == "img2img") == name
    assert label("X", 6, True) == "Image CFG Scale" and label("X", 6, False) == "CFG Scale"
    assert label("X", 5, False) == "Hires steps" and label("X", 5, True) == "CFG Scale"
    assert label("Y", img2img_fixed.index("Cond. Image Mask Weight"), True) == "Cond. Image Mask Weight"
    assert label("Y", img2img_fixed.index("Initial noise multiplier"), True) == "Initial noise multiplier"
    for tab, listed in (("txt2img", txt2img_fixed), ("img2img", img2img_fixed)):
        assert label("X", listed.index("Extra noise"), tab == "img2img") == "Extra noise"
    with pytest.raises(AxisValueError, match="A1111's txt2img 'Initial noise multiplier': .* is for img2img only"):
        label("X", txt2img_fixed.index("Initial noise multiplier"), False)
    with pytest.raises(AxisValueError, match="img2img axis indices .* by name"):
        label("X", len(img2img_fixed), True)
    with pytest.raises(AxisValueError, match="Z type: X/Y/Z axis 'Hires steps' is for txt2img only"):
        label("Z", "hires steps", True)
    with pytest.raises(AxisValueError, match="'Image CFG Scale' is for img2img only"):
        label("X", "Image CFG Scale", False)
    # The positional script_args read the indices in the tab's list.
    args = [6, "1, 1.5", [], 24, "0.5", []]
    x_img, y_img = xyz_script.XyzArguments.from_script_args(args, is_img2img=True).x, \
        xyz_script.XyzArguments.from_script_args(args, is_img2img=True).y
    assert (x_img.type, y_img.type) == ("Image CFG Scale", "Denoising")
    assert xyz_script.XyzArguments.from_script_args(args).x.type == "CFG Scale"


def test_the_script_shows_in_both_tabs_with_each_tabs_axes(xyz_script):
    import gradio as gr

    script = xyz_script.Script()
    assert script.show(True) is True and script.show(False) is True
    for is_img2img in (False, True):
        with gr.Blocks():
            components = script.ui(is_img2img)
        choices = [c[0] if isinstance(c, tuple) else c for c in components[0].choices]
        assert choices == labels(axis_types(is_img2img=is_img2img))


# -------------------------------------------------------------------------------- plans (no model)


def test_denoising_by_image_cfg_keeps_every_img2img_field_in_every_cell():
    images, mask = [picture(1), picture(2)], left_half_mask()
    base = img2img(init_images=images, batch_size=2, mask=mask, resize_mode=1, mask_blur_x=2, mask_blur_y=6,
                   inpainting_fill=1, inpaint_full_res=False, inpaint_full_res_padding=12, inpainting_mask_invert=1,
                   initial_noise_multiplier=0.9, inpainting_mask_weight=0.5, mask_round=False)
    plan = plan_grid(NO_MODELS, base, AxisSpec("Denoising", "0.25, 0.5"), AxisSpec("Image CFG Scale", "1, 1.5"))
    assert sorted((c.request.denoising_strength, c.request.image_cfg_scale) for c in plan.cells) == \
        sorted(itertools.product((0.25, 0.5), (1.0, 1.5)))
    changed = {"denoising_strength", "image_cfg_scale"}
    for cell in plan.cells:
        assert isinstance(cell.request, Img2ImgRequest)
        assert all(a is b for a, b in zip(cell.request.init_images, images)) and len(cell.request.init_images) == 2
        assert cell.request.mask is mask
        for name in set(Img2ImgRequest.model_fields) - changed - {"init_images", "mask"}:
            assert getattr(cell.request, name) == getattr(plan.request, name), name  # the base, seeds fixed
    assert plan.request.seed == base.seed and plan.request.init_images == base.init_images
    assert plan.x.labels == ("Denoising: 0.25", "Denoising: 0.5")
    assert plan.y.labels == ("Image CFG Scale: 1.0", "Image CFG Scale: 1.5")
    assert plan.infotext_params == {"Script": "X/Y/Z plot", "X Type": "Denoising", "X Values": "0.25, 0.5",
                                    "Y Type": "Image CFG Scale", "Y Values": "1, 1.5"}


def test_img2img_only_axes_set_their_fields():
    base = img2img(mask=left_half_mask())
    plan = plan_grid(NO_MODELS, base, AxisSpec("Cond. Image Mask Weight", "0, 0.5"),
                     AxisSpec("Initial noise multiplier", "0.8, 1.2"), AxisSpec("Sampler", "Euler, DDIM"))
    got = sorted((c.request.inpainting_mask_weight, c.request.initial_noise_multiplier, c.request.sampler_name)
                 for c in plan.cells)
    assert got == sorted(itertools.product((0.0, 0.5), (0.8, 1.2), ("Euler", "DDIM")))
    assert all(c.request.mask is base.mask and c.request.init_images == base.init_images for c in plan.cells)


@pytest.mark.parametrize("spec, message", [
    (AxisSpec("Denoising", "0.5, 1.5"), "X axis: Denoising = 1.5 is out of range: denoising_strength takes values "
                                        "from 0.0 to 1.0"),
    (AxisSpec("Image CFG Scale", "1, 3.5"), "X axis: Image CFG Scale = 3.5 is out of range: image_cfg_scale"),
    (AxisSpec("Cond. Image Mask Weight", "-0.1"), "X axis: Cond. Image Mask Weight = -0.1 is out of range"),
    (AxisSpec("Initial noise multiplier", "2"), "X axis: Initial noise multiplier = 2.0 is out of range: "
                                                "initial_noise_multiplier takes values from 0.0 to 1.5"),
    (AxisSpec("Hires steps", "5"), "X axis: X/Y/Z axis 'Hires steps' is for txt2img only; the img2img axes are"),
    (AxisSpec("Sampler", "Euler, Nope"), "X axis: Sampler: .*Nope"),
])
def test_bad_img2img_values_name_the_axis_and_the_value(spec, message):
    with pytest.raises(AxisValueError, match=message):
        plan_grid(NO_MODELS, img2img(), spec)


def test_txt2img_refuses_the_img2img_axes_and_checks_denoising_too():
    base = GenerationRequest(prompt="a cat", steps=2, width=SIZE, height=SIZE, seed=7, sampler_name="Euler")
    with pytest.raises(AxisValueError, match="'Image CFG Scale' is for img2img only; the txt2img axes are"):
        plan_grid(NO_MODELS, base, AxisSpec("Image CFG Scale", "1"))
    with pytest.raises(AxisValueError, match="Denoising = 1.5 is out of range"):
        plan_grid(NO_MODELS, base, AxisSpec("Denoising", "1.5"))
    assert [c.request.hr_second_pass_steps for c in plan_grid(NO_MODELS, base, AxisSpec("Hires steps", "3, 4")).cells] \
        == [3, 4]


def test_extension_axes_are_offered_per_tab_and_keep_the_init_images():
    extra = extension_axis_types([
        AxisOptionImg2Img("Ext mask weight", float, apply_field("inpainting_mask_weight")),
        AxisOptionTxt2Img("Ext hires steps", int, apply_field("hr_second_pass_steps")),
        AxisOption("Ext denoise", float, apply_field("denoising_strength")),
    ])
    assert {"Ext mask weight", "Ext denoise"} <= set(labels(axis_types(extra, is_img2img=True)))
    assert "Ext hires steps" not in labels(axis_types(extra, is_img2img=True))
    assert "Ext mask weight" not in labels(axis_types(extra, is_img2img=False))
    services = GridServices(engine=None, models=None, checkpoints=None, extra_axes=extra)
    base = img2img(mask=left_half_mask(), resize_mode=2)
    plan = plan_grid(services, base, AxisSpec("Ext mask weight", "0.25, 0.75"), AxisSpec("Ext denoise", "0.3"))
    assert [(c.request.inpainting_mask_weight, c.request.denoising_strength) for c in plan.cells] == \
        [(0.25, 0.3), (0.75, 0.3)]
    for cell in plan.cells:
        assert isinstance(cell.request, Img2ImgRequest) and cell.request.init_images == base.init_images
        assert cell.request.mask is base.mask and cell.request.resize_mode == 2
        assert dict(cell.p_attributes) == {}  # request fields only: nothing left over for the cell's p
    with pytest.raises(AxisValueError, match="'Ext hires steps' is for txt2img only"):
        plan_grid(services, base, AxisSpec("Ext hires steps", "3"))


# --------------------------------------------------------------------------------- grids (models)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from modules.library.checkpoints import CheckpointRegistry
    from modules.library.hashes import HashCache
    from modules.library.model_loader import LoadOptions
    from modules.library.model_manager import ModelManager
    from modules.library.synthetic_checkpoints import write_checkpoint
    from modules.serving.settings import SettingsStore

    root = tmp_path_factory.mktemp("xyz-img2img")
    folder = root / "Stable-diffusion"
    folder.mkdir()
    write_checkpoint(folder / "pix2pix.safetensors", "sd1-pix2pix", dtype=torch.float32)
    write_checkpoint(folder / "inpaint.safetensors", "sd1-inpaint", dtype=torch.float32, seed=1)
    registry = CheckpointRegistry([folder], HashCache(root / "cache.json"))
    registry.refresh()
    models = ModelManager(registry, LoadOptions())
    engine = Txt2ImgEngine(models, SettingsStore(root / "config.json"), save_dir=str(root / "data"))
    return SimpleNamespace(root=root, models=models, engine=engine,
                           services=GridServices(engine, models, registry, data_dir=root / "data"))


def cell_params(result, x, y=0):
    return parse_generation_parameters(result.cell(x, y).infotexts[0])


def test_denoising_by_image_cfg_grid_on_an_instruct_pix2pix_checkpoint(app):
    """Run through the runner (the script host's run_img2img hands it the same Img2ImgRequest):
    every cell's infotext carries its own Denoising strength and Image CFG scale, and the grid's
    infotext the plot's fields."""
    app.models.load("pix2pix")
    result = run_grid(app.services, img2img(), AxisSpec("Denoising", "0.5, 1"), AxisSpec("Image CFG Scale", "1.0, 1.5"),
                      options=GridOptions(include_lone_images=True))
    assert len(result.cells) == 4 and len(result.images) == 5
    for ix, denoising in enumerate((0.5, 1.0)):
        for iy, image_cfg in enumerate((1.0, 1.5)):
            params = cell_params(result, ix, iy)
            assert float(params["Denoising strength"]) == denoising
            assert float(params["Image CFG scale"]) == image_cfg
            assert params["X Type"] == "Denoising" and params["Y Type"] == "Image CFG Scale"
    grid = parse_generation_parameters(result.infotext)
    assert grid["X Values"] == "0.5, 1" and grid["Y Values"] == "1.0, 1.5"
    assert result.grid.width >= 2 * SIZE and result.grid.height >= 2 * SIZE  # 2x2 cells and the legend
    cells = [np.asarray(result.cell(ix, 0).images[0], dtype=np.int16) for ix in (0, 1)]
    assert np.abs(cells[0] - cells[1]).max() > 0  # the strength reached the sampler


def test_mask_weight_grid_on_an_inpainting_checkpoint_keeps_the_mask(app, tmp_path):
    """Hard mask, whole picture, masked content original: in every cell the right half (outside the
    mask) is the init image's pixels, so each cell inpainted with the base request's mask. The grid
    is saved to img2img's grid folder."""
    app.models.load("inpaint")
    base = img2img(mask=left_half_mask(), mask_blur_x=0, mask_blur_y=0, inpaint_full_res=False, inpainting_fill=1)
    result = run_grid(app.services, base, AxisSpec("Cond. Image Mask Weight", "0.25, 1"), save=True)
    original = np.asarray(picture(), dtype=np.int16)
    for ix, weight in enumerate((0.25, 1.0)):
        out = np.asarray(result.cell(ix).images[0], dtype=np.int16)
        assert np.array_equal(out[:, SIZE // 2:], original[:, SIZE // 2:])
        assert float(cell_params(result, ix)["Conditional mask weight"]) == weight
    grids = [path for path in result.saved_paths]
    assert len(grids) == 1 and "/outputs/img2img-grids/" in grids[0].replace("\\", "/")


# ---------------------------------------------------------------- through the script host and the API

ALWAYS_ON = """
from modules import scripts


class CellProbe(scripts.Script):
    def title(self):
        return "Cell probe"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def process(self, p):
        p.extra_generation_params["Cell p"] = type(p).__name__
        p.extra_generation_params["Cell init images"] = len(p.init_images or ())
        p.extra_generation_params["Cell mask"] = p.image_mask is not None
"""


def script_args(x_type, x_values, y_type="Nothing", y_values="", include_lone_images=True):
    """A1111's 18 positional X/Y/Z arguments (API order)."""
    return [x_type, x_values, [], y_type, y_values, [], "Nothing", "", [], True, include_lone_images, False, False,
            False, False, False, 0, False]


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    from modules.extension_host.extensions import ExtensionFolders, load_extensions, parser_with_preloads
    from modules.library.synthetic_checkpoints import write_checkpoint
    from modules.serving.app_context import AppContext

    data_dir = tmp_path_factory.mktemp("xyz-img2img-app")
    folder = data_dir / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    write_checkpoint(folder / "pix2pix.safetensors", "sd1-pix2pix", dtype=torch.float32)
    argv = ["--data-dir", str(data_dir), "--no-demo-checkpoint"]
    context = AppContext.from_args(parser_with_preloads(argv).parse_args(argv))
    context.refresh()
    context.models.load("pix2pix")
    (data_dir / "extensions" / "cell-probe" / "scripts").mkdir(parents=True)
    (data_dir / "extensions" / "cell-probe" / "scripts" / "cell_probe.py").write_text(ALWAYS_ON, encoding="utf-8")
    folders = ExtensionFolders(user=data_dir / "extensions", builtin=BUILTIN_DIR)
    context.extensions = load_extensions(context.settings, context.args, folders)
    context.jobs.start()
    yield context
    context.jobs.shutdown(timeout=60)


def test_the_img2img_tab_runs_the_plot_with_a1111s_img2img_indices(context):
    """run_img2img with the script_args an A1111 client sends for img2img: 24 is Denoising and 6
    Image CFG Scale in that tab's list. Every cell runs on an img2img p holding the init image and
    the mask, and its infotext carries both axis values."""
    from modules.extension_host.scripts import run_img2img

    runner = context.extensions.scripts
    assert "X/Y/Z plot" in [script.title() for script in runner.img2img_scripts]
    selection = runner.selection_from_api("x/y/z plot", script_args(24, "0.5, 1", 6, "1, 1.5"), {}, is_img2img=True)
    request = img2img(mask=left_half_mask(), inpaint_full_res=False)
    result = run_img2img(context, request, selection=selection, save=False)
    assert len(result.images) == 5  # the grid, then the 4 cells row by row
    cells = [parse_generation_parameters(text) for text in result.infotexts[1:]]
    assert [(float(c["Denoising strength"]), float(c["Image CFG scale"])) for c in cells] == \
        [(0.5, 1.0), (1.0, 1.0), (0.5, 1.5), (1.0, 1.5)]
    assert all(c["Cell p"] == "StableDiffusionProcessingImg2Img" and c["Cell init images"] == "1"
               and c["Cell mask"] == "True" for c in cells)
    grid = parse_generation_parameters(result.infotexts[0])
    assert (grid["X Type"], grid["Y Type"]) == ("Denoising", "Image CFG Scale")


def test_the_img2img_api_runs_the_plot_and_refuses_a_bad_value_by_name(context):
    import base64
    import io
    import json

    from fastapi.testclient import TestClient

    from modules.api.server import create_app

    def encoded(image):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return base64.b64encode(buffer.getvalue()).decode()

    client = TestClient(create_app(context, api=True))
    body = {"prompt": "a cat", "steps": 3, "width": SIZE, "height": SIZE, "seed": 7, "sampler_name": "Euler",
            "init_images": [encoded(picture())], "denoising_strength": 0.75, "script_name": "x/y/z plot",
            "script_args": script_args("Denoising", "0.25, 0.75")}
    response = client.post("/sdapi/v1/img2img", json=body)
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    cells = [parse_generation_parameters(text) for text in info["infotexts"][1:]]
    assert [c["Denoising strength"] for c in cells] == ["0.25", "0.75"]
    bad = client.post("/sdapi/v1/img2img", json={**body, "script_args": script_args("Denoising", "0.5, 1.5")})
    assert bad.status_code == 422 and "Denoising = 1.5 is out of range" in bad.json()["detail"]
    hires = client.post("/sdapi/v1/img2img", json={**body, "script_args": script_args("Hires steps", "3")})
    assert hires.status_code == 422 and "'Hires steps' is for txt2img only" in hires.json()["detail"]


def test_the_page_has_the_plot_in_both_tabs_with_each_tabs_axes(context):
    """A1111's ids for a script shown in both tabs carry the tab name; each tab's X type dropdown
    lists that tab's axes."""
    from modules.ui.app import build_ui

    config = build_ui(context).get_config_file()
    by_id = {c["props"]["elem_id"]: c["props"] for c in config["components"] if c.get("props", {}).get("elem_id")}
    for tab, is_img2img in (("txt2img", False), ("img2img", True)):
        choices = [c[0] if isinstance(c, (list, tuple)) else c for c in by_id[f"script_{tab}_xyz_plot_x_type"]["choices"]]
        assert choices == labels(axis_types(is_img2img=is_img2img))
        assert ("Image CFG Scale" in choices) is is_img2img and ("Hires steps" in choices) is not is_img2img
