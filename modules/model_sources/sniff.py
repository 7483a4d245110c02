"""Is this body the file we asked for? Decided from its first bytes and Content-Type, before saving.

The most common broken "model" is an error saved under a model's name: an HTML login page, a JSON
`{"error": ...}` from an API, a CDN's "access denied" text. Each kind of file has a signature that
no such page has, so the first bytes decide:

- `.safetensors`: 8-byte little-endian header length (at most 100 MB, safetensors' own bound), then
  `{` — the JSON header.
- `.ckpt` / `.pt` / `.pth` / `.bin`: a zip archive (`PK\\x03\\x04`, what `torch.save` writes) or a
  pickle (`\\x80` then a protocol number 2–5, the legacy format).
- `.yaml`: text is expected; an HTML page or a JSON error object is not.
- images (previews): PNG, JPEG, WebP or GIF signatures.

A refused body raises `BodyRefused` whose message says what came back (status, type, the first
words of the text, or "a login page") and what to do (the caller's hint, e.g. "this file needs a
Civitai API key: Settings → Model sources").
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from modules.model_sources.types import ModelSourceError

# How many first bytes a check wants; fewer only when the whole file is shorter.
SNIFF_BYTES = 4096
SAFETENSORS_MAX_HEADER = 100_000_000  # safetensors refuses larger headers itself
PICKLE_SUFFIXES = frozenset({".ckpt", ".pt", ".pth", ".bin"})
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif"})
KINDS = ("safetensors", "pickle", "yaml", "image", "model")
_KIND_NAMES = {"safetensors": "safetensors file", "pickle": "PyTorch checkpoint (zip or pickle)",
               "yaml": "YAML config", "image": "image", "model": "model file"}


class BodyRefused(ModelSourceError):
    """A body is not the kind of file expected; nothing was saved."""

    def __init__(self, message: str):
        super().__init__(message, status=502)


def expected_kind(destination: str | Path) -> str:
    """The kind of file a destination's suffix promises (one of KINDS)."""
    suffix = Path(destination).suffix.lower()
    if suffix == ".safetensors":
        return "safetensors"
    if suffix in PICKLE_SUFFIXES:
        return "pickle"
    if suffix in (".yaml", ".yml"):
        return "yaml"
    if suffix in IMAGE_SUFFIXES:
        return "image"
    return "model"


def is_safetensors_header(head: bytes) -> bool:
    if len(head) < 9:
        return False
    length = int.from_bytes(head[:8], "little")
    return 2 <= length <= SAFETENSORS_MAX_HEADER and head[8:9] == b"{"


def is_zip(head: bytes) -> bool:
    return head[:4] == b"PK\x03\x04"


def is_pickle(head: bytes) -> bool:
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def is_image(head: bytes) -> bool:
    return (head[:8] == b"\x89PNG\r\n\x1a\n" or head[:3] == b"\xff\xd8\xff" or head[:6] in (b"GIF87a", b"GIF89a")
            or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"))


def looks_like_login_page(text: str) -> bool:
    lowered = text.lower()
    return "<form" in lowered and ("password" in lowered or "sign in" in lowered or "log in" in lowered)


def _looks_like_html(content_type: str, text: str) -> bool:
    start = text.lstrip()[:200].lower()
    return "html" in content_type or start.startswith(("<!doctype html", "<html", "<head", "<body"))


def _is_json_error(text: str) -> bool:
    try:
        data = json.loads(text)
    except ValueError:
        return False
    return isinstance(data, dict) and any(k in data for k in ("error", "errors", "message", "detail"))


def check_body(kind: str, head: bytes, *, status: int, content_type: str, url: str = "", hint: str = "") -> None:
    """Raise BodyRefused unless `head` (the first SNIFF_BYTES of the body, or all of a shorter one)
    can be a file of `kind`. `url` is shown as given (pass a redacted one)."""
    if kind not in KINDS:
        raise ValueError(f"unknown file kind {kind!r}; expected one of {KINDS}")
    media = content_type.split(";", 1)[0].strip().lower()
    text = head.decode("utf-8", errors="replace")
    if kind == "safetensors":
        ok = is_safetensors_header(head)
    elif kind == "pickle":
        ok = is_zip(head) or is_pickle(head)
    elif kind == "image":
        ok = is_image(head)
    elif kind == "yaml":
        ok = bool(head) and not _looks_like_html(media, text) and not _is_json_error(text) and "\x00" not in text
    else:  # a model of unknown suffix: any binary signature we know
        ok = is_safetensors_header(head) or is_zip(head) or is_pickle(head)
    # An error page can only pass a binary signature by accident; the Content-Type is still a
    # declaration by the host that it sent text, which for a weights file means an error.
    if ok and kind in ("safetensors", "pickle", "model") and (media.startswith("text/") or "json" in media):
        ok = False
    if ok:
        return
    raise BodyRefused(_refusal(kind, head, text, status=status, media=media, url=url, hint=hint))


def _refusal(kind: str, head: bytes, text: str, *, status: int, media: str, url: str, hint: str) -> str:
    where = f"{url} " if url else ""
    sent = f"sent HTTP {status}, {media or 'no Content-Type'}"
    if _looks_like_html(media, text):
        if looks_like_login_page(text):
            what, advice = "a login page", ("the host wants you signed in: add an API key or token in Settings → "
                                            "Model sources")
        else:
            what, advice = "a web page", "the link leads to a web page, not the file: use the file's download link"
        what += f" ({describe_body(status, media, head)})"
    elif _is_json_error(text):
        what, advice = f"an error from the API ({describe_body(status, media, head)})", "see the message above"
    elif media.startswith("text/") or "json" in media:
        what, advice = f"text ({describe_body(status, media, head)})", "the host sent a message, not the file"
    elif not head:
        what, advice, hint = "an empty body", "the host sent nothing; try again later", ""
    else:  # binary, but not this kind: an access hint would mislead
        what = f"bytes that do not start like one ({head[:16]!r})"
        advice, hint = "the file is damaged or not what its name says; check the source", ""
    return (f"{where}{sent} — {what} — instead of a {_KIND_NAMES[kind]}; nothing was saved. "
            f"{(hint or advice).rstrip('.')}.")


def describe_body(status: int, content_type: str, body: bytes) -> str:
    """A short description of what a host sent: a JSON error's message, or the first words of a
    text/HTML page (tags removed), with its type. Empty when there is nothing readable."""
    kind = content_type.split(";", 1)[0].strip() or "no Content-Type"
    text = body[:SNIFF_BYTES].decode("utf-8", errors="replace").strip()
    if not text:
        return f"an empty {kind} body" if status >= 300 else ""
    if text.startswith(("{", "[")):
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        message = _json_message(data)
        if message:
            return f"{kind} {message!r}"
    if _looks_like_html(kind.lower(), text):
        title = re.search(r"(?is)<title[^>]*>(.*?)</title>", text)
        text = re.sub(r"(?is)<(script|style)[^>]*>.*?</\1>", " ", text)
        text = re.sub(r"(?is)<title[^>]*>.*?</title>", " ", text)
        text = re.sub(r"(?s)<[^>]+>", " ", text)
        if title:
            text = title.group(1) + " — " + text
    words = " ".join(text.split())
    if not words or not words.isprintable():
        return f"a {kind} body"
    if len(words) > 160:
        words = words[:160].rsplit(" ", 1)[0] + " …"
    return f"{kind} {words!r}"


def _json_message(data: Any) -> str:
    """The message of a JSON error body in the shapes APIs use: {"error": ...}, {"message": ...},
    {"detail": ...}, {"errors": [...]}."""
    if isinstance(data, str):
        return data
    if isinstance(data, dict):
        for key in ("error", "message", "detail", "errors", "msg"):
            if data.get(key):
                value = data[key]
                if isinstance(value, (dict, list)):
                    return _json_message(value) or json.dumps(value)[:200]
                return str(value)
    if isinstance(data, list) and data:
        return _json_message(data[0])
    return ""
