"""Batch throughput: `dsvl batch`'s path against a one-at-a-time loop, same records, same process.

    python benchmarks/batch_throughput.py [--model tiny-random-fullres] [--records 64] [-n 32]

Both paths answer the same records with the same greedy settings and EOS suppressed, so every
record decodes exactly `-n` tokens in both. The batch path is the command's own `run_records`
(prefetch threads, length bucketing, shared image features, left-padded `generate`); the baseline
loads each record's images and calls `engine.run` per record. Records: `--distinct` images of
varied sizes, each asked three questions, plus a quarter text-only. Prints one JSON object.
Measured, never asserted; results go to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import tempfile
import threading
import time
from pathlib import Path

from PIL import Image, ImageDraw

QUESTIONS = ["What is in this image?", "Describe the colours and the shapes you can see, one by one.",
             "Is there any text in the picture? If so, read it out and say where it is."]


def make_images(folder: Path, count: int) -> list[str]:
    """Synthetic photos-sized images (varied sizes and content) so no download is needed."""
    paths = []
    for k in range(count):
        w, h = 640 + 97 * k, 480 + 61 * (k % 5)
        image = Image.new("RGB", (w, h), (40 * k % 256, 90, 200 - 9 * k % 200))
        draw = ImageDraw.Draw(image)
        for j in range(6):
            draw.ellipse([j * w // 7, j * h // 9, j * w // 7 + w // 5, j * h // 9 + h // 4], fill=(j * 40, 255 - k * 7 % 255, j * 30))
        path = folder / f"img{k}.jpg"
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=90)
        path.write_bytes(buf.getvalue())
        paths.append(str(path))
    return paths


def make_records(images: list[str], total: int, base):
    from dsvl_cli.batch.records import Record

    records = []
    for k in range(total):
        if k % 4 == 3:
            records.append(Record(k, k + 1, f"Write a sentence about the number {k}." + " Please." * (k % 5), [], None, base))
        else:
            records.append(Record(k, k + 1, QUESTIONS[k % 3], [images[(k // 3) % len(images)]], None, base))
    return records


def one_at_a_time(engine, records, gen) -> tuple[float, int]:
    from dsvl_cli.conversation import Conversation
    from dsvl_cli.images import load_images

    started, tokens = time.perf_counter(), 0
    for record in records:
        conversation = Conversation.single(record.prompt, load_images(record.images), record.system)
        tokens += engine.run(conversation, gen).stats.generated_tokens
    return time.perf_counter() - started, tokens


def batched(engine, records, batch_size) -> tuple[float, int]:
    from dsvl_cli.batch.output import Summary, Writer
    from dsvl_cli.batch.runner import run_records

    summary, sink = Summary(), io.StringIO()
    started = time.perf_counter()
    run_records(engine, records, Writer(sink), summary, batch_size=batch_size, stop=threading.Event())
    assert summary.failed == 0 and summary.done == len(records)
    return time.perf_counter() - started, summary.generated_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-random-fullres")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--records", type=int, default=64)
    parser.add_argument("--distinct", type=int, default=16)
    parser.add_argument("-n", "--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()

    import torch
    import transformers

    from dsvl_cli.engine.local import LocalEngine
    from dsvl_cli.settings import GenerationSettings, ModelSettings

    engine = LocalEngine.load(ModelSettings(model=args.model, device=args.device))
    engine.model.generation_config.eos_token_id = None  # every record decodes exactly -n tokens
    gen = GenerationSettings(max_new_tokens=args.max_new_tokens)
    with tempfile.TemporaryDirectory() as tmp:
        images = make_images(Path(tmp), args.distinct)
        records = make_records(images, args.records, gen)
        batched(engine, records[:4], args.batch_size)  # warm-up both paths
        one_at_a_time(engine, records[:2], gen)
        loop_s, loop_tok = one_at_a_time(engine, records, gen)
        batch_s, batch_tok = batched(engine, records, args.batch_size)
    assert loop_tok == batch_tok == args.records * args.max_new_tokens
    n = args.records
    print(json.dumps({
        "model": args.model, "device": engine.device, "records": n, "distinct_images": args.distinct,
        "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size,
        "one_at_a_time": {"seconds": round(loop_s, 2), "records_per_s": round(n / loop_s, 2),
                          "output_tok_per_s": round(loop_tok / loop_s, 1)},
        "dsvl_batch": {"seconds": round(batch_s, 2), "records_per_s": round(n / batch_s, 2),
                       "output_tok_per_s": round(batch_tok / batch_s, 1)},
        "speedup": round(loop_s / batch_s, 2),
        "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(), "machine": platform.machine(),
    }, indent=2))


if __name__ == "__main__":
    main()
