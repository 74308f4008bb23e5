"""Running a batch: plan, prefetch images, generate, write each record the moment it is done.

Guarantees (DESIGN §6, nothing is lost):
- Each output record is one `write` of one JSON line, flushed at once; Ctrl-C lets the running
  batch stop at its next decode step, writes what had already finished, and leaves valid JSONL.
  Records cut short are not written, so `--resume` does them again. A second Ctrl-C aborts at once.
- Output is in completion order, not input order: error records for unreadable lines come first,
  then answers batch by batch. Match records by `id`.
- No id gets two answers: duplicate ids in the input become error records (with their line), and
  `--resume` skips ids already answered in the output file. `--retry-failed` first rewrites that
  file without its error records (a temp file renamed over it, so a crash leaves the old or the new
  file, never half of one), then does those records again.
- Images are loaded and preprocessed by background threads a few batches ahead of the model.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from dsvl_cli.batch_input import BadRecord, Record, id_key
from dsvl_cli.errors import DsvlError, ImageLoadError, UsageError

PREFETCH_WORKERS = 4
PREFETCH_BATCHES = 2  # how many batches ahead of the model images are prepared
REMOTE_IN_FLIGHT = 8  # with --server: requests open at once (the server batches them)


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


# -- planning ------------------------------------------------------------------------------------


def plan_batches(engine, records: list[Record], batch_size: int) -> list[list[Record]]:
    """Records grouped by generation settings, sorted by prompt length, cut into batches.

    Similar lengths together keep padding small; the same images next to each other let their
    features be shared while still cached.
    """
    per_image = int(engine.processor.num_image_tokens)
    texts = [(r.system or "") + r.prompt for r in records]
    lengths = [len(ids) for ids in engine.tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []
    groups: dict = {}
    for record, length in zip(records, lengths):
        estimate = length + per_image * len(record.images)
        groups.setdefault(record.gen.replace(system=None), []).append((estimate, tuple(record.images), record))
    batches = []
    for members in groups.values():
        members.sort(key=lambda m: (m[0], m[1]))
        batches += [[m[2] for m in members[k:k + batch_size]] for k in range(0, len(members), batch_size)]
    return batches


def default_batch_size(engine) -> int:
    """8 on CPU and MPS; on CUDA 16, or 32 with 40 GiB free after loading the model."""
    if not engine.device.startswith("cuda"):
        return 8
    import torch

    free, _ = torch.cuda.mem_get_info(engine.device)
    return 32 if free >= 40 * 2**30 else 16


class Prefetcher:
    """Loads and preprocesses each image source once, a few batches ahead of the model."""

    def __init__(self, engine, batches: list[list[Record]], stop: threading.Event):
        self.engine, self.batches, self.stop = engine, batches, stop
        self.uses: Counter = Counter(s for batch in batches for r in batch for s in r.images)
        self.futures: dict[str, Future] = {}
        self.submitted = 0  # batches whose sources are queued
        self.pool = ThreadPoolExecutor(PREFETCH_WORKERS, thread_name_prefix="dsvl-prefetch")

    def take(self, index: int) -> dict:
        """source -> PreparedImage or ImageLoadError, for batch `index` (waits for them)."""
        while self.submitted < min(len(self.batches), index + 1 + PREFETCH_BATCHES):
            for record in self.batches[self.submitted]:
                for source in record.images:
                    if source not in self.futures:
                        self.futures[source] = self.pool.submit(self._prepare, source)
            self.submitted += 1
        wanted = {s for r in self.batches[index] for s in r.images}
        return {s: self.futures[s].result() for s in wanted}

    def release(self, batch: list[Record]) -> None:
        for source in (s for r in batch for s in r.images):
            self.uses[source] -= 1
            if self.uses[source] <= 0:
                self.futures.pop(source, None)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    def _prepare(self, source: str):
        from dsvl_cli.batching import prepare_image
        from dsvl_cli.images import load_image

        if self.stop.is_set():
            return ImageLoadError(source, "not loaded: the batch was interrupted")
        try:
            return prepare_image(self.engine, load_image(source))
        except DsvlError as err:
            return err if isinstance(err, ImageLoadError) else ImageLoadError(source, err.message)


# -- the run -------------------------------------------------------------------------------------


class _Interrupts:
    """First Ctrl-C: set `stop` so the running batch ends at its next step. Second: abort now."""

    def __init__(self, stop: threading.Event, console):
        self.stop, self.console, self.previous = stop, console, None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.stop.is_set():
            raise KeyboardInterrupt
        self.stop.set()
        print("dsvl: stopping after the current step (Ctrl-C again to abort)", file=sys.stderr, flush=True)

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


def run_records(engine, records: list[Record], writer: Writer, summary: Summary, *,
                batch_size: int, stop: threading.Event) -> None:
    """Answer `records`, writing each result as soon as its batch is done."""
    from dsvl_cli.batching import BatchItem, FeatureStore, generate_batch
    from dsvl_cli.conversation import Conversation

    batches = plan_batches(engine, records, batch_size)
    features = FeatureStore(engine)
    for source in (s for r in records for s in r.images):
        features.expect(source)
    prefetcher = Prefetcher(engine, batches, stop)
    try:
        for index, batch in enumerate(batches):
            if stop.is_set():
                break
            prepared = prefetcher.take(index)
            ready: list[tuple[Record, BatchItem]] = []
            for record in batch:
                bad = next((prepared[s] for s in record.images if isinstance(prepared[s], DsvlError)), None)
                if bad is not None:
                    writer.write(error_record(record, bad.kind, bad.message))
                    summary.failed += 1
                    continue
                images = [prepared[s] for s in record.images]
                conversation = Conversation.single(record.prompt, [p.loaded for p in images], record.system)
                ready.append((record, BatchItem(conversation, images)))
            if ready and not stop.is_set():
                gen = batch[0].gen.replace(system=None)
                results = generate_batch(engine, [item for _, item in ready], gen, features=features,
                                         stop_event=stop)
                for (record, _), result in zip(ready, results):
                    if isinstance(result, DsvlError):
                        writer.write(error_record(record, result.kind, result.message))
                        summary.failed += 1
                    elif result.finish_reason != "interrupted":  # cut short: left for --resume
                        writer.write({"id": record.id, **result.to_dict()})
                        summary.done += 1
                        summary.generated_tokens += result.stats.generated_tokens
            for source in (s for r in batch for s in r.images):
                features.release(source)
            prefetcher.release(batch)
    finally:
        prefetcher.close()


def run_batch(inputs: list[str], *, output: Path | None, prompt: str | None, batch_size: int | None,
              resume: bool, retry_failed: bool, opts) -> Summary:
    """The whole command: read, skip what is done, answer the rest, summarise. Returns the Summary
    (the caller maps it to an exit code); raises UsageError for bad usage, before any model load."""
    from dsvl_cli.batch_input import read_inputs
    from dsvl_cli.conversation import check_text
    from dsvl_cli.render import note, stderr_console

    if (resume or retry_failed) and output is None:
        raise UsageError("--resume and --retry-failed need -o FILE (the output of the earlier run)")
    if batch_size is not None and batch_size < 1:
        raise UsageError(f"--batch-size {batch_size}: must be at least 1")
    if opts.generation.system is not None:
        check_text(opts.generation.system, "--system")
    items = read_inputs(inputs, base=opts.generation, prompt=prompt)
    prev = read_previous(output, retry_failed=retry_failed) if (resume or retry_failed) else Previous()
    todo, skipped, failed_before = split_done(items, prev)
    summary = Summary(skipped=skipped, failed_before=failed_before)
    console = stderr_console()
    stream = _open_output(output, append=resume or retry_failed)
    stop = threading.Event()
    started = time.perf_counter()
    try:
        with _Interrupts(stop, console), _progress(console, len(todo)) as advance:
            writer = Writer(stream, on_write=advance)
            for bad in (i for i in todo if isinstance(i, BadRecord)):
                writer.write(error_record(bad, bad.type, bad.message))
                summary.failed += 1
            records = [i for i in todo if isinstance(i, Record)]
            if records and not stop.is_set():
                from dsvl_cli.commands.common import load_engine

                engine = load_engine(opts, prefer_fast=True)  # many generations: the fast path pays
                started = time.perf_counter()  # rates count generation, not the model load
                if opts.server:  # a running `dsvl serve` batches what arrives together
                    from dsvl_cli.batch_remote import run_remote

                    run_remote(engine, records, writer, summary, concurrency=batch_size or REMOTE_IN_FLIGHT,
                               stop=stop)
                else:
                    run_records(engine, records, writer, summary,
                                batch_size=batch_size or default_batch_size(engine), stop=stop)
    except KeyboardInterrupt:  # the second Ctrl-C: everything written so far stays valid
        stop.set()
    finally:
        summary.seconds = time.perf_counter() - started
        summary.interrupted = stop.is_set()
        if stream is not sys.stdout:
            stream.close()
    note(console, summary.line(), style="dim")
    return summary


def _open_output(output: Path | None, *, append: bool) -> TextIO:
    if output is None:
        return sys.stdout
    try:
        return open(output, "a" if append else "w", encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"{output}: cannot write it: {exc.strerror or exc}") from None


class _progress:
    """A Rich progress bar on stderr when it is a terminal; nothing in a pipe or a log."""

    def __init__(self, console, total: int):
        self.console, self.total, self.bar = console, total, None

    def __enter__(self):
        if not self.console.is_terminal or not self.total:
            return lambda: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn("batch"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                            console=self.console, transient=True)
        self.bar.__enter__()
        task = self.bar.add_task("batch", total=self.total)
        return lambda: self.bar.advance(task)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)
