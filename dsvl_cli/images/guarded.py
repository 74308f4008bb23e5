"""The server's fetch: the media policy on every hop, connecting only to checked addresses.

Why not requests' own redirect handling: the policy must see each hop's URL before anything is
sent there. Why our own connection classes: checking a name and then letting the HTTP library
resolve it again would let a DNS server answer differently the second time (rebinding); here the
checked address is the one connected to, while TLS still verifies the certificate for the name.

Limits: at most MAX_REDIRECTS hops; connect timeout CONNECT_TIMEOUT_S per address, read timeout
READ_TIMEOUT_S per read, and the guard's total deadline over the whole fetch (enforced between
reads, and by the guard shutting the socket down when a watchdog cancels it).
"""

from __future__ import annotations

import io
import socket
from urllib.parse import urljoin

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import NewConnectionError

from dsvl_cli.errors import ImageLoadError
from dsvl_cli.images import fetch
from dsvl_cli.images.pictures import Want, decode_pictures
from dsvl_cli.images.guard import Blocked, ImageGuard

_REDIRECTS = (301, 302, 303, 307, 308)


def from_url_guarded(source: str, guard: ImageGuard, want: Want):
    """The decoded pictures at `source`, fetched and decoded under the guard."""
    body = fetch_guarded(source, guard)
    return decode_pictures(source, io.BytesIO(body), want, empty_reason="URL returned an empty body", url=True,
                           max_pixels=guard.max_pixels, max_side=guard.max_side)


def fetch_guarded(source: str, guard: ImageGuard) -> bytes:
    """The body of `source` under the guard's policy, caps and deadline (ImageLoadError otherwise)."""
    guard.start()
    url = source
    try:
        with _session(guard) as session:
            for _hop in range(fetch.MAX_REDIRECTS + 1):
                guard.check(source)
                guard.policy.check_url(url)
                timeout = (min(fetch.CONNECT_TIMEOUT_S, guard.remaining() + 0.01),
                           min(fetch.READ_TIMEOUT_S, guard.remaining() + 0.01))
                with session.get(url, stream=True, timeout=timeout, allow_redirects=False) as resp:
                    if resp.status_code in _REDIRECTS and resp.headers.get("Location"):
                        url = urljoin(url, resp.headers["Location"])
                        continue
                    return fetch.read_response(source, resp, guard.max_bytes, guard)
            raise ImageLoadError(source, "too many redirects")
    except Blocked as exc:
        raise ImageLoadError(source, f"not allowed: {exc}") from None
    except requests.RequestException as exc:
        guard.check(source)  # a socket shut down by cancel(): say why, not "connection broken"
        raise ImageLoadError(source, fetch.failure_reason(exc)) from None


def _session(guard: ImageGuard) -> requests.Session:
    session = fetch.new_session(trust_env=False)  # a proxy from the environment would hide the address
    adapter = _GuardedAdapter(guard)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


class _GuardedAdapter(HTTPAdapter):
    """requests' adapter whose connection pools build guarded connections for this one fetch."""

    def __init__(self, guard: ImageGuard):
        self._guard = guard
        super().__init__(max_retries=0)

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        guard = self._guard
        plain = type("GuardedHTTPConnection", (_GuardedMixin, HTTPConnection), {"guard": guard})
        tls = type("GuardedHTTPSConnection", (_GuardedMixin, HTTPSConnection), {"guard": guard})
        self.poolmanager.pool_classes_by_scheme = {
            "http": type("GuardedHTTPPool", (HTTPConnectionPool,), {"ConnectionCls": plain}),
            "https": type("GuardedHTTPSPool", (HTTPSConnectionPool,), {"ConnectionCls": tls}),
        }


class _GuardedMixin:
    """Resolve, check every address, connect to the first allowed one that answers."""

    guard: ImageGuard

    def _new_conn(self) -> socket.socket:
        host, port = self._dns_host, self.port
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise NewConnectionError(self, f"Failed to resolve: {exc}") from exc
        allowed, refused = [], None
        for info in infos:
            try:
                self.guard.policy.check_address(info[4][0])
                allowed.append(info)
            except Blocked as exc:
                refused = exc
        if not allowed:
            raise refused or Blocked(f"{host} has no address")
        timeout = self.timeout if isinstance(self.timeout, (int, float)) else None
        last: OSError | None = None
        for family, kind, proto, _, address in allowed:
            sock = socket.socket(family, kind, proto)
            self.guard.register(sock)
            try:
                sock.settimeout(timeout)
                for option in self.socket_options or ():
                    sock.setsockopt(*option)
                sock.connect(address)
                return sock
            except OSError as exc:
                sock.close()
                last = exc
        raise NewConnectionError(self, f"Failed to establish a new connection: {last}") from last
