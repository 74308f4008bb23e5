"""Chat in a pipe or a script: one input per line (a \"\"\" block spans lines).

A bad question or command is reported on stderr and the script goes on; the exit code is the
worst failure (see `dsvl chat --help`); Ctrl-C stops the whole script, as in any pipeline.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TextIO

from dsvl_cli.chat.ahead import DEPTH, ReadAhead
from dsvl_cli.chat.session import block_open
from dsvl_cli.chat.ui import ChatUI
from dsvl_cli.errors import ExitCode


def read_inputs(lines: Iterable[str]) -> Iterator[str]:
    """Whole inputs from lines: one per line, or a \"\"\" block from its opening line to its closing one."""
    block: list[str] | None = None
    for raw in lines:
        line = raw.rstrip("\r\n")
        if block is None:
            if block_open(line):
                block = [line]
            else:
                yield line
        else:
            block.append(line)
            if not block_open("\n".join(block)):
                yield "\n".join(block)
                block = None
    if block is not None:  # an unclosed block at the end of input: send what there is
        yield "\n".join(block)


def run_lines(ui: ChatUI, stream: TextIO, *, read_ahead: int = DEPTH) -> int:
    """Read inputs until EOF or /exit, `read_ahead` inputs ahead (chat/ahead.py: the next pictures
    decode while an answer streams; 0: one at a time). Exit code: the worst failure (130 Ctrl-C,
    1 runtime, 2 bad input or command), 0 if none failed."""
    inputs = read_inputs(iter(stream.readline, ""))
    ahead = None
    if read_ahead > 0:
        ahead = ReadAhead(inputs, exact=ui.session.exact_pixels, depth=read_ahead)
        ui.session.load_images, inputs = ahead.load_images, iter(ahead)
    try:
        for text in inputs:
            if not ui.submit(text):
                break
            if ui.last_turn is not None and ui.last_turn.result.finish_reason == "interrupted":
                return int(ExitCode.INTERRUPTED)  # Ctrl-C stops the whole script, as in any pipeline
        return ui.exit_code
    finally:
        if ahead is not None:
            ahead.close()
