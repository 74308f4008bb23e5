"""Where chat meets the file system: /save and /load, and the paths typed after /image.

A saved conversation stores image sources, not pixels; local paths are made absolute on save so
the file loads from any folder. `.md` (or `.markdown`) writes a transcript for people, which
/load refuses: only the JSON form restores a conversation.
"""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path

from dsvl_cli.conversation import Conversation
from dsvl_cli.errors import UsageError


def is_markdown(path: Path) -> bool:
    return path.suffix.lower() in (".md", ".markdown")


def target(arg: str) -> Path:
    """The file /save's argument names."""
    if not arg:
        raise UsageError("usage: /save FILE (.json to /load it later, .md for a transcript)")
    path = Path(_one_path(arg)).expanduser()
    if path.is_dir():
        raise UsageError(f"cannot write {path}: it is a folder")
    return path


def save(conversation: Conversation, arg: str) -> Path:
    """Write `conversation` to the file named by `arg` (/save's argument), atomically; the path
    written. Whether it may replace an existing file is the caller's question (see /save!)."""
    path = target(arg)
    try:
        _with_absolute_paths(conversation).save(path)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


def load(arg: str, *, exact: bool = False) -> tuple[Path, Conversation]:
    """The conversation saved in the file named by `arg` (/load's argument), images loaded again."""
    if not arg:
        raise UsageError("usage: /load FILE (a conversation saved with /save FILE.json)")
    path = Path(_one_path(arg)).expanduser()
    if is_markdown(path):
        raise UsageError(f"{path} is a Markdown transcript; /load reads the JSON that /save FILE.json writes")
    return path, Conversation.load(path, exact=exact)


def split_sources(arg: str) -> list[str]:
    """Image sources as a shell would split them; a whole argument that names a file stays whole
    (so `/image my photo.jpg` works without quotes)."""
    if _is_file(arg):
        return [arg]
    try:
        return shlex.split(arg)
    except ValueError:
        return arg.split()


def _one_path(arg: str) -> str:
    parts = split_sources(arg)
    return parts[0] if len(parts) == 1 else arg


def _with_absolute_paths(conversation: Conversation) -> Conversation:
    """A copy whose local image paths are absolute, so a saved file loads from any folder."""
    copy = conversation.copy()
    for message in copy.messages:
        message.images = [dataclasses.replace(i, source=str(Path(i.source).expanduser().resolve()))
                          if _is_file(i.source) else i for i in message.images]
    return copy


def _is_file(text: str) -> bool:
    """Whether `text` names an existing local file (a long data: URI is not a path)."""
    if not text or "://" in text or text.startswith("data:"):
        return False
    try:
        return Path(text).expanduser().is_file()
    except (OSError, ValueError):
        return False


def resume(session, conversation: Conversation, last_turn: int) -> None:
    """`dsvl chat -c`: the session goes on with an earlier conversation, its system prompt unless
    --system gave one; the next turn is numbered after `last_turn`."""
    if session.generation.system is not None:
        conversation.system = session.generation.system
    session.conversation = conversation
    session.generation = session.generation.replace(system=conversation.system)
    session.forgotten = last_turn - len([m for m in conversation.messages if m.role == "user"])
