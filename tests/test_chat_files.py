"""/save through the chat command (issue 13 #9): no silent overwrite in a pipe, no writing through
links, atomic writes; chat --json turn numbers across /forget. (The session-level /save and /load
tests are in test_chat.py.)"""

from __future__ import annotations

import json
import os

import pytest


SCRIPT_SAVE = "Hi.\n/save {path}\n"


def _chat(cli, script, *args):
    return cli(["chat", "-m", "tiny-random", "-n", "3", *args], input=script)


def test_save_in_a_pipe_refuses_to_overwrite_without_the_bang(cli, tmp_path):
    target = tmp_path / "chat.json"
    target.write_text("precious\n")
    result = _chat(cli, f"Hi.\n/save {target}\n")
    assert result.exit_code == 2
    assert f"{target} exists; /save! {target} replaces it" in result.stderr
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
        files.save(Conversation.single("hi"), str(target))
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert target.read_text() == "the old session\n"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # nothing left behind


def test_forget_keeps_turn_numbers_as_asked(cli):
    result = _chat(cli, "One.\nTwo.\n/forget\nThree.\n", "--json")
    assert [json.loads(line)["turn"] for line in result.stdout.splitlines()] == [1, 2, 3]
