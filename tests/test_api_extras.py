"""The Extras API over HTTP (modules.api.extras): A1111's fields and defaults, base64 in and out with
the text chunks, the bad inputs each answered with a 422 that names the problem, the upscaler lists,
and one upscale through a tiny RRDBNet model file."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from modules.api.server import create_app
from modules.upscaling.synthetic import rrdbnet_state_dict, write_state_dict
from tests.test_api_support import WAIT, assert_error, decode_png, make_context, png_base64

LANCZOS = Image.Resampling.LANCZOS


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("api-extras")
    write_state_dict(data_dir / "models" / "ESRGAN" / "tiny4x.safetensors", rrdbnet_state_dict(seed=3))
    context = make_context(data_dir, names=())
    yield context
    context.jobs.shutdown(timeout=WAIT)


@pytest.fixture(scope="module")
def client(context):
    with TestClient(create_app(context, api=True)) as client:
        yield client


@pytest.fixture
def settings(context):
    before = dict(context.settings.stored())
    yield context.settings
    context.settings.put_back(before, dict(context.settings.stored()))


def picture(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def same_pixels(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and np.array_equal(np.asarray(a.convert("RGB")), np.asarray(b.convert("RGB")))


def test_defaults_return_the_image_unchanged_with_its_text(client):
    source = picture(24, 16)
    response = client.post("/sdapi/v1/extra-single-image", json={"image": png_base64(source, "a cat\nSteps: 3")})
    assert response.status_code == 200, response.text
    body = response.json()
    image = decode_png(body["image"])
    assert same_pixels(image, source)
    assert image.text["parameters"] == "a cat\nSteps: 3"
    assert body["html_info"] == "<p></p>"


def test_scale_by_with_a_data_url(client):
    source = picture(24, 16)
    response = client.post("/sdapi/v1/extra-single-image", json={
        "image": "data:image/png;base64," + png_base64(source), "upscaler_1": "Lanczos", "upscaling_resize": 2,
        "upscale_first": True})
    body = response.json()
    image = decode_png(body["image"])
    assert same_pixels(image, source.resize((48, 32), LANCZOS))
    # A float field, as A1111's API model has it: 2.0, not 2.
    expected = "Postprocess upscale by: 2.0, Postprocess upscaler: Lanczos"
    assert body["html_info"] == f"<p>{expected}</p>" and image.text["postprocessing"] == expected


def test_scale_to_crops_by_default(client):
    # 40x30 into 128x64: factor max(128/40, 64/30) = 3.2 covers the box (128x96); the crop cuts it to 128x64.
    response = client.post("/sdapi/v1/extra-single-image", json={
        "image": png_base64(picture(40, 30)), "upscaler_1": "Nearest", "resize_mode": 1,
        "upscaling_resize_w": 128, "upscaling_resize_h": 64})
    assert response.status_code == 200, response.text
    assert decode_png(response.json()["image"]).size == (128, 64)
    assert "Postprocess crop to: 128x64" in response.json()["html_info"]


def test_batch_images_with_upscaler_2(client):
    sources = [picture(16, 16, seed) for seed in (1, 2)]
    response = client.post("/sdapi/v1/extra-batch-images", json={
        "imageList": [{"data": png_base64(image), "name": f"n{i}.png"} for i, image in enumerate(sources)],
        "upscaler_1": "Lanczos", "upscaler_2": "Nearest", "extras_upscaler_2_visibility": 0.5})
    assert response.status_code == 200, response.text
    images = [decode_png(data) for data in response.json()["images"]]
    for image, source in zip(images, sources):
        expected = Image.blend(source.resize((32, 32), LANCZOS), source.resize((32, 32), Image.Resampling.NEAREST), 0.5)
        assert same_pixels(image, expected)
    assert response.json()["html_info"].endswith("Postprocess upscaler 2: Nearest</p>")


def test_jpeg_results_follow_samples_format(client, settings):
    settings.apply({"samples_format": "jpg"})
    response = client.post("/sdapi/v1/extra-single-image", json={"image": png_base64(picture(16, 16))})
    data = base64.b64decode(response.json()["image"])
    assert Image.open(io.BytesIO(data)).format == "JPEG"


def test_bad_input_is_a_422_naming_it(client, settings):
    post = lambda **fields: client.post("/sdapi/v1/extra-single-image", json={"image": png_base64(picture(16, 16)),
                                                                              **fields})
    assert_error(post(image=base64.b64encode(b"not an image at all").decode()), 422, "image: the data is not an image")
    assert_error(post(image=""), 422, "image: no image sent")
    assert_error(post(upscaler_1="Nope 4x"), 422, "could not find upscaler named 'Nope 4x'")
    assert_error(post(upscaler_1="Lanczos", upscaler_2="Nope", extras_upscaler_2_visibility=0.2), 422,
                 "could not find upscaler named 'Nope'")
    assert_error(post(gfpgan_visibility=0.5), 422, "gfpgan_visibility", "no face restoration")
    assert_error(post(upscaling_resize=0), 422, "upscaling_resize")
    assert_error(client.post("/sdapi/v1/extra-batch-images", json={"imageList": []}), 422, "imageList")
    settings.apply({"upscale_max_pixels": 64 * 64})
    assert_error(post(upscaler_1="Lanczos", upscaling_resize=8), 422, "128×128", "upscale_max_pixels")


def test_out_of_range_numbers_are_refused_naming_the_api_field(client):
    post = lambda **fields: client.post("/sdapi/v1/extra-single-image", json={
        "image": png_base64(picture(16, 16)), "upscaler_1": "Lanczos", **fields})
    assert_error(post(resize_mode=1, upscaling_resize_w=9000, upscaling_resize_h=512), 422, "upscaling_resize_w",
                 "9000", "64 to 8192")
    assert_error(post(resize_mode=1, upscaling_resize_w=512, upscaling_resize_h=8), 422, "upscaling_resize_h")
    # The box is Scale to's only: in Scale by it is not read (A1111's clients send any value there).
    assert post(resize_mode=0, upscaling_resize=2, upscaling_resize_w=1).status_code == 200


def test_upscaler_1_none_ignores_upscaler_2_as_a1111(client):
    source = picture(16, 16)
    response = client.post("/sdapi/v1/extra-single-image", json={
        "image": png_base64(source), "upscaler_1": "None", "upscaler_2": "No Such Model",
        "extras_upscaler_2_visibility": 0.5})
    assert response.status_code == 200, response.text
    assert same_pixels(decode_png(response.json()["image"]), source)


def test_too_many_images_are_refused_before_any_is_decoded(client):
    from modules.postprocessing.extras import MAX_EXTRAS_IMAGES

    # Not base64 images at all: decoding the first would answer "imageList[0]: ...".
    items = [{"data": "not an image", "name": f"{index}.png"} for index in range(MAX_EXTRAS_IMAGES + 1)]
    body = assert_error(client.post("/sdapi/v1/extra-batch-images", json={"imageList": items}), 422, "imageList",
                        f"at most {MAX_EXTRAS_IMAGES}")
    assert "imageList[0]" not in body["errors"]


def test_the_results_of_one_request_together_are_bounded(client, settings, context):
    limit = 64 * 64
    settings.apply({"upscale_max_pixels": limit})
    # 16x16 by 4: 64x64 each, exactly the per-image limit; the request may make twice the limit.
    per_image = (16 * 4) * (16 * 4)
    fits = limit * 2 // per_image
    post = lambda count: client.post("/sdapi/v1/extra-batch-images", json={
        "imageList": [{"data": png_base64(picture(16, 16, seed)), "name": f"{seed}.png"} for seed in range(count)],
        "upscaler_1": "Lanczos", "upscaling_resize": 4})
    before = len(context.jobs.jobs())
    assert_error(post(fits + 1), 422, f"{(fits + 1) * per_image:,} pixels", "upscale_max_pixels")
    assert len(context.jobs.jobs()) == before  # refused before anything was queued
    response = post(fits)
    assert response.status_code == 200, response.text
    assert len(response.json()["images"]) == fits
    # Delivered: the job the queue keeps in its history no longer holds the images.
    [job] = context.jobs.jobs()[before:]
    assert job.result.images == [] and len(job.result.infotexts) == fits


def test_an_image_over_the_api_limit_is_refused_from_its_header(client):
    huge = Image.new("1", (8200, 8200))
    buffer = io.BytesIO()
    huge.save(buffer, format="PNG")
    data = base64.b64encode(buffer.getvalue()).decode()
    assert_error(client.post("/sdapi/v1/extra-single-image", json={"image": data}), 422, "8200x8200")


def test_upscaler_lists(client):
    rows = client.get("/sdapi/v1/upscalers").json()
    assert [row["name"] for row in rows[:3]] == ["None", "Lanczos", "Nearest"]
    assert "tiny4x" in [row["name"] for row in rows]
    assert all(set(row) == {"name", "model_name", "model_path", "model_url", "scale"} for row in rows)
    assert len(client.get("/sdapi/v1/realesrgan-models").json()) == 6


def test_a_model_upscaler(client, context):
    source = picture(12, 12)
    response = client.post("/sdapi/v1/extra-single-image", json={
        "image": png_base64(source), "upscaler_1": "tiny4x", "upscaling_resize": 2})
    assert response.status_code == 200, response.text
    image = decode_png(response.json()["image"])
    assert image.size == (24, 24)
    assert not same_pixels(image, source.resize((24, 24), LANCZOS))  # a random model is not Lanczos
    assert "Postprocess upscaler: tiny4x" in response.json()["html_info"]
    # The model stays loaded for the next image; unloading the checkpoints frees it too.
    assert [path.name for path in context.upscalers.loaded()] == ["tiny4x.safetensors"]
    assert client.post("/sdapi/v1/unload-checkpoint").status_code == 200
    assert context.upscalers.loaded() == []


def test_refresh_checkpoints_also_finds_a_new_upscaler(client, context):
    assert "added4x" not in [row["name"] for row in client.get("/sdapi/v1/upscalers").json()]
    write_state_dict(context.paths.models_dir / "ESRGAN" / "added4x.safetensors", rrdbnet_state_dict(seed=4))
    assert client.post("/sdapi/v1/refresh-checkpoints").status_code == 200
    assert "added4x" in [row["name"] for row in client.get("/sdapi/v1/upscalers").json()]


def test_upscaler_for_img2img_takes_a_listed_upscaler_only(client, context):
    response = client.post("/sdapi/v1/options", json={"upscaler_for_img2img": "4x-Nowhere"})
    assert_error(response, 422, "upscaler_for_img2img", "4x-Nowhere", "tiny4x")
    assert context.settings.current()["upscaler_for_img2img"] == "None"
    assert client.post("/sdapi/v1/options", json={"upscaler_for_img2img": "tiny4x"}).status_code == 200
    assert context.settings.current()["upscaler_for_img2img"] == "tiny4x"
    assert client.post("/sdapi/v1/options", json={"upscaler_for_img2img": "None"}).status_code == 200
