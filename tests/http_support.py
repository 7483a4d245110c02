"""A local HTTP server that serves one image file, for the tests of image URLs (the API fetches
them through its address guard, which refuses 127.0.0.1 unless the operator allows local hosts)."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager


@contextmanager
def serving_image(payload: bytes, *, content_type: str = "image/png",
                  redirects: Mapping[str, str] | None = None) -> Iterator[str]:
    """Serve `payload` at every path (a path in `redirects` answers 302 to its target); yields the
    base URL, `http://127.0.0.1:<port>`."""
    moved = dict(redirects or {})

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path in moved:
                self.send_response(302)
                self.send_header("Location", moved[self.path])
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
