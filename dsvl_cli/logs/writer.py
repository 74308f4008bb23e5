"""Writing answers to the log from a front end, at a cost of no answer.

Every entry is written after its answer was printed; a log file that is locked, read-only, full or
damaged is one warning line on stderr (once per process: a chat does not repeat it every turn),
and the command goes on as if nothing happened.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dsvl_cli.conversation import Conversation
from dsvl_cli.logs import entry, store
from dsvl_cli.results import Result
from dsvl_cli.settings import GenerationSettings


@dataclass
class AnswerLog:
    """Logs the answers of one command. `enabled` False (--no-log, `dsvl logs off`): writes nothing."""

    kind: str  # ask, chat, batch, serve
    model: str
    revision: str | None = None
    extra_settings: dict = field(default_factory=dict)  # model options that change answers (dtype, ...)
    warn: object = None  # callable(str): one warning line on stderr
    enabled: bool = True
    conversation_id: str | None = None  # set by the first entry, or by a continued conversation
    failed: bool = False

    @classmethod
    def for_command(cls, kind: str, opts, backend=None, *, no_log: bool = False,
                    conversation_id: str | None = None) -> AnswerLog:
        """From a command's CommonOptions (and its backend, where one is loaded); logging is on
        unless --no-log or `dsvl logs off`."""
        from dsvl_cli.render import note

        model = opts.model.model  # as the user named it: what -m needs to load it again
        if opts.server:
            model = backend.name if backend is not None else opts.requested_model or opts.server
        console = opts.env.stderr_console()
        extra = {"dtype": opts.model.dtype, "quantize": opts.model.quantize, "exact_pixels": opts.exact_pixels}
        return cls(kind, model, opts.model.revision, extra, warn=lambda text: note(console, text),
                   enabled=not no_log and store.logging_on(), conversation_id=conversation_id)

    def new_conversation(self) -> None:
        self.conversation_id = None

    def record(self, conversation: Conversation, result: Result, gen: GenerationSettings, turn: int,
               results: dict | None = None, pictures: list[dict] | None = None) -> int | None:
        """Log the answer to the last question of `conversation`; the entry's id, or None when it
        was not logged (off, or the file failed: warned once)."""
        if not self.enabled:
            return None
        cid = self.conversation_id or store.new_conversation_id()
        try:
            row = entry.build(kind=self.kind, conversation_id=cid, turn=turn, conversation=conversation,
                              result=result, gen=gen, model=self.model, revision=self.revision,
                              extra_settings=self.extra_settings, results=results, pictures=pictures)
            with store.opened() as db:
                entry_id = store.insert(db, row)
        except store.LogError as err:
            if not self.failed and self.warn is not None:
                self.warn(f"dsvl: warning: not logged: {err.message}")
            self.failed = True
            return None
        self.conversation_id = cid
        return entry_id
