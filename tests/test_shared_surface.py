"""A1111's `modules.shared` as extensions use it, through the real start-up (webui.compose) and the
API: an extension's own options (registered in on_ui_settings) have their defaults from the start in
an API-only run, are read as `opts.<key>` / `opts.data.get` in a script hook, are changed through
POST /options (checked by the type of their default, onchange called), persist in config.json, and
show in the Settings tab under their section; `shared.sd_model`, `shared.state` and `shared.cmd_opts`
are the running app's."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from modules.library.synthetic_checkpoints import write_checkpoint
from modules.outputs.infotext import parse_generation_parameters

WILDCARDS = '''
import gradio as gr
from modules import script_callbacks, scripts, shared

SEEN = {}
SEEN["import_default"] = shared.opts.data.get("wcl_suffix", "not registered yet")


def on_ui_settings():
    section = ("wildcards_lite", "Wildcards lite")
    shared.opts.add_option("wcl_suffix", shared.OptionInfo("masterpiece", "Suffix added to every prompt",
                                                           section=section).info("empty adds nothing"))
    shared.opts.add_option("wcl_enabled", shared.OptionInfo(True, "Enable the suffix", gr.Checkbox,
                                                            section=section).needs_reload_ui())
    shared.opts.add_option("wcl_strength", shared.OptionInfo(0.5, "Strength", gr.Slider,
                                                             {"minimum": 0, "maximum": 1, "step": 0.05},
                                                             section=section))
    shared.opts.onchange("wcl_suffix", lambda: SEEN.setdefault("onchange", []).append(shared.opts.wcl_suffix),
                         call=False)


script_callbacks.on_ui_settings(on_ui_settings)


def on_app_started(demo, app):
    @app.get("/wildcards-lite/model")
    def model():
        model = shared.sd_model
        return {"title": model.sd_checkpoint_info.title, "is_sd1": model.is_sd1, "is_sdxl": model.is_sdxl,
                "hash": model.sd_model_hash, "data_dir": shared.cmd_opts.data_dir,
                "filename": model.sd_checkpoint_info.filename, "checkpoint": model.sd_model_checkpoint}


script_callbacks.on_app_started(on_app_started)


class WildcardsLite(scripts.Script):
    def title(self):
        return "Wildcards lite"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def process(self, p, *args):
        if not shared.opts.wcl_enabled:
            return
        suffix = shared.opts.data.get("wcl_suffix", "")
        p.all_prompts = [f"{prompt}, {suffix}" for prompt in p.all_prompts]
        p.extra_generation_params["Wildcards lite"] = suffix
        SEEN["strength"] = shared.opts.wcl_strength
        SEEN["job_count"] = shared.state.job_count
        SEEN["interrupted"] = shared.state.interrupted
        SEEN["model"] = shared.sd_model.sd_checkpoint_info.title
'''


def _data_dir(root: Path) -> Path:
    folder = root / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    write_checkpoint(folder / "tiny.safetensors", "sd1", size="tiny", dtype=torch.float32, seed=0)
    script = root / "extensions" / "wildcards-lite" / "scripts" / "wildcards_lite.py"
    script.parent.mkdir(parents=True)
    script.write_text(textwrap.dedent(WILDCARDS), encoding="utf-8")
    return root


def path_to(node: dict, target: int) -> list[int]:
    """The block ids from the layout node `node` down to the block `target` (empty: not under it)."""
    if node["id"] == target:
        return [node["id"]]
    for child in node.get("children", []):
        found = path_to(child, target)
        if found:
            return [node["id"], *found]
    return []


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The API-only server as webui.main composes it, and the extension's module."""
    import webui
    from modules.extension_host.extensions import parser_with_preloads
    from modules.serving.cmd_args import parse_args

    root = _data_dir(tmp_path_factory.mktemp("shared"))
    argv = ["--data-dir", str(root), "--nowebui", "--no-demo-checkpoint", "--skip-load-model-at-start"]
    context, app = webui.compose(parse_args(argv, parser=parser_with_preloads(argv)))
    [script] = [s for s in context.extensions.scripts.scripts if s.title() == "Wildcards lite"]
    module = __import__("sys").modules[type(script).__module__]
    with TestClient(app) as client:
        yield context, client, module.SEEN, root
    context.jobs.shutdown()


def _generate(client, prompt="a cat"):
    response = client.post("/sdapi/v1/txt2img", json={"prompt": prompt, "steps": 2, "width": 64, "height": 64,
                                                     "sampler_name": "Euler", "seed": 3})
    assert response.status_code == 200, response.text
    return parse_generation_parameters(json.loads(response.json()["info"])["infotexts"][0])


def test_options_have_their_defaults_in_an_api_only_run_and_reach_the_hook(served):
    context, client, seen, _ = served
    assert seen["import_default"] == "not registered yet"  # read at import, before on_ui_settings ran
    options = client.get("/sdapi/v1/options").json()
    assert (options["wcl_suffix"], options["wcl_enabled"], options["wcl_strength"]) == ("masterpiece", True, 0.5)

    fields = _generate(client)
    assert fields["Prompt"] == "a cat, masterpiece"
    assert fields["Wildcards lite"] == "masterpiece"
    assert seen["strength"] == 0.5 and seen["job_count"] == 1 and seen["interrupted"] is False
    assert seen["model"] == context.models.current_info().title


def test_post_options_changes_an_extension_option_checks_it_and_persists_it(served):
    context, client, seen, root = served
    assert client.post("/sdapi/v1/options", json={"wcl_suffix": "best quality"}).status_code == 200
    assert seen["onchange"][-1] == "best quality"  # onchange runs after the value is stored
    assert json.loads((root / "config.json").read_text())["wcl_suffix"] == "best quality"
    assert _generate(client)["Prompt"] == "a cat, best quality"

    bad = client.post("/sdapi/v1/options", json={"wcl_strength": 5})
    assert bad.status_code == 422 and "wcl_strength" in bad.text and "between 0 and 1" in bad.text
    wrong_type = client.post("/sdapi/v1/options", json={"wcl_enabled": "yes"})
    assert wrong_type.status_code == 422 and "wcl_enabled" in wrong_type.text
    assert client.get("/sdapi/v1/options").json()["wcl_strength"] == 0.5
    override = client.post("/sdapi/v1/txt2img", json={"prompt": "a cat", "steps": 2, "width": 64, "height": 64,
                                                      "override_settings": {"wcl_strength": "high"}})
    assert override.status_code == 422 and "wcl_strength" in override.text


def test_an_extension_route_reads_the_loaded_model_through_shared(served):
    context, client, _, root = served
    body = client.get("/wildcards-lite/model").json()
    info = context.models.current_info()
    assert body == {"title": info.title, "is_sd1": True, "is_sdxl": False, "hash": info.shorthash,
                    "data_dir": str(root), "filename": str(info.filename), "checkpoint": str(info.filename)}


def test_shared_outside_an_app_says_where_to_read_it():
    from modules import shared

    with pytest.raises(RuntimeError, match="outside a running Atelier app"):
        shared.opts.sd_vae  # noqa: B018
    with pytest.raises(RuntimeError, match="outside a running Atelier app"):
        shared.cmd_opts  # noqa: B018


def test_opts_reads_atelier_settings_and_refuses_unknown_keys(served):
    from modules import shared
    from modules.extension_host.environment import app_scope

    context = served[0]
    with app_scope(context):
        assert shared.opts.CLIP_stop_at_last_layers == context.settings.current()["CLIP_stop_at_last_layers"]
        assert shared.opts.quicksettings_list == list(context.settings.current()["quicksettings_list"])
        assert shared.opts.data_labels["wcl_strength"].component_args["maximum"] == 1
        assert shared.opts.get_default("wcl_suffix") == "masterpiece"
        # A1111 settings Atelier lacks read as A1111's defaults (extensions browse these folders).
        assert shared.opts.outdir_img2img_samples == "outputs/img2img-images"
        assert shared.opts.data.get("hide_samplers") == [] and "outdir_save" not in context.settings.current()
        with pytest.raises(AttributeError, match="no option 'no_such_option'"):
            shared.opts.no_such_option  # noqa: B018
        with pytest.raises(ValueError, match="wcl_enabled"):
            shared.opts.wcl_enabled = "yes"
        assert shared.opts.set("wcl_enabled", False) is True
        assert shared.opts.wcl_enabled is False and context.settings.current()["wcl_enabled"] is False
        shared.opts.wcl_enabled = True
        assert shared.prompt_styles is context.prompt_styles
        assert shared.config_filename == str(context.paths.config_file)
        # A1111's folder flags have defaults extensions build paths from; Atelier's resolved ones.
        assert shared.cmd_opts.embeddings_dir == str(context.paths.embeddings_dir)
        assert shared.cmd_opts.lora_dir == str(context.paths.lora_dir)
        assert shared.cmd_opts.hypernetwork_dir == str(context.paths.hypernetwork_dir)
        assert shared.cmd_opts.nowebui is True and context.args.embeddings_dir is None


def test_settings_tab_shows_extension_options_under_their_section(served):
    from modules.extension_host.environment import app_scope
    from modules.ui.app import build_ui

    context = served[0]
    with app_scope(context):
        blocks = build_ui(context)
    config = blocks.get_config_file()
    by_id = {c["props"].get("elem_id"): c for c in config["components"] if c["props"].get("elem_id")}
    slider = by_id["setting_wcl_strength"]
    assert slider["type"] == "slider" and (slider["props"]["minimum"], slider["props"]["maximum"]) == (0, 1)
    assert by_id["setting_wcl_enabled"]["type"] == "checkbox"
    assert "(requires restart)" in by_id["setting_wcl_enabled"]["props"]["label"]
    assert by_id["setting_wcl_suffix"]["props"]["value"] == context.settings.current()["wcl_suffix"]

    section = by_id["settings_section_wildcards_lite"]
    assert section["props"]["label"] == "Wildcards lite"
    assert section["id"] in path_to(config["layout"], slider["id"])
    assert section["id"] not in path_to(config["layout"], by_id["setting_samples_save"]["id"])


def test_an_extension_option_in_quicksettings_is_edited_in_the_top_bar(served):
    from modules.extension_host.environment import app_scope
    from modules.ui.app import build_ui
    from modules.ui.top_bar import quicksetting_changed

    context = served[0]
    before = list(context.settings.current()["quicksettings_list"])
    context.settings.apply({"quicksettings_list": [*before, "wcl_strength"]})
    try:
        with app_scope(context):
            blocks = build_ui(context)
        config = blocks.get_config_file()
        ids = [c["props"].get("elem_id") for c in config["components"]]
        assert ids.count("setting_wcl_strength") == 1  # in the top bar, no longer in the Settings tab
        by_id = {c["props"].get("elem_id"): c for c in config["components"]}

        assert by_id["quicksettings"]["id"] in path_to(config["layout"], by_id["setting_wcl_strength"]["id"])
        status, _ = quicksetting_changed(context, "wcl_strength", 0.75)
        assert context.settings.current()["wcl_strength"] == 0.75, status
        status, _ = quicksetting_changed(context, "wcl_strength", 3)
        assert context.settings.current()["wcl_strength"] == 0.75 and "between 0 and 1" in status
    finally:
        context.settings.apply({"quicksettings_list": before, "wcl_strength": 0.5})


def test_sd_model_encodes_prompts_as_a1111_extensions_ask_it(served):
    from modules import shared
    from modules.extension_host.environment import app_scope
    from modules.prompt_parser import SdConditioning

    context = served[0]
    prompts = SdConditioning(["a cat", ""], is_negative_prompt=True, width=64, height=64)
    assert (prompts.is_negative_prompt, prompts.width) == (True, 64)
    assert SdConditioning(["x"], copy_from=prompts).height == 64
    with app_scope(context):
        cond = shared.sd_model.get_learned_conditioning(prompts)
        # One clip-skip step changes the encoding: the settings in effect are used.
        context.settings.apply({"CLIP_stop_at_last_layers": 2})
        try:
            skipped = shared.sd_model.get_learned_conditioning(["a cat"])
        finally:
            context.settings.apply({"CLIP_stop_at_last_layers": 1})
    width = context.models.current().text_encoders[0].config.hidden_size
    assert tuple(cond.shape) == (2, 77, width)
    assert not torch.equal(cond[0], cond[1])
    assert not torch.equal(skipped[0], cond[0])


def test_an_option_without_a_plain_type_takes_json_values_of_bounded_size():
    from modules.extension_host.option_registry import MAX_TEXT_VALUE, ExtensionSettingSpec

    spec = ExtensionSettingSpec("ext_presets", None, "Presets", "ext")
    assert spec.validate({"a": [1, 2]}) == {"a": [1, 2]}
    for bad in (object(), float("nan"), {"x": "y" * MAX_TEXT_VALUE}):
        with pytest.raises(ValueError, match="ext_presets"):
            spec.validate(bad)
    listed = ExtensionSettingSpec("ext_tags", ["a"], "Tags", "ext")
    assert listed.validate(("b", "c")) == ["b", "c"]
    with pytest.raises(ValueError, match="must be a list"):
        listed.validate("b")
