"""Nothing that reaches a terminal carries control sequences; answers in a pipe stay byte-exact.

File names, a server's reason phrases and errors, and the model's own answer may hold ESC, OSC 52
(clipboard writes), CR or C1 controls; user strings are text, never Rich markup.
"""

from __future__ import annotations

import io
import json

from dsvl_cli.engine.backend import Backend
from dsvl_cli.environment import Environment
from dsvl_cli.results import Result, TextChunk
from dsvl_cli.settings import GenerationSettings

HOSTILE = "\x1b]52;c;cHduZWQ=\x1b\\\x1b[2J\rgotcha\x9b31m"


class EchoBackend(Backend):
    """Streams a fixed answer, hostile bytes included (as a model or a hostile --server could)."""

    name = "echo"

    def __init__(self, answer: str):
        self.answer = answer

    def stream(self, conversation, gen, *, cache=None, stop_event=None):
        yield TextChunk(self.answer)
        yield Result(self.answer, "stop")


def _answer_on(stdout_isatty: bool, answer: str) -> str:
    from dsvl_cli.conversation import Conversation
    from dsvl_cli.render import stream_answer

    out = io.StringIO()
    env = Environment(stdin=io.StringIO(), stdout=out, stderr=io.StringIO(), stdout_isatty=stdout_isatty)
    result = stream_answer(EchoBackend(answer), Conversation.single("hi"), GenerationSettings(), env, markdown=False)
    assert result.answer == answer  # the Result is data: untouched either way
    return out.getvalue()


def test_an_answer_on_a_terminal_has_no_control_characters_but_a_pipe_gets_every_byte():
    shown = _answer_on(True, f"line one\n\tindented {HOSTILE} end")
    assert not any(c in shown for c in "\x1b\r\x9b\x07") and "gotcha" in shown and "\n\tindented" in shown
    piped = _answer_on(False, f"line one {HOSTILE} end")
    assert piped == f"line one {HOSTILE} end\n"


def test_a_hostile_file_name_is_shown_without_its_escapes(cli, tmp_path):
    name = f"{HOSTILE}/x.png"
    result = cli(["ask", name, "hi", "-m", "tiny-random"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no such file" in lines[0] and "gotcha" in lines[0]
    assert not any(c in result.stderr for c in "\x1b\r\x9b")


def test_errors_and_notes_never_carry_controls(cli):
    from dsvl_cli.images.limits import one_line

    assert one_line(f"Not Found {HOSTILE}") == "Not Found \\x1b]52;c;cHduZWQ=\\x1b\\\\x1b[2J\\x0dgotcha\\x9b31m"
    result = cli(["chat", "-m", "tiny-random", "-n", "2"], input=f"/image {HOSTILE}.png\nHi.\n")
    assert result.exit_code == 2 and "no such file" in result.stderr and "]52;c;" in result.stderr
    assert not any(c in result.stderr for c in "\x1b\r\x9b")


def test_markup_in_a_model_name_is_text(capsys):
    from rich.console import Console

    from dsvl_cli.render import note, status

    console = Console(file=io.StringIO(), force_terminal=True)
    with status(console, "Loading [/bold]x/y…"):  # a closing tag with no opening one crashed Rich
        pass
    note(console, "model [/bold]x/y [red]not found[/red]")
    assert "[/bold]x/y [red]not found[/red]" in console.file.getvalue()


def test_json_output_keeps_the_answer_exact_and_escaped(cli, tmp_path, monkeypatch):
    """--json is data: json.dumps escapes the controls, and the parsed answer is the exact text."""
    from dsvl_cli.engine import local

    monkeypatch.setattr(local.LocalEngine, "stream", lambda self, c, g, **kw: EchoBackend(HOSTILE).stream(c, g))
    result = cli(["ask", "hi", "-m", "tiny-random", "--json"])
    assert result.exit_code == 0 and "\x1b" not in result.stdout
    assert json.loads(result.stdout)["answer"] == HOSTILE
