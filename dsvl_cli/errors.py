"""One error hierarchy, the exit codes of the command contract, and how a command reports a failure.

Every error the user can cause or meet is a DsvlError; `guarded` (around each command body) prints
its message as one line and exits with `err.exit_code`. Messages name the input they are about.
"""

from __future__ import annotations

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


# -- reporting: one line per user error, an exit code per failure -----------------------------------

def fail(err: BaseException, *, debug: bool = False) -> NoReturn:
    """Print one line for a user-facing error (a traceback with --debug) and exit with its code."""
    from dsvl_cli.environment import Environment

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


