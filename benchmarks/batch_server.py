"""`dsvl batch` locally against `dsvl batch --server URL`: the same records, the same run, side by side.

    python benchmarks/batch_server.py [--model tiny-random] [--records 80] [--distinct 10] [-n 32]
                                      [--in-flight 8 0] [--repeat 3] [--out batch_server.json]

Both go through the command as a user runs it (a `dsvl` process each), so the figures are the
summary line's: records/s and output tok/s over the generation, not the model load (`dsvl serve`
is started once, first, and warmed with a few requests). The records: `--distinct` synthetic images
of varied sizes, three questions each, and a quarter text-only, as in batch_throughput.py. Greedy
answers are the same locally and through the server (tested), so both decode the same tokens.
`--in-flight` runs the --server side once per value (`--batch-size` there: requests open at once;
0 means the command's default); the server's mean batch size is read from its log lines.
`--repeat` alternates the variants that many rounds (local, then each --server variant) and reports
the best and the median of each: on a shared machine one run can be several times slower than the
next (torch's threads spin when another process holds the cores), so compare within a round.

Prints a table on stderr and one JSON object on stdout (and to --out). Measured, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from batch_throughput import QUESTIONS, make_images  # noqa: E402
from serve_bench import REPO, Server, dsvl_command  # noqa: E402

from report import emit

_SUMMARY = re.compile(r"(\d+) done, (\d+) failed.* in ([\d.]+)s · ([\d.]+) records/s · ([\d.]+) output tok/s")


def write_jobs(path: Path, images: list[str], total: int) -> None:
    lines = []
    for k in range(total):
        if k % 4 == 3:
            lines.append({"id": k, "prompt": f"Write a sentence about the number {k}." + " Please." * (k % 5)})
        else:
            lines.append({"id": k, "image": images[(k // 3) % len(images)], "prompt": QUESTIONS[k % 3]})
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))


def run_batch(args: list[str]) -> tuple[dict, dict]:
    """One `dsvl batch` process: (its summary figures, answers by id)."""
    with tempfile.NamedTemporaryFile(suffix=".jsonl", delete=False) as out:
        path = Path(out.name)
    try:
        proc = subprocess.run([*dsvl_command(), "batch", *args, "-o", str(path)], cwd=REPO,
                              capture_output=True, text=True)
        found = _SUMMARY.search(proc.stderr)
        if found is None or proc.returncode != 0:
            raise SystemExit(f"dsvl batch failed ({proc.returncode}):\n{proc.stderr}")
        done, failed, seconds, rate, tok = found.groups()
        answers = {r["id"]: r["answer"] for r in map(json.loads, path.read_text().splitlines())}
    finally:
        path.unlink(missing_ok=True)
    return {"records": int(done), "seconds": float(seconds), "records_per_s": float(rate),
            "output_tok_per_s": float(tok)}, answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-random")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--records", type=int, default=80)
    parser.add_argument("--distinct", type=int, default=10)
    parser.add_argument("-n", "--max-new-tokens", type=int, default=32)
    parser.add_argument("--in-flight", type=int, nargs="+", default=[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    result: dict = {"model": args.model, "device": args.device, "records": args.records,
                    "max_new_tokens": args.max_new_tokens}
    with tempfile.TemporaryDirectory() as tmp:
        jobs = Path(tmp) / "jobs.jsonl"
        write_jobs(jobs, make_images(Path(tmp), args.distinct), args.records)
        common = [str(jobs), "-n", str(args.max_new_tokens)]
        runs: dict[str, list[dict]] = {"local": []}
        server = Server(args.model, args.device, None)
        try:
            run_batch([*common, "--server", server.url])  # warm-up, not measured
            for _ in range(args.repeat):
                figures, want = run_batch([*common, "-m", args.model, "--device", args.device])
                runs["local"].append(figures)
                for in_flight in args.in_flight:
                    mark = len(server.lines)
                    extra = ["--batch-size", str(in_flight)] if in_flight else []
                    figures, got = run_batch([*common, "--server", server.url, *extra])
                    time.sleep(0.2)  # the last log lines
                    sizes = server.batch_sizes(mark)
                    figures.update(same_answers=got == want,
                                   mean_server_batch=round(sum(sizes) / len(sizes), 2) if sizes else None)
                    runs.setdefault(f"server, in-flight {in_flight or 'default'}", []).append(figures)
        finally:
            server.stop()
    result["runs"] = runs
    result["best_records_per_s"] = {k: max(r["records_per_s"] for r in v) for k, v in runs.items()}
    result["median_records_per_s"] = {k: statistics.median(r["records_per_s"] for r in v) for k, v in runs.items()}
    result.update(python=platform.python_version(), machine=platform.machine(), cpus=os.cpu_count(),
                  date=time.strftime("%Y-%m-%d"))
    print(f"batch_server: {args.model} on {args.device}, {args.records} records, -n {args.max_new_tokens}, "
          f"{args.repeat} rounds (records/s: best, median; output tok/s of the best)", file=sys.stderr)
    for name, rows in runs.items():
        best = max(rows, key=lambda r: r["records_per_s"])
        extra = (f"  mean server batch {[r['mean_server_batch'] for r in rows]}, same answers "
                 f"{all(r['same_answers'] for r in rows)}" if "same_answers" in best else "")
        print(f"  {name:<26} {best['records_per_s']:>7} {result['median_records_per_s'][name]:>7}  "
              f"{best['output_tok_per_s']:>8} tok/s{extra}", file=sys.stderr)
    emit(result, args.out)


if __name__ == "__main__":
    main()
