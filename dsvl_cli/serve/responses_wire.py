"""OpenAI Responses shapes: a `/v1/responses` body -> dsvl's types; the response object and its stream events.

Kept apart from the routes (responses.py) as protocol.py is for chat completions; pydantic checks
the top-level fields, the `input` items are read here by hand so that each refusal names its place
(`input.2.content.1: ...`).

Mapping, on purpose:
- `input` as a string is one user message. As a list: messages (`type: "message"` or no type)
  with role user, system, developer or assistant; content a string or a list of parts:
  `input_text`, `input_image` (`image_url`: an http(s) URL or a data: URI, the chat API's media
  policy), and `output_text` / `refusal` in assistant messages. Anything else (files, audio, tool
  calls, `file_id` pictures) is a 400 naming the item: this server has no files API and calls no
  tools. The new input must end with a user message (the model answers it).
- `instructions` and the system/developer messages of the input make Conversation.system, joined
  by blank lines (an empty one removes DeepSeek-VL's default prompt, as the chat API). As OpenAI:
  the instructions of an earlier response are not carried on by `previous_response_id`, its
  system and developer input messages are (they are part of the conversation).
- Sampling fields left out fall back to the server's defaults (greedy unless `dsvl serve -t`),
  as the chat API. `text.format`: `text`, `json_object`, or `json_schema` with `schema` (the
  grammar path of `--schema`).
- status: `completed`; `incomplete` with `incomplete_details.reason: max_output_tokens` when the
  answer was cut by the token limit. `usage.input_tokens_details.cached_tokens` is the engine's
  count of prompt tokens whose KV it reused. dsvl's `stats` ride along as an extra field.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from dsvl_cli import wire
from dsvl_cli.conversation import Message, check_text
from dsvl_cli.errors import ImageLoadError, UsageError
from dsvl_cli.results import Result
from dsvl_cli.serve.protocol import pictures_of
from dsvl_cli.wire.protocol import SEED_RANGE
from dsvl_cli.settings import GenerationSettings

ROLES = ("user", "system", "developer", "assistant")
TEXT_PARTS = {"user": ("input_text",), "system": ("input_text",), "developer": ("input_text",),
              "assistant": ("output_text", "input_text", "refusal")}


class TextConfig(BaseModel):
    model_config = ConfigDict(extra="ignore")
    format: dict | None = None


class ResponsesRequest(BaseModel):
    # Unknown fields (reasoning, include, user, service_tier...) are ignored, as the chat API does.
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)
    model: str | None = None
    input: Any  # required; a string or a list of items (read_input checks each)
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=1, le=1 << 31)
    temperature: float | None = Field(None, ge=0, le=100)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=1, le=1 << 31)  # extensions, as the chat API
    repetition_penalty: float | None = Field(None, gt=0, le=100)
    seed: int | None = Field(None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    stream: bool = False
    store: bool = True
    previous_response_id: str | None = Field(None, max_length=200)
    text: TextConfig | None = None
    metadata: dict[str, str] | None = None
    tools: list[dict] | None = None
    background: bool | None = None
    conversation: Any = None
    prompt: Any = None

    def refuse_unsupported(self) -> None:
        """Fields whose meaning this server cannot give: a 400 rather than an answer that ignores them."""
        if self.tools:
            raise UsageError("tools: this server calls no tools (send tools: [] or leave it out)")
        if self.background:
            raise UsageError("background: this server answers in the foreground only")
        if self.conversation is not None:
            raise UsageError("conversation: the Conversations API is not served; use previous_response_id")
        if self.prompt is not None:
            raise UsageError("prompt: stored prompt templates are not served; send input and instructions")


@dataclass
class RequestInput:
    """The new input of one request: system texts, then messages as (role, text, image URLs)."""

    systems: list[str] = field(default_factory=list)
    messages: list[tuple[str, str, list[str]]] = field(default_factory=list)

    @property
    def chars(self) -> int:
        return sum(len(s) for s in self.systems) + sum(len(text) for _, text, _ in self.messages)

    def sources(self) -> list[str]:
        """Every distinct image URL, in order of first use (each is loaded once)."""
        return list(dict.fromkeys(url for _, _, urls in self.messages for url in urls))

    def build(self, images: Mapping[str, Any]) -> list[Message]:
        """The turn's messages; `images` maps each source to its picture (any stand-in to count tokens)."""
        return [Message(role, text, pictures_of(images, urls)) for role, text, urls in self.messages]


def read_input(req: ResponsesRequest) -> RequestInput:
    """The request's input, every item checked before anything is loaded; the model answers the
    last message, so it must be the user's."""
    turn = read_items(req.input)
    if not turn.messages or turn.messages[-1][0] != "user":
        raise UsageError("input: the last message must be a user message (the model answers it)")
    return turn


def read_items(value: Any, json_text: Callable[[Any, str], str] | None = None) -> RequestInput:
    """A Responses-shaped `input` (a string, or a list of message items; the Decisions API's too),
    checked item by item (UsageError / ImageLoadError name the item). `json_text`: what an
    `input_json` part of a user message becomes (the Decisions API's); None: no such part here."""
    if isinstance(value, str):
        return RequestInput(messages=[("user", check_text(value, "input"), [])])
    if not isinstance(value, list) or not value:
        raise UsageError("input: give a string or a list of at least one message")
    turn = RequestInput()
    for index, item in enumerate(value):
        where = f"input.{index}"
        if not isinstance(item, dict):
            raise UsageError(f"{where}: an input item is an object (a message)")
        kind = item.get("type", "message")
        if kind != "message":
            raise UsageError(f"{where}: items of type {kind!r} are not supported (this server calls no tools; "
                             "send messages)")
        role = item.get("role")
        if role not in ROLES:
            raise UsageError(f"{where}.role: must be one of {', '.join(ROLES)}")
        text, urls = _content(item.get("content"), role, where, json_text)
        check_text(text, f"{where} ({role})")
        if role in ("system", "developer"):
            turn.systems.append(text)
        else:
            turn.messages.append((role, text, urls))
    return turn


def _content(content: Any, role: str, where: str, json_text) -> tuple[str, list[str]]:
    """(text, image URLs) of one message's content; images go before the text in the prompt."""
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise UsageError(f"{where}.content: must be a string or a list of content parts")
    texts, urls = [], []
    json_parts = ("input_json",) if json_text is not None and role == "user" else ()
    for k, part in enumerate(content):
        at = f"{where}.content.{k}"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in json_parts:
            texts.append(json_text(part.get("data"), at))
        elif kind in TEXT_PARTS[role]:
            key = "refusal" if kind == "refusal" else "text"
            if not isinstance(part.get(key), str):
                raise UsageError(f"{at}: a {kind} part needs `{key}`")
            texts.append(part[key])
        elif kind == "input_image" and role == "user":
            urls.append(image_url(part, at))
        elif kind == "input_image":
            raise UsageError(f"{at}: a {role} message cannot hold images")
        else:
            raise UsageError(f"{at}: unsupported content type {kind!r} in a {role} message "
                             f"(supported: {', '.join((*TEXT_PARTS[role], *json_parts, 'input_image'))})")
    return "\n".join(texts), urls


def image_url(part: dict, at: str) -> str:
    url = part.get("image_url")
    if isinstance(url, dict):  # the chat API's shape, as some clients send it
        url = url.get("url")
    if url is None and part.get("file_id") is not None:
        raise UsageError(f"{at}: file_id pictures need a files API this server does not have; send image_url")
    if not isinstance(url, str):
        raise UsageError(f"{at}: an input_image part needs `image_url`")
    if not wire.IMAGE_URL.match(url):
        shown = url if len(url) <= 80 else url[:60] + "…"
        raise ImageLoadError(shown, "image_url must be an http(s) URL or a data: URI")
    return url


def generation_settings(req: ResponsesRequest, defaults: GenerationSettings) -> GenerationSettings:
    """The server's defaults, with what the request sets; `text.format` as the answer's format."""
    body = {"max_tokens": req.max_output_tokens, "temperature": req.temperature, "top_p": req.top_p,
            "top_k": req.top_k, "repetition_penalty": req.repetition_penalty, "seed": req.seed}
    gen = defaults.replace(**wire.settings_changes(body))
    fmt = req.text.format if req.text is not None else None
    if fmt is None or fmt.get("type") == "text":
        return gen
    if fmt.get("type") == "json_object":
        return gen.replace(answer_format=wire.answer_format({"response_format": {"type": "json_object"}}))
    if fmt.get("type") != "json_schema":
        raise UsageError("text.format.type must be text, json_object or json_schema")
    if not isinstance(fmt.get("schema"), dict):
        raise UsageError("text.format.schema: a JSON Schema object is required")
    from dsvl_cli.structured.spec import schema_format

    schema = fmt["schema"]
    return gen.replace(answer_format=schema_format(schema, source=str(fmt.get("name") or "schema"),
                                                   flag="text.format.schema"))


# -- the response object and its events -----------------------------------------------------------

def new_id(prefix: str = "resp") -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


@dataclass
class Shell:
    """What every state of one response shares: ids, the request's echoed fields, the start time."""

    id: str
    message_id: str
    model: str
    req: ResponsesRequest
    created_at: int = field(default_factory=lambda: int(time.time()))

    def body(self, status: str, result: Result | None = None, text: str = "", error: dict | None = None) -> dict:
        req = self.req
        fmt = (req.text.format if req.text is not None else None) or {"type": "text"}
        output = [] if status == "in_progress" else [self.message(text if result is None else result.answer,
                                                                  _message_status(status))]
        body = {
            "id": self.id, "object": "response", "created_at": self.created_at, "status": status,
            "error": error, "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "instructions": req.instructions, "max_output_tokens": req.max_output_tokens, "model": self.model,
            "output": output, "parallel_tool_calls": False, "previous_response_id": req.previous_response_id,
            "reasoning": None, "store": req.store, "temperature": req.temperature, "top_p": req.top_p,
            "text": {"format": fmt}, "tool_choice": "none", "tools": [], "truncation": "disabled",
            "metadata": req.metadata or {}, "usage": None,
        }
        if result is not None:
            stats = result.stats
            body["usage"] = {"input_tokens": stats.prompt_tokens,
                             "input_tokens_details": {"cached_tokens": stats.cached_tokens},
                             "output_tokens": stats.generated_tokens,
                             "output_tokens_details": {"reasoning_tokens": 0},
                             "total_tokens": stats.prompt_tokens + stats.generated_tokens}
            body["stats"] = stats.to_dict()
            body["dsvl_finish_reason"] = result.finish_reason
        return body

    def message(self, text: str | None, status: str) -> dict:
        content = [] if text is None else [self.part(text)]
        return {"type": "message", "id": self.message_id, "status": status, "role": "assistant", "content": content}

    @staticmethod
    def part(text: str) -> dict:
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def status_of(result: Result) -> str:
    return "incomplete" if result.finish_reason == "length" else "completed"


def _message_status(status: str) -> str:
    return {"completed": "completed", "incomplete": "incomplete"}.get(status, "incomplete")


class Events:
    """The stream's events in the order the SDK's accumulator expects, numbered from 0."""

    def __init__(self, shell: Shell):
        self.shell = shell
        self.sequence = 0

    def event(self, type_: str, **fields) -> dict:
        out = {"type": type_, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return out

    def opening(self) -> list[dict]:
        shell, at = self.shell, {"item_id": self.shell.message_id, "output_index": 0, "content_index": 0}
        return [self.event("response.created", response=shell.body("in_progress")),
                self.event("response.in_progress", response=shell.body("in_progress")),
                self.event("response.output_item.added", output_index=0, item=shell.message(None, "in_progress")),
                self.event("response.content_part.added", **at, part=shell.part(""))]

    def delta(self, text: str) -> dict:
        return self.event("response.output_text.delta", item_id=self.shell.message_id, output_index=0,
                          content_index=0, delta=text, logprobs=[])

    def closing(self, body: dict) -> list[dict]:
        """The done events of the text, the part and the item, then the response's last state."""
        shell, at = self.shell, {"item_id": self.shell.message_id, "output_index": 0, "content_index": 0}
        item = body["output"][0]
        text = item["content"][0]["text"]
        last = {"completed": "response.completed", "incomplete": "response.incomplete"}.get(body["status"],
                                                                                         "response.failed")
        return [self.event("response.output_text.done", **at, text=text, logprobs=[]),
                self.event("response.content_part.done", **at, part=shell.part(text)),
                self.event("response.output_item.done", output_index=0, item=item),
                self.event(last, response=body)]
