"""Text inputs of `dsvl batch` as Entries, the format detected per input from its first non-blank line:

- JSONL (the line starts with `{`): one JSON object per line (batch/fields.py says which fields);
- TSV (the line has a tab): `image<TAB>prompt`; an empty image field means no image;
- plain lines: one image source per line, the question from `--prompt`.

Blank lines are skipped; `line` counts from 1. A line that is not JSON becomes an Entry with its
problem (an error record later), never the end of the reading.
"""

from __future__ import annotations

import json

from dsvl_cli.batch.records import Entry
from dsvl_cli.errors import UsageError, load_json


def detect_format(lines: list[str]) -> str:
    """jsonl, tsv or plain, from the first non-blank line."""
    for text in lines:
        if text.strip():
            if text.lstrip().startswith("{"):
                return "jsonl"
            return "tsv" if "\t" in text else "plain"
    return "plain"


def text_entries(lines: list[str], *, name: str, prompt: str | None) -> list[Entry]:
    """Every non-blank line of one text input as an Entry, in order. Raises UsageError only for a
    problem with the whole input (plain lines and no --prompt)."""
    fmt = detect_format(lines)
    if fmt == "plain" and prompt is None and any(t.strip() for t in lines):
        raise UsageError(f"{name}: plain lines of image sources need --prompt TEXT "
                         "(or give JSONL records or TSV image<TAB>prompt lines)")
    make = {"jsonl": _json_entry, "tsv": _tsv_entry, "plain": _plain_entry}[fmt]
    return [make(number, text) for number, text in enumerate(lines, start=1) if text.strip()]


def _json_entry(number: int, text: str) -> Entry:
    try:
        data = load_json(text)
    except json.JSONDecodeError as exc:
        return Entry(number, problem=("invalid_json", f"malformed JSON: {exc.msg} (column {exc.colno})"))
    if not isinstance(data, dict):
        return Entry(number, problem=("invalid_json", "a record must be a JSON object"))
    return Entry(number, fields=data)


def _tsv_entry(number: int, text: str) -> Entry:
    image, _, question = text.rstrip("\r\n").partition("\t")
    return Entry(number, image=image.strip() or None, question=question.strip() or None)


def _plain_entry(number: int, text: str) -> Entry:
    return Entry(number, image=text.strip())
