"""`dsvl eval`: rows per second on tiny-random at a real picture size, likelihood against generate.

    python benchmarks/eval_bench.py [--rows 48] [--size 640x480] [--model tiny-random] [--repeat 3]
                                    [--threads N] [--out FILE.json]

Builds a VLMEvalKit-style TSV (index, base64 JPEG photo-like pictures, question, hint, A-D, answer,
category) and runs, each one `dsvl eval` process (wall time includes start-up and model load; the
rate is the run's own, from its summary line on stderr: questions over the seconds after the load):
- likelihood: the option letters scored from one prefill (the default);
- likelihood --circular: 4 questions per row (rows/s is a quarter of questions/s);
- generate -n 8 and generate -n 32 (the default -n): a greedy answer, its letter read by rules;
  tiny-random rarely says EOS, so it spends all n tokens;
- baseline, same run: `dsvl batch` over the same prompts and pictures as JSONL records with
  `"choices": ["A", "B", "C", "D"]` (the machinery eval rides on, without eval's reading and records).
The cases run --repeat times, interleaved (a noisy neighbour on a shared machine hurts all alike);
each reports the median and the best run, and the load average at every run's start.
--threads N sets OMP_NUM_THREADS for the dsvl processes (torch's intra-op threads; default: torch's
own, one per core): on a 2-core machine shared with other jobs, 2 threads made runs vary 30x with
the neighbours' load, 1 thread did not (BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import base64
import csv
import io
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from report import emit, machine  # noqa: E402

OPTIONS = ["red", "green", "blue", "yellow"]


def photo(k: int, size: tuple[int, int]) -> bytes:
    """A photo-like JPEG: a noisy gradient with a coloured shape (JPEG's cost is a photo's)."""
    import numpy
    from PIL import Image, ImageDraw

    w, h = size
    rng = numpy.random.default_rng(k)
    ramp = numpy.add.outer(numpy.arange(h), numpy.arange(w) * (1 + k % 3)) % 256
    pixels = (ramp[..., None] + rng.integers(0, 40, (h, w, 3))) % 256
    image = Image.fromarray(pixels.astype(numpy.uint8))
    draw = ImageDraw.Draw(image)
    rgb = [(220, 30, 30), (30, 180, 40), (30, 60, 220), (240, 220, 20)][k % 4]
    draw.ellipse((w // 4, h // 4, 3 * w // 4, 3 * h // 4), fill=rgb)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


def make_tsv(path: Path, rows: int, size: tuple[int, int]) -> list[dict]:
    records = []
    for k in range(rows):
        records.append({"index": k, "image": base64.b64encode(photo(k, size)).decode(),
                        "question": "What colour is the round shape in the middle?", "hint": "",
                        **dict(zip("ABCD", OPTIONS)), "answer": "ABCD"[k % 4], "category": f"c{k % 3}",
                        "l2-category": "perception", "split": "dev"})
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(records[0]), delimiter="\t")
        writer.writeheader()
        writer.writerows(records)
    return records


ENV = dict(os.environ)  # the dsvl processes' environment (--threads sets OMP_NUM_THREADS in it)


def dsvl(args: list[str]) -> tuple[float, str, str]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "dsvl_cli", *args], capture_output=True, text=True, env=ENV)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"dsvl {' '.join(args[:3])} ... failed ({done.returncode}): {done.stderr[-1500:]}")
    return wall, done.stdout, done.stderr


def eval_run(tsv: Path, flags: list[str], model: str) -> dict:
    load = os.getloadavg()[0]
    wall, out, err = dsvl(["eval", str(tsv), "-m", model, "--json", *flags])
    found = re.search(r"(\d+) questions asked in [\d.]+s · ([\d.]+) questions/s", err)
    summary = json.loads(out)
    questions = int(found.group(1))  # the seconds from the rate: the line rounds them to 0.1 s
    return {"questions": questions, "run_s": round(questions / float(found.group(2)), 3), "wall_s": round(wall, 2),
            "load": round(load, 2), "accuracy": round(summary["accuracy"], 4), "unparsed": summary.get("unparsed")}


def batch_jobs(tsv_records: list[dict], folder: Path) -> Path:
    from dsvl_cli.eval.prompt import mcq_prompt

    jobs = folder / "jobs.jsonl"
    with open(jobs, "w", encoding="utf-8") as f:
        for r in tsv_records:
            prompt = mcq_prompt(r["question"], tuple((k, r[k]) for k in "ABCD"))
            f.write(json.dumps({"id": r["index"], "image": f"data:image/jpeg;base64,{r['image']}", "prompt": prompt,
                                "choices": list("ABCD")}) + "\n")
    return jobs


def batch_run(jobs: Path, model: str) -> dict:
    load = os.getloadavg()[0]
    wall, _, err = dsvl(["batch", str(jobs), "-m", model, "-o", str(jobs.with_name("answers.jsonl"))])
    found = re.search(r"(\d+) done.* · ([\d.]+) records/s", err)
    questions = int(found.group(1))
    return {"questions": questions, "run_s": round(questions / float(found.group(2)), 3), "wall_s": round(wall, 2),
            "load": round(load, 2)}


def summarise(name: str, rows: int, runs: list[dict]) -> dict:
    seconds = sorted(r["run_s"] for r in runs)
    median, best = statistics.median(seconds), seconds[0]
    questions = runs[0]["questions"]
    return {"case": name, "rows": rows, "questions": questions, "run_s": seconds, "median_s": median,
            "rows_per_s": round(rows / median, 2), "questions_per_s": round(questions / median, 2),
            "best_rows_per_s": round(rows / best, 2), "wall_s": [r["wall_s"] for r in runs],
            "load": [r["load"] for r in runs], "accuracy": runs[0].get("accuracy"), "unparsed": runs[0].get("unparsed")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=48)
    ap.add_argument("--size", default="640x480")
    ap.add_argument("--model", default="tiny-random")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--out")
    opts = ap.parse_args()
    if opts.threads:
        ENV["OMP_NUM_THREADS"] = str(opts.threads)
    size = tuple(int(v) for v in opts.size.lower().split("x"))
    result: dict = {"machine": machine("cpu"), "rows": opts.rows, "picture": opts.size, "model": opts.model,
                    "omp_num_threads": ENV.get("OMP_NUM_THREADS")}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tsv = tmp / "bench.tsv"
        records = make_tsv(tsv, opts.rows, size)
        result["tsv_bytes"] = tsv.stat().st_size
        dsvl(["eval", str(tsv), "-m", opts.model, "--limit", "2"])  # warm the file cache and tiny-random's build
        jobs = batch_jobs(records, tmp)
        cases = {"eval --method likelihood": ["--method", "likelihood"],
                 "eval --method likelihood --circular": ["--method", "likelihood", "--circular"],
                 "eval --method generate -n 8": ["--method", "generate", "-n", "8"],
                 "eval --method generate -n 32": ["--method", "generate", "-n", "32"]}
        runs: dict[str, list] = {name: [] for name in [*cases, "batch, choices A-D (baseline)"]}
        for _ in range(opts.repeat):
            for name, flags in cases.items():
                runs[name].append(eval_run(tsv, flags, opts.model))
            runs["batch, choices A-D (baseline)"].append(batch_run(jobs, opts.model))
        result["cases"] = [summarise(name, opts.rows, done) for name, done in runs.items()]
    for case in result["cases"]:
        print(f"{case['case']:<38} {case['rows_per_s']:>7.2f} rows/s {case['questions_per_s']:>7.2f} questions/s "
              f"(median of {case['run_s']}, load {case['load']})", file=sys.stderr)
    emit(result, opts.out)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
