"""Messages and conversations, and how they become chat-template messages.

A user message holds its images (already loaded and validated) followed by its text, which is how
DeepSeek-VL's template and the original DeepSeek-VL demos place them. A conversation saves to JSON
(image sources, not pixels) and loads back by resolving the sources again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from dsvl_cli.errors import UsageError, load_json
from dsvl_cli.images import LoadedImage, load_images
from dsvl_cli.userfiles import write_atomic

IMAGE_TOKEN = "<image_placeholder>"
SAVE_FORMAT = "dsvl-conversation/1"


def check_text(text: str, what: str = "prompt") -> str:
    """User text may not contain the image placeholder: it would break the image count."""
    if IMAGE_TOKEN in text:
        raise UsageError(f"{what} contains the reserved token {IMAGE_TOKEN}; remove it "
                         "(images are given as arguments, not in the text)")
    return text


@dataclass
class Message:
    role: str  # "user" or "assistant"
    text: str
    images: list[LoadedImage] = field(default_factory=list)
    finish_reason: str | None = None  # assistant messages: stop, length, interrupted

    def template_content(self) -> list[dict]:
        parts: list[dict] = [{"type": "image"} for _ in self.images]
        parts.append({"type": "text", "text": self.text})
        return parts


@dataclass
class Conversation:
    """An ordered list of messages plus an optional system prompt (None: the model's default)."""

    messages: list[Message] = field(default_factory=list)
    system: str | None = None

    def __setattr__(self, name: str, value) -> None:
        # Every way a system prompt is set (--system, /system, a batch record, a loaded file) meets
        # the same check: a placeholder in it would break the image count at generation time.
        if name == "system" and value is not None:
            check_text(value, "system prompt")
        super().__setattr__(name, value)

    @classmethod
    def single(cls, prompt: str, images: list[LoadedImage] | None = None, system: str | None = None) -> Conversation:
        return cls([Message("user", check_text(prompt), list(images or []))], system=system)

    def add_user(self, text: str, images: list[LoadedImage] | None = None) -> Message:
        message = Message("user", check_text(text), list(images or []))
        self.messages.append(message)
        return message

    def add_assistant(self, text: str, finish_reason: str | None = None) -> Message:
        message = Message("assistant", text, finish_reason=finish_reason)
        self.messages.append(message)
        return message

    @property
    def images(self) -> list[LoadedImage]:
        return [image for message in self.messages for image in message.images]

    def template_messages(self) -> list[dict]:
        return [{"role": m.role, "content": m.template_content()} for m in self.messages]

    def copy(self) -> Conversation:
        return Conversation([Message(m.role, m.text, list(m.images), m.finish_reason) for m in self.messages],
                            self.system)

    # -- persistence -----------------------------------------------------------------------------
    def to_json(self) -> dict:
        return {
            "format": SAVE_FORMAT,
            "system": self.system,
            "messages": [
                {"role": m.role, "text": m.text, "images": [i.source for i in m.images],
                 **({"finish_reason": m.finish_reason} if m.finish_reason else {})}
                for m in self.messages
            ],
        }

    def to_markdown(self) -> str:
        lines = ["# dsvl conversation", ""]
        if self.system is not None:
            lines += [f"**System:** {self.system}", ""]
        for m in self.messages:
            who = "User" if m.role == "user" else "Assistant"
            lines.append(f"## {who}")
            lines += [f"![image]({i.source})" for i in m.images]
            lines += [m.text + (" *(interrupted)*" if m.finish_reason == "interrupted" else ""), ""]
        return "\n".join(lines)

    @classmethod
    def from_json(cls, data: dict, *, stdin: BinaryIO | None = None, exact: bool = False) -> Conversation:
        """A conversation from its saved JSON, every field checked (UsageError names the first bad
        one), then its images loaded again."""
        if not isinstance(data, dict) or data.get("format") != SAVE_FORMAT:
            raise UsageError(f"not a saved dsvl conversation (expected format {SAVE_FORMAT})")
        system, raws = data.get("system"), data.get("messages", [])
        if system is not None and not isinstance(system, str):
            raise UsageError("saved conversation: system must be text or null")
        if not isinstance(raws, list):
            raise UsageError("saved conversation: messages must be a list")
        checked = [_checked_message(k, raw) for k, raw in enumerate(raws)]
        conv = cls(system=system)
        for role, text, sources, finish_reason in checked:
            conv.messages.append(Message(role, text, load_images(sources, stdin=stdin, exact=exact), finish_reason))
        return conv

    def save(self, path: Path) -> None:
        """JSON (or a Markdown transcript for .md), written atomically (userfiles.py)."""
        if path.suffix.lower() in (".md", ".markdown"):
            write_atomic(path, self.to_markdown())
        else:
            write_atomic(path, json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, path: Path, *, exact: bool = False) -> Conversation:
        try:
            data = load_json(path.read_bytes())
        except FileNotFoundError:
            raise UsageError(f"{path}: no such file") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UsageError(f"{path}: cannot read saved conversation ({exc})") from None
        try:
            return cls.from_json(data, exact=exact)
        except UsageError as err:
            raise UsageError(f"{path}: {err.message}") from None


def _checked_message(index: int, raw) -> tuple[str, str, list[str], str | None]:
    """(role, text, image sources, finish_reason) of saved message `index`, or UsageError naming it."""
    where = f"saved conversation: message {index + 1}"
    if not isinstance(raw, dict):
        raise UsageError(f"{where} is not an object")
    role, text, sources = raw.get("role"), raw.get("text"), raw.get("images") or []
    if role not in ("user", "assistant"):
        raise UsageError(f"{where}: role must be user or assistant")
    if not isinstance(text, str):
        raise UsageError(f"{where}: text must be text")
    check_text(text, where)
    if not isinstance(sources, list) or not all(isinstance(x, str) and x for x in sources):
        raise UsageError(f"{where}: images must be a list of image sources (paths, URLs)")
    finish_reason = raw.get("finish_reason")
    if finish_reason is not None and not isinstance(finish_reason, str):
        raise UsageError(f"{where}: finish_reason must be text")
    return role, text, sources, finish_reason
