"""`dsvl config show|path|set|unset`: the config file's defaults (setup/config.py)."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, rich_markup_mode=None,
                  help="Show or change the defaults in the config file (flag > DSVL_* variable > config file > "
                       "built-in default).")


def _complete_key(incomplete: str) -> list[str]:
    from dsvl_cli.setup import config

    return [key for key in config.settable() if key.startswith(incomplete)]


@app.command("show")
def show(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object: path, and every key's value and source.")]
    = False,
) -> None:
    """Every setting's value and where it comes from: environment, config file or default."""
    from dsvl_cli.errors import guarded
    from dsvl_cli.screen.text import write_json
    from dsvl_cli.setup import config

    with guarded(False):
        file = config.path()
        rows = config.effective()
        if as_json:
            write_json({"path": str(file), "exists": file.exists(), "settings": rows}, default=str)
            return
        print(f"# {file}{'' if file.exists() else ' (not created yet)'}")
        width = max(len(row["key"]) for row in rows)
        for row in rows:
            value = "-" if row["value"] is None else json.dumps(row["value"], ensure_ascii=False)
            source = row["source"] + (f" ({row['env']})" if row["source"] == "environment" else "")
            print(f"{row['key']:<{width}}  {value:<40}  {source}")


@app.command("path")
def path() -> None:
    """The config file's path (it may not exist yet)."""
    from dsvl_cli.setup import config

    print(config.path())


@app.command("set")
def set_(
    key: Annotated[str, typer.Argument(help="A shared option's name: model, device, max_new_tokens, keep_alive...",
                                       autocompletion=_complete_key, show_default=False)],
    value: Annotated[Optional[str], typer.Argument(
        help="Its value, checked as the flag checks it. Left out: read from a hidden prompt, or from stdin "
             "(`dsvl config set api_key` keeps the key out of shell history and ps).", show_default=False)] = None,
) -> None:
    """Set a default: `dsvl config set model 1.3b`, `dsvl config set max_new_tokens 256`, `dsvl config set api_key`."""
    from dsvl_cli.errors import guarded
    from dsvl_cli.setup import config

    with guarded(False):
        name = config.normalise(key)
        if value is None:
            value = _read_value(name)
        written = config.set_value(name, config.parse(name, value))
        shown = "(set)" if name == "api_key" else value  # a secret is never printed back
        typer.echo(f"dsvl: {name} = {shown} in {written}", err=True)


def _read_value(name: str) -> str:
    """VALUE left out: a hidden prompt on a terminal, else the first line of stdin (as `llm keys set`)."""
    import sys

    from dsvl_cli.errors import UsageError

    if sys.stdin is not None and sys.stdin.isatty():
        import getpass

        value = getpass.getpass(f"{name}: ")
    else:
        value = (sys.stdin.readline() if sys.stdin is not None else "").rstrip("\r\n")
    if not value:
        raise UsageError(f"config set {name}: no value given (type it at the prompt, or pipe it in)")
    return value


@app.command("unset")
def unset(
    key: Annotated[str, typer.Argument(help="The key to remove from the file.", autocompletion=_complete_key,
                                       show_default=False)],
) -> None:
    """Remove a default from the config file (the built-in default applies again)."""
    from dsvl_cli.errors import UsageError, guarded
    from dsvl_cli.setup import config

    with guarded(False):
        name = config.normalise(key)
        if name not in config.settable():
            raise UsageError(f"config key {key}: unknown (known keys: {', '.join(config.settable())})")
        if not config.unset(name):
            typer.echo(f"dsvl: {name} was not set in {config.path()}", err=True)
            return
        typer.echo(f"dsvl: {name} removed from {config.path()}", err=True)
