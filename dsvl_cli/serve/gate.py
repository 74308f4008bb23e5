"""What a request must pass before the server spends anything on it: Host, key, media type, body.

Why each:
- Host allow-list (when bound to loopback): a web page can make a browser on this machine talk to
  127.0.0.1 under its own name (DNS rebinding); such a request carries that name in `Host`, so a
  loopback server answers only to loopback names and the names given with `--allowed-hosts`.
- API key: compared in constant time, before the body is read.
- `Content-Type: application/json` only: a web page may POST a form or text/plain cross-site
  without a CORS preflight, but not application/json.
- The body: at most the cap (413, from Content-Length when given), within its timeout (408);
  a client that hangs up while sending it ends the request quietly (no traceback).
"""

from __future__ import annotations

import asyncio
import secrets

from starlette.requests import ClientDisconnect, Request

from dsvl_cli.wire.errors import ApiError, error_body


class ClientClosed(Exception):
    """The client went away before it could be answered (logged as client-gone, nothing is sent)."""


def host_name(value: str) -> str:
    """The name part of a Host header: `[::1]:8000` -> `::1`, `Example.com.:80` -> `example.com`."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    name = value.rsplit(":", 1)[0] if value.count(":") == 1 else value
    return name.rstrip(".")


class HostCheck:
    """ASGI middleware: 403 unless the Host header names one of `allowed` (None: any host)."""

    def __init__(self, app, allowed: frozenset[str] | None):
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and self.allowed is not None:
            given = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            if host_name(given) not in self.allowed:
                body = error_body("this server answers only to the host names it is told about "
                                  "(dsvl serve --allowed-hosts)", code="host_not_allowed")
                return await _send_json(send, 403, body)
        return await self.app(scope, receive, send)


async def _send_json(send, status: int, body: dict) -> None:
    import json

    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


def check_key(request: Request, api_key: str | None) -> None:
    if api_key is None:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), api_key.encode()):
        raise ApiError(401, "missing or wrong API key (send Authorization: Bearer KEY)",
                       "authentication_error", "invalid_api_key")


def require_json(request: Request) -> None:
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/json":
        raise ApiError(415, f"send the request as Content-Type: application/json (got {media or 'none'!r})",
                       code="unsupported_media_type")


async def read_body(request: Request, cap: int, timeout_s: float) -> bytearray:
    too_big = ApiError(413, f"request body is larger than {cap} bytes", code="request_too_large")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > cap:
        raise too_big
    body = bytearray()
    try:
        async with asyncio.timeout(timeout_s):
            async for piece in request.stream():
                body += piece
                if len(body) > cap:
                    raise too_big
    except TimeoutError:
        raise ApiError(408, f"the request body did not arrive within {timeout_s:g} s", code="timeout") from None
    except ClientDisconnect:
        raise ClientClosed() from None
    return body  # not copied into bytes: it may be a hundred megabytes
