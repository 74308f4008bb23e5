"""What the engine yields: typed chunks, the final result, and the stats every front end reports.

No torch here: renderers, the batch writer and the server import this freely.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Stats:
    """The `stats` object of every answer: the same keys in ask, chat, batch and serve (README, Output)."""

    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens whose KV was reused from an earlier turn
    generated_tokens: int = 0
    image_s: float = 0.0  # image load + preprocess
    ttft_s: float = 0.0  # from the start of the request (after image load) to the first new token
    decode_tokens_per_s: float = 0.0  # tokens after the first / time after the first
    total_s: float = 0.0
    peak_gpu_bytes: int | None = None  # CUDA only

    def to_dict(self) -> dict:
        data = asdict(self)
        for key in ("image_s", "ttft_s", "total_s"):
            data[key] = round(data[key], 4)
        data["decode_tokens_per_s"] = round(data["decode_tokens_per_s"], 2)
        if data["peak_gpu_bytes"] is None:
            del data["peak_gpu_bytes"]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Stats:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


@dataclass
class TextChunk:
    """A piece of the answer, as soon as it is decoded."""

    text: str
    logprobs: list[dict] | None = None  # --logprobs: entries of the tokens this piece came from (serve streams them)


@dataclass
class Result:
    """The whole answer: the stream's chunks joined, plus how it ended."""

    answer: str
    finish_reason: str  # stop, length, interrupted, error
    stats: Stats = field(default_factory=Stats)
    token_ids: list[int] = field(default_factory=list)
    # --schema: the answer parsed (None when it was cut before the JSON closed); json_answer says
    # that `data` belongs in the output (structured/answers.py sets both)
    data: Any = None
    json_answer: bool = False
    scores: list[dict] | None = None  # --choices: [{label, probability, logprob}], most probable first
    logprobs: list[dict] | None = None  # --logprobs: OpenAI's logprobs.content entries, one per token
    answers: list[dict] | None = None  # decisions: the API's answer objects, in question order

    def to_dict(self) -> dict:
        out = {"answer": self.answer, "finish_reason": self.finish_reason, "stats": self.stats.to_dict()}
        if self.json_answer:
            out["data"] = self.data
        if self.scores is not None:
            out["scores"] = self.scores
        if self.logprobs is not None:
            out["logprobs"] = {"content": self.logprobs}
        if self.answers is not None:
            out["answers"] = self.answers
        return out


Chunk = TextChunk | Result


def last_result(chunks: Iterable[Chunk]) -> Result:
    """Drain a stream and return its final Result (a stream always ends with exactly one)."""
    result = None
    for chunk in chunks:
        if isinstance(chunk, Result):
            result = chunk
    if result is None:
        raise RuntimeError("the stream ended without a result")
    return result
