"""One request in the engine loop: what it asked, its row's tokens, its logits processors, its text.

Everything the generation core does for one `generate` call is done here for one row, so that a
row's answer is the one plain `generate` gives (tested token for token, greedy):
- the logits processors are the ones `generate` would build for the row's settings
  (`_get_logits_processor` on the same GenerationConfig, dsvl's own merged in: the --logprobs
  recorder, the --schema / --regex grammar mask, through engine/core.py's `Generation.plan`),
  applied to the row's own ids (prompt and answer so far);
- greedy is the argmax of the float32 logits; sampling draws from the row's own torch.Generator,
  seeded with the request's seed, so a seeded answer does not depend on what else runs;
- the answer ends at EOS, at max_new_tokens (cut to the room left in the context), at a stop
  string, or when the request's stop event is set (client gone, Ctrl-C): finish_reason as `generate`'s.

Text goes to the request's sink as it becomes safe to show (engine/detokenize.py), then the Result,
then END. No torch at import.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dsvl_cli.engine.core import Generation
from dsvl_cli.engine.detokenize import AnswerText
from dsvl_cli.engine.suppress import SuppressedTokens
from dsvl_cli.results import Result, TextChunk

END = object()  # a request's last item
# transformers' processors that read only the scores (never the ids, the length or a state of their own)
# (transformers' SuppressTokensLogitsProcessor is swapped for SuppressedTokens in logits_processors)
STATELESS = frozenset({"SuppressedTokens", "TemperatureLogitsWarper", "TopKLogitsWarper", "TopPLogitsWarper",
                       "MinPLogitsWarper"})


@dataclass(eq=False)
class Request:
    """What a caller hands the loop. `sink` gets TextChunks, then a Result or a DsvlError, then END
    (called on the loop's thread: hand the items on, do not block)."""

    conversation: Any
    gen: Any  # GenerationSettings
    sink: Callable[[Any], None]
    stop: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.perf_counter)
    shared: int = 0  # most rows it ran beside (itself included); 0 until it runs
    outer: threading.Event | None = None  # the caller's own stop too (a batch's Ctrl-C, shared by many)

    @property
    def cancelled(self) -> bool:
        return self.stop.is_set() or (self.outer is not None and self.outer.is_set())

    def end(self, item) -> None:
        self.sink(item)
        self.sink(END)


def logits_processors(engine, plan: Generation, ids):
    """What `generate` builds for these settings, with dsvl's own processors (plan) merged in."""
    from transformers import LogitsProcessorList

    model = engine.model
    config, model_kwargs = model._prepare_generation_config(None, **plan.kwargs)
    processors = model._get_logits_processor(config, input_ids_seq_length=ids.shape[1], encoder_input_ids=ids,
                                             logits_processor=LogitsProcessorList(plan.logits_processors),
                                             device=ids.device, model_kwargs=model_kwargs)
    processors = [SuppressedTokens(p.suppress_tokens) if type(p).__name__ == "SuppressTokensLogitsProcessor" else p
                  for p in processors]
    return processors, bool(config.do_sample)


class Row:
    def __init__(self, engine, request: Request, plan: Generation, ids, digests: list[str], image_s: float):
        import torch

        self.engine, self.request, self.plan = engine, request, plan
        self.prompt_ids: list[int] = ids[0].tolist()
        self.digests = digests
        self.seq = ids  # (1, L + generated): what the processors see
        self.processors, self.sampling = logits_processors(engine, plan, ids)
        # rows whose processors read nothing but the logits, with equal settings, are processed together
        self.batchable = all(type(p).__name__ in STATELESS for p in self.processors)
        self.group = (self.sampling, tuple((type(p).__name__, _settings(p)) for p in self.processors))
        self.generator = None
        if self.sampling and request.gen.seed is not None:
            self.generator = torch.Generator(device=ids.device).manual_seed(int(request.gen.seed))
        self.text = AnswerText(engine.tokenizer, request.gen.stop)
        self.image_s = image_s
        self.cached = 0
        self.first_at: float | None = None
        self.last_at: float | None = None
        self.finish: str | None = None  # set when the row's answer has ended
        self._stopped = False
        self._shown = 0  # tokens whose logprobs went out with a chunk
        self.kv_cache = None  # its own cache, while it has not joined the running rows

    @property
    def last(self) -> int:
        return self.text.ids[-1]

    @property
    def real(self) -> int:
        """Tokens in this row's KV: the prompt and the answer but its last token (not fed yet)."""
        return len(self.prompt_ids) + len(self.text.ids) - 1

    def kv_ids(self) -> list[int]:
        return self.prompt_ids + self.text.ids[:-1]

    def choose(self, logits) -> int:
        """The next token from this row's (1, V) logits."""
        import torch

        scores = logits
        for processor in self.processors:  # all take (input_ids, scores): no per-call signature check
            scores = processor(self.seq, scores)
        if self.sampling:
            probs = torch.nn.functional.softmax(scores, dim=-1)
            token = int(torch.multinomial(probs, num_samples=1, generator=self.generator)[0, 0])
        else:
            token = int(torch.argmax(scores, dim=-1)[0])
        recorder = self.plan.recorder
        if recorder is not None:
            recorder.resolve(torch.tensor([token]), len(recorder.steps))
        return token

    def push(self, token: int) -> bool:
        """Add the chosen token; send the text it makes safe to show; True when the answer has ended."""
        import torch

        now = time.perf_counter()
        self.first_at, self.last_at = self.first_at or now, now
        if not self.batchable:  # only per-row processors read the row's ids
            self.seq = torch.cat([self.seq, self.seq.new_tensor([[token]])], dim=1)
        delta = self.text.add([token])
        if delta:
            entries = self.plan.logprob_entries(0, self.text.ids, self._shown)
            self.request.sink(TextChunk(delta, logprobs=entries or None))
            self._shown = len(self.text.ids)
        if token in self.plan.eos_ids or len(self.text.ids) >= self.plan.max_new_tokens:
            self.finish = "done"
        elif self.text.stopped:
            self.finish, self._stopped = "done", True
        return self.finish is not None

    def interrupt(self) -> None:
        self.finish = "interrupted"

    def result(self) -> Result:
        """Send the rest of the answer, the Result and END; return the Result."""
        answer, stopped, rest = self.text.finish()
        if rest:
            entries = self.plan.logprob_entries(0, self.text.ids, self._shown)
            self.request.sink(TextChunk(rest, logprobs=entries or None))
        ids = self.text.ids
        stats = self.plan.stats(prompt_tokens=len(self.prompt_ids), cached=self.cached, generated=len(ids),
                                image_s=self.image_s, first_at=self.first_at, last_at=self.last_at,
                                done_at=time.perf_counter())
        reason = self.plan.finish_reason(ids, stopped=stopped or self._stopped,
                                         interrupted=self.finish == "interrupted")
        result = self.plan.conclude(Result(answer=answer, finish_reason=reason, stats=stats, token_ids=ids))
        self.request.end(result)
        return result


def _settings(processor) -> str:
    return repr(sorted((k, v.tolist() if hasattr(v, "tolist") else v) for k, v in vars(processor).items()
                       if not k.startswith("_")))


def choose_all(rows: list[Row], logits) -> list[int]:
    """Each row's next token from the step's (B, V) logits: rows that can share their processors
    (STATELESS, equal settings) are processed as one (B', V) block, the others one by one."""
    import torch

    tokens: list[int | None] = [None] * len(rows)
    groups: dict = {}
    for k, row in enumerate(rows):
        if row.batchable:
            groups.setdefault(row.group, []).append(k)
        else:
            tokens[k] = row.choose(logits[k:k + 1])
    for members in groups.values():
        index = torch.tensor(members, device=logits.device)
        scores = logits.index_select(0, index)
        last = torch.tensor([[rows[k].last] for k in members], device=logits.device)
        for processor in rows[members[0]].processors:
            scores = processor(last, scores)
        if rows[members[0]].sampling:
            probs = torch.nn.functional.softmax(scores, dim=-1)
            picked = [int(torch.multinomial(probs[j:j + 1], 1, generator=rows[k].generator)[0, 0])
                      for j, k in enumerate(members)]
        else:
            picked = torch.argmax(scores, dim=-1).tolist()
        for k, token in zip(members, picked):
            tokens[k] = token
    return tokens
