"""The Models tab's and `/atelier/v1/models` API's one service: look up, download, cards, tools.

`ModelSources` (one per app: `AppContext.model_sources`) owns the downloads: each runs on a small
thread pool of its own, never on the generation queue, so a 6 GB download does not hold up
pictures. Their state lives here, not in a page, so a reloaded page finds its progress bars again.
A finished file is verified (size, sha256 against the source's published hash), renamed into its
folder, its hash stored in `cache.json`, its cards written beside it, and its list refreshed, so
it is in the dropdown at once.

Who may do what (DESIGN.md "Security"): look-ups and inspecting read only; downloads, cards and
conversions write to the model folders and fetch from the network on the server's behalf, so
beyond localhost they need an auth flag and `--enable-model-downloads`
(modules.serving.cmd_args.model_downloads_refusal). Every fetch goes through the SSRF guard
(modules.model_sources.http), which allows private addresses only with the
`model_sources_allow_private` setting.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Mapping
from urllib.parse import urlsplit

from modules.library.checkpoints import walk_sorted
from modules.model_sources import placement
from modules.model_sources.placement import CHECKPOINT, CONFIG, EMBEDDING, LORA, MODEL_KINDS
from modules.model_sources.types import CONTENT_LEVELS, ModelSourceError, RemoteFile, RemoteModel

if TYPE_CHECKING:
    from modules.model_sources.http import GuardedHttp

log = logging.getLogger(__name__)

CIVITAI_URL = "https://civitai.com"
# A mirror or a test stand-in for Civitai's API (Hugging Face's is HF_ENDPOINT, read by huggingface_hub).
CIVITAI_ENDPOINT_ENV = "ATELIER_CIVITAI_ENDPOINT"
PREVIEW_MAX_BYTES = 16 << 20
KEEP_FINISHED = 50  # finished downloads listed as "recent"
ACTIVE_STATES = frozenset({"queued", "checking", "running", "verifying"})
TOOLS = ("convert", "prune-ema", "fp16")
NEEDS_CIVITAI_KEY = "this file needs a Civitai API key: Settings → Model sources"
NEEDS_HF_TOKEN = "this file needs a Hugging Face token: Settings → Model sources"


@dataclass(frozen=True)
class LookupResult:
    """What the look-up card shows before anything is downloaded."""

    remote: RemoteModel
    kind: str | None  # the folder kind of the default file; None when refused or the type is unknown
    folder: str | None
    refusal: str | None  # why the default file cannot be downloaded as it stands
    default_file: str
    existing: Mapping[str, str] = field(default_factory=dict)  # file name -> local file with its sha256
    preview_url: str | None = None  # the preview within the content limit

    def to_json(self) -> dict[str, Any]:
        remote = self.remote
        return {
            "source": remote.source, "name": remote.name, "version": remote.version_name,
            "type": remote.model_type, "base_model": remote.base_model, "description": remote.description,
            "trigger_words": list(remote.trigger_words), "license": remote.license, "page_url": remote.page_url,
            "model_id": remote.model_id, "version_id": remote.version_id,
            "files": [{"name": f.name, "size": f.size, "sha256": f.sha256, "format": f.format,
                       "precision": f.precision, "size_kind": f.size_kind, "pickle_scan": f.pickle_scan,
                       "virus_scan": f.virus_scan, "primary": f.primary, "type": f.file_type,
                       "existing": self.existing.get(f.name)} for f in remote.files],
            "kind": self.kind, "folder": self.folder, "refusal": self.refusal, "default_file": self.default_file,
            "preview_url": self.preview_url,
        }


@dataclass(frozen=True)
class DownloadStatus:
    """A snapshot of one download, for the progress bars and the API."""

    id: str
    source: str
    model_name: str
    file_name: str
    kind: str
    state: str  # "queued" | "checking" | "running" | "verifying" | "done" | "failed" | "cancelled" | "exists"
    bytes_done: int = 0
    total: int | None = None
    speed: float = 0.0  # bytes per second
    eta: float | None = None  # seconds
    destination: str | None = None
    error: str | None = None
    message: str = ""
    started: float = 0.0
    finished: float | None = None

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "source": self.source, "model_name": self.model_name, "file_name": self.file_name,
                "kind": self.kind, "state": self.state, "bytes_done": self.bytes_done, "total": self.total,
                "speed": round(self.speed, 1), "eta": None if self.eta is None else round(self.eta, 1),
                "destination": self.destination, "error": self.error, "message": self.message,
                "started": self.started, "finished": self.finished}


@dataclass
class _Download:
    """A download's mutable record; read and changed only under ModelSources._lock."""

    status: DownloadStatus
    remote: RemoteModel
    file: RemoteFile
    cancel: threading.Event = field(default_factory=threading.Event)
    destination: Path | None = None


class ModelSources:
    """See the module docstring. `context`: the AppContext (its paths, settings, hash cache and
    lists; not imported here, since the context makes this service). `civitai_base_url` / `hf_endpoint`: another Civitai or Hugging Face
    (a mirror, or the tests' fake hosts); default Civitai's, and huggingface_hub's (HF_ENDPOINT)."""

    def __init__(self, context: Any, *, civitai_base_url: str | None = None, hf_endpoint: str | None = None,
                 max_parallel: int = 2):
        self._context = context
        self.civitai_base_url = (civitai_base_url or os.environ.get(CIVITAI_ENDPOINT_ENV) or CIVITAI_URL).rstrip("/")
        self.hf_endpoint = hf_endpoint
        self._lock = threading.Lock()
        self._downloads: dict[str, _Download] = {}
        self._ids = itertools.count(1)
        # At most `max_parallel` transfers at once; the threads are daemons, so stopping the server
        # never waits for a download (its `.part` stays, and the next download of it resumes).
        self._slots = threading.BoundedSemaphore(max_parallel)

    # ----- access and clients

    def check_write_access(self) -> None:
        """ModelSourceError (403) when this server refuses downloads and conversions (see module doc)."""
        from modules.serving.cmd_args import model_downloads_refusal

        refusal = model_downloads_refusal(self._context.args)
        if refusal:
            raise ModelSourceError(refusal, status=403)

    def _setting(self, key: str) -> Any:
        return self._context.settings.current()[key]

    def tokens(self) -> tuple[str, str]:
        """(Hugging Face token, Civitai API key): the settings, else HF_TOKEN / CIVITAI_API_KEY."""
        hf = self._setting("hf_token") or os.environ.get("HF_TOKEN", "")
        civitai = self._setting("civitai_api_key") or os.environ.get("CIVITAI_API_KEY", "")
        return hf.strip(), civitai.strip()

    def http(self) -> GuardedHttp:
        """A guarded client that sends each token only to its own host."""
        from modules.model_sources.http import GuardedHttp, HostCredential

        hf_token, civitai_key = self.tokens()
        credentials = []
        if civitai_key:
            credentials.append(_credential(HostCredential, self.civitai_base_url, civitai_key))
        if hf_token:
            credentials.append(_credential(HostCredential, self._hf_endpoint_url(), hf_token))
        return GuardedHttp(allow_private=bool(self._setting("model_sources_allow_private")), credentials=credentials)

    def _hf_endpoint_url(self) -> str:
        if self.hf_endpoint:
            return self.hf_endpoint
        from huggingface_hub import constants

        return constants.ENDPOINT

    def _civitai(self, http: GuardedHttp | None = None):
        from modules.model_sources.civitai import CivitaiClient

        return CivitaiClient(http or self.http(), base_url=self.civitai_base_url)

    def _huggingface(self):
        from modules.model_sources.huggingface import HuggingFaceClient

        return HuggingFaceClient(endpoint=self.hf_endpoint, token=self.tokens()[0] or None)

    # ----- look-up

    def resolve(self, source: str) -> RemoteModel:
        """What `source` (any form modules.model_sources.refs accepts) says about its model."""
        from modules.model_sources.refs import CivitaiRef, HuggingFaceRef, parse_source

        ref = parse_source(source, allow_http=bool(self._setting("model_sources_allow_private")))
        if isinstance(ref, CivitaiRef):
            return self._civitai().lookup(ref)
        if isinstance(ref, HuggingFaceRef):
            return self._huggingface().lookup(ref)
        from modules.model_sources.huggingface import lookup_url

        return lookup_url(ref, self.http())

    def lookup(self, source: str) -> LookupResult:
        remote = self.resolve(source)
        default = remote.default_file()
        kind = folder = refusal = None
        try:
            kind = placement.kind_for(remote.model_type, default)
            folder = str(placement.folder_for(kind, self._context.paths))
            placement.safe_file_name(default.name, kind)
        except ModelSourceError as e:
            refusal = str(e)
        existing = {}
        for file in remote.files:
            try:
                file_kind = placement.kind_for(remote.model_type, file)
            except ModelSourceError:
                continue
            found = self.find_existing(file, file_kind, compute=False)
            if found is not None:
                existing[file.name] = str(found)
        preview = self.choose_preview(remote)
        return LookupResult(remote, kind, folder, refusal, default.name, MappingProxyType(existing),
                            preview.url if preview else None)

    def choose_preview(self, remote: RemoteModel):
        from modules.model_sources.cards import choose_preview

        return choose_preview(remote, CONTENT_LEVELS[self._setting("model_preview_max_rating")])

    def preview_bytes(self, url: str) -> bytes:
        """A preview image fetched through the guard (for the look-up card: the page never loads
        images from other hosts)."""
        return self.http().get_bytes(url, max_bytes=PREVIEW_MAX_BYTES)[0]

    # ----- files already here

    def _roots(self, kind: str) -> list[Path]:
        if kind in (CHECKPOINT, CONFIG):
            return [Path(d) for d in self._context.checkpoints.dirs]
        return [placement.folder_for(kind, self._context.paths)]

    def _cache_title(self, kind: str, root: Path, path: Path) -> str:
        """The title the kind's registry keeps the file's hash under in cache.json (A1111's)."""
        relative = path.relative_to(root).as_posix()
        if kind == CHECKPOINT:
            return "checkpoint/" + relative
        if kind == LORA:
            return "lora/" + path.stem
        if kind == EMBEDDING:
            return "textual_inversion/" + path.stem
        return f"{kind}/{relative}"

    def _files(self, kind: str):
        """(root, path) of every file of `kind` a scan lists."""
        extensions = placement.EXTENSIONS_BY_KIND[kind]
        for root in self._roots(kind):
            if not root.is_dir():
                continue
            for folder, names in walk_sorted(root):
                for name in names:
                    if os.path.splitext(name)[1].lower() in extensions and ".preview." not in name.lower():
                        yield root, Path(folder, name)

    def find_existing(self, file: RemoteFile, kind: str, *, compute: bool = True) -> Path | None:
        """A local file of `kind` whose sha256 is `file.sha256` (files of a matching size only; hashes
        from cache.json, computed and stored when `compute`)."""
        if not file.sha256:
            return None
        cache = self._context.hash_cache
        for root, path in self._files(kind):
            if not placement.size_matches(path, file):
                continue
            title = self._cache_title(kind, root, path)
            digest = cache.sha256(title, path, compute=compute)
            if digest and digest.lower() == file.sha256.lower():
                cache.flush()
                return path
        cache.flush()
        return None

    def local_files(self, kind: str) -> list[str]:
        """The files of `kind` as the tool and card dropdowns list them (paths relative to their folder)."""
        if kind not in MODEL_KINDS:
            raise ModelSourceError(f"unknown model kind {kind!r}; expected one of {', '.join(MODEL_KINDS)}", 422)
        return [path.relative_to(root).as_posix() for root, path in self._files(kind)]

    def local_path(self, kind: str, name: str) -> Path:
        """The file `name` (as `local_files` lists it) of `kind`; never a path outside its folders."""
        for root, path in self._files(kind):
            if path.relative_to(root).as_posix() == name:
                return path
        raise ModelSourceError(f"no {kind} file named {name!r}; the Models tab lists them", status=404)

    # ----- downloads

    def start_download(self, source: str, *, file_name: str | None = None,
                       model_type: str | None = None) -> DownloadStatus:
        """Look `source` up and queue the download of `file_name` (default: the primary SafeTensor);
        `model_type` names the type when the source does not say (a plain URL). Returns at once."""
        self.check_write_access()
        remote = self.resolve(source)
        file = remote.file_named(file_name) if file_name else remote.default_file()
        if model_type:
            placement.kind_for_type_name(model_type)
            remote = replace(remote, model_type=model_type)
        kind = placement.kind_for(remote.model_type, file)
        safe_name = placement.safe_file_name(file.name, kind)
        folder = placement.folder_for(kind, self._context.paths)
        now = time.time()
        with self._lock:
            for record in self._downloads.values():  # the same file asked twice: one download
                if record.status.active and record.file.download_url == file.download_url:
                    return record.status
            download_id = f"dl-{next(self._ids)}-{int(now)}"
            taken = {r.destination for r in self._downloads.values() if r.status.active and r.destination}
            destination = placement.free_destination(folder, safe_name, taken)
            status = DownloadStatus(download_id, source, remote.name, file.name, kind, "queued",
                                    total=file.size if file.exact_size else None, destination=str(destination),
                                    message=f"queued: {destination.name} into {folder}", started=now)
            record = _Download(status, remote, file, destination=destination)
            self._downloads[download_id] = record
            self._forget_old()
        threading.Thread(target=self._run_in_slot, args=(record,), name=f"model-download-{download_id}",
                         daemon=True).start()
        return status

    def download_status(self, download_id: str) -> DownloadStatus:
        with self._lock:
            record = self._downloads.get(download_id)
            if record is None:
                raise KeyError(download_id)
            return record.status

    def downloads(self) -> list[DownloadStatus]:
        """Running and recent downloads, newest first."""
        with self._lock:
            return [record.status for record in reversed(self._downloads.values())]

    def cancel(self, download_id: str) -> DownloadStatus:
        with self._lock:
            record = self._downloads.get(download_id)
            if record is None:
                raise KeyError(download_id)
            if record.status.active:
                record.cancel.set()
                if record.status.state == "queued":
                    record.status = replace(record.status, state="cancelled", finished=time.time(),
                                            message="cancelled before it started")
            return record.status

    def _update(self, record: _Download, **changes: Any) -> None:
        with self._lock:
            record.status = replace(record.status, **changes)

    def _forget_old(self) -> None:
        finished = [key for key, record in self._downloads.items() if not record.status.active]
        for key in finished[:max(0, len(finished) - KEEP_FINISHED)]:
            del self._downloads[key]

    def _run_in_slot(self, record: _Download) -> None:
        with self._slots:
            if not record.cancel.is_set():
                self._run(record)

    def _run(self, record: _Download) -> None:
        from modules.model_sources.downloader import DownloadCancelled

        try:
            self._update(record, state="checking", message="looking for the same file among yours")
            existing = self.find_existing(record.file, record.status.kind)
            if existing is not None:
                self._update(record, state="exists", finished=time.time(), destination=str(existing),
                             message=f"already here: {existing} has the same sha256; nothing downloaded")
                return
            self._update(record, state="running", message="downloading")
            result = self._transfer(record)
            notes = self._after_download(record, result.path, result.sha256)
            self._update(record, state="done", finished=time.time(), bytes_done=result.size, total=result.size,
                         eta=0.0, destination=str(result.path),
                         message="; ".join([f"saved {result.path}"
                                            + (f" (resumed at {result.resumed_from} bytes)" if result.resumed_from else ""),
                                            *notes]))
        except DownloadCancelled:
            self._update(record, state="cancelled", finished=time.time(),
                         message="cancelled; the part downloaded is kept and a new download of it resumes")
        except Exception as error:  # noqa: BLE001 - reported on the download, which the user sees
            message = _error_text(error)
            log.warning("Download of %s failed: %s", record.file.name, message)
            self._update(record, state="failed", finished=time.time(), error=message, message=message)

    def _transfer(self, record: _Download):
        from modules.model_sources.downloader import DownloadSpec, download

        http = self.http()
        file = record.file
        refresh = None
        hint = ""
        if record.remote.source == "civitai":
            civitai = self._civitai(http)
            refresh = lambda: civitai.fresh_download_url(file)  # noqa: E731 - short-lived signed URLs
            hint = NEEDS_CIVITAI_KEY
        elif record.remote.source == "huggingface":
            hint = NEEDS_HF_TOKEN
        spec = DownloadSpec(url=file.download_url, destination=record.destination, expected_sha256=file.sha256,
                            expected_size=file.size if file.exact_size else None, refresh_url=refresh, hint_401=hint)
        started = time.monotonic()

        def progress(p) -> None:
            self._update(record, bytes_done=p.bytes_done, total=p.total, speed=p.speed, eta=p.eta,
                         state="verifying" if p.total is not None and p.bytes_done >= p.total else "running")

        result = download(spec, http, progress=progress, cancel=record.cancel)
        log.info("Downloaded %s (%d bytes) in %.1f s", result.path, result.size, time.monotonic() - started)
        return result

    def _after_download(self, record: _Download, path: Path, sha256: str) -> list[str]:
        """Register the new file (hash in cache.json, its list refreshed), fetch a checkpoint's
        config, write the cards. Returns notes for what could not be done (the file stays)."""
        notes: list[str] = []
        kind = record.status.kind
        if kind == CHECKPOINT:
            notes += self._fetch_config(record, path)
        try:
            self._write_cards(path, record.remote, record.file)
        except Exception as error:  # noqa: BLE001 - a card is a nicety; the model is what was asked for
            notes.append(f"cards not written: {_error_text(error)}")
        self.register(kind, path, sha256)
        return notes

    def _fetch_config(self, record: _Download, checkpoint: Path) -> list[str]:
        configs = [f for f in record.remote.files if f.file_type == "Config" or f.extension == "yaml"]
        if not configs or record.file in configs:
            return []
        from modules.model_sources.downloader import DownloadSpec, download

        destination = placement.config_destination(checkpoint)
        if destination.exists():
            return [f"config not saved: {destination.name} exists"]
        try:
            download(DownloadSpec(url=configs[0].download_url, destination=destination,
                                  expected_sha256=configs[0].sha256, expect="yaml"), self.http(), cancel=record.cancel)
        except Exception as error:  # noqa: BLE001 - the checkpoint is fine; say what is missing
            return [f"config {configs[0].name} not saved: {_error_text(error)}"]
        return [f"config saved as {destination.name}"]

    def _write_cards(self, path: Path, remote: RemoteModel, file: RemoteFile | None = None) -> list[Path]:
        from modules.model_sources.cards import write_sidecars

        preview = self.choose_preview(remote)
        data = None
        if preview is not None:
            try:
                data = self.preview_bytes(preview.url)
            except ModelSourceError as error:
                log.info("Preview of %s not fetched: %s", path.name, error)
        return write_sidecars(path, remote, preview=data, file=file)

    def register(self, kind: str, path: Path, sha256: str | None) -> None:
        """List a new file at once, its sha256 already in cache.json (no re-read to hash it)."""
        context = self._context
        if kind == CHECKPOINT:
            context.checkpoints.add_file(path, sha256)
            return
        if sha256:
            root = next((r for r in self._roots(kind) if path.is_relative_to(r)), path.parent)
            context.hash_cache.store_sha256(self._cache_title(kind, root, path), path, sha256)
            context.hash_cache.flush()
        if kind == LORA:
            context.loras.refresh()
        elif kind == EMBEDDING:
            context.embeddings.refresh()
        elif kind == placement.HYPERNETWORK:
            context.hypernetworks.refresh()
        elif kind == placement.VAE:
            context.vaes.refresh()
        elif kind == placement.UPSCALER and context.upscalers is not None:
            context.upscalers.registry.refresh()

    # ----- cards for files users already have

    def fetch_cards(self, kind: str, name: str | None = None) -> list[tuple[str, str]]:
        """Look files of `kind` (one, or all when `name` is None) up on Civitai by sha256 and write
        their cards (merged into existing ones). Returns (file, what happened) per file."""
        self.check_write_access()
        names = [name] if name else self.local_files(kind)
        civitai = self._civitai()
        outcomes = []
        for item in names:
            path = self.local_path(kind, item)
            root = next(r for r in self._roots(kind) if path.is_relative_to(r))
            digest = self._context.hash_cache.sha256(self._cache_title(kind, root, path), path)
            self._context.hash_cache.flush()
            try:
                remote = civitai.by_hash(digest)
                if remote is None:
                    outcomes.append((item, "not found on Civitai"))
                    continue
                same = next((f for f in remote.files if f.sha256 and f.sha256.lower() == digest.lower()), None)
                self._write_cards(path, remote, same)
                outcomes.append((item, f"card written: {remote.name}"
                                       + (f" ({remote.version_name})" if remote.version_name else "")))
            except ModelSourceError as error:
                outcomes.append((item, f"error: {error}"))
        return outcomes

    # ----- checkpoint tools

    def inspect(self, name: str):
        """A report on checkpoint `name` (a title, name or alias the checkpoint list knows)."""
        from modules.model_sources.checkpoint_tools import inspect_checkpoint

        info = self._context.checkpoints.find(name)
        return inspect_checkpoint(Path(info.filename),
                                  allow_unsafe_pickle=bool(self._context.args.disable_safe_unpickle))

    def run_tool(self, tool: str, name: str):
        """Write a converted copy of checkpoint `name` ("convert": .ckpt → .safetensors, "prune-ema",
        "fp16") beside it and list it."""
        from modules.model_sources import checkpoint_tools

        if tool not in TOOLS:
            raise ModelSourceError(f"unknown tool {tool!r}; expected one of {', '.join(TOOLS)}", status=422)
        self.check_write_access()
        info = self._context.checkpoints.find(name)
        action = {"convert": checkpoint_tools.convert_to_safetensors, "prune-ema": checkpoint_tools.prune_ema,
                  "fp16": checkpoint_tools.save_fp16}[tool]
        result = action(Path(info.filename), allow_unsafe_pickle=bool(self._context.args.disable_safe_unpickle))
        self._context.checkpoints.add_file(result.path, getattr(result, "sha256", None))
        return result

    def close(self) -> None:
        """Cancel every download (tests; a server that stops simply leaves its `.part` files)."""
        with self._lock:
            for record in self._downloads.values():
                record.cancel.set()


def _credential(credential_type, base_url: str, token: str):
    parts = urlsplit(base_url)
    return credential_type(host=(parts.hostname or "").lower(), header="Authorization", value=f"Bearer {token}",
                           port=parts.port)


def _error_text(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return text if isinstance(error, (ModelSourceError, OSError)) else f"{type(error).__name__}: {text}"
