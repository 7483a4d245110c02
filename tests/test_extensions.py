"""Extensions: an A1111-style sample extension (a tab, an always-on script editing p.all_prompts, an
API route) loads and works; a broken one is reported and does not stop the others; enabled state,
preload.py, install.py, install from URL (refused with --listen), and the framework self-check."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from modules.serving.cmd_args import parse_args
from modules.extension_host.extensions import (
    ExtensionAccessError,
    ExtensionFolders,
    ExtensionInstallError,
    discover_extensions,
    install_from_url,
    load_extensions,
    parser_with_preloads,
    run_installer,
    run_installers,
    save_enabled_states,
)
from modules.outputs.infotext import parse_generation_parameters
from modules.generation.engine import GenerationRequest, SaveTarget, generate
from modules.serving.settings import SettingsStore

SAMPLE_SCRIPT = '''
import gradio as gr

from modules import script_callbacks

from modules import scripts
from modules.processing import process_images

EVENTS = {"denoiser": [], "saved": []}
BASEDIR = scripts.basedir()


class SampleAlways(scripts.Script):
    def title(self):
        return "Sample always-on"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        with gr.Accordion("Sample", open=False):
            enabled = gr.Checkbox(value=True, label="Edit prompts")
        return [enabled]

    def process(self, p, enabled):
        if enabled:
            p.all_prompts = [prompt + ", edited by sample" for prompt in p.all_prompts]
            p.extra_generation_params["Sample"] = "yes"


class SampleSteps(scripts.Script):
    def title(self):
        return "Sample steps"

    def ui(self, is_img2img):
        return [gr.Slider(1, 10, value=2, step=1, label="Steps")]

    def run(self, p, steps):
        p.steps = int(steps)
        return process_images(p)


def on_ui_tabs():
    with gr.Blocks(analytics_enabled=False) as tab:
        gr.Textbox("pong", elem_id="sample_ping_box")
    return [(tab, "Sample", "sample_tab")]


def on_app_started(demo, app):
    @app.get("/sample/ping")
    def ping():
        return {"pong": True}


def on_cfg_denoiser(params):
    EVENTS["denoiser"].append((params.sampling_step, params.total_sampling_steps, tuple(params.x.shape)))


def on_before_image_saved(params):
    params.pnginfo["sample"] = "chunk"


def on_image_saved(params):
    EVENTS["saved"].append(params.filename)


script_callbacks.on_ui_tabs(on_ui_tabs)
script_callbacks.on_app_started(on_app_started)
script_callbacks.on_cfg_denoiser(on_cfg_denoiser)
script_callbacks.on_before_image_saved(on_before_image_saved)
script_callbacks.on_image_saved(on_image_saved)
'''

BROKEN_SCRIPT = '''
from modules import script_callbacks

script_callbacks.on_app_started(lambda demo, app: app.state.__setattr__("broken_ran", True))
raise ImportError("sample failure: a module this extension needs is missing")
'''

SMALL = dict(width=64, height=64, steps=2, sampler_name="Euler", seed=11)


def write_extension(root: Path, name: str, files: dict[str, str]) -> Path:
    folder = root / name
    for relative, text in files.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return folder


@pytest.fixture
def data_dir(tmp_path):
    (tmp_path / "builtin").mkdir()
    return tmp_path


def folders_for(data_dir: Path) -> ExtensionFolders:
    return ExtensionFolders(user=data_dir / "extensions", builtin=data_dir / "builtin")


def load(data_dir: Path, *flags: str):
    argv = ["--data-dir", str(data_dir), *flags]
    args = parser_with_preloads(argv).parse_args(argv)  # with the extension flags, as webui.main will
    return load_extensions(SettingsStore(data_dir / "config.json"), args, folders_for(data_dir))


@pytest.fixture(scope="module")
def sd1(tmp_path_factory):
    from modules.library.model_loader import load_checkpoint
    from modules.library.synthetic_checkpoints import write_checkpoint

    return load_checkpoint(write_checkpoint(tmp_path_factory.mktemp("ext") / "tiny.safetensors", "sd1",
                                            dtype=torch.float32))


class DirectEngine:
    """The Txt2ImgEngine interface on a model loaded in the test (no model manager)."""

    def __init__(self, model, save_dir: Path | None = None):
        self.model, self.save_dir = model, save_dir

    def generate(self, request, control=None, *, save=None, hooks=None):
        target = SaveTarget(str(self.save_dir)) if save and self.save_dir else None
        return generate(self.model, request, control=control, hooks=hooks, save=target)


@pytest.fixture
def sample(data_dir):
    write_extension(data_dir / "extensions", "sample", {"scripts/x.py": SAMPLE_SCRIPT})
    write_extension(data_dir / "extensions", "broken", {"scripts/bad.py": BROKEN_SCRIPT})
    return data_dir


def test_sample_extension_adds_a_tab(sample):
    import gradio as gr

    from modules.ui import extensions_tab

    runtime = load(sample)
    context = SimpleNamespace(extensions=runtime)
    tabs = extensions_tab.extension_tabs(context)
    assert [(title, elem_id, extension) for _, title, elem_id, extension in tabs] == [("Sample", "sample_tab",
                                                                                      "sample")]
    assert isinstance(tabs[0][0], gr.Blocks)
    with gr.Blocks() as page, gr.Tabs():
        extensions_tab.render_extension_tabs(tabs)
    assert any(getattr(block, "elem_id", None) == "sample_ping_box" for block in page.blocks.values())
    assert any(getattr(block, "elem_id", None) == "tab_sample_tab" for block in page.blocks.values())


def test_sample_extension_adds_an_api_route_and_broken_one_is_isolated(sample, caplog):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    with caplog.at_level(logging.ERROR, logger="modules.extension_host.extensions"):
        runtime = load(sample)
    assert [ext.name for ext in runtime.active()] == ["sample"]
    [broken] = runtime.failed()
    assert broken.name == "broken" and broken.status == "failed"
    assert "ImportError: sample failure" in broken.error and "bad.py" in broken.error
    assert any("broken" in record.getMessage() and "sample failure" in record.getMessage()
               for record in caplog.records)
    app = FastAPI()
    app.mount("/", FastAPI())  # the web UI's catch-all mount, made before the callbacks run
    runtime.app_started(None, app)
    assert TestClient(app).get("/sample/ping").json() == {"pong": True}
    assert not getattr(app.state, "broken_ran", False)  # the failed extension's callbacks were dropped
    assert [item["name"] for item in runtime.api_items()] == ["broken", "sample"]


MISBEHAVING_SCRIPT = '''
import sys

import gradio as gr

from modules import script_callbacks

from modules import scripts


class BadUi(scripts.Script):
    def title(self):
        return "Bad ui"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        return ["not a component"]


def tabs():
    return [(None, "Broken tab", "broken_tab"), 42]


def bare_blocks():
    with gr.Blocks() as blocks:
        gr.Markdown("a Blocks instead of a list of tuples")
    return blocks


def leave(demo, app):
    sys.exit(3)


script_callbacks.on_ui_tabs(tabs)
script_callbacks.on_ui_tabs(bare_blocks)
script_callbacks.on_app_started(leave)
'''


def test_an_extension_returning_nonsense_or_exiting_cannot_stop_the_page(data_dir, caplog):
    """Bad on_ui_tabs values, ui() returning non-components and sys.exit() in on_app_started are
    logged with the extension's name; the page parts and the app are still built."""
    import gradio as gr
    from fastapi import FastAPI

    from modules.ui import extensions_tab, scripts_panel

    write_extension(data_dir / "extensions", "misbehaving", {"scripts/bad.py": MISBEHAVING_SCRIPT})
    runtime = load(data_dir)
    assert [ext.name for ext in runtime.active()] == ["misbehaving"]
    context = SimpleNamespace(extensions=runtime)
    with caplog.at_level(logging.ERROR):
        assert extensions_tab.extension_tabs(context) == []
        with gr.Blocks():
            panel = scripts_panel.build(context)
        runtime.app_started(None, FastAPI())
    assert len(panel.inputs) == 1  # the Script dropdown; the bad controls were left out
    messages = [record.getMessage() for record in caplog.records]
    assert sum("misbehaving" in m and "on_ui_tabs" in m for m in messages) == 3
    assert any("misbehaving" in m and "ui() of script 'Bad ui'" in m for m in messages)
    assert any("misbehaving" in m and "on_app_started" in m for m in messages)


def test_remove_current_script_callbacks_forgets_only_that_files_callbacks(data_dir):
    """A1111's reload guard at the top of a script removes that script's callbacks, not its siblings'."""
    first = """
        from modules import script_callbacks
        script_callbacks.on_app_started(lambda demo, app: setattr(app.state, "first", True))
    """
    second = """
        from modules import script_callbacks
        script_callbacks.remove_current_script_callbacks()
        script_callbacks.on_app_started(lambda demo, app: setattr(app.state, "second", True))
    """
    write_extension(data_dir / "extensions", "two", {"scripts/a_first.py": first, "scripts/b_second.py": second})
    runtime = load(data_dir)
    app = SimpleNamespace(state=SimpleNamespace(), router=None)
    runtime.app_started(None, app)
    assert app.state.first and app.state.second


def test_always_on_script_edits_prompts_into_conditioning_and_infotext(sample, sd1):
    from modules.extension_host.scripts import run_txt2img

    runtime = load(sample)
    context = SimpleNamespace(extensions=runtime, engine=DirectEngine(sd1))
    result = run_txt2img(context, GenerationRequest(prompt="a cat", batch_size=2, **SMALL))
    params = parse_generation_parameters(result.infotexts[1])
    assert params["Prompt"] == "a cat, edited by sample" and params["Sample"] == "yes"
    assert result.prompts == ["a cat, edited by sample"] * 2 and result.warnings == []
    plain = generate(sd1, GenerationRequest(prompt="a cat, edited by sample", batch_size=2, **SMALL))
    assert np.array_equal(np.asarray(result.images[1]), np.asarray(plain.images[1]))  # the edit was sampled
    assert params["Seed"] == str(plain.seeds[1])

    # The API's alwayson_scripts args reach process(): unticked, the prompt is left alone.
    selection = runtime.scripts.selection_from_api(None, [], {"Sample always-on": {"args": [False]}})
    result = run_txt2img(context, GenerationRequest(prompt="a cat", **SMALL), selection=selection)
    assert parse_generation_parameters(result.infotexts[0])["Prompt"] == "a cat"


def test_selectable_script_through_api_fields_and_callbacks(sample, sd1, tmp_path):
    from PIL import Image

    from modules.extension_host.scripts import run_txt2img

    runtime = load(sample)
    module = sys.modules["atelier_extensions.sample.scripts.x"]
    events = module.EVENTS
    assert module.BASEDIR == str(sample / "extensions" / "sample")
    context = SimpleNamespace(extensions=runtime, engine=DirectEngine(sd1, tmp_path / "out"))
    # Neither script's show() depends on the tab: both tabs list both (A1111's GET /sdapi/v1/scripts).
    assert runtime.scripts.api_titles() == {"txt2img": ["sample always-on", "sample steps"],
                                            "img2img": ["sample always-on", "sample steps"]}
    selection = runtime.scripts.selection_from_api("sample STEPS", [3], {})
    result = run_txt2img(context, GenerationRequest(prompt="a dog", **SMALL), save=True, selection=selection)
    params = parse_generation_parameters(result.infotexts[0])
    assert params["Steps"] == "3" and params["Prompt"] == "a dog, edited by sample"
    assert [(step, total) for step, total, _ in events["denoiser"]] == [(0, 3), (1, 3), (2, 3)]
    assert events["saved"] == result.saved_paths and len(result.saved_paths) == 1
    with Image.open(result.saved_paths[0]) as saved:
        assert saved.info["sample"] == "chunk" and saved.info["parameters"] == result.infotexts[0]
    # A client written for a newer version of the script sends more arguments: the extra ones are dropped.
    longer = runtime.scripts.selection_from_api("sample steps", [2, "from a newer version"], {})
    longer_result = run_txt2img(context, GenerationRequest(prompt="a dog", **SMALL), save=False, selection=longer)
    assert parse_generation_parameters(longer_result.infotexts[0])["Steps"] == "2"
    with pytest.raises(ValueError, match="'nope' not found"):
        runtime.scripts.selection_from_api("nope", [], {})
    with pytest.raises(ValueError, match="selectable script"):
        runtime.scripts.selection_from_api(None, [], {"sample steps": {"args": []}})


def test_failing_always_on_hook_is_a_warning_not_a_failure(data_dir, sd1):
    write_extension(data_dir / "extensions", "flaky", {"scripts/flaky.py": '''
        from modules import scripts

        class Flaky(scripts.Script):
            def title(self):
                return "Flaky"

            def show(self, is_img2img):
                return scripts.AlwaysVisible

            def process(self, p):
                raise RuntimeError("flaky hook")
    '''})
    runtime = load(data_dir)
    result = runtime.scripts.generate(DirectEngine(sd1), GenerationRequest(prompt="a cat", **SMALL))
    assert len(result.images) == 1
    assert result.warnings == ["Script 'Flaky' (flaky) failed in process(): RuntimeError: flaky hook"]


def test_scripts_panel_maps_widget_values_to_a_selection(sample):
    import gradio as gr

    from modules.ui import scripts_panel

    runtime = load(sample)
    with gr.Blocks():
        panel = scripts_panel.build(SimpleNamespace(extensions=runtime))
    assert len(panel.inputs) == 3 and panel.dropdown.choices[0][0] == "None"
    selection = panel.selection(["Sample steps", False, 4])
    assert selection.script == "Sample steps" and selection.script_args == (4,)
    assert selection.alwayson_args == {"sample always-on": (False,)}
    assert panel.selection(["None", True, 4]).script is None


def test_a1111_processing_names_and_callbacks_outside_loading():
    from modules import script_callbacks
    from modules.processing import Processed, StableDiffusionProcessingTxt2Img, process_images  # noqa: F401

    p = StableDiffusionProcessingTxt2Img.from_request(GenerationRequest(prompt="x", steps=3))
    p.cfg_scale = 5
    assert p.to_request().cfg_scale == 5.0 and p.to_request().prompt == "x"
    with pytest.raises(RuntimeError, match="outside extension loading"):
        script_callbacks.on_ui_tabs(lambda: [])
    with pytest.raises(RuntimeError, match="running request"):
        process_images(p)


def test_enabled_state_is_persisted_and_respected(sample):
    settings = SettingsStore(sample / "config.json")
    folders = folders_for(sample)
    extensions = discover_extensions(folders, settings.current())
    assert [(e.name, e.enabled) for e in extensions] == [("broken", True), ("sample", True)]
    save_enabled_states(settings, extensions, {"broken": False, "sample": True})
    assert SettingsStore(sample / "config.json").current()["disabled_extensions"] == ("broken",)
    runtime = load(sample)
    assert [(e.name, e.status) for e in runtime.extensions] == [("broken", "disabled"), ("sample", "enabled")]
    assert runtime.failed() == []
    assert [e.enabled for e in load(sample, "--disable-all-extensions").extensions] == [False, False]
    (sample / "builtin" / "core-ext").mkdir()
    settings.apply({"disable_all_extensions": "extra"})
    assert [(e.name, e.enabled) for e in load(sample).extensions] == [
        ("core-ext", True), ("broken", False), ("sample", False)]


def test_extensions_tab_saves_and_shows_the_saved_state(sample):
    import gradio as gr

    from modules.ui import extensions_tab
    from modules.ui.shared import UiShared

    runtime = load(sample)
    context = SimpleNamespace(extensions=runtime, settings=SettingsStore(sample / "config.json"),
                              args=parse_args(["--data-dir", str(sample)]))
    assert extensions_tab.saved_state(context) == (["broken", "sample"], "none")
    assert "Restart Atelier" in extensions_tab.apply_enabled(context, ["sample"], "extra")
    assert extensions_tab.saved_state(context) == (["sample"], "extra")
    assert [ext.enabled for ext in runtime.extensions] == [True, True]  # the running ones change at the next start
    shared = UiShared()
    with gr.Blocks():
        extensions_tab.build(context, shared)
    [(page_load, outputs)] = shared.page_loads  # a page opened after Apply shows what was saved
    table, enabled, mode = page_load()
    assert len(outputs) == 3 and (enabled, mode) == (["sample"], "extra") and "broken" in table


def test_preload_adds_flags(data_dir, caplog):
    write_extension(data_dir / "extensions", "flags", {"preload.py": '''
        def preload(parser):
            parser.add_argument("--sample-flag", default="off")
    '''})
    write_extension(data_dir / "extensions", "badpreload", {"preload.py": "raise ValueError('bad preload')\n"})
    argv = ["--data-dir", str(data_dir), "--sample-flag", "on"]
    with caplog.at_level(logging.ERROR, logger="modules.extension_host.extensions"):
        assert parser_with_preloads(argv).parse_args(argv).sample_flag == "on"
    assert any("badpreload" in record.getMessage() and "bad preload" in record.getMessage()
               for record in caplog.records)
    argv = ["--data-dir", str(data_dir), "--disable-extra-extensions"]
    args = parser_with_preloads(argv).parse_args(argv)  # disabled extensions add no flags
    assert args.disable_extra_extensions and not hasattr(args, "sample_flag")


def test_install_script_runs_once_per_version(data_dir):
    folder = write_extension(data_dir / "extensions", "needs", {"install.py": '''
        import launch, pathlib
        pathlib.Path("%s").write_text(str(launch.is_installed("torch")))
    ''' % (data_dir / "marker.txt").as_posix()})
    [ext] = discover_extensions(folders_for(data_dir), {})
    stamps = data_dir / "stamps.json"
    lines = []

    def echo(text, **_):
        lines.append(text)

    assert run_installer(ext, stamps_file=stamps, echo=echo).ran
    assert (data_dir / "marker.txt").read_text() == "True"
    assert not run_installer(ext, stamps_file=stamps, echo=echo).ran
    assert [(o.extension, o.ran) for o in run_installers(["--data-dir", str(data_dir)], stamps_file=stamps)] == [
        ("needs", False)]  # launch.py's entry point: same stamps, nothing to do
    (folder / "install.py").write_text("raise SystemExit('cannot install')\n")
    failed = run_installer(ext, stamps_file=stamps, echo=echo)
    assert failed.ran and not failed.ok and "cannot install" in failed.output
    assert any("install.py FAILED" in line and "needs" in line for line in lines)
    assert run_installer(ext, stamps_file=stamps, echo=echo).ran  # a failure is not stamped


def test_install_from_url_refused_when_listening(data_dir):
    from modules.ui import extensions_tab

    runtime = load(data_dir)
    for flags in (["--listen"], ["--server-name", "0.0.0.0"]):
        args = parse_args(["--data-dir", str(data_dir), *flags])
        with pytest.raises(ExtensionAccessError, match="--enable-insecure-extension-access"):
            install_from_url("https://example.com/a/b.git", runtime.folders, args)
        context = SimpleNamespace(extensions=runtime, args=args)
        assert "--enable-insecure-extension-access" in extensions_tab.install(context, "https://example.com/b.git")
        assert extensions_tab.install_allowed(context) is not None
        # Enabling runs an extension's code at the next start: refused the same way.
        context.settings = SettingsStore(data_dir / "config.json")
        assert "--enable-insecure-extension-access" in extensions_tab.apply_enabled(context, [], "all")
        assert context.settings.current()["disable_all_extensions"] == "none"
    assert not (data_dir / "extensions").exists()


def test_install_from_url_clones_with_the_insecure_flag(data_dir):
    source = write_extension(data_dir, "remote-ext", {"scripts/r.py": "from modules import scripts\n",
                                                      "install.py": "print('installing remote-ext')\n"})
    git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t", "-C", str(source)]
    for command in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "init"]):
        subprocess.run(git + command, check=True, capture_output=True)
    folders = folders_for(data_dir)
    args = parse_args(["--data-dir", str(data_dir), "--listen", "--enable-insecure-extension-access"])
    target = install_from_url(source.as_uri(), folders, args, stamps_file=data_dir / "stamps.json")
    assert target == folders.user / "remote-ext" and (target / "scripts" / "r.py").exists()
    [ext] = discover_extensions(folders, {})
    assert ext.git_info().commit_hash and len(ext.git_info().version) == 8
    with pytest.raises(ExtensionInstallError, match="already exists"):
        install_from_url(source.as_uri(), folders, args)
    for bad_url in ("ext::sh -c touch% /tmp/pwned", "-oProxyCommand=touch@host:repo", "--upload-pack=x",
                    "git@-oProxyCommand=x:repo"):
        with pytest.raises(ExtensionInstallError, match="not a git URL"):
            install_from_url(bad_url, folders, args)
    for bad_name in ("../outside", "a/b", ".hidden"):
        with pytest.raises(ExtensionInstallError, match="not a usable folder name"):
            install_from_url(source.as_uri(), folders, args, dirname=bad_name)
    with pytest.raises(ExtensionInstallError, match="not a branch name"):
        install_from_url(source.as_uri(), folders, args, dirname="x", branch="--upload-pack=touch")
    (folders.builtin / "builtin-ext").mkdir()
    with pytest.raises(ExtensionInstallError, match="built-in extension"):
        install_from_url(source.as_uri(), folders, args, dirname="builtin-ext")
    with pytest.raises(ExtensionInstallError, match="failed"):
        install_from_url((data_dir / "missing").as_uri(), folders, args, dirname="other")
    assert sorted(p.name for p in folders.user.iterdir()) == ["remote-ext"]  # nothing half-cloned left


def test_self_check_names_the_extension_that_patched_torch(data_dir, caplog):
    original = torch.nn.functional.silu
    write_extension(data_dir / "extensions", "patcher", {"scripts/patch.py": '''
        import torch

        torch.nn.functional.silu = lambda x, inplace=False: x
    '''})
    try:
        with caplog.at_level(logging.WARNING, logger="modules.extension_host.extensions"):
            runtime = load(data_dir)
    finally:
        torch.nn.functional.silu = original
    assert [(c.name, c.extension) for c in runtime.framework_changes] == [
        ("torch.nn.functional.silu", "extension patcher")]
    assert any("torch.nn.functional.silu" in r.getMessage() and "patcher" in r.getMessage() for r in caplog.records)
    assert runtime.check_framework("later") == []  # restored: nothing new


def test_self_check_sees_a_wrapped_method_of_a_diffusers_class(data_dir):
    """A patch made with functools.wraps keeps the original's name and module, not its code."""
    from diffusers.models.resnet import ResnetBlock2D

    original = ResnetBlock2D.forward
    write_extension(data_dir / "extensions", "wrapper", {"scripts/wrap.py": '''
        import functools

        from diffusers.models.resnet import ResnetBlock2D

        original = ResnetBlock2D.forward


        @functools.wraps(original)
        def forward(self, *args, **kwargs):
            return original(self, *args, **kwargs)


        ResnetBlock2D.forward = forward
    '''})
    try:
        runtime = load(data_dir)
    finally:
        ResnetBlock2D.forward = original
    assert [(c.name, c.extension) for c in runtime.framework_changes] == [
        ("diffusers.models.resnet.ResnetBlock2D.forward", "extension wrapper")]


def test_example_extension_in_the_repo_loads(tmp_path, sd1):
    """docs/example-extension, as a user who copies it into extensions/ gets it."""
    from modules.extension_host.module_files import REPO_ROOT

    folders = ExtensionFolders(user=REPO_ROOT / "docs", builtin=tmp_path / "none")
    runtime = load_extensions(SettingsStore(tmp_path / "config.json"), parse_args(["--data-dir", str(tmp_path)]),
                              folders)
    assert "example-extension" in [ext.name for ext in runtime.active()]
    selection = runtime.scripts.selection_from_api(None, [], {"Example note": {"args": [True, "hello"]}})
    result = runtime.scripts.generate(DirectEngine(sd1), GenerationRequest(prompt="a cat", **SMALL),
                                      selection=selection)
    assert parse_generation_parameters(result.infotexts[0])["Example note"] == "hello"
    default = runtime.scripts.generate(DirectEngine(sd1), GenerationRequest(prompt="a cat", **SMALL))
    assert "Example note" not in default.infotexts[0]


def test_app_context_engine_runs_the_scripts_and_saves(sample):
    """The real Txt2ImgEngine (settings, model manager, saving) with the sample extension."""
    from PIL import Image

    from modules.serving.app_context import AppContext
    from modules.extension_host.scripts import run_txt2img
    from modules.library.synthetic_checkpoints import write_checkpoint

    (sample / "models" / "Stable-diffusion").mkdir(parents=True)
    write_checkpoint(sample / "models" / "Stable-diffusion" / "tiny.safetensors", "sd1", dtype=torch.float32)
    argv = ["--data-dir", str(sample), "--no-demo-checkpoint"]
    context = AppContext.from_args(parser_with_preloads(argv).parse_args(argv))
    context.refresh()
    context.load_startup_model()
    write_extension(sample / "extensions", "where", {"scripts/where.py": """
        from modules import scripts


        class Where(scripts.Script):
            def title(self):
                return "Where"

            def show(self, is_img2img):
                return scripts.AlwaysVisible

            def process(self, p):
                p.extra_generation_params["Saved in"] = p.outpath_samples
    """})
    context.settings.apply({"outdir_txt2img_samples": "my-images"})
    context.extensions = load_extensions(context.settings, context.args, folders_for(sample))
    result = run_txt2img(context, GenerationRequest(prompt="a cat", **SMALL), save=True)
    [path] = result.saved_paths
    with Image.open(path) as saved:
        params = parse_generation_parameters(saved.info["parameters"])
        assert params["Prompt"] == "a cat, edited by sample"
        assert saved.info["sample"] == "chunk"
    # p.outpath_samples is where the images really go (the outdir settings), as scripts expect.
    assert params["Saved in"] == str(sample / "my-images") and Path(path).parent.parent == sample / "my-images"


def test_self_check_ignores_the_loaders_own_passing_patch():
    """accelerate's init_empty_weights (the model loader builds every model in it) swaps
    register_parameter while the background load runs; a snapshot taken then blames no one."""
    from accelerate import init_empty_weights

    from modules.extension_host.extensions import FrameworkSnapshot

    before = FrameworkSnapshot.take()
    with init_empty_weights(include_buffers=False):
        during = FrameworkSnapshot.take()
    assert during.changes_since(before) == []


def test_self_check_catches_a_patch_of_a_module_imported_after_the_baseline(monkeypatch):
    """The server loads extensions before torch is imported (the model stack comes after the first
    page), so an extension may be the first to import torch: a torch function it replaces is new since
    the baseline and still caught; what torch brings itself (re-exported typing classes) is not."""
    import torch.nn.functional as F

    from modules.extension_host.extensions import FrameworkSnapshot

    before_torch = FrameworkSnapshot({})  # the baseline of a server that has not imported torch yet
    assert FrameworkSnapshot.take().changes_since(before_torch) == []
    original = F.silu
    monkeypatch.setattr(F, "silu", lambda x, inplace=False: original(x))
    assert FrameworkSnapshot.take().changes_since(before_torch) == ["torch.nn.functional.silu"]
