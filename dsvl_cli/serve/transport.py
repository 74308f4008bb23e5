"""Running the app: the listening socket, uvicorn with timeouts and a connection cap, shutdown.

Why a uvicorn protocol subclass: uvicorn bounds idle keep-alive connections but not a client that
sends its request headers one byte at a time; a thousand of those used to stay open for ever and,
under a 1,024-descriptor limit, lock everyone else out. Here:
- the request line and headers must arrive within HEADER_TIMEOUT_S of the connection opening (or
  of the previous response, on a kept-alive connection), else the connection is closed;
- the body must arrive within ServeLimits.body_timeout_s (408, in gate.py);
- an idle kept-alive connection is closed after KEEP_ALIVE_S;
- past `max_connections` open connections a new one is closed at once (a reverse proxy in front
  can queue and rate-limit per client; this server cannot tell clients apart).

Memory: a decoded picture or a request body is tens of megabytes that glibc's allocator would keep
in its per-thread arenas once freed (measured: eight 4096x4096 PNGs on the fetch threads left the
server 1.1 GB larger for good). `return_freed_memory` fixes glibc's mmap threshold at 1 MiB, so such
blocks are mapped on their own and given back to the system when freed. Elsewhere it does nothing.

Shutdown (SIGINT/SIGTERM): uvicorn stops accepting and waits for open requests; after the grace
period the app's `Drain` cuts what is still running (each open stream gets an error chunk and
`[DONE]`), and CUT_MARGIN_S later uvicorn cancels whatever is left.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import socket

from dsvl_cli.errors import UsageError

GRACE_S = 10.0  # how long shutdown waits for in-flight requests before cutting them
CUT_MARGIN_S = 3.0  # after the cut, time for streams to send their last chunks
HEADER_TIMEOUT_S = 10.0
KEEP_ALIVE_S = 5
MAX_CONNECTIONS = 512
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
log = logging.getLogger("dsvl.serve")


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: any free port), so the URL is known before uvicorn starts."""
    if not 0 <= port <= 65535:
        raise UsageError(f"--port {port}: use 0 (any free port) to 65535")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except (OSError, OverflowError) as exc:
        sock.close()
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise UsageError(f"--host {host} --port {port}: cannot listen there ({reason})") from None
    sock.listen(2048)  # clients that connect before uvicorn is up wait in the backlog, not refused
    return sock


def make_server(app, grace_s: float = GRACE_S, *, max_connections: int = MAX_CONNECTIONS,
                header_timeout_s: float = HEADER_TIMEOUT_S):
    """A uvicorn Server for the app; `.run(sockets=[sock])` serves until SIGINT/SIGTERM."""
    import uvicorn

    return_freed_memory()
    drain = getattr(app.state, "dsvl_drain", None)

    class Server(uvicorn.Server):
        async def shutdown(self, sockets=None):
            if drain is not None:
                drain.begin(grace_s)
            await super().shutdown(sockets)

    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                            http=_protocol(max_connections, header_timeout_s),
                            timeout_keep_alive=KEEP_ALIVE_S,
                            timeout_graceful_shutdown=grace_s + CUT_MARGIN_S)
    return Server(config)


def return_freed_memory() -> None:
    """Large allocations get their own mappings, returned to the system when freed (glibc only)."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to tune
        return
    mallopt(_M_MMAP_THRESHOLD, 1 << 20)


def _protocol(max_connections: int, header_timeout_s: float):
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11(H11Protocol):
        """uvicorn's h11 protocol with a deadline for request headers and a cap on connections."""

        _header_timer = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                transport.close()
                return
            self._arm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def handle_events(self) -> None:
            before = self.cycle
            super().handle_events()
            if self.cycle is not before:  # a request's headers are in
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def _arm(self) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(header_timeout_s, self._headers_too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            idle = self.cycle is None or self.cycle.response_complete
            if idle and not self.transport.is_closing():
                self.transport.close()

    return GuardedH11


def configure_logging() -> None:
    """Request lines go to stderr as plain `dsvl serve: ...` lines."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("dsvl serve: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
