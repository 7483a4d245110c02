"""A1111's API extras on every response: the `X-Process-Time` header, and with `--api-log` one log
line per `/sdapi` request. Pure ASGI, so streamed responses (Gradio's) pass through untouched."""

from __future__ import annotations

import logging
import time

log = logging.getLogger("atelier.api")


class ProcessTimeMiddleware:
    def __init__(self, app, log_requests: bool = False):
        self.app = app
        self.log_requests = log_requests

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0

        async def timed_send(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", ()))
                headers.append((b"x-process-time", f"{time.perf_counter() - started:.4f}".encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            if self.log_requests and scope["path"].startswith("/sdapi/"):
                client = scope.get("client") or ("?", 0)
                log.info("API %s %s %s %d %.3fs", client[0], scope["method"], scope["path"], status,
                         time.perf_counter() - started)
