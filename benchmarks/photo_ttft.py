"""Photo to first token: a 12 MP phone photo through decode, preprocessing and prefill, two ways.

`seed`: the model card's way (PIL open + `ImageOps.exif_transpose` + RGB, then the processor on
the full image). `dsvl`: `images.load_image` (large images decoded at the 1024 px the model needs,
images/decode.py), then the engine's preprocessing (engine/preprocess.py: one pass for a picture
already at that size). The two alternate call by call on the same model
(default `tiny-random-fullres`: the real 384 px SigLIP + 1024 px SAM sizes, random weights), so a
noisy machine's drift hits both; each cell is the median of `--repeats`. The photos are made here
(4032x3024, EXIF orientation 6, gradients + noise + shapes; JPEG quality 90 and PNG), or given.

Rows: import (torch + transformers' model classes, a fresh process), load (the model folder onto
the device), decode, preprocess, prefill (one generated token from the preprocessed inputs),
and intake = decode + preprocess.

    DSVL_HOME=/tmp/dsvl-bench python benchmarks/photo_ttft.py --repeats 7 [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def make_photos(folder: Path) -> list[Path]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    h, w = 3024, 4032
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([x / w * 255, y / h * 255, (x + y) / (w + h) * 255], -1)
    img += rng.normal(0, 12, size=img.shape)
    for _ in range(40):
        cx, cy, r = rng.integers(0, w), rng.integers(0, h), rng.integers(50, 400)
        img[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = rng.integers(0, 255, size=3)
    image = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    exif = image.getexif()
    exif[0x0112] = 6
    jpeg, png = folder / "photo12mp.jpg", folder / "photo12mp.png"
    image.save(jpeg, quality=90, exif=exif.tobytes())
    image.save(png)
    return [jpeg, png]


def import_seconds(repeats: int) -> float:
    code = "import torch, transformers; from transformers import AutoModelForImageTextToText, AutoProcessor"
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-random-fullres")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--photos", nargs="*", help="image files (default: a 12 MP JPEG and PNG made here)")
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args()

    import_s = import_seconds(3)
    import torch
    from PIL import Image, ImageOps

    from dsvl_cli.engine.local import LocalEngine
    from dsvl_cli.images import load_image
    from dsvl_cli.settings import ModelSettings

    started = time.perf_counter()
    engine = LocalEngine.load(ModelSettings(model=args.model, device="cpu"))
    load_s = time.perf_counter() - started
    processor = engine.processor.image_processor
    prompt = engine.expand_placeholders(engine.processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this photo."}]}],
        add_generation_prompt=True, tokenize=False))
    text = dict(engine.tokenizer(prompt, return_tensors="pt"))

    def seed_decode(path):
        with Image.open(path) as opened:
            return ImageOps.exif_transpose(opened).convert("RGB")

    def seed_preprocess(image):
        return dict(processor(images=[image], return_tensors="pt"))

    # way -> (decode, preprocess): dsvl's preprocessing is the engine's (one pass for shrunk photos)
    ways = {"seed": (seed_decode, seed_preprocess),
            "dsvl": (lambda path: load_image(str(path)).image, lambda image: engine.pixels(image, remember=False))}
    photos = [Path(p) for p in args.photos] if args.photos else make_photos(Path(tempfile.mkdtemp()))
    report = {"model": args.model, "import_s": import_s, "load_s": load_s, "photos": {}}
    for photo in photos:
        cells = {way: {"decode": [], "preprocess": [], "prefill": []} for way in ways}
        for _ in range(args.repeats):  # intake: alternating ways, no model work in between
            for way, (decode, preprocess) in ways.items():
                t0 = time.perf_counter()
                image = decode(photo)
                t1 = time.perf_counter()
                preprocess(image)
                t2 = time.perf_counter()
                cells[way]["decode"].append(t1 - t0)
                cells[way]["preprocess"].append(t2 - t1)
        for _ in range(max(1, args.repeats // 2)):  # prefill: the same shapes both ways, timed apart
            for way, (decode, preprocess) in ways.items():
                pixels = preprocess(decode(photo))
                t0 = time.perf_counter()
                with torch.inference_mode():
                    engine.model.generate(**text, **pixels, max_new_tokens=1, do_sample=False,
                                          pad_token_id=engine.tokenizer.pad_token_id)
                cells[way]["prefill"].append(time.perf_counter() - t0)
        rows = {way: {k: statistics.median(v) for k, v in c.items()} for way, c in cells.items()}
        for row in rows.values():
            row["intake"] = row["decode"] + row["preprocess"]
        report["photos"][photo.name] = rows
        print(f"{photo.name}: import {import_s:.2f}s, load {load_s:.2f}s")
        for key in ("decode", "preprocess", "intake", "prefill"):
            seed, ours = rows["seed"][key], rows["dsvl"][key]
            print(f"  {key:10s} seed {seed * 1000:7.1f} ms   dsvl {ours * 1000:7.1f} ms   x{seed / ours:.2f}")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
