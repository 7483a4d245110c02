"""A stand-in for `ModelSources` (modules.model_sources.service) for the route and tab tests: the same
method names and result shapes, answers from memory, and a record of what it was asked. Downloads
stay where the test puts them (`advance`, `finish`), so progress can be asserted step by step. Its
answers are the service's own types (`LookupResult`, `DownloadStatus`).

The real service is tested with fake hosts on loopback (tests/fake_model_hosts); here the routes and
the tab are tested for what they add: statuses, shapes, rendering and escaping."""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from modules.library.checkpoints import CheckpointNotFoundError
from modules.model_sources import placement
from modules.model_sources.placement import MODEL_KINDS as KINDS
from modules.model_sources.service import DownloadStatus, LookupResult
from modules.model_sources.types import ModelSourceError, PreviewImage, RemoteFile, RemoteModel


@dataclass(frozen=True)
class FakeReport:
    architecture: str
    dtypes: Mapping[str, int]
    tensor_count: int
    total_bytes: int
    has_ema: bool
    format: str


@dataclass(frozen=True)
class FakeToolResult:
    path: Path
    size: int
    report_line: str


def civitai_model(name: str = "Tiny <b>Model</b>", model_type: str | None = "Checkpoint",
                  description: str = "<p>Good <script>alert(1)</script>model</p>") -> RemoteModel:
    files = (
        RemoteFile(name="tiny-full.ckpt", download_url="https://civitai.com/api/download/models/11?type=Model",
                   size=4096, sha256="aa" * 32, format="PickleTensor", precision="fp32", size_kind="full",
                   pickle_scan="Success", primary=False),
        RemoteFile(name="tiny.safetensors", download_url="https://civitai.com/api/download/models/11",
                   size=2048, sha256="bb" * 32, format="SafeTensor", precision="fp16", size_kind="pruned",
                   pickle_scan="Success", primary=True),
    )
    return RemoteModel(source="civitai", name=name, model_type=model_type, files=files, version_name="v1.0",
                       base_model="SD 1.5", description=description, trigger_words=("tiny style", "<i>x</i>"),
                       license="CreativeML Open RAIL-M", page_url="https://civitai.com/models/1",
                       previews=(PreviewImage("https://image.civitai.com/1.png", 1),), model_id="1", version_id="11")


def url_model() -> RemoteModel:
    return RemoteModel(source="url", name="model.safetensors", model_type=None,
                       files=(RemoteFile(name="model.safetensors", download_url="https://example.com/model.safetensors",
                                         size=1000, exact_size=True),))


@dataclass
class FakeModelSources:
    folders: Mapping[str, str] = field(default_factory=lambda: {k: f"/data/{k}" for k in KINDS})
    models: dict[str, RemoteModel] = field(default_factory=dict)  # source text -> model
    existing: dict[str, str] = field(default_factory=dict)  # file name -> local path
    local: dict[str, list[str]] = field(default_factory=lambda: {k: [] for k in KINDS})
    write_refusal: str | None = None
    preview: bytes | None = None
    calls: list[tuple] = field(default_factory=list)
    _downloads: dict[str, DownloadStatus] = field(default_factory=dict)
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    # -- look-up and downloads ---------------------------------------------------------------------

    def lookup(self, source: str) -> LookupResult:
        self.calls.append(("lookup", source))
        model = self.models.get(source)
        if model is None:
            raise ModelSourceError(f"not a model source: {source!r}", status=400)
        kind = refusal = None
        try:  # the real folder rules
            kind = placement.kind_for(model.model_type, model.default_file())
        except ModelSourceError as e:
            refusal = str(e)
        return LookupResult(model, kind, self.folders.get(kind) if kind else None, refusal,
                          model.default_file().name, dict(self.existing),
                          model.previews[0].url if model.previews else None)

    def preview_bytes(self, url: str) -> bytes:
        self.calls.append(("preview_bytes", url))
        if self.preview is None:
            raise ModelSourceError("no preview", status=404)
        return self.preview

    def check_write_access(self) -> None:
        if self.write_refusal:
            raise ModelSourceError(self.write_refusal, status=403)

    def start_download(self, source: str, *, file_name: str | None = None,
                       model_type: str | None = None) -> DownloadStatus:
        self.calls.append(("start_download", source, file_name, model_type))
        self.check_write_access()
        lookup = self.lookup(source)
        chosen = lookup.remote.file_named(file_name) if file_name else lookup.remote.default_file()
        kind = placement.kind_for(model_type or lookup.remote.model_type, chosen)
        status = DownloadStatus(id=f"dl{next(self._ids)}", source=source, model_name=lookup.remote.name,
                            file_name=chosen.name, kind=kind, state="queued", bytes_done=0, total=chosen.size,
                            speed=0.0, eta=None, destination=None, error=None, message="", started=time.time(),
                            finished=None)
        self._downloads[status.id] = status
        return status

    def advance(self, download_id: str, bytes_done: int, speed: float = 1000.0) -> DownloadStatus:
        status = self._downloads[download_id]
        eta = (status.total - bytes_done) / speed if status.total and speed else None
        self._downloads[download_id] = dataclasses.replace(status, state="running", bytes_done=bytes_done,
                                                           speed=speed, eta=eta)
        return self._downloads[download_id]

    def finish(self, download_id: str, state: str = "done", destination: str | None = None,
               error: str | None = None) -> DownloadStatus:
        status = self._downloads[download_id]
        self._downloads[download_id] = dataclasses.replace(
            status, state=state, bytes_done=status.total or status.bytes_done, speed=0.0, eta=None,
            destination=destination, error=error, finished=time.time())
        return self._downloads[download_id]

    def download_status(self, download_id: str) -> DownloadStatus:
        return self._downloads[download_id]

    def downloads(self) -> list[DownloadStatus]:
        return sorted(self._downloads.values(), key=lambda s: s.id, reverse=True)

    def cancel(self, download_id: str) -> DownloadStatus:
        self.calls.append(("cancel", download_id))
        status = self._downloads[download_id]
        if status.finished is None:
            self._downloads[download_id] = dataclasses.replace(status, state="cancelled", finished=time.time(),
                                                               message="cancelled; the .part file is kept")
        return self._downloads[download_id]

    # -- files already here --------------------------------------------------------------------------

    def local_files(self, kind: str) -> list[str]:
        if kind not in KINDS:
            raise ModelSourceError(f"unknown kind {kind!r}", status=422)
        return list(self.local[kind])

    def fetch_cards(self, kind: str, name: str | None = None) -> list[tuple[str, str]]:
        self.calls.append(("fetch_cards", kind, name))
        self.check_write_access()
        names = [name] if name else self.local_files(kind)
        return [(n, "cards written" if "known" in n else "not found on Civitai") for n in names]

    def inspect(self, name: str) -> FakeReport:
        self.calls.append(("inspect", name))
        if name not in self.local["checkpoint"]:
            raise CheckpointNotFoundError(name)
        return FakeReport("SD1", {"float16": 10, "float32": 2}, 12, 3000, True, "safetensors")

    def run_tool(self, tool: str, name: str) -> FakeToolResult:
        self.calls.append(("run_tool", tool, name))
        self.check_write_access()
        self.inspect(name)
        stem = name.rsplit(".", 1)[0]
        new = f"{stem}-{tool}.safetensors"
        return FakeToolResult(Path(self.folders["checkpoint"]) / new, 1234, f"wrote {new}")
