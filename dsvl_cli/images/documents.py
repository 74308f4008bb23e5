"""PDF pages as pictures (pypdfium2: PDFium, the renderer of Chrome; wheels bundle it).

Limits, on purpose:
- Each page is rendered so that its long side is `side` pixels (1024: what the hybrid models'
  SAM encoder sees; what any DeepSeek-VL processor resizes to), whatever the page's own size: a
  page of 200 inches costs what a page of A4 costs. `side` is never exceeded.
- Nothing a PDF links to is opened or fetched: PDFium renders the page's own content; forms are
  not initialised (no JavaScript, no XFA); links, embedded files and remote resources are ignored.
- At most MAX_PAGES selected per source (selection.py), `max_pictures` per question (the context,
  or the server's --max-images) checked from the page count before any page is rendered, and
  RENDER_BUDGET_S of rendering per source (the server's fetch deadline, when it is shorter).
- An encrypted PDF (a password needed to open it), a damaged one PDFium cannot repair and one with
  no pages are refused with one line. PDFium is not thread-safe: one lock around every call.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from typing import BinaryIO

from PIL import Image

from dsvl_cli.errors import ImageLoadError
from dsvl_cli.images import selection
from dsvl_cli.images.selection import Selection

RENDER_BUDGET_S = 120.0
_PDFIUM = threading.Lock()
_SCAN_BYTES = 64 << 20  # how much of a refused PDF is read to say why


def is_pdf(head: bytes) -> bool:
    return b"%PDF-" in head[:1024]  # the header may follow up to 1 KB of junk (PDF 1.7, 7.5.2)


def _pdfium(source: str):
    try:
        import pypdfium2
    except ImportError:
        raise ImageLoadError(source, "reading PDFs needs pypdfium2 (pip install 'dsvl-cli[docs]')") from None
    return pypdfium2


def page_count(source: str, fp: BinaryIO | str) -> int:
    """How many pages the PDF has (nothing is rendered)."""
    with _PDFIUM:
        pdf = _open(source, fp)
        try:
            return len(pdf)
        finally:
            pdf.close()


def render_pages(source: str, fp: BinaryIO, sel: Selection | None, *, name: str, side: int,
                 max_pictures: int | None = None, check: Callable[[], None] | None = None
                 ) -> list[tuple[str, Image.Image]]:
    """(name#page=N, RGB picture) for each selected page. `check()` raises to stop (a deadline)."""
    if sel is not None and sel.kind != "pages":
        raise ImageLoadError(source, f"'{sel.text}' applies to videos and animations; a PDF takes #page=N or #pages=A-B")
    started = time.monotonic()
    with _PDFIUM:
        pdf = _open(source, fp)
        try:
            pages = _selected(source, len(pdf), sel, max_pictures)
            out = []
            for number in pages:
                if check is not None:
                    check()
                if time.monotonic() - started > RENDER_BUDGET_S:
                    raise ImageLoadError(source, f"rendering took over {RENDER_BUDGET_S:g} s; select fewer pages")
                out.append((selection.page_name(name, number), _render(source, pdf, number, side)))
            return out
        finally:
            pdf.close()


def _open(source: str, fp: BinaryIO | str):
    pdfium = _pdfium(source)
    try:
        return pdfium.PdfDocument(fp, autoclose=False) if not isinstance(fp, str) else pdfium.PdfDocument(fp)
    except pdfium.PdfiumError as exc:
        raise ImageLoadError(source, _why_not(fp, getattr(exc, "err_code", None))) from None


def _why_not(fp: BinaryIO | str, code: int | None) -> str:
    """Why PDFium refused a document. Its error code is process-wide and not reset by every failed
    load (a PDF with no pages leaves the previous one), so the bytes have the last word."""
    try:
        if isinstance(fp, str):
            with open(fp, "rb") as f:
                data = f.read(_SCAN_BYTES)
        else:
            fp.seek(0)
            data = fp.read(_SCAN_BYTES)
    except OSError:
        data = b""
    if re.search(rb"/Encrypt\s*\d+\s+\d+\s+R|/Encrypt\s*<<", data):
        return "encrypted PDF (it needs a password); decrypt it first"
    if code == 0 or re.search(rb"/Count\s+0\b", data):
        return "the PDF has no pages"
    return "truncated or damaged PDF"


def _selected(source: str, total: int, sel: Selection | None, max_pictures: int | None) -> list[int]:
    if total == 0:
        raise ImageLoadError(source, "the PDF has no pages")
    pages = list(range(1, total + 1)) if sel is None else list(sel.pages)
    missing = [p for p in pages if p > total]
    if missing:
        raise ImageLoadError(source, f"no page {missing[0]}: the PDF has {total} page{'s' * (total > 1)}")
    if len(pages) > selection.MAX_PAGES:
        raise ImageLoadError(source, f"{len(pages)} pages; at most {selection.MAX_PAGES} per document "
                                     f"(select some: #pages=1-{selection.MAX_PAGES})")
    if max_pictures is not None and len(pages) > max_pictures:
        raise ImageLoadError(source, too_many(len(pages), "pages", max_pictures, "#pages=1-"))
    return pages


def too_many(count: int, what: str, fit: int, example: str) -> str:
    """The line for a document or video that does not fit one question."""
    if fit <= 0:
        return f"{count} {what}, and no more pictures fit in this question"
    return (f"{count} {what} do not fit in one question (at most {fit} do); select some "
            f"({example}{fit}), or ask about each with `dsvl batch`")


def _render(source: str, pdf, number: int, side: int) -> Image.Image:
    page = pdf[number - 1]
    try:
        width, height = page.get_size()
        if not (width > 0 and height > 0):
            raise ImageLoadError(source, f"page {number} has no area")
        scale = side / max(width, height)  # PDF points -> pixels: the long side is `side`
        bitmap = page.render(scale=scale, may_draw_forms=False)
        try:
            picture = bitmap.to_pil().convert("RGB")
        finally:
            bitmap.close()
    except ImageLoadError:
        raise
    except Exception as exc:  # PdfiumError while rendering a damaged page
        raise ImageLoadError(source, f"page {number} cannot be rendered ({type(exc).__name__})") from None
    finally:
        page.close()
    if max(picture.size) > side:  # rounding: never larger than asked
        picture.thumbnail((side, side), Image.Resampling.BILINEAR)
    return picture
