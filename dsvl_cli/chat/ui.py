"""What both chat front ends share: run one input through the session and print what comes back.

Answers go to stdout (live Markdown on a terminal; plain text, or one JSON object per answered
turn with --json), everything else (command replies, notes, errors, --stats) to stderr. The
streams come from the options' Environment, so tests hand in their own.
"""

from __future__ import annotations

from collections.abc import Callable

from dsvl_cli.chat import commands
from dsvl_cli.chat.session import ChatSession
from dsvl_cli.chat.turns import Reply, AnsweredTurn
from dsvl_cli.errors import DsvlError, ExitCode
from dsvl_cli.images import display_source
from dsvl_cli.options import CommonOptions
from dsvl_cli.render import context_cut, note, print_stats, stream_answer
from dsvl_cli.results import Stats
from dsvl_cli.screen.text import write_json
from dsvl_cli.structured.answers import incomplete

# Which failure a pipe's exit code reports when several happened: Ctrl-C, then a runtime failure
# (the tool failed), then bad input (the script was wrong), then success.
_SEVERITY = {int(ExitCode.OK): 0, int(ExitCode.USAGE): 1, int(ExitCode.FAILURE): 2, int(ExitCode.INTERRUPTED): 3}


def worst(*codes: int) -> int:
    """The exit code that matters most among `codes` (see _SEVERITY)."""
    return max(codes, key=lambda code: _SEVERITY.get(code, 2))


class ChatUI:
    """Runs inputs through a session and prints the outcome; keeps the worst failure for the exit code."""

    def __init__(self, session: ChatSession, opts: CommonOptions, log=None):
        self.session = session
        self.log = log  # a logs.writer.AnswerLog: each answered turn is logged (None: not logged)
        self.opts = opts
        self.env = opts.env
        self.markdown = self.env.markdown(opts.plain)
        self.stdout = self.env.stdout
        self.console = self.env.stderr_console()
        self.exit_code = int(ExitCode.OK)
        self.last_turn: AnsweredTurn | None = None
        # Asks a yes/no question (a terminal sets it); None, as in a pipe: what needs a yes fails.
        self.ask: Callable[[str], bool] | None = None

    def submit(self, text: str) -> bool:
        """Handle one input; False when the session should end."""
        self.last_turn = None
        reply = commands.handle(self.session, text)
        self._new_conversation(text, reply)
        self.show(reply)
        if reply.answer:
            self.answer()
        return not reply.exit

    def show(self, reply: Reply) -> None:
        if reply.confirm is not None and self.ask is not None:  # a terminal: ask, don't fail
            if self.ask(f"{reply.text}; do that now? [y/N] "):
                self.submit(reply.confirm)
            return
        if reply.error:
            self.error(reply.text, reply.code)
        elif reply.text:
            note(self.console, reply.text, style="")

    def error(self, message: str, code: int) -> None:
        self.exit_code = worst(self.exit_code, code)
        note(self.console, f"dsvl: error: {message}", style="bold red")

    def answer(self) -> None:
        question = self.session.conversation.messages[-1]
        try:
            turn = self.session.respond(self._produce)
        except DsvlError as err:
            self.error(err.message, int(err.exit_code))
            if self.opts.json:
                number = self.session.forgotten + len([m for m in self.session.conversation.messages
                                                       if m.role == "user"]) + 1
                write_json({"turn": number, "prompt": question.text,
                            "images": [display_source(i.source) for i in question.images],
                            "answer": "", "finish_reason": "error", "stats": Stats().to_dict(),
                            "error": {"kind": err.kind, "message": err.message}, "model": self.session.engine.name},
                           self.stdout, terminal=self.env.stdout_isatty)
            return
        self.last_turn = turn
        result = turn.result
        if self.opts.json:
            write_json(turn.to_dict(self.session.engine.name), self.stdout, terminal=self.env.stdout_isatty)
        elif not result.answer and not self.markdown:
            self.stdout.write("\n")  # one answer per turn, even an empty one
            self.stdout.flush()
        problem = incomplete(result, self.session.generation.answer_format, "/set max_new_tokens N, then /retry")
        if problem:  # a --schema / --regex answer cut by -n: as in ask, a failure
            self.error(problem, int(ExitCode.FAILURE))
        elif result.finish_reason == "interrupted":
            note(self.console, "(interrupted: the partial answer stays in the conversation; /retry answers again)",
                 style="dim")
        elif self.session.at_context_end(turn):
            cut = context_cut(result, self.session.generation, self.session.engine.context_length)
            note(self.console, f"({cut or 'the answer stopped at the model context length'}: /forget N drops "
                               "the oldest exchanges, /clear starts over)")
        if self.opts.stats:
            print_stats(self.console, result.stats.to_dict())
        self._log_turn(turn)  # after the answer and its notes are out

    def _new_conversation(self, text: str, reply: Reply) -> None:
        """After /clear or /load, the log's next entry begins a new conversation."""
        if self.log is not None and not reply.error and (text.split() or [""])[0].lower() in ("/clear", "/load"):
            self.log.new_conversation()

    def _log_turn(self, turn: AnsweredTurn) -> None:
        if self.log is None:
            return
        self.log.record(self.session.conversation, turn.result, self.session.generation, turn.number)

    def _produce(self, conversation, generation, cache):
        markdown = self.markdown and generation.answer_format is None  # JSON or a pattern: plain text
        return stream_answer(self.session.engine, conversation, generation, self.env, markdown=markdown,
                             show=not self.opts.json, cache=cache)
