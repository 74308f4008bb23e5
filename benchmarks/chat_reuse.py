"""Chat KV reuse: per-turn prefill tokens and time to first token, with reuse and with full recompute.

    python benchmarks/chat_reuse.py [--model tiny-random-fullres] [--turns 8] [-n 16] [--repeat 3]
                                    [--image examples/sunset.jpg] [--device auto] [--out FILE]

A scripted chat (one image on turn 1, short follow-ups) runs through `dsvl chat`'s own session
(ChatSession + LocalEngine.run) twice: with the session's PromptCache (what `dsvl chat` does), and with
no cache, so every turn re-encodes the image and prefills the whole conversation (what a chat
without reuse costs). Greedy decoding and exactly `-n` new tokens per turn (EOS is suppressed), so
both runs see the same history; the answers must come out identical, which the script checks.

Per turn it reports prompt tokens, prefill tokens (prompt_tokens - cached_tokens) and ttft (from
the start of the turn, image preprocessing included, to the first new token), the median of
`--repeat` runs after one untimed warm-up chat. Prints a table (turn 1 and the last turn marked)
and writes JSON with `--out`. Measured, never asserted in tests; figures go to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FIRST = "Describe this image in detail."
FOLLOW_UPS = ["What colours stand out?", "Is there any text in it?", "What is in the background?",
              "Where is the brightest part?", "Is it a photo or a drawing?", "What time of day is it?",
              "Summarise it in one sentence.", "Anything unusual?", "What would you title it?"]


def script(turns: int) -> list[str]:
    return [FIRST] + [FOLLOW_UPS[k % len(FOLLOW_UPS)] for k in range(turns - 1)]


def run_chat(engine, image: str, turns: int, new_tokens: int, reuse: bool) -> list[dict]:
    """One scripted chat through ChatSession; the stats of every turn, and its answer."""
    from dsvl_cli.chat.commands import handle
    from dsvl_cli.chat.session import ChatSession
    from dsvl_cli.images import load_images
    from dsvl_cli.settings import GenerationSettings

    session = ChatSession(engine, GenerationSettings(max_new_tokens=new_tokens), images=load_images([image]),
                          reuse=reuse)
    rows = []
    for number, text in enumerate(script(turns), 1):
        reply = handle(session, text)
        assert reply.answer, reply.text
        turn = session.respond(lambda conversation, gen, cache: engine.run(conversation, gen, cache=cache))
        stats = turn.result.stats
        assert stats.generated_tokens == new_tokens, stats  # EOS is suppressed: same length both ways
        rows.append({"turn": number, "prompt_tokens": stats.prompt_tokens, "cached_tokens": stats.cached_tokens,
                     "prefill_tokens": stats.prompt_tokens - stats.cached_tokens, "ttft_s": stats.ttft_s,
                     "image_s": stats.image_s, "total_s": stats.total_s, "answer": turn.result.answer})
    return rows


def median_rows(runs: list[list[dict]]) -> list[dict]:
    """Per turn: token counts of the first run (they never vary), median of the timings."""
    rows = []
    for per_turn in zip(*runs):
        row = {k: v for k, v in per_turn[0].items() if k != "answer"}
        for key in ("ttft_s", "image_s", "total_s"):
            row[key] = round(statistics.median(r[key] for r in per_turn), 4)
        rows.append(row)
    return rows


def table(reuse: list[dict], full: list[dict]) -> str:
    last = len(reuse)
    lines = [f"{'turn':>5} {'prompt':>7} {'prefill':>8} {'prefill':>8} {'ttft ms':>8} {'ttft ms':>8} {'ttft':>6} {'image ms':>9}",
             f"{'':>5} {'tokens':>7} {'reuse':>8} {'full':>8} {'reuse':>8} {'full':>8} {'gain':>6} {'reuse':>9}"]
    for r, f in zip(reuse, full):
        mark = "*" if r["turn"] in (1, last) else " "
        gain = f["ttft_s"] / r["ttft_s"] if r["ttft_s"] else float("nan")
        lines.append(f"{r['turn']:>4}{mark} {r['prompt_tokens']:>7} {r['prefill_tokens']:>8} {f['prefill_tokens']:>8} "
                     f"{1000 * r['ttft_s']:>8.1f} {1000 * f['ttft_s']:>8.1f} {gain:>5.1f}x {1000 * r['image_s']:>9.1f}")
    lines.append(f"(* turns 1 and {last}; ttft: start of the turn to the first token, including `image ms`: "
                 "rendering the prompt and preprocessing every image of the conversation)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-random-fullres")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--turns", type=int, default=8)
    parser.add_argument("-n", "--new-tokens", type=int, default=16, help="new tokens per answer (exactly)")
    parser.add_argument("--repeat", type=int, default=3, help="timed chats per mode (median per turn)")
    parser.add_argument("--image", default=str(REPO / "examples" / "sunset.jpg"))
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="the fast path (static cache + compiled decode); default: as `dsvl chat` (on with CUDA)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    if args.turns < 2 or args.repeat < 1 or args.new_tokens < 1:
        parser.error("--turns must be at least 2, --repeat and -n at least 1")

    import torch
    import transformers

    from dsvl_cli.engine.local import LocalEngine
    from dsvl_cli.settings import ModelSettings

    settings = ModelSettings(model=args.model, device=args.device, dtype=args.dtype, compile=args.compile)
    engine = LocalEngine.load(settings, prefer_fast=True)  # as `dsvl chat` loads it
    engine.model.generation_config.eos_token_id = None  # every answer is exactly -n tokens

    run_chat(engine, args.image, 2, args.new_tokens, reuse=True)  # warm-up: lazy init, first-call costs
    run_chat(engine, args.image, 2, args.new_tokens, reuse=False)
    runs: dict[str, list[list[dict]]] = {"reuse": [], "full": []}
    for _ in range(args.repeat):  # interleaved, so a noisy neighbour hurts both modes alike
        for mode in runs:
            runs[mode].append(run_chat(engine, args.image, args.turns, args.new_tokens, reuse=mode == "reuse"))
    same = all(r["answer"] == f["answer"] for run_r, run_f in zip(runs["reuse"], runs["full"])
               for r, f in zip(run_r, run_f))
    reuse, full = median_rows(runs["reuse"]), median_rows(runs["full"])

    print(table(reuse, full))
    print(f"answers identical with and without reuse: {same}", file=sys.stderr)
    highlights = {f"turn_{t}": {"prefill_tokens": {"reuse": reuse[t - 1]["prefill_tokens"], "full": full[t - 1]["prefill_tokens"]},
                                "ttft_s": {"reuse": reuse[t - 1]["ttft_s"], "full": full[t - 1]["ttft_s"]}}
                  for t in (1, args.turns)}
    result = {
        "benchmark": "chat_reuse", "model": args.model, "device": engine.device, "dtype": str(engine.model.dtype),
        "fast_path": engine.fast is not None, "image": args.image, "turns": args.turns,
        "new_tokens": args.new_tokens, "repeat": args.repeat, "image_tokens": int(engine.processor.num_image_tokens),
        "answers_identical": same, "highlights": highlights, "reuse": reuse, "full_recompute": full,
        "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(), "machine": platform.machine(),
        "gpu": torch.cuda.get_device_name() if engine.device.startswith("cuda") else None,
    }
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.out}", file=sys.stderr)
    if not same:
        raise SystemExit("chat_reuse: answers differ with and without reuse (greedy): a KV reuse bug")


if __name__ == "__main__":
    main()
