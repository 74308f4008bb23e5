"""Batch input, the first stages: every INPUT's entries (batch/lines.py for text, batch/sources.py
for folders, documents, Parquet and `scheme://` addresses), each validated (batch/fields.py) into
a Record or a BadRecord, and the ids checked.

A record without an id gets its line number as id (`FILE:LINE` when several inputs are given). A
bad line never stops the reading: it becomes a BadRecord carrying its line number, and the run
goes on. An id given twice is refused before anything runs (records.refuse_duplicates says why).
Image paths are relative to the current directory. No torch here.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TextIO

from dsvl_cli.batch.fields import validate
from dsvl_cli.batch.lines import text_entries
from dsvl_cli.batch.records import BadRecord, Entry, Record, refuse_duplicates
from dsvl_cli.errors import UsageError
from dsvl_cli.settings import GenerationSettings


@dataclass(frozen=True)
class Parser:
    """The command's settings and --prompt, applied to every entry of every input."""

    base: GenerationSettings
    prompt: str | None = None
    qualify_ids: bool = False  # several inputs: default ids are FILE:LINE, records name their input

    def records(self, entries: list[Entry], name: str) -> list[Record | BadRecord]:
        out = []
        for entry in entries:
            item = validate(entry, f"{name}:{entry.line}" if self.qualify_ids else entry.line, self.base, self.prompt)
            if self.qualify_ids:
                item.input = name
            out.append(item)
        return out


def parse_lines(lines: list[str], *, base: GenerationSettings, prompt: str | None = None,
                name: str = "<stdin>", qualify_ids: bool = False) -> list[Record | BadRecord]:
    """Every non-blank line of one text input as a Record or BadRecord, in order.

    Raises UsageError only for a problem with the whole input (plain lines and no --prompt).
    """
    entries = text_entries(lines, name=name, prompt=prompt)
    return Parser(base, prompt, qualify_ids).records(entries, name)


def read_inputs(paths: list[str], *, base: GenerationSettings, prompt: str | None = None,
                stdin: TextIO | None = None) -> list[Record | BadRecord]:
    """Every record of every input (`-` or none: stdin). Raises UsageError for an input that cannot
    be read at all, and for an id given twice."""
    from dsvl_cli.batch.sources import read_path

    paths = paths or ["-"]
    if paths.count("-") > 1:
        raise UsageError("stdin (-) can be given once as an input")
    parser = Parser(base, prompt, qualify_ids=len(paths) > 1)
    items: list[Record | BadRecord] = []
    for path in paths:
        if path != "-":  # a file, a folder of images, Parquet, s3://... (batch/sources.py)
            items += parser.records(read_path(path, prompt=prompt), path)
            continue
        stream = stdin or sys.stdin
        if stream.isatty():
            raise UsageError("no input: give a FILE, or pipe records in (cat jobs.jsonl | dsvl batch)")
        raw = getattr(stream, "buffer", None)  # bytes, decoded as files are: a bad byte spoils one line only
        text = raw.read().decode("utf-8", errors="replace") if raw is not None else stream.read()
        items += parser.records(text_entries(text.splitlines(), name="<stdin>", prompt=prompt), "<stdin>")
    refuse_duplicates(items, "<stdin>" if paths == ["-"] else paths[0])
    return items
