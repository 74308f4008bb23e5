"""The output side of `dsvl batch`: records, the summary, and what an earlier run left (--resume).

Each output record is one `write` of one JSON line, flushed at once, so a killed run leaves valid
JSONL (at most a torn last line, which --resume repairs). Files are replaced atomically.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from dsvl_cli.batch.inputs import BadRecord, Record, id_key
from dsvl_cli.errors import UsageError


@dataclass
class Summary:
    done: int = 0
    failed: int = 0
    skipped: int = 0
    failed_before: int = 0  # error records from an earlier run, skipped by --resume
    generated_tokens: int = 0
    seconds: float = 0.0
    interrupted: bool = False

    def line(self) -> str:
        rate = self.done / self.seconds if self.seconds > 0 else 0.0
        tok = self.generated_tokens / self.seconds if self.seconds > 0 else 0.0
        failed = f"{self.failed} failed" + (f" (+{self.failed_before} from before)" if self.failed_before else "")
        head = "interrupted: " if self.interrupted else ""
        return (f"dsvl batch: {head}{self.done} done, {failed}, {self.skipped} skipped in {self.seconds:.1f}s"
                f" · {rate:.2f} records/s · {tok:.1f} output tok/s")


# -- output and resume ---------------------------------------------------------------------------


class Writer:
    """One JSON object per line, each written whole and flushed at once."""

    def __init__(self, stream: TextIO, on_write=None):
        self.stream = stream
        self.on_write = on_write

    def write(self, obj: dict) -> None:
        self.stream.write(json.dumps(obj, ensure_ascii=False) + "\n")
        self.stream.flush()
        if self.on_write:
            self.on_write()


def error_record(item: Record | BadRecord, kind: str, message: str) -> dict:
    record = {"id": item.id, "line": item.line, "error": {"type": kind, "message": message}}
    if item.input is not None:
        record["input"] = item.input
    return record


@dataclass
class Previous:
    """What an earlier run left in the output file."""

    answered: set[str] = field(default_factory=set)  # id keys with an answer
    failed: set[tuple[str, int]] = field(default_factory=set)  # (id key, line) of error records


def read_previous(path: Path, *, retry_failed: bool) -> Previous:
    """Answered ids and error records in `path`; rewrites it (atomically) to drop a torn last
    line, and with `retry_failed` its error records, so they can be written again."""
    prev = Previous()
    if not path.exists():
        return prev
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)
    except OSError as exc:
        raise UsageError(f"{path}: cannot read it for --resume: {exc.strerror or exc}") from None
    keep, changed = [], False
    for number, text in enumerate(lines, start=1):
        try:
            obj = json.loads(text) if text.endswith("\n") else None
        except json.JSONDecodeError:
            obj = None
        if not isinstance(obj, dict) or "id" not in obj:
            if number < len(lines) and text.strip():
                raise UsageError(f"{path}: line {number} is not a dsvl batch record; "
                                 "--resume needs the file an earlier dsvl batch wrote")
            changed = changed or bool(text)  # a torn last line, from a killed run
            continue
        if "error" in obj:
            if retry_failed:
                changed = True
                continue
            prev.failed.add((id_key(obj["id"]), obj.get("line")))
        else:
            prev.answered.add(id_key(obj["id"]))
        keep.append(text)
    if changed:
        _replace(path, "".join(keep))
    return prev


def _replace(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def split_done(items: list[Record | BadRecord], prev: Previous) -> tuple[list, int, int]:
    """(items still to do, how many skipped, how many of those were failures from before)."""
    todo, skipped, failed_before = [], 0, 0
    for item in items:
        key = id_key(item.id)
        if (key, item.line) in prev.failed:
            skipped, failed_before = skipped + 1, failed_before + 1
        elif isinstance(item, Record) and key in prev.answered:
            skipped += 1
        else:
            todo.append(item)
    return todo, skipped, failed_before


def open_output(output: Path, *, append: bool) -> TextIO:
    try:
        return open(output, "a" if append else "w", encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"{output}: cannot write it: {exc.strerror or exc}") from None
