"""The OpenAI Chat Completions message shape, mapped to and from dsvl's types in one place.

Three places speak it: the server reads requests (validated first by wire/protocol.py's pydantic
models), the HTTP client engine writes them (engine/remote.py, for `--server`), and `dsvl batch`
reads OpenAI batch files (batch/fields.py, through the same models). No pydantic, no httpx here.

Mapping, on purpose:
- `system` and `developer` messages <-> Conversation.system (several are joined by blank lines);
  an empty one removes DeepSeek-VL's default system prompt, as `--system ""` does.
- A user message's `image_url` parts <-> its images, which DeepSeek-VL's template places before
  the text; text parts are joined by newlines.
- `image_url` carries http(s) URLs and data: URIs only (IMAGE_URL): a client never makes a server
  read the server's own files.
- Sampling fields <-> GenerationSettings: `max_completion_tokens` (or the older `max_tokens`) is
  max_new_tokens; `top_k` and `repetition_penalty` are extensions, as in vLLM.
- The answer's format <-> GenerationSettings.answer_format: OpenAI's `response_format`
  (`json_schema` with its `schema`, `json_object` = any JSON object, `text` = none), and vLLM's
  `structured_outputs` (`json`, `regex`, `choice`) or its older `guided_json` / `guided_regex` /
  `guided_choice`, so clients written for vLLM work. `--server` sends a schema as `response_format`,
  a regex and labels as vLLM does. Labels (`choice`) are scored, not generated: the answer carries
  a top-level `scores` list (wire/chunks.py).
- `logprobs` + `top_logprobs` <-> --logprobs N.
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


# -- answers a program can use: logprobs; the answer's format is below ---------------------------
LOGPROB_FIELDS = ("logprobs", "top_logprobs")
MAX_CHOICES = 256  # labels in one request (each one a row of the scoring pass)
MAX_LABEL_CHARS = 1000


def logprob_changes(body: Mapping[str, Any]) -> dict:
    """GenerationSettings changes from `logprobs` / `top_logprobs` (UsageError naming the field).
    As OpenAI: top_logprobs needs logprobs true; logprobs true alone gives the chosen tokens'."""
    from dsvl_cli.errors import UsageError

    logprobs, top = body.get("logprobs"), body.get("top_logprobs")
    if logprobs is not None and not isinstance(logprobs, bool):
        raise UsageError("logprobs must be true or false")
    if top is not None and (isinstance(top, bool) or not isinstance(top, int)):
        raise UsageError("top_logprobs must be an integer")
    if top is not None and not logprobs:
        raise UsageError("top_logprobs needs logprobs: true")
    return {"logprobs": top or 0} if logprobs else {}


def logprob_fields(gen) -> dict:
    """The request body's fields for gen's --logprobs (what `--server` sends)."""
    return {"logprobs": True, "top_logprobs": gen.logprobs} if gen.logprobs is not None else {}


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
        elif kind in ("image_url", "video_url"):  # video_url: vLLM's; its frames are pictures
            url = part.get(kind)
            url = url.get("url") if isinstance(url, dict) else url
            if not isinstance(url, str):
                raise ValueError(f"{kind} part without a url")
            urls.append(url)
        elif kind == "file":
            urls.append(file_source(part.get("file")))
        else:
            raise ValueError(f"unsupported content part: {kind!r}")
    return "\n".join(texts), urls


def file_source(file: Any) -> str:
    """The data: URI of an OpenAI `file` part (`{"file_data": "data:application/pdf;base64,..."}`,
    or bare base64, which is a PDF). `file_id` names an upload this server never had: refused."""
    data = file.get("file_data") if isinstance(file, dict) else None
    if not isinstance(data, str) or not data:
        raise ValueError("a file part needs file.file_data (a data: URI or base64; file_id is not supported)")
    return data if data[:5].lower() == "data:" else "data:application/pdf;base64," + data


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


# -- the answer's format (structured/spec.py) ------------------------------------------------------

ANSWER_FORMAT_FIELDS = ("response_format", "structured_outputs", "guided_json", "guided_regex", "guided_choice")
_STRUCTURED_KEYS = ("json", "regex", "choice")  # vLLM's structured_outputs keys read here


def answer_format(body: Mapping[str, Any]):
    """The AnswerFormat a request body asks for, or None; UsageError names the field at fault."""
    from dsvl_cli.errors import UsageError

    given = [name for name in ANSWER_FORMAT_FIELDS if body.get(name) is not None]
    if given == ["response_format"] and isinstance(body["response_format"], Mapping) \
            and body["response_format"].get("type") == "text":
        return None
    if len(given) > 1:
        raise UsageError(f"{given[0]} and {given[1]}: give one answer format")
    if not given:
        return None
    name, value = given[0], body[given[0]]
    if name == "response_format":
        return _response_format(value)
    if name == "structured_outputs":
        if not isinstance(value, Mapping):
            raise UsageError("structured_outputs must be an object")
        keys = [k for k, v in value.items() if v is not None]
        unknown = [k for k in keys if k not in _STRUCTURED_KEYS]
        if unknown or len(keys) != 1:
            raise UsageError(f"structured_outputs: give one of {', '.join(_STRUCTURED_KEYS)}"
                             + (f" (not supported: {', '.join(unknown)})" if unknown else ""))
        name, value = f"structured_outputs.{keys[0]}", value[keys[0]]
    if name.endswith("choice"):
        return _choices(value, name)
    if name.endswith("regex"):
        from dsvl_cli.structured.spec import parse_regex

        if not isinstance(value, str):
            raise UsageError(f"{name} must be a string")
        return parse_regex(value, name)
    return _schema(value, name)


def _choices(value: Any, name: str):
    """vLLM's labels: scored, not generated (engine/scoring.py)."""
    from dsvl_cli.errors import UsageError
    from dsvl_cli.structured.spec import choices_format

    if isinstance(value, list) and (len(value) > MAX_CHOICES
                                    or any(isinstance(v, str) and len(v) > MAX_LABEL_CHARS for v in value)):
        raise UsageError(f"{name}: at most {MAX_CHOICES} labels of at most {MAX_LABEL_CHARS} characters")
    return choices_format(value, source=name, flag=name)


def _response_format(value: Any):
    from dsvl_cli.errors import UsageError
    from dsvl_cli.structured.spec import schema_format

    kind = value.get("type") if isinstance(value, Mapping) else None
    if kind == "json_object":
        return schema_format({"type": "object"}, source="json_object", flag="response_format")
    if kind != "json_schema":
        raise UsageError("response_format.type must be text, json_object or json_schema")
    spec = value.get("json_schema")
    if not isinstance(spec, Mapping) or spec.get("schema") is None:
        raise UsageError("response_format.json_schema.schema: a JSON Schema is required")
    return _schema(spec["schema"], "response_format.json_schema.schema")


def _schema(value: Any, name: str):
    """A schema given as an object, or as JSON text (vLLM accepts both for guided_json)."""
    import json

    from dsvl_cli.errors import UsageError, load_json
    from dsvl_cli.structured.spec import schema_format

    if isinstance(value, str):
        try:
            value = load_json(value)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{name}: not JSON ({exc.msg})") from None
    return schema_format(value, source=json.dumps(value, ensure_ascii=False) if isinstance(value, Mapping) else "",
                         flag=name)


def answer_format_fields(fmt) -> dict:
    """The body fields that ask for `fmt` (what `--server` sends): a schema as OpenAI's
    response_format, a regex and labels as vLLM's structured_outputs."""
    if fmt is None:
        return {}
    if fmt.kind == "json_schema":
        return {"response_format": {"type": "json_schema",
                                    "json_schema": {"name": "answer", "schema": fmt.schema_dict, "strict": True}}}
    if fmt.kind == "regex":
        return {"structured_outputs": {"regex": fmt.regex}}
    return {"structured_outputs": {"choice": list(fmt.choices)}}
