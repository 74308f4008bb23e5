"""Typed questions (issue 23): one request with 10 questions against 10 requests of one question each,
and against one question alone, through `dsvl serve`.

    python benchmarks/decisions_bench.py [--model tiny-random] [--repeats 3] [--out FILE.json]

Two `dsvl serve` processes of this checkout, one after the other: at its defaults (the warm engine's
prefix cache keeps each request's input, so the 2nd-10th one-question requests about a picture
reuse its KV), and with `--cache-memory 0` (no prefix cache: every request prefills its picture). Each
case asks about a 640x480 photo-like picture never seen before by that server (so nothing is cached
at its start), `--repeats` times with different pictures; the medians are reported:

- **one**: one request, one question;
- **ten in one**: one request with 10 questions (predicates and choices of 2-5 values);
- **ten requests**: the same 10 questions, one request each, one after the other;
- **ten concurrent**: the same 10 requests sent at once.

Prints one JSON object (and writes --out). Measured, never asserted.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from engine_bench import REPO, Server, picture_uri
from report import emit, machine

QUESTIONS = [
    {"type": "predicate", "instructions": "There is a person in the picture."},
    {"type": "predicate", "instructions": "The picture was taken outdoors."},
    {"type": "predicate", "instructions": "It is night."},
    {"type": "choice", "instructions": "What is the main colour?",
     "choices": [{"value": v} for v in ("red", "green", "blue", "white", "black")]},
    {"type": "choice", "instructions": "Is it a photograph?", "choices": [{"value": True}, {"value": False}]},
    {"type": "choice", "instructions": "Where was it taken?",
     "choices": [{"value": v} for v in ("a city", "a forest", "a beach", "indoors")]},
    {"type": "score", "instructions": "How sharp is it?", "levels": [{"label": v} for v in ("blurry", "ok", "sharp")]},
    {"type": "score", "instructions": "How busy is it?", "levels": [{"label": v} for v in ("calm", "some", "busy")]},
    {"type": "predicate", "instructions": "There is text in the picture."},
    {"type": "choice", "instructions": "How many animals are there?",
     "choices": [{"value": v} for v in ("none", "one", "several")]},
]


def pictures(count: int):
    """`count` different 640x480 pictures (noise over a gradient: incompressible, as photos are)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(23)
    for _ in range(count):
        base = np.linspace(0, 255, 640, dtype=np.float32)[None, :, None].repeat(480, 0).repeat(3, 2)
        pixels = np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)
        out = io.BytesIO()
        Image.fromarray(pixels).save(out, format="PNG")
        yield picture_uri(out.getvalue())


def decide(client: httpx.Client, url: str, picture: str, questions: list[dict]) -> dict:
    body = {"model": "default", "questions": questions,
            "input": [{"role": "user", "content": [{"type": "input_image", "image_url": picture},
                                                   {"type": "input_text", "text": "A picture to check."}]}]}
    reply = client.post(url + "/v1/decisions", json=body)
    reply.raise_for_status()
    return reply.json()["usage"]


def timed(fn) -> tuple[float, object]:
    started = time.perf_counter()
    out = fn()
    return time.perf_counter() - started, out


def run_cases(server: Server, repeats: int) -> dict:
    fresh = pictures(4 * repeats + 1)
    cases: dict[str, list] = {"one": [], "ten_in_one": [], "ten_requests": [], "ten_concurrent": []}
    cached: dict[str, list] = {k: [] for k in cases}
    with httpx.Client(timeout=600) as client, ThreadPoolExecutor(10) as pool:
        decide(client, server.url, next(fresh), QUESTIONS)  # warm-up: first-call costs out of the figures
        for _ in range(repeats):
            s, usage = timed(lambda: decide(client, server.url, next(fresh), QUESTIONS[:1]))
            cases["one"].append(s), cached["one"].append(usage["input_tokens_details"]["cached_tokens"])
            s, usage = timed(lambda: decide(client, server.url, next(fresh), QUESTIONS))
            cases["ten_in_one"].append(s), cached["ten_in_one"].append(usage["input_tokens_details"]["cached_tokens"])
            picture = next(fresh)
            s, usages = timed(lambda: [decide(client, server.url, picture, [q]) for q in QUESTIONS])
            cases["ten_requests"].append(s)
            cached["ten_requests"].append(sum(u["input_tokens_details"]["cached_tokens"] for u in usages))
            picture = next(fresh)
            s, usages = timed(lambda: list(pool.map(lambda q: decide(client, server.url, picture, [q]), QUESTIONS)))
            cases["ten_concurrent"].append(s)
            cached["ten_concurrent"].append(sum(u["input_tokens_details"]["cached_tokens"] for u in usages))
    one = statistics.median(cases["one"])
    return {name: {"median_s": round(statistics.median(runs), 4), "runs_s": [round(r, 4) for r in runs],
                   "vs_one": round(statistics.median(runs) / one, 2), "cached_tokens": cached[name]}
            for name, runs in cases.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny-random")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out")
    args = parser.parse_args()
    result = {"machine": machine("cpu"), "model": args.model,
              "command": " ".join(["python", "benchmarks/decisions_bench.py", *sys.argv[1:]])}
    for label, extra in (("prefix_cache_on", []), ("prefix_cache_off", ["--cache-memory", "0"])):
        server = Server(REPO, args.model, label, extra)
        try:
            result[label] = run_cases(server, args.repeats)
        finally:
            server.stop()
        print(f"{label}: done", file=sys.stderr)
    emit(result, args.out)


if __name__ == "__main__":
    main()
