"""The OpenAI Chat Completions message shape, mapped to and from dsvl's types in one place.

Three places speak it: the server reads requests (serve/protocol.py validates them with pydantic
first), the HTTP client engine writes them (engine/remote.py, for `--server`), and `dsvl batch`
reads OpenAI batch files (batch/inputs.py). No pydantic, no requests here.

Mapping, on purpose:
- `system` and `developer` messages <-> Conversation.system (several are joined by blank lines);
  an empty one removes DeepSeek-VL's default system prompt, as `--system ""` does.
- A user message's `image_url` parts <-> its images, which DeepSeek-VL's template places before
  the text; text parts are joined by newlines.
- `image_url` carries http(s) URLs and data: URIs only (IMAGE_URL): a client never makes a server
  read the server's own files.
- Sampling fields <-> GenerationSettings: `max_completion_tokens` (or the older `max_tokens`) is
  max_new_tokens; `top_k` and `repetition_penalty` are extensions, as in vLLM.
- `logprobs` + `top_logprobs` <-> --logprobs N; vLLM's `structured_outputs: {"choice": [...]}`
  (or its older `guided_choice`) <-> --choices: the labels are scored, and the answer carries a
  top-level `scores` list (serve/protocol.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

IMAGE_URL = re.compile(r"^(https?://|data:)", re.IGNORECASE)
# OpenAI body field -> GenerationSettings field; the first of the two max fields that is set wins.
SAMPLING_FIELDS = {
    "max_completion_tokens": "max_new_tokens", "max_tokens": "max_new_tokens", "temperature": "temperature",
    "top_p": "top_p", "top_k": "top_k", "repetition_penalty": "repetition_penalty", "seed": "seed",
    "stop": "stop",
}


def settings_changes(body: Mapping[str, Any]) -> dict:
    """GenerationSettings changes from a body's sampling fields (absent or null ones left out; a
    `stop` string becomes a one-string tuple). Types are the caller's to check."""
    changes: dict = {}
    for name, field in SAMPLING_FIELDS.items():
        value = body.get(name)
        if value is None or field in changes:
            continue
        if field == "stop":
            value = (value,) if isinstance(value, str) else tuple(s for s in value if s)
        changes[field] = value
    return changes


def sampling_fields(gen) -> dict:
    """The request body's sampling fields for GenerationSettings `gen` (what `--server` sends)."""
    body = {"max_tokens": gen.max_new_tokens, "temperature": gen.temperature}
    optional = {"top_p": gen.top_p, "top_k": gen.top_k, "repetition_penalty": gen.repetition_penalty,
                "seed": gen.seed, "stop": list(gen.stop) or None}
    body.update({k: v for k, v in optional.items() if v is not None})
    return body


# -- answers a program can use: logprobs and vLLM's choice (label scoring) ---------------------------
SCORE_FIELDS = ("logprobs", "top_logprobs", "structured_outputs", "guided_choice")
MAX_CHOICES = 256  # labels in one request (each one a row of the scoring pass)
MAX_LABEL_CHARS = 1000


def score_changes(body: Mapping[str, Any]) -> dict:
    """GenerationSettings changes from `logprobs` / `top_logprobs` (OpenAI) and vLLM's
    `structured_outputs: {"choice": [...]}` or older `guided_choice: [...]` (UsageError naming the
    field). As OpenAI: top_logprobs needs logprobs true; logprobs true alone gives the chosen tokens'."""
    from dsvl_cli.errors import UsageError
    from dsvl_cli.structured.spec import choices_format

    changes: dict = {}
    logprobs, top = body.get("logprobs"), body.get("top_logprobs")
    if logprobs is not None and not isinstance(logprobs, bool):
        raise UsageError("logprobs must be true or false")
    if top is not None and (isinstance(top, bool) or not isinstance(top, int)):
        raise UsageError("top_logprobs must be an integer")
    if top is not None and not logprobs:
        raise UsageError("top_logprobs needs logprobs: true")
    if logprobs:
        changes["logprobs"] = top or 0
    structured, guided = body.get("structured_outputs"), body.get("guided_choice")
    if structured is not None:
        if not isinstance(structured, Mapping) or set(structured) - {"choice"}:
            raise UsageError("structured_outputs: only {\"choice\": [labels]} is supported here")
        if guided is not None:
            raise UsageError("give structured_outputs.choice or guided_choice, not both")
        guided, field = structured.get("choice"), "structured_outputs.choice"
    else:
        field = "guided_choice"
    if guided is not None:
        if isinstance(guided, list) and (len(guided) > MAX_CHOICES
                                         or any(isinstance(g, str) and len(g) > MAX_LABEL_CHARS for g in guided)):
            raise UsageError(f"{field}: at most {MAX_CHOICES} labels of at most {MAX_LABEL_CHARS} characters")
        changes["answer_format"] = choices_format(guided, source=field, flag=field)
    return changes


def score_fields(gen) -> dict:
    """The request body's fields for gen's --choices and --logprobs (what `--server` sends)."""
    body: dict = {}
    if gen.answer_format is not None and gen.answer_format.kind == "choices":
        body["structured_outputs"] = {"choice": list(gen.answer_format.choices)}
    if gen.logprobs is not None:
        body.update(logprobs=True, top_logprobs=gen.logprobs)
    return body


def split_content(content: Any) -> tuple[str, list[str]]:
    """(text, image URLs) of a message's content: None, a string, or a list of `text` and
    `image_url` parts (dicts). ValueError names what is malformed."""
    if content is None or isinstance(content, str):
        return content or "", []
    if not isinstance(content, list):
        raise ValueError("message content must be a string or a list of parts")
    texts, urls = [], []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url":
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            if not isinstance(url, str):
                raise ValueError("image_url part without a url")
            urls.append(url)
        else:
            raise ValueError(f"unsupported content part: {kind!r}")
    return "\n".join(texts), urls


def to_messages(conversation, image_ref: Callable[[Any], str]) -> list[dict]:
    """A Conversation as OpenAI messages; `image_ref(loaded_image)` gives each image's URL."""
    messages: list[dict] = []
    if conversation.system is not None:
        messages.append({"role": "system", "content": conversation.system})
    for m in conversation.messages:
        if m.role == "assistant":
            messages.append({"role": "assistant", "content": m.text})
            continue
        parts = [{"type": "image_url", "image_url": {"url": image_ref(i)}} for i in m.images]
        parts.append({"type": "text", "text": m.text})
        messages.append({"role": "user", "content": parts})
    return messages
