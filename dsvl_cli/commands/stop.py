"""`dsvl stop [MODEL] [--all]`: end keep-alive servers cleanly (answers in flight finish first)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer


def stop(
    model: Annotated[Optional[str], typer.Argument(
        metavar="[MODEL]", help="The model (as given to -m, another name of it, or the ID from `dsvl ps`).",
        show_default=False)] = None,
    everything: Annotated[bool, typer.Option("--all", help="Stop every keep-alive server.")] = False,
) -> None:
    """Stop the keep-alive server of MODEL; with --all, every one; with neither, the only one.

    \b
    Exit: 0 stopped (or nothing was running), 1 MODEL has no server, 2 several run and none was named.

    \b
    Examples:
      dsvl stop tiny-random
      dsvl stop --all
    """
    from dsvl_cli.keepalive import registry
    from dsvl_cli.screen.environment import Environment
    from dsvl_cli.errors import guarded
    from dsvl_cli.render import note

    with guarded(False):
        stopped = registry.stop(model, everything)
        console = Environment.current().stderr_console()
        if not stopped:
            note(console, "no keep-alive server is running", style="dim")
        for row in stopped:
            note(console, f"stopped {row['model']} (pid {row['pid']})", style="dim")
