"""Batched generation on the engine: many single-turn questions through one plain `generate` call.

Why it equals one-at-a-time output: prompts are rendered by the engine's own chat template, padded
on the LEFT (right padding gives wrong answers), and decoded by transformers' own `generate`, which
builds position ids from the attention mask. Greedy answers are then the single-question answers
(tested token for token on tiny-random). Sampled answers use the same settings but not the same
random stream as a single run.

Why images are encoded outside `generate`: a batch file often asks several questions about one
image. `FeatureStore` runs the vision towers once per image source and hands `generate` the
features through `mm_encoder_outputs`; they are freed once the last question using them is done.

Per item, optionally (the server uses both): `stop`, an event that ends that item alone (its row
finishes, the others go on), and `on_tokens`, called from the generating thread with each new token
id of that item as it is decoded (never the pad tokens `generate` fills finished rows with), and
with `logprobs=` its entries when the settings ask for them (--logprobs).

Settings with `--choices` are scored, not generated: one prefill per item (engine/scoring.py).

Limits: every item in one call shares its GenerationSettings (the runner groups records by them),
except the answer format: an item's own `answer_format` (--schema, --regex) wins over the settings'.
CUDA out-of-memory (or a padded batch past the context length) splits the batch in halves and
retries; a single item that still does not fit comes back as the error for that item only. A retry
after tokens were streamed streams that item again from its first token.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dsvl_cli.conversation import Conversation
from dsvl_cli.engine import scoring
from dsvl_cli.engine.core import Generation
from dsvl_cli.engine.detokenize import cut_at_stop, decode_answer
from dsvl_cli.engine.backend import Backend
from dsvl_cli.errors import ContextLengthError, DsvlError, GenerationError
from dsvl_cli.images import LoadedImage
from dsvl_cli.images.cache import SourceCache
from dsvl_cli.results import Result
from dsvl_cli.settings import GenerationSettings
from dsvl_cli.structured.spec import AnswerFormat


@dataclass
class PreparedImage:
    """An image loaded and run through the image processor (CPU tensors, batch dim 1)."""

    loaded: LoadedImage
    pixels: dict[str, Any]  # pixel_values (1, 3, H, W) [+ high_res_pixel_values (1, 3, H', W')]
    prep_s: float

    @property
    def source(self) -> str:
        return self.loaded.source


@dataclass
class BatchItem:
    """One question: a single user turn (with its system prompt) and its prepared images, in order."""

    conversation: Conversation
    images: list[PreparedImage] = field(default_factory=list)  # every image of the conversation, in order
    stop: threading.Event | None = None  # ends this item only (a server client that went away)
    on_tokens: Callable[[list[int]], None] | None = None  # new token ids, as they are generated
    # This item's Result as soon as its row ends with EOS, while longer rows go on (a server client
    # gets its answer without waiting for the batch). generate_batch still returns it too.
    on_done: Callable[[Result], None] | None = None
    # This item's --schema / --regex when it has its own (a batch record's, a server request's):
    # each row has its own matcher, so rows with different formats share one generate call.
    answer_format: AnswerFormat | None = None

    @property
    def image_s(self) -> float:
        return sum((i.loaded.load_s + i.prep_s for i in self.images), 0.0)

    @classmethod
    def prepare(cls, engine: Backend, conversation: Conversation, **callbacks) -> BatchItem:
        """An item with its images preprocessed here (batch's runner does that in background threads)."""
        return cls(conversation, [prepare_image(engine, image) for image in conversation.images], **callbacks)


def prepare_image(engine: Backend, loaded: LoadedImage) -> PreparedImage:
    """Preprocess one image through the engine's one preprocessing path, without its memo (each
    picture is used once here); safe to call from background threads (no model involved)."""
    started = time.perf_counter()
    pixels = engine.pixels(loaded.image, remember=False)
    return PreparedImage(loaded, pixels, time.perf_counter() - started)


class FeatureStore:
    """Encoded image features by source: each image runs through the vision towers once.

    `expect(source)` counts a future use; `release(source)` drops the features after the last one.
    Sources never announced are freed as soon as their batch is done.
    """

    def __init__(self, engine: Backend):
        self.engine = engine
        self._features = SourceCache()
        self.encoded = 0  # images run through the vision towers (for tests and the summary)

    def expect(self, source: str, uses: int = 1) -> None:
        self._features.expect(source, uses)

    def release(self, source: str) -> None:
        self._features.release(source)

    def encode(self, images: list[PreparedImage]):
        """Features for `images` in order: (n_images, num_image_tokens, hidden), on the model's device."""
        import torch

        model = self.engine.model
        found = {i.source: self._features.get(i.source) for i in images if i.source in self._features}
        missing = list({i.source: i for i in images if i.source not in found}.values())
        if missing:  # one forward pass through the vision towers for all of them
            pixels = {key: torch.cat([i.pixels[key] for i in missing]).to(model.device, dtype=model.dtype)
                      for key in missing[0].pixels}
            pooled = model.base_model.get_image_features(**pixels, return_dict=True).pooler_output
            for k, image in enumerate(missing):
                found[image.source] = pooled[k:k + 1]
                self._features.put(image.source, found[image.source])
            self.encoded += len(missing)
        return torch.cat([found[i.source] for i in images])


def generate_batch(engine: Backend, items: list[BatchItem], gen: GenerationSettings, *,
                   features: FeatureStore | None = None,
                   stop_event: threading.Event | None = None) -> list[Result | DsvlError]:
    """One Result per item, in order (or the error for an item that cannot run, e.g. out of memory).

    Items cut short by `stop_event` come back with finish_reason "interrupted".
    """
    import torch

    features = features or FeatureStore(engine)
    if scoring.wanted(gen):  # --choices: labels scored, nothing generated
        return _score(engine, items, gen, features, stop_event)
    try:
        return _generate(engine, items, gen, features, stop_event)
    except ContextLengthError as exc:  # the padded batch is too long: the shorter items may still fit
        if len(items) == 1:
            return [exc]
    except torch.OutOfMemoryError:
        if engine.device.startswith("cuda"):
            torch.cuda.empty_cache()
        if len(items) == 1:
            return [GenerationError(f"out of memory on {engine.device} even alone in its batch; "
                                    "try a smaller --max-new-tokens or fewer images")]
    half = len(items) // 2
    return (generate_batch(engine, items[:half], gen, features=features, stop_event=stop_event)
            + generate_batch(engine, items[half:], gen, features=features, stop_event=stop_event))


def encode_texts(engine: Backend, conversations: list[Conversation]):
    """input_ids and attention_mask (B, L), left-padded, image placeholders expanded as the processor does."""
    texts = [engine.expand_placeholders(engine.render(c)) for c in conversations]
    return engine.tokenizer(texts, padding=True, padding_side="left", return_tensors="pt")


class _StepTimes:
    """When each decode step ended (`times`), and where rows stopped: a stopping criterion that stops
    the rows whose event is set.

    `stopped_at[row]` is how many tokens that row had when its own `stop` ended it.
    """

    def __init__(self, stop_event: threading.Event | None, items: list[BatchItem]):
        self.stop_event = stop_event
        self.row_stops = [item.stop for item in items]
        self.times: list[float] = []
        self.stopped_at: dict[int, int] = {}

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        self.times.append(time.perf_counter())
        if self.stop_event is not None and self.stop_event.is_set():
            return torch.ones((input_ids.shape[0],), dtype=torch.bool, device=input_ids.device)
        for row, event in enumerate(self.row_stops):
            if event is not None and event.is_set() and row not in self.stopped_at:
                self.stopped_at[row] = len(self.times)
        rows = [row in self.stopped_at for row in range(input_ids.shape[0])]
        return torch.tensor(rows, dtype=torch.bool, device=input_ids.device)


class _RowStreamer:
    """Hands each item its own new tokens (a transformers streamer: `put` per step, after the stop check).

    A row's tokens end after its EOS or the step its own stop ended it; what follows is padding.
    """

    def __init__(self, items: list[BatchItem], step_times: _StepTimes, eos_ids: set,
                 on_row_end: Callable[[int, list[int]], None], plan: Generation | None = None):
        self.items, self.step_times, self.eos_ids, self.on_row_end = items, step_times, eos_ids, on_row_end
        self.plan = plan  # with a logprob recorder, on_tokens also gets the tokens' entries
        self.steps = -1  # the first put is the prompt
        self.ended: set[int] = set()
        self.ids: list[list[int]] = [[] for _ in items]

    def put(self, value) -> None:
        self.steps += 1
        if self.steps == 0:
            return
        for row, token in enumerate(value.reshape(-1).tolist()):
            if row in self.ended:
                continue
            stopped = self.step_times.stopped_at.get(row)
            if stopped is not None and stopped < self.steps:
                self.ended.add(row)
                continue
            self.ids[row].append(token)
            callback = self.items[row].on_tokens
            if callback is not None:
                if self.plan is not None and self.plan.recorder is not None:
                    callback([token], logprobs=self.plan.logprob_entries(row, self.ids[row], len(self.ids[row]) - 1))
                else:
                    callback([token])
            if token in self.eos_ids:
                self.ended.add(row)
                self.on_row_end(row, self.ids[row])

    def end(self) -> None:
        pass


def _generate(engine: Backend, items: list[BatchItem], gen: GenerationSettings, features: FeatureStore,
              stop_event: threading.Event | None) -> list[Result]:
    started = time.perf_counter()
    enc = encode_texts(engine, [item.conversation for item in items])
    input_ids = enc["input_ids"].to(engine.model.device)  # (B, L)
    attention_mask = enc["attention_mask"].to(engine.model.device)  # (B, L), 0 on the left padding
    plan = Generation.plan(engine, gen, prompt_tokens=input_ids.shape[1], rows=len(items), started=started,
                           formats=[item.answer_format or gen.answer_format for item in items])
    plan.use_cache()  # the fast path's static cache (+ compiled decode step), as for single questions
    step_times = _StepTimes(stop_event, items)
    early: dict[int, Result] = {}

    def row_result(row: int, ids: list[int], interrupted: bool) -> Result:
        own_stop = step_times.stopped_at.get(row)
        ids, stopped = _row_tokens(plan.eos_ids, engine, ids[:own_stop] if own_stop is not None else ids, gen)
        answer, cut = cut_at_stop(decode_answer(engine.tokenizer, ids), gen.stop)
        first = step_times.times[0] if step_times.times and ids else None
        last = step_times.times[min(len(ids), len(step_times.times)) - 1] if first else None
        stats = plan.stats(prompt_tokens=int(attention_mask[row].sum()), generated=len(ids),
                           image_s=items[row].image_s, first_at=first, last_at=last, peak=plan.peak_bytes())
        finish = plan.finish_reason(ids, stopped=stopped or cut, interrupted=interrupted or own_stop is not None)
        return plan.conclude(Result(answer=answer, finish_reason=finish, stats=stats, token_ids=ids), row)

    def row_ended(row: int, ids: list[int]) -> None:
        if items[row].on_done is not None:
            early[row] = row_result(row, list(ids), False)
            items[row].on_done(early[row])

    streamer = None
    if any(item.on_tokens is not None or item.on_done is not None for item in items):
        streamer = _RowStreamer(items, step_times, plan.eos_ids, row_ended, plan)
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    images = [image for item in items for image in item.images]
    if images:
        inputs["mm_encoder_outputs"] = _encoded(features, images)
    out = plan.run(inputs, streamer=streamer, stopping=[step_times])
    interrupted = bool(stop_event and stop_event.is_set())
    return [early.get(row) or row_result(row, out.sequences[row, input_ids.shape[1]:].tolist(), interrupted)
            for row in range(len(items))]


def _score(engine: Backend, items: list[BatchItem], gen: GenerationSettings, features: FeatureStore,
           stop_event: threading.Event | None) -> list[Result | DsvlError]:
    """--choices: each item's labels scored from one prefill of its prompt (engine/scoring.py),
    its images' features from the FeatureStore; an item that cannot be scored gets its error.
    Items not started when `stop_event` (or their own stop) is set come back "interrupted"."""
    import torch

    results: list[Result | DsvlError] = []
    for item in items:
        started = time.perf_counter()
        if any(event is not None and event.is_set() for event in (stop_event, item.stop)):
            results.append(Result(answer="", finish_reason="interrupted"))
            continue
        try:
            inputs = {k: v.to(engine.model.device) for k, v in encode_texts(engine, [item.conversation]).items()}
            if item.images:
                inputs["mm_encoder_outputs"] = _encoded(features, item.images)
            result = scoring.score(engine, inputs, gen, started=started, image_s=item.image_s)
        except DsvlError as err:
            results.append(err)
            continue
        except torch.OutOfMemoryError:
            results.append(GenerationError(f"out of memory on {engine.device} while encoding the images"))
            continue
        if item.on_done is not None:
            item.on_done(result)
        results.append(result)
    return results


def _encoded(features: FeatureStore, images: list[PreparedImage]) -> dict:
    """`generate`'s mm_encoder_outputs: the images' features, each encoded once (FeatureStore)."""
    import torch
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    with torch.inference_mode():
        return {"image": BaseModelOutputWithPooling(pooler_output=features.encode(images))}


def _row_tokens(eos_ids: set, engine: Backend, ids: list[int], gen: GenerationSettings) -> tuple[list[int], bool]:
    """One row's own tokens: up to its first EOS (kept, as a single run keeps it) or stop string.

    After a row finishes, `generate` fills it with pad tokens until the whole batch is done.
    """
    end = next((k + 1 for k, tok in enumerate(ids) if tok in eos_ids), len(ids))
    ids = ids[:end]
    if gen.stop and not (ids and ids[-1] in eos_ids):
        lo, hi = 1, len(ids)  # the shortest prefix whose text holds a stop string (monotonic)
        if hi and cut_at_stop(engine.tokenizer.decode(ids, skip_special_tokens=True), gen.stop)[1]:
            while lo < hi:
                mid = (lo + hi) // 2
                if cut_at_stop(engine.tokenizer.decode(ids[:mid], skip_special_tokens=True), gen.stop)[1]:
                    hi = mid
                else:
                    lo = mid + 1
            return ids[:hi], True
    return ids, False
