"""A1111's module names extensions import besides scripts/shared (A1111.md §15.2-15.4):
`modules.sd_models`, `sd_samplers`, `paths`/`paths_internal`, `devices`, `launch_utils` and
`ui.create_refresh_button`, each read from the running app."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pytest
import torch

from modules.extension_host.environment import app_scope
from modules.library.synthetic_checkpoints import write_checkpoint
from tests.ui_support import make_context, run_event

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("facades")
    context = make_context(data_dir, ("tiny.safetensors", "other.safetensors"))
    yield context, data_dir
    context.jobs.shutdown()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_checkpoints_list_has_a1111s_titles_and_attributes(app):
    from modules import sd_models

    context, data_dir = app
    tiny = data_dir / "models" / "Stable-diffusion" / "tiny.safetensors"
    with app_scope(context):
        info = sd_models.get_closet_checkpoint_match("tiny")
        assert info.calculate_shorthash() == _sha256(tiny)[:10] == info.shorthash
        listed = sd_models.checkpoints_list
        title = f"tiny.safetensors [{_sha256(tiny)[:10]}]"  # A1111: "<relative path> [<sha256[:10]>]"
        assert title in listed
        info = listed[title]
        assert (info.filename, info.name, info.name_for_extra, info.model_name) == \
            (str(tiny), "tiny.safetensors", "tiny", "tiny")
        assert (info.title, info.short_title) == (title, f"tiny [{_sha256(tiny)[:10]}]")
        assert (info.sha256, info.shorthash) == (_sha256(tiny), _sha256(tiny)[:10])
        assert info.hash == sd_models.model_hash(tiny) == hashlib.sha256(tiny.read_bytes()[1 << 20:(1 << 20) + (1 << 16)]).hexdigest()[:8]
        assert isinstance(info.metadata, dict)
        assert sd_models.checkpoint_tiles() == [i.title for i in context.checkpoints.list()] == list(listed)
        assert sd_models.checkpoint_tiles(use_short=True)[list(listed).index(title)] == info.short_title
        for aliases in (sd_models.checkpoint_aliases, sd_models.checkpoint_alisases):
            for alias in (title, "tiny.safetensors", "tiny", info.hash, info.shorthash, info.sha256):
                assert aliases[alias] == info, alias
        assert sd_models.get_closet_checkpoint_match("no such model") is None
        assert sd_models.model_hash(data_dir / "missing.safetensors") == "NOFILE"


def test_list_models_rescans_the_folders(app):
    from modules import sd_models

    context, data_dir = app
    new = data_dir / "models" / "Stable-diffusion" / "sub" / "added.safetensors"
    new.parent.mkdir(exist_ok=True)
    write_checkpoint(new, "sd1", size="tiny", dtype=torch.float32, seed=7)
    with app_scope(context):
        assert sd_models.get_closet_checkpoint_match("added") is None
        sd_models.list_models()
        assert sd_models.get_closet_checkpoint_match("added").name == "sub/added.safetensors"
    new.unlink()
    with app_scope(context):
        sd_models.list_models()


def test_reload_model_weights_switches_between_jobs_and_is_a_no_op_for_the_loaded_file(app):
    from modules import sd_models

    context, data_dir = app
    with app_scope(context):
        first = sd_models.select_checkpoint()
        assert Path(first.filename) == context.models.current_info().filename
        other = next(info for info in sd_models.checkpoints_list.values() if info != first)
        model = sd_models.reload_model_weights(info=other)
        assert context.models.current_info().filename == Path(other.filename)
        assert model.sd_checkpoint_info.filename == other.filename and model.sd_model_hash == other.shorthash
        assert context.settings.current()["sd_model_checkpoint"] == other.title
        again = sd_models.reload_model_weights(info=other)  # already loaded: nothing to do
        assert again.atelier_model is model.atelier_model is context.models.current()
        assert sd_models.model_data.sd_model.atelier_model is model.atelier_model
        with sd_models.SkipWritingToConfig():
            sd_models.reload_model_weights(info=first)
        assert context.models.current_info().filename == Path(first.filename)
        assert context.settings.current()["sd_model_checkpoint"] == other.title  # not written
        sd_models.reload_model_weights()  # select_checkpoint(): the loaded one
        assert context.models.current_info().filename == Path(first.filename)


def test_reload_model_weights_refuses_files_outside_the_checkpoint_folders(app, tmp_path):
    from modules import sd_models

    context, data_dir = app
    outside = write_checkpoint(tmp_path / "elsewhere.safetensors", "sd1", size="tiny", dtype=torch.float32)
    before = context.models.current_info()
    sneaky = data_dir / "models" / "Stable-diffusion" / ".." / ".." / ".." / tmp_path.name / "elsewhere.safetensors"
    with app_scope(context):
        for filename in (str(outside), str(sneaky), "/etc/passwd"):
            with pytest.raises(ValueError, match="not in the checkpoint list"):
                sd_models.reload_model_weights(info=SimpleNamespace(filename=filename))
        with pytest.raises(TypeError, match="CheckpointInfo"):
            sd_models.reload_model_weights(info=42)
        # A1111 extensions build infos from a path: a listed file gives its entry, another is refused.
        listed = context.checkpoints.list()[0]
        assert sd_models.CheckpointInfo(str(listed.filename)).title == listed.title
        with pytest.raises(ValueError, match="not in the checkpoint list"):
            sd_models.CheckpointInfo(str(outside))
    assert context.models.current_info() == before


def test_samplers_match_the_api(app):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from modules import sd_samplers
    from modules.api.routes_info import build_router

    context, _ = app
    api = FastAPI()
    api.include_router(build_router(context))
    served = TestClient(api).get("/sdapi/v1/samplers").json()
    with app_scope(context):
        assert [s.name for s in sd_samplers.samplers] == [item["name"] for item in served]
        assert [(s.name, list(s.aliases), s.options) for s in sd_samplers.all_samplers] == \
            [(item["name"], item["aliases"], item["options"]) for item in served]
        assert sd_samplers.samplers_for_img2img == sd_samplers.samplers
        assert set(sd_samplers.all_samplers_map) == {item["name"] for item in served}
        assert sd_samplers.visible_sampler_names() == [item["name"] for item in served]
        for item in served:
            for alias in [item["name"], *item["aliases"]]:
                assert sd_samplers.samplers_map[alias.lower()] == item["name"]
    assert sd_samplers.get_sampler_and_scheduler("DPM++ 2M Karras", None) == ("DPM++ 2M", "Automatic")
    assert sd_samplers.get_sampler_and_scheduler("DPM++ 2M Karras", None, convert_automatic=False) == \
        ("DPM++ 2M", "Karras")
    assert sd_samplers.get_sampler_and_scheduler("Euler", "karras") == ("Euler", "Karras")
    with pytest.raises(ValueError, match="Valid samplers"):
        sd_samplers.get_sampler_and_scheduler("no such sampler", None)
    with pytest.raises(NotImplementedError, match="p.sampler_name"):
        sd_samplers.create_sampler("Euler", None)
    with pytest.raises(ValueError, match="bad sampler name"):
        sd_samplers.create_sampler("nope", None)
    assert sd_samplers.all_samplers_map["Heun"].total_steps(10) == 20


def test_paths_follow_the_app_and_the_command_line(app, tmp_path, monkeypatch):
    from modules import paths, paths_internal

    context, data_dir = app
    with app_scope(context):
        assert paths.script_path == paths_internal.script_path == str(REPO)
        assert paths.data_path == str(data_dir)
        assert paths.models_path == str(data_dir / "models")
        assert paths.extensions_dir == str(data_dir / "extensions")
        assert paths.extensions_builtin_dir == str(REPO / "extensions-builtin")
        assert Path(paths_internal.sd_default_config).is_file()
        assert paths.cwd == os.getcwd()
    # With no app in scope, as A1111: from the command line.
    monkeypatch.setattr(sys, "argv", ["webui.py", "--data-dir", str(tmp_path)])
    assert paths.data_path == str(tmp_path) and paths.models_path == str(tmp_path / "models")
    monkeypatch.setattr(sys, "argv", ["webui.py"])
    assert paths.data_path == str(REPO)
    with pytest.raises(AttributeError):
        paths.no_such_path  # noqa: B018


def test_devices_are_the_models_device_and_import_without_torch(app):
    from modules import devices

    context, _ = app
    with app_scope(context):
        assert devices.device == devices.get_optimal_device() == context.models.options.device
        assert devices.device_esrgan == devices.get_device_for("esrgan") == devices.device
        assert devices.dtype == devices.dtype_unet == context.models.options.dtype
        assert devices.dtype_vae == context.models.options.vae_dtype
        assert devices.cpu == torch.device("cpu")
        x = torch.ones(2)
        with devices.autocast():
            assert (x * 2).dtype == torch.float32  # CPU, float32: a no-op context
        assert devices.cond_cast_unet(x) is x
        devices.torch_gc()
        with pytest.raises(devices.NansException):
            devices.test_for_nans(torch.full((1, 4, 2, 2), float("nan")), "unet")
    code = "import sys, modules.devices as d; d.torch_gc; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_launch_utils_is_launchs_install_api():
    import launch
    from modules import launch_utils

    for name in ("run_pip", "is_installed", "run", "run_python", "git_tag", "commit_hash", "repo_dir"):
        assert getattr(launch, name) is getattr(launch_utils, name), name
    assert launch_utils.python == sys.executable
    assert launch_utils.is_installed("pytest") and not launch_utils.is_installed("no-such-package-atelier")
    assert launch_utils.run_python("print(6 * 7)").strip() == "42"
    assert launch_utils.repo_dir("x") == str(REPO / "repositories" / "x")
    assert launch_utils.commit_hash() == subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"],
                                                        capture_output=True, text=True).stdout.strip()


def _click(demo: gr.Blocks, button, context):
    """Run the button's click handler as the server would."""
    return run_event(demo, button._id, "click", [], context=context)


def test_create_refresh_button_refreshes_the_dropdowns_choices(app):
    from modules import sd_models, ui, ui_common

    assert ui.create_refresh_button is ui_common.create_refresh_button
    context, data_dir = app
    added = data_dir / "models" / "Stable-diffusion" / "refreshed.safetensors"
    with app_scope(context):
        with gr.Blocks() as demo:
            dropdown = gr.Dropdown(choices=sd_models.checkpoint_tiles(), label="Model")
            button = ui.create_refresh_button(dropdown, sd_models.list_models,
                                              lambda: {"choices": sd_models.checkpoint_tiles()}, "ext_refresh")
            calls = []
            first, second = gr.Textbox(), gr.Textbox()
            several = ui_common.create_refresh_button([first, second], lambda: calls.append(1),
                                                      {"value": "new", "interactive": False}, "ext_refresh_two")
    assert button.value == "\U0001f504" and "tool" in button.elem_classes and button.elem_id == "ext_refresh"
    write_checkpoint(added, "sd1", size="tiny", dtype=torch.float32, seed=3)
    try:
        [update] = _click(demo, button, context)
        assert "refreshed.safetensors" in [choice[0] if isinstance(choice, (list, tuple)) else choice
                                           for choice in update["choices"]]
        assert "refreshed.safetensors" in [choice[0] for choice in dropdown.choices]  # the attribute is set too
        updates = _click(demo, several, context)
        assert calls == [1] and [(u["value"], u["interactive"]) for u in updates] == [("new", False)] * 2
        assert first.value == second.value == "new" and first.interactive is False
    finally:
        added.unlink()
        with app_scope(context):
            sd_models.list_models()


def test_an_extension_reads_the_facades_at_import(app):
    from modules.extension_host.extensions import ExtensionFolders, load_extensions
    from tests.test_extensions import write_extension

    context, data_dir = app
    script = ("from modules import paths, sd_models, sd_samplers, devices, scripts\n"
              "import os\n"
              "AT_IMPORT = (paths.data_path, paths.extensions_dir, sd_models.checkpoint_tiles(),\n"
              "             [s.name for s in sd_samplers.samplers], str(devices.device))\n"
              "OWN_FILE = os.path.join(paths.extensions_dir, 'reader', 'data.txt')\n"
              "BASEDIR_FILE = os.path.join(scripts.basedir(), 'data.txt')\n")
    folder = write_extension(data_dir / "extensions", "reader", {"scripts/reader.py": script, "data.txt": "hi"})
    builtin = data_dir / "no-builtins"
    builtin.mkdir(exist_ok=True)
    with app_scope(context):
        runtime = load_extensions(context.settings, context.args, ExtensionFolders(user=data_dir / "extensions",
                                                                                    builtin=builtin))
    assert not runtime.failed(), runtime.failed()[0].error
    module = sys.modules["atelier_extensions.reader.scripts.reader"]
    data_path, extensions_dir, tiles, samplers, device = module.AT_IMPORT
    assert (data_path, extensions_dir) == (str(data_dir), str(data_dir / "extensions"))
    assert tiles == [info.title for info in context.checkpoints.list()]
    assert samplers[0] == "DPM++ 2M" and device == "cpu"
    assert Path(module.OWN_FILE).read_text() == Path(module.BASEDIR_FILE).read_text() == "hi"
    assert Path(module.BASEDIR_FILE).parent == folder


def test_ui_common_helpers_extensions_import():
    from modules import ui_common

    # A1111's: escaped, one paragraph, lines joined by <br> and a newline.
    assert ui_common.plaintext_to_html("a <b>\nc & d") == "<p>a &lt;b&gt;<br>\nc &amp; d</p>"
    assert ui_common.plaintext_to_html("x", classname="info") == "<p class='info'>x</p>"
    with pytest.raises(NotImplementedError, match="save_files"):
        ui_common.save_files("{}", [], False, 0)


def test_extras_run_pnginfo_reads_an_images_infotext():
    from PIL import Image, PngImagePlugin

    from modules import extras

    chunk = PngImagePlugin.PngInfo()
    chunk.add_text("parameters", "a <cat>\nSteps: 2, Seed: 1")
    chunk.add_text("Software", "Atelier")
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG", pnginfo=chunk)
    buffer.seek(0)
    first, geninfo, info = extras.run_pnginfo(Image.open(buffer))
    assert (first, geninfo) == ("", "a <cat>\nSteps: 2, Seed: 1")
    assert "a &lt;cat&gt;" in info and "<b>Software</b>" in info and "<b>parameters</b>" in info
    assert extras.run_pnginfo(Image.new("RGB", (8, 8)))[1:] == ("", "<div><p>Nothing found in the image.</p></div>")


def test_list_scripts_finds_the_script_files_of_the_loaded_extensions(tmp_path):
    from modules import scripts
    from modules.extension_host.environment import app_scope
    from tests.test_api_support import make_context
    from tests.test_extensions import folders_for, write_extension

    (tmp_path / "builtin").mkdir()
    write_extension(tmp_path / "extensions", "lister", {"scripts/b_second.py": "X = 1\n", "scripts/a_first.py": "",
                                                        "scripts/notes.txt": "not a script"})
    context = make_context(tmp_path, load=False, start_jobs=False)
    from modules.extension_host.extensions import load_extensions

    context.extensions = load_extensions(context.settings, context.args, folders_for(tmp_path))
    with app_scope(context):
        found = [entry for entry in scripts.list_scripts("scripts", ".py")
                 if entry.basedir == str(tmp_path / "extensions" / "lister")]
    assert [entry.filename for entry in found] == ["a_first.py", "b_second.py"]
    assert found[0].path == str(tmp_path / "extensions" / "lister" / "scripts" / "a_first.py")
