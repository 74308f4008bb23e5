"""`dsvl models` (alias `ls`), `dsvl pull`, `dsvl rm`: the models on this machine (models/)."""

from __future__ import annotations

import time
from typing import Annotated, Optional

import typer

from dsvl_cli.models.completion import complete_model

COLUMNS = ("NAME", "ALIAS", "REVISION", "SIZE", "LAST USED", "KIND", "DEFAULT")


def models(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object: the local models and the aliases "
                                                         "not on this machine.")] = False,
    show_all: Annotated[bool, typer.Option("--all", help="Also list cached models that are not DeepSeek-VL.")] = False,
) -> None:
    """List the DeepSeek-VL models on this machine: the Hugging Face cache and the tiny-random builds.

    \b
    Examples:
      dsvl models
      dsvl models --json | jq -r '.models[].name'
      dsvl pull 1.3b && dsvl config set model 1.3b
    """
    from dsvl_cli.engine.runtime import dsvl_home
    from dsvl_cli.errors import guarded
    from dsvl_cli.models import cache
    from dsvl_cli.screen.text import write_json
    from dsvl_cli.setup.config import default_model

    with guarded(False):
        default = default_model()
        found = cache.local_models(dsvl_home(), include_all=show_all)
        chosen = cache.find(found, default)
        missing = cache.not_local(found)
        if as_json:
            rows = [{**m.to_dict(), "default": m is chosen} for m in found]
            write_json({"default": default, "models": rows, "not_local": missing})
            return
        print(table(found, chosen))
        for row in missing:
            repo = f" ({row['name']})" if row["name"] not in row["aliases"] else ""
            print(f"not here: {', '.join(row['aliases'])}{repo}: {row['how']}")
        if chosen is None:
            print(f"default model {default} is not here yet: dsvl pull {cache.short_name(default)}")


def table(found: list, chosen) -> str:
    lines = [COLUMNS]
    for m in found:
        revision = ", ".join((r["refs"] or [r["commit"][:12]])[0] for r in m.revisions) or "-"
        kind = ("random weights, " if m.random_weights else "") + \
            ("hybrid" if m.hybrid else "siglip" if m.hybrid is False else "not DeepSeek-VL")
        lines.append((_printable(m.name), ", ".join(m.aliases) or "-", revision, human_size(m.size_bytes),
                      ago(m.last_used), kind, "*" if m is chosen else ""))
    widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines)


def pull(
    model: Annotated[str, typer.Argument(help="Hub id or alias (7b, 1.3b; tiny-random is built here).",
                                         autocompletion=complete_model, show_default=False)],
    revision: Annotated[Optional[str], typer.Option("--revision", help="Hub branch, tag or commit.")] = None,
    offline: Annotated[bool, typer.Option("--offline", envvar="DSVL_OFFLINE", help="Fail instead of downloading.")]
    = False,
) -> None:
    """Download a model into the Hugging Face cache: safetensors only, resumable, progress on stderr.

    \b
    Examples:
      dsvl pull 1.3b
      dsvl pull deepseek-community/deepseek-vl-7b-chat --revision main
    """
    from dsvl_cli.engine.runtime import dsvl_home
    from dsvl_cli.errors import guarded
    from dsvl_cli.models import fetch

    with guarded(False):
        done = fetch.pull(model, revision, offline=offline, home=dsvl_home())
        note = " (random weights: its answers are noise)" if done.random_weights else ""
        typer.echo(f"dsvl: {done.name}: {human_size(done.size_bytes)} in {done.path}{note}", err=True)


def rm(
    model: Annotated[str, typer.Argument(help="Hub id or alias, as `dsvl models` lists it.",
                                         autocompletion=complete_model, show_default=False)],
    revision: Annotated[Optional[str], typer.Option("--revision", help="Delete only this revision "
                                                    "(commit or ref).")] = None,
    yes: Annotated[bool, typer.Option("-y", "--yes", help="Do not ask (needed when not on a terminal).")] = False,
) -> None:
    """Delete a model from the Hugging Face cache (or a tiny-random build) and say how much was freed.

    \b
    Examples:
      dsvl rm 7b
      dsvl rm deepseek-community/deepseek-vl-1.3b-chat --revision 1a2b3c -y
    """
    from dsvl_cli.engine.runtime import dsvl_home
    from dsvl_cli.errors import UsageError, guarded
    from dsvl_cli.models import cache, fetch
    from dsvl_cli.screen.environment import Environment

    with guarded(False):
        removal = fetch.plan_removal(model, revision, cache.local_models(dsvl_home(), include_all=True))
        what = f"{removal.model.name}" + (f" ({len(removal.commits)} revision(s))" if removal.commits else "")
        if not yes:
            if not Environment.current().stdin_isatty:
                raise UsageError(f"model {model}: rm asks before deleting; not on a terminal, pass -y")
            if not typer.confirm(f"Delete {what}, freeing {human_size(removal.freed_bytes)}?", err=True):
                typer.echo("dsvl: nothing deleted", err=True)
                raise typer.Exit(1)
        removal.run()
        typer.echo(f"dsvl: deleted {what}: {human_size(removal.freed_bytes)} freed", err=True)


def human_size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def ago(when: float | None) -> str:
    if not when:
        return "-"
    seconds = max(0.0, time.time() - when)
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            count = int(seconds // size)
            return f"{count} {unit}{'s' if count > 1 else ''} ago"
    return "just now"


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in text)
