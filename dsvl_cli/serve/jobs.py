"""One request's run on the server's worker: submit a Conversation, wait for its first item, read the rest.

Why its own module: every API the server speaks (chat completions, responses) runs a request the
same way, and the scheduler behind it is being rewritten; this is the one seam between the routes
and the worker. `Runs.start` submits the job (429 when the queue is full), registers it with the
shutdown Drain, and waits through the queue for the first item so that an error before any output
still gets an HTTP status. The route then either streams `Run.batches()` (Starlette cancels the
stream when the client leaves) or awaits `Run.result()` (which notices a client that leaves). Every
path ends in `Run.close()`, which stops the job's row and forgets it in the Drain.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from starlette.requests import Request

from dsvl_cli.errors import GenerationError
from dsvl_cli.results import Result, TextChunk
from dsvl_cli.serve.drain import Drain
from dsvl_cli.serve.gate import ClientClosed
from dsvl_cli.wire.errors import ApiError
from dsvl_cli.serve.scheduler import END, QueueFull, Worker
from dsvl_cli.settings import GenerationSettings

RETRY_AFTER_S = 1
POLL_S = 0.25  # how often a request waiting without a stream checks that its client is still there


class Run:
    """A submitted job, seen from its request: its items in order (TextChunk..., Result or an
    error, then the end), and whether the end was reached."""

    def __init__(self, job, request: Request, drain: Drain):
        self.job, self.request, self.drain = job, request, drain
        self.first = None
        self.done = False  # the worker's END was read

    @property
    def cut(self) -> bool:
        """Stopped by the server's shutdown (not by its client)."""
        return self.job.cut

    async def next(self):
        """The job's next item; while waiting, notice a client that went away (and stop its job)."""
        if not self.job.out.empty():  # already handed over: no wait, no timer
            item = self.job.out.get_nowait()
            self.done = item is END
            return item
        while True:
            try:
                item = await asyncio.wait_for(self.job.out.get(), timeout=POLL_S)
            except asyncio.TimeoutError:
                if await self.request.is_disconnected():
                    self.job.stop.set()
                    raise ClientClosed() from None
                continue
            self.done = item is END
            return item

    async def batches(self) -> AsyncIterator[list]:
        """Every item from the first to the end, as lists of what had arrived by the time the reader
        came back, adjacent TextChunks joined into one: a stream writes each list as one write with
        one chunk of text, not one write and one JSON object per token (the client leaving cancels
        the reader, and `close` in its `finally` stops the job)."""
        out, batch = self.job.out, [self.first]
        while True:
            while not out.empty():
                batch.append(out.get_nowait())
            end = next((k for k, item in enumerate(batch) if item is END), None)
            if end is not None:
                self.done = True
                if end:
                    yield joined(batch[:end])
                return
            yield joined(batch)
            batch = [await out.get()]

    async def result(self) -> Result:
        """The Result, after the whole answer (a non-streamed reply); raises the job's error."""
        result, item = None, self.first
        try:
            while item is not END:
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, Result):
                    result = item
                item = await self.next()
        finally:
            self.close()
        if result is None:
            raise GenerationError("generation ended without a result")
        return result

    def close(self) -> None:
        self.job.stop.set()
        self.drain.discard(self.job)


class Runs:
    """Starts Runs on the worker (one per app)."""

    def __init__(self, worker: Worker, drain: Drain):
        self.worker, self.drain = worker, drain

    async def start(self, conversation, gen: GenerationSettings, request: Request) -> Run:
        """Submit and wait for the first item: a queue that is full (429) or an error before any
        output (a bad picture, a prompt past the context) raises here, before any header is sent."""
        try:
            job = self.worker.submit(conversation, gen)
        except QueueFull:
            raise ApiError(429, f"the server is busy: {self.worker.max_queue} requests already waiting; retry later",
                           "rate_limit_error", "queue_full", headers={"Retry-After": str(RETRY_AFTER_S)}) from None
        request.state.dsvl_job = job
        self.drain.add(job)
        run = Run(job, request, self.drain)
        try:
            run.first = await run.next()  # waits through the queue; errors still get a status
            if isinstance(run.first, BaseException):
                raise run.first
        except BaseException:
            run.close()
            raise
        return run


def joined(items: list) -> list:
    """`items` with each run of adjacent TextChunks as one TextChunk (texts and logprobs in order)."""
    out: list = []
    for item in items:
        if isinstance(item, TextChunk) and out and isinstance(out[-1], TextChunk):
            last = out[-1]
            logprobs = None if last.logprobs is None and item.logprobs is None else \
                [*(last.logprobs or ()), *(item.logprobs or ())]
            out[-1] = TextChunk(last.text + item.text, logprobs=logprobs)
        else:
            out.append(item)
    return out
