"""Attacks on the inputs issues 19 and 22 added, as an API client and a logged-in UI user would try them.

- The picture dropped on a prompt box (modules.ui.prompt_drop): sent over Gradio's own HTTP protocol to a
  served webui with --gradio-auth: server paths instead of an upload, an upload past --max-body-size, a
  forged 30000x30000 header, a compressed text chunk that inflates to 64 MiB, a file that is no image.
- The merger's Overwrite checkbox and names (modules.ui.merger_tab, modules.merging.merger, the API's
  merge-checkpoints): separators, `..`, absolute paths, NUL, names past the file system's limit, a
  symlink in the checkpoint folder pointing outside, names that look like the app's own files.
- The new settings through POST /sdapi/v1/options, the hires sampler and the new X/Y/Z axes through
  /sdapi/v1/txt2img: refused before any job, with the key or value named.
- The progress bar's `data-short` attribute and the footer: no attribute injection, no server paths.
"""

from __future__ import annotations

import html.parser
import json
import struct
import sys
import time
import zlib
from pathlib import Path

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

from modules.api.server import create_app
from modules.library.synthetic_checkpoints import write_checkpoint
from modules.serving.app_context import AppContext
from modules.serving.cmd_args import parse_args
from tests.test_api_support import WAIT, LiveServer, assert_error, basic_auth, make_context
from tests.test_security_gradio_files import Served, _run_event

PASSWORD = "probe22-pw"
UPLOAD_LIMIT_MB = 1
PARAMETERS = "a lighthouse at dusk\nNegative prompt: fog\nSteps: 7, Sampler: Euler, CFG scale: 4.5, Seed: 99, Size: 64x64"


# --- helpers ----------------------------------------------------------------------------------------

def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(width: int, height: int, *chunks: bytes) -> bytes:
    """A PNG whose header declares `width`x`height`, with `chunks` before one tiny (invalid) data chunk:
    a few dozen bytes that would decode into gigabytes."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + b"".join(chunks)
            + _chunk(b"IDAT", zlib.compress(b"\0" * 16)) + _chunk(b"IEND", b""))


def _text(key: str, value: str) -> bytes:
    return _chunk(b"tEXt", key.encode("latin-1") + b"\0" + value.encode("latin-1"))


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """webui.build_app's app with --gradio-auth and a 1 MiB body limit, served on loopback."""
    import webui

    data_dir = tmp_path_factory.mktemp("probe22-data")
    outside = tmp_path_factory.mktemp("probe22-outside")
    secret = "SECRET22-" + str(time.time_ns())
    secret_file = outside / "secret.png"
    secret_file.write_bytes(_png(8, 8, _text("parameters", secret + "\nSteps: 3")))
    (data_dir / "outputs").mkdir()
    (data_dir / "outputs" / "linked.png").symlink_to(secret_file)
    (data_dir / "config.json").write_text(json.dumps({"probe": secret}), encoding="utf-8")
    args = parse_args(["--data-dir", str(data_dir), "--gradio-auth", f"ui:{PASSWORD}", "--api",
                       "--max-body-size", str(UPLOAD_LIMIT_MB), "--skip-load-model-at-start", "--no-demo-checkpoint"])
    context = AppContext.from_args(args)
    context.refresh()
    try:
        with LiveServer(webui.build_app(args, context), lifespan="on") as server:
            yield Served(server.url, basic_auth("ui", PASSWORD), data_dir, secret_file, secret)
    finally:
        context.jobs.shutdown()


def _drop_event(config: dict, tabname: str = "txt2img") -> tuple[int, int, int, list[int], dict[int, str]]:
    """(fn_index, trigger, position of the upload, inputs, output id -> elem_id) of the tab's prompt-drop upload."""
    from modules.ui.prompt_drop import prompt_image_id

    elem_ids = {c["id"]: c.get("props", {}).get("elem_id") for c in config["components"]}
    upload_id = next(cid for cid, elem in elem_ids.items() if elem == prompt_image_id(tabname))
    for index, dependency in enumerate(config["dependencies"]):
        targets = dependency.get("targets") or []
        if dependency["inputs"] == [upload_id] and [upload_id, "upload"] in [list(t) for t in targets]:
            outputs = {position: elem_ids.get(cid) for position, cid in enumerate(dependency["outputs"])}
            return dependency.get("id", index), upload_id, 0, dependency["inputs"], outputs
    raise AssertionError(f"no upload event on #{prompt_image_id(tabname)}: the probe tests nothing")


def _upload(client: httpx.Client, name: str, data: bytes) -> httpx.Response:
    return client.post("/gradio_api/upload", files={"files": (name, data, "image/png")})


def _drop(client: httpx.Client, data: bytes, name: str = "dropped.png") -> tuple[dict, dict[int, str]]:
    uploaded = _upload(client, name, data)
    assert uploaded.status_code == 200, uploaded.text
    fn_index, trigger, _, _, outputs = _drop_event(client.get("/config").json())
    file = {"path": uploaded.json()[0], "orig_name": name, "meta": {"_type": "gradio.FileData"}}
    return _run_event(client, fn_index, trigger, [file]), outputs


def _output_by_elem(message: dict, outputs: dict[int, str], elem_id: str):
    data = message["output"]["data"]
    return next(data[position] for position, elem in outputs.items() if elem == elem_id)


# --- the picture dropped on a prompt box ---------------------------------------------------------------

def test_the_drop_upload_refuses_server_paths(served):
    paths = [str(served.secret_file), str(served.data_dir / "config.json"), str(served.data_dir / "outputs" / "linked.png"),
             "/etc/passwd", "/proc/self/environ", "webui.py", "../main/webui.py", "config.json"]
    with httpx.Client(base_url=served.url, headers=served.auth, timeout=60) as client:
        config = client.get("/config").json()
        for tabname in ("txt2img", "img2img"):
            fn_index, trigger, position, inputs, _ = _drop_event(config, tabname)
            for path in paths:
                data = [None] * len(inputs)
                data[position] = {"path": path, "orig_name": "x.png", "meta": {"_type": "gradio.FileData"}}
                message = _run_event(client, fn_index, trigger, data)
                text = json.dumps(message)
                assert served.secret not in text and "root:" not in text, (tabname, path, message)
                assert message.get("success") is False or "joined" in message, (tabname, path, message)
                error = (message.get("output") or {}).get("error") or ""
                assert str(served.data_dir) not in error and str(Path.cwd()) not in error, error


def test_an_upload_past_the_body_limit_is_refused(served):
    too_big = _png(8, 8, _text("parameters", PARAMETERS), _chunk(b"abcd", b"\0" * (UPLOAD_LIMIT_MB * 2**20 + 1)))
    with httpx.Client(base_url=served.url, headers=served.auth, timeout=60) as client:
        response = _upload(client, "big.png", too_big)
        assert response.status_code in (413, 400), (response.status_code, response.text[:200])
        cache = served.data_dir / "cache" / "gradio"
        assert not any(p.is_file() and p.stat().st_size >= len(too_big) for p in cache.rglob("*"))


def _note(message: dict, outputs: dict[int, str]) -> str:
    return str(_value(_output_by_elem(message, outputs, "html_log_txt2img")))


def _skipped(value) -> bool:
    """Gradio sends a skipped output as an update with no value."""
    return isinstance(value, dict) and "value" not in value


def _value(value):
    return value["value"] if isinstance(value, dict) else value


def test_a_dropped_forged_30000_square_header_is_refused_without_decoding(served):
    forged = _png(30000, 30000, _text("parameters", PARAMETERS))
    assert len(forged) < 400  # 2.7 GB of pixels declared in a few hundred bytes
    with httpx.Client(base_url=served.url, headers=served.auth, timeout=60) as client:
        message, outputs = _drop(client, forged)
    assert message.get("success") is True, message
    assert _skipped(_output_by_elem(message, outputs, "txt2img_prompt"))
    assert "Cannot read the image" in _note(message, outputs)


def test_a_dropped_large_forged_picture_is_read_from_its_metadata_only(served):
    # 9000x9000 is under Pillow's bomb limit: its (invalid, 16-byte) pixels are never decoded, or the
    # read would fail; the parameters reach the fields.
    forged = _png(9000, 9000, _text("parameters", PARAMETERS))
    with httpx.Client(base_url=served.url, headers=served.auth, timeout=60) as client:
        message, outputs = _drop(client, forged)
    assert message.get("success") is True, message
    assert _value(_output_by_elem(message, outputs, "txt2img_prompt")) == "a lighthouse at dusk"
    assert _value(_output_by_elem(message, outputs, "txt2img_steps")) == 7


def _ztxt_bomb() -> bytes:
    return _chunk(b"zTXt", b"parameters\0\0" + zlib.compress(b"a" * (64 * 2**20), 9))


def test_a_dropped_text_bomb_before_the_pixels_is_a_note_not_an_error(served):
    """Pillow's own reader inflates it first and refuses it with a ValueError (fixed in
    modules.outputs.image_metadata: it was an unhandled error of the event)."""
    data = _png(8, 8, _ztxt_bomb())
    assert len(data) < UPLOAD_LIMIT_MB * 2**20  # under the upload limit: only the inflater's cap stops it
    with httpx.Client(base_url=served.url, headers=served.auth, timeout=60) as client:
        message, outputs = _drop(client, data)
    assert message.get("success") is True, message
    assert _skipped(_output_by_elem(message, outputs, "txt2img_prompt"))
    assert "Cannot read the image" in _note(message, outputs)


def test_a_dropped_text_bomb_after_the_pixels_is_capped(served):
    from modules.outputs.image_metadata import MAX_TEXT_CHUNK

    header = struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0)
    data = (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b"\0" * 16))
            + _ztxt_bomb() + _chunk(b"IEND", b""))
    with httpx.Client(base_url=served.url, headers=served.auth, timeout=60) as client:
        message, outputs = _drop(client, data)
    assert message.get("success") is True, message
    prompt = _output_by_elem(message, outputs, "txt2img_prompt")
    assert _skipped(prompt) or len(str(_value(prompt))) <= MAX_TEXT_CHUNK
    assert len(json.dumps(message)) < 4 * MAX_TEXT_CHUNK


def test_a_dropped_non_image_leaves_the_fields_and_names_no_server_path(served):
    with httpx.Client(base_url=served.url, headers=served.auth, timeout=60) as client:
        message, outputs = _drop(client, b"#!/bin/sh\necho not a picture\n", name="evil.png")
    assert message.get("success") is True, message
    prompt = _output_by_elem(message, outputs, "txt2img_prompt")
    assert _skipped(prompt), prompt  # skipped, not emptied
    note = _note(message, outputs)
    assert "Cannot read the image" in note
    assert str(served.data_dir) not in note and "cache" not in note


def test_png_info_api_answers_a_text_bomb_without_a_server_error(client):
    import base64

    data = base64.b64encode(_png(8, 8, _ztxt_bomb())).decode()
    response = client.post("/sdapi/v1/png-info", json={"image": data})
    assert response.status_code in (200, 422), response.text[:300]
    assert "Traceback" not in response.text


# --- the merger: names, Overwrite, symlinks ------------------------------------------------------------

LONG = "m" * 120  # two such model names make a default output name over 255 bytes


@pytest.fixture(scope="module")
def merge_context(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe22-merge")
    folder = root / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    for seed, name in enumerate(("a", "b", LONG + "1", LONG + "2")):
        write_checkpoint(folder / f"{name}.safetensors", "sd1", size="tiny", dtype=torch.float32, seed=seed)
    outside = root / "outside"
    outside.mkdir()
    (outside / "victim.safetensors").write_bytes(b"VICTIM")
    (folder / "link.safetensors").symlink_to(outside / "victim.safetensors")
    (root / "config.json").write_text("{}", encoding="utf-8")
    context = AppContext.from_args(parse_args(["--data-dir", str(root)]))
    context.refresh()
    context.jobs.start()
    yield context
    context.jobs.shutdown(timeout=WAIT)


def _merge_in_tab(context, **changes) -> str:
    from modules.ui.merger_tab import MergerHandlers
    from tests.test_ui_merger_tab import widget_values

    handlers = MergerHandlers(context, top_bar_dropdown=False, poll_seconds=0.05)
    return str(list(handlers.merge(*widget_values(**changes)))[-1][0])


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): (p.read_bytes()[:64] if p.is_file() and not p.is_symlink() else b"")
            for p in root.rglob("*") if "cache" not in p.parts}


@pytest.mark.parametrize("name", ["../x", "../../config", "/etc/passwd", "/tmp/x", "sub/x", "x\\y", "x\x00y", "..",
                                  ".", ".hidden", "x" * 201, "é" * 101])
def test_merge_names_that_are_paths_or_too_long_are_refused_in_the_tab(merge_context, name):
    root = merge_context.paths.data_dir
    before, jobs = _tree(root), len(merge_context.jobs.jobs())
    message = _merge_in_tab(merge_context, custom_name=name, overwrite=True)
    assert "Failed: Custom Name" in message, message
    assert "custom_name" not in message  # named by its label
    assert _tree(root) == before and len(merge_context.jobs.jobs()) == jobs


def test_a_default_name_past_the_file_name_limit_is_a_message_not_a_crash(merge_context):
    message = _merge_in_tab(merge_context, primary=f"{LONG}1.safetensors", secondary=f"{LONG}2.safetensors",
                            custom_name="", overwrite=True)
    assert "Failed:" in message and "255" in message and "Custom Name" in message, message


def test_overwrite_replaces_a_symlink_never_its_outside_target(merge_context):
    folder = merge_context.paths.checkpoints_dir
    victim = merge_context.paths.data_dir / "outside" / "victim.safetensors"
    message = _merge_in_tab(merge_context, custom_name="link", overwrite=True)
    assert "Checkpoint saved" in message, message
    assert victim.read_bytes() == b"VICTIM"
    assert not (folder / "link.safetensors").is_symlink()
    assert (folder / "link.safetensors").stat().st_size > len(b"VICTIM")


def test_names_of_the_apps_own_files_stay_in_the_checkpoint_folder(merge_context):
    root = merge_context.paths.data_dir
    config = (root / "config.json").read_bytes()
    for name in ("config.json", "ui-config.json", "styles.csv", "config"):
        message = _merge_in_tab(merge_context, custom_name=name, overwrite=True)
        assert "Checkpoint saved" in message, message
        assert (merge_context.paths.checkpoints_dir / f"{name}.safetensors").is_file()
    assert (root / "config.json").read_bytes() == config
    assert not (root / "ui-config.json").exists() and not (root / "styles.csv").exists()


@pytest.fixture(scope="module")
def merge_client(merge_context):
    with TestClient(create_app(merge_context, api=True)) as client:
        yield client


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "x\x00y", "sub/x", ".x", "x" * 300])
def test_merge_names_over_the_api_are_a_422_and_nothing_is_queued(merge_context, merge_client, name):
    jobs = len(merge_context.jobs.jobs())
    response = merge_client.post("/sdapi/v1/merge-checkpoints", json={
        "primary_model_name": "a", "secondary_model_name": "b", "custom_name": name, "overwrite": True})
    assert_error(response, 422, "custom_name")
    assert len(merge_context.jobs.jobs()) == jobs


# --- settings, the hires sampler and the X/Y/Z axes over the API -------------------------------------

@pytest.fixture(scope="module")
def api_context(tmp_path_factory):
    from modules.extension_host.extensions import BUILTIN_DIR, ExtensionFolders, load_extensions

    data_dir = tmp_path_factory.mktemp("probe22-api")
    context = make_context(data_dir, names=("a",))
    (data_dir / "styles.csv").write_text("name,prompt,negative_prompt\nwarm,warm light,\n", encoding="utf-8")
    context.extensions = load_extensions(context.settings, context.args,
                                         ExtensionFolders(user=data_dir / "extensions", builtin=BUILTIN_DIR))
    yield context
    context.jobs.shutdown(timeout=WAIT)


@pytest.fixture(scope="module")
def client(api_context):
    with TestClient(create_app(api_context, api=True)) as client:
        yield client


BAD_SETTINGS = [
    ("live_preview_refresh_period", -5), ("live_preview_refresh_period", 1e308), ("live_preview_refresh_period", "nan"),
    ("live_preview_refresh_period", "x"), ("live_preview_refresh_period", None),
    ("show_progress_every_n_steps", -5), ("show_progress_every_n_steps", 1e12), ("show_progress_every_n_steps", "x"),
    ("hires_fix_show_sampler", "yes"), ("hires_fix_show_sampler", 5),
    ("extra_networks_default_multiplier", 1e308), ("extra_networks_default_multiplier", -1e9),
    ("extra_networks_default_multiplier", "nan"),
    ("keyedit_precision_attention", 0), ("keyedit_precision_extra", 1e308), ("keyedit_delimiters", 5),
    ("keyedit_delimiters", None), ("keyedit_delimiters_whitespace", ["Tab", "<b>"]), ("keyedit_move", "x"),
]


@pytest.mark.parametrize(("key", "value"), BAD_SETTINGS)
def test_new_settings_refuse_bad_values_by_name(api_context, client, key, value):
    before = api_context.settings.current()[key]
    assert_error(client.post("/sdapi/v1/options", json={key: value}), 422, key)
    assert api_context.settings.current()[key] == before


@pytest.mark.parametrize(("key", "literal"), [("live_preview_refresh_period", "NaN"),
                                              ("live_preview_refresh_period", "Infinity"),
                                              ("extra_networks_default_multiplier", "-Infinity")])
def test_non_finite_json_numbers_are_refused(api_context, client, key, literal):
    before = api_context.settings.current()[key]
    response = client.post("/sdapi/v1/options", content=f'{{"{key}": {literal}}}',
                           headers={"content-type": "application/json"})
    assert_error(response, 422, key)
    assert api_context.settings.current()[key] == before


def test_odd_delimiters_are_kept_as_data_in_the_pages_opts(api_context, client):
    from modules.ui.page_script import options_json

    odd = "</script><img src=x onerror=alert(1)>\"'\\\x00"
    before = api_context.settings.current()["keyedit_delimiters"]
    try:
        assert client.post("/sdapi/v1/options", json={"keyedit_delimiters": odd}).status_code == 200
        text = options_json(api_context)
        assert json.loads(text)["keyedit_delimiters"] == odd  # served as JSON data, never inlined as script
    finally:
        api_context.settings.apply({"keyedit_delimiters": before})


def test_restricted_settings_stay_restricted(api_context, client):
    before = api_context.settings.current()["api_forbid_local_requests"]
    response = client.post("/sdapi/v1/options", json={"api_forbid_local_requests": not before})
    assert response.status_code in (403, 422), response.text
    assert "api_forbid_local_requests" in response.text
    assert api_context.settings.current()["api_forbid_local_requests"] == before


TXT2IMG = {"prompt": "x", "steps": 1, "width": 64, "height": 64}


@pytest.mark.parametrize("name", ["Nope", "../samplers/euler", "<script>alert(1)</script>", "s" * 5000])
def test_unknown_hires_samplers_are_refused_before_any_job(api_context, client, name):
    jobs = len(api_context.jobs.jobs())
    body = assert_error(client.post("/sdapi/v1/txt2img", json={**TXT2IMG, "enable_hr": True, "hr_scale": 1.5,
                                                                "hr_sampler_name": name}), 422, "hr_sampler_name")
    assert name[:40] in body["errors"]
    assert len(api_context.jobs.jobs()) == jobs


def _xyz(client, axis: str, values: str, prompt: str = "p1, p2, p3"):
    args = [axis, values, [], "Nothing", "", [], "Nothing", "", [], True, False, False, False, False, False, False, 0,
            False]
    return client.post("/sdapi/v1/txt2img", json={**TXT2IMG, "prompt": prompt, "script_name": "x/y/z plot",
                                                   "script_args": args})


@pytest.mark.parametrize(("axis", "values", "fragments"), [
    ("Prompt order", ", ".join(f"p{i}" for i in range(1, 13)), ("Prompt order", "orderings")),
    ("Prompt order", "nowhere", ("Prompt order", "nowhere")),
    ("Styles", "no such style", ("Styles", "no such style")),
    ("Styles", "<b>x</b>", ("Styles", "<b>x</b>")),
    ("RNG source", "junk", ("RNG source", "junk")),
    ("Hires sampler", "bogus", ("Hires sampler", "bogus")),
])
def test_new_xyz_axes_refuse_bad_values_before_any_job(api_context, client, axis, values, fragments):
    prompt = ", ".join(f"p{i}" for i in range(1, 13))
    jobs = len(api_context.jobs.jobs())
    body = assert_error(_xyz(client, axis, values, prompt), 422, *fragments)
    assert "Traceback" not in body["errors"]
    # The script checks its axes as the job starts (A1111's order): refused before any sampling step.
    new = api_context.jobs.jobs()[jobs:]
    assert all(job.state.value == "failed" and job.step == 0 for job in new), new


# --- the progress bar's data-short and the footer -----------------------------------------------------

class _Attributes(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


@pytest.mark.parametrize("text", ["'><img src=x onerror=alert(1)>", '" onmouseover="alert(1)', "</div><script>x</script>"])
def test_progress_short_text_cannot_leave_its_attribute(text):
    from modules.ui.generation import _bar

    parser = _Attributes()
    parser.feed(_bar(50, text, text))
    assert [tag for tag, _ in parser.tags] == ["div", "div", "span"]
    assert parser.tags[0][1]["data-short"] == text
    assert not any(name.startswith("on") for _, attrs in parser.tags for name in attrs)


def test_the_footer_names_versions_not_server_paths():
    from modules.serving.paths import REPO_ROOT
    from modules.ui.footer import footer_html, versions

    page = footer_html(True, versions())
    for path in {str(REPO_ROOT), sys.prefix, sys.executable, str(Path.home()), str(Path.cwd())}:
        assert path not in page, path
    parser = _Attributes()
    parser.feed(page)
    assert {attrs.get("href") for tag, attrs in parser.tags if tag == "a"} == {"docs", "./"}


def test_the_footer_escapes_what_a_package_version_says():
    from modules.ui.footer import footer_html

    parser = _Attributes()
    parser.feed(footer_html(False, [("torch", "<img src=x onerror=alert(1)>")]))
    assert "img" not in [tag for tag, _ in parser.tags]
