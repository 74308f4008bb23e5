"""`dsvl ps`: the keep-alive servers running for this DSVL_HOME (see `--keep-alive`)."""

from __future__ import annotations

from typing import Annotated

import typer

COLUMNS = ("ID", "MODEL", "DEVICE", "DTYPE", "PID", "MEMORY", "REQUESTS", "IDLE", "EXPIRES")


def ps(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON array: every field of every server.")] = False,
) -> None:
    """List the models kept warm by --keep-alive: model, device, dtype, pid, memory, idle time.

    \b
    Examples:
      dsvl ask photo.jpg "What is this?" -m 1.3b --keep-alive 10m
      dsvl ps
      dsvl ps --json | jq '.[].pid'
    """
    from dsvl_cli.keepalive import registry
    from dsvl_cli.errors import guarded
    from dsvl_cli.screen.text import write_json

    with guarded(False):
        rows = registry.running()
        if as_json:
            write_json(rows)
        else:
            print(table(rows))


def table(rows: list[dict]) -> str:
    """Aligned columns, ollama-style; user-given names are shown with control characters replaced."""
    from dsvl_cli.settings import format_duration

    lines = [COLUMNS]
    for row in rows:
        gpu = f" + {_size(row['gpu_bytes'])} GPU" if row.get("gpu_bytes") else ""
        if row["status"] != "running":
            idle, expires = "-", row["status"]
        else:
            idle = format_duration(row["idle_s"])
            expires = "busy" if row["in_flight"] else f"in {format_duration(row['expires_in_s'])}"
        lines.append((row["key"][:8], _printable(str(row["model"])), _printable(str(row["device"])),
                      str(row["dtype"]), str(row["pid"]), (_size(row["rss_bytes"]) + gpu) if row["rss_bytes"] else "-",
                      "-" if row["requests"] is None else str(row["requests"]), idle, expires))
    widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines)


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n / 2**10:.0f} KiB"


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in text)
