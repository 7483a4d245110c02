"""Placing a finished file under a name without ever replacing another (downloads, checkpoint tools)."""

from __future__ import annotations

import errno
import os

import pytest

from modules.common import atomic_files
from modules.common.atomic_files import numbered_names, place_without_replacing


def test_a_free_name_takes_the_file_and_a_taken_one_leaves_both_alone(tmp_path):
    finished, taken = tmp_path / "stage", tmp_path / "model.safetensors"
    finished.write_bytes(b"new")
    taken.write_bytes(b"users")
    assert place_without_replacing(finished, taken) is False
    assert taken.read_bytes() == b"users" and finished.read_bytes() == b"new"
    assert place_without_replacing(finished, tmp_path / "model-1.safetensors") is True
    assert not finished.exists() and (tmp_path / "model-1.safetensors").read_bytes() == b"new"


@pytest.mark.parametrize("code", [errno.EPERM, errno.EXDEV, errno.ENOTSUP])
def test_without_hard_links_it_checks_then_renames(tmp_path, monkeypatch, code):
    def no_links(*_):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(atomic_files.os, "link", no_links)
    finished, taken = tmp_path / "stage", tmp_path / "a.ckpt"
    finished.write_bytes(b"new")
    taken.write_bytes(b"users")
    assert place_without_replacing(finished, taken) is False and taken.read_bytes() == b"users"
    assert place_without_replacing(finished, tmp_path / "b.ckpt") is True
    assert (tmp_path / "b.ckpt").read_bytes() == b"new" and not finished.exists()


def test_other_errors_are_not_taken_for_a_missing_hard_link(tmp_path, monkeypatch):
    def failing(*_):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(atomic_files.os, "link", failing)
    (tmp_path / "stage").write_bytes(b"x")
    with pytest.raises(OSError, match="I/O"):
        place_without_replacing(tmp_path / "stage", tmp_path / "final")


def test_numbered_names_keep_the_extension():
    names = [p.name for p in numbered_names("/m/model.safetensors", limit=3)]
    assert names == ["model.safetensors", "model-1.safetensors", "model-2.safetensors"]
