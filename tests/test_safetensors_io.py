"""The streaming safetensors writer's block path and the reader's ranged reads."""

from __future__ import annotations

import hashlib

import pytest
import safetensors.torch
import torch

from modules.library.safetensors_io import SafetensorsReader, SafetensorsWriter


@pytest.fixture
def tensors():
    generator = torch.Generator().manual_seed(0)
    return {
        "big": torch.randn(301, 7, generator=generator).half(),
        "ids": torch.arange(77, dtype=torch.int64).reshape(1, 77),
        "small": torch.randn(5, generator=generator),
        "bf": torch.randn(1000, generator=generator).to(torch.bfloat16),
    }


def test_write_blocks_gives_the_same_file_as_write(tmp_path, tensors, monkeypatch):
    monkeypatch.setattr(SafetensorsWriter, "BLOCK_BYTES", 100)  # many blocks, a ragged last one
    specs = [(k, t.dtype, tuple(t.shape)) for k, t in tensors.items()]
    with SafetensorsWriter(tmp_path / "whole.safetensors", specs, {"m": "1"}) as writer:
        for key, tensor in tensors.items():
            writer.write(key, tensor)
        writer.commit()
    calls = []

    def filler(tensor):
        def fill(out, start, end):
            calls.append((start, end))
            out.copy_(tensor.reshape(-1)[start:end])
        return fill

    with SafetensorsWriter(tmp_path / "blocks.safetensors", specs, {"m": "1"}) as blocks:
        for key, tensor in tensors.items():
            blocks.write_blocks(key, tensor.dtype, tuple(tensor.shape), filler(tensor))
        blocks.commit()
    data = (tmp_path / "blocks.safetensors").read_bytes()
    assert data == (tmp_path / "whole.safetensors").read_bytes()
    assert blocks.sha256 == writer.sha256 == hashlib.sha256(data).hexdigest()
    assert len(calls) > len(tensors) and max(end - start for start, end in calls) * 2 <= 100
    loaded = safetensors.torch.load_file(str(tmp_path / "blocks.safetensors"))
    assert all(torch.equal(loaded[k], t) for k, t in tensors.items())


def test_a_failing_fill_leaves_no_file(tmp_path, tensors, monkeypatch):
    monkeypatch.setattr(SafetensorsWriter, "BLOCK_BYTES", 64)
    specs = [(k, t.dtype, tuple(t.shape)) for k, t in tensors.items()]

    def fill(out, start, end):
        if start > 500:
            raise RuntimeError("bad block")
        out.zero_()

    with pytest.raises(RuntimeError, match="bad block"):
        with SafetensorsWriter(tmp_path / "x.safetensors", specs) as writer:
            writer.write_blocks("big", torch.float16, (301, 7), fill)
    assert list(tmp_path.iterdir()) == []


def test_write_blocks_checks_the_declared_order(tmp_path, tensors):
    specs = [(k, t.dtype, tuple(t.shape)) for k, t in tensors.items()]
    with SafetensorsWriter(tmp_path / "x.safetensors", specs) as writer:
        with pytest.raises(ValueError, match="expected tensor 'big'"):
            writer.write_blocks("small", torch.float32, (5,), lambda out, s, e: None)
        with pytest.raises(ValueError, match="expected tensor 'big'"):
            writer.write_blocks("big", torch.float32, (301, 7), lambda out, s, e: None)


def test_read_into_reads_ranges_as_stored(tmp_path, tensors):
    path = tmp_path / "x.safetensors"
    safetensors.torch.save_file(tensors, str(path))
    with SafetensorsReader(path) as reader:
        for key, tensor in tensors.items():
            flat = tensor.reshape(-1)
            for start, end in ((0, flat.numel()), (3, 4), (flat.numel() // 2, flat.numel())):
                out = torch.empty(end - start, dtype=tensor.dtype)
                reader.read_into(key, start, out)
                assert torch.equal(out, flat[start:end]), (key, start, end)
        with pytest.raises(ValueError, match="outside"):
            reader.read_into("small", 3, torch.empty(5))
        with pytest.raises(ValueError, match="1-D"):
            reader.read_into("small", 0, torch.empty(5, dtype=torch.float16))


def test_view_is_the_stored_tensor(tmp_path, tensors):
    path = tmp_path / "x.safetensors"
    safetensors.torch.save_file(tensors, str(path))
    with SafetensorsReader(path) as reader:
        for key, tensor in tensors.items():
            with reader.view(key) as view:
                assert view.dtype == tensor.dtype and torch.equal(view, tensor)


def test_read_many_hashes_the_whole_file_while_reading_what_is_asked(tmp_path, tensors):
    """The digest covers every byte (header, tensors not asked for, an empty tensor, bytes after the
    last tensor), in order, as hashlib over the file does; the tensors asked for come converted."""
    path = tmp_path / "m.safetensors"
    tensors = {**tensors, "empty": torch.zeros(0, 3), "large": torch.randn(70_000).half()}  # several slices
    safetensors.torch.save_file(tensors, str(path), metadata={"note": "x" * 1000})
    asked = {"small": None, "big": torch.float32, "empty": None, "large": torch.float32, "ids": torch.float32}
    for tail in (b"", b"bytes after the last tensor"):
        path.write_bytes(path.read_bytes() + tail)
        digest = hashlib.sha256()
        with SafetensorsReader(path) as reader:
            read = reader.read_many(asked, digest=digest)
        assert digest.hexdigest() == hashlib.sha256(path.read_bytes()).hexdigest()
        assert set(read) == set(asked)
        for name, dtype in asked.items():
            stored = tensors[name]
            expected = stored.to(dtype) if dtype is not None and stored.is_floating_point() else stored
            assert read[name].dtype == expected.dtype and torch.equal(read[name], expected)  # ids stay int64

    with SafetensorsReader(path) as reader, pytest.raises(KeyError, match="nope"):
        reader.read_many({"nope": None})


@pytest.mark.parametrize("hashed", [False, True])
def test_read_many_with_several_threads(tmp_path, hashed):
    """With more intra-op threads, more threads share the pass; the result is the same."""
    generator = torch.Generator().manual_seed(1)
    tensors = {f"t{i:02d}": torch.randn(40_000 + i, generator=generator).half() for i in range(12)}
    path = tmp_path / "many.safetensors"
    safetensors.torch.save_file(tensors, str(path))
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        digest = hashlib.sha256() if hashed else None
        with SafetensorsReader(path) as reader:
            read = reader.read_many(dict.fromkeys(tensors, torch.float32), digest=digest)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(read[name], tensor.float()) for name, tensor in tensors.items())
    if hashed:
        assert digest.hexdigest() == hashlib.sha256(path.read_bytes()).hexdigest()
