"""`--logprobs N`: the log-probability of every generated token and its top-N alternatives, recorded
inside the one `generate` call (engine/core.py) and written in OpenAI's `logprobs.content[]` shape.

What is recorded: log_softmax of the model's own logits at each step (the `output_logits` of
`generate`), BEFORE the repetition penalty, the model's suppressed tokens (its generation config),
temperature, top-k, top-p and any grammar mask: what OpenAI reports and vLLM does by default
(`raw_logprobs`). So the numbers say what the model thinks, whatever sampling then did with it;
a greedy answer's token is the top-1 alternative unless a penalty or a suppressed token intervened.

How: `LogprobRecorder` is the first logits processor of the call. At each step it keeps the step's
log-probabilities (rows x vocab) until the chosen tokens are known: when the streamer is handed
them (`resolving` wraps the streamer), at the next step (the new column of `input_ids`), or at the
end (`close`, from the returned sequences). Only the chosen token's value and the top N are kept
per step, on the CPU. Transformers would put a custom processor after its own repetition penalty,
so `Generation.plan` moves the penalty behind the recorder (same logits for the sampler).

Works the same for one row or a left-padded batch (one list per row; the steps after a row ended
are cut by the caller, who knows each row's own length), with streaming and on the fast path
(the processor runs outside the compiled decode step).

An entry: {"token": text, "logprob": float, "bytes": [utf-8 bytes], "top_logprobs": [{"token",
"logprob", "bytes"}, ... N, most probable first]}. A token that is part of a UTF-8 character has
its own bytes and a text with U+FFFD, as OpenAI's. The end-of-sentence token that ends an answer
is not listed (it is not part of the answer; OpenAI lists none either). -inf becomes -9999.0
(vLLM's choice: JSON has no infinity). No torch at import.
"""

from __future__ import annotations

from typing import Any

FLOOR = -9999.0


class LogprobRecorder:
    """A transformers logits processor that records, returns the scores unchanged."""

    def __init__(self, top_n: int):
        self.top_n = top_n
        self.steps: list[tuple[list[int], list[float], list[list[int]], list[list[float]]]] = []
        self._pending = None  # (rows, vocab) log-probabilities of the step whose tokens are not known yet

    def __call__(self, input_ids, scores):
        if self._pending is not None:
            self._resolve(input_ids[:, -1])
        import torch

        self._pending = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def resolve(self, tokens, step: int) -> None:
        """The chosen tokens (rows,) of step `step` (from the streamer; a deferred stop check hands
        them one step late, when the next step has resolved them already)."""
        if self._pending is not None and len(self.steps) == step:
            self._resolve(tokens.reshape(-1))

    def close(self, sequences, prompt_len: int) -> None:
        """After `generate`: resolve the last step from the returned sequences (rows, L + new)."""
        generated = sequences.shape[1] - prompt_len
        if self._pending is not None and len(self.steps) < generated:
            self._resolve(sequences[:, -1])
        del self.steps[max(generated, 0):]  # steps a deferred stop check ran and undid
        self._pending = None

    def _resolve(self, tokens) -> None:
        logprobs, self._pending = self._pending, None
        tokens = tokens.to(logprobs.device).long()
        chosen = logprobs.gather(1, tokens[:, None])[:, 0]
        if self.top_n:
            values, ids = logprobs.topk(self.top_n, dim=-1)
            top = (ids.tolist(), values.tolist())
        else:
            top = ([[] for _ in range(logprobs.shape[0])],) * 2
        self.steps.append((tokens.tolist(), chosen.tolist(), *top))

    def entries(self, names: TokenNames, row: int, start: int, end: int, eos_ids: set) -> list[dict]:
        """OpenAI entries for tokens [start, end) of `row` (EOS tokens left out)."""
        out = []
        for ids, chosen, top_ids, top_values in self.steps[start:end]:
            if ids[row] in eos_ids:
                continue
            entry = names.entry(ids[row], chosen[row])
            entry["top_logprobs"] = [names.entry(i, v) for i, v in zip(top_ids[row], top_values[row])]
            out.append(entry)
        return out


def resolving(streamer, recorder: LogprobRecorder | None):
    """`streamer` with the recorder told each step's tokens first (None: no streamer)."""
    if recorder is None or streamer is None:
        return streamer
    return _Resolving(streamer, recorder)


class _Resolving:
    def __init__(self, streamer, recorder: LogprobRecorder):
        self.streamer, self.recorder, self.puts = streamer, recorder, 0

    def put(self, value) -> None:
        if self.puts:  # generate first puts the prompt, then each step's tokens
            self.recorder.resolve(value, self.puts - 1)
        self.puts += 1
        self.streamer.put(value)

    def end(self) -> None:
        self.streamer.end()


class TokenNames:
    """Token id -> (text, UTF-8 bytes), through the byte-level alphabet when the tokenizer has one
    (one per generation: it memoizes the ids it has named)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        decoder = str(getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", ""))
        self.byte_level = "ByteLevel" in decoder
        self.alphabet = {ch: b for b, ch in _bytes_to_unicode().items()} if self.byte_level else {}
        self._names: dict[int, tuple[str, list[int]]] = {}

    def name(self, token_id: int) -> tuple[str, list[int]]:
        found = self._names.get(token_id)
        if found is None:
            piece = self.tokenizer.convert_ids_to_tokens(token_id)
            if self.byte_level and isinstance(piece, str) and piece and all(ch in self.alphabet for ch in piece):
                raw = bytes(self.alphabet[ch] for ch in piece)
            else:  # special tokens, other tokenizers
                raw = self.tokenizer.decode([token_id], skip_special_tokens=False).encode("utf-8")
            found = self._names[token_id] = (raw.decode("utf-8", errors="replace"), list(raw))
        return found

    def entry(self, token_id: int, logprob: float) -> dict[str, Any]:
        text, raw = self.name(token_id)
        return {"token": text, "logprob": max(logprob, FLOOR), "bytes": raw}


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet: each byte as a printable character (tokenizers' ByteLevel)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars
