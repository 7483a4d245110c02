"""Loading real-layout checkpoints: detection, bit-identical weights, configs, errors.

Every checkpoint here is written by `modules.library.synthetic_checkpoints` in the real single-file layout
and loaded through the same code as a user's file.
"""

from __future__ import annotations

import hashlib
import logging

import pytest
import safetensors.torch
import torch
import yaml

from modules.library.model_detection import UnsupportedCheckpointError
from modules.library.model_loader import CheckpointLoadError, LoadOptions, load_checkpoint, load_vae_file
from modules.library.synthetic_checkpoints import ARCHITECTURES, architecture_spec, write_checkpoint, write_vae

# Prefixes of the tensors models are built from; everything else (schedule buffers, EMA scalars) is
# training state that loading skips.
MODEL_PREFIXES = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.", "conditioner.embedders.")
EXPECTED_ARCH = {
    "sd1": "sd1", "sd1-inpaint": "sd1-inpaint", "sd1-pix2pix": "sd1-pix2pix", "sd2": None,  # eps or v: see below
    "sd2-inpaint": "sd2-inpaint", "sdxl": "sdxl", "sdxl-refiner": "sdxl-refiner", "sdxl-inpaint": "sdxl-inpaint",
}


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()


def _file_digests(state_dict: dict[str, torch.Tensor]) -> set[str]:
    """Digests of every tensor of the file, and of the pieces loading is allowed to cut them into:
    OpenCLIP's fused q/k/v projection splits in three and its text projection is transposed."""
    digests = set()
    for key, t in state_dict.items():
        digests.add(_digest(t))
        if key.endswith(("attn.in_proj_weight", "attn.in_proj_bias")):
            digests.update(_digest(chunk) for chunk in t.chunk(3, dim=0))
        if key.endswith("text_projection"):
            digests.add(_digest(t.T))
    return digests


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    return {arch: write_checkpoint(folder / f"{arch}.safetensors", arch, size="tiny", dtype=torch.float32, seed=1)
            for arch in ARCHITECTURES}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_architecture_loads_bit_identical(tiny_files, arch):
    path = tiny_files[arch]
    model = load_checkpoint(path)
    if EXPECTED_ARCH[arch]:
        assert model.architecture.name == EXPECTED_ARCH[arch]
    else:
        assert model.architecture.name in ("sd2", "sd2-v")

    file_sd = safetensors.torch.load_file(str(path))
    allowed = _file_digests(file_sd)
    loaded_numel = 0
    for component, module in model.modules().items():
        for name, param in module.named_parameters():
            assert not param.is_meta, f"{component}.{name} left on meta"
            assert param.dtype == torch.float32
            assert _digest(param) in allowed, f"{component}.{name} differs from every tensor in the file"
            loaded_numel += param.numel()

    # Every model tensor of the file was used, except what the model deliberately leaves out.
    spec = architecture_spec(arch, "tiny")
    skipped = 0
    for key, t in file_sd.items():
        if not key.startswith(MODEL_PREFIXES) or key.endswith(("position_ids", "logit_scale")):
            skipped += t.numel()
        elif spec.family == "sd2" and (".resblocks.%d." % (spec.text_encoders[0].layers - 1) in key
                                       or key.endswith("text_projection")):
            skipped += t.numel()  # SD2 conditions on the penultimate layer, without projection
    assert loaded_numel == sum(t.numel() for t in file_sd.values()) - skipped


def test_component_shapes_follow_the_file(tiny_files):
    sdxl = load_checkpoint(tiny_files["sdxl"])
    spec = architecture_spec("sdxl", "tiny")
    widths = [encoder.config.hidden_size for encoder in sdxl.text_encoders]
    assert widths == [t.width for t in spec.text_encoders]
    assert type(sdxl.text_encoders[1]).__name__ == "CLIPTextModelWithProjection"
    assert sdxl.unet.config.addition_embed_type == "text_time"
    assert sdxl.unet.config.projection_class_embeddings_input_dim == spec.unet.adm_in_channels
    assert sdxl.vae.config.scaling_factor == pytest.approx(0.13025)

    sd2 = load_checkpoint(tiny_files["sd2"])
    file_layers = architecture_spec("sd2", "tiny").text_encoders[0].layers
    assert sd2.text_encoders[0].config.num_hidden_layers == file_layers - 1  # penultimate layer
    assert sd2.vae.config.scaling_factor == pytest.approx(0.18215)

    sd1 = load_checkpoint(tiny_files["sd1"])
    assert sd1.text_encoders[0].config.hidden_act == "quick_gelu"
    assert sd2.text_encoders[0].config.hidden_act == "gelu"
    assert [t.pad_token_id for t in sdxl.tokenizers] == [49407, 0]
    assert sd1.config.scheduler["prediction_type"] == "epsilon"


def test_fp16_file_loads_into_requested_dtype(tmp_path):
    path = write_checkpoint(tmp_path / "half.safetensors", "sd1", size="tiny", dtype=torch.float16)
    file_sd = safetensors.torch.load_file(str(path))
    model = load_checkpoint(path, LoadOptions(dtype=torch.float32, vae_dtype=torch.float32))
    allowed = _file_digests({k: v.float() for k, v in file_sd.items()})
    assert all(_digest(p) in allowed for p in model.unet.parameters())
    half = load_checkpoint(path, LoadOptions(dtype=torch.float16, vae_dtype=torch.float16))
    assert all(p.dtype == torch.float16 for p in half.unet.parameters())
    assert all(_digest(p) in _file_digests(file_sd) for p in half.unet.parameters())


def test_ckpt_and_safetensors_load_the_same(tmp_path):
    st = write_checkpoint(tmp_path / "m.safetensors", "sd1", size="tiny", dtype=torch.float32, seed=3)
    ck = write_checkpoint(tmp_path / "m.ckpt", "sd1", size="tiny", dtype=torch.float32, seed=3)
    a, b = load_checkpoint(st), load_checkpoint(ck)
    for (name, pa), (_, pb) in zip(a.unet.named_parameters(), b.unet.named_parameters()):
        assert torch.equal(pa, pb), name


def _rewrite(path, changes):
    sd = safetensors.torch.load_file(str(path))
    changes(sd)
    safetensors.torch.save_file(sd, str(path))


@pytest.mark.parametrize("bias, expected", [(-2.0, "sd2-v"), (2.0, "sd2")])
def test_sd2_v_prediction_test(tmp_path, bias, expected):
    """A1111's test: mean(unet(x) - x) < -1 at t=999 means v-prediction. A UNet whose output layer
    is zero weights plus a constant bias outputs that constant, so the answer is known."""
    path = write_checkpoint(tmp_path / "sd2.safetensors", "sd2", size="tiny", dtype=torch.float32)

    def constant_output(sd):
        sd["model.diffusion_model.out.2.weight"].zero_()
        sd["model.diffusion_model.out.2.bias"].fill_(bias)

    _rewrite(path, constant_output)
    model = load_checkpoint(path)
    assert model.architecture.name == expected
    assert model.prediction_type == ("v_prediction" if expected == "sd2-v" else "epsilon")


def test_yaml_beside_checkpoint_wins(tmp_path, tiny_files):
    import shutil

    from modules.library.model_config import LDM_CONFIG_DIR, patch_sizes_from_shapes, read_ldm_yaml
    from modules.library.safetensors_io import read_header

    path = tmp_path / "v.safetensors"
    shutil.copy(tiny_files["sd2"], path)
    ldm = patch_sizes_from_shapes(read_ldm_yaml(LDM_CONFIG_DIR / "v2-inference.yaml"), read_header(path).shapes())
    ldm["model"]["params"]["parameterization"] = "v"
    config = tmp_path / "v.yaml"
    config.write_text(yaml.safe_dump(ldm))
    model = load_checkpoint(path, config_path=config)
    assert model.prediction_type == "v_prediction"
    assert model.config.user_config and model.config.source == config

    # A yaml for another model fails with a message that points at the yaml.
    unet = ldm["model"]["params"]["unet_config"]["params"]
    for width, error in ((128, CheckpointLoadError), (96, ValueError)):  # other weights; impossible heads
        unet["model_channels"] = width
        config.write_text(yaml.safe_dump(ldm))
        with pytest.raises(error, match="yaml"):
            load_checkpoint(path, config_path=config)


def test_old_sd1_text_encoder_keys_are_normalised(tmp_path):
    path = write_checkpoint(tmp_path / "old.safetensors", "sd1", size="tiny", dtype=torch.float32)
    reference = load_checkpoint(path)

    def drop_text_model_level(sd):
        for key in [k for k in sd if k.startswith("cond_stage_model.transformer.text_model.")]:
            sd[key.replace("transformer.text_model.", "transformer.")] = sd.pop(key)

    _rewrite(path, drop_text_model_level)
    model = load_checkpoint(path)
    for pa, pb in zip(reference.text_encoders[0].parameters(), model.text_encoders[0].parameters()):
        assert torch.equal(pa, pb)


def test_damaged_position_ids_warn_and_are_not_used(tmp_path, caplog):
    path = write_checkpoint(tmp_path / "merged.safetensors", "sd1", size="tiny", dtype=torch.float32)
    key = "cond_stage_model.transformer.text_model.embeddings.position_ids"
    _rewrite(path, lambda sd: sd.__setitem__(key, sd[key].float() * 0.9999))
    with caplog.at_level(logging.WARNING):
        model = load_checkpoint(path)
    assert "position_ids are damaged" in caplog.text
    ids = model.text_encoders[0].text_model.embeddings.position_ids if hasattr(
        model.text_encoders[0], "text_model") else model.text_encoders[0].embeddings.position_ids
    assert torch.equal(ids.reshape(-1), torch.arange(ids.shape[-1]))


@pytest.mark.parametrize("keys, hint", [
    ({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 32)}, "models/Lora"),
    ({"encoder.down.0.block.0.conv1.weight": (32, 32, 3, 3), "decoder.up.0.block.0.conv1.weight": (32, 32, 3, 3)},
     "models/VAE"),
    ({"emb_params": (2, 768)}, "embeddings/"),
    ({"model.diffusion_model.x_embedder.proj.weight": (4, 4)}, "SD3"),
    ({}, "no tensors"),
])
def test_not_a_checkpoint_says_what_it_is(tmp_path, keys, hint):
    path = tmp_path / "thing.safetensors"
    safetensors.torch.save_file({k: torch.zeros(s) for k, s in keys.items()}, str(path))
    with pytest.raises(UnsupportedCheckpointError, match=hint):
        load_checkpoint(path)


def test_truncated_and_missing_files(tmp_path, tiny_files):
    data = tiny_files["sd1"].read_bytes()
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointLoadError, match="truncated"):
        load_checkpoint(truncated)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointLoadError, match="safetensors"):
        load_checkpoint(garbage)
    with pytest.raises(CheckpointLoadError, match="not found"):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_standalone_vae_file(tmp_path, tiny_files):
    model = load_checkpoint(tiny_files["sd1"])
    vae_path = write_vae(tmp_path / "x.vae.safetensors", size="tiny", dtype=torch.float32, seed=9)
    vae = load_vae_file(vae_path, model)
    allowed = _file_digests(safetensors.torch.load_file(str(vae_path)))
    assert all(_digest(p) in allowed for p in vae.parameters())
    assert vae.config.scaling_factor == model.vae.config.scaling_factor
    assert not torch.equal(next(vae.parameters()), next(model.vae.parameters()))
    with pytest.raises(UnsupportedCheckpointError, match="not a VAE"):
        load_vae_file(_lora_file(tmp_path), model)


def _lora_file(tmp_path):
    path = tmp_path / "lora.safetensors"
    safetensors.torch.save_file({"lora_unet_x.lora_down.weight": torch.zeros(4, 4)}, str(path))
    return path


def test_loaded_model_generates_finite_output(tiny_files):
    """The built components work together: text → UNet step → VAE decode, with no NaN."""
    model = load_checkpoint(tiny_files["sd1"])
    tokens = model.tokenizers[0]("a photo of a cat", padding="max_length", max_length=77, return_tensors="pt")
    with torch.no_grad():
        context = model.text_encoders[0](tokens.input_ids).last_hidden_state
        latent = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
        noise = model.unet(latent, torch.tensor([500]), encoder_hidden_states=context).sample
        image = model.vae.decode(latent / model.vae.config.scaling_factor).sample
    assert noise.shape == latent.shape and torch.isfinite(noise).all()
    assert image.shape == (1, 3, 64, 64) and torch.isfinite(image).all()


def test_yaml_text_encoder_version_names_a_local_folder(tmp_path, tiny_files):
    """A1111 configs may name the text encoder by `version`; a local folder (config.json and tokenizer
    files) is used instead of the built-in values, and nothing is fetched."""
    import json
    import shutil

    from modules.library.model_config import LDM_CONFIG_DIR, patch_sizes_from_shapes, read_ldm_yaml
    from modules.library.safetensors_io import read_header

    path = tmp_path / "m.safetensors"
    shutil.copy(tiny_files["sd1"], path)
    folder = tmp_path / "my-clip"
    shutil.copytree(LDM_CONFIG_DIR.parent / "tokenizers" / "clip", folder)
    built_in = load_checkpoint(path).text_encoders[0].config
    config = {k: getattr(built_in, k) for k in ("vocab_size", "hidden_size", "intermediate_size",
                                                  "num_hidden_layers", "num_attention_heads",
                                                  "max_position_embeddings")}
    (folder / "config.json").write_text(json.dumps({**config, "hidden_act": "gelu", "layer_norm_eps": 1e-6}))
    ldm = patch_sizes_from_shapes(read_ldm_yaml(LDM_CONFIG_DIR / "v1-inference.yaml"), read_header(path).shapes())
    ldm["model"]["params"]["cond_stage_config"]["params"] = {"version": "my-clip"}
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(ldm))
    model = load_checkpoint(path, config_path=tmp_path / "m.yaml")
    assert built_in.hidden_act == "quick_gelu"
    assert model.text_encoders[0].config.hidden_act == "gelu"
    assert model.text_encoders[0].config.layer_norm_eps == 1e-6
    assert model.config.text_encoders[0].tokenizer_dir == folder
