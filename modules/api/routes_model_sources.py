"""Atelier's model-source routes, `/atelier/v1/models/...`: look a model up on Civitai, Hugging Face or
a plain https URL, download it (a job with an id and progress), cancel, fetch cards for files already
here, inspect a checkpoint and convert it.

Our own namespace, not A1111's `/sdapi/v1`: A1111 has no such routes, and the Models tab of the web UI
and `/docs` need them also when the server runs without `--api`. Auth applies as to every route
(modules.api.auth). The routes are thin: `context.model_sources` (modules.model_sources.service) owns
the downloads, the folder rules and the write policy (its writing methods refuse with a 403 where this
server allows no downloads or conversions); a `ModelSourceError` answers with its own status
(400 for a source that is no source, 403 for writes this server refuses, 404, 422, 502 ...).
Calls that wait on the network or the disk run on a worker thread, never on the event loop.

On a server shared with `--multi-user` the routes that write or stop something (downloads, their
cancellation, cards, checkpoint tools) are for its operators (`--admin-users`); anyone may look a
model up, follow the downloads and inspect a checkpoint (modules.api.callers).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from enum import Enum
from pathlib import PurePath
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Body, Request, status
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from modules.serving.accounts import caller
from modules.api.callers import require_operator
from modules.api.errors import ApiError, not_found
from modules.model_sources.types import ModelSourceError

T = TypeVar("T")

PREFIX = "/atelier/v1/models"
# The service's folder kinds, type names and tools (modules.model_sources.placement.MODEL_KINDS and
# TYPE_CHOICES, service.TOOLS; a test holds them equal) as types, so /docs lists them and a wrong value
# is a 422 naming the field before the service is called.
ModelKind = Literal["checkpoint", "lora", "embedding", "hypernetwork", "vae"]
ModelTypeName = Literal["Checkpoint", "LORA", "TextualInversion", "Hypernetwork", "VAE"]
ToolName = Literal["convert", "prune-ema", "fp16"]
TYPE_NAME_BY_KIND = {"checkpoint": "Checkpoint", "lora": "LORA", "embedding": "TextualInversion",
                     "hypernetwork": "Hypernetwork", "vae": "VAE"}
SOURCE_EXAMPLES = [
    "https://civitai.com/models/4201?modelVersionId=130072",
    "4201@130072",
    "urn:air:sd1:checkpoint:civitai:4201@130072",
    "stabilityai/stable-diffusion-xl-base-1.0",
    "https://huggingface.co/runwayml/stable-diffusion-v1-5/blob/main/v1-5-pruned-emaonly.safetensors",
    "https://example.com/models/my-model.safetensors",
]
MAX_SOURCE_CHARS = 2048
# Named request examples for /docs.
LOOKUP_EXAMPLES = {
    "civitai": {"summary": "A Civitai page URL", "value": {"source": SOURCE_EXAMPLES[0]}},
    "air": {"summary": "A Civitai AIR URN", "value": {"source": SOURCE_EXAMPLES[2]}},
    "huggingface": {"summary": "A Hugging Face repo", "value": {"source": SOURCE_EXAMPLES[3]}},
    "url": {"summary": "Any https URL of a model file", "value": {"source": SOURCE_EXAMPLES[5]}},
}
DOWNLOAD_EXAMPLES = {
    "civitai": {"summary": "The default file of a Civitai version", "value": {"source": SOURCE_EXAMPLES[0]}},
    "huggingface": {"summary": "One file of a Hugging Face repo", "value": {
        "source": "stabilityai/stable-diffusion-xl-base-1.0", "file_name": "sd_xl_base_1.0.safetensors"}},
    "url": {"summary": "A plain URL, saved as a LoRA", "value": {
        "source": SOURCE_EXAMPLES[5], "model_type": "LORA"}},
}


# -- requests ------------------------------------------------------------------------------------------


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is an error, not silently ignored


class LookupRequest(_Request):
    source: str = Field(min_length=1, max_length=MAX_SOURCE_CHARS, description=(
        "A Civitai model or version id, page URL, `/api/download/models/{versionId}` URL, `{modelId}@{versionId}` "
        "or AIR URN; a Hugging Face repo id (`org/name`, optionally `org/name/file.safetensors`) or "
        "`huggingface.co` URL; or any https URL of a model file."), examples=SOURCE_EXAMPLES)


class DownloadRequest(LookupRequest):
    file_name: str | None = Field(None, max_length=1024, description=(
        "Which of the version's files to download (a name from the look-up's `files`); default: "
        "the primary SafeTensor."), examples=["realisticVision_v51.safetensors"])
    model_type: ModelTypeName | ModelKind | None = Field(None, description=(
        "What the file is, for sources that do not say (a plain URL, some Hugging Face repos): a Civitai type "
        "name or the folder kind (`lora` is `LORA`). It replaces the source's own type when given."),
        examples=["LORA"])


class CardsRequest(_Request):
    kind: ModelKind = Field(description="Which folder's files to look up on Civitai.")
    name: str | None = Field(None, max_length=1024, description=(
        "One file of that folder (as listed by the Models tab); omit it for every file of the kind."),
        examples=["myLora.safetensors"])


class InspectRequest(_Request):
    name: str = Field(min_length=1, max_length=1024, description="A checkpoint's title or file name.",
                      examples=["v1-5-pruned-emaonly.safetensors"])


class ConvertRequest(InspectRequest):
    tool: ToolName = Field(description=(
        "`convert`: a `.ckpt` to `.safetensors` through the safe unpickler; `prune-ema`: drop the EMA weights; "
        "`fp16`: save the float weights as float16. Each writes a new file beside the original and lists it."))


# -- responses -----------------------------------------------------------------------------------------


class RemoteFileItem(BaseModel):
    name: str
    size: int | None = Field(None, description="Bytes as published (Civitai rounds to kilobytes).")
    sha256: str | None = None
    format: str = Field(description="Civitai's format name: SafeTensor, PickleTensor, Diffusers, Other ...")
    precision: str | None = Field(None, description="fp16, fp32 or bf16, when published.")
    size_kind: str | None = Field(None, description="pruned or full, when published.")
    pickle_scan: str | None = Field(None, description="Civitai's pickle scan result (Success, Danger ...).")
    virus_scan: str | None = None
    primary: bool = False
    type: str = Field("Model", description="Civitai's file type: Model, Pruned Model, Negative, Config, VAE ...")
    existing: str | None = Field(None, description="A local file with this sha256, if one is already here.")


class LookupResponse(BaseModel):
    source: str = Field(description="civitai, huggingface or url")
    name: str
    type: str | None = Field(None, description="The source's type name (Checkpoint, LORA, TextualInversion ...); "
                                               "null when the source does not say.")
    kind: str | None = Field(None, description="The folder kind it goes to; null when it cannot be downloaded "
                                               "or the source does not say (then send `model_type`).")
    folder: str | None = Field(None, description="Where the file will be saved.")
    refusal: str | None = Field(None, description="Why it cannot be downloaded, if it cannot.")
    version: str | None = None
    base_model: str | None = None
    description: str = Field("", description="As the source gives it (HTML or Markdown written by the model's "
                                             "author): untrusted, sanitize before showing it.")
    trigger_words: list[str] = []
    license: str = ""
    page_url: str = ""
    model_id: str | None = None
    version_id: str | None = None
    preview_url: str | None = Field(None, description="The preview chosen under the content-level setting.")
    default_file: str
    files: list[RemoteFileItem]

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "source": "civitai", "name": "Tiny Model", "type": "Checkpoint", "kind": "checkpoint",
        "folder": "/data/models/Stable-diffusion", "refusal": None, "version": "v1",
        "base_model": "SD 1.5", "description": "<p>A model.</p>", "trigger_words": ["tiny style"],
        "license": "", "page_url": "https://civitai.com/models/1", "model_id": "1", "version_id": "11",
        "preview_url": None, "default_file": "tiny.safetensors",
        "files": [{"name": "tiny.safetensors", "size": 2048, "sha256": "ab12...", "format": "SafeTensor",
                   "precision": "fp16", "size_kind": "pruned", "pickle_scan": "Success", "virus_scan": "Success",
                   "primary": True, "type": "Model", "existing": None}]}]})


class DownloadItem(BaseModel):
    id: str
    source: str
    model_name: str
    file_name: str
    kind: str
    state: str = Field(description="queued, checking (for the same file among yours), running, verifying; "
                                   "then done, failed, cancelled, or exists (the same sha256 is already here)")
    bytes_done: int
    total: int | None = Field(None, description="Bytes expected, when known.")
    speed: float = Field(description="Bytes per second (smoothed).")
    eta: float | None = Field(None, description="Seconds left, when known.")
    destination: str | None = None
    error: str | None = None
    message: str = ""
    started: float = Field(description="Unix time.")
    finished: float | None = None

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": "dl-3-1764835200", "source": "https://civitai.com/models/1", "model_name": "Tiny Model",
        "file_name": "tiny.safetensors", "kind": "checkpoint", "state": "running", "bytes_done": 1048576,
        "total": 4194304, "speed": 524288.0, "eta": 6.0, "destination": None, "error": None, "message": "",
        "started": 1764835200.0, "finished": None}]})


class DownloadList(BaseModel):
    downloads: list[DownloadItem] = Field(description="Newest first: running ones and the recent finished ones.")


class CardOutcome(BaseModel):
    file: str
    outcome: str = Field(description="What happened for this file: cards written, not found on Civitai, ...")


class CardsResponse(BaseModel):
    kind: str
    results: list[CardOutcome]


class InspectResponse(BaseModel):
    name: str
    report: dict[str, Any] = Field(description=(
        "architecture, dtypes {dtype: tensor count}, tensor_count, total_bytes, has_ema, has_baked_vae, "
        "clip_position_ids, merge_recipe, training_metadata, metadata, format"))


class ToolResponse(BaseModel):
    name: str
    tool: str
    result: dict[str, Any] = Field(description=(
        "What the tool wrote: path, size, report_line (one sentence), tensor_count, dropped (what the copy left "
        "out), position_ids_fixed"))


# -- plumbing ------------------------------------------------------------------------------------------


def model_sources_of(context):
    """The context's ModelSources service; 503 when this server has none."""
    service = getattr(context, "model_sources", None)
    if service is None:
        raise ApiError(503, "model sources are not available on this server", name="ServiceUnavailable")
    return service


async def call_service(fn: Callable[[], T]) -> T:
    """Run a service call on a worker thread; a ModelSourceError answers with its own status."""
    try:
        return await run_in_threadpool(fn)
    except ModelSourceError as e:
        raise ApiError(e.status, str(e), name="ModelSourceError") from None


def plain(value: Any) -> Any:
    """A service result as JSON values: dataclasses to dicts, paths to strings, tuples to lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [plain(v) for v in value]
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def lookup_response(result) -> LookupResponse:
    """A service `LookupResult` as the API's look-up card (its own JSON, checked against the schema)."""
    return LookupResponse.model_validate(result.to_json())


def download_item(download) -> DownloadItem:
    return DownloadItem.model_validate(download.to_json())


def _unknown_download(download_id: str) -> ApiError:
    return not_found(f"no download with id {download_id!r}; GET {PREFIX}/downloads lists the recent ones",
                     name="DownloadNotFound")


# -- routes --------------------------------------------------------------------------------------------


def build_router(context) -> APIRouter:
    router = APIRouter(prefix=PREFIX, tags=["model sources"])

    @router.post("/lookup", response_model=LookupResponse)
    async def lookup(body: Annotated[LookupRequest, Body(openapi_examples=LOOKUP_EXAMPLES)]) -> LookupResponse:
        """What the source says about the model, before anything is downloaded: name, type, base
        model, version, files (size, format, precision, pruned/full, pickle scan, a copy already here),
        trigger words, license, the preview, the folder it goes to, or why it cannot be downloaded."""
        service = model_sources_of(context)
        return lookup_response(await call_service(lambda: service.lookup(body.source)))

    @router.post("/downloads", response_model=DownloadItem, status_code=status.HTTP_202_ACCEPTED)
    async def start_download(body: Annotated[DownloadRequest, Body(openapi_examples=DOWNLOAD_EXAMPLES)],
                             request: Request) -> DownloadItem:
        """Start downloading a model file; answers at once with the download's id and state. Follow it
        with `GET /downloads/{id}`. The file is verified (size, sha256 as published) before it is
        renamed into its folder, with its cards beside it; a file whose sha256 is already here is not
        downloaded again (state `exists`, `destination` says where)."""
        require_operator(caller(context, request), "downloading models")
        service = model_sources_of(context)
        model_type = TYPE_NAME_BY_KIND.get(body.model_type, body.model_type)
        return download_item(await call_service(
            lambda: service.start_download(body.source, file_name=body.file_name, model_type=model_type)))

    @router.get("/downloads", response_model=DownloadList)
    def downloads() -> DownloadList:
        """Running downloads and the recent finished ones, newest first."""
        return DownloadList(downloads=[download_item(d) for d in model_sources_of(context).downloads()])

    @router.get("/downloads/{download_id}", response_model=DownloadItem)
    def download(download_id: str) -> DownloadItem:
        """One download's progress: state, bytes done of total, speed (bytes/s), ETA (s), and where
        the file went or why it failed."""
        try:
            return download_item(model_sources_of(context).download_status(download_id))
        except KeyError:
            raise _unknown_download(download_id) from None

    async def _cancel(download_id: str, request: Request) -> DownloadItem:
        require_operator(caller(context, request), "stopping a model download")
        service = model_sources_of(context)

        def cancel():
            try:
                return service.cancel(download_id)
            except KeyError:
                raise _unknown_download(download_id) from None

        return download_item(await call_service(cancel))

    @router.post("/downloads/{download_id}/cancel", response_model=DownloadItem)
    async def cancel_download(download_id: str, request: Request) -> DownloadItem:
        """Stop a download. The partial `.part` file stays, so the same download started again resumes."""
        return await _cancel(download_id, request)

    @router.delete("/downloads/{download_id}", response_model=DownloadItem)
    async def delete_download(download_id: str, request: Request) -> DownloadItem:
        """The same as `POST /downloads/{id}/cancel`."""
        return await _cancel(download_id, request)

    @router.post("/cards", response_model=CardsResponse)
    async def fetch_cards(body: CardsRequest, request: Request) -> CardsResponse:
        """Cards for files already here: each file is looked up on Civitai by its sha256, and what is
        found is written beside it (`<name>.json` merged with the user's, `<name>.civitai.info`, a preview)."""
        require_operator(caller(context, request), "fetching model cards")
        service = model_sources_of(context)
        results = await call_service(lambda: service.fetch_cards(body.kind, body.name))
        return CardsResponse(kind=body.kind, results=[CardOutcome(file=f, outcome=o) for f, o in results])

    @router.post("/inspect", response_model=InspectResponse)
    async def inspect(body: InspectRequest) -> InspectResponse:
        """What a checkpoint holds: architecture, dtypes, tensor count and size, EMA weights, a baked
        VAE, broken CLIP `position_ids`, merge recipe and training metadata. Pickled files are read
        through the safe unpickler."""
        service = model_sources_of(context)
        report = await call_service(lambda: service.inspect(body.name))
        return InspectResponse(name=body.name, report=plain(report))

    @router.post("/convert", response_model=ToolResponse)
    async def convert(body: ConvertRequest, request: Request) -> ToolResponse:
        """Run a checkpoint tool; the new file is written atomically beside the original and listed."""
        require_operator(caller(context, request), "running checkpoint tools")
        service = model_sources_of(context)
        result = await call_service(lambda: service.run_tool(body.tool, body.name))
        return ToolResponse(name=body.name, tool=body.tool, result=plain(result))

    return router
