"""Test fixtures: an isolated DSVL_HOME and HOME, tiny-random built once per session, fakes.

Everything runs offline: tiny-random is built locally, the hub is never asked (HF_HUB_OFFLINE).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="dsvl-tests-"))
os.environ["DSVL_HOME"] = str(_SESSION_DIR / "dsvl-home")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HOME"] = str(_SESSION_DIR / "hf-home")
os.environ.pop("HF_HUB_CACHE", None)
os.environ.pop("XDG_CONFIG_HOME", None)  # the config file is ~/.config/dsvl/config.toml in each test's HOME
os.environ.pop("XDG_STATE_HOME", None)  # the log and chat history are under each test's HOME
# Where a test unsets HF_HUB_OFFLINE, the Hub is a closed loopback port: refused at once, never the internet.
os.environ["HF_ENDPOINT"] = "http://127.0.0.1:9"
os.environ.pop("NO_COLOR", None)
for _name in list(os.environ):
    if _name.startswith("DSVL_") and _name not in ("DSVL_HOME",):
        del os.environ[_name]

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_SESSION_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_folder() -> Path:
    from dsvl_cli.engine import runtime
    from dsvl_cli.models import tiny_random

    return tiny_random.ensure_built("tiny-random", runtime.dsvl_home())


@pytest.fixture(scope="session")
def tiny13_folder() -> Path:
    from dsvl_cli.engine import runtime
    from dsvl_cli.models import tiny_random

    return tiny_random.ensure_built("tiny-random-1.3b", runtime.dsvl_home())


@pytest.fixture(scope="session")
def engine(tiny_folder):
    from dsvl_cli.engine.local import LocalEngine
    from dsvl_cli.settings import ModelSettings

    return LocalEngine.load(ModelSettings(model="tiny-random", device="cpu"))


@pytest.fixture(scope="session")
def reference(tiny_folder):
    """The plain transformers way: the model and processor straight from the folder."""
    return load_reference(tiny_folder)


def load_reference(folder: Path):
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(folder)
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32).eval()
    return model, processor


def reference_generate(model, processor, messages: list[dict], images: list, max_new_tokens: int) -> list[int]:
    """Greedy token ids from plain `generate`, the way the model card does it."""
    import torch

    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(text=prompt, images=images or None, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return out[0, inputs["input_ids"].shape[1]:].tolist()


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """Each test gets its own HOME (history files, ~ expansion) but shares DSVL_HOME."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


@pytest.fixture
def cli():
    """Invoke the app in-process; returns a function (args, input=None) -> Result."""
    from typer.testing import CliRunner

    from dsvl_cli.cli import app

    runner = CliRunner()

    def invoke(args: list[str], input=None, env=None):
        return runner.invoke(app, args, input=input, env=env, catch_exceptions=False)

    return invoke


def run_dsvl(args: list[str], *, input: bytes | None = None, timeout: float = 120, env=None):
    """A real `dsvl` process (for pipes, exit codes, import cost)."""
    return subprocess.run([sys.executable, "-m", "dsvl_cli", *args], input=input, capture_output=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, cwd=REPO)
