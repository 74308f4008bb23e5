"""Stored responses (`/v1/responses` with `store`): in memory, bounded in bytes, least recently used first out.

What one entry holds: the response object as GET returns it, and the turn it added to its
conversation (the new input messages, pictures included, and the answer), with the id of the
response it continued. A conversation is the chain of its turns, walked back through
`previous_response_id`; no entry holds a copy of its history, so memory is counted once per turn.

Limits, on purpose:
- In memory only: a restart forgets every response (OpenAI keeps them 30 days; a local server
  that writes clients' pictures to disk unasked would surprise).
- `max_bytes` bounds the sum of the entries' sizes (the response JSON, the text, each picture's
  decoded pixels and its source string, which for a data: URI is the whole payload). Past it, the least recently used entries go first. An entry larger than the
  whole bound is not kept at all.
- Continuing or fetching a response counts as a use of it and of every turn before it, the
  older ones last: an ancestor is always used more recently than its descendants, so eviction
  takes leaves first and never leaves a kept response whose history is gone (DELETE can: a
  response whose history was deleted cannot be continued, and says so).
- One lock: the routes call it from the event loop and from parse threads.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

from dsvl_cli.conversation import Message

STORE_BYTES = 256 * 1024 * 1024  # ~85 phone photos at 1024 px, or millions of words of text
ENTRY_OVERHEAD = 512  # bytes counted per entry for the Python objects around its data


@dataclass
class StoredResponse:
    id: str
    body: dict  # the response object, as GET /v1/responses/{id} returns it
    previous_id: str | None
    systems: list[str]  # this turn's system and developer messages (instructions are not carried on)
    messages: list[Message]  # this turn's input messages, then the answer
    nbytes: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.nbytes = ENTRY_OVERHEAD + len(json.dumps(self.body, ensure_ascii=False).encode())
        self.nbytes += sum(len(s.encode()) for s in self.systems)
        for message in self.messages:
            self.nbytes += len(message.text.encode())
            for loaded in message.images:  # its source too: a data: URI is kept as the client sent it
                picture = loaded.image
                self.nbytes += picture.width * picture.height * len(picture.getbands()) + len(loaded.source)


class HistoryGone(Exception):
    """An earlier turn of the conversation is no longer stored (deleted); `id` names it."""

    def __init__(self, id: str):
        super().__init__(id)
        self.id = id


class ResponseStore:
    def __init__(self, max_bytes: int = STORE_BYTES):
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._entries: OrderedDict[str, StoredResponse] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, entry: StoredResponse) -> bool:
        """Keep `entry` (False when it alone is larger than the store), evicting the least recently
        used; its history counts as used after it, so the new leaf is the first to go."""
        with self._lock:
            if entry.nbytes > self.max_bytes:
                return False
            self._drop(entry.id)
            self._entries[entry.id] = entry
            self.nbytes += entry.nbytes
            self._touch_history(entry.previous_id)
            while self.nbytes > self.max_bytes:
                self._drop(next(iter(self._entries)))
            return True

    def get(self, id: str) -> StoredResponse | None:
        with self._lock:
            entry = self._entries.get(id)
            if entry is not None:
                self._entries.move_to_end(id)
                self._touch_history(entry.previous_id)
            return entry

    def delete(self, id: str) -> bool:
        with self._lock:
            return self._drop(id)

    def chain(self, id: str) -> list[StoredResponse] | None:
        """Every turn of the conversation that response `id` ends, oldest first (None: `id` is not
        stored; HistoryGone: an earlier turn was deleted). Each counts as used."""
        with self._lock:
            turns: list[StoredResponse] = []
            current: str | None = id
            while current is not None:
                entry = self._entries.get(current)
                if entry is None:
                    if not turns:
                        return None
                    raise HistoryGone(current)
                turns.append(entry)
                current = entry.previous_id
            for entry in turns:  # the newest turn first: the oldest ends most recently used
                self._entries.move_to_end(entry.id)
            return turns[::-1]

    def _touch_history(self, id: str | None) -> None:
        seen: set[str] = set()
        while id is not None and id in self._entries and id not in seen:
            seen.add(id)
            self._entries.move_to_end(id)
            id = self._entries[id].previous_id

    def _drop(self, id: str) -> bool:
        entry = self._entries.pop(id, None)
        if entry is None:
            return False
        self.nbytes -= entry.nbytes
        return True
