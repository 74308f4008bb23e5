"""Entries as `dsvl logs` prints them as text: Markdown-like, as `llm logs` does (--json: write_json)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from dsvl_cli.errors import UsageError


def since_time(text: str) -> str:
    """`--since`: a duration back from now (30m, 2h, 7d) or an ISO date/time (UTC unless it says)."""
    from dsvl_cli.settings import parse_duration

    value = text.strip()
    days = value[:-1] if value.lower().endswith("d") else None
    try:
        ago = timedelta(days=float(days)) if days else timedelta(seconds=parse_duration(value, "--since"))
        return (datetime.now(timezone.utc) - ago).isoformat(timespec="milliseconds")
    except (UsageError, ValueError):
        pass
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise UsageError(f"--since {text!r}: use a duration (30m, 2h, 7d) or a date (2026-12-01, "
                         "2026-12-01T09:30)") from None
    when = when if when.tzinfo else when.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc).isoformat(timespec="milliseconds")


def as_text(entries: list[dict], show=str) -> str:
    """Every entry as a block; `show` makes user text safe for the screen (visible controls)."""
    return "\n\n".join(_block(e, show) for e in entries) + ("\n" if entries else "")


def _block(e: dict, show) -> str:
    kind = e["kind"] + (f", turn {e['turn']}" if e["turn"] > 1 or e["kind"] == "chat" else "")
    lines = [f"# {e['datetime_utc']}    entry {e['id']}    conversation {e['conversation_id']}", "",
             f"Model: {show(e['model'])}{'@' + show(e['revision']) if e['revision'] else ''} ({kind})"]
    if e["system"] is not None:
        lines.append(f"System: {show(e['system'])}")
    lines += ["", "## Prompt", "", show(e["prompt"])]
    if e["pictures"]:
        lines += ["", "## Pictures", ""]
        for p in e["pictures"]:
            size = f"{p['bytes']} bytes, " if p.get("bytes") is not None else ""
            lines.append(f"- {show(p['source'])} ({size}{p['width']}x{p['height']}, sha256 {p['sha256'][:16]}…"
                         f"{' of the pixels' if p.get('sha256_of') == 'pixels' else ''})")
    if e["format"]:
        lines += ["", f"Format: {show(json.dumps(e['format'], ensure_ascii=False))}"]
    lines += ["", "## Response", "", show(e["answer"])]
    if e["results"]:
        lines += ["", f"Results: {show(json.dumps(e['results'], ensure_ascii=False))}"]
    stats = e["stats"]
    lines += ["", f"({e['finish_reason']} · {stats.get('prompt_tokens', 0)} prompt tokens · "
                  f"{stats.get('generated_tokens', 0)} generated · {stats.get('total_s', 0)}s)"]
    return "\n".join(lines)
