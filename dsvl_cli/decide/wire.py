"""Decisions on the wire and on the screen: the API's response object, a conversation as the API's
`input`, the command line's short question flags, and the rows a table or a pipe shows.

No torch, no HTTP here: the server (serve/decisions.py), `--server` (engine/remote_decisions.py),
`dsvl decide` and batch all use these.
"""

from __future__ import annotations

from collections.abc import Callable

from dsvl_cli.decide.questions import parse_question
from dsvl_cli.errors import UsageError
from dsvl_cli.results import Result, Stats


def body(model: str, result: Result) -> dict:
    """The Decision object (openai's types/decision.py), dsvl's stats as an extra field."""
    tokens = result.stats.prompt_tokens
    return {"object": "decision", "model": model, "answers": result.answers or [],
            "usage": {"input_tokens": tokens,
                      "input_tokens_details": {"cached_tokens": result.stats.cached_tokens, "cache_write_tokens": 0},
                      "output_tokens": 0, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": tokens},
            "stats": result.stats.to_dict()}


def from_body(obj: dict, stats: Stats) -> Result:
    """A Decision object (from a server) back to the Result a local run gives."""
    answers = obj.get("answers")
    if not isinstance(answers, list):
        raise ValueError("no answers")
    return Result(answer=summary(answers), finish_reason="stop", stats=stats, answers=answers)


def to_input(conversation, image_ref: Callable) -> list[dict]:
    """The API's `input` for a conversation: system first, then each message, pictures before text."""
    items: list[dict] = []
    if conversation.system is not None:
        items.append({"role": "system", "content": conversation.system})
    for message in conversation.messages:
        if message.role == "assistant":
            items.append({"role": "assistant", "content": [{"type": "output_text", "text": message.text}]})
            continue
        parts = [{"type": "input_image", "image_url": image_ref(image)} for image in message.images]
        if message.text:
            parts.append({"type": "input_text", "text": message.text})
        items.append({"role": "user", "content": parts or ""})
    return items


def flag_question(kind: str, text: str) -> dict:
    """`--predicate STATEMENT`, `--choice 'QUESTION = a, b, c'`, `--score 'QUESTION = low, mid, high'`
    -> the API's question object (checked as any other)."""
    flag = f"--{kind}"
    if kind == "predicate":
        question = {"type": "predicate", "instructions": text}
    else:
        head, sep, tail = text.rpartition("=")
        options = [o.strip() for o in tail.split(",") if o.strip()]
        if not sep or not head.strip() or len(options) < 2:
            raise UsageError(f"{flag} {text[:60]!r}: write 'QUESTION = a, b, c' (at least 2 "
                             f"{'choices' if kind == 'choice' else 'levels, lowest first'})")
        key, field = ("choices", "value") if kind == "choice" else ("levels", "label")
        question = {"type": kind, "instructions": head.strip(), key: [{field: o} for o in options]}
    parse_question(question, flag)
    return question


def _text(value) -> str:
    """A value as one cell: booleans as JSON writes them, tabs and line breaks as spaces."""
    text = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return " ".join(text.splitlines()).replace("\t", " ")


def rows(answers: list[dict]) -> list[tuple[str, str, str, str, str]]:
    """(question, type, answer, confidence, distribution) per answer, as text."""
    out = []
    for k, a in enumerate(answers):
        who = _text(a.get("name") or str(k + 1))
        if a["type"] == "predicate":
            p = a["probability"]
            out.append((who, "predicate", "yes" if p >= 0.5 else "no", f"{max(p, 1 - p):.4f}", f"P(true)={p:.4f}"))
        elif a["type"] == "choice":
            spread = " ".join(f"{_text(e['value'])}={e['probability']:.4f}" for e in a["probabilities"])
            out.append((who, "choice", _text(a["choice"]), f"{a['confidence']:.4f}", spread))
        elif a["type"] == "score":
            spread = " ".join(f"{_text(e['label'])}={e['probability']:.4f}" for e in a["probabilities"])
            out.append((who, "score", f"{a['score']:.4f}", f"{a['confidence']:.4f}", spread))
        else:
            out.append((who, a["type"], "refused", "", ""))
    return out


def summary(answers: list[dict]) -> str:
    """Tab-separated lines (question, type, answer, confidence, distribution): what a pipe gets."""
    return "\n".join("\t".join(row) for row in rows(answers))
