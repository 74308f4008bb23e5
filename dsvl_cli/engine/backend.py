"""The Backend protocol: what ask, chat, batch and serve may ask of an engine, declared up front.

Modelled on simonw/llm's `Model` (`execute` plus capability attributes such as `supports_tools`):
a backend says what it can do in attributes, and callers read those instead of probing with
`hasattr`/`isinstance`. A `typing.Protocol`: the local engine (engine/local.py), the HTTP client
engine (engine/remote.py), the warm loop's face (engine/warm.py) and test fakes subclass it
explicitly to inherit `run` and the defaults; anything with the same attributes type-checks.

Capabilities:
- `context_length`: tokens the model can attend to, or None when unknown (a remote server).
- `new_cache()`: a per-conversation KV cache for `stream(..., cache=...)` (None: no reuse here).
- `supports_batching`: `generate_batch(items, gen)` answers several questions in one call.
- `counts_tokens`: `count_tokens(conversation)` gives the prompt's length in tokens.
- `default_batch_size`: how many questions to put in one batch on this backend.
- `image_side`: the longest image side the model looks at (its processor's size), None if unknown.

`--choices` needs no method of its own: `stream` with settings that ask for choices yields the
most probable label as its one TextChunk, then a Result with `scores` (engine/scoring.py; through
--server a dsvl server scores them, another OpenAI server answers a label without scores).

Every backend streams (`stream` yields TextChunks, then exactly one Result); the non-streaming
answer is that stream joined, once, here.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any, Protocol

from dsvl_cli.conversation import Conversation
from dsvl_cli.results import Chunk, Result, last_result
from dsvl_cli.settings import GenerationSettings


class Backend(Protocol):
    name: str = "unknown"
    random_weights: bool = False  # tiny-random: its answers are noise, say so where they are shown
    context_length: int | None = None
    supports_batching: bool = False
    counts_tokens: bool = False
    default_batch_size: int = 1
    image_side: int | None = None

    def stream(self, conversation: Conversation, gen: GenerationSettings, *, cache: Any = None,
               stop_event: threading.Event | None = None) -> Iterator[Chunk]:
        """TextChunks as the answer is generated, then one Result. `stop_event` (or Ctrl-C) ends it
        early with finish_reason "interrupted". `cache` is ignored where KV reuse is not supported."""
        raise NotImplementedError

    def run(self, conversation: Conversation, gen: GenerationSettings, **kwargs) -> Result:
        """The non-streaming answer: the stream, joined."""
        return last_result(self.stream(conversation, gen, **kwargs))

    def new_cache(self) -> Any:
        """A per-conversation KV cache to hand back to `stream` each turn (None: no reuse)."""
        return None

    def count_tokens(self, conversation: Conversation) -> int:
        """Prompt tokens of `conversation` (images count as their image tokens; only their number
        is read, so stand-ins work before the pictures are loaded). Safe from any thread."""
        raise NotImplementedError(f"{type(self).__name__} does not count tokens")

    def generate_batch(self, items: list, gen: GenerationSettings, **kwargs) -> list:
        raise NotImplementedError(f"{type(self).__name__} does not batch")
