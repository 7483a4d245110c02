"""Extensions add X/Y/Z axes the A1111 way: find the X/Y/Z script's module in `scripts.scripts_data`
(by A1111's module name "xyz_grid.py") and append `AxisOption`s to its `axis_options` in
`on_before_ui`. The axis shows in the type dropdowns, is accepted by name in the API's script_args,
and its `apply(p, x, xs)` reaches the cell's `p`, where an always-on script reads it."""

from __future__ import annotations

import pytest
import torch

from modules.extension_host.environment import app_scope
from modules.extension_host.extensions import BUILTIN_DIR, ExtensionFolders, load_extensions, parser_with_preloads
from modules.extension_host.scripts import run_txt2img
from modules.generation.engine import GenerationRequest
from modules.outputs.infotext import parse_generation_parameters
from tests.test_xyz_script import script_args

BASE = GenerationRequest(prompt="a cat", steps=2, width=64, height=64, seed=5, sampler_name="Euler")

AXIS_EXTENSION = """
from modules import scripts, script_callbacks

ADDED = []


def add_axes():
    xyz = [x for x in scripts.scripts_data if x.script_class.__module__ == "xyz_grid.py"][0].module
    axes = [
        xyz.AxisOption("Example multiplier", float, xyz.apply_field("example_multiplier"),
                       format_value=xyz.format_value_add_label),
        xyz.AxisOptionTxt2Img("Example steps", int, xyz.apply_field("steps"), format_value=xyz.format_value),
        xyz.AxisOption("Example mood", str, xyz.apply_field("example_mood"), choices=lambda: ["calm", "wild"],
                       confirm=confirm_mood),
        xyz.AxisOptionImg2Img("Example img2img only", int, xyz.apply_field("example_ignored")),
        xyz.AxisOption("Example clip skip", int, xyz.apply_override("CLIP_stop_at_last_layers")),
        xyz.AxisOption("Example broken", int, broken_apply, format_value=broken_format),
    ]
    xyz.axis_options.extend(axes)
    ADDED.append(len(xyz.axis_options))


def broken_apply(p, x, xs):
    raise SystemExit(f"cannot use {x}")


def broken_format(p, opt, x):
    raise KeyError(x)


def confirm_mood(p, xs):
    for x in xs:
        if x not in ("calm", "wild"):
            raise RuntimeError(f"unknown mood {x}")


script_callbacks.on_before_ui(add_axes)


class Multiplier(scripts.Script):
    def title(self):
        return "Example multiplier"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def process(self, p):
        for name, key in (("example_multiplier", "Example multiplier"), ("example_mood", "Example mood")):
            value = getattr(p, name, None)
            if value is not None:
                p.extra_generation_params[key] = value
"""


def make_context(data_dir):
    from modules.library.synthetic_checkpoints import write_checkpoint
    from modules.serving.app_context import AppContext

    folder = data_dir / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    write_checkpoint(folder / "a.safetensors", "sd1", dtype=torch.float32)
    argv = ["--data-dir", str(data_dir), "--no-demo-checkpoint"]
    context = AppContext.from_args(parser_with_preloads(argv).parse_args(argv))
    context.refresh()
    context.models.load("a")
    (data_dir / "extensions" / "axis-sample" / "scripts").mkdir(parents=True)
    (data_dir / "extensions" / "axis-sample" / "scripts" / "axis_sample.py").write_text(AXIS_EXTENSION,
                                                                                     encoding="utf-8")
    folders = ExtensionFolders(user=data_dir / "extensions", builtin=BUILTIN_DIR)
    context.extensions = load_extensions(context.settings, context.args, folders)
    context.extensions.scripts.bind_app(context)
    with app_scope(context):
        context.extensions.callbacks.before_ui()
    return context


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    return make_context(tmp_path_factory.mktemp("xyz-axes"))


def xyz_module(context):
    from modules import scripts

    with app_scope(context):
        return [x for x in scripts.scripts_data if x.script_class.__module__ == "xyz_grid.py"][0].module


def run(context, args):
    selection = context.extensions.scripts.selection_from_api("x/y/z plot", args, {})
    with app_scope(context):
        return run_txt2img(context, BASE, selection=selection, save=False)


def test_scripts_data_lists_the_loaded_scripts_of_the_running_app(context):
    from modules import scripts

    with app_scope(context):
        data = scripts.scripts_data
    assert "Multiplier" in [entry.script_class.__name__ for entry in data]
    entry = next(entry for entry in data if entry.script_class.__name__ == "Multiplier")
    assert entry.path.endswith("axis_sample.py") and entry.basedir.endswith("axis-sample")
    assert entry.module.ADDED  # the extension's own module, after on_before_ui ran
    with pytest.raises(RuntimeError, match="outside a running Atelier app"):
        scripts.scripts_data  # noqa: B018 - no app in scope


def test_appended_axes_show_in_the_dropdowns_txt2img_only(context):
    import gradio as gr

    script = context.extensions.scripts.find("X/Y/Z plot")
    with gr.Blocks():
        components = script.ui(False)
    labels = [choice[0] if isinstance(choice, tuple) else choice for choice in components[0].choices]
    assert labels[-5:] == ["Example multiplier", "Example steps", "Example mood", "Example clip skip",
                           "Example broken"]
    assert "Example img2img only" not in labels
    assert script._choices("Example mood") == ["calm", "wild"]


def test_each_app_has_its_own_axis_options(context, tmp_path):
    other = make_context(tmp_path)
    assert xyz_module(other) is not xyz_module(context)
    assert xyz_module(other).axis_options is not xyz_module(context).axis_options
    labels = [option.label for option in xyz_module(context).axis_options]
    assert labels.count("Example multiplier") == 1


def test_an_extension_axis_runs_in_the_grid_by_name(context):
    result = run(context, script_args("Example multiplier", "0.5, 2", "Example steps", "1, 3",
                                      include_lone_images=True))
    assert len(result.images) == 5  # the grid and 4 cells
    cells = [parse_generation_parameters(text) for text in result.infotexts[1:]]
    got = sorted((c["Example multiplier"], c["Steps"]) for c in cells)
    assert got == [("0.5", "1"), ("0.5", "3"), ("2.0", "1"), ("2.0", "3")]
    grid = parse_generation_parameters(result.infotexts[0])
    assert grid["X Type"] == "Example multiplier" and grid["Y Type"] == "Example steps"


def test_choices_and_confirm_of_an_extension_axis(context):
    args = script_args("Example mood", "", include_lone_images=True)
    args[2] = ["wild", "calm"]  # the values dropdown
    result = run(context, args)
    assert sorted(parse_generation_parameters(t)["Example mood"] for t in result.infotexts[1:]) == ["calm", "wild"]
    with pytest.raises(ValueError, match="unknown mood angry"):
        run(context, script_args("Example mood", "calm, angry"))
    with pytest.raises(ValueError, match="Example multiplier: 'lots' is not a number"):
        run(context, script_args("Example multiplier", "lots"))


def test_an_override_from_an_extension_axis_is_checked_and_applied(context):
    with pytest.raises(ValueError, match="Example clip skip = 13 gives a request that cannot run"):
        run(context, script_args("Example clip skip", "1, 13"))
    result = run(context, script_args("Example clip skip", "1, 2", include_lone_images=True))
    assert sorted(parse_generation_parameters(t).get("Clip skip", "1") for t in result.infotexts[1:]) == ["1", "2"]


def test_an_extension_axis_that_fails_is_a_request_error(context):
    """apply() that even calls sys.exit fails the grid before any image, naming the axis; a legend
    formatter that raises falls back to "label: value"."""
    with pytest.raises(ValueError, match="Example broken = 3 gives a request that cannot run: SystemExit: cannot use 3"):
        run(context, script_args("Example broken", "3"))
