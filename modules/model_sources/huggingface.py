"""Hugging Face repos (through huggingface_hub) and plain https links, read into `RemoteModel`.

huggingface_hub does what it does well here: `HfApi.model_info(files_metadata=True)` lists a repo's
files with exact sizes and, for LFS files, their sha256; `get_hf_file_metadata` resolves a
`resolve/` URL (size, sha256 from `X-Linked-Etag`) and tells a gated or private repo from a missing
one before any byte is fetched; tokens and `HF_ENDPOINT` are its business. The transfer itself is
ours (modules.model_sources.downloader): the file's `download_url` is the `resolve/` URL pinned to
the commit listed, so the bytes match the published sha256 even if the branch moves meanwhile.

Atelier loads single-file checkpoints, so a repo in diffusers layout (model_index.json and weights
in component folders only) is refused with the reason. The type is inferred only where the repo
says it (tags) or the file makes it plain (size of a full checkpoint, "vae" in a VAE's name);
otherwise it stays None and the user picks.

`lookup_url` reads a plain https link with a HEAD (or a one-byte ranged GET when HEAD is refused):
name from Content-Disposition or the path, exact size, and a refusal when it answers a web page.
"""

from __future__ import annotations

import posixpath
from dataclasses import replace
from email.message import Message
from typing import Any, Iterable
from urllib.parse import unquote, urlsplit

from modules.model_sources.http import GuardedHttp, shown_url
from modules.model_sources.refs import SHA256_HEX, HuggingFaceRef, UrlRef
from modules.model_sources.types import CONTENT_LEVELS, ModelSourceError, PreviewImage, RemoteFile, RemoteModel

NEEDS_TOKEN = "needs a Hugging Face token: Settings → Model sources"
WEIGHT_EXTENSIONS = frozenset({"safetensors", "ckpt", "bin", "pt", "pth"})
CONFIG_EXTENSIONS = frozenset({"yaml", "yml"})
# Folders of a diffusers-layout repo: their weights are parts of a pipeline, not single-file models.
DIFFUSERS_FOLDERS = frozenset({"unet", "vae", "text_encoder", "text_encoder_2", "text_encoder_3", "tokenizer",
                               "tokenizer_2", "tokenizer_3", "scheduler", "safety_checker", "feature_extractor",
                               "transformer", "image_encoder", "prior", "decoder", "movq"})
CHECKPOINT_MIN_BYTES = 1_900_000_000  # SD 1.5 pruned fp16 is ~2.0 GB; LoRAs and VAEs stay below
README_MAX_BYTES = 256 << 10
# Hugging Face base-model repos -> the base-model names Civitai uses (and the cards' "sd version")
BASE_MODELS = {
    "runwayml/stable-diffusion-v1-5": "SD 1.5", "stable-diffusion-v1-5/stable-diffusion-v1-5": "SD 1.5",
    "CompVis/stable-diffusion-v1-4": "SD 1.4", "stabilityai/stable-diffusion-2-1": "SD 2.1 768",
    "stabilityai/stable-diffusion-2-1-base": "SD 2.1", "stabilityai/stable-diffusion-xl-base-1.0": "SDXL 1.0",
    "stabilityai/sdxl-turbo": "SDXL Turbo", "stabilityai/stable-diffusion-3-medium-diffusers": "SD 3",
    "black-forest-labs/FLUX.1-dev": "Flux.1 D", "black-forest-labs/FLUX.1-schnell": "Flux.1 S",
}
_FORMATS = {"safetensors": "SafeTensor", "ckpt": "PickleTensor", "bin": "PickleTensor", "pt": "PickleTensor",
            "pth": "PickleTensor"}


def _extension(name: str) -> str:
    return name.rsplit(".", 1)[-1].lower() if "." in name.rsplit("/", 1)[-1] else ""


def _name_hints(name: str) -> tuple[str | None, str | None]:
    """(precision, pruned/full) as a file name says them, e.g. "v1-5-pruned-emaonly-fp16.safetensors"."""
    lowered = name.lower()
    precision = next((p for p in ("fp16", "bf16", "fp32", "fp8") if p in lowered), None)
    size_kind = "pruned" if "pruned" in lowered else "full" if "full" in lowered else None
    return precision, size_kind


class HuggingFaceClient:
    """Look-ups on one Hugging Face endpoint (`endpoint`: HF_ENDPOINT / huggingface.co by default, or a
    test's fake hub). `token` is sent by huggingface_hub to that endpoint only; without one, no token
    is sent (not even one saved on this machine by `hf auth login`, which the downloader would not
    have)."""

    def __init__(self, *, endpoint: str | None = None, token: str | None = None):
        from huggingface_hub import HfApi, constants

        self.endpoint = (endpoint or constants.ENDPOINT).rstrip("/")
        self.token = token or None
        self._api = HfApi(endpoint=self.endpoint, token=self.token or False)

    def file_url(self, repo_id: str, filename: str, revision: str | None = None) -> str:
        """The `resolve/` URL of a file (what the downloader requests; the Hub redirects to its CDN)."""
        from huggingface_hub import hf_hub_url

        return hf_hub_url(repo_id, filename, revision=revision, endpoint=self.endpoint)

    def file_metadata(self, repo_id: str, filename: str, revision: str | None = None):
        """huggingface_hub's HfFileMetadata (size, etag = sha256 for LFS files, commit, CDN location)."""
        from huggingface_hub import get_hf_file_metadata

        url = self.file_url(repo_id, filename, revision)
        with self._explained(repo_id, revision, filename):
            return get_hf_file_metadata(url, token=self.token or False, endpoint=self.endpoint)

    def lookup(self, ref: HuggingFaceRef) -> RemoteModel:
        """The repo's weight files (and .yaml configs) with sha256 and exact sizes, or the one file
        `ref` names; its card's license, base model and instance prompt."""
        with self._explained(ref.repo_id, ref.revision, None):
            info = self._api.model_info(ref.repo_id, revision=ref.revision, files_metadata=True)
        commit = info.sha or ref.revision or "main"
        siblings = {s.rfilename: s for s in info.siblings or []}
        if ref.filename is not None:
            if ref.filename not in siblings:
                raise ModelSourceError(f"{ref.repo_id} has no file {ref.filename!r}; its model files are "
                                       f"{_listing(siblings)}", status=404)
            chosen = [ref.filename]
        else:
            chosen = self._model_files(ref.repo_id, siblings)
        files = tuple(self._file(ref.repo_id, siblings[name], commit) for name in chosen)
        card = _card_dict(info)
        remote_name = ref.repo_id.split("/", 1)[1]
        remote = RemoteModel(
            source="huggingface", name=remote_name, model_type=None, files=files, version_name=commit[:12],
            base_model=_base_model(card.get("base_model")), description=self._readme(ref.repo_id, commit, siblings),
            trigger_words=_trigger_words(card), license=_license(card),
            page_url=f"{self.endpoint}/{ref.repo_id}", previews=self._previews(ref.repo_id, commit, card, info),
            model_id=ref.repo_id, version_id=commit, raw_version=None)
        # One HEAD for the file a user gets by default: a gated or private repo shows here, with the
        # way to get access, and not halfway into a download.
        wanted = remote.default_file()
        metadata = self.file_metadata(ref.repo_id, wanted.name, commit)
        if wanted.sha256 is None and metadata.etag and SHA256_HEX.fullmatch(metadata.etag):
            # an LFS file the listing gave no hash for: its X-Linked-Etag is the sha256
            size = wanted.size if wanted.size is not None else metadata.size
            filled = replace(wanted, sha256=metadata.etag, size=size, exact_size=size is not None)
            remote = replace(remote, files=tuple(filled if f is wanted else f for f in remote.files))
            wanted = filled
        tags = [*(info.tags or []), *(card.get("tags") or [])]
        return replace(remote, model_type=infer_type(tags, wanted))

    def _model_files(self, repo_id: str, siblings: dict[str, Any]) -> list[str]:
        diffusers = "model_index.json" in siblings
        weights = [name for name in siblings if _extension(name) in WEIGHT_EXTENSIONS
                   and not (diffusers and name.split("/", 1)[0] in DIFFUSERS_FOLDERS and "/" in name)]
        if not weights:
            if diffusers:
                raise ModelSourceError(f"{repo_id} is in diffusers format (model_index.json with weights in "
                                       "component folders); Atelier loads single-file checkpoints — look for a "
                                       ".safetensors at the repo root, or in another repo of the same model",
                                       status=422)
            raise ModelSourceError(f"{repo_id} has no model files (.safetensors, .ckpt, .bin, .pt, .pth); its files: "
                                   f"{sorted(siblings)[:20]}", status=422)
        configs = [name for name in siblings if _extension(name) in CONFIG_EXTENSIONS]
        # root files first: the repo's main model is at its root, variants and extras in folders
        by_place = lambda name: (name.count("/"), name)  # noqa: E731
        return sorted(weights, key=by_place) + sorted(configs, key=by_place)

    def _file(self, repo_id: str, sibling: Any, commit: str) -> RemoteFile:
        name = sibling.rfilename
        extension = _extension(name)
        precision, size_kind = _name_hints(name)
        lfs = getattr(sibling, "lfs", None)
        sha256 = (lfs.sha256 if lfs is not None else None) or None
        size = lfs.size if lfs is not None else sibling.size
        return RemoteFile(
            name=name, download_url=self.file_url(repo_id, name, commit), size=size,
            sha256=sha256.lower() if sha256 else None, format=_FORMATS.get(extension, "Other"),
            precision=precision, size_kind=size_kind,
            file_type="Config" if extension in CONFIG_EXTENSIONS else "Model", exact_size=size is not None)

    def _readme(self, repo_id: str, commit: str, siblings: dict[str, Any]) -> str:
        """The model card's Markdown without its YAML header; "" when absent or unreadable."""
        if "README.md" not in siblings:
            return ""
        from huggingface_hub.utils import build_hf_headers, get_session

        try:
            response = get_session().get(self.file_url(repo_id, "README.md", commit),
                                         headers=build_hf_headers(token=self.token or False),
                                         follow_redirects=False, timeout=10)
        except Exception:  # noqa: BLE001 - a missing description must not fail the look-up
            return ""
        if response.status_code != 200 or len(response.content) > README_MAX_BYTES:
            return ""
        text = response.content.decode("utf-8", errors="replace")
        if text.startswith("---"):
            end = text.find("\n---", 3)
            text = text[end + 4:] if end != -1 else text
        return text.strip()

    def _previews(self, repo_id: str, commit: str, card: dict[str, Any], info: Any) -> tuple[PreviewImage, ...]:
        """Images of the card's widget (diffusers LoRA cards list their sample outputs there). The Hub
        has no rating but the `not-for-all-audiences` tag, which counts as the highest level."""
        tags = {str(t).lower() for t in [*(info.tags or []), *(card.get("tags") or [])]}
        level = CONTENT_LEVELS["XXX"] if "not-for-all-audiences" in tags else CONTENT_LEVELS["PG"]
        previews = []
        for entry in card.get("widget") or []:
            output = entry.get("output") if isinstance(entry, dict) else None
            url = output.get("url") if isinstance(output, dict) else None
            if not isinstance(url, str) or not url:
                continue
            if not urlsplit(url).scheme:
                url = self.file_url(repo_id, url.lstrip("/"), commit)
            if urlsplit(url).scheme != "https" and not url.startswith(self.endpoint):
                continue
            previews.append(PreviewImage(url=url, nsfw_level=level,
                                         media_type="video" if _extension(url) in ("mp4", "webm") else "image"))
        return tuple(previews)

    def _explained(self, repo_id: str, revision: str | None, filename: str | None):
        return _HubErrors(self, repo_id, revision, filename)


class _HubErrors:
    """Turns huggingface_hub's exceptions into ModelSourceErrors that say what to do."""

    def __init__(self, client: HuggingFaceClient, repo_id: str, revision: str | None, filename: str | None):
        self.client, self.repo_id, self.revision, self.filename = client, repo_id, revision, filename

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, error, traceback) -> bool:
        if error is None:
            return False
        import httpx2
        from huggingface_hub.errors import (
            GatedRepoError,
            HFValidationError,
            HfHubHTTPError,
            OfflineModeIsEnabled,
            RemoteEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        page = f"{self.client.endpoint}/{self.repo_id}"
        if isinstance(error, GatedRepoError):
            if self.client.token:
                message = (f"{self.repo_id} is gated and the Hugging Face token in Settings → Model sources has no "
                           f"access yet: accept the model's terms on {page} with that account")
            else:
                message = f"{self.repo_id} is gated: accept its terms on {page}; the download {NEEDS_TOKEN}"
            raise ModelSourceError(message, status=403) from None
        if isinstance(error, RepositoryNotFoundError):
            message = f"Hugging Face has no model repo {self.repo_id!r}"
            if not self.client.token:
                message += f" — or it is private, which {NEEDS_TOKEN}"
            raise ModelSourceError(message + "; check the name (org/name)", status=404) from None
        if isinstance(error, RevisionNotFoundError):
            raise ModelSourceError(f"{self.repo_id} has no revision {self.revision!r} (a branch, tag or commit); "
                                   "leave it out for 'main'", status=404) from None
        if isinstance(error, RemoteEntryNotFoundError):
            raise ModelSourceError(f"{self.repo_id} has no file {self.filename!r}", status=404) from None
        if isinstance(error, OfflineModeIsEnabled):
            raise ModelSourceError("Hugging Face look-ups are off: HF_HUB_OFFLINE is set for this server; unset it "
                                   "to look up and download models", status=503) from None
        if isinstance(error, HfHubHTTPError):
            status = error.response.status_code if error.response is not None else 502
            hint = "; the Hub is rate-limiting, try again in a minute" if status == 429 else ""
            raise ModelSourceError(f"Hugging Face answered HTTP {status} for {self.repo_id}{hint}",
                                   status=429 if status == 429 else 502) from None
        if isinstance(error, HFValidationError):
            raise ModelSourceError(f"{self.repo_id!r} is not a Hugging Face repo id ('org/name'): {error}",
                                   status=400) from None
        if isinstance(error, (KeyError, TypeError, ValueError)) and not isinstance(error, ModelSourceError):
            raise ModelSourceError(f"{self.client.endpoint} answered about {self.repo_id} with something that is not "
                                   f"a model listing ({type(error).__name__})", status=502) from None
        if isinstance(error, httpx2.HTTPError):
            raise ModelSourceError(f"could not reach {self.client.endpoint} ({type(error).__name__}); check the "
                                   "connection and try again", status=502) from None
        return False


def _listing(siblings: Iterable[str]) -> str:
    names = [n for n in siblings if _extension(n) in WEIGHT_EXTENSIONS | CONFIG_EXTENSIONS]
    return ", ".join(sorted(names)[:30]) or f"none (files: {', '.join(sorted(siblings)[:20])})"


def _card_dict(info: Any) -> dict[str, Any]:
    card = getattr(info, "card_data", None)
    if card is None:
        return {}
    try:
        return dict(card.to_dict())
    except Exception:  # noqa: BLE001 - a malformed card is no reason to refuse the files
        return {}


def _base_model(value: Any) -> str | None:
    if isinstance(value, list):
        value = value[0] if value else None
    if not isinstance(value, str) or not value.strip():
        return None
    return BASE_MODELS.get(value.strip(), value.strip())


def _license(card: dict[str, Any]) -> str:
    license_id = card.get("license")
    if not isinstance(license_id, str):
        return ""
    if license_id == "other" and isinstance(card.get("license_name"), str):
        return f"other: {card['license_name']}"
    return license_id


def _trigger_words(card: dict[str, Any]) -> tuple[str, ...]:
    """The DreamBooth/LoRA card's `instance_prompt` (a string or a list): the words that call it up."""
    value = card.get("instance_prompt")
    words = value if isinstance(value, list) else [value]
    return tuple(dict.fromkeys(w.strip() for w in words if isinstance(w, str) and w.strip()))


def infer_type(tags: Iterable[Any], file: RemoteFile) -> str | None:
    """Civitai's type name for `file` of a repo with `tags`, or None when nothing says it."""
    lowered = {str(t).lower() for t in tags}
    if file.file_type == "Config":
        return None
    if lowered & {"lora", "lycoris", "template:sd-lora"} or any(t.startswith("lora:") for t in lowered):
        return "LORA"
    if lowered & {"textual_inversion", "textual-inversion", "embedding", "embeddings"}:
        return "TextualInversion"
    base = file.name.rsplit("/", 1)[-1].lower()
    if "vae" in base and (file.size or 0) < CHECKPOINT_MIN_BYTES:
        return "VAE"
    if (file.size or 0) >= CHECKPOINT_MIN_BYTES:
        return "Checkpoint"
    return None


# ----- plain https links


def _disposition_name(value: str | None) -> str | None:
    if not value:
        return None
    message = Message()
    message["Content-Disposition"] = value
    try:
        name = message.get_filename()
    except (ValueError, LookupError):
        return None
    return name


def _clean_name(name: str | None) -> str | None:
    """A file name from a host (never trusted): the last path part, no control characters."""
    if not name:
        return None
    base = posixpath.basename(name.replace("\\", "/")).strip()
    base = "".join(ch for ch in base if ch.isprintable())[:200]
    return base if base not in ("", ".", "..") else None


def lookup_url(ref: UrlRef, http: GuardedHttp) -> RemoteModel:
    """What a direct https link says about its file: name (Content-Disposition, else the path), exact
    size, type unknown. Refuses a link that answers a web page or JSON instead of a file."""
    response = http.open(ref.url, method="HEAD")
    response.close()
    size: int | None = response.content_length if 200 <= response.status < 300 else None
    if not 200 <= response.status < 300 or size is None:
        # HEAD refused (405/403/501 on some storage) or without a length: ask for one byte instead
        response = http.open(ref.url, headers={"Range": "bytes=0-0"})
        try:
            if not 200 <= response.status < 300:
                raise http.status_error(response, ref.url)
            size = _total_size(response)
        finally:
            response.close()
    content_type = response.content_type.split(";", 1)[0].strip().lower()
    if content_type.startswith("text/") or content_type in ("application/json", "application/xhtml+xml"):
        raise ModelSourceError(f"{shown_url(ref.url)} answers with a {content_type} page, not a model file; copy "
                               "the file's direct download link (right-click the download button)", status=422)
    final_path = unquote(urlsplit(response.url).path)
    name = (_clean_name(_disposition_name(response.headers.get("Content-Disposition")))
            or _clean_name(final_path) or _clean_name(unquote(urlsplit(ref.url).path)) or "download")
    extension = _extension(name)
    precision, size_kind = _name_hints(name)
    parts = urlsplit(ref.url)
    file = RemoteFile(name=name, download_url=ref.url, size=size, sha256=None,
                      format=_FORMATS.get(extension, "Other"), precision=precision, size_kind=size_kind,
                      file_type="Config" if extension in CONFIG_EXTENSIONS else "Model", exact_size=size is not None)
    stem = name.rsplit(".", 1)[0] if "." in name else name
    return RemoteModel(source="url", name=stem, model_type=None, files=(file,),
                       page_url=parts._replace(query="", fragment="").geturl(), model_id=None, version_id=None)


def _total_size(response) -> int | None:
    """The full size from a ranged answer: `Content-Range: bytes 0-0/N`, or Content-Length of a 200."""
    if response.status == 206:
        total = (response.headers.get("Content-Range") or "").rsplit("/", 1)[-1].strip()
        return int(total) if total.isdigit() else None
    return response.content_length
