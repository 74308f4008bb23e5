"""Serve benchmark: a shell loop of `dsvl ask` cold versus through a warm `dsvl serve`, and
concurrent clients against the server.

    python benchmarks/serve_bench.py [--model tiny-random] [--calls 10] [--requests 64] [--clients 8]
                                     [-n 32] [--out serve.json]

(a) Wall time of `--calls` `dsvl ask IMAGE PROMPT` processes run one after another by bash, each
    loading the model (cold), against the same loop with `--server URL` (warm). The server is
    started by this script first; its start-up (model load) is reported on its own.
(b) `--requests` chat completions (an image as a data: URI, greedy, `-n` tokens at most) sent by
    `--clients` threads with the official `openai` client, and the same requests from one client:
    requests/s and output tok/s, plus the mean batch size the server reports in its log lines.

Prints a table on stderr and one JSON object on stdout (and to --out). Measured, never asserted.
tiny-random's answers stop at its EOS, so output tokens per request vary; they are counted, not assumed.
"""

from __future__ import annotations

import argparse
import base64
import os
import platform
import re
import shlex
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from report import emit

REPO = Path(__file__).resolve().parent.parent
PROMPT = "Describe this image."


def dsvl_command() -> list[str]:
    """The installed `dsvl` entry point next to this Python, else `python -m dsvl_cli`."""
    script = Path(sys.executable).parent / "dsvl"
    return [str(script)] if script.exists() else [sys.executable, "-m", "dsvl_cli"]


def shell_loop(calls: int, args: list[str]) -> float:
    """Seconds for bash to run `dsvl ask ...` `calls` times in a row (answers discarded)."""
    command = " ".join(shlex.quote(a) for a in [*dsvl_command(), "ask", *args])
    script = f"for i in $(seq {calls}); do {command} > /dev/null || exit 1; done"
    started = time.perf_counter()
    subprocess.run(["bash", "-c", script], check=True, cwd=REPO, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


class Server:
    """`dsvl serve` on a free port; its stderr lines are collected (request log, batch sizes)."""

    def __init__(self, model: str, device: str, batch_size: int | None):
        started = time.perf_counter()
        args = [*dsvl_command(), "serve", "-m", model, "--device", device, "--port", "0", "--max-queue", "1024"]
        if batch_size:
            args += ["--batch-size", str(batch_size)]
        self.proc = subprocess.Popen(args, cwd=REPO, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, "DSVL_API_KEY": ""})
        self.lines: list[str] = []
        self.url = None
        for line in self.proc.stderr:
            self.lines.append(line)
            if " at http://" in line:
                self.url = line.split(" at ")[1].split()[0].removesuffix("/v1")
                break
        if self.url is None:
            raise SystemExit("dsvl serve did not start:\n" + "".join(self.lines))
        self.startup_s = time.perf_counter() - started
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)

    def batch_sizes(self, since: int) -> list[int]:
        return [int(m.group(1)) for line in self.lines[since:] if (m := re.search(r" batch=(\d+)", line))]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def concurrent_requests(url: str, requests: int, clients: int, image: Path, max_tokens: int) -> dict:
    """Send `requests` completions from `clients` threads; rates over the wall time of all of them."""
    from openai import OpenAI

    uri = "data:image/png;base64," + base64.b64encode(image.read_bytes()).decode()
    client = OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=600)

    def one(k: int) -> int:
        messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": uri}},
                                                 {"type": "text", "text": f"{PROMPT} (request {k})"}]}]
        reply = client.chat.completions.create(model="dsvl", messages=messages, max_tokens=max_tokens,
                                               temperature=0)
        return reply.usage.completion_tokens

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        tokens = sum(pool.map(one, range(requests)))
    seconds = time.perf_counter() - started
    return {"clients": clients, "requests": requests, "seconds": round(seconds, 2),
            "requests_per_s": round(requests / seconds, 2), "output_tokens": tokens,
            "output_tok_per_s": round(tokens / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-random")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--calls", type=int, default=10, help="dsvl ask calls in the shell loop")
    parser.add_argument("--requests", type=int, default=64, help="requests in the concurrency run")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("-n", "--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=None, help="dsvl serve --batch-size")
    parser.add_argument("--image", type=Path, default=REPO / "examples" / "shapes.png")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()

    ask = [str(args.image), PROMPT, "-n", str(args.max_new_tokens), "--plain"]
    local = [*ask, "-m", args.model, "--device", args.device]
    shell_loop(1, local)  # builds tiny-random / warms the OS file cache; not measured
    cold_s = shell_loop(args.calls, local)
    server = Server(args.model, args.device, args.batch_size)
    try:
        shell_loop(1, [*ask, "--server", server.url])  # first request warms the server; not measured
        warm_s = shell_loop(args.calls, [*ask, "--server", server.url])
        concurrent_requests(server.url, args.clients * 2, args.clients, args.image, args.max_new_tokens)  # warm-up
        mark = len(server.lines)
        together = concurrent_requests(server.url, args.requests, args.clients, args.image, args.max_new_tokens)
        time.sleep(0.2)  # the last log lines
        sizes = server.batch_sizes(mark)
        together["mean_batch"] = round(sum(sizes) / len(sizes), 2) if sizes else None
        alone = concurrent_requests(server.url, args.requests, 1, args.image, args.max_new_tokens)
    finally:
        server.stop()

    result = {
        "model": args.model, "device": args.device, "max_new_tokens": args.max_new_tokens,
        "ask_loop": {"calls": args.calls, "cold_s": round(cold_s, 2), "warm_server_s": round(warm_s, 2),
                     "cold_per_call_s": round(cold_s / args.calls, 3),
                     "warm_per_call_s": round(warm_s / args.calls, 3), "speedup": round(cold_s / warm_s, 2),
                     "server_startup_s": round(server.startup_s, 2)},
        "concurrent": together, "one_client": alone,
        "python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
    }
    rows = [("ask loop, cold (each call loads the model)", f"{cold_s:.2f} s", f"{cold_s / args.calls:.3f} s/call"),
            ("ask loop, --server (warm)", f"{warm_s:.2f} s", f"{warm_s / args.calls:.3f} s/call"),
            (f"{args.clients} concurrent clients", f"{together['requests_per_s']} req/s",
             f"{together['output_tok_per_s']} tok/s (mean batch {together['mean_batch']})"),
            ("1 client", f"{alone['requests_per_s']} req/s", f"{alone['output_tok_per_s']} tok/s")]
    width = max(len(r[0]) for r in rows)
    print(f"serve_bench: {args.model} on {args.device}, {args.calls} ask calls, {args.requests} requests, "
          f"-n {args.max_new_tokens}", file=sys.stderr)
    for name, a, b in rows:
        print(f"  {name:<{width}}  {a:>12}  {b}", file=sys.stderr)
    emit(result, args.out)


if __name__ == "__main__":
    main()
