"""Tests for modules/safe_unpickle.py: legit files load bit-exactly, malicious ones run nothing."""

from __future__ import annotations

import builtins
import contextlib
import datetime
import logging
import os
import pickle
import re
import subprocess
import sys
import threading
import time
import types
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from modules.library import safe_unpickle
from modules.library.safe_unpickle import (
    CorruptCheckpointError,
    LightningModulePlaceholder,
    ModelCheckpointPlaceholder,
    PickledCheckpointError,
    UnsafeCheckpointError,
    load_pickled_checkpoint,
    unwrap_state_dict,
)

LIGHTNING_MODULE = "pytorch_lightning.callbacks.model_checkpoint"


# ---------------------------------------------------------------------------------------------
# helpers


def _tensors() -> OrderedDict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(4, 5, generator=gen)
    return OrderedDict(
        [
            ("model.diffusion_model.fp32.weight", base),
            ("model.diffusion_model.fp16.weight", (base * 3).half()),
            ("model.diffusion_model.bf16.weight", (base / 7).bfloat16()),
            ("model.diffusion_model.int64", torch.arange(-5, 7, dtype=torch.int64)),
            # Special values must survive bit-exactly too.
            ("first_stage_model.special", torch.tensor([float("nan"), float("inf"), -0.0, 1e-40])),
            ("cond_stage_model.bool_mask", torch.tensor([True, False, True])),
            ("cond_stage_model.uint8", torch.arange(0, 250, 50, dtype=torch.uint8)),
            # A non-contiguous view of a shared storage (as torch.save keeps views).
            ("model.view_of_base", base.t()[1:3]),
        ]
    )


def _assert_bit_identical(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert isinstance(actual, torch.Tensor)
    assert actual.dtype == expected.dtype
    assert actual.shape == expected.shape
    assert actual.device.type == "cpu"
    a = actual.contiguous().view(torch.uint8) if actual.numel() else actual
    e = expected.contiguous().view(torch.uint8) if expected.numel() else expected
    assert torch.equal(a, e)


def _save(obj: object, path: Path, *, legacy: bool, **kwargs) -> Path:
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy, **kwargs)
    return path


@contextlib.contextmanager
def _fake_lightning():
    """Make `pytorch_lightning...ModelCheckpoint` importable while saving, then remove it again.

    The class gets the real module path, so the pickle names it exactly as real SD1 `.ckpt`
    files do; loading then happens without any lightning module present.
    """
    names = ["pytorch_lightning", "pytorch_lightning.callbacks", LIGHTNING_MODULE]
    assert not any(name in sys.modules for name in names), "real lightning must not be loaded"
    mods = {name: types.ModuleType(name) for name in names}
    ModelCheckpoint = type("ModelCheckpoint", (), {"__module__": LIGHTNING_MODULE})
    mods[LIGHTNING_MODULE].ModelCheckpoint = ModelCheckpoint
    mods["pytorch_lightning"].callbacks = mods["pytorch_lightning.callbacks"]
    mods["pytorch_lightning.callbacks"].model_checkpoint = mods[LIGHTNING_MODULE]
    sys.modules.update(mods)
    try:
        yield ModelCheckpoint
    finally:
        for name in names:
            sys.modules.pop(name, None)


def _save_sd1_style_checkpoint(tensors: dict[str, torch.Tensor], path: Path, legacy: bool) -> Path:
    with_param = OrderedDict(tensors)
    with_param["model.param"] = torch.nn.Parameter(torch.linspace(0, 1, 6), requires_grad=True)
    with _fake_lightning() as ModelCheckpoint:
        instance = ModelCheckpoint()
        instance.monitor = "val/loss"
        instance.best_model_path = "logs/last.ckpt"
        instance.save_top_k = 3
        obj = {
            "state_dict": with_param,
            "epoch": 6,
            "global_step": 470000,
            "pytorch-lightning_version": "1.4.2",
            # What real SD1 files carry: the callback *class* as a key...
            "callbacks": {ModelCheckpoint: {"monitor": None, "best_model_score": None}},
            # ...and, in some trainers, an instance.
            "callback_instance": instance,
            "optimizer_states": [],
            "lr_schedulers": [],
            "nested": {"level1": {"level2": tensors["model.diffusion_model.fp16.weight"]}},
        }
        # Saved while the fake module exists; loaded after it is gone.
        return _save(obj, path, legacy=legacy)


# ---------------------------------------------------------------------------------------------
# legit files


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_sd1_style_checkpoint_loads_bit_identical(tmp_path: Path, legacy: bool) -> None:
    tensors = _tensors()
    path = _save_sd1_style_checkpoint(tensors, tmp_path / "model.ckpt", legacy)
    assert "pytorch_lightning" not in sys.modules

    loaded = load_pickled_checkpoint(path)

    assert "pytorch_lightning" not in sys.modules  # nothing was imported for the callback
    assert loaded["global_step"] == 470000 and loaded["epoch"] == 6
    state = loaded["state_dict"]
    assert isinstance(state, OrderedDict)
    assert list(state) == list(tensors) + ["model.param"]
    for key, expected in tensors.items():
        _assert_bit_identical(state[key], expected)
    assert isinstance(state["model.param"], torch.nn.Parameter)
    _assert_bit_identical(state["model.param"].detach(), torch.linspace(0, 1, 6))
    _assert_bit_identical(
        loaded["nested"]["level1"]["level2"], tensors["model.diffusion_model.fp16.weight"]
    )
    # The lightning callback resolves to the inert placeholder, class and instance alike.
    assert list(loaded["callbacks"]) == [ModelCheckpointPlaceholder]
    instance = loaded["callback_instance"]
    assert isinstance(instance, ModelCheckpointPlaceholder)
    assert vars(instance) == {
        "monitor": "val/loss",
        "best_model_path": "logs/last.ckpt",
        "save_top_k": 3,
    }

    flat = unwrap_state_dict(loaded, path)
    assert set(flat) == set(tensors) | {"model.param"}
    assert type(flat["model.param"]) is torch.Tensor


def test_zip_written_by_this_torch_has_new_members_and_loads(tmp_path: Path) -> None:
    # A1111 1.10's member-name check rejects these members; they are legitimate.
    path = _save({"w": torch.ones(2)}, tmp_path / "new.pt", legacy=False)
    names = {name.split("/", 1)[1] for name in zipfile.ZipFile(path).namelist()}
    assert {".data/serialization_id", "byteorder", "data.pkl", "version"} <= names
    _assert_bit_identical(load_pickled_checkpoint(path)["w"], torch.ones(2))


@pytest.mark.parametrize(
    ("legacy", "mmap", "expected_mmap"),
    [
        (False, None, True),
        (True, None, False),
        (False, False, False),
        (True, True, False),  # legacy files cannot be mapped: falls back instead of failing
        (False, True, True),
    ],
)
def test_mmap_choice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, legacy: bool, mmap, expected_mmap: bool
) -> None:
    tensors = _tensors()
    path = _save(dict(tensors), tmp_path / "m.pt", legacy=legacy)
    seen: list[dict] = []
    real_load = torch.load

    def spy(*args, **kwargs):
        seen.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    loaded = load_pickled_checkpoint(path, mmap=mmap)
    assert seen[0]["mmap"] is expected_mmap
    assert seen[0]["weights_only"] is True
    for key, expected in tensors.items():
        _assert_bit_identical(loaded[key], expected)


def test_numpy_scalars_and_arrays_in_embedding_and_hypernetwork_files(tmp_path: Path) -> None:
    vector = torch.randn(2, 768, generator=torch.Generator().manual_seed(1))
    embedding = {
        "string_to_token": {"*": 265},
        "string_to_param": {"*": vector},
        "name": "my-style",
        "step": np.int64(3000),  # A1111 sometimes stores the step as a numpy integer
        "sd_checkpoint": "a9263745",
        "sd_checkpoint_name": "v1-5-pruned-emaonly",
        "loss": np.float32(0.125),
        "hist": np.arange(6, dtype=np.float16).reshape(2, 3),
        "flags": {"a", "b"},
    }
    hypernetwork = {
        320: [OrderedDict(w=torch.ones(3)), OrderedDict(w=torch.zeros(3))],
        "step": np.int32(12),
        "layer_structure": [1.0, 2.0, 1.0],
        "activation_func": "linear",
        "is_layer_norm": False,
        "lr": np.float64(1e-5),
    }
    for legacy in (False, True):
        path = _save(embedding, tmp_path / f"emb-{legacy}.pt", legacy=legacy)
        loaded = load_pickled_checkpoint(path)
        assert loaded["step"] == 3000 and type(loaded["step"]) is np.int64
        assert loaded["loss"] == np.float32(0.125) and type(loaded["loss"]) is np.float32
        assert loaded["hist"].dtype == np.float16
        np.testing.assert_array_equal(loaded["hist"], embedding["hist"])
        assert loaded["flags"] == {"a", "b"}
        _assert_bit_identical(loaded["string_to_param"]["*"], vector)

        path = _save(hypernetwork, tmp_path / f"hn-{legacy}.pt", legacy=legacy)
        loaded = load_pickled_checkpoint(path)
        assert type(loaded["step"]) is np.int32 and loaded["step"] == 12
        assert loaded["lr"] == 1e-5
        _assert_bit_identical(loaded[320][1]["w"], torch.zeros(3))


def test_numpy1_module_paths_load(tmp_path: Path) -> None:
    # numpy 1 wrote `numpy.core.multiarray...`; numpy 2 writes `numpy._core...`. Rewrite the
    # names in a legacy file (its pickle is plain bytes, no checksums) to get a numpy-1 file.
    path = _save({"step": np.int64(7), "a": np.arange(3)}, tmp_path / "np1.pt", legacy=True)
    data = path.read_bytes()
    assert b"numpy._core.multiarray\n" in data
    path.write_bytes(data.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"))
    loaded = load_pickled_checkpoint(path)
    assert loaded["step"] == 7
    np.testing.assert_array_equal(loaded["a"], np.arange(3))


def test_textual_inversion_parameterdict(tmp_path: Path) -> None:
    # The original textual-inversion repo saved `string_to_param` as an nn.ParameterDict.
    param = torch.nn.Parameter(torch.randn(1, 768, generator=torch.Generator().manual_seed(2)))
    obj = {
        "string_to_token": {"*": torch.tensor(265)},
        "string_to_param": torch.nn.ParameterDict({"*": param}),
    }
    path = _save(obj, tmp_path / "ti.pt", legacy=False)
    loaded = load_pickled_checkpoint(path)
    assert isinstance(loaded["string_to_param"], torch.nn.ParameterDict)
    _assert_bit_identical(loaded["string_to_param"]["*"].detach(), param.detach())


def test_checkpoint_saved_from_gpu_loads_on_cpu(tmp_path: Path) -> None:
    # Storages carry the device they were saved from; a CUDA-saved .ckpt must load on a machine
    # without CUDA. Patch the location string in a legacy file (plain pickle bytes).
    path = _save({"w": torch.arange(4.0)}, tmp_path / "gpu.ckpt", legacy=True)
    data = path.read_bytes()
    assert data.count(b"X\x03\x00\x00\x00cpu") == 1
    path.write_bytes(data.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0"))
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):  # proves the file really says cuda
            torch.load(path, weights_only=True, map_location=None)
    _assert_bit_identical(load_pickled_checkpoint(path)["w"], torch.arange(4.0))


def test_allowlist_covers_a1111_names() -> None:
    # Every global A1111's RestrictedUnpickler accepts must be accepted here as well.
    a1111 = [
        "collections.OrderedDict",
        "torch._utils._rebuild_tensor_v2",
        "torch._utils._rebuild_parameter",
        "torch._utils._rebuild_device_tensor_from_numpy",
        "torch.FloatStorage",
        "torch.HalfStorage",
        "torch.IntStorage",
        "torch.LongStorage",
        "torch.DoubleStorage",
        "torch.ByteStorage",
        "torch.float32",
        "torch.BFloat16Storage",
        "torch.nn.modules.container.ParameterDict",
        "numpy.core.multiarray.scalar",
        "numpy.core.multiarray._reconstruct",
        "numpy.dtype",
        "numpy.ndarray",
        "_codecs.encode",
        "pytorch_lightning.callbacks.model_checkpoint",
        "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
        "__builtin__.set",
    ]
    allowed = safe_unpickle._allowed_global_names(safe_unpickle.restricted_allowlist())
    missing = [
        name
        for name in a1111
        if safe_unpickle._canonical_global(*name.rsplit(".", 1)) not in allowed
    ]
    assert missing == []


def test_extra_globals_and_allowlist_is_restored(tmp_path: Path) -> None:
    stamp = datetime.datetime(2023, 5, 1, 12, 30)
    path = _save({"w": torch.ones(1), "saved_at": stamp}, tmp_path / "extra.pt", legacy=False)

    with pytest.raises(UnsafeCheckpointError, match=r"datetime\.datetime") as info:
        load_pickled_checkpoint(path)
    assert info.value.forbidden == ("datetime.datetime",)

    # Somebody else's registration must survive our scoped additions untouched.
    torch.serialization.add_safe_globals([datetime.date, datetime.datetime])
    try:
        before = set(torch.serialization.get_safe_globals())
        assert load_pickled_checkpoint(path, extra_globals=[datetime.datetime])["saved_at"] == stamp
        assert set(torch.serialization.get_safe_globals()) == before
    finally:
        torch.serialization.clear_safe_globals()

    before = set(torch.serialization.get_safe_globals())
    loaded = load_pickled_checkpoint(path, extra_globals=[(datetime.datetime, "datetime.datetime")])
    assert loaded["saved_at"] == stamp
    assert set(torch.serialization.get_safe_globals()) == before == set()


def test_bad_extra_globals_entry_is_rejected(tmp_path: Path) -> None:
    path = _save({"w": torch.ones(1)}, tmp_path / "x.pt", legacy=False)
    with pytest.raises(TypeError, match="extra_globals entry"):
        load_pickled_checkpoint(path, extra_globals=[(datetime.datetime,)])
    with pytest.raises(TypeError, match="extra_globals entry"):
        load_pickled_checkpoint(path, extra_globals=["datetime.datetime"])
    with pytest.raises(TypeError, match="extra_globals entry"):
        load_pickled_checkpoint(path, extra_globals=[([datetime.datetime], "datetime.datetime")])


def test_concurrent_loads_do_not_disturb_each_other(tmp_path: Path) -> None:
    emb = _save({"step": np.int64(1), "v": torch.ones(2)}, tmp_path / "e.pt", legacy=False)
    other = _save({"t": datetime.time(1, 2)}, tmp_path / "o.pt", legacy=True)
    errors: list[BaseException] = []

    def worker(path: Path, extra: list) -> None:
        try:
            for _ in range(15):
                load_pickled_checkpoint(path, extra_globals=extra)
        except BaseException as exc:  # noqa: BLE001 - reported by the assert below
            errors.append(exc)

    threads = [
        threading.Thread(target=worker, args=(emb, [])),
        threading.Thread(target=worker, args=(other, [datetime.time])),
        threading.Thread(target=worker, args=(emb, [datetime.date])),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert torch.serialization.get_safe_globals() == []


# ---------------------------------------------------------------------------------------------
# malicious files


class _Reducer:
    """Pickles as `func(*args)`; also callable, so it can itself be the `func` of another."""

    def __init__(self, func, *args) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args

    def __call__(self, *args):  # pragma: no cover - only there so pickle accepts it as func
        raise AssertionError


def _payload(kind: str, canary: Path):
    """The payload object and patterns for the global names a refusal must report."""
    touch = f"touch {canary}"
    write = f"open({str(canary)!r}, 'w').close()"
    if kind == "os.system":
        # os.system lives in (and pickles as) the platform module.
        return _Reducer(os.system, touch), [rf"{os.system.__module__}\.system"]
    if kind == "exec":
        return _Reducer(builtins.exec, write), [r"builtins\.exec"]
    if kind == "eval":
        return _Reducer(builtins.eval, write), [r"builtins\.eval"]
    if kind == "popen":
        # Pickle protocols < 3 write Python 3's `subprocess` under its Python 2 name `commands`.
        return _Reducer(subprocess.Popen, ["touch", str(canary)]), [r"(subprocess|commands)\.Popen"]
    if kind == "getattr":
        # getattr(__import__("os"), "system")("touch canary"): no forbidden name appears as such.
        system = _Reducer(builtins.getattr, _Reducer(builtins.__import__, "os"), "system")
        return _Reducer(system, touch), [r"builtins\.getattr", r"builtins\.__import__"]
    if kind == "numpy-gadget":
        from numpy.testing._private import utils as np_utils

        return (
            _Reducer(np_utils.runstring, write, {}),
            [r"numpy\.testing\._private\.utils\.runstring"],
        )
    raise AssertionError(kind)


# How the payload is wrapped: inside a legit-looking SD state dict in a real torch zip or legacy
# file, or as a bare pickle at several protocols (protocol 5 uses STACK_GLOBAL, protocol 0 text).
def _write_malicious(container: str, payload, path: Path) -> Path:
    if container in ("zip", "legacy"):
        state = OrderedDict(_tensors())
        state["model.diffusion_model.out.2.bias"] = payload
        obj = {"state_dict": state, "global_step": 1}
        return _save(obj, path, legacy=container == "legacy")
    protocol = int(container.removeprefix("pickle-p"))
    path.write_bytes(pickle.dumps({"state_dict": {"x": payload}}, protocol=protocol))
    return path


PAYLOADS = ["os.system", "exec", "eval", "popen", "getattr", "numpy-gadget"]
CONTAINERS = ["zip", "legacy", "pickle-p0", "pickle-p2", "pickle-p5"]


def _wait_for(path: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return True
        time.sleep(0.02)
    return path.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("container", CONTAINERS)
@pytest.mark.parametrize("kind", PAYLOADS)
def test_malicious_file_is_refused_and_nothing_runs(tmp_path: Path, kind: str, container: str):
    canary = tmp_path / "canary"
    payload, expected_names = _payload(kind, canary)
    path = _write_malicious(container, payload, tmp_path / f"evil-{kind}.ckpt")

    with pytest.raises(UnsafeCheckpointError) as info:
        load_pickled_checkpoint(path)

    # A Popen would create the canary asynchronously; give it a moment to show up.
    assert not _wait_for(canary, 0.2 if kind == "popen" else 0.0), "payload was executed"
    message = str(info.value)
    assert str(path) in message
    for pattern in expected_names:
        assert any(re.fullmatch(pattern, name) for name in info.value.forbidden), pattern
        assert re.search(pattern, message)
    assert "Nothing in the file was executed" in message
    assert ".safetensors" in message
    assert "--disable-safe-unpickle" in message
    assert info.value.path == str(path)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("kind", PAYLOADS)
def test_payloads_are_live_under_allow_unsafe(
    tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Proves the refusal tests above are not vacuous: the same files do run code when the safe
    # unpickler is disabled, and that path warns with the file name.
    canary = tmp_path / "canary"
    payload, _ = _payload(kind, canary)
    path = _write_malicious("zip", payload, tmp_path / f"evil-{kind}.ckpt")
    with caplog.at_level(logging.WARNING, logger="modules.library.safe_unpickle"):
        loaded = load_pickled_checkpoint(path, allow_unsafe=True)
    if kind == "popen":
        loaded["state_dict"]["model.diffusion_model.out.2.bias"].wait()
    assert _wait_for(canary, 5.0)
    assert any(str(path) in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickle_protocol_4_is_refused_with_reason(tmp_path: Path) -> None:
    path = tmp_path / "p4.pt"
    torch.save({"w": torch.ones(2)}, path, pickle_protocol=4)
    with pytest.raises(UnsafeCheckpointError, match="protocol 4") as info:
        load_pickled_checkpoint(path)
    assert info.value.forbidden == ()
    # The same file loads when the user trusts it.
    _assert_bit_identical(load_pickled_checkpoint(path, allow_unsafe=True)["w"], torch.ones(2))


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore:'torch.load' received a zip")
def test_torchscript_archive_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), path)
    with pytest.raises(UnsafeCheckpointError, match="TorchScript"):
        load_pickled_checkpoint(path)


# ---------------------------------------------------------------------------------------------
# corrupt files


def _corrupt_cases(tmp_path: Path) -> dict[str, Path]:
    cases: dict[str, Path] = {}
    tensors = {"w": torch.randn(64, 64, generator=torch.Generator().manual_seed(3))}
    for fmt in ("zip", "legacy"):
        full = _save(tensors, tmp_path / f"full-{fmt}.pt", legacy=fmt == "legacy").read_bytes()
        for fraction in (0.02, 0.1, 0.5, 0.99):
            cut = tmp_path / f"{fmt}-cut-{fraction}.ckpt"
            cut.write_bytes(full[: int(len(full) * fraction)])
            cases[f"{fmt}-cut-{fraction}"] = cut
        last_byte = tmp_path / f"{fmt}-minus-1.ckpt"
        last_byte.write_bytes(full[:-1])
        cases[f"{fmt}-minus-1"] = last_byte
    rng = np.random.default_rng(4)
    for i in range(3):
        rand = tmp_path / f"random-{i}.ckpt"
        rand.write_bytes(rng.integers(0, 256, size=4096, dtype=np.uint8).tobytes())
        cases[f"random-{i}"] = rand
    (tmp_path / "empty.ckpt").write_bytes(b"")
    cases["empty"] = tmp_path / "empty.ckpt"
    (tmp_path / "readme.pt").write_text("hello, this is not a model\nsecond line\n")
    cases["text"] = tmp_path / "readme.pt"
    # Starts with 'c', the GLOBAL opcode: must still read as corrupt, not as a forbidden global.
    (tmp_path / "notes.pt").write_text("checkpoint notes\nos\nsystem\n")
    cases["text-starting-with-c"] = tmp_path / "notes.pt"
    (tmp_path / "page.ckpt").write_text("<!DOCTYPE html><html><body>Not Found</body></html>")
    cases["html-error-page"] = tmp_path / "page.ckpt"
    (tmp_path / "lfs.ckpt").write_text(
        "version https://git-lfs.github.com/spec/v1\n"
        "oid sha256:cc6cb27103417325ff94f52b7a5d2dde45a7515b25c255d8e396c90014281516\n"
        "size 4265380512\n"
    )
    cases["git-lfs-pointer"] = tmp_path / "lfs.ckpt"
    plain_zip = tmp_path / "plain.ckpt"
    with zipfile.ZipFile(plain_zip, "w") as archive:
        archive.writestr("readme.txt", "not a torch archive")
    cases["zip-without-data-pkl"] = plain_zip
    return cases


CORRUPT_NAMES = [
    *(f"{fmt}-cut-{f}" for fmt in ("zip", "legacy") for f in (0.02, 0.1, 0.5, 0.99)),
    "zip-minus-1",
    "legacy-minus-1",
    "random-0",
    "random-1",
    "random-2",
    "empty",
    "text",
    "text-starting-with-c",
    "html-error-page",
    "git-lfs-pointer",
    "zip-without-data-pkl",
]


@pytest.mark.parametrize("allow_unsafe", [False, True], ids=["safe", "unsafe"])
@pytest.mark.parametrize("name", CORRUPT_NAMES)
def test_corrupt_file_raises_dedicated_error(tmp_path: Path, name: str, allow_unsafe: bool):
    path = _corrupt_cases(tmp_path)[name]
    with pytest.raises(CorruptCheckpointError) as info:
        load_pickled_checkpoint(path, allow_unsafe=allow_unsafe)
    message = str(info.value)
    assert str(path) in message
    assert "truncated" in message or "empty" in message
    assert "re-download" in message.lower()
    assert "add_safe_globals" not in message  # torch's advice is meant for developers
    assert info.value.path == str(path)


def test_corrupt_messages_say_what_the_file_is(tmp_path: Path) -> None:
    cases = _corrupt_cases(tmp_path)
    expectations = {
        "git-lfs-pointer": "Git LFS pointer",
        "html-error-page": "HTML page",
        "text": "text file",
        "zip-cut-0.5": "end-of-archive directory is missing",
        "legacy-cut-0.02": "ends early",
        "empty": "empty (0 bytes)",
    }
    for name, expected in expectations.items():
        with pytest.raises(CorruptCheckpointError, match=re.escape(expected)):
            load_pickled_checkpoint(cases[name])


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        load_pickled_checkpoint(tmp_path / "missing.ckpt")
    with pytest.raises(IsADirectoryError):
        load_pickled_checkpoint(tmp_path)


# ---------------------------------------------------------------------------------------------
# allow_unsafe


def test_allow_unsafe_loads_what_safe_refuses_and_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tensors = _tensors()
    obj = {"state_dict": dict(tensors), "when": datetime.date(2022, 8, 22)}
    path = _save(obj, tmp_path / "trusted.ckpt", legacy=False)
    with pytest.raises(UnsafeCheckpointError, match=r"datetime\.date"):
        load_pickled_checkpoint(path)

    with caplog.at_level(logging.WARNING, logger="modules.library.safe_unpickle"):
        loaded = load_pickled_checkpoint(path, allow_unsafe=True)
    assert loaded["when"] == datetime.date(2022, 8, 22)
    for key, expected in tensors.items():
        _assert_bit_identical(loaded["state_dict"][key], expected)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert str(path) in warnings[0].getMessage()
    assert "--disable-safe-unpickle" in warnings[0].getMessage()


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_allow_unsafe_handles_lightning_without_lightning(tmp_path: Path, legacy: bool) -> None:
    tensors = _tensors()
    path = _save_sd1_style_checkpoint(tensors, tmp_path / "model.ckpt", legacy)
    loaded = load_pickled_checkpoint(path, allow_unsafe=True)
    assert list(loaded["callbacks"]) == [ModelCheckpointPlaceholder]
    assert isinstance(loaded["callback_instance"], ModelCheckpointPlaceholder)
    for key, expected in tensors.items():
        _assert_bit_identical(loaded["state_dict"][key], expected)


def test_allow_unsafe_missing_class_is_a_clear_error(tmp_path: Path) -> None:
    module = types.ModuleType("atelier_test_vanishing")
    Thing = type("Thing", (), {"__module__": "atelier_test_vanishing"})
    module.Thing = Thing
    sys.modules["atelier_test_vanishing"] = module
    try:
        path = _save({"thing": Thing()}, tmp_path / "vanish.pt", legacy=False)
    finally:
        del sys.modules["atelier_test_vanishing"]
    with pytest.raises(PickledCheckpointError, match="not available") as info:
        load_pickled_checkpoint(path, allow_unsafe=True)
    assert str(path) in str(info.value)
    with pytest.raises(UnsafeCheckpointError, match="atelier_test_vanishing.Thing"):
        load_pickled_checkpoint(path)


def test_lightning_module_global_resolves_to_placeholder(tmp_path: Path) -> None:
    # A1111 also allows the module object `pytorch_lightning.callbacks.model_checkpoint` as a
    # global. Such a pickle cannot be made with a real module object, so rename a class global
    # in a legacy file (plain pickle bytes).
    obj = {"w": torch.ones(1), "cb": ModelCheckpointPlaceholder}
    path = _save(obj, tmp_path / "m.pt", legacy=True)
    data = path.read_bytes()
    old = b"cmodules.library.safe_unpickle\nModelCheckpointPlaceholder\n"
    assert data.count(old) == 1
    path.write_bytes(data.replace(old, b"cpytorch_lightning.callbacks\nmodel_checkpoint\n"))
    loaded = load_pickled_checkpoint(path)
    assert loaded["cb"] is LightningModulePlaceholder
    _assert_bit_identical(loaded["w"], torch.ones(1))


# ---------------------------------------------------------------------------------------------
# unwrap_state_dict


def test_unwrap_state_dict_unwraps_and_filters() -> None:
    tensors = _tensors()
    param = torch.nn.Parameter(torch.ones(2))
    ckpt = {
        "state_dict": {
            **tensors,
            "p": param,
            "global_step": 5,
            "state_dict": {"x": 1},
            3: torch.ones(1),  # non-string key
        },
        "global_step": 5,
        "callbacks": {ModelCheckpointPlaceholder: {}},
    }
    flat = unwrap_state_dict(ckpt)
    assert list(flat) == [*tensors, "p"]
    assert type(flat["p"]) is torch.Tensor and not flat["p"].requires_grad
    assert flat["p"].data_ptr() == param.data_ptr()  # no copy
    for key, expected in tensors.items():
        assert flat[key] is expected  # plain tensors are passed through, not copied

    # Already flat (e.g. a VAE .pt or a diffusers .bin).
    assert list(unwrap_state_dict(dict(tensors))) == list(tensors)


def test_unwrap_state_dict_rejects_non_dict_and_tensorless() -> None:
    linear = r"model\.ckpt.*torch\.nn\.modules\.linear\.Linear"
    with pytest.raises(PickledCheckpointError, match=linear):
        unwrap_state_dict(torch.nn.Linear(1, 1), "model.ckpt")
    with pytest.raises(PickledCheckpointError, match="holds a builtins.list"):
        unwrap_state_dict([torch.ones(1)])
    with pytest.raises(PickledCheckpointError, match="no tensors"):
        unwrap_state_dict({"state_dict": {"step": 1}, "other": torch.ones(1)})
    with pytest.raises(ValueError):  # PickledCheckpointError is a ValueError
        unwrap_state_dict(None)
