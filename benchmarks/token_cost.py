"""The cost of a token (issue 31): plain `generate`, `dsvl ask`, and `dsvl serve` against
`transformers serve`, side by side in one run on the same folder.

    python benchmarks/token_cost.py [--model tiny-random] [--tokens 400] [--repeats 5] [--out FILE.json]

The model is the chosen tiny model copied with its EOS switched off (engine_bench.no_eos_copy), so
every answer is exactly as long as asked; greedy; one small picture (examples/shapes.png) and a
short question. Ways:

- **in process**: each way in a process of its own that loads the model once, the processes asked
  call by call in turn (so a noisy machine slows all ways alike; one process for all would have
  each way's OpenMP threads compete with the others'): plain `model.generate` from the folder on
  the main thread (no streamer), the same with a `TextIteratorStreamer` read on the main thread (the
  usual way to stream), and `LocalEngine.run` (what `dsvl ask` calls: render, encode, stream,
  detokenize); decode tok/s = (N - 1) / (seconds of N tokens - seconds of 1 token);
- **servers**, all started first, then each case run against each in turn, --repeats times: `dsvl
  serve`, `transformers serve FOLDER` and, with --baseline, `dsvl serve` of that commit: one N-token
  request whole and streamed, an 8-token request sent once an N-token answer streams (its share of
  the long one's time), 16 concurrent 64-token requests against the same 16 one at a time.

Figures are medians over the repeats (minima beside them). Every process runs with
OMP_NUM_THREADS=--threads (default 1: the same for all ways; with torch's default of one thread per
core, a neighbour on a shared 2-core VM makes the same run vary tenfold).

Prints one JSON object (and writes --out). Measured, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from engine_bench import IMAGE, REPO, Server, no_eos_copy, picture_uri
from report import emit, machine

QUESTION = "Describe this picture in detail."


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def summary(runs: list[float]) -> dict:
    return {"median": round(statistics.median(runs), 4), "min": round(min(runs), 4)}


WORKER = """
import sys, threading, time
sys.path.insert(0, {repo!r})
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, TextIteratorStreamer

way, folder, image, question = {way!r}, {folder!r}, {image!r}, {question!r}
if way.startswith("generate"):
    processor = AutoProcessor.from_pretrained(folder)
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32).eval()
    messages = [{{"role": "user", "content": [{{"type": "image"}}, {{"type": "text", "text": question}}]}}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(text=prompt, images=[Image.open(image).convert("RGB")], return_tensors="pt")

    def generate(n, streamer=None):
        with torch.inference_mode():
            model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False, streamer=streamer)

    def run(n):
        if way == "generate":
            return generate(n)
        streamer = TextIteratorStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
        worker = threading.Thread(target=generate, args=(n, streamer))
        worker.start()
        for _ in streamer:
            pass
        worker.join()
else:
    from dsvl_cli.conversation import Conversation
    from dsvl_cli.engine.local import LocalEngine
    from dsvl_cli.images import load_image
    from dsvl_cli.settings import GenerationSettings, ModelSettings

    engine = LocalEngine.load(ModelSettings(model=folder, device="cpu"))
    conversation = Conversation.single(question, [load_image(image)])

    def run(n):
        engine.run(conversation, GenerationSettings(max_new_tokens=n))

run(8)
print("ready", flush=True)
for line in sys.stdin:
    started = time.perf_counter()
    run(int(line))
    print(time.perf_counter() - started, flush=True)
"""


def in_process(folder: Path, tokens: int, repeats: int) -> dict:
    """Each way in its own process (a script that loads the model, then generates when told), the
    processes asked in turn: plain generate on the main thread as a user's script runs it,
    generate + TextIteratorStreamer, and LocalEngine.run (what `dsvl ask` calls)."""
    ways = ("generate", "generate_streamer", "dsvl_ask")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    procs = {way: subprocess.Popen([sys.executable, "-c", WORKER.format(repo=str(REPO), way=way, folder=str(folder),
                                                                        image=str(IMAGE), question=QUESTION)],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                   env=env) for way in ways}
    try:
        for way, proc in procs.items():
            if proc.stdout.readline().strip() != "ready":
                raise SystemExit(f"{way}: the worker did not start")

        def timed_in(way: str, n: int) -> float:
            procs[way].stdin.write(f"{n}\n")
            procs[way].stdin.flush()
            return float(procs[way].stdout.readline())

        one = {way: [] for way in ways}
        full = {way: [] for way in ways}
        for _ in range(repeats):
            for way in ways:
                one[way].append(timed_in(way, 1))
                full[way].append(timed_in(way, tokens))
    finally:
        for proc in procs.values():
            proc.stdin.close()
            proc.wait(60)
    out = {}
    for way in ways:
        rates = [(tokens - 1) / max(1e-9, f - statistics.median(one[way])) for f in full[way]]
        out[way] = {"decode_tok_s": round(statistics.median(rates), 1), "best_tok_s": round(max(rates), 1),
                    "whole_s": summary(full[way]), "one_token_s": summary(one[way])}
    for way in ways:
        out[way]["vs_generate"] = round(out[way]["decode_tok_s"] / out["generate"]["decode_tok_s"], 3)
    return out


class TransformersServe:
    """`transformers serve FOLDER` on a free port, ready once /health answers."""

    def __init__(self, folder: Path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        exe = Path(sys.executable).with_name("transformers")
        self.proc = subprocess.Popen([str(exe), "serve", str(folder), "--device", "cpu", "--port", str(port),
                                      "--host", "127.0.0.1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     env={**os.environ, "HF_HUB_OFFLINE": "1"})
        self.url = f"http://127.0.0.1:{port}"
        for _ in range(1200):  # bounded: up to ~10 minutes of polling the socket
            if self.proc.poll() is not None:
                raise SystemExit("transformers serve exited before it was ready")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise SystemExit("transformers serve never became ready")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def request(url: str, model: str, n: int, *, stream: bool, text: str = QUESTION, on_first=None) -> dict:
    content = [{"type": "image_url", "image_url": {"url": picture_uri(IMAGE)}}, {"type": "text", "text": text}]
    body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": n,
            "temperature": 0, "stream": stream}
    started, first, tokens = time.perf_counter(), None, None
    with httpx.Client(timeout=600) as client:
        if not stream:
            reply = client.post(url + "/v1/chat/completions", json=body)
            reply.raise_for_status()
            tokens = reply.json().get("usage", {}).get("completion_tokens")
        else:
            with client.stream("POST", url + "/v1/chat/completions", json=body) as reply:
                reply.raise_for_status()
                for line in reply.iter_lines():
                    if first is None and line.startswith("data: {") and '"content"' in line:
                        first = time.perf_counter() - started
                        if on_first:
                            on_first()
    return {"total_s": time.perf_counter() - started, "ttft_s": first, "completion_tokens": tokens}


def server_cases(servers: dict[str, tuple[str, str]], tokens: int, repeats: int) -> dict:
    """Each case against each server in turn, `repeats` times. `servers`: label -> (url, model)."""
    runs: dict[str, dict[str, list]] = {label: {} for label in servers}

    def note(label: str, case: str, value: float) -> None:
        runs[label].setdefault(case, []).append(value)

    for label, (url, model) in servers.items():  # warm-up
        request(url, model, tokens, stream=False)
    for _ in range(repeats):
        for label, (url, model) in servers.items():
            note(label, "whole_s", request(url, model, tokens, stream=False)["total_s"])
            note(label, "streamed_s", request(url, model, tokens, stream=True)["total_s"])
            started = threading.Event()
            with ThreadPoolExecutor(2) as pool:
                long = pool.submit(request, url, model, tokens, stream=True, on_first=started.set)
                started.wait(600)
                short = request(url, model, 8, stream=True, text="Hi")
                long = long.result()
            note(label, "short_share_of_long", short["total_s"] / long["total_s"])
            with ThreadPoolExecutor(16) as pool:
                note(label, "sixteen_concurrent_s", _timed(lambda: list(pool.map(
                    lambda k: request(url, model, 64, stream=False, text=f"Question {k}"), range(16)))))
            note(label, "sixteen_one_at_a_time_s", _timed(lambda: [
                request(url, model, 64, stream=False, text=f"Question {k}") for k in range(16)]))
    out = {}
    for label, cases in runs.items():
        got = {case: summary(values) for case, values in cases.items()}
        got["streamed_over_whole"] = round(got["streamed_s"]["median"] / got["whole_s"]["median"], 3)
        got["sixteen_speedup"] = round(got["sixteen_one_at_a_time_s"]["median"] / got["sixteen_concurrent_s"]["median"], 2)
        out[label] = got
    peer = out.get("transformers_serve")
    if peer:
        for label, got in out.items():
            got["whole_vs_transformers_serve"] = round(got["whole_s"]["median"] / peer["whole_s"]["median"], 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny-random")
    parser.add_argument("--tokens", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip", nargs="*", default=[], choices=["in_process", "dsvl_serve", "transformers_serve"])
    parser.add_argument("--baseline", help="also run `dsvl serve` of this commit (a temporary git worktree)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of every process (OMP_NUM_THREADS); 0: torch's default")
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.threads:  # on a 2-core VM shared with other jobs, 2 threads per process vary tenfold
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    work = Path(tempfile.mkdtemp(prefix="dsvl-token-cost-"))
    started: list = []
    try:
        folder = no_eos_copy(args.model, work)
        result = {"machine": machine("cpu"), "model": args.model + " (EOS off)", "tokens": args.tokens,
                  "command": " ".join(["python", "benchmarks/token_cost.py", *sys.argv[1:]])}
        if "in_process" not in args.skip:
            result["in_process"] = in_process(folder, args.tokens, args.repeats)
        servers: dict[str, tuple[str, str]] = {}
        if "dsvl_serve" not in args.skip:
            started.append(Server(REPO, folder, "dsvl serve"))
            servers["dsvl_serve"] = (started[-1].url, "default")
        if args.baseline:
            old_tree = work / "baseline"
            subprocess.run(["git", "worktree", "add", "--detach", str(old_tree), args.baseline], cwd=REPO, check=True,
                           capture_output=True)
            started.append(Server(old_tree, folder, "baseline"))
            servers[f"dsvl_serve_{args.baseline}"] = (started[-1].url, "default")
        if "transformers_serve" not in args.skip:
            started.append(TransformersServe(folder))
            servers["transformers_serve"] = (started[-1].url, str(folder))
        if servers:
            result["servers"] = server_cases(servers, args.tokens, args.repeats)
        emit(result, args.out)
    finally:
        for server in started:
            server.stop()
        if args.baseline:
            subprocess.run(["git", "worktree", "remove", "--force", str(work / "baseline")], cwd=REPO,
                           capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
