"""File hashes and the A1111-format hash cache (`modules/hashes.py`)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
import time
from pathlib import Path

import pytest
import torch

from modules.library.hashes import (
    HashCache,
    addnet_hash_safetensors,
    legacy_model_hash,
    read_safetensors_metadata,
    sha256_of_file,
)
from modules.library.safetensors_io import save_file

MIB = 1 << 20


def write_random(path: Path, size: int, seed: int = 0) -> bytes:
    data = random.Random(seed).randbytes(size)
    path.write_bytes(data)
    return data


class CountingHasher:
    """Stands in for the sha256 of a whole file and counts how often it is asked."""

    def __init__(self, delay: float = 0.0):
        self.calls: list[Path] = []
        self.delay = delay
        self._lock = threading.Lock()

    def __call__(self, path: Path) -> str:
        with self._lock:
            self.calls.append(Path(path))
        time.sleep(self.delay)
        return sha256_of_file(path)


def set_mtime(path: Path, mtime: float) -> None:
    os.utime(path, (mtime, mtime))


# ----- hash functions


def test_sha256_of_file_matches_hashlib_for_any_block_size(tmp_path):
    data = write_random(tmp_path / "f.bin", 3 * MIB + 123)
    expected = hashlib.sha256(data).hexdigest()
    assert sha256_of_file(tmp_path / "f.bin") == expected
    assert sha256_of_file(tmp_path / "f.bin", block=4096) == expected
    (tmp_path / "empty").write_bytes(b"")
    assert sha256_of_file(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()


def test_legacy_hash_reads_64k_at_1mib(tmp_path):
    data = write_random(tmp_path / "big.ckpt", MIB + 0x10000 + 5000)
    assert legacy_model_hash(tmp_path / "big.ckpt") == hashlib.sha256(data[MIB:MIB + 0x10000]).hexdigest()[:8]


def test_legacy_hash_of_short_file_is_the_empty_hash(tmp_path):
    write_random(tmp_path / "small.ckpt", MIB - 1)
    assert legacy_model_hash(tmp_path / "small.ckpt") == "e3b0c442"


def test_legacy_hash_of_file_ending_inside_the_window_hashes_what_is_there(tmp_path):
    data = write_random(tmp_path / "mid.ckpt", MIB + 100)
    assert legacy_model_hash(tmp_path / "mid.ckpt") == hashlib.sha256(data[MIB:]).hexdigest()[:8]


def test_legacy_hash_of_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        legacy_model_hash(tmp_path / "missing.ckpt")


def test_addnet_hash_covers_data_only(tmp_path):
    tensors = {"w": torch.arange(1000, dtype=torch.float32)}
    save_file(tensors, tmp_path / "a.safetensors", metadata={"ss_note": "one"})
    save_file(tensors, tmp_path / "b.safetensors", metadata={"ss_note": "a different and longer note"})
    raw = (tmp_path / "a.safetensors").read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    expected = hashlib.sha256(raw[8 + header_len:]).hexdigest()
    assert addnet_hash_safetensors(tmp_path / "a.safetensors") == expected
    assert addnet_hash_safetensors(tmp_path / "b.safetensors") == expected
    assert sha256_of_file(tmp_path / "a.safetensors") != sha256_of_file(tmp_path / "b.safetensors")


def test_read_safetensors_metadata_decodes_json_values_and_drops_thumbnail(tmp_path):
    metadata = {
        "ss_tag_frequency": json.dumps({"set": {"cat": 3}}),
        "broken": "{not json",
        "plain": "text",
        "modelspec.thumbnail": "data:image/png;base64,AAAA",
    }
    save_file({"w": torch.zeros(2)}, tmp_path / "m.safetensors", metadata=metadata)
    assert read_safetensors_metadata(tmp_path / "m.safetensors") == {
        "ss_tag_frequency": {"set": {"cat": 3}},
        "broken": "{not json",
        "plain": "text",
    }


# ----- HashCache


def test_sha256_is_computed_once_then_cached(tmp_path):
    data = write_random(tmp_path / "m.ckpt", 1000)
    hasher = CountingHasher()
    cache = HashCache(tmp_path / "cache.json", hasher=hasher)
    assert cache.cached_sha256("checkpoint/m.ckpt", tmp_path / "m.ckpt") is None
    assert cache.sha256("checkpoint/m.ckpt", tmp_path / "m.ckpt", compute=False) is None
    assert hasher.calls == []
    expected = hashlib.sha256(data).hexdigest()
    assert cache.sha256("checkpoint/m.ckpt", tmp_path / "m.ckpt") == expected
    assert cache.sha256("checkpoint/m.ckpt", tmp_path / "m.ckpt") == expected
    assert cache.cached_sha256("checkpoint/m.ckpt", tmp_path / "m.ckpt") == expected
    assert len(hasher.calls) == 1


def test_flush_writes_a1111_format_once_and_a_new_cache_reads_it(tmp_path):
    path = tmp_path / "m.ckpt"
    data = write_random(path, 1000)
    cache_file = tmp_path / "cache.json"
    cache = HashCache(cache_file, hasher=CountingHasher())
    assert cache.flush() is False and not cache_file.exists()  # nothing changed: no file written

    cache.sha256("checkpoint/m.ckpt", path)
    assert cache.dirty
    assert cache.flush() is True
    assert cache.flush() is False  # written already
    on_disk = json.loads(cache_file.read_text(encoding="utf-8"))
    assert on_disk == {"hashes": {"checkpoint/m.ckpt": {"mtime": os.path.getmtime(path),
                                                        "sha256": hashlib.sha256(data).hexdigest()}}}
    assert cache_file.read_text(encoding="utf-8").startswith('{\n    "hashes"')  # A1111's indent=4
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("cache.json")] == ["cache.json"]  # no temp files

    hasher = CountingHasher()
    reread = HashCache(cache_file, hasher=hasher)
    assert reread.sha256("checkpoint/m.ckpt", path) == hashlib.sha256(data).hexdigest()
    assert hasher.calls == []


def test_changed_mtime_invalidates_newer_and_older(tmp_path):
    path = tmp_path / "m.ckpt"
    write_random(path, 1000, seed=1)
    set_mtime(path, 1_700_000_000.5)
    hasher = CountingHasher()
    cache = HashCache(tmp_path / "cache.json", hasher=hasher)
    first = cache.sha256("checkpoint/m.ckpt", path)

    write_random(path, 1000, seed=2)
    set_mtime(path, 1_600_000_000.25)  # an older copy put in place: A1111 v1.10 would keep the stale hash
    assert cache.cached_sha256("checkpoint/m.ckpt", path) is None
    second = cache.sha256("checkpoint/m.ckpt", path)
    assert second != first and second == hashlib.sha256(path.read_bytes()).hexdigest()

    set_mtime(path, 1_800_000_000.0)
    assert cache.cached_sha256("checkpoint/m.ckpt", path) is None
    assert len(hasher.calls) == 2


def test_a1111_cache_json_is_honoured_and_its_other_sections_kept(tmp_path):
    path = tmp_path / "m.safetensors"
    write_random(path, 500)
    a1111 = {
        "hashes": {"checkpoint/m.safetensors": {"mtime": os.path.getmtime(path), "sha256": "ab" * 32}},
        "hashes-addnet": {"lora/x": {"mtime": 1.0, "sha256": "cd" * 32}},
        "safetensors-metadata": {"checkpoint/m.safetensors": {"mtime": os.path.getmtime(path),
                                                              "value": {"ss_x": {"a": 1}}}},
        "extra_networks_thing": {"k": {"mtime": 2.0, "value": "kept"}},
    }
    cache_file = tmp_path / "cache.json"
    cache_file.write_text(json.dumps(a1111, indent=4), encoding="utf-8")

    def no_metadata_reads(path):
        raise AssertionError("metadata should come from the cache")

    hasher = CountingHasher()
    cache = HashCache(cache_file, hasher=hasher, metadata_reader=no_metadata_reads)
    assert cache.sha256("checkpoint/m.safetensors", path) == "ab" * 32
    assert cache.safetensors_metadata("checkpoint/m.safetensors", path) == {"ss_x": {"a": 1}}
    assert hasher.calls == []

    other = tmp_path / "o.ckpt"
    write_random(other, 100)
    cache.sha256("checkpoint/o.ckpt", other)
    cache.flush()
    on_disk = json.loads(cache_file.read_text(encoding="utf-8"))
    assert on_disk["extra_networks_thing"] == a1111["extra_networks_thing"]
    assert on_disk["hashes-addnet"] == a1111["hashes-addnet"]
    assert set(on_disk["hashes"]) == {"checkpoint/m.safetensors", "checkpoint/o.ckpt"}


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"hashes": [1]}', ""])
def test_corrupt_cache_is_moved_aside_and_an_empty_cache_used(tmp_path, caplog, content):
    cache_file = tmp_path / "cache.json"
    cache_file.write_text(content, encoding="utf-8")
    path = tmp_path / "m.ckpt"
    write_random(path, 100)
    hasher = CountingHasher()
    cache = HashCache(cache_file, hasher=hasher)

    aside = list(tmp_path.glob("cache.json.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_text(encoding="utf-8") == content
    assert not cache_file.exists()
    assert "corrupt" in caplog.text
    assert cache.cached_sha256("checkpoint/m.ckpt", path) is None
    cache.sha256("checkpoint/m.ckpt", path)
    assert cache.flush()
    assert "checkpoint/m.ckpt" in json.loads(cache_file.read_text(encoding="utf-8"))["hashes"]


def test_malformed_entries_are_recomputed_not_trusted(tmp_path):
    path = tmp_path / "m.ckpt"
    write_random(path, 100)
    mtime = os.path.getmtime(path)
    cache_file = tmp_path / "cache.json"
    cache_file.write_text(json.dumps({"hashes": {
        "checkpoint/m.ckpt": {"mtime": mtime, "sha256": "not-a-hash"},
        "checkpoint/n.ckpt": "garbage",
    }}), encoding="utf-8")
    hasher = CountingHasher()
    cache = HashCache(cache_file, hasher=hasher)
    assert cache.cached_sha256("checkpoint/m.ckpt", path) is None
    assert cache.cached_sha256("checkpoint/n.ckpt", path) is None
    assert cache.sha256("checkpoint/m.ckpt", path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_store_sha256_records_a_hash_computed_elsewhere(tmp_path):
    path = tmp_path / "merged.safetensors"
    data = write_random(path, 100)
    hasher = CountingHasher()
    cache = HashCache(tmp_path / "cache.json", hasher=hasher)
    cache.store_sha256("checkpoint/merged.safetensors", path, hashlib.sha256(data).hexdigest())
    assert cache.sha256("checkpoint/merged.safetensors", path) == hashlib.sha256(data).hexdigest()
    assert hasher.calls == []
    with pytest.raises(ValueError, match="64 lower-case hex"):
        cache.store_sha256("checkpoint/merged.safetensors", path, "XYZ")


def test_addnet_hashes_live_in_their_own_subsection(tmp_path):
    save_file({"w": torch.ones(10)}, tmp_path / "l.safetensors", metadata={"a": "b"})
    cache = HashCache(tmp_path / "cache.json")
    value = cache.addnet_sha256("lora/l", tmp_path / "l.safetensors")
    assert value == addnet_hash_safetensors(tmp_path / "l.safetensors")
    assert cache.cached_addnet_sha256("lora/l", tmp_path / "l.safetensors") == value
    assert cache.cached_sha256("lora/l", tmp_path / "l.safetensors") is None
    cache.flush()
    assert "lora/l" in json.loads((tmp_path / "cache.json").read_text(encoding="utf-8"))["hashes-addnet"]


def test_safetensors_metadata_is_cached_by_mtime(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file({"w": torch.zeros(3)}, path, metadata={"v": "1"})
    reads: list[Path] = []

    def reader(p: Path):
        reads.append(p)
        return read_safetensors_metadata(p)

    cache_file = tmp_path / "cache.json"
    cache = HashCache(cache_file, metadata_reader=reader)
    assert cache.safetensors_metadata("checkpoint/m.safetensors", path) == {"v": "1"}
    returned = cache.safetensors_metadata("checkpoint/m.safetensors", path)
    returned["v"] = "changed by a caller"
    assert cache.safetensors_metadata("checkpoint/m.safetensors", path) == {"v": "1"}
    assert len(reads) == 1
    cache.flush()
    assert json.loads(cache_file.read_text(encoding="utf-8"))["safetensors-metadata"] == {
        "checkpoint/m.safetensors": {"mtime": os.path.getmtime(path), "value": {"v": "1"}}}

    reads.clear()
    assert HashCache(cache_file, metadata_reader=reader).safetensors_metadata("checkpoint/m.safetensors", path) == {"v": "1"}
    assert reads == []

    save_file({"w": torch.zeros(3)}, path, metadata={"v": "2"}, overwrite=True)
    set_mtime(path, os.path.getmtime(path) + 10)
    assert cache.safetensors_metadata("checkpoint/m.safetensors", path) == {"v": "2"}


def test_one_file_is_hashed_once_when_two_threads_ask(tmp_path):
    path = tmp_path / "m.ckpt"
    write_random(path, 1000)
    hasher = CountingHasher(delay=0.2)
    cache = HashCache(tmp_path / "cache.json", hasher=hasher)
    results: list[str | None] = []
    threads = [threading.Thread(target=lambda: results.append(cache.sha256("checkpoint/m.ckpt", path)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(hasher.calls) == 1
    assert results == [hashlib.sha256(path.read_bytes()).hexdigest()] * 2


def test_in_data_dir_uses_cache_json(tmp_path):
    assert HashCache.in_data_dir(tmp_path).path == tmp_path / "cache.json"


def test_failed_write_is_logged_and_retried(tmp_path, caplog):
    path = tmp_path / "m.ckpt"
    write_random(path, 100)
    blocker = tmp_path / "not-a-dir"
    cache = HashCache(blocker / "cache.json")
    blocker.write_text("a file where the cache folder should be")  # root ignores permissions; this fails for all
    cache.sha256("checkpoint/m.ckpt", path)
    assert cache.flush() is False
    assert "Cannot write hash cache" in caplog.text
    assert cache.dirty  # kept for the next try
    assert cache.cached_sha256("checkpoint/m.ckpt", path) is not None


def test_unreadable_cache_is_left_alone(tmp_path, caplog):
    cache_file = tmp_path / "cache.json"
    cache_file.mkdir()  # reading a folder fails with an OSError that is not "corrupt"
    path = tmp_path / "m.ckpt"
    write_random(path, 100)
    cache = HashCache(cache_file)
    assert "Cannot read hash cache" in caplog.text
    cache.sha256("checkpoint/m.ckpt", path)
    assert cache.flush() is False
    assert cache_file.is_dir() and not list(tmp_path.glob("cache.json.*"))
