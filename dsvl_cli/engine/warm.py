"""A local engine seen through its warm loop: the Backend that batch's concurrent runner talks to.

`dsvl batch` without --server keeps up to `concurrency` records open against this backend, the
way `batch --server` keeps requests open against a server (batch/remote.py): each record joins the
running rows at the next decode step and leaves when its answer ends (engine/loop.py), so a short
record never waits for a long one and pictures asked about again come from the caches.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from dsvl_cli.engine.backend import Backend
from dsvl_cli.results import Chunk


class WarmBackend(Backend):
    counts_tokens = True

    def __init__(self, engine, loop):
        self._engine, self.loop = engine, loop
        self.name, self.random_weights = engine.name, engine.random_weights
        self.context_length, self.image_side = engine.context_length, engine.image_side
        self.default_batch_size = loop.max_rows

    def stream(self, conversation, gen, *, cache=None, stop_event: threading.Event | None = None) -> Iterator[Chunk]:
        yield from self.loop.stream(conversation, gen, stop_event=stop_event)

    def count_tokens(self, conversation) -> int:
        return self._engine.count_tokens(conversation)
