"""Byte caps and the small helpers every image source shares (no Pillow, no requests here)."""

from __future__ import annotations

import os
from typing import BinaryIO

from dsvl_cli.errors import ImageLoadError, UsageError
from dsvl_cli.screen.text import visible

MAX_IMAGE_BYTES = 50 * 1024 * 1024
MAX_BYTES_ENV = "DSVL_MAX_IMAGE_BYTES"
CHUNK = 64 * 1024


def max_image_bytes() -> int:
    """The byte cap for URL bodies, stdin and data: URIs (env DSVL_MAX_IMAGE_BYTES overrides)."""
    raw = os.environ.get(MAX_BYTES_ENV, "").strip()
    if not raw:
        return MAX_IMAGE_BYTES
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise UsageError(f"{MAX_BYTES_ENV} must be a positive number of bytes, got {raw!r}")
    return value


def read_capped(source: str, stream: BinaryIO) -> bytes:
    cap = max_image_bytes()
    data = bytearray()
    for chunk in iter(lambda: stream.read(CHUNK), b""):
        data += chunk
        if len(data) > cap:
            raise ImageLoadError(source, too_big())
    return bytes(data)


def too_big() -> str:
    return f"larger than the {fmt_bytes(max_image_bytes())} limit"


def fmt_bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} B"


def oserror_text(e: OSError) -> str:
    return one_line(e.strerror or type(e).__name__)


def one_line(text: str, limit: int = 160) -> str:
    """`text` (a server's reason phrase, an OS message) as one short line without control characters."""
    text = " ".join(visible(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def display_source(source: str) -> str:
    """A source as shown in messages and JSON output: data: URIs past 80 characters shortened.

    Why: a record or an error line that echoes a multi-megabyte data: URI helps nobody; the
    start (media type and first bytes) and the length are enough to tell it apart.
    """
    if len(source) <= 80 or not source[:5].lower() == "data:":
        return source
    return f"{source[:60]}…({len(source)} chars)"
