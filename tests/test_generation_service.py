"""The txt2img tab and `/sdapi/v1/txt2img` go through one generation service: the same request and
settings give the same gallery (grid first by A1111's rule, which `return_grid` turns off for both),
and the API's `save_images=false` (A1111's `do_not_save_grid`) gives no grid."""

from __future__ import annotations

import base64
import io
import json

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from modules.api.server import create_app
from modules.serving.generation_service import GenerationSubmission
from modules.ui.generation import follow_until_done
from modules.ui.request_fields import build_request
from tests.test_api_support import WAIT, make_context

REQUEST = {"prompt": "a fox", "width": 64, "height": 64, "steps": 2, "sampler_name": "Euler", "seed": 3,
           "batch_size": 2}


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    context = make_context(tmp_path_factory.mktemp("service"), names=("a",))
    yield context
    context.jobs.shutdown(timeout=WAIT)


@pytest.fixture(scope="module")
def client(context):
    return TestClient(create_app(context, api=True))


def _api(client, **fields):
    response = client.post("/sdapi/v1/txt2img", json={**REQUEST, **fields})
    assert response.status_code == 200, response.text
    images = [Image.open(io.BytesIO(base64.b64decode(data))) for data in response.json()["images"]]
    return images, json.loads(response.json()["info"])


def _ui(context):
    return follow_until_done(context, GenerationSubmission(build_request(REQUEST)))


@pytest.mark.parametrize("return_grid", [True, False])
def test_tab_and_api_give_the_same_gallery(context, client, return_grid):
    context.settings.apply({"return_grid": return_grid})
    try:
        outcome = _ui(context)
        images, info = _api(client, save_images=True)
    finally:
        context.settings.apply({"return_grid": True})
    assert [image.size for image in images] == [image.size for image in outcome.images]
    assert info["infotexts"] == outcome.infotexts
    assert info["index_of_first_image"] == (1 if return_grid else 0)
    assert len(images) == (3 if return_grid else 2)


def test_the_api_without_save_images_returns_no_grid(client):
    images, info = _api(client, save_images=False)
    assert len(images) == 2 and info["index_of_first_image"] == 0
