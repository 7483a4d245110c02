"""Serving the app: where it listens, HTTPS from `--tls-keyfile`/`--tls-certfile`, and the moment it
listens.

TLS files are checked here, at the boundary, before anything starts: both flags or neither, each
file present and readable, the certificate a PEM certificate, the key unencrypted and the key of that
certificate. Each error names the flag and the file. Served by uvicorn (`ssl_keyfile`,
`ssl_certfile`); a plain HTTP request to an HTTPS port gets no page (the TLS handshake fails and the
connection closes).

A server that other machines reach (`--listen`, `--server-name`) with HTTP Basic auth and no TLS
sends every password across the network in clear text: `plain_http_warning` says so at start-up.
"""

from __future__ import annotations

import argparse
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)

API_ONLY_PORT = 7861  # A1111's default with --nowebui
UI_PORT = 7860

SELF_SIGNED_RECIPE = ("openssl req -x509 -newkey rsa:2048 -nodes -days 825 -keyout key.pem -out cert.pem "
                      "-subj /CN=<host name> -addext subjectAltName=DNS:<host name>,IP:<LAN address>")


class TlsConfigError(ValueError):
    """The TLS flags cannot be used as given; the message names the flag and the file."""


@dataclass(frozen=True)
class TlsFiles:
    keyfile: Path
    certfile: Path

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "TlsFiles | None":
        """The checked pair from `--tls-keyfile`/`--tls-certfile`; None when neither is given.
        Raises TlsConfigError."""
        key, cert = getattr(args, "tls_keyfile", None), getattr(args, "tls_certfile", None)
        if not key and not cert:
            return None
        if not key or not cert:
            given, value, missing = ("--tls-certfile", cert, "--tls-keyfile") if cert else ("--tls-keyfile", key,
                                                                                             "--tls-certfile")
            raise TlsConfigError(f"{given} {value} is given without {missing}: HTTPS needs both the certificate "
                                 "(--tls-certfile) and its private key (--tls-keyfile)")
        files = cls(keyfile=_readable_file("--tls-keyfile", key), certfile=_readable_file("--tls-certfile", cert))
        files.check_pair()
        return files

    def check_pair(self) -> None:
        """The certificate parses and the key is its key (what uvicorn will load)."""
        try:
            ssl.create_default_context(cafile=str(self.certfile))
        except ssl.SSLError as error:
            raise TlsConfigError(f"--tls-certfile {self.certfile} is not a PEM certificate ({_reason(error)}); "
                                 "it should start with '-----BEGIN CERTIFICATE-----'") from None
        key = self.keyfile.read_bytes()
        if b"ENCRYPTED" in key:
            raise TlsConfigError(f"--tls-keyfile {self.keyfile} is encrypted with a passphrase, which Atelier does "
                                 f"not ask for; write an unencrypted copy (openssl pkey -in {self.keyfile} -out "
                                 "key-plain.pem) and keep it private")
        if b"PRIVATE KEY-----" not in key:
            raise TlsConfigError(f"--tls-keyfile {self.keyfile} is not a PEM private key; it should start with "
                                 "'-----BEGIN PRIVATE KEY-----' (or an RSA/EC variant)")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            # Never a passphrase prompt: OpenSSL would otherwise ask on the terminal.
            context.load_cert_chain(str(self.certfile), str(self.keyfile), password=lambda: b"")
        except ssl.SSLError as error:
            reason = _reason(error)
            if "KEY_VALUES_MISMATCH" in reason:
                raise TlsConfigError(f"--tls-keyfile {self.keyfile} is not the private key of the certificate in "
                                     f"--tls-certfile {self.certfile}; give the key the certificate was made "
                                     "with") from None
            raise TlsConfigError(f"--tls-keyfile {self.keyfile} cannot be used with the certificate in "
                                 f"--tls-certfile {self.certfile} ({reason})") from None


def _readable_file(flag: str, value: str) -> Path:
    path = Path(value).expanduser()
    if not path.exists():
        raise TlsConfigError(f"{flag} {value}: no such file")
    if not path.is_file():
        raise TlsConfigError(f"{flag} {value} is not a file")
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as error:
        raise TlsConfigError(f"{flag} {value} cannot be read ({error.strerror}); check its permissions") from None
    return path.resolve()


def _reason(error: ssl.SSLError) -> str:
    return str(error.reason or error)


def listen_address(args: argparse.Namespace) -> tuple[str, int]:
    """(host, port) from `--server-name`, `--listen` and `--port` (A1111's defaults)."""
    host = args.server_name or ("0.0.0.0" if args.listen else "127.0.0.1")
    port = args.port or (API_ONLY_PORT if args.nowebui else UI_PORT)
    return host, port


def local_url(host: str, port: int, tls: TlsFiles | None) -> str:
    """The address to print: a wildcard bind is reached locally at 127.0.0.1."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    if ":" in shown:
        shown = f"[{shown}]"
    return f"{'https' if tls else 'http'}://{shown}:{port}"


def plain_http_warning(args: argparse.Namespace, tls: TlsFiles | None) -> str | None:
    """The start-up warning for passwords sent in clear text: a server others can reach, with auth,
    without TLS. None when it does not apply."""
    from modules.api.auth import AuthPolicy

    # Reachable from other machines (cmd_args.is_non_local; not imported: cmd_args imports this module).
    non_local = bool(getattr(args, "listen", False) or getattr(args, "server_name", None))
    if tls is not None or not non_local or not AuthPolicy.from_args(args).enabled:
        return None
    return ("The server is reachable from other machines (--listen/--server-name) and asks for passwords "
            "(--gradio-auth/--api-auth), but serves plain HTTP: every user name and password crosses the "
            "network in clear text. Serve HTTPS with --tls-keyfile KEY.pem --tls-certfile CERT.pem (a "
            f"self-signed pair: {SELF_SIGNED_RECIPE}).")


class FirstResponseWatch:
    """ASGI wrapper that calls `callback()` once, right after the first HTTP response is sent."""

    def __init__(self, app, callback: Callable[[], None]):
        self.app = app
        self._callback: Callable[[], None] | None = callback

    async def __call__(self, scope, receive, send) -> None:
        if self._callback is None or scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def watched_send(message) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                callback, self._callback = self._callback, None
                if callback is not None:
                    callback()

        await self.app(scope, receive, watched_send)


def serve(app, host: str, port: int, tls: TlsFiles | None, *, on_listening: Callable[[], None],
          on_first_response: Callable[[], None]) -> None:
    """Serve `app` until interrupted. `on_listening()` runs once the socket accepts connections,
    `on_first_response()` once the first response has been sent."""
    import uvicorn

    class _Server(uvicorn.Server):
        async def startup(self, sockets=None) -> None:
            await super().startup(sockets=sockets)
            if self.started and not self.should_exit:
                on_listening()

    config = uvicorn.Config(FirstResponseWatch(app, on_first_response), host=host, port=port, log_level="warning",
                            ssl_keyfile=str(tls.keyfile) if tls else None,
                            ssl_certfile=str(tls.certfile) if tls else None)
    _Server(config).run()
