"""The prefix cache: the KV of recent prompts and answers, found again by longest common prefix.

The key of an entry is its token ids plus the digest of every picture in them (engine/features.py):
every picture's placeholders are the same token ids, so tokens alone would hand one picture's KV
to another of the same size behind the same text. A match therefore ends where the tokens differ,
never cuts into a picture's placeholder run, and stops before a run whose picture differs (the
idea of vLLM's `mm_hash` in its block hashes and of SGLang's radix keys, here on whole entries:
a row's KV is one tensor per layer, so an entry is one finished row).

What goes in: each row when it leaves the engine loop, its prompt and its answer but the last token
(a chat's next turn starts with the last answer). An entry that is a prefix of the new one is
dropped; a new one that is a prefix of an entry is not kept twice. Bounded in bytes (`--cache-memory`),
least recently used first out. The loop's thread owns it (not thread-safe); /metrics reads `bytes`.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from dsvl_cli.engine.kv import Pairs, nbytes


@dataclass(eq=False)
class Entry:
    ids: tuple[int, ...]
    digests: tuple[str, ...]  # one per picture placeholder run in `ids`, in order
    pairs: Pairs  # per layer (keys, values), (1, heads, len(ids), head_dim)
    nbytes: int
    array: Any = None  # `ids` as a numpy array, for the comparisons of every lookup

    def __post_init__(self) -> None:
        import numpy as np

        if self.array is None:
            self.array = np.asarray(self.ids, dtype=np.int64)

    def slices(self, keep: int) -> Pairs:
        return [(k[:, :, :keep], v[:, :, :keep]) for k, v in self.pairs]


def common_prefix(a, b) -> int:
    """Leading elements `a` and `b` share (token id sequences; numpy compares them in one pass)."""
    import numpy as np

    n = min(len(a), len(b))
    if n == 0:
        return 0
    differ = np.asarray(a[:n]) != np.asarray(b[:n])
    return int(differ.argmax()) if differ.any() else n


def reusable(ids: list[int], spans: list[tuple[int, int]], digests: list[str], entry: Entry) -> int:
    """Leading tokens of `ids` whose KV `entry` holds: at least one token is left to prefill (its
    logits start the answer); never inside a picture's run, never past a picture that differs."""
    keep = min(common_prefix(entry.array, ids), len(ids) - 1)
    for k, (start, end) in enumerate(spans):
        if start >= keep:
            break
        same = k < len(entry.digests) and k < len(digests) and entry.digests[k] == digests[k]
        if keep < end or not same:
            return start
    return keep


class PrefixCache:
    def __init__(self, max_bytes: int):
        self.max_bytes = max(0, int(max_bytes))
        self._entries: OrderedDict[int, Entry] = OrderedDict()
        self.bytes = 0
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, ids: list[int], spans: list[tuple[int, int]], digests: list[str]) -> tuple[Entry | None, int]:
        """The entry sharing the longest usable prefix with `ids`, and that prefix's length (0: none)."""
        import numpy as np

        best, keep, query = None, 0, np.asarray(ids, dtype=np.int64)
        for entry in self._entries.values():
            n = reusable(query, spans, digests, entry)
            if n > keep:
                best, keep = entry, n
        if best is not None:
            self._entries.move_to_end(id(best))
        return best, keep

    def insert(self, ids: list[int], digests: list[str], pairs: Pairs) -> None:
        """Keep a finished row's KV (`pairs`: views are cloned here)."""
        size = nbytes(pairs)
        if not ids or size > self.max_bytes:
            return
        import numpy as np

        key, query = tuple(ids), np.asarray(ids, dtype=np.int64)
        for entry in list(self._entries.values()):
            shared = common_prefix(entry.array, query)
            if shared == len(key) and entry.digests[:len(digests)] == tuple(digests):
                self._entries.move_to_end(id(entry))  # already held, inside a longer entry
                return
            if shared == len(entry.ids) and tuple(digests[:len(entry.digests)]) == entry.digests:
                self._drop(entry)  # the new entry holds all of it
        entry = Entry(key, tuple(digests), [(k.clone(), v.clone()) for k, v in pairs], size)
        self._entries[id(entry)] = entry
        self.bytes += size
        while self.bytes > self.max_bytes and self._entries:
            self._drop(next(iter(self._entries.values())))
            self.evicted += 1

    def clear(self) -> None:
        for entry in list(self._entries.values()):
            self._drop(entry)

    def _drop(self, entry: Entry) -> None:
        del self._entries[id(entry)]
        self.bytes -= entry.nbytes
