"""PDF pages in `dsvl batch`: pages rendered per second, pages answered per second, peak RSS.

    python benchmarks/documents_bench.py [--pages 40] [--big 200] [-n 8] [--out bench-results/docs.json]

Builds A4 pages (Pillow, 150 dpi, text and shapes, JPEG inside the PDF, as a scan is) and measures:
- render: `load_image("report.pdf#page=N")` for every page, in this process (PDFium at 1024 px);
- batch: `dsvl batch report.pdf --prompt ... -m tiny-random -n N` end to end (one process, wall
  time, start-up and model load included);
- baseline, same run: the same pages as PNG files in a folder (`dsvl batch folder/`): what a
  user who converted the PDF to images first would get;
- peak RSS (ru_maxrss of the child) of `dsvl batch` over a `--big`-page PDF, and of the same
  batch over its first 5 pages (what memory costs before the pages do).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from report import emit, machine  # noqa: E402

PROMPT = "What does this page say?"


def make_pdf(path: Path, pages: int) -> list:
    from PIL import Image, ImageDraw

    images = []
    for i in range(pages):
        page = Image.new("RGB", (1240, 1754), "white")  # A4 at 150 dpi
        draw = ImageDraw.Draw(page)
        for row in range(60):
            draw.text((100, 100 + row * 25), f"Page {i + 1}, line {row + 1}: quarterly figures and notes " * 2,
                      fill=(20, 20, 20))
        draw.rectangle((200, 1650 - 10 * (i % 40), 1000, 1700), fill=(40, 90, 200))
        images.append(page)
    images[0].save(path, format="PDF", save_all=True, append_images=images[1:], resolution=150, quality=85)
    return images


def child(args: list[str]) -> tuple[float, int, str]:
    """(wall seconds, peak RSS in MiB of this child alone, stdout) of `dsvl ARGS`."""
    code = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
            "p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
            "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, p.returncode); "
            "sys.stderr.write(p.stderr[-2000:])")
    out = subprocess.run([sys.executable, "-c", code, sys.executable, "-m", "dsvl_cli", *args],
                         capture_output=True, text=True, check=True)
    wall, rss_kib, rc = out.stdout.split()
    if rc != "0":
        raise SystemExit(f"dsvl {' '.join(args)} failed: {out.stderr}")
    return float(wall), int(rss_kib) // 1024, out.stderr


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pages", type=int, default=40)
    ap.add_argument("--big", type=int, default=200)
    ap.add_argument("-n", type=int, default=8)
    ap.add_argument("--out")
    opts = ap.parse_args()
    from dsvl_cli.images import load_image

    result: dict = {"machine": machine("cpu")}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pdf = tmp / "report.pdf"
        pngs = make_pdf(pdf, opts.pages)
        folder = tmp / "pages"
        folder.mkdir()
        for i, page in enumerate(pngs, 1):
            page.save(folder / f"page-{i:03}.png")
        started = time.perf_counter()
        for page in range(1, opts.pages + 1):
            load_image(f"{pdf}#page={page}")
        render_s = time.perf_counter() - started
        result["render_pages_per_s"] = round(opts.pages / render_s, 1)
        common = ["--prompt", PROMPT, "-m", "tiny-random", "-n", str(opts.n), "-o", str(tmp / "out.jsonl")]
        wall, rss, _ = child(["batch", str(pdf), *common])
        (tmp / "out.jsonl").unlink()
        base_wall, base_rss, _ = child(["batch", str(folder), *common])
        (tmp / "out.jsonl").unlink()
        result["batch_pdf"] = {"pages": opts.pages, "wall_s": round(wall, 2), "pages_per_s": round(opts.pages / wall, 2),
                               "peak_rss_mib": rss}
        result["batch_png_folder"] = {"pages": opts.pages, "wall_s": round(base_wall, 2),
                                      "pages_per_s": round(opts.pages / base_wall, 2), "peak_rss_mib": base_rss}
        big = tmp / "big.pdf"
        make_pdf(big, opts.big)
        big_wall, big_rss, _ = child(["batch", str(big), *common])
        (tmp / "out.jsonl").unlink()
        small_wall, small_rss, _ = child(["batch", f"{big}#pages=1-5", *common])
        result["batch_big_pdf"] = {"pages": opts.big, "bytes": big.stat().st_size, "wall_s": round(big_wall, 2),
                                   "pages_per_s": round(opts.big / big_wall, 2), "peak_rss_mib": big_rss}
        result["batch_big_pdf_first_5"] = {"pages": 5, "wall_s": round(small_wall, 2), "peak_rss_mib": small_rss}
    emit(result, opts.out)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
