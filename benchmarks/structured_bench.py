"""What a --schema costs per generated token: constrained against unconstrained decoding, interleaved.

Both ways run on the same model and question, alternating call by call (drift on a loaded machine
hits both alike). EOS is suppressed and the schema cannot be complete within the budget (an array
of at least 100000 strings: every step is masked, most of them inside a free string, where the most
tokens are allowed), so both decode exactly --new-tokens tokens.

Figures, from the least to the most disturbed by other jobs on the machine:
- the mask's own time per step (timed inside `generate`), as a share of an unconstrained step;
- `generate` alone, with and without dsvl's GrammarMask: whole calls, CPU time of the calling
  thread (with --threads 1 all of the model's work runs on it) and wall time; the minimum over the
  repeats is the call least disturbed, p25 and the median follow;
- `LocalEngine.run` end to end (what `dsvl ask` does), in wall time and this process's CPU time,
  per token as (t(N) - t(1)) / (N - 1).

    python benchmarks/structured_bench.py --model tiny-random --new-tokens 128 --repeats 20 --threads 1
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO))

ENDLESS = {"type": "array", "items": {"type": "string"}, "minItems": 100000}
WAYS = ("unconstrained", "--schema")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-random")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, help="torch threads (1: steadier figures on a busy machine)")
    parser.add_argument("--image", default=str(REPO / "examples" / "shapes.png"))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from build import suppress_eos

    from dsvl_cli.conversation import Conversation
    from dsvl_cli.engine.local import LocalEngine
    from dsvl_cli.images import load_images
    from dsvl_cli.settings import GenerationSettings, ModelSettings
    from dsvl_cli.structured.spec import schema_format

    engine = LocalEngine.load(ModelSettings(model=args.model, device=args.device))
    suppress_eos(engine.model)
    conversation = Conversation.single("Describe this image in detail.", load_images([args.image]))
    inputs = engine.encode(conversation)
    fmt = schema_format(ENDLESS)
    sync = torch.cuda.synchronize if engine.device.startswith("cuda") else (lambda: None)
    mask_s: list[float] = []

    def timed_mask():
        mask = engine.grammars.mask([fmt])

        def call(input_ids, scores):  # the mask's own time, inside generate
            started = time.perf_counter()
            out = mask(input_ids, scores)
            mask_s.append(time.perf_counter() - started)
            return out
        return call

    def engine_run(n: int, way: str) -> tuple[float, float]:
        """(wall s, process CPU s) of LocalEngine.run answering `n` tokens."""
        gen = GenerationSettings(max_new_tokens=n, answer_format=fmt if way == "--schema" else None)
        wall, cpu = time.perf_counter(), time.process_time()
        result = engine.run(conversation, gen)
        sync()
        assert result.stats.generated_tokens == n, result.stats
        assert way != "--schema" or n < 3 or result.answer.startswith('["'), result.answer[:20]
        return time.perf_counter() - wall, time.process_time() - cpu

    def plain_wall(n: int, way: str) -> float:
        started = time.perf_counter()
        plain_generate(n, way)
        return time.perf_counter() - started

    def plain_generate(n: int, way: str) -> tuple[float]:
        """(thread CPU s,) of `generate` alone, with the mask as its logits processor or without."""
        extra = {"logits_processor": [timed_mask()]} if way == "--schema" else {}
        cpu = time.thread_time()
        with torch.inference_mode():
            out = engine.model.generate(**inputs, max_new_tokens=n, do_sample=False,
                                        pad_token_id=engine.tokenizer.pad_token_id, **extra)
        sync()
        assert out.shape[1] - inputs["input_ids"].shape[1] == n
        return (time.thread_time() - cpu,)

    # generate alone: whole calls of N tokens (prefill is a few ms of the ~N x step), interleaved;
    # the minimum over the repeats is the run least disturbed by other jobs, p25 the next best.
    for way in WAYS:  # warm-up (and the grammar's first compile)
        engine_run(args.new_tokens, way), plain_generate(args.new_tokens, way), plain_wall(args.new_tokens, way)
    mask_s.clear()
    calls = {(clock, way): [] for clock in ("thread CPU", "wall") for way in WAYS}
    ends = {(clock, way): [] for clock in ("wall", "process CPU") for way in WAYS}
    for _ in range(args.repeats):
        for way in WAYS:
            calls["thread CPU", way].append(plain_generate(args.new_tokens, way)[0] / args.new_tokens)
            calls["wall", way].append(plain_wall(args.new_tokens, way) / args.new_tokens)
            full, one = engine_run(args.new_tokens, way), engine_run(1, way)
            ends["wall", way].append((full[0] - one[0]) / (args.new_tokens - 1))
            ends["process CPU", way].append((full[1] - one[1]) / (args.new_tokens - 1))
    print(f"{args.model} on {engine.device}, {args.new_tokens} new tokens, {args.repeats} interleaved repeats, "
          f"{torch.get_num_threads()} torch threads")
    report: dict = {}
    for label, table in (("generate", calls), ("engine.run", ends)):
        for clock in sorted({c for c, _ in table}):
            values = {w: sorted(table[clock, w]) for w in WAYS}
            row = {stat: {w: values[w][int(q * (len(values[w]) - 1))] for w in WAYS}
                   for stat, q in (("min", 0), ("p25", 0.25), ("median", 0.5))}
            ratios = {stat: row[stat]["--schema"] / row[stat]["unconstrained"] for stat in row}
            report[f"{label}, {clock}"] = {"per_token_s": row, "ratio": ratios}
            print(f"  {label + ', ' + clock:26s} per token (min): unconstrained {row['min']['unconstrained'] * 1e3:.3f} ms, "
                  f"--schema {row['min']['--schema'] * 1e3:.3f} ms  ->  x{ratios['min']:.3f} (min), "
                  f"x{ratios['p25']:.3f} (p25), x{ratios['median']:.3f} (median)")
    step = statistics.median(mask_s)
    share = step / report["generate, wall"]["per_token_s"]["min"]["unconstrained"]
    report["mask_step_s"], report["mask_share"] = step, share
    print(f"  the mask itself: {step * 1e6:.1f} us per step (median of {len(mask_s)}), "
          f"{share * 100:.1f}% of an unconstrained step (min wall)")
    if args.out:
        args.out.write_text(json.dumps({
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()} {platform.processor() or ''} cores={os.cpu_count()}",
            "command": " ".join(sys.argv), "torch": torch.__version__,
            "llguidance": __import__("llguidance").__version__, "model": args.model, "device": engine.device,
            "report": report}, indent=2))


if __name__ == "__main__":
    main()
