"""Decoding: sniff, decode with Pillow, apply EXIF orientation, normalise to RGB.

Photo intake at the size the model needs: no DeepSeek-VL processor looks at more than INTAKE_SIDE
pixels on the long side (SAM-B's 1024 px), so an image of more than INTAKE_MIN_PIXELS (a 12 MP
phone photo) is decoded at the smallest JPEG DCT scale that still gives >= INTAKE_SIDE
(libjpeg-turbo's M/8 scales through simplejpeg: 3/8, 1512 px, for a 4032 px photo; Pillow's
`draft`, 1/2^k only, where simplejpeg refuses the file), or for other formats reduced by a whole
factor, and only then rotated per EXIF. What is left, one resize to INTAKE_SIDE, is the engine's:
the picture is marked INTAKE_KEY and engine/preprocess.py resizes it in torch (bicubic with
antialiasing, as Pillow's; a third of Pillow's time on two cores) fused with the rest of the
preprocessing. The server decodes a client's picture the same way (`max_side` only sets the
side), so --server answers as a local run; --server sends a picture as intake left it (its
INTAKE_KEY mark kept), at 1024 px only where its PNG would pass the server's byte cap. Smaller images take the exact path,
bit for bit as before; `exact=True` (--exact-pixels) takes it for every image. The
decompression-bomb guard checks the full size before anything is decoded.

Threads: images decode in parallel (Pillow's decoders release the GIL), so batch's prefetch
threads keep several photos in flight. Pillow's warnings are therefore filtered once for the
process (`_pillow_warning_filters`), never with warnings.catch_warnings around each decode, which
swaps the process-wide filter list and made decodes take turns under a lock.

The server (`max_pixels`, `max_side`: images from untrusted clients) refuses a picture with more
than `max_pixels` from its header, before decoding (a JPEG counts at its reduced decoding scale),
and shrinks every picture over INTAKE_MIN_PIXELS the same way as above (a local run's pixels,
issue 29), so no copy of more than ~4 MP outlives its decode.
"""

from __future__ import annotations

import math
import re
import struct
import warnings
import zlib
from typing import BinaryIO

from PIL import Image, ImageOps, UnidentifiedImageError

from dsvl_cli.errors import ImageLoadError

_SNIFF = 4096
INTAKE_SIDE = 1024  # the longest side any DeepSeek-VL processor resizes to
INTAKE_MIN_PIXELS = 4_000_000  # below this, decoding is a few ms: the exact path, bit for bit
# image.info key of a picture intake decoded at a DCT scale (long side from INTAKE_SIDE to twice
# that) and left for the engine to resize (engine/preprocess.py: the last resize, done in torch);
# a PNG text chunk carries it to a --keep-alive server (engine/remote.py).
INTAKE_KEY = "dsvl-intake-side"
# Pillow raises these on corrupt or truncated data (some plugins leak non-OSError exceptions).
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError, struct.error, zlib.error)


def _pillow_warning_filters() -> None:
    """A decompression-bomb warning is an error (the image is refused, not just noted); Pillow's
    notes on damaged metadata ("Corrupt EXIF data") are dropped: warnings raised by Pillow or
    attributed to this package's calls into it. Set before every decode (filterwarnings replaces
    an identical entry, so the list does not grow): something else may have reset the filters."""
    warnings.filterwarnings("ignore", module=r"(PIL|dsvl_cli\.images)(\.|$)")
    warnings.filterwarnings("error", category=Image.DecompressionBombWarning)


def decode_image(source: str, fp: BinaryIO, *, empty_reason: str, url: bool = False,
                 exact: bool = False, max_pixels: int | None = None, max_side: int | None = None) -> Image.Image:
    """Sniff, decode and normalise to RGB (large images at the size the model needs, see above).
    `fp` must be seekable and positioned at the start."""
    head = fp.read(_SNIFF)
    fp.seek(0)
    if not head:
        raise ImageLoadError(source, empty_reason)
    _reject_text_formats(source, head, url)
    _pillow_warning_filters()
    try:
        with Image.open(fp) as opened:
            side = max_side or INTAKE_SIDE  # the server shrinks as a local run does: the same pixels
            if max(opened.size) > side and not exact and opened.width * opened.height > INTAKE_MIN_PIXELS:
                jpeg = _jpeg_bytes(opened, fp)
                _draft(opened, side)
                _check_pixels(source, opened, max_pixels)
                return _decode_shrunk(source, opened, side, jpeg, finish=False)
            _check_pixels(source, opened, max_pixels)
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


def _draft(opened: Image.Image, side: int) -> None:
    """JPEG: decode at the smallest DCT scale (1/2, 1/4, 1/8) whose long side is still >= `side`."""
    if opened.format == "JPEG":  # the decoder then skips most of its work
        scale = side / max(opened.size)
        opened.draft(opened.mode, (math.ceil(opened.width * scale), math.ceil(opened.height * scale)))


def _jpeg_bytes(opened: Image.Image, fp: BinaryIO) -> bytes | None:
    """The whole file of a colour or grey JPEG (for libjpeg-turbo's finer scales), else None."""
    if opened.format != "JPEG" or opened.mode not in ("RGB", "L"):
        return None
    position = fp.tell()
    fp.seek(0)
    data = fp.read()
    fp.seek(position)
    return data


def _turbo_decode(jpeg: bytes | None, side: int) -> Image.Image | None:
    """A JPEG decoded by libjpeg-turbo (simplejpeg) at the smallest of its scales M/8 whose long
    side is still >= `side`: 3/8 for a 4032 px photo (1512 px), where Pillow's `draft` only has
    1/2, 1/4 and 1/8 and must stop at 1/2 (2016 px): less to decode and a third less to resize.
    None when simplejpeg is missing or refuses the data (Pillow then decodes it and reports)."""
    if jpeg is None:
        return None
    try:
        import simplejpeg

        height, width, _, _ = simplejpeg.decode_jpeg_header(jpeg)
        scale = side / max(width, height)
        pixels = simplejpeg.decode_jpeg(jpeg, colorspace="RGB", min_width=math.ceil(width * scale),
                                        min_height=math.ceil(height * scale), strict=True)
    except (ImportError, ValueError, MemoryError):
        return None
    height, width = pixels.shape[:2]
    return Image.frombuffer("RGB", (width, height), pixels, "raw", "RGB", 0, 1)  # no copy of the pixels


def _decode_shrunk(source: str, opened: Image.Image, side: int, jpeg: bytes | None = None, *,
                   finish: bool = True) -> Image.Image:
    """A large image decoded (drafted already) near `side` on its long side, oriented per EXIF.
    `finish`: resized to `side` here (Pillow, bicubic: the server's cap); else left at its decoding
    scale, marked INTAKE_KEY, for the engine's one resize in torch (a third of Pillow's time)."""
    orientation = _orientation(opened)
    image = _turbo_decode(jpeg, side)
    if image is None:
        opened.load()
        image = _to_rgb(source, opened)
    factor = max(image.size) // side
    if factor >= 2:  # a box filter by a whole factor first: the bicubic pass then reads far less
        image = image.reduce(factor)
    ratio = side / max(image.size)
    if ratio < 1 and finish:
        image = image.resize((max(1, round(image.width * ratio)), max(1, round(image.height * ratio))),
                             Image.Resampling.BICUBIC)
    elif image is opened:
        image = image.copy()
    if ratio < 1 and not finish:
        image.info[INTAKE_KEY] = str(side)
    return image.transpose(orientation) if orientation is not None else image


def downscaled(image: Image.Image, max_side: int) -> Image.Image:
    """A copy whose long side is `max_side`, aspect ratio kept (as the model's processor resizes)."""
    ratio = max_side / max(image.size)
    size = (max(1, round(image.width * ratio)), max(1, round(image.height * ratio)))
    return image.resize(size, Image.Resampling.BICUBIC, reducing_gap=2.0)


def _orientation(image: Image.Image) -> Image.Transpose | None:
    """The transpose that EXIF orientation 2-8 asks for (what ImageOps.exif_transpose applies)."""
    try:
        value = image.getexif().get(0x0112)
    except (SyntaxError, ValueError, TypeError, KeyError, struct.error):
        return None
    return {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
            5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}.get(value)


def _check_pixels(source: str, opened: Image.Image, max_pixels: int | None) -> None:
    """Refuse, from the header, a picture with more pixels than `max_pixels` (JPEG: after draft)."""
    if max_pixels is None:
        return
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


