"""From an LDM config (`configs/ldm/*.yaml`, or a `<checkpoint>.yaml` beside the file) to the configs of
the diffusers/transformers components.

The repo's configs give the values a checkpoint does not carry (attention heads, VAE scaling factor,
prediction type, noise schedule, text-encoder kind). The sizes are read from the tensor shapes, so a
fine-tune with a non-standard width, and the tiny test models, load through the same code as a real
SD1.5 file. A `.yaml` beside the checkpoint is A1111's override: it is used as written, sizes included.
"""

from __future__ import annotations

import copy
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import yaml

from modules.library.model_detection import (
    SD1_CLIP_PREFIX,
    SD2_CLIP_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
    Architecture,
    ModelFamily,
)

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
LDM_CONFIG_DIR = REPO_ROOT / "configs" / "ldm"

Shapes = Mapping[str, Sequence[int]]

# SDXL's LegacyDDPMDiscretization defaults: the SDXL configs do not spell out their noise schedule.
_DEFAULT_LINEAR_START = 0.00085
_DEFAULT_LINEAR_END = 0.0120
_DEFAULT_TIMESTEPS = 1000
# OpenCLIP and OpenAI CLIP text transformers both use 64-wide attention heads.
_TEXT_HEAD_WIDTH = 64
_OPENAI_CLIP_TARGETS = ("FrozenCLIPEmbedder",)


class ModelConfigError(ValueError):
    """A config (usually a user's `.yaml`) that cannot describe the checkpoint."""

    short_reason = "its config does not fit"  # how checkpoint lists mark the file


@dataclass(frozen=True)
class TextEncoderSpec:
    """How to build one text encoder from the file."""

    prefix: str  # canonical key prefix in the checkpoint
    layout: str  # "hf-clip" (OpenAI CLIP in transformers layout) or "open-clip"
    config: dict[str, Any]  # CLIPTextConfig kwargs
    with_projection: bool  # CLIPTextModelWithProjection (SDXL's pooled output) or CLIPTextModel
    tokenizer_kind: str  # "clip-vit-l" or "open-clip" (modules.library.clip_tokenizer)
    tokenizer_dir: Path | None  # a local tokenizer folder named by a user's yaml; None = the repo's files
    # Layers present in the file but not used by the model (SD2 uses the penultimate of 24 layers).
    dropped_layers: tuple[int, ...] = ()


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to build the components of one checkpoint."""

    architecture: Architecture
    source: Path  # the LDM yaml the values came from
    user_config: bool  # True when a `.yaml` beside the checkpoint was used
    unet: dict[str, Any]
    vae: dict[str, Any]
    text_encoders: tuple[TextEncoderSpec, ...]
    scheduler: dict[str, Any]
    prediction_type: str  # "epsilon" or "v_prediction"
    ldm: dict[str, Any] = field(repr=False, default_factory=dict)


def read_ldm_yaml(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        raise ModelConfigError(f"cannot read config {path}: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("model", {}).get("params"), dict):
        raise ModelConfigError(f"{path} is not an LDM config: it has no model.params section")
    return data


def _unet_params(ldm: dict[str, Any]) -> dict[str, Any]:
    params = ldm["model"]["params"]
    section = params.get("unet_config") or params.get("network_config")
    if not section or "params" not in section:
        raise ModelConfigError("config has neither model.params.unet_config nor network_config")
    return section["params"]


def _ddconfig(ldm: dict[str, Any]) -> dict[str, Any]:
    try:
        return ldm["model"]["params"]["first_stage_config"]["params"]["ddconfig"]
    except KeyError as e:
        raise ModelConfigError("config has no model.params.first_stage_config.params.ddconfig") from e


def patch_sizes_from_shapes(ldm: dict[str, Any], shapes: Shapes) -> dict[str, Any]:
    """A copy of `ldm` whose sizes (channels, depths, widths) are those of the tensors in the file."""
    ldm = copy.deepcopy(ldm)
    unet = _unet_params(ldm)
    sizes = infer_unet_sizes(shapes)
    context_dim = sizes.pop("context_dim", None)
    unet.update(sizes)
    if context_dim is not None:
        # The refiner's config lists one context width per level; keep the form, change the value.
        listed = isinstance(unet.get("context_dim"), list)
        unet["context_dim"] = [context_dim] * len(unet["context_dim"]) if listed else context_dim
    if VAE_PREFIX + "encoder.conv_in.weight" in shapes:
        _ddconfig(ldm).update(infer_vae_sizes(shapes, VAE_PREFIX))
    return ldm


def infer_unet_sizes(shapes: Shapes) -> dict[str, Any]:
    """LDM UNet sizes from `model.diffusion_model.*` shapes (input blocks walked level by level)."""
    p = UNET_PREFIX
    conv_in = shapes[p + "input_blocks.0.0.weight"]
    model_channels, in_channels = int(conv_in[0]), int(conv_in[1])
    levels: list[list[int]] = [[]]  # input-block indices of the res blocks of each level
    i = 1
    while f"{p}input_blocks.{i}.0.op.weight" in shapes or f"{p}input_blocks.{i}.0.in_layers.2.weight" in shapes:
        if f"{p}input_blocks.{i}.0.op.weight" in shapes:
            levels.append([])
        else:
            levels[-1].append(i)
        i += 1
    if not levels[0]:
        raise ModelConfigError("UNet has no res blocks in its first level; the checkpoint is not an LDM UNet")
    channel_mult, attention_resolutions, depth = [], [], []
    for level, blocks in enumerate(levels):
        first = blocks[0]
        width = int(shapes[f"{p}input_blocks.{first}.0.out_layers.3.weight"][0])
        channel_mult.append(width // model_channels)
        n_transformer = 0
        while f"{p}input_blocks.{first}.1.transformer_blocks.{n_transformer}.attn2.to_k.weight" in shapes:
            n_transformer += 1
        if n_transformer:
            attention_resolutions.append(2**level)
        depth.append(max(n_transformer, 1))  # a level without attention ignores its depth (as SDXL's yaml)
    # The middle block takes the last level's depth (LDM and diffusers alike); the SDXL refiner has no
    # attention in its last level but 4 transformer blocks in the middle, so read it from there.
    n_middle = 0
    while f"{p}middle_block.1.transformer_blocks.{n_middle}.attn2.to_k.weight" in shapes:
        n_middle += 1
    if n_middle and 2 ** (len(levels) - 1) not in attention_resolutions:
        depth[-1] = n_middle

    sizes: dict[str, Any] = {
        "in_channels": in_channels,
        "out_channels": int(shapes[p + "out.2.weight"][0]),
        "model_channels": model_channels,
        "channel_mult": channel_mult,
        "num_res_blocks": len(levels[0]),
        "attention_resolutions": attention_resolutions,
        "transformer_depth": depth,
    }
    attn_keys = [k for k in shapes if k.startswith(p) and k.endswith("transformer_blocks.0.attn2.to_k.weight")]
    if attn_keys:
        sizes["context_dim"] = int(shapes[attn_keys[0]][1])
        proj_in = attn_keys[0].replace("transformer_blocks.0.attn2.to_k.weight", "proj_in.weight")
        sizes["use_linear_in_transformer"] = len(shapes[proj_in]) == 2
    if p + "label_emb.0.0.weight" in shapes:
        sizes["adm_in_channels"] = int(shapes[p + "label_emb.0.0.weight"][1])
    return sizes


def infer_vae_sizes(shapes: Shapes, prefix: str) -> dict[str, Any]:
    """LDM autoencoder `ddconfig` sizes from encoder/decoder shapes under `prefix`."""
    conv_in = shapes[prefix + "encoder.conv_in.weight"]
    ch = int(conv_in[0])
    ch_mult = []
    level = 0
    while f"{prefix}encoder.down.{level}.block.0.conv1.weight" in shapes:
        ch_mult.append(int(shapes[f"{prefix}encoder.down.{level}.block.0.conv2.weight"][0]) // ch)
        level += 1
    num_res_blocks = 0
    while f"{prefix}encoder.down.0.block.{num_res_blocks}.conv1.weight" in shapes:
        num_res_blocks += 1
    return {
        "ch": ch,
        "ch_mult": ch_mult,
        "num_res_blocks": num_res_blocks,
        "in_channels": int(conv_in[1]),
        "out_ch": int(shapes[prefix + "decoder.conv_out.weight"][0]),
        "z_channels": int(shapes[prefix + "encoder.conv_out.weight"][0]) // 2,
    }


def build_model_config(
    architecture: Architecture,
    shapes: Shapes,
    user_yaml: Path | None = None,
    force_prediction_type: str | None = None,
) -> ModelConfig:
    """Component configs for a checkpoint whose canonical key shapes are `shapes`."""
    try:
        return _build_model_config(architecture, shapes, user_yaml, force_prediction_type)
    except ModelConfigError as e:
        where = f"{user_yaml} (the .yaml beside the checkpoint; fix or remove it)" if user_yaml else architecture.config_file
        raise ModelConfigError(f"{where}: {e}") from e


def _build_model_config(
    architecture: Architecture,
    shapes: Shapes,
    user_yaml: Path | None,
    force_prediction_type: str | None,
) -> ModelConfig:
    import torch

    if user_yaml is not None:
        ldm = read_ldm_yaml(user_yaml)
        source = user_yaml
    else:
        source = LDM_CONFIG_DIR / architecture.config_file
        ldm = patch_sizes_from_shapes(read_ldm_yaml(source), shapes)

    meta_checkpoint = {k: torch.empty(tuple(v), device="meta") for k, v in shapes.items()}
    unet_config = _unet_config(ldm, meta_checkpoint, architecture)
    vae_config = vae_config_from_ldm(ldm, meta_checkpoint)
    params = ldm["model"]["params"]
    prediction_type = force_prediction_type or (
        "v_prediction" if params.get("parameterization") == "v" else "epsilon"
    )
    scheduler = {
        "num_train_timesteps": int(params.get("timesteps", _DEFAULT_TIMESTEPS)),
        "beta_start": float(params.get("linear_start", _DEFAULT_LINEAR_START)),
        "beta_end": float(params.get("linear_end", _DEFAULT_LINEAR_END)),
        "beta_schedule": "scaled_linear",
        "prediction_type": prediction_type,
        "clip_sample": False,
        "set_alpha_to_one": False,
        "steps_offset": 1,
        "timestep_spacing": "leading",
    }
    text_encoders = tuple(_text_encoder_specs(architecture, ldm, shapes, source))
    return ModelConfig(
        architecture=architecture,
        source=source,
        user_config=user_yaml is not None,
        unet=unet_config,
        vae=vae_config,
        text_encoders=text_encoders,
        scheduler=scheduler,
        prediction_type=prediction_type,
        ldm=ldm,
    )


def _unet_config(ldm: dict[str, Any], meta_checkpoint: dict, architecture: Architecture) -> dict[str, Any]:
    from diffusers.loaders.single_file_utils import create_unet_diffusers_config_from_ldm

    unet_params = _unet_params(ldm)
    if unet_params.get("num_head_channels", -1) not in (-1, None) and "num_heads" not in unet_params:
        if unet_params["model_channels"] % unet_params["num_head_channels"]:
            raise ModelConfigError(
                f"UNet width {unet_params['model_channels']} is not a multiple of num_head_channels "
                f"{unet_params['num_head_channels']}"
            )
    try:
        config = create_unet_diffusers_config_from_ldm(ldm, meta_checkpoint)
    except (KeyError, TypeError) as e:
        raise ModelConfigError(f"UNet section of the config is incomplete: missing {e}") from e
    if architecture.family in (ModelFamily.SDXL, ModelFamily.SDXL_REFINER):
        # diffusers recognises SDXL's size/crop conditioning only for the real context widths
        # (2048/1280); the conditioning is a property of the family, so set it from the family.
        config["class_embed_type"] = None
        config["addition_embed_type"] = "text_time"
        config["addition_time_embed_dim"] = _sdxl_time_embed_dim(ldm)
        config["projection_class_embeddings_input_dim"] = unet_params["adm_in_channels"]
    config.pop("sample_size", None)
    return config


def _sdxl_time_embed_dim(ldm: dict[str, Any]) -> int:
    models = ldm["model"]["params"].get("conditioner_config", {}).get("params", {}).get("emb_models", [])
    for model in models:
        if "ConcatTimestepEmbedderND" in model.get("target", ""):
            return int(model.get("params", {}).get("outdim", 256))
    return 256


def vae_config_from_ldm(ldm: dict[str, Any], meta_checkpoint: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    from diffusers.loaders.single_file_utils import create_vae_diffusers_config_from_ldm

    _ddconfig(ldm)  # raises a clear error when missing
    config = create_vae_diffusers_config_from_ldm(ldm, meta_checkpoint)
    config.pop("sample_size", None)
    return config


def _conditioner_models(ldm: dict[str, Any]) -> list[dict[str, Any]]:
    return ldm["model"]["params"].get("conditioner_config", {}).get("params", {}).get("emb_models", [])


def _text_encoder_specs(architecture: Architecture, ldm: dict[str, Any], shapes: Shapes, source: Path):
    family = architecture.family
    params = ldm["model"]["params"]
    if family == ModelFamily.SD1:
        cond = params.get("cond_stage_config", {})
        yield _hf_clip_spec(SD1_CLIP_PREFIX + "text_model.", shapes, cond, source)
    elif family == ModelFamily.SD2:
        cond = params.get("cond_stage_config", {})
        layer = cond.get("params", {}).get("layer", "penultimate")
        yield _open_clip_spec(SD2_CLIP_PREFIX, shapes, with_projection=False, drop_last=layer == "penultimate",
                              cond=cond, source=source)
    elif family == ModelFamily.SDXL:
        text_models = [m for m in _conditioner_models(ldm) if m.get("input_key", "txt") == "txt"] or [{}, {}]
        yield _hf_clip_spec("conditioner.embedders.0.transformer.text_model.", shapes, text_models[0], source)
        yield _open_clip_spec("conditioner.embedders.1.model.", shapes, with_projection=True, drop_last=False,
                              cond=text_models[1] if len(text_models) > 1 else {}, source=source)
    elif family == ModelFamily.SDXL_REFINER:
        text_models = [m for m in _conditioner_models(ldm) if m.get("input_key", "txt") == "txt"] or [{}]
        yield _open_clip_spec("conditioner.embedders.0.model.", shapes, with_projection=True, drop_last=False,
                              cond=text_models[0], source=source)


def _count_layers(shapes: Shapes, pattern: str) -> int:
    regex = re.compile(pattern)
    indices = {int(m.group(1)) for k in shapes if (m := regex.match(k))}
    return max(indices) + 1 if indices else 0


def _local_text_config(cond: dict[str, Any], source: Path) -> tuple[dict[str, Any] | None, Path | None]:
    """A1111 yaml `params.version` naming a local folder with `config.json` (+ tokenizer files)."""
    version = (cond.get("params") or {}).get("version")
    if not version or not isinstance(version, str):
        return None, None
    candidate = Path(version)
    if not candidate.is_absolute():
        candidate = source.parent / candidate
    if not candidate.is_dir():
        # A hub id (e.g. "openai/clip-vit-large-patch14"): the repo's offline files serve instead.
        log.debug("text encoder version %r is not a local folder; using built-in config", version)
        return None, None
    config_file = candidate / "config.json"
    if not config_file.is_file():
        raise ModelConfigError(f"{source}: text encoder folder {candidate} has no config.json")
    data = json.loads(config_file.read_text(encoding="utf-8"))
    data = data.get("text_config", data)  # a full CLIPConfig nests the text part
    allowed = ("vocab_size", "hidden_size", "intermediate_size", "projection_dim", "num_hidden_layers",
               "num_attention_heads", "max_position_embeddings", "hidden_act", "layer_norm_eps",
               "bos_token_id", "eos_token_id", "pad_token_id")
    tokenizer_dir = candidate if (candidate / "vocab.json").is_file() else None
    return {k: data[k] for k in allowed if k in data}, tokenizer_dir


def _hf_clip_spec(prefix: str, shapes: Shapes, cond: dict[str, Any], source: Path) -> TextEncoderSpec:
    width = int(shapes[prefix + "embeddings.token_embedding.weight"][1])
    config = {
        "vocab_size": int(shapes[prefix + "embeddings.token_embedding.weight"][0]),
        "hidden_size": width,
        "intermediate_size": int(shapes[prefix + "encoder.layers.0.mlp.fc1.weight"][0]),
        "num_hidden_layers": _count_layers(shapes, re.escape(prefix) + r"encoder\.layers\.(\d+)\."),
        "num_attention_heads": max(width // _TEXT_HEAD_WIDTH, 1),
        "max_position_embeddings": int(shapes[prefix + "embeddings.position_embedding.weight"][0]),
        "hidden_act": "quick_gelu",  # OpenAI CLIP ViT-L/14
        "layer_norm_eps": 1e-5,
        "projection_dim": width,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
    }
    local, tokenizer_dir = _local_text_config(cond, source)
    if local:
        config.update(local)
    return TextEncoderSpec(prefix, "hf-clip", config, False, "clip-vit-l", tokenizer_dir)


def _open_clip_spec(prefix: str, shapes: Shapes, with_projection: bool, drop_last: bool,
                    cond: dict[str, Any], source: Path) -> TextEncoderSpec:
    width = int(shapes[prefix + "token_embedding.weight"][1])
    layers = _count_layers(shapes, re.escape(prefix) + r"transformer\.resblocks\.(\d+)\.")
    used = layers - 1 if drop_last else layers
    projection = shapes.get(prefix + "text_projection")
    config = {
        "vocab_size": int(shapes[prefix + "token_embedding.weight"][0]),
        "hidden_size": width,
        "intermediate_size": int(shapes[prefix + "transformer.resblocks.0.mlp.c_fc.weight"][0]),
        "num_hidden_layers": used,
        "num_attention_heads": max(width // _TEXT_HEAD_WIDTH, 1),
        "max_position_embeddings": int(shapes[prefix + "positional_embedding"][0]),
        "hidden_act": "gelu",  # OpenCLIP
        "layer_norm_eps": 1e-5,
        "projection_dim": int(projection[1]) if projection is not None else width,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 0,
    }
    local, tokenizer_dir = _local_text_config(cond, source)
    if local:
        config.update(local)
    dropped = tuple(range(config["num_hidden_layers"], layers))
    return TextEncoderSpec(prefix, "open-clip", config, with_projection, "open-clip", tokenizer_dir, dropped)
