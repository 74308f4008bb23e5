"""The process's streams and terminal facts, in one object the front ends are handed.

Why (httpie's `Environment` is the model): whether stdin, stdout or stderr is a terminal decides
how dsvl talks (a REPL or a script, live Markdown or plain text, a progress bar or none). Reading
`sys.stdin.isatty()` in half a dozen modules made each of those choices untestable without a pty;
here they are read once, when a command starts, and a test builds an Environment of its own
(`Environment(stdin=io.StringIO(...), stdout_isatty=True, ...)`). No torch, no Rich at import.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any, BinaryIO, TextIO


def _isatty(stream: Any) -> bool:
    probe = getattr(stream, "isatty", None)
    try:
        return bool(probe and probe())
    except (ValueError, OSError):  # a closed stream
        return False


@dataclass
class Environment:
    """stdin/stdout/stderr, whether each is a terminal, and NO_COLOR. `current()` reads the process's."""

    stdin: TextIO
    stdout: TextIO
    stderr: TextIO
    stdin_isatty: bool = False
    stdout_isatty: bool = False
    stderr_isatty: bool = False
    no_color: bool = False

    @classmethod
    def current(cls) -> Environment:
        """The streams as they are now (CliRunner swaps sys.std*, so read them per command)."""
        return cls(stdin=sys.stdin, stdout=sys.stdout, stderr=sys.stderr,
                   stdin_isatty=_isatty(sys.stdin), stdout_isatty=_isatty(sys.stdout),
                   stderr_isatty=_isatty(sys.stderr), no_color=bool(os.environ.get("NO_COLOR")))

    @property
    def stdin_bytes(self) -> BinaryIO | None:
        """stdin as bytes (image bytes piped in with `-`); None when there is no such stream."""
        return getattr(self.stdin, "buffer", None)

    def markdown(self, plain: bool) -> bool:
        """Live Markdown answers: only on a terminal, and not with --plain or NO_COLOR."""
        return not plain and not self.no_color and self.stdout_isatty

    def stderr_console(self):
        """A Rich console on stderr (status, notes, errors), coloured only on a terminal."""
        from rich.console import Console

        return Console(file=self.stderr, force_terminal=self.stderr_isatty or None, highlight=False,
                       no_color=self.no_color or None)
