"""The `/atelier/v1/models/...` routes over a stand-in service (tests/fake_model_service.py): the look-up
card, download jobs and their progress, cancel, cards, inspect and the tools; statuses for unknown ids,
refused writes, bad sources and bad fields; the routes exist without --api and take the API's
credentials."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from modules.api.errors import install_error_handlers
from modules.api.routes_model_sources import (PREFIX, TYPE_NAME_BY_KIND, ModelKind, ModelTypeName, ToolName,
                                              build_router)
from modules.model_sources.types import ModelSourceError
from tests.fake_model_service import FakeModelSources, civitai_model, url_model
from tests.test_api_support import basic_auth

pytest_plugins = ["tests.fake_model_hosts.fixtures"]

CIVITAI_URL = "https://civitai.com/models/1?modelVersionId=11"


@pytest.fixture
def service() -> FakeModelSources:
    return FakeModelSources(models={CIVITAI_URL: civitai_model(), "https://example.com/model.safetensors": url_model(),
                                    "controlnet": civitai_model(model_type="Controlnet")},
                            existing={"tiny-full.ckpt": "/data/checkpoint/already.ckpt"},
                            local={"checkpoint": ["a.safetensors", "known.safetensors"], "lora": ["known-lora.pt"],
                                   "embedding": [], "hypernetwork": [], "vae": []})


@pytest.fixture
def client(service) -> TestClient:
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(build_router(SimpleNamespace(model_sources=service)))
    return TestClient(app)


def test_lookup_answers_the_card_with_files_folder_and_copies_already_here(client, service):
    response = client.post(f"{PREFIX}/lookup", json={"source": CIVITAI_URL})
    assert response.status_code == 200, response.text
    card = response.json()
    model = service.models[CIVITAI_URL]
    assert card["name"] == model.name and card["kind"] == "checkpoint" and card["folder"] == "/data/checkpoint"
    assert card["base_model"] == "SD 1.5" and card["trigger_words"] == list(model.trigger_words)
    assert card["default_file"] == "tiny.safetensors"
    by_name = {f["name"]: f for f in card["files"]}
    assert by_name["tiny-full.ckpt"]["existing"] == "/data/checkpoint/already.ckpt"
    assert by_name["tiny.safetensors"]["existing"] is None
    assert by_name["tiny.safetensors"]["sha256"] == model.files[1].sha256
    assert by_name["tiny.safetensors"]["precision"] == "fp16" and by_name["tiny-full.ckpt"]["size_kind"] == "full"
    assert card["preview_url"] == model.previews[0].url and card["refusal"] is None


def test_lookup_passes_on_a_refusal_and_the_sources_status(client):
    refused = client.post(f"{PREFIX}/lookup", json={"source": "controlnet"}).json()
    assert refused["kind"] is None and "Controlnet" in refused["refusal"]
    bad = client.post(f"{PREFIX}/lookup", json={"source": "no such thing"})
    assert bad.status_code == 400  # the ModelSourceError's own status, not the ValueError default
    assert bad.json()["error"] == "ModelSourceError" and "no such thing" in bad.json()["detail"]


@pytest.mark.parametrize("body, field", [
    ({}, "source"),
    ({"source": ""}, "source"),
    ({"source": "x" * 5000}, "source"),
    ({"source": CIVITAI_URL, "surprise": 1}, "surprise"),
])
def test_lookup_validation_names_the_field(client, service, body, field):
    response = client.post(f"{PREFIX}/lookup", json=body)
    assert response.status_code == 422
    assert field in response.json()["errors"]
    assert not service.calls


def test_a_download_is_a_job_followed_by_id_until_done(client, service):
    started = client.post(f"{PREFIX}/downloads", json={"source": CIVITAI_URL})
    assert started.status_code == 202, started.text
    job = started.json()
    assert job["state"] == "queued" and job["file_name"] == "tiny.safetensors" and job["kind"] == "checkpoint"
    service.advance(job["id"], 512, speed=256.0)
    progress = client.get(f"{PREFIX}/downloads/{job['id']}").json()
    assert (progress["state"], progress["bytes_done"], progress["total"]) == ("running", 512, 2048)
    assert progress["speed"] == 256.0 and progress["eta"] == (2048 - 512) / 256.0
    service.finish(job["id"], destination="/data/checkpoint/tiny.safetensors")
    done = client.get(f"{PREFIX}/downloads/{job['id']}").json()
    assert done["state"] == "done" and done["destination"] == "/data/checkpoint/tiny.safetensors"
    listed = client.get(f"{PREFIX}/downloads").json()["downloads"]
    assert [d["id"] for d in listed] == [job["id"]]


def test_a_download_passes_the_chosen_file_and_type_on(client, service):
    response = client.post(f"{PREFIX}/downloads", json={"source": "https://example.com/model.safetensors",
                                                        "model_type": "lora"})
    assert response.status_code == 202 and response.json()["kind"] == "lora"
    assert ("start_download", "https://example.com/model.safetensors", None, "LORA") in service.calls  # a kind: its type
    chosen = client.post(f"{PREFIX}/downloads", json={"source": CIVITAI_URL, "file_name": "tiny-full.ckpt"})
    assert chosen.json()["file_name"] == "tiny-full.ckpt"
    assert ("start_download", CIVITAI_URL, "tiny-full.ckpt", None) in service.calls
    unknown_file = client.post(f"{PREFIX}/downloads", json={"source": CIVITAI_URL, "file_name": "nope.bin"})
    assert unknown_file.status_code == 422 and "nope.bin" in unknown_file.json()["detail"]
    bad_type = client.post(f"{PREFIX}/downloads", json={"source": CIVITAI_URL, "model_type": "controlnet"})
    assert bad_type.status_code == 422 and "model_type" in bad_type.json()["errors"]


def test_cancel_by_post_or_delete_and_unknown_ids_are_404(client, service):
    first = client.post(f"{PREFIX}/downloads", json={"source": CIVITAI_URL}).json()["id"]
    second = client.post(f"{PREFIX}/downloads", json={"source": CIVITAI_URL}).json()["id"]
    cancelled = client.post(f"{PREFIX}/downloads/{first}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert client.delete(f"{PREFIX}/downloads/{second}").json()["state"] == "cancelled"
    assert [c for c in service.calls if c[0] == "cancel"] == [("cancel", first), ("cancel", second)]
    for response in (client.get(f"{PREFIX}/downloads/nope"), client.post(f"{PREFIX}/downloads/nope/cancel"),
                     client.delete(f"{PREFIX}/downloads/nope")):
        assert response.status_code == 404, response.text
        assert "nope" in response.json()["detail"]


def test_writes_refused_on_this_server_are_403_with_the_reason(client, service):
    service.write_refusal = "downloads are off: this server listens on the network without auth"
    for path, body in ((f"{PREFIX}/downloads", {"source": CIVITAI_URL}),
                       (f"{PREFIX}/convert", {"name": "a.safetensors", "tool": "fp16"}),
                       (f"{PREFIX}/cards", {"kind": "lora"})):
        response = client.post(path, json=body)
        assert response.status_code == 403, (path, response.text)
        assert response.json()["detail"] == service.write_refusal
    assert not service.downloads()
    # Reading stays allowed.
    assert client.post(f"{PREFIX}/lookup", json={"source": CIVITAI_URL}).status_code == 200
    assert client.post(f"{PREFIX}/inspect", json={"name": "a.safetensors"}).status_code == 200


def test_cards_for_one_file_or_every_file_of_a_kind(client, service):
    every = client.post(f"{PREFIX}/cards", json={"kind": "checkpoint"}).json()
    assert every == {"kind": "checkpoint", "results": [{"file": "a.safetensors", "outcome": "not found on Civitai"},
                                                       {"file": "known.safetensors", "outcome": "cards written"}]}
    one = client.post(f"{PREFIX}/cards", json={"kind": "lora", "name": "known-lora.pt"}).json()
    assert one["results"] == [{"file": "known-lora.pt", "outcome": "cards written"}]
    bad = client.post(f"{PREFIX}/cards", json={"kind": "controlnet"})
    assert bad.status_code == 422 and "kind" in bad.json()["errors"]


def test_inspect_and_tools_answer_plain_json(client, service):
    report = client.post(f"{PREFIX}/inspect", json={"name": "a.safetensors"}).json()
    assert report["name"] == "a.safetensors"
    assert report["report"]["dtypes"] == {"float16": 10, "float32": 2} and report["report"]["has_ema"] is True
    missing = client.post(f"{PREFIX}/inspect", json={"name": "missing.ckpt"})
    assert missing.status_code == 404 and "missing.ckpt" in missing.json()["detail"]
    converted = client.post(f"{PREFIX}/convert", json={"name": "a.safetensors", "tool": "prune-ema"}).json()
    assert converted["tool"] == "prune-ema"
    assert converted["result"]["path"] == "/data/checkpoint/a-prune-ema.safetensors"  # a Path, as a string
    bad_tool = client.post(f"{PREFIX}/convert", json={"name": "a.safetensors", "tool": "rm -rf"})
    assert bad_tool.status_code == 422 and "tool" in bad_tool.json()["errors"]


def test_the_routes_choices_are_the_services():
    from typing import get_args

    from modules.model_sources import placement, service

    assert get_args(ModelKind) == placement.MODEL_KINDS and get_args(ToolName) == service.TOOLS
    assert get_args(ModelTypeName) == placement.TYPE_CHOICES
    assert {kind: placement.kind_for_type_name(name) for kind, name in TYPE_NAME_BY_KIND.items()} == \
        {kind: kind for kind in placement.MODEL_KINDS}


def test_without_a_service_the_routes_say_so(service):
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(build_router(SimpleNamespace()))
    response = TestClient(app).get(f"{PREFIX}/downloads")
    assert response.status_code == 503 and "not available" in response.json()["detail"]


def test_an_unexpected_fault_is_500_and_a_model_source_error_keeps_its_status(client, service):
    def broken(source):
        raise ModelSourceError("Civitai answered 502", status=502)

    service.lookup = broken
    response = client.post(f"{PREFIX}/lookup", json={"source": CIVITAI_URL})
    assert response.status_code == 502 and response.json()["detail"] == "Civitai answered 502"


# -- in the server as webui builds it --------------------------------------------------------------


@pytest.fixture(scope="module")
def base_context(tmp_path_factory):
    from modules.serving.app_context import AppContext
    from modules.serving.cmd_args import parse_args

    return AppContext.from_args(parse_args(["--data-dir", str(tmp_path_factory.mktemp("model-sources-api")),
                                            "--no-demo-checkpoint"]))


def test_the_routes_are_served_without_api_and_listed_in_the_docs(base_context, service):
    from modules.api.server import create_app

    context = dataclasses.replace(base_context)
    context.model_sources = service
    client = TestClient(create_app(context, api=False))
    assert client.get("/sdapi/v1/samplers").status_code == 404  # the A1111 API is off ...
    assert client.get(f"{PREFIX}/downloads").json() == {"downloads": []}  # ... ours is not
    schema = client.get("/openapi.json").json()
    for path in ("/lookup", "/downloads", "/downloads/{download_id}", "/downloads/{download_id}/cancel", "/cards",
                 "/inspect", "/convert"):
        assert PREFIX + path in schema["paths"], path
    lookup = schema["paths"][f"{PREFIX}/lookup"]["post"]
    assert {"civitai", "huggingface", "url"} <= set(lookup["requestBody"]["content"]["application/json"]["examples"])
    assert "422" in lookup["responses"]


def test_the_routes_take_the_api_credentials(base_context, service):
    from modules.api.auth import install_auth
    from modules.api.server import create_app
    from modules.serving.cmd_args import parse_args

    args = parse_args(["--data-dir", str(base_context.paths.data_dir), "--nowebui", "--api-auth", "api:pw-api",
                       "--gradio-auth", "ui:pw-ui"])
    context = dataclasses.replace(base_context, args=args)
    context.model_sources = service
    app = create_app(context, api=True)
    install_auth(app, args)
    client = TestClient(app)
    body = {"source": CIVITAI_URL}
    assert client.post(f"{PREFIX}/downloads", json=body).status_code == 401
    assert client.post(f"{PREFIX}/downloads", json=body, headers=basic_auth("ui", "pw-ui")).status_code == 401
    assert client.get(f"{PREFIX}/downloads", headers=basic_auth("api", "wrong")).status_code == 401
    assert not [c for c in service.calls if c[0] == "start_download"]
    accepted = client.post(f"{PREFIX}/downloads", json=body, headers=basic_auth("api", "pw-api"))
    assert accepted.status_code == 202


# -- the real service against a fake Civitai on loopback ------------------------------------------------------


def test_lookup_download_and_listing_through_the_real_service(tmp_path, fake_civitai):
    """Paste a Civitai page URL, download its default file, follow the job to `done`: the file is in
    the checkpoint folder with the published sha256, listed by `/sdapi/v1/sd-models`, and a second
    download of the same file answers `exists` with where it is."""
    import hashlib
    import time

    from modules.api.server import create_app
    from modules.model_sources.service import ModelSources
    from tests.fake_model_hosts.civitai import random_safetensors, tiny_png
    from tests.test_api_support import WAIT, make_context

    data = random_safetensors(seed=3)
    model_id, version_id = fake_civitai.add_model(
        "Real Service Model", type="Checkpoint", files=[("real-service.safetensors", data)],
        trained_words=["rsm style"], images=[(tiny_png(), 1)], description="<p>From <b>fake</b> Civitai</p>")
    context = make_context(tmp_path, load=False, start_jobs=False)
    context.settings.apply({"model_sources_allow_private": True})
    context.model_sources = ModelSources(context, civitai_base_url=fake_civitai.base_url)
    try:
        client = TestClient(create_app(context, api=True))
        source = f"https://civitai.com/models/{model_id}?modelVersionId={version_id}"
        card = client.post(f"{PREFIX}/lookup", json={"source": source})
        assert card.status_code == 200, card.text
        card = card.json()
        assert (card["name"], card["kind"], card["trigger_words"]) == ("Real Service Model", "checkpoint", ["rsm style"])
        assert card["files"][0]["sha256"].lower() == hashlib.sha256(data).hexdigest()

        def finished(download_id: str) -> dict:
            deadline = time.monotonic() + WAIT
            while True:
                status = client.get(f"{PREFIX}/downloads/{download_id}").json()
                if status["state"] not in ("queued", "checking", "running", "verifying"):
                    return status
                assert time.monotonic() < deadline, status
                time.sleep(0.05)

        started = client.post(f"{PREFIX}/downloads", json={"source": source})
        assert started.status_code == 202, started.text
        done = finished(started.json()["id"])
        assert done["state"] == "done", done
        path = context.paths.checkpoints_dir / "real-service.safetensors"
        assert done["destination"] == str(path) and path.read_bytes() == data
        assert done["bytes_done"] == len(data)
        listed = client.get("/sdapi/v1/sd-models").json()
        assert any(item["filename"] == str(path) for item in listed)

        again = finished(client.post(f"{PREFIX}/downloads", json={"source": source}).json()["id"])
        assert again["state"] == "exists" and again["destination"] == str(path)
    finally:
        context.model_sources.close()
