"""What the user typed or pasted, read as a model source: Civitai, Hugging Face, or a plain https URL.

Accepted forms (everything else is refused with these examples):

Hugging Face
  - ``org/name``                         a repo; the look-up lists its weight files
  - ``org/name:path/file.safetensors``   one file of the repo
  - ``org/name@revision``                a branch, tag or commit
  - ``org/name@revision:file.ckpt``
  - ``org/name/path/file.safetensors``   the same as ``org/name:path/file.safetensors`` when the last part
                                         ends in a model or config extension
  - ``https://huggingface.co/org/name`` (or ``hf.co``), ``.../blob/{rev}/{path}``,
    ``.../resolve/{rev}/{path}``, ``.../raw/{rev}/{path}``, ``.../tree/{rev}``
Civitai
  - ``4384``                             a bare number is a **model** id (its newest version is used);
                                         a version id alone needs a URL or ``@``
  - ``4384@128713``                      model id @ model-version id
  - ``https://civitai.com/models/4384[/slug][?modelVersionId=128713]``
  - ``https://civitai.com/model-versions/128713``
  - ``https://civitai.com/api/download/models/128713[?type=Model&format=SafeTensor&fp=fp16&size=pruned]``
    (the query names one file of the version)
  - ``https://civitai.com/api/v1/models/4384``, ``.../api/v1/model-versions/128713``
  - AIR URNs: ``urn:air:sd1:checkpoint:civitai:4384@128713[+fileId][.format]`` (``urn:`` and ``air:``
    are optional, as in Civitai's parser); ``urn:air:...:huggingface:org/name`` names a Hugging Face repo
Anything else
  - ``https://host/path/file.safetensors`` a direct link; plain ``http://`` is refused (a file fetched
    over http can be altered on the way), as are other schemes (``file:``, ``javascript:``...) and URLs
    carrying credentials (``https://user:secret@host/``: tokens belong in Settings → Model sources).

Parsing never touches the network: addresses are checked again (SSRF guard) when they are fetched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

from modules.model_sources.types import ModelSourceError

MAX_SOURCE_LENGTH = 2048

# Hugging Face repo names: letters, digits, '-', '_', '.', at most 96 characters, not starting or
# ending with '-' or '.', no '--' or '..' (huggingface_hub's validate_repo_id).
_HF_NAME = r"(?!.*(?:--|\.\.))[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_HF_REPO = re.compile(rf"({_HF_NAME})/({_HF_NAME})")
# A revision: branch/tag names may hold '/', '.', '-'; never '..', ':' or whitespace.
_REVISION = re.compile(r"(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9._/-]{0,199}")
_FILE_PATH = re.compile(r"(?!.*(?:^|/)\.\.?(?:/|$))[^\x00-\x1f\\:*?\"<>|]{1,400}")
FILE_EXTENSIONS = frozenset({"safetensors", "ckpt", "bin", "pt", "pth", "yaml", "yml", "gguf", "sft"})
_HF_HOSTS = frozenset({"huggingface.co", "www.huggingface.co", "hf.co"})
_CIVITAI_HOSTS = frozenset({"civitai.com", "www.civitai.com", "civitai.green", "www.civitai.green"})
CIVITAI_ID = re.compile(r"[1-9][0-9]{0,15}")  # Civitai's ids: positive integers
SHA256_HEX = re.compile(r"[0-9a-f]{64}")  # a sha256 as sources publish it, lower-cased
_AIR_CIVITAI_ID = re.compile(r"([1-9][0-9]{0,15})(?:@([1-9][0-9]{0,15}))?(?:\+([1-9][0-9]{0,15}))?(?:\.([A-Za-z]+))?")

# AIR's format names -> Civitai's file format names
_AIR_FORMATS = {"safetensor": "SafeTensor", "safetensors": "SafeTensor", "ckpt": "PickleTensor",
                "pickletensor": "PickleTensor", "diffuser": "Diffusers", "diffusers": "Diffusers"}

EXAMPLES = (
    "Examples: 'stabilityai/sdxl-turbo' (a Hugging Face repo), 'org/name:model.safetensors', "
    "'org/name@main:model.safetensors', 'https://huggingface.co/org/name/blob/main/model.safetensors', "
    "'4384' (a Civitai model id), '4384@128713' (Civitai model@version), "
    "'https://civitai.com/models/4384?modelVersionId=128713', 'https://civitai.com/api/download/models/128713', "
    "'urn:air:sd1:checkpoint:civitai:4384@128713', or any https:// link to a file."
)


@dataclass(frozen=True)
class CivitaiRef:
    """A Civitai model and/or model version. With only `model_id`, the model's newest version is
    meant; with only `version_id`, the version says its model. The `file_*` fields name one file of
    the version, as a download URL's query or an AIR's `+fileId`/`.format` do."""

    model_id: str | None
    version_id: str | None
    file_id: str | None = None
    file_type: str | None = None  # Civitai's file type: "Model", "Pruned Model", "Config", "VAE", ...
    file_format: str | None = None  # "SafeTensor", "PickleTensor", ... (case-insensitive match)
    file_precision: str | None = None  # "fp16", "fp32", "bf16"
    file_size_kind: str | None = None  # "pruned" or "full"

    def __post_init__(self) -> None:
        if self.model_id is None and self.version_id is None:
            raise ModelSourceError("A Civitai reference needs a model id or a model-version id. " + EXAMPLES,
                                   status=400)

    @property
    def names_a_file(self) -> bool:
        return any((self.file_id, self.file_type, self.file_format, self.file_precision, self.file_size_kind))


@dataclass(frozen=True)
class HuggingFaceRef:
    repo_id: str
    filename: str | None
    revision: str | None = None


@dataclass(frozen=True)
class UrlRef:
    url: str


SourceRef = CivitaiRef | HuggingFaceRef | UrlRef


def _shown(text: str) -> str:
    """The input as an error may quote it: short and with control characters escaped."""
    return repr(text[:80] + ("…" if len(text) > 80 else ""))


def _refuse(text: str, why: str) -> ModelSourceError:
    return ModelSourceError(f"Not a model source: {_shown(text)}: {why}. {EXAMPLES}", status=400)


def parse_source(text: str, *, allow_http: bool = False) -> SourceRef:
    """Read a model source from what a user typed or pasted; raises ModelSourceError (400) that says
    why and shows the accepted forms. `allow_http`: accept plain http:// links too (a mirror on the
    LAN, with the `model_sources_allow_private` setting)."""
    if not isinstance(text, str):
        raise ModelSourceError(f"A model source must be text, not {type(text).__name__}. {EXAMPLES}", status=400)
    if len(text) > MAX_SOURCE_LENGTH:
        raise _refuse(text, f"it is {len(text)} characters long (at most {MAX_SOURCE_LENGTH})")
    stripped = text.strip()
    if not stripped:
        raise ModelSourceError(f"Enter a model source. {EXAMPLES}", status=400)
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in stripped):
        raise _refuse(stripped, "it contains spaces or control characters")

    lowered = stripped.lower()
    if "://" in stripped or lowered.startswith(("javascript:", "data:", "file:", "vbscript:", "mailto:")):
        return _parse_url(stripped, allow_http)
    first = lowered.split("/", 1)[0]
    if first in _HF_HOSTS or first in _CIVITAI_HOSTS:  # a link pasted without its scheme
        return _parse_url("https://" + stripped)
    if lowered.startswith(("urn:", "air:")) or re.match(r"[a-z0-9_.-]+:[a-z0-9_.-]+:(civitai|huggingface):", lowered):
        return _parse_air(stripped)
    if CIVITAI_ID.fullmatch(stripped):
        return CivitaiRef(model_id=stripped, version_id=None)
    match = re.fullmatch(r"([1-9][0-9]{0,15})@([1-9][0-9]{0,15})", stripped)
    if match:
        return CivitaiRef(model_id=match.group(1), version_id=match.group(2))
    if "/" in stripped:
        return _parse_hf_short(stripped)
    if stripped.isdigit():
        raise _refuse(stripped, "a Civitai id is a positive number without leading zeros")
    raise _refuse(stripped, "it is neither an id, a repo name like 'org/name', nor a link")


def _parse_hf_short(text: str) -> HuggingFaceRef:
    """`org/name[@revision][:path]` or `org/name/path/file.ext`."""
    head, sep, filename = text.partition(":")
    if sep and not filename:
        raise _refuse(text, "nothing follows ':' (write the file name after it, e.g. 'org/name:model.safetensors')")
    repo_part, at, revision = head.partition("@")
    if at and not _REVISION.fullmatch(revision or ""):
        raise _refuse(text, f"{revision!r} is not a revision (a branch, tag or commit)")
    parts = repo_part.split("/")
    if len(parts) > 2 and not sep:
        # org/name/path/file.ext: the rest is a path in the repo when it ends like a model file
        if parts[-1].rsplit(".", 1)[-1].lower() in FILE_EXTENSIONS and "." in parts[-1]:
            repo_part, filename = "/".join(parts[:2]), "/".join(parts[2:])
        else:
            raise _refuse(text, "after 'org/name', write the file as 'org/name:path/model.safetensors'")
    if not _HF_REPO.fullmatch(repo_part):
        raise _refuse(text, f"{repo_part!r} is not a Hugging Face repo id ('org/name': letters, digits, '-', '_', '.')")
    return HuggingFaceRef(repo_id=repo_part, filename=_check_path(text, filename) if filename else None,
                          revision=revision or None)


def _check_path(text: str, path: str) -> str:
    path = path.strip("/")
    if not path or not _FILE_PATH.fullmatch(path) or "//" in path:
        raise _refuse(text, f"{path!r} is not a file path inside a repo")
    return path


def _parse_url(text: str, allow_http: bool = False) -> SourceRef:
    try:
        parts = urlsplit(text)
        port = parts.port  # raises ValueError for a bad port
    except ValueError as error:
        raise _refuse(text, f"it is not a valid URL ({error})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise _refuse(text, f"{scheme or 'this'}: links are not accepted (only https:// links to a file)")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise _refuse(text, "links with a user name or password are not accepted; put tokens in "
                            "Settings → Model sources")
    host = (parts.hostname or "").lower().rstrip(".")
    if not host:
        raise _refuse(text, "the link has no host")
    if host in _HF_HOSTS:
        return _parse_hf_url(text, parts.path)
    if host in _CIVITAI_HOSTS:
        return _parse_civitai_url(text, parts.path, parts.query)
    if scheme == "http" and not allow_http:
        raise _refuse(text, "plain http:// is not accepted (a file fetched over http can be altered on the way); "
                            "use the https:// address")
    if port == 0:
        raise _refuse(text, "port 0 is not a port")
    return UrlRef(url=parts._replace(fragment="").geturl())  # a fragment is never sent


def _parse_hf_url(text: str, path: str) -> HuggingFaceRef:
    segments = [unquote(s) for s in path.split("/") if s]
    if segments and segments[0] in ("datasets", "spaces", "collections", "docs", "papers", "organizations"):
        raise _refuse(text, f"Hugging Face {segments[0]} are not models; link to a model repo")
    if len(segments) < 2:
        raise _refuse(text, "a Hugging Face link names a repo: https://huggingface.co/org/name")
    repo_id = f"{segments[0]}/{segments[1]}"
    if not _HF_REPO.fullmatch(repo_id):
        raise _refuse(text, f"{repo_id!r} is not a Hugging Face repo id")
    rest = segments[2:]
    if not rest:
        return HuggingFaceRef(repo_id=repo_id, filename=None)
    kind = rest[0]
    if kind not in ("blob", "resolve", "raw", "tree") or len(rest) < 2:
        raise _refuse(text, f"'/{kind}/' links are not files; use a .../blob/<revision>/<file> or "
                            ".../resolve/<revision>/<file> link")
    revision = rest[1]
    if not _REVISION.fullmatch(revision):
        raise _refuse(text, f"{revision!r} is not a revision")
    if kind == "tree":  # a folder view: the repo at that revision
        return HuggingFaceRef(repo_id=repo_id, filename=None, revision=revision)
    if len(rest) < 3:
        raise _refuse(text, "the link names no file after the revision")
    return HuggingFaceRef(repo_id=repo_id, filename=_check_path(text, "/".join(rest[2:])), revision=revision)


def _single(query: dict[str, list[str]], key: str) -> str | None:
    values = query.get(key)
    return values[-1] if values and values[-1] else None


def _civitai_id(text: str, value: str | None, what: str) -> str | None:
    if value is None:
        return None
    if not CIVITAI_ID.fullmatch(value):
        raise _refuse(text, f"{what} {value!r} is not a Civitai id (a positive number)")
    return value


def _parse_civitai_url(text: str, path: str, query_text: str) -> CivitaiRef:
    segments = [s for s in path.split("/") if s]
    query = parse_qs(query_text, keep_blank_values=True)
    version_query = _civitai_id(text, _single(query, "modelVersionId"), "modelVersionId")
    if len(segments) >= 2 and segments[0] == "models":
        return CivitaiRef(model_id=_civitai_id(text, segments[1], "model id"), version_id=version_query)
    if len(segments) == 2 and segments[0] == "model-versions":
        return CivitaiRef(model_id=None, version_id=_civitai_id(text, segments[1], "model-version id"))
    if segments[:3] == ["api", "download", "models"] and len(segments) == 4:
        return CivitaiRef(model_id=None, version_id=_civitai_id(text, segments[3], "model-version id"),
                          file_type=_single(query, "type"), file_format=_single(query, "format"),
                          file_precision=_single(query, "fp"), file_size_kind=_single(query, "size"))
    if segments[:2] == ["api", "v1"] and len(segments) == 4 and segments[2] in ("models", "model-versions"):
        value = _civitai_id(text, segments[3], "id")
        if segments[2] == "models":
            return CivitaiRef(model_id=value, version_id=version_query)
        return CivitaiRef(model_id=None, version_id=value)
    raise _refuse(text, "this Civitai page is not a model; link to https://civitai.com/models/<id>")


def _parse_air(text: str) -> SourceRef:
    """`urn:air:{ecosystem}:{type}:{source}:{id}[@{version}][+{fileId}][.{format}]`; ecosystem and type
    may be missing (the older wiki form `urn:air:model:huggingface:org/name`)."""
    body = text
    for prefix in ("urn:", "air:"):
        if body.lower().startswith(prefix):
            body = body[len(prefix):]
    parts = body.split(":")
    sources = [i for i, part in enumerate(parts[:3]) if part.lower() in ("civitai", "huggingface")]
    if not sources:
        source = parts[-2] if len(parts) >= 2 else body  # the segment before the id
        raise _refuse(text, f"AIR source {source!r} is not one Atelier reads (civitai, huggingface)")
    index = sources[-1]
    resource = ":".join(parts[index + 1:])
    if parts[index].lower() == "civitai":
        match = _AIR_CIVITAI_ID.fullmatch(resource)
        if not match:
            raise _refuse(text, f"{resource!r} is not '<modelId>[@<versionId>]' (e.g. 4384@128713)")
        model_id, version_id, file_id, air_format = match.groups()
        file_format = _AIR_FORMATS.get(air_format.lower(), air_format) if air_format else None
        return CivitaiRef(model_id=model_id, version_id=version_id, file_id=file_id, file_format=file_format)
    repo, _, revision = resource.partition("@")
    if not _HF_REPO.fullmatch(repo) or (revision and not _REVISION.fullmatch(revision)):
        raise _refuse(text, f"{resource!r} is not a Hugging Face repo id ('org/name')")
    return HuggingFaceRef(repo_id=repo, filename=None, revision=revision or None)
