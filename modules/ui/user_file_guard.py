"""Keeps users of a `--multi-user` server out of each other's files, in front of every file route and
every Gradio event (modules.ui.user_files says whose a file is).

- `GET`/`HEAD` of `/gradio_api/file=<path>` (and Gradio's older `/gradio_api/file/<path>`) and of
  A1111's `/file=<path>`: a file of another user, or of the shared output folders for a user who is
  not an operator, is answered 404 "Not Found", whether it exists or not: the answer must not tell
  another user which images exist.
- A Gradio event (`POST /gradio_api/queue/join`, `/run/*`, `/api/*`, `/call/*`, `/stream/*`: every
  body posted under `/gradio_api/` but a multipart upload): a `FileData` input (a JSON object with a
  `path`, or a `url` of the form `.../file=<path>`) naming such a file is refused with 403 and a JSON
  error naming the input, before Gradio reads it: PNG Info, the img2img inputs and the send-to
  buttons would otherwise read another user's image (Gradio's own rule accepts any file in its cache).

Installed by modules.ui.app inside the authentication middleware, which puts the user in the request
scope (modules.serving.accounts); only with `--multi-user`. Uploads (multipart bodies) pass: a user
can only upload their own bytes.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from modules.serving.accounts import User
from modules.serving.paths import REPO_ROOT
from modules.ui.user_files import FileOwners

log = logging.getLogger(__name__)

GRADIO_FILE_PREFIXES = ("/gradio_api/file=", "/gradio_api/file/")
A1111_FILE_PREFIX = "/file="
GRADIO_API_PREFIX = "/gradio_api/"
NOT_FOUND = b"Not Found"


def _file_path(path: str) -> tuple[str, Path] | None:
    """(the raw path, the folder a relative one is taken from) for a file route, else None. Gradio
    takes a relative path from the working folder, `/file=` from the install folder."""
    for prefix in GRADIO_FILE_PREFIXES:
        if path.startswith(prefix):
            return path[len(prefix):], Path.cwd()
    if path.startswith(A1111_FILE_PREFIX):
        return path[len(A1111_FILE_PREFIX):], REPO_ROOT
    return None


def _absolute(raw: str, base: Path) -> str:
    return raw if os.path.isabs(raw) else os.path.join(base, raw)


def file_data_paths(value: Any) -> Iterator[str]:
    """Every file path a Gradio event body names: the `path` of each JSON object that has one (a
    `FileData`, whatever its `meta`), and the path in a `url` of the form `.../file=<path>`."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            path = item.get("path")
            if isinstance(path, str) and path:
                yield path
            url = item.get("url")
            if isinstance(url, str) and "file=" in url:
                yield unquote(url.split("file=", 1)[1].split("?", 1)[0])
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


class UserFileGuard:
    """ASGI middleware: see the module docstring. `cache_dir`: this process's Gradio cache (where
    modules.ui.user_files writes the galleries)."""

    def __init__(self, app, context, cache_dir: str | os.PathLike | None = None):
        self.app = app
        self.context = context
        self.cache_dir = cache_dir

    def _user(self, scope) -> User:
        return self.context.accounts.user_of_scope(scope)

    def _owners(self) -> FileOwners:
        return FileOwners.of(self.context, self.cache_dir)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        method = scope.get("method", "GET")
        named = _file_path(path) if method in ("GET", "HEAD") else None
        if named is not None:
            raw, base = named
            user = self._user(scope)
            if not user.admin and "\x00" not in raw and not self._owners().may_read(user, _absolute(raw, base)):
                log.info("Answered 404 to %s for another user's file %s", user.label(), raw)
                await _not_found(send)
                return
        elif method == "POST" and path.startswith(GRADIO_API_PREFIX) and not _is_multipart(scope):
            await self._check_event(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _check_event(self, scope, receive, send) -> None:
        """Read the JSON body, refuse it when it names another user's file, else pass it on whole."""
        messages = []
        chunks = []
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break  # the client went away: let the app see it
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        user = self._user(scope)
        if not user.admin:
            try:
                body = json.loads(b"".join(chunks) or b"null")
            except (ValueError, UnicodeDecodeError):
                body = None  # not JSON after all: Gradio answers it
            owners = None
            for named in file_data_paths(body):
                owners = owners or self._owners()
                if "\x00" not in named and not owners.may_read(user, _absolute(named, Path.cwd())):
                    log.warning("Refused a Gradio event of %s naming another user's file %s", user.label(), named)
                    from modules.api.request_guards import send_json_error

                    await send_json_error(send, 403, "Forbidden",
                                          f"an input names {named!r}, which is not one of your files (an image of "
                                          "another user of this server); upload the image or pick one of yours")
                    return
        replay = iter(messages)

        async def replayed():
            try:
                return next(replay)
            except StopIteration:
                return await receive()

        await self.app(scope, replayed, send)


def _is_multipart(scope) -> bool:
    """An upload (Gradio's `/gradio_api/upload`): its bytes are the user's own, and can be large.
    Every other body is read: FastAPI takes a body without a JSON content type as JSON too."""
    for key, value in scope.get("headers", ()):
        if key.lower() == b"content-type":
            return value.lower().startswith(b"multipart/")
    return False


async def _not_found(send) -> None:
    await send({"type": "http.response.start", "status": 404, "headers": [
        (b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(NOT_FOUND)).encode())]})
    await send({"type": "http.response.body", "body": NOT_FOUND})


def install_user_file_guard(app, context, cache_dir: str | os.PathLike | None = None) -> bool:
    """Add the guard to `app` when the server is shared with `--multi-user` (returns whether it did).
    Call before the authentication middleware is installed, so that it sits inside it."""
    if not context.accounts.multi_user:
        return False
    app.add_middleware(UserFileGuard, context=context, cache_dir=cache_dir)
    return True
