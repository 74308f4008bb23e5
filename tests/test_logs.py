"""The log (dsvl_cli/logs/): what an ask and a chat turn write, dsvl logs, ask -c / chat -c, and a
log file that fails (damaged, read-only, locked by many writers, an older schema) costing no answer."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from conftest import EXAMPLES, load_reference, reference_generate

SHAPES = EXAMPLES / "shapes.png"


def _entries() -> list[dict]:
    from dsvl_cli.logs import store

    with store.opened(create=False) as db:
        return store.select(db, store.Query(limit=None))


def _ask(cli, *args: str):
    result = cli(["ask", *args, "-m", "tiny-random", "-n", "6", "--json"])
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_an_ask_is_logged_with_every_field(cli, isolated_home):
    got = _ask(cli, str(SHAPES), "What shapes are here?", "--system", "Be brief.", "--seed", "7")
    path = isolated_home / ".local" / "state" / "dsvl" / "logs.db"
    assert path.exists() and (path.stat().st_mode & 0o077) == 0  # prompts are private: the owner's only
    [e] = _entries()
    assert (e["kind"], e["turn"], e["history"], e["model"], e["revision"]) == ("ask", 1, 0, "tiny-random", None)
    assert (e["system"], e["prompt"], e["answer"]) == ("Be brief.", "What shapes are here?", got["answer"])
    assert e["finish_reason"] == got["finish_reason"] and e["stats"] == got["stats"]
    assert e["settings"]["max_new_tokens"] == 6 and e["settings"]["seed"] == 7 and e["settings"]["temperature"] == 0
    assert e["format"] is None and e["results"] is None and len(e["conversation_id"]) == 20
    data = SHAPES.read_bytes()
    assert e["pictures"] == [{"source": str(SHAPES), "kind": "file", "width": 320, "height": 240,
                              "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "sha256_of": "file",
                              "path": str(SHAPES.resolve())}]


def test_choices_and_schema_answers_keep_their_format_and_results(cli):
    scored = _ask(cli, str(SHAPES), "Which shape?", "--choices", "circle,square")
    shaped = _ask_n(cli, "40", "Name a colour.", "--schema", '{"type": "string", "enum": ["red", "blue"]}')
    choice, schema = _entries()
    assert choice["format"] == {"type": "choices", "choices": ["circle", "square"]}
    assert choice["results"] == {"scores": scored["scores"]} and choice["answer"] == scored["answer"]
    assert schema["format"]["type"] == "json_schema" and schema["results"] == {"data": shaped["data"]}


def test_chat_turns_are_logged_in_one_conversation_and_clear_starts_another(cli):
    script = "What is this?\nAnd the colours?\n/clear\nHi.\n"
    result = cli(["chat", str(SHAPES), "-m", "tiny-random", "-n", "5", "--json", "-s", "Short."], input=script)
    assert result.exit_code == 0, result.stderr
    turns = [json.loads(line) for line in result.stdout.splitlines()]
    first, second, third = _entries()
    assert [(e["kind"], e["turn"], e["history"]) for e in (first, second, third)] == \
        [("chat", 1, 0), ("chat", 2, 1), ("chat", 1, 0)]
    assert [e["answer"] for e in (first, second, third)] == [t["answer"] for t in turns]
    assert [e["stats"] for e in (first, second, third)] == [t["stats"] for t in turns]
    assert first["conversation_id"] == second["conversation_id"] != third["conversation_id"]
    assert first["pictures"][0]["source"] == str(SHAPES) and second["pictures"] == []
    assert {e["system"] for e in (first, second, third)} == {"Short."}


def test_ask_c_equals_a_two_turn_chat_token_for_token(cli, tiny_folder, monkeypatch, tmp_path):
    """chat's second answer (KV reused) == ask -c's (the conversation rebuilt from the log, recomputed)
    == plain generate on the same two turns; chat -c goes on the same way."""
    n = "12"
    chat = cli(["chat", str(SHAPES), "-m", "tiny-random", "-n", n, "--json"], input="What is this?\nAnd the left side?\n")
    chatted = [json.loads(line) for line in chat.stdout.splitlines()]
    monkeypatch.setenv("DSVL_LOGS", str(tmp_path / "other.db"))  # a second log: nothing from the chat
    first = _ask_n(cli, n, str(SHAPES), "What is this?")
    _ask_n(cli, n, "Something unrelated.")  # now the last conversation is another one
    first_cid = _entries()[0]["conversation_id"]
    followed = _ask_n(cli, n, "--cid", first_cid[:12], "And the left side?")  # a unique prefix names it
    assert [first["answer"], followed["answer"]] == [t["answer"] for t in chatted]
    assert followed["stats"]["prompt_tokens"] == chatted[1]["stats"]["prompt_tokens"]
    assert followed["stats"]["generated_tokens"] == chatted[1]["stats"]["generated_tokens"]
    model, processor = load_reference(tiny_folder)
    from dsvl_cli.images import load_image

    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": first["answer"]}]},
                {"role": "user", "content": [{"type": "text", "text": "And the left side?"}]}]
    ids = reference_generate(model, processor, messages, [load_image(str(SHAPES)).image], int(n))
    assert followed["answer"] == processor.batch_decode([ids], skip_special_tokens=True)[0].strip()
    assert followed["stats"]["generated_tokens"] == len(ids)
    entry = _entries()[-1]
    assert (entry["conversation_id"], entry["turn"], entry["history"]) == (first_cid, 2, 1)
    # chat -c: the REPL on the same conversation; its turn is the third, as in one long chat
    more = cli(["chat", "-c", "-n", n, "--json"], input="And the colours?\n")
    assert more.exit_code == 0, more.stderr
    assert (_entries()[-1]["conversation_id"], _entries()[-1]["turn"]) == (first_cid, 3)
    again = cli(["chat", str(SHAPES), "-m", "tiny-random", "-n", n, "--json", "--no-log"],
                input="What is this?\nAnd the left side?\nAnd the colours?\n")
    assert json.loads(more.stdout)["answer"] == json.loads(again.stdout.splitlines()[2])["answer"]
    assert json.loads(more.stdout)["turn"] == 3


def _ask_n(cli, n: str, *args: str) -> dict:
    result = cli(["ask", *args, "-m", "tiny-random", "-n", n, "--json"])
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_a_changed_or_gone_picture_stops_ask_c_with_one_line(cli, tmp_path, monkeypatch):
    picture = tmp_path / "pic.png"
    shutil.copy(SHAPES, picture)
    monkeypatch.chdir(tmp_path)
    _ask(cli, "pic.png", "What is this?")
    monkeypatch.chdir(tmp_path.parent)  # a relative path, continued from another folder
    assert cli(["ask", "-c", "And now?", "-n", "4", "--no-log"]).exit_code == 0
    picture.write_bytes((EXAMPLES / "sunset.jpg").read_bytes())
    changed = cli(["ask", "-c", "And now?", "-n", "4"])
    assert changed.exit_code == 2 and "has changed since turn 1" in changed.stderr and "pic.png" in changed.stderr
    picture.unlink()
    gone = cli(["ask", "-c", "And now?", "-n", "4"])
    assert gone.exit_code == 2 and "is gone since turn 1" in gone.stderr
    assert len(gone.stderr.strip().splitlines()) == 1 and "Traceback" not in gone.stderr


def test_stdin_picture_cannot_be_continued(cli):
    result = cli(["ask", "-", "What is this?", "-m", "tiny-random", "-n", "4"], input=SHAPES.read_bytes())
    assert result.exit_code == 0
    [e] = _entries()
    assert e["pictures"][0]["kind"] == "stdin" and e["pictures"][0]["sha256_of"] == "pixels"
    follow = cli(["ask", "-c", "More?", "-n", "4"])
    assert follow.exit_code == 2 and "the log keeps no pixels" in follow.stderr


def test_nothing_to_continue_is_exit_2(cli):
    result = cli(["ask", "-c", "More?", "-m", "tiny-random"])
    assert result.exit_code == 2 and "nothing to continue" in result.stderr
    result = cli(["ask", "--cid", "nope", "More?", "-m", "tiny-random", "--no-log"])
    assert result.exit_code == 2


def _write_entry(path: str, words: str, barrier) -> None:
    """One process's answer, logged the way ask logs it (after a barrier: all at once)."""
    os.environ["DSVL_LOGS"] = path
    from dsvl_cli.conversation import Conversation
    from dsvl_cli.logs.writer import AnswerLog
    from dsvl_cli.results import Result
    from dsvl_cli.settings import GenerationSettings

    warnings = []
    log = AnswerLog("ask", "tiny-random", warn=warnings.append)
    barrier.wait()
    log.record(Conversation.single(f"question {words}"), Result(f"answer {words}", "stop"), GenerationSettings(), 1)
    if warnings:
        raise SystemExit(warnings[0])


def test_eight_parallel_writers_on_a_new_file_all_land(tmp_path):
    path = str(tmp_path / "parallel.db")
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(8)
    workers = [context.Process(target=_write_entry, args=(path, f"w{k}", barrier)) for k in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert [worker.exitcode for worker in workers] == [0] * 8
    with sqlite3.connect(path) as db:
        prompts = sorted(row[0] for row in db.execute("SELECT prompt FROM entries"))
        assert prompts == sorted(f"question w{k}" for k in range(8))
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert [r[0] for r in db.execute("SELECT name FROM _dsvl_migrations")] == ["m001_entries", "m002_search"]


def _seed(entries: list[tuple[str, str, str]]) -> None:
    """Entries (prompt, answer, model) written through the writer, without a model."""
    from dsvl_cli.conversation import Conversation
    from dsvl_cli.logs.writer import AnswerLog
    from dsvl_cli.results import Result
    from dsvl_cli.settings import GenerationSettings

    for prompt, answer, model in entries:
        AnswerLog("ask", model).record(Conversation.single(prompt), Result(answer, "stop"), GenerationSettings(), 1)


def test_logs_lists_searches_filters_and_shows(cli):
    _seed([("Where is the cat?", "On the sofa.", "7b"), ("Count the birds", "Three birds.", "1.3b"),
           ("What colour-scheme?", "Mostly blue and orange.", "7b"), ("Is it raining?", "No, sunny.", "7b")])
    newest = cli(["logs", "--json"])
    assert [e["prompt"] for e in json.loads(newest.stdout)] == ["Count the birds", "What colour-scheme?",
                                                                "Is it raining?"]
    assert [e["answer"] for e in json.loads(cli(["logs", "-q", "sofa", "--json"]).stdout)] == ["On the sofa."]
    assert [e["prompt"] for e in json.loads(cli(["logs", "-q", "bird*", "-n", "0", "--json"]).stdout)] == \
        ["Count the birds"]
    assert json.loads(cli(["logs", "-q", "colour-scheme", "--json"]).stdout)[0]["answer"].startswith("Mostly")
    assert json.loads(cli(["logs", "-q", "giraffe", "--json"]).stdout) == []
    assert len(json.loads(cli(["logs", "-m", "7b", "-n", "0", "--json"]).stdout)) == 3
    assert json.loads(cli(["logs", "--since", "2099-01-01", "--json"]).stdout) == []
    assert len(json.loads(cli(["logs", "--since", "1h", "-n", "0", "--json"]).stdout)) == 4
    text = cli(["logs", "-n", "1"]).stdout
    assert "## Prompt\n\nIs it raining?" in text and "## Response\n\nNo, sunny." in text
    shown = json.loads(cli(["logs", "show", "2", "--json"]).stdout)
    assert shown["answer"] == "Three birds." and shown["model"] == "1.3b"
    missing = cli(["logs", "show", "99"])
    assert missing.exit_code == 2 and "no log entry 99" in missing.stderr


def test_rm_deletes_entries_and_their_search_index(cli):
    _seed([("alpha question", "alpha answer", "7b"), ("beta question", "beta answer", "7b")])
    assert cli(["logs", "rm", "1"]).stdout.strip() == "deleted 1 entry"
    assert json.loads(cli(["logs", "-q", "alpha", "--json"]).stdout) == []
    assert [e["prompt"] for e in json.loads(cli(["logs", "--json"]).stdout)] == ["beta question"]
    assert cli(["logs", "rm"]).exit_code == 2
    assert cli(["logs", "rm", "--all"]).stdout.strip() == "deleted 1 entry"
    assert json.loads(cli(["logs", "--json"]).stdout) == []


def test_off_and_no_log_write_nothing(cli):
    _ask(cli, "First.", "--no-log")
    assert "logging is off" in cli(["logs", "off"]).stdout
    _ask(cli, "Second.")
    assert "logging is off" in cli(["logs", "status"]).stdout
    chat = cli(["chat", "-m", "tiny-random", "-n", "3"], input="Third.\n")
    assert chat.exit_code == 0
    cli(["logs", "on"])
    _ask(cli, "Fourth.")
    assert [e["prompt"] for e in _entries()] == ["Fourth."]
    assert "logging is on" in cli(["logs", "status"]).stdout and "1 entry" in cli(["logs", "status"]).stdout


def test_a_damaged_log_costs_no_answer_and_logs_says_so(cli, tmp_path, monkeypatch):
    bad = tmp_path / "logs.db"
    bad.write_bytes(b"this is not an SQLite file at all " * 200)
    monkeypatch.setenv("DSVL_LOGS", str(bad))
    answered = cli(["ask", "Hello?", "-m", "tiny-random", "-n", "5", "--json"])
    assert answered.exit_code == 0 and json.loads(answered.stdout)["answer"] == _ask_n(cli, "5", "Hello?", "--no-log")["answer"]
    warning = [line for line in answered.stderr.splitlines() if "not logged" in line]
    assert len(warning) == 1 and str(bad) in warning[0] and "move it aside" in warning[0]
    listed = cli(["logs"])
    assert listed.exit_code == 1 and str(bad) in listed.stderr and "mv " in listed.stderr
    assert len(listed.stderr.strip().splitlines()) == 1 and "Traceback" not in listed.stderr
    chat = cli(["chat", "-m", "tiny-random", "-n", "3"], input="One.\nTwo.\n")
    assert chat.exit_code == 0 and len(chat.stdout.splitlines()) == 2
    assert chat.stderr.count("not logged") == 1  # said once, not every turn


def test_a_read_only_log_costs_no_answer(cli, tmp_path, monkeypatch):
    _seed([("kept", "kept answer", "7b")])
    from dsvl_cli.logs import store

    path = store.log_path()
    path.chmod(0o444)
    if os.geteuid() == 0:  # root writes to a 0444 file anyway: open it the way the OS would let us
        monkeypatch.setattr(store, "_connect", lambda p: sqlite3.connect(f"file:{p}?mode=ro", uri=True,
                                                                         isolation_level=None))
    answered = cli(["ask", "Hello?", "-m", "tiny-random", "-n", "5"])
    assert answered.exit_code == 0 and answered.stdout.strip()
    assert "not logged" in answered.stderr and "cannot be written" in answered.stderr
    assert [e["prompt"] for e in json.loads(cli(["logs", "--json"]).stdout)] == ["kept"]


def test_an_older_schema_is_migrated_and_its_entries_found(cli, tmp_path, monkeypatch):
    from dsvl_cli.logs import migrations, store

    path = tmp_path / "old.db"
    db = sqlite3.connect(path, isolation_level=None)
    assert migrations.migrate(db, upto=1) == ["m001_entries"]  # the file as the first version wrote it
    db.execute("INSERT INTO entries (conversation_id, turn, history, kind, datetime_utc, model, settings, prompt, "
               "answer, finish_reason, stats, pictures) VALUES ('c1', 1, 0, 'ask', '2026-01-01T00:00:00', '7b', "
               "'{}', 'an old zebra question', 'an old answer', 'stop', '{}', '[]')")
    db.close()
    monkeypatch.setenv("DSVL_LOGS", str(path))
    found = cli(["logs", "-q", "zebra", "--json"])
    assert found.exit_code == 0 and [e["answer"] for e in json.loads(found.stdout)] == ["an old answer"]
    with store.opened() as db:
        assert migrations.applied(db) == {"m001_entries", "m002_search"}
        assert migrations.migrate(db) == []  # nothing runs twice


def test_logs_path_and_dsvl_logs_variable(cli, tmp_path, monkeypatch, isolated_home):
    assert cli(["logs", "path"]).stdout.strip() == str(isolated_home / ".local" / "state" / "dsvl" / "logs.db")
    monkeypatch.setenv("DSVL_LOGS", str(tmp_path / "elsewhere.db"))
    assert cli(["logs", "path"]).stdout.strip() == str(tmp_path / "elsewhere.db")
    empty = cli(["logs", "--json"])
    assert empty.exit_code == 0 and json.loads(empty.stdout) == [] and "no log yet" in empty.stderr
    assert not Path(tmp_path / "elsewhere.db").exists()  # reading never creates the file


@pytest.mark.parametrize("args", [["logs", "--help"], ["logs", "-q", "cat", "--json"], ["logs", "status"]])
def test_logs_commands_import_no_model_stack(args, tmp_path):
    """`dsvl logs` reads SQLite only: no torch, transformers or PIL (its start-up is the CLI's)."""
    import subprocess
    import sys

    _seed([("a cat", "an answer", "7b")])
    code = ("import sys; sys.argv = ['dsvl', *sys.argv[1:]]\n"
            "from dsvl_cli.cli import app\n"
            "try:\n    app()\nexcept SystemExit as done:\n    print('EXIT', done.code, file=sys.stderr)\n"
            "heavy = [m for m in ('torch', 'transformers', 'PIL', 'requests', 'pydantic') if m in sys.modules]\n"
            "print('HEAVY', heavy, file=sys.stderr)\n")
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60)
    assert "HEAVY []" in result.stderr, result.stderr
    assert "EXIT 0" in result.stderr or "EXIT None" in result.stderr, result.stderr
    if "-q" in args:
        assert [e["prompt"] for e in json.loads(result.stdout)] == ["a cat"]


def test_batch_logs_only_with_log(cli, tmp_path):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"id": "a", "image": str(SHAPES), "prompt": "What is this?"}) + "\n"
                    + json.dumps({"id": "b", "prompt": "Say hi.", "system": "Be kind."}) + "\n"
                    + json.dumps({"id": "c", "image": str(tmp_path / "missing.png"), "prompt": "And this?"}) + "\n")
    plain = cli(["batch", str(jobs), "-m", "tiny-random", "-n", "5"])
    assert plain.exit_code == 1  # the missing picture
    from dsvl_cli.logs import store

    assert not store.log_path().exists()  # batch logs nothing unless asked
    logged = cli(["batch", str(jobs), "-m", "tiny-random", "-n", "5", "--log"])
    records = {r["id"]: r for r in map(json.loads, logged.stdout.splitlines())}
    entries = {e["prompt"]: e for e in _entries()}
    assert set(entries) == {"What is this?", "Say hi."}  # the error record is not an answer
    a, b = entries["What is this?"], entries["Say hi."]
    assert (a["kind"], a["answer"], a["stats"]) == ("batch", records["a"]["answer"], records["a"]["stats"])
    assert a["pictures"][0]["sha256"] == hashlib.sha256(SHAPES.read_bytes()).hexdigest()
    assert (b["system"], b["answer"], b["pictures"]) == ("Be kind.", records["b"]["answer"], [])
    assert a["conversation_id"] != b["conversation_id"]
