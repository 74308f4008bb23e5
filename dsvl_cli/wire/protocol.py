"""The OpenAI Chat Completions request, as pydantic models, and the JSON body parser.

What an OpenAI client sends (serve answers it; batch records are read with it). The mapping of
these fields onto dsvl's types is serve/protocol.py's docstring. pydantic is imported here: only
the modules that read OpenAI bodies import this one (not `dsvl_cli.wire` itself).
"""

from __future__ import annotations

import json
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from dsvl_cli.errors import UsageError, load_json
from dsvl_cli.wire.messages import (ANSWER_FORMAT_FIELDS, LOGPROB_FIELDS, MAX_CHOICES, SAMPLING_FIELDS, answer_format,
                                    logprob_changes, settings_changes)

SEED_RANGE = (-(1 << 63), (1 << 64) - 1)  # what torch.manual_seed takes

StopString = Annotated[str, Field(max_length=256)]  # transformers builds tables per stop string


class ImageURL(BaseModel):
    url: str
    detail: str | None = None


class FileData(BaseModel):  # OpenAI's `file` part: a PDF sent inline (wire.file_source)
    model_config = ConfigDict(extra="ignore")
    file_data: str | None = None
    file_id: str | None = None
    filename: str | None = None


class Part(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text", "image_url", "video_url", "file"]
    text: str | None = None
    image_url: ImageURL | None = None
    video_url: ImageURL | None = None
    file: FileData | None = None

    @model_validator(mode="after")
    def _has_payload(self) -> Part:
        if self.type == "text" and self.text is None:
            raise ValueError("a text part needs `text`")
        if self.type == "image_url" and self.image_url is None:
            raise ValueError("an image_url part needs `image_url.url`")
        if self.type == "video_url" and self.video_url is None:
            raise ValueError("a video_url part needs `video_url.url`")
        if self.type == "file" and self.file is None:
            raise ValueError("a file part needs `file`")  # without file_data: check_messages says why
        return self


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[Part] | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(BaseModel):
    # Unknown OpenAI fields (user, metadata...) are ignored; numbers must be finite (1e999 is inf).
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, le=1 << 31)
    max_completion_tokens: int | None = Field(None, ge=1, le=1 << 31)
    temperature: float | None = Field(None, ge=0, le=100)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=1, le=1 << 31)
    repetition_penalty: float | None = Field(None, gt=0, le=100)
    seed: int | None = Field(None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    stop: StopString | list[StopString] | None = Field(None, max_length=16)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=1)
    # The answer's format (wire.answer_format reads them): OpenAI's, and vLLM's for its clients.
    response_format: dict | None = None
    structured_outputs: dict | None = None
    guided_json: dict | str | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = Field(None, max_length=MAX_CHOICES)
    # --logprobs (wire.logprob_changes checks them further)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)

    @model_validator(mode="after")
    def _ends_with_user(self) -> ChatRequest:
        if not any(m.role == "user" for m in self.messages):
            raise ValueError("messages need at least one user message")
        if self.messages[-1].role != "user":
            raise ValueError("the last message must be a user message (the model answers it)")
        return self


def generation_settings(req: ChatRequest, defaults):
    """GenerationSettings `defaults` with what the request sets (UsageError when out of range)."""
    gen = defaults.replace(**settings_changes(req.model_dump(include=set(SAMPLING_FIELDS))),
                           **logprob_changes(req.model_dump(include=set(LOGPROB_FIELDS))))
    fmt = answer_format(req.model_dump(include=set(ANSWER_FORMAT_FIELDS)))
    return gen.replace(answer_format=fmt) if fmt is not None else gen


def first_error(exc: ValidationError) -> str:
    """`where: what` of a validation error's first problem (union branches left out of `where`)."""
    first = exc.errors(include_url=False)[0]
    where = ".".join(str(p) for p in first["loc"] if not _branch(p)) or "body"
    return f"{where}: {first['msg']}"


def _branch(part) -> bool:  # pydantic names the member of a union it tried: `str`, `list[...]`, `constrained-str`
    return isinstance(part, str) and (part in ("str", "int", "float", "bool", "dict", "list") or "[" in part
                                      or "-" in part)


def parse_request(raw: bytearray, schema: type[BaseModel] = ChatRequest):
    """Parse and validate a JSON body (as a ChatRequest, or another API's `schema`); UsageError
    names the first bad field. Empties `raw`.

    Memory: the body is decoded to text, `raw` emptied, then parsed: at most two copies of the body
    are alive at once (pydantic's own JSON parser peaked at three). Deep nesting, huge
    integers and NaN are refused by errors.load_json, reported as bad JSON."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"request body is not valid JSON (not UTF-8: {exc.reason})") from None
    finally:
        raw.clear()
    try:
        data = load_json(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"request body is not valid JSON ({exc})") from None
    del text
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise UsageError(first_error(exc)) from None
