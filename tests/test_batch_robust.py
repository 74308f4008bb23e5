"""`dsvl batch` when things go wrong: duplicate ids, -o naming an input, a closed pipe, SIGTERM, odd
image files, a terminal shared by records and progress. Real processes only where the process is the
point (pipes, signals, exit codes, a terminal); they are synchronised on what they print."""

from __future__ import annotations

import base64
import json
import os
import select
import signal
import stat
import subprocess
import sys

import pytest

from conftest import EXAMPLES, REPO

SHAPES, CHART = str(EXAMPLES / "shapes.png"), str(EXAMPLES / "chart.png")


def _jsonl(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def _records(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]  # fails on any invalid line


def _many(path, count: int):
    return _jsonl(path, [{"id": f"r{k}", "prompt": f"Tell me about {k}.", **({"image": SHAPES} if k % 2 else {})}
                         for k in range(count)])


def _popen(args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "dsvl_cli", *args], cwd=REPO, env={**os.environ}, **kwargs)


# -- issue 16 #4: one record per id ---------------------------------------------------------------


def test_duplicate_ids_are_refused_up_front_naming_both_lines(cli, tmp_path):
    jobs = _jsonl(tmp_path / "jobs.jsonl", [{"id": "a", "prompt": "Hi"}, {"id": "b", "prompt": "Hi"},
                                            {"id": "a", "prompt": "again"}, {"id": "b", "prompt": "again"}])
    out = tmp_path / "out.jsonl"
    result = cli(["batch", str(jobs), "-o", str(out), "-m", "tiny-random"])
    assert result.exit_code == 2
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in line
    assert 'duplicate id "a"' in line and "jobs.jsonl line 1 and" in line and "line 3" in line
    assert "1 more" in line and not out.exists()  # nothing was run, nothing written


def test_duplicate_ids_across_inputs_and_with_error_records(cli, tmp_path):
    first = _jsonl(tmp_path / "one.jsonl", [{"id": "x", "prompt": "Hi"}])
    second = _jsonl(tmp_path / "two.jsonl", [{"id": "y", "prompt": "Hi"}, {"id": "x", "colour": "red"}])
    result = cli(["batch", str(first), str(second), "-m", "tiny-random"])
    assert result.exit_code == 2
    assert "one.jsonl line 1 and " in result.stderr and "two.jsonl line 2" in result.stderr


# -- issue 13 #8: -o is an input; what --resume trusts; its file mode -----------------------------


def test_output_equal_to_input_is_refused(cli, tmp_path):
    jobs = _jsonl(tmp_path / "jobs.jsonl", [{"id": "a", "prompt": "Hi"}, {"id": "b", "prompt": "Hi"}])
    before = jobs.read_text()
    for extra in ([], ["--resume"]):
        result = cli(["batch", str(jobs), "-o", str(tmp_path / "." / "jobs.jsonl"), *extra, "-m", "tiny-random"])
        assert result.exit_code == 2, result.output
        assert "is also the input" in result.stderr and "Traceback" not in result.stderr
    with open(jobs) as stdin:  # the same file as stdin: dsvl batch -o jobs.jsonl < jobs.jsonl
        proc = _popen(["batch", "-o", str(jobs), "-m", "tiny-random"], stdin=stdin, stderr=subprocess.PIPE)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and b"is also the input (stdin)" in err
    assert jobs.read_text() == before


def test_resume_counts_only_dsvl_records_as_done(cli, tmp_path):
    jobs = _jsonl(tmp_path / "jobs.jsonl", [{"id": "a", "prompt": "Hi"}, {"id": "b", "prompt": "Hi"}])
    copy = tmp_path / "copy.jsonl"
    copy.write_text(jobs.read_text())  # the input under another name: its lines have ids, no answers
    result = cli(["batch", str(jobs), "-o", str(copy), "--resume", "-m", "tiny-random"])
    assert result.exit_code == 2 and "line 1 is not a dsvl batch record" in result.stderr
    assert copy.read_text() == jobs.read_text()


def test_resume_keeps_the_output_files_mode(tmp_path):
    from dsvl_cli.batch.output import read_previous

    out = tmp_path / "out.jsonl"
    out.write_text('{"id": "a", "answer": "x"}\n{"id": "b", "line": 2, "error": {"type": "t", "message": "m"}}\n')
    out.chmod(0o644)
    prev = read_previous(out, retry_failed=True)  # rewrites the file without its error record
    assert prev.answered == {'"a"'} and out.read_text() == '{"id": "a", "answer": "x"}\n'
    assert stat.S_IMODE(out.stat().st_mode) == 0o644


# -- issue 16 #5 and 13 #10: a closed output pipe, SIGTERM ----------------------------------------


def test_closed_output_pipe_exits_1_with_the_summary(tiny_folder, tmp_path):
    jobs = _many(tmp_path / "big.jsonl", 60)
    proc = _popen(["batch", str(jobs), "-m", "tiny-random", "-n", "4", "--batch-size", "2"],
                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.readline()  # `| head -1`: one record, then the reader goes away
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 1, err
    assert json.loads(first)["id"].startswith("r")
    assert "output closed:" in err and "not answered" in err
    assert "Traceback" not in err and "BrokenPipeError" not in err and "Exception ignored" not in err


def test_sigterm_is_handled_like_ctrl_c(tiny_folder, tmp_path):
    jobs = _many(tmp_path / "jobs.jsonl", 40)
    proc = _popen(["batch", str(jobs), "-m", "tiny-random", "-n", "48", "--batch-size", "2"],
                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen = [proc.stdout.readline(), proc.stdout.readline()]  # two records are out: the run is going
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    err = err.decode()
    assert proc.returncode == 143, err
    records = _records(b"".join(seen).decode() + out.decode())  # valid JSONL, nothing torn
    assert 2 <= len(records) < 40
    assert "terminated:" in err and f"{len(records)} done" in err and "not answered" in err
    assert "Traceback" not in err


# -- issue 16 #6: no library warning from threads racing through an import ------------------------

_SPY = """
import importlib.abc, sys, threading
class Spy(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "requests":
            print("requests imported on", threading.current_thread().name, file=sys.stderr)
sys.meta_path.insert(0, Spy())
from dsvl_cli.cli import main
sys.argv = ["dsvl", *sys.argv[1:]]
main()
"""


def test_http_stack_is_imported_before_the_prefetch_threads(tiny_folder, tmp_path):
    import socket

    with socket.socket() as probe:  # a closed port: the fetch fails fast, the import still happens
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}/x.png"
    jobs = _jsonl(tmp_path / "jobs.jsonl", [{"id": k, "image": [SHAPES, CHART, url][k % 3], "prompt": "Hi"}
                                            for k in range(9)])
    proc = subprocess.run([sys.executable, "-c", _SPY, "batch", str(jobs), "-m", "tiny-random", "-n", "2"],
                          capture_output=True, text=True, timeout=120, cwd=REPO, env={**os.environ})
    assert proc.returncode == 1, proc.stderr  # the URL records fail; the others are answered
    assert "requests imported on MainThread" in proc.stderr, proc.stderr
    assert "Warning" not in proc.stderr and "PySocks" not in proc.stderr


# -- issue 13 #10: a FIFO as an image in a batch --------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_fifo_without_writer_becomes_an_error_record(cli, tmp_path, monkeypatch):
    from dsvl_cli.images import pipes

    monkeypatch.setattr(pipes, "PIPE_IDLE_S", 0.3)
    fifo = tmp_path / "photo.png"
    os.mkfifo(fifo)
    jobs = _jsonl(tmp_path / "jobs.jsonl", [{"id": "f", "image": str(fifo), "prompt": "Hi"},
                                            {"id": "ok", "image": SHAPES, "prompt": "Hi"}])
    result = cli(["batch", str(jobs), "-m", "tiny-random", "-n", "2"])
    assert result.exit_code == 1
    got = {r["id"]: r for r in _records(result.stdout)}
    assert "named pipe with nothing to read" in got["f"]["error"]["message"] and "answer" in got["ok"]


# -- rough edges: sources in records, short data: URIs, progress on a shared terminal -------------


def test_records_name_their_images_with_data_uris_shortened(cli, tmp_path):
    uri = "data:image/png;base64," + base64.b64encode((EXAMPLES / "shapes.png").read_bytes()).decode()
    jobs = _jsonl(tmp_path / "jobs.jsonl", [{"id": "u", "image": uri, "prompt": "Hi"},
                                            {"id": "two", "images": [SHAPES, CHART], "prompt": "Hi"},
                                            {"id": "gone", "image": str(tmp_path / "gone.png"), "prompt": "Hi"}])
    result = cli(["batch", str(jobs), "-m", "tiny-random", "-n", "2"])
    got = {r["id"]: r for r in _records(result.stdout)}
    assert got["u"]["image"].startswith("data:image/png;base64,") and len(got["u"]["image"]) < 100
    assert f"({len(uri)} chars)" in got["u"]["image"]
    assert got["two"]["images"] == [SHAPES, CHART] and got["gone"]["image"] == str(tmp_path / "gone.png")

    ask = cli(["ask", uri, "Hi", "-m", "tiny-random", "-n", "2", "--json"])
    assert ask.exit_code == 0, ask.output
    (shown,) = json.loads(ask.stdout)["images"]
    assert len(shown) < 100 and f"({len(uri)} chars)" in shown


def test_no_progress_bar_between_records_on_one_terminal(tiny_folder, tmp_path):
    """stdout and stderr on the same terminal: every record is a line of its own."""
    import pty

    jobs = _many(tmp_path / "jobs.jsonl", 6)
    main, child = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "200"}
    proc = subprocess.Popen([sys.executable, "-m", "dsvl_cli", "batch", str(jobs), "-m", "tiny-random", "-n", "3",
                             "--batch-size", "1"], cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                            stdout=child, stderr=child, close_fds=True)
    os.close(child)
    screen = b""
    while True:  # until the process closes the terminal; each wait bounded
        ready, _, _ = select.select([main], [], [], 120)
        assert ready, f"no output for 120 s: {screen!r}"
        try:
            chunk = os.read(main, 65536)
        except OSError:  # EIO: the child side is closed
            break
        if not chunk:
            break
        screen += chunk
    os.close(main)
    assert proc.wait(timeout=30) == 0, screen
    text = screen.decode()
    lines = [line for line in text.replace("\r\n", "\n").split("\n") if '"answer"' in line]
    assert len(lines) == 6, text
    for line in lines:
        assert line.startswith('{"id"') and "\r" not in line and "\x1b" not in line, repr(line)
        json.loads(line)


def test_missing_folder_that_looks_like_a_hub_id_says_both(tmp_path, monkeypatch):
    from dsvl_cli.engine.loading import resolve
    from dsvl_cli.errors import ModelError
    from dsvl_cli.settings import ModelSettings

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelError) as err:
        resolve(ModelSettings(model="checkpoints/final", offline=True))
    message = err.value.message
    assert "no folder checkpoints/final" in message and "as a Hub id:" in message, message


def test_help_documents_ids_exit_codes_and_sources(cli):
    text = " ".join(cli(["batch", "--help"]).stdout.split())
    for fragment in ("Ids must be unique", "output was closed early", "143 SIGTERM", '"image" | "images"',
                     "-o FILE must not be one of the inputs"):
        assert fragment in text, fragment
