"""Start-up on an empty data folder: the demo checkpoint, the status page and the checkpoint routes."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from modules.api.server import create_app
from modules.serving.app_context import DEMO_CHECKPOINT_NAME, AppContext
from modules.serving.cmd_args import parse_args
from modules.library.safetensors_io import read_header

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def context(tmp_path):
    context = AppContext.from_args(parse_args(["--data-dir", str(tmp_path)]))
    context.refresh()
    return context


def test_empty_models_folder_gets_a_labelled_demo_checkpoint(context, tmp_path, caplog):
    assert len(context.checkpoints) == 0
    path = context.ensure_demo_checkpoint()
    assert path == tmp_path / "models" / "Stable-diffusion" / DEMO_CHECKPOINT_NAME
    assert "RANDOM" in path.name and "RANDOM weights" in caplog.text
    assert read_header(path).metadata["atelier_demo"] == "true"
    assert context.checkpoints.titles() == [DEMO_CHECKPOINT_NAME]
    assert context.ensure_demo_checkpoint() is None  # only when there is nothing else


def test_status_page_and_checkpoint_routes(context):
    context.ensure_demo_checkpoint()
    context.load_startup_model()
    client = TestClient(create_app(context))
    page = client.get("/")
    assert page.status_code == 200 and "Loaded:" in page.text and DEMO_CHECKPOINT_NAME in page.text
    models = client.get("/sdapi/v1/sd-models").json()
    assert len(models) == 1 and models[0]["title"].startswith(DEMO_CHECKPOINT_NAME + " [")
    assert models[0]["sha256"].startswith(models[0]["hash"])
    assert client.post("/sdapi/v1/refresh-checkpoints").status_code == 200
    missing = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "no-such-model"})
    assert missing.status_code == 404 and "no-such-model" in missing.text
    assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": DEMO_CHECKPOINT_NAME}).status_code == 200
    assert context.settings.current()["sd_model_checkpoint"] == models[0]["title"]


def test_webui_serves_on_an_empty_data_dir(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # --nowebui: "/" is the status page, which says what is loaded (the web UI is tested in tests/browser/).
    server = subprocess.Popen([sys.executable, str(REPO_ROOT / "webui.py"), "--data-dir", str(tmp_path),
                               "--port", str(port), "--nowebui"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        body = None
        while time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                    body = response.read().decode()
                if "Loaded:" in body:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        assert server.poll() is None, server.stdout.read()
        assert body is not None and "Loaded:" in body and DEMO_CHECKPOINT_NAME in body
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_generation_through_the_app_context(context, tmp_path):
    """The composed app: demo checkpoint, job queue, engine, settings overrides, images saved."""
    from modules.generation.engine import GenerationRequest

    context.ensure_demo_checkpoint()
    context.load_startup_model()
    context.jobs.start()
    try:
        request = GenerationRequest(prompt="a cat", steps=2, width=64, height=64, seed=4,
                                    override_settings={"CLIP_stop_at_last_layers": 2})
        job = context.jobs.submit(lambda control: context.engine.generate(request, control), kind="txt2img")
        result = job.wait(timeout=120).result
        assert job.state == "done", job.error
        assert "Clip skip: 2" in result.infotexts[0]
        assert context.settings.current()["CLIP_stop_at_last_layers"] == 1  # the override was per request
        assert [p.endswith("00000-4.png") for p in result.saved_paths] == [True]
        assert (tmp_path / "outputs" / "txt2img-images").exists()
    finally:
        context.jobs.shutdown()


def test_merge_route(context, tmp_path):
    """POST /sdapi/v1/merge-checkpoints with A1111's field names: the result is listed at once."""
    import torch

    from modules.library.synthetic_checkpoints import write_checkpoint

    folder = tmp_path / "models" / "Stable-diffusion"
    for seed, name in enumerate(("a", "b")):
        write_checkpoint(folder / f"{name}.safetensors", "sd1", dtype=torch.float32, seed=seed)
    context.refresh()
    context.jobs.start()
    try:
        client = TestClient(create_app(context))
        response = client.post("/sdapi/v1/merge-checkpoints", json={
            "primary_model_name": "a", "secondary_model_name": "b", "interpolation_method": "Weighted sum",
            "multiplier": 0.25, "save_as_half": True})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["title"].startswith("0.75(a) + 0.25(b).safetensors [")
        titles = [m["title"] for m in client.get("/sdapi/v1/sd-models").json()]
        assert body["title"] in titles
        bad = client.post("/sdapi/v1/merge-checkpoints", json={"primary_model_name": "a",
                                                               "interpolation_method": "Add difference"})
        assert bad.status_code == 422 and "secondary" in bad.text
        missing = client.post("/sdapi/v1/merge-checkpoints", json={"primary_model_name": "zzz",
                                                                   "secondary_model_name": "b"})
        assert missing.status_code == 404
        trial = client.post("/sdapi/v1/merge-checkpoints?load_without_saving=true", json={
            "primary_model_name": "a", "secondary_model_name": "b", "multiplier": 0.5})
        assert trial.status_code == 200, trial.text
        assert context.models.current().name.startswith("(merge trial) 0.5(a) + 0.5(b)")
        assert trial.json()["title"] not in [m["title"] for m in client.get("/sdapi/v1/sd-models").json()]
    finally:
        context.jobs.shutdown()
