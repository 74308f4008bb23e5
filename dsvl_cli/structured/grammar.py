"""`--schema` / `--regex` as a grammar: compiled by llguidance, applied as a token mask in `generate`.

Why llguidance: it is the grammar engine vLLM, SGLang and mlx-vlm use; it compiles JSON Schema
lazily (no up-front automaton over the whole vocabulary: a new schema costs milliseconds, ~1 ms
on tiny-random) and computes a mask in tens of microseconds. Written by hand, a JSON Schema
grammar would be thousands of lines and never as complete.

What is decided here:
- Compact JSON: the grammar has no free whitespace (`whitespace_flexible: false`, separators "," and
  ":"), so a model cannot spend its tokens on newlines and tabs. A schema's own `x-guidance`
  options still win (they are llguidance's documented way to change this per schema).
- A schema or regex llguidance cannot compile is refused when it is parsed (`check`), with
  llguidance's reason, before any model loads: validation needs no tokenizer.
- `GrammarMask` is a transformers logits processor holding one `LLMatcher` per batch row (None
  for a row without a format). Each step it feeds every matcher the token its row just got, fills
  a bitmask (one bit per token) and sets disallowed logits to -inf. EOS is allowed only where the
  grammar is complete, and once the grammar can take nothing more EOS is the only token left, so
  a finished answer stops there. Transformers applies logits processors outside the model's
  forward, so on the fast path the mask stays outside the compiled decode step.
- A row that has ended (EOS, its own stop) is left unmasked: `generate` fills it with padding.

Limits: llguidance implements most of JSON Schema but not all (`not`, `if`/`then`, `uniqueItems`,
unknown `format`s are refused with its message). Regular expressions are Rust's `regex` syntax
(no look-around, no backreferences) and must match the whole answer.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from dsvl_cli.errors import UsageError

# AnswerFormat (structured/spec.py) is only named in annotations here: spec.py calls `check` below.

GRAMMAR_KINDS = ("json_schema", "regex")
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ",", "key_separator": ":"}
COMPILED_KEPT = 32  # compiled grammars kept per engine (serve sees the same few schemas again and again)


def is_grammar(fmt: AnswerFormat | None) -> bool:
    return fmt is not None and fmt.kind in GRAMMAR_KINDS


def shared_settings(gen):
    """What the rows of one batch must share of GenerationSettings `gen`: not a --schema or
    --regex, which is per row (each row has its own matcher; BatchItem.answer_format carries it)."""
    return gen.replace(answer_format=None) if is_grammar(gen.answer_format) else gen


def grammar_text(fmt: AnswerFormat) -> str:
    """llguidance's grammar for a format (not yet checked)."""
    from llguidance import LLMatcher

    if fmt.kind == "json_schema":
        return LLMatcher.grammar_from_json_schema(fmt.schema, defaults=JSON_OPTIONS)
    if fmt.kind == "regex":
        return LLMatcher.grammar_from_regex(fmt.regex)
    raise ValueError(f"{fmt.kind} is not a grammar")


def check(fmt: AnswerFormat, flag: str) -> None:
    """UsageError naming the schema (or regex) and llguidance's reason when it cannot compile it."""
    from llguidance import LLMatcher

    try:
        problem = LLMatcher.validate_grammar(grammar_text(fmt))
    except ValueError as err:  # not a JSON object (spec.py checks that first)
        problem = str(err)
    if problem:
        if fmt.kind == "regex":
            raise UsageError(f"{flag} {_shown(fmt)}: not a regular expression the grammar engine takes "
                             f"(Rust regex syntax): {_one_line(problem)}")
        raise UsageError(f"{flag} {_shown(fmt)}: the schema cannot be used for constrained decoding: "
                         f"{_one_line(problem)}")


def _shown(fmt: AnswerFormat) -> str:
    """The schema or regex as the user gave it, shortened (a regex quoted, as spec.py does)."""
    text = fmt.source if len(fmt.source) <= 60 else fmt.source[:57] + "..."
    return repr(text) if fmt.kind == "regex" else text


def _one_line(problem: str) -> str:
    """llguidance's message on one line: regex errors span several (a caret under the pattern)."""
    lines = [line.strip() for line in problem.splitlines() if line.strip()]
    for line in lines:
        if line.startswith("error:"):
            return line[len("error:"):].strip()
    text = lines[0] if lines else problem
    return text if len(text) <= 200 else text[:197] + "..."


class Grammars:
    """One engine's grammar state: llguidance's view of its tokenizer (built on first use: ~1 s on
    DeepSeek-VL's 100k vocabulary) and the last COMPILED_KEPT formats as ready matchers, copied
    per row (a copy is microseconds; compiling is about a millisecond)."""

    def __init__(self, hf_tokenizer, *, vocab_size: int, eos_ids: list[int]):
        self._hf, self.vocab_size, self.eos_ids = hf_tokenizer, vocab_size, list(eos_ids)
        self._tokenizer = None
        self._compiled: OrderedDict[AnswerFormat, object] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def tokenizer(self):
        with self._lock:
            if self._tokenizer is None:
                import llguidance.hf

                eos = self.eos_ids[0] if len(self.eos_ids) == 1 else self.eos_ids
                self._tokenizer = llguidance.hf.from_tokenizer(self._hf, n_vocab=self.vocab_size, eos_token=eos)
            return self._tokenizer

    def matcher(self, fmt: AnswerFormat):
        """A fresh LLMatcher for `fmt` (raises UsageError if llguidance refuses it for this tokenizer)."""
        from llguidance import LLMatcher

        tokenizer = self.tokenizer
        with self._lock:
            ready = self._compiled.pop(fmt, None)
            if ready is None:
                ready = LLMatcher(tokenizer, grammar_text(fmt), log_level=0)
                if ready.is_error():
                    raise UsageError(f"{_shown(fmt)}: cannot be used for constrained decoding: "
                                     f"{_one_line(ready.get_error())}")
            self._compiled[fmt] = ready
            while len(self._compiled) > COMPILED_KEPT:
                self._compiled.popitem(last=False)
            return ready.deep_copy()

    def mask(self, formats: list[AnswerFormat | None]) -> GrammarMask | None:
        """The logits processor for rows with these formats (None when no row has a grammar)."""
        if not any(is_grammar(f) for f in formats):
            return None
        return GrammarMask([self.matcher(f) if is_grammar(f) else None for f in formats], self.vocab_size,
                           set(self.eos_ids))


class GrammarMask:
    """A transformers logits processor: row r's logits masked by row r's matcher (see the module doc).

    One per `generate` call: the first call sees the prompt (nothing to feed), every later call
    sees each row's previous token at the end of `input_ids`."""

    def __init__(self, matchers: list, vocab_size: int, eos_ids: set[int]):
        from llguidance.torch import allocate_token_bitmask

        self.matchers = matchers
        self.eos_ids = eos_ids
        self.live = [m is not None for m in matchers]  # rows still constrained
        self.bitmask = allocate_token_bitmask(len(matchers), vocab_size)  # (B, ceil(V/32)) int32, CPU
        self._bits = self.bitmask.numpy()  # the same memory, as numpy
        # Where each row's mask is written (llguidance fills it in place, without the GIL).
        self._targets = [(self.bitmask[row].data_ptr(), self.bitmask.shape[1] * 4) for row in range(len(matchers))]
        self._shifts = None  # bit positions on the logits' device (unpacking off the CPU)
        self._started = False

    def __call__(self, input_ids, scores):
        """Per step about 20 us of llguidance and a few numpy/torch calls (benchmarks/structured_bench.py)."""
        if self._started:
            self._feed(input_ids[:, -1].tolist())
        self._started = True
        rows = [row for row, live in enumerate(self.live) if live]
        if not rows:
            return scores
        for row in rows:
            self.matchers[row].unsafe_compute_mask_ptr(*self._targets[row])
        every = len(rows) == len(self.live)
        vocab = scores.shape[-1]
        if scores.device.type == "cpu":  # numpy unpacks bits fastest here (~4x torch's shifts)
            blocked = unpack_blocked(self._bits if every else self._bits[rows], vocab)
        else:  # only the packed mask crosses to the device, unpacked there
            if self._shifts is None or self._shifts.device != scores.device:
                self._shifts = shifts_on(scores.device)
            packed = (self.bitmask if every else self.bitmask[rows]).to(scores.device, non_blocking=True)
            blocked = unpack_blocked_torch(packed, vocab, self._shifts)
        if every:
            return scores.masked_fill_(blocked, float("-inf"))
        index = torch_tensor(rows, scores.device)
        scores[index] = scores[index].masked_fill(blocked, float("-inf"))
        return scores

    def _feed(self, tokens: list[int]) -> None:
        """Each constrained row's new token to its matcher. A row whose token ends it (EOS) or that
        the matcher refuses (only the padding of a row that already ended) is no longer masked."""
        for row, token in enumerate(tokens):
            if not self.live[row]:
                continue
            matcher = self.matchers[row]
            if token in self.eos_ids or not matcher.consume_token(token):
                self.live[row] = False


def torch_tensor(values: list[int], device):
    import torch

    return torch.tensor(values, device=device)


def unpack_blocked(bits, vocab: int):
    """(R, W) int32 bitmask as numpy (bit k of word w: token 32 w + k allowed) -> (R, vocab) bool
    torch tensor on the CPU, True where blocked; tokens past the mask's 32 W are blocked."""
    import numpy as np
    import torch

    inverted = np.invert(np.ascontiguousarray(bits).view(np.uint8))
    width = min(vocab, inverted.shape[1] * 8)
    blocked = np.unpackbits(inverted, axis=-1, count=width, bitorder="little").view(np.bool_)
    if width < vocab:
        blocked = np.pad(blocked, ((0, 0), (0, vocab - width)), constant_values=True)
    return torch.from_numpy(blocked)


def unpack_blocked_torch(bits, vocab: int, shifts):
    """The same on any device, with torch ops (only the packed mask crosses to an accelerator)."""
    allowed = ((bits.unsqueeze(-1) >> shifts) & 1).view(bits.shape[0], -1)
    return _blocked_from(allowed, vocab)


def shifts_on(device):
    import torch

    return torch.arange(32, dtype=torch.int32, device=device)


def _blocked_from(allowed, vocab: int):
    import torch

    if allowed.shape[1] < vocab:  # logits past the grammar's vocabulary: never allowed
        allowed = torch.nn.functional.pad(allowed, (0, vocab - allowed.shape[1]), value=0)
    return allowed[:, :vocab] == 0
