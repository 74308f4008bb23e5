"""/save and /load (issue 13 #9): atomic writes, no silent overwrite, no writing through links,
malformed files refused with one line and the session kept."""

from __future__ import annotations

import json
import os

import pytest

from conftest import EXAMPLES

SCRIPT_SAVE = "Hi.\n/save {path}\n"


def _chat(cli, script, *args):
    return cli(["chat", "-m", "tiny-random", "-n", "3", *args], input=script)


def test_save_in_a_pipe_refuses_to_overwrite_without_the_bang(cli, tmp_path):
    target = tmp_path / "chat.json"
    target.write_text("precious\n")
    result = _chat(cli, f"Hi.\n/save {target}\n")
    assert result.exit_code == 2
    assert f"{target} exists; /save! {target} overwrites it" in result.stderr
    assert target.read_text() == "precious\n"
    forced = _chat(cli, f"Hi.\n/save! {target}\n")
    assert forced.exit_code == 0, forced.stderr
    assert json.loads(target.read_text())["messages"][0]["text"] == "Hi."


def test_save_never_writes_through_a_link_and_keeps_the_mode(cli, tmp_path):
    elsewhere = tmp_path / "elsewhere.txt"
    elsewhere.write_text("not yours to change\n")
    link = tmp_path / "link.json"
    link.symlink_to(elsewhere)
    result = _chat(cli, f"Hi.\n/save {link}\n")
    assert result.exit_code == 2 and "symbolic link" in result.stderr
    _chat(cli, f"Hi.\n/save! {link}\n")
    assert elsewhere.read_text() == "not yours to change\n"  # the link was replaced, its target untouched
    assert not link.is_symlink() and json.loads(link.read_text())["messages"]
    mine = tmp_path / "mine.json"
    mine.write_text("{}")
    os.chmod(mine, 0o640)
    _chat(cli, f"Hi.\n/save! {mine}\n")
    assert mine.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_save_is_atomic_when_the_write_fails(tmp_path, monkeypatch):
    from dsvl_cli.chat import files
    from dsvl_cli.conversation import Conversation
    from dsvl_cli.errors import UsageError

    target = tmp_path / "chat.json"
    target.write_text("the old session\n")
    real_fsync = os.fsync

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(UsageError, match="No space left"):
        files.save(Conversation.single("hi"), str(target), force=True)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert target.read_text() == "the old session\n"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # nothing left behind


def test_a_terminal_asks_before_overwriting(engine, tmp_path):
    import io

    from dsvl_cli.chat.session import ChatSession
    from dsvl_cli.chat.ui import ChatUI
    from dsvl_cli.environment import Environment
    from dsvl_cli.options import build_common

    target = tmp_path / "chat.json"
    target.write_text("old\n")
    env = Environment(stdin=io.StringIO(), stdout=io.StringIO(), stderr=io.StringIO())
    opts = build_common({"model": "tiny-random", "max_new_tokens": 3}, env=env)
    ui = ChatUI(ChatSession(engine, opts.generation), opts)
    questions = []
    ui.ask_yes_no = lambda question: questions.append(question) or False
    ui.submit(f"/save {target}")
    assert target.read_text() == "old\n" and "exists" in questions[0] and "not saved" in env.stderr.getvalue()
    ui.ask_yes_no = lambda question: True
    ui.submit(f"/save {target}")
    assert json.loads(target.read_text())["format"] == "dsvl-conversation/1"


@pytest.mark.parametrize("body,words", [
    ({"messages": ["x"]}, "message 1 is not an object"),
    ({"messages": [{"role": "user", "text": "hi", "images": [123]}]}, "images"),
    ({"system": 123, "messages": []}, "\"system\" must be text"),
    ({"messages": {"role": "user"}}, "\"messages\" must be a list"),
    ({"messages": [{"role": "robot", "text": "hi"}]}, "role"),
])
def test_load_of_a_malformed_file_is_one_line_and_the_session_goes_on(cli, tmp_path, body, words):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "dsvl-conversation/1", **body}))
    result = _chat(cli, f"First.\n/load {bad}\nSecond.\n", "--json")
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and words in errors[0] and str(bad) in errors[0], result.stderr
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr
    turns = [json.loads(line) for line in result.stdout.splitlines()]
    assert [t["turn"] for t in turns] == [1, 2]  # the session went on, with its first exchange


def test_forget_keeps_turn_numbers_as_asked(cli):
    result = _chat(cli, "One.\nTwo.\n/forget\nThree.\n", "--json")
    assert [json.loads(line)["turn"] for line in result.stdout.splitlines()] == [1, 2, 3]
