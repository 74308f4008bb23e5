"""Benchmark files for `dsvl eval`: VLMEvalKit's multiple-choice TSVs and JSONL records -> Rows.

TSV (VLMEvalKit's format, `docs/en/Development.md`; pandas writes it, csv quoting included):
columns `index`, `image` (base64; or the `index` of an earlier row with the same picture, as
MMBench does; or a list of them for several pictures) or `image_path` (a path or URL), `question`,
`hint`, option columns `A`, `B`, ... (single capital letters; an empty cell: no such option in that
row), `answer` (a letter), `category`, `l2-category`, `split`. An empty cell or `nan` is missing.

JSONL, one record a line: `{"index" or "id", "image" or "images", "question", "hint", "options":
["cat", "dog"] | {"A": "cat", "B": "dog"}, "answer": "B" (or the option's text), "category"}`.

Yes/no sets (POPE): no options anywhere and every answer `yes` or `no` (any case).

Paths (image_path, JSONL image) are relative to the file's folder. Refused in one line (UsageError,
exit 2): a file without an `answer` column (or a record without `answer`), without options (and not
a yes/no set), without `question`, or with an index twice. A row that cannot be asked (an answer
that is not one of its options, a malformed JSON line) keeps its place with a `problem`: the run
writes an error record for it and goes on. No torch here.
"""

from __future__ import annotations

import ast
import csv
import json
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsvl_cli.errors import UsageError, load_json

LETTERS = string.ascii_uppercase
YES_NO = ("Yes", "No")
_MISSING = ("", "nan", "NaN")
_URI = re.compile(r"^(https?://|data:)", re.IGNORECASE)
_FIELD_LIMIT = 1 << 30  # a base64 picture is one cell; csv's default limit (128 KiB) is a small JPEG


@dataclass(frozen=True)
class Row:
    """One benchmark question as the file gives it."""

    index: Any  # int (digits in a TSV) or str, written back as given
    line: int
    question: str
    answer: str  # a letter, or "Yes" / "No"
    options: tuple[tuple[str, str], ...] = ()  # (letter, text), in letter order; () for yes/no
    images: tuple[str, ...] = ()  # image sources: data: URIs, paths, URLs
    hint: str | None = None
    category: str | None = None
    l2_category: str | None = None
    problem: str | None = None  # why this row cannot be asked: it becomes an error record

    @property
    def yes_no(self) -> bool:
        return not self.options and self.answer in YES_NO


@dataclass
class _Cells:
    """One TSV row's raw cells, for the checks shared with JSONL."""

    line: int
    values: dict = field(default_factory=dict)

    def get(self, name: str) -> str | None:
        value = self.values.get(name)
        if value is None or value.strip() in _MISSING:
            return None
        return value


def read_rows(path: Path) -> list[Row]:
    """Every row of a TSV or JSONL benchmark file (JSONL: the name ends in .jsonl/.json, or the
    first character is `{`). Raises UsageError for a file that cannot be evaluated."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            head = f.read(1)
    except OSError as exc:
        raise UsageError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not UTF-8 text (give a VLMEvalKit TSV or JSONL records)") from None
    jsonl = path.suffix.lower() in (".jsonl", ".json") or head == "{"
    rows = _read_jsonl(path) if jsonl else _read_tsv(path)
    if not rows:
        raise UsageError(f"{path}: no rows")
    _refuse_duplicates(rows, path)
    return rows


def _read_tsv(path: Path) -> list[Row]:
    csv.field_size_limit(max(csv.field_size_limit(), _FIELD_LIMIT))
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f, delimiter="\t")
            columns = reader.fieldnames or []
            cells = [_Cells(reader.line_num, row) for row in reader]
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not UTF-8 text") from None
    except csv.Error as exc:
        raise UsageError(f"{path}: not a readable TSV: {exc}") from None
    for needed, what in (("question", "the question"), ("answer", "the correct option's letter; test splits "
                                                                    "carry no answers")):
        if needed not in columns:
            raise UsageError(f"{path}: no `{needed}` column ({what}); columns: {_names(columns)}")
    letters = [c for c in columns if len(c) == 1 and c in LETTERS]
    if not letters and not _all_yes_no(c.get("answer") for c in cells):
        raise UsageError(f"{path}: no option columns (`A`, `B`, ...) and the answers are not yes/no; "
                         f"columns: {_names(columns)}")
    pictures = {str(c.get("index")): c.get("image") for c in cells if c.get("image") is not None}
    return [_tsv_row(c, sorted(letters), pictures, path.parent) for c in cells]


def _tsv_row(cells: _Cells, letters: list[str], pictures: dict, folder: Path) -> Row:
    options = tuple((k, cells.get(k).strip()) for k in letters if cells.get(k) is not None)
    index = _index(cells.get("index"), cells.line)
    images = _tsv_images(cells, pictures, folder)
    return _row(index, cells.line, cells.get("question"), cells.get("answer"), options, images,
                hint=cells.get("hint"), category=cells.get("category"),
                l2=cells.get("l2-category") or cells.get("l2_category"))


def _tsv_images(cells: _Cells, pictures: dict, folder: Path) -> tuple[str, ...]:
    """`image` (base64, a reference to another row's index, or a list) before `image_path`."""
    value = cells.get("image")
    if value is not None:
        return tuple(_base64_source(pictures.get(v, v) if len(v) <= 64 else v) for v in _listed(value))
    value = cells.get("image_path")
    if value is not None:
        return tuple(_path_source(v, folder) for v in _listed(value))
    return ()


def _read_jsonl(path: Path) -> list[Row]:
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not UTF-8 text") from None
    rows, any_options = [], False
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            data = load_json(text)
        except json.JSONDecodeError as exc:
            rows.append(Row(number, number, "", "", problem=f"malformed JSON: {exc.msg} (column {exc.colno})"))
            continue
        if not isinstance(data, dict):
            rows.append(Row(number, number, "", "", problem="a record must be a JSON object"))
            continue
        if data.get("answer") is None:
            raise UsageError(f"{path} line {number}: no `answer` field (the correct option's letter)")
        any_options = any_options or bool(data.get("options"))
        rows.append(_json_row(data, number, path.parent))
    if not any_options and not _all_yes_no(r.answer for r in rows if r.problem is None):
        raise UsageError(f"{path}: no `options` in any record and the answers are not yes/no")
    return rows


def _json_row(data: dict, number: int, folder: Path) -> Row:
    index = data.get("index", data.get("id", number))
    if isinstance(index, bool) or not isinstance(index, (int, str)):
        return Row(number, number, "", "", problem="index must be a string or an integer")
    options, problem = _json_options(data.get("options"))
    images = data.get("images", [] if data.get("image") is None else [data["image"]])
    if not isinstance(images, list) or not all(isinstance(s, str) for s in images):
        return Row(index, number, "", "", problem="image must be a string and images a list of strings")
    answer = data["answer"]
    if not isinstance(answer, str):
        return Row(index, number, "", "", problem="answer must be a string (a letter)")
    by_text = {text: letter for letter, text in options}
    question = data.get("question")
    row = _row(index, number, question if isinstance(question, str) else None, by_text.get(answer, answer),
               options, tuple(_path_source(s, folder) for s in images), hint=_text(data.get("hint")),
               category=_text(data.get("category")), l2=_text(data.get("l2-category", data.get("l2_category"))))
    return row if problem is None else Row(index, number, row.question, row.answer, problem=problem)


def _json_options(value) -> tuple[tuple[tuple[str, str], ...], str | None]:
    if value is None or value == [] or value == {}:
        return (), None
    if isinstance(value, list) and len(value) <= len(LETTERS) and all(isinstance(v, str) for v in value):
        return tuple(zip(LETTERS, (v.strip() for v in value))), None
    if isinstance(value, dict) and all(isinstance(k, str) and len(k) == 1 and k.upper() in LETTERS
                                       and isinstance(v, str) for k, v in value.items()):
        return tuple(sorted((k.upper(), v.strip()) for k, v in value.items())), None
    return (), "options must be a list of strings or an object {letter: text}"


def _row(index, line: int, question: str | None, answer: str | None, options, images, *, hint, category,
         l2) -> Row:
    """A Row, or one with a `problem` when its question or answer cannot be asked or scored."""
    answer = (answer or "").strip()
    problem = None
    if not question or not question.strip():
        problem = "no question"
    elif not options:
        if answer.lower() in ("yes", "no"):
            answer = answer.capitalize()
        else:
            problem = f"no options, and the answer {answer!r} is not yes or no"
    elif len(options) < 2:
        problem = "fewer than two options"
    else:
        answer = answer.upper() if len(answer) == 1 else answer
        if answer not in {letter for letter, _ in options}:
            problem = f"the answer {answer!r} is not one of the options {', '.join(k for k, _ in options)}"
    return Row(index, line, (question or "").strip(), answer, tuple(options), tuple(images), hint=hint,
               category=category, l2_category=l2, problem=problem)


def _base64_source(value: str) -> str:
    """A TSV `image` cell as an image source: a URL or data: URI as given, base64 as a data: URI."""
    value = value.strip()
    if _URI.match(value):
        return value
    kind = "png" if value.startswith("iVBOR") else "gif" if value.startswith("R0lG") else \
        "webp" if value.startswith("UklG") else "jpeg"
    return f"data:image/{kind};base64,{value}"


def _path_source(value: str, folder: Path) -> str:
    value = value.strip()
    if _URI.match(value):
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else folder / path)


def _listed(value: str) -> list[str]:
    """A cell holding a Python list of strings (VLMEvalKit's several pictures), or one value."""
    if value.lstrip().startswith("["):
        try:
            items = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return [value]
        if isinstance(items, list) and all(isinstance(v, str) for v in items):
            return items
    return [value]


def _index(value: str | None, line: int):
    if value is None:
        return line
    value = value.strip()
    return int(value) if re.fullmatch(r"-?\d+", value) else value


def _text(value) -> str | None:
    return value.strip() or None if isinstance(value, str) else None if value is None else str(value)


def _all_yes_no(answers) -> bool:
    seen = [a for a in answers if a is not None]
    return bool(seen) and all(a.strip().lower() in ("yes", "no") for a in seen)


def _names(columns: list[str]) -> str:
    return ", ".join(columns[:12]) + (", ..." if len(columns) > 12 else "") if columns else "(none)"


def _refuse_duplicates(rows: list[Row], path: Path) -> None:
    seen: dict[str, Row] = {}
    for row in rows:
        key = json.dumps(row.index)
        first = seen.setdefault(key, row)
        if first is not row:
            raise UsageError(f"{path}: index {key} is given twice (lines {first.line} and {row.line}); "
                             "indexes must be unique")
