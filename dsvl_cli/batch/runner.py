"""Running a batch: plan, prefetch images, generate, write each record the moment it is done.

Guarantees (nothing is lost):
- Each output record is one `write` of one JSON line, flushed at once; Ctrl-C lets the running
  batch stop at its next decode step, writes what had already finished, and leaves valid JSONL.
  Records cut short are not written, so `--resume` does them again. A second Ctrl-C aborts at once.
- SIGTERM is handled like the first Ctrl-C (the summary is printed, exit 143 instead of 130).
- A reader that goes away (`| head -1`) stops the run after the record it could not take: the
  summary says how many were left, and the exit code is 1 (records were left unanswered).
- Output is in completion order, not input order: error records for unreadable lines come first,
  then answers batch by batch. Match records by `id` (each record also names its images).
  (With --ray, batch/ray_job.py, it is input order.) `-o *.parquet`: batch/parquet.py.
- No id gets two records: an id given twice in the input is refused before anything runs, and
  `--resume` skips ids already answered in the output file. `-o` naming an input is refused. `--retry-failed` first rewrites that
  file without its error records (a temp file renamed over it, so a crash leaves the old or the new
  file, never half of one), then does those records again.
- Images are loaded and preprocessed by background threads a few batches ahead of the model.
"""

from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from dsvl_cli.batch import parquet
from dsvl_cli.batch.answer import answer_batch, plan_batches
from dsvl_cli.batch.records import BadRecord, Record
from dsvl_cli.batch.output import (
    OutputClosed,
    Previous,
    Summary,
    Writer,
    error_record,
    open_output,
    read_previous,
    refuse_input_as_output,
    split_done,
)
from dsvl_cli.errors import DsvlError, ImageLoadError, UsageError
from dsvl_cli.images.cache import SourceCache
from dsvl_cli.screen.interrupts import StopOnSignal

PREFETCH_WORKERS = 4
PREFETCH_BATCHES = 2  # how many batches ahead of the model images are prepared


# -- planning ------------------------------------------------------------------------------------


class Prefetcher:
    """Loads and preprocesses each image source once, a few batches ahead of the model (a
    SourceCache filled by a thread pool; a source is dropped after the last batch that uses it)."""

    def __init__(self, engine, batches: list[list[Record]], stop: threading.Event, *, exact: bool = False):
        self.engine, self.batches, self.stop, self.exact = engine, batches, stop, exact
        self.pool = ThreadPoolExecutor(PREFETCH_WORKERS, thread_name_prefix="dsvl-prefetch")
        self.cache = SourceCache(self._prepare, pool=self.pool)
        for source in (s for batch in batches for r in batch for s in r.images):
            self.cache.expect(source)
        self.submitted = 0  # batches whose sources are queued

    def take(self, index: int) -> dict:
        """source -> PreparedImage or ImageLoadError, for batch `index` (waits for them)."""
        while self.submitted < min(len(self.batches), index + 1 + PREFETCH_BATCHES):
            for source in (s for r in self.batches[self.submitted] for s in r.images):
                self.cache.prefetch(source)
            self.submitted += 1
        return {s: self.cache.get(s) for r in self.batches[index] for s in r.images}

    def release(self, batch: list[Record]) -> None:
        for source in (s for r in batch for s in r.images):
            self.cache.release(source)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    def _prepare(self, source: str):
        """The prepared image, or the ImageLoadError for it (a value: each record reports it)."""
        from dsvl_cli.batch.sources import load_source
        from dsvl_cli.engine.batched import prepare_image

        if self.stop.is_set():
            return ImageLoadError(source, "not loaded: the batch was interrupted")
        try:
            return prepare_image(self.engine, load_source(source, exact=self.exact))
        except DsvlError as err:
            return err if isinstance(err, ImageLoadError) else ImageLoadError(source, err.message)


# -- the run -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RayOptions:
    """--ray, --ray-address, --workers: where batch/ray_job.py runs the job."""

    enabled: bool = False
    address: str | None = None
    workers: int | None = None

    def check(self, opts) -> None:
        """Usage errors (exit 2) before anything is read or loaded: Ray missing included."""
        if not self.enabled:
            if self.workers is not None:
                raise UsageError("--workers sets the number of Ray engine actors: add --ray")
            return
        if self.workers is not None and self.workers < 1:
            raise UsageError(f"--workers {self.workers}: must be at least 1")
        if opts.model.device.startswith("cuda:"):
            raise UsageError(f"--device {opts.model.device}: with --ray each engine actor is given its own GPU "
                             "(use --device auto or cuda)")
        if opts.server or opts.keep_alive:
            flag = "--server" if opts.server else "--keep-alive"
            raise UsageError(f"--ray runs the model on Ray workers; {flag} sends the work elsewhere (use one)")
        from dsvl_cli.batch.ray_job import check_cluster

        check_cluster(self.address)  # Ray installed (exit 2), the cluster's head answering (exit 1)



def run_records(engine, records: list[Record], writer: Writer, summary: Summary, *,
                batch_size: int, stop: threading.Event, exact: bool = False) -> None:
    """Answer `records`, writing each result as soon as its batch is done."""
    from dsvl_cli.engine.batched import FeatureStore
    from dsvl_cli.images import prepare_for_threads

    prepare_for_threads([s for r in records for s in r.images])  # before the prefetch threads start
    batches = plan_batches(engine, records, batch_size)
    features = FeatureStore(engine)
    for source in (s for r in records for s in r.images):
        features.expect(source)
    prefetcher = Prefetcher(engine, batches, stop, exact=exact)
    try:
        for index, batch in enumerate(batches):
            if stop.is_set():
                break
            for _, obj, failed, tokens in answer_batch(engine, batch, prefetcher.take(index), features, stop=stop):
                writer.write(obj)
                summary.failed += failed
                summary.done += not failed
                summary.generated_tokens += tokens  # an incomplete --schema answer's tokens were spent too
            prefetcher.release(batch)
    finally:
        prefetcher.close()


def run_batch(inputs: list[str], *, output: Path | None, prompt: str | None, batch_size: int | None,
              resume: bool, retry_failed: bool, opts, ray: RayOptions = RayOptions(), log: bool = False) -> Summary:
    """The whole command: read, skip what is done, answer the rest, summarise. Returns the Summary
    (the caller maps it to an exit code); raises UsageError for bad usage, before any model load.
    `ray`: run on Ray (batch/ray_job.py) instead of here. `log`: each answer is logged too (--log)."""
    from dsvl_cli.batch.inputs import read_inputs
    from dsvl_cli.conversation import check_text
    from dsvl_cli.render import note

    if (resume or retry_failed) and output is None:
        raise UsageError("--resume and --retry-failed need -o FILE (the output of the earlier run)")
    if batch_size is not None and batch_size < 1:
        raise UsageError(f"--batch-size {batch_size}: must be at least 1")
    ray.check(opts)
    if opts.generation.system is not None:
        check_text(opts.generation.system, "--system")
    refuse_input_as_output(output, inputs, opts.env.stdin)
    items = read_inputs(inputs, base=opts.generation, prompt=prompt, stdin=opts.env.stdin)
    records_file = output  # -o *.parquet: a JSONL journal beside it, the Parquet file at the end
    if parquet.wanted(output):
        records_file = parquet.start(output, resume=resume or retry_failed)
    prev = read_previous(records_file, retry_failed=retry_failed) if (resume or retry_failed) else Previous()
    todo, skipped, failed_before = split_done(items, prev)
    summary = Summary(skipped=skipped, failed_before=failed_before)
    console = opts.env.stderr_console()
    stream = open_output(records_file, append=resume or retry_failed) if output else opts.env.stdout
    # Records on the terminal are the progress; a bar on the same screen would split their lines.
    show = console.is_terminal and not (output is None and opts.env.stdout_isatty)

    def make_writer(advance):
        writer = Writer(stream, on_write=advance)
        if log:
            from dsvl_cli.batch.logged import logged

            return logged(writer, todo, opts)
        return writer

    try:
        answer_items(todo, make_writer, summary, opts=opts, batch_size=batch_size, ray=ray, show=show)
    finally:
        if output is not None:
            stream.close()
        if parquet.wanted(output):
            parquet.finish(output, done=summary.done + summary.failed == len(todo))
    note(console, summary.line(), style="dim")
    return summary


def answer_items(todo: list, make_writer, summary: Summary, *, opts, batch_size: int | None,
                 ray: RayOptions = RayOptions(), show: bool = True, label: str = "batch") -> None:
    """Answer `todo` (Records and BadRecords) into the writer `make_writer(advance)` returns, with a
    progress bar named `label` on a terminal's stderr (when `show`), Ctrl-C and SIGTERM handled as
    the module says; fills in `summary` (counts, seconds, stopped_by, left). dsvl batch answers
    through here, and so do the front ends that ride on it (dsvl eval)."""
    console = opts.env.stderr_console()
    stop = threading.Event()
    clock = [time.perf_counter()]  # rates count generation, not the model load: reset after it
    signals, writer = StopOnSignal(stop), None
    try:
        with signals, _progress(console, len(todo) if show else 0, label) as advance:
            writer = make_writer(advance)
            if ray.enabled:  # input order: the unreadable lines travel with the rest
                from dsvl_cli.batch.ray_job import run_ray

                run_ray(todo, writer, summary, stop, opts=opts, batch_size=batch_size, workers=ray.workers,
                        address=ray.address, console=console)
            else:
                _answer(todo, writer, summary, stop, clock, batch_size=batch_size, opts=opts)
    except (KeyboardInterrupt, OutputClosed):  # a second Ctrl-C, or the reader left: what is written stays valid
        stop.set()
    finally:
        summary.seconds = time.perf_counter() - clock[0]
        summary.stopped_by = _stopped_by(signals.signum if stop.is_set() else None, writer)
        summary.left = len(todo) - summary.done - summary.failed if summary.stopped_by else 0


def _answer(todo: list, writer: Writer, summary: Summary, stop: threading.Event, clock: list, *,
            batch_size: int | None, opts) -> None:
    """Error records for unreadable lines first, then the records, by the local model or --server."""
    from dsvl_cli.render import load_backend

    for bad in (i for i in todo if isinstance(i, BadRecord)):
        writer.write(error_record(bad, bad.type, bad.message))
        summary.failed += 1
    records = [i for i in todo if isinstance(i, Record)]
    if not records or stop.is_set():
        return
    engine = load_backend(opts, prefer_fast=True)  # many generations: the fast path pays
    clock[0] = time.perf_counter()
    if not engine.supports_batching:  # a running `dsvl serve` batches what arrives together
        from dsvl_cli.batch.remote import in_flight, run_remote

        run_remote(engine, records, writer, summary, concurrency=batch_size or in_flight(engine), stop=stop,
                   exact=opts.exact_pixels)
    elif getattr(engine, "fast", None) is None:  # the warm loop: records join and leave at every step
        _run_warm(engine, records, writer, summary, rows=batch_size or 2 * engine.default_batch_size, stop=stop,
                  exact=opts.exact_pixels)
    else:  # the CUDA fast path: static batches through one compiled decode step
        run_records(engine, records, writer, summary, batch_size=batch_size or engine.default_batch_size, stop=stop,
                    exact=opts.exact_pixels)


def _run_warm(engine, records: list[Record], writer: Writer, summary: Summary, *, rows: int,
              stop: threading.Event, exact: bool) -> None:
    """Records through the engine's warm loop, `rows` decoding at once and as many waiting (batch/remote.py
    keeps them open, as it does against a server; engine/warm.py)."""
    from dsvl_cli.batch.remote import run_remote
    from dsvl_cli.engine.warm import WarmBackend

    loop = engine.warm_loop(max_rows=rows, max_waiting=2 * rows)  # never more than the records kept open
    loop.start()
    try:
        run_remote(WarmBackend(engine, loop), records, writer, summary, concurrency=2 * rows, stop=stop, exact=exact)
    finally:
        loop.close(5)


def _stopped_by(signum: int | None, writer: Writer | None) -> str:
    if writer is not None and writer.closed:
        return "output closed"
    if signum is None:
        return ""
    return "terminated" if signum == signal.SIGTERM else "interrupted"


class _progress:
    """A Rich progress bar on stderr when it is a terminal; nothing in a pipe or a log."""

    def __init__(self, console, total: int, label: str = "batch"):
        self.console, self.total, self.bar, self.label = console, total, None, label

    def __enter__(self):
        if not self.console.is_terminal or not self.total:
            return lambda: None
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(TextColumn(self.label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                            console=self.console, transient=True)
        self.bar.__enter__()
        task = self.bar.add_task(self.label, total=self.total)
        return lambda: self.bar.advance(task)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)
