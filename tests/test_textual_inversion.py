"""Textual-inversion embedding files and the embedding database (`modules/textual_inversion.py`).

Every format is written here the way the tool that makes it writes it. The image encoders below
follow A1111's layout (A1111.md §4, `insert_image_data_embed`) and use their own LCG loop, so the
module's decoder is checked against an independent encoder.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin, features

from modules.library.hashes import HashCache, sha256_of_file
from modules.library.safetensors_io import save_file
from modules.networks.textual_inversion import (
    CACHE_TITLE_PREFIX,
    SD1_WIDTHS,
    SD2_WIDTHS,
    SDXL_WIDTHS,
    Embedding,
    EmbeddingDatabase,
    EmbeddingFormatError,
    is_embedding_candidate,
    lcg_nibbles,
    load_embedding_file,
    save_embedding,
)

# ----------------------------------------------------------------------------------------------
# Writers, one per format


def vectors(n: int, dim: int, seed: int) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)


def a1111_pt_data(vec: torch.Tensor, *, name: str = "ignored", step: int = 1500, parameter_dict: bool = False) -> dict:
    """What A1111's trainer saves; `parameter_dict` is the original TI repo's variant."""
    params: object = {"*": vec}
    if parameter_dict:
        params = torch.nn.ParameterDict({"*": torch.nn.Parameter(vec.clone())})
    return {
        "string_to_token": {"*": 265},
        "string_to_param": params,
        "name": name,
        "step": step,
        "sd_checkpoint": "a9263745",
        "sd_checkpoint_name": "v1-5-pruned-emaonly",
    }


class TensorJSONEncoder(json.JSONEncoder):
    def default(self, o):
        if isinstance(o, torch.Tensor):
            return {"TORCHTENSOR": o.detach().cpu().tolist()}
        return super().default(o)


def cover_image(width: int = 48, height: int = 64) -> Image.Image:
    """A picture with no black pixel, so cropping never eats into it."""
    x = np.arange(width, dtype=np.uint8)[None, :, None]
    y = np.arange(height, dtype=np.uint8)[:, None, None]
    rgb = np.concatenate([60 + x * 3 + 0 * y, 90 + y * 2 + 0 * x, 150 + (x + y) % 50], axis=2).astype(np.uint8)
    return Image.fromarray(rgb, "RGB")


def write_png_text(path: Path, data: dict) -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("sd-ti-embedding", base64.b64encode(json.dumps(data, cls=TensorJSONEncoder).encode()).decode())
    cover_image().save(path, "PNG", pnginfo=info)


def reference_lcg_nibbles(count: int) -> np.ndarray:
    """The whitening stream written out from its definition, value by value."""
    seed, out = 0, []
    for _ in range(count):
        seed = (1664525 * seed + 1013904223) % 2**32
        out.append((seed % 255) & 0x0F)
    return np.array(out, dtype=np.uint8)


def embed_in_pixels(data: dict, picture: Image.Image) -> Image.Image:
    """A1111's pixel layout: [low-nibble band][black column][picture][black column][high-nibble band].

    Band pixels get a non-zero decorative high nibble (A1111 draws dots there); only low nibbles
    carry data.
    """
    payload = np.frombuffer(zlib.compress(json.dumps(data, cls=TensorJSONEncoder).encode(), 9), np.uint8)
    height = picture.height
    columns = -(-payload.size // (height * 3))
    padded = np.resize(payload, height * columns * 3)  # repeats the data, as A1111's writer does
    mask = reference_lcg_nibbles(padded.size)
    decoration = ((np.arange(padded.size) % 15 + 1) << 4).astype(np.uint8)
    low = (((padded & 0x0F) ^ mask) | decoration).reshape(height, columns, 3)
    high = (((padded >> 4) ^ mask) | decoration).reshape(height, columns, 3)
    canvas = Image.new("RGB", (2 * columns + picture.width + 2, height), (0, 0, 0))
    canvas.paste(Image.fromarray(low, "RGB"), (0, 0))
    canvas.paste(picture, (columns + 1, 0))
    canvas.paste(Image.fromarray(high, "RGB"), (columns + 1 + picture.width + 1, 0))
    return canvas


def write_all_formats(root: Path) -> dict[str, tuple[dict[str, torch.Tensor], Path]]:
    """One file of every format; returns {trigger word: (vectors by encoder, file)}."""
    root.mkdir(parents=True, exist_ok=True)
    expected: dict[str, tuple[dict[str, torch.Tensor], Path]] = {}

    v = vectors(3, 768, 1)
    torch.save(a1111_pt_data(v), root / "a1111-pt.pt")
    expected["a1111-pt"] = ({"default": v}, root / "a1111-pt.pt")

    v = vectors(2, 768, 2)
    torch.save(a1111_pt_data(v, parameter_dict=True), root / "paramdict.pt")
    expected["paramdict"] = ({"default": v}, root / "paramdict.pt")

    v = vectors(1, 768, 3)[0]
    torch.save({"<cat-toy>": v}, root / "concept.bin")
    expected["concept"] = ({"default": v.unsqueeze(0)}, root / "concept.bin")

    v = vectors(3, 1024, 4)
    save_file({"emb_params": v}, root / "sd2-emb.safetensors")
    expected["sd2-emb"] = ({"default": v}, root / "sd2-emb.safetensors")

    vl, vg = vectors(3, 768, 5), vectors(3, 1280, 6)
    save_file({"clip_l": vl, "clip_g": vg}, root / "xl-emb.safetensors")
    expected["xl-emb"] = ({"clip_l": vl, "clip_g": vg}, root / "xl-emb.safetensors")

    v = vectors(3, 768, 7)
    write_png_text(root / "png-text-file.png", a1111_pt_data(v, name="png-text"))
    expected["png-text"] = ({"default": v}, root / "png-text-file.png")

    v = vectors(2, 768, 8)
    embed_in_pixels(a1111_pt_data(v, name="png-pixels"), cover_image()).save(root / "pixels-file.png")
    expected["png-pixels"] = ({"default": v}, root / "pixels-file.png")
    return expected


class CountingLoader:
    def __init__(self) -> None:
        self.paths: list[Path] = []

    def __call__(self, path: Path) -> Embedding | None:
        self.paths.append(path)
        return load_embedding_file(path)


def age(*paths: Path, seconds: float = 100.0) -> None:
    """Move mtimes into the past, out of the racy window (this changes ctimes to now)."""
    stamp = time.time() - seconds
    for path in paths:
        os.utime(path, (stamp, stamp))


def age_tree(root: Path) -> None:
    age(*sorted(root.rglob("*"), reverse=True), root)


def assert_vectors_equal(embedding: Embedding, expected: dict[str, torch.Tensor]) -> None:
    assert set(embedding.vectors) == set(expected)
    for key, tensor in expected.items():
        got = embedding.vectors[key]
        assert got.dtype == torch.float32 and got.device.type == "cpu"
        assert torch.equal(got, tensor.to(torch.float32)), key  # bit-identical


# ----------------------------------------------------------------------------------------------
# Formats


def test_every_format_loads_with_names_vectors_and_counts(tmp_path: Path) -> None:
    expected = write_all_formats(tmp_path / "embeddings")
    db = EmbeddingDatabase([tmp_path / "embeddings"])
    assert db.refresh() is True

    assert db.errors == {}
    assert list(db.embeddings) == sorted(expected, key=str.lower)
    for name, (vecs, path) in expected.items():
        embedding = db.get(name)
        assert embedding is not None, name
        assert embedding.name == name
        assert embedding.filename == path
        assert_vectors_equal(embedding, vecs)
        assert embedding.vector_count == next(iter(vecs.values())).shape[0]

    a1111 = db.get("a1111-pt")
    assert (a1111.vector_count, a1111.shape, a1111.step) == (3, 768, 1500)
    assert (a1111.sd_checkpoint, a1111.sd_checkpoint_name) == ("a9263745", "v1-5-pruned-emaonly")
    # The `name` stored inside a .pt is ignored (A1111): the file name is the trigger word.
    assert "ignored" not in db.embeddings
    assert db.get("concept").vector_count == 1
    xl = db.get("xl-emb")
    assert (xl.vector_count, xl.shape, xl.widths) == (3, 2048, {"clip_l": 768, "clip_g": 1280})
    assert db.get("sd2-emb").shape == 1024
    # Image embeddings are named by what they store, and carry its metadata.
    assert db.get("png-pixels").step == 1500
    assert db.get("png-text").sd_checkpoint_name == "v1-5-pruned-emaonly"


def test_parameter_dict_file_really_holds_a_parameter_dict(tmp_path: Path) -> None:
    from modules.library.safe_unpickle import load_pickled_checkpoint

    path = tmp_path / "paramdict.pt"
    v = vectors(2, 768, 11)
    torch.save(a1111_pt_data(v, parameter_dict=True), path)
    assert isinstance(load_pickled_checkpoint(path)["string_to_param"], torch.nn.ParameterDict)
    embedding = load_embedding_file(path)
    assert_vectors_equal(embedding, {"default": v})
    assert not embedding.vectors["default"].requires_grad


@pytest.mark.skipif(not features.check("webp"), reason="Pillow built without WebP")
def test_webp_with_pixel_embedding(tmp_path: Path) -> None:
    # Pillow exposes PNG text chunks only (`image.text`), and A1111 reads `sd-ti-embedding` only
    # through that attribute. A WebP embedding therefore carries its data in the pixels, and the
    # image must be lossless.
    v = vectors(3, 768, 12)
    embed_in_pixels(a1111_pt_data(v, name="webp-emb"), cover_image()).save(tmp_path / "w.webp", "WEBP",
                                                                          lossless=True)
    embedding = load_embedding_file(tmp_path / "w.webp")
    assert embedding.name == "webp-emb"
    assert_vectors_equal(embedding, {"default": v})


def test_pixel_embedding_with_sdxl_vectors_and_larger_payload(tmp_path: Path) -> None:
    vl, vg = vectors(4, 768, 13), vectors(4, 1280, 14)
    embed_in_pixels({"clip_l": vl, "clip_g": vg, "name": "xl-pixels"}, cover_image(32, 128)).save(tmp_path / "x.png")
    embedding = load_embedding_file(tmp_path / "x.png")
    assert embedding.name == "xl-pixels" and embedding.shape == 2048
    assert_vectors_equal(embedding, {"clip_l": vl, "clip_g": vg})


def test_image_without_stored_name_uses_file_stem(tmp_path: Path) -> None:
    v = vectors(1, 768, 15)
    write_png_text(tmp_path / "stem-name.png", {"string_to_param": {"*": v}})
    assert load_embedding_file(tmp_path / "stem-name.png").name == "stem-name"


def test_lcg_stream_matches_its_definition() -> None:
    for count in (0, 1, 2, 3, 7, 64, 1000, 5000):
        assert np.array_equal(lcg_nibbles(count), reference_lcg_nibbles(count)), count
    # A1111's generator yields 253, 242, 127 first (its own self-test); the stream keeps low nibbles.
    assert lcg_nibbles(3).tolist() == [253 & 15, 242 & 15, 127 & 15]


def test_half_precision_safetensors_widen_exactly(tmp_path: Path) -> None:
    v = vectors(2, 768, 16).half()
    save_file({"emb_params": v}, tmp_path / "half.safetensors")
    embedding = load_embedding_file(tmp_path / "half.safetensors")
    assert torch.equal(embedding.vectors["default"], v.float())


def test_save_embedding_round_trips_and_refuses_sdxl_pt(tmp_path: Path) -> None:
    v = vectors(3, 768, 17)
    save_embedding(tmp_path / "mine.pt", v, step=7, sd_checkpoint="abcd1234", sd_checkpoint_name="model")
    loaded = load_embedding_file(tmp_path / "mine.pt")
    assert (loaded.name, loaded.step, loaded.sd_checkpoint, loaded.sd_checkpoint_name) == (
        "mine", 7, "abcd1234", "model")
    assert_vectors_equal(loaded, {"default": v})

    xl = {"clip_l": vectors(2, 768, 18), "clip_g": vectors(2, 1280, 19)}
    save_embedding(tmp_path / "xl.safetensors", xl)
    assert_vectors_equal(load_embedding_file(tmp_path / "xl.safetensors"), xl)
    with pytest.raises(ValueError, match="safetensors"):
        save_embedding(tmp_path / "xl.pt", xl)
    assert not list(tmp_path.glob(".*tmp*"))  # no temp files left behind


# ----------------------------------------------------------------------------------------------
# Model compatibility


def test_for_model_partitions_by_width_with_reasons(tmp_path: Path) -> None:
    write_all_formats(tmp_path / "e")
    db = EmbeddingDatabase([tmp_path / "e"])
    db.refresh()
    sd1_names = {"a1111-pt", "paramdict", "concept", "png-text", "png-pixels"}

    sd1 = db.for_model(SD1_WIDTHS)
    assert set(sd1.loaded) == sd1_names
    assert set(sd1.skipped) == {"sd2-emb", "xl-emb"}
    assert "1024" in sd1.skipped["sd2-emb"] and "768" in sd1.skipped["sd2-emb"]
    assert "SD 2.x" in sd1.skipped["sd2-emb"]
    # An SDXL embedding is not used on SD1, not even its clip_l half (A1111 skips it too).
    assert "clip_l 768 + clip_g 1280 = 2048" in sd1.skipped["xl-emb"] and "SDXL" in sd1.skipped["xl-emb"]
    assert list(sd1.loaded) == sorted(sd1.loaded, key=str.lower)

    sd2 = db.for_model(SD2_WIDTHS)
    assert set(sd2.loaded) == {"sd2-emb"}

    xl = db.for_model(SDXL_WIDTHS)
    assert set(xl.loaded) == {"xl-emb"}
    reason = xl.skipped["a1111-pt"]
    assert "768" in reason and "clip_l 768 + clip_g 1280 = 2048" in reason and "SD 1.x" in reason


def test_swapped_sdxl_halves_are_skipped(tmp_path: Path) -> None:
    # A1111 compares only the total width (2048) and would accept this file.
    save_file({"clip_l": vectors(1, 1280, 20), "clip_g": vectors(1, 768, 21)}, tmp_path / "swapped.safetensors")
    db = EmbeddingDatabase([tmp_path])
    db.refresh()
    assert "swapped" in db.for_model(SDXL_WIDTHS).skipped


def test_for_model_validates_expected_widths(tmp_path: Path) -> None:
    db = EmbeddingDatabase([tmp_path])
    with pytest.raises(ValueError, match="empty"):
        db.for_model({})
    with pytest.raises(ValueError, match="positive int"):
        db.for_model({"default": 0})


# ----------------------------------------------------------------------------------------------
# Bad files


class _Reducer:
    def __init__(self, func, *args) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def test_malicious_pt_is_refused_and_listed_without_breaking_the_rest(tmp_path: Path) -> None:
    root = tmp_path / "e"
    expected = write_all_formats(root)
    canary = tmp_path / "canary"
    torch.save({"string_to_param": {"*": _Reducer(os.system, f"touch {canary}")}}, root / "evil.pt")
    torch.save({"x": _Reducer(eval, f"open({str(canary)!r}, 'w')")}, root / "evil2.bin")

    db = EmbeddingDatabase([root])
    db.refresh()

    assert not canary.exists(), "payload was executed"
    assert set(db.errors) == {root / "evil.pt", root / "evil2.bin"}
    assert str(root / "evil.pt") in db.errors[root / "evil.pt"]
    assert "system" in db.errors[root / "evil.pt"]
    assert set(db.embeddings) == set(expected)


@pytest.mark.parametrize(
    ("filename", "content", "message"),
    [
        ("two-terms.pt", {"string_to_param": {"*": torch.zeros(1, 768) + 1, "x": torch.ones(1, 768)}}, "2 terms"),
        ("two-tensors.bin", {"a": torch.ones(768), "b": torch.ones(768)}, "models/Lora"),
        ("a-list.pt", [torch.ones(768)], "not an embedding"),
        ("no-tensor.pt", {"step": 3}, "neither"),
        ("nan.pt", {"string_to_param": {"*": torch.full((1, 768), float("nan"))}}, "NaN"),
        ("cube.pt", {"string_to_param": {"*": torch.ones(1, 2, 768)}}, "shape"),
        ("ints.bin", {"tok": torch.ones(768, dtype=torch.int64)}, "floats"),
        ("rows.pt", {"clip_l": torch.ones(2, 768), "clip_g": torch.ones(3, 1280)}, "vector counts"),
    ],
)
def test_content_that_is_not_an_embedding_is_an_error_naming_the_file(tmp_path: Path, filename, content,
                                                                       message) -> None:
    torch.save(content, tmp_path / filename)
    with pytest.raises(EmbeddingFormatError, match=message) as info:
        load_embedding_file(tmp_path / filename)
    assert str(tmp_path / filename) in str(info.value)

    save_embedding(tmp_path / "good.pt", vectors(1, 768, 22))
    db = EmbeddingDatabase([tmp_path])
    db.refresh()
    assert list(db.errors) == [tmp_path / filename]
    assert list(db.embeddings) == ["good"]


def test_lora_like_safetensors_is_refused_from_its_header(tmp_path: Path) -> None:
    save_file({f"lora_unet_{i}.alpha": torch.ones(()) for i in range(5)}, tmp_path / "lora.safetensors")
    with pytest.raises(EmbeddingFormatError, match="5 tensors.*models/Lora"):
        load_embedding_file(tmp_path / "lora.safetensors")


def test_damaged_images_and_text_chunks(tmp_path: Path) -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("sd-ti-embedding", base64.b64encode(b'{"string_to_param": {"*": {"TORCHTENSOR": [[1], [1, 2]]}}}')
                  .decode())
    cover_image().save(tmp_path / "ragged.png", pnginfo=info)
    with pytest.raises(EmbeddingFormatError, match="rectangular"):
        load_embedding_file(tmp_path / "ragged.png")

    (tmp_path / "fake.png").write_bytes(b"not an image at all")
    with pytest.raises(EmbeddingFormatError, match="convert the image to PNG"):
        load_embedding_file(tmp_path / "fake.png")


def test_zero_byte_preview_and_foreign_files_are_ignored(tmp_path: Path) -> None:
    root = tmp_path / "e"
    root.mkdir()
    save_embedding(root / "real.pt", vectors(1, 768, 23))
    (root / "empty.pt").write_bytes(b"")
    (root / "empty.png").write_bytes(b"")
    # A preview of `real`, even one carrying embedding data, is never opened.
    embed_in_pixels(a1111_pt_data(vectors(1, 768, 24), name="hidden"), cover_image()).save(root / "real.preview.png")
    cover_image().save(root / "plain-preview.png")
    # A picture with black stripes looks like separators to the decoder but holds no zlib data.
    striped = np.asarray(cover_image()).copy()
    striped[:, [5, 42]] = 0  # equal bands on both sides, so the zlib step is reached
    Image.fromarray(striped).save(root / "striped.png")
    (root / "notes.txt").write_text("hello")

    loader = CountingLoader()
    db = EmbeddingDatabase([root], loader=loader)
    db.refresh()
    assert list(db.embeddings) == ["real"]
    assert db.errors == {}
    assert sorted(p.name for p in loader.paths) == ["plain-preview.png", "real.pt", "striped.png"]
    assert not is_embedding_candidate("x.preview.webp") and is_embedding_candidate("x.preview.pt")


def test_broken_symlink_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "dangling.pt").symlink_to(tmp_path / "missing.pt")
    db = EmbeddingDatabase([tmp_path])
    db.refresh()
    assert "broken symlink" in db.errors[tmp_path / "dangling.pt"]


# ----------------------------------------------------------------------------------------------
# Names and order


def test_same_name_found_later_replaces_earlier_and_order_is_case_insensitive(tmp_path: Path, caplog) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    save_embedding(first / "dup.pt", vectors(1, 768, 25))
    later = vectors(2, 768, 26)
    save_embedding(second / "dup.safetensors", later)
    for name, seed in (("beta", 27), ("Alpha", 28), ("gamma", 29)):
        save_embedding(first / f"{name}.pt", vectors(1, 768, seed))

    hasher = CountingHasher()
    with caplog.at_level(logging.WARNING, logger="modules.networks.textual_inversion"):
        db = EmbeddingDatabase([first, second], HashCache(tmp_path / "cache.json", hasher=hasher))
        db.refresh()
    assert list(db.embeddings) == ["Alpha", "beta", "dup", "gamma"]
    assert db.get("dup").filename == second / "dup.safetensors"
    assert_vectors_equal(db.get("dup"), {"default": later})
    assert any("dup" in r.getMessage() and str(second / "dup.safetensors") in r.getMessage()
               for r in caplog.records)
    # Only the file that won the name is hashed: both would share the cache title `textual_inversion/dup`.
    assert first / "dup.pt" not in hasher.paths and second / "dup.safetensors" in hasher.paths


# ----------------------------------------------------------------------------------------------
# Refresh


def test_refresh_reads_only_when_a_folder_changed(tmp_path: Path) -> None:
    root = tmp_path / "e"
    expected = write_all_formats(root)
    (root / "sub").mkdir()
    save_embedding(root / "sub" / "nested.pt", vectors(1, 768, 30))
    age_tree(root)

    loader = CountingLoader()
    db = EmbeddingDatabase([root], loader=loader)
    assert db.refresh() is True
    assert len(loader.paths) == len(expected) + 1

    # Unchanged folders: no listing, no file read.
    loader.paths.clear()
    assert db.refresh() is False
    assert loader.paths == []

    # A new file is picked up without a restart; the others are not read again.
    save_embedding(root / "new.pt", vectors(2, 768, 31))
    assert db.refresh() is True
    assert loader.paths == [root / "new.pt"]
    assert db.get("new").vector_count == 2

    # A file added to a sub-folder changes only that folder's mtime (A1111 misses it).
    loader.paths.clear()
    age(root / "new.pt", root)
    save_embedding(root / "sub" / "deeper.pt", vectors(1, 768, 32))
    assert db.refresh() is True
    assert sorted(loader.paths) == [root / "new.pt", root / "sub" / "deeper.pt"]  # new.pt: its ctime changed
    assert "deeper" in db.embeddings

    # A deleted file disappears.
    (root / "sub" / "nested.pt").unlink()
    assert db.refresh() is True
    assert "nested" not in db.embeddings

    # force re-reads everything even though nothing changed.
    age_tree(root)
    db.refresh()
    loader.paths.clear()
    assert db.refresh(force=True) is True
    assert len(loader.paths) == len(db.embeddings)


def test_racy_scan_looks_again_without_reading_unchanged_files(tmp_path: Path) -> None:
    save_embedding(tmp_path / "fresh.pt", vectors(1, 768, 33))  # mtime: now
    loader = CountingLoader()
    db = EmbeddingDatabase([tmp_path], loader=loader)
    assert db.refresh() is True
    # The file changed within the racy window of the scan: it might have still been copying.
    assert db.refresh() is True
    assert loader.paths == [tmp_path / "fresh.pt"]
    age(tmp_path / "fresh.pt", tmp_path)
    db.refresh()  # re-reads fresh.pt once (utime changed its ctime)
    assert db.refresh() is False


def test_missing_folder_is_watched_until_it_appears(tmp_path: Path) -> None:
    root = tmp_path / "later"
    db = EmbeddingDatabase([root])
    assert db.refresh() is True and len(db) == 0
    assert db.refresh() is False
    root.mkdir()
    save_embedding(root / "arrived.pt", vectors(1, 768, 34))
    assert db.refresh() is True
    assert "arrived" in db.embeddings


# ----------------------------------------------------------------------------------------------
# Hashes


class CountingHasher:
    def __init__(self) -> None:
        self.paths: list[Path] = []

    def __call__(self, path: Path) -> str:
        self.paths.append(Path(path))
        return sha256_of_file(path)


def test_hash_is_sha256_prefix_and_cached_across_starts(tmp_path: Path) -> None:
    root = tmp_path / "e"
    expected = write_all_formats(root)
    cache_file = tmp_path / "cache.json"

    hasher = CountingHasher()
    db = EmbeddingDatabase([root], HashCache(cache_file, hasher=hasher))
    db.refresh()
    assert len(hasher.paths) == len(expected)
    for name, (_, path) in expected.items():
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        embedding = db.get(name)
        assert (embedding.sha256, embedding.hash) == (sha, sha[:12])

    stored = json.loads(cache_file.read_text())["hashes"]
    assert stored[CACHE_TITLE_PREFIX + "png-pixels"]["sha256"] == db.get("png-pixels").sha256
    assert CACHE_TITLE_PREFIX + "a1111-pt" in stored

    # A new start with the same cache file reads no file to hash it.
    hasher2 = CountingHasher()
    db2 = EmbeddingDatabase([root], HashCache(cache_file, hasher=hasher2))
    db2.refresh(force=True)
    assert hasher2.paths == []
    assert db2.get("xl-emb").hash == db.get("xl-emb").hash


def test_no_hashing_uses_only_cached_hashes(tmp_path: Path) -> None:
    save_embedding(tmp_path / "e.pt", vectors(1, 768, 35))
    hasher = CountingHasher()
    db = EmbeddingDatabase([tmp_path], HashCache(tmp_path / "cache.json", hasher=hasher), hashing_enabled=False)
    db.refresh()
    assert db.get("e").hash is None and hasher.paths == []

    plain = EmbeddingDatabase([tmp_path])  # no cache: hashed once per file version, in memory
    plain.refresh()
    assert plain.get("e").sha256 == sha256_of_file(tmp_path / "e.pt")


def test_ti_hashes_value_follows_a1111s_encoder_calls():
    """Each encoder call lists its embeddings once, in front of what earlier calls wrote (A1111
    encodes the negative prompt first); `:` and `,` leave the names; unhashed ones are left out."""
    from modules.networks.textual_inversion import Embedding, ti_hashes_infotext

    def embedding(name, sha256):
        return Embedding(name=name, vectors={"default": torch.zeros(1, 4)}, filename=Path(f"{name}.pt"),
                         sha256=sha256)

    neg, pos, odd = embedding("neg", "a" * 64), embedding("pos", "b" * 64), embedding("we:ird,", "c" * 64)
    unhashed = embedding("nohash", None)
    assert ti_hashes_infotext([[neg], [pos]]) == f"pos: {'b' * 12}, neg: {'a' * 12}"
    assert ti_hashes_infotext([[pos], [pos]]) == f"pos: {'b' * 12}, pos: {'b' * 12}"
    assert ti_hashes_infotext([[], [odd, unhashed]]) == f"weird: {'c' * 12}"
    assert ti_hashes_infotext([[unhashed], []]) is None
