"""HTTP Basic auth for every route the server has: UI, API, docs, files, internal routes.

One ASGI middleware sits in front of the whole app (FastAPI routes and the mounted Gradio app
alike), so no route can be added that skips it. Two credential sets (A1111's flags):

- `--gradio-auth "u:p,u2:p2"` and `--gradio-auth-path FILE` (pairs separated by commas or
  newlines, each split on its first `:`; both sources combine) guard the UI side: everything that is
  not the API.
- `--api-auth "u:p,..."` guards the API side: `/sdapi/*`, Atelier's own API `/atelier/v1/*` and the
  OpenAPI docs (`/docs`, `/redoc`, `/openapi.json`). The page's own routes under `/atelier/`
  (`/atelier/opts.json`) are the UI's.

Where A1111 leaves a side open, Atelier does not: without `--api-auth` the API takes the UI's
credentials, and without `--gradio-auth` the UI takes the API's, so with any auth flag given no route
is open. With none, everything is open, as in A1111. Passwords are compared with
`hmac.compare_digest` against every configured pair (no early exit that timing could reveal).
The UI uses HTTP Basic too rather than Gradio's login form, which protects only Gradio's own
routes (PITFALLS.md); the browser asks once and sends the credentials with every request.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from modules.api.request_guards import send_json_error
from modules.serving.accounts import USER_STATE_KEY

log = logging.getLogger(__name__)

API_DOC_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
UNAUTHORIZED_MESSAGE = "Incorrect username or password"
REALM = "Atelier"


def is_api_path(path: str) -> bool:
    """A1111's `/sdapi`, Atelier's own API `/atelier/v1` and the API docs (not the page's routes
    under `/atelier/`, which the browser calls with the UI's credentials)."""
    return (path in ("/sdapi", "/atelier/v1") or path.startswith(("/sdapi/", "/atelier/v1/"))
            or path in API_DOC_PATHS)


def parse_credentials(text: str, source: str) -> list[tuple[str, str]]:
    """`user:pass` pairs separated by commas or newlines; each splits on its first `:`.

    Errors name the entry's position, never its text (it may be a password)."""
    pairs = []
    entries = [entry.strip() for line in text.strip().strip('"').splitlines() for entry in line.split(",")]
    for number, entry in enumerate((e for e in entries if e), start=1):
        user, sep, password = entry.partition(":")
        if not sep:
            raise ValueError(f"{source}: credential {number} has no ':'; write user:password pairs separated "
                             "by commas or newlines")
        pairs.append((user, password))
    return pairs


class Credentials:
    """A set of accepted user/password pairs, checked in constant time per pair."""

    def __init__(self, pairs: Iterable[tuple[str, str]]):
        self._pairs = tuple((user.encode(), password.encode()) for user, password in pairs)
        if not self._pairs:
            raise ValueError("no credentials given")

    def __len__(self) -> int:
        return len(self._pairs)

    def accepts(self, user: bytes, password: bytes) -> bool:
        return self.accepted_user(user, password) is not None

    def accepted_user(self, user: bytes, password: bytes) -> str | None:
        """The user name of the pair that matches, or None. Every pair is compared."""
        accepted: bytes | None = None
        for known_user, known_password in self._pairs:
            # `&`, not `and`: both comparisons run for every pair.
            if hmac.compare_digest(known_user, user) & hmac.compare_digest(known_password, password):
                accepted = known_user
        return accepted.decode("utf-8", "replace") if accepted is not None else None

    def user_names(self) -> list[str]:
        return [user.decode("utf-8", "replace") for user, _ in self._pairs]


@dataclass(frozen=True)
class AuthPolicy:
    """Which credentials each side of the server takes; None means open."""

    api: Credentials | None
    ui: Credentials | None

    @property
    def enabled(self) -> bool:
        return self.api is not None or self.ui is not None

    def for_path(self, path: str) -> Credentials | None:
        return self.api if is_api_path(path) else self.ui

    def user_names(self) -> list[str]:
        """Every user name of both sides, in order, once each (the accounts of `--multi-user`)."""
        names = [*(self.ui.user_names() if self.ui else []), *(self.api.user_names() if self.api else [])]
        return list(dict.fromkeys(names))

    @classmethod
    def from_args(cls, args) -> AuthPolicy:
        """The policy the auth flags ask for. A flag that is given but yields no credentials (an
        empty value, an empty or unreadable file) is a ValueError: it must never leave the server
        open."""
        def given(flag: str, text: str | None) -> list[tuple[str, str]]:
            if text is None:
                return []
            pairs = parse_credentials(text, flag)
            if not pairs:
                raise ValueError(f"{flag} holds no user:password pairs; write them separated by commas or newlines")
            return pairs

        ui_pairs = given("--gradio-auth", getattr(args, "gradio_auth", None))
        if getattr(args, "gradio_auth_path", None):
            path = Path(args.gradio_auth_path).expanduser()
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as e:
                raise ValueError(f"--gradio-auth-path: cannot read {path} ({e.strerror})") from None
            ui_pairs += given(f"--gradio-auth-path {path}", text)
        api_pairs = given("--api-auth", getattr(args, "api_auth", None))
        ui = Credentials(ui_pairs) if ui_pairs else None
        api = Credentials(api_pairs) if api_pairs else None
        return cls(api=api or ui, ui=ui or api)


def _basic_credentials(headers: Iterable[tuple[bytes, bytes]]) -> tuple[bytes, bytes] | None:
    for name, value in headers:
        if name.lower() != b"authorization":
            continue
        scheme, _, encoded = value.partition(b" ")
        if scheme.lower() != b"basic":
            return None
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            return None
        user, sep, password = decoded.partition(b":")
        return (user, password) if sep else None
    return None


class BasicAuthMiddleware:
    """Pure ASGI: refuses HTTP requests with 401 (A1111's message and JSON error shape) and
    WebSocket handshakes with a close (403), unless they carry accepted credentials."""

    def __init__(self, app, policy: AuthPolicy):
        self.app = app
        self.policy = policy

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        credentials = self.policy.for_path(scope["path"])
        if credentials is not None:
            given = _basic_credentials(scope.get("headers", ()))
            user = credentials.accepted_user(*given) if given is not None else None
            if user is None:
                # No credentials is routine (a browser's first request, before it asks the user).
                client = scope.get("client") or ("?", 0)
                log.log(logging.DEBUG if given is None else logging.WARNING, "Refused %s %s from %s: %s",
                        scope.get("method", "WEBSOCKET"), scope["path"], client[0],
                        "no credentials" if given is None else "wrong username or password")
                await _refuse(scope, send)
                return
            # Who asked, for the routes and handlers behind (modules.serving.accounts.user_of). A copy:
            # the server's lifespan state is shared by every request.
            scope = {**scope, "state": {**(scope.get("state") or {}), USER_STATE_KEY: user}}
        await self.app(scope, receive, send)


async def _refuse(scope, send) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008, "reason": UNAUTHORIZED_MESSAGE})
        return
    await send_json_error(send, 401, "HTTPException", UNAUTHORIZED_MESSAGE,
                          headers=((b"www-authenticate", f'Basic realm="{REALM}", charset="UTF-8"'.encode()),))


def install_auth(app, args) -> AuthPolicy:
    """Guard every route of `app` as the flags say (see the module docstring). Call it last, after
    the UI and API are mounted, so it is the outermost layer."""
    policy = AuthPolicy.from_args(args)
    if policy.enabled:
        app.add_middleware(BasicAuthMiddleware, policy=policy)
        ui_flag = "--gradio-auth" if getattr(args, "gradio_auth", None) or getattr(args, "gradio_auth_path", None) \
            else "--api-auth"
        api_flag = "--api-auth" if getattr(args, "api_auth", None) else ui_flag
        log.info("HTTP Basic auth on every route: the UI takes the users of %s, the API those of %s", ui_flag, api_flag)
    elif getattr(args, "listen", False) or getattr(args, "server_name", None):
        log.warning("Listening on the network without --gradio-auth or --api-auth: anyone who can reach this "
                    "port can generate, merge and change settings")
    return policy
