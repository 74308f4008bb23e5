"""Chat Completions answers on the wire, both ways: what `dsvl serve` sends (a `chat.completion`,
the chunks of a stream) and what the `--server` / `--keep-alive` client reads back from them.

dsvl's extras ride beside OpenAI's fields, where any OpenAI client ignores them: `stats` (dsvl's
Stats), `dsvl_finish_reason` (`interrupted` is sent as OpenAI's `stop`), `scores` (the labels of a
choice, most probable first). Reading is plain dict work, not pydantic: `dsvl ask --server` and
`--keep-alive` start in a fraction of a second and pydantic's import would be a large part of it.
A chunk of the wrong shape from another server is read as far as it makes sense (never a crash);
its `error` object, if any, is returned for wire/errors.py to map.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from dsvl_cli.results import Result, Stats

OPENAI_FINISH = {"stop": "stop", "length": "length", "interrupted": "stop"}


# -- sent: what dsvl serve answers ----------------------------------------------------------------

def new_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex[:24]


def usage(stats: Stats) -> dict:
    return {"prompt_tokens": stats.prompt_tokens, "completion_tokens": stats.generated_tokens,
            "total_tokens": stats.prompt_tokens + stats.generated_tokens,
            "prompt_tokens_details": {"cached_tokens": stats.cached_tokens}}


def completion(cid: str, model: str, result: Result) -> dict:
    """A non-streamed `chat.completion`, plus dsvl's stats and finish_reason as extra fields (and
    `scores`, each label's probability, when the request asked for a choice)."""
    return {
        "id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": result.answer},
                     "logprobs": _logprob_list(result.logprobs),
                     "finish_reason": OPENAI_FINISH.get(result.finish_reason, "stop")}],
        "usage": usage(result.stats),
        "stats": result.stats.to_dict(),
        "dsvl_finish_reason": result.finish_reason,
        **_scores(result),
    }


def chunk(cid: str, model: str, delta: dict, finish: str | None = None, *, logprobs: list[dict] | None = None,
          **extra) -> dict:
    """One `chat.completion.chunk` of a stream (`logprobs`: the entries of this chunk's tokens)."""
    return {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": _logprob_list(logprobs), "finish_reason": finish}],
            **extra}


def final_chunk(cid: str, model: str, result: Result, logprobs: list[dict] | None = None) -> dict:
    """The finish chunk: dsvl's stats, the label `scores` of a choice, and the logprob entries of
    tokens no content chunk carried yet."""
    return chunk(cid, model, {}, OPENAI_FINISH.get(result.finish_reason, "stop"), logprobs=logprobs,
                 stats=result.stats.to_dict(), dsvl_finish_reason=result.finish_reason, **_scores(result))


def _logprob_list(entries: list[dict] | None) -> dict | None:
    return None if entries is None else {"content": entries, "refusal": None}


def _scores(result: Result) -> dict:
    return {} if result.scores is None else {"scores": result.scores}


def usage_chunk(cid: str, model: str, result: Result) -> dict:
    """The extra last chunk OpenAI sends with `stream_options: {include_usage: true}`."""
    return {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [], "usage": usage(result.stats)}


# -- read back: what the client makes of a chunk ------------------------------------------------

@dataclass
class Piece:
    """One choice's part of a chunk: its text (may be ""), the logprob entries of its tokens, and
    the finish reason when the answer ends here (dsvl's own when the server is dsvl's)."""

    text: str = ""
    logprobs: list[dict] | None = None
    finish: str | None = None


@dataclass
class Received:
    """One chunk of a stream, read: its pieces and what rides with them."""

    pieces: list[Piece] = field(default_factory=list)
    model: str | None = None
    usage: dict | None = None
    stats: dict | None = None  # dsvl's, with the finish piece
    scores: list | None = None
    error: dict | None = None  # the stream was cut by an error (OpenAI's error object)


def read_chunk(obj: dict) -> Received:
    """What a `chat.completion.chunk` (or an error event) says, shape by shape, fields of the wrong
    type left out."""
    got = Received(model=_of(obj.get("model"), str), usage=_of(obj.get("usage"), dict))
    if "error" in obj:
        got.error = obj["error"] if isinstance(obj["error"], dict) else {"message": str(obj["error"])}
        return got
    for choice in _of(obj.get("choices"), list) or []:
        if not isinstance(choice, dict):
            continue
        delta = _of(choice.get("delta"), dict) or {}
        entries = _of((_of(choice.get("logprobs"), dict) or {}).get("content"), list) or None
        piece = Piece(_of(delta.get("content"), str) or "", entries)
        if choice.get("finish_reason"):
            piece.finish = _of(obj.get("dsvl_finish_reason"), str) or str(choice["finish_reason"])
            got.stats, got.scores = _of(obj.get("stats"), dict), _of(obj.get("scores"), list)
        got.pieces.append(piece)
    return got


def _of(value, kind: type):
    return value if isinstance(value, kind) else None
