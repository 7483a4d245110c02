"""Which model a single-file checkpoint holds, decided from its key names and tensor shapes alone.

Works on a `{key: shape}` map, so for `.safetensors` files the answer (or the error) comes from the
header before any tensor is read. The rules follow A1111's `guess_model_config_from_state_dict`
(A1111.md §1.7) with one generalisation: A1111 recognises SD2 only when the OpenCLIP width is 1024;
here any OpenCLIP text encoder under `cond_stage_model.model.` means SD2, so small test models take
the same path as real ones.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from enum import Enum
from typing import Mapping, Sequence

Shapes = Mapping[str, Sequence[int]]

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD1_CLIP_PREFIX = "cond_stage_model.transformer."
SD2_CLIP_PREFIX = "cond_stage_model.model."
SDXL_CONDITIONER_PREFIX = "conditioner.embedders."
UNET_INPUT_CONV = UNET_PREFIX + "input_blocks.0.0.weight"


class ModelFamily(str, Enum):
    SD1 = "sd1"
    SD2 = "sd2"
    SDXL = "sdxl"
    SDXL_REFINER = "sdxl-refiner"


@dataclass(frozen=True)
class Architecture:
    """One model layout that Atelier loads, and the LDM config (in `configs/ldm/`) that describes it."""

    name: str
    family: ModelFamily
    label: str
    config_file: str  # file name in configs/ldm, as A1111 names its configs

    def __str__(self) -> str:
        return self.label


class Architectures:
    """The architectures, by name (a namespace of constants)."""

    SD1 = Architecture("sd1", ModelFamily.SD1, "SD 1.x", "v1-inference.yaml")
    SD1_INPAINT = Architecture("sd1-inpaint", ModelFamily.SD1, "SD 1.x inpainting", "v1-inpainting-inference.yaml")
    SD1_PIX2PIX = Architecture("sd1-pix2pix", ModelFamily.SD1, "InstructPix2Pix (SD 1.x)", "instruct-pix2pix.yaml")
    SD2 = Architecture("sd2", ModelFamily.SD2, "SD 2.x", "v2-inference.yaml")
    SD2_V = Architecture("sd2-v", ModelFamily.SD2, "SD 2.x v-prediction", "v2-inference-v.yaml")
    SD2_INPAINT = Architecture("sd2-inpaint", ModelFamily.SD2, "SD 2.x inpainting", "v2-inpainting-inference.yaml")
    SDXL = Architecture("sdxl", ModelFamily.SDXL, "SDXL", "sd_xl_base.yaml")
    SDXL_INPAINT = Architecture("sdxl-inpaint", ModelFamily.SDXL, "SDXL inpainting", "sd_xl_inpaint.yaml")
    SDXL_REFINER = Architecture("sdxl-refiner", ModelFamily.SDXL_REFINER, "SDXL refiner", "sd_xl_refiner.yaml")

    @classmethod
    def all(cls) -> list[Architecture]:
        return [v for v in vars(cls).values() if isinstance(v, Architecture)]

    @classmethod
    def by_name(cls, name: str) -> Architecture:
        for arch in cls.all():
            if arch.name == name:
                return arch
        raise ValueError(f"unknown architecture {name!r}; known: {', '.join(a.name for a in cls.all())}")


@dataclass(frozen=True)
class Detection:
    architecture: Architecture
    # SD2 eps and v-prediction files have identical keys; A1111 tells them apart by running the UNet
    # once (see model_loader). True when that test is still to be run.
    needs_v_prediction_test: bool = False


class UnsupportedCheckpointError(ValueError):
    """The file is a checkpoint of a kind Atelier cannot load as a Stable Diffusion model."""

    short_reason = "not a model Atelier can load"  # how checkpoint lists mark the file


def normalize_keys(keys: Sequence[str], shapes: Shapes) -> dict[str, str]:
    """Map file keys to the canonical names loading uses (A1111.md §1.8).

    Returns `{canonical: file_key}`. Two historical variants are renamed: SD1 text encoders saved
    without the `text_model.` level, and SD2.1-Turbo files that put the SD2 text encoder under
    `conditioner.embedders.0.`.
    """
    mapping: dict[str, str] = {}
    turbo_ln = "conditioner.embedders.0.model.ln_final.weight"
    sd21_turbo = turbo_ln in shapes and "conditioner.embedders.1.model.ln_final.weight" not in shapes and tuple(
        shapes[turbo_ln]
    ) == (1024,)
    for key in keys:
        canonical = key
        if key.startswith(SD1_CLIP_PREFIX):
            rest = key[len(SD1_CLIP_PREFIX) :]
            if rest.startswith(("embeddings.", "encoder.", "final_layer_norm.")):
                canonical = SD1_CLIP_PREFIX + "text_model." + rest
        elif sd21_turbo and key.startswith("conditioner.embedders.0."):
            canonical = "cond_stage_model." + key[len("conditioner.embedders.0.") :]
        mapping[canonical] = key
    return mapping


def architecture_of_file(path) -> Architecture | None:
    """A `.safetensors` checkpoint's architecture from its header alone (no tensor is read); None for
    another format or a file that cannot be read or recognised."""
    from modules.library.safetensors_io import read_header

    if not str(path).endswith(".safetensors"):
        return None
    try:
        shapes = read_header(path).shapes()
        canonical = normalize_keys(list(shapes), shapes)
        return detect_architecture({c: shapes[f] for c, f in canonical.items()}).architecture
    except (OSError, ValueError):
        return None


def detect_architecture(shapes: Shapes, source: str = "checkpoint") -> Detection:
    """Decide the architecture from canonical key names and shapes; raise with what was found."""
    if UNET_PREFIX + "x_embedder.proj.weight" in shapes:
        raise UnsupportedCheckpointError(f"{source}: this is an SD3 checkpoint; Atelier loads SD1.x, SD2.x and SDXL")
    if UNET_INPUT_CONV not in shapes:
        raise UnsupportedCheckpointError(_describe_unknown(shapes, source))

    in_channels = int(shapes[UNET_INPUT_CONV][1])
    A = Architectures
    if "conditioner.embedders.1.model.ln_final.weight" in shapes:
        return Detection(A.SDXL_INPAINT if in_channels == 9 else A.SDXL)
    if "conditioner.embedders.0.model.ln_final.weight" in shapes:
        return Detection(A.SDXL_REFINER)
    if "depth_model.model.pretrained.act_postprocess3.0.project.0.bias" in shapes:
        raise UnsupportedCheckpointError(f"{source}: SD2 depth-to-image (MiDaS) checkpoints are not supported yet")
    if "embedder.model.ln_final.weight" in shapes:
        raise UnsupportedCheckpointError(f"{source}: unCLIP checkpoints are not supported")
    if "cond_stage_model.roberta.embeddings.word_embeddings.weight" in shapes:
        raise UnsupportedCheckpointError(f"{source}: AltDiffusion checkpoints are not supported")
    if SD2_CLIP_PREFIX + "transformer.resblocks.0.attn.in_proj_weight" in shapes:
        if in_channels == 9:
            return Detection(A.SD2_INPAINT)
        return Detection(A.SD2, needs_v_prediction_test=True)
    if SD1_CLIP_PREFIX + "text_model.embeddings.token_embedding.weight" in shapes:
        if in_channels == 9:
            return Detection(A.SD1_INPAINT)
        if in_channels == 8:
            return Detection(A.SD1_PIX2PIX)
        return Detection(A.SD1)
    raise UnsupportedCheckpointError(
        f"{source}: has a UNet ({in_channels} input channels) but no text encoder Atelier recognises "
        f"(looked for {SD1_CLIP_PREFIX}*, {SD2_CLIP_PREFIX}*, {SDXL_CONDITIONER_PREFIX}*). "
        f"Key groups found: {_prefix_summary(shapes)}"
    )


def _describe_unknown(shapes: Shapes, source: str) -> str:
    """An error message that says what the file seems to be instead, and where it belongs."""
    keys = list(shapes)
    hint = ""
    if not keys:
        hint = "it holds no tensors"
    elif any(k.startswith(("lora_unet_", "lora_te", "lora_te1_", "lora_te2_")) or ".lora_down." in k for k in keys):
        hint = "it looks like a LoRA; put it in models/Lora and use <lora:name:weight> in the prompt"
    elif any(k.startswith(("encoder.down.", "decoder.up.")) for k in keys):
        hint = "it looks like a VAE; put it in models/VAE and pick it in the SD VAE setting"
    elif any(k in ("string_to_param", "emb_params", "clip_l", "clip_g") for k in keys):
        hint = "it looks like a textual-inversion embedding; put it in embeddings/"
    elif any(k.startswith(("down_blocks.", "mid_block.", "conv_in.")) for k in keys):
        hint = "it looks like a single diffusers-format component (not an A1111-style single-file checkpoint)"
    elif any(k.startswith("control_model.") or k.startswith("input_hint_block.") for k in keys):
        hint = "it looks like a ControlNet, which is not a checkpoint for the model dropdown"
    found = _prefix_summary(shapes)
    why = f"; {hint}" if hint else ""
    return (
        f"{source}: not a Stable Diffusion checkpoint Atelier recognises (no {UNET_INPUT_CONV}){why}. "
        f"Key groups found: {found}"
    )


def _prefix_summary(shapes: Shapes, limit: int = 6) -> str:
    counts = Counter(".".join(k.split(".")[:2]) for k in shapes)
    parts = [f"{prefix}.* ({n})" for prefix, n in counts.most_common(limit)]
    return ", ".join(parts) if parts else "none"
