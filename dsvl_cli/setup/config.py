"""The config file: defaults for the shared options, below flags and DSVL_* variables.

Where: $DSVL_CONFIG, else $XDG_CONFIG_HOME/dsvl/config.toml, else ~/.config/dsvl/config.toml.
What: TOML, one top-level `key = value` per shared option (the option's name with underscores:
`model = "1.3b"`, `max_new_tokens = 256`, `keep_alive = "5m"`). Precedence comes from click, which
takes a value from the command line, then the option's environment variable, then the context's
`default_map` (filled from this file, cli.py), then the built-in default.

Every value is checked when the file is read, with the same checks as its flag; a malformed file,
an unknown key or a bad value is one line naming the file, the line and the key (exit 2). Reading
is tomllib; `set` and `unset` edit the file with tomlkit, which keeps comments, blank lines and the
order of the rest (a multi-line value is left to an editor: set would flatten its layout).
"""

from __future__ import annotations

import json
import os
import re
import typing
from pathlib import Path
from typing import TYPE_CHECKING

from dsvl_cli.errors import UsageError

if TYPE_CHECKING:
    from tomlkit import TOMLDocument

# Per-question options (an answer format, --json, --debug) are not defaults one keeps in a file.
NOT_SETTABLE = ("schema", "regex", "choices", "logprobs", "json", "debug")


def path() -> Path:
    if os.environ.get("DSVL_CONFIG"):
        return Path(os.environ["DSVL_CONFIG"]).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base).expanduser() / "dsvl" / "config.toml"


def settable() -> dict[str, tuple[type, str, object]]:
    """key -> (value type, its DSVL_* variable, built-in default), from options.SHARED."""
    from dsvl_cli.options import SHARED

    keys = {}
    for name, (annotation, default) in SHARED.items():
        if name in NOT_SETTABLE:
            continue
        base, info = typing.get_args(annotation)[:2]
        kind = next((t for t in typing.get_args(base) if t is not type(None)), base)
        keys[name] = (kind, info.envvar, default)
    return keys


def _line_of(text: str, key: str) -> int:
    for number, line in enumerate(text.splitlines(), 1):
        if re.match(rf"\s*{re.escape(key)}\s*=", line) or re.match(rf"\s*\[\s*{re.escape(key)}\s*\]", line):
            return number
    return 0


def _where(file: Path, text: str, key: str) -> str:
    line = _line_of(text, key)
    return f"config file {file}" + (f" line {line}" if line else "") + f": key {key}"


def load(file: Path | None = None) -> dict:
    """The checked values in the config file ({} when there is none); UsageError names file, line, key."""
    file = file or path()
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"config file {file}: cannot read it: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        values = _parse(text)
    except ValueError as exc:  # tomllib.TOMLDecodeError
        raise UsageError(f"config file {file}: {_syntax_error(text, str(exc))}") from None
    except RecursionError:  # a = [[[[... nested thousands deep
        raise UsageError(f"config file {file}: not valid TOML (nested too deeply)") from None
    keys = settable()
    for key, value in values.items():
        if key not in keys:
            known = ", ".join(keys)
            kind = "table" if isinstance(value, dict) else "key"
            raise UsageError(f"{_where(file, text, key)}: unknown {kind} (known keys: {known})")
        try:
            values[key] = check(key, value)
        except UsageError as err:
            raise UsageError(f"{_where(file, text, key)}: {err.message}") from None
    return values


def _parse(text: str) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the same parser, as a package
        import tomli as tomllib

    return tomllib.loads(text)


def _syntax_error(text: str, message: str) -> str:
    """tomllib's "Invalid value (at line 2, column 17)" as "line 2: key max_new_tokens: not valid TOML (...)"."""
    found = re.search(r"\(at line (\d+), column \d+\)", message)
    if not found:
        return f"not valid TOML: {message}"
    number = int(found.group(1))
    lines = text.splitlines()
    key = re.match(r"\s*([A-Za-z0-9_-]+)\s*=", lines[number - 1]) if number <= len(lines) else None
    return f"line {number}: " + (f"key {key.group(1)}: " if key else "") + f"not valid TOML ({message})"


def check(key: str, value):
    """`value` for `key`, type-checked and validated as its flag would be (raises UsageError)."""
    kind = settable()[key][0]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise UsageError(f"expected {_type_name(kind)}, got {json.dumps(value, default=str)}")
    from dsvl_cli.options import build_common

    build_common({key: value})  # the flag's own checks (device names, ranges, durations...)
    return value


def _type_name(kind: type) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(kind, kind.__name__)


def parse(key: str, text: str):
    """A value typed on the command line (`dsvl config set KEY VALUE`) as the key's type."""
    keys = settable()
    if key not in keys:
        raise UsageError(f"config key {key}: unknown (known keys: {', '.join(keys)})")
    kind = keys[key][0]
    try:
        if kind is bool:
            lowered = text.strip().lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                raise ValueError
            value = lowered in ("true", "1", "yes", "on")
        else:
            value = kind(text)
    except ValueError:
        raise UsageError(f"config key {key}: {text!r} is not {_type_name(kind)}") from None
    try:
        return check(key, value)
    except UsageError as err:
        raise UsageError(f"config key {key}: {err.message}") from None


def normalise(key: str) -> str:
    """`max-new-tokens` and `--max-new-tokens` name `max_new_tokens`."""
    return key.strip().lstrip("-").replace("-", "_")


def set_value(key: str, value, file: Path | None = None) -> Path:
    """Write `key = value` (replacing the key's value where it stands, else appending), atomically."""
    import tomlkit  # here, not at start-up: only set and unset edit the file

    file = file or path()
    document, existed = _document(file)
    if key in document:
        old = document.item(key)
        if isinstance(old, tomlkit.items.String) and old.type.is_multiline():
            raise UsageError(f"config file {file}: key {key} spans several lines; change it in an editor")
    document[key] = tomlkit.item(value)
    new = document.item(key).trivia
    new.comment_ws, new.comment = "", ""  # a comment after the old value spoke of that value
    _write(file, document, private=not existed or "api_key" in document)  # new: 0600; a secret: tightened
    return file


def unset(key: str, file: Path | None = None) -> bool:
    """Remove `key` (its line); False when the file had no such key."""
    file = file or path()
    document, _ = _document(file)
    if key not in document:
        return False
    del document[key]
    _write(file, document, private="api_key" in document)
    return True


def _document(file: Path) -> tuple[TOMLDocument, bool]:
    """The file as tomlkit's document (comments and layout kept) and whether it exists; the file is
    checked first (load), so a broken one is reported, never rewritten."""
    import tomlkit

    load(file)
    try:
        return tomlkit.parse(file.read_text(encoding="utf-8")), True
    except FileNotFoundError:
        return tomlkit.document(), False


def _write(file: Path, document: TOMLDocument, *, private: bool) -> None:
    import tomlkit

    from dsvl_cli.userfiles import write_atomic

    file.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(file, tomlkit.dumps(document), private=private)


def effective(values: dict | None = None, given: dict | None = None) -> list[dict]:
    """Each settable key: its value and where it came from (`given`: values from the command line)."""
    values = load() if values is None else values
    given = given or {}
    rows = []
    for key, (kind, envvar, default) in settable().items():
        if key in given:
            value, source = given[key], "command line"
        elif os.environ.get(envvar):
            value, source = os.environ[envvar], "environment"
        elif key in values:
            value, source = values[key], "config file"
        else:
            value, source = default, "default"
            if key == "model" and value is None:
                from dsvl_cli.settings import DEFAULT_MODEL

                value = DEFAULT_MODEL
        if key == "api_key" and value:
            value = "(set)"  # a secret: where it comes from, never what it is
        rows.append({"key": key, "value": value, "source": source, "env": envvar})
    return rows


def default_map(commands: list[str]) -> dict:
    """click's `default_map` for the commands that read the shared options."""
    values = load()
    return {command: dict(values) for command in commands} if values else {}


def default_model() -> str:
    """The model a bare `dsvl ask` loads: DSVL_MODEL, else the config file's, else the built-in."""
    from dsvl_cli.settings import DEFAULT_MODEL

    return os.environ.get("DSVL_MODEL") or load().get("model") or DEFAULT_MODEL
