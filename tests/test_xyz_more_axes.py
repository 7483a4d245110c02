"""A1111's X/Y/Z axes added for issue 22 (item 11): Prompt order, Hires sampler, Styles and RNG source, with
A1111's names, value formats and list order, each run as a real grid on a tiny checkpoint whose
cells' infotexts show the value; and the built-in script reading them by A1111's index or name."""

from __future__ import annotations

import importlib.util
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from modules.extension_host.extensions import BUILTIN_DIR
from modules.extension_host.xyz_grid import (
    AxisSpec,
    AxisValueError,
    GridOptions,
    GridServices,
    axis_types,
    parse_axis_values,
    plan_grid,
    run_grid,
)
from modules.generation.engine import GenerationRequest, Txt2ImgEngine, generate
from modules.generation.styles import StyleDatabase
from modules.library.checkpoints import CheckpointRegistry
from modules.library.hashes import HashCache
from modules.library.model_loader import LoadOptions
from modules.library.model_manager import ModelManager
from modules.library.synthetic_checkpoints import write_checkpoint
from modules.outputs.infotext import parse_generation_parameters
from modules.serving.settings import SettingsStore

CELL = 64
BASE = GenerationRequest(prompt="a cat, a dog, in a garden", negative_prompt="blurry", steps=2, width=CELL,
                         height=CELL, seed=7, sampler_name="Euler")
STYLES_CSV = 'name,prompt,negative_prompt\nwarm,"{prompt}, warm light",cold\nnoir,black and white,colour\n'

# A1111's axis list after "Cond. Image Mask Weight" (its xyz_grid.py, 1.10): where the fixed indices
# end and the names take over. Atelier's list keeps the ones it has in this order.
A1111_TAIL = ("VAE", "Styles", "UniPC Order", "Face restore", "Token merging ratio", "Token merging ratio high-res",
              "Always discard next-to-last sigma", "SGM noise multiplier", "Refiner checkpoint", "Refiner switch at",
              "RNG source", "FP8 mode", "Size")


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    root = tmp_path_factory.mktemp("xyz-more")
    folder = root / "Stable-diffusion"
    folder.mkdir()
    write_checkpoint(folder / "a.safetensors", "sd1", dtype=torch.float32, seed=0)
    registry = CheckpointRegistry([folder], HashCache(root / "cache.json"))
    registry.refresh()
    models = ModelManager(registry, LoadOptions())
    engine = Txt2ImgEngine(models, SettingsStore(root / "config.json"))
    (root / "styles.csv").write_text(STYLES_CSV, encoding="utf-8")
    styles = StyleDatabase(root / "styles.csv")
    models.load("a")
    return SimpleNamespace(services=GridServices(engine, models, registry, styles=styles), root=root)


def cell_params(result, ix: int, iy: int = 0) -> dict:
    return parse_generation_parameters(result.cell(ix, iy).infotexts[0])


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


# ------------------------------------------------------------------------------------------ lists


def test_new_axes_sit_where_a1111_lists_them():
    for is_img2img in (False, True):
        listed = [axis.label for axis in axis_types(is_img2img=is_img2img)]
        assert listed.index("Prompt S/R") + 1 == listed.index("Prompt order")
        assert {"Prompt order", "Styles", "RNG source"} <= set(listed)
        # Hires sampler: txt2img's, right after its Sampler (A1111's AxisOptionTxt2Img).
        assert ("Hires sampler" in listed) is not is_img2img
        if not is_img2img:
            assert listed.index("Sampler") + 1 == listed.index("Hires sampler")
        tail = [label for label in listed if label in A1111_TAIL]
        assert tail == [label for label in A1111_TAIL if label in tail] == ["VAE", "Styles", "RNG source", "Size"]


def test_prompt_order_values_are_every_ordering():
    # A1111's str_permutations: the items' permutations, in itertools order, the typed order first.
    assert parse_axis_values("Prompt order", "a cat, a dog, a bird") == [
        ("a cat", "a dog", "a bird"), ("a cat", "a bird", "a dog"), ("a dog", "a cat", "a bird"),
        ("a dog", "a bird", "a cat"), ("a bird", "a cat", "a dog"), ("a bird", "a dog", "a cat")]
    with pytest.raises(AxisValueError, match="9 items"):
        parse_axis_values("Prompt order", ", ".join(str(i) for i in range(9)))


# ------------------------------------------------------------------------------------------ plans


def test_bad_values_fail_before_any_work_naming_them(app):
    with pytest.raises(AxisValueError, match="Prompt order: 'a horse' is not in the prompt"):
        plan_grid(app.services, BASE, AxisSpec("Prompt order", "a cat, a horse"))
    overlapping = BASE.model_copy(update={"prompt": "a black cat, in a garden"})
    with pytest.raises(AxisValueError, match="Prompt order: 'black' and 'black cat' overlap"):
        plan_grid(app.services, overlapping, AxisSpec("Prompt order", "black cat, black"))
    with pytest.raises(AxisValueError, match="Prompt order: 'cat' and 'cat' overlap"):
        plan_grid(app.services, overlapping, AxisSpec("Prompt order", "cat, cat"))
    with pytest.raises(AxisValueError, match="Styles: .*'sepia'.*'warm'"):
        plan_grid(app.services, BASE, AxisSpec("Styles", ["warm", "sepia"]))
    with pytest.raises(AxisValueError, match="RNG source: 'cpu' .* GPU, CPU, NV"):
        plan_grid(app.services, BASE, AxisSpec("RNG source", "CPU, cpu"))
    bare = GridServices(app.services.engine, app.services.models, app.services.checkpoints)
    with pytest.raises(AxisValueError, match="Styles: this grid runs without the style list"):
        plan_grid(bare, BASE, AxisSpec("Styles", "warm"))


def test_styles_choices_are_the_style_names(app):
    from modules.extension_host.xyz_grid import find_axis

    assert find_axis("Styles").choices(app.services) == ["warm", "noir"]
    assert find_axis("RNG source").choices(app.services) == ["GPU", "CPU", "NV"]


# ---------------------------------------------------------------------------- grids (real model)


def test_prompt_order_grid_reorders_the_prompt_in_each_cell(app):
    result = run_grid(app.services, BASE, AxisSpec("Prompt order", "a cat, a dog"))
    assert len(result.cells) == 2
    first, second = cell_params(result, 0), cell_params(result, 1)
    assert first["Prompt"] == "a cat, a dog, in a garden" and second["Prompt"] == "a dog, a cat, in a garden"
    assert first["Negative prompt"] == second["Negative prompt"] == "blurry"  # A1111 reorders the prompt only
    assert first["X Type"] == "Prompt order" and first["X Values"] == "a cat, a dog"
    assert not np.array_equal(pixels(result.cell(0, 0).image), pixels(result.cell(1, 0).image))


def test_prompt_order_keeps_the_text_between_the_items(app):
    request = BASE.model_copy(update={"prompt": "photo of a cat and a dog near a bird, 4k"})
    plan = plan_grid(app.services, request, AxisSpec("Prompt order", "a bird, a cat, a dog"))
    prompts = {c.request.prompt for c in plan.cells}
    assert "photo of a dog and a bird near a cat, 4k" in prompts and len(prompts) == 6
    assert plan.x.labels[0] == "a bird, a cat, a dog"  # A1111's format_value_join_list


def test_styles_grid_adds_each_style_to_the_prompts(app):
    result = run_grid(app.services, BASE.model_copy(update={"prompt": "a cat"}), AxisSpec("Styles", ["warm", "noir"]))
    warm, noir = cell_params(result, 0), cell_params(result, 1)
    # "{prompt}" in a style is replaced by the prompt; a style without it is appended after ", ".
    assert (warm["Prompt"], warm["Negative prompt"]) == ("a cat, warm light", "blurry, cold")
    assert (noir["Prompt"], noir["Negative prompt"]) == ("a cat, black and white", "blurry, colour")
    assert warm["X Values"] == "warm,noir"  # dropdown values recorded as CSV, as A1111's list_to_csv_string
    assert [cell.request.styles for cell in sorted(result.cells, key=lambda c: c.ix)] == [("warm",), ("noir",)]
    # One value may name several styles (A1111 splits it at commas), applied after the request's own.
    (cell,) = plan_grid(app.services, BASE.model_copy(update={"prompt": "a cat", "styles": ("noir",)}),
                        AxisSpec("Styles", '"warm,noir"')).cells
    assert cell.request.styles == ("noir", "warm", "noir")
    assert cell.request.prompt == "a cat, warm light, black and white"
    assert result.cell(0, 0).image is not None


def test_rng_source_grid_overrides_the_noise_source_per_cell(app):
    result = run_grid(app.services, BASE, AxisSpec("RNG source", "GPU, CPU, NV"),
                      options=GridOptions(include_lone_images=True))
    gpu, cpu, nv = (cell_params(result, ix) for ix in range(3))
    assert (gpu["RNG"], cpu["RNG"], nv["RNG"]) == ("GPU", "CPU", "NV")
    assert "RNG:" not in result.cell(0, 0).infotexts[0]  # GPU is A1111's default, not written
    assert gpu["X Type"] == "RNG source" and gpu["X Values"] == "GPU, CPU, NV"
    # NV is the Philox generator: other noise than torch's for the same seed.
    assert not np.array_equal(pixels(result.cell(0, 0).image), pixels(result.cell(2, 0).image))
    assert app.services.engine.settings.current()["randn_source"] == "GPU"  # a per-cell override only


def test_hires_sampler_grid_samples_the_hires_pass_with_each_sampler(app):
    request = BASE.model_copy(update={"enable_hr": True, "hr_scale": 1.5, "hr_second_pass_steps": 2,
                                      "denoising_strength": 0.6})
    result = run_grid(app.services, request, AxisSpec("Hires sampler", ["Euler", "Euler a", "DDIM"]))
    same, ancestral, ddim = (cell_params(result, ix) for ix in range(3))
    # A1111 records the hires sampler only where it differs from the first pass's.
    assert "Hires sampler:" not in result.cell(0, 0).infotexts[0]
    assert (ancestral["Hires sampler"], ddim["Hires sampler"]) == ("Euler a", "DDIM")
    assert same["X Type"] == "Hires sampler" and all(p["Sampler"] == "Euler" for p in (same, ancestral, ddim))
    images = [pixels(result.cell(ix, 0).image) for ix in range(3)]
    assert all(image.shape == (96, 96, 3) for image in images)
    # The first pass's own sampler as the hires sampler is the plain hires fix, pixel for pixel.
    assert np.array_equal(images[0], pixels(generate(app.services.models.current(), request).images[0]))
    assert not np.array_equal(images[0], images[1]) and not np.array_equal(images[0], images[2])
    with pytest.raises(AxisValueError, match="Hires sampler: .*Eulr"):
        plan_grid(app.services, request, AxisSpec("Hires sampler", "Eulr"))
    with pytest.raises(AxisValueError, match="'Hires sampler' is for txt2img only"):
        from modules.extension_host.xyz_grid import find_axis

        find_axis("Hires sampler", is_img2img=True)


def test_a_hires_sampler_infotext_pastes_back(app):
    from modules.generation.infotext_fields import read_infotext

    request = BASE.model_copy(update={"enable_hr": True, "hr_scale": 1.5, "hr_sampler_name": "Euler a"})
    infotext = generate(app.services.models.current(), request).infotexts[0]
    reading = read_infotext(infotext, app.services.engine.settings.current())
    assert reading.values["hr_sampler_name"] == "Euler a" and not reading.problems
    plain_request = request.model_copy(update={"hr_sampler_name": None})
    plain = read_infotext(generate(app.services.models.current(), plain_request).infotexts[0],
                          app.services.engine.settings.current())
    assert "hr_sampler_name" not in plain.values  # "Use same sampler": the first pass's
    assert GenerationRequest(hr_sampler_name="Use same sampler").hr_sampler_name is None


# ------------------------------------------------------------------------------- the script (API)


@pytest.fixture(scope="module")
def xyz_script():
    spec = importlib.util.spec_from_file_location("xyz_grid_more_axes", BUILTIN_DIR / "xyz-grid" / "scripts" /
                                                  "xyz_grid.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


def test_the_script_reads_the_new_axes_by_a1111_index_and_name(xyz_script):
    # A1111's txt2img index 8 and img2img index 8 are Prompt order, txt2img's 10 Hires sampler (img2img's
    # 10 is Checkpoint name); the later axes go by name.
    assert xyz_script.axis_label("X", 8, False) == "Prompt order" == xyz_script.axis_label("X", 8, True)
    assert xyz_script.axis_label("X", 10, False) == "Hires sampler"
    assert xyz_script.axis_label("X", 10, True) == "Checkpoint name"
    assert xyz_script.axis_label("Y", "styles", False) == "Styles"
    assert xyz_script.axis_label("Z", "RNG Source", True) == "RNG source"
    args = xyz_script.XyzArguments.from_script_args([8, "a cat, a dog", [], "Styles", "", ["warm"],
                                                     "RNG source", "", ["CPU", "NV"]])
    assert (args.x.type, args.y.type, args.z.type) == ("Prompt order", "Styles", "RNG source")
    assert (args.x.values, args.y.values, args.z.values) == ("a cat, a dog", ["warm"], ["CPU", "NV"])
    assert xyz_script.str_permutations("x") == "x"  # A1111's name, for extensions' axes
