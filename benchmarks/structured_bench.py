"""What a --schema costs per generated token: constrained against unconstrained decoding, interleaved.

Both ways run `LocalEngine.run` on the same model and question, alternating call by call (drift on a
loaded machine hits both alike). EOS is suppressed and the schema cannot be complete within the
budget (an array of at least 100000 strings, so every step is masked and most steps are inside a
free string, where the most tokens are allowed), so both decode exactly --new-tokens tokens.
Per-token cost = (t(N tokens) - t(1 token)) / (N - 1): prefill, image and set-up costs cancel out.
Both wall time and this process's CPU time are reported: on a machine other jobs are loading, CPU
time is the steadier of the two.

    python benchmarks/structured_bench.py --model tiny-random --new-tokens 64 --repeats 10 --threads 1
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO))

ENDLESS = {"type": "array", "items": {"type": "string"}, "minItems": 100000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-random")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--image", default=str(REPO / "examples" / "shapes.png"))
    parser.add_argument("--threads", type=int, help="torch threads (1: steadier figures on a busy machine)")
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
    fmt = schema_format(ENDLESS)
    sync = torch.cuda.synchronize if engine.device.startswith("cuda") else (lambda: None)

    def timed(n: int, constrained: bool) -> tuple[float, float]:
        """(wall seconds, CPU seconds of this process) of one answer of `n` tokens."""
        gen = GenerationSettings(max_new_tokens=n, answer_format=fmt if constrained else None)
        wall, cpu = time.perf_counter(), time.process_time()
        result = engine.run(conversation, gen)
        sync()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        assert result.stats.generated_tokens == n, result.stats
        if constrained and n > 2:
            assert result.answer.startswith('["'), result.answer[:20]
        return wall, cpu

    ways = {"unconstrained": False, "--schema": True}
    for constrained in ways.values():  # warm-up (and the grammar's first compile)
        timed(args.new_tokens, constrained), timed(1, constrained)
    samples = {(name, clock): [] for name in ways for clock in ("wall", "cpu")}
    for _ in range(args.repeats):
        for name, constrained in ways.items():
            full, one = timed(args.new_tokens, constrained), timed(1, constrained)
            for k, clock in enumerate(("wall", "cpu")):
                samples[name, clock].append((full[k] - one[k]) / (args.new_tokens - 1))
    print(f"{args.model} on {engine.device}, {args.new_tokens} new tokens, {args.repeats} interleaved repeats, "
          f"{torch.get_num_threads()} torch threads")
    report = {}
    for clock in ("wall", "cpu"):  # CPU time: what a busy machine disturbs least
        per = {name: (statistics.median(samples[name, clock]), min(samples[name, clock])) for name in ways}
        ratio = per["--schema"][0] / per["unconstrained"][0]
        ratio_min = per["--schema"][1] / per["unconstrained"][1]
        report[clock] = {"median_s": {n: v[0] for n, v in per.items()}, "min_s": {n: v[1] for n, v in per.items()},
                         "ratio_median": ratio, "ratio_min": ratio_min}
        cells = "  ".join(f"{n} {v[0] * 1000:.3f} ms (min {v[1] * 1000:.3f})" for n, v in per.items())
        print(f"  {clock:4s} per token: {cells}  ->  --schema x{ratio:.3f} (median), x{ratio_min:.3f} (min)")
    if args.out:
        args.out.write_text(json.dumps({
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()} {platform.processor() or ''} cores={__import__('os').cpu_count()}",
            "command": " ".join(sys.argv), "torch": torch.__version__,
            "llguidance": __import__("llguidance").__version__, "model": args.model, "device": engine.device,
            "report": report, "samples_s": {f"{n} {c}": v for (n, c), v in samples.items()}}, indent=2))


if __name__ == "__main__":
    main()
