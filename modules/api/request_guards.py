"""Guards every request passes before any route sees it: a size cap on request bodies, and a refusal
of state-changing requests a browser sends on behalf of another site.

Cross-site: browsers resend cached HTTP Basic credentials with requests that another site's page
makes to this server (a form post, a `fetch` with `no-cors`), so "logged in" is not "asked for it".
A request that changes something (any method but GET, HEAD, OPTIONS; and every WebSocket handshake)
is refused when the browser says it comes from elsewhere: `Sec-Fetch-Site` other than
`same-origin`/`none`, or an `Origin` whose host is not this server's. Programs (the `webuiapi`
client, curl, bots) send neither header and pass. Origins the operator allows with A1111's
`--cors-allow-origins` / `--cors-allow-origins-regex` pass too, and are the only ones CORS answers
for: the CORS middleware installed here also stops the mounted Gradio app from echoing any
`localhost` origin with credentials (it defers to a parent app that configures CORS).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY_MB = 32
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SAME_ORIGIN_FETCH_SITES = frozenset({"same-origin", "none"})


@dataclass(frozen=True)
class OriginPolicy:
    """The origins, besides this server's own, that may call it from a browser."""

    origins: frozenset[str] = frozenset()
    origin_regex: str | None = None

    @classmethod
    def from_args(cls, args) -> OriginPolicy:
        origins = frozenset(o.strip().rstrip("/") for o in (getattr(args, "cors_allow_origins", None) or "").split(",")
                            if o.strip())
        regex = getattr(args, "cors_allow_origins_regex", None) or None
        if regex is not None:
            try:
                re.compile(regex)
            except re.error as e:
                raise ValueError(f"--cors-allow-origins-regex {regex!r} is not a valid regular expression ({e})") from None
        return cls(origins, regex)

    def allows(self, origin: str) -> bool:
        origin = origin.rstrip("/")
        return origin in self.origins or (self.origin_regex is not None and re.fullmatch(self.origin_regex, origin) is not None)


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def cross_site_reason(scope, policy: OriginPolicy) -> str | None:
    """Why the request must be refused as cross-site, or None when it may pass."""
    if scope["type"] == "http" and scope.get("method", "GET") in SAFE_METHODS:
        return None
    origin = _header(scope, b"origin")
    if origin is not None and policy.allows(origin):
        return None
    fetch_site = _header(scope, b"sec-fetch-site")
    if fetch_site is not None and fetch_site.lower() not in SAME_ORIGIN_FETCH_SITES:
        return f"the browser sent it from another site (Sec-Fetch-Site: {fetch_site})"
    if origin is not None:
        host = (_header(scope, b"host") or "").lower()
        try:
            origin_host = urlsplit(origin).netloc.lower() if origin != "null" else "null"
        except ValueError:  # not a URL (e.g. "http://[::1"): certainly not this server's origin
            origin_host = None
        if origin_host != host:
            return f"it comes from the page of another origin ({origin})"
    return None


class RequestGuardMiddleware:
    """Pure ASGI: refuses cross-site state changes (403) and bodies over `max_body_bytes` (413), with
    A1111's JSON error shape."""

    def __init__(self, app, *, max_body_bytes: int, origins: OriginPolicy):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.origins = origins

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        reason = cross_site_reason(scope, self.origins)
        if reason is not None:
            log.warning("Refused %s %s: %s", scope.get("method", "WEBSOCKET"), scope["path"], reason)
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008, "reason": "cross-site request refused"})
            else:
                await send_json_error(send, 403, "Forbidden", f"Refused: {reason}. Open Atelier's own page, or start it "
                                  "with --cors-allow-origins naming the site that may call it.")
            return
        if scope["type"] == "websocket":
            await self.app(scope, receive, send)
            return
        length = _header(scope, b"content-length")
        if length is not None and length.strip().isdigit():
            # The HTTP server delivers no more than Content-Length bytes, so the header is the size.
            if int(length) > self.max_body_bytes:
                await send_json_error(send, 413, "PayloadTooLarge", self._too_large_message(int(length)))
                return
            await self.app(scope, receive, send)
            return
        # No length (a chunked body): read it here, up to the cap, then hand it on.
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay([message]), send)
                return
            chunks.append(message)
            size += len(message.get("body", b""))
            if size > self.max_body_bytes:
                await send_json_error(send, 413, "PayloadTooLarge", self._too_large_message(None))
                return
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(chunks, receive), send)

    def _too_large_message(self, size: int | None) -> str:
        limit = self.max_body_bytes / 2**20
        got = f" ({size / 2**20:.1f} MiB)" if size is not None else ""
        return (f"Request body too large{got}: the limit is {limit:g} MiB; send smaller images, or start the "
                "server with a larger --max-body-size")


def _replay(messages: list, then=None):
    """A `receive` that yields `messages`, then defers to `then` (disconnects)."""
    pending = list(messages)

    async def receive():
        if pending:
            return pending.pop(0)
        return await then() if then is not None else {"type": "http.disconnect"}

    return receive


async def send_json_error(send, status: int, name: str, detail: str, headers: tuple = ()) -> None:
    """An ASGI answer in A1111's JSON error shape (`error`, `detail`, `body`, `errors`), for
    middleware that refuses a request before any route sees it."""
    body = json.dumps({"error": name, "detail": detail, "body": "", "errors": f"{status}: {detail}"}).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


def install_request_guards(app, args) -> None:
    """Add the body cap, the cross-site refusal and a CORS policy that answers only for the origins
    the operator allowed (see the module docstring). Call before install_auth, which goes outside."""
    from starlette.middleware.cors import CORSMiddleware

    policy = OriginPolicy.from_args(args)
    app.add_middleware(CORSMiddleware, allow_origins=sorted(policy.origins), allow_origin_regex=policy.origin_regex,
                       allow_credentials=True, allow_methods=["*"], allow_headers=["*"])
    app.add_middleware(RequestGuardMiddleware, max_body_bytes=max_body_bytes(args), origins=policy)


def max_body_bytes(args) -> int:
    """The `--max-body-size` cap in bytes (the API's JSON and the UI's uploads alike)."""
    return int((getattr(args, "max_body_size", None) or DEFAULT_MAX_BODY_MB) * 2**20)
