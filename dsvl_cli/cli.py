"""The Typer app: registers the commands, the root options, and maps errors to exit codes.

Importing this module must not import torch or transformers: `dsvl --help` stays fast.
"""

from __future__ import annotations

import sys
from typing import Annotated, NoReturn, Optional

import typer

from dsvl_cli import __version__
from dsvl_cli.errors import DsvlError, ExitCode

app = typer.Typer(
    name="dsvl",
    help="Ask DeepSeek-VL questions about images: one-shot (ask), interactive (chat), pipes (batch).",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain click help: skips importing rich_utils, about half of `--help` time
)


def fail(err: BaseException, *, debug: bool = False) -> NoReturn:
    """Print one line for a user-facing error (a traceback with --debug) and exit with its code."""
    from dsvl_cli.render import stderr_console

    console = stderr_console()
    if debug:
        console.print_exception()
    if isinstance(err, DsvlError):
        from rich.markup import escape

        console.print(f"[bold red]dsvl: error:[/] {escape(err.message)}", soft_wrap=True)
        raise typer.Exit(int(err.exit_code))
    print(f"dsvl: internal error: {type(err).__name__}: {err} (run with --debug for the traceback)",
          file=sys.stderr)
    raise typer.Exit(int(ExitCode.FAILURE))


def guarded(debug: bool):
    """Context for a command body: DsvlError -> its exit code, Ctrl-C -> 130, anything else -> 1."""
    return _Guard(debug)


class _Guard:
    def __init__(self, debug: bool):
        self.debug = debug

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is None or isinstance(exc, (typer.Exit, SystemExit)):
            return False
        if isinstance(exc, KeyboardInterrupt):
            print("\ndsvl: interrupted", file=sys.stderr)
            raise typer.Exit(int(ExitCode.INTERRUPTED))
        if isinstance(exc, BrokenPipeError):  # `dsvl ask ... | head`: the reader left; not an error
            _silence_stdout()
            raise typer.Exit(int(ExitCode.OK))
        if isinstance(exc, Exception):
            fail(exc, debug=self.debug)
        return False


def _silence_stdout() -> None:
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def _version(value: bool) -> None:
    if value:
        print(f"dsvl {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[Optional[bool], typer.Option("--version", "-V", callback=_version, is_eager=True,
                                                    help="Show the version and exit.")] = None,
) -> None:
    """Ask DeepSeek-VL questions about images from the shell."""


def _register() -> None:
    """One line per command; each command module imports nothing heavy at import time."""
    from dsvl_cli.commands import ask

    app.command("ask", no_args_is_help=True)(ask.ask)
    from dsvl_cli.commands import chat
    app.command("chat")(chat.chat)
    from dsvl_cli.commands import serve
    app.command("serve")(serve.serve)
    from dsvl_cli.commands import batch
    app.command("batch")(batch.batch)


_register()


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        print("\ndsvl: interrupted", file=sys.stderr)
        sys.exit(int(ExitCode.INTERRUPTED))
