"""The speed benchmark: the seed's way, dsvl's default path, its fast path and int8/int4, side by side.

    python benchmarks/bench.py --shape {tiny,1.3b,7b} --device {cpu,cuda} [--quick] [--out FILE.json]
                               [--ways seed,default,fast,int8,int4] [--scenarios load,ttft,decode,batch,chat,help]

Builds the model with the chosen shapes and random weights directly on the device (build.py: no
download; `tiny` is tiny-random), suppresses EOS so every run decodes exactly the tokens asked for,
and measures, for every way in the same process:
  load    a saved folder to the first answer token (one run)
  ttft    one JPEG and a short prompt to a 1-token answer (wall time, image load included)
  decode  batch-1 decode rate over --new-tokens (256): (N - 1) / (t(N tokens) - t(1 token))
  batch   output tokens/s at batch sizes 1, 8, 32 (B * tokens / wall time, prefill included)
  chat    turn-8 time to first token, the chat re-encoded (no reuse) and with KV reuse
  help    median wall time of `dsvl --help` against `python -c pass` (subprocesses; no model)
Each timed scenario runs once untimed first (its `first_call_s`: the fast path compiles there),
then --repeats times; the median is reported. Ratios are to the seed's way from the same run, and
for decode on CUDA to the bandwidth bound: --bandwidth / weight bytes read per decoded token.
Prints a table and, with --out, writes JSON with the machine, date, versions and command line.
Measured, never asserted in tests.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # build, ways, report, from any folder

import build  # noqa: E402
from report import Cell, add_ratios, machine, print_table  # noqa: E402

ALL_WAYS = {"seed": "seed (pipeline/generate)", "default": "dsvl default", "fast": "dsvl fast path",
            "int8": "dsvl int8 (fast)", "int4": "dsvl int4 (fast)"}
ALL_SCENARIOS = ("load", "ttft", "decode", "batch", "chat", "help")
H100_BANDWIDTH = 3.0e12  # B/s a device-to-device copy reaches on one H100 (DESIGN §5)


@dataclass(frozen=True)
class Plan:
    """How much each scenario does; --quick shrinks it to keep a CPU run to a few minutes."""

    new_tokens: int
    batch_tokens: int
    batch_sizes: tuple[int, ...]
    turns: int
    answer_tokens: int
    repeats: int
    help_runs: int

    @classmethod
    def from_args(cls, args) -> Plan:
        quick = args.quick
        sizes = args.batch_sizes or ("1,8" if quick else "1,8,32")
        return cls(new_tokens=args.new_tokens or (32 if quick else 256),
                   batch_tokens=args.batch_tokens or (16 if quick else 128),
                   batch_sizes=tuple(int(b) for b in sizes.split(",")),
                   turns=8, answer_tokens=16 if quick else 64,
                   repeats=args.repeats or 3, help_runs=5 if quick else 20)

    def names(self) -> dict[str, tuple[str, bool]]:
        """Row name -> (unit, higher is better), in table order."""
        rows = {"load to first token": ("s", False), "ttft, 1 JPEG": ("s", False),
                f"decode b=1, {self.new_tokens} tok": ("tok/s", True)}
        rows.update({f"batch {b}, {self.batch_tokens} tok": ("tok/s", True) for b in self.batch_sizes})
        rows.update({f"turn-{self.turns} ttft, no reuse": ("s", False), f"turn-{self.turns} ttft, KV reuse": ("s", False)})
        return rows


def measure(fn, *args, repeats: int) -> tuple[float, list[float], float]:
    """(median, timed runs, first call): one untimed warm-up call, then `repeats` timed ones."""
    first = fn(*args)
    runs = [fn(*args) for _ in range(repeats)]
    return statistics.median(runs), runs, first


def _error_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]


class Runner:
    """Runs the scenarios for one way and collects its cells."""

    def __init__(self, plan: Plan, scenarios: set[str], jpegs: list[Path], device: str, bound: float | None):
        self.plan, self.scenarios, self.jpegs, self.device, self.bound = plan, scenarios, jpegs, device, bound
        self.cells: list[Cell] = []
        self.units = plan.names()

    def cell(self, scenario: str, way: str, **fields) -> Cell:
        cell = Cell(scenario, way, unit=self.units[scenario][0], **fields)
        self.cells.append(cell)
        return cell

    def attempt(self, scenario: str, way: str, body) -> None:
        """Run one scenario; a failure (out of memory, say) becomes that cell's note, the run goes on."""
        started = time.perf_counter()
        try:
            body()
        except Exception as exc:  # recorded in the table and the JSON, never hidden
            self.cell(scenario, way, note=f"failed: {_error_line(exc)}")
            _free(self.device)
        print(f"bench: {way}: {scenario}: {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)

    def skip_all(self, way: str, reason: str) -> None:
        for scenario in self.units:
            self.cell(scenario, way, skipped=reason)

    def run(self, way, *, bytes_per_token: int | None) -> None:
        plan, jpeg, name = self.plan, self.jpegs[0], way.name
        if "ttft" in self.scenarios:
            def ttft():
                median, runs, first = measure(way.ask, jpeg, 1, repeats=plan.repeats)
                self.cell("ttft, 1 JPEG", name, value=median, runs=runs, first_call_s=first)
            self.attempt("ttft, 1 JPEG", name, ttft)
        if "decode" in self.scenarios:
            row = f"decode b=1, {plan.new_tokens} tok"

            def decode():
                one, _, _ = measure(way.decode, jpeg, 1, repeats=plan.repeats)
                median, runs, first = measure(way.decode, jpeg, plan.new_tokens, repeats=plan.repeats)
                if median <= one:
                    raise RuntimeError(f"{plan.new_tokens} tokens took no longer than 1 ({median:.4f} s "
                                       f"<= {one:.4f} s): too noisy, use more --new-tokens or --repeats")
                rate = (plan.new_tokens - 1) / (median - one)
                bound = self.bound / bytes_per_token if self.bound and bytes_per_token else None
                self.cell(row, name, value=rate, runs=runs, first_call_s=first, bound=bound,
                          of_bound=rate / bound if bound else None,
                          extra={"one_token_s": one, "bytes_read_per_token": bytes_per_token})
            self.attempt(row, name, decode)
        if "batch" in self.scenarios:
            for size in plan.batch_sizes:
                row = f"batch {size}, {plan.batch_tokens} tok"
                batch = [self.jpegs[k % len(self.jpegs)] for k in range(size)]

                def run_batch(batch=batch, row=row, size=size):
                    median, runs, first = measure(way.batch, batch, plan.batch_tokens, repeats=plan.repeats)
                    self.cell(row, name, value=size * plan.batch_tokens / median, runs=runs, first_call_s=first)
                self.attempt(row, name, run_batch)
        if "chat" in self.scenarios:
            for reuse in (False, True):
                row = f"turn-{plan.turns} ttft, {'KV reuse' if reuse else 'no reuse'}"
                if reuse and name == "seed":
                    self.cell(row, name, skipped="the seed's way has no KV reuse (it re-encodes the chat)")
                    continue

                def chat(reuse=reuse, row=row):
                    median, runs, first = measure(way.chat_turn, jpeg, plan.turns, plan.answer_tokens, reuse,
                                                  repeats=plan.repeats)
                    self.cell(row, name, value=median, runs=runs, first_call_s=first)
                self.attempt(row, name, chat)


def _free(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


def make_jpegs(folder: Path, count: int) -> list[Path]:
    """Distinct photo-sized JPEGs (640x480, shapes and gradients), so no image is downloaded."""
    from PIL import Image, ImageDraw

    paths = []
    for k in range(count):
        image = Image.linear_gradient("L").resize((640, 480)).convert("RGB")
        draw = ImageDraw.Draw(image)
        for j in range(5):
            x, y = (97 * (j + k)) % 520, (61 * (j + 2 * k)) % 380
            draw.ellipse([x, y, x + 120, y + 100], fill=((50 * j + 30 * k) % 256, (90 + 40 * k) % 256, 200 - 30 * j))
        path = folder / f"photo{k}.jpg"
        image.save(path, quality=90)
        paths.append(path)
    return paths


# Commands whose --help is timed beside `dsvl --help` (none may import torch: tests/test_ask.py).
HELP_COMMANDS = (["--help"], ["ask", "--help"], ["models", "--help"], ["doctor", "--help"], ["config", "--help"])


def startup(runs: int) -> dict:
    """Median wall seconds of `dsvl --help` (and of each HELP_COMMANDS) and of `python -c pass`
    (the interpreter's own floor), interleaved run by run so that load on the machine hits all alike."""
    script = Path(sys.executable).with_name("dsvl")
    dsvl = [str(script)] if script.exists() else [sys.executable, "-m", "dsvl_cli"]

    def wall(cmd: list[str]) -> float:
        started = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.perf_counter() - started

    commands = {" ".join(args): dsvl + args for args in HELP_COMMANDS}
    commands["python -c pass"] = [sys.executable, "-c", "pass"]
    for cmd in commands.values():
        wall(cmd)  # warm the file cache
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, cmd in commands.items():
            times[name].append(wall(cmd))
    return {"command": " ".join(Path(c).name if k == 0 else c for k, c in enumerate(dsvl + ["--help"])),
            "dsvl_help_s": statistics.median(times["--help"]), "python_pass_s": statistics.median(times["python -c pass"]),
            "runs": runs, "dsvl_help_runs": times["--help"],
            "median_s": {name: statistics.median(t) for name, t in times.items()}}


def quantize_reason(kind: str, device: str, dtype) -> str | None:
    """Why `--quantize kind` cannot run here (dsvl's own check), or None."""
    from dsvl_cli.engine import quantize
    from dsvl_cli.errors import UsageError

    try:
        quantize.check(kind, device, dtype)
    except UsageError as exc:
        return str(exc)
    return None


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--shape", choices=["tiny", "1.3b", "7b"], default="tiny")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"],
                        help="auto: bf16 on CUDA, fp32 on CPU (as dsvl picks)")
    parser.add_argument("--quick", action="store_true",
                        help="fewer tokens (decode 32, batch 16, chat answers 16), batch sizes 1,8")
    parser.add_argument("--ways", default=",".join(ALL_WAYS), help=f"comma-separated: {', '.join(ALL_WAYS)}")
    parser.add_argument("--scenarios", default=",".join(ALL_SCENARIOS),
                        help=f"comma-separated: {', '.join(ALL_SCENARIOS)}")
    parser.add_argument("--new-tokens", type=int, help="decode row's tokens (default 256, quick 32)")
    parser.add_argument("--batch-tokens", type=int, help="batch rows' tokens per row (default 128, quick 16)")
    parser.add_argument("--batch-sizes", help="comma-separated (default 1,8,32; quick 1,8)")
    parser.add_argument("--repeats", type=int, help="timed repeats per scenario (default 3)")
    parser.add_argument("--bandwidth", type=float, help=f"memory bandwidth in B/s for the decode bound "
                        f"(default on CUDA: {H100_BANDWIDTH:.1e}, one H100; none on CPU unless given)")
    parser.add_argument("--no-compile", action="store_true", help="fast path with the static cache only")
    parser.add_argument("--shapes", type=Path, default=build.DEFAULT_SHAPES, help="the shapes file (1.3b, 7b)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    for option, given, known in (("--ways", args.ways, ALL_WAYS), ("--scenarios", args.scenarios, ALL_SCENARIOS)):
        unknown = set(given.split(",")) - set(known)
        if unknown:
            parser.error(f"{option}: unknown {', '.join(sorted(unknown))} (use {', '.join(known)})")
    return args


def main(argv=None) -> int:
    args = parse(argv)
    plan, ways, scenarios = Plan.from_args(args), args.ways.split(","), set(args.scenarios.split(","))
    if scenarios == {"help"}:  # start-up only: no model to build
        start = startup(plan.help_runs)
        for name, seconds in start["median_s"].items():
            print(f"start-up: {name}: {seconds * 1000:.0f} ms median of {start['runs']}")
        if args.out:
            args.out.write_text(json.dumps({"machine": machine("cpu"), "startup": start}, indent=2) + "\n")
        return 0
    from dsvl_cli.engine import loading, runtime
    from dsvl_cli.engine.local import LocalEngine
    from dsvl_cli.errors import DsvlError
    from dsvl_cli.settings import ModelSettings
    from ways import DsvlWay, SeedWay

    try:
        device = runtime.pick_device(args.device)
    except DsvlError as exc:
        raise SystemExit(f"bench: {exc}") from None
    dtype = runtime.pick_dtype(args.dtype, device)
    bandwidth = args.bandwidth or (H100_BANDWIDTH if device.startswith("cuda") else None)
    if args.quick:
        print(f"bench: --quick: decode {plan.new_tokens} tokens, batches of {plan.batch_tokens} tokens at "
              f"{plan.batch_sizes}, {plan.repeats} timed repeat(s); not the full measurement", file=sys.stderr)
    workdir = Path(tempfile.mkdtemp(prefix="dsvl-bench-"))
    jpegs = make_jpegs(workdir, min(8, max(plan.batch_sizes)))
    model, processor, folder, build_s = build.build(args.shape, device, dtype, workdir, args.shapes)
    print(f"bench: built {args.shape} on {device} ({dtype}) in {build_s:.1f} s", file=sys.stderr, flush=True)
    facts = {"shape": args.shape, "device": device, "dtype": str(dtype).removeprefix("torch."),
             "parameters": sum(p.numel() for p in model.parameters()), "build_s": build_s,
             "bandwidth_bytes_per_s": bandwidth, "kv_bytes_per_token": build.kv_bytes_per_token(model),
             "bytes_read_per_token": {w: build.bytes_read_per_token(model, w if w.startswith("int") else None)
                                      for w in ways}, "plan": plan.__dict__,
             "attention": model.config.get_text_config()._attn_implementation,
             "image_processor": type(processor.image_processor).__name__}
    runner = Runner(plan, scenarios, jpegs, device, bandwidth)
    resolved = loading.ResolvedModel(str(folder), folder, random_weights=True)

    def settings(**extra) -> ModelSettings:
        return ModelSettings(model=str(folder), device=device, dtype=str(dtype).removeprefix("torch."), **extra)

    compile = not args.no_compile
    for name in ways:
        label = ALL_WAYS[name]
        if name.startswith("int") and (reason := quantize_reason(name, device, dtype)):
            runner.skip_all(name, reason)
            continue
        print(f"bench: {label}…", file=sys.stderr, flush=True)
        loaded = None
        if "load" in scenarios or name.startswith("int"):
            def load(name=name):
                nonlocal loaded
                if name == "seed":
                    seconds = SeedWay.load_first_token(folder, device, dtype, jpegs[0])
                else:
                    quantize = name if name.startswith("int") else None
                    seconds, loaded = DsvlWay.load_first_token(
                        settings(compile=name != "default" and compile, quantize=quantize), jpegs[0])
                runner.cell("load to first token", name, value=seconds)
            runner.attempt("load to first token", name, load)
            if not name.startswith("int"):
                loaded = None
                _free(device)
        if name == "seed":
            way = SeedWay(model, processor, device)
        elif name.startswith("int"):
            if loaded is None:
                runner.skip_all(name, "the quantized model did not load (see its load row)")
                continue
            way = DsvlWay(loaded, name, label)
        else:
            engine = LocalEngine(model, processor, device, resolved, settings())
            if name == "fast":
                engine.enable_fast_path(compile=compile)
            way = DsvlWay(engine, name, label)
        runner.run(way, bytes_per_token=facts["bytes_read_per_token"].get(name))
        way = loaded = None
        _free(device)

    rows = list(plan.names())
    add_ratios(runner.cells, {k: v[1] for k, v in plan.names().items()}, baseline={rows[-1]: rows[-2]})
    labels = [(w, ALL_WAYS[w]) for w in ways]
    print(f"\n{args.shape} shapes on {device} ({facts['dtype']}), random weights, EOS suppressed"
          + (" -- QUICK run (fewer tokens and repeats)" if args.quick else ""))
    print_table(runner.cells, labels, [s for s in plan.names() if any(c.scenario == s for c in runner.cells)])
    start = startup(plan.help_runs) if "help" in scenarios else None
    if start:
        print(f"\nstart-up: {start['command']}: {start['dsvl_help_s'] * 1000:.0f} ms median of {start['runs']}; "
              f"python -c pass: {start['python_pass_s'] * 1000:.0f} ms")
    info = machine(device)
    print(f"\n{info['cpu']}, {info['cores']} cores" + (f", {info['gpu']}" if info.get("gpu") else "")
          + f"; torch {info['torch']}, transformers {info['transformers']}; {info['date']}")
    if args.out:
        record = {"machine": info, "quick": args.quick, **facts, "startup": start,
                  "ways": dict(labels), "results": [c.to_dict() for c in runner.cells]}
        args.out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        print(f"bench: wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
