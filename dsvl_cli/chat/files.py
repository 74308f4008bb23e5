"""Where chat meets the file system: /save and /load, and the paths typed after /image.

A saved conversation stores image sources, not pixels; local paths are made absolute on save so
the file loads from any folder. `.md` (or `.markdown`) writes a transcript for people, which
/load refuses: only the JSON form restores a conversation.

/save writes a temporary file next to the target and renames it over the target, so a full disk
or a crash never leaves half a file where a good one was. It never overwrites silently: an
existing file or a symbolic link raises `SaveWouldReplace` (the front end asks, or `/save!`
forces); a link is then replaced by the file, never written through. An overwritten file keeps
its permissions. /load checks the file's shape before anything in the session changes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import tempfile
from pathlib import Path

from dsvl_cli.conversation import SAVE_FORMAT, Conversation
from dsvl_cli.errors import UsageError


class SaveWouldReplace(UsageError):
    """/save FILE where FILE exists (or is a link): confirm, or /save! FILE."""

    def __init__(self, path: Path, message: str):
        super().__init__(message)
        self.path = path


def is_markdown(path: Path) -> bool:
    return path.suffix.lower() in (".md", ".markdown")


def save(conversation: Conversation, arg: str, *, force: bool = False) -> Path:
    """Write `conversation` to the file named by `arg` (/save's argument); the path written."""
    if not arg:
        raise UsageError("usage: /save FILE (.json to /load it later, .md for a transcript)")
    path = Path(_one_path(arg)).expanduser()
    if path.is_dir():
        raise UsageError(f"cannot write {path}: it is a folder")
    if not force and path.is_symlink():
        raise SaveWouldReplace(path, f"{path} is a symbolic link (to {os.readlink(path)}); /save! {arg} "
                                     "replaces the link with the saved file")
    if not force and path.exists():
        raise SaveWouldReplace(path, f"{path} exists; /save! {arg} overwrites it")
    copy = _with_absolute_paths(conversation)
    text = copy.to_markdown() if is_markdown(path) else json.dumps(copy.to_json(), indent=2, ensure_ascii=False) + "\n"
    try:
        write_atomically(path, text)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


def write_atomically(path: Path, text: str) -> None:
    """Write to a temporary file in the same folder, then rename it over `path`."""
    keep_mode = path.stat().st_mode & 0o7777 if path.is_file() and not path.is_symlink() else None
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, keep_mode if keep_mode is not None else 0o666 & ~_umask())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def load(arg: str) -> tuple[Path, Conversation]:
    """The conversation saved in the file named by `arg` (/load's argument), images loaded again."""
    if not arg:
        raise UsageError("usage: /load FILE (a conversation saved with /save FILE.json)")
    path = Path(_one_path(arg)).expanduser()
    if is_markdown(path):
        raise UsageError(f"{path} is a Markdown transcript; /load reads the JSON that /save FILE.json writes")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UsageError(f"{path}: cannot read a saved conversation ({getattr(exc, 'strerror', None) or exc})") from None
    problem = _shape_problem(data)
    if problem:
        raise UsageError(f"{path}: not a conversation saved by dsvl: {problem}")
    return path, Conversation.from_json(data)


def _shape_problem(data) -> str | None:
    """What is wrong with a saved conversation's JSON, or None."""
    if not isinstance(data, dict) or data.get("format") != SAVE_FORMAT:
        return f"expected an object with \"format\": \"{SAVE_FORMAT}\""
    if data.get("system") is not None and not isinstance(data["system"], str):
        return "\"system\" must be text or null"
    messages = data.get("messages", [])
    if not isinstance(messages, list):
        return "\"messages\" must be a list"
    for k, message in enumerate(messages, 1):
        if not isinstance(message, dict):
            return f"message {k} is not an object"
        if message.get("role") not in ("user", "assistant") or not isinstance(message.get("text"), str):
            return f"message {k} needs a role (user or assistant) and a text"
        images = message.get("images") or []
        if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
            return f"message {k}: \"images\" must be a list of image sources (text)"
        if message.get("finish_reason") is not None and not isinstance(message["finish_reason"], str):
            return f"message {k}: \"finish_reason\" must be text"
    return None


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
