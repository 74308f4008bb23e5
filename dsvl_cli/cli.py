"""The Typer app: registers the commands, the root options, and maps errors to exit codes.

Importing this module must not import torch or transformers: `dsvl --help` stays fast.
"""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from dsvl_cli import __version__
from dsvl_cli.errors import ExitCode

app = typer.Typer(
    name="dsvl",
    help="Ask DeepSeek-VL questions about images: one-shot (ask), interactive (chat), pipes (batch).",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain click help: skips importing rich_utils, about half of `--help` time
)


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
    from dsvl_cli.commands import ps, stop
    app.command("ps")(ps.ps)
    app.command("stop")(stop.stop)


_register()


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        print("\ndsvl: interrupted", file=sys.stderr)
        sys.exit(int(ExitCode.INTERRUPTED))
