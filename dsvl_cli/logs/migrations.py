"""The log's schema, as named migrations applied in order (the way simonw/llm and sqlite-migrate do it).

Each migration is a function of a connection; the names of those applied are rows of
`_dsvl_migrations`, so a file written by any earlier dsvl is brought up to date when it is next
opened, and a migration never runs twice. Why not sqlite-utils' `Migrations` (which sqlite-migrate
now re-exports): importing sqlite-utils imports pandas and numpy where they are installed (~390 ms
here, on every `dsvl ask`), and its `apply` reads what is pending before it takes the write lock,
so two first calls at once both run the first migration. Here the check is a plain read, and only
a file with pending migrations takes the lock (BEGIN IMMEDIATE), then checks again under it.

Append new migrations at the end; never edit or reorder one that has shipped.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import datetime, timezone

TABLE = "_dsvl_migrations"


def m001_entries(db: sqlite3.Connection) -> None:
    """One row per answered question (ask, a chat turn; batch and serve with --log)."""
    db.execute("""
        CREATE TABLE entries (
            id INTEGER PRIMARY KEY,
            conversation_id TEXT NOT NULL,
            turn INTEGER NOT NULL,          -- the exchange's number in its conversation (1, 2, ...)
            history INTEGER NOT NULL,       -- exchanges before it that the model saw
            kind TEXT NOT NULL,             -- ask, chat, batch, serve
            datetime_utc TEXT NOT NULL,
            model TEXT NOT NULL,
            revision TEXT,
            settings TEXT NOT NULL,         -- JSON: the options that change the answer
            system TEXT,                    -- NULL: the model's default system prompt
            prompt TEXT NOT NULL,
            answer TEXT NOT NULL,
            finish_reason TEXT NOT NULL,
            format TEXT,                    -- JSON: --schema / --regex / --choices, or NULL
            results TEXT,                   -- JSON: data, scores, decisions, or NULL
            stats TEXT NOT NULL,            -- JSON: the stats object of the answer
            pictures TEXT NOT NULL          -- JSON: [{source, kind, sha256, sha256_of, bytes, width, height}]
        )""")
    db.execute("CREATE INDEX entries_conversation ON entries (conversation_id, id)")
    db.execute("CREATE INDEX entries_time ON entries (datetime_utc)")


def m002_search(db: sqlite3.Connection) -> None:
    """Full-text search (FTS5) over prompts, answers and system prompts, kept by triggers."""
    db.execute("CREATE VIRTUAL TABLE entries_fts USING fts5(prompt, answer, system, content='entries', "
               "content_rowid='id')")
    db.execute("""CREATE TRIGGER entries_ai AFTER INSERT ON entries BEGIN
        INSERT INTO entries_fts (rowid, prompt, answer, system) VALUES (new.id, new.prompt, new.answer, new.system);
        END""")
    db.execute("""CREATE TRIGGER entries_ad AFTER DELETE ON entries BEGIN
        INSERT INTO entries_fts (entries_fts, rowid, prompt, answer, system)
        VALUES ('delete', old.id, old.prompt, old.answer, old.system);
        END""")
    db.execute("INSERT INTO entries_fts (entries_fts) VALUES ('rebuild')")  # rows an older dsvl wrote


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [m001_entries, m002_search]


def applied(db: sqlite3.Connection) -> set[str]:
    """Names of the migrations this file has had (a plain read: no lock)."""
    exists = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (TABLE,)).fetchone()
    return {row[0] for row in db.execute(f"SELECT name FROM {TABLE}")} if exists else set()


def migrate(db: sqlite3.Connection, *, upto: int | None = None) -> list[str]:
    """Apply the pending migrations (the first `upto` only, where given: tests build old files);
    the names applied. `db` is in autocommit mode (isolation_level=None)."""
    wanted = MIGRATIONS[:upto] if upto is not None else MIGRATIONS
    if {m.__name__ for m in wanted} <= applied(db):
        return []
    db.execute("BEGIN IMMEDIATE")  # one writer at a time; the others wait (busy timeout), then see it done
    try:
        db.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
        done = applied(db)
        names = []
        for migration in wanted:
            if migration.__name__ not in done:
                migration(db)
                db.execute(f"INSERT INTO {TABLE} (name, applied_at) VALUES (?, ?)",
                           (migration.__name__, datetime.now(timezone.utc).isoformat()))
                names.append(migration.__name__)
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return names
