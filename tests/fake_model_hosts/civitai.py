"""A fake Civitai: its public REST API on one loopback port, its signed-URL file storage on another.

Response shapes and field names follow Civitai's public API documentation
(developer.civitai.com/site/reference: models, model-versions, by-hash; errors as `{"error": ...}`):

- `GET /api/v1/models/{id}` — the model with `modelVersions` (newest first; versions there carry no
  `modelId`/`model`, as on Civitai), `allowCommercialUse` (a list), `allowDerivatives`, ...
- `GET /api/v1/model-versions/{id}` and `GET /api/v1/model-versions/by-hash/{hash}` (SHA256 in any
  case, AutoV1, AutoV2 or CRC32) — the version with `modelId` and `model {name, type, nsfw, poi}`;
  404 `{"error": "No model with id N"}` / `{"error": "Model not found"}`.
- `GET /api/download/models/{versionId}[?type=&format=&size=&fp=]` — 307 to a signed URL on the
  **storage host** (another port) with `X-Amz-*` query parameters; the query picks one file
  (none: the primary). A file added with `requires_key=True` answers 401 JSON unless
  `Authorization: Bearer <FakeCivitai.api_key>` was sent, or, to a browser User-Agent, a 302 to an
  HTML login page (what Civitai does; PITFALLS.md). Keys in the query string (`?token=`) are not
  accepted here, so a client that leaks the key into a URL fails the tests.
- Storage: `GET /model/{fileId}/{name}?X-Amz-...` serves the bytes (Range, ETag, knobs through
  `Blob.knobs`, see server.py) with `Content-Disposition`; an expired signature answers 403 XML
  `Request has expired` (S3's answer). Preview images are served from the storage host too.

Hashes are computed from the bytes given (Civitai publishes SHA256 upper-case hex).

Use (see `fake_civitai` in tests/fake_model_hosts/fixtures.py for a pytest fixture)::

    civitai = FakeCivitai()
    model_id, version_id = civitai.add_model(
        "Tiny Checkpoint", type="Checkpoint", base_model="SD 1.5",
        files=[CivitaiFileSpec("tiny.safetensors", data)],      # or [("tiny.safetensors", data)]
        trained_words=["tiny style"], images=[(png_bytes, 1), (png_bytes, 16)], requires_key=False)
    civitai.base_url                 # give to CivitaiClient(http, base_url=...)
    civitai.blob("tiny.safetensors") # the Blob served: .sha256, .data, .knobs (drop_after, ignore_range...)
    civitai.expire_signed_urls()     # every signed URL issued so far answers 403 from now on
    civitai.signed_url_max_uses = 1  # each new signed URL serves one response, then expires
    civitai.fail_api(429, times=1, headers=[("Retry-After", "1")])   # next API answers
    civitai.api.log / civitai.storage.log   # requests seen (headers lower-case)
    civitai.close()
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable, Sequence
from urllib.parse import quote, unquote

from tests.fake_model_hosts.server import Blob, FakeHost, Reply, Request, serve_blob

_FORMATS = {"safetensors": "SafeTensor", "ckpt": "PickleTensor", "pt": "PickleTensor", "pth": "PickleTensor",
            "bin": "PickleTensor", "yaml": "Other", "zip": "Other"}
# Civitai's older image rating strings, by nsfwLevel
_LEGACY_NSFW = {1: "None", 2: "Soft", 4: "Mature", 8: "X", 16: "X", 32: "X"}
LOGIN_PAGE = (b"<!DOCTYPE html><html><head><title>Sign in | Civitai</title></head><body>"
              b"<h1>Sign in to Civitai</h1><form action=\"/api/auth/signin\"></form></body></html>")


@dataclass
class CivitaiFileSpec:
    """A file of a version as the test wants it published."""

    name: str
    data: bytes
    type: str = "Model"  # Civitai's file type: "Model", "Pruned Model", "Negative", "Config", "VAE", ...
    format: str | None = None  # default from the extension (SafeTensor, PickleTensor, Other)
    fp: str | None = "fp16"
    size: str | None = "pruned"
    primary: bool | None = None  # default: the first file
    pickle_scan: str = "Success"
    virus_scan: str = "Success"
    requires_key: bool | None = None  # default: the model's requires_key


def file_hashes(data: bytes) -> dict[str, str]:
    """Civitai's `hashes` object for `data` (no BLAKE3: hashlib has none, and a wrong value would lie)."""
    sha256 = hashlib.sha256(data).hexdigest().upper()
    return {
        # A1111's old hash: 64 KiB at 1 MiB, first 8 hex digits
        "AutoV1": hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8].upper(),
        "AutoV2": sha256[:10],
        "SHA256": sha256,
        "CRC32": f"{zlib.crc32(data):08X}",
    }


class FakeCivitai:
    """See the module docstring."""

    api_key = "civitai-test-key-0123456789"

    def __init__(self) -> None:
        self.api = FakeHost("civitai-api")
        self.storage = FakeHost("civitai-storage")
        self.base_url = self.api.base_url
        self.models: dict[int, dict[str, Any]] = {}
        self.versions: dict[int, int] = {}  # version id -> model id
        self.blobs: dict[int, Blob] = {}  # file id -> bytes served
        self.protected_files: set[int] = set()
        self.images: dict[str, tuple[bytes, str]] = {}
        self.signed_url_max_uses: int | None = None
        self.signed_url_lifetime_s = 3600
        self._secret = secrets.token_bytes(16)
        self._signature_uses: dict[str, int] = {}
        self._expired: set[str] = set()
        self._failures: list[Reply] = []
        self._lock = threading.Lock()
        self._next_id = 1000
        self.api.route("GET", r"/api/v1/models/([^/]+)", self._model)
        self.api.route("GET", r"/api/v1/model-versions/by-hash/([^/]+)", self._by_hash)
        self.api.route("GET", r"/api/v1/model-versions/([^/]+)", self._version)
        self.api.route("GET", r"/api/download/models/([^/]+)", self._download)
        self.api.route("GET", r"/login", lambda r: Reply(200, [("Content-Type", "text/html; charset=utf-8")],
                                                           LOGIN_PAGE))
        self.storage.route("GET", r"/model/(\d+)/([^/]+)", self._stored_file)
        self.storage.route("GET", r"/images/([0-9a-f]+)/([^/]+)", self._image)

    # ----- building the catalogue

    def _id(self) -> int:
        with self._lock:
            self._next_id += 7
            return self._next_id

    def add_model(self, name: str, *, type: str = "Checkpoint", base_model: str = "SD 1.5",
                  files: Sequence[CivitaiFileSpec | tuple[str, bytes]] = (), trained_words: Iterable[str] = (),
                  images: Iterable[tuple] = (), requires_key: bool = False, description: str = "<p>A model.</p>",
                  version_name: str = "v1.0", version_description: str | None = None, nsfw: bool = False,
                  poi: bool = False, allow_commercial_use: Sequence[str] = ("Image", "RentCivit", "Rent", "Sell"),
                  allow_derivatives: bool = True, allow_no_credit: bool = True,
                  allow_different_license: bool = True, legacy_nsfw: bool = False,
                  tags: Sequence[str] = ()) -> tuple[int, int]:
        """Publish a model with one version; returns (model id, version id). `images`: tuples of
        (bytes, nsfwLevel) or (bytes, nsfwLevel, "video"); `legacy_nsfw` gives images the older
        `nsfw` rating string instead of `nsfwLevel`."""
        model_id = self._id()
        self.models[model_id] = {
            "id": model_id, "name": name, "description": description, "allowNoCredit": allow_no_credit,
            "allowCommercialUse": list(allow_commercial_use), "allowDerivatives": allow_derivatives,
            "allowDifferentLicense": allow_different_license, "type": type, "minor": False, "poi": poi,
            "nsfw": nsfw, "nsfwLevel": 1, "availability": "Public", "cosmetic": None, "supportsGeneration": False,
            "stats": {"downloadCount": 0, "favoriteCount": 0, "thumbsUpCount": 0, "thumbsDownCount": 0,
                      "commentCount": 0, "ratingCount": 0, "rating": 0, "tippedAmountCount": 0},
            "creator": {"username": "tester", "image": None}, "tags": list(tags), "modelVersions": [],
        }
        version_id = self.add_version(model_id, version_name=version_name, base_model=base_model, files=files,
                                      trained_words=trained_words, images=images, requires_key=requires_key,
                                      description=version_description, legacy_nsfw=legacy_nsfw)
        return model_id, version_id

    def add_version(self, model_id: int, *, version_name: str = "v2.0", base_model: str = "SD 1.5",
                    files: Sequence[CivitaiFileSpec | tuple[str, bytes]] = (), trained_words: Iterable[str] = (),
                    images: Iterable[tuple] = (), requires_key: bool = False, description: str | None = None,
                    legacy_nsfw: bool = False) -> int:
        """Publish a newer version of `model_id` (it becomes the model's first, as on Civitai)."""
        version_id = self._id()
        specs = [f if isinstance(f, CivitaiFileSpec) else CivitaiFileSpec(f[0], f[1]) for f in files]
        published = []
        for index, spec in enumerate(specs):
            file_id = self._id()
            self.blobs[file_id] = Blob(spec.name, spec.data)
            if spec.requires_key if spec.requires_key is not None else requires_key:
                self.protected_files.add(file_id)
            extension = spec.name.rsplit(".", 1)[-1].lower()
            file_format = spec.format or _FORMATS.get(extension, "Other")
            primary = spec.primary if spec.primary is not None else index == 0
            metadata = {"format": file_format, "size": spec.size, "fp": spec.fp}
            query = "" if primary else "?" + "&".join(
                f"{k}={quote(str(v))}" for k, v in (("type", spec.type), ("format", file_format),
                                                    ("size", spec.size), ("fp", spec.fp)) if v)
            published.append({
                "id": file_id, "sizeKB": len(spec.data) / 1024, "name": spec.name, "type": spec.type,
                "pickleScanResult": spec.pickle_scan, "pickleScanMessage": "No Pickle imports",
                "virusScanResult": spec.virus_scan, "virusScanMessage": None,
                "scannedAt": "2024-05-01T10:00:00.000Z", "metadata": metadata, "hashes": file_hashes(spec.data),
                "primary": primary,
                "downloadUrl": f"{self.base_url}/api/download/models/{version_id}{query}",
            })
        version = {
            "id": version_id, "index": 0, "name": version_name, "baseModel": base_model,
            "baseModelType": "Standard", "createdAt": "2024-05-01T10:00:00.000Z",
            "publishedAt": "2024-05-01T10:00:00.000Z", "status": "Published", "availability": "Public",
            "nsfwLevel": 1, "description": description, "trainedWords": list(trained_words),
            "stats": {"downloadCount": 0, "ratingCount": 0, "rating": 0, "thumbsUpCount": 0},
            "covered": True, "files": published, "images": [self._publish_image(i, legacy_nsfw) for i in images],
            "downloadUrl": f"{self.base_url}/api/download/models/{version_id}",
        }
        model = self.models[model_id]
        for older in model["modelVersions"]:
            older["index"] += 1
        model["modelVersions"].insert(0, version)
        self.versions[version_id] = model_id
        return version_id

    def _publish_image(self, image: tuple, legacy: bool) -> dict[str, Any]:
        data, level = image[0], int(image[1])
        media = image[2] if len(image) > 2 else "image"
        key = hashlib.sha256(data + media.encode()).hexdigest()[:32]
        extension = "mp4" if media == "video" else "png"
        self.images[key] = (data, "video/mp4" if media == "video" else "image/png")
        entry: dict[str, Any] = {"id": self._id(), "url": f"{self.storage.base_url}/images/{key}/width=450.{extension}",
                                 "width": 64, "height": 64, "hash": "U00000fQfQfQfQfQfQfQfQfQfQfQ", "type": media,
                                 "metadata": {"hash": "x", "size": len(data), "width": 64, "height": 64},
                                 "meta": None, "availability": "Public", "hasMeta": False, "onSite": False}
        if legacy:
            entry["nsfw"] = _LEGACY_NSFW.get(level, "X")
        else:
            entry["nsfwLevel"] = level
        return entry

    # ----- test controls

    def blob(self, name_or_id: str | int) -> Blob:
        if isinstance(name_or_id, int):
            return self.blobs[name_or_id]
        for blob in self.blobs.values():
            if blob.name == name_or_id:
                return blob
        raise KeyError(name_or_id)

    def file_id(self, name: str) -> int:
        return next(i for i, b in self.blobs.items() if b.name == name)

    def version_json(self, version_id: int) -> dict[str, Any]:
        """The `/api/v1/model-versions/{id}` answer (what a client should store as .civitai.info)."""
        model = self.models[self.versions[version_id]]
        version = next(v for v in model["modelVersions"] if v["id"] == version_id)
        return {**{k: v for k, v in version.items() if k != "index"}, "modelId": model["id"],
                "model": {"name": model["name"], "type": model["type"], "nsfw": model["nsfw"], "poi": model["poi"]}}

    def expire_signed_urls(self) -> None:
        """Every signed storage URL issued so far answers 403 `Request has expired` from now on."""
        with self._lock:
            self._expired.update(self._signature_uses)

    def fail_api(self, status: int, *, times: int = 1, headers: Sequence[tuple[str, str]] = (),
                 body: dict | None = None) -> None:
        """The next `times` API requests answer `status` with a JSON error body."""
        for _ in range(times):
            self._failures.append(Reply.json(body or {"error": f"HTTP {status}"}, status=status,
                                             headers=list(headers)))

    def close(self) -> None:
        self.api.close()
        self.storage.close()

    # ----- API handlers

    def _failure(self) -> Reply | None:
        with self._lock:
            return self._failures.pop(0) if self._failures else None

    def _model(self, request: Request) -> Reply:
        failure = self._failure()
        if failure:
            return failure
        raw = request.match.group(1)
        model = self.models.get(int(raw)) if raw.isdigit() else None
        if model is None:
            return Reply.json({"error": f"No model with id {raw}"}, status=404)
        return Reply.json(model)

    def _version(self, request: Request) -> Reply:
        failure = self._failure()
        if failure:
            return failure
        raw = request.match.group(1)
        if not raw.isdigit() or int(raw) not in self.versions:
            return Reply.json({"error": f"No version with id {raw}"}, status=404)
        return Reply.json(self.version_json(int(raw)))

    def _by_hash(self, request: Request) -> Reply:
        failure = self._failure()
        if failure:
            return failure
        wanted = unquote(request.match.group(1)).upper()
        for model in self.models.values():
            for version in model["modelVersions"]:
                for file in version["files"]:
                    if wanted in file["hashes"].values():
                        return Reply.json(self.version_json(version["id"]))
        return Reply.json({"error": "Model not found"}, status=404)

    def _download(self, request: Request) -> Reply:
        failure = self._failure()
        if failure:
            return failure
        raw = request.match.group(1)
        if not raw.isdigit() or int(raw) not in self.versions:
            return Reply.json({"error": f"No model version with id {raw}"}, status=404)
        version = next(v for v in self.models[self.versions[int(raw)]]["modelVersions"] if v["id"] == int(raw))
        file = self._pick_file(version["files"], request.query)
        if file is None:
            return Reply.json({"error": "No file matches the requested type/format/size/fp"}, status=404)
        if file["id"] in self.protected_files and request.headers.get("authorization") != f"Bearer {self.api_key}":
            if "mozilla" in request.headers.get("user-agent", "").lower():
                return Reply.redirect(f"/login?returnUrl={quote(request.path)}&reason=download-auth", status=302)
            return Reply.json({"error": "Unauthorized",
                               "message": "The creator of this asset requires you to be logged in to download it"},
                              status=401)
        return Reply.redirect(self._signed_url(file["id"], file["name"]), status=307)

    @staticmethod
    def _pick_file(files: list[dict], query: dict[str, str]) -> dict | None:
        wanted = {k: query[k].lower() for k in ("type", "format", "size", "fp") if query.get(k)}
        if not wanted:
            return next((f for f in files if f["primary"]), files[0] if files else None)
        for file in files:
            have = {"type": file["type"], **{k: v for k, v in file["metadata"].items() if v}}
            if all(str(have.get(k, "")).lower() == v for k, v in wanted.items()):
                return file
        return None

    def _sign(self, file_id: int, date: str, expires: str) -> str:
        return hmac.new(self._secret, f"{file_id}|{date}|{expires}".encode(), hashlib.sha256).hexdigest()

    def _signed_url(self, file_id: int, name: str) -> str:
        date = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + f"{self._id()}Z"
        expires = str(self.signed_url_lifetime_s)
        signature = self._sign(file_id, date, expires)
        with self._lock:
            self._signature_uses[signature] = 0
        disposition = quote(f'attachment; filename="{name}"')
        return (f"{self.storage.base_url}/model/{file_id}/{quote(name)}?X-Amz-Algorithm=AWS4-HMAC-SHA256"
                f"&X-Amz-Credential=fake%2F20240501%2Fauto%2Fs3%2Faws4_request&X-Amz-Date={date}"
                f"&X-Amz-Expires={expires}&X-Amz-Signature={signature}&X-Amz-SignedHeaders=host"
                f"&response-content-disposition={disposition}")

    # ----- storage handlers

    def _stored_file(self, request: Request) -> Reply:
        file_id = int(request.match.group(1))
        signature = request.query.get("X-Amz-Signature", "")
        valid = file_id in self.blobs and hmac.compare_digest(
            signature, self._sign(file_id, request.query.get("X-Amz-Date", ""), request.query.get("X-Amz-Expires", "")))
        with self._lock:
            uses = self._signature_uses.get(signature)
            expired = signature in self._expired or (
                self.signed_url_max_uses is not None and uses is not None and uses >= self.signed_url_max_uses)
            if valid and not expired and request.method == "GET":
                self._signature_uses[signature] = uses + 1
        if not valid or expired:
            code, message = ("AccessDenied", "Request has expired") if valid else ("SignatureDoesNotMatch",
                                                                                    "Signature mismatch")
            body = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                    f"<Message>{message}</Message></Error>").encode()
            return Reply(403, [("Content-Type", "application/xml")], body)
        blob = self.blobs[file_id]
        return serve_blob(request, blob, [("Content-Disposition", f'attachment; filename="{blob.name}"')])

    def _image(self, request: Request) -> Reply:
        found = self.images.get(request.match.group(1))
        if found is None:
            return Reply.json({"error": "Not found"}, status=404)
        return Reply(200, [("Content-Type", found[1])], found[0])


def random_safetensors(size_floats: int = 256, seed: int = 0, metadata: dict[str, str] | None = None) -> bytes:
    """A small valid .safetensors file (one float32 tensor of random values) for fake hosts."""
    import torch
    from safetensors.torch import save

    generator = torch.Generator().manual_seed(seed)
    return save({"weight": torch.randn(size_floats, generator=generator)}, metadata=metadata)


def tiny_png(color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    """A 1×1 PNG (valid: zlib and CRCs computed) for preview images."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (len(body).to_bytes(4, "big") + kind + body
                + zlib.crc32(kind + body).to_bytes(4, "big"))

    header = (1).to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0])
    pixels = zlib.compress(b"\x00" + bytes(color))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


__all__ = ["CivitaiFileSpec", "FakeCivitai", "file_hashes", "random_safetensors", "tiny_png"]
