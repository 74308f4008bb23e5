"""Each source loaded (or preprocessed, or encoded) once, and kept only while it is still needed.

One idea that five places need: batch's prefetcher (load + preprocess ahead of the model), batch
--server's image loader, the batched encoder's feature store, the engine's pixel memo and the HTTP
client's data-URI memo. A value is made once per key, even when several threads ask for it at the
same moment (the others wait for the first); it is kept while uses are announced (`expect`) and
dropped after the last `release`; keys that nobody announced are kept for the `keep` most recently
used only (an LRU), so memory stays bounded either way.

A failure is remembered like a value: every caller of `get` for that key gets the same exception
(a bad image is read once, and each record that names it fails with the same one-line error).
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import Executor, Future
from typing import Any


class SourceCache:
    def __init__(self, make: Callable[[Any], Any] | None = None, *, keep: int = 0,
                 pool: Executor | None = None):
        self._make = make
        self._keep = keep
        self._pool = pool  # where `prefetch` makes values (None: prefetch is a no-op)
        self._entries: OrderedDict[Hashable, Future] = OrderedDict()
        self._uses: Counter = Counter()
        self._lock = threading.Lock()

    def expect(self, key: Hashable, uses: int = 1) -> None:
        """Announce `uses` more `release`s of `key`: it is kept until the last."""
        with self._lock:
            self._uses[key] += uses

    def get(self, key: Hashable, make: Callable[[Any], Any] | None = None) -> Any:
        """The value for `key`, made by `make(key)` (or the cache's own `make`) the first time."""
        future, mine = self._claim(key)
        if mine:
            self._fill(key, future, make or self._make)
        return future.result()

    def prefetch(self, key: Hashable) -> None:
        """Start making `key`'s value in the pool, if it is not made or being made already."""
        if self._pool is None:
            return
        future, mine = self._claim(key)
        if mine:
            self._pool.submit(self._fill, key, future, self._make)

    def put(self, key: Hashable, value: Any) -> None:
        """Store a value made elsewhere (several at once, as the batched vision encoder does)."""
        future: Future = Future()
        future.set_result(value)
        with self._lock:
            self._entries[key] = future
            self._trim()

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def release(self, key: Hashable) -> None:
        """One announced use of `key` is over; after the last one its value is dropped."""
        with self._lock:
            self._uses[key] -= 1
            if self._uses[key] <= 0:
                self._uses.pop(key, None)
                self._entries.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._uses.clear()

    def _claim(self, key: Hashable) -> tuple[Future, bool]:
        with self._lock:
            future = self._entries.get(key)
            if future is not None:
                self._entries.move_to_end(key)
                return future, False
            future = self._entries[key] = Future()
            self._trim()
            return future, True

    def _fill(self, key: Hashable, future: Future, make: Callable[[Any], Any] | None) -> None:
        if make is None:
            raise TypeError("SourceCache.get needs a `make` function")
        try:
            future.set_result(make(key))
        except BaseException as exc:  # remembered: every waiter for this key gets it
            future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise

    def _trim(self) -> None:
        """Drop the least recently used keys nobody announced, beyond `keep` of them (lock held)."""
        loose = [key for key in self._entries if self._uses[key] <= 0]
        for key in loose[: max(0, len(loose) - self._keep)]:
            if self._entries[key].done():
                del self._entries[key]
