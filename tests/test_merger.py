"""Streaming checkpoint merges of tiny real-layout checkpoints, checked tensor by tensor."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch

from modules.common.atomic_files import TEMP_MARK
from modules.library.checkpoints import CheckpointRegistry
from modules.library.hashes import HashCache
from modules.merging.merger import MergeError, MergeInterrupted, MergeRequest, merge_checkpoints
from modules.library.synthetic_checkpoints import write_checkpoint, write_vae

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def library(tmp_path):
    folder = tmp_path / "Stable-diffusion"
    folder.mkdir()
    for seed, name in enumerate(("a", "b", "c")):
        write_checkpoint(folder / f"{name}.safetensors", "sd1", dtype=torch.float32, seed=seed)
    write_checkpoint(folder / "inpaint.safetensors", "sd1-inpaint", dtype=torch.float32, seed=5)
    write_checkpoint(folder / "xl.safetensors", "sdxl", dtype=torch.float16, seed=6)
    registry = CheckpointRegistry([folder], HashCache(tmp_path / "cache.json"))
    registry.refresh()
    return folder, registry


def load(path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(str(path))


def merged_keys(sd):
    return [k for k, v in sd.items() if v.is_floating_point() and "model" in k]


def test_weighted_sum(library):
    folder, registry = library
    result = merge_checkpoints(MergeRequest(primary_model_name="a", secondary_model_name="b", multiplier=0.3),
                               registry, folder)
    assert result.path.name == "0.7(a) + 0.3(b).safetensors"
    out, a, b = load(result.path), load(folder / "a.safetensors"), load(folder / "b.safetensors")
    assert list(out) == list(a)
    for key in merged_keys(a):
        assert torch.allclose(out[key], a[key] * 0.7 + b[key] * 0.3, atol=1e-6), key
    position_ids = "cond_stage_model.transformer.text_model.embeddings.position_ids"
    assert out[position_ids].dtype == torch.int64 and torch.equal(out[position_ids], a[position_ids])
    assert torch.equal(out["alphas_cumprod"], a["alphas_cumprod"])  # not a "model" key: A's value
    # Listed at once, with the hash computed while writing (checked independently here).
    assert result.sha256 == hashlib.sha256(result.path.read_bytes()).hexdigest()
    assert registry.get(result.title).sha256 == result.sha256


def test_add_difference_and_recipe_metadata(library):
    folder, registry = library
    result = merge_checkpoints(MergeRequest(primary_model_name="a", secondary_model_name="b",
                                            tertiary_model_name="c", interpolation_method="Add difference",
                                            multiplier=0.5), registry, folder)
    assert result.path.name == "a + 0.5(b - c).safetensors"
    out, a, b, c = (load(p) for p in (result.path, *(folder / f"{n}.safetensors" for n in "abc")))
    for key in merged_keys(a):
        assert torch.allclose(out[key], a[key] + (b[key] - c[key]) * 0.5, atol=1e-5), key
    with safetensors.safe_open(str(result.path), "pt") as f:
        metadata = f.metadata()
    recipe = json.loads(metadata["sd_merge_recipe"])
    assert recipe["interp_method"] == "Add difference" and recipe["multiplier"] == 0.5
    assert recipe["primary_model_hash"] == registry.get("a.safetensors").sha256
    models = json.loads(metadata["sd_merge_models"])
    assert {m["name"] for m in models.values()} == {"a.safetensors", "b.safetensors", "c.safetensors"}
    assert metadata["format"] == "pt"


def test_missing_tertiary_is_refused(library):
    folder, registry = library
    with pytest.raises(MergeError, match="requires a tertiary model"):
        merge_checkpoints(MergeRequest(primary_model_name="a", secondary_model_name="b",
                                       interpolation_method="Add difference"), registry, folder)


def test_no_interpolation_fp16_and_discard(library):
    folder, registry = library
    result = merge_checkpoints(MergeRequest(primary_model_name="a", interpolation_method="No interpolation",
                                            save_as_half=True, discard_weights=r"^first_stage_model\.",
                                            custom_name="a-half"), registry, folder)
    out, a = load(result.path), load(folder / "a.safetensors")
    assert result.path.name == "a-half.safetensors"
    assert not any(k.startswith("first_stage_model.") for k in out)
    for key, value in out.items():
        expected = a[key].half() if a[key].is_floating_point() else a[key]
        assert torch.equal(value, expected), key


def test_inpainting_a_merges_first_channels_and_reverse_is_refused(library):
    folder, registry = library
    result = merge_checkpoints(MergeRequest(primary_model_name="inpaint", secondary_model_name="b",
                                            multiplier=0.5), registry, folder)
    assert result.path.name.endswith(".inpainting.safetensors")
    key = "model.diffusion_model.input_blocks.0.0.weight"
    out, a, b = load(result.path), load(folder / "inpaint.safetensors"), load(folder / "b.safetensors")
    assert torch.allclose(out[key][:, :4], a[key][:, :4] * 0.5 + b[key] * 0.5, atol=1e-6)
    assert torch.equal(out[key][:, 4:], a[key][:, 4:])
    with pytest.raises(MergeError, match="must be the primary"):
        merge_checkpoints(MergeRequest(primary_model_name="b", secondary_model_name="inpaint"), registry, folder)


def test_family_mismatch_refused_before_any_work(library):
    folder, registry = library
    with pytest.raises(MergeError, match="different families"):
        merge_checkpoints(MergeRequest(primary_model_name="a", secondary_model_name="xl"), registry, folder)
    assert not list(folder.glob("*(xl)*"))


def test_nan_stops_the_merge_and_leaves_nothing(library):
    folder, registry = library
    bad = load(folder / "b.safetensors")
    bad["model.diffusion_model.out.2.bias"][0] = float("nan")
    safetensors.torch.save_file(bad, str(folder / "bad.safetensors"))
    registry.refresh()
    with pytest.raises(MergeError, match="model.diffusion_model.out.2.bias"):
        merge_checkpoints(MergeRequest(primary_model_name="a", secondary_model_name="bad"), registry, folder)
    assert not list(folder.glob("*(bad)*")) and not list(folder.glob(f"*{TEMP_MARK}"))


class StopAfter:
    def __init__(self, keys: int):
        self.keys, self.seen = keys, 0

    @property
    def interrupted(self) -> bool:
        return self.seen >= self.keys

    def report(self, step, total, preview_factory=None):
        self.seen = step


def test_interrupted_merge_leaves_no_file(library):
    folder, registry = library
    with pytest.raises(MergeInterrupted):
        merge_checkpoints(MergeRequest(primary_model_name="a", secondary_model_name="b"), registry, folder,
                          control=StopAfter(20))
    assert not list(folder.glob("0.7*")) and not list(folder.glob(f"*{TEMP_MARK}"))


def test_existing_file_is_not_overwritten(library):
    folder, registry = library
    request = MergeRequest(primary_model_name="a", secondary_model_name="b", custom_name="same")
    first = merge_checkpoints(request, registry, folder)
    before = first.path.read_bytes()
    with pytest.raises(MergeError, match="already exists"):
        merge_checkpoints(request.model_copy(update={"multiplier": 0.9}), registry, folder)
    assert first.path.read_bytes() == before
    merge_checkpoints(request.model_copy(update={"multiplier": 0.9, "overwrite": True}), registry, folder)
    assert first.path.read_bytes() != before


def test_bake_in_vae(library, tmp_path):
    folder, registry = library
    vae_path = write_vae(tmp_path / "x.vae.safetensors", dtype=torch.float32, seed=9)
    result = merge_checkpoints(MergeRequest(primary_model_name="a", interpolation_method="No interpolation",
                                            bake_in_vae="x.vae.safetensors", custom_name="baked"),
                               registry, folder, vae_files={"x.vae.safetensors": vae_path})
    out, vae = load(result.path), load(vae_path)
    for key, value in vae.items():
        if f"first_stage_model.{key}" in out:
            assert torch.equal(out[f"first_stage_model.{key}"], value), key


def test_peak_memory_stays_bounded(tmp_path):
    """Merging two ~150 MB checkpoints in a fresh process adds far less than one checkpoint to its
    peak RSS: tensors stream through a few at a time."""
    import dataclasses

    from modules.library.synthetic_checkpoints import architecture_spec

    folder = tmp_path / "big"
    folder.mkdir()
    spec = architecture_spec("sd1", "tiny")
    big = dataclasses.replace(spec, unet=dataclasses.replace(spec.unet, model_channels=128,
                                                                channel_mult=(1, 2, 4, 4)))
    for seed, name in enumerate(("x", "y")):
        write_checkpoint(folder / f"{name}.safetensors", big, dtype=torch.float32, seed=seed)
    size = (folder / "x.safetensors").stat().st_size
    script = f"""
import sys, json
sys.path.insert(0, {str(REPO_ROOT)!r})
import torch
from pathlib import Path
from modules.library.checkpoints import CheckpointRegistry
from modules.library.hashes import HashCache
from modules.merging.merger import MergeRequest, merge_checkpoints
import modules.merging.methods, modules.merging.blocks, modules.library.model_loader
registry = CheckpointRegistry([{str(folder)!r}], HashCache(Path({str(tmp_path)!r}) / "c.json"))
registry.refresh()
for info in registry.list():
    registry.ensure_hash(info)
import psutil
def hwm():
    # VmHWM, not ru_maxrss: after fork + exec ru_maxrss starts at the parent's (pytest's) RSS.
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
rss = psutil.Process().memory_info().rss
merge_checkpoints(MergeRequest(primary_model_name="x", secondary_model_name="y"), registry, Path({str(folder)!r}))
peak = hwm()
print(json.dumps({{"rss_before": rss, "peak": peak}}))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    numbers = json.loads(out.stdout.strip().splitlines()[-1])
    grown = numbers["peak"] - numbers["rss_before"]
    assert grown < size / 2, f"peak grew {grown / 2**20:.0f} MiB while merging {size / 2**20:.0f} MiB inputs"


def test_merge_and_load_tries_a_merge_without_saving_it(library, tmp_path):
    from modules.merging.merger import merge_and_load
    from modules.library.model_loader import LoadOptions
    from modules.library.model_manager import ModelManager
    from modules.generation.engine import GenerationRequest, GenerationResources, generate

    folder, registry = library
    models = ModelManager(registry, LoadOptions())
    files_before = [info.filename for info in registry.list()]
    request = MergeRequest(primary_model_name="a", secondary_model_name="b", multiplier=0.4)
    result = merge_and_load(request, registry, models, tmp_path / "scratch")
    # Not listed, not saved among the checkpoints (the inputs' titles gain their hashes, as on load).
    assert [info.filename for info in registry.list()] == files_before
    assert not list(folder.glob("0.6*"))
    model = models.current()
    assert model.name.startswith("(merge trial) 0.6(a) + 0.4(b).safetensors")
    key = "model.diffusion_model.out.2.weight"
    a, b = load(folder / "a.safetensors")[key], load(folder / "b.safetensors")[key]
    assert torch.allclose(model.unet.conv_out.weight, torch.lerp(a, b, 0.4), atol=1e-6)
    image = generate(model, GenerationRequest(prompt="x", steps=2, width=64, height=64, seed=1),
                     resources=GenerationResources(checkpoint_info=models.current_info())).infotexts[0]
    assert f"Model hash: {result.sha256[:10]}" in image
    # Saving is the same request as a normal merge: identical weights.
    saved = merge_checkpoints(request, registry, folder)
    assert load(saved.path)[key].equal(load(result.path)[key])

    # Later trials remove earlier ones once no loaded model uses them; one that fails to load leaves
    # no file behind.
    second = merge_and_load(request.model_copy(update={"multiplier": 0.7}), registry, models, tmp_path / "scratch")
    assert models.loaded_files() == [second.path]  # limit 1: the first trial was unloaded
    models.load_temporary = lambda *args, **kwargs: (_ for _ in ()).throw(RuntimeError("out of memory"))
    with pytest.raises(RuntimeError, match="out of memory"):
        merge_and_load(request.model_copy(update={"multiplier": 0.1}), registry, models, tmp_path / "scratch")
    assert [path.name for path in (tmp_path / "scratch").iterdir()] == [second.path.name]


def test_unknown_vae_to_bake_is_named(library):
    folder, registry = library
    with pytest.raises(MergeError, match="nope.vae.pt"):
        merge_checkpoints(MergeRequest(primary_model_name="a", interpolation_method="No interpolation",
                                       bake_in_vae="nope.vae.pt"), registry, folder, vae_files={})
    assert not list(folder.glob(f".a.safetensors*{TEMP_MARK}"))


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 1 KiB and float32 steps of 37 elements, so tiny tensors cross many boundaries."""
    from modules.merging import merger
    from modules.library.safetensors_io import SafetensorsWriter

    monkeypatch.setattr(SafetensorsWriter, "BLOCK_BYTES", 1024)
    monkeypatch.setattr(merger, "CHUNK_ELEMENTS", 37)


@pytest.mark.parametrize("method, names, half", [
    ("Weighted sum", ("a", "b"), False),
    ("Weighted sum", ("a", "b"), True),
    ("Add difference", ("a", "b", "c"), True),
    ("Triple sum", ("a", "b", "c"), False),
    ("Train difference", ("a", "b", "c"), False),
])
def test_block_by_block_merge_equals_whole_tensor_merge(library, small_blocks, method, names, half):
    """The block/step path gives bit for bit what the method gives on whole tensors, then a cast."""
    from modules.merging.methods import MergeParams, get_method, merge_tensor

    folder, registry = library
    request = MergeRequest(primary_model_name=names[0], secondary_model_name=names[1],
                           tertiary_model_name=names[2] if len(names) > 2 else None,
                           interpolation_method=method, multiplier=0.4, multiplier2=0.25, save_as_half=half)
    out = load(merge_checkpoints(request, registry, folder).path)
    inputs = [load(folder / f"{n}.safetensors") for n in names] + [None] * (3 - len(names))
    a = inputs[0]
    big = [k for k in merged_keys(a) if a[k].numel() > 1024]
    assert big, "the tiny checkpoint should have tensors larger than one block"
    for key in merged_keys(a):
        expected = merge_tensor(get_method(method), *(t[key] if t is not None else None for t in inputs),
                                MergeParams(alpha=0.4, beta=0.25), key=key)
        expected = expected.to(torch.float16 if half else torch.float32)
        assert torch.equal(out[key], expected), key


def test_same_dtype_fast_path_equals_float32_maths(tmp_path, small_blocks):
    """fp16 inputs, fp16 output: the lerp kernel path equals float32 maths then one rounding."""
    folder = tmp_path / "fp16"
    folder.mkdir()
    for seed, name in enumerate(("a", "b")):
        write_checkpoint(folder / f"{name}.safetensors", "sd1", dtype=torch.float16, seed=seed)
    registry = CheckpointRegistry([folder], HashCache(tmp_path / "cache.json"))
    registry.refresh()
    result = merge_checkpoints(MergeRequest(primary_model_name="a", secondary_model_name="b", multiplier=0.3),
                               registry, folder)
    out, a, b = load(result.path), load(folder / "a.safetensors"), load(folder / "b.safetensors")
    for key in merged_keys(a):
        expected = torch.lerp(a[key].float(), b[key].float(), 0.3).half()  # A·0.7 + B·0.3 in float32
        assert out[key].dtype == torch.float16 and torch.equal(out[key], expected), key


def test_nan_in_a_late_block_is_found(library, small_blocks):
    folder, registry = library
    bad = load(folder / "b.safetensors")
    key = max(merged_keys(bad), key=lambda k: bad[k].numel())
    bad[key].view(-1)[-1] = float("inf")
    safetensors.torch.save_file(bad, str(folder / "bad.safetensors"))
    registry.refresh()
    with pytest.raises(MergeError, match=key.replace(".", r"\.")):
        merge_checkpoints(MergeRequest(primary_model_name="a", secondary_model_name="bad"), registry, folder)
    assert not list(folder.glob("*(bad)*")) and not list(folder.glob(f"*{TEMP_MARK}"))


def test_float16_overflow_of_the_output_is_refused(library):
    """A merge finite in float32 but beyond float16's range becomes Inf once saved as half: refused."""
    folder, registry = library
    c = load(folder / "c.safetensors")
    key = "model.diffusion_model.out.2.bias"
    c[key][0] = -60000.0  # B − C ≈ 60000, A + 2·(B − C) ≈ 120000 > 65504
    safetensors.torch.save_file(c, str(folder / "far.safetensors"))
    registry.refresh()
    request = MergeRequest(primary_model_name="a", secondary_model_name="b", tertiary_model_name="far",
                           interpolation_method="Add difference", multiplier=2.0)
    merge_checkpoints(request.model_copy(update={"custom_name": "fp32"}), registry, folder)  # fine in float32
    with pytest.raises(MergeError, match=key.replace(".", r"\.")):
        merge_checkpoints(request.model_copy(update={"save_as_half": True}), registry, folder)


def test_ckpt_output_is_a_flat_torch_dict(library):
    folder, registry = library
    request = MergeRequest(primary_model_name="a", secondary_model_name="b", multiplier=0.3)
    reference = load(merge_checkpoints(request, registry, folder).path)
    result = merge_checkpoints(request.model_copy(update={"checkpoint_format": "ckpt"}), registry, folder)
    assert result.path.name == "0.7(a) + 0.3(b).ckpt"
    assert result.sha256 == hashlib.sha256(result.path.read_bytes()).hexdigest()
    assert registry.get(result.title).sha256 == result.sha256
    saved = torch.load(result.path, map_location="cpu", weights_only=True)
    assert list(saved) == list(reference)  # A1111: a flat dict, no state_dict wrapper
    for key, tensor in reference.items():
        assert saved[key].dtype == tensor.dtype and torch.equal(saved[key], tensor), key
    assert not list(folder.glob(f"*{TEMP_MARK}"))
    # and it loads as a checkpoint through the safe unpickler
    from modules.library.model_loader import TensorSource

    with TensorSource(result.path) as source:
        assert set(source.shapes) == set(reference)


def test_interrupted_ckpt_merge_leaves_nothing(library):
    folder, registry = library
    with pytest.raises(MergeInterrupted):
        merge_checkpoints(MergeRequest(primary_model_name="a", secondary_model_name="b", checkpoint_format="ckpt"),
                          registry, folder, control=StopAfter(20))
    assert not list(folder.glob("0.7*")) and not list(folder.glob(f"*{TEMP_MARK}"))


def test_ema_scalars_as_a1111(library):
    """A1111 merges every key containing "model" that B has, EMA keys included; the integer
    `model_ema.num_updates` is a counter, copied from A like other integer buffers."""
    folder, registry = library
    result = merge_checkpoints(MergeRequest(primary_model_name="a", secondary_model_name="b", multiplier=0.25),
                               registry, folder)
    out, a, b = load(result.path), load(folder / "a.safetensors"), load(folder / "b.safetensors")
    assert torch.allclose(out["model_ema.decay"], a["model_ema.decay"] * 0.75 + b["model_ema.decay"] * 0.25)
    assert out["model_ema.num_updates"].dtype == a["model_ema.num_updates"].dtype
    assert torch.equal(out["model_ema.num_updates"], a["model_ema.num_updates"])


def test_a_ckpt_input_merges_like_its_safetensors_twin(library, small_blocks):
    folder, registry = library
    write_checkpoint(folder / "b_pickled.ckpt", "sd1", dtype=torch.float32, seed=1)  # same weights as b
    registry.refresh()
    from_ckpt = merge_checkpoints(MergeRequest(primary_model_name="a", secondary_model_name="b_pickled.ckpt",
                                               custom_name="from-ckpt"), registry, folder)
    from_safetensors = merge_checkpoints(MergeRequest(primary_model_name="a", secondary_model_name="b",
                                                      custom_name="from-st"), registry, folder)
    x, y = load(from_ckpt.path), load(from_safetensors.path)
    assert list(x) == list(y) and all(torch.equal(x[k], y[k]) for k in x)


def test_the_check_before_a_merge_does_not_load_a_pickled_input(library, monkeypatch):
    """A `.ckpt` has no header: the tab's check must not load it whole once more before the job does."""
    from modules.merging import merger

    folder, registry = library
    write_checkpoint(folder / "b_pickled.ckpt", "sd1", dtype=torch.float32, seed=1)
    registry.refresh()
    (folder / "taken.safetensors").write_bytes(b"")
    loads = []
    monkeypatch.setattr(merger, "_open", lambda *args, **kwargs: loads.append(args) or pytest.fail("loaded"))
    request = MergeRequest(primary_model_name="a", secondary_model_name="b_pickled.ckpt")
    assert merger.check_merge(request, registry, folder).name == "0.7(a) + 0.3(b_pickled).safetensors"
    with pytest.raises(merger.MergeOutputExists):  # what needs no tensors is still checked
        merger.check_merge(request.model_copy(update={"custom_name": "taken"}), registry, folder)
    with pytest.raises(Exception, match="nope"):  # an unknown model too
        merger.check_merge(request.model_copy(update={"secondary_model_name": "nope"}), registry, folder)
    assert loads == []


def test_save_as_half_halves_merged_float32_keys_only(library):
    """A1111's to_half: merged (or baked) float32 tensors become float16, the others keep their dtype."""
    folder, registry = library
    out = load(merge_checkpoints(MergeRequest(primary_model_name="a", secondary_model_name="b", save_as_half=True),
                                 registry, folder).path)
    a = load(folder / "a.safetensors")
    assert out["model.diffusion_model.out.2.bias"].dtype == torch.float16
    assert out["alphas_cumprod"].dtype == a["alphas_cumprod"].dtype == torch.float32
    assert torch.equal(out["alphas_cumprod"], a["alphas_cumprod"])
    assert {k for k, v in out.items() if v.dtype == torch.float16} == set(merged_keys(a)) - {"model_ema.num_updates"}
