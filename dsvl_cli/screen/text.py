"""Untrusted text made safe for a terminal.

Why: a file name, an HTTP reason phrase, a remote server's answer or error, and the model's own
answer (the tokenizer is byte-level: a model can emit ESC) may all carry C0/C1 control characters;
written raw to a terminal they move the cursor, retitle the window or set the clipboard (OSC 52).

- `for_terminal(text)`: an answer shown on a terminal: escape sequences and controls removed
  (newline and tab kept).
  Answers going to a pipe or a file are data and are never passed through here.
- `visible(text)`: a message (an error naming a file, a status line): each control written as a
  visible `\\x1b`-style escape, so the name stays recognisable; newline and tab kept.
- `write_json(obj)`: a JSON record or document on stdout (--json): on a terminal C1 escaped too.

Limits: only C0 (U+0000-U+001F), DEL and C1 (U+0080-U+009F) are treated; Unicode bidirectional
overrides are printable characters and pass through.
"""

from __future__ import annotations

import json
import re
import sys
from typing import TextIO

# Whole sequences first (CSI, OSC/DCS/APC/PM strings, two-byte escapes), so their payload does not
# stay behind as text; then any control left (a sequence split across two streamed pieces).
_SEQUENCES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x9b[0-?]*[ -/]*[@-~]"
                        r"|[\x1b][\]P^_X][^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)|[\x90\x9d\x9e\x9f][^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)"
                        r"|\x1b[ -/]*[0-~]")
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_C1 = re.compile("[\x7f-\x9f]")


def for_terminal(text: str) -> str:
    return _CONTROLS.sub("", _SEQUENCES.sub("", text))


def visible(text: str) -> str:
    return _CONTROLS.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def json_text(obj, *, terminal: bool, indent: int | None = None, default=None) -> str:
    """`obj` as JSON (ensure_ascii=False). For a terminal, DEL and C1 characters are escaped as
    well as C0 (json.dumps leaves them raw): the same JSON value, safe to show. Not for a terminal
    (a pipe, a file): json.dumps' text as it is."""
    text = json.dumps(obj, ensure_ascii=False, indent=indent, default=default)
    return _C1.sub(lambda m: f"\\u{ord(m.group()):04x}", text) if terminal else text


def write_json(obj, stream: TextIO | None = None, *, terminal: bool | None = None, indent: int | None = None,
               default=None) -> None:
    """Every JSON record or document written to stdout: `obj` as `json_text`, then a newline.
    `stream`: stdout unless given; `terminal`: whether the stream is one (asked when not given)."""
    stream = sys.stdout if stream is None else stream
    if terminal is None:
        terminal = _isatty(stream)
    stream.write(json_text(obj, terminal=terminal, indent=indent, default=default) + "\n")


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or stream-like object
        return False
