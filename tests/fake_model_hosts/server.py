"""A fake host per loopback port: routes, a log of what clients sent, and files with failure knobs.

Each `FakeHost` is a stdlib `ThreadingHTTPServer` on its own port of 127.0.0.1, so a redirect from
one to another is cross-origin (different port), which is what the token-forwarding rules and the
SSRF guard are tested against. Handlers get a `Request` and return a `Reply`; `serve_blob` answers
a file download the way a CDN does (Content-Length, ETag, Accept-Ranges, 206 for a Range), with
`BlobKnobs` to misbehave: cut the connection after N bytes, ignore Range, answer 416, or send other
bytes than the published ones.
"""

from __future__ import annotations

import hashlib
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import parse_qs, urlsplit


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: bytes
    match: re.Match | None = None


@dataclass
class Reply:
    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    # Close the connection after this many body bytes, though Content-Length promised them all.
    drop_after: int | None = None
    send_length: bool = True

    @classmethod
    def json(cls, data, status: int = 200, headers: list[tuple[str, str]] | None = None) -> "Reply":
        import json

        return cls(status, [("Content-Type", "application/json; charset=utf-8"), *(headers or [])],
                   json.dumps(data).encode())

    @classmethod
    def redirect(cls, location: str, status: int = 302, headers: list[tuple[str, str]] | None = None) -> "Reply":
        return cls(status, [("Location", location), *(headers or [])])

    @classmethod
    def text(cls, text: str, status: int = 200, content_type: str = "text/plain; charset=utf-8") -> "Reply":
        return cls(status, [("Content-Type", content_type)], text.encode())


Handler = Callable[[Request], Reply]


class _QuietServer(ThreadingHTTPServer):
    """Clients that hang up early (a cancelled download, a refused body) are normal here: no traceback."""

    def handle_error(self, request, client_address) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            super().handle_error(request, client_address)


class FakeHost:
    """One HTTP server on 127.0.0.1:<free port>. `routes` are tried in order: (method, regex on the
    path without query, handler). Every request is appended to `log`."""

    def __init__(self, name: str):
        self.name = name
        self.routes: list[tuple[str, re.Pattern, Handler]] = []
        self.log: list[Request] = []
        host = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def _handle(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                request = Request(self.command, parts.path,
                                  {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()},
                                  {k.lower(): v for k, v in self.headers.items()}, body)
                host.log.append(request)
                reply = host.dispatch(request)
                self.send_response(reply.status)
                names = {name.lower() for name, _ in reply.headers}
                for name, value in reply.headers:
                    self.send_header(name, value)
                if reply.send_length and "content-length" not in names:
                    self.send_header("Content-Length", str(len(reply.body)))
                if reply.drop_after is not None or not reply.send_length:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.end_headers()
                if self.command == "HEAD":
                    return
                data = reply.body if reply.drop_after is None else reply.body[:reply.drop_after]
                try:
                    for start in range(0, len(data), 1 << 20):
                        self.wfile.write(data[start:start + (1 << 20)])
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

            do_GET = do_HEAD = do_POST = _handle

        self.server = _QuietServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        # A short poll interval: shutdown() waits for it, and tests close hosts often.
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02},
                                        name=f"fake-{name}", daemon=True)
        self._thread.start()

    def route(self, method: str, pattern: str, handler: Handler) -> None:
        self.routes.append((method, re.compile(pattern), handler))

    def dispatch(self, request: Request) -> Reply:
        for method, pattern, handler in self.routes:
            match = pattern.fullmatch(request.path)
            if match and (method == request.method or (method == "GET" and request.method == "HEAD")):
                request.match = match
                return handler(request)
        return Reply.json({"error": f"no route for {request.method} {request.path}"}, status=404)

    def requests_to(self, path_prefix: str = "") -> list[Request]:
        return [r for r in self.log if r.path.startswith(path_prefix)]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class BlobKnobs:
    """Ways a file server misbehaves. Counters apply to the next N downloads of the file."""

    drop_after: int | None = None  # cut the connection after this many bytes ...
    drops: int = 0  # ... for this many responses
    ignore_range: bool = False  # answer 200 with the whole file to a Range request
    always_416: bool = False  # answer every Range request with 416
    corrupt: bool = False  # send bytes other than the published ones (same length)
    content_type: str = "application/octet-stream"


@dataclass
class Blob:
    name: str
    data: bytes
    knobs: BlobKnobs = field(default_factory=BlobKnobs)
    served: int = 0  # responses sent

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def etag(self) -> str:
        return f'"{self.sha256}"'


_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


def serve_blob(request: Request, blob: Blob, extra_headers: list[tuple[str, str]] | None = None) -> Reply:
    """Answer a GET/HEAD of `blob` like a CDN: 200 with the whole file, 206 for `Range: bytes=a-[b]`,
    416 for a start beyond the end; then apply the blob's knobs."""
    knobs = blob.knobs
    data = bytes(b ^ 0xFF for b in blob.data[:64]) + blob.data[64:] if knobs.corrupt else blob.data
    headers = [("Content-Type", knobs.content_type), ("ETag", blob.etag), ("Accept-Ranges", "bytes"),
               *(extra_headers or [])]
    status, body = 200, data
    wanted = request.headers.get("range")
    if wanted and not knobs.ignore_range:
        match = _RANGE.match(wanted.strip())
        start = int(match.group(1)) if match else 0
        end = int(match.group(2)) if match and match.group(2) else len(data) - 1
        if knobs.always_416 or start >= len(data):
            return Reply(416, [("Content-Range", f"bytes */{len(data)}"), ("Content-Type", "text/plain")], b"")
        status, body = 206, data[start:end + 1]
        headers.append(("Content-Range", f"bytes {start}-{start + len(body) - 1}/{len(data)}"))
    reply = Reply(status, headers, body)
    if request.method == "GET":
        blob.served += 1
        if knobs.drops > 0 and knobs.drop_after is not None:
            knobs.drops -= 1
            reply.drop_after = knobs.drop_after
    return reply
