"""`dsvl logs`: the SQLite log of every ask and chat answer: list, search, show, rm, on/off (logs/)."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

app = typer.Typer(add_completion=False, rich_markup_mode=None, invoke_without_command=True,
                  help="The log of every ask and chat answer (SQLite): list and search it, show or delete "
                       "entries, turn logging off or on.")


@app.callback()
def logs(
    ctx: typer.Context,
    count: Annotated[int, typer.Option("-n", "--count", help="How many entries (the newest; 0: all).")] = 3,
    query: Annotated[Optional[str], typer.Option("-q", "--query", help="Full-text search of prompts, answers and "
                     "system prompts: every word must occur; \"a phrase\"; prefix*.")] = None,
    model: Annotated[Optional[str], typer.Option("-m", "--model", help="Only this model's entries.")] = None,
    since: Annotated[Optional[str], typer.Option("--since", help="Only entries since a time: 30m, 2h, 7d or "
                     "a date (2026-12-01).")] = None,
    conversation: Annotated[Optional[str], typer.Option("-c", "--conversation", metavar="ID",
                            help="Only this conversation (its id, or a unique prefix).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="A JSON list of the entries.")] = False,
) -> None:
    """The newest entries of the log (3 by default), oldest first.

    \b
    Examples:
      dsvl logs                     the last three answers
      dsvl logs -n 10 -q invoice    the last ten that mention "invoice"
      dsvl logs -c 0193f2 --json    one conversation, as JSON
      dsvl logs show 42             one entry
      dsvl logs off                 stop logging (dsvl logs on: start again)
      dsvl logs rm --all            delete every entry
    """
    if ctx.invoked_subcommand is not None:
        return
    from dsvl_cli.errors import UsageError, guarded
    from dsvl_cli.logs import show, store

    with guarded(False):
        if count < 0:
            raise UsageError(f"-n {count}: must be 0 (all) or more")
        wanted = store.Query(limit=count or None, text=query, model=model, conversation=conversation,
                             since=show.since_time(since) if since else None)
        entries = []
        if store.log_path().exists():
            with store.opened(create=False) as db:
                entries = store.select(db, wanted)
        else:
            print(f"no log yet at {store.log_path()}: dsvl ask and dsvl chat write one", file=sys.stderr)
        _print(entries, as_json)


@app.command("show")
def show_entry(
    entry_id: Annotated[int, typer.Argument(metavar="ID", help="The entry's id (dsvl logs shows it).")],
    as_json: Annotated[bool, typer.Option("--json", help="The entry as a JSON object.")] = False,
) -> None:
    """One entry, whole."""
    from dsvl_cli.errors import UsageError, guarded
    from dsvl_cli.logs import store
    from dsvl_cli.screen.text import write_json

    with guarded(False):
        with store.opened(create=False) as db:
            found = store.get(db, entry_id)
        if found is None:
            raise UsageError(f"no log entry {entry_id} (dsvl logs lists them)")
        if as_json:
            write_json(found, indent=2)
        else:
            _print([found], False)


@app.command("rm")
def rm(
    entry_ids: Annotated[Optional[list[int]], typer.Argument(metavar="[ID]...", help="Entries to delete.")] = None,
    conversation: Annotated[Optional[str], typer.Option("-c", "--conversation", metavar="ID",
                            help="Delete every entry of this conversation.")] = None,
    everything: Annotated[bool, typer.Option("--all", help="Delete every entry.")] = False,
) -> None:
    """Delete entries; what is deleted is overwritten in the file, not only unlinked."""
    from dsvl_cli.errors import UsageError, guarded
    from dsvl_cli.logs import store

    with guarded(False):
        given = sum(bool(x) for x in (entry_ids, conversation, everything))
        if given != 1:
            raise UsageError("dsvl logs rm: give entry ids, -c CONVERSATION or --all (one of them)")
        with store.opened(create=False) as db:
            db.execute("PRAGMA secure_delete = ON")  # deleted text is zeroed, not left in free pages
            if conversation:
                cid = store.resolve_conversation(db, conversation)
                entry_ids = [e["id"] for e in store.conversation_entries(db, cid)]
            deleted = store.delete(db, None if everything else list(entry_ids))
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # nor left in the write-ahead log
        if entry_ids and not conversation and deleted < len(set(entry_ids)):
            print(f"deleted {deleted} of {len(set(entry_ids))} entries (the others were not in the log)")
        else:
            print(f"deleted {deleted} {'entry' if deleted == 1 else 'entries'}")


@app.command("path")
def path() -> None:
    """The log file's path (DSVL_LOGS moves it)."""
    from dsvl_cli.logs import store

    print(store.log_path())


@app.command("status")
def status() -> None:
    """Whether logging is on, where the file is, how many entries it holds."""
    from dsvl_cli.errors import guarded
    from dsvl_cli.logs import store

    with guarded(False):
        file = store.log_path()
        print(f"logging is {'on' if store.logging_on() else 'off (dsvl logs on starts it again)'}")
        if not file.exists():
            print(f"log file: {file} (not created yet)")
            return
        with store.opened(create=False) as db:
            entries = store.count(db)
        print(f"log file: {file} ({entries} {'entry' if entries == 1 else 'entries'}, "
              f"{file.stat().st_size / 1e6:.1f} MB)")


@app.command("on")
def on() -> None:
    """Log every ask and chat answer again (the default)."""
    from dsvl_cli.logs import store

    store.off_marker().unlink(missing_ok=True)
    print(f"logging is on: answers go to {store.log_path()}")


@app.command("off")
def off() -> None:
    """Stop logging (entries already written stay: dsvl logs rm --all deletes them)."""
    from dsvl_cli.errors import guarded
    from dsvl_cli.logs import store

    with guarded(False):
        marker = store.off_marker()
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        print("logging is off (dsvl logs on starts it again)")


def _print(entries: list[dict], as_json: bool) -> None:
    from dsvl_cli.logs import show
    from dsvl_cli.screen.text import visible, write_json

    if as_json:
        write_json(entries, indent=2)
        return
    terminal = sys.stdout.isatty()
    sys.stdout.write(show.as_text(entries, visible if terminal else str))
