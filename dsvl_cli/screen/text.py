"""Untrusted text made safe for a terminal.

Why: a file name, an HTTP reason phrase, a remote server's answer or error, and the model's own
answer (the tokenizer is byte-level: a model can emit ESC) may all carry C0/C1 control characters;
written raw to a terminal they move the cursor, retitle the window or set the clipboard (OSC 52).

- `for_terminal(text)`: an answer shown on a terminal: controls removed (newline and tab kept).
  Answers going to a pipe or a file are data and are never passed through here.
- `visible(text)`: a message (an error naming a file, a status line): each control written as a
  visible `\\x1b`-style escape, so the name stays recognisable; newline and tab kept.

Limits: only C0 (U+0000-U+001F), DEL and C1 (U+0080-U+009F) are treated; Unicode bidirectional
overrides are printable characters and pass through.
"""

from __future__ import annotations

import json
import re

_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_C1 = re.compile("[\x7f-\x9f]")


def for_terminal(text: str) -> str:
    return _CONTROLS.sub("", text)


def visible(text: str) -> str:
    return _CONTROLS.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def json_line(obj: dict) -> str:
    """One JSON object on a line, with DEL and C1 characters escaped as well as C0 (json.dumps
    leaves them raw with ensure_ascii=False); the same JSON value, safe on a terminal."""
    return _C1.sub(lambda m: f"\\u{ord(m.group()):04x}", json.dumps(obj, ensure_ascii=False))
