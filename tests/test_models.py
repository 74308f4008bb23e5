"""`dsvl models`, `pull`, `rm` and shell completion against a fake Hugging Face cache, laid out as
huggingface_hub lays it out (models--org--name/blobs, snapshots/<commit>/ links, refs/main) and
built from the tiny-random folders. Nothing here touches the network: the Hub is a closed port."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from fnmatch import fnmatch
from pathlib import Path

import pytest

from conftest import run_dsvl

SEVEN = "deepseek-community/deepseek-vl-7b-chat"
ONE3 = "deepseek-community/deepseek-vl-1.3b-chat"


def add_repo(cache: Path, repo_id: str, folder: Path, commit: str, ref: str | None = "main",
             config: dict | None = None) -> Path:
    """One revision of `repo_id` holding `folder`'s files: content-addressed blobs, relative links."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for file in sorted(folder.iterdir()):
        data = json.dumps(config).encode() if config and file.name == "config.json" else file.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
    if ref:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return repo


def blob_bytes(repo: Path) -> int:
    return sum(f.stat().st_size for f in (repo / "blobs").iterdir())


@pytest.fixture
def hf_cache(tmp_path, monkeypatch, tiny_folder, tiny13_folder):
    """7B (two revisions sharing most blobs) and 1.3B as tiny-random copies, and a BERT-like repo."""
    cache = tmp_path / "hf-hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    add_repo(cache, SEVEN, tiny_folder, "a" * 40, ref=None)
    config = json.loads((tiny_folder / "config.json").read_text())
    add_repo(cache, SEVEN, tiny_folder, "b" * 40, config={**config, "note": "newer"})
    add_repo(cache, ONE3, tiny13_folder, "c" * 40)
    add_repo(cache, "someone/bert-tiny", tiny13_folder, "d" * 40, config={"model_type": "bert"})
    return cache


def test_models_json_lists_the_cache_with_sizes_revisions_and_the_default(cli, hf_cache, tiny_folder):
    result = cli(["models", "--json"])
    assert result.exit_code == 0, result.output
    listing = json.loads(result.stdout)
    by_name = {m["name"]: m for m in listing["models"]}
    assert set(by_name) == {SEVEN, ONE3, "tiny-random", "tiny-random-1.3b"}  # no BERT without --all
    seven = by_name[SEVEN]
    repo = hf_cache / f"models--{SEVEN.replace('/', '--')}"
    assert seven["size_bytes"] == blob_bytes(repo)  # the shared blobs counted once
    assert blob_bytes(repo) < 2 * sum(f.stat().st_size for f in tiny_folder.iterdir())
    assert [(r["commit"][0], r["refs"]) for r in sorted(seven["revisions"], key=lambda r: r["commit"])] == \
        [("a", []), ("b", ["main"])]
    assert seven["aliases"] == ["7b"] and seven["hybrid"] is True and seven["default"] is True
    assert by_name[ONE3]["hybrid"] is False and by_name[ONE3]["default"] is False
    assert by_name["tiny-random"]["random_weights"] is True and by_name["tiny-random"]["kind"] == "built"
    assert {row["name"] for row in listing["not_local"]} == {"tiny-random-fullres"}

    every = json.loads(cli(["models", "--all", "--json"]).stdout)
    bert = next(m for m in every["models"] if m["name"] == "someone/bert-tiny")
    assert bert["deepseek_vl"] is False and bert["hybrid"] is None


def test_models_table_and_the_default_from_the_environment(cli, hf_cache, monkeypatch):
    monkeypatch.setenv("DSVL_MODEL", "1.3b")
    result = cli(["ls"])
    assert result.exit_code == 0, result.output
    header, *rows = result.stdout.splitlines()
    assert header.split()[:3] == ["NAME", "ALIAS", "REVISION"]
    marked = [row for row in rows if row.rstrip().endswith("*")]
    assert len(marked) == 1 and marked[0].startswith(ONE3)
    seven = next(row for row in rows if row.startswith(SEVEN))
    assert "7b" in seven and "hybrid" in seven and "main" in seven and "MB" in seven
    assert any("tiny-random-fullres" in row and "built on first use" in row for row in rows)


def test_rm_asks_in_a_pipe_for_y_then_frees_the_space(cli, hf_cache):
    repo = hf_cache / f"models--{ONE3.replace('/', '--')}"
    size = blob_bytes(repo)
    refused = cli(["rm", "1.3b"])
    assert refused.exit_code == 2 and "-y" in refused.stderr and repo.exists()
    result = cli(["rm", "1.3b", "-y"])
    assert result.exit_code == 0, result.output
    assert not repo.exists()
    assert f"{size / 1e6:.1f} MB freed" in result.stderr or f"{size / 1e3:.1f} KB freed" in result.stderr
    assert ONE3 not in {m["name"] for m in json.loads(cli(["models", "--json"]).stdout)["models"]}
    missing = cli(["rm", "1.3b", "-y"])
    assert missing.exit_code == 2 and "not on this machine" in missing.stderr


def test_rm_one_revision_keeps_the_other_and_its_blobs(cli, hf_cache):
    repo = hf_cache / f"models--{SEVEN.replace('/', '--')}"
    before = blob_bytes(repo)
    result = cli(["rm", "7b", "--revision", "aaaa", "-y"])
    assert result.exit_code == 0, result.output
    assert not (repo / "snapshots" / ("a" * 40)).exists() and (repo / "snapshots" / ("b" * 40)).exists()
    # only the old config.json blob was the first revision's alone
    assert 0 < before - blob_bytes(repo) < 10_000
    for link in (repo / "snapshots" / ("b" * 40)).iterdir():
        assert link.resolve().exists(), link  # every file of the kept revision still reads
    bad = cli(["rm", "7b", "--revision", "ffff", "-y"])
    assert bad.exit_code == 2 and "no cached revision ffff" in bad.stderr


def test_pull_offline_and_unreachable_fail_in_one_line(cli, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    offline = cli(["pull", "7b"])  # conftest sets HF_HUB_OFFLINE
    assert offline.exit_code == 1
    assert len(offline.stderr.strip().splitlines()) == 1 and "offline mode is on" in offline.stderr
    monkeypatch.delenv("HF_HUB_OFFLINE")
    result = cli(["pull", "1.3b"])  # HF_ENDPOINT: a closed loopback port (conftest)
    assert result.exit_code == 1
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1 and "cannot be reached" in line
    assert "dsvl pull 1.3b" in line and "--model PATH" in line and "--model tiny-random" in line
    assert not (tmp_path / "empty").exists()  # nothing was written


def test_pull_offline_of_a_cached_model_says_it_is_here(cli, hf_cache):
    result = cli(["pull", "1.3b"])  # HF_HUB_OFFLINE: nothing to fetch, and nothing needed
    assert result.exit_code == 0, result.output
    assert str(hf_cache / f"models--{ONE3.replace('/', '--')}" / "snapshots" / ("c" * 40)) in result.stderr


def test_pull_fetches_what_the_loader_reads_and_never_pickles(cli, monkeypatch, tmp_path, tiny_folder):
    """pull checks config.json first, then downloads with the loader's own file filter."""
    import huggingface_hub

    from dsvl_cli.engine import loading
    from dsvl_cli.models import hub

    calls = []

    def fake_snapshot(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(tiny_folder)

    def fake_config(repo_id, filename, **kwargs):
        return str(tiny_folder / filename)

    monkeypatch.setattr(hub, "probe", lambda *a, **k: None)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_config)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    result = cli(["pull", "7b", "--revision", "v1"])
    assert result.exit_code == 0, result.output
    [(repo_id, kwargs)] = calls
    assert repo_id == SEVEN and kwargs["revision"] == "v1" and kwargs["cache_dir"] == tmp_path / "hub"
    patterns = kwargs["allow_patterns"]
    assert patterns == loading.HUB_FILES
    for name in ("model.safetensors", "config.json", "tokenizer.json", "chat_template.jinja"):
        assert any(fnmatch(name, p) for p in patterns), name
    for name in ("pytorch_model.bin", "model.pt", "modeling_deepseek.py", "model.ckpt"):
        assert not any(fnmatch(name, p) for p in patterns), name
    assert str(tiny_folder) in result.stderr

    monkeypatch.setattr(huggingface_hub, "hf_hub_download",
                        lambda *a, **k: str(tmp_path / "bert.json"))
    (tmp_path / "bert.json").write_text('{"model_type": "bert"}')
    refused = cli(["pull", "someone/bert-tiny"])
    assert refused.exit_code == 2 and "not a DeepSeek-VL model" in refused.stderr and len(calls) == 1


def test_first_ask_without_the_model_or_the_hub_names_pull_a_folder_and_tiny_random(cli, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.delenv("HF_HUB_OFFLINE")
    result = cli(["ask", "What is this?"])
    assert result.exit_code == 1
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1, line
    assert SEVEN in line and "dsvl pull 7b" in line and "--model PATH" in line and "--model tiny-random" in line


def _complete(cli, words: str, shell: str = "bash") -> list[str]:
    from typer.testing import CliRunner

    from dsvl_cli.cli import app

    env = {"_DSVL_COMPLETE": f"complete_{shell}", "COMP_WORDS": words, "COMP_CWORD": str(len(words.split()) - 1),
           "_TYPER_COMPLETE_ARGS": words}
    result = CliRunner().invoke(app, [], env=env, prog_name="dsvl")
    return result.stdout.split()


def test_completion_of_model_names_and_image_paths(cli, hf_cache, tmp_path, monkeypatch):
    names = _complete(cli, "dsvl ask -m deepseek-community/deepseek-vl-1")
    assert names == [ONE3]
    assert {"tiny-random", "tiny-random-1.3b", "tiny-random-fullres"} <= set(_complete(cli, "dsvl chat --model tiny"))
    assert "someone/bert-tiny" in _complete(cli, "dsvl pull some")
    pictures = tmp_path / "my pictures"
    pictures.mkdir()
    for name in ("cat.png", "cat.JPG", "catalog.txt", "cats"):
        (pictures / name).mkdir() if name == "cats" else (pictures / name).write_bytes(b"x")
    monkeypatch.chdir(pictures)
    assert sorted(_complete(cli, "dsvl ask ca")) == ["cat.JPG", "cat.png", "cats/"]
    from dsvl_cli.models.completion import complete_image

    assert sorted(complete_image(f"{pictures}/ca")) == sorted(f"{pictures}/{n}" for n in ("cat.JPG", "cat.png", "cats/"))
    assert complete_image("https://example.com/ca") == []


def test_show_completion_prints_a_script_for_each_shell(cli):
    for shell in ("bash", "zsh", "fish"):
        result = cli(["--show-completion", shell])
        assert result.exit_code == 0 and "_DSVL_COMPLETE" in result.stdout, (shell, result.output)


def test_models_and_completion_import_no_torch(hf_cache):
    code = ("import sys; sys.argv = ['dsvl', *sys.argv[1:]]\n"
            "from dsvl_cli.cli import main\n"
            "import atexit\n"
            "atexit.register(lambda: print('HEAVY', [m for m in ('torch', 'transformers') if m in sys.modules], "
            "file=sys.stderr))\n"
            "main()\n")
    import subprocess

    env = {**os.environ, "HF_HUB_CACHE": str(hf_cache)}
    listing = subprocess.run([sys.executable, "-c", code, "models", "--json"], capture_output=True, text=True,
                             env=env, timeout=60)
    assert listing.returncode == 0 and "HEAVY []" in listing.stderr, listing.stderr
    assert SEVEN in listing.stdout
    complete = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                              env={**env, "_DSVL_COMPLETE": "complete_bash", "COMP_WORDS": "dsvl ask -m 7",
                                   "COMP_CWORD": "3"})
    assert complete.stdout.split() == ["7b"] and "HEAVY []" in complete.stderr, complete.stderr


def test_pull_from_a_hub_fetches_only_what_the_loader_reads_then_ask_uses_it(cli, tmp_path, tiny13_folder,
                                                                              monkeypatch):
    """A real `dsvl pull` process against a fake Hub (tests/fakehub.py) serving tiny-random-1.3b's
    files plus a pickle and a code file: only the loader's files come down, a second pull fetches
    nothing again, and `dsvl models` and `dsvl ask` then use the cache offline."""
    from fakehub import FakeHub

    files = {f.name: f.read_bytes() for f in tiny13_folder.iterdir() if f.is_file()}
    files.update({"pytorch_model.bin": b"a pickle", "modeling_deepseek.py": b"import os"})
    hub = FakeHub({ONE3: files})
    cache = tmp_path / "hub"
    try:
        env = {"HF_ENDPOINT": hub.url, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "",
               "HF_HUB_DISABLE_TELEMETRY": "1"}
        first = run_dsvl(["pull", "1.3b"], env=env, timeout=120)
        assert first.returncode == 0, first.stderr
        fetched = {path.rsplit("/", 1)[-1] for method, path in hub.requests if method == "GET" and "/resolve/" in path}
        again = run_dsvl(["pull", "1.3b"], env=env, timeout=120)
        assert again.returncode == 0, again.stderr
    finally:
        hub.close()
    wanted = {name for name in files if name.endswith((".json", ".safetensors", ".jinja"))}
    assert fetched == wanted
    snapshot = cache / f"models--{ONE3.replace('/', '--')}" / "snapshots" / hub.commit
    assert {p.name for p in snapshot.iterdir()} == wanted
    downloads = [p for m, p in hub.requests if m == "GET" and p.endswith("model.safetensors")]
    assert len(downloads) == 1  # the second pull found it complete in the cache

    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    listed = {m["name"]: m for m in json.loads(cli(["models", "--json"]).stdout)["models"]}
    assert listed[ONE3]["size_bytes"] == sum(len(files[n]) for n in wanted)
    assert listed[ONE3]["revisions"][0]["refs"] == ["main"]
    answer = cli(["ask", "Hi?", "-m", "1.3b", "-n", "2", "--json", "--device", "cpu"])
    assert answer.exit_code == 0, answer.output
    assert json.loads(answer.stdout)["stats"]["generated_tokens"] >= 1


def test_the_hub_probe_gives_up_on_a_silent_server_and_accepts_any_http_answer():
    """A server that takes the connection and never answers (a black-holed proxy, a captive portal)
    is 'not reachable' after the probe's timeout, not after a client's retries; any HTTP status is
    an answer."""
    import socket

    from fakehub import FakeHub
    from dsvl_cli.models import hub

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        why = hub.probe(f"http://127.0.0.1:{silent.getsockname()[1]}", timeout=0.3)
    assert why is not None
    assert hub.probe("http://127.0.0.1:9", timeout=1.0)  # refused
    answering = FakeHub({})
    try:
        assert hub.probe(answering.url, timeout=5.0) is None  # a 404 is still the Hub answering
    finally:
        answering.close()


def test_rm_on_a_terminal_asks_first(cli, hf_cache, monkeypatch):
    import dataclasses

    from dsvl_cli.screen.environment import Environment

    real = Environment.current.__func__
    monkeypatch.setattr(Environment, "current",
                        classmethod(lambda cls: dataclasses.replace(real(cls), stdin_isatty=True)))
    repo = hf_cache / f"models--{ONE3.replace('/', '--')}"
    kept = cli(["rm", "1.3b"], input="n\n")
    assert kept.exit_code == 1 and repo.exists() and "freeing" in kept.stderr
    gone = cli(["rm", "1.3b"], input="y\n")
    assert gone.exit_code == 0 and not repo.exists() and "freed" in gone.stderr
