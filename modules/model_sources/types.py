"""What a model source says about a model, before anything is downloaded.

One shape for every source (Civitai, Hugging Face, a plain https URL), so that the look-up card,
the folder choice, the downloader and the sidecars never care where a file came from. Field names
follow Civitai's public API where it has them (it is the richest source); Hugging Face and plain
URLs fill what they know and leave the rest empty.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

# Civitai's `nsfwLevel` is a bit field: 1 PG, 2 PG-13, 4 R, 8 X, 16 XXX (32: blocked). A content
# limit is the highest level a preview may have.
CONTENT_LEVELS: Mapping[str, int] = MappingProxyType({"PG": 1, "PG-13": 2, "R": 4, "X": 8, "XXX": 16})


class ModelSourceError(ValueError):
    """A source could not be read or a file could not be fetched; the message says what came back
    and what to do. `status` is the HTTP status to answer an API client with."""

    def __init__(self, message: str, *, status: int = 422):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class RemoteFile:
    """One downloadable file of a model version."""

    name: str
    download_url: str
    size: int | None = None  # bytes, as published (Civitai publishes KB: rounded, so not used to verify)
    sha256: str | None = None  # lower-case hex, as published; None when the source publishes none
    format: str = "Other"  # Civitai's names: "SafeTensor", "PickleTensor", "Diffusers", "Other"...
    precision: str | None = None  # "fp16", "fp32", "bf16"
    size_kind: str | None = None  # "pruned" or "full"
    pickle_scan: str | None = None  # Civitai's pickleScanResult: "Success", "Danger", "Pending", "Error"
    virus_scan: str | None = None
    primary: bool = False
    file_type: str = "Model"  # Civitai's type: "Model", "Pruned Model", "Negative", "Config", "VAE", ...
    exact_size: bool = False  # True when `size` is exact bytes (Hugging Face, Content-Length) and can verify

    @property
    def extension(self) -> str:
        return self.name.rsplit(".", 1)[-1].lower() if "." in self.name else ""


@dataclass(frozen=True)
class PreviewImage:
    url: str
    nsfw_level: int = 1  # Civitai's level (bit value); 1 (PG) when the source has no rating
    media_type: str = "image"  # "image" or "video"
    width: int | None = None
    height: int | None = None


@dataclass(frozen=True)
class RemoteModel:
    """A model version as a source describes it. `raw_version` is the source's own JSON (Civitai's
    model-version object), written verbatim as `<name>.civitai.info`."""

    source: str  # "civitai", "huggingface" or "url"
    name: str
    model_type: str | None  # Civitai's type names: "Checkpoint", "LORA", "LoCon", "DoRA", "TextualInversion",
    #                         "Hypernetwork", "VAE", ...; None when the source does not say (then the user picks)
    files: tuple[RemoteFile, ...]
    version_name: str | None = None
    base_model: str | None = None  # Civitai's baseModel: "SD 1.5", "SDXL 1.0", "SD 2.1", "Pony", ...
    description: str = ""  # HTML (Civitai) or Markdown (Hugging Face card)
    trigger_words: tuple[str, ...] = ()
    license: str = ""  # one line: an SPDX-like id (Hugging Face) or Civitai's permissions summarised
    page_url: str = ""
    previews: tuple[PreviewImage, ...] = ()
    model_id: str | None = None  # Civitai model id, or Hugging Face repo id
    version_id: str | None = None  # Civitai model-version id, or Hugging Face commit/revision
    raw_version: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)

    def file_named(self, name: str) -> RemoteFile:
        for candidate in self.files:
            if candidate.name == name:
                return candidate
        raise ModelSourceError(f"{self.name} has no file named {name!r}; its files are "
                               f"{[f.name for f in self.files]}")

    def default_file(self) -> RemoteFile:
        """The file a user gets without choosing: the primary SafeTensor, else the first SafeTensor,
        else the primary file, else the first."""
        if not self.files:
            raise ModelSourceError(f"{self.name} has no downloadable files")
        safetensors = [f for f in self.files if f.format == "SafeTensor" or f.extension == "safetensors"]
        for group in ([f for f in safetensors if f.primary], safetensors,
                      [f for f in self.files if f.primary], list(self.files)):
            if group:
                return group[0]
        raise AssertionError("unreachable")
