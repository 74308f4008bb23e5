"""What a benchmark run records besides its figures, and how it prints them.

`machine()` names the CPU, cores, GPU, versions, date and command line (BENCHMARKS.md needs each
figure's context); `Cell` is one scenario x way result; `print_table` shows the scenarios side by
side, each with its ratio to the seed's way from the same run and, for decode on CUDA, to the
bandwidth bound. Plain text, so it reads the same in a log file as on a terminal.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class Cell:
    """One scenario for one way: `value` in `unit`, or `skipped` with the reason."""

    scenario: str
    way: str
    unit: str = ""
    value: float | None = None
    runs: list[float] = field(default_factory=list)  # the timed repeats, seconds
    first_call_s: float | None = None  # the untimed warm-up call (compiles the fast path)
    vs_seed: float | None = None  # > 1: faster than the seed's way (higher tok/s or lower seconds)
    bound: float | None = None  # the bandwidth bound in `unit` (decode on CUDA)
    of_bound: float | None = None  # value / bound
    note: str = ""
    skipped: str = ""
    extra: dict = field(default_factory=dict)  # scenario-specific figures (JSON only)

    def to_dict(self) -> dict:
        return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: str) -> dict:
    import torch
    import transformers

    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([os.path.basename(sys.executable), *sys.argv]),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    for name in ("torchvision", "torchao"):
        try:
            info[name] = __import__(name).__version__
        except ImportError:
            info[name] = None
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_bytes=props.total_memory, cuda=torch.version.cuda)
    return info


def add_ratios(cells: list[Cell], higher_is_better: dict[str, bool], baseline: dict[str, str]) -> None:
    """Fill `vs_seed` for every cell from the seed's cell of the same scenario, or of the scenario
    `baseline` names for it (the seed has no KV reuse: its turn-8 is the re-encoded one)."""
    seed = {c.scenario: c.value for c in cells if c.way == "seed" and c.value}
    for cell in cells:
        base = seed.get(baseline.get(cell.scenario, cell.scenario))
        if cell.value and base:
            cell.vs_seed = cell.value / base if higher_is_better[cell.scenario] else base / cell.value


def _fmt(cell: Cell | None) -> str:
    if cell is None:
        return "-"
    if cell.skipped:
        return "skipped"
    if cell.value is None:
        return "failed"
    text = f"{cell.value:.4g} {cell.unit}"
    if cell.vs_seed is not None and cell.way != "seed":
        text += f" (x{cell.vs_seed:.2f})"
    if cell.of_bound is not None:
        text += f" [{cell.of_bound:.0%} of bound]"
    return text


def print_table(cells: list[Cell], ways: list[tuple[str, str]], scenarios: list[str], file=sys.stdout) -> None:
    """Scenarios down, ways across; then every skip reason and note once."""
    by = {(c.scenario, c.way): c for c in cells}
    header = ["scenario", *[label for _, label in ways]]
    rows = [[s, *[_fmt(by.get((s, w))) for w, _ in ways]] for s in scenarios]
    widths = [max(len(r[k]) for r in [header, *rows]) for k in range(len(header))]
    for row in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip(), file=file)
    print("(xN: against the seed's way in this run, > 1 is faster; a KV-reuse turn is compared with the "
          "seed's re-encoded turn; bound: memory bandwidth / weight bytes read per token)", file=file)
    seen = set()
    for c in cells:
        for text in (c.skipped and f"{c.way}: skipped: {c.skipped}", c.note and f"{c.way}, {c.scenario}: {c.note}"):
            if text and text not in seen:
                seen.add(text)
                print(f"  {text}", file=file)


def emit(result: dict, out: str | Path | None = None) -> None:
    """A run's figures as JSON on stdout, and in `out` when given (its folder made)."""
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
