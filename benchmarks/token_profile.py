"""Where the time of a token goes (issue 31): py-spy samples every thread of `dsvl ask`'s engine and of
`dsvl serve`, and this prints the top entries by own time, per thread.

    pip install py-spy   # a sampling profiler that sees every thread (not a dsvl dependency)
    python benchmarks/token_profile.py [--model tiny-random] [--tokens 400] [--top 15] [--code DIR] [--out FILE.json]

`--code DIR`: profile another checkout (a git worktree of an older commit: the "before").

Targets, each on the chosen tiny model with its EOS off (every answer as long as asked), greedy:
- **ask**: a process that loads the engine once and runs `LocalEngine.run` (what `dsvl ask` does)
  5 times, a picture and a --tokens answer each; only samples inside those runs count;
- **serve**: `dsvl serve` under py-spy while this script sends 5 streamed --tokens requests, then 16
  concurrent 64-token ones, then stops it; samples of the engine loop's thread and of the event
  loop's are reported apart.

A thread's samples include its waits (py-spy cannot tell every wait from work): read the own-time
of the entries below a wait, not the wait itself. Nothing here is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from engine_bench import IMAGE, REPO, no_eos_copy
from report import emit, machine
from token_cost import request

ASK_SCRIPT = """
import sys
sys.path.insert(0, {repo!r})
from dsvl_cli.conversation import Conversation
from dsvl_cli.engine.local import LocalEngine
from dsvl_cli.images import load_image
from dsvl_cli.settings import GenerationSettings, ModelSettings

engine = LocalEngine.load(ModelSettings(model={folder!r}, device="cpu"))
conversation = Conversation.single("Describe this picture in detail.", [load_image({image!r})])
engine.run(conversation, GenerationSettings(max_new_tokens=8))

def profiled_runs():
    for _ in range(5):
        engine.run(conversation, GenerationSettings(max_new_tokens={tokens}))

profiled_runs()
"""


def frame_name(frame: str) -> str:
    """'function (path/file.py:line)' -> 'function file.py'."""
    if " (" not in frame:
        return frame
    function, rest = frame.split(" (", 1)
    return f"{function} {rest.split(':')[0].rsplit('/', 1)[-1]}"


def top(raw: Path, keep, n: int) -> dict:
    """Own and inclusive shares of the samples whose stack `keep` accepts."""
    own, inclusive, total = Counter(), Counter(), 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not keep(stack):
            continue
        frames = [frame_name(f) for f in stack.split(";")]
        total += int(count)
        own[frames[-1]] += int(count)
        for name in set(frames):
            inclusive[name] += int(count)
    share = lambda c: round(100 * c / total, 1) if total else 0.0  # noqa: E731
    return {"samples": total, "own": [[name, share(c)] for name, c in own.most_common(n)],
            "inclusive_dsvl": [[name, share(c)] for name, c in inclusive.most_common(400)
                               if _is_dsvl(name)][:n]}


DSVL_FILES = {p.name for p in (REPO / "dsvl_cli").rglob("*.py")} - {"__init__.py"}


def _is_dsvl(name: str) -> bool:
    return name.rsplit(" ", 1)[-1] in DSVL_FILES


def spy(args: list[str], raw: Path, **popen) -> subprocess.Popen:
    return subprocess.Popen(["py-spy", "record", "-r", "200", "-f", "raw", "-o", str(raw), "--", *args],
                            **popen)


def profile_ask(code: Path, folder: Path, tokens: int, n: int, work: Path) -> dict:
    script = work / "ask_runs.py"
    script.write_text(ASK_SCRIPT.format(repo=str(code), folder=str(folder), image=str(IMAGE), tokens=tokens))
    raw = work / "ask.raw"
    spy([sys.executable, str(script)], raw, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).wait(900)
    return {"caller_thread": top(raw, lambda s: "profiled_runs" in s, n),
            "generate_thread": top(raw, lambda s: "Generation.run" in s and "profiled_runs" not in s, n)}


def profile_serve(code: Path, folder: Path, tokens: int, n: int, work: Path) -> dict:
    raw = work / "serve.raw"
    env = {**os.environ, "PYTHONPATH": str(code), "HF_HUB_OFFLINE": "1"}
    proc = spy([sys.executable, "-m", "dsvl_cli", "serve", "-m", str(folder), "--device", "cpu", "--port", "0"], raw,
               stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env, cwd=code)
    url = None
    while url is None:
        line = proc.stderr.readline()
        if not line:
            raise SystemExit("dsvl serve exited before it was ready")
        if " at http://" in line:
            url = line.split(" at ")[1].split()[0].removesuffix("/v1")
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
    for _ in range(5):
        request(url, "default", tokens, stream=True)
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: request(url, "default", 64, stream=True, text=f"Question {k}"), range(16)))
    subprocess.run(["pkill", "-INT", "-f", f"dsvl_cli serve -m {folder}"], check=False)
    proc.wait(120)
    return {"engine_loop_thread": top(raw, lambda s: "EngineLoop._run" in s, n),
            "event_loop_thread": top(raw, lambda s: "EngineLoop._run" not in s and "run_until_complete" in s, n)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny-random")
    parser.add_argument("--tokens", type=int, default=400)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--only", choices=["ask", "serve"])
    parser.add_argument("--code", type=Path, default=REPO, help="the dsvl checkout to profile (default: this one)")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the profiled processes; 0: torch's")
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    if shutil.which("py-spy") is None:
        raise SystemExit("py-spy is not installed: pip install py-spy")
    work = Path(tempfile.mkdtemp(prefix="dsvl-token-profile-"))
    try:
        folder = no_eos_copy(args.model, work)
        result = {"machine": machine("cpu"), "model": args.model + " (EOS off)", "tokens": args.tokens,
                  "code": str(args.code),
                  "command": " ".join(["python", "benchmarks/token_profile.py", *sys.argv[1:]])}
        if args.only in (None, "ask"):
            result["ask"] = profile_ask(args.code.resolve(), folder, args.tokens, args.top, work)
        if args.only in (None, "serve"):
            result["serve"] = profile_serve(args.code.resolve(), folder, args.tokens, args.top, work)
        emit(result, args.out)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
