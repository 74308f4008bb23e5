"""A logged conversation rebuilt to go on with (`dsvl ask -c`, `--cid ID`, `dsvl chat -c`).

The exchanges the model saw before the last entry are found by turn number (each entry keeps its
`turn` and how many exchanges preceded it): an answer retried or a question undone in chat leaves
an older entry with the same number, and the newest one before the next turn is the one that
stayed. Pictures are loaded again from their sources and must still be what was logged (sha256):
a picture that is gone or changed is one line and exit 2, as is one given on stdin or as a data:
URI (the log keeps no pixels).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from dsvl_cli.conversation import Conversation, Message
from dsvl_cli.errors import ImageLoadError, UsageError
from dsvl_cli.images import LoadedImage, load_image
from dsvl_cli.logs import entry, store


@dataclass
class Thread:
    """A logged conversation, ready for its next question."""

    conversation_id: str
    conversation: Conversation  # every exchange so far, pictures loaded and checked
    turn: int  # the number of its last exchange
    model: str
    revision: str | None

    def follow_up(self, prompt: str, images: list[LoadedImage], system: str | None) -> Conversation:
        """The conversation with the next question added; `system` (-s) replaces the logged one."""
        conversation = self.conversation.copy()
        if system is not None:
            conversation.system = system
        conversation.add_user(prompt, images)
        return conversation

    def options(self, opts):
        """`opts` with the conversation's model (and revision) where -m/DSVL_MODEL named none."""
        if opts.requested_model is not None or opts.server:
            return opts
        model = dataclasses.replace(opts.model, model=self.model, revision=self.revision)
        return dataclasses.replace(opts, model=model)


def continued(continue_: bool, cid: str | None) -> Thread | None:
    """The conversation -c (the last one) or --cid ID names, rebuilt; None without either."""
    return load_thread(cid) if continue_ or cid is not None else None


def load_thread(given: str | None) -> Thread:
    """The conversation `given` names (an id or a unique prefix), or the last one logged."""
    if not store.log_path().exists():
        raise UsageError(f"nothing to continue: no log at {store.log_path()} yet (dsvl logs status)")
    with store.opened() as db:
        cid = store.resolve_conversation(db, given) if given else store.last_conversation(db)
        if cid is None:
            raise UsageError("nothing to continue: the log has no conversations")
        rows = store.conversation_entries(db, cid)
    chain = _chain(cid, rows)
    conversation = Conversation(system=chain[-1]["system"])
    for row in chain:
        images = [_reload(p, row) for p in row["pictures"]]
        conversation.messages.append(Message("user", row["prompt"], images))
        conversation.messages.append(Message("assistant", row["answer"], finish_reason=row["finish_reason"]))
    last = chain[-1]
    return Thread(cid, conversation, last["turn"], last["model"], last["revision"])


def _chain(cid: str, rows: list[dict]) -> list[dict]:
    """The entries of the exchanges the last entry's model saw, in order, then the last entry."""
    chain = [rows[-1]]
    for turn in range(rows[-1]["turn"] - 1, rows[-1]["turn"] - rows[-1]["history"] - 1, -1):
        before = [row for row in rows if row["id"] < chain[0]["id"] and row["turn"] == turn]
        if not before:
            raise UsageError(f"conversation {cid}: turn {turn} is not in the log (deleted, or loaded in chat "
                             "from a saved file); it cannot be rebuilt")
        chain.insert(0, before[-1])
    return chain


def _reload(record: dict, row: dict) -> LoadedImage:
    """Load a logged picture again and check that it is the one logged."""
    source, kind, when = record["source"], record["kind"], f"turn {row['turn']} (entry {row['id']})"
    where = record.get("path") or source  # a relative path logged in another folder
    if kind in ("stdin", "data"):
        how = "on stdin" if kind == "stdin" else "as a data: URI"
        raise ImageLoadError(source, f"was given {how} in {when}; the log keeps no pixels, so this "
                                     "conversation cannot continue")
    if record.get("sha256_of") == "file":
        try:
            digest, _ = entry.file_digest(where)
        except FileNotFoundError:
            raise ImageLoadError(source, f"is gone since {when} was logged") from None
        except OSError as exc:
            raise ImageLoadError(source, f"cannot be read again ({exc.strerror or exc})") from None
        if digest != record["sha256"]:
            raise ImageLoadError(source, f"has changed since {when} was logged (sha256 differs)")
    image = load_image(where, exact=bool(row["settings"].get("exact_pixels")))
    if record.get("sha256_of") == "pixels" and entry.pixel_digest(image.image) != record["sha256"]:
        raise ImageLoadError(source, f"has changed since {when} was logged (sha256 of its pixels differs)")
    return image
