"""HTTP over a unix socket for `requests`: the transport of `--keep-alive` (keepalive/registry.py).

Why our own ~40 lines rather than `requests-unixsocket`: that package encodes the socket path into
the URL's host (percent-encoded), which turns every error message into noise, and it has had long
gaps between releases while requests and urllib3 moved on. Here the URL stays `http://localhost/...`
(so the server sees `Host: localhost`) and only the connection is different: urllib3 opens an
AF_UNIX socket instead of a TCP one; pooling, timeouts, streaming and error mapping are urllib3's.

Limits: plain HTTP only (no TLS: the socket file's mode is the access control); proxies and .netrc
are never consulted (`session()` turns trust_env off); POSIX only (AF_UNIX).
"""

from __future__ import annotations

import socket

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection
from urllib3.connectionpool import HTTPConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

HOST = "localhost"  # what the URL and the Host header say; the socket path decides where it goes


class UnixHTTPConnection(HTTPConnection):
    """urllib3's HTTP connection, connected to `socket_path` instead of host:port."""

    def __init__(self, *args, socket_path: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.socket_path = socket_path

    def _new_conn(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)  # the connect timeout; urllib3 sets the read timeout later
        try:
            sock.connect(self.socket_path)
        except socket.timeout:
            sock.close()
            raise ConnectTimeoutError(self, f"connection to {self.socket_path} timed out") from None
        except OSError as exc:
            sock.close()
            raise NewConnectionError(self, f"Failed to establish a new connection: {exc}") from exc
        return sock


class UnixAdapter(HTTPAdapter):
    """Sends every request of the session it is mounted on to one unix socket."""

    def __init__(self, socket_path: str, pool_maxsize: int = 16):
        self._pool = HTTPConnectionPool(HOST, maxsize=pool_maxsize, socket_path=socket_path)
        self._pool.ConnectionCls = UnixHTTPConnection
        super().__init__(pool_maxsize=pool_maxsize)

    def get_connection_with_tls_context(self, request, verify, proxies=None, cert=None):
        return self._pool

    def get_connection(self, url, proxies=None):  # requests < 2.32.2 asks this instead
        return self._pool

    def close(self) -> None:
        self._pool.close()
        super().close()


def session(socket_path: str, *, pool_maxsize: int = 16) -> requests.Session:
    """A requests Session whose `http://localhost/...` requests go to `socket_path`."""
    s = requests.Session()
    s.trust_env = False  # an HTTP(S)_PROXY or .netrc meant for the network must not apply here
    s.mount("http://", UnixAdapter(socket_path, pool_maxsize=pool_maxsize))
    return s
