"""`dsvl batch [INPUT ...]`: many questions, one model load, JSONL out."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Annotated, Optional

import typer

from dsvl_cli.options import CommonOptions, shared_options

# --ray and its two options (batch/ray_job.py), declared here to keep the command short.
_Ray = Annotated[bool, typer.Option(
    "--ray", help="Run on Ray Data: a pool of engine actors, one per GPU of the cluster; records in input "
    "order. Needs pip install 'dsvl-cli[ray]'.")]
_RayAddress = Annotated[Optional[str], typer.Option(
    "--ray-address", metavar="ADDR", show_default=False,
    help="Join this Ray cluster (implies --ray); default: RAY_ADDRESS, else a local Ray instance.")]
_Workers = Annotated[Optional[int], typer.Option(
    "--workers", metavar="N", show_default=False,
    help="With --ray: engine actors, each loading the model once [default: one per GPU in the cluster, "
    "1 without GPUs].")]


_Log = Annotated[bool, typer.Option("--log", help="Log each answer in dsvl's log (dsvl logs), one entry per record.")]


# batch always writes JSONL records, each with its stats: --plain, --json and --stats have nothing to change.
@shared_options(exclude=("plain", "json", "stats"))
def batch(
    inputs: Annotated[Optional[list[str]], typer.Argument(
        metavar="INPUT", help="Batch files (JSONL, OpenAI batch JSONL, TSV or plain lines), Parquet files, folders of "
        "images (with --prompt), local or s3://...; stdin when none or -.", show_default=False)] = None,
    output: Annotated[Optional[Path], typer.Option(
        "-o", "--output", dir_okay=False,
        help="Write JSONL here (Parquet for *.parquet; overwritten unless --resume); default stdout.")] = None,
    prompt: Annotated[Optional[str], typer.Option(
        "--prompt",
        help="The question for records without one (plain lines of image sources, TSV, JSONL).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(
        "--batch-size",
        help="Questions per generate call [default: 8 on CPU, 16-32 on CUDA by free memory]; "
        "with --server, requests open at once [default: twice the server's batch size].")] = None,
    resume: Annotated[bool, typer.Option(
        "--resume",
        help="Append to -o FILE, skipping ids already answered (or failed) there.")] = False,
    retry_failed: Annotated[bool, typer.Option(
        "--retry-failed",
        help="Like --resume, but first drop the error records from -o FILE and redo them.")] = False,
    log: _Log = False, ray: _Ray = False,
    ray_address: _RayAddress = None,
    workers: _Workers = None,
    *,
    opts: CommonOptions,
) -> None:
    """Answer many questions from JSONL, TSV or plain lines; write one JSONL record per input record.

    \b
    Input, per line (blank lines skipped; image paths relative to the current directory):
      {"id": "q1", "image": "a.jpg", "prompt": "What is this?"}       ("images": [...] for several)
      {"custom_id": "q2", "body": {"messages": [...]}}                 (OpenAI batch-file shape)
      a.jpg<TAB>What is this?                                          (TSV)
      a.jpg                                                            (plain; with --prompt)
    JSONL records may set system, max_new_tokens, temperature, top_p, top_k, repetition_penalty,
    seed and stop. A record without an id gets its line number as id. Ids must be unique: an id
    given twice is refused before anything runs (exit 2, naming both lines).

    \b
    Output: {"id", "image" | "images", "answer", "finish_reason", "stats"} or
    {"id", "line", "image" | "images", "error": {"type", "message"}}, written and flushed as each
    record finishes ("image" for one image, "images" for none or several; long data: URIs are
    shortened; a line that could not be parsed has neither). Records come out in COMPLETION
    order, not input order: match them by id. Bad records (broken image, malformed JSON, missing
    prompt) get an error record and the run goes on.
    -o FILE must not be one of the inputs (exit 2). --resume counts a line as done only if it is
    a dsvl record with an answer or an error, and keeps FILE's permissions.

    \b
    With --server URL (or DSVL_SERVER) a running `dsvl serve` answers: several requests are open at
    once so the server batches them; output, resume and exit codes are the same.

    \b
    With --ray, Ray Data runs the job (records in INPUT order; a worker that dies is restarted).
    Inputs may also be Parquet, folders of images (with --prompt), s3:// addresses; -o *.parquet.

    \b
    Exit: 0 all answered; 1 any record failed, or the output was closed early (`| head`: the
    summary on stderr says how many were left); 2 bad usage; 130 Ctrl-C, 143 SIGTERM (what finished
    is written, the summary printed; rerun with --resume -o FILE to finish the rest).

    \b
    Examples:
      cat examples/jobs.jsonl | dsvl batch > answers.jsonl
      dsvl batch jobs.jsonl -o answers.jsonl --resume
      ls photos/*.jpg | dsvl batch --prompt "Describe this photo." -o captions.jsonl
    """
    from dsvl_cli.batch.runner import RayOptions, run_batch
    from dsvl_cli.errors import ExitCode, guarded

    with guarded(opts.debug):
        summary = run_batch(inputs or [], output=output, prompt=prompt, batch_size=batch_size,
                            resume=resume, retry_failed=retry_failed, opts=opts,
                            ray=RayOptions(ray or ray_address is not None, ray_address, workers), log=log)
    if summary.stopped_by == "terminated":
        raise typer.Exit(128 + signal.SIGTERM)
    if summary.stopped_by == "interrupted":
        raise typer.Exit(int(ExitCode.INTERRUPTED))
    if summary.failed or summary.failed_before or summary.stopped_by:  # "output closed": records left
        raise typer.Exit(int(ExitCode.FAILURE))
