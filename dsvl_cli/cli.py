"""The Typer app: registers the commands, the root options, and maps errors to exit codes.

Importing this module must not import torch or transformers: `dsvl --help` stays fast.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated, Optional

import typer
from typer.core import TyperGroup

from dsvl_cli import __version__
from dsvl_cli.errors import ExitCode


def _click():
    """The click that typer runs on (typer 0.2x vendors its own copy as typer._click)."""
    import typer.core

    vendored = getattr(typer.core, "_click", None)
    if vendored is not None:
        return vendored
    import click

    return click


def _abort() -> type:
    """click's Abort (Ctrl-C at a prompt); typer 0.2x keeps it in typer.exceptions, not its click's."""
    import typer.exceptions

    return getattr(_click().exceptions, "Abort", None) or typer.exceptions.Abort


def usage_line(err) -> str:
    """click's usage error as one line: `dsvl: error: no such option --x (see dsvl ask --help)`."""
    exceptions = _click().exceptions
    if isinstance(err, exceptions.NoSuchOption):
        message = f"no such option {err.option_name}"
        if err.possibilities:
            message += f" (did you mean {' or '.join(sorted(err.possibilities))}?)"
    else:
        message = err.format_message().strip().rstrip(".")
        message = message[:1].lower() + message[1:]
    names, ctx = [], err.ctx
    while ctx is not None:
        names.insert(0, ctx.info_name if ctx.parent is not None else "dsvl")
        ctx = ctx.parent
    return f"dsvl: error: {message} (see {' '.join(names or ['dsvl'])} --help)"


class DsvlGroup(TyperGroup):
    """click's 3-line Usage/Try/Error block for a bad option becomes one line, exit 2."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        exceptions = _click().exceptions
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except exceptions.UsageError as err:
            if type(err).__name__ == "NoArgsIsHelpError":  # `dsvl ask` alone: its help
                err.show()
                sys.exit(err.exit_code)
            from dsvl_cli.screen.text import visible

            print(visible(usage_line(err)), file=sys.stderr)
            sys.exit(int(ExitCode.USAGE))
        except exceptions.ClickException as err:
            err.show()
            sys.exit(err.exit_code)
        except _abort():
            print("\ndsvl: interrupted", file=sys.stderr)
            sys.exit(int(ExitCode.INTERRUPTED))
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    name="dsvl",
    cls=DsvlGroup,
    help="Ask DeepSeek-VL questions about images: one-shot (ask), interactive (chat), pipes (batch).",
    no_args_is_help=True,
    add_completion=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain click help: skips importing rich_utils, about half of `--help` time
)


def _version(value: bool) -> None:
    if value:
        print(f"dsvl {__version__}")
        raise typer.Exit()


# Commands whose shared options take defaults from the config file (setup/config.py).
CONFIGURED = ("ask", "decide", "chat", "batch", "eval", "serve", "doctor")


@app.callback()
def root(
    ctx: typer.Context,
    version: Annotated[Optional[bool], typer.Option("--version", "-V", callback=_version, is_eager=True,
                                                    help="Show the version and exit.")] = None,
) -> None:
    """Ask DeepSeek-VL questions about images from the shell."""
    if ctx.invoked_subcommand in CONFIGURED:  # `dsvl config` must work on a broken file, to fix it
        from dsvl_cli.errors import DsvlError, fail
        from dsvl_cli.setup import config

        try:
            ctx.default_map = {**(ctx.default_map or {}), **config.default_map(list(CONFIGURED))}
        except DsvlError as err:
            fail(err)


def _register() -> None:
    """One line per command; each command module imports nothing heavy at import time. The short
    help is written out: click cuts a docstring's first sentence with "..." in `dsvl --help`."""
    from dsvl_cli.catalog import epilog
    from dsvl_cli.commands import ask, batch, chat, config, decide, doctor, logs, models, ps, serve, stop
    from dsvl_cli.commands import eval as eval_command

    app.command("ask", no_args_is_help=True, epilog=epilog(), short_help="Ask one question about images.")(ask.ask)
    app.command("decide", no_args_is_help=True, epilog=epilog(),
                short_help="Typed questions about images, answered with probabilities.")(decide.decide)
    app.command("chat", epilog=epilog(exit_codes=False), short_help="Chat about images (a REPL or a script).")(chat.chat)
    app.command("serve", epilog=epilog(exit_codes=False), short_help="Serve the model over an OpenAI-style API.")(serve.serve)
    app.command("batch", epilog=epilog(exit_codes=False), short_help="Answer many questions: JSONL in, JSONL out.")(batch.batch)
    app.command("eval", no_args_is_help=True, epilog=epilog(exit_codes=False),
                short_help="Score a multiple-choice image benchmark (VLMEvalKit TSV, JSONL).")(eval_command.eval_)
    app.command("ps", epilog=epilog(exit_codes=False), short_help="List the models kept warm by --keep-alive.")(ps.ps)
    app.command("stop", epilog=epilog(exit_codes=False), short_help="Stop models kept warm by --keep-alive.")(stop.stop)
    app.command("models", epilog=epilog(exit_codes=False), short_help="List the models on this machine (alias: ls).")(models.models)
    app.command("ls", hidden=True, epilog=epilog(exit_codes=False), short_help="Alias of models.")(models.models)
    app.command("pull", epilog=epilog(), short_help="Download a model into the Hugging Face cache.")(models.pull)
    app.command("rm", epilog=epilog(), short_help="Delete a model from this machine.")(models.rm)
    app.command("doctor", epilog=epilog(exit_codes=False), short_help="Check this machine: GPU, fit, versions, Hub.")(doctor.doctor)
    app.add_typer(config.app, name="config", short_help="Show or change the config file's defaults.")
    app.add_typer(logs.app, name="logs", short_help="List, search and delete the log of answers (SQLite).")


_register()


def main() -> None:
    try:
        app(prog_name="dsvl")  # also names shell completion's variable: _DSVL_COMPLETE
        code: int | str | None = 0
    except KeyboardInterrupt:
        print("\ndsvl: interrupted", file=sys.stderr)
        code = int(ExitCode.INTERRUPTED)
    except SystemExit as done:  # click ends every command this way, with the exit code
        code = done.code
    _leave(code)


def _leave(code: int | str | None) -> None:
    """Exit with `code`; once torch is loaded, without the interpreter's teardown.

    Why: with torch in the process, teardown takes seconds (module garbage collection), and after
    Ctrl-C cut a generation short it sometimes aborted in a C++ destructor ("terminate called
    without an active exception", exit 134) although the answer and every file were complete. By
    now stdout and stderr are flushed here and every file dsvl writes is closed; what is skipped
    are atexit handlers, which dsvl does not rely on."""
    if "torch" not in sys.modules:
        sys.exit(code)
    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = int(ExitCode.FAILURE)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can reach it
            pass
    os._exit(code or 0)
