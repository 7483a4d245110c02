"""VAE discovery and per-checkpoint VAE resolution (`modules/vae_files.py`)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from modules.library.checkpoints import CheckpointInfo
from modules.library.vae_files import UnknownVaeError, VaeChoice, VaeRegistry


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"vae")
    return path


def checkpoint(path: Path) -> CheckpointInfo:
    touch(path)
    return CheckpointInfo(filename=path, name=path.name, hash="00000000", sha256=None, size_bytes=3, mtime=0.0)


@pytest.fixture
def layout(tmp_path):
    sd = tmp_path / "models" / "Stable-diffusion"
    vae = tmp_path / "models" / "VAE"
    ckpt_dir = tmp_path / "ckpt"
    vae_dir = tmp_path / "vae-dir"
    for rel in ["sub/n.vae.safetensors", "m.vae.pt", "m.safetensors", "x.ckpt", "upper.VAE.PT"]:
        touch(sd / rel)
    for rel in ["b.pt", "a.safetensors", "sub/d.ckpt", "c.txt", "a.png", ".hidden.pt"]:
        touch(vae / rel)
    for rel in ["k.vae.ckpt", "k.ckpt"]:
        touch(ckpt_dir / rel)
    for rel in ["z.safetensors", "m.vae.pt", "notes.json"]:
        touch(vae_dir / rel)
    return sd, vae, ckpt_dir, vae_dir


def test_discovery_patterns_and_order(layout):
    sd, vae, ckpt_dir, vae_dir = layout
    registry = VaeRegistry(sd, vae, ckpt_dir=ckpt_dir, extra_vae_dir=vae_dir)
    registry.refresh()
    # Pattern order; inside a pattern natural order, a folder's files before its sub-folders'.
    assert registry.names() == ["m.vae.pt", "upper.VAE.PT", "n.vae.safetensors", "a.safetensors", "b.pt", "d.ckpt",
                                "k.vae.ckpt", "z.safetensors"]
    # A name found twice keeps its first position and takes the last path, as in A1111.
    assert registry.get("m.vae.pt").path == vae_dir / "m.vae.pt"
    assert registry.get("d.ckpt").path == vae / "sub" / "d.ckpt"
    assert registry.choices() == ["Automatic", "None", *registry.names()]


def test_without_optional_dirs(layout):
    sd, vae, _, _ = layout
    registry = VaeRegistry(sd, vae, ckpt_dir=None, extra_vae_dir=None)
    registry.refresh()
    assert registry.names() == ["m.vae.pt", "upper.VAE.PT", "n.vae.safetensors", "a.safetensors", "b.pt", "d.ckpt"]
    assert registry.get("m.vae.pt").path == sd / "m.vae.pt"


def test_missing_folders_give_an_empty_list(tmp_path):
    registry = VaeRegistry(tmp_path / "nope", tmp_path / "nope2")
    registry.refresh()
    assert registry.choices() == ["Automatic", "None"]


@pytest.fixture
def registry(tmp_path):
    sd = tmp_path / "models" / "Stable-diffusion"
    vae = tmp_path / "models" / "VAE"
    for rel in ["model2.vae.pt", "model.vae.safetensors", "model-old.vae.pt"]:
        touch(sd / rel)
    for rel in ["kl-f8.safetensors", "other.pt"]:
        touch(vae / rel)
    registry = VaeRegistry(sd, vae)
    registry.refresh()
    return registry


def test_flag_wins_over_everything(registry, tmp_path):
    ckpt = checkpoint(tmp_path / "models" / "Stable-diffusion" / "model.safetensors")
    flag = touch(tmp_path / "flag.pt")
    assert registry.resolve_vae(ckpt, "other.pt", True, flag) == VaeChoice("flag", flag)
    assert registry.resolve_vae(ckpt, "not-validated-when-the-flag-is-set", True, flag).source == "flag"
    with pytest.raises(FileNotFoundError, match="--vae-path .*missing.pt does not exist"):
        registry.resolve_vae(ckpt, "Automatic", True, tmp_path / "missing.pt")


def test_explicit_setting_wins_when_it_overrides_per_model_preferences(registry, tmp_path):
    ckpt = checkpoint(tmp_path / "models" / "Stable-diffusion" / "model.safetensors")
    (ckpt.filename.with_suffix(".json")).write_text(json.dumps({"vae": "kl-f8.safetensors"}))
    vae = tmp_path / "models" / "VAE"
    assert registry.resolve_vae(ckpt, "other.pt", True, None) == VaeChoice("setting", vae / "other.pt")
    assert registry.resolve_vae(ckpt, "None", True, None) == VaeChoice("setting", None)
    assert registry.resolve_vae(ckpt, "None", True, None).uses_builtin


def test_user_metadata_then_near_checkpoint_then_setting(registry, tmp_path):
    sd = tmp_path / "models" / "Stable-diffusion"
    vae = tmp_path / "models" / "VAE"
    ckpt = checkpoint(sd / "model.safetensors")
    metadata = sd / "model.json"

    metadata.write_text(json.dumps({"vae": "kl-f8.safetensors", "description": "x"}))
    for setting, overrides in [("Automatic", True), ("auto", True), ("other.pt", False), ("None", False)]:
        assert registry.resolve_vae(ckpt, setting, overrides, None) == VaeChoice("user-metadata", vae / "kl-f8.safetensors")
    metadata.write_text(json.dumps({"vae": "None"}))
    assert registry.resolve_vae(ckpt, "Automatic", True, None) == VaeChoice("user-metadata", None)

    # "Automatic" in the metadata, or no metadata: the VAE named like the checkpoint.
    metadata.write_text(json.dumps({"vae": "Automatic"}))
    near = VaeChoice("near-checkpoint", sd / "model.vae.safetensors")
    assert registry.resolve_vae(ckpt, "Automatic", True, None) == near
    metadata.unlink()
    assert registry.resolve_vae(ckpt, "Automatic", True, None) == near
    assert registry.resolve_vae(ckpt, "other.pt", False, None) == near

    # Nothing near: the setting, or the checkpoint's own VAE.
    lonely = checkpoint(sd / "lonely.safetensors")
    assert registry.resolve_vae(lonely, "other.pt", False, None) == VaeChoice("setting", vae / "other.pt")
    assert registry.resolve_vae(lonely, "None", False, None) == VaeChoice("setting", None)
    assert registry.resolve_vae(lonely, "Automatic", True, None) == VaeChoice("none/builtin", None)
    assert registry.resolve_vae(lonely, "auto", False, None) == VaeChoice("none/builtin", None)


def test_near_checkpoint_needs_the_whole_stem(registry, tmp_path):
    # A1111 matches any VAE whose name starts with the stem, so `model` would take `model2.vae.pt`
    # (the first in discovery order); only `model.<...>` counts here.
    sd = tmp_path / "models" / "Stable-diffusion"
    assert registry.names()[:3] == ["model2.vae.pt", "model-old.vae.pt", "model.vae.safetensors"]
    assert registry.resolve_vae(checkpoint(sd / "model.ckpt"), "Automatic", True, None).path == sd / "model.vae.safetensors"
    assert registry.resolve_vae(checkpoint(sd / "mod.ckpt"), "Automatic", True, None).source == "none/builtin"
    assert registry.resolve_vae(checkpoint(sd / "model2.safetensors"), "Automatic", True, None).path == sd / "model2.vae.pt"
    vae = tmp_path / "models" / "VAE"
    # Exact stem in any VAE folder, extension included in the match as A1111 does.
    assert registry.resolve_vae(checkpoint(sd / "other.safetensors"), "Automatic", True, None).path == vae / "other.pt"


def test_unknown_names(registry, tmp_path, caplog):
    sd = tmp_path / "models" / "Stable-diffusion"
    ckpt = checkpoint(sd / "lonely.safetensors")
    with pytest.raises(UnknownVaeError) as caught:
        registry.resolve_vae(ckpt, "kl-f8.safetensor", True, None)
    message = str(caught.value)
    assert message.startswith("Unknown VAE 'kl-f8.safetensor'. Did you mean 'kl-f8.safetensors'")
    assert "Choose one of 'Automatic', 'None', 'model2.vae.pt'" in message
    assert isinstance(caught.value, ValueError)
    with pytest.raises(UnknownVaeError):
        registry.resolve_vae(ckpt, "gone.pt", False, None)  # a bad setting is reported even when unused first

    # In user metadata (user data, not a setting) an unknown name is skipped with a warning.
    (sd / "lonely.json").write_text(json.dumps({"vae": "gone.pt"}))
    with caplog.at_level(logging.WARNING, logger="modules.library.vae_files"):
        assert registry.resolve_vae(ckpt, "Automatic", True, None) == VaeChoice("none/builtin", None)
    assert "gone.pt" in caplog.text
    (sd / "lonely.json").write_text("{broken")
    assert registry.resolve_vae(ckpt, "Automatic", True, None) == VaeChoice("none/builtin", None)


def test_unknown_vae_error_survives_pickling(registry):
    import pickle

    with pytest.raises(UnknownVaeError) as caught:
        registry.get("nope.pt")
    copy = pickle.loads(pickle.dumps(caught.value))
    assert str(copy) == str(caught.value) and copy.choices == caught.value.choices
