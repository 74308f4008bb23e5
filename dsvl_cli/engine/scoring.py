"""`--choices`: score each label instead of sampling an answer.

The definition (README, "Label probabilities"):
- `logprob(label)` is the sum of the model's log-probabilities of the tokens of `" " + label`
  followed by the end-of-sentence token, right after the prompt. The generation prompt ends with
  `Assistant:` and the chat template writes an answer as `Assistant: ` + text + EOS, so these are
  exactly the tokens the model generates when it answers `label` and stops: `" " + label` is
  tokenized on its own (DeepSeek-VL's byte-level tokenizer never merges across that space; a test
  checks the tokens equal those of the prompt and the answer tokenized together).
- `probability(label)` is the softmax of those log-probabilities over the labels given, so the
  probabilities sum to 1 over the labels, whatever mass the model puts elsewhere.
- The log-probabilities are the model's own (no temperature, top-p or repetition penalty: those
  shape sampling, and nothing is sampled here). A longer label is not normalised by its length:
  each extra token is one more decision the model must make, as when it generates.

How, with one prefill per question: the prompt (images included) runs through the model once; its
KV cache is then repeated for the label rows, and ONE forward pass over the labels' tokens, right-
padded, with their attention mask and positions continuing the prompt's, gives every later token's
log-probability (the first token's comes from the prefill's last logits). Labels go SCORE_ROWS at a
time (the cache is repeated per row: ~0.5 MB per prompt token and row on the 7B), the cache being
cut back to the prompt between groups. Not a `generate` call: plain forward passes, no fast path
(nothing to decode step by step), no KV reuse from a chat's earlier turns (each question is
prefilled whole).

The answer is the most probable label (the first given on a tie); finish_reason is "stop";
stats count the prompt, generated_tokens is 0.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

from dsvl_cli.conversation import Conversation
from dsvl_cli.errors import ContextLengthError, GenerationError
from dsvl_cli.results import Chunk, Result, Stats, TextChunk
from dsvl_cli.settings import GenerationSettings

SCORE_ROWS = 16  # label rows per forward pass


def wanted(gen: GenerationSettings) -> bool:
    """Whether `gen` asks for label scores instead of a generated answer."""
    return gen.answer_format is not None and gen.answer_format.kind == "choices"


def label_rows(tokenizer, labels: tuple[str, ...], eos_id: int) -> list[list[int]]:
    """Token ids of `" " + label` + EOS for each label (what follows `Assistant:`)."""
    return [tokenizer(" " + label, add_special_tokens=False)["input_ids"] + [eos_id] for label in labels]


def stream(engine, conversation: Conversation, gen: GenerationSettings, *, remember: bool = False) -> Iterator[Chunk]:
    """The most probable label as the answer's one TextChunk, then the Result with every score.
    `remember`: keep the pictures' pixels for a next turn (a chat), as streaming.prepare does."""
    from dsvl_cli.engine.streaming import encode_timed

    inputs, started, image_s = encode_timed(engine, conversation, remember=remember)
    result = score(engine, dict(inputs), gen, started=started, image_s=image_s)
    yield TextChunk(result.answer)
    yield result


def score(engine, inputs: dict, gen: GenerationSettings, *, started: float, image_s: float) -> Result:
    """Score gen's labels after the prompt in `inputs` (input_ids (1, L), attention_mask, pixels or
    encoded image features)."""
    import torch

    labels = gen.answer_format.choices
    eos_id = int(engine.tokenizer.eos_token_id)
    rows = label_rows(engine.tokenizer, labels, eos_id)
    prompt_len = int(inputs["input_ids"].shape[1])
    longest = max(len(r) for r in rows)
    if prompt_len + longest > engine.context_length:
        raise ContextLengthError(f"the prompt is {prompt_len} tokens and the longest label {longest}, past the "
                                 f"model's context length of {engine.context_length}; shorten the question or "
                                 "use fewer images")
    try:
        logprobs = label_logprobs(engine.model, inputs, rows)
    except torch.OutOfMemoryError:
        raise GenerationError(f"out of memory on {engine.device} while scoring {len(labels)} labels; "
                              "try fewer images or shorter labels") from None
    done = time.perf_counter()
    stats = Stats(prompt_tokens=prompt_len, image_s=image_s, ttft_s=done - started, total_s=done - started)
    scores = ranked(labels, logprobs)
    return Result(answer=scores[0]["label"], finish_reason="stop", stats=stats, scores=scores)


def ranked(labels: tuple[str, ...], logprobs: list[float]) -> list[dict]:
    """[{label, probability, logprob}] most probable first; probability = softmax over the labels."""
    top = max(logprobs)
    weights = [math.exp(lp - top) for lp in logprobs]
    total = sum(weights)
    scores = [{"label": label, "probability": w / total, "logprob": lp}
              for label, w, lp in zip(labels, weights, logprobs)]
    return sorted(scores, key=lambda s: -s["probability"])  # stable: the first given wins a tie


def label_logprobs(model, inputs: dict, rows: list[list[int]]) -> list[float]:
    """Sum of log-probabilities of each row's tokens after the prompt: one prefill, then one forward
    pass per SCORE_ROWS rows over the repeated prompt cache."""
    import torch
    from transformers import DynamicCache

    with torch.inference_mode():
        cache = DynamicCache(config=model.config)
        prefill = model(**inputs, cache=cache, use_cache=True, logits_to_keep=1)
        first = torch.log_softmax(prefill.logits[0, -1].float(), dim=-1)  # (vocab,)
        cache = prefill.cache
        prompt_mask = inputs["attention_mask"]  # (1, L)
        sums: list[float] = []
        for start in range(0, len(rows), SCORE_ROWS):
            group = rows[start:start + SCORE_ROWS]
            sums += _group_logprobs(model, cache, prompt_mask, first, group)
    return sums


def _group_logprobs(model, cache, prompt_mask, first, rows: list[list[int]]) -> list[float]:
    """One forward over `rows` (each row's tokens but its last, right-padded) on the prompt's cache,
    repeated for them; the cache is cut back to the prompt (one row) afterwards."""
    import torch

    device = prompt_mask.device
    n, width = len(rows), max(len(r) for r in rows) - 1
    ids = torch.zeros((n, width), dtype=torch.long, device=device)  # inputs: row[:-1]; targets: row[1:]
    targets = torch.zeros((n, width), dtype=torch.long, device=device)
    valid = torch.zeros((n, width), dtype=torch.bool, device=device)
    for k, row in enumerate(rows):
        m = len(row) - 1
        ids[k, :m] = torch.tensor(row[:-1], device=device)
        targets[k, :m] = torch.tensor(row[1:], device=device)
        valid[k, :m] = True
    later = (next_token_logprobs(model, cache, prompt_mask, ids, targets, valid) * valid).sum(dim=1)
    heads = first[torch.tensor([r[0] for r in rows], device=first.device)]
    return (heads.to(later.device) + later).tolist()


def next_token_logprobs(model, cache, prefix_mask, ids, targets, present):
    """One forward of the right-padded rows `ids` (n, width; `present`: a real token) on the
    prefix's cache, repeated for them: each position's log-probability of its `targets` token,
    (n, width). The cache is cut back to the prefix (one row) afterwards. --choices and the
    Decisions API score their options with it."""
    import torch

    device = prefix_mask.device
    n, width = ids.shape
    mask = torch.cat([prefix_mask.expand(n, -1), present.long()], dim=1)  # (n, L + width)
    positions = (int(prefix_mask.sum()) + torch.arange(width, device=device)).expand(n, -1)
    cache.batch_repeat_interleave(n)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache,
                   use_cache=True).logits  # (n, width, vocab)
    cache.crop(-width)
    cache.batch_select_indices(torch.tensor([0], device=device))
    return torch.log_softmax(logits.float(), dim=-1).gather(2, targets[..., None])[..., 0]
