"""Which pages of a PDF or frames of a video a source means: the `#...` selection at its end.

    report.pdf              every page (a question may hold PICTURES_PER_QUESTION pictures in all)
    report.pdf#page=3       page 3 (pages count from 1)
    report.pdf#pages=2-4    pages 2, 3 and 4; `#pages=1,3,5-7` lists several
    clip.mp4                DEFAULT_FRAMES frames sampled evenly over the video
    clip.mp4#frames=16      16 frames sampled evenly (at most MAX_FRAMES)
    clip.mp4#t=12.5         the frame shown at 12.5 s (what `dsvl batch clip.mp4` names its records)
    anim.gif#frames=4       4 frames of an animated GIF, WebP or PNG (without it: the first frame)
    anim.gif#frame=3        its 3rd frame

A path that exists with the `#` in its name is taken as it is (images/__init__.py checks first).
The names of the pictures a source becomes are selections too (`report.pdf#page=3`), so each
picture can be named again, in `--json`'s `images`, in batch records and in error lines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dsvl_cli.errors import ImageLoadError
from dsvl_cli.images.limits import display_source

DEFAULT_FRAMES = 8  # a video without #frames=: 8 x 576 image tokens, a third of the context
MAX_FRAMES = 64
MAX_PAGES = 2000  # pages one source may select (a question is limited further, by the context)
# DeepSeek-VL's 16384-token context less room for the question and answer (832 tokens), at 576
# image tokens per picture: how many pictures one question may hold. Checked before the model
# loads (the engine checks the exact count after it loads).
PICTURES_PER_QUESTION = 27

_FRAGMENT = re.compile(r"#(page|pages|frames|frame|t)=([^#/]*)$")


@dataclass(frozen=True)
class Selection:
    kind: str  # "pages", "frames" (a count), "frame" (one, 1-based) or "t" (seconds)
    pages: tuple[int, ...] = ()
    count: int = 0
    time: float = 0.0
    text: str = ""  # as written, for messages


def split(source: str) -> tuple[str, Selection | None]:
    """(the source without its selection, the selection or None). ImageLoadError for a malformed one."""
    match = _FRAGMENT.search(source)
    if match is None:
        return source, None
    base, key, value = source[:match.start()], match.group(1), match.group(2).replace(" ", "")
    written = match.group(0)
    try:
        if key in ("page", "pages"):
            return base, Selection("pages", pages=_pages(value, single=key == "page"), text=written)
        if key == "t":
            seconds = float(value)
            if not seconds >= 0 or seconds == float("inf"):
                raise ValueError
            return base, Selection("t", time=seconds, text=written)
        number = int(value)
    except OverflowError:
        raise ImageLoadError(source, f"{written}: at most {MAX_PAGES} pages per document") from None
    except ValueError:
        raise ImageLoadError(source, f"bad selection '{written}' (e.g. #page=3, #pages=2-4, #frames=8, #t=1.5)") from None
    if number < 1:
        raise ImageLoadError(source, f"bad selection '{written}': counts start at 1")
    if key == "frames" and number > MAX_FRAMES:
        raise ImageLoadError(source, f"#frames={number}: at most {MAX_FRAMES} frames per video")
    return base, Selection(key, count=number, text=written)


def _pages(value: str, *, single: bool) -> tuple[int, ...]:
    pages: list[int] = []
    for part in [value] if single else value.split(","):
        first, _, last = (part, "", "") if single else part.partition("-")
        lo, hi = int(first), int(last or first)
        if lo < 1 or hi < lo:
            raise ValueError
        if hi - lo + 1 + len(pages) > MAX_PAGES:
            raise OverflowError  # refused before a list of a billion pages is built
        pages.extend(range(lo, hi + 1))
    return tuple(dict.fromkeys(pages))


def describe(name: str) -> dict:
    """`{"page": 3}` or `{"time": 12.5}` for a picture's name (batch's output records), else {}."""
    match = _FRAGMENT.search(name)
    if match is None:
        return {}
    key, value = match.group(1), match.group(2)
    if key == "page" and value.isdigit():
        return {"page": int(value)}
    if key == "t":
        try:
            return {"time": float(value)}
        except ValueError:
            return {}
    return {}


def page_name(base: str, page: int) -> str:
    return f"{display_source(base)}#page={page}"


def frame_name(base: str, frame: int) -> str:
    return f"{display_source(base)}#frame={frame}"


def time_name(base: str, seconds: float) -> str:
    text = f"{seconds:.3f}".rstrip("0").rstrip(".")
    return f"{display_source(base)}#t={text}"


def evenly(count: int, total: int) -> list[int]:
    """`count` indexes spread evenly over range(total), each from the middle of its share."""
    count = min(count, total)
    return [int((i + 0.5) * total / count) for i in range(count)]
