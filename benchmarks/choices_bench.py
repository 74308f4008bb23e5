"""`--choices`: the cost of scoring 2 and 20 labels against one ordinary short answer, same run.

    python benchmarks/choices_bench.py [--model tiny-random-fullres] [--device auto] [--repeat 5]
                                       [--answer-tokens 3] [--image examples/sunset.jpg] [--out FILE]

One question about one image, answered four ways through the engine `dsvl ask` uses (LocalEngine.run,
everything from the decoded image to the Result: prompt, preprocessing, vision towers, forward passes):
- `answer`: an ordinary greedy answer of exactly --answer-tokens tokens (EOS suppressed), the cost a
  user pays today for a "yes"/"no" that must then be parsed;
- `choices 2` / `choices 20`: `--choices` with 2 and 20 labels (one prefill, one forward over the
  label rows on the repeated prompt cache: engine/scoring.py);
- `per-label 20`: the naive way for comparison, one full prefill per label (20 prefills), whose
  log-probabilities must equal the shared-prefill ones (checked); timed once (--no-naive: not at all).
Median of --repeat runs after one untimed warm-up, interleaved so a noisy neighbour hurts all alike.
Measured, never asserted in tests; figures go to BENCHMARKS.md with the ratios from the same run.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
QUESTION = "What is the main subject of this picture? Answer with one word."
LABELS_2 = ["yes", "no"]
LABELS_20 = ["sky", "sea", "sunset", "mountain", "city", "forest", "beach", "desert", "river", "road",
             "a person", "a dog", "a cat", "a car", "a boat", "a building", "a flower", "food", "text", "nothing"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-random-fullres")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--answer-tokens", type=int, default=3)
    parser.add_argument("--image", default=str(REPO / "examples" / "sunset.jpg"))
    parser.add_argument("--naive", action=argparse.BooleanOptionalAction, default=True,
                        help="also time the naive way (one prefill per label), once")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import torch
    import transformers

    from dsvl_cli.conversation import Conversation
    from dsvl_cli.engine import scoring
    from dsvl_cli.engine.local import LocalEngine
    from dsvl_cli.images import load_images
    from dsvl_cli.settings import GenerationSettings, ModelSettings
    from dsvl_cli.structured.spec import choices_format

    engine = LocalEngine.load(ModelSettings(model=args.model, device=args.device, dtype=args.dtype, compile=False))
    engine.model.generation_config.eos_token_id = None  # the ordinary answer is exactly --answer-tokens
    conversation = Conversation.single(QUESTION, load_images([args.image]))
    ways = {
        "answer": GenerationSettings(max_new_tokens=args.answer_tokens),
        "choices 2": GenerationSettings(answer_format=choices_format(LABELS_2)),
        "choices 20": GenerationSettings(answer_format=choices_format(LABELS_20)),
    }

    def per_label_20() -> list[float]:
        """One prefill per label: the naive way (encode + a 1-row scoring pass per label)."""
        rows = scoring.label_rows(engine.tokenizer, tuple(LABELS_20), int(engine.tokenizer.eos_token_id))
        sums = []
        for row in rows:
            inputs = dict(engine.encode(conversation, remember=False))
            sums += scoring.label_logprobs(engine.model, inputs, [row])
        return sums

    def timed(fn) -> float:
        if engine.device.startswith("cuda"):
            torch.cuda.synchronize()
        started = time.perf_counter()
        fn()
        if engine.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - started

    calls = {name: (lambda gen=gen: engine.run(conversation, gen)) for name, gen in ways.items()}
    for fn in calls.values():  # warm-up
        fn()
    runs: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(args.repeat):
        for name, fn in calls.items():
            runs[name].append(timed(fn))
    if args.naive:  # 20 prefills: timed once
        runs["per-label 20"] = [timed(per_label_20)]
    shared = {s["label"]: s["logprob"] for s in engine.run(conversation, ways["choices 20"]).scores}
    naive = dict(zip(LABELS_20, per_label_20()))
    agree = max(abs(shared[k] - naive[k]) for k in LABELS_20)  # the shared prefill changes nothing
    medians = {name: statistics.median(times) for name, times in runs.items()}
    base = medians["answer"]
    print(f"{'way':<14} {'median ms':>10} {'vs answer':>10} {'vs choices 2':>13}")
    for name, value in medians.items():
        print(f"{name:<14} {1000 * value:>10.1f} {value / base:>9.2f}x {value / medians['choices 2']:>12.2f}x")
    print(f"shared-prefill and per-label log-probabilities differ by at most {agree:.2e}", file=sys.stderr)
    result = {
        "benchmark": "choices_bench", "model": args.model, "device": engine.device, "dtype": str(engine.model.dtype),
        "image": args.image, "image_tokens": int(engine.processor.num_image_tokens), "repeat": args.repeat,
        "answer_tokens": args.answer_tokens, "median_s": {k: round(v, 5) for k, v in medians.items()},
        "runs_s": runs, "max_logprob_difference": agree, "torch": torch.__version__,
        "transformers": transformers.__version__, "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(), "machine": platform.machine(),
        "gpu": torch.cuda.get_device_name() if engine.device.startswith("cuda") else None,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "command": " ".join(sys.argv),
    }
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
