"""`dsvl batch` over a folder of 12 MP phone photos: records/s with photo intake against the full decode.

Both ways run the real command in a fresh process on the same photos (distinct 4032x3024 JPEGs,
EXIF-rotated, made here), alternating, `--repeats` times each; the figure is the `records/s` of
dsvl's own summary line (model load excluded), median over the repeats. `exact` is
`--exact-pixels`: every photo decoded in full and preprocessed from 12 MP, as before photo intake.

    DSVL_HOME=/tmp/dsvl-bench python benchmarks/photo_batch.py --photos 16 --repeats 2 [--before CHECKOUT]

`--before CHECKOUT`: also run an older checkout of dsvl (e.g. `git worktree add /tmp/before c3c73f4`,
the commit before photo intake, whose decodes also took turns under a lock) as a third way.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def make_photos(folder: Path, count: int) -> list[Path]:
    import numpy as np
    from PIL import Image

    h, w = 3024, 4032
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([x / w * 255, y / h * 255, (x + y) / (w + h) * 255], -1)
    paths = []
    for k in range(count):
        rng = np.random.default_rng(k)
        img = base + rng.normal(0, 12, size=base.shape)
        image = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
        exif = image.getexif()
        exif[0x0112] = 6
        paths.append(folder / f"photo{k:03d}.jpg")
        image.save(paths[-1], quality=90, exif=exif.tobytes())
    return paths


def run(photos: list[Path], model: str, extra: list[str], repo: Path = REPO) -> float:
    listing = "".join(f"{p}\n" for p in photos)
    proc = subprocess.run([sys.executable, "-m", "dsvl_cli", "batch", "--prompt", "Describe this photo.", "-m", model,
                           "--device", "cpu", "-n", "8", *extra], input=listing, capture_output=True, text=True,
                          cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)}, check=True)
    found = re.search(r"([\d.]+) records/s", proc.stderr)
    if not found:
        raise SystemExit(f"no summary line in: {proc.stderr}")
    return float(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-random")
    parser.add_argument("--photos", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--before", type=Path, help="an older dsvl checkout to run as well")
    parser.add_argument("--out")
    args = parser.parse_args()
    photos = make_photos(Path(tempfile.mkdtemp()), args.photos)
    rates: dict[str, list[float]] = {"exact": [], "intake": [], **({"before": []} if args.before else {})}
    for _ in range(args.repeats):
        if args.before:
            rates["before"].append(run(photos, args.model, [], args.before))
        rates["exact"].append(run(photos, args.model, ["--exact-pixels"]))
        rates["intake"].append(run(photos, args.model, []))
    medians = {way: statistics.median(r) for way, r in rates.items()}
    print(f"{args.photos} photos, {args.model}: " + ", ".join(f"{way} {rate:.2f} records/s" for way, rate in
                                                            medians.items())
          + f"; intake/exact x{medians['intake'] / medians['exact']:.2f}")
    if args.out:
        Path(args.out).write_text(json.dumps({"model": args.model, "photos": args.photos, "rates": rates,
                                              "medians": medians}, indent=2) + "\n")


if __name__ == "__main__":
    main()
