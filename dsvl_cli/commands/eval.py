"""`dsvl eval FILE`: score a multiple-choice image benchmark (VLMEvalKit TSV or JSONL)."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Annotated, Optional

import typer

from dsvl_cli.options import CommonOptions, shared_options

# eval scores labels or generates a short answer itself: no answer formats, no --plain or --stats.
NOT_HERE = ("plain", "stats", "schema", "regex", "choices", "logprobs", "max_new_tokens")


@shared_options(exclude=NOT_HERE)
def eval_(
    file: Annotated[str, typer.Argument(
        metavar="FILE", show_default=False,
        help="A VLMEvalKit multiple-choice TSV (e.g. ~/LMUData/MMBench_DEV_EN.tsv) or JSONL records "
        "{image, question, options, answer, category}.")],
    method: Annotated[str, typer.Option(
        "--method", metavar="likelihood|generate",
        help="likelihood: score the option letters from one prefill (--choices), predict the most probable; "
        "generate: a greedy answer, its letter read by rules (unparsable counts wrong).")] = "likelihood",
    circular: Annotated[bool, typer.Option(
        "--circular", help="Ask each row once per rotation of its options; right only if every rotation is "
        "(MMBench's CircularEval).")] = False,
    limit: Annotated[Optional[int], typer.Option(
        "--limit", metavar="N", show_default=False, help="Only the first N rows.")] = None,
    output: Annotated[Optional[Path], typer.Option(
        "-o", "--output", dir_okay=False, show_default=False,
        help="Write one JSONL item record per question (prediction, probabilities, the exact prompt) here; "
        "overwritten unless --resume.")] = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Append to -o FILE, asking only the questions it has no record of.")] = False,
    plot: Annotated[Optional[Path], typer.Option(
        "--plot", dir_okay=False, show_default=False, metavar="FILE.png",
        help="Write a reliability diagram (needs pip install 'dsvl-cli[eval]').")] = None,
    batch_size: Annotated[Optional[int], typer.Option(
        "--batch-size", show_default=False, help="Questions open at once [default: as dsvl batch].")] = None,
    max_new_tokens: Annotated[int, typer.Option(
        "-n", "--max-new-tokens", help="With --method generate: most tokens per answer.")] = 32,
    *,
    opts: CommonOptions,
) -> None:
    """Score a multiple-choice image benchmark: accuracy per category, calibration, item records.

    \b
    Each row is asked as VLMEvalKit asks it (Hint / Question / Options / "Please select the
    correct answer from the options above."); the option letters are scored like --choices and the
    most probable is the prediction. Yes/no sets (POPE: no options, answers yes/no) also get
    precision, recall, F1 and the yes-ratio. A row with a broken image is an error (not in n) and
    the run goes on. On a terminal: a table; in a pipe: tab-separated lines; --json: one object.

    \b
    Exit: 0 every row scored; 1 any row failed; 2 bad usage or a file that cannot be evaluated
    (no answer column, no options); 130 Ctrl-C (rerun with --resume -o FILE to finish).

    \b
    Examples:
      dsvl eval ~/LMUData/MMBench_DEV_EN.tsv --limit 200 -o items.jsonl
      dsvl eval ~/LMUData/MMBench_DEV_EN.tsv --circular --json
      dsvl eval pope.jsonl --method generate --plot calibration.png
    """
    from dsvl_cli.errors import ExitCode, guarded
    from dsvl_cli.eval import report
    from dsvl_cli.eval.run import Plan, evaluate
    from dsvl_cli.render import note
    from dsvl_cli.screen.text import write_json

    with guarded(opts.debug):
        path = Path(file).expanduser()
        plan = Plan(path, method, circular, limit, output, resume, batch_size, max_new_tokens)
        plan.check()
        report.check_plot(plot, method)
        outcome = evaluate(plan, opts)
        if opts.json:
            write_json(outcome.summary, opts.env.stdout, terminal=opts.env.stdout_isatty)
        else:
            report.print_summary(outcome.summary, opts.env)
        if plot is not None:
            scored = [i for i in outcome.items.values() if i.get("probabilities")]
            report.plot(plot, scored, f"{path.name} · {outcome.summary['model']}")
        note(opts.env.stderr_console(), _line(outcome), style="dim")
    if outcome.stopped_by == "terminated":
        raise typer.Exit(128 + signal.SIGTERM)
    if outcome.stopped_by == "interrupted":
        raise typer.Exit(int(ExitCode.INTERRUPTED))
    if outcome.summary["errors"] or outcome.stopped_by:
        raise typer.Exit(int(ExitCode.FAILURE))


def _line(outcome) -> str:
    s = outcome.summary
    rate = outcome.asked / outcome.seconds if outcome.seconds > 0 else 0.0
    head = f"{outcome.stopped_by}: " if outcome.stopped_by else ""
    left = f", {s['left']} rows not answered (rerun with --resume -o FILE)" if s.get("left") else ""
    return (f"dsvl eval: {head}{s['n']} rows scored, {s['errors']} errors{left}; {outcome.asked} questions asked "
            f"in {outcome.seconds:.1f}s · {rate:.2f} questions/s")
