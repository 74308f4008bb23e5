"""OpenAI Chat Completions shapes: parse a request into dsvl's types, build responses and errors.

Kept apart from app.py so the HTTP plumbing and the mapping of a request can be read (and changed)
separately; the answers' shapes (completion, chunks) are wire/chunks.py's, which the `--server`
client reads back. pydantic is imported here; only `dsvl serve` imports this module.

Mapping, on purpose:
- `system` and `developer` messages become Conversation.system (joined by blank lines); an empty
  one removes DeepSeek-VL's default system prompt, as `--system ""` does. No system message: the
  model's default.
- A user message's `image_url` parts go before its text (DeepSeek-VL's template places them so);
  text parts are joined by newlines. `image_url` must be an http(s) URL or a data: URI: a client
  may never make the server read its own files. A `file` part (OpenAI's, a PDF as a data: URI) and
  a `video_url` part (vLLM's) are sources too: their pages and frames are pictures, each counted
  against --max-images (images/selection.py: `#page=3`, `#frames=8` select).
- Sampling fields left out fall back to the server's own command-line defaults (greedy unless
  `dsvl serve -t` says otherwise), not to OpenAI's temperature 1.
- `top_k` and `repetition_penalty` are accepted as extensions (as vLLM does).
- `response_format` (json_schema, json_object) constrains the answer; so do vLLM's
  `structured_outputs` / `guided_json` / `guided_regex` (wire.answer_format). A schema the grammar
  engine cannot compile is a 400 naming the field. An answer cut by max_tokens before its JSON
  closed comes back as OpenAI sends it: the text so far, finish_reason "length".
- `logprobs`/`top_logprobs` as OpenAI (`choices[0].logprobs.content`, and per chunk when streamed).
  vLLM's `structured_outputs: {"choice": [...]}` (or `guided_choice`) scores the labels instead of
  generating: the message content is the most probable label (what vLLM clients read) and the
  response has a top-level `scores: [{label, probability, logprob}]`, most probable first (in the
  finish chunk when streamed), beside dsvl's `stats`.
- finish_reason: dsvl's `stop`/`length` pass through; `interrupted` (only when the server cancels a
  request while shutting down) is sent as `stop`, with dsvl's own value in `dsvl_finish_reason`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dsvl_cli import wire
from dsvl_cli.catalog import same_model
from dsvl_cli.conversation import Conversation, Message, check_text
from dsvl_cli.errors import ImageLoadError, UsageError
from dsvl_cli.images import LoadedImage
from dsvl_cli.wire.protocol import ChatRequest, Part

DEFAULT_MODEL_ID = "default"  # the documented catch-all: whatever model the server has loaded


class ModelNotFound(Exception):
    """The request names a model this server does not serve (404 model_not_found, as OpenAI)."""


def image_sources(req: ChatRequest) -> list[str]:
    """Every distinct image URL in the request, in order of first use (each is loaded once)."""
    urls = (url for m in req.messages for url in _split_content(m.content)[1])
    return list(dict.fromkeys(urls))


def check_messages(req: ChatRequest) -> int:
    """Validate every message before anything is loaded; returns the characters of text.

    The image placeholder is refused in every role (system and assistant text too: each one in the
    prompt is expanded into image tokens and breaks the image count), and image_url must be an
    http(s) URL or a data: URI: a client may never make the server read its own files.
    """
    chars = 0
    for index, raw in enumerate(req.messages):
        try:
            text, urls = _split_content(raw.content)
        except ValueError as exc:  # a file part without file_data (an upload's file_id)
            raise UsageError(f"messages.{index}: {exc}") from None
        chars += len(text)
        check_text(text, f"messages.{index} ({raw.role})")
        if urls and raw.role != "user":
            raise UsageError(f"messages.{index}: a {raw.role} message cannot hold images")
        for url in urls:
            if not wire.IMAGE_URL.match(url):
                shown = url if len(url) <= 80 else url[:60] + "…"
                raise ImageLoadError(shown, "image_url must be an http(s) URL or a data: URI")
    return chars


def build_conversation(req: ChatRequest, images: Mapping[str, LoadedImage]) -> Conversation:
    """A Conversation from checked messages (check_messages); `images` maps each source to its picture
    (any stand-in object when the conversation is only rendered to count its tokens)."""
    systems: list[str] = []
    messages: list[Message] = []
    for raw in req.messages:
        text, urls = _split_content(raw.content)
        if raw.role in ("system", "developer"):
            systems.append(text)
        elif raw.role == "assistant":
            messages.append(Message("assistant", text))
        else:
            messages.append(Message("user", text, pictures_of(images, urls)))
    return Conversation(messages, system="\n\n".join(systems) if systems else None)


def pictures_of(images: Mapping[str, Any], urls: list[str]) -> list:
    """The pictures of a message's sources in order; a PDF or video source maps to several."""
    out: list = []
    for url in urls:
        value = images[url]
        out.extend(value if isinstance(value, list) else [value])
    return out


def _split_content(content: str | list[Part] | None) -> tuple[str, list[str]]:
    """(text, image URLs) of validated content, through the one mapping of the wire format."""
    if isinstance(content, list):
        content = [part.model_dump(exclude_none=True) for part in content]
    return wire.split_content(content)


def model_names(name: str) -> frozenset[str]:
    """The model ids a request may name for the loaded model: its name, its aliases, and "default"."""
    return same_model(name) | {DEFAULT_MODEL_ID}


def check_model(requested: str | None, served: str, accepted: frozenset[str]) -> None:
    """404 model_not_found (raised as ModelNotFound) unless the request names the loaded model."""
    if requested is not None and requested not in accepted:
        raise ModelNotFound(f"the model `{requested}` does not exist on this server; it serves `{served}` "
                            f'(send that, one of its aliases, or "{DEFAULT_MODEL_ID}")')
