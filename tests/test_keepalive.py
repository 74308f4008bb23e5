"""`--keep-alive`, `dsvl ps`, `dsvl stop`: real background servers of tiny-random on unix sockets.

Each test starts its own servers (a few seconds each) and the autouse fixture stops every one
afterwards; keep-alive times stay short, so even a server a failing test leaves behind ends by
itself. Waits are bounded polls on what processes and files show, never fixed sleeps. Reuse is
checked by pid and the request counter that `ps --json` shows, not by timing.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import EXAMPLES, REPO

PROMPT = "Describe this image."
ASK = ["ask", str(EXAMPLES / "shapes.png"), PROMPT, "-m", "tiny-random", "-n", "12"]


@pytest.fixture(autouse=True)
def no_servers_left(tiny_folder):
    """Every test starts with no keep-alive server and leaves none behind."""
    from dsvl_cli.keepalive import registry

    registry.stop(None, True)
    yield
    stopped = registry.stop(None, True)
    assert all(registry.wait_gone(row["pid"], 20) for row in stopped)
    assert registry.running() == []


@pytest.fixture(scope="module")
def local_answer(tiny_folder):
    """What a local `dsvl ask --json` says (greedy, 12 tokens) about shapes.png."""
    from typer.testing import CliRunner

    from dsvl_cli.cli import app

    result = CliRunner().invoke(app, [*ASK, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _ps(cli) -> list[dict]:
    result = cli(["ps", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_first_call_starts_a_private_server_later_calls_reuse_it(cli, local_answer):
    first = cli([*ASK, "--json", "--keep-alive", "60s"])
    assert first.exit_code == 0, first.output
    got = json.loads(first.stdout)
    assert set(got) == set(local_answer) and set(got["stats"]) == set(local_answer["stats"])
    for key in ("answer", "finish_reason", "model", "images", "prompt"):
        assert got[key] == local_answer[key], key
    assert got["stats"]["generated_tokens"] == 12 and "random weights" in first.stderr

    [row] = _ps(cli)
    assert (row["model"], row["device"], row["dtype"], row["requests"], row["status"]) == (
        "tiny-random", "cpu", "float32", 1, "running")
    assert row["rss_bytes"] > 0 and 0 < row["expires_in_s"] <= 60
    sock = Path(row["socket"])
    assert stat.S_ISSOCK(os.stat(sock).st_mode)
    assert _mode(sock.parent) == 0o700
    assert {_mode(p) for p in (sock, sock.with_suffix(".json"), Path(row["log"]))} == {0o600}

    second = cli([*ASK, "--plain", "--stats"], env={"DSVL_KEEP_ALIVE": "60s"})  # the env var works too
    assert second.exit_code == 0, second.output
    assert second.stdout == local_answer["answer"] + "\n" and "12 generated" in second.stderr
    [again] = _ps(cli)
    assert (again["pid"], again["requests"]) == (row["pid"], 2), "the second call used the same server"

    table = cli(["ps"]).stdout.splitlines()
    assert table[0].split() == ["ID", "MODEL", "DEVICE", "DTYPE", "PID", "MEMORY", "REQUESTS", "IDLE", "EXPIRES"]
    assert table[1].split()[:5] == [row["key"][:8], "tiny-random", "cpu", "float32", str(row["pid"])]

    stopped = cli(["stop"])  # the only one
    assert stopped.exit_code == 0 and f"stopped tiny-random (pid {row['pid']})" in stopped.stderr
    from dsvl_cli.keepalive import registry

    assert registry.wait_gone(row["pid"], 20)
    assert not sock.exists() and not sock.with_suffix(".json").exists()
    assert "stop requested" in Path(row["log"]).read_text()


def test_chat_and_batch_use_it_and_a_killed_server_is_replaced(cli, tmp_path):
    from dsvl_cli.conversation import Conversation
    from dsvl_cli.keepalive import registry
    from dsvl_cli.keepalive.client import KeepAliveEngine
    from dsvl_cli.images import load_image
    from dsvl_cli.settings import GenerationSettings, ModelSettings

    script = f"describe it\nwhat colour is the square?\n/image {EXAMPLES / 'chart.png'}\nand now?\n"
    args = ["chat", str(EXAMPLES / "shapes.png"), "--json", "-n", "8", "-m", "tiny-random"]
    local, kept = cli(args, input=script), cli([*args, "--keep-alive", "60s"], input=script)
    assert local.exit_code == kept.exit_code == 0, kept.output
    local_turns, kept_turns = ([json.loads(line) for line in r.stdout.splitlines()] for r in (local, kept))
    assert [t["answer"] for t in kept_turns] == [t["answer"] for t in local_turns] and len(kept_turns) == 3


    engine = KeepAliveEngine(ModelSettings(model="tiny-random"), 60)
    [row] = _ps(cli)
    assert engine.pid == row["pid"] and row["requests"] == 3
    os.kill(row["pid"], signal.SIGKILL)  # a crash: the socket file stays behind
    assert registry.wait_gone(row["pid"], 20) and Path(row["socket"]).exists()
    question = Conversation.single("describe it", [load_image(str(EXAMPLES / "shapes.png"))])
    result = engine.run(question, GenerationSettings(max_new_tokens=8))  # started again, asked once more
    assert engine.pid != row["pid"] and result.stats.generated_tokens == 8
    assert result.answer == local_turns[0]["answer"]

    jobs = tmp_path / "jobs.jsonl"
    records = [{"id": "a", "image": str(EXAMPLES / "shapes.png"), "prompt": PROMPT}, {"id": "b", "prompt": "Hi"},
               {"id": "bad", "image": str(tmp_path / "missing.png"), "prompt": "x"}]
    jobs.write_text("".join(json.dumps(r) + "\n" for r in records))
    outs = {name: tmp_path / f"{name}.jsonl" for name in ("local", "kept")}
    batch = ["batch", str(jobs), "-n", "8", "-m", "tiny-random"]
    assert cli([*batch, "-o", str(outs["local"])]).exit_code == 1  # one bad record
    assert cli([*batch, "-o", str(outs["kept"]), "--keep-alive", "60s"]).exit_code == 1

    def by_id(path):
        return {r["id"]: {k: v for k, v in r.items() if k != "stats"} for r in map(json.loads, path.read_text().splitlines())}

    assert by_id(outs["kept"]) == by_id(outs["local"])
    [now] = _ps(cli)
    assert now["pid"] == engine.pid and now["requests"] == 3  # engine.run + two records


def _spawn_ask(keep_alive: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dsvl_cli", *ASK, "--keep-alive", keep_alive],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)


def test_concurrent_first_calls_start_one_server_which_exits_when_idle(cli, local_answer):
    from dsvl_cli.keepalive import registry

    procs = [_spawn_ask("30s") for _ in range(2)]
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1] for o in outs]
    assert {o[0].decode() for o in outs} == {local_answer["answer"] + "\n"}
    [row] = _ps(cli)
    assert row["requests"] == 2

    short = cli([*ASK, "--keep-alive", "1s"])  # the last caller's keep-alive wins
    assert short.exit_code == 0, short.output
    assert registry.wait_gone(row["pid"], 30), "the server did not exit once idle"
    assert not Path(row["socket"]).exists() and not Path(row["socket"]).with_suffix(".json").exists()
    assert "idle for 1 s: exiting" in Path(row["log"]).read_text()


def test_a_hung_socket_is_replaced_and_a_stranger_is_not_signalled(cli, local_answer):
    """A listener at the socket path that never answers (its state naming a live process that is
    not a keep-alive server: this test's own) is given up on after the probe timeout."""
    from dsvl_cli.keepalive import registry
    from dsvl_cli.settings import ModelSettings
    from dsvl_cli.userfiles import write_atomic

    paths = registry.Paths.for_key(registry.server_key(ModelSettings(model="tiny-random")))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as hung:
        hung.bind(str(paths.socket))
        hung.listen(8)  # accepts into the backlog, never answers
        write_atomic(paths.state, json.dumps({"pid": os.getpid(), "key": paths.key}), private=True)
        result = cli([*ASK, "--keep-alive", "30s"])
    assert result.exit_code == 0, result.output
    assert result.stdout == local_answer["answer"] + "\n"
    [row] = _ps(cli)
    assert row["pid"] != os.getpid() and row["requests"] == 1


def test_other_settings_get_their_own_server_and_stop_picks_them(cli, tiny_folder, tmp_path, monkeypatch):
    """A relative model folder is loaded where the caller stands and is another key than the alias;
    stop takes a model name (any name of it), an ID, or --all."""
    from dsvl_cli.keepalive import registry

    (tmp_path / "tiny").symlink_to(tiny_folder)
    monkeypatch.chdir(tmp_path)
    alias = cli([*ASK, "--keep-alive", "30s"])
    folder = cli([*ASK[:-4], "-m", "tiny", "-n", "12", "--keep-alive", "30s", "--json"])
    assert alias.exit_code == folder.exit_code == 0, folder.output
    assert json.loads(folder.stdout)["model"] == "tiny" and json.loads(folder.stdout)["answer"] == alias.stdout.strip()
    rows = _ps(cli)
    assert sorted(r["model"] for r in rows) == ["tiny", "tiny-random"] and len({r["key"] for r in rows}) == 2

    several = cli(["stop"])
    assert several.exit_code == 2 and len(several.stderr.strip().splitlines()) == 1
    absent = cli(["stop", "tiny-random-1.3b"])
    assert absent.exit_code == 1 and "no keep-alive server for tiny-random-1.3b" in absent.stderr
    by_path = cli(["stop", str(tiny_folder)])  # the same folder, named absolutely
    assert by_path.exit_code == 0 and "stopped tiny " in by_path.stderr
    [left] = _ps(cli)
    assert left["model"] == "tiny-random"
    assert cli(["stop", left["key"][:8]]).exit_code == 0
    assert _ps(cli) == [] and all(registry.wait_gone(r["pid"], 20) for r in rows)
    nothing = cli(["stop", "--all"])
    assert nothing.exit_code == 0 and "no keep-alive server is running" in nothing.stderr


def test_a_failed_start_reports_what_a_local_load_reports(cli, tmp_path):
    args = ["ask", "hi", "-m", str(tmp_path / "no-such-model")]
    local, kept = cli(args), cli([*args, "--keep-alive", "30s"])
    assert kept.exit_code == local.exit_code == 2
    assert kept.stderr == local.stderr and "no such folder" in kept.stderr
    assert _ps(cli) == []


def test_keys_bad_durations_and_server_conflicts():
    from dsvl_cli.settings import parse_duration
    from dsvl_cli.keepalive.registry import server_key
    from dsvl_cli.errors import UsageError
    from dsvl_cli.options import build_common
    from dsvl_cli.settings import ModelSettings

    base = server_key(ModelSettings(model="7b"))
    assert base == server_key(ModelSettings(model="deepseek-community/deepseek-vl-7b-chat", offline=True))
    for change in ({"revision": "main"}, {"device": "cpu"}, {"dtype": "float16"}, {"quantize": "int8"},
                   {"compile": True}, {"model": "1.3b"}):
        assert server_key(ModelSettings(**{"model": "7b", **change})) != base, change
    assert [parse_duration(t) for t in ("5m", "30s", "1h30m", "250ms", "90", "0")] == [300, 30, 5400, 0.25, 90, 0]
    for bad in ("soon", "-1", "5d", ""):
        with pytest.raises(UsageError, match="--keep-alive"):
            parse_duration(bad)
    assert build_common({"keep_alive": "0"}).keep_alive == 0
    with pytest.raises(UsageError, match="--keep-alive.*--server"):
        build_common({"keep_alive": "5m", "server": "http://127.0.0.1:1"})


def test_bad_keep_alive_is_one_line_exit_2(cli):
    result = cli([*ASK, "--keep-alive", "soon"])
    assert result.exit_code == 2 and result.stderr.strip().splitlines() == [
        "dsvl: error: --keep-alive 'soon': use a duration such as 30s, 5m, 1h or 0 (off)"]


@pytest.mark.parametrize("args", [["ps", "--help"], ["stop", "--help"], ["ps"]])
def test_ps_and_stop_import_nothing_heavy(args):
    code = ("import sys; sys.argv = ['dsvl', *sys.argv[1:]]\n"
            "from dsvl_cli.cli import app\n"
            "try:\n    app()\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'transformers', 'fastapi', 'pydantic') if m in sys.modules]\n"
            "print('HEAVY', heavy, file=sys.stderr)\n")
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert "HEAVY []" in result.stderr, result.stderr


def test_process_checks_see_exits_and_command_lines():
    """registry.alive / is_ours (psutil): an exited pid is not alive, and only a
    process whose command line carries the server mark and the key is ours to signal."""
    import subprocess
    import sys

    from dsvl_cli.keepalive import registry

    assert registry.alive(os.getpid()) and not registry.is_ours(os.getpid(), "k")
    marked = subprocess.Popen([sys.executable, "-c", "import sys; print('up', flush=True); sys.stdin.read()",
                               registry.MARK, "key-123"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert marked.stdout.readline() == b"up\n"  # running its program, not still being started
        assert registry.is_ours(marked.pid, "key-123") and not registry.is_ours(marked.pid, "key-999")
    finally:
        marked.stdin.close()
        marked.wait(timeout=30)
    assert not registry.alive(marked.pid) and not registry.is_ours(marked.pid, "key-123")
