"""The warm engine (issue 22) against the one-batch-at-a-time scheduler it replaced, in one run.

    python benchmarks/engine_bench.py [--baseline 7bacb10] [--model tiny-random-fullres] [--out FILE.json]

Two `dsvl serve` processes on the same model folder: this checkout, and the `--baseline` commit
checked out in a temporary git worktree (run with the same Python, its own code first on the path).
The model is the chosen tiny model copied with its EOS switched off, so every answer is exactly as
long as asked. Each case runs against both servers, one after the other, at their defaults:

- **head of line**: an 8-token request sent once a 600-token answer has streamed its first token;
  the short one's latency as a share of the long one's;
- **16 mixed**: 16 concurrent requests of 8-512 tokens; the median finish time of those of <= 32
  tokens as a share of the whole run, and output tok/s against the same 16 one at a time;
- **64 clients**: 64 concurrent 4-token requests; how many got 429;
- **chat**: 8 turns about one picture through the server (`dsvl chat --server`, which is what
  `--keep-alive` runs), cached tokens and TTFT per turn, beside a local `dsvl chat` (KV reuse);
- **second question**: the same picture and system prompt, a second question: cached tokens and TTFT;
- **memory**: the server's peak RSS (VmHWM) after 48 different pictures filled its caches.

Prints one JSON object (and writes --out). Measured, never asserted.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from report import emit, machine

REPO = Path(__file__).resolve().parent.parent
IMAGE = REPO / "examples" / "shapes.png"


def no_eos_copy(name: str, into: Path) -> Path:
    """The tiny model's folder, copied, with generation_config's EOS removed."""
    sys.path.insert(0, str(REPO))
    from dsvl_cli.engine import runtime
    from dsvl_cli.models import tiny_random

    source = tiny_random.ensure_built(name, runtime.dsvl_home())
    target = into / f"{name}-no-eos"
    shutil.copytree(source, target)
    config_path = target / "generation_config.json"
    config = json.loads(config_path.read_text())
    config["eos_token_id"] = None
    config_path.write_text(json.dumps(config))
    return target


class Server:
    def __init__(self, code: Path, folder, label: str, extra: list[str] = ()):
        self.label = label
        env = {**os.environ, "PYTHONPATH": str(code), "HF_HUB_OFFLINE": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "dsvl_cli", "serve", "-m", str(folder), "--device", "cpu",
                                      "--port", "0", *extra], cwd=code, env=env, stderr=subprocess.PIPE, text=True)
        self.url = None
        while self.url is None:
            line = self.proc.stderr.readline()
            if not line:
                raise SystemExit(f"{label}: dsvl serve exited before it was ready")
            if " at http://" in line:
                self.url = line.split(" at ")[1].split()[0].removesuffix("/v1")
        threading.Thread(target=lambda: [None for _ in self.proc.stderr], daemon=True).start()  # drain the log

    def peak_rss(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return 0

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def picture_uri(path_or_bytes) -> str:
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()
    return "data:image/png;base64," + base64.b64encode(data).decode()


def ask(url: str, n: int, text: str = "Tell me about it.", picture: str | None = None, system: str | None = None,
        on_first=None) -> dict:
    """One streamed chat completion: seconds to the first token and to the end, and its usage."""
    content = [{"type": "text", "text": text}]
    if picture:
        content.insert(0, {"type": "image_url", "image_url": {"url": picture}})
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": content}]
    body = {"model": "default", "messages": messages, "max_tokens": n, "stream": True,
            "stream_options": {"include_usage": True}}
    started, first, usage, status = time.perf_counter(), None, {}, 200
    with httpx.Client(timeout=600) as client, client.stream("POST", url + "/v1/chat/completions", json=body) as reply:
        status = reply.status_code
        for line in reply.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            if first is None and chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter() - started
                if on_first:
                    on_first()
    return {"status": status, "ttft_s": first, "total_s": time.perf_counter() - started, "usage": usage}


def head_of_line(url: str) -> dict:
    started = threading.Event()
    with ThreadPoolExecutor(2) as pool:
        long = pool.submit(ask, url, 600, on_first=started.set)
        started.wait(600)
        short = ask(url, 8, "Hi")
        long = long.result()
    return {"long_s": round(long["total_s"], 3), "short_s": round(short["total_s"], 3),
            "short_share_of_long": round(short["total_s"] / long["total_s"], 3)}


MIXED = [8, 16, 24, 32, 8, 16, 24, 32, 64, 128, 256, 512, 64, 128, 256, 512]


def sixteen_mixed(url: str) -> dict:
    started = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(lambda n: ask(url, n, f"Question of {n}"), MIXED))
    wall = time.perf_counter() - started
    alone_started = time.perf_counter()
    for n in MIXED:
        ask(url, n, f"Question of {n}")
    alone = time.perf_counter() - alone_started
    tokens = sum(MIXED)
    short = [r["total_s"] / wall for n, r in zip(MIXED, together) if n <= 32]
    return {"wall_s": round(wall, 3), "short_median_share": round(statistics.median(short), 3),
            "tok_s": round(tokens / wall, 1), "one_at_a_time_tok_s": round(tokens / alone, 1),
            "speedup": round(alone / wall, 2)}


def sixty_four(url: str) -> dict:
    with ThreadPoolExecutor(64) as pool:
        replies = list(pool.map(lambda k: ask(url, 4, f"Client {k}"), range(64)))
    return {"answered": sum(r["status"] == 200 for r in replies), "got_429": sum(r["status"] == 429 for r in replies)}


def chat(code: Path, model_args: list[str]) -> list[dict]:
    """8 scripted turns of `dsvl chat IMAGE --json` (through a server or local): per-turn stats."""
    script = "".join(f"Turn {k}: what else do you see?\n" for k in range(1, 9))
    env = {**os.environ, "PYTHONPATH": str(code), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-m", "dsvl_cli", "chat", str(IMAGE), "--json", "-n", "24", *model_args],
                         input=script, capture_output=True, text=True, cwd=code, env=env, check=True, timeout=900)
    turns = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    return [{"turn": t["turn"], "prompt_tokens": t["stats"]["prompt_tokens"], "cached_tokens": t["stats"]["cached_tokens"],
             "ttft_s": t["stats"]["ttft_s"]} for t in turns]


def second_question(url: str) -> dict:
    picture, system = picture_uri(IMAGE), "You describe pictures for a catalogue."
    first = ask(url, 4, "What shapes are there?", picture, system)
    second = ask(url, 4, "And which colours?", picture, system)
    cached = lambda r: (r["usage"].get("prompt_tokens_details") or {}).get("cached_tokens", 0)  # noqa: E731
    return {"prompt_tokens": second["usage"].get("prompt_tokens"), "cached_tokens": cached(second),
            "first_ttft_s": round(first["ttft_s"], 4), "second_ttft_s": round(second["ttft_s"], 4)}


def memory(server: Server) -> dict:
    from PIL import Image

    for k in range(48):
        buffer = io.BytesIO()
        Image.effect_noise((640, 480), 40 + k).convert("RGB").save(buffer, "PNG")
        ask(server.url, 8, f"Picture {k}", picture_uri(buffer.getvalue()))
    got = {"peak_rss_mib": round(server.peak_rss() / 2**20, 1)}
    metrics = httpx.get(server.url + "/metrics", timeout=30)
    if metrics.status_code == 200:  # the engine loop's own count of what its caches hold
        for line in metrics.text.splitlines():
            if line.startswith(("dsvl_kv_cache_bytes", "dsvl_prefix_cache_bytes")):
                got[line.split("{")[0]] = float(line.split()[-1])
    return got


def run_cases(server: Server, code: Path) -> dict:
    got = {"head_of_line": head_of_line(server.url), "sixteen_mixed": sixteen_mixed(server.url),
           "sixty_four_clients": sixty_four(server.url), "second_question": second_question(server.url),
           "chat_through_server": chat(code, ["--server", server.url])}
    got["memory"] = memory(server)
    return got


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", default="7bacb10", help="the commit to compare with (the old scheduler)")
    parser.add_argument("--model", default="tiny-random-fullres")
    parser.add_argument("--out")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dsvl-engine-bench-"))
    old_tree = work / "baseline"
    subprocess.run(["git", "worktree", "add", "--detach", str(old_tree), args.baseline], cwd=REPO, check=True,
                   capture_output=True)
    try:
        folder = no_eos_copy(args.model, work)
        result = {"machine": machine("cpu"), "model": args.model + " (EOS off)", "baseline": args.baseline,
                  "command": " ".join(["python", "benchmarks/engine_bench.py", *sys.argv[1:]])}
        for label, code in (("engine_loop", REPO), ("baseline", old_tree)):
            server = Server(code, folder, label)
            try:
                result[label] = run_cases(server, code)
            finally:
                server.stop()
            print(f"{label}: done", file=sys.stderr)
        result["local_chat"] = chat(REPO, ["-m", str(folder), "--device", "cpu"])
        emit(result, args.out)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(old_tree)], cwd=REPO, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
