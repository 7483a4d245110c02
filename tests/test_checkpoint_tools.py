"""Checkpoint tools (modules/model_sources/checkpoint_tools.py) on tiny checkpoints in the real layout:
inspect, convert .ckpt -> .safetensors through the safe unpickler, prune EMA, save as fp16."""

from __future__ import annotations

import json
import os
import threading
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from modules.common import atomic_files
from modules.common.atomic_files import DiskFullError
from modules.library import safetensors_io
from modules.library.hashes import sha256_of_file
from modules.library.safetensors_io import save_file
from modules.library.synthetic_checkpoints import write_checkpoint
from modules.model_sources.checkpoint_tools import (
    CheckpointToolCancelled,
    CheckpointToolError,
    convert_to_safetensors,
    inspect_checkpoint,
    prune_ema,
    save_fp16,
)

SD1_POSITION_IDS = "cond_stage_model.transformer.text_model.embeddings.position_ids"
SDXL_POSITION_IDS = "conditioner.embedders.0.transformer.text_model.embeddings.position_ids"


@pytest.fixture
def sd1(tmp_path: Path) -> Path:
    return write_checkpoint(tmp_path / "sd1.safetensors", "sd1", dtype=torch.float32)


@pytest.fixture
def sdxl(tmp_path: Path) -> Path:
    return write_checkpoint(tmp_path / "sdxl.safetensors", "sdxl", dtype=torch.float32)


def _rewrite(source: Path, target: Path, change, metadata: dict[str, str] | None = None) -> Path:
    """A copy of `source` with `change(tensors)` applied (tiny files only)."""
    tensors = load_file(source)
    change(tensors)
    save_file(tensors, target, metadata=metadata)
    return target


def _ema_name(key: str) -> str:
    # LitEma's naming: the wrapper's parameter name (after "model."), dots removed.
    return "model_ema." + key[len("model."):].replace(".", "")


def _add_ema(tensors: dict[str, torch.Tensor]) -> None:
    for key in [k for k in tensors if k.startswith("model.diffusion_model.")]:
        tensors[_ema_name(key)] = tensors[key] * 0.5 + 1.0  # differs from the regular weight


def _files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


# ------------------------------------------------------------------------------------------------
# inspect


def test_inspect_sd1_reports_what_the_header_says(sd1: Path):
    report = inspect_checkpoint(sd1)

    tensors = load_file(sd1)
    assert report.format == "safetensors"
    assert report.architecture == "SD 1.x" and report.architecture_name == "sd1"
    assert report.tensor_count == len(tensors)
    assert report.dtypes == dict(Counter(str(t.dtype).removeprefix("torch.") for t in tensors.values()))
    assert report.total_bytes == sum(t.numel() * t.element_size() for t in tensors.values())
    assert report.file_size == sd1.stat().st_size
    assert report.has_baked_vae is True
    # The two LitEma scalars are bookkeeping, not EMA weights.
    assert "model_ema.decay" in tensors
    assert report.has_ema is False and report.ema_tensor_count == 0
    assert report.clip_position_ids == "ok"
    assert report.merge_recipe is None
    json.dumps(report.as_dict())  # the API answers with it
    assert any(line.startswith("Architecture: SD 1.x") for line in report.summary_lines())


def test_inspect_sdxl(sdxl: Path):
    report = inspect_checkpoint(sdxl)
    assert report.architecture == "SDXL"
    assert SDXL_POSITION_IDS in load_file(sdxl)
    assert report.clip_position_ids == "ok"
    assert report.has_baked_vae is True


@pytest.mark.parametrize("arch", ["sd1-inpaint", "sd2", "sdxl-refiner", "sdxl-inpaint"])
def test_inspect_names_each_architecture(tmp_path: Path, arch: str):
    path = write_checkpoint(tmp_path / f"{arch}.safetensors", arch)
    report = inspect_checkpoint(path)
    assert report.architecture_name == arch
    # CLIP-L (SD1, SDXL base) has position_ids; OpenCLIP (SD2, the SDXL refiner) has none.
    has_clip_l = any(k.endswith("embeddings.position_ids") for k in load_file(path))
    assert report.clip_position_ids == ("ok" if has_clip_l else "absent")
    if arch == "sd2":  # its two variants differ only in what the UNet predicts
        assert "v-prediction" in report.architecture


def test_inspect_reads_no_tensor_but_the_position_ids(sd1: Path, monkeypatch):
    read: list[str] = []
    original = safetensors_io.SafetensorsReader.read

    def counting(self, name, *args, **kwargs):
        read.append(name)
        return original(self, name, *args, **kwargs)

    monkeypatch.setattr(safetensors_io.SafetensorsReader, "read", counting)
    inspect_checkpoint(sd1)
    assert read == [SD1_POSITION_IDS]


def test_inspect_says_what_a_non_checkpoint_is(tmp_path: Path):
    lora = tmp_path / "style.safetensors"
    save_file({"lora_unet_down_blocks_0.lora_down.weight": torch.zeros(4, 8),
               "lora_unet_down_blocks_0.lora_up.weight": torch.zeros(8, 4)}, lora)
    report = inspect_checkpoint(lora)
    assert report.architecture.startswith("unknown (") and "LoRA" in report.architecture
    assert report.architecture_name is None
    assert report.clip_position_ids == "absent"
    assert report.has_baked_vae is False


@pytest.mark.parametrize("damage", ["float-drift", "wrong-integers", "int32"])
def test_broken_position_ids_are_detected_and_fixed_in_written_copies(sd1: Path, tmp_path: Path, damage: str):
    def spoil(tensors):
        ids = tensors[SD1_POSITION_IDS]
        if damage == "float-drift":  # what float interpolation in old merges left behind
            tensors[SD1_POSITION_IDS] = ids.to(torch.float32) - 0.0001 * (ids % 3 == 2)
        elif damage == "wrong-integers":
            spoiled = ids.clone()
            spoiled[0, 40] = 39
            tensors[SD1_POSITION_IDS] = spoiled
        else:
            tensors[SD1_POSITION_IDS] = ids.to(torch.int32)

    broken = _rewrite(sd1, tmp_path / "broken.safetensors", spoil)
    report = inspect_checkpoint(broken)
    assert report.clip_position_ids.startswith("broken: ")
    assert SD1_POSITION_IDS in report.clip_position_ids
    assert "int64" in report.clip_position_ids  # the fix is named

    result = save_fp16(broken)
    assert result.position_ids_fixed == (SD1_POSITION_IDS,)
    fixed = load_file(result.path)[SD1_POSITION_IDS]
    assert fixed.dtype == torch.int64
    assert torch.equal(fixed, torch.arange(77).reshape(1, 77))
    assert inspect_checkpoint(result.path).clip_position_ids == "ok"

    kept = save_fp16(broken, fix_position_ids=False)
    assert torch.equal(load_file(kept.path)[SD1_POSITION_IDS], load_file(broken)[SD1_POSITION_IDS])
    assert inspect_checkpoint(kept.path).clip_position_ids.startswith("broken: ")


def test_merge_recipe_and_training_metadata_are_read_back(tmp_path: Path):
    recipe = {"type": "webui", "interp_method": "Weighted sum", "multiplier": 0.3,
              "primary_model_hash": "a" * 64, "secondary_model_hash": "b" * 64}
    models = {"a" * 64: {"name": "one", "legacy_hash": "12345678", "sd_merge_recipe": None}}
    tag_frequency = {"10_cats": {"cat": 3, "dog": 1}, "5_birds": {"cat": 2, "bird": 6}}
    metadata = {"sd_merge_recipe": json.dumps(recipe), "sd_merge_models": json.dumps(models),
                "ss_sd_model_name": "v1-5-pruned.safetensors", "ss_num_epochs": "10", "ss_network_dim": "32",
                "ss_network_alpha": "16", "ss_resolution": "(512, 512)", "ss_tag_frequency": json.dumps(tag_frequency),
                "ss_seed": "42"}
    path = write_checkpoint(tmp_path / "merged.safetensors", "sd1", dtype=torch.float32, metadata=metadata)

    report = inspect_checkpoint(path)
    assert report.merge_recipe == recipe
    assert report.merge_models == models
    training = report.training_metadata
    assert training["base model"] == "v1-5-pruned.safetensors"
    assert training["epochs"] == "10" and training["network dim"] == "32" and training["network alpha"] == "16"
    assert training["resolution"] == "(512, 512)"
    # Summed over the dataset folders: bird 6, cat 3 + 2, dog 1.
    assert training["top tags"] == [["bird", 6], ["cat", 5], ["dog", 1]]
    assert training["distinct tags"] == 3
    assert training["other ss_* fields"] == 1  # ss_seed
    assert report.metadata["ss_tag_frequency"] == tag_frequency
    assert any(line.startswith("Merge recipe: Weighted sum") for line in report.summary_lines())

    # Copies keep the recipe (the history of the model) and say where they came from.
    copy = save_fp16(path)
    with safe_open(copy.path, "pt") as f:
        written = f.metadata()
    assert json.loads(written["sd_merge_recipe"]) == recipe
    assert written["format"] == "pt" and written["atelier.converted_from"] == "merged.safetensors"


# ------------------------------------------------------------------------------------------------
# .ckpt: safe unpickler only


def _save_ckpt(path: Path, state: dict, legacy: bool = False, **outer) -> Path:
    torch.save({"state_dict": state, **outer}, path, _use_new_zipfile_serialization=not legacy)
    return path


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_convert_ckpt_round_trip(sd1: Path, tmp_path: Path, legacy: bool):
    tensors = load_file(sd1)
    ckpt = _save_ckpt(tmp_path / "trained.ckpt", {**tensors, "not_a_tensor": 3}, legacy, global_step=470000,
                      epoch=6, optimizer_states=[{"state": {}}])

    report = inspect_checkpoint(ckpt)
    assert report.format == "pickle" and report.architecture == "SD 1.x"
    assert report.training_metadata == {"global step": 470000, "epoch": 6}
    assert report.tensor_count == len(tensors)

    result = convert_to_safetensors(ckpt)
    assert result.path == tmp_path / "trained.safetensors"
    written = load_file(result.path)  # read back by the safetensors package itself
    assert written.keys() == tensors.keys()
    for key, tensor in tensors.items():
        assert written[key].dtype == tensor.dtype and torch.equal(written[key], tensor), key
    assert result.sha256 == sha256_of_file(result.path)
    assert result.size == result.path.stat().st_size
    assert os.fspath(result) == str(result.path)
    left_out = " ".join(result.dropped)
    for name in ("not_a_tensor", "global_step", "epoch", "optimizer_states"):
        assert name in left_out and name in result.report_line
    with safe_open(result.path, "pt") as f:
        assert f.metadata()["format"] == "pt"


def test_convert_writes_tensors_that_share_storage(tmp_path: Path):
    base = torch.randn(4, 6)
    state = {"a.weight": base, "b.weight": base, "c.view": base[1:3], "d.transposed": base.t()}
    result = convert_to_safetensors(_save_ckpt(tmp_path / "shared.ckpt", state))
    written = load_file(result.path)
    for key, tensor in state.items():
        assert torch.equal(written[key], tensor), key
    written["a.weight"].add_(1)  # independent tensors now
    assert torch.equal(written["b.weight"], base)


class _Payload:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.mark.parametrize("tool", [inspect_checkpoint, convert_to_safetensors, prune_ema, save_fp16])
def test_malicious_ckpt_is_refused_and_nothing_runs(sd1: Path, tmp_path: Path, tool):
    folder = tmp_path / "evil"
    folder.mkdir()
    canary = tmp_path / "canary"
    state = dict(load_file(sd1))
    state["model.diffusion_model.out.2.bias"] = _Payload(f"touch {canary}")
    ckpt = _save_ckpt(folder / "evil.ckpt", state)

    with pytest.raises(CheckpointToolError) as info:
        tool(ckpt)
    assert not canary.exists(), "the payload ran"
    assert f"{os.system.__module__}.system" in info.value.forbidden
    assert f"{os.system.__module__}.system" in str(info.value)
    assert "--disable-safe-unpickle" in str(info.value)
    assert _files(folder) == {"evil.ckpt"}  # nothing written


# ------------------------------------------------------------------------------------------------
# prune EMA


def test_prune_ema_drops_the_ema_copies_and_keeps_the_regular_weights(sd1: Path, tmp_path: Path):
    with_ema = _rewrite(sd1, tmp_path / "full.safetensors", _add_ema)
    source = load_file(with_ema)
    unet_keys = [k for k in source if k.startswith("model.diffusion_model.")]

    report = inspect_checkpoint(with_ema)
    assert report.has_ema is True and report.ema_tensor_count == len(unet_keys)

    result = prune_ema(with_ema)
    assert result.path == tmp_path / "full-pruned.safetensors"
    pruned = load_file(result.path)
    assert not [k for k in pruned if k.startswith("model_ema")]
    assert pruned.keys() == {k for k in source if not k.startswith("model_ema.")}
    for key, tensor in pruned.items():
        assert torch.equal(tensor, source[key]), key
    assert inspect_checkpoint(result.path).has_ema is False
    assert f"{len(unet_keys) + 2} EMA tensors" in result.report_line


def test_prune_with_use_ema_puts_the_ema_weights_in_the_unet(sd1: Path, tmp_path: Path):
    with_ema = _rewrite(sd1, tmp_path / "full.safetensors", _add_ema)
    source = load_file(with_ema)

    result = prune_ema(with_ema, use_ema=True)
    assert result.path.name == "full-emaonly.safetensors"
    out = load_file(result.path)
    assert not [k for k in out if k.startswith("model_ema")]
    for key, tensor in out.items():
        expected = source[_ema_name(key)] if key.startswith("model.diffusion_model.") else source[key]
        assert torch.equal(tensor, expected), key


@pytest.mark.parametrize("use_ema", [False, True])
def test_prune_refuses_a_file_without_ema(sd1: Path, sdxl: Path, use_ema: bool):
    folder = sd1.parent
    before = _files(folder)
    # sd1 holds LitEma's two scalars, sdxl no model_ema.* key at all: neither has EMA weights.
    for path in (sd1, sdxl):
        with pytest.raises(CheckpointToolError, match="no EMA") as info:
            prune_ema(path, use_ema=use_ema)
        assert info.value.status == 400
    assert _files(folder) == before


def test_prune_of_a_ckpt_drops_optimizer_state(sd1: Path, tmp_path: Path):
    tensors = load_file(sd1)
    _add_ema(tensors)
    ckpt = _save_ckpt(tmp_path / "train.ckpt", tensors, optimizer_states=[{"state": {}}], global_step=1)
    result = prune_ema(ckpt)
    out = load_file(result.path)
    assert not [k for k in out if k.startswith("model_ema")]
    assert any("optimizer_states" in d for d in result.dropped)


# ------------------------------------------------------------------------------------------------
# fp16


def test_fp16_casts_float32_and_keeps_integer_and_float64_buffers(sd1: Path, tmp_path: Path):
    def schedule_in_float64(tensors):  # as LDM training checkpoints store it
        tensors["alphas_cumprod"] = tensors["alphas_cumprod"].to(torch.float64)

    path = _rewrite(sd1, tmp_path / "model.safetensors", schedule_in_float64)
    source = load_file(path)
    assert {t.dtype for t in source.values()} >= {torch.float32, torch.float64, torch.int64, torch.int32}

    result = save_fp16(path)
    assert result.path.name == "model-fp16.safetensors"
    out = load_file(result.path)
    assert out.keys() == source.keys()
    for key, tensor in source.items():
        expected = tensor.to(torch.float16) if tensor.dtype == torch.float32 else tensor
        assert out[key].dtype == expected.dtype, key
        assert torch.equal(out[key], expected), key
    assert result.sha256 == sha256_of_file(result.path)
    assert result.tensor_count == len(source)


def test_fp16_keeps_bf16_unless_asked(tmp_path: Path):
    path = tmp_path / "mixed.safetensors"
    save_file({"w32": torch.randn(8, 4), "wbf": torch.randn(8, 4).to(torch.bfloat16)}, path)
    default = load_file(save_fp16(path).path)
    assert default["w32"].dtype == torch.float16 and default["wbf"].dtype == torch.bfloat16
    both = load_file(save_fp16(path, include_bf16=True).path)
    assert both["wbf"].dtype == torch.float16
    assert torch.equal(both["wbf"], load_file(path)["wbf"].to(torch.float16))


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_fp16_refuses_values_beyond_its_range_and_leaves_nothing(tmp_path: Path, suffix: str):
    path = tmp_path / f"big{suffix}"
    tensors = {"ok": torch.ones(3), "huge": torch.tensor([1.0, 70000.0]), "nan": torch.tensor([float("nan")])}
    if suffix == ".ckpt":
        _save_ckpt(path, tensors)
    else:
        save_file(tensors, path)
    with pytest.raises(CheckpointToolError, match="'huge'.*65504"):
        save_fp16(path)
    assert _files(tmp_path) == {path.name}

    # A NaN that was there before the cast is the file's own business, not an overflow.
    del tensors["huge"]
    save_file(tensors, tmp_path / "nan.safetensors")
    assert load_file(save_fp16(tmp_path / "nan.safetensors").path)["nan"].isnan().all()


def test_fp16_of_an_fp16_file_is_refused(tmp_path: Path):
    path = write_checkpoint(tmp_path / "half.safetensors", "sd1", dtype=torch.float16)
    with pytest.raises(CheckpointToolError, match="no float32 tensors"):
        save_fp16(path)


# ------------------------------------------------------------------------------------------------
# never overwrite, atomic, errors


def test_a_taken_name_gets_a_number_and_is_never_overwritten(sd1: Path, tmp_path: Path):
    taken = tmp_path / "sd1-fp16.safetensors"
    taken.write_bytes(b"mine")
    first = save_fp16(sd1)
    second = save_fp16(sd1)
    assert first.path.name == "sd1-fp16-1.safetensors"
    assert second.path.name == "sd1-fp16-2.safetensors"
    assert taken.read_bytes() == b"mine"

    explicit = tmp_path / "chosen.safetensors"
    explicit.write_bytes(b"also mine")
    result = save_fp16(sd1, explicit)
    assert result.path.name == "chosen-1.safetensors"
    assert explicit.read_bytes() == b"also mine"


def test_a_name_taken_while_writing_is_not_replaced(sd1: Path, tmp_path: Path, monkeypatch):
    # Another download lands on the chosen name while the copy is being written.
    target = tmp_path / "sd1-fp16.safetensors"
    original = safetensors_io.SafetensorsWriter.commit

    def commit_and_race(self):
        target.write_bytes(b"arrived meanwhile")
        return original(self)

    monkeypatch.setattr(safetensors_io.SafetensorsWriter, "commit", commit_and_race)
    result = save_fp16(sd1)
    assert target.read_bytes() == b"arrived meanwhile"
    assert result.path.name == "sd1-fp16-1.safetensors"
    assert load_file(result.path).keys() == load_file(sd1).keys()
    assert not [name for name in _files(tmp_path) if atomic_files.is_temp_name(name)]


def test_full_disk_is_refused_before_writing(sd1: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setattr(atomic_files, "free_space", lambda folder: 1024)
    before = _files(tmp_path)
    with pytest.raises(DiskFullError, match="sd1-fp16.safetensors"):
        save_fp16(sd1)
    assert _files(tmp_path) == before


def test_errors_name_the_problem(tmp_path: Path, sd1: Path):
    with pytest.raises(CheckpointToolError, match="does not exist") as info:
        inspect_checkpoint(tmp_path / "missing.safetensors")
    assert info.value.status == 404

    page = tmp_path / "download.safetensors"
    page.write_text("<!doctype html><html><body>Please log in</body></html>")
    with pytest.raises(CheckpointToolError, match="Re-download"):
        inspect_checkpoint(page)

    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(CheckpointToolError, match="not a checkpoint format") as info:
        inspect_checkpoint(text)
    assert info.value.status == 400

    with pytest.raises(CheckpointToolError, match="already a .safetensors"):
        convert_to_safetensors(sd1)
    with pytest.raises(CheckpointToolError, match="must end in .safetensors"):
        save_fp16(sd1, tmp_path / "out.ckpt")

    empty = _save_ckpt(tmp_path / "empty.ckpt", {"step": 3})
    with pytest.raises(CheckpointToolError, match="no tensors"):
        inspect_checkpoint(empty)


def test_progress_counts_the_bytes_written_and_cancel_leaves_nothing(sd1: Path, tmp_path: Path):
    seen: list[tuple[int, int]] = []
    result = save_fp16(sd1, progress=lambda done, total: seen.append((done, total)))
    out = load_file(result.path)
    total = sum(t.numel() * t.element_size() for t in out.values())
    assert len(seen) == len(out)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)
    assert seen[-1] == (total, total)

    cancel = threading.Event()
    before = _files(tmp_path)
    with pytest.raises(CheckpointToolCancelled):
        save_fp16(sd1, progress=lambda done, total: cancel.set(), cancel=cancel)
    assert _files(tmp_path) == before


def test_a_tensor_named_like_the_metadata_entry_is_refused(tmp_path: Path):
    # In a safetensors header "__metadata__" is the metadata: writing a tensor under that name
    # would make a file whose readers lose the tensor or the metadata.
    ckpt = _save_ckpt(tmp_path / "odd.ckpt", {"__metadata__": torch.zeros(2), "w": torch.ones(2)})
    with pytest.raises(CheckpointToolError, match="__metadata__"):
        convert_to_safetensors(ckpt)
    assert _files(tmp_path) == {"odd.ckpt"}
