"""Attacks on the settings a UI or API user may change (a logged-in user is not the operator).

The attack this file starts from: an API client points `outdir_txt2img_samples` at the install
folder, names the files `requirements`, turns `save_txt` on and sends a prompt that parses as a pip
requirement; the infotext then replaces `requirements.txt`, which `launch.py` installs from at the
next start. Every way in is tried: the options route, a request's `override_settings`, the
request's own `outpath_*` fields, a script's `p.outpath_*`, the Settings tab and the top bar; with
`--listen` (the directory settings lock as `--hide-ui-dir-config` does), and with the flags that
allow more. Then the extension settings, which `--listen` keeps out of reach like the Extensions tab.
"""

from __future__ import annotations

import dataclasses
import html
import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from modules.api.server import create_app
from modules.serving.cmd_args import parse_args
from modules.serving.settings_change import change_settings
from modules.ui import top_bar
from modules.ui.settings_tab import SettingsHandlers, tab_specs
from tests.test_api_support import WAIT, make_context

SMALL = {"width": 64, "height": 64, "steps": 1}
# What the attacker sets beside the output folder: a file named requirements.txt beside the image.
REQUIREMENTS_ATTACK = {"samples_filename_pattern": "requirements", "save_images_add_number": False,
                       "save_txt": True, "save_to_dirs": False}
# A prompt that makes the infotext's first line a pip requirement.
EVIL_PROMPT = "evil-package==6.6.6"


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    context = make_context(tmp_path_factory.mktemp("settings-policy"), names=("a",))
    yield context
    context.jobs.shutdown(timeout=WAIT)


@pytest.fixture
def settings_restored(context):
    """The settings as they were before the test, whatever it managed to change."""
    before = context.settings.current().to_dict()
    yield
    current = context.settings.current().to_dict()
    context.settings.apply({key: value for key, value in before.items() if current.get(key) != value})


def client_with(context, *flags: str) -> TestClient:
    """An API app on the same context, as if the server had been started with `flags`."""
    args = parse_args(["--data-dir", str(context.paths.data_dir), "--no-demo-checkpoint", *flags])
    return TestClient(create_app(dataclasses.replace(context, args=args), api=True))


def assert_refused(response, *fragments: str) -> str:
    assert response.status_code == 422, response.text
    message = response.json()["errors"]
    for fragment in fragments:
        assert fragment in message, message
    return message


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


# ------------------------------------------------------------------------ the requirements.txt attack


def test_the_requirements_txt_attack_through_the_options_route_is_refused(context, settings_restored):
    client = client_with(context)
    install_root = context.paths.data_dir  # with the default --data-dir, the data folder is the install folder
    before = files_under(install_root)
    for folder in (str(install_root), ".", "outputs/..", "models/.."):
        response = client.post("/sdapi/v1/options", json={"outdir_txt2img_samples": folder, **REQUIREMENTS_ATTACK})
        assert_refused(response, "'outdir_txt2img_samples'", "--allow-output-dirs-anywhere")
        assert context.settings.current()["samples_filename_pattern"] == ""  # all or nothing
    # An empty folder is accepted: it means the default folder (A1111 wrote into the folder the
    # server was started from, the install folder).
    response = client.post("/sdapi/v1/options", json={"outdir_txt2img_samples": "", **REQUIREMENTS_ATTACK})
    assert response.status_code == 200, response.text
    response = client.post("/sdapi/v1/txt2img", json={"prompt": EVIL_PROMPT, "save_images": True, **SMALL})
    assert response.status_code == 200, response.text
    assert not (install_root / "requirements.txt").exists()
    new = files_under(install_root) - before - {context.paths.config_file, context.paths.cache_file}
    assert new and all(p.is_relative_to(install_root / "outputs") for p in new), new


@pytest.mark.parametrize("folder, problem", [
    ("/", "absolute path"),
    ("/tmp/elsewhere", "absolute path"),
    ("~/pictures", "absolute path"),
    ("C:\\Users\\x", "absolute path"),
    ("\\\\server\\share", "absolute path"),
    ("..", "contains '..'"),
    ("outputs/../..", "contains '..'"),
    ("outputs\\..\\..", "contains '..'"),
    (".", "outside"),
    ("models/Stable-diffusion", "outside"),
    ("extensions/evil", "outside"),
    ("embeddings", "outside"),
    ("outputs-not-really", "outside"),
    ("outputs/a\x00b", "NUL"),
])
def test_output_folders_outside_outputs_are_refused_naming_the_key(context, folder, problem):
    client = client_with(context)
    for key in ("outdir_samples", "outdir_txt2img_samples", "outdir_grids", "outdir_txt2img_grids",
                "outdir_img2img_samples", "outdir_img2img_grids"):
        assert_refused(client.post("/sdapi/v1/options", json={key: folder}), f"setting {key!r}", problem)
        assert_refused(client.post("/sdapi/v1/txt2img", json={"prompt": "x", "override_settings": {key: folder},
                                                                 **SMALL}), "override_settings", key, problem)
    assert context.settings.current()["outdir_samples"] == ""


def test_a_link_inside_outputs_does_not_lead_out(context, tmp_path):
    outputs = context.paths.data_dir / "outputs"
    outputs.mkdir(exist_ok=True)
    link = outputs / "link-to-elsewhere"
    link.symlink_to(tmp_path, target_is_directory=True)
    try:
        response = client_with(context).post("/sdapi/v1/options", json={"outdir_samples": "outputs/link-to-elsewhere"})
        assert_refused(response, "outside")
    finally:
        link.unlink()


def test_folders_inside_outputs_are_accepted_and_used(context, settings_restored):
    client = client_with(context)
    assert client.post("/sdapi/v1/options", json={"outdir_txt2img_samples": "outputs/mine"}).status_code == 200
    response = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "seed": 9, "save_images": True, **SMALL})
    assert response.status_code == 200, response.text
    assert [p.name for p in (context.paths.data_dir / "outputs" / "mine").glob("*/*.png")] == ["00000-9.png"]
    # A per-request override inside outputs/ is fine too.
    response = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "seed": 10, "save_images": True, **SMALL,
                                                      "override_settings": {"outdir_samples": "outputs/per-request"}})
    assert response.status_code == 200, response.text
    assert len(list((context.paths.data_dir / "outputs" / "per-request").glob("*/00000-10.png"))) == 1
    # The value in effect may always be sent back (clients post what GET options returned).
    context.settings.apply({"outdir_grids": "/operator/chose/this"})  # config.json is the operator's
    options = client.get("/sdapi/v1/options").json()
    assert client.post("/sdapi/v1/options", json=options).status_code == 200


def test_the_operator_can_allow_more_folders(context, tmp_path, settings_restored):
    allowed = tmp_path / "shared-images"
    client = client_with(context, "--allow-output-dir", str(allowed))
    assert client.post("/sdapi/v1/options", json={"outdir_samples": str(allowed / "alice")}).status_code == 200
    assert_refused(client.post("/sdapi/v1/options", json={"outdir_samples": str(tmp_path / "other")}), "absolute path",
                   str(allowed))
    anywhere = client_with(context, "--allow-output-dirs-anywhere")
    assert anywhere.post("/sdapi/v1/options", json={"outdir_samples": str(tmp_path / "other")}).status_code == 200
    assert anywhere.post("/sdapi/v1/options", json={"outdir_samples": "../x"}).status_code == 200


def test_the_request_outpath_fields_do_not_choose_where_files_go(context, tmp_path):
    """A1111's API has no outpath_* fields (they are excluded from its request model); sent anyway,
    they are ignored, never used as a folder."""
    target = tmp_path / "attacker"
    response = client_with(context).post("/sdapi/v1/txt2img", json={
        "prompt": "x", "save_images": True, "outpath_samples": str(target), "outpath_grids": str(target),
        "outpath_scripts": str(target), **SMALL})
    assert response.status_code == 200, response.text
    assert not target.exists()


def test_a_script_sees_only_allowed_folders_in_p_outpath(context, tmp_path, settings_restored):
    """Scripts save where `p.outpath_samples` says (A1111's habit); it comes from the output folder
    settings with the request's overrides, so the overrides a client may send are the limit."""
    from modules.extension_host.extensions import ExtensionFolders, load_extensions
    from tests.test_extensions import write_extension

    (tmp_path / "builtin").mkdir()
    write_extension(tmp_path / "extensions", "saver", {"scripts/saver.py": """
        from modules import scripts

        class Saver(scripts.Script):
            def title(self):
                return "Saver"

            def show(self, is_img2img):
                return scripts.AlwaysVisible

            def process(self, p):
                p.extra_generation_params["Saved in"] = p.outpath_samples
    """})
    runtime = load_extensions(context.settings, context.args,
                              ExtensionFolders(user=tmp_path / "extensions", builtin=tmp_path / "builtin"))
    scripted = dataclasses.replace(context, extensions=runtime)
    client = TestClient(create_app(scripted, api=True))
    assert_refused(client.post("/sdapi/v1/txt2img", json={"prompt": "x", **SMALL, "override_settings": {
        "outdir_samples": str(tmp_path / "attacker")}}), "outdir_samples")
    response = client.post("/sdapi/v1/txt2img", json={"prompt": "x", **SMALL, "override_settings": {
        "outdir_samples": "outputs/scripted"}})
    info = response.json()["info"]
    assert response.status_code == 200 and os.path.join("outputs", "scripted") in info
    assert not (tmp_path / "attacker").exists()


# ---------------------------------------------------------------------------------- patterns


@pytest.mark.parametrize("key, pattern", [
    ("samples_filename_pattern", "../../requirements"),
    ("samples_filename_pattern", "a/b"),
    ("samples_filename_pattern", "[seed]\\..\\x"),
    ("directories_filename_pattern", ".."),
    ("directories_filename_pattern", "[date]/[model_name]"),
    ("directories_filename_pattern", "x\ny"),
])
def test_patterns_that_make_a_path_are_refused(context, key, pattern):
    client = client_with(context)
    assert_refused(client.post("/sdapi/v1/options", json={key: pattern}), f"setting {key!r}")
    assert_refused(client.post("/sdapi/v1/txt2img", json={"prompt": "x", "override_settings": {key: pattern}, **SMALL}),
                   key)


def test_tags_may_hold_separators_in_their_arguments(context, settings_restored):
    """`[datetime<%Y/%m>]`: the slash is in a tag's argument, and the tag's value is made safe."""
    client = client_with(context)
    response = client.post("/sdapi/v1/options", json={"directories_filename_pattern": "[datetime<%Y/%m>]"})
    assert response.status_code == 200, response.text
    response = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "save_images": True, **SMALL})
    assert response.status_code == 200, response.text
    folders = [p.name for p in (context.paths.data_dir / "outputs" / "txt2img-images").iterdir() if "_" in p.name]
    assert folders and all(len(name.split("_")) == 2 for name in folders)


# ------------------------------------------------------------------------------ --listen's locks


@pytest.mark.parametrize("flags", [["--listen"], ["--server-name", "0.0.0.0"], ["--hide-ui-dir-config"]])
def test_a_server_others_reach_locks_the_directory_settings(context, flags):
    client = client_with(context, *flags)
    for change in ({"outdir_txt2img_samples": "outputs/fine-locally"}, {"samples_filename_pattern": "[seed]-x"},
                   {"directories_filename_pattern": "[model_name]"}):
        assert_refused(client.post("/sdapi/v1/options", json=change), "locked on this server")
        assert_refused(client.post("/sdapi/v1/txt2img", json={"prompt": "x", "override_settings": change, **SMALL}),
                       "locked on this server")
    assert client.post("/sdapi/v1/options", json={"samples_format": "png"}).status_code == 200


def test_allow_ui_dir_config_unlocks_them_within_the_folder_rules(context, settings_restored):
    client = client_with(context, "--listen", "--allow-ui-dir-config")
    assert client.post("/sdapi/v1/options", json={"outdir_txt2img_samples": "outputs/shared"}).status_code == 200
    assert_refused(client.post("/sdapi/v1/options", json={"outdir_txt2img_samples": "/etc"}), "absolute path")
    # --hide-ui-dir-config wins: the operator asked for the lock in so many words.
    assert_refused(client_with(context, "--listen", "--allow-ui-dir-config", "--hide-ui-dir-config").post(
        "/sdapi/v1/options", json={"outdir_txt2img_samples": "outputs/x"}), "--hide-ui-dir-config")


def test_listen_keeps_the_directory_settings_out_of_the_settings_tab(context):
    from modules.serving.settings import locked_settings

    current = context.settings.current()
    shown = {spec.key for spec in tab_specs(current, locked_settings(parse_args(["--listen"])))}
    assert "outdir_txt2img_samples" not in shown and "samples_filename_pattern" not in shown
    local = {spec.key for spec in tab_specs(current, locked_settings(parse_args([])))}
    assert "outdir_txt2img_samples" in local


# --------------------------------------------------------------------------- the UI's own paths


def test_settings_tab_refuses_an_output_folder_outside_outputs(context, settings_restored):
    handlers = SettingsHandlers(context, tab_specs(context.settings.current()))
    loaded = handlers.snapshot()
    values = dict(loaded, outdir_txt2img_samples=str(context.paths.data_dir), samples_format="jpg",
                  **{k: v for k, v in REQUIREMENTS_ATTACK.items() if k in loaded})
    report, _ = handlers.apply(loaded, *values.values())
    assert "Not saved" in report and "outdir_txt2img_samples" in report and "absolute path" in report
    current = context.settings.current()
    assert current["outdir_txt2img_samples"] == "outputs/txt2img-images"
    assert current["samples_format"] == "jpg"  # the other fields are saved


def test_top_bar_refuses_an_output_folder_outside_outputs(context):
    message = html.unescape(top_bar.apply_quicksetting(context, "outdir_samples", "../../"))
    assert "'outdir_samples'" in message and "contains '..'" in message
    assert context.settings.current()["outdir_samples"] == ""


# -------------------------------------------------------------------------- extension settings


@pytest.mark.parametrize("change", [{"disabled_extensions": ["a-security-extension"]},
                                    {"disable_all_extensions": "all"}])
def test_listen_refuses_extension_settings_through_the_api_as_the_ui_does(context, change, settings_restored):
    [(key, _)] = change.items()
    for flags in (["--listen"], ["--server-name", "0.0.0.0"]):
        client = client_with(context, *flags)
        assert_refused(client.post("/sdapi/v1/options", json=change), f"setting {key!r}",
                       "--enable-insecure-extension-access")
        assert_refused(client.post("/sdapi/v1/txt2img", json={"prompt": "x", "override_settings": change, **SMALL}),
                       "--enable-insecure-extension-access")
        # The UI's own way in refuses it too.
        refused = change_settings(dataclasses.replace(context, args=parse_args(flags)), change, api=False).refused
        assert "--enable-insecure-extension-access" in refused[key]
    assert context.settings.current()[key] in ((), "none")
    # As for the Extensions tab: allowed with the flag, and on a local server.
    for flags in (["--listen", "--enable-insecure-extension-access"], []):
        assert client_with(context, *flags).post("/sdapi/v1/options", json=change).status_code == 200
        context.settings.apply({"disabled_extensions": (), "disable_all_extensions": "none"})


# -------------------------------------------------------------------- guards on local addresses


@pytest.mark.parametrize("change", [{"model_sources_allow_private": True}, {"api_forbid_local_requests": False}])
def test_a_server_others_reach_keeps_the_local_address_guards_with_the_operator(context, change, settings_restored):
    """A logged-in user on the LAN must not open the server's view of its own network (routers,
    other hosts, metadata services) to model look-ups or image URLs from the Settings tab."""
    [(key, value)] = change.items()
    listening = dataclasses.replace(context, args=parse_args(["--listen", "--gradio-auth", "u:p"]))
    refused = change_settings(listening, change, api=False).refused
    assert key in refused and "config.json" in refused[key]
    assert context.settings.current()[key] != value
    # On a local server the Settings tab may change them (the operator is the user).
    assert not change_settings(context, change, api=False).refused
    assert context.settings.current()[key] == value
