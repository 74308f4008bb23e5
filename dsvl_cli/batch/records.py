"""The stages' types of `dsvl batch`: what a source gives (Entry), what validation makes of it
(Record, or BadRecord for one that cannot be answered), and the identity rules between them.

    sources (lines.py, sources.py) -> Entry -> fields.py / inputs.Parser -> Record | BadRecord
        -> answer.py / remote.py / ray_workers.py -> output.Writer (record_json: one line each)

No torch here, and no JSON text between the stages: a folder's file, a PDF's page and a Parquet
row reach validation as the same fields a JSONL line parses to.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from dsvl_cli.errors import UsageError
from dsvl_cli.settings import GenerationSettings


@dataclass(frozen=True)
class Entry:
    """One record as its source gives it, before validation. Exactly one of: `fields` (a JSON
    record's object, a Parquet row, a folder's file or a document's page: {"id": ..., "image": ...}),
    `image`/`question` (a TSV or plain line; question None: the command's --prompt), `problem`
    ((kind, message): a line that cannot be a record at all, such as malformed JSON)."""

    line: int  # from 1 in each input; a folder's or a document's position in its order
    fields: dict | None = None
    image: str | None = None
    question: str | None = None
    problem: tuple[str, str] | None = None


@dataclass
class Record:
    """One question to answer: everything the runner needs, validated."""

    id: Any  # str or int, written back as given
    line: int
    prompt: str
    images: list[str] = field(default_factory=list)
    system: str | None = None
    gen: GenerationSettings = field(default_factory=GenerationSettings)
    input: str | None = None  # the input's name, set when several inputs are given


@dataclass
class BadRecord:
    """A line that cannot become a Record; written out as an error record."""

    id: Any
    line: int
    type: str
    message: str
    input: str | None = None


def id_key(value: Any) -> str:
    """Ids compare as JSON values: 3 and "3" are different ids."""
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def refuse_duplicates(items: Iterable[Record | BadRecord], name: str = "<stdin>") -> None:
    """Each id may appear once: a duplicate is a UsageError naming both lines, before anything runs.

    Why refuse the whole input rather than answer the first and write an error for the second:
    two output records with one id (an answer and a `duplicate_id` error) is exactly what a
    consumer matching by id cannot tell apart, and which of the two lines was meant is a guess.
    OpenAI's batch API refuses such a file too. Error records count: they carry their id as well.
    """
    seen: dict[str, Record | BadRecord] = {}
    clashes: list[tuple[Record | BadRecord, Record | BadRecord]] = []
    for item in items:
        first = seen.setdefault(id_key(item.id), item)
        if first is not item:
            clashes.append((first, item))
    if clashes:
        first, again = clashes[0]
        more = f" (and {len(clashes) - 1} more)" if len(clashes) > 1 else ""
        raise UsageError(f"duplicate id {json.dumps(first.id, ensure_ascii=False)}: {_where(first, name)} and "
                         f"{_where(again, name)}{more}; ids must be unique, nothing was run")


def _where(item: Record | BadRecord, name: str) -> str:
    return f"{item.input or name} line {item.line}"
