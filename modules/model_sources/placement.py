"""Where a downloaded file goes: the folder for its type, a safe free name, and whether it is here already.

A1111's folders, with the folder flags respected (`--ckpt-dir`, `--lora-dir`, `--embeddings-dir`,
`--hypernetwork-dir`, `--vae-dir`): Checkpoint → `models/Stable-diffusion`, LORA/LoCon/DoRA →
`models/Lora`, TextualInversion (and Civitai's "Negative" files) → `embeddings/`, Hypernetwork →
`models/hypernetworks`, VAE → `models/VAE`, Upscaler → `models/ESRGAN` (or `--esrgan-models-path`:
spandrel identifies the architecture, so every family's file works there), a checkpoint's config
`.yaml` beside it. Types Atelier
does not use are refused with the reason. A name is never reused: a clash gets `-1`, `-2`, ...
"""

from __future__ import annotations

import os
import re
import unicodedata
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

from modules.common.atomic_files import numbered_names
from modules.model_sources.types import ModelSourceError, RemoteFile

CHECKPOINT, LORA, EMBEDDING, HYPERNETWORK, VAE, CONFIG, UPSCALER = \
    "checkpoint", "lora", "embedding", "hypernetwork", "vae", "config", "upscaler"
MODEL_KINDS = (CHECKPOINT, LORA, EMBEDDING, HYPERNETWORK, VAE)

# Civitai's model types (and the names a user may pick for a plain URL) -> folder kind.
KIND_BY_TYPE: Mapping[str, str] = MappingProxyType({
    "Checkpoint": CHECKPOINT, "LORA": LORA, "LoCon": LORA, "DoRA": LORA, "LyCORIS": LORA,
    "TextualInversion": EMBEDDING, "Hypernetwork": HYPERNETWORK, "VAE": VAE, "Upscaler": UPSCALER,
})
# What a user picks for a source that does not say (a plain URL, some Hugging Face repos).
TYPE_CHOICES = ("Checkpoint", "LORA", "TextualInversion", "Hypernetwork", "VAE")
_NOT_USED = MappingProxyType({
    "Controlnet": "ControlNet models need the ControlNet extension; put them in its models folder by hand",
    "MotionModule": "motion modules are for video extensions (AnimateDiff), not used by Atelier",
    "AestheticGradient": "aesthetic gradients need an extension Atelier does not have",
    "Poses": "pose packs are images for ControlNet, not models",
    "Wildcards": "wildcard packs are text files for an extension, not models",
    "Workflows": "workflows are for ComfyUI",
    "Other": "Civitai files of type Other have no known folder",
})
EXTENSIONS_BY_KIND: Mapping[str, tuple[str, ...]] = MappingProxyType({
    CHECKPOINT: (".safetensors", ".ckpt"),
    LORA: (".safetensors", ".pt", ".ckpt"),
    EMBEDDING: (".safetensors", ".pt", ".bin", ".png", ".webp"),
    HYPERNETWORK: (".pt",),
    VAE: (".safetensors", ".pt", ".ckpt"),
    CONFIG: (".yaml",),
    UPSCALER: (".pth", ".pt", ".safetensors"),
})
MAX_NAME_LENGTH = 180  # below every file system's 255 bytes with room for "-NN", ".part" and sidecar suffixes
_UNSAFE_CHARS = re.compile(r'[\x00-\x1f\x7f<>:"/\\|?*]')


def kind_for(model_type: str | None, file: RemoteFile) -> str:
    """The folder kind for `file` of a model of `model_type`, or a ModelSourceError saying why not."""
    if file.file_type == "Negative":  # a negative embedding shipped with a TI model
        return EMBEDDING
    if file.file_type == "Config" or file.extension == "yaml":
        return CONFIG
    if file.file_type == "VAE" and model_type == "Checkpoint":  # the VAE file of a checkpoint version
        return VAE
    if model_type is None:
        raise ModelSourceError(f"the source does not say what kind of model {file.name!r} is; choose its type "
                               f"({', '.join(TYPE_CHOICES)})", status=422)
    if model_type in KIND_BY_TYPE:
        return KIND_BY_TYPE[model_type]
    reason = _NOT_USED.get(model_type, "Atelier has no folder for it")
    raise ModelSourceError(f"{model_type} models cannot be downloaded here: {reason}", status=422)


def kind_for_type_name(model_type: str) -> str:
    """The folder kind a user picked by type name; ModelSourceError for an unknown one."""
    if model_type in KIND_BY_TYPE:
        return KIND_BY_TYPE[model_type]
    raise ModelSourceError(f"model type {model_type!r} is not one Atelier can place; choose one of "
                           f"{', '.join(TYPE_CHOICES)}", status=422)


def folder_for(kind: str, paths) -> Path:
    """The folder files of `kind` are saved in (`paths`: modules.serving.paths.Paths). A folder flag
    wins: the user pointed Atelier at the folder they keep those files in."""
    if kind in (CHECKPOINT, CONFIG):
        return paths.ckpt_dir or paths.checkpoints_dir
    if kind == LORA:
        return paths.lora_dir
    if kind == EMBEDDING:
        return paths.embeddings_dir
    if kind == HYPERNETWORK:
        return paths.hypernetwork_dir
    if kind == VAE:
        return paths.extra_vae_dir or paths.vae_dir
    if kind == UPSCALER:
        return paths.upscaler_dirs("ESRGAN")[0]
    raise ValueError(f"unknown model kind {kind!r}; expected one of {MODEL_KINDS + (CONFIG, UPSCALER)}")


def safe_file_name(name: str, kind: str) -> str:
    """`name` (from a source: never trusted) as a plain file name for `kind`: no folders, no control
    or reserved characters, no leading dots, at most MAX_NAME_LENGTH characters, an extension the
    folder's scanner reads. ModelSourceError when nothing usable is left or the extension is wrong."""
    base = unicodedata.normalize("NFC", name.replace("\\", "/").rsplit("/", 1)[-1])
    base = _UNSAFE_CHARS.sub("_", base).strip().lstrip(".").strip()
    stem, extension = os.path.splitext(base)
    allowed = EXTENSIONS_BY_KIND[kind]
    if extension.lower() not in allowed:
        raise ModelSourceError(f"{name!r} is not a file the {kind} folder uses: expected {' or '.join(allowed)}; "
                               "pick another file of the model", status=422)
    stem = stem.rstrip(". ")
    if kind == CHECKPOINT and stem.lower().endswith(".vae"):  # `*.vae.*` in the checkpoint folder is a VAE
        stem = stem[:-4] + "_vae"
    if not stem or stem in (".", ".."):
        raise ModelSourceError(f"{name!r} has no usable file name", status=422)
    stem = stem[:MAX_NAME_LENGTH - len(extension)]
    return stem + extension.lower()


def free_destination(folder: Path, name: str, taken: set[Path] = frozenset()) -> Path:
    """The first of `name`, `name-1`, `name-2`, ... in `folder` that no file holds (and no download
    in progress has `taken`). A `.part` of the same name is kept: it is this file's earlier,
    interrupted download, which the downloader resumes (and verifies)."""
    for candidate in numbered_names(folder / name):
        if candidate in taken or candidate.exists() or _sidecar_clash(candidate):
            continue
        return candidate
    raise ModelSourceError(f"no free file name for {name!r} in {folder}", status=409)


def _sidecar_clash(candidate: Path) -> bool:
    """A new model must not inherit another's card: a `<stem>.json` / preview left by a deleted file
    with a different name is fine, but one beside a same-stem model of another extension is not."""
    stem = candidate.stem
    for sibling in candidate.parent.glob(f"{glob_escape(stem)}.*"):
        if sibling.suffix.lower() in (".safetensors", ".ckpt", ".pt", ".bin") and sibling.name != candidate.name:
            return True
    return False


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


def config_destination(checkpoint: Path) -> Path:
    """A checkpoint's config goes beside it with its stem (`model.safetensors` → `model.yaml`), as
    A1111 looks for it."""
    return checkpoint.with_suffix(".yaml")


def size_matches(path: Path, file: RemoteFile) -> bool:
    """Whether `path` could be `file` by size: exact when the source gives bytes, within 1 KiB of
    Civitai's rounded KB figure otherwise. Unknown size: any."""
    try:
        actual = path.stat().st_size
    except OSError:
        return False
    if file.size is None:
        return True
    return actual == file.size if file.exact_size else abs(actual - file.size) <= 1024
