"""The one resolver for every image source: path, http(s) URL, `-` (stdin) or `data:` URI.

Every failure is an `ImageLoadError(source, reason)` whose reason is one short line; nothing else
escapes for bad input. What comes back is always an RGB, fully decoded PIL image.

Limits, on purpose:
- URLs are http(s) only: connect timeout 5 s, read timeout 30 s (per read, not for the whole body),
  at most 5 redirects, body streamed and refused past MAX_IMAGE_BYTES (50 MiB, or the env var
  DSVL_MAX_IMAGE_BYTES). The same cap applies to stdin and data: URIs. Local files are not capped
  by size (they are read lazily by Pillow); the pixel guard below protects memory for all sources.
- PIL's decompression-bomb guard stays on; its warning is treated as an error too, so images past
  Image.MAX_IMAGE_PIXELS are refused. ImageFile.LOAD_TRUNCATED_IMAGES stays False.
- Animated images (GIF, WebP, APNG) give their first frame. SVG is not rasterised.
- Transparency is composited on white; 16/32-bit and float images are scaled to 8 bits; EXIF
  orientation is applied. Colour profiles (ICC) are ignored.
- `-` can be read once per process, so it may appear once among the sources of one question.
- Decoding uses warnings.catch_warnings, which is process-global, so decoding holds a module lock:
  callers may load images from several threads (fetching URLs overlaps; decoding takes turns).
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
import stat
import struct
import sys
import threading
import time
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import BinaryIO
from urllib.parse import unquote_to_bytes

from PIL import Image, ImageOps, UnidentifiedImageError

from dsvl_cli import __version__
from dsvl_cli.errors import ImageLoadError, UsageError

MAX_IMAGE_BYTES = 50 * 1024 * 1024
MAX_BYTES_ENV = "DSVL_MAX_IMAGE_BYTES"
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 30.0
MAX_REDIRECTS = 5

_CHUNK = 64 * 1024
_SNIFF = 4096
# `scheme://...` is always treated as a URL; a bare `scheme:` only when no such file exists.
_URL_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):")  # 2+ chars, so `C:\...` stays a path
_NON_FILE_SCHEMES = frozenset("file ftp sftp ssh javascript mailto about blob s3 gs hf".split())
# Pillow raises these on corrupt or truncated data (some plugins leak non-OSError exceptions).
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError, struct.error, zlib.error)


@dataclass(frozen=True)
class LoadedImage:
    source: str  # the source string as the user gave it (used in messages and JSON output)
    image: Image.Image  # RGB mode, fully loaded, EXIF orientation applied
    load_s: float  # seconds spent reading/fetching + decoding


def load_image(source: str, *, stdin: BinaryIO | None = None) -> LoadedImage:
    """Read, fetch or decode one image source; raise ImageLoadError with a one-line reason."""
    start = time.perf_counter()
    image = _resolve(source, stdin)
    return LoadedImage(source=source, image=image, load_s=time.perf_counter() - start)


def load_images(sources: Sequence[str], *, stdin: BinaryIO | None = None) -> list[LoadedImage]:
    """Load every source in order; the first bad one raises. `-` may appear at most once."""
    if sum(1 for s in sources if s == "-") > 1:
        raise ImageLoadError("-", "stdin can only be read once")
    return [load_image(s, stdin=stdin) for s in sources]


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


def _resolve(source: str, stdin: BinaryIO | None) -> Image.Image:
    if source == "-":
        return _from_stdin(stdin)
    if not source:
        raise ImageLoadError(source, "empty image source")
    url = _URL_RE.match(source)
    if url:
        scheme = url.group(1).lower()
        if scheme in ("http", "https"):
            return _from_url(source)
        raise _unsupported_scheme(source, scheme)
    scheme_match = _SCHEME_RE.match(source)
    if scheme_match and not os.path.lexists(os.path.expanduser(source)):
        scheme = scheme_match.group(1).lower()  # `a:b.png` on disk stays a path
        if scheme == "data":
            return _from_data_uri(source)
        if scheme in ("http", "https"):
            raise ImageLoadError(source, f"malformed URL (expected {scheme}://host/...)")
        if scheme in _NON_FILE_SCHEMES:
            raise _unsupported_scheme(source, scheme)
    return _from_path(source)


def _unsupported_scheme(source: str, scheme: str) -> ImageLoadError:
    hint = "(use a path, http(s) URL, data: URI or -)"
    return ImageLoadError(source, f"unsupported URL scheme '{scheme}' {hint}")


# --- sources -----------------------------------------------------------------------------------


def _from_path(source: str) -> Image.Image:
    path = os.path.expanduser(source)
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise ImageLoadError(source, "no such file") from None
    except PermissionError:
        raise ImageLoadError(source, "permission denied") from None
    except ValueError:  # e.g. an embedded NUL byte
        raise ImageLoadError(source, "invalid path") from None
    except OSError as e:
        raise ImageLoadError(source, f"cannot access file: {_oserror_text(e)}") from None
    if stat.S_ISDIR(st.st_mode):
        raise ImageLoadError(source, "is a directory, not an image file")
    if stat.S_ISREG(st.st_mode) and st.st_size == 0:
        raise ImageLoadError(source, "empty file")
    try:
        with open(path, "rb") as f:
            if f.seekable():
                return _decode(source, f, empty_reason="empty file")
            # A pipe such as <(curl ...): buffer it, under the same cap as stdin.
            data = _read_capped(source, f)
            return _decode(source, io.BytesIO(data), empty_reason="empty file")
    except PermissionError:
        raise ImageLoadError(source, "permission denied") from None
    except OSError as e:  # read errors outside decoding (decode errors are mapped in _decode)
        raise ImageLoadError(source, f"cannot read file: {_oserror_text(e)}") from None


def _from_stdin(stdin: BinaryIO | None) -> Image.Image:
    stream = stdin if stdin is not None else getattr(sys.stdin, "buffer", None)
    if stream is None:
        raise ImageLoadError("-", "no stdin available to read image bytes from")
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        raise ImageLoadError("-", "stdin is a terminal; pipe image bytes into it (< photo.jpg)")
    try:
        data = _read_capped("-", stream)
    except OSError as e:
        raise ImageLoadError("-", f"cannot read stdin: {_oserror_text(e)}") from None
    return _decode("-", io.BytesIO(data), empty_reason="no bytes on stdin")


def _from_data_uri(uri: str) -> Image.Image:
    # Errors name a shortened URI: a multi-megabyte error line helps nobody.
    source = uri if len(uri) <= 80 else f"{uri[:60]}…({len(uri)} chars)"
    header, comma, payload = uri[len("data:"):].partition(",")
    if not comma:
        raise ImageLoadError(source, "malformed data: URI (no ',' before the data)")
    params = [p.strip().lower() for p in header.split(";")]
    media_type = params[0] or "text/plain"
    if not media_type.startswith("image/"):
        raise ImageLoadError(source, f"data: URI media type is '{media_type}', not image/*")
    if "base64" not in params[1:]:
        raise ImageLoadError(source, "data: URI is not base64-encoded (expected ';base64,')")
    text = re.sub(r"\s+", "", payload)
    if not text:
        raise ImageLoadError(source, "data: URI has no image data")
    try:
        raw = unquote_to_bytes(text) if "%" in text else text.encode("ascii")
        raw = raw.replace(b"-", b"+").replace(b"_", b"/")  # accept the URL-safe alphabet too
        data = base64.b64decode(raw + b"=" * (-len(raw) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ImageLoadError(source, "data: URI has invalid base64 data") from None
    if len(data) > max_image_bytes():
        raise ImageLoadError(source, _too_big())
    return _decode(source, io.BytesIO(data), empty_reason="data: URI has no image data")


def _from_url(source: str) -> Image.Image:
    import requests  # only URL sources pay for importing requests

    cap = max_image_bytes()
    timeout = (CONNECT_TIMEOUT_S, READ_TIMEOUT_S)
    try:
        with requests.Session() as session:
            session.max_redirects = MAX_REDIRECTS
            session.headers["User-Agent"] = f"dsvl/{__version__}"
            with session.get(source, stream=True, timeout=timeout) as resp:
                body = _read_response(source, resp, cap)
    except requests.RequestException as e:
        raise ImageLoadError(source, _request_reason(e)) from None
    return _decode(source, io.BytesIO(body), empty_reason="URL returned an empty body", url=True)


def _read_response(source: str, resp, cap: int) -> bytes:
    """Check status and headers, then stream the body under the byte cap."""
    if resp.status_code >= 400:
        try:
            phrase = HTTPStatus(resp.status_code).phrase
        except ValueError:
            phrase = _one_line(resp.reason or "")
        raise ImageLoadError(source, f"HTTP {resp.status_code} {phrase}".rstrip())
    ctype = resp.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if ctype in ("text/html", "application/xhtml+xml"):
        raise ImageLoadError(source, "URL returned an HTML page, not an image")
    if ctype == "image/svg+xml":
        raise ImageLoadError(source, "SVG is not supported; convert it to PNG first")
    length = resp.headers.get("Content-Length", "")
    if length.isdigit() and int(length) > cap:
        raise ImageLoadError(source, _too_big())
    body = bytearray()
    for chunk in resp.iter_content(_CHUNK):  # decoded bytes, so a gzip bomb meets the cap too
        body += chunk
        if len(body) > cap:
            raise ImageLoadError(source, _too_big())
    return bytes(body)


def _request_reason(e: Exception) -> str:
    """One short line for a requests failure; the most specific classes are tested first."""
    from requests import exceptions as rex
    from urllib3.exceptions import ReadTimeoutError

    # A read timeout while streaming the body surfaces as ConnectionError(ReadTimeoutError).
    if isinstance(e, rex.ReadTimeout) or (e.args and isinstance(e.args[0], ReadTimeoutError)):
        return f"timed out after {READ_TIMEOUT_S:g} s"
    if isinstance(e, rex.ConnectTimeout):
        return f"could not connect: timed out after {CONNECT_TIMEOUT_S:g} s"
    if isinstance(e, rex.TooManyRedirects):
        return "too many redirects"
    if isinstance(e, rex.SSLError):
        verify = "CERTIFICATE_VERIFY_FAILED" in str(e)
        return "could not connect: " + ("certificate verify failed" if verify else "SSL error")
    if isinstance(e, rex.ConnectionError):
        return f"could not connect: {_connection_text(e)}"
    if isinstance(e, rex.ChunkedEncodingError):
        return "connection broken while downloading"
    if isinstance(e, (rex.InvalidURL, rex.InvalidSchema, rex.MissingSchema)):
        return f"invalid URL ({_one_line(str(e))})"
    return f"request failed: {type(e).__name__}"


# --- decoding ----------------------------------------------------------------------------------


_DECODE_LOCK = threading.Lock()  # warnings.catch_warnings is process-global


def _decode(source: str, fp: BinaryIO, *, empty_reason: str, url: bool = False) -> Image.Image:
    """Sniff, decode and normalise to RGB. `fp` must be seekable and positioned at the start."""
    head = fp.read(_SNIFF)
    fp.seek(0)
    if not head:
        raise ImageLoadError(source, empty_reason)
    _reject_text_formats(source, head, url)
    with _DECODE_LOCK, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # refuse, don't just warn
        try:
            with Image.open(fp) as opened:
                opened.load()  # decode now, so truncation is caught here and not later
                rgb = _to_rgb(source, _apply_orientation(opened))
                return rgb.copy() if rgb is opened else rgb
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise ImageLoadError(source, _bomb_reason(e)) from None
        except UnidentifiedImageError:
            raise ImageLoadError(source, "not a recognised image format") from None
        except MemoryError:
            raise ImageLoadError(source, "not enough memory to decode the image") from None
        except _DECODE_ERRORS:
            raise ImageLoadError(source, "truncated or corrupt image data") from None


def _reject_text_formats(source: str, head: bytes, url: bool) -> None:
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    xml_svg = text.startswith(b"<?xml") and b"<svg" in text
    if text.startswith((b"<svg", b"<!doctype svg")) or xml_svg:
        raise ImageLoadError(source, "SVG is not supported; convert it to PNG first")
    if text.startswith((b"<!doctype html", b"<html")):
        what = "URL returned an HTML page" if url else "an HTML document"
        raise ImageLoadError(source, f"{what}, not an image")


def _apply_orientation(image: Image.Image) -> Image.Image:
    """Rotate/flip per EXIF. A malformed EXIF block is ignored rather than failing the image."""
    try:
        return ImageOps.exif_transpose(image)
    except (SyntaxError, ValueError, TypeError, KeyError, struct.error):
        return image


def _to_rgb(source: str, image: Image.Image) -> Image.Image:
    """Any mode -> RGB: deep images scaled to 8 bits, transparency composited on white."""
    mode = image.mode
    if mode.startswith("I;16"):
        image = image.convert("I").point(lambda v: v * (1 / 257)).convert("L")
    elif mode == "I":
        hi = image.getextrema()[1]
        scale = 1.0 if hi <= 255 else (1 / 257 if hi <= 65535 else 255 / hi)
        image = image.point(lambda v: v * scale).convert("L")
    elif mode == "F":
        hi = image.getextrema()[1]
        image = image.point(lambda v: v * (255.0 if hi <= 1.0 else 1.0)).convert("L")
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if image.mode == "RGB":
        return image
    try:
        return image.convert("RGB")
    except ValueError:  # e.g. LAB, which Pillow cannot convert directly
        raise ImageLoadError(source, f"unsupported image mode '{mode}'") from None


# --- helpers -----------------------------------------------------------------------------------


def _read_capped(source: str, stream: BinaryIO) -> bytes:
    cap = max_image_bytes()
    data = bytearray()
    for chunk in iter(lambda: stream.read(_CHUNK), b""):
        data += chunk
        if len(data) > cap:
            raise ImageLoadError(source, _too_big())
    return bytes(data)


def _too_big() -> str:
    return f"larger than the {_fmt_bytes(max_image_bytes())} limit"


def _fmt_bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} B"


def _bomb_reason(exc: Exception) -> str:
    found = re.search(r"\((\d+) pixels\) exceeds limit of (\d+)", str(exc))
    if found:
        pixels, limit = found.groups()
        return f"image too large (decompression bomb guard: {pixels} pixels, limit {limit})"
    return "image too large (decompression bomb guard)"


def _oserror_text(e: OSError) -> str:
    return _one_line(e.strerror or type(e).__name__)


def _connection_text(exc: BaseException) -> str:
    """The root cause under requests' and urllib3's wrappers: DNS failure, refused, reset..."""
    import socket

    todo, seen = [exc], set()
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, socket.gaierror):
            return "could not resolve the host name"
        if isinstance(e, OSError) and e.strerror:
            return _one_line(e.strerror)
        links = (e.__cause__, e.__context__, getattr(e, "reason", None), *e.args)
        todo.extend(x for x in links if isinstance(x, BaseException))
    return "network error"


def _one_line(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
