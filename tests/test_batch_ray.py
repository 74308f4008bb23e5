"""`dsvl batch --ray` on a local Ray instance (2 CPUs, started once for the module): the same records
as local batch, answer for answer; a killed actor loses nothing; --resume finishes a stopped job."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import EXAMPLES, REPO

SHAPES, SUNSET, CHART = (str(EXAMPLES / n) for n in ("shapes.png", "sunset.jpg", "chart.png"))
TINY = ["-m", "tiny-random", "-n", "6"]


@pytest.fixture(scope="module")
def ray_cluster(tiny_folder):
    """One local Ray for the module, with the job's runtime_env (this tree's dsvl_cli for workers)."""
    ray = pytest.importorskip("ray")
    from dsvl_cli.batch.ray_job import runtime_env

    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=96 * 2**20, log_to_driver=False,
             logging_level="ERROR", runtime_env=runtime_env())
    try:
        yield ray
    finally:
        ray.shutdown()


def _jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _without_timings(record: dict) -> dict:
    """A record as compared across runs: token counts stay, times go."""
    record = dict(record)
    stats = record.pop("stats", None)
    if stats is not None:
        record["tokens"] = (stats["prompt_tokens"], stats["generated_tokens"])
    return record


class _Watch:
    """Runs `action(records written)` once `path` holds at least `lines` records (synchronised on
    what the job wrote), unless the job ended first. Use as a context manager around the job."""

    def __init__(self, path: Path, lines: int, action):
        self.path, self.lines, self.action = path, lines, action
        self.ended = threading.Event()
        self.thread = threading.Thread(target=self._wait, daemon=True)

    def _wait(self) -> None:
        while not self.ended.is_set():
            count = len(self.path.read_text().splitlines()) if self.path.exists() else 0
            if count >= self.lines:
                self.action(count)
                return
            self.ended.wait(0.05)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.ended.set()
        self.thread.join()


def _engine_actors(ray) -> list[dict]:
    from ray._private import state  # the GCS actor table (pids, restarts), no dashboard needed

    return [a for a in state.actors().values() if "EngineWorker" in a["ActorClassName"]]


def test_ray_gives_local_batch_records_answer_for_answer(ray_cluster, cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copy(SHAPES, tmp_path / "relative.png")  # workers run elsewhere: relative paths still work
    mixed = [
        {"id": "one", "image": SHAPES, "prompt": "What is this?"},
        {"id": "none", "prompt": "Say something about colours and shapes, at some length please."},
        {"id": "two", "images": [SUNSET, CHART], "prompt": "Compare these two pictures."},
        {"id": "rel", "image": "relative.png", "prompt": "Which shapes?"},
        {"id": "gone", "image": "missing.png", "prompt": "What?"},
        '{"id": "torn", "prompt": ',
        {"id": "long", "image": CHART, "prompt": "Describe it.", "max_new_tokens": 9},
        {"id": "noprompt", "image": SHAPES},
        {"id": "again", "image": SHAPES, "prompt": "What colours?"},
        {"id": 10, "prompt": "Hi"},
    ]
    jobs = _jsonl(tmp_path / "jobs.jsonl", mixed)
    local = cli(["batch", str(jobs), "-o", "local.jsonl", "--batch-size", "3", *TINY])
    on_ray = cli(["batch", str(jobs), "-o", "ray.jsonl", "--batch-size", "3", "--ray", "--workers", "2", *TINY])
    assert local.exit_code == on_ray.exit_code == 1, on_ray.output  # records failed: exit 1 on both
    got, want = _records(tmp_path / "ray.jsonl"), _records(tmp_path / "local.jsonl")
    assert [r["id"] for r in got] == ["one", "none", "two", "rel", "gone", 6, "long", "noprompt", "again", 10]
    assert {json.dumps(r["id"]): _without_timings(r) for r in got} == \
        {json.dumps(r["id"]): _without_timings(r) for r in want}
    errors = {r["id"]: r["error"]["type"] for r in got if "error" in r}
    assert errors == {"gone": "image_error", 6: "invalid_json", "noprompt": "invalid_record"}
    assert "missing.png" in next(r for r in got if r["id"] == "gone")["error"]["message"]
    assert "dsvl batch: 7 done, 3 failed" in on_ray.stderr and "dsvl batch: worker " in on_ray.stderr
    assert "Traceback" not in on_ray.output and on_ray.stdout == ""

    @ray_cluster.remote
    def origin():  # what a worker of this job imports: the tree under test, shipped with the job
        import dsvl_cli.batch.ray_workers as module

        return module.__file__, Path(module.__file__).read_bytes()

    where, code = ray_cluster.get(origin.remote())  # (a local driver's sys.path comes first, else
    assert code == (REPO / "dsvl_cli/batch/ray_workers.py").read_bytes(), where  # the py_modules copy)


def test_a_killed_actor_loses_no_record(ray_cluster, cli, tmp_path):
    jobs = _jsonl(tmp_path / "jobs.jsonl", [{"id": f"r{k}", "image": [SHAPES, CHART, SUNSET][k % 3],
                                              "prompt": f"Question {k}?"} for k in range(16)])
    out = tmp_path / "out.jsonl"
    killed: list = []

    def kill(written: int) -> None:
        actors = [a for a in _engine_actors(ray_cluster) if a["State"] == "ALIVE"]
        os.kill(actors[0]["Pid"], signal.SIGKILL)
        killed.append((actors[0]["ActorID"], written))

    with _Watch(out, 1, kill):
        result = cli(["batch", str(jobs), "-o", str(out), "--batch-size", "2", "--ray", "--workers", "2", *TINY])
    assert result.exit_code == 0, result.output
    assert killed and killed[0][1] < 16  # killed mid-job
    ids = [r["id"] for r in _records(out)]
    assert ids == [f"r{k}" for k in range(16)]  # every record exactly once, in input order
    restarted = {a["ActorID"]: a["NumRestarts"] for a in _engine_actors(ray_cluster)}
    assert restarted[killed[0][0]] >= 1


def test_a_stopped_job_resumes_with_every_record_once(ray_cluster, cli, tmp_path):
    jobs = _jsonl(tmp_path / "jobs.jsonl", [{"id": k, "prompt": f"Count to {k}."} for k in range(12)])
    out = tmp_path / "out.jsonl"
    previous = signal.signal(signal.SIGINT, lambda *a: None)  # a late signal never reaches pytest
    try:
        with _Watch(out, 2, lambda _: os.kill(os.getpid(), signal.SIGINT)):
            first = cli(["batch", str(jobs), "-o", str(out), "--batch-size", "2", "--ray", *TINY])
    finally:
        signal.signal(signal.SIGINT, previous)
    assert first.exit_code == 130, first.output
    done = [r["id"] for r in _records(out)]
    assert 2 <= len(done) < 12 and done == list(range(len(done)))  # a prefix of the input: whole blocks
    again = cli(["batch", str(jobs), "-o", str(out), "--batch-size", "2", "--ray", "--resume", *TINY])
    assert again.exit_code == 0, again.output
    assert f"{len(done)} skipped" in again.stderr
    assert [r["id"] for r in _records(out)] == list(range(12))


def test_a_model_that_cannot_load_fails_the_job_in_one_line(ray_cluster, cli, tiny_folder, tmp_path):
    broken = tmp_path / "broken-model"
    shutil.copytree(tiny_folder, broken, ignore=shutil.ignore_patterns("*.safetensors"))  # processor only
    jobs = _jsonl(tmp_path / "jobs.jsonl", [{"id": "a", "prompt": "Hi"}])
    out = tmp_path / "out.jsonl"
    result = cli(["batch", str(jobs), "-o", str(out), "--ray", "-m", str(broken), "-n", "4"])
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("dsvl: error:")]
    assert len(lines) == 1 and str(broken) in lines[0] and "Ray worker" in lines[0], result.stderr
    assert "Traceback" not in result.stderr and out.read_text() == ""


def test_ray_usage_errors_and_ray_not_installed(cli, tmp_path, monkeypatch):
    jobs = _jsonl(tmp_path / "jobs.jsonl", [{"id": "a", "prompt": "Hi"}])
    result = cli(["batch", str(jobs), "--workers", "2", *TINY])
    assert result.exit_code == 2 and "--workers" in result.stderr and "--ray" in result.stderr
    result = cli(["batch", str(jobs), "--ray", "--server", "http://127.0.0.1:9"])
    assert result.exit_code == 2 and "--server" in result.stderr
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails, as where it is not installed
    result = cli(["batch", str(jobs), "--ray", *TINY])
    assert result.exit_code == 2
    assert result.stderr.strip().endswith("pip install 'dsvl-cli[ray]'") and len(result.stderr.splitlines()) == 1


def test_a_cluster_that_does_not_answer_is_one_line(tmp_path):
    jobs = _jsonl(tmp_path / "jobs.jsonl", [{"id": "a", "prompt": "Hi"}])
    done = subprocess.run([sys.executable, "-m", "dsvl_cli", "batch", str(jobs), "--ray-address", "127.0.0.1:1",
                           *TINY], capture_output=True, text=True, cwd=REPO, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        "dsvl: error: cannot reach the Ray cluster at 127.0.0.1:1: Connection refused (is `ray start --head` "
        "running there? --ray-address / RAY_ADDRESS)"]


def test_batch_help_does_not_import_ray():
    code = ("import sys; from typer.testing import CliRunner; from dsvl_cli.cli import app; "
            "r = CliRunner().invoke(app, ['batch', '--help']); assert '--ray' in r.output; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'pyarrow', 'torch')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
