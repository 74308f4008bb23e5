"""One error hierarchy, the exit codes of the command contract, and how a command reports a failure.

Every error the user can cause or meet is a DsvlError; `guarded` (around each command body) prints
its message as one line and exits with `err.exit_code`. Messages name the input they are about.

`load_json` is the one parser for JSON a user or a client gave (batch records, --questions and
schema files, chat scripts, saved chats, serve bodies, what --server reads back): whatever the text,
it returns a value or raises json.JSONDecodeError with a clear `msg`, never RecursionError or
int()'s digit-limit ValueError, so each caller's existing JSONDecodeError path reports it.
"""

from __future__ import annotations

import json
import math
import re
import sys
from enum import IntEnum
from typing import NoReturn

from typer import Exit

from dsvl_cli.screen.text import visible  # file names, servers' errors: shown, never obeyed


class ExitCode(IntEnum):
    OK = 0
    FAILURE = 1  # runtime failure: model load, out of memory, a failed batch record
    USAGE = 2  # bad usage or bad input
    INTERRUPTED = 130


class DsvlError(Exception):
    """Base class: a message for the user and the exit code it maps to."""

    exit_code: ExitCode = ExitCode.FAILURE
    kind: str = "error"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class UsageError(DsvlError):
    """Bad options or bad text input (exit 2)."""

    exit_code = ExitCode.USAGE
    kind = "usage_error"


class ImageLoadError(DsvlError):
    """An image source that cannot be read, fetched or decoded (exit 2). `source` names it."""

    exit_code = ExitCode.USAGE
    kind = "image_error"

    def __init__(self, source: str, reason: str):
        super().__init__(f"image {source}: {reason}")
        self.source = source
        self.reason = reason


class ModelError(DsvlError):
    """The model cannot be found, downloaded or loaded (exit 1)."""

    kind = "model_error"


class GenerationError(DsvlError):
    """Generation failed at run time, e.g. out of memory (exit 1)."""

    kind = "generation_error"


class ContextLengthError(DsvlError):
    """The prompt would not fit in the model's context window (exit 2)."""

    exit_code = ExitCode.USAGE
    kind = "context_length"


def of_kind(kind: str, message: str) -> DsvlError | None:
    """The error whose `kind` this is, again (it crossed a process: a server's answer, a keep-alive
    server's start-up line); None for a kind not listed here."""
    cls = {c.kind: c for c in (UsageError, ModelError, GenerationError, ContextLengthError)}.get(kind)
    return cls(message) if cls is not None else None


# -- JSON from users and clients: bounded depth, bounded integers, finite numbers, UTF-8 ---------------

JSON_MAX_DEPTH = 100  # arrays and objects inside each other; OpenAI bodies and schemas use < 20
JSON_MAX_DIGITS = 100  # digits in one integer literal (int() refuses 4300 with a ValueError)
_JSON_TOKENS = re.compile(r'"(?:[^"\\]+|\\.)*"?|[\[{]|[\]}]')


class _NumberError(ValueError):
    def __init__(self, msg: str, literal: str):
        super().__init__(msg)
        self.msg, self.literal = msg, literal


def _int(literal: str) -> int:
    if len(literal.lstrip("-")) > JSON_MAX_DIGITS:
        raise _NumberError(f"an integer of {len(literal.lstrip('-'))} digits (at most {JSON_MAX_DIGITS})",
                           literal)
    return int(literal)


def _float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise _NumberError(f"number {literal[:20]}{'...' if len(literal) > 20 else ''} is not finite (too large)",
                           literal)
    return value


def _constant(name: str):
    raise _NumberError(f"{name} is not a finite number (not JSON)", name)


def _depth_error(text: str) -> json.JSONDecodeError | None:
    """Where `text` nests deeper than JSON_MAX_DEPTH (strings skipped), without recursion."""
    depth = 0
    for match in _JSON_TOKENS.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth > JSON_MAX_DEPTH:
                return json.JSONDecodeError(f"nested more than {JSON_MAX_DEPTH} levels deep", text, match.start())
        elif token in "]}":
            depth -= 1
    return None


def load_json(data: str | bytes | bytearray):
    """Parse JSON a user or a client gave; every refusal is a json.JSONDecodeError (see the top)."""
    if isinstance(data, (bytes, bytearray)):
        try:
            data = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise json.JSONDecodeError(f"not valid UTF-8 ({exc.reason} at byte {exc.start})", "", 0) from None
    if data.startswith("\ufeff"):
        data = data[1:]
    deep = _depth_error(data)
    if deep is not None:
        raise deep
    try:
        value = json.loads(data, parse_int=_int, parse_float=_float, parse_constant=_constant)
    except _NumberError as exc:
        raise json.JSONDecodeError(exc.msg, data, max(0, data.find(exc.literal))) from None
    except RecursionError:  # cannot happen below JSON_MAX_DEPTH; kept so no caller ever sees it
        raise json.JSONDecodeError("nested too deeply", data, 0) from None
    if _SURROGATE.search(data) and _lone_surrogate(value):  # "\ud800" alone: no UTF-8 can carry it
        raise json.JSONDecodeError("a string holds a lone surrogate (not valid UTF-8)", data, 0)
    return value


_SURROGATE = re.compile(r"[\ud800-\udfff]|\\u[dD][89a-fA-F]")


def _lone_surrogate(value) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
    return False


# -- reporting: one line per user error, an exit code per failure -----------------------------------

def fail(err: BaseException, *, debug: bool = False) -> NoReturn:
    """Print one line for a user-facing error (a traceback with --debug) and exit with its code."""
    from dsvl_cli.screen.environment import Environment

    console = Environment.current().stderr_console()
    if debug:
        console.print_exception()
    if isinstance(err, DsvlError):
        from rich.markup import escape

        console.print(f"[bold red]dsvl: error:[/] {escape(visible(err.message))}", soft_wrap=True)
        raise Exit(int(err.exit_code))
    print(visible(f"dsvl: internal error: {type(err).__name__}: {err} (run with --debug for the traceback)"),
          file=sys.stderr)
    raise Exit(int(ExitCode.FAILURE))


def guarded(debug: bool):
    """Context for a command body: DsvlError -> its exit code, Ctrl-C -> 130, anything else -> 1."""
    return _Guard(debug)


class _Guard:
    def __init__(self, debug: bool):
        self.debug = debug

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is None or isinstance(exc, (Exit, SystemExit)):
            return False
        if isinstance(exc, KeyboardInterrupt):
            print("\ndsvl: interrupted", file=sys.stderr)
            raise Exit(int(ExitCode.INTERRUPTED))
        if isinstance(exc, BrokenPipeError):  # `dsvl ask ... | head`: the reader left; not an error
            _silence_stdout()
            raise Exit(int(ExitCode.OK))
        if isinstance(exc, Exception):
            fail(exc, debug=self.debug)
        return False


def _silence_stdout() -> None:
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


