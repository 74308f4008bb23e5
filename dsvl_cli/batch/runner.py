"""Running a batch: plan, prefetch images, generate, write each record the moment it is done.

Guarantees (nothing is lost):
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

import signal
import sys
import threading
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from dsvl_cli.batch.inputs import BadRecord, Record
from dsvl_cli.batch.output import Previous, Summary, Writer, error_record, open_output, read_previous, split_done
from dsvl_cli.errors import DsvlError, ImageLoadError, UsageError

PREFETCH_WORKERS = 4
PREFETCH_BATCHES = 2  # how many batches ahead of the model images are prepared
REMOTE_IN_FLIGHT = 8  # with --server: requests open at once (the server batches them)


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


class Prefetcher:
    """Loads and preprocesses each image source once, a few batches ahead of the model."""

    def __init__(self, engine, batches: list[list[Record]], stop: threading.Event, *, exact: bool = False):
        self.engine, self.batches, self.stop, self.exact = engine, batches, stop, exact
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
        from dsvl_cli.engine.batched import prepare_image
        from dsvl_cli.images import load_image

        if self.stop.is_set():
            return ImageLoadError(source, "not loaded: the batch was interrupted")
        try:
            return prepare_image(self.engine, load_image(source, exact=self.exact))
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
                batch_size: int, stop: threading.Event, exact: bool = False) -> None:
    """Answer `records`, writing each result as soon as its batch is done."""
    from dsvl_cli.engine.batched import BatchItem, FeatureStore, generate_batch
    from dsvl_cli.conversation import Conversation

    batches = plan_batches(engine, records, batch_size)
    features = FeatureStore(engine)
    for source in (s for r in records for s in r.images):
        features.expect(source)
    prefetcher = Prefetcher(engine, batches, stop, exact=exact)
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
    from dsvl_cli.batch.inputs import read_inputs
    from dsvl_cli.conversation import check_text
    from dsvl_cli.render import load_backend, note

    if (resume or retry_failed) and output is None:
        raise UsageError("--resume and --retry-failed need -o FILE (the output of the earlier run)")
    if batch_size is not None and batch_size < 1:
        raise UsageError(f"--batch-size {batch_size}: must be at least 1")
    if opts.generation.system is not None:
        check_text(opts.generation.system, "--system")
    items = read_inputs(inputs, base=opts.generation, prompt=prompt, stdin=opts.env.stdin)
    prev = read_previous(output, retry_failed=retry_failed) if (resume or retry_failed) else Previous()
    todo, skipped, failed_before = split_done(items, prev)
    summary = Summary(skipped=skipped, failed_before=failed_before)
    console = opts.env.stderr_console()
    stream = open_output(output, append=resume or retry_failed) if output else opts.env.stdout
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
                engine = load_backend(opts, prefer_fast=True)  # many generations: the fast path pays
                started = time.perf_counter()  # rates count generation, not the model load
                if not engine.supports_batching:  # a running `dsvl serve` batches what arrives together
                    from dsvl_cli.batch.remote import run_remote

                    run_remote(engine, records, writer, summary, concurrency=batch_size or REMOTE_IN_FLIGHT,
                               stop=stop, exact=opts.exact_pixels)
                else:
                    run_records(engine, records, writer, summary,
                                batch_size=batch_size or engine.default_batch_size, stop=stop,
                                exact=opts.exact_pixels)
    except KeyboardInterrupt:  # the second Ctrl-C: everything written so far stays valid
        stop.set()
    finally:
        summary.seconds = time.perf_counter() - started
        summary.interrupted = stop.is_set()
        if output is not None:
            stream.close()
    note(console, summary.line(), style="dim")
    return summary


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
