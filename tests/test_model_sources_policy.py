"""Model sources: the token settings never leave the server, who may download, and where files go."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from modules.api.server import create_app
from modules.model_sources import placement
from modules.model_sources.types import ModelSourceError, RemoteFile
from modules.serving.cmd_args import model_downloads_refusal, parse_args
from modules.serving.paths import Paths
from modules.serving.settings import SCHEMA_BY_KEY, SECRET_MASK
from tests.test_api_support import make_context

TOKEN = "hf_" + "abc123" * 6


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    return make_context(tmp_path_factory.mktemp("model-sources-policy"), load=False, start_jobs=False)


def test_token_settings_are_masked_in_the_api_and_the_page_and_a_posted_mask_changes_nothing(context):
    context.settings.apply({"hf_token": TOKEN, "civitai_api_key": "civ-key-1"})
    client = TestClient(create_app(context, api=True))
    options = client.get("/sdapi/v1/options").json()
    assert options["hf_token"] == SECRET_MASK and options["civitai_api_key"] == SECRET_MASK
    assert TOKEN not in json.dumps(options)

    # A client posting back what it read (webuiapi does) keeps the tokens.
    assert client.post("/sdapi/v1/options", json=options).status_code == 200
    assert context.settings.current()["hf_token"] == TOKEN

    from modules.ui.page_script import options_json

    assert TOKEN not in options_json(context) and json.loads(options_json(context))["hf_token"] == SECRET_MASK

    # A new value is stored; an empty one clears it.
    assert client.post("/sdapi/v1/options", json={"hf_token": "hf_other"}).status_code == 200
    assert context.settings.current()["hf_token"] == "hf_other"
    assert client.post("/sdapi/v1/options", json={"hf_token": ""}).status_code == 200
    assert context.settings.current()["hf_token"] == ""


def test_settings_tab_never_holds_a_token_and_an_untouched_field_is_no_edit(context):
    from modules.ui.settings_tab import SettingsHandlers, widget_value

    spec = SCHEMA_BY_KEY["civitai_api_key"]
    assert widget_value(spec, "secret-value") == SECRET_MASK and widget_value(spec, "") == ""
    context.settings.apply({"civitai_api_key": "civ-key-2"})
    handlers = SettingsHandlers(context, [spec])
    snapshot = handlers.snapshot()
    assert snapshot == {"civitai_api_key": SECRET_MASK}
    handlers.apply(snapshot, SECRET_MASK)
    assert context.settings.current()["civitai_api_key"] == "civ-key-2"
    handlers.apply(snapshot, "civ-key-3")
    assert context.settings.current()["civitai_api_key"] == "civ-key-3"


@pytest.mark.parametrize("bad", ["key\r\nX-Injected: 1", " key", "key\n", "a\0b"])
def test_a_token_that_would_break_an_http_header_is_refused(bad):
    with pytest.raises(ValueError, match="one line"):
        SCHEMA_BY_KEY["hf_token"].validate(bad)


def test_private_address_switch_cannot_be_turned_on_through_the_api(context):
    client = TestClient(create_app(context, api=True))
    answer = client.post("/sdapi/v1/options", json={"model_sources_allow_private": True})
    assert answer.status_code == 422 and "model_sources_allow_private" in answer.text
    assert context.settings.current()["model_sources_allow_private"] is False


@pytest.mark.parametrize("flags, allowed", [
    ([], True),
    (["--listen"], False),
    (["--listen", "--gradio-auth", "u:p"], False),
    (["--listen", "--enable-model-downloads"], False),  # no auth: anyone on the LAN could fill the disk
    (["--listen", "--gradio-auth", "u:p", "--enable-model-downloads"], True),
    (["--listen", "--api-auth", "u:p", "--enable-insecure-extension-access"], True),
    (["--server-name", "0.0.0.0", "--gradio-auth", "u:p"], False),
])
def test_downloads_beyond_localhost_need_auth_and_a_flag(flags, allowed):
    refusal = model_downloads_refusal(parse_args(flags))
    assert (refusal is None) is allowed
    if refusal:
        assert "--enable-model-downloads" in refusal or "auth" in refusal


def _file(name: str, file_type: str = "Model") -> RemoteFile:
    return RemoteFile(name=name, download_url="https://example.invalid/" + name, file_type=file_type)


@pytest.mark.parametrize("model_type, file_type, kind", [
    ("Checkpoint", "Model", "checkpoint"), ("Checkpoint", "Pruned Model", "checkpoint"),
    ("LORA", "Model", "lora"), ("LoCon", "Model", "lora"), ("DoRA", "Model", "lora"),
    ("TextualInversion", "Model", "embedding"), ("TextualInversion", "Negative", "embedding"),
    ("Hypernetwork", "Model", "hypernetwork"), ("VAE", "Model", "vae"),
    ("Checkpoint", "VAE", "vae"), ("Checkpoint", "Config", "config"),
])
def test_each_type_goes_to_its_folder(tmp_path, model_type, file_type, kind):
    name = "x.yaml" if file_type == "Config" else "x.safetensors"
    assert placement.kind_for(model_type, _file(name, file_type)) == kind
    args = parse_args(["--data-dir", str(tmp_path)])
    paths = Paths.from_args(args)
    expected = {"checkpoint": paths.checkpoints_dir, "config": paths.checkpoints_dir, "lora": paths.lora_dir,
                "embedding": paths.embeddings_dir, "hypernetwork": paths.hypernetwork_dir, "vae": paths.vae_dir}
    assert placement.folder_for(kind, paths) == expected[kind]


def test_upscalers_go_to_the_esrgan_folder_or_its_flag(tmp_path):
    # spandrel identifies any family's file, and models/ESRGAN lists .pth, .pt and .safetensors
    assert placement.kind_for("Upscaler", _file("4x-Thing.pth")) == "upscaler"
    paths = Paths.from_args(parse_args(["--data-dir", str(tmp_path)]))
    assert placement.folder_for("upscaler", paths) == paths.models_dir / "ESRGAN"
    flagged = Paths.from_args(parse_args(["--data-dir", str(tmp_path), "--esrgan-models-path", str(tmp_path / "up")]))
    assert placement.folder_for("upscaler", flagged) == tmp_path / "up"
    assert placement.safe_file_name("4x-Thing.PTH", "upscaler") == "4x-Thing.pth"


def test_folder_flags_are_respected(tmp_path):
    args = parse_args(["--data-dir", str(tmp_path), "--ckpt-dir", str(tmp_path / "ck"), "--lora-dir",
                       str(tmp_path / "lo"), "--embeddings-dir", str(tmp_path / "em"), "--hypernetwork-dir",
                       str(tmp_path / "hn"), "--vae-dir", str(tmp_path / "va")])
    paths = Paths.from_args(args)
    assert [placement.folder_for(k, paths).name for k in ("checkpoint", "lora", "embedding", "hypernetwork", "vae")] \
        == ["ck", "lo", "em", "hn", "va"]


@pytest.mark.parametrize("model_type", ["Controlnet", "MotionModule", "Poses", "Wildcards", "Other"])
def test_types_atelier_does_not_use_are_refused_with_the_reason(model_type):
    with pytest.raises(ModelSourceError, match=model_type):
        placement.kind_for(model_type, _file("x.safetensors"))


def test_a_source_without_a_type_asks_the_user_to_choose():
    with pytest.raises(ModelSourceError, match="choose its type"):
        placement.kind_for(None, _file("x.safetensors"))


@pytest.mark.parametrize("hostile, expected", [
    ("../../../etc/passwd.safetensors", "passwd.safetensors"),
    ("..\\..\\windows\\evil.ckpt", "evil.ckpt"),
    ("/abs/path/model.safetensors", "model.safetensors"),
    ("..safetensors.safetensors", "safetensors.safetensors"),
    ("a\x00b\x1f<c>|d?.SafeTensors", "a_b__c__d_.safetensors"),
    ("model.vae.safetensors", "model_vae.safetensors"),
])
def test_names_from_a_source_become_plain_file_names(hostile, expected):
    assert placement.safe_file_name(hostile, "checkpoint") == expected


@pytest.mark.parametrize("bad", ["model.exe", "model.safetensors.html", "...", ".safetensors", "model"])
def test_names_without_a_usable_stem_or_extension_are_refused(bad):
    with pytest.raises(ModelSourceError):
        placement.safe_file_name(bad, "checkpoint")


def test_long_names_are_cut_below_file_system_limits():
    name = placement.safe_file_name("x" * 400 + ".safetensors", "lora")
    assert len(name) <= placement.MAX_NAME_LENGTH and name.endswith(".safetensors")


def test_a_name_clash_gets_a_suffix_and_nothing_is_overwritten(tmp_path: Path):
    (tmp_path / "model.safetensors").write_bytes(b"mine")
    (tmp_path / "model-1.safetensors").write_bytes(b"mine too")
    assert placement.free_destination(tmp_path, "model.safetensors") == tmp_path / "model-2.safetensors"
    assert placement.free_destination(tmp_path, "model.safetensors", {tmp_path / "model-2.safetensors"}) \
        == tmp_path / "model-3.safetensors"
    (tmp_path / "other.ckpt").write_bytes(b"x")  # a same-stem model of another format would share its card
    assert placement.free_destination(tmp_path, "other.safetensors") == tmp_path / "other-1.safetensors"
