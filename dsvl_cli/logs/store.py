"""The log file: where it is, opening it (WAL, a busy timeout, migrations), writing and reading entries.

Every failure of the file itself (locked past the timeout, read-only, full, not a database) is a
`LogError` naming the file; callers decide what it costs (a warning when writing after an answer,
exit 1 for `dsvl logs`). The standard library's sqlite3 only: importing it costs ~5 ms.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from dsvl_cli.errors import DsvlError
from dsvl_cli.logs.migrations import migrate

BUSY_TIMEOUT_S = 5.0  # parallel shell calls each wait this long for the write lock (a write takes ~1 ms)
JSON_FIELDS = ("settings", "format", "results", "stats", "pictures")


class LogError(DsvlError):
    """The log file could not be read or written (exit 1 where it is the command's whole job)."""

    kind = "log_error"


def state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "dsvl"


def log_path() -> Path:
    """DSVL_LOGS, or $XDG_STATE_HOME/dsvl/logs.db (~/.local/state/dsvl/logs.db)."""
    moved = os.environ.get("DSVL_LOGS")
    return Path(moved).expanduser() if moved else state_dir() / "logs.db"


def off_marker() -> Path:
    """While this file exists, nothing is logged (`dsvl logs off`; `dsvl logs on` removes it)."""
    return state_dir() / "logs-off"


def logging_on() -> bool:
    return not off_marker().exists()


def new_conversation_id() -> str:
    """Sortable by time (milliseconds, hex) then random: 20 characters, any unique prefix names it."""
    return f"{int(time.time() * 1000):012x}{secrets.token_hex(4)}"


def explain(path: Path, exc: BaseException) -> str:
    """One line: what is wrong with the log file and what to do."""
    text = str(exc)
    if isinstance(exc, sqlite3.DatabaseError) and ("not a database" in text or "malformed" in text):
        return (f"the log file {path} is damaged ({text}); move it aside (mv '{path}' '{path}.bad') and "
                "dsvl starts a new one")
    if "readonly" in text or "read-only" in text or isinstance(exc, PermissionError):
        return f"the log file {path} cannot be written ({text}); check its permissions, or set DSVL_LOGS"
    if "locked" in text or "busy" in text:
        return f"the log file {path} was locked for {BUSY_TIMEOUT_S:g} s by another process ({text})"
    return f"the log file {path}: {text}"


@contextmanager
def opened(path: Path | None = None, *, create: bool = True) -> Iterator[sqlite3.Connection]:
    """A connection with the schema up to date; LogError for any failure of the file. `create=False`:
    a missing file is LogError too (reading commands do not create one)."""
    path = path or log_path()
    db = None
    try:
        if create and not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))  # prompts are private: yours only
        elif not path.exists():
            raise LogError(f"no log yet at {path}: answers of dsvl ask and dsvl chat are logged there")
        db = _connect(path)
        db.row_factory = sqlite3.Row
        _wal(db)
        db.execute("PRAGMA synchronous = NORMAL")  # WAL: durable at each checkpoint, never corrupt
        migrate(db)
        yield db
    except (sqlite3.Error, OSError) as exc:
        raise LogError(explain(path, exc)) from None
    finally:
        if db is not None:
            db.close()


def _connect(path: Path) -> sqlite3.Connection:
    """Autocommit (transactions are explicit), and a wait of BUSY_TIMEOUT_S for a lock."""
    return sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)


def _wal(db: sqlite3.Connection) -> None:
    """WAL mode (readers never block the writer, nor it them); it stays with the file, so only a new
    file switches. The switch takes no notice of the busy timeout (SQLite answers "locked" at once
    while another process opens the new file), so it is retried here until the same timeout."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                db.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.005)


@dataclass(frozen=True)
class Query:
    """What `dsvl logs` asks for: the newest `limit` entries matching every filter given."""

    limit: int | None = 3
    text: str | None = None  # FTS5 search (words; "quoted phrases"; prefix*)
    model: str | None = None
    since: str | None = None  # ISO time (UTC), inclusive
    conversation: str | None = None  # an id or a unique prefix


def insert(db: sqlite3.Connection, entry: dict) -> int:
    """Write one entry (the dict of entry.build); its id."""
    row = {k: (json.dumps(v, ensure_ascii=False) if k in JSON_FIELDS and v is not None else v)
           for k, v in entry.items()}
    columns = ", ".join(row)
    cursor = db.execute(f"INSERT INTO entries ({columns}) VALUES ({', '.join('?' * len(row))})", list(row.values()))
    return int(cursor.lastrowid)


def select(db: sqlite3.Connection, query: Query) -> list[dict]:
    """Matching entries, oldest first (the newest `limit` of them)."""
    where, args = [], []
    if query.text:
        where.append("id IN (SELECT rowid FROM entries_fts WHERE entries_fts MATCH ?)")
        args.append(fts_query(query.text))
    if query.model:
        where.append("model = ?")
        args.append(query.model)
    if query.since:
        where.append("datetime_utc >= ?")
        args.append(query.since)
    if query.conversation:
        where.append("conversation_id = ?")
        args.append(resolve_conversation(db, query.conversation))
    sql = "SELECT * FROM entries" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id DESC"
    if query.limit:
        sql += f" LIMIT {int(query.limit)}"
    return [decode(row) for row in reversed(db.execute(sql, args).fetchall())]


def fts_query(text: str) -> str:
    """User words as an FTS5 query: each word quoted (so `-`, `:` or `AND` are text, not syntax),
    a trailing * kept as a prefix search; all words must occur."""
    words = []
    for word in text.split():
        star = word.endswith("*") and len(word) > 1
        word = word.rstrip("*") if star else word
        words.append('"' + word.replace('"', '""') + '"' + ("*" if star else ""))
    return " ".join(words)


def get(db: sqlite3.Connection, entry_id: int) -> dict | None:
    row = db.execute("SELECT * FROM entries WHERE id = ?", (entry_id,)).fetchone()
    return decode(row) if row else None


def conversation_entries(db: sqlite3.Connection, conversation_id: str) -> list[dict]:
    rows = db.execute("SELECT * FROM entries WHERE conversation_id = ? ORDER BY id", (conversation_id,))
    return [decode(row) for row in rows]


def last_conversation(db: sqlite3.Connection) -> str | None:
    row = db.execute("SELECT conversation_id FROM entries ORDER BY id DESC LIMIT 1").fetchone()
    return row[0] if row else None


def resolve_conversation(db: sqlite3.Connection, given: str) -> str:
    """The conversation id `given` names (the whole id, or a prefix of one only); UsageError if none or several."""
    from dsvl_cli.errors import UsageError

    pattern = given.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    rows = db.execute("SELECT DISTINCT conversation_id FROM entries WHERE conversation_id LIKE ? ESCAPE '\\' "
                      "LIMIT 2", (pattern,)).fetchall()
    if not rows:
        raise UsageError(f"no logged conversation {given!r} (dsvl logs lists them)")
    if len(rows) > 1:
        raise UsageError(f"conversation {given!r} is ambiguous: give more of its id")
    return rows[0][0]


def delete(db: sqlite3.Connection, entry_ids: list[int] | None) -> int:
    """Delete these entries (None: every entry); how many went."""
    if entry_ids is None:
        count = db.execute("DELETE FROM entries").rowcount
    else:
        count = db.execute(f"DELETE FROM entries WHERE id IN ({', '.join('?' * len(entry_ids))})",
                           entry_ids).rowcount
    return max(count, 0)


def count(db: sqlite3.Connection) -> int:
    return int(db.execute("SELECT count(*) FROM entries").fetchone()[0])


def decode(row: sqlite3.Row) -> dict:
    return {k: (json.loads(row[k]) if k in JSON_FIELDS and row[k] is not None else row[k]) for k in row.keys()}
