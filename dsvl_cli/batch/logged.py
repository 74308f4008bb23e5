"""`dsvl batch --log`: each answered record also becomes a log entry (logs/), a conversation of one.

The output writer is wrapped, so the local runner, --server and --ray all log the same way: every
record with an answer is looked up by its id (ids are unique in a run) and logged after it was
written; error records are not logged. A failing log file is one warning line; the run goes on.
Pictures are known here by their sources only: files are hashed, URLs and data: URIs are not.
"""

from __future__ import annotations

import threading

from dsvl_cli.batch.records import Record, id_key
from dsvl_cli.conversation import Conversation
from dsvl_cli.logs.entry import picture_of_source
from dsvl_cli.logs.writer import AnswerLog
from dsvl_cli.results import Result, Stats


class LoggedWriter:
    def __init__(self, writer, items: list, log: AnswerLog):
        self.writer = writer
        self.log = log
        self.records = {id_key(r.id): r for r in items if isinstance(r, Record)}
        self.lock = threading.Lock()  # --server writes from several threads

    def __getattr__(self, name: str):  # closed, stream...: the wrapped writer's
        return getattr(self.writer, name)

    def write(self, obj: dict) -> None:
        self.writer.write(obj)
        record = self.records.get(id_key(obj.get("id")))
        if record is None or "answer" not in obj:
            return
        result = Result(obj["answer"], obj["finish_reason"], Stats.from_dict(obj.get("stats") or {}),
                        data=obj.get("data"), json_answer="data" in obj, scores=obj.get("scores"))
        with self.lock:
            self.log.new_conversation()
            self.log.record(Conversation.single(record.prompt, system=record.system), result, record.gen, 1,
                            pictures=[picture_of_source(s) for s in record.images])


def logged(writer, items: list, opts):
    """`writer`, logging each answer (batch --log, unless `dsvl logs off`)."""
    return LoggedWriter(writer, items, AnswerLog.for_command("batch", opts))
