"""Attacks on the upscalers and Extras inputs, as a logged-in API client and UI user would try them.

Covers what tests/test_api_extras.py, test_postprocessing.py, test_upscalers_service.py and
test_security_gradio_files.py leave out: upscaler names that look like paths, forged image headers in
a batch, absurd scale factors (1e9, inf, nan), Scale to from a 1x1 image against the output budget,
folder fields sent to the API, booby-trapped and symlinked model files reached through the API,
`upscale_max_pixels` through /sdapi/v1/options, and a forged server path in the Extras tab's Batch
Process files over Gradio's own HTTP protocol.
"""

from __future__ import annotations

import base64
import io
import json
import os
import pickle
import struct
import zlib
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from modules.api.server import create_app
from modules.upscaling.synthetic import rrdbnet_state_dict, write_state_dict
from tests.test_api_extras import picture
from tests.test_api_support import WAIT, assert_error, make_context, png_base64
from tests.test_security_gradio_files import _run_event, served  # noqa: F401  (a fixture)


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("security-upscalers")
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


def _post_single(client, **fields):
    return client.post("/sdapi/v1/extra-single-image", json={"image": png_base64(picture(16, 16)), **fields})


def _forged_png(width: int, height: int) -> bytes:
    """A PNG whose header declares `width`x`height` with one tiny (invalid) data chunk: a few dozen bytes
    that would decode into gigabytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


# --- upscaler names are names, never paths ---------------------------------------------------------

def test_upscaler_names_that_look_like_paths_are_refused_and_nothing_is_queued(client, context):
    model = context.paths.models_dir / "ESRGAN" / "tiny4x.safetensors"
    names = ["../../x", "/etc/passwd", "models/ESRGAN/tiny4x.safetensors", "ESRGAN/tiny4x", "tiny4x.safetensors",
             str(model), str(model.with_suffix("")), "./tiny4x", "tiny4x/../tiny4x", "tiny4x\x00"]
    before = len(context.jobs.jobs())
    for name in names:
        for fields in ({"upscaler_1": name}, {"upscaler_1": "Lanczos", "upscaler_2": name,
                                               "extras_upscaler_2_visibility": 0.5}):
            body = assert_error(_post_single(client, **fields), 422, "could not find upscaler named")
            assert "root:" not in body["errors"], body
    assert len(context.jobs.jobs()) == before
    assert context.upscalers.loaded() == []  # no name reached the model loader


def test_hr_upscaler_and_upscaler_for_img2img_take_no_paths(client, context):
    model = context.paths.models_dir / "ESRGAN" / "tiny4x.safetensors"
    for name in ("/etc/passwd", str(model), "../ESRGAN/tiny4x"):
        assert_error(client.post("/sdapi/v1/options", json={"upscaler_for_img2img": name}), 422,
                     "upscaler_for_img2img")
        assert context.settings.current()["upscaler_for_img2img"] == "None"
    before = len(context.jobs.jobs())
    for name in ("/etc/passwd", str(model)):
        response = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 1, "width": 64, "height": 64,
                                                          "enable_hr": True, "hr_upscaler": name})
        assert response.status_code == 422, response.text
        assert "root:" not in response.text
    assert len(context.jobs.jobs()) == before


# --- sizes: forged headers, absurd factors, the output budget --------------------------------------

def test_a_batch_with_a_forged_huge_header_is_refused_before_decoding_and_nothing_is_queued(client, context):
    forged = base64.b64encode(_forged_png(30000, 30000)).decode()
    assert len(forged) < 200  # a few dozen bytes on the wire
    items = [{"data": png_base64(picture(16, 16)), "name": "ok.png"}, {"data": forged, "name": "bomb.png"}]
    before = len(context.jobs.jobs())
    body = assert_error(client.post("/sdapi/v1/extra-batch-images", json={"imageList": items}), 422, "imageList[1]")
    assert "30000" in body["errors"] or "limit" in body["errors"], body
    assert len(context.jobs.jobs()) == before
    single = assert_error(client.post("/sdapi/v1/extra-single-image", json={"image": forged}), 422, "image")
    assert "Traceback" not in single["errors"]
    assert len(context.jobs.jobs()) == before


@pytest.mark.parametrize("factor", [1e9, 1e308, "inf", "Infinity", "nan", "NaN", -1, 0])
def test_absurd_scale_factors_are_a_422_never_a_500_and_nothing_is_queued(client, context, factor):
    before = len(context.jobs.jobs())
    response = _post_single(client, upscaler_1="Lanczos", upscaling_resize=factor)
    body = assert_error(response, 422)
    assert "upscaling_resize" in body["errors"] or "upscale_max_pixels" in body["errors"], body
    assert len(context.jobs.jobs()) == before


def test_a_huge_factor_on_a_model_upscaler_is_refused_before_the_model_loads(client, context):
    before = len(context.jobs.jobs())
    assert_error(_post_single(client, upscaler_1="tiny4x", upscaling_resize=1e6), 422, "upscale_max_pixels")
    assert len(context.jobs.jobs()) == before and context.upscalers.loaded() == []


def test_scale_to_8192_from_1x1_fits_one_image_but_not_three(client, context, settings):
    limit = int(context.settings.current()["upscale_max_pixels"])
    side = 8192
    one = side * side
    assert one <= limit  # the default: one such result is allowed
    count = 2 * limit // one + 1  # the smallest count over the output budget (twice the limit)
    tiny = png_base64(Image.new("RGB", (1, 1), (200, 10, 10)))
    before = len(context.jobs.jobs())
    response = client.post("/sdapi/v1/extra-batch-images", json={
        "imageList": [{"data": tiny, "name": f"{i}.png"} for i in range(count)], "upscaler_1": "Nearest",
        "resize_mode": 1, "upscaling_resize_w": side, "upscaling_resize_h": side})
    assert_error(response, 422, f"{count * one:,} pixels", "upscale_max_pixels")
    assert len(context.jobs.jobs()) == before
    # With the limit lowered, a single 1x1 -> 8192x8192 is refused on its own.
    settings.apply({"upscale_max_pixels": one - 1})
    assert_error(client.post("/sdapi/v1/extra-single-image", json={
        "image": tiny, "upscaler_1": "Nearest", "resize_mode": 1, "upscaling_resize_w": side,
        "upscaling_resize_h": side}), 422, "upscale_max_pixels")
    assert len(context.jobs.jobs()) == before


def test_upscale_max_pixels_cannot_be_raised_through_the_api(client, context):
    before = context.settings.current()["upscale_max_pixels"]
    for value in (2 ** 31 - 1, before * 4):
        response = client.post("/sdapi/v1/options", json={"upscale_max_pixels": value})
        assert response.status_code in (403, 422), response.text
        assert "upscale_max_pixels" in response.text
        assert context.settings.current()["upscale_max_pixels"] == before


def test_a_many_pass_upscale_is_bounded_by_max_passes(context):
    """A model upscaler repeats passes only while the image is still smaller than the target, and at
    most MAX_PASSES times, whatever factor is asked; the factor itself is bounded by the pixel limit."""
    from modules.upscaling.service import MAX_PASSES, repeat_passes

    calls = []

    def one_pass(image):  # a 1x "model": never changes the size
        calls.append(image.size)
        return image.copy()

    repeat_passes(Image.new("RGB", (8, 8)), 64, one_pass)
    assert len(calls) == 1  # a pass that changes nothing ends the loop
    calls.clear()

    def doubling(image):
        calls.append(image.size)
        return image.resize((image.width * 2, image.height * 2))

    result = repeat_passes(Image.new("RGB", (8, 8)), 1000, doubling)
    assert len(calls) == MAX_PASSES
    assert result.size == (8000, 8000)


# --- folder fields through the API -----------------------------------------------------------------

def test_the_api_ignores_folder_fields_and_writes_nothing(client, context, tmp_path):
    inside = tmp_path / "in"
    inside.mkdir()
    picture(16, 16).save(inside / "a.png")
    out = tmp_path / "out"
    before = len(context.jobs.jobs())
    extras_folder = context.paths.data_dir / "outputs" / "extras-images"
    existing = set(extras_folder.rglob("*")) if extras_folder.exists() else set()
    for route, payload in (("extra-single-image", {"image": png_base64(picture(16, 16))}),
                           ("extra-batch-images", {"imageList": [{"data": png_base64(picture(16, 16)),
                                                                  "name": "../../../evil.png"}]})):
        response = client.post(f"/sdapi/v1/{route}", json={
            **payload, "upscaler_1": "Lanczos", "mode": 2, "extras_mode": 2, "input_dir": str(inside),
            "output_dir": str(out), "save": True, "files": [["x.png", "/etc/passwd"]]})
        assert response.status_code == 200, response.text
    jobs = context.jobs.jobs()[before:]
    assert len(jobs) == 2 and all(job.kind == "extras" for job in jobs)
    assert not out.exists()
    assert (set(extras_folder.rglob("*")) if extras_folder.exists() else set()) == existing
    assert not (tmp_path / "evil.png").exists() and not Path(context.paths.data_dir, "evil.png").exists()


# --- model files placed in the models folder -------------------------------------------------------

def _booby_trapped(marker: Path):
    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    return {"params_ema": Payload()}


@pytest.mark.parametrize("writer", ["pickle", "torch_zip"])
def test_a_pickled_upscaler_that_runs_a_command_is_refused_through_the_api(client, context, tmp_path, writer):
    import torch

    marker = tmp_path / f"pwned-{writer}"
    name = f"evil-{writer}"
    path = context.paths.models_dir / "ESRGAN" / f"{name}.pth"
    if writer == "pickle":
        path.write_bytes(pickle.dumps(_booby_trapped(marker), protocol=2))
    else:
        torch.save(_booby_trapped(marker), path)
    try:
        assert client.post("/sdapi/v1/refresh-checkpoints").status_code == 200
        assert name in [row["name"] for row in client.get("/sdapi/v1/upscalers").json()]
        response = _post_single(client, upscaler_1=name, upscaling_resize=2)
        assert 400 <= response.status_code < 600 and response.status_code != 200, response.text
        assert f"{name}.pth" in response.json()["errors"]
        assert not marker.exists()
        assert context.upscalers.loaded() == []
    finally:
        path.unlink()
        client.post("/sdapi/v1/refresh-checkpoints")


def test_a_symlink_to_a_server_file_gives_a_clean_error_without_its_content(client, context, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0:SECRET-CONTENT\n", encoding="utf-8")
    link = context.paths.models_dir / "ESRGAN" / "linked.pth"
    link.symlink_to(secret)
    try:
        assert client.post("/sdapi/v1/refresh-checkpoints").status_code == 200
        response = _post_single(client, upscaler_1="linked", upscaling_resize=2)
        assert response.status_code != 200, response.text
        assert "SECRET-CONTENT" not in response.text and "root:" not in response.text
        assert "linked.pth" in response.json()["errors"]
        assert context.upscalers.loaded() == []
    finally:
        link.unlink()
        client.post("/sdapi/v1/refresh-checkpoints")


# --- the Extras tab's Batch Process files over Gradio's protocol ----------------------------------

def _extras_generate(config: dict) -> tuple[int, int | None, list[int], dict[str, int]]:
    """The Extras Generate event: (fn index, trigger, input ids, {elem_id: position})."""
    by_id = {component["id"]: component for component in config["components"]}
    for index, dependency in enumerate(config["dependencies"]):
        inputs = dependency["inputs"]
        elem_ids = [by_id.get(cid, {}).get("props", {}).get("elem_id") for cid in inputs]
        if "extras_image_batch" in elem_ids and "extras_selected_mode" in elem_ids:
            trigger = dependency["targets"][0][0] if dependency.get("targets") else None
            return dependency.get("id", index), trigger, inputs, {e: i for i, e in enumerate(elem_ids) if e}
    raise AssertionError("no Extras Generate event with the Batch Process files was found")


def _event_data(config: dict, inputs: list[int]) -> list:
    by_id = {component["id"]: component for component in config["components"]}
    return [by_id.get(cid, {}).get("props", {}).get("value") for cid in inputs]


def _first_answer(client: httpx.Client, fn_index: int, trigger: int | None, data: list) -> dict:
    """The first progress or final message of one event sent through Gradio's queue."""
    import uuid

    session = uuid.uuid4().hex
    joined = client.post("/gradio_api/queue/join", json={
        "data": data, "event_data": None, "fn_index": fn_index, "trigger_id": trigger, "session_hash": session})
    assert joined.status_code == 200, joined.text
    with client.stream("GET", "/gradio_api/queue/data", params={"session_hash": session}, timeout=60) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:"):
                message = json.loads(line[5:])
                if message.get("msg") in ("process_generating", "process_completed", "unexpected_error"):
                    return message
    return {}


def _file_data(path: str) -> dict:
    return {"path": path, "orig_name": "x.png", "meta": {"_type": "gradio.FileData"}}


def test_a_forged_server_path_in_batch_process_never_reaches_the_worker(served):  # noqa: F811
    # An image outside every upload folder: the worker would read and upscale it if the path got through.
    secret_image = served.secret_file.with_name("secret.png")
    picture(16, 16, seed=7).save(secret_image)
    cache = Path(os.environ["GRADIO_TEMP_DIR"])
    with httpx.Client(base_url=served.url, headers=served.auth, timeout=60) as client:
        config = client.get("/config").json()
        fn_index, trigger, inputs, positions = _extras_generate(config)

        def _data(paths: list[str]) -> list:
            data = _event_data(config, inputs)
            data[positions["extras_selected_mode"]] = 1
            data[positions["extras_image_batch"]] = [_file_data(path) for path in paths]
            return data

        def run(paths: list[str]) -> dict:
            return _run_event(client, fn_index, trigger, _data(paths))

        # The control: a real upload passes Gradio's rule and reaches the handler, which queues the job
        # and answers with its progress (this fixture's queue is not started, so it is not waited for).
        buffer = io.BytesIO()
        picture(16, 16).save(buffer, "PNG")
        uploaded = client.post("/gradio_api/upload", files={"files": ("ok.png", buffer.getvalue(), "image/png")})
        assert uploaded.status_code == 200, uploaded.text
        assert _first_answer(client, fn_index, trigger, _data([uploaded.json()[0]])).get("msg") == "process_generating"

        relative = os.path.relpath(secret_image, cache)
        for paths in ([str(secret_image)], [uploaded.json()[0], str(secret_image)], [str(cache / relative)],
                      ["/etc/passwd"], [str(served.data_dir / "config.json")]):
            # Refused by Gradio's upload rule before the handler ran: no progress, no job, no copy.
            message = run(paths)
            assert message.get("msg") == "process_completed" and message.get("success") is False, (paths, message)
            assert served.secret not in json.dumps(message) and "root:" not in json.dumps(message)
        for file in (p for p in cache.rglob("*") if p.is_file()):
            assert file.read_bytes() != secret_image.read_bytes(), file
