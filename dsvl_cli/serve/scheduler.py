"""The server's worker: one thread owns the engine; requests waiting together run as one batch.

Why one thread: an LocalEngine runs one `generate` at a time. Why batches: decoding several rows costs
little more than one (memory-bound), so requests that arrive while another batch is running are
taken together next time, up to `max_batch` (batching.py: left padding, per-row stop and streaming).

Which requests share a batch: the first waiting one and every later waiting one with the same
generation settings (the system prompt and a response_format may differ: each row has its own).
Sampled requests with a `seed` run alone so a seed gives the same answer however busy the server
is. Greedy answers are the same batched or not (tested). Engines without batching (RemoteEngine,
test fakes) run one request at a time through `stream`.

A job's items go to its request's event loop: TextChunks as they are decoded, then a Result or a
DsvlError, then END. A job whose `stop` is set (client gone, shutdown) ends its own row only.

One bad request never fails its batch-mates: when a batch fails as a whole, each of its rows that
has not streamed anything yet runs again alone, so only the row at fault gets the error.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import traceback
from collections import deque
from dataclasses import dataclass, field

from dsvl_cli.engine.detokenize import AnswerText
from dsvl_cli.errors import DsvlError, GenerationError
from dsvl_cli.results import Result, TextChunk
from dsvl_cli.settings import GenerationSettings
from dsvl_cli.structured.grammar import shared_settings

END = object()  # the worker's last item for a job
log = logging.getLogger("dsvl.serve")


class QueueFull(Exception):
    """More requests than the queue admits (the server answers 429)."""


@dataclass(eq=False)  # jobs are told apart by identity (kept in sets)
class Job:
    conversation: object
    gen: GenerationSettings
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue = field(default_factory=asyncio.Queue)
    stop: threading.Event = field(default_factory=threading.Event)
    batch_size: int = 0  # how many requests shared its generate call (0: not run)
    ended: bool = False  # END was emitted (a batched row may end before its batch does)
    cut: bool = False  # stopped by the server's shutdown (Drain), not by its client

    def emit(self, item) -> None:
        """Hand an item to the request's event loop (from the worker thread); END only once."""
        if item is END:
            if self.ended:
                return
            self.ended = True
        try:
            self.loop.call_soon_threadsafe(self.out.put_nowait, item)
        except RuntimeError:  # the loop is closed: the server is gone and nobody reads this job
            self.stop.set()

    @property
    def batch_key(self):
        """Jobs with equal keys can share a batch; None: this job runs alone."""
        if self.gen.seed is not None and not self.gen.greedy:
            return None
        return shared_settings(self.gen.replace(system=None))  # a response_format is per row


class TextStream:
    """A job's token ids -> TextChunks as they become safe to show (see answer_text.AnswerText)."""

    def __init__(self, engine, job: Job):
        self.job = job
        self.text = AnswerText(engine.tokenizer, job.gen.stop)
        self.logprobs: list[dict] = []  # entries of tokens whose text is not sent yet (--logprobs)

    def feed(self, ids: list[int], logprobs: list[dict] | None = None) -> None:
        if self.job.ended:  # its answer was sent (a retried half of a batch generates it again)
            return
        self.logprobs += logprobs or []
        delta = self.text.add(ids)
        if delta:
            self.job.emit(TextChunk(delta, logprobs=self.logprobs or None))
            self.logprobs = []

    def finish(self, result: Result) -> None:
        """The rest of the answer, the Result (its answer is the authority), then END: called when
        the job's row ends with EOS, while the rest of the batch goes on, or after the batch."""
        if self.job.ended:
            return
        emitted = self.text.emitted
        if result.answer.startswith(emitted) and result.answer[len(emitted):]:
            self.job.emit(TextChunk(result.answer[len(emitted):]))
        self.job.emit(result)
        self.job.emit(END)


class Worker:
    """Runs jobs in arrival order, compatible waiting ones together; admits at most `max_queue`
    waiting behind the running batch."""

    def __init__(self, engine, max_queue: int, max_batch: int = 1):
        self.engine = engine
        self.max_queue = max_queue
        self.max_batch = max(1, max_batch)
        self._pending: deque[Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._running: list[Job] = []
        self._thread = threading.Thread(target=self._loop, name="dsvl-serve-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float) -> None:
        """Cancel what is queued or running (each stops at its next step) and wait for the thread."""
        with self._cond:
            self._closed = True
            for job in [*self._pending, *self._running]:
                job.stop.set()
            self._cond.notify()
        self._thread.join(timeout)

    def submit(self, conversation, gen: GenerationSettings) -> Job:
        job = Job(conversation, gen, asyncio.get_running_loop())
        with self._cond:
            if len(self._pending) >= self.max_queue + (0 if self._running else 1):
                raise QueueFull(self.max_queue)
            self._pending.append(job)
            self._cond.notify()
        return job

    def _take(self) -> list[Job] | None:
        """The next batch: the oldest job and the compatible ones waiting behind it."""
        with self._cond:
            while not self._pending and not self._closed:
                self._cond.wait()
            if not self._pending:
                return None
            first = self._pending.popleft()
            batch = [first]
            if first.batch_key is not None and self.max_batch > 1:
                for job in list(self._pending):
                    if len(batch) >= self.max_batch:
                        break
                    if job.batch_key == first.batch_key:
                        self._pending.remove(job)
                        batch.append(job)
            self._running = batch
            return batch

    def _loop(self) -> None:
        while (batch := self._take()) is not None:
            live = []
            for job in batch:
                if job.stop.is_set():
                    job.emit(GenerationError("cancelled before it started"))
                    job.emit(END)
                else:
                    live.append(job)
            together = len(live) if self.engine.supports_batching else 1
            for job in live:
                job.batch_size = together
            try:
                if len(live) == 1 or (live and not self.engine.supports_batching):
                    for job in live:
                        self._run_one(job)
                elif live:
                    self._run_batch(live)
            finally:
                with self._cond:
                    self._running = []
                for job in live:
                    job.emit(END)

    def _run_one(self, job: Job) -> None:
        try:
            for item in self.engine.stream(job.conversation, job.gen, stop_event=job.stop):
                job.emit(item)
        except DsvlError as err:
            job.emit(err)
        except Exception as exc:  # a bug or a torch failure: report it, keep serving
            log.error("generation failed:\n%s", traceback.format_exc().rstrip())
            job.emit(GenerationError(f"generation failed: {type(exc).__name__}: {exc}"))

    def _run_batch(self, jobs: list[Job]) -> None:
        from dsvl_cli.engine.batched import BatchItem

        streams = [TextStream(self.engine, job) for job in jobs]
        try:
            items = [BatchItem.prepare(self.engine, job.conversation, stop=job.stop, on_tokens=stream.feed,
                                       on_done=stream.finish, answer_format=job.gen.answer_format)
                     for job, stream in zip(jobs, streams)]
            results = self.engine.generate_batch(items, shared_settings(jobs[0].gen.replace(system=None)))
        except DsvlError as err:
            self._rerun_alone(jobs, streams, err)
            return
        except Exception as exc:  # a bug, a torch failure or one bad row: find the row, keep serving
            log.error("batched generation failed; running its %d requests one by one:\n%s", len(jobs),
                      traceback.format_exc().rstrip())
            self._rerun_alone(jobs, streams, GenerationError(f"generation failed: {type(exc).__name__}: {exc}"))
            return
        for job, stream, result in zip(jobs, streams, results):
            if isinstance(result, DsvlError):
                job.emit(result)
            else:
                stream.finish(result)


    def _rerun_alone(self, jobs: list[Job], streams: list[TextStream], err: DsvlError) -> None:
        """After a whole batch failed: each row runs alone, so only the row at fault fails. A row
        that already streamed text (or ended) cannot start over in front of its client: it gets
        the batch's error."""
        for job, stream in zip(jobs, streams):
            if job.ended or stream.text.emitted:
                job.emit(err)
            else:
                job.batch_size = 1
                self._run_one(job)


