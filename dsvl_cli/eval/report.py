"""What `dsvl eval` shows: the table (a terminal), tab-separated lines (a pipe), the reliability diagram.

Table rows: each category (sorted), then `overall`; columns: n, correct, accuracy, its 95% Wilson
interval. The lines below it: errors, unparsed answers, ECE and Brier, and for yes/no sets
precision, recall, F1 and the yes-ratio. In a pipe: a header line and one tab-separated line per
row of the table (accuracy and the interval as fractions), the rest as `name<TAB>value` lines.
--plot: a reliability diagram (matplotlib, `pip install 'dsvl-cli[eval]'`): per confidence bin the
accuracy against the diagonal of perfect calibration, and how many questions fell in each bin.
"""

from __future__ import annotations

import io
from pathlib import Path

from dsvl_cli.errors import UsageError
from dsvl_cli.eval.metrics import calibration_bins
from dsvl_cli.screen.text import visible
from dsvl_cli.userfiles import write_atomic

_PLOT_SUFFIXES = (".png", ".svg", ".pdf")
_EXTRAS = ("errors", "unparsed", "ece", "brier", "precision", "recall", "f1", "yes_ratio")


def table_rows(summary: dict) -> list[tuple[str, int, int, float | None, list[float]]]:
    """(name, n, correct, accuracy, ci95) for each category, then overall."""
    rows = [(name, c["n"], c["correct"], c["accuracy"], c["ci95"]) for name, c in summary["categories"].items()]
    return rows + [("overall", summary["n"], summary["correct"], summary["accuracy"], summary["ci95"])]


def extras(summary: dict) -> list[tuple[str, object]]:
    return [(key, summary[key]) for key in _EXTRAS if summary.get(key) is not None]


def print_summary(summary: dict, env) -> None:
    """The table on a terminal, tab-separated lines in a pipe."""
    if not env.stdout_isatty:
        lines = ["category\tn\tcorrect\taccuracy\tlow\thigh"]
        lines += [f"{name}\t{n}\t{k}\t{_num(acc)}\t{lo:.4f}\t{hi:.4f}" for name, n, k, acc, (lo, hi)
                  in table_rows(summary)]
        lines += [f"{key}\t{_num(value)}" for key, value in extras(summary)]
        env.stdout.write("".join(visible(line) + "\n" for line in lines))
        env.stdout.flush()
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("category", "n", "correct", "accuracy", "95% interval"):
        table.add_column(column, justify="left" if column == "category" else "right")
    for name, n, k, acc, (lo, hi) in table_rows(summary):
        style = "bold" if name == "overall" else None
        table.add_row(Text(visible(name)), str(n), str(k), _pct(acc), f"{_pct(lo)}-{_pct(hi)}", style=style)
    console = Console(file=env.stdout, force_terminal=True, no_color=env.no_color or None, highlight=False)
    console.print(table)
    shown = extras(summary)
    if shown:
        console.print(" · ".join(f"{key} {_num(value)}" for key, value in shown), markup=False, highlight=False)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _num(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def check_plot(path: Path | None, method: str) -> None:
    """Before anything runs: matplotlib installed, and probabilities to plot (exit 2 otherwise)."""
    if path is None:
        return
    if path.suffix.lower() not in _PLOT_SUFFIXES:
        raise UsageError(f"--plot {path}: give a .png, .svg or .pdf file name")
    if method != "likelihood":
        raise UsageError(f"--plot {path}: a reliability diagram needs probabilities; --method generate has none")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError(f"--plot {path}: needs matplotlib: pip install 'dsvl-cli[eval]'") from None


def plot(path: Path, items: list[dict], title: str) -> None:
    """The reliability diagram of the scored items, written atomically to `path` (.png, .svg, .pdf)."""
    import matplotlib

    matplotlib.use("Agg", force=True)  # files only, never a window
    from matplotlib.figure import Figure

    bins = calibration_bins(items)
    centres = [(b["lo"] + b["hi"]) / 2 for b in bins]
    width = bins[0]["hi"] - bins[0]["lo"]
    figure = Figure(figsize=(5, 6))
    top, bottom = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.bar(centres, [b["accuracy"] or 0 for b in bins], width=width, edgecolor="black", label="accuracy")
    top.bar(centres, [(b["confidence"] or 0) - (b["accuracy"] or 0) if b["n"] else 0 for b in bins],
            bottom=[b["accuracy"] or 0 for b in bins], width=width, color="none", edgecolor="red", hatch="//",
            label="gap to confidence")
    top.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    top.set(ylabel="accuracy", ylim=(0, 1), title=title)
    top.legend(loc="upper left", fontsize="small")
    bottom.bar(centres, [b["n"] for b in bins], width=width, edgecolor="black")
    bottom.set(xlabel="confidence (probability of the predicted label)", ylabel="questions", xlim=(0, 1))
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format=path.suffix.lstrip(".").lower(), dpi=100)
    try:
        write_atomic(path, buffer.getvalue())
    except OSError as exc:
        raise UsageError(f"--plot {path}: cannot write it: {exc.strerror or exc}") from None
