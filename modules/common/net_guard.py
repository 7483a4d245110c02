"""The SSRF guard: which addresses an outgoing request may reach, and connections pinned to them.

A host name is resolved once, every address it resolves to is checked, and the connection goes to
the address that was checked: a DNS answer that changes between check and connect (DNS rebinding)
cannot send it elsewhere. Used by image URLs in the API (`modules.api.images`) and by model
downloads (`modules.model_sources.http`), which apply it to every hop of a redirect chain.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
from collections.abc import Callable

# (host, port) -> the addresses to try, as strings. Tests pass their own to simulate DNS answers.
Resolver = Callable[[str, int], list[str]]

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, 6to4, Teredo, NAT64, IPv4-compatible), which
    is where a packet to it may end up."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in _NAT64 or (ip in _IPV4_COMPATIBLE and int(ip) > 1):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def is_public_address(address: str) -> bool:
    """False for loopback, private, link-local (cloud metadata), multicast, reserved and unspecified
    addresses, and for IPv6 forms that embed such an IPv4 address (mapped, 6to4, Teredo, NAT64)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None and not (embedded.is_global and not embedded.is_multicast):
            return False
    return ip.is_global and not ip.is_multicast


def resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (system resolver), in its order, without repeats."""
    return list(dict.fromkeys(info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)))


class PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to a fixed, already checked address; the Host header still names the host."""

    def __init__(self, host: str, address: str, port: int, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)
        # Large downloads: Nagle only delays the small request; the receive side is what matters.
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class PinnedHTTPSConnection(PinnedHTTPConnection):
    """The same over TLS, with the certificate checked against the host name (SNI too)."""

    def __init__(self, host: str, address: str, port: int, timeout: float,
                 context: ssl.SSLContext | None = None):
        super().__init__(host, address, port, timeout)
        self._tls = context or ssl.create_default_context()

    def connect(self) -> None:
        super().connect()
        self.sock = self._tls.wrap_socket(self.sock, server_hostname=self.host)


def pinned_connection(scheme: str, host: str, address: str, port: int, timeout: float) -> http.client.HTTPConnection:
    """An http.client connection for `scheme` ("http" or "https") to `address`, naming `host`."""
    cls = PinnedHTTPSConnection if scheme == "https" else PinnedHTTPConnection
    return cls(host, address, port, timeout)
