"""One question, streamed: KV reuse across turns, `generate` in a worker thread, text as it comes.

The local engine's `stream` is three steps of about forty lines each:
- `prepare`: encode the conversation, plan the generation (engine/core.py), and decide how much of
  the previous turn's KV cache to keep: the longest common token prefix, never cutting an image,
  cropped in place, with pixels passed only for images after that prefix;
- `run`: transformers' `generate` in a worker thread (so greedy output is plain `generate`'s, token
  for token) while this thread detokenizes and yields TextChunks; Ctrl-C or a stop event ends it;
- `finish`: map errors, keep the cache for the next turn, and yield the one Result with its stats.

Limits: one generation at a time per engine (the server serialises access). A static cache (the
fast path) cannot grow: a turn that would outgrow it is recomputed into a new one.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from dsvl_cli.conversation import Conversation
from dsvl_cli.engine.core import Generation
from dsvl_cli.engine.detokenize import AnswerText
from dsvl_cli.engine.prefix_cache import Entry, reusable
from dsvl_cli.errors import GenerationError
from dsvl_cli.results import Chunk, Result, TextChunk
from dsvl_cli.settings import GenerationSettings

_DONE = object()


@dataclass
class PromptCache:
    """The KV cache left by the previous turn and the token ids it holds: a local chat's own one-entry
    prefix cache (engine/prefix_cache.py decides how much of it a new prompt may reuse).

    The next prompt reuses only the longest common token prefix (re-rendered history differs from
    generated tokens: the template adds "Assistant: " and strips text), never cutting into an image.
    Every image has the same placeholder ids, so `images` records which picture each placeholder run
    in `token_ids` holds (the PIL objects themselves: identity, kept alive); a run whose picture
    changed (/undo then another /image, /forget shifting the turns) ends the reusable prefix.
    """

    token_ids: list[int] = field(default_factory=list)
    kv: Any = None
    images: list[Any] = field(default_factory=list)

    def clear(self) -> None:
        self.token_ids, self.kv, self.images = [], None, []


@dataclass
class PreparedPrompt:
    """The prompt of one question set up for `generate`: its inputs, plan, token ids, the KV cache
    and how much of the prompt it already holds."""

    conversation: Conversation
    inputs: dict  # input_ids (1, L), attention_mask (1, L), pixel tensors of the images not cached
    plan: Generation
    prompt_ids: list[int]
    cached: int  # leading prompt tokens whose KV is reused
    image_s: float
    cache: PromptCache | None


@dataclass
class _TokenTimes:
    """When the first and the last token of the answer arrived."""

    first_at: float | None = None
    last_at: float | None = None


class _TokenQueue:
    """A transformers streamer that hands new token ids to the consuming thread.

    After the first token it hands them over at most every `interval` seconds: each hand-over wakes
    the consumer, which then competes for the GIL with the thread launching the next decode step
    (on a GPU that launch is the bottleneck). 20 ms is below what a reader notices.
    """

    def __init__(self, interval: float = 0.02) -> None:
        self.queue: queue.Queue = queue.Queue()
        self.interval = interval
        self._prompt_seen = False
        self._pending: list[int] = []
        self._handed_at = 0.0

    def put(self, value) -> None:
        if not self._prompt_seen:  # generate() first puts the prompt
            self._prompt_seen = True
            return
        self._pending.extend(value.reshape(-1).tolist())
        now = time.perf_counter()
        if now - self._handed_at >= self.interval:
            self.queue.put(self._pending)
            self._pending, self._handed_at = [], now

    def end(self) -> None:
        if self._pending:
            self.queue.put(self._pending)
        self.queue.put(_DONE)


class _StopOnEvent:
    """A stopping criterion that ends generation when any event is set (Ctrl-C, client gone)."""

    def __init__(self, *events: threading.Event | None) -> None:
        self.events = [e for e in events if e is not None]
        self._go = None  # the all-False answer, made once (generate asks at every step)

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        if any(e.is_set() for e in self.events):
            return torch.ones((input_ids.shape[0],), dtype=torch.bool, device=input_ids.device)
        if self._go is None or self._go.shape[0] != input_ids.shape[0] or self._go.device != input_ids.device:
            self._go = torch.zeros((input_ids.shape[0],), dtype=torch.bool, device=input_ids.device)
        return self._go


def encode_timed(engine, conversation: Conversation, *, remember: bool) -> tuple[dict, float, float]:
    """(inputs, when encoding started, image_s): the engine's encoding of `conversation`, and the
    seconds its newest question's pictures took, loading included."""
    started = time.perf_counter()
    inputs = engine.encode(conversation, remember=remember)
    last_user = next((m for m in reversed(conversation.messages) if m.role == "user"), None)
    image_s = time.perf_counter() - started + sum(i.load_s for i in (last_user.images if last_user else []))
    return inputs, started, image_s


def prepare(engine, conversation: Conversation, gen: GenerationSettings, cache: PromptCache | None) -> PreparedPrompt:
    """Encode, plan, and keep what can be kept of `cache` (see the module docstring)."""
    # only a next turn reuses the pictures' pixels
    inputs, started, image_s = encode_timed(engine, conversation, remember=cache is not None)
    ids = inputs["input_ids"][0].tolist()
    plan = Generation.plan(engine, gen, prompt_tokens=len(ids), started=started)
    needed = len(ids) + plan.max_new_tokens
    if cache is not None and cache.kv is not None and not _cache_fits(engine, cache.kv, needed):
        cache.clear()  # a static cache cannot grow: recompute this turn into a new one
    cached = 0
    if cache is not None:
        pictures = [loaded.image for loaded in conversation.images]
        cached = reusable_prefix(engine, ids, cache, pictures) if cache.kv is not None else 0
        if cached == 0:
            cache.clear()
        else:
            surplus = cache.kv.get_seq_length() - cached
            if surplus > 0:
                cache.kv.crop(-surplus)
            n_cached_images = sum(1 for _, end in engine.image_spans(ids) if end <= cached)
            inputs = {k: (v[n_cached_images:] if k not in ("input_ids", "attention_mask") else v)
                      for k, v in inputs.items()}
            inputs = {k: v for k, v in inputs.items() if v.shape[0] > 0}
    plan.use_cache(cache.kv if cache is not None and cached else None, keep=cache is not None)
    return PreparedPrompt(conversation, dict(inputs), plan, ids, cached, image_s, cache)


def run(engine, prompt: PreparedPrompt, stop_event: threading.Event | None) -> Iterator[Chunk]:
    """Generate in a worker thread; yield TextChunks as they become safe to show, then the Result."""
    halt = threading.Event()  # set by Ctrl-C here, or by the caller through stop_event
    streamer = _TokenQueue()
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["out"] = prompt.plan.run(prompt.inputs, streamer=streamer,
                                           stopping=[_StopOnEvent(halt, stop_event)])
        except BaseException as exc:  # handed to the consuming thread, raised there
            outcome["error"] = exc
        finally:
            streamer.end()

    worker = threading.Thread(target=work, name="dsvl-generate", daemon=True)
    worker.start()
    text, times, interrupted = AnswerText(engine.tokenizer, prompt.plan.gen.stop), _TokenTimes(), False
    logprobs: list[dict] = []  # entries of tokens whose text is not shown yet (--logprobs)
    try:
        while True:
            try:
                item = streamer.queue.get(timeout=0.1)
            except queue.Empty:
                continue
            if item is _DONE:
                break
            times.last_at = time.perf_counter()
            times.first_at = times.first_at or times.last_at
            seen = len(text.ids)
            delta = text.add(item)
            logprobs += prompt.plan.logprob_entries(0, text.ids, seen) or []
            if delta:
                yield TextChunk(delta, logprobs=logprobs or None)
                logprobs = []
    except KeyboardInterrupt:
        interrupted = True
    finally:  # also on GeneratorExit: never leave the worker running
        halt.set()
        _join(worker)
    yield from finish(engine, prompt, outcome, text, times, interrupted or bool(stop_event and stop_event.is_set()))


def finish(engine, prompt: PreparedPrompt, outcome: dict, text: AnswerText, times: _TokenTimes,
           interrupted: bool) -> Iterator[Chunk]:
    """Raise what generation raised; keep the cache for the next turn; the rest of the text; the Result."""
    import torch

    error = outcome.get("error")
    if error is not None:
        if isinstance(error, torch.OutOfMemoryError):
            raise GenerationError(f"out of memory on {engine.device} while generating; "
                                  "try a smaller --max-new-tokens, fewer images or --quantize int4") from error
        raise error
    out, cache = outcome.get("out"), prompt.cache
    if cache is not None and out is not None and out.cache is not None:
        cache.kv = out.cache
        cache.token_ids = out.sequences[0][: out.cache.get_seq_length()].tolist()
        cache.images = [loaded.image for loaded in prompt.conversation.images]
    answer, stopped, rest = text.finish()
    if rest:
        yield TextChunk(rest)
    new_ids = text.ids
    stats = prompt.plan.stats(prompt_tokens=len(prompt.prompt_ids), cached=prompt.cached, generated=len(new_ids),
                            image_s=prompt.image_s, first_at=times.first_at, last_at=times.last_at,
                            peak=prompt.plan.peak_bytes(), done_at=time.perf_counter())
    finish_reason = prompt.plan.finish_reason(new_ids, stopped=stopped, interrupted=interrupted)
    yield prompt.plan.conclude(Result(answer=answer, finish_reason=finish_reason, stats=stats, token_ids=new_ids))


def _cache_fits(engine, kv, needed: int) -> bool:
    """Whether a cache from an earlier turn can hold this one (dynamic caches always grow)."""
    if engine.fast is not None:
        return engine.fast.can_reuse(kv, needed)
    limit = kv.get_max_length()
    return limit < 0 or limit >= needed


def reusable_prefix(engine, ids: list[int], cache: PromptCache, images: list[Any]) -> int:
    """How many leading tokens of `ids` can keep their cached KV: the prefix cache's rule
    (engine/prefix_cache.py: never cutting an image, never past an image whose placeholders match
    but whose picture differs), with this chat's one entry and its pictures named by identity."""
    entry = Entry(tuple(cache.token_ids), tuple(str(id(picture)) for picture in cache.images), [], 0)
    return reusable(ids, engine.image_spans(ids), [str(id(picture)) for picture in images], entry)


def _join(worker: threading.Thread) -> None:
    """Wait for the generate thread, even through more Ctrl-C (re-raised once it has stopped): a
    thread left inside torch when the interpreter exits aborts the process."""
    interrupted = False
    while worker.is_alive():
        try:
            worker.join()
        except KeyboardInterrupt:
            interrupted = True
    if interrupted:
        raise KeyboardInterrupt
