"""One log entry from one answered question: what was asked, of which model, how, and what came back.

Pictures are recorded, never stored: the source as given (a data: URI shortened; a file's absolute
path beside it), its size, and a
sha256 that `ask -c` checks before it reuses the picture. For a file the sha256 is of the file's
bytes (what `sha256sum` prints); for a URL, stdin or a data: URI, whose bytes dsvl does not keep,
it is of the decoded RGB pixels (`sha256_of: "pixels"`).
"""

from __future__ import annotations

import hashlib
import os
import re
from datetime import datetime, timezone

from dsvl_cli.conversation import Conversation
from dsvl_cli.images import LoadedImage, display_source
from dsvl_cli.results import Result
from dsvl_cli.settings import GenerationSettings

# The generation options that change an answer (the system prompt has its own column).
ANSWER_SETTINGS = ("max_new_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "seed", "logprobs")
_URL = re.compile(r"^https?://", re.IGNORECASE)


def source_kind(source: str) -> str:
    if source == "-":
        return "stdin"
    if _URL.match(source):
        return "url"
    if source[:5].lower() == "data:" and not os.path.lexists(os.path.expanduser(source)):
        return "data"
    return "file"


def file_digest(path: str) -> tuple[str, int]:
    """(sha256 hex, size in bytes) of a file; OSError if it cannot be read."""
    digest, size = hashlib.sha256(), 0
    with open(os.path.expanduser(path), "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


def pixel_digest(image) -> str:
    """sha256 of a PIL image's mode, size and pixels."""
    digest = hashlib.sha256(f"{image.mode} {image.width}x{image.height}\n".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def picture(image: LoadedImage) -> dict:
    """What the log keeps of one picture (no pixels)."""
    kind = source_kind(image.source)
    record = {"source": display_source(image.source), "kind": kind, "width": image.image.width,
              "height": image.image.height, "bytes": None}
    if kind == "file":
        try:
            record["sha256"], record["bytes"] = file_digest(image.source)
            record["sha256_of"] = "file"
            record["path"] = os.path.abspath(os.path.expanduser(image.source))  # ask -c from another folder
            return record
        except OSError:  # gone since it was read (a pipe, a deleted file): the pixels still identify it
            pass
    record["sha256"], record["sha256_of"] = pixel_digest(image.image), "pixels"
    return record


def picture_of_source(source: str) -> dict:
    """What the log keeps of a picture known by its source only (batch --log): a file is hashed;
    for a URL or a data: URI, whose pixels are not at hand here, the sha256 is null."""
    kind = source_kind(source)
    record = {"source": display_source(source), "kind": kind, "width": None, "height": None, "bytes": None,
              "sha256": None, "sha256_of": None}
    if kind == "file":
        try:
            record["sha256"], record["bytes"] = file_digest(source)
            record.update(sha256_of="file", path=os.path.abspath(os.path.expanduser(source)))
        except OSError:
            pass
    return record


def settings_of(gen: GenerationSettings, extra: dict | None = None) -> dict:
    return {**{k: getattr(gen, k) for k in ANSWER_SETTINGS}, **({"stop": list(gen.stop)} if gen.stop else {}),
            **(extra or {})}


def results_of(result: Result) -> dict | None:
    """--schema's parsed data, --choices' scores, and any decisions a front end attached."""
    out = {}
    if result.json_answer:
        out["data"] = result.data
    if result.scores is not None:
        out["scores"] = result.scores
    return out or None


def build(*, kind: str, conversation_id: str, turn: int, conversation: Conversation, result: Result,
          gen: GenerationSettings, model: str, revision: str | None = None, extra_settings: dict | None = None,
          results: dict | None = None, pictures: list[dict] | None = None) -> dict:
    """The entry for the last question of `conversation`, answered by `result`; `turn` is its number,
    the exchanges before it in `conversation` are its history. `results` adds to results_of (decisions);
    `pictures` replaces the records of the question's images (batch knows only their sources)."""
    question = next(m for m in reversed(conversation.messages) if m.role == "user")
    history = sum(1 for m in conversation.messages if m.role == "user") - 1
    fmt = gen.answer_format
    merged = {**(results_of(result) or {}), **(results or {})}
    return {
        "conversation_id": conversation_id, "turn": turn, "history": history, "kind": kind,
        "datetime_utc": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        "model": model, "revision": revision, "settings": settings_of(gen, extra_settings),
        "system": conversation.system, "prompt": question.text, "answer": result.answer,
        "finish_reason": result.finish_reason, "format": fmt.to_dict() if fmt is not None else None,
        "results": merged or None, "stats": result.stats.to_dict(),
        "pictures": pictures if pictures is not None else [picture(image) for image in question.images],
    }
