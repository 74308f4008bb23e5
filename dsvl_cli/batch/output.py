"""The output side of `dsvl batch`: records, the summary, and what an earlier run left (--resume).

Each output record is one `write` of one JSON line (record_json: the local runner, --server and
the Ray workers all serialise through it), flushed at once, so a killed run leaves valid
JSONL (at most a torn last line, which --resume repairs). Files are replaced atomically, keeping
their permission bits. Every record names its images (`image`, or `images` for none or several;
long data: URIs shortened) so answers map back to files. A reader that goes away (`| head -1`)
raises OutputClosed: the run stops and exits 1, since records were left unanswered.

--resume trusts only lines that dsvl wrote: an object with an `id` and an `answer` string or an
`error` object. Any other complete line (say, the input file given as -o) is refused, not skipped.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from dsvl_cli.batch.records import BadRecord, Record, id_key
from dsvl_cli.errors import UsageError, load_json
from dsvl_cli.images.limits import display_source
from dsvl_cli.images.selection import describe
from dsvl_cli.screen.text import json_text
from dsvl_cli.userfiles import write_atomic


@dataclass
class Summary:
    done: int = 0
    failed: int = 0
    skipped: int = 0
    failed_before: int = 0  # error records from an earlier run, skipped by --resume
    generated_tokens: int = 0
    seconds: float = 0.0
    stopped_by: str = ""  # "interrupted" (SIGINT), "terminated" (SIGTERM) or "output closed"
    left: int = 0  # records neither answered nor failed when the run stopped early

    def line(self) -> str:
        rate = self.done / self.seconds if self.seconds > 0 else 0.0
        tok = self.generated_tokens / self.seconds if self.seconds > 0 else 0.0
        failed = f"{self.failed} failed" + (f" (+{self.failed_before} from before)" if self.failed_before else "")
        head = f"{self.stopped_by}: " if self.stopped_by else ""
        left = f", {self.left} not answered (rerun with --resume -o FILE)" if self.left else ""
        return (f"dsvl batch: {head}{self.done} done, {failed}, {self.skipped} skipped{left} in "
                f"{self.seconds:.1f}s · {rate:.2f} records/s · {tok:.1f} output tok/s")


# -- output and resume ---------------------------------------------------------------------------


class OutputClosed(Exception):
    """The output's reader went away (`dsvl batch ... | head -1`): records are left unanswered."""


def record_json(obj: dict) -> str:
    """An output record as its one line of JSON (no newline): UTF-8 as is, control characters
    (C1 too: a terminal would act on them) escaped, so `cat answers.jsonl` is safe."""
    return json_text(obj, terminal=True)  # in files too: `cat answers.jsonl` puts them on a terminal


class Writer:
    """The sink: one JSON object per line (record_json), each written whole and flushed at once."""

    def __init__(self, stream: TextIO, on_write=None):
        self.stream = stream
        self.on_write = on_write
        self.closed = False  # the reader went away; later writes raise OutputClosed at once

    def write(self, obj: dict) -> None:
        if self.closed:
            raise OutputClosed
        try:
            self.stream.write(record_json(obj) + "\n")
            self.stream.flush()
        except BrokenPipeError:
            self.closed = True
            _discard(self.stream)
            raise OutputClosed from None
        if self.on_write:
            self.on_write()


def _discard(stream: TextIO) -> None:
    """Point the stream's descriptor at /dev/null, so the line still buffered in it (flushed again
    when the stream closes or Python exits) makes no second BrokenPipeError traceback."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, stream.fileno())
    finally:
        os.close(devnull)


def sources(record: Record) -> dict:
    """`image` for a record with one image, else `images` (a list, maybe empty); data: URIs shortened."""
    if len(record.images) == 1:  # a PDF's page or a video's frame: its number or time too
        return {"image": display_source(record.images[0]), **describe(record.images[0])}
    return {"images": [display_source(s) for s in record.images]}


def answer_record(record: Record, result) -> dict:
    return {"id": record.id, **sources(record), **result.to_dict()}


def result_record(record: Record, result) -> tuple[dict, bool]:
    """(the output record, failed?): an answer, or an error record for a --schema / --regex answer
    that ran out of tokens before it was complete (structured/answers.py)."""
    from dsvl_cli.structured.answers import incomplete

    problem = incomplete(result, record.gen.answer_format)
    if problem:
        return error_record(record, "incomplete_answer", problem), True
    return answer_record(record, result), False


def error_record(item: Record | BadRecord, kind: str, message: str) -> dict:
    record = {"id": item.id, "line": item.line}
    if isinstance(item, Record):
        record.update(sources(item))
    record["error"] = {"type": kind, "message": message}
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
            obj = load_json(text) if text.endswith("\n") else None
        except json.JSONDecodeError:
            obj = None
        if not _is_output_record(obj):
            if text.endswith("\n") and text.strip():
                raise UsageError(f"{path}: line {number} is not a dsvl batch record (no id with an answer or "
                                 "error); --resume needs the file an earlier dsvl batch wrote")
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
        write_atomic(path, "".join(keep))
    return prev


def _is_output_record(obj) -> bool:
    """A line dsvl batch wrote: an id and an answer string or an error object."""
    return (isinstance(obj, dict) and "id" in obj
            and (isinstance(obj.get("answer"), str) or isinstance(obj.get("error"), dict)))


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


def refuse_input_as_output(output: Path | None, inputs: list[str], stdin: TextIO | None) -> None:
    """-o naming one of the inputs would overwrite it (or, with --resume, count its lines as done)."""
    if output is None:
        return
    try:
        out = os.stat(output)
    except OSError:  # not there yet (or unreadable: opening it reports that): not an input
        return
    if not stat.S_ISREG(out.st_mode):  # -o /dev/stdout and the like: never an input file
        return
    for name in inputs or ["-"]:
        try:
            if name == "-":
                same = stdin is not None and os.path.samestat(os.fstat(stdin.fileno()), out)
            else:
                same = os.path.samestat(os.stat(Path(name).expanduser()), out)
        except (OSError, ValueError, AttributeError):  # a missing input is reported when it is read
            continue
        if same:
            what = "stdin" if name == "-" else name
            raise UsageError(f"-o {output}: is also the input ({what}); write the answers to another file")


def open_output(output: Path, *, append: bool) -> TextIO:
    try:
        return open(output, "a" if append else "w", encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"{output}: cannot write it: {exc.strerror or exc}") from None
