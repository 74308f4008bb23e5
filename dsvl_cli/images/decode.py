"""Decoding: sniff, decode with Pillow, apply EXIF orientation, normalise to RGB.

Decoding uses warnings.catch_warnings, which is process-global, so it holds a module lock: callers
may load images from several threads (fetching URLs overlaps; decoding takes turns).

With `max_pixels` (the server) a picture larger than that is refused from its header, before its
pixels are decoded; a JPEG is first asked to decode at a reduced scale (Pillow's draft mode), so a
large photo may still fit. With `max_side`, the decoded picture is downscaled at once so its long
side is at most that many pixels: the model's processor never uses more, and the full-resolution
copy is dropped before the next picture is decoded.
"""

from __future__ import annotations

import re
import struct
import threading
import warnings
import zlib
from typing import BinaryIO

from PIL import Image, ImageOps, UnidentifiedImageError

from dsvl_cli.errors import ImageLoadError

_SNIFF = 4096
# Pillow raises these on corrupt or truncated data (some plugins leak non-OSError exceptions).
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError, struct.error, zlib.error)


_DECODE_LOCK = threading.Lock()  # warnings.catch_warnings is process-global


def decode_image(source: str, fp: BinaryIO, *, empty_reason: str, url: bool = False,
                 max_pixels: int | None = None, max_side: int | None = None) -> Image.Image:
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
                _check_pixels(source, opened, max_pixels, max_side)
                opened.load()  # decode now, so truncation is caught here and not later
                rgb = _to_rgb(source, _apply_orientation(opened))
                if max_side is not None and max(rgb.size) > max_side:
                    return downscaled(rgb, max_side)  # a new, small image: no full-size copy
                return rgb.copy() if rgb is opened else rgb
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise ImageLoadError(source, _bomb_reason(e)) from None
        except UnidentifiedImageError:
            raise ImageLoadError(source, "not a recognised image format") from None
        except MemoryError:
            raise ImageLoadError(source, "not enough memory to decode the image") from None
        except _DECODE_ERRORS:
            raise ImageLoadError(source, "truncated or corrupt image data") from None


def downscaled(image: Image.Image, max_side: int) -> Image.Image:
    """A copy whose long side is `max_side`, aspect ratio kept (as the model's processor resizes)."""
    ratio = max_side / max(image.size)
    size = (max(1, round(image.width * ratio)), max(1, round(image.height * ratio)))
    return image.resize(size, Image.Resampling.BICUBIC, reducing_gap=2.0)


def _check_pixels(source: str, opened: Image.Image, max_pixels: int | None, max_side: int | None) -> None:
    """Refuse, from the header, a picture with more pixels than `max_pixels` (JPEG: after draft)."""
    if max_pixels is None:
        return
    if opened.format == "JPEG" and max_side is not None:
        opened.draft("RGB", (max_side, max_side))  # decode at 1/2, 1/4 or 1/8 scale when that is enough
    width, height = opened.size
    if width * height > max_pixels:
        raise ImageLoadError(source, f"image is {width}x{height} pixels, more than the {max_pixels} allowed")


def _reject_text_formats(source: str, head: bytes, url: bool) -> None:
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    xml_svg = text.startswith(b"<?xml") and b"<svg" in text
    if text.startswith((b"<svg", b"<!doctype svg")) or xml_svg:
        raise ImageLoadError(source, "SVG is not supported; convert it to PNG first")
    if text.startswith((b"<!doctype html", b"<html")):
        what = "URL returned an HTML page" if url else "an HTML document"
        raise ImageLoadError(source, f"{what}, not an image")


def _apply_orientation(image: Image.Image) -> Image.Image:
    """Rotate/flip per EXIF. A malformed EXIF block is ignored rather than failing the image.
    Without an orientation to apply the image itself comes back (exif_transpose would copy it:
    a second full-size picture in memory)."""
    try:
        if image.getexif().get(0x0112, 1) == 1:
            return image
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


def _bomb_reason(exc: Exception) -> str:
    found = re.search(r"\((\d+) pixels\) exceeds limit of (\d+)", str(exc))
    if found:
        pixels, limit = found.groups()
        return f"image too large (decompression bomb guard: {pixels} pixels, limit {limit})"
    return "image too large (decompression bomb guard)"


