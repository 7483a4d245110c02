"""X/Y/Z plot: A1111's value syntax, the axis registry, and grids run on tiny real-layout checkpoints
(checkpoint × CFG, merge multiplier vs saved merges, VAE, interrupt, legends and sizes)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import modules.library.model_loader
from modules.library.checkpoints import CheckpointRegistry
from modules.library.hashes import HashCache
from modules.outputs.infotext import parse_generation_parameters
from modules.merging.merger import MergeRequest, merge_checkpoints
from modules.library.model_loader import LoadOptions, load_checkpoint
from modules.library.model_manager import ModelManager
from modules.generation.engine import GenerationRequest, Txt2ImgEngine, generate
from modules.serving.settings import SettingsStore
from modules.library.synthetic_checkpoints import write_checkpoint, write_vae
from modules.library.vae_files import VaeRegistry
from modules.extension_host.xyz_grid import (
    AxisSpec,
    AxisValueError,
    GridOptions,
    GridServices,
    MergeAxisSettings,
    add_infotext_params,
    grid_layout,
    parse_axis_values,
    plan_grid,
    run_grid,
)

CELL = 64
BASE = GenerationRequest(prompt="a cat", negative_prompt="blurry", steps=2, width=CELL, height=CELL, seed=7,
                         sampler_name="Euler")


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    root = tmp_path_factory.mktemp("xyz")
    folder = root / "Stable-diffusion"
    folder.mkdir()
    for seed, name in enumerate(("a", "b")):
        write_checkpoint(folder / f"{name}.safetensors", "sd1", dtype=torch.float32, seed=seed)
    (root / "VAE").mkdir()
    write_vae(root / "VAE" / "tiny.vae.safetensors", dtype=torch.float32, seed=9)
    registry = CheckpointRegistry([folder], HashCache(root / "cache.json"))
    registry.refresh()
    vaes = VaeRegistry(folder, root / "VAE")
    vaes.refresh()
    models = ModelManager(registry, LoadOptions())
    engine = Txt2ImgEngine(models, SettingsStore(root / "config.json"))
    services = GridServices(engine, models, registry, vaes=vaes, merge_scratch_dir=root / "trials")
    models.load("a")
    return SimpleNamespace(root=root, folder=folder, registry=registry, models=models, services=services)


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def params(infotext: str) -> dict:
    return parse_generation_parameters(infotext)


# ------------------------------------------------------------------------------------------ values


@pytest.mark.parametrize("axis, text, expected", [
    ("Steps", "1-5", list(range(1, 6))),
    ("Steps", "1-10 (+2)", list(range(1, 11, 2))),
    ("Steps", "1-10 [5]", [1, 3, 5, 7, 10]),  # 1, 3.25, 5.5, 7.75, 10 truncated, as A1111's astype(int)
    ("Steps", "10-1 (-3)", [10, 7, 4, 1]),
    ("Steps", " 3, 1-2 ,20", [3, 1, 2, 20]),
    ("Seed", "-1, 5", [-1, 5]),
    ("CFG Scale", "0.2-0.8 (+0.2)", [0.2, 0.4, 0.6, 0.8]),
    ("CFG Scale", "0-1 [5]", [0.0, 0.25, 0.5, 0.75, 1.0]),
    ("CFG Scale", "7, 7.5,", [7.0, 7.5]),
    ("Prompt S/R", 'cat, "dog, big", ', ["cat", "dog, big", ""]),
    ("Size", "64x64, 128x64", ["64x64", "128x64"]),
])
def test_value_syntax(axis, text, expected):
    assert parse_axis_values(axis, text) == pytest.approx(expected)


@pytest.mark.parametrize("axis, text, named", [
    ("Steps", "1, x2", "'x2'"),
    ("Steps", "7.5", "'7.5'"),
    ("CFG Scale", "1-2 (+0)", "'1-2 (+0)'"),
    ("Steps", "1-10 (-2)", "'1-10 (-2)'"),
    ("Colour", "1", "'Colour'"),
])
def test_value_errors_name_the_bad_token(axis, text, named):
    with pytest.raises(AxisValueError, match=named.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        parse_axis_values(axis, text)


# -------------------------------------------------------------------------------- plans (no model)


def test_prompt_sr_needs_its_search_string(app):
    with pytest.raises(AxisValueError, match="Prompt S/R did not find 'dog'"):
        plan_grid(app.services, BASE, AxisSpec("Prompt S/R", "dog, bird"))
    # The hypernetwork multiplier is swept through Prompt S/R on the prompt tag.
    request = BASE.model_copy(update={"prompt": "a cat <hypernet:h:0.5>"})
    plan = plan_grid(app.services, request, AxisSpec("Prompt S/R", "0.5, 1.0"))
    assert [c.request.prompt for c in plan.cells] == ["a cat <hypernet:h:0.5>", "a cat <hypernet:h:1.0>"]


def test_bad_axis_values_fail_before_any_work(app):
    with pytest.raises(AxisValueError, match="nope"):
        plan_grid(app.services, BASE, AxisSpec("Checkpoint name", "a, nope"))
    with pytest.raises(AxisValueError, match="Y axis: Steps = 500"):
        plan_grid(app.services, BASE, AxisSpec("CFG Scale", "5"), AxisSpec("Steps", "2, 500"))
    with pytest.raises(AxisValueError, match="tertiary"):
        plan_grid(app.services, BASE, AxisSpec("Merge multiplier", "0.5", MergeAxisSettings("a", "b",
                                                                                           method="Add difference")))


def test_clip_skip_axis_sets_what_a_pasted_clip_skip_sets(app):
    """The axis goes through the infotext mapping the paste button and the API read: a per-cell
    override of `CLIP_stop_at_last_layers`, as A1111's plot sets the option, checked with the plan."""
    from modules.serving.settings import Settings
    from modules.ui.request_fields import paste_parameters

    plan = plan_grid(app.services, BASE, AxisSpec("Clip skip", "1, 2"))
    pasted = paste_parameters("x\nSteps: 2, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 64x64, Clip skip: 2",
                              Settings({})).values["override_settings"]
    assert pasted == ["Clip skip: 2"]
    assert [c.request.override_settings for c in plan.cells] == [{"CLIP_stop_at_last_layers": 1},
                                                                  {"CLIP_stop_at_last_layers": 2}]
    with pytest.raises(ValueError, match="CLIP_stop_at_last_layers"):
        plan_grid(app.services, BASE, AxisSpec("Clip skip", "1, 13"))


def test_extra_noise_axis_overrides_the_setting_per_cell(app):
    plan = plan_grid(app.services, BASE, AxisSpec("Extra noise", "0, 0.25"))
    assert [c.request.override_settings for c in plan.cells] == [{"img2img_extra_noise": 0.0},
                                                                  {"img2img_extra_noise": 0.25}]
    with pytest.raises(ValueError, match="img2img_extra_noise"):
        plan_grid(app.services, BASE, AxisSpec("Extra noise", "1.5"))


def test_seeds_fixed_once_unless_kept_and_varied(app):
    request = BASE.model_copy(update={"seed": -1})
    fixed = plan_grid(app.services, request, AxisSpec("CFG Scale", "5, 9"))
    assert len({c.request.seed for c in fixed.cells}) == 1 and fixed.cells[0].request.seed != -1
    kept = plan_grid(app.services, request, AxisSpec("CFG Scale", "5, 9"), options=GridOptions(keep_minus_one_seeds=True))
    assert [c.request.seed for c in kept.cells] == [-1, -1]
    seeds = plan_grid(app.services, BASE, AxisSpec("Seed", "-1, 5"))
    assert seeds.x.values[0] != -1 and seeds.x.values[1] == 5
    assert seeds.infotext_params["Fixed X Values"] == f"{seeds.x.values[0]}, 5"
    varied = plan_grid(app.services, BASE, AxisSpec("CFG Scale", "5, 9"), AxisSpec("Steps", "2, 3"),
                       options=GridOptions(vary_seeds_x=True, vary_seeds_y=True))
    assert {(c.ix, c.iy): c.request.seed for c in varied.cells} == {(0, 0): 7, (1, 0): 8, (0, 1): 9, (1, 1): 10}


def test_costly_axes_run_outermost(app):
    plan = plan_grid(app.services, BASE, AxisSpec("Checkpoint name", "a, b"), AxisSpec("CFG Scale", "5, 9"))
    assert [(c.ix, c.iy) for c in plan.cells] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    plain = plan_grid(app.services, BASE, AxisSpec("CFG Scale", "5, 9"), AxisSpec("Steps", "2, 3"))
    assert [(c.ix, c.iy) for c in plain.cells] == [(0, 0), (1, 0), (0, 1), (1, 1)]  # Y outer, as A1111


def test_infotext_fields_go_before_version():
    text = "a cat\nSteps: 2, Sampler: Euler, CFG scale: 5.0, Version: v1"
    out = add_infotext_params(text, {"Script": "X/Y/Z plot", "X Values": "5, 9"})
    assert out == 'a cat\nSteps: 2, Sampler: Euler, CFG scale: 5.0, Script: X/Y/Z plot, X Values: "5, 9", Version: v1'


# --------------------------------------------------------------------------------- grids (models)


def test_two_checkpoints_by_two_cfg(app, monkeypatch):
    loads = []
    real = modules.library.model_loader.load_checkpoint
    monkeypatch.setattr(modules.library.model_loader, "load_checkpoint",
                        lambda path, *a, **k: loads.append(path.name) or real(path, *a, **k))
    result = run_grid(app.services, BASE, AxisSpec("Checkpoint name", "a, b"), AxisSpec("CFG Scale", "5, 9"))
    assert len(result.cells) == 4 and not result.interrupted
    for cell in result.cells:
        info = params(cell.infotexts[0])
        assert info["Model"] == "ab"[cell.ix] and info["CFG scale"] == ["5.0", "9.0"][cell.iy]
        assert info["Seed"] == "7" and info["Script"] == "X/Y/Z plot"
        assert (info["X Type"], info["X Values"], info["Y Type"], info["Y Values"]) == (
            "Checkpoint name", "a, b", "CFG Scale", "5, 9")
    # b loaded once (checkpoint axis outermost), then a again: the previous checkpoint is restored.
    assert loads == ["b.safetensors", "a.safetensors"] and app.models.current_info().name == "a.safetensors"
    assert not np.array_equal(pixels(result.cell(0, 0).image), pixels(result.cell(1, 0).image))
    # Legend margins: row labels take 3/4 of a cell on the left, column labels a band on top.
    layout = grid_layout(2, 2, (CELL, CELL), ["a", "b"], ["CFG Scale: 5.0", "CFG Scale: 9.0"])
    assert layout.pad_left == CELL * 3 // 4 and layout.pad_top > 0
    assert result.grid.size == (layout.pad_left + 2 * CELL, layout.pad_top + 2 * CELL)
    top_left = layout.cell_origin(0, 0)
    assert np.array_equal(pixels(result.grid.crop((*top_left, top_left[0] + CELL, top_left[1] + CELL))),
                          pixels(result.cell(0, 0).image))
    assert result.images == [result.grid] and result.infotext == result.cell(0, 0).infotexts[0]


def test_merge_multiplier_equals_saved_merges(app, tmp_path):
    before = sorted(p.name for p in app.folder.iterdir())
    settings = MergeAxisSettings("a", "b", method="Weighted sum")
    result = run_grid(app.services, BASE, AxisSpec("Merge multiplier", "0.3, 0.7", settings))
    assert sorted(p.name for p in app.folder.iterdir()) == before  # nothing saved among the checkpoints
    assert not list((app.root / "trials").iterdir())  # trials deleted after the grid
    assert app.models.current_info().name == "a.safetensors"
    for cell, ratio in zip(sorted(result.cells, key=lambda c: c.ix), (0.3, 0.7)):
        saved = merge_checkpoints(MergeRequest(primary_model_name="a", secondary_model_name="b", multiplier=ratio),
                                  app.registry, tmp_path, register=False)
        expected = generate(load_checkpoint(saved.path), cell.request).images[0]
        assert np.array_equal(pixels(cell.image), pixels(expected)), ratio
        info = params(cell.infotexts[0])
        assert info["Model"] == saved.path.stem and info["X Merge"] == "Weighted sum: a, b"


def test_vae_axis_applies_per_cell_and_restores(app):
    result = run_grid(app.services, BASE, AxisSpec("VAE", ["None", "tiny.vae.safetensors"]))
    first, second = sorted(result.cells, key=lambda c: c.ix)
    assert "VAE" not in params(first.infotexts[0]) and params(second.infotexts[0])["VAE"] == "tiny.vae.safetensors"
    assert params(second.infotexts[0])["X Values"] == "None,tiny.vae.safetensors"
    assert not np.array_equal(pixels(first.image), pixels(second.image))
    assert app.models.current().vae_file is None  # the settings' choice (the built-in VAE) is back


class InterruptAfter:
    """A JobControl stand-in: records progress, interrupts once `cells` cells are finished."""

    def __init__(self, cells: int):
        self.cells, self.done, self.interrupted, self.reports = cells, 0, False, []

    def on_cell(self, cell) -> None:
        self.done += 1
        self.interrupted = self.done >= self.cells

    def report(self, step, total, preview_factory=None):
        self.reports.append((step, total))

    def consume_skip(self):
        return False

    def add_info(self, line):
        pass

    def check(self):
        pass


def test_interrupt_keeps_finished_cells_and_z_grids(app):
    control = InterruptAfter(3)
    options = GridOptions(draw_legend=False, margin_size=4, include_sub_grids=True)
    result = run_grid(app.services, BASE, AxisSpec("CFG Scale", "3, 5"), AxisSpec(), AxisSpec("Steps", "2, 3"),
                      options, control, on_cell=control.on_cell)
    assert result.interrupted and len(result.cells) == 3
    assert [(c.ix, c.iz) for c in result.cells] == [(0, 0), (1, 0), (0, 1)]
    # Progress over all cells: 2+2+3+3 steps, reported in order, stopping after the third cell.
    assert {total for _, total in control.reports} == {10}
    steps = [step for step, _ in control.reports]
    assert steps == sorted(steps) and steps[-1] == 7
    # One grid per Z value (cells x cell size + margins), side by side in the grid of grids.
    assert [g.size for g in result.sub_grids] == [(2 * CELL + 4, CELL)] * 2
    assert result.grid.size == (2 * (2 * CELL + 4) + 4, CELL)
    missing = result.sub_grids[1].crop((CELL + 4, 0, 2 * CELL + 4, CELL))
    assert not np.asarray(missing).any()  # the unfinished cell is left black
    assert result.images == [result.grid, *result.sub_grids]


def test_saving_writes_cells_and_an_xyz_grid(app, tmp_path):
    engine = Txt2ImgEngine(app.models, SettingsStore(tmp_path / "config.json"), save_dir=str(tmp_path))
    result = run_grid(engine, BASE, AxisSpec("CFG Scale", "5, 9"), save=True)
    saved = [p for p in tmp_path.rglob("*.png")]
    assert sorted(p.parent.parent.name for p in saved) == ["txt2img-grids", "txt2img-images", "txt2img-images"]
    grid_file = next(p for p in saved if p.parent.parent.name == "txt2img-grids")
    assert grid_file.name == "xyz_grid-0000-7.png" and result.saved_paths == [str(grid_file)]
    assert params(Image.open(grid_file).info["parameters"])["X Values"] == "5, 9"
