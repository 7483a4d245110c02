"""Attacks on the web UI's file handling, by a logged-in user, against the app webui.py serves.

A Gradio event's file/image input takes a `FileData` whose `path` the client writes; if Gradio's
"only files a user uploaded" rule is off, the server copies the named file into its cache and
`/gradio_api/file=` serves the copy. Every file-typed input of every tab is tried with server
paths: absolute, relative to the working folder, through a symlink, and `/proc/self/environ`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import uuid
from pathlib import Path

import httpx
import pytest

from modules.serving.app_context import AppContext
from modules.serving.cmd_args import parse_args
from tests.test_api_support import LiveServer, basic_auth

PASSWORD = "probe-pw"
FILE_COMPONENTS = {"image", "file", "gallery", "imageeditor", "uploadbutton", "audio", "video", "model3d",
                   "simpleimage", "imageslider", "multimodaltextbox", "annotatedimage", "dataframe"}


@dataclasses.dataclass
class Served:
    url: str
    auth: dict
    data_dir: Path
    secret_file: Path
    secret: str


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """webui.build_app's app, served by uvicorn on loopback, with --gradio-auth."""
    import webui

    data_dir = tmp_path_factory.mktemp("probe-data")
    outside = tmp_path_factory.mktemp("probe-outside")
    secret = "SECRET-" + secrets.token_hex(8)
    secret_file = outside / "secret.txt"
    secret_file.write_text(secret, encoding="utf-8")
    (data_dir / "outputs").mkdir()
    (data_dir / "outputs" / "linked.png").symlink_to(secret_file)
    args = parse_args(["--data-dir", str(data_dir), "--gradio-auth", f"ui:{PASSWORD}", "--api",
                       "--skip-load-model-at-start", "--no-demo-checkpoint"])
    context = AppContext.from_args(args)
    context.refresh()
    try:
        with LiveServer(webui.build_app(args, context), lifespan="on") as server:
            yield Served(server.url, basic_auth("ui", PASSWORD), data_dir, secret_file, secret)
    finally:
        context.jobs.shutdown()


def _file_inputs(config: dict) -> list[tuple[int, int, int, list[int]]]:
    """(fn_index, trigger id, position of the file input, input ids) for every event with a file input."""
    kinds = {component["id"]: component.get("type") for component in config["components"]}
    found = []
    for index, dependency in enumerate(config["dependencies"]):
        inputs = dependency["inputs"]
        for position, component_id in enumerate(inputs):
            if kinds.get(component_id) in FILE_COMPONENTS:
                trigger = dependency["targets"][0][0] if dependency.get("targets") else None
                found.append((dependency.get("id", index), trigger, position, inputs))
    return found


def _run_event(client: httpx.Client, fn_index: int, trigger: int | None, data: list) -> dict:
    """Send one event through Gradio's queue as the page does; the final message."""
    session = uuid.uuid4().hex
    joined = client.post("/gradio_api/queue/join", json={
        "data": data, "event_data": None, "fn_index": fn_index, "trigger_id": trigger, "session_hash": session})
    if joined.status_code != 200:
        return {"joined": joined.status_code, "text": joined.text}
    with client.stream("GET", "/gradio_api/queue/data", params={"session_hash": session}, timeout=60) as stream:
        for line in stream.iter_lines():
            if not line.startswith("data:"):
                continue
            message = json.loads(line[5:])
            if message.get("msg") in ("process_completed", "unexpected_error"):
                return message
    return {}


def _attack_paths(served: Served) -> list[str]:
    return [str(served.secret_file), str(served.data_dir / "config.json"), "webui.py", "./webui.py",
            "../main/webui.py" if Path.cwd().name == "main" else "webui.py",
            str(served.data_dir / "outputs" / "linked.png"), "/proc/self/environ", "/etc/passwd"]


def test_every_file_input_refuses_server_paths(served):
    (served.data_dir / "config.json").write_text(json.dumps({"probe": served.secret}), encoding="utf-8")
    os.environ["ATELIER_PROBE"] = served.secret  # would show in /proc/self/environ
    try:
        with httpx.Client(base_url=served.url, headers=served.auth, timeout=60) as client:
            config = client.get("/config").json()
            targets = _file_inputs(config)
            # The PNG Info tab's image is the built-in one; extensions may add more.
            assert targets, "no event with a file input was found: the probe tests nothing"
            for fn_index, trigger, position, inputs in targets:
                for path in _attack_paths(served):
                    data = [None] * len(inputs)
                    data[position] = {"path": path, "orig_name": "x.png", "meta": {"_type": "gradio.FileData"}}
                    message = _run_event(client, fn_index, trigger, data)
                    output = json.dumps(message)
                    assert served.secret not in output and "root:" not in output, (fn_index, path)
                    # Refused before the handler ran, and the error names no server path.
                    assert message.get("success") is False or "joined" in message, (fn_index, path, message)
                    error = (message.get("output") or {}).get("error") or ""
                    assert str(Path.cwd()) not in error and str(served.data_dir) not in error, error
            cache = Path(os.environ["GRADIO_TEMP_DIR"])
            assert cache.is_relative_to(served.data_dir)
            copied = [p for p in cache.rglob("*") if p.is_file()]
            for file in copied:
                assert served.secret not in file.read_text(errors="ignore"), file
                assert not file.read_bytes().startswith(b"root:"), file
    finally:
        os.environ.pop("ATELIER_PROBE", None)


def test_file_route_serves_no_server_file(served):
    with httpx.Client(base_url=served.url, headers=served.auth) as client:
        for path in _attack_paths(served) + [str(served.data_dir / "cache.json")]:
            response = client.get(f"/gradio_api/file={path}")
            assert response.status_code in (403, 404), (path, response.status_code)
            assert served.secret not in response.text


def test_an_upload_is_still_accepted(served):
    """The rule refuses server paths, not the user's own uploads (PNG Info reads an uploaded PNG)."""
    import io

    from PIL import Image, PngImagePlugin

    buffer = io.BytesIO()
    meta = PngImagePlugin.PngInfo()
    meta.add_text("parameters", "a lighthouse\nSteps: 5, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 8x8")
    Image.new("RGB", (8, 8)).save(buffer, "PNG", pnginfo=meta)
    with httpx.Client(base_url=served.url, headers=served.auth, timeout=60) as client:
        uploaded = client.post("/gradio_api/upload", files={"files": ("x.png", buffer.getvalue(), "image/png")})
        assert uploaded.status_code == 200, uploaded.text
        path = uploaded.json()[0]
        assert Path(path).is_relative_to(served.data_dir / "cache" / "gradio")
        config = client.get("/config").json()
        image_id = next(c["id"] for c in config["components"] if c.get("props", {}).get("elem_id") == "pnginfo_image")
        fn_index, trigger, position, inputs = next(t for t in _file_inputs(config) if image_id in t[3])
        data = [None] * len(inputs)
        data[position] = {"path": path, "orig_name": "x.png", "meta": {"_type": "gradio.FileData"}}
        message = _run_event(client, fn_index, trigger, data)
        assert message.get("success") is True, message
        assert "a lighthouse" in json.dumps(message["output"])


def test_the_cache_is_this_instances_and_stale_ones_are_removed(tmp_path):
    from modules.ui.file_rules import prepare_gradio_cache

    root = tmp_path / "cache" / "gradio"
    stale = root / "999999999"  # no such process
    stale.mkdir(parents=True)
    (stale / "old.png").write_bytes(b"old upload")
    previous = os.environ.get("GRADIO_TEMP_DIR")
    folder = prepare_gradio_cache(tmp_path, pid=os.getpid())
    try:
        assert folder == root / str(os.getpid()) and folder.is_dir() and not any(folder.iterdir())
        assert not stale.exists()
        assert os.environ["GRADIO_TEMP_DIR"] == str(folder)
    finally:
        os.environ["GRADIO_TEMP_DIR"] = previous or ""
        if previous is None:
            del os.environ["GRADIO_TEMP_DIR"]
