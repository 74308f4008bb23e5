"""Rules for images from untrusted clients (the server): which URLs may be fetched, and cost caps.

The CLI fetches whatever its user asks for; `dsvl serve` fetches on behalf of anyone who can reach
it, so it passes an `ImageGuard` to `load_image` and the loader then:
- fetches only public addresses unless `MediaPolicy.allow_private`: every address a host name
  resolves to is checked, on every redirect hop, and the connection goes to the checked address
  (no second DNS lookup for an attacker to rebind). Loopback, private, link-local, CGNAT,
  multicast, reserved and unspecified addresses are refused, also when written in other forms
  (`2130706433`, `0x7f000001`, `127.1`, `0`) or wrapped in IPv6 (`::ffff:127.0.0.1`, 6to4,
  Teredo, NAT64);
- fetches only hosts on `allowed_domains` when that is set (exact names; `*.example.com` or
  `.example.com` also matches subdomains), and no URL at all when `allow_urls` is False;
- ignores proxy settings and .netrc from the environment (a proxy would hide the real address);
- stops a fetch at its total deadline or when `cancel()` is called from another thread (the
  socket is shut down, which ends a blocked read at once); DNS resolution itself cannot be
  interrupted and is bounded by the system resolver's own timeout;
- refuses local files and stdin, and caps bytes and decoded pixels, downscaling each picture to
  `max_side` pixels on its long side as soon as it is decoded.

No requests or urllib3 here (fetch.py imports them when a URL is fetched).
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from dsvl_cli.errors import ImageLoadError

_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class Blocked(Exception):
    """A URL or address the media policy refuses (not an OSError, so HTTP libraries pass it up)."""


@dataclass(frozen=True)
class MediaPolicy:
    """Which URLs a server may fetch. The defaults: any public host, never a private address."""

    allow_private: bool = False
    allowed_domains: frozenset[str] | None = None  # None: any host name
    allow_urls: bool = True

    def check_url(self, url: str) -> None:
        """Raise Blocked unless the URL's scheme and host may be fetched (before any connection)."""
        if not self.allow_urls:
            raise Blocked("this server accepts images as data: URIs only")
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("http", "https"):
            raise Blocked(f"unsupported URL scheme '{parts.scheme}'")
        host = (parts.hostname or "").rstrip(".").lower()
        if not host:
            raise Blocked("URL has no host")
        if self.allowed_domains is not None and not _domain_allowed(host, self.allowed_domains):
            raise Blocked(f"host {host} is not in the allowed media domains")

    def check_address(self, address: str) -> None:
        """Raise Blocked unless a resolved address may be connected to."""
        if not self.allow_private and not is_public(address):
            raise Blocked(f"address {address} is not a public address")


def _domain_allowed(host: str, allowed: frozenset[str]) -> bool:
    for entry in allowed:
        if entry.startswith(("*.", ".")):
            suffix = entry[entry.index("."):]
            if host.endswith(suffix) or host == suffix[1:]:
                return True
        elif host == entry:
            return True
    return False


def parse_domains(raw: str | None) -> frozenset[str] | None:
    """`--allowed-media-domains a.com,*.b.org` -> a set of lower-case names (None when not given)."""
    if raw is None:
        return None
    names = frozenset(n.strip().rstrip(".").lower() for n in raw.split(",") if n.strip())
    return names


def is_public(address: str) -> bool:
    """True for a globally routable unicast address, looking inside IPv6 wrappers of IPv4."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if ip.version == 6:
        inner = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if inner is None and ip in _NAT64:
            inner = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if inner is not None and not is_public(str(inner)):
            return False
    return ip.is_global and not ip.is_multicast


class ImageGuard:
    """One image load on behalf of an untrusted client: its policy, caps, deadline and cancel switch.

    Thread-safe: the loading thread registers sockets and checks `expired`; any other thread may
    call `cancel()`.
    """

    def __init__(self, policy: MediaPolicy, *, max_bytes: int, max_pixels: int, max_side: int | None,
                 timeout_s: float, max_pictures: int = 64):
        self.policy = policy
        self.max_pictures = max_pictures  # pages and frames one source may become
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self.max_side = max_side
        self.timeout_s = timeout_s
        self.started: float | None = None
        self.why: str | None = None  # set once cancelled: "timed out after ..." or the caller's reason
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []

    def start(self) -> None:
        if self.started is None:
            self.started = time.monotonic()

    @property
    def deadline(self) -> float:
        return (self.started or time.monotonic()) + self.timeout_s

    def remaining(self) -> float:
        return max(self.deadline - time.monotonic(), 0.0)

    def expire_if_due(self) -> None:
        """Cancel the load when its total deadline has passed (called by a watchdog)."""
        if self.started is not None and time.monotonic() >= self.deadline:
            self.cancel(f"timed out after {self.timeout_s:g} s in all")

    def cancel(self, why: str = "cancelled") -> None:
        """Stop the load: its sockets are shut down, so a blocked connect or read returns now."""
        with self._lock:
            if self.why is None:
                self.why = why
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def register(self, sock: socket.socket) -> None:
        with self._lock:
            cancelled = self.why is not None
            if not cancelled:
                self._sockets.append(sock)
        if cancelled:
            sock.close()
            raise Blocked(self.why)

    def check(self, source: str) -> None:
        """Raise ImageLoadError if the load was cancelled or ran past its deadline."""
        self.expire_if_due()
        if self.why is not None:
            raise ImageLoadError(source, self.why)
