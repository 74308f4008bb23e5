"""`-o answers.parquet`: the same records as JSONL, written as one Parquet file at the end.

A Parquet file cannot be appended to, and one cut off mid-write is unreadable, so records are
written (and flushed, one line each) to a journal beside it, `answers.parquet.part.jsonl`, exactly
as a JSONL output; when the run ends (finished, failed or interrupted) the Parquet file is written
from the journal (atomically). The journal is removed once no record is left to do; after an
interrupted run it stays, and --resume continues it (or, with no journal, starts from the
records in the Parquet file). Needs pyarrow (`pip install 'dsvl-cli[ray]'`).

Columns: `id` (as text), `line`, `input`, `images` (list), `answer`, `finish_reason`,
`error_type`, `error_message`, `prompt_tokens`, `generated_tokens`, and `record`: the whole JSON
record as local batch writes it (stats, scores, logprobs...), so nothing is lost to the schema.
"""

from __future__ import annotations

import json
from pathlib import Path

from dsvl_cli.errors import UsageError
from dsvl_cli.userfiles import atomic_file


def wanted(output: Path | None) -> bool:
    return output is not None and output.suffix.lower() == ".parquet"


def journal(output: Path) -> Path:
    return output.with_name(output.name + ".part.jsonl")


def _pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise UsageError("-o *.parquet needs pyarrow (pip install 'dsvl-cli[ray]')") from None
    return pa, pq


def start(output: Path, *, resume: bool) -> Path:
    """The journal to write records to (checked writable before anything runs). With `resume` and
    no journal, it starts with the records of an earlier Parquet file."""
    pa, pq = _pyarrow()
    path = journal(output)
    if resume and not path.exists() and output.exists():
        try:
            lines = pq.read_table(output, columns=["record"]).column("record").to_pylist()
        except (OSError, ValueError, KeyError) as exc:
            raise UsageError(f"{output}: not a Parquet file dsvl batch wrote (for --resume): "
                             f"{str(exc).splitlines()[0]}") from None
        path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def finish(output: Path, *, done: bool) -> None:
    """Write `output` from its journal; drop the journal when `done` (no record left to do)."""
    pa, pq = _pyarrow()
    path = journal(output)
    records, lines = [], []
    for text in path.read_text(encoding="utf-8").splitlines(keepends=True):
        if text.endswith("\n"):  # a torn last line (a killed run) is --resume's to repair
            records.append(json.loads(text))
            lines.append(text[:-1])  # the sink's record_json, as written
    table = pa.table({
        "id": pa.array([str(r["id"]) for r in records], pa.string()),
        "line": pa.array([r.get("line") for r in records], pa.int64()),
        "input": pa.array([r.get("input") for r in records], pa.string()),
        "images": pa.array([[r["image"]] if "image" in r else r.get("images", []) for r in records],
                           pa.list_(pa.string())),
        "answer": pa.array([r.get("answer") for r in records], pa.string()),
        "finish_reason": pa.array([r.get("finish_reason") for r in records], pa.string()),
        "error_type": pa.array([r.get("error", {}).get("type") for r in records], pa.string()),
        "error_message": pa.array([r.get("error", {}).get("message") for r in records], pa.string()),
        "prompt_tokens": pa.array([r.get("stats", {}).get("prompt_tokens") for r in records], pa.int64()),
        "generated_tokens": pa.array([r.get("stats", {}).get("generated_tokens") for r in records], pa.int64()),
        "record": pa.array(lines, pa.string()),
    })
    with atomic_file(output) as f:
        pq.write_table(table, f)
    if done:
        path.unlink()
