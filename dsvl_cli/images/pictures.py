"""What a source's bytes become: one picture (an image), its pages (a PDF) or frames (a video).

The resolver (images/__init__.py) reads a path, URL, stdin or data: URI the same way as ever and
hands the bytes here; this sniffs them and sends them to the PDF renderer (documents.py), the
video decoder (video.py) or the image decoder (decode.py). A selection (`#page=3`, `#frames=8`:
selection.py) that does not apply to what the bytes turn out to be is refused with one line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from PIL import Image

from dsvl_cli.errors import ImageLoadError
from dsvl_cli.images.decode import INTAKE_SIDE, decode_image
from dsvl_cli.images.selection import Selection, frame_name


@dataclass(frozen=True)
class Want:
    """What the caller asks of one source: its selection, the name its pictures take, the caps."""

    name: str  # the source without its selection (data: URIs shortened)
    selection: Selection | None = None
    max_pictures: int | None = None  # how many pictures still fit (the context, --max-images)
    check: Callable[[], None] | None = None  # raises to stop: the server's deadline and cancel


def decode_pictures(source: str, fp: BinaryIO, want: Want, *, empty_reason: str, url: bool = False,
                    exact: bool = False, max_pixels: int | None = None,
                    max_side: int | None = None) -> list[tuple[str, Image.Image]]:
    """(name, RGB picture) for each picture the bytes in `fp` (seekable, at 0) hold."""
    head = fp.read(1024)
    fp.seek(0)
    if not head:
        raise ImageLoadError(source, empty_reason)
    side = min(max_side or INTAKE_SIDE, INTAKE_SIDE)
    sel = want.selection
    from dsvl_cli.images import documents, video

    if documents.is_pdf(head):
        return documents.render_pages(source, fp, sel, name=want.name, side=side,
                                      max_pictures=want.max_pictures, check=want.check)
    if video.is_video(head):
        return video.video_frames(source, fp, sel, name=want.name, side=side, max_pixels=max_pixels,
                                  max_pictures=want.max_pictures, check=want.check)
    if sel is not None and sel.kind in ("frames", "frame"):
        animated = _animation(source, fp, sel, want, side)
        if animated is not None:
            return animated
    elif sel is not None:
        raise ImageLoadError(source, f"'{sel.text}' applies to PDFs and videos, and this is an image")
    picture = decode_image(source, fp, empty_reason=empty_reason, url=url, exact=exact,
                           max_pixels=max_pixels, max_side=max_side)
    return [(want.name if sel is None else frame_name(want.name, 1), picture)]


def _animation(source: str, fp: BinaryIO, sel: Selection, want: Want, side: int):
    """The frames of an animated GIF/WebP/PNG, or None for a still image (its one picture is decoded as usual)."""
    from dsvl_cli.images.video import animation_frames

    try:
        with Image.open(fp) as opened:
            if getattr(opened, "n_frames", 1) <= 1:
                fp.seek(0)
                return None
            frames = animation_frames(source, opened, sel, name=want.name, side=side)
    except ImageLoadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageLoadError(source, "the image is too large (decompression bomb guard)") from None
    except Exception:  # Pillow's errors for damaged data: decode_image reports them in its words
        fp.seek(0)
        return None
    if want.max_pictures is not None and len(frames) > want.max_pictures:
        from dsvl_cli.images.documents import too_many

        raise ImageLoadError(source, too_many(len(frames), "frames", want.max_pictures, "#frames="))
    return frames
