"""A chat script read ahead: the next `/image` pictures decode while an answer streams (chat/ahead.py),
and nothing else changes: same answers, same errors at the same turns, same exit code."""

from __future__ import annotations

import io
import threading

import pytest

from dsvl_cli.chat import ahead, pipe
from dsvl_cli.chat.session import ChatSession
from dsvl_cli.chat.ui import ChatUI
from dsvl_cli.engine.backend import Backend
from dsvl_cli.options import build_common
from dsvl_cli.results import Result, TextChunk
from dsvl_cli.screen.environment import Environment
from dsvl_cli.settings import GenerationSettings

from conftest import EXAMPLES


def _ui(engine, **gen) -> tuple[ChatUI, Environment]:
    env = Environment(stdin=io.StringIO(), stdout=io.StringIO(), stderr=io.StringIO(), stdout_isatty=False,
                      stderr_isatty=False)
    session = ChatSession(engine, GenerationSettings(**gen))
    return ChatUI(session, build_common({"plain": True}, env=env)), env


class WaitingBackend(Backend):
    """Each answer waits (at most `patience` s) for `ready`; records whether it came while the answer was open."""

    name = "waiting"

    def __init__(self, ready: threading.Event, patience: float = 10):
        self.ready = ready
        self.patience = patience
        self.seen: list[tuple[bool, list[str]]] = []

    def stream(self, conversation, gen, *, cache=None, stop_event=None):
        came = self.ready.wait(timeout=self.patience)
        self.seen.append((came, [image.source for image in conversation.messages[-1].images]))
        yield TextChunk("ok")
        yield Result("ok", "stop")


def _two_pictures(monkeypatch, tmp_path, patience: float = 10):
    """A backend that waits for the second picture's decode, a spy on the decodes, and the script."""
    first, second = str(EXAMPLES / "shapes.png"), str(tmp_path / "copy.png")
    (tmp_path / "copy.png").write_bytes((EXAMPLES / "shapes.png").read_bytes())
    decoded = threading.Event()
    calls: list[str] = []
    real = ahead.load_source

    def spy(source, **kwargs):
        calls.append(source)
        loaded = real(source, **kwargs)
        if source == second:
            decoded.set()  # the second picture is decoded: the first answer may end
        return loaded

    monkeypatch.setattr(ahead, "load_source", spy)  # the pictures of one source (a PDF's: several)
    monkeypatch.setattr("dsvl_cli.chat.session.load_images",
                        lambda sources, exact=False, max_pictures=None: [p for s in sources for p in spy(s, exact=exact)])
    script = f"/image {first}\nWhat is it?\n/image {second}\nAnd this?\n"
    return WaitingBackend(decoded, patience), calls, script, first, second


def test_the_next_picture_decodes_while_the_answer_streams(monkeypatch, tmp_path):
    backend, calls, script, first, second = _two_pictures(monkeypatch, tmp_path)
    ui, env = _ui(backend)
    assert pipe.run_lines(ui, io.StringIO(script)) == 0, env.stderr.getvalue()
    # The first answer saw the second picture decoded before it ended; each source decoded once.
    assert backend.seen == [(True, [first]), (True, [second])]
    assert calls == [first, second]


def test_one_at_a_time_the_next_picture_waits_for_the_answer(monkeypatch, tmp_path):
    """The same script without reading ahead: the first answer ends before the second picture is
    decoded (the baseline the test above beats; the bounded wait runs out once)."""
    backend, calls, script, first, second = _two_pictures(monkeypatch, tmp_path, patience=0.5)
    ui, env = _ui(backend)
    assert pipe.run_lines(ui, io.StringIO(script), read_ahead=0) == 0, env.stderr.getvalue()
    assert backend.seen[0] == (False, [first])
    assert backend.seen[1] == (True, [second]) and calls == [first, second]


def _run(engine, script: str, read_ahead: int) -> tuple[int, str, str]:
    ui, env = _ui(engine, max_new_tokens=6)
    code = pipe.run_lines(ui, io.StringIO(script), read_ahead=read_ahead)
    return code, env.stdout.getvalue(), env.stderr.getvalue()


def test_reading_ahead_changes_no_answer_no_error_and_no_exit_code(engine, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    shapes = EXAMPLES / "shapes.png"
    script = (f"/image {shapes}\nWhat is it?\n/image {tmp_path / 'missing.png'}\n/image {broken}\n"
              f"/image -\nStill there?\n/image {shapes}\n/image {shapes}\nTwo of them?\n/images\n")
    ahead_run, plain_run = _run(engine, script, 8), _run(engine, script, 0)
    assert ahead_run == plain_run
    code, stdout, stderr = ahead_run
    assert code == 2 and len(stdout.splitlines()) == 3
    lines = stderr.splitlines()
    missing = next(i for i, line in enumerate(lines) if "missing.png: no such file" in line)
    assert "broken.jpg" in lines[missing + 1] and "stdin carries the conversation" in lines[missing + 2]
    assert "Traceback" not in stderr


@pytest.mark.parametrize("text, sources", [
    ("/image a.png b.png", ["a.png", "b.png"]),
    ('"""/image a.png"""', ["a.png"]),
    ("/IMAGE a.png", ["a.png"]),
    ("/image -", []),  # stdin is the script: never read ahead
    ("/images", []),
    ("what about /image a.png?", []),
])
def test_only_image_commands_are_read_ahead(text, sources):
    assert ahead.image_sources(text) == sources
