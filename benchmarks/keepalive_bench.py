"""Keep-alive benchmark (issue 17): a shell loop of `dsvl ask` without and with `--keep-alive`.

    python benchmarks/keepalive_bench.py [--model tiny-random] [--calls 10] [-n 32] [--repeats 2]
                                         [--out keepalive.json]

Per repeat, three loops of `--calls` `dsvl ask IMAGE PROMPT -n N --plain` processes run one after
another by bash (answers discarded), in this order:
  cold       no --keep-alive: every call imports torch and loads the model;
  first      --keep-alive 5m with no server running: the first call starts it, nine reuse it;
  warm       --keep-alive 5m again: the server is already up (the steady state of a shell session).
Plus the floor: the same number of `dsvl --version` processes (Python and CLI start-up only).

A temporary DSVL_HOME keeps the user's own servers out of it (tiny-random is built there by one
unmeasured call first); every server is stopped at the end. Prints a table on stderr and one JSON
object on stdout (and to --out). Measured, never asserted.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report import emit

REPO = Path(__file__).resolve().parent.parent
PROMPT = "Describe this image."


def dsvl_command() -> list[str]:
    """`python -m dsvl_cli` of this checkout (an installed `dsvl` script may be another copy)."""
    return [sys.executable, "-m", "dsvl_cli"]


def shell_loop(calls: int, args: list[str], env: dict) -> float:
    """Seconds for bash to run `dsvl ARGS` `calls` times in a row (output discarded)."""
    command = " ".join(shlex.quote(a) for a in [*dsvl_command(), *args])
    script = f"for i in $(seq {calls}); do {command} > /dev/null || exit 1; done"
    started = time.perf_counter()
    subprocess.run(["bash", "-c", script], check=True, cwd=REPO, stderr=subprocess.DEVNULL, env=env)
    return time.perf_counter() - started


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-random")
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("-n", "--max-new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--image", type=Path, default=REPO / "examples" / "shapes.png")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    home = tempfile.mkdtemp(prefix="dsvl-ka-")
    env = {**os.environ, "DSVL_HOME": home, "PYTHONPATH": str(REPO)}
    env.pop("DSVL_KEEP_ALIVE", None)
    ask = ["ask", str(args.image), PROMPT, "-n", str(args.max_new_tokens), "--plain", "-m", args.model]
    kept = [*ask, "--keep-alive", "5m"]
    runs = []
    try:
        shell_loop(1, ask, env)  # builds tiny-random, warms the file cache; not measured
        for _ in range(args.repeats):
            shell_loop(1, ["stop", "--all"], env)
            run = {"cold_s": shell_loop(args.calls, ask, env), "first_s": shell_loop(args.calls, kept, env),
                   "warm_s": shell_loop(args.calls, kept, env), "floor_s": shell_loop(args.calls, ["--version"], env)}
            runs.append({k: round(v, 2) for k, v in run.items()})
    finally:
        shell_loop(1, ["stop", "--all"], env)
        shutil.rmtree(home, ignore_errors=True)

    result = {
        "model": args.model, "calls": args.calls, "max_new_tokens": args.max_new_tokens, "runs": runs,
        "speedup_first": [round(r["cold_s"] / r["first_s"], 1) for r in runs],
        "speedup_warm": [round(r["cold_s"] / r["warm_s"], 1) for r in runs],
        "command": " ".join(shlex.quote(a) for a in ["dsvl", *kept]),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"), "cpu": cpu_name(), "cpus": os.cpu_count(),
        "python": platform.python_version(), "load_avg_at_end": [round(x, 2) for x in os.getloadavg()],
    }
    print(f"keepalive_bench: {args.model}, {args.calls} calls per loop, -n {args.max_new_tokens}", file=sys.stderr)
    for k, r in enumerate(runs, 1):
        print(f"  run {k}: cold {r['cold_s']:.2f} s, --keep-alive from nothing {r['first_s']:.2f} s "
              f"(x{r['cold_s'] / r['first_s']:.1f}), warm {r['warm_s']:.2f} s (x{r['cold_s'] / r['warm_s']:.1f}); "
              f"`dsvl --version` x{args.calls}: {r['floor_s']:.2f} s", file=sys.stderr)
    emit(result, args.out)


if __name__ == "__main__":
    main()
