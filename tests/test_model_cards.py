"""Model cards beside the file (modules.model_sources.cards): A1111's `<stem>.json` filled without
clobbering the user's fields, corrupt files kept aside, `.civitai.info` verbatim, the preview chosen
under the content limit and re-encoded by Pillow, refused when it is not a sane image."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from modules.model_sources.cards import (
    MAX_PREVIEW_PIXELS,
    PREVIEW_MAX_SIDE,
    PreviewRefused,
    card_fields,
    choose_preview,
    convert_preview,
    find_preview,
    merge_user_metadata,
    preview_stems,
    read_user_metadata,
    sd_version,
    write_sidecars,
)
from modules.model_sources.types import CONTENT_LEVELS, PreviewImage, RemoteFile, RemoteModel

PG, PG13, R, X, XXX = (CONTENT_LEVELS[name] for name in ("PG", "PG-13", "R", "X", "XXX"))


def _image_bytes(fmt: str, size=(40, 30), color=(200, 30, 60), mode="RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, color).save(out, format=fmt)
    return out.getvalue()


def _remote(**overrides) -> RemoteModel:
    raw = {"id": 22, "modelId": 11, "name": "v2.0", "baseModel": "SD 1.5", "trainedWords": ["tw1", "tw two"],
           "description": "<p>Ünïcode</p>", "files": [], "images": []}
    values = dict(
        source="civitai", name="Detail Tweaker", model_type="LORA",
        files=(RemoteFile(name="detail.safetensors", download_url="https://civitai.com/api/download/models/22",
                          sha256="ab" * 32, primary=True),),
        version_name="v2.0", base_model="SD 1.5", description="<p>Adds <b>detail</b></p>",
        trigger_words=("tw1", " tw two ", ""), license="CreativeML Open RAIL-M",
        page_url="https://civitai.com/models/11?modelVersionId=22", raw_version=raw,
    )
    values.update(overrides)
    return RemoteModel(**values)


@pytest.mark.parametrize("base, expected", [
    ("SD 1.4", "SD1"), ("SD 1.5", "SD1"), ("SD 1.5 LCM", "SD1"), ("SD 1.5 Hyper", "SD1"),
    ("SD 2.0", "SD2"), ("SD 2.0 768", "SD2"), ("SD 2.1", "SD2"), ("SD 2.1 768", "SD2"), ("SD 2.1 Unclip", "SD2"),
    ("SDXL 0.9", "SDXL"), ("SDXL 1.0", "SDXL"), ("SDXL Turbo", "SDXL"), ("SDXL Lightning", "SDXL"),
    ("Pony", "SDXL"), ("Illustrious", "SDXL"), ("NoobAI", "SDXL"),
    ("SD 3", "Unknown"), ("SD 3.5 Large", "Unknown"), ("Flux.1 D", "Unknown"), ("SVD", "Unknown"),
    ("Other", "Unknown"), ("", "Unknown"), (None, "Unknown"),
])
def test_sd_version_from_base_model(base, expected):
    assert sd_version(base) == expected


def test_card_fields_from_a_civitai_version():
    file = _remote().files[0]
    fields = card_fields(_remote(), file=file)
    assert fields["description"] == "<p>Adds <b>detail</b></p>"  # kept as given; sanitized where shown
    assert fields["activation text"] == "tw1, tw two"
    assert fields["sd version"] == "SD1"
    assert fields["preferred weight"] == 0  # sources have none: A1111 then uses the default multiplier
    notes = fields["notes"].splitlines()
    assert "Source: https://civitai.com/models/11?modelVersionId=22" in notes
    assert "Model: Detail Tweaker (v2.0)" in notes
    assert "License: CreativeML Open RAIL-M" in notes
    assert f"SHA256: {file.sha256}" in notes


def test_merge_fills_empty_fields_and_never_clobbers_the_users(tmp_path):
    model = tmp_path / "detail.safetensors"
    model.write_bytes(b"weights")
    user = {"description": "my own words", "activation text": "", "sd version": "Unknown", "preferred weight": 0.7,
            "notes": "   ", "my extension key": [1, 2]}
    (tmp_path / "detail.json").write_text(json.dumps(user), encoding="utf-8")
    merge_user_metadata(model, card_fields(_remote()))
    merged = read_user_metadata(model)
    assert merged["description"] == "my own words"
    assert merged["preferred weight"] == 0.7
    assert merged["my extension key"] == [1, 2]
    assert merged["activation text"] == "tw1, tw two"  # empty -> filled
    assert merged["sd version"] == "SD1"  # "Unknown" is what A1111's editor saves when nothing was chosen
    assert merged["notes"].startswith("Source: ")
    # A second merge with other values changes nothing the first one filled.
    merge_user_metadata(model, {"activation text": "other", "description": "other", "negative text": "bad"})
    again = read_user_metadata(model)
    assert again["activation text"] == "tw1, tw two" and again["description"] == "my own words"
    assert again["negative text"] == "bad"
    assert not list(tmp_path.glob(".*"))  # no temp file left


def test_merge_writes_utf8_with_indent_as_a1111_does(tmp_path):
    model = tmp_path / "m.safetensors"
    merge_user_metadata(model, {"description": "Ünïcode ✓"})
    text = (tmp_path / "m.json").read_text(encoding="utf-8")
    assert "Ünïcode ✓" in text and '\n    "description"' in text


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b"\xff\xfe\x00garbage", b'"text"'])
def test_corrupt_user_metadata_is_set_aside_not_destroyed(tmp_path, content):
    model = tmp_path / "m.safetensors"
    (tmp_path / "m.json").write_bytes(content)
    assert read_user_metadata(model) == {}  # tolerant reading: the model is still listed
    merge_user_metadata(model, {"description": "from the source"})
    assert (tmp_path / "m.json.bad").read_bytes() == content
    assert read_user_metadata(model) == {"description": "from the source"}
    # A second broken file does not replace the first one kept aside.
    (tmp_path / "m.json").write_bytes(b"{broken again")
    merge_user_metadata(model, {"description": "x"})
    assert (tmp_path / "m.json.bad").read_bytes() == content
    assert (tmp_path / "m.json.bad-2").read_bytes() == b"{broken again"


def _previews(*images: PreviewImage) -> RemoteModel:
    return _remote(previews=images)


def test_preview_choice_respects_the_content_level_and_skips_videos():
    video = PreviewImage("https://image.civitai.com/x/clip.mp4", nsfw_level=PG, media_type="image")
    typed_video = PreviewImage("https://image.civitai.com/x/a.jpeg", nsfw_level=PG, media_type="video")
    spicy = PreviewImage("https://image.civitai.com/x/r.jpeg", nsfw_level=R)
    mild = PreviewImage("https://image.civitai.com/x/pg13.jpeg", nsfw_level=PG13)
    safe = PreviewImage("https://image.civitai.com/x/pg.jpeg", nsfw_level=PG)
    remote = _previews(video, typed_video, spicy, mild, safe)
    assert choose_preview(remote, PG13) is mild  # first in the source's order within the limit
    assert choose_preview(remote, PG) is safe
    assert choose_preview(remote, R) is spicy
    assert choose_preview(_previews(video, typed_video, spicy), PG13) is None
    # A combined level (a model's OR of its images') counts by its highest rating.
    assert choose_preview(_previews(PreviewImage("https://i/c.png", nsfw_level=PG | R)), PG13) is None
    assert choose_preview(_previews(PreviewImage("https://i/c.png", nsfw_level=PG | PG13)), PG13) is not None


def test_unrated_images_are_taken_only_without_a_limit():
    unrated = PreviewImage("https://image.civitai.com/x/u.png", nsfw_level=0)
    assert choose_preview(_previews(unrated), X) is None
    assert choose_preview(_previews(unrated), XXX) is unrated
    blocked = PreviewImage("https://image.civitai.com/x/b.png", nsfw_level=32)
    assert choose_preview(_previews(blocked), XXX) is None
    with pytest.raises(ValueError, match="PG-13=2"):
        choose_preview(_previews(unrated), 3)


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP", "GIF", "PNG"])
def test_preview_is_reencoded_as_png_whatever_it_came_as(fmt):
    png = convert_preview(_image_bytes(fmt))
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG" and image.size == (40, 30)


def test_large_previews_are_scaled_down():
    png = convert_preview(_image_bytes("JPEG", size=(3000, 1500)))
    with Image.open(io.BytesIO(png)) as image:
        assert image.size == (PREVIEW_MAX_SIDE, PREVIEW_MAX_SIDE // 2)


def test_previews_that_are_not_sane_images_are_refused():
    with pytest.raises(PreviewRefused, match="not an image"):
        convert_preview(b"<html><body>Login</body></html>")
    with pytest.raises(PreviewRefused, match="could not be decoded"):
        convert_preview(_image_bytes("PNG", size=(300, 300))[:200])  # truncated
    with pytest.raises(PreviewRefused, match="only"):
        convert_preview(_image_bytes("BMP"))


def test_a_png_with_a_lying_chunk_length_is_refused():
    # Pillow reports this damage as SyntaxError ("broken PNG file"), not OSError.
    data = bytearray(_image_bytes("PNG"))
    idat = data.find(b"IDAT")
    data[idat - 4:idat] = (3).to_bytes(4, "big")  # the image data chunk says it is 3 bytes long
    with pytest.raises(PreviewRefused, match="could not be decoded"):
        convert_preview(bytes(data))


def test_an_image_claiming_too_many_pixels_is_refused_before_decoding():
    # A tiny file whose header claims a huge image (a decompression bomb): 1-bit PNG compresses to little.
    side = int(MAX_PREVIEW_PIXELS ** 0.5) + 100
    out = io.BytesIO()
    Image.new("1", (side, side)).save(out, format="PNG")
    bomb = out.getvalue()
    assert len(bomb) < 2_000_000
    with pytest.raises(PreviewRefused, match="claims"):
        convert_preview(bomb)


def test_find_preview_uses_a1111s_names_and_order(tmp_path):
    model = tmp_path / "lora.v2.safetensors"
    model.write_bytes(b"w")
    assert find_preview(model) is None
    (tmp_path / "lora.v2.preview.webp").write_bytes(b"x")
    assert find_preview(model) == tmp_path / "lora.v2.preview.webp"
    (tmp_path / "lora.v2.jpg").write_bytes(b"x")
    assert find_preview(model) == tmp_path / "lora.v2.jpg"
    (tmp_path / "lora.v2.preview.png").write_bytes(b"x")
    assert find_preview(model) == tmp_path / "lora.v2.preview.png"
    (tmp_path / "lora.v2.png").mkdir()  # a folder is no preview
    assert find_preview(model) == tmp_path / "lora.v2.preview.png"
    assert preview_stems("a.preview.png") == ["a", "a.preview"]
    assert preview_stems("a.safetensors") == [] and preview_stems(".png") == []


def test_write_sidecars_writes_the_card_info_and_preview(tmp_path):
    model = tmp_path / "detail.safetensors"
    model.write_bytes(b"weights")
    remote = _remote()
    written = write_sidecars(model, remote, preview=_image_bytes("JPEG"))
    assert sorted(p.name for p in written) == ["detail.civitai.info", "detail.json", "detail.preview.png"]
    info_text = (tmp_path / "detail.civitai.info").read_text(encoding="utf-8")
    assert json.loads(info_text) == remote.raw_version
    assert info_text == json.dumps(dict(remote.raw_version), indent=4)
    card = read_user_metadata(model)
    assert card["activation text"] == "tw1, tw two"
    assert f"SHA256: {remote.files[0].sha256}" in card["notes"]  # the file of the same name
    with Image.open(tmp_path / "detail.preview.png") as image:
        assert image.format == "PNG"


def test_write_sidecars_never_replaces_a_users_preview(tmp_path):
    model = tmp_path / "detail.safetensors"
    model.write_bytes(b"weights")
    (tmp_path / "detail.jpg").write_bytes(b"the user's own preview")
    written = write_sidecars(model, _remote(), preview=_image_bytes("PNG"))
    assert not (tmp_path / "detail.preview.png").exists()
    assert (tmp_path / "detail.jpg").read_bytes() == b"the user's own preview"
    assert [p.name for p in written] == ["detail.json", "detail.civitai.info"]


def test_a_bad_preview_is_skipped_and_the_rest_written(tmp_path, caplog):
    model = tmp_path / "m.safetensors"
    written = write_sidecars(model, _remote(source="huggingface", raw_version=None), preview=b"{\"error\": 1}")
    assert [p.name for p in written] == ["m.json"]
    assert "No preview stored" in caplog.text
    assert not list(tmp_path.glob("*.png"))
