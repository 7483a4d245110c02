"""The model manager: switching, the LRU limit, failures that keep the previous model, VAE choice,
and memory that is really given back."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml

from modules.library.checkpoints import CheckpointRegistry
from modules.library.hashes import HashCache
from modules.library.model_loader import CheckpointLoadError, LoadOptions
from modules.library.model_manager import ModelManager
from modules.library.synthetic_checkpoints import write_checkpoint, write_vae


class Limit:
    """A settable sd_checkpoints_limit, as the settings store would provide it."""

    def __init__(self, value: int = 1):
        self.value = value

    def __call__(self) -> int:
        return self.value


@pytest.fixture
def library(tmp_path):
    folder = tmp_path / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    for seed, name in enumerate(("a", "b", "c")):
        write_checkpoint(folder / f"{name}.safetensors", "sd1", size="tiny", dtype=torch.float32, seed=seed)
    registry = CheckpointRegistry([folder], HashCache(tmp_path / "cache.json"))
    registry.refresh()
    return folder, registry


def _manager(registry, limit=None, vae=None):
    return ModelManager(registry, LoadOptions(), limit=limit or Limit(1),
                        vae_resolver=vae or (lambda info: None))


def _names(manager):
    return [Path(name.split(" [")[0]).stem for name in manager.loaded_names()]


def test_load_switch_and_title_gains_hash(library):
    _, registry = library
    manager = _manager(registry)
    assert registry.get("a.safetensors").sha256 is None
    model = manager.load("a")
    assert manager.current() is model
    info = registry.get("a.safetensors")
    assert info.sha256 is not None and model.name == info.title == f"a.safetensors [{info.sha256[:10]}]"
    manager.load("b")
    assert _names(manager) == ["b"]  # limit 1: exactly one loaded, not one too many


def test_lru_evicts_least_recently_used(library):
    _, registry = library
    limit = Limit(2)
    manager = _manager(registry, limit)
    a = manager.load("a")
    manager.load("b")
    assert manager.load("a") is a  # cache hit: the same object
    manager.load("c")
    assert _names(manager) == ["a", "c"]  # b was least recently used
    limit.value = 3
    manager.load("b")
    assert _names(manager) == ["a", "c", "b"]


def test_cache_hit_does_not_touch_the_disk(library):
    folder, registry = library
    manager = _manager(registry, Limit(2))
    a = manager.load("a")
    manager.load("b")
    os.remove(folder / "a.safetensors")  # any read of the file would fail now
    assert manager.load("a") is a
    assert manager.current() is a


def test_failed_load_keeps_previous_model(library):
    folder, registry = library
    manager = _manager(registry)
    a = manager.load("a")
    data = (folder / "b.safetensors").read_bytes()
    (folder / "broken.safetensors").write_bytes(data[: len(data) // 3])
    registry.refresh()
    with pytest.raises(ValueError, match="truncated"):  # marked while listed: BrokenCheckpointError
        manager.load("broken")
    assert manager.current() is a  # refused before anything was evicted


def test_late_failure_reloads_previous_model(library):
    """A file that passes the header checks but fails while building (here a .yaml describing another
    model) has already cost the previous model its place: it is read back in."""
    folder, registry = library
    manager = _manager(registry)
    manager.load("a")
    from modules.library.model_config import LDM_CONFIG_DIR

    ldm = yaml.safe_load((LDM_CONFIG_DIR / "v1-inference.yaml").read_text())
    (folder / "b.yaml").write_text(yaml.safe_dump(ldm))  # real SD1.5 sizes, tiny weights
    registry.refresh()
    with pytest.raises(CheckpointLoadError, match="yaml"):
        manager.load("b")
    assert manager.current() is not None
    assert manager.current_info().name == "a.safetensors"


def test_unknown_checkpoint_name(library):
    _, registry = library
    with pytest.raises(KeyError, match="zzz"):
        _manager(registry).load("zzz")


def test_vae_choice_is_applied_and_restored(library, tmp_path):
    _, registry = library
    vae_file = write_vae(tmp_path / "x.vae.safetensors", size="tiny", dtype=torch.float32, seed=42)
    choice = {"path": vae_file}
    manager = _manager(registry, vae=lambda info: choice["path"])
    model = manager.load("a")
    assert model.vae is not model.builtin_vae and model.vae_file == vae_file
    choice["path"] = None
    manager.refresh_vae()
    assert model.vae is model.builtin_vae and model.vae_file is None


class RecordingRuntime:
    """A model runtime that only counts how often each model is attached and detached."""

    may_offload = False

    def __init__(self):
        self.attached: dict[int, int] = {}

    def attach(self, model) -> None:
        self.attached[id(model)] = self.attached.get(id(model), 0) + 1

    def detach(self, model) -> None:
        self.attached[id(model)] -= 1

    def is_offloaded(self, model) -> bool:
        return False


def test_a_vae_that_fails_to_load_leaves_the_model_attached_to_its_runtime(library, tmp_path):
    """The runtime (offload hooks, attention processors) is detached while the VAE is swapped; a VAE
    file that fails to load must not leave the model without it (with --medvram it would lose its
    offload hooks)."""
    _, registry = library
    broken = tmp_path / "broken.vae.safetensors"
    broken.write_bytes(b"not a safetensors file" * 8)
    choice = {"path": None}
    runtime = RecordingRuntime()
    manager = ModelManager(registry, LoadOptions(), vae_resolver=lambda info: choice["path"],
                           runtime=lambda options: runtime)
    model = manager.load("a")
    assert runtime.attached[id(model)] == 1
    choice["path"] = broken
    with pytest.raises(CheckpointLoadError):
        manager.refresh_vae()
    assert runtime.attached[id(model)] == 1
    assert model.vae is model.builtin_vae and model.vae_file is None  # the VAE it had


# Run in a fresh interpreter: the test measures this process's RSS, which threads other tests left
# behind (a browser driver, servers, Ray's native libraries) can move by tens of MiB on their own.
_RSS_SCRIPT = """
import dataclasses, gc, json, sys
from pathlib import Path
import psutil, torch
torch.set_num_threads(1)
from modules.library.checkpoints import CheckpointRegistry
from modules.library.hashes import HashCache
from modules.library.model_loader import LoadOptions
from modules.library.model_manager import ModelManager, configure_allocator
from modules.library.synthetic_checkpoints import architecture_spec, write_checkpoint

def rss():
    gc.collect()
    return psutil.Process().memory_info().rss

configure_allocator()
folder = Path(sys.argv[1]) / "sd"
folder.mkdir()
spec = architecture_spec("sd1", "tiny")
bigger = dataclasses.replace(spec, unet=dataclasses.replace(spec.unet, model_channels=96, channel_mult=(1, 2, 4, 4)))
for seed, name in enumerate(("x", "y")):
    write_checkpoint(folder / f"{name}.safetensors", bigger, dtype=torch.float32, seed=seed)
registry = CheckpointRegistry([folder], HashCache(Path(sys.argv[1]) / "cache.json"), hashing_enabled=False)
registry.refresh()
manager = ModelManager(registry, LoadOptions(), limit=lambda: 1, vae_resolver=lambda info: None)
model_bytes = manager.load("x").weights_nbytes()
for i in range(4):
    manager.load("y" if i % 2 == 0 else "x")
baseline = rss()
for i in range(16):
    manager.load("y" if i % 2 == 0 else "x")
drift = rss() - baseline
manager.unload_all()
print(json.dumps({"drift": drift, "model_bytes": model_bytes, "empty": manager.current() is None
                  and manager.loaded_names() == []}))
"""


def test_rss_does_not_creep_over_repeated_switches(tmp_path):
    """Each switch with limit 1 frees one model and reads another; 16 switches must not leave the
    process holding more than a fraction of one model more than after the first few."""
    import json
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(tmp_path)], cwd=root, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(root)})
    assert done.returncode == 0, done.stderr[-3000:]
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    drift, model_bytes = measured["drift"], measured["model_bytes"]
    # Measured on this code: ±1 MiB; without releasing memory (gc + glibc trim and mmap threshold)
    # the same loop grew 30-50 MiB.
    assert drift < 16 * 2**20, (f"RSS grew by {drift / 2**20:.0f} MiB over 16 switches "
                                f"(one model is {model_bytes / 2**20:.0f} MiB)")
    assert measured["empty"]


@pytest.mark.parametrize("flags, cuda, expected", [
    ({}, True, ("cuda", torch.float16, torch.float16)),
    ({}, False, ("cpu", torch.float32, torch.float32)),
    ({"no_half": True}, True, ("cuda", torch.float32, torch.float32)),
    ({"precision": "full"}, True, ("cuda", torch.float32, torch.float32)),
    ({"no_half_vae": True}, True, ("cuda", torch.float16, torch.float32)),
    ({"use_cpu": True}, True, ("cpu", torch.float32, torch.float32)),
])
def test_device_and_precision_flags(flags, cuda, expected):
    from modules.library.model_manager import default_load_options

    args = {"use_cpu": False, "no_half": False, "precision": "autocast", **flags}
    options = default_load_options(**args, cuda_available=cuda)
    assert (options.device.type, options.dtype, options.vae_dtype) == expected


class CountingHasher:
    """The hash cache's whole-file hasher, counting the files it reads."""

    def __init__(self):
        self.calls: list[Path] = []

    def __call__(self, path):
        from modules.library.hashes import sha256_of_file

        self.calls.append(Path(path))
        return sha256_of_file(path)


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_first_load_hashes_the_file_in_the_same_pass(tmp_path, suffix):
    """A1111 hashes a checkpoint when it first loads it; here that costs no separate read of the file,
    and the hash is the file's and is kept in cache.json in A1111's format."""
    import hashlib
    import json

    folder = tmp_path / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    path = write_checkpoint(folder / f"a{suffix}", "sd1", size="tiny", dtype=torch.float16)
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    hasher = CountingHasher()
    registry = CheckpointRegistry([folder], HashCache(tmp_path / "cache.json", hasher=hasher))
    registry.refresh()

    model = _manager(registry).load(path.name)
    assert hasher.calls == []  # no pass over the file of its own
    info = registry.get(path.name)
    assert info.sha256 == expected and model.name == info.title == f"a{suffix} [{expected[:10]}]"
    cached = json.loads((tmp_path / "cache.json").read_text())["hashes"][f"checkpoint/a{suffix}"]
    assert cached == {"mtime": os.path.getmtime(path), "sha256": expected}


def test_no_hashing_loads_without_a_hash(tmp_path):
    folder = tmp_path / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    write_checkpoint(folder / "a.safetensors", "sd1", size="tiny", dtype=torch.float32)
    registry = CheckpointRegistry([folder], HashCache(tmp_path / "cache.json"), hashing_enabled=False)
    registry.refresh()
    model = _manager(registry).load("a")
    assert registry.get("a.safetensors").sha256 is None and model.name == "a.safetensors"
    assert not (tmp_path / "cache.json").exists() or "hashes" not in (tmp_path / "cache.json").read_text()
