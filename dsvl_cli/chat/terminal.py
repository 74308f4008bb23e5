"""Chat front ends: a terminal REPL (prompt_toolkit) and a line reader for pipes and scripts.

Both hand every input to a ChatSession and print what comes back: answers on stdout (live Markdown
on a terminal; plain text, or one JSON object per answered turn with --json), everything else
(command replies, notes, errors, --stats) on stderr.

Terminal: line editing; history in `$XDG_STATE_HOME/dsvl/chat_history` (default
`~/.local/state/dsvl/chat_history`, created readable by you only); a `\"\"\"` block or Alt-Enter for
several lines; Tab completes slash commands and the paths after /image, /save and /load. Ctrl-C while
an answer streams stops it (the partial answer stays in the conversation, marked interrupted); Ctrl-C
at the prompt clears the line; Ctrl-D or /exit leaves. If stdout is not a terminal the prompt is
drawn on stderr, so `dsvl chat > answers.txt` still works.

Pipe: one input per line (a `\"\"\"` block spans lines); a bad question or command is reported on
stderr and the script goes on; the exit code says whether any failed (see `dsvl chat --help`).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TextIO

from dsvl_cli.chat.session import COMMANDS, ChatSession, Reply, Turn, block_open
from dsvl_cli.commands.common import stream_answer
from dsvl_cli.errors import DsvlError, ExitCode
from dsvl_cli.options import CommonOptions
from dsvl_cli.render import note, print_json, print_stats, stderr_console
from dsvl_cli.results import Stats

PATH_COMMANDS = ("/image", "/save", "/load")
# Which failure a pipe's exit code reports when several happened: Ctrl-C, then a runtime failure
# (the tool failed), then bad input (the script was wrong), then success.
_SEVERITY = {int(ExitCode.OK): 0, int(ExitCode.USAGE): 1, int(ExitCode.FAILURE): 2, int(ExitCode.INTERRUPTED): 3}


def worst(*codes: int) -> int:
    """The exit code that matters most among `codes` (see _SEVERITY)."""
    return max(codes, key=lambda code: _SEVERITY.get(code, 2))


def history_path() -> Path:
    """Where the terminal keeps its input history (XDG state dir: it is not a cache)."""
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "dsvl" / "chat_history"


class ChatUI:
    """Runs inputs through a session and prints the outcome; keeps the worst failure for the exit code."""

    def __init__(self, session: ChatSession, opts: CommonOptions, *, markdown: bool, stdout: TextIO | None = None):
        self.session = session
        self.opts = opts
        self.markdown = markdown
        self.stdout = stdout or sys.stdout
        self.console = stderr_console()
        self.exit_code = int(ExitCode.OK)
        self.last_turn: Turn | None = None

    def submit(self, text: str) -> bool:
        """Handle one input; False when the session should end."""
        self.last_turn = None
        reply = self.session.handle(text)
        self.show(reply)
        if reply.answer:
            self.answer()
        return not reply.exit

    def show(self, reply: Reply) -> None:
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
                number = len([m for m in self.session.conversation.messages if m.role == "user"]) + 1
                print_json({"turn": number, "prompt": question.text, "images": [i.source for i in question.images],
                            "answer": "", "finish_reason": "error", "stats": Stats().to_dict(),
                            "error": {"kind": err.kind, "message": err.message}, "model": self.session.engine.name},
                           self.stdout)
            return
        self.last_turn = turn
        result = turn.result
        if self.opts.json:
            print_json(turn.to_dict(self.session.engine.name), self.stdout)
        elif not result.answer and not self.markdown:
            self.stdout.write("\n")  # one answer per turn, even an empty one
            self.stdout.flush()
        if result.finish_reason == "interrupted":
            note(self.console, "(interrupted: the partial answer stays in the conversation; /retry answers again)",
                 style="dim")
        elif self.session.at_context_end(turn):
            note(self.console, "(the answer stopped at the model's context length: /forget N drops the oldest "
                               "exchanges, /clear starts over)")
        if self.opts.stats:
            print_stats(self.console, result.stats.to_dict())

    def _produce(self, conversation, generation, cache):
        opts = dataclasses.replace(self.opts, generation=generation)
        return stream_answer(self.session.engine, conversation, opts, markdown=self.markdown, cache=cache)


# -- pipes and scripts ------------------------------------------------------------------------------
def read_inputs(lines: Iterable[str]) -> Iterator[str]:
    """Whole inputs from lines: one per line, or a \"\"\" block from its opening line to its closing one."""
    block: list[str] | None = None
    for raw in lines:
        line = raw.rstrip("\r\n")
        if block is None:
            if block_open(line):
                block = [line]
            else:
                yield line
        else:
            block.append(line)
            if not block_open("\n".join(block)):
                yield "\n".join(block)
                block = None
    if block is not None:  # an unclosed block at the end of input: send what there is
        yield "\n".join(block)


def run_lines(ui: ChatUI, stream: TextIO) -> int:
    """Read inputs until EOF or /exit. Exit code: the worst failure (130 Ctrl-C, 1 runtime, 2 bad
    input or command), 0 if none failed."""
    for text in read_inputs(iter(stream.readline, "")):
        if not ui.submit(text):
            break
        if ui.last_turn is not None and ui.last_turn.result.finish_reason == "interrupted":
            return int(ExitCode.INTERRUPTED)  # Ctrl-C stops the whole script, as in any pipeline
    return ui.exit_code


# -- the terminal ---------------------------------------------------------------------------------
def run_terminal(ui: ChatUI) -> int:
    """The interactive loop. Errors were shown as they happened, so leaving is always exit 0."""
    prompt = _prompt_session()
    note(ui.console, f"dsvl chat · {ui.session.engine.name} · /help lists commands · Ctrl-D or /exit leaves",
         style="dim")
    while True:
        try:
            text = prompt.prompt(lambda: f"{ui.session.prompt_hint()}>>> ")
        except KeyboardInterrupt:  # at the prompt: clear the line
            continue
        except EOFError:
            break
        try:
            if not ui.submit(text):
                break
        except KeyboardInterrupt:  # before the answer started (or a second Ctrl-C): back to the prompt
            note(ui.console, "(interrupted)", style="dim")
    return int(ExitCode.OK)


def _prompt_session():
    from prompt_toolkit import PromptSession
    from prompt_toolkit.filters import Condition
    from prompt_toolkit.history import FileHistory, InMemoryHistory
    from prompt_toolkit.key_binding import KeyBindings
    from prompt_toolkit.output import create_output

    bindings = KeyBindings()
    in_block = Condition(lambda: block_open(session.default_buffer.text))

    @bindings.add("enter", filter=~in_block)
    def _accept(event) -> None:
        event.current_buffer.validate_and_handle()

    @bindings.add("escape", "enter")
    def _newline(event) -> None:
        event.current_buffer.insert_text("\n")

    try:
        history = FileHistory(str(_private_file(history_path())))
    except OSError as exc:
        note(stderr_console(), f"dsvl: warning: no history file ({history_path()}: {exc.strerror or exc})")
        history = InMemoryHistory()
    output = None if sys.stdout.isatty() else create_output(stdout=sys.stderr)
    session = PromptSession(history=history, completer=_completer(), key_bindings=bindings, multiline=True,
                            prompt_continuation="... ", complete_while_typing=False, output=output)
    return session


def _private_file(path: Path) -> Path:
    """Create `path` (and its folder) readable by its owner only, if it does not exist yet."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_CREAT | os.O_APPEND | os.O_WRONLY, 0o600))
    return path


def _completer():
    """Slash commands at the start of the line; file paths after /image, /save and /load."""
    from prompt_toolkit.completion import Completer, Completion, PathCompleter
    from prompt_toolkit.document import Document

    paths = PathCompleter(expanduser=True)

    class ChatCompleter(Completer):
        def get_completions(self, document, complete_event):
            text = document.text_before_cursor
            if text.startswith("/") and " " not in text:
                for name in COMMANDS:
                    if name.startswith(text.lower()):
                        yield Completion(name, start_position=-len(text))
            elif text.split(" ", 1)[0].lower() in PATH_COMMANDS:
                word = text.rsplit(" ", 1)[-1]
                yield from paths.get_completions(Document(word, len(word)), complete_event)

    return ChatCompleter()
