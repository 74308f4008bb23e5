"""`--server` / `--keep-alive` for typed questions: one `POST /v1/decisions` instead of a chat completion.

The request carries the conversation as the API's `input` (pictures as RemoteEngine sends them to
the chat API: URLs as they are, other sources as lossless PNG data: URIs) and the questions in the
API's shape; the answer object comes back as the Result a local run gives (`answers`, and dsvl's
stats when the server is dsvl's; otherwise what `usage` and the client's clock tell).
"""

from __future__ import annotations

import time

from dsvl_cli.decide import wire
from dsvl_cli.errors import GenerationError
from dsvl_cli.results import Result, Stats


def decide(remote, conversation, gen) -> Result:
    """The Result of asking gen's questions about `conversation` on the server behind `remote`."""
    started = time.perf_counter()
    questions = gen.answer_format.questions
    payload = {"model": remote.requested_model or "default", "input": wire.to_input(conversation, remote._image_ref),
               "questions": [q.to_api() for q in questions]}
    response = remote._request("POST", "/v1/decisions", json=payload)
    obj = remote._server_json(response.content)
    remote._note_model(obj.get("model"))
    if isinstance(obj.get("stats"), dict):
        stats = Stats.from_dict(obj["stats"])
    else:
        usage = obj.get("usage") or {}
        stats = Stats(prompt_tokens=int(usage.get("input_tokens", 0)), total_s=time.perf_counter() - started)
    try:
        result = wire.from_body(obj, stats)
    except (ValueError, KeyError, TypeError):
        raise GenerationError(f"server {remote.url} sent a decision without answers") from None
    if len(result.answers) != len(questions):
        raise GenerationError(f"server {remote.url} answered {len(result.answers)} of {len(questions)} questions")
    return result
