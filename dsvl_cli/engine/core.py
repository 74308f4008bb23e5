"""The one generation core: what every `generate` call needs, the one call, and the stats.

Both ways the local engine generates go through a `Generation`: one question streamed with KV
reuse (engine/local.py) and several questions in one left-padded batch (engine/batched.py). What
they share is set up here, once: the context-length check, the sampling arguments, pad and EOS ids,
stop strings, the fast path's static cache and compile config, the seed, the peak-memory counter,
the stopping criteria, how an answer's finish_reason is decided and how its stats are counted.
`Generation.run` is the only place in dsvl that calls transformers' `generate` (so greedy output is
plain `generate`'s, token for token).

Logits processors go in `Generation.logits_processors`, and every caller gets them — ask, chat,
batch and serve, with or without the fast path (transformers applies them outside the compiled
decode step). `--logprobs` is one of them, kept first (`record_logprobs`, engine/logprobs.py);
`--schema` / `--regex` plug in after it: `plan` adds a GrammarMask (structured/grammar.py) with one
matcher per row (rows of one batch may have different formats, or none), and `conclude` gives each
row's Result its parsed `data` (structured/answers.py) and its logprobs. `--choices` is not a
generation at all: engine/scoring.py scores the labels with plain forward passes.

No torch at import; it is imported when a generation runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from dsvl_cli.errors import ContextLengthError
from dsvl_cli.results import Stats
from dsvl_cli.settings import GenerationSettings
from dsvl_cli.structured import answers
from dsvl_cli.structured.grammar import is_grammar
from dsvl_cli.structured.spec import AnswerFormat


@dataclass
class Generation:
    """One `generate` call over `rows` prompts of at most `prompt_tokens` tokens, set up."""

    engine: Any  # the LocalEngine: model, tokenizer, device, fast path
    gen: GenerationSettings
    prompt_tokens: int
    rows: int
    kwargs: dict
    started: float = field(default_factory=time.perf_counter)
    logits_processors: list = field(default_factory=list)
    formats: list[AnswerFormat | None] = field(default_factory=list)  # each row's --schema / --regex
    recorder: Any = None  # a logprobs.LogprobRecorder when gen.logprobs is set (--logprobs N)
    names: Any = None  # its logprobs.TokenNames

    @classmethod
    def plan(cls, engine, gen: GenerationSettings, *, prompt_tokens: int, rows: int = 1,
             started: float | None = None, formats: list[AnswerFormat | None] | None = None) -> Generation:
        """Sampling arguments with max_new_tokens cut to the room left in the context (raises
        ContextLengthError when there is none), and the grammar mask of rows with a format
        (`formats`: one per row; default: gen.answer_format for every row)."""
        limit = engine.context_length
        room = limit - prompt_tokens
        if room < 1:
            raise ContextLengthError(f"the prompt is {prompt_tokens} tokens, past the model's context length "
                                     f"of {limit}; shorten the question or use fewer images")
        kwargs = gen.replace(max_new_tokens=min(gen.max_new_tokens, room)).generate_kwargs()
        if gen.stop:
            kwargs["tokenizer"] = engine.tokenizer  # generate needs it to match stop strings
        kwargs["pad_token_id"] = engine.tokenizer.pad_token_id
        formats = list(formats) if formats is not None else [gen.answer_format] * rows
        plan = cls(engine, gen, prompt_tokens, rows, kwargs, started or time.perf_counter(), formats=formats)
        if gen.logprobs is not None:
            plan.record_logprobs()  # first: the recorder sees the raw logits
        elif not kwargs["do_sample"]:
            plan.suppress_once()
        mask = engine.grammars.mask(formats) if any(is_grammar(f) for f in formats) else None
        if mask is not None:
            plan.logits_processors.append(mask)
        return plan

    def conclude(self, result, row: int = 0):
        """Row `row`'s Result with its logprobs (--logprobs) and its parsed `data` (--schema)."""
        if self.recorder is not None:
            result.logprobs = self.logprob_entries(row, result.token_ids)
        return answers.conclude(result, self.formats[row] if row < len(self.formats) else None)

    def record_logprobs(self) -> None:
        """Record each step's raw log-probabilities (engine/logprobs.py): the recorder is the first
        logits processor. transformers applies its own processors before any of ours, so the two
        dsvl meets move right behind the recorder, in their order: the repetition penalty and the
        model's suppressed tokens (generation_config.suppress_tokens). The sampler sees the same logits."""
        from transformers import RepetitionPenaltyLogitsProcessor, SuppressTokensLogitsProcessor

        from dsvl_cli.engine.logprobs import LogprobRecorder, TokenNames

        self.recorder = LogprobRecorder(self.gen.logprobs)
        self.names = TokenNames(self.engine.tokenizer)
        moved: list = [self.recorder]
        penalty = self.kwargs.pop("repetition_penalty", None)
        if penalty is not None:
            moved.append(RepetitionPenaltyLogitsProcessor(penalty))
        suppressed = getattr(self.engine.model.generation_config, "suppress_tokens", None)
        if suppressed:
            self.kwargs["suppress_tokens"] = None
            moved.append(SuppressTokensLogitsProcessor(suppressed, device=self.engine.model.device))
        self.logits_processors[:0] = moved

    def suppress_once(self) -> None:
        """Greedy: the model's suppressed tokens through engine/suppress.py's mask built once (its
        docstring says why the place in the list does not matter for greedy decoding)."""
        suppressed = getattr(self.engine.model.generation_config, "suppress_tokens", None)
        if suppressed:
            import torch

            from dsvl_cli.engine.suppress import SuppressedTokens

            self.kwargs["suppress_tokens"] = None
            self.logits_processors.append(SuppressedTokens(torch.tensor(list(suppressed), device=self.engine.model.device)))

    def logprob_entries(self, row: int, ids: list[int], start: int = 0) -> list[dict] | None:
        """OpenAI `logprobs.content` entries of `row`'s tokens `ids[start:]` (None: not recorded)."""
        if self.recorder is None:
            return None
        return self.recorder.entries(self.names, row, start, len(ids), self.eos_ids)

    @property
    def max_new_tokens(self) -> int:
        return self.kwargs["max_new_tokens"]

    @property
    def eos_ids(self) -> set[int]:
        eos = self.engine.model.generation_config.eos_token_id
        return set(eos if isinstance(eos, list) else [eos])

    @property
    def cuda(self) -> bool:
        return self.engine.device.startswith("cuda")

    def use_cache(self, kv=None, *, keep: bool = False) -> None:
        """Generate into `kv` (a cache kept from an earlier turn), or on the fast path into a static
        cache sized for this call. `keep`: the caller keeps the cache afterwards (a chat)."""
        if kv is not None:
            self.kwargs["cache"] = kv
        fast = self.engine.fast
        if fast is not None:
            self.kwargs.update(fast.generate_kwargs(batch_size=self.rows, needed=self.prompt_tokens + self.max_new_tokens,
                                                    cache=kv, keep=keep))

    def run(self, inputs: dict, *, stopping: list, streamer=None):
        """THE call to transformers' `generate` (a GenerateDecoderOnlyOutput: sequences, cache)."""
        import torch
        from transformers import LogitsProcessorList, StoppingCriteriaList

        from dsvl_cli.engine.logprobs import resolving

        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.engine.device)
        if self.gen.seed is not None:
            torch.manual_seed(self.gen.seed)
        extra = {"logits_processor": LogitsProcessorList(self.logits_processors)} if self.logits_processors else {}
        with torch.inference_mode():
            out = self.engine.model.generate(**inputs, **self.kwargs, **extra,
                                             streamer=resolving(streamer, self.recorder),
                                             stopping_criteria=StoppingCriteriaList(stopping),
                                             return_dict_in_generate=True)
        if self.recorder is not None:
            self.recorder.close(out.sequences, inputs["input_ids"].shape[1])
        return out

    def peak_bytes(self) -> int | None:
        """Peak GPU memory since `run` started (None off CUDA)."""
        if not self.cuda:
            return None
        import torch

        return int(torch.cuda.max_memory_allocated(self.engine.device))

    def finish_reason(self, ids: list[int], *, stopped: bool, interrupted: bool) -> str:
        """stop (EOS or a stop string), length (max_new_tokens reached), or interrupted."""
        if (ids and ids[-1] in self.eos_ids) or stopped:
            return "stop"
        if len(ids) >= self.max_new_tokens:
            return "length"
        return "interrupted" if interrupted else "stop"

    def stats(self, *, prompt_tokens: int, generated: int, image_s: float, first_at: float | None,
              last_at: float | None, cached: int = 0, peak: int | None = None,
              done_at: float | None = None) -> Stats:
        """The stats of one answer: times from `started` (after the images were loaded); the total
        runs to `done_at`, else to the last token."""
        decode_s = (last_at - first_at) if first_at is not None and last_at is not None else 0.0
        return Stats(
            prompt_tokens=prompt_tokens,
            cached_tokens=cached,
            generated_tokens=generated,
            image_s=image_s,
            ttft_s=(first_at - self.started) if first_at is not None else 0.0,
            decode_tokens_per_s=(generated - 1) / decode_s if decode_s > 0 else 0.0,
            total_s=(done_at or last_at or time.perf_counter()) - self.started,
            peak_gpu_bytes=peak,
        )
