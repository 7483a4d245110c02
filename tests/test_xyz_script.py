"""The built-in "X/Y/Z plot" script (extensions-builtin/xyz-grid), loaded through the extension
system beside an always-on script, and run as A1111's API sends it: script_name + positional
script_args, types by name or by A1111 index, on a tiny-model AppContext."""

from __future__ import annotations

import pytest
import torch

from modules.extension_host.extensions import BUILTIN_DIR, ExtensionFolders, load_extensions, parser_with_preloads
from modules.outputs.infotext import parse_generation_parameters
from modules.generation.engine import GenerationRequest
from modules.extension_host.scripts import ScriptArgumentError, run_txt2img

TITLE = "X/Y/Z plot"
BASE = GenerationRequest(prompt="a cat", negative_prompt="blurry", steps=2, width=64, height=64, seed=5,
                         sampler_name="Euler")


ALWAYS_ON = """
from modules import scripts


class PerCell(scripts.Script):
    def title(self):
        return "Per cell"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def setup(self, p):
        p.per_cell_marker = "from setup"  # A1111 runs each cell on copy(p): this reaches every cell

    def process(self, p):
        p.extra_generation_params["Per cell"] = p.cfg_scale
        p.extra_generation_params["Marker"] = p.per_cell_marker
"""


def script_args(x_type, x_values, y_type="Nothing", y_values="", **options):
    """A1111's 18 positional arguments (API order), with the given axes."""
    args = [x_type, x_values, [], y_type, y_values, [], "Nothing", "", [], True, False, False, False, False, False,
            False, 0, False]
    names = ("draw_legend", "include_lone_images", "include_sub_grids", "no_fixed_seeds")
    for name, value in options.items():
        args[9 + names.index(name)] = value
    return args


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    from modules.serving.app_context import AppContext
    from modules.library.synthetic_checkpoints import write_checkpoint

    data_dir = tmp_path_factory.mktemp("xyz-script")
    folder = data_dir / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    for seed, name in enumerate(("a", "b")):
        write_checkpoint(folder / f"{name}.safetensors", "sd1", dtype=torch.float32, seed=seed)
    argv = ["--data-dir", str(data_dir), "--no-demo-checkpoint"]
    context = AppContext.from_args(parser_with_preloads(argv).parse_args(argv))
    context.refresh()
    context.models.load("a")
    (data_dir / "extensions" / "per-cell" / "scripts").mkdir(parents=True)
    (data_dir / "extensions" / "per-cell" / "scripts" / "per_cell.py").write_text(ALWAYS_ON, encoding="utf-8")
    folders = ExtensionFolders(user=data_dir / "extensions", builtin=BUILTIN_DIR)
    context.extensions = load_extensions(context.settings, context.args, folders)
    context.jobs.start()
    yield context
    context.jobs.shutdown(timeout=60)


def run(context, args, request=BASE):
    selection = context.extensions.scripts.selection_from_api("x/y/z plot", args, {})
    return run_txt2img(context, request, selection=selection, save=False)


def check_checkpoints_by_cfg(result):
    assert len(result.images) == 5  # 1 grid + 4 cells, A1111's order
    grid, cells = result.images[0], result.images[1:]
    assert all(image.size == (64, 64) for image in cells) and grid.width > 128 and grid.height > 128
    params = [parse_generation_parameters(text) for text in result.infotexts]
    assert all(p["Script"] == TITLE and p["X Type"] == "Checkpoint name" and p["Y Type"] == "CFG Scale"
               for p in params)
    # Cells row by row: y (CFG) outer, x (checkpoint) inner.
    assert [(p["Model"], p["CFG scale"]) for p in params[1:]] == [("a", "5.0"), ("b", "5.0"), ("a", "9.0"),
                                                                  ("b", "9.0")]
    assert [p["Per cell"] for p in params[1:]] == ["5.0", "5.0", "9.0", "9.0"]  # always-on scripts run per cell
    assert all(p["Marker"] == "from setup" for p in params[1:])
    assert params[0]["Model"] == params[1]["Model"]  # the grid's infotext is the first cell's
    assert len({p["Seed"] for p in params}) == 1  # the seed is fixed once for the whole grid


def test_the_builtin_is_a_selectable_script_with_a_ui(context):
    import gradio as gr

    runner = context.extensions.scripts
    assert "xyz-grid" in [ext.name for ext in context.extensions.active()]
    assert TITLE in [script.title() for script in runner.selectable]
    assert TITLE not in [script.title() for script in runner.alwayson]
    script = runner.find(TITLE)
    runner.bind_app(context)
    with gr.Blocks():
        components = script.ui(False)
    assert len(components) == 22
    defaults = [getattr(c, "value", None) for c in components]
    assert defaults[0] == "Seed" and defaults[3] == defaults[6] == "Nothing"
    assert defaults[9:18] == [True, False, False, False, False, False, False, 0, False]
    assert [title.split(" [")[0] for title in script._choices("Checkpoint name")] == ["a.safetensors",
                                                                                     "b.safetensors"]
    assert script._choices("CFG Scale") is None  # a number axis: the textbox
    title_a = script._choices("Checkpoint name")[0]
    fill, text, dropdown = script.select_axis("Checkpoint name", f"{title_a}, nope", [], False)
    assert fill["visible"] and not text["visible"] and dropdown["value"] == [title_a]
    fill, text, dropdown = script.select_axis("Checkpoint name", "", [title_a], True)  # text inputs instead
    assert text["visible"] and text["value"] == title_a and not dropdown["visible"]
    assert not script.select_axis("Steps", "1-3", [], False)[0]["visible"]


def test_checkpoints_by_cfg_with_type_names(context):
    result = run(context, script_args("Checkpoint name", "a, b", "CFG Scale", "5, 9", include_lone_images=True))
    check_checkpoints_by_cfg(result)
    assert context.models.current_info().name_for_extra == "a"  # the model from before the grid is current again


def test_checkpoints_by_cfg_with_a1111_indices(context):
    result = run(context, script_args(11, "a, b", 6, "5, 9", include_lone_images=True))
    check_checkpoints_by_cfg(result)


def test_without_sub_images_only_the_grid_comes_back(context):
    result = run(context, script_args("CFG Scale", "5, 9"))
    assert len(result.images) == 1
    assert parse_generation_parameters(result.infotexts[0])["X Values"] == "5, 9"


def test_bad_arguments_are_request_errors_that_name_the_value(context):
    with pytest.raises(ScriptArgumentError, match="Prompt S/R did not find 'dog'"):
        run(context, script_args("Prompt S/R", "dog, bird"))
    with pytest.raises(ScriptArgumentError, match="Prompt order: 'horse' is not in the prompt"):
        run(context, script_args(8, "horse, cat"))  # A1111's index of Prompt order
    with pytest.raises(ScriptArgumentError, match="'Negative Guidance minimum sigma'"):
        run(context, script_args(12, "0.5"))  # an A1111 axis Atelier lacks
    with pytest.raises(ScriptArgumentError, match="by name"):
        run(context, script_args(29, "x"))  # past the indices A1111.md fixes
    with pytest.raises(ScriptArgumentError, match="Did you mean 'CFG Scale'"):
        run(context, script_args("CFG scal", "5"))


def test_merge_multiplier_by_name_with_trailing_settings(context):
    args = script_args("Merge multiplier", "0, 1") + ["Weighted sum", "a", "b", None]
    result = run(context, args)
    params = parse_generation_parameters(result.infotexts[0])
    assert params["X Type"] == "Merge multiplier" and params["X Merge"].startswith("Weighted sum: a, b")
    assert len(result.images) == 1 and context.models.current_info().name_for_extra == "a"
    with pytest.raises(ScriptArgumentError, match="Merge multiplier: choose the merge method"):
        run(context, script_args("Merge multiplier", "0.5"))


def test_through_the_http_api(context):
    """POST /sdapi/v1/txt2img with A1111's script fields: the script's grid comes first (no second
    grid from the API), `index_of_first_image` says so, bad script input is a 422."""
    import base64
    import io
    import json

    from fastapi.testclient import TestClient
    from PIL import Image

    from modules.api.server import create_app

    client = TestClient(create_app(context, api=True))
    body = {"prompt": "a cat", "steps": 2, "width": 64, "height": 64, "seed": 5, "sampler_name": "Euler",
            "save_images": True, "script_name": "x/y/z plot",
            "script_args": script_args("CFG Scale", "5, 9", include_lone_images=True),
            "alwayson_scripts": {"Per cell": {"args": []}}}
    response = client.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    images = [Image.open(io.BytesIO(base64.b64decode(data))) for data in response.json()["images"]]
    assert len(images) == 3 and info["index_of_first_image"] == 1
    assert images[0].width >= 128 and images[0].height > 64  # two cells side by side, legend above
    assert [image.size for image in images[1:]] == [(64, 64), (64, 64)]
    cells = [parse_generation_parameters(text) for text in info["infotexts"][1:]]
    assert [(p["CFG scale"], p["Per cell"]) for p in cells] == [("5.0", "5.0"), ("9.0", "9.0")]

    bad = client.post("/sdapi/v1/txt2img", json={**body, "script_args": script_args("Prompt S/R", "dog")})
    assert bad.status_code == 422 and "Prompt S/R did not find 'dog'" in bad.json()["detail"]
    unknown = client.post("/sdapi/v1/txt2img", json={**body, "script_name": "no such script"})
    assert unknown.status_code == 422 and "no such script" in unknown.json()["detail"]


def test_through_the_txt2img_tab(context):
    """The tab's Generate: the Script dropdown's choice and the script's controls reach the job."""
    from modules.serving.generation_service import GenerationSubmission
    from modules.ui.generation import follow_until_done

    selection = context.extensions.scripts.selection_from_api(TITLE, script_args("Steps", "1, 2"), {})
    outcome = follow_until_done(context, GenerationSubmission(BASE, selection))
    assert outcome.error is None and len(outcome.images) == 1
    params = parse_generation_parameters(outcome.infotexts[0])
    assert params["Script"] == TITLE and params["X Type"] == "Steps" and params["X Values"] == "1, 2"


def test_styles_and_prompt_order_through_the_app(context):
    """The app's style list reaches the plot (A1111's Styles axis): each cell's prompts carry its
    style, and Prompt order by A1111's index reorders the prompt."""
    (context.paths.data_dir / "styles.csv").write_text('name,prompt,negative_prompt\nwarm,"{prompt}, warm light",cold\n',
                                                       encoding="utf-8")
    result = run(context, script_args("Styles", "warm", 8, "a cat, a dog", include_lone_images=True),
                 BASE.model_copy(update={"prompt": "a cat, a dog"}))
    cells = [parse_generation_parameters(text) for text in result.infotexts[1:]]
    assert [(p["Prompt"], p["Negative prompt"]) for p in cells] == [
        ("a cat, a dog, warm light", "blurry, cold"), ("a dog, a cat, warm light", "blurry, cold")]
    assert cells[0]["X Type"] == "Styles" and cells[0]["Y Type"] == "Prompt order"
