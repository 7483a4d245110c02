"""Civitai's public REST API (`/api/v1/...`) read into `RemoteModel`.

Endpoints (developer.civitai.com/site/reference): `GET /api/v1/models/{id}` (the model, its versions
newest first), `GET /api/v1/model-versions/{id}` and `GET /api/v1/model-versions/by-hash/{hash}`
(a version with `modelId` and `model {name, type, nsfw, poi}`). Errors come as `{"error": ...}`
with 401/403 (the creator requires a logged-in user: an API key), 404 (unknown id or hash), 429.

Every request goes through `GuardedHttp` (SSRF guard on every hop; the API key is a `HostCredential`
for the Civitai host only, sent as `Authorization: Bearer`, never in a URL). A download goes to the
file's `downloadUrl` (`/api/download/models/{versionId}[?type=&format=]`), which Civitai answers with
a 307 to a short-lived signed storage URL; asking `downloadUrl` again gives a fresh one, which is all
`fresh_download_url` has to do.

What is published is passed on, nothing invented: sizes are Civitai's `sizeKB` (rounded, so never
used to verify: the sha256 is), the license line only restates the model's permission flags, and a
preview image whose rating is missing counts as the highest level (so a content limit hides it).
"""

from __future__ import annotations

import re
from typing import Any, Mapping
from urllib.parse import quote, urlsplit

from modules.model_sources.http import GuardedHttp, HttpStatusError
from modules.model_sources.refs import CIVITAI_ID, SHA256_HEX, CivitaiRef
from modules.model_sources.types import CONTENT_LEVELS, ModelSourceError, PreviewImage, RemoteFile, RemoteModel

CIVITAI_URL = "https://civitai.com"
NEEDS_KEY = "this file/model needs a Civitai API key: Settings → Model sources"
_HASH = re.compile(r"[0-9A-Fa-f]{8}|[0-9A-Fa-f]{10}|[0-9A-Fa-f]{64}")
# Civitai's older image rating strings -> nsfwLevel
_LEGACY_NSFW = {"none": CONTENT_LEVELS["PG"], "soft": CONTENT_LEVELS["PG-13"], "mature": CONTENT_LEVELS["R"],
                "x": CONTENT_LEVELS["X"]}
UNRATED_LEVEL = CONTENT_LEVELS["XXX"]


class CivitaiClient:
    """Look-ups on one Civitai (`base_url`: Civitai itself, or a test's fake host)."""

    def __init__(self, http: GuardedHttp, *, base_url: str = CIVITAI_URL):
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"Civitai base_url must be an http(s) origin, not {base_url!r}")
        self.http = http
        self.base_url = base_url.rstrip("/")

    # ----- raw API

    def model_info(self, model_id: str | int) -> dict[str, Any]:
        """`GET /api/v1/models/{id}` as Civitai answers it."""
        model_id = _checked_id(model_id, "model id")
        return self._get(f"/api/v1/models/{model_id}", f"model with id {model_id}")

    def version_info(self, version_id: str | int) -> dict[str, Any]:
        """`GET /api/v1/model-versions/{id}` as Civitai answers it."""
        version_id = _checked_id(version_id, "model-version id")
        return self._get(f"/api/v1/model-versions/{version_id}", f"model version with id {version_id}")

    def _get(self, path: str, what: str) -> dict[str, Any]:
        try:
            data = self.http.get_json(self.base_url + path)
        except HttpStatusError as error:
            raise self._explain(error, what) from None
        if not isinstance(data, dict):
            raise ModelSourceError(f"Civitai answered {path} with {type(data).__name__}, not a JSON object",
                                   status=502)
        return data

    def _explain(self, error: HttpStatusError, what: str) -> ModelSourceError:
        if error.status_code == 404:
            return ModelSourceError(f"Civitai has no {what} (HTTP 404); check the id — a bare number is a model "
                                    "id, a version id needs a link such as https://civitai.com/models/<model>"
                                    "?modelVersionId=<version>", status=404)
        if error.status_code in (401, 403):
            if self._key_sent():
                return ModelSourceError(f"Civitai refused the request for the {what} with the API key in Settings → "
                                        f"Model sources (HTTP {error.status_code}): check the key is current, or "
                                        "the creator restricts this model", status=403)
            return ModelSourceError(f"Civitai refused the request for the {what} (HTTP {error.status_code}): "
                                    f"{NEEDS_KEY}", status=403)
        return error

    def _key_sent(self) -> bool:
        parts = urlsplit(self.base_url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return any(c.matches(parts.scheme, parts.hostname or "", port) for c in self.http.credentials)

    # ----- look-ups

    def lookup(self, ref: CivitaiRef) -> RemoteModel:
        """The version `ref` names (its `version_id`, else the model's first, newest version), with
        only the files `ref` names when it names some (a download link's query, an AIR's +fileId)."""
        if ref.version_id is not None:
            version = self.version_info(ref.version_id)
            model_id = str(version.get("modelId", ""))
            if ref.model_id is not None and model_id != ref.model_id:
                raise ModelSourceError(f"Civitai model version {ref.version_id} belongs to model {model_id}, not "
                                       f"{ref.model_id}; check the link", status=400)
            model = self._model_or_none(model_id)
        else:
            model = self.model_info(ref.model_id)
            versions = model.get("modelVersions")
            if not isinstance(versions, list) or not versions or not isinstance(versions[0], Mapping):
                raise ModelSourceError(f"Civitai model {ref.model_id} ({model.get('name', '?')}) has no published "
                                       "versions to download", status=404)
            version = _with_model(versions[0], model)
        remote = self._remote(version, model, ref)
        if not remote.files:
            why = {"Archived": "the creator archived it", "TakenDown": "Civitai took it down"}.get(
                str((model or {}).get("mode")), "Civitai lists no files for it")
            raise ModelSourceError(f"{remote.name} {remote.version_name or ''} has nothing to download: {why}",
                                   status=404)
        return remote

    def by_hash(self, sha256: str) -> RemoteModel | None:
        """The version holding a file with this hash (SHA256; AutoV2 and CRC32 work too), or None
        when Civitai knows no such file."""
        digest = sha256.strip() if isinstance(sha256, str) else ""
        if not _HASH.fullmatch(digest):
            raise ModelSourceError(f"{sha256!r} is not a file hash (64 hex digits for SHA256)", status=400)
        try:
            version = self.http.get_json(f"{self.base_url}/api/v1/model-versions/by-hash/{digest.upper()}")
        except HttpStatusError as error:
            if error.status_code == 404:
                return None
            raise self._explain(error, f"file with hash {digest[:12]}…") from None
        if not isinstance(version, dict) or "id" not in version:
            raise ModelSourceError("Civitai answered a hash look-up with something that is not a model version",
                                   status=502)
        model = self._model_or_none(str(version.get("modelId", "")))
        return self._remote(version, model, None)

    def fresh_download_url(self, file: RemoteFile) -> str:
        """The URL to request again for a new signed storage URL (Civitai's signed URLs expire within
        hours; a resume needs a fresh one): the file's `downloadUrl`, answered with a new 307."""
        return file.download_url

    def _model_or_none(self, model_id: str) -> dict[str, Any] | None:
        """The model, for its license and description; a version is still usable without them."""
        if not CIVITAI_ID.fullmatch(model_id):
            return None
        try:
            return self.model_info(model_id)
        except ModelSourceError as error:
            if error.status in (403, 404):
                return None
            raise

    # ----- mapping

    def _remote(self, version: Mapping[str, Any], model: Mapping[str, Any] | None, ref: CivitaiRef | None
                ) -> RemoteModel:
        version_id = str(version.get("id", ""))
        model_id = str(version.get("modelId", "") or (model or {}).get("id", ""))
        about = version.get("model") if isinstance(version.get("model"), Mapping) else (model or {})
        raw_files = [f for f in _listed(version.get("files")) if isinstance(f, Mapping)]
        files = [self._file(f, version_id) for f in raw_files]
        if ref is not None and ref.names_a_file:
            files = _select_files(files, raw_files, ref)
        name = str(about.get("name") or (model or {}).get("name") or f"Civitai model {model_id}")
        description = version.get("description") or (model or {}).get("description") or ""
        return RemoteModel(
            source="civitai", name=name, model_type=about.get("type") or (model or {}).get("type") or None,
            files=tuple(files), version_name=version.get("name"), base_model=version.get("baseModel") or None,
            description=str(description), trigger_words=_trigger_words(version.get("trainedWords")),
            license=license_summary(model) if model else "",
            page_url=f"{self.base_url}/models/{quote(model_id)}?modelVersionId={quote(version_id)}",
            previews=tuple(p for p in (_preview(i) for i in _listed(version.get("images"))) if p is not None),
            model_id=model_id or None, version_id=version_id or None, raw_version=dict(version))

    def _file(self, file: Mapping[str, Any], version_id: str) -> RemoteFile:
        metadata = file.get("metadata") if isinstance(file.get("metadata"), Mapping) else {}
        size_kb = file.get("sizeKB")
        hashes = file.get("hashes") if isinstance(file.get("hashes"), Mapping) else {}
        sha256 = str(hashes.get("SHA256") or "").lower()
        url = str(file.get("downloadUrl") or "")
        if urlsplit(url).scheme not in ("http", "https"):
            url = f"{self.base_url}/api/download/models/{version_id}"
        return RemoteFile(
            name=str(file.get("name") or f"civitai-{version_id}"), download_url=url,
            size=round(size_kb * 1024) if isinstance(size_kb, (int, float)) and size_kb >= 0 else None,
            sha256=sha256 if SHA256_HEX.fullmatch(sha256) else None, format=str(metadata.get("format") or "Other"),
            precision=metadata.get("fp") or None, size_kind=metadata.get("size") or None,
            pickle_scan=file.get("pickleScanResult"), virus_scan=file.get("virusScanResult"),
            primary=bool(file.get("primary")), file_type=str(file.get("type") or "Model"), exact_size=False)


def _listed(value: Any) -> list:
    """A JSON list field, or [] when the answer has something else there."""
    return value if isinstance(value, list) else []


def _checked_id(value: str | int | None, what: str) -> str:
    text = str(value) if value is not None else ""
    if not CIVITAI_ID.fullmatch(text):
        raise ModelSourceError(f"{value!r} is not a Civitai {what} (a positive number)", status=400)
    return text


def _with_model(version: Mapping[str, Any], model: Mapping[str, Any]) -> dict[str, Any]:
    """A version from `/models/{id}` in the shape `/model-versions/{id}` gives (with `modelId` and
    `model`), so `.civitai.info` files look the same whichever way a model was looked up."""
    return {**version, "modelId": model.get("id"),
            "model": {key: model.get(key) for key in ("name", "type", "nsfw", "poi")}}


def _trigger_words(words: Any) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for word in words if isinstance(words, list) else []:
        if isinstance(word, str) and word.strip():
            seen.setdefault(word.strip(), None)
    return tuple(seen)


def _preview(image: Any) -> PreviewImage | None:
    if not isinstance(image, Mapping) or not isinstance(image.get("url"), str):
        return None
    level = image.get("nsfwLevel")
    if not isinstance(level, int) or isinstance(level, bool) or level <= 0:
        legacy = image.get("nsfw")
        level = _LEGACY_NSFW.get(legacy.lower(), UNRATED_LEVEL) if isinstance(legacy, str) else UNRATED_LEVEL
    return PreviewImage(url=image["url"], nsfw_level=level,
                        media_type="video" if image.get("type") == "video" else "image",
                        width=image.get("width") if isinstance(image.get("width"), int) else None,
                        height=image.get("height") if isinstance(image.get("height"), int) else None)


def license_summary(model: Mapping[str, Any]) -> str:
    """One line restating the model's permission flags, as Civitai publishes them; "" without any."""
    parts = []
    commercial = model.get("allowCommercialUse")
    if isinstance(commercial, str):  # older API: one value
        commercial = [commercial]
    if isinstance(commercial, list):
        uses = [str(c) for c in commercial if c and c != "None"]
        parts.append(f"commercial use: {', '.join(uses)}" if uses else "no commercial use")
    flags = (("allowNoCredit", "no credit needed", "credit the creator"),
             ("allowDerivatives", "merges may be shared", "no sharing of merges"),
             ("allowDifferentLicense", "merges may use other permissions", "merges keep these permissions"))
    for key, yes, no in flags:
        if isinstance(model.get(key), bool):
            parts.append(yes if model[key] else no)
    return ("Civitai permissions: " + "; ".join(parts)) if parts else ""


def _select_files(files: list[RemoteFile], raw: list[Mapping[str, Any]], ref: CivitaiRef) -> list[RemoteFile]:
    """The files matching what `ref` names (file id, type, format, fp, size), as Civitai's download
    endpoint matches its query; ModelSourceError listing the version's files when none does."""
    def same(a: Any, b: str | None) -> bool:
        return b is None or str(a or "").casefold() == b.casefold()

    ids = [str(f.get("id")) for f in raw]
    chosen = [f for f, file_id in zip(files, ids)
              if same(file_id, ref.file_id) and same(f.file_type, ref.file_type) and same(f.format, ref.file_format)
              and same(f.precision, ref.file_precision) and same(f.size_kind, ref.file_size_kind)]
    if chosen:
        return chosen
    wanted = ", ".join(f"{k}={v}" for k, v in (("file id", ref.file_id), ("type", ref.file_type),
                                               ("format", ref.file_format), ("fp", ref.file_precision),
                                               ("size", ref.file_size_kind)) if v)
    listed = "; ".join(f"{f.name} (type {f.file_type}, {f.format}, {f.precision or '?'}, {f.size_kind or '?'})"
                       for f in files) or "none"
    raise ModelSourceError(f"this Civitai version has no file with {wanted}; its files: {listed}", status=404)
