"""A fake Hugging Face Hub (API + `resolve/` on one loopback port) and its CDN (another port).

What huggingface_hub 2.4.0 sends and reads, from its source:

- `HfApi.model_info(repo, revision=..., files_metadata=True)` → `GET /api/models/{repo}` or
  `GET /api/models/{repo}/revision/{quoted rev}` with `?blobs=true`: JSON with `id`, `sha`,
  `siblings` (`rfilename`; with blobs also `size`, `blobId`, `lfs {sha256, size, pointerSize}`),
  `cardData`, `tags`, `gated`, `private`, ... (parsed by `ModelInfo`).
- `get_hf_file_metadata(hf_hub_url(...))` → `HEAD /{repo}/resolve/{rev}/{file}`; it follows redirects
  only on the same host, so an LFS file's answer is the **302 to the CDN** itself, carrying
  `X-Repo-Commit`, `X-Linked-Etag` (the sha256, quoted), `X-Linked-Size`, `ETag`, `Location`. A small
  (non-LFS) file is answered 200 directly with its git blob id as `ETag`.
- Errors: `X-Error-Code` `RepoNotFound` (401 without a token, 404 with one), `GatedRepo` (401, or 403
  for a token without access), `RevisionNotFound`, `EntryNotFound` (404) — what `hf_raise_for_status`
  maps to its exception classes.
No `X-Xet-*` or `Link` headers are sent: tests run with `HF_HUB_DISABLE_XET=1` (Xet ignores the endpoint).

Use (see `fake_hub` in tests/fake_model_hosts/fixtures.py for a pytest fixture)::

    hub = FakeHub()
    repo = hub.add_repo("org/tiny-sd", files={"tiny.safetensors": data, "tiny.yaml": b"model: ..."},
                        card={"license": "openrail++", "tags": ["stable-diffusion"], "instance_prompt": "tnyx"})
    hub.endpoint                      # give to HuggingFaceClient(endpoint=...) and set HF_ENDPOINT
    hub.token                         # the token that opens private and gated repos
    repo.gated = "auto"               # knobs: gated ("auto"/"manual"/False), private, granted (token has access),
                                      # list_lfs=False (the listing without sizes and sha256)
    hub.blob("org/tiny-sd", "tiny.safetensors")   # the CDN's Blob: .sha256, .knobs (drop_after, ...)
    hub.hub.log / hub.cdn.log         # requests seen (headers lower-case)
    hub.close()

A README.md is made from `card` (YAML front matter) and `readme` unless `files` has one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote

from tests.fake_model_hosts.server import Blob, FakeHost, Reply, Request, serve_blob

LFS_EXTENSIONS = frozenset({"safetensors", "ckpt", "bin", "pt", "pth", "gguf", "onnx", "msgpack", "h5", "png", "jpg"})
LFS_MIN_SIZE = 10 << 20  # larger files are LFS whatever their extension


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(data: bytes) -> bytes:
    return (f"version https://git-lfs.github.com/spec/v1\noid sha256:{hashlib.sha256(data).hexdigest()}\n"
            f"size {len(data)}\n").encode()


def _yaml_front_matter(card: dict[str, Any]) -> str:
    # JSON is valid YAML (flow style): no PyYAML needed to write what huggingface_hub parses
    lines = [f"{key}: {json.dumps(value)}" for key, value in card.items()]
    return "---\n" + "\n".join(lines) + "\n---\n"


@dataclass
class FakeRepo:
    repo_id: str
    files: dict[str, bytes]
    card: dict[str, Any] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    library_name: str | None = None
    pipeline_tag: str | None = None
    gated: str | bool = False  # "auto" / "manual" / False
    private: bool = False
    granted: bool = True  # whether FakeHub.token has accepted a gated repo's terms
    branches: tuple[str, ...] = ("main",)
    list_lfs: bool = True  # the listing gives LFS sha256/size with ?blobs=true (the Hub does; a mirror may not)
    blobs: dict[str, Blob] = field(default_factory=dict)

    @property
    def sha(self) -> str:
        digest = hashlib.sha1()
        for name in sorted(self.files):
            digest.update(name.encode() + b"\0" + hashlib.sha256(self.files[name]).digest())
        return digest.hexdigest()

    def is_lfs(self, name: str) -> bool:
        return name.rsplit(".", 1)[-1].lower() in LFS_EXTENSIONS or len(self.files[name]) >= LFS_MIN_SIZE


class FakeHub:
    """See the module docstring."""

    token = "hf_FakeHubTokenForTests0123456789"

    def __init__(self) -> None:
        self.hub = FakeHost("hf-hub")
        self.cdn = FakeHost("hf-cdn")
        self.endpoint = self.hub.base_url
        self.repos: dict[str, FakeRepo] = {}
        self._by_sha256: dict[str, Blob] = {}
        self.hub.route("GET", r"/api/models/([^/]+)/([^/]+)(?:/revision/([^/]+))?", self._model_info)
        self.hub.route("GET", r"/([^/]+)/([^/]+)/resolve/([^/]+)/(.+)", self._resolve)
        self.cdn.route("GET", r"/repos/[0-9a-f]{2}/[0-9a-f]{2}/([0-9a-f]{64})", self._cdn)

    def add_repo(self, repo_id: str, *, files: dict[str, bytes], card: dict[str, Any] | None = None,
                 readme: str = "", tags: list[str] | None = None, library_name: str | None = None,
                 pipeline_tag: str | None = None, gated: str | bool = False, private: bool = False,
                 branches: tuple[str, ...] = ("main",)) -> FakeRepo:
        card = dict(card or {})
        files = dict(files)
        if "README.md" not in files:
            files["README.md"] = (_yaml_front_matter(card) if card else "").encode() + readme.encode()
        all_tags = list(tags if tags is not None else card.get("tags", []))
        if card.get("license"):
            all_tags.append(f"license:{card['license']}")
        repo = FakeRepo(repo_id, files, card, all_tags, library_name, pipeline_tag, gated, private,
                        branches=branches)
        for name, data in files.items():
            if repo.is_lfs(name):
                blob = Blob(name.rsplit("/", 1)[-1], data)
                repo.blobs[name] = blob
                self._by_sha256[blob.sha256] = blob
        self.repos[repo_id] = repo
        return repo

    def blob(self, repo_id: str, name: str) -> Blob:
        return self.repos[repo_id].blobs[name]

    def close(self) -> None:
        self.hub.close()
        self.cdn.close()

    # ----- handlers

    def _authorized(self, request: Request) -> bool:
        return request.headers.get("authorization") == f"Bearer {self.token}"

    @staticmethod
    def _error(status: int, code: str, message: str) -> Reply:
        return Reply.json({"error": message}, status=status,
                          headers=[("X-Error-Code", code), ("X-Error-Message", message)])

    def _repo_or_error(self, request: Request, repo_id: str, revision: str | None) -> FakeRepo | Reply:
        repo = self.repos.get(repo_id)
        authorized = self._authorized(request)
        if repo is None or (repo.private and not authorized):
            return self._error(404 if authorized else 401, "RepoNotFound",
                               "Repository not found" if authorized else "Invalid username or password.")
        if revision is not None and revision not in repo.branches and revision != repo.sha:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return repo

    def _model_info(self, request: Request) -> Reply:
        org, name, revision = request.match.groups()
        found = self._repo_or_error(request, f"{unquote(org)}/{unquote(name)}",
                                    unquote(revision) if revision else None)
        if isinstance(found, Reply):
            return found
        repo = found
        blobs = request.query.get("blobs", "").lower() in ("true", "1") and repo.list_lfs
        siblings = []
        for path, data in sorted(repo.files.items()):
            sibling: dict[str, Any] = {"rfilename": path}
            if blobs:
                lfs = repo.is_lfs(path)
                pointer = lfs_pointer(data)
                sibling.update(size=len(data), blobId=git_blob_id(pointer if lfs else data))
                if lfs:
                    sibling["lfs"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
                                      "pointerSize": len(pointer)}
            siblings.append(sibling)
        info: dict[str, Any] = {
            "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24], "id": repo.repo_id, "modelId": repo.repo_id,
            "author": repo.repo_id.split("/")[0], "sha": repo.sha, "lastModified": "2024-05-01T10:00:00.000Z",
            "private": repo.private, "gated": repo.gated, "disabled": False, "downloads": 0, "likes": 0,
            "tags": repo.tags, "cardData": repo.card, "siblings": siblings, "spaces": [],
            "createdAt": "2024-05-01T10:00:00.000Z", "usedStorage": sum(len(d) for d in repo.files.values()),
        }
        if repo.library_name:
            info["library_name"] = repo.library_name
        if repo.pipeline_tag:
            info["pipeline_tag"] = repo.pipeline_tag
        return Reply.json(info)

    def _resolve(self, request: Request) -> Reply:
        org, name, revision, path = (unquote(g) for g in request.match.groups())
        found = self._repo_or_error(request, f"{org}/{name}", revision)
        if isinstance(found, Reply):
            return found
        repo = found
        if repo.gated and not (self._authorized(request) and repo.granted):
            status = 403 if self._authorized(request) else 401
            return self._error(status, "GatedRepo", f"Access to model {repo.repo_id} is restricted. You must have "
                                                    "access to it and be authenticated to access it. Please log in.")
        if path not in repo.files:
            return self._error(404, "EntryNotFound", f"{path} does not exist on \"{revision}\"")
        data = repo.files[path]
        common = [("X-Repo-Commit", repo.sha), ("Accept-Ranges", "bytes"), ("Vary", "Origin, Accept")]
        if not repo.is_lfs(path):
            reply = Reply(200, [("Content-Type", "text/plain; charset=utf-8"), ("ETag", f'"{git_blob_id(data)}"'),
                                *common], data)
            return reply
        sha256 = hashlib.sha256(data).hexdigest()
        base = path.rsplit("/", 1)[-1]
        disposition = quote(f"attachment; filename*=UTF-8''{quote(base)}; filename=\"{base}\";")
        location = (f"{self.cdn.base_url}/repos/{sha256[:2]}/{sha256[2:4]}/{sha256}"
                    f"?response-content-disposition={disposition}&Expires=4102444800&Signature=fake&Key-Pair-Id=K1")
        body = f"Found. Redirecting to {location}".encode()
        return Reply(302, [("Location", location), ("Content-Type", "text/plain; charset=utf-8"),
                           ("X-Linked-Etag", f'"{sha256}"'), ("X-Linked-Size", str(len(data))),
                           ("ETag", f'"{git_blob_id(lfs_pointer(data))}"'), *common], body)

    def _cdn(self, request: Request) -> Reply:
        blob = self._by_sha256.get(request.match.group(1))
        if blob is None:
            return Reply(404, [("Content-Type", "application/xml")], b"<Error><Code>NoSuchKey</Code></Error>")
        return serve_blob(request, blob, [("Content-Disposition", f'attachment; filename="{blob.name}"')])
