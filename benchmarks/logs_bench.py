"""What the log costs (issue 25): one entry written the way `dsvl ask` writes it, on an empty log
and on one of 100k entries; `dsvl ask` end to end with and without `--no-log`; and `dsvl logs -q`
over the 100k entries, beside `dsvl logs` (no search) and a LIKE scan (what FTS5 saves).

    python benchmarks/logs_bench.py [--entries 100000] [--repeats 15] [--ask-runs 5] [--out FILE.json]

Everything runs against a temporary DSVL_LOGS and XDG_STATE_HOME; wall times of processes are
medians of interleaved runs (a loaded VM moves single runs a lot).
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
REPO = Path(__file__).resolve().parent.parent
PHOTO = REPO / "examples" / "sunset.jpg"
WORDS = ("cat dog sofa window chart invoice bird tree river car street sign table chair lamp book cup plate "
         "bottle phone screen road bridge cloud boat field flower mountain beach tower").split()


def _entry_args(k: int, rng: random.Random):
    from dsvl_cli.conversation import Conversation
    from dsvl_cli.images import load_image
    from dsvl_cli.results import Result, Stats

    prompt = f"What is {' '.join(rng.choices(WORDS, k=6))}?"
    # "zebra": in every 1000th entry; "okapi": in the oldest one only (a LIKE scan reads every row)
    answer = " ".join(rng.choices(WORDS, k=60)) + (" zebra" if k % 1000 == 0 else "") + (" okapi" if k == 1 else "")
    images = [load_image(str(PHOTO))] if k == 0 else []
    stats = Stats(prompt_tokens=620, generated_tokens=64, total_s=1.2)
    return Conversation.single(prompt, images), Result(answer, "stop", stats)


def fill(path: Path, entries: int) -> float:
    """`entries` rows through entry.build (one picture record reused), in one transaction; seconds."""
    from dsvl_cli.logs import entry, store
    from dsvl_cli.settings import GenerationSettings

    rng = random.Random(0)
    conversation, result = _entry_args(0, rng)
    template = entry.build(kind="ask", conversation_id="0" * 20, turn=1, conversation=conversation,
                           result=result, gen=GenerationSettings(), model="7b")
    start = time.perf_counter()
    with store.opened(path) as db:
        db.execute("BEGIN")
        for k in range(entries):
            conv, res = _entry_args(k + 1, rng)
            store.insert(db, {**template, "conversation_id": store.new_conversation_id(),
                              "prompt": conv.messages[0].text, "answer": res.answer})
        db.execute("COMMIT")
    return time.perf_counter() - start


def record_ms(repeats: int) -> list[float]:
    """One AnswerLog.record as ask calls it (a JPEG hashed, open, migrations checked, insert, close)."""
    from dsvl_cli.logs.writer import AnswerLog
    from dsvl_cli.settings import GenerationSettings

    conversation, result = _entry_args(0, random.Random(1))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        AnswerLog("ask", "7b").record(conversation, result, GenerationSettings(), 1)
        times.append((time.perf_counter() - start) * 1000)
    return times


def wall(args: list[str], env: dict) -> float:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "dsvl_cli", *args], env=env, capture_output=True, cwd=REPO)
    if done.returncode:
        raise SystemExit(f"{args}: exit {done.returncode}: {done.stderr.decode()[-300:]}")
    return time.perf_counter() - start


def interleaved(commands: dict[str, list[str]], env: dict, runs: int) -> dict[str, dict]:
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, args in commands.items():
            times[name].append(wall(args, env))
    return {name: {"median_s": statistics.median(t), "min_s": min(t), "runs": t} for name, t in times.items()}


# What `dsvl ask` imports anyway before it logs (the conversation, images, render, results, settings).
ASK_IMPORTS = "import dsvl_cli.conversation, dsvl_cli.images, dsvl_cli.render, dsvl_cli.results, dsvl_cli.settings"


def import_ms() -> float:
    """What importing the log's modules (and sqlite3) adds to an ask, in a fresh interpreter, ms."""
    code = (f"import time; {ASK_IMPORTS}; t = time.perf_counter(); import dsvl_cli.logs.writer, "
            "dsvl_cli.logs.history; print((time.perf_counter() - t) * 1000)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    return float(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--ask-runs", type=int, default=5)
    parser.add_argument("--out")
    args = parser.parse_args()
    from report import emit, machine

    tmp = Path(tempfile.mkdtemp(prefix="dsvl-logs-bench-"))
    env = {**os.environ, "XDG_STATE_HOME": str(tmp / "state")}
    out: dict = {"machine": machine("cpu"), "entries": args.entries}

    out["import_ms"] = statistics.median(import_ms() for _ in range(7))
    os.environ["DSVL_LOGS"] = str(tmp / "empty.db")
    out["record_ms_empty_log"] = statistics.median(record_ms(args.repeats))
    big = tmp / "big.db"
    out["fill_s"] = fill(big, args.entries)
    out["file_bytes"] = big.stat().st_size
    os.environ["DSVL_LOGS"] = str(big)
    out["record_ms_100k_log"] = statistics.median(record_ms(args.repeats))
    with sqlite3.connect(big) as db:  # the in-process query alone, FTS5 against a LIKE scan
        fts = "SELECT id FROM entries WHERE id IN (SELECT rowid FROM entries_fts WHERE entries_fts MATCH ?) " \
              "ORDER BY id DESC LIMIT 3"
        like = "SELECT id FROM entries WHERE prompt LIKE ? OR answer LIKE ? ORDER BY id DESC LIMIT 3"
        for name, sql, arg in (("fts_zebra_ms", fts, '"zebra"'), ("like_zebra_ms", like, "%zebra%"),
                               ("fts_okapi_ms", fts, '"okapi"'), ("like_okapi_ms", like, "%okapi%"),
                               ("fts_cat_sofa_ms", fts, '"cat" "sofa"')):
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                db.execute(sql, (arg,) if "MATCH" in sql else (arg, arg)).fetchall()
                times.append((time.perf_counter() - start) * 1000)
            out[name] = statistics.median(times)

    env["DSVL_LOGS"] = str(big)
    out["logs_commands"] = interleaved({
        "dsvl logs (last 3)": ["logs"], "dsvl logs -q zebra": ["logs", "-q", "zebra"],
        "dsvl logs -q okapi (one entry, the oldest)": ["logs", "-q", "okapi"],
        "dsvl logs -q 'cat sofa' -n 10": ["logs", "-q", "cat sofa", "-n", "10"],
        "dsvl logs path (start-up floor)": ["logs", "path"]}, env, args.repeats)
    ask = ["ask", str(PHOTO), "Describe this image.", "-m", "tiny-random", "-n", "16"]
    out["ask"] = interleaved({"dsvl ask (logged, 100k log)": ask, "dsvl ask --no-log": [*ask, "--no-log"]},
                             env, args.ask_runs)
    emit(out, args.out)


if __name__ == "__main__":
    main()
