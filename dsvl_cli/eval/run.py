"""`dsvl eval FILE`: every question of a benchmark file through batch's machinery, then the numbers.

Each question (a row, or one rotation of it with --circular) becomes a batch Record: likelihood
(the default) asks for the option labels' scores (`--choices`, engine/scoring.py), the prediction
being the most probable label (the first on a tie); generate asks for a greedy answer, read by
eval/extract.py. batch.runner.answer_items answers them: batched, progress on stderr, Ctrl-C,
--server and --keep-alive as in `dsvl batch`. Each answer becomes an item record here, written and
flushed to -o FILE at once; the summary (eval/metrics.py) covers every row of the file.

Item records, one per question: `index` (+ `rotation`), `prediction`, `answer`, `correct`,
`probabilities` {label: p} (likelihood) or `output` and `parsed` (generate), `prompt` (the exact
text sent), `choices` (the labels scored), `category`, `image`/`images`, `method`; or `index`,
`error` {type, message}, `prompt`, `method` for a row that failed (a broken image).

--resume -o FILE: questions with a record in FILE are not asked again (errors included); a torn
last line is dropped. A record whose prompt or method differs from this run's is refused (exit 2):
FILE belongs to another file or other options. No torch here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from dsvl_cli.batch.records import BadRecord, Record
from dsvl_cli.batch.output import Summary, Writer, open_output
from dsvl_cli.errors import DsvlError, UsageError, load_json
from dsvl_cli.eval import extract, metrics
from dsvl_cli.eval.files import read_rows
from dsvl_cli.eval.prompt import Question, questions
from dsvl_cli.images.limits import display_source
from dsvl_cli.userfiles import write_atomic

METHODS = ("likelihood", "generate")


@dataclass
class Plan:
    """What one `dsvl eval` run does, checked before anything is read or loaded."""

    path: Path
    method: str = "likelihood"
    circular: bool = False
    limit: int | None = None
    output: Path | None = None
    resume: bool = False
    batch_size: int | None = None
    max_new_tokens: int = 32

    def check(self) -> None:
        if self.method not in METHODS:
            raise UsageError(f"--method {self.method}: give likelihood or generate")
        if self.resume and self.output is None:
            raise UsageError("--resume needs -o FILE (the item records of the earlier run)")
        for flag, value in (("--limit", self.limit), ("--batch-size", self.batch_size),
                            ("-n", self.max_new_tokens)):
            if value is not None and value < 1:
                raise UsageError(f"{flag} {value}: must be at least 1")
        if self.output is not None and self.output.exists() and self.output.resolve() == self.path.resolve():
            raise UsageError(f"-o {self.output}: is also the benchmark file; write the items to another file")


@dataclass
class Outcome:
    summary: dict
    items: dict[int, dict] = field(default_factory=dict)  # question key -> item record
    stopped_by: str = ""
    seconds: float = 0.0
    asked: int = 0  # questions answered (or failed) by this run


def evaluate(plan: Plan, opts) -> Outcome:
    """The whole run; raises UsageError for a file or options that cannot be evaluated."""
    from dsvl_cli.batch.runner import answer_items

    from dsvl_cli.conversation import check_text

    plan.check()
    if opts.generation.system is not None:
        check_text(opts.generation.system, "--system")
    rows = read_rows(plan.path)[:plan.limit]
    asked = questions(rows, circular=plan.circular)
    done = read_items(plan.output, asked, plan.method) if plan.resume else {}
    todo = [_record(q, plan, opts) for q in asked if q.key not in done]
    stream = open_output(plan.output, append=plan.resume) if plan.output is not None else None
    summary = Summary(skipped=len(done))
    sink: list[_Items] = []

    def make_writer(advance):
        sink.append(_Items(asked, plan.method, Writer(stream) if stream else None, advance))
        return sink[0]

    try:
        answer_items(todo, make_writer, summary, opts=opts, batch_size=plan.batch_size, label="eval",
                     show=opts.env.stderr_console().is_terminal)
    finally:
        if stream is not None:
            stream.close()
    items = {**done, **(sink[0].items if sink else {})}
    result = metrics.summarise(rows, asked, items)
    result.update(file=str(plan.path), model=opts.server or opts.model.model, method=plan.method,
                  circular=plan.circular)
    return Outcome(result, items, summary.stopped_by, summary.seconds, summary.done + summary.failed)


def _record(q: Question, plan: Plan, opts) -> Record | BadRecord:
    from dsvl_cli.conversation import check_text
    from dsvl_cli.structured.spec import choices_format

    if q.row.problem is not None:
        return BadRecord(q.key, q.row.line, "invalid_row", q.row.problem)
    try:
        check_text(q.prompt, f"row {q.row.index}'s question")  # the image placeholder would break the count
    except DsvlError as err:
        return BadRecord(q.key, q.row.line, err.kind, err.message)
    if plan.method == "likelihood":
        gen = opts.generation.replace(answer_format=choices_format(list(q.labels)))
    else:
        gen = opts.generation.replace(answer_format=None, max_new_tokens=plan.max_new_tokens)
    return Record(q.key, q.row.line, q.prompt, list(q.row.images), opts.generation.system, gen)


class _Items:
    """batch's writer for eval: each batch record becomes an item record, kept and written to -o."""

    def __init__(self, asked: list[Question], method: str, out: Writer | None, on_write):
        self.by_key = {q.key: q for q in asked}
        self.method, self.out, self.on_write = method, out, on_write
        self.items: dict[int, dict] = {}

    @property
    def closed(self) -> bool:
        return self.out is not None and self.out.closed

    def write(self, obj: dict) -> None:
        question = self.by_key[obj["id"]]
        item = item_record(question, obj, self.method)
        if self.out is not None:
            self.out.write(item)
        self.items[question.key] = item
        if self.on_write:
            self.on_write()


def item_record(q: Question, obj: dict, method: str) -> dict:
    """The item record of question `q` from batch's output record `obj` (an answer or an error)."""
    head = {"index": q.row.index, **({"rotation": q.rotation} if q.rotation is not None else {})}
    if "error" in obj:
        return {**head, "error": obj["error"], "prompt": q.prompt, "method": method}
    if method == "likelihood":
        scores = {s["label"]: s["probability"] for s in obj.get("scores") or []}
        if set(scores) != set(q.labels):
            return {**head, "error": {"type": "generation_error", "message": "no label scores in the answer"},
                    "prompt": q.prompt, "method": method}
        prediction = obj["answer"]
        body = {"prediction": prediction, "answer": q.answer, "correct": prediction == q.answer,
                "probabilities": {label: scores[label] for label in q.labels}}
    else:
        text = obj.get("answer") or ""
        prediction = extract.yes_no(text) if q.row.yes_no else extract.letter(text, q.options)
        body = {"prediction": prediction, "answer": q.answer, "correct": prediction == q.answer,
                "parsed": prediction is not None, "output": text}
    return {**head, **body, "prompt": q.prompt, "choices": list(q.labels), "category": q.row.category,
            **_images(q), "method": method}


def _images(q: Question) -> dict:
    shown = [display_source(s) for s in q.row.images]
    return {"image": shown[0]} if len(shown) == 1 else {"images": shown}


def read_items(path: Path, asked: list[Question], method: str) -> dict[int, dict]:
    """The item records an earlier run left in `path`, by question key (a torn last line is
    dropped from the file). Refuses (UsageError) lines that are not this run's item records."""
    if not path.exists():
        return {}
    lookup = {(json.dumps(q.row.index), q.rotation): q for q in asked}
    indexes = {json.dumps(q.row.index) for q in asked}
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)
    except OSError as exc:
        raise UsageError(f"{path}: cannot read it for --resume: {exc.strerror or exc}") from None
    done: dict[int, dict] = {}
    for number, text in enumerate(lines, start=1):
        if not text.endswith("\n"):  # a torn last line, from a killed run
            write_atomic(path, "".join(lines[:number - 1]))
            break
        if not text.strip():
            continue
        obj = _parse(text)
        if obj is None or "index" not in obj:
            raise UsageError(f"{path}: line {number} is not a dsvl eval item record; --resume needs the -o FILE "
                             "an earlier dsvl eval wrote")
        q = lookup.get((json.dumps(obj["index"]), obj.get("rotation")))
        if q is None and json.dumps(obj["index"]) in indexes:
            raise UsageError(f"{path}: line {number} (index {obj['index']}) was written "
                             f"{'with' if 'rotation' in obj else 'without'} --circular; resume with the same options, "
                             "or write to a new -o FILE")
        if q is None:
            continue  # a row past --limit, or one an earlier --limit reached: kept, not counted
        if obj.get("prompt") != q.prompt or obj.get("method") != method:
            what = "method" if obj.get("method") != method else "prompt"
            raise UsageError(f"{path}: line {number} (index {obj['index']}) has another {what} than this run; "
                             "resume with the same file and options, or write to a new -o FILE")
        done[q.key] = obj
    return done


def _parse(text: str) -> dict | None:
    try:
        obj = load_json(text)
    except json.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None
