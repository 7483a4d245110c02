"""Checkpoint discovery, titles, aliases and name resolution (`modules/checkpoints.py`)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from pathlib import Path

import pytest
import torch

from modules.library.checkpoints import CheckpointNotFoundError, CheckpointRegistry, natural_sort_key
from modules.library.hashes import HashCache, legacy_model_hash, sha256_of_file
from modules.library.safetensors_io import save_file

MIB = 1 << 20
BIG = MIB + 0x10000 + 1000  # past the legacy hash window


def write(path: Path, size: int = 100, seed: int | None = None) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = random.Random(str(path) if seed is None else seed).randbytes(size)
    path.write_bytes(data)
    return data


class Counting:
    """Wraps a hash function and records the files it read."""

    def __init__(self, fn):
        self.fn = fn
        self.calls: list[Path] = []

    def __call__(self, path):
        self.calls.append(Path(path))
        return self.fn(path)


@pytest.fixture
def dirs(tmp_path):
    models = tmp_path / "models" / "Stable-diffusion"
    ckpt_dir = tmp_path / "ckpt"
    models.mkdir(parents=True)
    ckpt_dir.mkdir()
    return ckpt_dir, models


class Setup:
    def __init__(self, tmp_path: Path, dirs: list[Path], **kwargs):
        self.tmp_path = tmp_path
        self.dirs = dirs
        self.sha_hasher = Counting(sha256_of_file)
        self.legacy_hasher = Counting(legacy_model_hash)
        self.cache = HashCache(tmp_path / "cache.json", hasher=self.sha_hasher)
        self.registry = CheckpointRegistry(dirs, self.cache, legacy_hasher=self.legacy_hasher, **kwargs)

    def names(self) -> list[str]:
        return [info.name for info in self.registry.list()]


def make(tmp_path, dirs, **kwargs) -> Setup:
    return Setup(tmp_path, list(dirs), **kwargs)


# ----- discovery


def test_natural_sort_key():
    names = ["model10", "Model2", "model1", "b", "A"]
    assert sorted(names, key=natural_sort_key) == ["A", "b", "model1", "Model2", "model10"]


def test_walk_order_extensions_and_vae_exclusion(tmp_path, dirs):
    _, models = dirs
    for rel in ["model10.ckpt", "Model2.safetensors", "model1.ckpt", "b.safetensors", "d.SAFETENSORS",
                "sub10/x.ckpt", "sub2/x.ckpt", "sub2/deeper/y.ckpt",
                "a.vae.safetensors", "c.VAE.ckpt", "e.vae.pt", "notes.txt", "f.pt", "model1.yaml"]:
        write(models / rel)
    s = make(tmp_path, [models])
    s.registry.refresh()
    # Folders by the natural order of their whole path (root, sub2, sub2/deeper, sub10), files
    # naturally sorted inside each.
    assert s.names() == ["b.safetensors", "d.SAFETENSORS", "model1.ckpt", "Model2.safetensors", "model10.ckpt",
                         "sub2/x.ckpt", "sub2/deeper/y.ckpt", "sub10/x.ckpt"]


def test_ckpt_dir_comes_first_and_duplicate_dirs_are_walked_once(tmp_path, dirs):
    ckpt_dir, models = dirs
    write(models / "a.ckpt")
    write(ckpt_dir / "z.ckpt")
    s = make(tmp_path, [ckpt_dir, models, models, ckpt_dir])
    s.registry.refresh()
    assert s.names() == ["z.ckpt", "a.ckpt"]
    assert s.registry.dirs == [str(ckpt_dir), str(models)]


def test_fields_of_a_listed_checkpoint(tmp_path, dirs):
    _, models = dirs
    big = models / "sub" / "Big Model.ckpt"
    data = write(big, BIG)
    small = models / "small.safetensors"
    save_file({"w": torch.zeros(4)}, small, metadata={"ss_json": json.dumps({"a": 1}), "modelspec.thumbnail": "x"})
    (models / "small.yaml").write_text("model: {}\n")
    s = make(tmp_path, [models])
    s.registry.refresh()
    small_info, big_info = s.registry.list()

    assert big_info.filename == big and big_info.filename.is_absolute()
    assert big_info.name == "sub/Big Model.ckpt"
    assert big_info.name_for_extra == "Big Model"
    assert big_info.model_name == "sub_Big Model"
    assert big_info.hash == hashlib.sha256(data[MIB:MIB + 0x10000]).hexdigest()[:8]
    assert big_info.sha256 is None and big_info.shorthash is None
    assert big_info.title == "sub/Big Model.ckpt"
    assert big_info.short_title == "Big Model"
    assert big_info.config_path is None
    assert not big_info.is_safetensors
    assert big_info.size_bytes == BIG
    assert big_info.mtime == os.path.getmtime(big)
    assert big_info.metadata == {}
    assert big_info.cache_title == "checkpoint/sub/Big Model.ckpt"

    assert small_info.hash == "e3b0c442"  # shorter than 1 MiB
    assert small_info.is_safetensors
    assert small_info.config_path == models / "small.yaml"
    assert small_info.metadata == {"ss_json": {"a": 1}}
    assert s.sha_hasher.calls == []  # listing never hashes whole files


def test_symlinked_folders_are_followed_and_broken_links_skipped(tmp_path, dirs, caplog):
    _, models = dirs
    elsewhere = tmp_path / "elsewhere"
    write(elsewhere / "z.ckpt")
    (models / "linked").symlink_to(elsewhere, target_is_directory=True)
    (models / "loop").symlink_to(models, target_is_directory=True)  # must not recurse forever
    (models / "broken.ckpt").symlink_to(tmp_path / "missing.ckpt")
    write(models / "a.ckpt")
    s = make(tmp_path, [models])
    with caplog.at_level(logging.WARNING, logger="modules.library.checkpoints"):
        s.registry.refresh()
    assert s.names() == ["a.ckpt", "linked/z.ckpt"]
    assert s.registry.get("linked/z.ckpt").filename == models / "linked" / "z.ckpt"  # not resolved
    assert "broken symlink" in caplog.text and "broken.ckpt" in caplog.text


def test_hidden_files_are_listed_by_default(tmp_path, dirs):
    _, models = dirs
    write(models / ".hidden.ckpt")
    write(models / ".dir" / "in_hidden.ckpt")
    write(models / "shown.ckpt")
    s = make(tmp_path, [models])
    s.registry.refresh()
    assert sorted(s.names()) == [".dir/in_hidden.ckpt", ".hidden.ckpt", "shown.ckpt"]
    s = make(tmp_path, [models], include_hidden=False)
    s.registry.refresh()
    assert s.names() == ["shown.ckpt"]


def test_experiments_pretrained_models_is_not_special(tmp_path, dirs):
    ckpt_dir, _ = dirs
    write(ckpt_dir / "experiments" / "pretrained_models" / "p.ckpt")
    write(ckpt_dir / "top.ckpt")
    s = make(tmp_path, [ckpt_dir])
    s.registry.refresh()
    assert s.names() == ["top.ckpt", "experiments/pretrained_models/p.ckpt"]


def test_explicit_ckpt_file_comes_first(tmp_path, dirs, caplog):
    ckpt_dir, models = dirs
    write(models / "a.ckpt")
    write(models / "b.ckpt")
    write(tmp_path / "model.ckpt")
    s = make(tmp_path, [ckpt_dir, models], explicit_file=models / "b.ckpt")
    s.registry.refresh()
    assert s.names() == ["b.ckpt", "a.ckpt"]  # listed once, first
    s = make(tmp_path, [ckpt_dir, models], explicit_file=tmp_path / "model.ckpt")
    s.registry.refresh()
    assert s.names() == ["model.ckpt", "a.ckpt", "b.ckpt"]
    s = make(tmp_path, [ckpt_dir, models], explicit_file=tmp_path / "nope.ckpt")
    with caplog.at_level(logging.WARNING, logger="modules.library.checkpoints"):
        s.registry.refresh()
    assert "nope.ckpt" in caplog.text and s.names() == ["a.ckpt", "b.ckpt"]


def test_same_name_in_two_folders_first_folder_wins(tmp_path, dirs, caplog):
    ckpt_dir, models = dirs
    write(ckpt_dir / "same.ckpt", seed=1)
    write(models / "same.ckpt", seed=2)
    s = make(tmp_path, [ckpt_dir, models])
    with caplog.at_level(logging.WARNING, logger="modules.library.checkpoints"):
        s.registry.refresh()
    assert [i.filename for i in s.registry.list()] == [ckpt_dir / "same.ckpt"]
    assert "hidden by" in caplog.text


def test_nested_ckpt_dir_is_named_relative_to_itself_and_listed_once(tmp_path, dirs):
    _, models = dirs
    inner = models / "inner"
    write(inner / "i.ckpt")
    write(models / "m.ckpt")
    s = make(tmp_path, [inner, models])
    s.registry.refresh()
    assert s.names() == ["i.ckpt", "m.ckpt"]


# ----- hashes, titles, aliases


def test_titles_and_aliases_before_and_after_ensure_hash(tmp_path, dirs):
    _, models = dirs
    write(models / "a.ckpt")
    data = write(models / "sub" / "model.safetensors", BIG)
    write(models / "z.ckpt")
    s = make(tmp_path, [models])
    s.registry.refresh()
    info = s.registry.get("sub/model.safetensors")
    legacy = hashlib.sha256(data[MIB:MIB + 0x10000]).hexdigest()[:8]
    assert info.aliases == (legacy, "sub_model", "sub/model.safetensors", "model",
                            f"sub/model.safetensors [{legacy}]")
    assert s.registry.titles() == ["a.ckpt", "z.ckpt", "sub/model.safetensors"]  # a folder's files before its sub-folders

    sha = hashlib.sha256(data).hexdigest()
    hashed = s.registry.ensure_hash(info)
    assert hashed.sha256 == sha and hashed.shorthash == sha[:10]
    assert hashed.title == f"sub/model.safetensors [{sha[:10]}]"
    assert hashed.short_title == f"model [{sha[:10]}]"
    assert s.registry.titles() == ["a.ckpt", "z.ckpt", f"sub/model.safetensors [{sha[:10]}]"]  # position kept
    assert hashed.aliases == (legacy, "sub_model", hashed.title, "sub/model.safetensors", "model",
                              f"sub/model.safetensors [{legacy}]", sha[:10], sha, f"model [{sha[:10]}]")
    for alias in hashed.aliases:
        assert s.registry.get(alias) == hashed, alias
        assert alias in s.registry
    assert s.registry.ensure_hash(hashed) == hashed
    assert len(s.sha_hasher.calls) == 1


def test_ensure_hash_without_hashing_uses_only_the_cache(tmp_path, dirs):
    _, models = dirs
    data = write(models / "m.ckpt")
    s = make(tmp_path, [models], hashing_enabled=False)
    s.registry.refresh()
    info = s.registry.get("m.ckpt")
    assert s.registry.ensure_hash(info) == info and info.sha256 is None
    assert s.sha_hasher.calls == []

    s.cache.store_sha256("checkpoint/m.ckpt", models / "m.ckpt", hashlib.sha256(data).hexdigest())
    assert s.registry.ensure_hash(info).sha256 == hashlib.sha256(data).hexdigest()  # as A1111's --no-hashing
    assert s.sha_hasher.calls == []


def test_hashes_are_cached_in_a1111_format_and_reused_by_a_new_registry(tmp_path, dirs):
    _, models = dirs
    data = write(models / "m.safetensors", 2000)
    s = make(tmp_path, [models])
    s.registry.refresh()
    s.registry.ensure_hash(s.registry.get("m.safetensors"))
    on_disk = json.loads((tmp_path / "cache.json").read_text(encoding="utf-8"))
    assert on_disk["hashes"] == {"checkpoint/m.safetensors": {"mtime": os.path.getmtime(models / "m.safetensors"),
                                                              "sha256": hashlib.sha256(data).hexdigest()}}

    again = make(tmp_path, [models])
    again.registry.refresh()
    info = again.registry.list()[0]
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert info.title == f"m.safetensors [{info.sha256[:10]}]"
    assert again.registry.ensure_hash(info) == info
    assert again.sha_hasher.calls == []


def test_cache_json_written_by_a1111_is_honoured(tmp_path, dirs):
    _, models = dirs
    write(models / "sub" / "m.ckpt")
    fake_sha = "0123456789" + "f" * 54  # whatever A1111 wrote is trusted while the mtime matches
    (tmp_path / "cache.json").write_text(json.dumps({"hashes": {"checkpoint/sub/m.ckpt": {
        "mtime": os.path.getmtime(models / "sub" / "m.ckpt"), "sha256": fake_sha}}}, indent=4), encoding="utf-8")
    s = make(tmp_path, [models])
    s.registry.refresh()
    assert s.registry.titles() == ["sub/m.ckpt [0123456789]"]
    assert s.registry.find("0123456789").name == "sub/m.ckpt"
    assert s.sha_hasher.calls == []


def test_refresh_does_not_reread_unchanged_files(tmp_path, dirs):
    _, models = dirs
    for name in ["a.ckpt", "b.ckpt", "c.safetensors"]:
        write(models / name, BIG)
    s = make(tmp_path, [models])
    s.registry.refresh()
    for info in s.registry.list():
        s.registry.ensure_hash(info)
    s.legacy_hasher.calls.clear()
    s.sha_hasher.calls.clear()

    s.registry.refresh()
    assert s.legacy_hasher.calls == [] and s.sha_hasher.calls == []
    assert all(info.sha256 for info in s.registry.list())

    write(models / "b.ckpt", BIG, seed=99)
    os.utime(models / "b.ckpt", (1_600_000_000, 1_600_000_000))
    write(models / "d.ckpt")
    (models / "c.safetensors").unlink()
    s.registry.refresh()
    assert s.names() == ["a.ckpt", "b.ckpt", "d.ckpt"]
    assert s.legacy_hasher.calls == [models / "b.ckpt", models / "d.ckpt"]
    assert s.sha_hasher.calls == []
    b = s.registry.get("b.ckpt")
    assert b.sha256 is None and b.title == "b.ckpt"  # the changed file's cached hash no longer applies
    assert b.hash == legacy_model_hash(models / "b.ckpt")


def test_metadata_is_read_once_and_then_comes_from_the_cache(tmp_path, dirs):
    _, models = dirs
    save_file({"w": torch.zeros(2)}, models / "m.safetensors", metadata={"k": "v"})
    reads = []

    def reader(path):
        reads.append(path)
        from modules.library.hashes import read_safetensors_metadata
        return read_safetensors_metadata(path)

    registry = CheckpointRegistry([models], HashCache(tmp_path / "cache.json", metadata_reader=reader))
    registry.refresh()
    assert registry.list()[0].metadata == {"k": "v"}
    registry2 = CheckpointRegistry([models], HashCache(tmp_path / "cache.json", metadata_reader=reader))
    registry2.refresh()
    assert registry2.list()[0].metadata == {"k": "v"}
    assert len(reads) == 1


def test_truncated_safetensors_is_listed_with_a_warning(tmp_path, dirs, caplog):
    _, models = dirs
    save_file({"w": torch.zeros(100)}, models / "t.safetensors")
    raw = (models / "t.safetensors").read_bytes()
    (models / "t.safetensors").write_bytes(raw[:-50])
    s = make(tmp_path, [models])
    with caplog.at_level(logging.WARNING, logger="modules.library.checkpoints"):
        s.registry.refresh()
    assert s.names() == ["t.safetensors"] and s.registry.list()[0].metadata == {}
    assert "t.safetensors" in caplog.text


# ----- resolution


@pytest.fixture
def resolving(tmp_path, dirs):
    _, models = dirs
    for rel in ["anime/model.safetensors", "model.safetensors", "modelXL.safetensors", "photo.ckpt"]:
        write(models / rel)
    s = make(tmp_path, [models])
    s.registry.refresh()
    return s


def test_find_prefers_exact_alias_then_shortest_title_containing(resolving):
    registry = resolving.registry
    # An exact alias; two files share the name_for_extra `model` and the later one in discovery
    # order (root files first, then sub-folders) has it, as in A1111.
    assert registry.titles() == ["model.safetensors", "modelXL.safetensors", "photo.ckpt", "anime/model.safetensors"]
    assert registry.find("model").name == "anime/model.safetensors"
    assert registry.find("model.safe").name == "model.safetensors"  # shortest title containing it
    assert registry.find("XL").name == "modelXL.safetensors"
    assert registry.find("anime").name == "anime/model.safetensors"
    assert registry.find("anime_model").name == "anime/model.safetensors"  # model_name alias


def test_find_strips_a_stale_hash_suffix(resolving):
    registry = resolving.registry
    assert registry.find("photo.ckpt [deadbeef00]").name == "photo.ckpt"
    info = registry.ensure_hash(registry.get("photo.ckpt"))
    assert registry.find(f"photo.ckpt [{info.shorthash}]") == info  # exact title
    assert registry.find("photo [0000000000]") == info  # A1111 infotext short title with another hash


def test_find_raises_a_helpful_key_error(resolving):
    registry = resolving.registry
    with pytest.raises(CheckpointNotFoundError) as caught:
        registry.find("photoo")
    error = caught.value
    assert isinstance(error, KeyError)
    assert error.query == "photoo"
    assert error.closest == ["photo.ckpt"]
    message = str(error)
    assert message.startswith("Checkpoint 'photoo' not found. Did you mean 'photo.ckpt'?")
    assert "'modelXL.safetensors'" in message
    with pytest.raises(CheckpointNotFoundError):
        registry.get("model.safe")  # get is exact
    for query in ["", "[abcdef]", "   "]:
        with pytest.raises(CheckpointNotFoundError):
            registry.find(query)  # A1111 would return the shortest title for these


def test_not_found_in_an_empty_registry_says_where_to_put_files(tmp_path, dirs):
    s = make(tmp_path, list(dirs))
    s.registry.refresh()
    with pytest.raises(CheckpointNotFoundError, match="no checkpoints are listed. Put .safetensors"):
        s.registry.find("anything")


# ----- add_file


def test_add_file_registers_without_rescanning_or_hashing(tmp_path, dirs):
    _, models = dirs
    for name in ["a.ckpt", "m10.ckpt", "sub/z.ckpt"]:
        write(models / name)
    s = make(tmp_path, [models])
    s.registry.refresh()

    merged = models / "m2.safetensors"
    sha = save_file({"w": torch.ones(8)}, merged, metadata={"recipe": "{\"a\": 1}"})
    s.legacy_hasher.calls.clear()
    info = s.registry.add_file(merged, sha256=sha)
    assert info.sha256 == sha and info.title == f"m2.safetensors [{sha[:10]}]"
    assert info.metadata == {"recipe": {"a": 1}}
    assert s.sha_hasher.calls == []
    assert s.legacy_hasher.calls == [merged]  # the 64 KiB legacy read only
    assert s.names() == ["a.ckpt", "m2.safetensors", "m10.ckpt", "sub/z.ckpt"]  # where a rescan puts it
    assert s.registry.get(sha[:10]) == info
    assert json.loads((tmp_path / "cache.json").read_text(encoding="utf-8"))["hashes"]["checkpoint/m2.safetensors"][
        "sha256"] == sha

    fresh = make(tmp_path, [models])
    fresh.registry.refresh()
    assert fresh.registry.titles() == s.registry.titles()
    assert fresh.sha_hasher.calls == []


def test_add_file_rejects_what_is_not_a_checkpoint(tmp_path, dirs):
    _, models = dirs
    s = make(tmp_path, [models])
    write(models / "x.vae.safetensors")
    write(models / "notes.txt")
    with pytest.raises(ValueError, match="not a checkpoint file"):
        s.registry.add_file(models / "x.vae.safetensors")
    with pytest.raises(ValueError, match="not a checkpoint file"):
        s.registry.add_file(models / "notes.txt")
    with pytest.raises(FileNotFoundError, match="no such file"):
        s.registry.add_file(models / "missing.ckpt")
    with pytest.raises(ValueError, match="64 lower-case hex"):
        write(models / "ok.ckpt")
        s.registry.add_file(models / "ok.ckpt", sha256="nope")


def test_not_found_error_survives_pickling(resolving):
    import pickle

    with pytest.raises(CheckpointNotFoundError) as caught:
        resolving.registry.find("photoo")
    copy = pickle.loads(pickle.dumps(caught.value))
    assert str(copy) == str(caught.value) and copy.closest == ["photo.ckpt"]
