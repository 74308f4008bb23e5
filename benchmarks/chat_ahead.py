"""A chat script over phone photos: reading ahead (the next /image decodes while an answer streams)
against one input at a time, on the same loaded model, alternating run by run.

The script: for each of `--photos` copies of a 12 MP JPEG (distinct files, so each is decoded),
`/image photo_K.jpg` then `Describe this photo.`, answered with `-n` new tokens, greedy, plain
output; `chat/pipe.run_lines` with `read_ahead=8` (dsvl's default for a script) vs `read_ahead=0`.
Reported: the script's wall time (median of `--repeats`), per photo, and the answers' equality.

    DSVL_HOME=/tmp/dsvl-bench python benchmarks/chat_ahead.py --photos 6 -n 16 --repeats 3
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from photo_ttft import make_photos


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-random-fullres")
    parser.add_argument("--photos", type=int, default=6)
    parser.add_argument("-n", "--max-new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args()

    from dsvl_cli.chat.pipe import run_lines
    from dsvl_cli.chat.session import ChatSession
    from dsvl_cli.chat.ui import ChatUI
    from dsvl_cli.engine.local import LocalEngine
    from dsvl_cli.options import build_common
    from dsvl_cli.screen.environment import Environment
    from dsvl_cli.settings import GenerationSettings, ModelSettings

    folder = Path(tempfile.mkdtemp())
    jpeg = make_photos(folder)[0]
    photos = []
    for k in range(args.photos):
        photos.append(folder / f"photo_{k}.jpg")
        shutil.copy(jpeg, photos[-1])
    script = "".join(f"/image {photo}\nDescribe this photo.\n" for photo in photos)
    engine = LocalEngine.load(ModelSettings(model=args.model, device="cpu"))
    gen = GenerationSettings(max_new_tokens=args.max_new_tokens)

    def run(read_ahead: int) -> tuple[float, str]:
        env = Environment(stdin=io.StringIO(), stdout=io.StringIO(), stderr=io.StringIO(), stdout_isatty=False,
                          stderr_isatty=False)
        ui = ChatUI(ChatSession(engine, gen), build_common({"plain": True}, env=env))
        started = time.perf_counter()
        code = run_lines(ui, io.StringIO(script), read_ahead=read_ahead)
        assert code == 0, env.stderr.getvalue()
        return time.perf_counter() - started, env.stdout.getvalue()

    run(0)  # warm-up: first-call costs out of the figures
    times: dict[str, list[float]] = {"one at a time": [], "read ahead": []}
    answers = {}
    for _ in range(args.repeats):
        for name, depth in (("one at a time", 0), ("read ahead", 8)):
            seconds, answers[name] = run(depth)
            times[name].append(seconds)
    rows = {name: statistics.median(values) for name, values in times.items()}
    for name, seconds in rows.items():
        print(f"{name:14s} {seconds:6.2f} s   {seconds / args.photos * 1000:6.0f} ms per photo turn")
    print(f"saved {(rows['one at a time'] - rows['read ahead']) / args.photos * 1000:.0f} ms per photo; "
          f"same answers: {answers['one at a time'] == answers['read ahead']}")
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "seconds": rows, "runs": times}, indent=2) + "\n")


if __name__ == "__main__":
    main()
