"""A streamed answer as Markdown on a terminal, each line reaching the scrollback once.

Why not Rich's `Live` with visible overflow: it redraws the whole answer on every refresh, and a
terminal cannot move the cursor above its top row, so an answer taller than the screen was copied
into the scrollback again on each refresh (a 200-line answer left thousands of lines). And its
refresh thread kept drawing over the chat prompt when a second Ctrl-C skipped its exit.

How: the text is split into finished Markdown blocks (everything up to a blank line outside a
fenced code block, when what follows is not indented) and the block still being written. Finished
blocks are printed once, above a live tail: the current block, redrawn in place and never taller
than the screen; when it grows taller, its top lines are printed for good and only the rest stays
live. Drawing happens in the caller's thread (at most `fps` times a second, and once at the end):
there is no thread to outlive an interrupt.

Limits: blocks are rendered one at a time, so Markdown that spans blocks (a reference-style link
defined further down, a list item continued after a blank line without indentation) renders as
its parts would alone. A line already printed for good stays as it was if later text changes how
its block renders (a table's header row before the table is complete). The screen's size is read
at each redraw; resizing while an answer streams may leave a stale line or two.
"""

from __future__ import annotations

import re
import time

from rich.console import Console
from rich.markdown import Markdown
from rich.segment import Segment, Segments

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_UP_AND_ERASE = "\x1b[1A\x1b[2K"


def finished_prefix(text: str) -> int:
    """Length of the leading part of `text` made of finished Markdown blocks (0: none yet).

    A block is finished at a blank line outside a fenced code block once the next line has begun
    and is not indented (an indented line after a blank one may continue a list item)."""
    end, fence, offset, blank_at = 0, None, 0, None
    lines = text.split("\n")
    for k, line in enumerate(lines):
        last = k == len(lines) - 1  # still being written: it decides nothing yet
        if fence is None and blank_at is not None and line.strip() and not last and not line[0].isspace():
            end = blank_at
        if not last:
            match = _FENCE.match(line)
            if fence is None and match:
                fence = match.group(1)[0] * 3
            elif fence is not None and line.strip().startswith(fence):
                fence = None
            if fence is None and not line.strip():
                blank_at = offset + len(line) + 1
            elif line.strip():
                blank_at = None
        offset += len(line) + 1
    return end


class MarkdownStream:
    """`write` text as it arrives, `close` at the end (idempotent); see the module docstring."""

    def __init__(self, console: Console, *, fps: float = 12.0):
        self.console = console
        self.interval = 1.0 / fps
        self.text = ""
        self.done = 0  # text[:done] is printed for good
        self.blocks = 0  # finished chunks printed so far (the next one starts with a blank line)
        self.committed = 0  # lines of the current chunk printed for good
        self.shown = 0  # lines in the live tail on the screen now
        self.drawn_at = 0.0
        self.closed = False

    def write(self, text: str) -> None:
        self.text += text
        if time.monotonic() - self.drawn_at >= self.interval:
            self.refresh()

    def refresh(self) -> None:
        self.drawn_at = time.monotonic()
        end = self.done + finished_prefix(self.text[self.done:])
        if end > self.done:  # one or more blocks finished: the rest of their lines go out for good
            lines = self._render(self.text[self.done:end])
            self._print_for_good(lines[self.committed:])
            self.done, self.committed, self.blocks = end, 0, self.blocks + 1
        lines = self._render(self.text[self.done:])
        room = max(self.console.size.height - 1, 1)
        overflow = len(lines) - self.committed - room
        if overflow > 0:
            self._print_for_good(lines[self.committed:self.committed + overflow])
            self.committed += overflow
        self._draw_tail(lines[self.committed:])

    def close(self) -> None:
        """Print what is left for good and leave the cursor on a new line."""
        if self.closed:
            return
        self.closed = True
        lines = self._render(self.text[self.done:])
        self._print_for_good(lines[self.committed:])

    # -- drawing ----------------------------------------------------------------------------------
    def _render(self, text: str) -> list[list[Segment]]:
        if not text.strip():
            return []
        lines = self.console.render_lines(Markdown(text), self.console.options, pad=False, new_lines=False)
        while lines and not "".join(segment.text for segment in lines[-1]).strip():
            lines.pop()
        return ([[]] if self.blocks else []) + lines  # a blank line between chunks, as Markdown has

    def _print_for_good(self, lines: list[list[Segment]]) -> None:
        self._erase_tail()
        self._emit(lines)

    def _draw_tail(self, lines: list[list[Segment]]) -> None:
        self._erase_tail()
        self._emit(lines)
        self.shown = len(lines)

    def _erase_tail(self) -> None:
        if self.shown:
            self.console.file.write(_UP_AND_ERASE * self.shown)
            self.shown = 0

    def _emit(self, lines: list[list[Segment]]) -> None:
        """Each line followed by a newline: the cursor rests at the start of the line below."""
        if not lines:
            self.console.file.flush()
            return
        segments = [segment for line in lines for segment in (*line, Segment.line())]
        self.console.print(Segments(segments), end="", soft_wrap=True)
        self.console.file.flush()
