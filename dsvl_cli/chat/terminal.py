"""Chat on a terminal: a REPL (prompt_toolkit) over chat/ui.py's ChatUI.

Line editing; history in `$XDG_STATE_HOME/dsvl/chat_history` (default
`~/.local/state/dsvl/chat_history`, created readable by you only); a `\"\"\"` block or Alt-Enter for
several lines; Tab completes slash commands and the paths after /image, /save and /load. Ctrl-C while
an answer streams stops it (the partial answer stays in the conversation, marked interrupted); Ctrl-C
at the prompt clears the line; Ctrl-D or /exit leaves. If stdout is not a terminal the prompt is
drawn on stderr, so `dsvl chat > answers.txt` still works.
"""

from __future__ import annotations

import os
from pathlib import Path

from dsvl_cli.chat.commands import NAMES
from dsvl_cli.chat.session import block_open
from dsvl_cli.chat.ui import ChatUI
from dsvl_cli.errors import ExitCode
from dsvl_cli.render import note
from dsvl_cli.screen.interrupts import SingleInterrupt

PATH_COMMANDS = ("/image", "/save", "/save!", "/load")


def history_path() -> Path:
    """Where the terminal keeps its input history (XDG state dir: it is not a cache)."""
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "dsvl" / "chat_history"


def run_terminal(ui: ChatUI) -> int:
    """The interactive loop. Errors were shown as they happened, so leaving is always exit 0."""
    prompt = _prompt_session(ui)
    ui.ask = _asker(ui)
    note(ui.console, f"dsvl chat · {ui.session.engine.name} · /help lists commands · Ctrl-D or /exit leaves",
         style="dim")
    with SingleInterrupt() as interrupts:  # one Ctrl-C per question: more presses cannot cut its clean-up
        while True:
            try:
                interrupts.disarm()  # between answers a stray press does nothing (at the prompt it is a key)
                text = prompt.prompt(lambda: f"{ui.session.prompt_hint()}>>> ")
                interrupts.arm()  # prompt_toolkit leaves Python's default handler behind: ours again
            except KeyboardInterrupt:  # at the prompt: clear the line (or a press as the line was sent)
                interrupts.arm()
                continue
            except EOFError:
                break
            try:
                if not ui.submit(text):
                    break
            except KeyboardInterrupt:  # before the answer started (after it, the answer handles it)
                note(ui.console, "(interrupted)", style="dim")
    return int(ExitCode.OK)


def _prompt_session(ui: ChatUI):
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
        note(ui.console, f"dsvl: warning: no history file ({history_path()}: {exc.strerror or exc})")
        history = InMemoryHistory()
    output = None if ui.env.stdout_isatty else create_output(stdout=ui.env.stderr)
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
                for name in NAMES:
                    if name.startswith(text.lower()):
                        yield Completion(name, start_position=-len(text))
            elif text.split(" ", 1)[0].lower() in PATH_COMMANDS:
                word = text.rsplit(" ", 1)[-1]
                yield from paths.get_completions(Document(word, len(word)), complete_event)

    return ChatCompleter()


def _asker(ui: ChatUI):
    """A yes/no question on the terminal (its own prompt: no history, one line); Ctrl-C means no."""
    from prompt_toolkit import PromptSession
    from prompt_toolkit.output import create_output

    session = PromptSession(output=None if ui.env.stdout_isatty else create_output(stdout=ui.env.stderr))

    def ask(question: str) -> bool:
        try:
            return session.prompt(question).strip().lower() in ("y", "yes")
        except (KeyboardInterrupt, EOFError):
            return False

    return ask
