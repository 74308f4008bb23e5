"""`dsvl batch --server URL`: the same records, answered by a running `dsvl serve` (and local
`dsvl batch`, answered by the engine's own warm loop the same way: engine/warm.py).

Why several requests at once: the server answers requests that wait together in one batched
`generate` call, so up to `concurrency` streamed requests are kept open (--batch-size; by default
two of the server's batches, see in_flight). Everything
else is local mode's (runner.py): the same output and error records, completion order (match
by id), --resume / --retry-failed, the progress bar, the summary and the exit codes.

Images are loaded here, once per source while questions about it are still to be sent (records
about the same images are sent next to each other); RemoteEngine sends paths as lossless PNG data
URIs and URLs as they are. A record the server refuses (a 400: bad image, too long) becomes an
error record. A server that cannot be reached (at the start or later) stops the run: records not
answered yet are not written, so `--resume` sends them once the server is back.

Ctrl-C closes the open streams (the server stops those generations); their records are not written.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from dsvl_cli.batch.records import Record
from dsvl_cli.errors import DsvlError, ModelError
from dsvl_cli.images.cache import SourceCache


class _Images:
    """Each source loaded once by the first record that needs it, dropped after its last use."""

    def __init__(self, records: list[Record], *, exact: bool = False):
        self.exact = exact
        self.cache = SourceCache(self._load)
        for source in (s for r in records for s in r.images):
            self.cache.expect(source)

    def get(self, source: str):
        return self.cache.get(source)  # raises the ImageLoadError of a bad source, for each record

    def release(self, sources: list[str]) -> None:
        for source in sources:
            self.cache.release(source)

    def _load(self, source: str):
        from dsvl_cli.batch.sources import load_source

        return load_source(source, exact=self.exact)  # failures are ImageLoadErrors


REMOTE_IN_FLIGHT = 16  # when the server does not say its batch size: twice the CPU default (8)


def in_flight(engine) -> int:
    """Requests to keep open: two of the server's batches, one running and the next one waiting
    full, but no more than the server queues (past that it answers 429 and the client waits).

    Why two: with exactly one batch in flight, rows end at different times and their next
    requests trickle in while the server is between batches, so it ran batches of 2-6 of 8 and
    batch --server was ~4x slower than local batch (BENCHMARKS.md, "batch --server").
    """
    batch, queue = getattr(engine, "default_batch_size", 1), getattr(engine, "server_queue", 0)
    if batch <= 1 or queue <= 0:  # not dsvl serve (or an older one): a fixed number
        return REMOTE_IN_FLIGHT
    return max(1, min(2 * batch, batch + queue))


def run_remote(engine, records: list[Record], writer, summary, *, concurrency: int,
               stop: threading.Event, exact: bool = False) -> None:
    """Answer `records` through `engine` (a RemoteEngine), `concurrency` requests at a time.

    Raises the ModelError of a server that could not be reached (after writing what finished)."""
    from dsvl_cli.batch.output import OutputClosed, error_record, result_record
    from dsvl_cli.conversation import Conversation

    from dsvl_cli.images import prepare_for_threads

    prepare_for_threads([s for r in records for s in r.images])  # the HTTP stack, before the threads start
    images = _Images(records, exact=exact)
    lock = threading.Lock()  # one writer, one summary, several threads
    fatal: list[ModelError] = []
    slots = threading.BoundedSemaphore(concurrency)

    def write(record: Record, obj: dict, *, failed: bool, tokens: int = 0) -> None:
        with lock:
            try:
                writer.write(obj)
            except OutputClosed:  # the reader went away: stop; run_batch reports it (writer.closed)
                stop.set()
                return
            if failed:
                summary.failed += 1
            else:
                summary.done += 1
                summary.generated_tokens += tokens

    def answer(record: Record) -> None:
        try:
            if stop.is_set():
                return
            try:
                loaded = [images.get(s) for s in record.images]
                conversation = Conversation.single(record.prompt, loaded, record.system)
                result = engine.run(conversation, record.gen.replace(system=None), stop_event=stop)
            except ModelError as err:  # the server is gone: stop, leave the rest for --resume
                fatal.append(err)
                stop.set()
                return
            except DsvlError as err:
                write(record, error_record(record, err.kind, err.message), failed=True)
                return
            except Exception as exc:  # a bug: this record's error, never a record lost without a trace
                write(record, error_record(record, "generation_error", f"{type(exc).__name__}: {exc}"), failed=True)
                return
            if result.finish_reason != "interrupted":  # cut short: left for --resume
                obj, failed = result_record(record, result)
                write(record, obj, failed=failed, tokens=result.stats.generated_tokens)
        finally:
            images.release(record.images)
            slots.release()

    ordered = sorted(records, key=lambda r: tuple(r.images))  # same images next to each other
    pool = ThreadPoolExecutor(concurrency, thread_name_prefix="dsvl-remote")
    try:
        for record in ordered:
            slots.acquire()
            if stop.is_set():
                slots.release()
                break
            pool.submit(answer, record)
        pool.shutdown(wait=True)
    finally:  # also on the second Ctrl-C (stop is set then): open streams close at their next event
        pool.shutdown(wait=False, cancel_futures=True)
    if fatal:
        raise fatal[0]
