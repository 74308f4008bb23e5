"""What dsvl's default path costs over plain `generate`, measured interleaved.

bench.py runs each way's scenarios one after another; on a noisy machine the drift between them
can be larger than the difference being measured. Here the two alternate call by call on the same
model and the same encoded inputs: plain `model.generate(**inputs)` and `LocalEngine.run` (which also
renders and encodes the prompt, streams through its worker thread and detokenizes as it goes).
EOS is suppressed, so both decode exactly --new-tokens tokens.

    python benchmarks/stream_overhead.py --model tiny-random --new-tokens 256 --repeats 20
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-random")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--image", default=str(REPO / "examples" / "shapes.png"))
    args = parser.parse_args()

    import torch
    from build import suppress_eos

    from dsvl_cli.conversation import Conversation
    from dsvl_cli.engine.local import LocalEngine
    from dsvl_cli.images import load_images
    from dsvl_cli.settings import GenerationSettings, ModelSettings

    engine = LocalEngine.load(ModelSettings(model=args.model, device=args.device))
    suppress_eos(engine.model)
    conversation = Conversation.single("Describe this image in detail.", load_images([args.image]))
    gen = GenerationSettings(max_new_tokens=args.new_tokens)
    inputs = engine.encode(conversation)
    sync = torch.cuda.synchronize if engine.device.startswith("cuda") else (lambda: None)

    def plain() -> float:
        started = time.perf_counter()
        with torch.inference_mode():
            engine.model.generate(**inputs, max_new_tokens=args.new_tokens, do_sample=False,
                                  pad_token_id=engine.tokenizer.pad_token_id)
        sync()
        return time.perf_counter() - started

    def dsvl() -> float:
        started = time.perf_counter()
        result = engine.run(conversation, gen)
        sync()
        assert result.stats.generated_tokens == args.new_tokens, result.stats
        return time.perf_counter() - started

    plain(), dsvl()  # warm-up
    times: dict[str, list[float]] = {"plain generate": [], "dsvl LocalEngine.run": []}
    for _ in range(args.repeats):
        times["plain generate"].append(plain())
        times["dsvl LocalEngine.run"].append(dsvl())
    print(f"{args.model} on {engine.device}, {args.new_tokens} new tokens, {args.repeats} interleaved calls each")
    base = statistics.median(times["plain generate"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:16s} median {median * 1000:7.1f} ms  min {min(values) * 1000:7.1f} ms  "
              f"({args.new_tokens / median:6.1f} tok/s, x{base / median:.2f} of plain)")


if __name__ == "__main__":
    main()
