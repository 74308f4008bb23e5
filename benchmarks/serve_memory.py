"""Serve memory: the server's peak RSS under the worst requests that fit its default caps, against
its idle RSS (issue 13, item 2: no request under the caps should take it above ~1.5x idle).

    python benchmarks/serve_memory.py [--model tiny-random] [--out serve-memory.json]

Starts `dsvl serve --model MODEL --device cpu --port 0` with its default caps, sends one warm-up
text request (first-use imports are part of idle), reads its RSS, then for each scenario resets the
kernel's peak-RSS mark (/proc/PID/clear_refs, Linux) and reads VmHWM after it:

- `pixels`: 8 distinct PNGs of 4096x4096 (the pixel cap), as data: URIs;
- `jpeg-draft`: 8 distinct JPEGs of 9000x9000 (81 M pixels, decoded at 1/8 scale), as data: URIs;
- `bytes`: 8 distinct noisy PNGs that together just fit the 48 MiB body cap as data: URIs;
- `big images`: 3 distinct noisy PNGs just under the 10 MiB per-image cap, as data: URIs;
- `text`: 64,000 characters of text (the text cap), answered with a context-length 400;
- `many values`: a 45 MB body of 15 million tiny JSON values (refused before parsing);
- `bytes x4`: four `bytes` requests at once (the caps are per request; bodies over 1 MiB are
  parsed two at a time).

Also reports RSS after all scenarios (what is kept after requests). Prints a table on stderr and
one JSON object on stdout (and to --out). Measured, never asserted. Linux only (VmHWM).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import random
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent


def start_server(model: str) -> tuple[subprocess.Popen, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSVL_") or k == "DSVL_HOME"}
    proc = subprocess.Popen([sys.executable, "-m", "dsvl_cli", "serve", "--model", model, "--device", "cpu",
                             "--port", "0", "-n", "1"], stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            raise SystemExit("dsvl serve exited before it was ready")
        if " at http://" in line:
            return proc, line.split(" at ")[1].split()[0].removesuffix("/v1")
    raise SystemExit("dsvl serve did not start")


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def data_uri(image, fmt: str) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": 85} if fmt == "JPEG" else {"compress_level": 1}))
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buffer.getvalue()).decode()


def gradient(side: int, k: int):
    from PIL import Image

    small = Image.linear_gradient("L").resize((side, side)).convert("RGB")
    small.putpixel((k, k), (k, 0, 0))  # distinct sources: nothing is de-duplicated
    return small


def noisy(k: int, budget: int):
    from PIL import Image

    side = int((budget / 3) ** 0.5) - 24  # raw RGB noise barely compresses: bytes ~ 3 * pixels
    rng = random.Random(k)
    return Image.frombytes("RGB", (side, side), rng.randbytes(side * side * 3))


def body(uris: list[str] | None = None, text: str = "Describe.") -> dict:
    parts = [{"type": "image_url", "image_url": {"url": u}} for u in uris or []]
    return {"messages": [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}], "max_tokens": 1}


def post(url: str, payload: dict) -> int:
    response = requests.post(url + "/v1/chat/completions", data=json.dumps(payload),
                             headers={"Content-Type": "application/json"}, timeout=600)
    return response.status_code


def scenarios() -> dict[str, tuple[list[dict], int]]:
    """name -> (request bodies sent at once, how many)."""
    pixels = [body([data_uri(gradient(4096, k), "PNG") for k in range(8)])]
    jpegs = [body([data_uri(gradient(9000, k), "JPEG") for k in range(8)])]
    big = body([data_uri(noisy(k, (48 << 20) * 3 // 4 // 8 - (64 << 10)), "PNG") for k in range(8)])
    biggest = body([data_uri(noisy(k, 10 << 20), "PNG") for k in range(3)])
    text = [body(text="é" * 64_000)]
    values = [{**body(), "x": [1] * 15_000_000}]
    return {"pixels": pixels, "jpeg-draft": jpegs, "bytes": [big], "big images": [biggest], "text": text,
            "many values": values, "bytes x4": [big] * 4}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny-random")
    parser.add_argument("--out")
    args = parser.parse_args()
    work = scenarios()  # built before the server starts: the client's memory is not the server's
    proc, url = start_server(args.model)
    rows = []
    try:
        pid = proc.pid
        started_kb = status_kb(pid, "VmRSS")
        assert post(url, body()) == 200
        idle_kb = status_kb(pid, "VmRSS")
        for name, bodies in work.items():
            reset_peak(pid)
            with ThreadPoolExecutor(len(bodies)) as pool:
                codes = list(pool.map(lambda b: post(url, b), bodies))
            peak_kb = status_kb(pid, "VmHWM")
            rows.append({"scenario": name, "status": codes, "peak_mb": peak_kb / 1024,
                         "ratio": peak_kb / idle_kb, "after_mb": status_kb(pid, "VmRSS") / 1024})
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    result = {"machine": f"{platform.machine()} {os.cpu_count()} CPUs", "python": platform.python_version(),
              "date": time.strftime("%Y-%m-%d"), "model": args.model, "started_mb": started_kb / 1024,
              "idle_mb": idle_kb / 1024, "rows": rows}
    print(f"idle {idle_kb / 1024:.0f} MB (just started: {started_kb / 1024:.0f} MB)", file=sys.stderr)
    for row in rows:
        print(f"{row['scenario']:>11}: status {row['status']}, peak {row['peak_mb']:.0f} MB "
              f"({row['ratio']:.2f}x idle), after {row['after_mb']:.0f} MB", file=sys.stderr)
    print(json.dumps(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
