"""Typed questions about one input, answered from option probabilities (dsvl decide, POST /v1/decisions).

What is computed (decide/questions.py and README, "Decisions"): for each question, its prompt is
the input's conversation with one more user message (`Question.prompt`), rendered through the chat
template; each option's log-probability is that of `" " + label` + EOS after it (scoring.label_rows,
the `--choices` definition); the probabilities are their softmax over the question's options.

How, with one prefill: every question's prompt is tokenized whole; the longest token prefix they
all share (the input, its pictures included) runs through the model once (engine/prefill.py: on the
warm engine loop, what its prefix cache holds of that input is reused, the pictures' features come
from its image-feature cache, and the input's KV is kept for the next request or chat turn). Then
each (question, option) becomes one row: the question's own tokens after the shared prefix, then
the option's, and rows go SCORE_ROWS at a time through ONE forward pass on the prefix's KV,
repeated per row, right-padded, positions continuing the prefix's (the cache is cut back to the
prefix between groups). A row's log-probability is read at its option's tokens only. So ten
questions cost one prefill of the picture plus a few short forwards, not ten prefills.

A question whose prompt and longest option do not fit the context gets a refusal (the others are
answered); a shared prefix that alone fills it is a ContextLengthError for the request.

`cached_tokens`: the input's tokens whose KV came from the prefix cache (0 outside the loop, where
nothing is kept: a one-shot `dsvl decide`). No `generate`, no fast path. Stats: `prompt_tokens` counts the shared
prefix once plus each question's own tokens (`usage.input_tokens`); generated_tokens is 0.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from dsvl_cli.conversation import Conversation
from dsvl_cli.decide.questions import Question, answer, refusal
from dsvl_cli.decide.wire import summary
from dsvl_cli.errors import ContextLengthError, GenerationError
from dsvl_cli.results import Chunk, Result, Stats, TextChunk
from dsvl_cli.settings import GenerationSettings
from dsvl_cli.engine import features as pictures_of
from dsvl_cli.engine.features import ImageFeatureCache
from dsvl_cli.engine.kv import pairs_of
from dsvl_cli.engine.prefill import prefill
from dsvl_cli.engine.prefix_cache import PrefixCache
from dsvl_cli.engine.scoring import SCORE_ROWS, label_rows, next_token_logprobs


def wanted(gen: GenerationSettings) -> bool:
    """Whether `gen` asks typed questions instead of a generated answer."""
    return gen.answer_format is not None and gen.answer_format.kind == "decisions"


def asked(conversation: Conversation, question: Question) -> Conversation:
    """The conversation that asks `question` about the input: the input, then the question as a user turn."""
    out = conversation.copy()
    out.add_user(question.prompt())
    return out


def stream(engine, conversation: Conversation, gen: GenerationSettings, **caches) -> Iterator[Chunk]:
    """One TextChunk (a line per answer, for plain renderers), then the Result with `answers`
    (`caches`: decide's `prefix` and `features`)."""
    result = decide(engine, conversation, gen.answer_format.questions, **caches)
    yield TextChunk(result.answer)
    yield result


def decide(engine, conversation: Conversation, questions: tuple[Question, ...], *,
           prefix: PrefixCache | None = None, features: ImageFeatureCache | None = None) -> Result:
    """Answer `questions` about `conversation`. `prefix` and `features`: the warm engine loop's
    caches (engine/loop.py), so that the input's KV and its pictures' features are reused by later
    requests and chat turns with the same input, and kept for them; without them, nothing is kept."""
    import torch

    started = time.perf_counter()
    prefix = prefix if prefix is not None else PrefixCache(0)
    features = features if features is not None else ImageFeatureCache(0)
    prompts = [_ids(engine, asked(conversation, q)) for q in questions]
    options = [label_rows(engine.tokenizer, q.labels, int(engine.tokenizer.eos_token_id)) for q in questions]
    shared = _shared_length(engine, prompts)
    if shared >= engine.context_length:
        raise ContextLengthError(f"the input is {shared} tokens, past the model's context length of "
                                 f"{engine.context_length}; shorten the text or use fewer images")
    fits = [len(p) + max(len(r) for r in rows) <= engine.context_length for p, rows in zip(prompts, options)]
    rows, owners = [], []
    for k, (prompt, opts) in enumerate(zip(prompts, options)):
        if fits[k]:
            rows += [(prompt[shared:], tail) for tail in opts]
            owners += [k] * len(opts)
    pictures = [pictures_of.prepare(engine, loaded.image) for loaded in conversation.images]
    image_s = sum(p.prep_s for p in pictures) + sum(i.load_s for i in conversation.images)
    try:
        with torch.inference_mode():
            out, cached = prefill(engine, prompts[0][:shared], pictures, prefix, features)
            prefix.insert(prompts[0][:shared], [p.digest for p in pictures], pairs_of(out.cache))
            logprobs = _row_logprobs(engine.model, out.cache, shared, rows) if rows else []
    except torch.OutOfMemoryError:
        prefix.clear()
        features.clear()
        raise GenerationError(f"out of memory on {engine.device} while scoring {len(rows)} options; "
                              "try fewer questions or images") from None
    per_question: list[list[float]] = [[] for _ in questions]
    for k, lp in zip(owners, logprobs):
        per_question[k].append(lp)
    answers = [answer(q, per_question[k]) if fits[k] else refusal(q) for k, q in enumerate(questions)]
    done = time.perf_counter()
    tokens = shared + sum(len(p) - shared for p in prompts)
    stats = Stats(prompt_tokens=tokens, cached_tokens=cached, image_s=image_s, ttft_s=done - started,
                  total_s=done - started)
    return Result(answer=summary(answers), finish_reason="stop", stats=stats, answers=answers)


def _ids(engine, conversation: Conversation) -> list[int]:
    """The prompt's token ids, pictures expanded to their image tokens (as engine.encode tokenizes it)."""
    text = engine.expand_placeholders(engine.render(conversation))
    return engine.tokenizer(text)["input_ids"]


def _shared_length(engine, prompts: list[list[int]]) -> int:
    """The longest token prefix of every prompt, leaving each at least one token of its own (the
    row's first option token is read from its last prompt token's logits), and never ending inside
    a picture's run of image tokens (those need the picture's pixels in the same forward)."""
    shortest = min(len(p) for p in prompts)
    n = 0
    while n < shortest - 1 and all(p[n] == prompts[0][n] for p in prompts):
        n += 1
    for start, end in engine.image_spans(prompts[0]):
        if start < n < end:
            n = start
    if any(start >= n for start, _ in engine.image_spans(prompts[0])):
        raise GenerationError("a picture lies after the input shared by the questions; put pictures in the input")
    return n


def _row_logprobs(model, cache, prefix_length: int, rows: list[tuple[list[int], list[int]]]) -> list[float]:
    """Sum of log-probabilities of each row's option tokens after the prefix (`cache`, cut back to
    it after each group) and the row's own context: one forward per SCORE_ROWS rows."""
    import torch

    mask = torch.ones((1, prefix_length), dtype=torch.long, device=model.device)
    sums: list[float] = []
    for start in range(0, len(rows), SCORE_ROWS):
        sums += _group(model, cache, mask, rows[start:start + SCORE_ROWS])
    return sums


def _group(model, cache, prefix_mask, rows: list[tuple[list[int], list[int]]]) -> list[float]:
    """One forward over `rows` (context + option, all but the last token, right-padded) on the
    prefix's cache repeated for them; targets are the next tokens, counted at the option only."""
    import torch

    device = prefix_mask.device
    n, width = len(rows), max(len(ctx) + len(opt) for ctx, opt in rows) - 1
    ids = torch.zeros((n, width), dtype=torch.long, device=device)
    targets = torch.zeros((n, width), dtype=torch.long, device=device)
    present = torch.zeros((n, width), dtype=torch.bool, device=device)  # a real token (attention)
    counted = torch.zeros((n, width), dtype=torch.bool, device=device)  # its next token is an option's
    for k, (ctx, opt) in enumerate(rows):
        row = ctx + opt
        m = len(row) - 1
        ids[k, :m] = torch.tensor(row[:-1], device=device)
        targets[k, :m] = torch.tensor(row[1:], device=device)
        present[k, :m] = True
        counted[k, len(ctx) - 1:m] = True
    logprobs = next_token_logprobs(model, cache, prefix_mask, ids, targets, present)  # (n, width)
    return (logprobs * counted).sum(dim=1).tolist()
