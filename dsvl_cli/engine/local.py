"""The engine: load a model once, turn conversations into inputs, stream typed chunks.

ask, chat, batch and serve share this one way to build inputs and count stats. Generation runs
transformers' own `generate` in a worker thread (so greedy output is plain `generate`'s, token for
token) while this thread decodes and yields text. torch and transformers are imported here only,
when a model is loaded.

Limits: one generation at a time per Engine (the server serialises access). KV reuse across turns
needs a dynamic cache (see PromptCache).
"""

from __future__ import annotations

import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from dsvl_cli.engine import loading, runtime
from dsvl_cli.engine.detokenize import AnswerText, decode_answer
from dsvl_cli.conversation import IMAGE_TOKEN, Conversation
from dsvl_cli.errors import ContextLengthError, GenerationError
from dsvl_cli.results import Chunk, Result, Stats, TextChunk, last_result
from dsvl_cli.settings import GenerationSettings, ModelSettings

_DONE = object()
_PIXEL_MEMO_SIZE = 16  # pictures whose preprocessed tensors are kept (a 1024 px one: ~14 MB)


@dataclass
class PromptCache:
    """The KV cache left by the previous turn and the token ids it holds.

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

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        stop = any(e.is_set() for e in self.events)
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


class Engine:
    def __init__(self, model, processor, device: str, resolved: loading.ResolvedModel, settings: ModelSettings):
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.device = device
        self.resolved = resolved
        self.settings = settings
        self._default_preamble: str | None = None
        self.fast = None  # a fastpath.FastPath once enable_fast_path() ran
        self._pixel_memo: OrderedDict[int, tuple[Any, dict[str, Any]]] = OrderedDict()
        self._pixel_lock = threading.Lock()

    @classmethod
    def load(cls, settings: ModelSettings, *, verbose: bool = False, prefer_fast: bool = False) -> Engine:
        """Load the model. `prefer_fast`: the caller runs many generations (chat, batch, serve), so
        the fast path pays off; `--compile/--no-compile` (settings.compile) overrides it."""
        from dsvl_cli.engine import fastpath
        from dsvl_cli.engine import quantize

        if settings.quantize:  # fail before a 14 GB download, not after it
            device = runtime.pick_device(settings.device)
            quantize.check(settings.quantize, device, runtime.pick_dtype(settings.dtype, device))
        resolved = loading.resolve(settings)
        model, processor, device = loading.load(resolved, settings, verbose=verbose)
        engine = cls(model, processor, device, resolved, settings)
        if fastpath.wanted(settings.compile, prefer_fast=prefer_fast, device=device):
            engine.enable_fast_path()
        return engine

    def enable_fast_path(self, *, compile: bool = True) -> None:
        """Static KV cache + compiled decode step for every later generation (see fastpath.py)."""
        from dsvl_cli.engine.fastpath import FastPath

        self.fast = FastPath.for_engine(self.model, self.device, runtime.dsvl_home(), compile=compile)

    # -- facts ----------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.resolved.name

    @property
    def random_weights(self) -> bool:
        return self.resolved.random_weights

    @property
    def context_length(self) -> int:
        return int(self.model.config.text_config.max_position_embeddings)

    @property
    def image_token_id(self) -> int:
        return int(self.model.config.image_token_id)

    # -- inputs ---------------------------------------------------------------------------------
    def render(self, conversation: Conversation) -> str:
        """The prompt text through the model's own chat template.

        The DeepSeek-VL template bakes in a default system prompt; a custom system prompt replaces
        that preamble (as DeepSeek's own `sft_format` does), an empty one removes it.
        """
        text = self.processor.apply_chat_template(
            conversation.template_messages(), add_generation_prompt=True, tokenize=False
        )
        if conversation.system is None:
            return text
        preamble = self.default_preamble()
        if preamble and text.startswith(preamble):
            text = text[len(preamble):]
        return (conversation.system.strip() + "\n\n" if conversation.system.strip() else "") + text

    def default_preamble(self) -> str:
        """The template's built-in system prompt: whatever it writes before the first "User:"."""
        if self._default_preamble is None:
            probe = [{"role": "user", "content": [{"type": "text", "text": "x"}]}]
            text = self.processor.apply_chat_template(probe, add_generation_prompt=False, tokenize=False)
            self._default_preamble = text[: text.find("User:")] if "User:" in text else ""
        return self._default_preamble

    def expand_placeholders(self, prompt: str) -> str:
        """The prompt with each image placeholder expanded to its run of image tokens, exactly as the
        processor does before tokenizing."""
        return prompt.replace(IMAGE_TOKEN, IMAGE_TOKEN * int(self.processor.num_image_tokens))

    def pixels(self, image) -> dict[str, Any]:
        """The image processor's tensors for one picture (1, 3, H, W), remembered for the last few
        pictures: a chat re-encodes its whole history every turn, and preprocessing a 1024 px image
        costs tens of milliseconds that KV reuse would otherwise not save. Keyed by identity; the
        memo holds the picture, so its id stays valid."""
        with self._pixel_lock:
            hit = self._pixel_memo.get(id(image))
            if hit is not None and hit[0] is image:
                self._pixel_memo.move_to_end(id(image))
                return hit[1]
        tensors = dict(self.processor.image_processor(images=[image], return_tensors="pt"))
        with self._pixel_lock:
            self._pixel_memo[id(image)] = (image, tensors)
            while len(self._pixel_memo) > _PIXEL_MEMO_SIZE:
                self._pixel_memo.popitem(last=False)
        return tensors

    def encode(self, conversation: Conversation):
        """input_ids (1, L), attention_mask (1, L) and pixel tensors (n_images, 3, H, W) on the device:
        what `processor(text=..., images=...)` returns (tested equal), with per-picture memoized pixels."""
        import torch
        from transformers import BatchFeature

        data = dict(self.tokenizer(self.expand_placeholders(self.render(conversation)), return_tensors="pt"))
        per_image = [self.pixels(loaded.image) for loaded in conversation.images]
        if per_image:
            data.update({key: torch.cat([p[key] for p in per_image]) for key in per_image[0]})
        return BatchFeature(data).to(self.model.device, dtype=self.model.dtype)

    def image_spans(self, ids: list[int]) -> list[tuple[int, int]]:
        """(start, end) of each image's placeholder run in `ids`, in order."""
        per_image = int(self.processor.num_image_tokens)
        positions = [i for i, tok in enumerate(ids) if tok == self.image_token_id]
        return [(positions[k], positions[k] + per_image) for k in range(0, len(positions), per_image)]

    def _reusable_prefix(self, ids: list[int], cache: PromptCache, images: list[Any]) -> int:
        """How many leading tokens of `ids` can keep their cached KV: never cutting an image, and
        never past an image whose placeholders match but whose picture differs (see PromptCache)."""
        common = 0
        for old, new in zip(cache.token_ids, ids):
            if old != new:
                break
            common += 1
        keep = min(common, len(ids) - 1)  # at least one token must be prefilled to get logits
        for k, (start, end) in enumerate(self.image_spans(ids)):
            same = k < len(cache.images) and k < len(images) and cache.images[k] is images[k]
            if start < keep and (keep < end or not same):
                keep = start
                break
        return keep

    # -- generation -----------------------------------------------------------------------------
    def generation_kwargs(self, gen: GenerationSettings, prompt_tokens: int) -> dict:
        room = self.context_length - prompt_tokens
        if room < 1:
            raise ContextLengthError(
                f"the conversation is {prompt_tokens} tokens, past the model's context length of "
                f"{self.context_length}; start over (/clear) or drop the oldest turns"
            )
        kwargs = gen.replace(max_new_tokens=min(gen.max_new_tokens, room)).generate_kwargs()
        if gen.stop:
            kwargs["tokenizer"] = self.tokenizer
        kwargs["pad_token_id"] = self.tokenizer.pad_token_id
        return kwargs

    def stream(
        self,
        conversation: Conversation,
        gen: GenerationSettings,
        *,
        cache: PromptCache | None = None,
        stop_event: threading.Event | None = None,
    ) -> Iterator[Chunk]:
        """Yield TextChunks as the answer is generated, then one Result.

        Ctrl-C (KeyboardInterrupt) or `stop_event` stops generation; the Result then has
        finish_reason "interrupted" and the partial answer.
        """
        import torch
        from transformers import StoppingCriteriaList

        started = time.perf_counter()
        inputs = self.encode(conversation)
        last_user = next((m for m in reversed(conversation.messages) if m.role == "user"), None)
        image_s = time.perf_counter() - started + sum(i.load_s for i in (last_user.images if last_user else []))
        ids = inputs["input_ids"][0].tolist()
        kwargs = self.generation_kwargs(gen, len(ids))
        needed = len(ids) + kwargs["max_new_tokens"]
        if cache is not None and cache.kv is not None and not self._cache_fits(cache.kv, needed):
            cache.clear()  # a static cache cannot grow: recompute this turn into a new one
        cached = 0
        if cache is not None:
            pictures = [loaded.image for loaded in conversation.images]
            cached = self._reusable_prefix(ids, cache, pictures) if cache.kv is not None else 0
            if cached == 0:
                cache.clear()
            else:
                surplus = cache.kv.get_seq_length() - cached
                if surplus > 0:
                    cache.kv.crop(-surplus)
                n_cached_images = sum(1 for _, end in self.image_spans(ids) if end <= cached)
                inputs = {k: (v[n_cached_images:] if k not in ("input_ids", "attention_mask") else v)
                          for k, v in inputs.items()}
                inputs = {k: v for k, v in inputs.items() if v.shape[0] > 0}
                kwargs["cache"] = cache.kv
        if self.fast is not None:
            kwargs.update(self.fast.generate_kwargs(batch_size=1, needed=needed, cache=kwargs.get("cache"),
                                                    keep=cache is not None))

        halt = threading.Event()  # set by Ctrl-C here, or by the caller through stop_event
        streamer = _TokenQueue()
        outcome: dict[str, Any] = {}
        if self.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats(self.device)
        if gen.seed is not None:
            torch.manual_seed(gen.seed)

        def work() -> None:
            try:
                with torch.inference_mode():
                    outcome["out"] = self.model.generate(
                        **inputs, **kwargs, streamer=streamer, return_dict_in_generate=True,
                        stopping_criteria=StoppingCriteriaList([_StopOnEvent(halt, stop_event)]),
                    )
            except BaseException as exc:  # handed to the consuming thread, raised there
                outcome["error"] = exc
            finally:
                streamer.end()

        worker = threading.Thread(target=work, name="dsvl-generate", daemon=True)
        worker.start()
        answer_text = AnswerText(self.tokenizer, gen.stop)
        first_at = last_at = None
        interrupted = False
        try:
            while True:
                try:
                    item = streamer.queue.get(timeout=0.1)
                except queue.Empty:
                    continue
                if item is _DONE:
                    break
                last_at = time.perf_counter()
                first_at = first_at or last_at
                delta = answer_text.add(item)
                if delta:
                    yield TextChunk(delta)
        except KeyboardInterrupt:
            interrupted = True
        finally:  # also on GeneratorExit: never leave the worker running
            halt.set()
            worker.join()

        error = outcome.get("error")
        if error is not None:
            if isinstance(error, torch.OutOfMemoryError):
                raise GenerationError(f"out of memory on {self.device} while generating; "
                                      "try a smaller --max-new-tokens, fewer images or --quantize int4") from error
            raise error
        out = outcome.get("out")
        if cache is not None and out is not None and out.cache is not None:
            cache.kv = out.cache
            cache.token_ids = out.sequences[0][: out.cache.get_seq_length()].tolist()
            cache.images = [loaded.image for loaded in conversation.images]
        new_ids = answer_text.ids
        answer, stopped, rest = answer_text.finish()
        if rest:
            yield TextChunk(rest)
        interrupted = interrupted or bool(stop_event and stop_event.is_set())
        finish = self._finish_reason(new_ids, kwargs["max_new_tokens"], stopped, interrupted)
        done_at = time.perf_counter()
        stats = Stats(
            prompt_tokens=len(ids),
            cached_tokens=cached,
            generated_tokens=len(new_ids),
            image_s=image_s,
            ttft_s=(first_at - started) if first_at else 0.0,
            decode_tokens_per_s=((len(new_ids) - 1) / (last_at - first_at)) if first_at and last_at > first_at else 0.0,
            total_s=done_at - started,
            peak_gpu_bytes=torch.cuda.max_memory_allocated(self.device) if self.device.startswith("cuda") else None,
        )
        yield Result(answer=answer, finish_reason=finish, stats=stats, token_ids=new_ids)

    def _cache_fits(self, kv, needed: int) -> bool:
        """Whether a cache from an earlier turn can hold this one (dynamic caches always grow)."""
        if self.fast is not None:
            return self.fast.can_reuse(kv, needed)
        limit = kv.get_max_length()
        return limit < 0 or limit >= needed

    def _decode(self, ids: list[int]) -> str:
        return decode_answer(self.tokenizer, ids)

    def _finish_reason(self, new_ids: list[int], max_new: int, stopped: bool, interrupted: bool) -> str:
        eos = self.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos])
        if (new_ids and new_ids[-1] in eos_ids) or stopped:
            return "stop"
        if len(new_ids) >= max_new:
            return "length"
        return "interrupted" if interrupted else "stop"

    def run(self, conversation: Conversation, gen: GenerationSettings, **kwargs) -> Result:
        """The non-streaming answer: the stream, joined."""
        return last_result(self.stream(conversation, gen, **kwargs))
