"""What reaches a terminal: the live Markdown view on a real pty, escape sequences from untrusted
text, Rich markup in user strings.

The pty tests run a real process and read what a terminal would show with pyte (a VT100 emulator):
they wait on what the screen shows, never on sleeps.
"""

from __future__ import annotations

import json
import os
import re
import sys
import textwrap

import pytest

from conftest import REPO

ROWS, COLS = 24, 80

# A process that streams a fixed 200-line Markdown answer through the real answer path
# (render.stream_answer with the process's own Environment) from a fake backend.
LONG_ANSWER_DRIVER = textwrap.dedent("""
    import time
    from dsvl_cli.conversation import Conversation
    from dsvl_cli.engine.backend import Backend
    from dsvl_cli.screen.environment import Environment
    from dsvl_cli.render import stream_answer
    from dsvl_cli.results import Result, TextChunk
    from dsvl_cli.settings import GenerationSettings

    LINES = ([f"Paragraph P{k:03d} stands alone." for k in range(100)]
             + [f"- item L{k:03d} of a long tight list" for k in range(100)])

    class Fake(Backend):
        def stream(self, conversation, gen, *, cache=None, stop_event=None):
            for k, line in enumerate(LINES):
                yield TextChunk(line + ("\\n\\n" if line.startswith("Paragraph") else "\\n"))
                time.sleep(0.01)  # the producer's pace: a live view refreshes many times meanwhile
            yield Result("".join(LINES), "stop")

    stream_answer(Fake(), Conversation.single("hi"), GenerationSettings(), Environment.current(), markdown=True)
    print("DONE-MARKER")
""")


def _spawn(args, **kw):
    pexpect = pytest.importorskip("pexpect")
    env = {**os.environ, "TERM": "xterm", "PROMPT_TOOLKIT_NO_CPR": "1", "COLUMNS": str(COLS), "LINES": str(ROWS)}
    env.pop("NO_COLOR", None)
    return pexpect.spawn(sys.executable, args, env=env, cwd=str(REPO), encoding="utf-8", timeout=60,
                         dimensions=(ROWS, COLS), **kw)


class Terminal:
    """pyte's screen plus its scrollback: every line the terminal ever scrolled away, then the screen."""

    def __init__(self):
        pyte = pytest.importorskip("pyte")
        self.screen = pyte.HistoryScreen(COLS, ROWS, history=100_000)
        self.stream = pyte.Stream(self.screen)

    def feed(self, text: str) -> None:
        self.stream.feed(text)

    def lines(self) -> list[str]:
        history = ["".join(line[x].data for x in range(COLS)).rstrip() for line in self.screen.history.top]
        return history + [line.rstrip() for line in self.screen.display]


def test_a_long_answer_reaches_the_scrollback_once():
    """Issue 16 #1: each line of a 200-line answer appears once in the scrollback (the live view used
    to re-print all of it on every refresh: thousands of lines)."""
    pexpect = pytest.importorskip("pexpect")
    child = _spawn(["-c", LONG_ANSWER_DRIVER])
    terminal = Terminal()
    try:
        child.expect("DONE-MARKER")
        terminal.feed(child.before + child.after)
        child.expect(pexpect.EOF)
        terminal.feed(child.before)
    finally:
        child.close(force=True)
    lines = terminal.lines()
    marked = [line for line in lines if re.search(r"\b[PL]\d{3}\b", line)]
    counts = {}
    for line in marked:
        key = re.search(r"\b[PL]\d{3}\b", line).group()
        counts[key] = counts.get(key, 0) + 1
    print(f"answer lines in the scrollback: {len(marked)} (200 expected); all lines: {len(lines)}")
    assert len(counts) == 200, sorted(set(f"{c}{k:03d}" for c in "PL" for k in range(100)) - set(counts))[:5]
    assert len(marked) == 200, {k: n for k, n in counts.items() if n > 1}
    assert lines.index(next(line for line in lines if "P000" in line)) < lines.index(
        next(line for line in lines if "L099" in line))


def _chat(*args):
    import termios

    child = _spawn(["-m", "dsvl_cli", "chat", "-m", "tiny-random", *args])
    # A terminal emulator reads output as it comes; this test reads it only inside expect(), so the
    # kernel's flush of pending output on Ctrl-C (no NOFLSH) would throw away what dsvl printed.
    attrs = termios.tcgetattr(child.child_fd)
    attrs[3] |= termios.NOFLSH
    termios.tcsetattr(child.child_fd, termios.TCSANOW, attrs)
    return child


def _await_prompt(child):
    """A fresh prompt, drawn with the terminal in raw mode (prompt_toolkit turns on bracketed
    paste when it starts drawing)."""
    child.expect_exact("\x1b[?2004h")
    child.expect_exact(">>>")


def _await_cooked_mode(child):
    """prompt_toolkit has given the terminal back (it reads Ctrl-C as a key in raw mode; with ISIG
    on it is SIGINT): its last escape sequence, then the terminal's own mode flag (bounded poll)."""
    import termios

    child.expect_exact("\x1b[?2004l")
    for _ in range(1000):
        if termios.tcgetattr(child.child_fd)[3] & termios.ISIG:
            return
        child.expect(pytest.importorskip("pexpect").TIMEOUT, timeout=0.01)  # reads on, consumes nothing
    raise AssertionError("the terminal stayed in raw mode")


def _await_answer_start(child):
    child.expect(r"^(?:\x1b\[[0-9;?]*[A-Za-z]|\s)*[^\x1b\s]")  # the answer's first visible character


def test_chat_survives_any_number_of_quick_ctrl_c(tiny_folder, isolated_home):
    """Issue 16 #2: two or more quick Ctrl-C during an answer left chat frozen (the live view's
    refresh thread still drawing while the prompt waited). Each round must end at a usable prompt."""
    pexpect = pytest.importorskip("pexpect")
    child = _chat("-n", "3000", "--stats")
    child.delaybeforesend = 0.02  # presses 20 ms apart: a key held down, a nervous double tap
    try:
        _await_prompt(child)
        for presses, wait_for_answer in ((2, True), (10, True), (2, False), (10, False), (10, True), (10, True)):
            child.sendline("Describe it.")
            _await_cooked_mode(child)  # prompt_toolkit let go of the terminal: Ctrl-C is a signal now
            if wait_for_answer:  # else: while the question is prepared, before any answer
                _await_answer_start(child)
                # some way into it (a longer answer to finish drawing), unless it ended already
                if child.expect([r"(?:[^\n]*\n){40}", "\x1b\\[\\?2004h"]) == 1:
                    child.expect_exact(">>>")
                    continue
            for _ in range(presses):
                child.sendintr()
            # "(interrupted ...)", or, when the presses came while prompt_toolkit was still returning
            # the line, nothing (the question is dropped); either way a fresh prompt
            if child.expect([r"\(interrupted", "\x1b\\[\\?2004h"]) == 0:
                _await_prompt(child)
            else:
                child.expect_exact(">>>")
            child.sendline("/images")  # the prompt reads and answers: not frozen
            child.expect("no images attached")
            _await_prompt(child)
        child.sendline("/set n 4")
        child.expect("max_new_tokens = 4")
        _await_prompt(child)
        child.sendline("/clear")  # the interrupted answers stay in the history: on a slow machine they fill
        _await_prompt(child)      # the tiny model's context, and the next question would be refused as too long
        child.sendline("One more?")
        child.expect("generated")  # the --stats line: a whole answer after all those interrupts
        _await_prompt(child)
        child.sendeof()
        child.expect(pexpect.EOF)
        child.wait()  # reap it: after its output ends the interpreter still tears torch down
    finally:
        child.close(force=True)
    assert (child.exitstatus, child.signalstatus) == (0, None)


# -- escape sequences and markup in untrusted text ----------------------------------------------------
def test_controls_are_stripped_from_answers_on_a_terminal_only():
    import io

    from dsvl_cli.render import AnswerWriter

    hostile = "ok\x1b]52;c;cHduZWQ=\x07 \x9b31m red\ttab\nline\r\x00"
    for markdown, terminal in ((False, True), (True, True)):
        out = io.StringIO()
        with AnswerWriter(markdown=markdown, stream=out, terminal=terminal) as writer:
            writer.write(hostile)
        assert "\x1b]52" not in out.getvalue() and "\x9b" not in out.getvalue() and "\x07" not in out.getvalue()
        assert writer.text.startswith(hostile)  # the answer itself is kept as generated
    piped = io.StringIO()
    with AnswerWriter(markdown=False, stream=piped, terminal=False) as writer:
        writer.write(hostile)
    assert piped.getvalue() == hostile + "\n"  # a pipe gets the bytes


def test_json_on_a_terminal_escapes_c1_too():
    import io

    from dsvl_cli.screen.text import write_json

    out = io.StringIO()
    write_json({"answer": "a\x9bb\x1b"}, out, terminal=True)
    assert "\x9b" not in out.getvalue() and "\x1b" not in out.getvalue()
    assert json.loads(out.getvalue())["answer"] == "a\x9bb\x1b"


def test_a_file_name_with_escapes_is_shown_visibly(cli):
    result = cli(["ask", "\x1b]52;c;cHduZWQ=\x1b\\/x.png", "hi", "-m", "tiny-random"])
    assert result.exit_code == 2
    assert "\x1b" not in result.stderr and "\\x1b]52;c;" in result.stderr


def test_a_hostile_server_cannot_write_escapes(cli, monkeypatch):
    """Streamed content and error text from --server reach the terminal without their controls."""
    from dsvl_cli.engine import remote
    from dsvl_cli.screen.environment import Environment
    from dsvl_cli.errors import GenerationError
    from dsvl_cli.results import Result, TextChunk

    def fake_init(self, url, *, api_key=None, **kwargs):  # model, on_note: not needed by this fake
        self.url, self.name, self.random_weights = url, "evil\x1b[2J", False

    def fake_stream(self, conversation, gen, **kwargs):
        yield TextChunk("hello \x1b]0;pwned\x07world")
        yield Result("hello \x1b]0;pwned\x07world", "stop")

    monkeypatch.setattr(remote.RemoteEngine, "__init__", fake_init)
    monkeypatch.setattr(remote.RemoteEngine, "stream", fake_stream)
    monkeypatch.setattr(Environment, "current", classmethod(
        lambda cls: cls(stdin=sys.stdin, stdout=sys.stdout, stderr=sys.stderr, stdout_isatty=True)))
    result = cli(["ask", "hi", "--server", "http://127.0.0.1:9", "--plain"])
    assert result.exit_code == 0, result.output
    assert result.stdout == "hello world\n"  # the whole OSC sequence is gone, not only its ESC

    def failing(self, conversation, gen, **kwargs):
        raise GenerationError("server http://x: \x1b]52;c;eA==\x07 bad gateway")
        yield

    monkeypatch.setattr(remote.RemoteEngine, "stream", failing)
    result = cli(["ask", "hi", "--server", "http://127.0.0.1:9", "--plain"])
    assert result.exit_code == 1 and "\x1b" not in result.stderr and "\\x1b]52" in result.stderr


def test_markup_in_a_model_name_is_text_on_a_terminal(tiny_folder):
    """`--model '[/bold]x/y'` crashed Rich's markup parser in the loading spinner."""
    pexpect = pytest.importorskip("pexpect")
    child = _spawn(["-m", "dsvl_cli", "ask", "hi", "-m", "[/bold]x/y", "--offline"])
    try:
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 2, child.before  # no such folder, not a hub id: a usage error
    assert "[/bold]x/y" in child.before and "MarkupError" not in child.before and "internal error" not in child.before
