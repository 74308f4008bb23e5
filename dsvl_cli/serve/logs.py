"""The server's log lines: one per request, with every client-controlled value escaped.

Why escaping: the path, and anything else a client sends, reaches the log before any check; a
`%0a` in a path would forge a second log line, a `%1b` would write a raw terminal escape to the
operator's terminal. `escape` percent-encodes controls, spaces, quotes and backslashes, and cuts
long values.
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger("dsvl.serve")


def escape(value: str, limit: int = 200, *, spaces: bool = False) -> str:
    """`value` as one printable line: C0/C1 controls, DEL, quote, backslash, % and (unless `spaces`)
    space percent-encoded, cut after `limit` characters."""
    out = []
    for ch in value[: limit + 1]:
        code = ord(ch)
        if (code < 0x21 and not (spaces and ch == " ")) or 0x7F <= code < 0xA0 or ch in "\"\\%\u2028\u2029":
            out.append("".join(f"%{b:02X}" for b in ch.encode("utf-8")))
        else:
            out.append(ch)
    text = "".join(out)
    return text if len(value) <= limit else text[: limit * 3] + "…"


class AccessLog:
    """ASGI middleware: one line per request: client, method, path, status, tokens, batch, seconds."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        scope.setdefault("state", {})
        started = time.perf_counter()
        status = {"code": None}

        async def send_and_note(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            log.info(_line(scope, status["code"], time.perf_counter() - started))


def _line(scope, code: int | None, seconds: float) -> str:
    state = scope["state"]
    client = scope.get("client") or ("-", 0)
    parts = [escape(str(client[0])), escape(scope["method"], 20), escape(scope["path"]), str(code or 500)]
    if state.get("dsvl_client_gone"):
        parts.append("client-gone")
    tokens = state.get("dsvl_tokens")
    if tokens:
        parts.append(f"tokens={tokens[0]}+{tokens[1]}")
    job = state.get("dsvl_job")
    if job is not None and job.batch_size:
        parts.append(f"batch={job.batch_size}")
    parts.append(f"{seconds:.3f}s")
    return " ".join(parts)
