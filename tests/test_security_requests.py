"""Attacks through requests, by a logged-in user or by another site's page in their browser: oversize
bodies, decompression bombs sent to PNG Info, cross-site state changes, and CORS on UI routes."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib

import pytest
from fastapi.testclient import TestClient
from PIL import Image, PngImagePlugin

from modules.serving.app_context import AppContext
from modules.serving.cmd_args import parse_args
from tests.test_api_support import basic_auth

PASSWORD = "guard-pw"
AUTH = basic_auth("u", PASSWORD)


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("guards")
    context = AppContext.from_args(parse_args(["--data-dir", str(data_dir), "--no-demo-checkpoint"]))
    context.refresh()
    yield context
    context.jobs.shutdown()


def build(context, *flags: str):
    import dataclasses

    import webui

    args = parse_args(["--data-dir", str(context.paths.data_dir), "--gradio-auth", f"u:{PASSWORD}",
                       "--skip-load-model-at-start", *flags])
    return webui.build_app(args, dataclasses.replace(context, args=args))


@pytest.fixture(scope="module")
def api(context):
    return TestClient(build(context, "--nowebui", "--max-body-size", "1"))


@pytest.fixture(scope="module")
def ui_app(context):
    return TestClient(build(context, "--api"))


# -- bodies and images ---------------------------------------------------------------------------

def test_a_body_over_the_cap_is_refused_unread(api):
    body = json.dumps({"prompt": "x" * (2 * 2**20)})
    response = api.post("/sdapi/v1/txt2img", content=body, headers={**AUTH, "content-type": "application/json"})
    assert response.status_code == 413
    assert "1 MiB" in response.json()["detail"] and "--max-body-size" in response.json()["detail"]


def test_a_chunked_body_over_the_cap_is_refused(api):
    def chunks():
        for _ in range(40):
            yield b"x" * 64 * 1024

    response = api.post("/sdapi/v1/png-info", content=chunks(), headers={**AUTH, "content-type": "application/json"})
    assert response.status_code == 413


def test_the_default_cap_refuses_a_50_mb_body(context):
    client = TestClient(build(context, "--nowebui"))
    response = client.post("/sdapi/v1/txt2img", content=b"{" + b" " * (50 * 2**20) + b"}",
                           headers={**AUTH, "content-type": "application/json"})
    assert response.status_code == 413


def test_a_small_body_still_passes(api):
    assert api.post("/sdapi/v1/png-info", json={"image": ""}, headers=AUTH).status_code == 200


def _bomb_png(size: int, parameters: str, *, text_after_pixels: bool = False) -> bytes:
    """A PNG of size×size black pixels, a few hundred KB compressed; its `parameters` text before or
    after the pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\0" + b"\0" * size  # filter byte + grey pixels
    compressor = zlib.compressobj(9)
    pixels = b"".join(compressor.compress(row) for _ in range(size)) + compressor.flush()
    text = chunk(b"tEXt", b"parameters\0" + parameters.encode("latin-1"))
    header = chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, 0, 0, 0, 0))
    parts = [header] + ([] if text_after_pixels else [text]) + [chunk(b"IDAT", pixels)] + \
        ([text] if text_after_pixels else []) + [chunk(b"IEND", b"")]
    return b"\x89PNG\r\n\x1a\n" + b"".join(parts)


@pytest.mark.parametrize("after", [False, True], ids=["text-before-pixels", "text-after-pixels"])
def test_png_info_reads_the_text_of_a_huge_image_without_decoding_it(monkeypatch, after):
    from PIL import ImageFile

    from modules.outputs.image_metadata import read_image_metadata

    def refuse_to_decode(self, *args, **kwargs):
        raise AssertionError("the pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse_to_decode)
    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", refuse_to_decode, raising=False)
    infotext = "a lighthouse\nSteps: 5, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 13000x13000"
    data = _bomb_png(13000, infotext, text_after_pixels=after)
    assert len(data) < 2**20  # a small file that decodes into 161 MiB (one grey byte a pixel)
    found, _, size = read_image_metadata(io.BytesIO(data))
    assert found == infotext and size == (13000, 13000)


def test_png_info_route_never_decodes_pixels(context):
    client = TestClient(build(context, "--nowebui"))
    infotext = "a lighthouse\nSteps: 5, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 13000x13000"
    image = base64.b64encode(_bomb_png(13000, infotext, text_after_pixels=True)).decode()
    response = client.post("/sdapi/v1/png-info", json={"image": image}, headers=AUTH)
    assert response.status_code == 200, response.text
    assert response.json()["info"] == infotext


def test_an_api_image_over_the_pixel_limit_is_refused_before_decoding():
    from modules.api.errors import ApiError
    from modules.api.images import decode_image

    image = base64.b64encode(_bomb_png(9000, "x")).decode()
    with pytest.raises(ApiError) as refused:
        decode_image(image, {})
    assert refused.value.status_code == 422 and "9000x9000" in refused.value.detail


def test_png_info_ui_reads_a_text_chunk_after_the_pixels(tmp_path):
    from modules.ui.pnginfo import read_png_info

    path = tmp_path / "late.png"
    path.write_bytes(_bomb_png(64, "late text\nSteps: 3, Seed: 2, Size: 64x64", text_after_pixels=True))
    info = read_png_info(str(path))
    assert info.infotext == "late text\nSteps: 3, Seed: 2, Size: 64x64"


def test_png_info_ui_error_names_no_server_path(tmp_path):
    from modules.ui.pnginfo import read_png_info

    path = tmp_path / "not-an-image.png"
    path.write_bytes(b"GIF89a garbage")
    info = read_png_info(str(path))
    assert info.error and str(tmp_path) not in info.error


def test_compressed_text_cannot_expand_without_bound():
    from modules.outputs.image_metadata import MAX_TEXT_CHUNK, png_text_chunks

    bomb = zlib.compress(b"a" * (MAX_TEXT_CHUNK * 8))
    meta = PngImagePlugin.PngInfo()
    meta.add_text("small", "kept")
    buffer = io.BytesIO()
    Image.new("L", (4, 4)).save(buffer, "PNG", pnginfo=meta)
    data = buffer.getvalue()
    z = b"bomb\0\0" + bomb
    chunk = struct.pack(">I", len(z)) + b"zTXt" + z + struct.pack(">I", zlib.crc32(b"zTXt" + z) & 0xFFFFFFFF)
    data = data[:-12] + chunk + data[-12:]
    texts = png_text_chunks(io.BytesIO(data))
    assert texts == {"small": "kept"}


# -- cross-site ------------------------------------------------------------------------------------

STATE_CHANGING = ["/sdapi/v1/interrupt", "/sdapi/v1/skip", "/sdapi/v1/unload-checkpoint",
                  "/sdapi/v1/reload-checkpoint", "/sdapi/v1/refresh-checkpoints", "/sdapi/v1/refresh-vae",
                  "/sdapi/v1/refresh-embeddings"]


@pytest.mark.parametrize("headers", [
    {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
    {"Origin": "https://evil.example"},
    {"Sec-Fetch-Site": "cross-site"},
    {"Origin": "http://localhost:9999", "Sec-Fetch-Site": "same-site"},
    {"Origin": "null"},
    {"Origin": "http://[::1"},
], ids=["origin+fetch-site", "origin", "fetch-site", "other-port", "null-origin", "unparsable-origin"])
def test_cross_site_state_changes_are_refused(ui_app, headers):
    for path in STATE_CHANGING:
        response = ui_app.post(path, headers={**AUTH, **headers})
        assert response.status_code == 403, (path, headers, response.status_code)
    assert ui_app.post("/gradio_api/queue/join", json={}, headers={**AUTH, **headers}).status_code == 403


def test_same_origin_and_programs_pass(ui_app):
    host = "testserver"
    for headers in ({}, {"Origin": f"http://{host}", "Sec-Fetch-Site": "same-origin"}, {"Sec-Fetch-Site": "none"}):
        response = ui_app.post("/sdapi/v1/refresh-checkpoints", headers={**AUTH, **headers})
        assert response.status_code == 200, (headers, response.text)
    # Reading is not refused: a cross-site GET cannot read the answer without CORS.
    assert ui_app.get("/sdapi/v1/samplers", headers={**AUTH, "Sec-Fetch-Site": "cross-site"}).status_code == 200


def test_gradio_routes_echo_no_foreign_origin(ui_app):
    for origin in ("http://localhost:1234", "http://127.0.0.1:8000", "https://evil.example"):
        response = ui_app.get("/config", headers={**AUTH, "Origin": origin})
        assert response.headers.get("access-control-allow-origin") is None, origin
        preflight = ui_app.options("/gradio_api/queue/join", headers={
            **AUTH, "Origin": origin, "Access-Control-Request-Method": "POST"})
        assert preflight.headers.get("access-control-allow-origin") is None, origin


def test_operator_allowed_origins_pass_and_get_cors(context):
    client = TestClient(build(context, "--api", "--cors-allow-origins", "http://localhost:3000"))
    headers = {**AUTH, "Origin": "http://localhost:3000", "Sec-Fetch-Site": "same-site"}
    response = client.post("/sdapi/v1/refresh-checkpoints", headers=headers)
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "http://localhost:3000"
    other = client.post("/sdapi/v1/refresh-checkpoints", headers={**AUTH, "Origin": "http://localhost:3001"})
    assert other.status_code == 403
