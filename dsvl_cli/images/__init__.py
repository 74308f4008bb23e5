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
- Animated images (GIF, WebP, APNG) give their first frame, unless `#frames=N` asks for more.
  SVG is not rasterised.
- A PDF gives its pages, a video its frames (images/pictures.py, documents.py, video.py), so a
  source may become several pictures: `load_source` returns them all, `load_images` all of every
  source, `load_image` exactly one (a page or a frame named: `report.pdf#page=3`). Selections
  (`#page=3`, `#pages=2-4`, `#frames=8`, `#t=12.5`) are images/selection.py's.
- Transparency is composited on white; 16/32-bit and float images are scaled to 8 bits; EXIF
  orientation is applied. Colour profiles (ICC) are ignored.
- `-` can be read once per process, so it may appear once among the sources of one question.
- Callers may load images from several threads: fetching and decoding both run in parallel
  (Pillow's warning filters are set once per decode, never swapped with catch_warnings:
  images/decode.py); such callers call prepare_for_threads(sources) first. Pillow's warnings
  about a damaged file (a corrupt EXIF block) are not printed: the pixels are used, the damaged
  metadata ignored.
- A named pipe (FIFO, `<(curl ...)`) is read without blocking forever (images/pipes.py); other
  non-regular files (terminals, devices, sockets) are refused.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
import stat
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import BinaryIO
from urllib.parse import unquote_to_bytes

from PIL import Image

from dsvl_cli.errors import DsvlError, ImageLoadError
from dsvl_cli.images import selection
from dsvl_cli.images.guard import ImageGuard
from dsvl_cli.images.limits import display_source, fmt_bytes, max_image_bytes, oserror_text, read_capped, too_big
from dsvl_cli.images.pictures import Want, decode_pictures

# `scheme://...` is always treated as a URL; a bare `scheme:` only when no such file exists.
_URL_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):")  # 2+ chars, so `C:\\...` stays a path
_SPACE_RE = re.compile(r"\s+")
_URLSAFE = bytes.maketrans(b"-_", b"+/")
_NON_FILE_SCHEMES = frozenset("file ftp sftp ssh javascript mailto about blob s3 gs hf".split())

__all__ = ["LoadedImage", "display_source", "load_image", "load_images", "load_source", "max_image_bytes",
           "prepare_for_threads"]
_MEDIA_TYPES = ("image/", "video/", "application/pdf")


@dataclass(frozen=True)
class LoadedImage:
    source: str  # the source string as the user gave it (used in messages and JSON output)
    image: Image.Image  # RGB mode, fully loaded, EXIF orientation applied
    load_s: float  # seconds spent reading/fetching + decoding


def load_source(source: str, *, stdin: BinaryIO | None = None, exact: bool = False,
                guard: ImageGuard | None = None, max_pictures: int | None = None,
                open_source: Callable[[str], BinaryIO] | None = None) -> list[LoadedImage]:
    """The one image loader: read, fetch or decode one source (a path, http(s) URL, `-`, data:
    URI; a PDF's pages or a video's frames as its selection says): its picture, or its pages or
    frames; ImageLoadError with a one-line reason otherwise.

    The caller's policy and limits: images over ~4 MP are decoded at the size the model needs
    (images/decode.py); `exact` decodes every image in full, as the model card's way does
    (--exact-pixels). `guard`: the source comes from an untrusted client (the server): the load
    starts the guard's deadline (or fails at once if it was cancelled while waiting), URLs go
    through its media policy, data: URIs meet its caps, local files and stdin are refused
    (guard.py). `max_pictures`: a document or video with more pages or frames selected is refused
    before any is rendered. `open_source`: opens a source the caller reads itself as a binary
    stream (batch: a pyarrow filesystem URI such as s3://...); it is read under the same size cap
    and decoded as any other source (its OSError or DsvlError becomes the ImageLoadError)."""
    start = time.perf_counter()
    if guard is not None:
        guard.check(source)  # cancelled while it waited for a thread
        guard.start()  # the deadline covers rendering pages and decoding frames too
    target, sel = (source, None) if source == "-" or _exists(source) else selection.split(source)
    if sel is not None and target == "-":
        raise ImageLoadError(source, "a selection needs a named source, not stdin")
    max_pictures = max_pictures if guard is None else min(guard.max_pictures, max_pictures or guard.max_pictures)
    want = Want(name=target, selection=sel, max_pictures=max_pictures,
                check=None if guard is None else (lambda: guard.check(display_source(source))))
    if open_source is not None:
        pictures = _from_opener(target, open_source, exact, want)
    elif guard is None:
        pictures = _resolve(target, stdin, exact, want)
    else:
        pictures = _resolve_guarded(target, guard, want)
    each = (time.perf_counter() - start) / len(pictures)
    if len(pictures) == 1 and sel is None:
        return [LoadedImage(source=source, image=pictures[0][1], load_s=each)]
    return [LoadedImage(source=name, image=image, load_s=each) for name, image in pictures]


def load_image(source: str, *, stdin: BinaryIO | None = None, exact: bool = False,
               guard: ImageGuard | None = None, open_source: Callable[[str], BinaryIO] | None = None) -> LoadedImage:
    """Exactly one picture (load_source's, same arguments): an image, or one page or frame
    (`report.pdf#page=3`)."""
    pictures = load_source(source, stdin=stdin, exact=exact, guard=guard, open_source=open_source)
    if len(pictures) > 1:
        example = "#t=SECONDS" if "#t=" in pictures[0].source else "#page=N"
        raise ImageLoadError(display_source(source), f"holds {len(pictures)} pictures where one is expected; "
                                                     f"name one ({example})")
    return pictures[0]


def load_images(sources: Sequence[str], *, stdin: BinaryIO | None = None, exact: bool = False,
                max_pictures: int | None = None, load: Callable[..., list[LoadedImage]] = load_source
                ) -> list[LoadedImage]:
    """Every picture of every source in order; the first bad one raises. `-` may appear at most
    once. `max_pictures`: the most pictures one question holds (selection.PICTURES_PER_QUESTION
    for the CLI); a document or video past what is left is refused before it is rendered.
    `load`: load_source, or one that takes the same arguments (chat's read-ahead: pictures
    decoded earlier)."""
    if sum(1 for s in sources if s == "-") > 1:
        raise ImageLoadError("-", "stdin can only be read once")
    loaded: list[LoadedImage] = []
    for source in sources:
        left = None if max_pictures is None else max_pictures - len(loaded)
        loaded += load(source, stdin=stdin, exact=exact, max_pictures=left)
    return loaded


def _exists(source: str) -> bool:
    try:
        return "#" in source and os.path.lexists(os.path.expanduser(source))
    except (OSError, ValueError):
        return False


def prepare_for_threads(sources: Sequence[str]) -> None:
    """Import the HTTP stack now, in the calling thread, when any source is a URL.

    Why: `requests` installs a warnings filter for urllib3's DependencyWarning when it is first
    imported; imported on a worker thread while others decode, that filter raced the decoders'
    (when they swapped the filter list with catch_warnings, "SOCKS support requires PySocks"
    reached stderr in most runs). The first import in the main thread keeps it out of that race
    for good, whatever the decoders do. Call it before the threads start.
    """
    if any(_URL_RE.match(s) for s in sources):
        import requests  # noqa: F401  (imports urllib3 and its optional SOCKS support, once)


def _resolve(source: str, stdin: BinaryIO | None, exact: bool, want: Want) -> list[tuple[str, Image.Image]]:
    if source == "-":
        return _from_stdin(stdin, exact, want)
    if not source:
        raise ImageLoadError(source, "empty image source")
    url = _URL_RE.match(source)
    if url:
        scheme = url.group(1).lower()
        if scheme in ("http", "https"):
            from dsvl_cli.images.fetch import from_url

            return from_url(source, exact, want)
        raise _unsupported_scheme(source, scheme)
    scheme_match = _SCHEME_RE.match(source)
    if scheme_match and not os.path.lexists(os.path.expanduser(source)):
        scheme = scheme_match.group(1).lower()  # `a:b.png` on disk stays a path
        if scheme == "data":
            return _from_data_uri(source, want, exact)
        if scheme in ("http", "https"):
            raise ImageLoadError(source, f"malformed URL (expected {scheme}://host/...)")
        if scheme in _NON_FILE_SCHEMES:
            raise _unsupported_scheme(source, scheme)
    return _from_path(source, exact, want)


def _data_uri_bytes(uri: str, source: str) -> bytes:
    """The decoded payload of a base64 data: URI. Copies of the (possibly many-megabyte) text are
    made only when needed (whitespace, %-escapes, the URL-safe alphabet, missing padding), and all
    of them are gone when this returns."""
    comma = uri.find(",")
    if comma < 0:
        raise ImageLoadError(source, "malformed data: URI (no ',' before the data)")
    params = [p.strip().lower() for p in uri[len("data:"):comma].split(";")]
    media_type = params[0] or "text/plain"
    if not media_type.startswith(_MEDIA_TYPES):
        raise ImageLoadError(source, f"data: URI media type is '{media_type}', not image/*, video/* or application/pdf")
    if "base64" not in params[1:]:
        raise ImageLoadError(source, "data: URI is not base64-encoded (expected ';base64,')")
    text = uri[comma + 1:]
    if _SPACE_RE.search(text):
        text = _SPACE_RE.sub("", text)
    if not text:
        raise ImageLoadError(source, "data: URI has no image data")
    try:
        raw = unquote_to_bytes(text) if "%" in text else text.encode("ascii")
        del text
        if b"-" in raw or b"_" in raw:
            raw = raw.translate(_URLSAFE)  # accept the URL-safe alphabet too
        if len(raw) % 4:
            raw += b"=" * (-len(raw) % 4)
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise ImageLoadError(source, "data: URI has invalid base64 data") from None


def _resolve_guarded(source: str, guard: ImageGuard, want: Want) -> list[tuple[str, Image.Image]]:
    url = _URL_RE.match(source)
    if url and url.group(1).lower() in ("http", "https"):
        from dsvl_cli.images.guarded import from_url_guarded

        return from_url_guarded(source, guard, want)
    if source[:5].lower() == "data:":
        return _from_data_uri(source, want, guard=guard)
    raise ImageLoadError(source[:80], "only http(s) URLs and data: URIs are accepted here")


def _from_opener(source: str, open_source: Callable[[str], BinaryIO], exact: bool,
                 want: Want) -> list[tuple[str, Image.Image]]:
    try:
        with open_source(source) as stream:
            data = read_capped(source, stream)  # the same size cap as every other source
    except ImageLoadError:
        raise
    except DsvlError as err:  # the opener's own refusal (a filesystem that cannot be used)
        raise ImageLoadError(source, err.message.removeprefix(f"{source}: ")) from None
    except (OSError, ValueError) as exc:
        raise ImageLoadError(source, f"cannot read it: {str(exc).splitlines()[0]}") from None
    return decode_pictures(source, io.BytesIO(data), want, empty_reason="empty file", exact=exact)


def _unsupported_scheme(source: str, scheme: str) -> ImageLoadError:
    hint = "(use a path, http(s) URL, data: URI or -)"
    return ImageLoadError(source, f"unsupported URL scheme '{scheme}' {hint}")


# --- sources -----------------------------------------------------------------------------------


def _from_path(source: str, exact: bool, want: Want) -> list[tuple[str, Image.Image]]:
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
        raise ImageLoadError(source, f"cannot access file: {oserror_text(e)}") from None
    if stat.S_ISDIR(st.st_mode):
        raise ImageLoadError(source, "is a directory, not an image file")
    if stat.S_ISFIFO(st.st_mode):  # a named pipe, or <(curl ...): read without blocking forever
        from dsvl_cli.images.pipes import read_pipe

        return decode_pictures(source, io.BytesIO(read_pipe(source, path)), want, empty_reason="the pipe was empty",
                               exact=exact)
    if not stat.S_ISREG(st.st_mode):  # a terminal, /dev/zero, a socket: nothing an image comes from
        raise ImageLoadError(source, f"not a regular file ({_file_kind(st.st_mode)})")
    if st.st_size == 0:
        raise ImageLoadError(source, "empty file")
    try:
        with open(path, "rb") as f:
            return decode_pictures(source, f, want, empty_reason="empty file", exact=exact)
    except PermissionError:
        raise ImageLoadError(source, "permission denied") from None
    except OSError as e:  # read errors outside decoding (decode errors are mapped in _decode)
        raise ImageLoadError(source, f"cannot read file: {oserror_text(e)}") from None


def _file_kind(mode: int) -> str:
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    return "a socket" if stat.S_ISSOCK(mode) else "a special file"


def _from_stdin(stdin: BinaryIO | None, exact: bool, want: Want) -> list[tuple[str, Image.Image]]:
    stream = stdin if stdin is not None else getattr(sys.stdin, "buffer", None)
    if stream is None:
        raise ImageLoadError("-", "no stdin available to read image bytes from")
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        raise ImageLoadError("-", "stdin is a terminal; pipe image bytes into it (< photo.jpg)")
    try:
        data = read_capped("-", stream)
    except OSError as e:
        raise ImageLoadError("-", f"cannot read stdin: {oserror_text(e)}") from None
    return decode_pictures("-", io.BytesIO(data), want, empty_reason="no bytes on stdin", exact=exact)


def _from_data_uri(uri: str, want: Want, exact: bool = False,
                   guard: ImageGuard | None = None) -> list[tuple[str, Image.Image]]:
    source = display_source(uri)  # a multi-megabyte error line helps nobody
    data = _data_uri_bytes(uri, source)
    if guard is None:
        if len(data) > max_image_bytes():
            raise ImageLoadError(source, too_big())
        return decode_pictures(source, io.BytesIO(data), want, empty_reason="data: URI has no image data", exact=exact)
    if len(data) > guard.max_bytes:
        raise ImageLoadError(source, f"larger than the server's {fmt_bytes(guard.max_bytes)} limit")
    return decode_pictures(source, io.BytesIO(data), want, empty_reason="data: URI has no image data",
                           max_pixels=guard.max_pixels, max_side=guard.max_side)


