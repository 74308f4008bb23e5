"""A constrained answer, finished: its parsed value (`data`) and whether it is complete.

Shared by every engine: the local one (engine/core.py) and the HTTP one (engine/remote.py), which
only sees text. The grammar guarantees the shape of whatever was generated; what it cannot
guarantee is that the answer was finished: `-n` (or a stop string, or Ctrl-C) can cut it first.
Such an answer keeps its finish_reason (`length`) and gets no `data`; `incomplete` says why in one
line for the front ends (ask exits 1, batch writes an error record, serve sends it as OpenAI does:
the text so far with finish_reason "length").
"""

from __future__ import annotations

import json
import re

from dsvl_cli.errors import load_json
from dsvl_cli.results import Result
from dsvl_cli.structured.spec import AnswerFormat


def conclude(result: Result, fmt: AnswerFormat | None) -> Result:
    """`result` with `data` (the parsed JSON) for a schema answer; unchanged for other formats."""
    if fmt is None or fmt.kind != "json_schema":
        return result
    result.json_answer = True
    try:
        result.data = load_json(result.answer)
    except ValueError:  # cut before the JSON closed: no data (incomplete() says why)
        result.data = None
    return result


def complete(result: Result, fmt: AnswerFormat) -> bool:
    if fmt.kind == "json_schema":
        try:
            load_json(result.answer)
        except ValueError:
            return False
        return True
    if fmt.kind == "regex":
        try:
            return re.fullmatch(fmt.regex, result.answer) is not None
        except re.error:  # Rust syntax Python lacks: trust the grammar
            return result.finish_reason == "stop"
    return True


def incomplete(result: Result, fmt: AnswerFormat | None, hint: str = "raise --max-new-tokens (-n)") -> str | None:
    """One line when a constrained answer ended before its grammar was complete (None when it is
    complete, unconstrained, or interrupted: the front end reports an interruption itself);
    `hint`: what to do about a cut by the token budget (chat says it with /set)."""
    if fmt is None or fmt.kind not in ("json_schema", "regex") or result.finish_reason == "interrupted":
        return None
    if complete(result, fmt):
        return None
    what = "its JSON closed" if fmt.kind == "json_schema" else "it matched --regex"
    if result.finish_reason == "length":
        return f"the answer ran out of tokens before {what} ({result.stats.generated_tokens} generated); {hint}"
    return f"the answer stopped before {what} (finish_reason {result.finish_reason})"
