"""Checkpoints that cannot be loaded: listed but marked with the reason, refused until they change on
disk, skipped by a start-up load that no choice directs, and never silently put in place of a
checkpoint the user chose."""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path

import pytest
import torch

from modules.serving.app_context import AppContext
from modules.library.checkpoints import BrokenCheckpointError, CheckpointRegistry
from modules.serving.cmd_args import parse_args
from modules.library.hashes import HashCache
from modules.library.model_loader import LoadOptions
from modules.library.model_manager import ModelManager
from modules.library.safetensors_io import SafetensorsFormatError
from modules.library.safe_unpickle import PickledCheckpointError
from modules.library.synthetic_checkpoints import write_checkpoint
from modules.ui.top_bar import checkpoint_choices, model_status

TRUNCATED = "0-interrupted-download.safetensors"
GARBAGE = "1-garbage.safetensors"
GARBAGE_CKPT = "2-garbage.ckpt"  # a pickle has no header to check while listing: found by loading it
GOOD = "good.safetensors"


def write_library(folder: Path, broken: tuple[str, ...] = (TRUNCATED, GARBAGE, GARBAGE_CKPT)) -> None:
    """`good.safetensors` (tiny, real layout) and the broken files named in `broken`, which sort first."""
    folder.mkdir(parents=True, exist_ok=True)
    write_checkpoint(folder / GOOD, "sd1", size="tiny", dtype=torch.float32)
    good = (folder / GOOD).read_bytes()
    noise = random.Random(12).randbytes(200_000)
    contents = {TRUNCATED: good[: len(good) // 2], GARBAGE: noise, GARBAGE_CKPT: noise}
    for name in broken:
        (folder / name).write_bytes(contents[name])


def touch_later(path: Path) -> None:
    """Give `path` another mtime, as a re-download would."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))


@pytest.fixture
def registry(tmp_path):
    folder = tmp_path / "models" / "Stable-diffusion"
    write_library(folder)
    registry = CheckpointRegistry([folder], HashCache(tmp_path / "cache.json"))
    registry.refresh()
    return registry


def by_name(registry, name: str):
    return next(info for info in registry.list() if info.name == name)


def test_damaged_safetensors_are_listed_but_marked_with_the_reason(registry):
    assert [info.name for info in registry.list()] == [TRUNCATED, GARBAGE, GARBAGE_CKPT, GOOD]
    for name in (TRUNCATED, GARBAGE):
        problem = by_name(registry, name).problem
        assert problem is not None and problem.summary == SafetensorsFormatError.short_reason
        assert name in problem.detail  # the error's own message names the file
    assert "truncated" in by_name(registry, TRUNCATED).problem.detail
    # The .ckpt cannot be checked without unpickling it, and the good file has nothing to say.
    assert by_name(registry, GARBAGE_CKPT).problem is None and by_name(registry, GOOD).problem is None

    labels = dict((value, label) for label, value in registry.choices())
    assert list(labels) == registry.titles()  # values stay the titles A1111 clients send
    assert labels[TRUNCATED] == f"{TRUNCATED} \u26a0 {SafetensorsFormatError.short_reason}"
    assert labels[GOOD] == GOOD
    assert registry.loadable_titles() == [GARBAGE_CKPT, GOOD]


def test_a_file_that_fails_to_load_is_refused_until_it_changes(registry, tmp_path):
    manager = ModelManager(registry, LoadOptions())
    with pytest.raises(PickledCheckpointError):
        manager.load(GARBAGE_CKPT)  # the first try reads it
    marked = by_name(registry, GARBAGE_CKPT)
    assert marked.problem.summary == PickledCheckpointError.short_reason
    registry.refresh()  # a refresh cannot tell a pickle is fixed: the mark stays while the file is unchanged
    assert by_name(registry, GARBAGE_CKPT).problem == marked.problem
    with pytest.raises(BrokenCheckpointError) as refused:
        manager.load(GARBAGE_CKPT)  # refused from the mark, the file is not read again
    message = str(refused.value)
    assert GARBAGE_CKPT in message and marked.problem.detail.rstrip(".") in message
    assert "Replace or delete the file" in message and repr(GOOD) in message  # what to do instead
    assert manager.current() is None

    # Replaced on disk (a good download): the mark goes without a refresh, and the file loads.
    folder = tmp_path / "models" / "Stable-diffusion"
    fixed = folder / GARBAGE_CKPT
    fixed.unlink()
    write_checkpoint(fixed, "sd1", size="tiny", dtype=torch.float32, seed=3)
    touch_later(fixed)
    assert manager.load(GARBAGE_CKPT) is manager.current()
    assert by_name(registry, GARBAGE_CKPT).problem is None


def test_refresh_drops_the_mark_of_a_fixed_file(registry, tmp_path):
    folder = tmp_path / "models" / "Stable-diffusion"
    (folder / TRUNCATED).write_bytes((folder / GOOD).read_bytes())  # the download finished
    touch_later(folder / TRUNCATED)
    registry.refresh()
    assert by_name(registry, TRUNCATED).problem is None
    assert TRUNCATED in registry.loadable_titles()
    assert by_name(registry, GARBAGE).problem is not None  # unchanged: still marked


def make_context(data_dir: Path, *args: str) -> AppContext:
    context = AppContext.from_args(parse_args(["--data-dir", str(data_dir), "--no-demo-checkpoint", *args]))
    context.refresh()
    return context


def test_startup_skips_broken_files_and_says_which_and_why(tmp_path, caplog):
    write_library(tmp_path / "models" / "Stable-diffusion")
    context = make_context(tmp_path)
    with caplog.at_level(logging.WARNING):
        context.load_startup_model()

    assert context.models.current_info().name == GOOD
    assert context.load_state.error is None
    skipped = {s.title: s.reason for s in context.load_state.skipped}
    assert skipped == {TRUNCATED: SafetensorsFormatError.short_reason, GARBAGE: SafetensorsFormatError.short_reason,
                       GARBAGE_CKPT: PickledCheckpointError.short_reason}
    log = caplog.text
    assert all(f"Skipping checkpoint {name}" in log for name in skipped)
    assert "after skipping 3 checkpoint(s)" in log

    status, loading = model_status(context)
    assert not loading and "Loaded" in status and "skipped 3 that cannot be loaded" in status
    assert all(name in status for name in skipped)
    # Still listed, so the user can find and delete them; the dropdown's values are the titles.
    labels = dict((value, label) for label, value in checkpoint_choices(context))
    for name in skipped:
        assert labels[context.checkpoints.get(name).title].endswith(skipped[name])
    # Nothing was chosen, and nothing is saved as chosen by the fallback.
    assert context.settings.current()["sd_model_checkpoint"] == ""


def test_a_chosen_checkpoint_that_fails_is_not_replaced(tmp_path):
    write_library(tmp_path / "models" / "Stable-diffusion", broken=(GARBAGE_CKPT,))
    context = make_context(tmp_path)
    context.settings.apply({"sd_model_checkpoint": GARBAGE_CKPT})
    context.load_startup_model()

    assert context.models.current() is None  # the good file was not loaded in its place
    error = context.load_state.error
    title = context.checkpoints.get(GARBAGE_CKPT).title  # it may have gained its hash meanwhile
    assert error.startswith(f"Checkpoint {title!r} cannot be loaded") and repr(GOOD) in error
    status, _ = model_status(context)
    assert "Loading the checkpoint failed" in status and GOOD in status  # the status line offers the other
    with pytest.raises(BrokenCheckpointError):
        context.load_default_model()  # a request naming no checkpoint: the same answer, from the mark

    context.switch_checkpoint(GOOD)  # the user picks another: that works, and is remembered
    assert context.models.current_info().name == GOOD
    assert context.settings.current()["sd_model_checkpoint"] == context.models.current_info().title


def test_a_ckpt_flag_that_fails_is_not_replaced(tmp_path):
    folder = tmp_path / "models" / "Stable-diffusion"
    write_library(folder, broken=(GARBAGE,))
    context = make_context(tmp_path, "--ckpt", str(folder / GARBAGE))
    context.load_startup_model()
    assert context.models.current() is None
    title = context.checkpoints.get(GARBAGE).title
    assert context.load_state.error.startswith(f"Checkpoint {title!r} cannot be loaded")


def test_when_nothing_loads_the_error_lists_every_file_and_why(tmp_path):
    folder = tmp_path / "models" / "Stable-diffusion"
    write_library(folder)
    (folder / GOOD).unlink()
    context = make_context(tmp_path)
    context.load_startup_model()
    error = context.load_state.error
    assert error.startswith("none of the 3 checkpoints can be loaded")
    assert all(name in error for name in (TRUNCATED, GARBAGE, GARBAGE_CKPT)) and str(folder) in error
