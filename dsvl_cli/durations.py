"""Durations as people type them: `30s`, `5m`, `1h30m`, `250ms`, `90` (seconds), `0` (off).

Why not a library: the grammar is ollama's `keep_alive` (Go's time.ParseDuration minus the exotic
units) and fits in a regular expression; `--help` must stay free of imports. Limits: no negative
durations ("forever" is not offered: an idle server should always end), no days or weeks.
"""

from __future__ import annotations

import re

from dsvl_cli.errors import UsageError

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h)")


def parse_duration(text: str, flag: str = "--keep-alive") -> float:
    """Seconds in `text`; a bare number is seconds. UsageError names the flag and the value."""
    value = text.strip().lower()
    try:
        seconds = float(value)
    except ValueError:
        seconds = None
    if seconds is None and value and _PART.sub("", value) == "":
        seconds = sum(float(n) * _UNITS[unit] for n, unit in _PART.findall(value))
    if seconds is None or seconds != seconds or seconds < 0 or seconds == float("inf"):
        raise UsageError(f"{flag} {text!r}: use a duration such as 30s, 5m, 1h or 0 (off)")
    return seconds


def format_duration(seconds: float) -> str:
    """`4m59s`, `2h0m`, `12s`, `0.4s`: short and whole-second past 10 s."""
    if seconds < 10:
        return f"{seconds:.1f}s" if seconds % 1 else f"{int(seconds)}s"
    total = int(round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"
