"""HTTP for model sources: every hop of every redirect behind the SSRF guard, tokens only to their host.

Civitai and Hugging Face answer a download with a redirect to a CDN or signed storage URL on
another host. A generic client (urllib, requests) follows it itself, with two risks this module
removes: the redirect target is not checked against the address guard (a public host can redirect
to `169.254.169.254` or `localhost`), and an `Authorization` header may travel to the CDN. Here
redirects are followed by hand: each hop is resolved once, every address checked
(`modules.common.net_guard`), the connection pinned to the checked address, and headers rebuilt
for the hop — a `HostCredential` is added only when the hop's host (and port, when the credential
names one) matches, and the caller's secret headers are dropped once the origin changes.

`http.client` rather than a higher-level client: a download reads gigabytes through `readinto`
into one reused buffer, and nothing between the socket and the file copies it again.

Messages never carry a URL's query string (signed URLs hold tokens there) or `user:password@`, and
`redact` removes token values from any text shown or logged.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import re
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urljoin, urlsplit

from modules.common.net_guard import Resolver, is_public_address, pinned_connection, resolve
from modules.model_sources.sniff import describe_body
from modules.model_sources.types import ModelSourceError

USER_AGENT = "Atelier/1 (model downloader)"
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# Headers a caller may pass that carry a secret: never sent past the origin they were meant for.
SECRET_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization", "x-api-key"})
# A 429's Retry-After up to this long is waited out by get_json; longer is reported to the user.
MAX_RETRY_WAIT_S = 10.0
RETRIES_ON_429 = 2
PRIVATE_SETTING = "model_sources_allow_private"


class HttpStatusError(ModelSourceError):
    """A host answered with a status that is not success. `status_code` is the host's status,
    `body_text` the start of its body (redacted), `retry_after` seconds to wait (429/503) or None."""

    def __init__(self, message: str, *, status_code: int, body_text: str = "", retry_after: float | None = None,
                 url: str = ""):
        super().__init__(message, status=404 if status_code == 404 else 429 if status_code == 429 else 502)
        self.status_code = status_code
        self.body_text = body_text
        self.retry_after = retry_after
        self.url = url


class TransientHttpError(ModelSourceError):
    """The connection failed or timed out before an answer: worth retrying."""

    def __init__(self, message: str):
        super().__init__(message, status=502)


@dataclass(frozen=True)
class HostCredential:
    """A secret header sent only to `host` (a hostname, matched lower-case) and, when `port` is set,
    only to that port. Without a port it is sent over https only, so that a redirect to plain http
    on the same host cannot expose it; with a port (a LAN mirror, a test host) the binding to that
    exact origin is the protection and plain http is allowed."""

    host: str
    header: str
    value: str
    port: int | None = None

    def matches(self, scheme: str, hostname: str, port: int) -> bool:
        if hostname.lower() != self.host.lower():
            return False
        if self.port is None:
            return scheme == "https"
        return port == self.port

    def __repr__(self) -> str:  # the value never reaches a log through repr()
        return f"HostCredential(host={self.host!r}, header={self.header!r}, value='<redacted>', port={self.port!r})"


_BEARER = re.compile(r"(?i)\b(bearer|token)(\s+|=)[A-Za-z0-9._~+/=-]{6,}")
_HF_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{16,}\b")


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret value, `Bearer <token>`/`token=<token>` and Hugging Face token
    (`hf_...`) replaced by `<redacted>`."""
    for secret in sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True):
        text = text.replace(secret, "<redacted>")
    text = _BEARER.sub(lambda m: f"{m.group(1)}{m.group(2)}<redacted>", text)
    return _HF_TOKEN.sub("<redacted>", text)


def shown_url(url: str) -> str:
    """`url` as messages show it: no `user:password@`, no query string, no fragment (signed storage
    URLs carry their signature and expiry in the query)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.netloc.rsplit("@", 1)[-1]
    shown = parts._replace(netloc=netloc, query="", fragment="").geturl()
    return shown + ("?…" if parts.query else "")


def _origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), _port(parts)


def _port(parts) -> int:
    return parts.port or (443 if parts.scheme == "https" else 80)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None when absent/invalid."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    current = datetime.fromtimestamp(time.time() if now is None else now, timezone.utc)
    return max(0.0, (when - current).total_seconds())


class GuardedResponse:
    """An open response after redirects. `status`, `headers` (case-insensitive), `url` (the final
    URL), `redirects` (the URLs before it). `read`/`readinto` raise the transport's errors
    (`OSError`, `http.client.IncompleteRead`, `TimeoutError`) so that a downloader can resume."""

    def __init__(self, connection: http.client.HTTPConnection, response: http.client.HTTPResponse, url: str,
                 redirects: list[str]):
        self._connection = connection
        self._response = response
        self.status: int = response.status
        self.reason: str = response.reason
        self.headers = response.headers  # email.message.Message: case-insensitive get / in
        self.url = url
        self.redirects = redirects

    @property
    def content_type(self) -> str:
        return (self.headers.get("Content-Type") or "").strip()

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("Content-Length")
        try:
            return int(value) if value is not None else None
        except ValueError:
            return None

    def read(self, n: int = -1) -> bytes:
        return self._response.read() if n is None or n < 0 else self._response.read(n)

    def readinto(self, buffer) -> int:
        return self._response.readinto(buffer)

    def close(self) -> None:
        try:
            self._response.close()
        finally:
            self._connection.close()

    def __enter__(self) -> "GuardedResponse":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class GuardedHttp:
    """An HTTP client whose every request and redirect hop passes the address guard; see the module
    docstring. One per use (a look-up, a download); holds no connections between requests."""

    def __init__(self, *, allow_private: bool = False, credentials: Sequence[HostCredential] = (),
                 timeout: float = 30.0, user_agent: str = USER_AGENT, resolver: Resolver | None = None,
                 max_redirects: int = 10, sleep: Callable[[float], None] = time.sleep,
                 address_allowed: Callable[[str], bool] | None = None):
        """`address_allowed(address)` decides which resolved addresses a request may reach; by default
        public ones (`is_public_address`), or any with `allow_private`. Tests pass a policy that
        counts one loopback address as "the internet" to test refusals further down a chain."""
        self.allow_private = allow_private
        self._address_allowed = address_allowed or ((lambda address: True) if allow_private else is_public_address)
        self.credentials = tuple(credentials)
        self.timeout = timeout
        self.user_agent = user_agent
        self.max_redirects = max_redirects
        self._resolver = resolver or resolve
        self._sleep = sleep

    @property
    def secrets(self) -> tuple[str, ...]:
        """Values that must never appear in a message or a log (credential values and their tokens)."""
        values = []
        for credential in self.credentials:
            values.append(credential.value)
            if " " in credential.value:  # "Bearer abc": the token alone too
                values.append(credential.value.split(" ", 1)[1])
        return tuple(values)

    def redact(self, text: str, extra: Iterable[str] = ()) -> str:
        return redact(text, (*self.secrets, *extra))

    # -- one request, redirects followed by hand -------------------------------------------------

    def open(self, url: str, *, method: str = "GET", headers: Mapping[str, str] | None = None) -> GuardedResponse:
        """Send `method` to `url` and follow redirects; return the first non-redirect response, whatever
        its status (callers decide what a 4xx means). Raises ModelSourceError when a hop is refused,
        TransientHttpError when a connection fails."""
        caller_headers = dict(headers or {})
        caller_secrets = [v for k, v in caller_headers.items() if k.lower() in SECRET_HEADERS]
        first_origin = None
        redirects: list[str] = []
        current = url
        while True:
            via = f" (a redirect from {shown_url(url)})" if redirects else ""
            parts = self._check_url(current, via)
            origin = _origin(current)
            first_origin = first_origin or origin
            hop_headers = {k: v for k, v in caller_headers.items()
                           if origin == first_origin or k.lower() not in SECRET_HEADERS}
            connection, response = self._request(parts, method, hop_headers, caller_secrets, via)
            location = response.getheader("Location")
            if response.status not in REDIRECT_STATUSES or not location:
                return GuardedResponse(connection, response, current, redirects)
            self._discard(connection, response)
            if len(redirects) >= self.max_redirects:
                raise ModelSourceError(f"{shown_url(url)} redirected more than {self.max_redirects} times "
                                       f"(last to {shown_url(location)}); the link loops — open it in a browser "
                                       "to see where it goes", status=502)
            redirects.append(current)
            try:
                current = urljoin(current, location.strip())
            except ValueError:
                raise ModelSourceError(f"{shown_url(redirects[-1])} redirected to an invalid address "
                                       f"{shown_url(location)!r}", status=502) from None
            if response.status == 303 or (response.status in (301, 302) and method == "POST"):
                method = "GET"

    def _check_url(self, url: str, via: str) -> Any:
        """The parsed URL if it may be requested; ModelSourceError saying why not."""
        try:
            parts = urlsplit(url)
            _port(parts)
        except ValueError:
            raise ModelSourceError(f"{shown_url(url)!r}{via} is not a valid URL (bad port or brackets)",
                                   status=400) from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ModelSourceError(f"{shown_url(url)!r}{via} is not an http(s) URL with a host; model files "
                                   "download over https", status=400)
        if "@" in parts.netloc:
            raise ModelSourceError(f"{shown_url(url)!r}{via} has a user name or password in it; tokens are "
                                   "never sent in URLs: put a Hugging Face token or Civitai API key in "
                                   "Settings → Model sources instead", status=400)
        return parts

    def _addresses(self, parts, via: str) -> list[str]:
        host, port = parts.hostname, _port(parts)
        try:
            addresses = self._resolver(host, port)
        except (OSError, UnicodeError) as e:
            raise TransientHttpError(f"cannot resolve {host!r}{via}: {e}; check the address and your "
                                     "network") from None
        if not addresses:
            raise TransientHttpError(f"{host!r}{via} has no address")
        refused = [a for a in addresses if not self._address_allowed(a)]
        if refused:
            raise ModelSourceError(
                f"{host!r}{via} resolves to a non-public address ({refused[0]}); model downloads from "
                f"local or private hosts are refused. To allow a LAN mirror, turn on the setting "
                f"{PRIVATE_SETTING} (Settings → Model sources)", status=403)
        return addresses

    def _request(self, parts, method: str, headers: dict[str, str], caller_secrets: list[str], via: str):
        url = parts.geturl()
        addresses = self._addresses(parts, via)
        hostname, port = parts.hostname, _port(parts)
        sent = {"Host": parts.netloc, "User-Agent": self.user_agent, "Accept": "*/*"}
        sent.update(headers)
        for credential in self.credentials:
            if credential.matches(parts.scheme, hostname, port):
                # The credential wins over a caller's header of the same name, in any case.
                sent = {k: v for k, v in sent.items() if k.lower() != credential.header.lower()}
                sent[credential.header] = credential.value
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        last_error: BaseException | None = None
        for address in addresses:
            connection = pinned_connection(parts.scheme, hostname, address, port, self.timeout)
            try:
                connection.request(method, target, headers=sent)
                return connection, connection.getresponse()
            except ssl.SSLCertVerificationError as e:  # not transient: retrying cannot help
                connection.close()
                raise ModelSourceError(f"{hostname!r}{via} presented a certificate that does not verify "
                                       f"({e.verify_message}); the connection was refused", status=502) from None
            except (OSError, http.client.HTTPException) as e:
                connection.close()
                last_error = e
        detail = self.redact(f"{type(last_error).__name__}: {last_error}", caller_secrets)
        kind = "timed out" if isinstance(last_error, (TimeoutError, socket.timeout)) else "failed"
        raise TransientHttpError(f"connecting to {shown_url(url)} {kind} ({detail}); check the address and "
                                 "your network, then try again")

    @staticmethod
    def _discard(connection: http.client.HTTPConnection, response: http.client.HTTPResponse) -> None:
        try:
            response.read(64 * 1024)  # a redirect body is a line of HTML; a huge one is not read
        except (OSError, http.client.HTTPException):
            pass
        finally:
            response.close()
            connection.close()

    # -- small bodies ---------------------------------------------------------------------------------

    def status_error(self, response: GuardedResponse, requested: str, *, hint: str = "",
                     extra_secrets: Iterable[str] = ()) -> HttpStatusError:
        """The error for a non-success `response` (its body is read, up to 64 KiB, and closed)."""
        try:
            body = response.read(64 * 1024)
        except (OSError, http.client.HTTPException):
            body = b""
        response.close()
        text = self.redact(body.decode("utf-8", errors="replace"), extra_secrets)
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        what = describe_body(response.status, response.content_type, body)
        message = f"{shown_url(requested)} answered HTTP {response.status} {response.reason}".rstrip()
        if response.url != requested:
            message += f" (at {shown_url(response.url)})"
        if what:
            message += f": {self.redact(what, extra_secrets)}"
        if response.status == 429:
            message += "; the host is rate-limiting" + (
                f": try again in {retry_after:.0f} s" if retry_after is not None else ": try again later")
        elif response.status == 404:
            message += "; check the model/version id or file name"
        if hint and response.status in (401, 403):
            message += f"; {hint}"
        return HttpStatusError(message, status_code=response.status, body_text=text[:2000],
                               retry_after=retry_after, url=shown_url(response.url))

    def get_json(self, url: str, *, max_bytes: int = 16 << 20, headers: Mapping[str, str] | None = None,
                 hint: str = "") -> Any:
        """GET `url` and parse its JSON. A 429 whose Retry-After is at most MAX_RETRY_WAIT_S is waited
        out (RETRIES_ON_429 times); other failures raise HttpStatusError (see `status_error`)."""
        for attempt in range(RETRIES_ON_429 + 1):
            response = self.open(url, headers={"Accept": "application/json", **(headers or {})})
            if 200 <= response.status < 300:
                body = self._read_small(response, url, max_bytes)
                try:
                    return json.loads(body)
                except ValueError:
                    raise ModelSourceError(f"{shown_url(url)} did not answer JSON: "
                                           f"{describe_body(response.status, response.content_type, body)}",
                                           status=502) from None
            error = self.status_error(response, url, hint=hint, extra_secrets=(headers or {}).values())
            waitable = error.retry_after is not None and error.retry_after <= MAX_RETRY_WAIT_S
            if error.status_code != 429 or not waitable or attempt == RETRIES_ON_429:
                raise error
            self._sleep(error.retry_after)
        raise AssertionError("unreachable")

    def get_bytes(self, url: str, *, max_bytes: int) -> tuple[bytes, str]:
        """(body, Content-Type) of a small file such as a preview image; HttpStatusError when not 2xx."""
        response = self.open(url)
        if not 200 <= response.status < 300:
            raise self.status_error(response, url)
        return self._read_small(response, url, max_bytes), response.content_type

    def _read_small(self, response: GuardedResponse, url: str, max_bytes: int) -> bytes:
        # The socket timeout bounds each read only; a server trickling a byte at a time would hold
        # the thread for ever, hence an overall deadline too.
        deadline = time.monotonic() + max(self.timeout * 4, 30.0)
        data = bytearray()
        try:
            while len(data) <= max_bytes:
                if time.monotonic() > deadline:
                    raise TransientHttpError(f"reading {shown_url(url)} took too long; try again")
                piece = response.read(min(1 << 20, max_bytes + 1 - len(data)))
                if not piece:
                    break
                data += piece
        except (OSError, http.client.HTTPException) as e:
            raise TransientHttpError(f"reading {shown_url(url)} failed ({type(e).__name__}); try again") from None
        finally:
            response.close()
        if len(data) > max_bytes:
            raise ModelSourceError(f"{shown_url(url)} sent more than {max_bytes} bytes, more than expected "
                                   "for this kind of answer", status=502)
        return bytes(data)

