"""The server's worker: every request goes to the warm engine loop, which batches them continuously.

A request joins the running rows at the next decode step and leaves the moment its answer ends
(engine/loop.py): a short request never waits for a long one, and concurrent ones share each decode
step. Up to `max_queue` requests wait for a free row; past that `submit` raises QueueFull (429).

Engines without a loop of their own (a RemoteEngine behind `--server`, test fakes) answer one
request at a time through `stream`, on one thread, the same way seen from the request.

A job's items go to its request's event loop: TextChunks as they are decoded, then a Result or a
DsvlError, then END. One wake-up of the event loop carries everything that accumulated: the first
text goes at once, later text at most every HAND_OVER_S (20 ms, below what a reader notices; at a
token a millisecond a wake-up per token, and its SSE write, were most of the event loop's work and
took the GIL from the engine's thread), and the end (Result, error, END) at once. A job whose `stop`
is set (client gone, shutdown) ends its own row only.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field

from dsvl_cli.engine.loop import QueueFull
from dsvl_cli.engine.rows import END, Request
from dsvl_cli.errors import DsvlError, GenerationError
from dsvl_cli.results import TextChunk
from dsvl_cli.settings import GenerationSettings

__all__ = ["END", "Job", "QueueFull", "Worker"]
log = logging.getLogger("dsvl.serve")
HAND_OVER_S = 0.02  # text is handed to the event loop at most this often (the end at once)


@dataclass(eq=False)  # jobs are told apart by identity (kept in sets)
class Job:
    conversation: object
    gen: GenerationSettings
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue = field(default_factory=asyncio.Queue)
    stop: threading.Event = field(default_factory=threading.Event)
    ended: bool = False  # END was emitted
    cut: bool = False  # stopped by the server's shutdown (Drain), not by its client
    request: Request | None = None
    _inbox: list = field(default_factory=list)  # emitted, not yet handed to the event loop
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _waking: bool = False  # a hand-over is scheduled on the event loop
    _due: bool = False  # ... and it runs at once (not after the interval)
    _handed_at: float = 0.0  # when text was last handed over (perf_counter)

    def __post_init__(self) -> None:
        self.request = Request(self.conversation, self.gen, self.emit, self.stop)

    @property
    def batch_size(self) -> int:
        """The most requests its answer shared a decode step with, itself included (0: not run)."""
        return self.request.shared

    def emit(self, item) -> None:
        """Hand an item to the request's event loop (from the engine's one thread); END only once."""
        if item is END:
            if self.ended:
                return
            self.ended = True
        now = time.perf_counter()
        wait = HAND_OVER_S - (now - self._handed_at) if isinstance(item, TextChunk) else 0.0
        with self._lock:
            self._inbox.append(item)
            if self._due or (self._waking and wait > 0):  # the scheduled hand-over takes this one too
                return
            self._waking, self._due = True, wait <= 0
        try:
            if wait <= 0:
                self._handed_at = now
                self.loop.call_soon_threadsafe(self._hand_over)
            else:
                self._handed_at = now + wait  # the text that comes until then goes with it
                self.loop.call_soon_threadsafe(self.loop.call_later, wait, self._hand_over)
        except RuntimeError:  # the loop is closed: the server is gone and nobody reads this job
            self.stop.set()

    def _hand_over(self) -> None:
        """On the event loop: everything emitted so far into `out`, in order (a hand-over that finds
        nothing left, its items taken by an earlier one, does nothing)."""
        with self._lock:
            items, self._inbox, self._waking, self._due = self._inbox, [], False, False
        for item in items:
            self.out.put_nowait(item)


class Worker:
    """Submits jobs to the engine's loop (or runs them one by one on engines without one)."""

    def __init__(self, engine, max_queue: int, max_batch: int = 1, **loop_options):
        self.engine = engine
        self.max_queue = max_queue
        self.max_batch = max(1, max_batch)
        warm = getattr(engine, "warm_loop", None)
        self.loop = warm(max_rows=self.max_batch, max_waiting=max_queue, **loop_options) if warm else None
        self._serial = _Serial(engine, max_queue) if self.loop is None else None

    @property
    def meters(self):
        return self.loop.meters if self.loop is not None else None

    def start(self) -> None:
        (self.loop or self._serial).start()

    def stop(self, timeout: float) -> None:
        (self.loop or self._serial).close(timeout)

    def submit(self, conversation, gen: GenerationSettings) -> Job:
        job = Job(conversation, gen, asyncio.get_running_loop())
        (self.loop or self._serial).submit(job.request)
        return job


class _Serial:
    """One request at a time through `engine.stream`, on one thread."""

    def __init__(self, engine, max_waiting: int):
        self.engine, self.max_waiting = engine, max_waiting
        self._waiting: deque[Request] = deque()
        self._running: Request | None = None
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="dsvl-serve-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, request: Request) -> None:
        with self._cond:
            if len(self._waiting) >= self.max_waiting + (0 if self._running else 1):
                raise QueueFull(self.max_waiting)
            self._waiting.append(request)
            self._cond.notify()

    def close(self, timeout: float) -> None:
        with self._cond:
            self._closed = True
            for request in [*self._waiting, *([self._running] if self._running else [])]:
                request.stop.set()
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._closed:
                    self._cond.wait()
                if not self._waiting:
                    return
                request = self._running = self._waiting.popleft()
            try:
                if request.stop.is_set():
                    request.end(GenerationError("cancelled before it started"))
                    continue
                request.shared = 1
                self._answer(request)
            finally:
                with self._cond:
                    self._running = None

    def _answer(self, request: Request) -> None:
        try:
            for item in self.engine.stream(request.conversation, request.gen, stop_event=request.stop):
                request.sink(item)
        except DsvlError as err:
            request.sink(err)
        except Exception as exc:  # a bug or a torch failure: report it, keep serving
            log.error("generation failed:\n%s", traceback.format_exc().rstrip())
            request.sink(GenerationError(f"generation failed: {type(exc).__name__}: {exc}"))
        request.sink(END)
