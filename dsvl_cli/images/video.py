"""Video frames (PyAV: FFmpeg's decoders; wheels bundle them) and the frames of animated images.

A video becomes `#frames=N` frames (DEFAULT_FRAMES without a selection), sampled evenly over its
length: frame i is the one shown at (i + 0.5) / N of the duration, found by seeking to the key
frame before it and decoding forward. `#t=SECONDS` is the one frame shown then. Each picture is
named by the time of the frame it is (`clip.mp4#t=12.5`) and scaled so its long side is at most
`side` pixels (by FFmpeg's scaler, before it becomes a PIL image).

An animated GIF, WebP or PNG stays its first frame (images/decode.py) unless a selection asks
for frames: `#frames=N` (evenly over its frames) or `#frame=K` (1-based).

Limits: a video stream past `max_pixels` per frame is refused before decoding; decoding stops
after DECODE_BUDGET_S per source (or the caller's `check()`, the server's deadline).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import BinaryIO

from PIL import Image, ImageSequence

from dsvl_cli.errors import ImageLoadError
from dsvl_cli.images import selection
from dsvl_cli.images.selection import Selection

DECODE_BUDGET_S = 120.0
_IMAGE_BRANDS = {b"avif", b"avis", b"heic", b"heix", b"heim", b"heis", b"hevc", b"mif1", b"msf1"}


def is_video(head: bytes) -> bool:
    """MP4/MOV/3GP, Matroska/WebM, AVI, MPEG-TS/PS, Ogg, FLV (AVIF and HEIC share MP4's box, not its brand)."""
    if head[4:8] == b"ftyp":
        return head[8:12] not in _IMAGE_BRANDS
    if head[:4] in (b"\x1aE\xdf\xa3", b"OggS", b"\x00\x00\x01\xba") or head[:3] == b"FLV":
        return True
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return True
    return len(head) > 376 and head[0] == head[188] == head[376] == 0x47


def _av(source: str):
    try:
        import av
    except ImportError:
        raise ImageLoadError(source, "reading videos needs PyAV (pip install 'dsvl-cli[docs]')") from None
    return av


def frame_times(source: str, path: str, count: int = selection.DEFAULT_FRAMES) -> list[float]:
    """The times `count` evenly sampled frames are taken at (nothing is decoded): batch's records."""
    av = _av(source)
    try:
        with av.open(path) as container:
            _, duration = _stream(source, container)
    except av.FFmpegError as exc:
        raise ImageLoadError(source, _reason(exc)) from None
    return [round((i + 0.5) * duration / count, 3) for i in range(count)]


def video_frames(source: str, fp: BinaryIO, sel: Selection | None, *, name: str, side: int,
                 max_pixels: int | None = None, max_pictures: int | None = None,
                 check: Callable[[], None] | None = None) -> list[tuple[str, Image.Image]]:
    if sel is not None and sel.kind not in ("frames", "t"):
        raise ImageLoadError(source, f"'{sel.text}' does not apply to a video (use #frames=N or #t=SECONDS)")
    av = _av(source)
    count = 1 if sel is not None and sel.kind == "t" else (sel.count if sel is not None else selection.DEFAULT_FRAMES)
    if max_pictures is not None and count > max_pictures:
        from dsvl_cli.images.documents import too_many

        raise ImageLoadError(source, too_many(count, "frames", max_pictures, "#frames="))
    started = time.monotonic()
    try:
        with av.open(fp) as container:
            stream, duration = _stream(source, container)
            ctx = stream.codec_context
            if max_pixels is not None and ctx.width * ctx.height > max_pixels:
                raise ImageLoadError(source, f"{ctx.width}x{ctx.height} frames are over the {max_pixels:,}-pixel limit")
            times = [sel.time] if count == 1 and sel is not None else [(i + 0.5) * duration / count
                                                                     for i in range(count)]
            out = []
            for wanted in times:
                if check is not None:
                    check()
                if time.monotonic() - started > DECODE_BUDGET_S:
                    raise ImageLoadError(source, f"decoding took over {DECODE_BUDGET_S:g} s; ask for fewer frames")
                at, frame = _frame_at(source, container, stream, wanted, duration)
                out.append((selection.time_name(name, round(at, 3)), _picture(frame, side)))
            return out
    except av.FFmpegError as exc:
        raise ImageLoadError(source, _reason(exc)) from None


def _stream(source: str, container):
    if not container.streams.video:
        raise ImageLoadError(source, "no video stream in this file")
    stream = container.streams.video[0]
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        duration = container.duration / 1_000_000
    else:
        raise ImageLoadError(source, "cannot tell how long the video is")
    if not duration > 0:
        raise ImageLoadError(source, "the video has no frames")
    return stream, duration


def _frame_at(source: str, container, stream, wanted: float, duration: float):
    """(its time, the frame) shown at `wanted` seconds: seek to the key frame before it, decode on."""
    if wanted > duration:
        raise ImageLoadError(source, f"#t={wanted:g} is past the end of the video ({duration:.3g} s)")
    base = stream.time_base
    container.seek(int(wanted / base) + (stream.start_time or 0), stream=stream, backward=True, any_frame=False)
    start = float((stream.start_time or 0) * base)
    chosen = None
    for frame in container.decode(stream):
        at = float(frame.pts * base) - start if frame.pts is not None else 0.0
        if chosen is not None and at > wanted + 1e-6:
            break
        chosen = (at, frame)
    if chosen is None:
        raise ImageLoadError(source, "the video has no frames")
    return chosen


def _picture(frame, side: int) -> Image.Image:
    width, height = frame.width, frame.height
    if max(width, height) > side:
        scale = side / max(width, height)
        width, height = max(1, round(width * scale)), max(1, round(height * scale))
    return frame.reformat(width=width, height=height, format="rgb24").to_image()


def _reason(exc: Exception) -> str:
    text = (getattr(exc, "strerror", None) or str(exc)).splitlines()[0]
    return f"not a readable video ({text[:80]})"


def animation_frames(source: str, opened: Image.Image, sel: Selection, *, name: str,
                     side: int) -> list[tuple[str, Image.Image]]:
    """The selected frames of an animated image (`opened` by Pillow, still open)."""
    if sel.kind not in ("frames", "frame"):
        raise ImageLoadError(source, f"'{sel.text}' applies to PDFs and videos; an animation takes #frames=N or #frame=K")
    total = getattr(opened, "n_frames", 1)
    if sel.kind == "frame" and sel.count > total:
        raise ImageLoadError(source, f"no frame {sel.count}: the image has {total} frame{'s' * (total > 1)}")
    wanted = [sel.count - 1] if sel.kind == "frame" else selection.evenly(sel.count, total)
    out = []
    for index, frame in enumerate(ImageSequence.Iterator(opened)):
        if index in wanted:
            rgba = frame.convert("RGBA")
            flat = Image.new("RGB", rgba.size, (255, 255, 255))
            flat.paste(rgba, mask=rgba.getchannel("A"))
            flat.thumbnail((side, side), Image.Resampling.BILINEAR)
            out.append((selection.frame_name(name, index + 1), flat))
        if index >= wanted[-1]:
            break
    return out
