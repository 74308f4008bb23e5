"""Batch input: detect each file's format and turn its lines into records or per-line errors.

Formats, detected per file from its first non-blank line:
- JSONL (the line starts with `{`): `{"id" or "custom_id", "image" or "images", "prompt", "system",
  generation options, "schema", "regex" or "choices": [labels] (scored, not generated),
  "logprobs": N}` per line, or the OpenAI batch-file shape (`custom_id` plus `body.messages` whose
  content parts are `text` and `image_url`; `body.response_format`, `logprobs`/`top_logprobs` and
  vLLM's `structured_outputs`/`guided_*` too). Both shapes may be mixed in one file. A record's
  `schema`, `regex` or `choices` replaces the command's --schema/--regex/--choices. A record with
  `questions` (a list in OpenAI's Decisions API shape, as `dsvl decide --questions`) asks them about
  its images and its optional prompt (the input) and gets `answers`; bad questions: an error record.
- TSV (the line has a tab): `image<TAB>prompt`; an empty image field means no image.
- Plain lines: one image source per line, the question from `--prompt`.
A folder of images, a Parquet file or an `s3://`-style address is read by batch/sources.py.

Blank lines are skipped. `line` counts from 1 in each file. A record without an id gets its line
number as id (`FILE:LINE` when several inputs are given). A bad line never stops the reading: it
becomes a BadRecord carrying its line number, and the run goes on. An id given twice is refused
before anything runs (refuse_duplicates says why). Image paths are relative to the
current directory. No torch here.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TextIO

from dsvl_cli import wire
from dsvl_cli.conversation import check_text
from dsvl_cli.errors import DsvlError, UsageError, load_json
from dsvl_cli.settings import GenerationSettings

# Per-record generation options and the JSON types they accept.
_INT_OPTIONS = ("max_new_tokens", "top_k", "seed")
_FLOAT_OPTIONS = ("temperature", "top_p", "repetition_penalty")
_FORMAT_KEYS = ("schema", "regex", "choices")  # a record's own --schema (an object, or the CLI's forms) / --regex / --choices
_RECORD_KEYS = {"id", "custom_id", "image", "images", "prompt", "system", "stop", *_INT_OPTIONS, *_FLOAT_OPTIONS,
                *_FORMAT_KEYS, "logprobs", "questions"}


@dataclass
class Record:
    """One question to answer: everything the runner needs, validated."""

    id: Any  # str or int, written back as given
    line: int
    prompt: str
    images: list[str] = field(default_factory=list)
    system: str | None = None
    gen: GenerationSettings = field(default_factory=GenerationSettings)
    input: str | None = None  # the input's name, set when several inputs are given


@dataclass
class BadRecord:
    """A line that cannot become a Record; written out as an error record."""

    id: Any
    line: int
    type: str
    message: str
    input: str | None = None


def id_key(value: Any) -> str:
    """Ids compare as JSON values: 3 and "3" are different ids."""
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


class _BadLine(Exception):
    def __init__(self, kind: str, message: str, id_: Any = None):
        super().__init__(message)
        self.kind, self.message, self.id = kind, message, id_


def detect_format(lines: list[str]) -> str:
    """jsonl, tsv or plain, from the first non-blank line."""
    for text in lines:
        if text.strip():
            if text.lstrip().startswith("{"):
                return "jsonl"
            return "tsv" if "\t" in text else "plain"
    return "plain"


def parse_lines(lines: list[str], *, base: GenerationSettings, prompt: str | None = None,
                name: str = "<stdin>", qualify_ids: bool = False) -> list[Record | BadRecord]:
    """Every non-blank line of one input as a Record or BadRecord, in order.

    Raises UsageError only for a problem with the whole input (plain lines and no --prompt).
    """
    fmt = detect_format(lines)
    if fmt == "plain" and prompt is None and any(t.strip() for t in lines):
        raise UsageError(f"{name}: plain lines of image sources need --prompt TEXT "
                         "(or give JSONL records or TSV image<TAB>prompt lines)")
    out: list[Record | BadRecord] = []
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        default_id: Any = f"{name}:{number}" if qualify_ids else number
        try:
            if fmt == "jsonl":
                record = _from_json(text, number, default_id, base, prompt)
            elif fmt == "tsv":
                record = _from_tsv(text, number, default_id, base, prompt)
            else:
                record = Record(default_id, number, check_text(prompt or ""), _sources([text.strip()]),
                                base.system, base)
        except _BadLine as bad:
            out.append(BadRecord(default_id if bad.id is None else bad.id, number, bad.kind, bad.message))
            continue
        except DsvlError as err:  # check_text / settings validation
            out.append(BadRecord(default_id, number, err.kind, err.message))
            continue
        out.append(record)
    if qualify_ids:
        for item in out:
            item.input = name
    return out


def refuse_duplicates(items: Iterable[Record | BadRecord], name: str = "<stdin>") -> None:
    """Each id may appear once: a duplicate is a UsageError naming both lines, before anything runs.

    Why refuse the whole input rather than answer the first and write an error for the second:
    two output records with one id (an answer and a `duplicate_id` error) is exactly what a
    consumer matching by id cannot tell apart, and which of the two lines was meant is a guess.
    OpenAI's batch API refuses such a file too. Error records count: they carry their id as well.
    """
    seen: dict[str, Record | BadRecord] = {}
    clashes: list[tuple[Record | BadRecord, Record | BadRecord]] = []
    for item in items:
        first = seen.setdefault(id_key(item.id), item)
        if first is not item:
            clashes.append((first, item))
    if clashes:
        first, again = clashes[0]
        more = f" (and {len(clashes) - 1} more)" if len(clashes) > 1 else ""
        raise UsageError(f"duplicate id {json.dumps(first.id, ensure_ascii=False)}: {_where(first, name)} and "
                         f"{_where(again, name)}{more}; ids must be unique, nothing was run")


def _where(item: Record | BadRecord, name: str) -> str:
    return f"{item.input or name} line {item.line}"


# -- formats ------------------------------------------------------------------------------------


def _from_tsv(text: str, number: int, id_: Any, base: GenerationSettings, prompt: str | None) -> Record:
    image, _, question = text.rstrip("\r\n").partition("\t")
    question = question.strip() or (prompt or "")
    if not question:
        raise _BadLine("usage_error", "no prompt after the tab (and no --prompt)")
    return Record(id_, number, check_text(question), _sources([image.strip()] if image.strip() else []),
                  base.system, base)


def _from_json(text: str, number: int, default_id: Any, base: GenerationSettings, prompt: str | None) -> Record:
    try:
        data = load_json(text)
    except json.JSONDecodeError as exc:
        raise _BadLine("invalid_json", f"malformed JSON: {exc.msg} (column {exc.colno})") from None
    if not isinstance(data, dict):
        raise _BadLine("invalid_json", "a record must be a JSON object")
    id_ = data.get("custom_id", data.get("id", default_id))
    if isinstance(id_, bool) or not isinstance(id_, (str, int)):
        raise _BadLine("invalid_record", "id must be a string or an integer")
    try:
        if "body" in data:
            return _from_openai(data, number, id_, base)
        return _from_plain_json(data, number, id_, base, prompt)
    except _BadLine as bad:
        bad.id = id_
        raise
    except DsvlError as err:
        raise _BadLine(err.kind, err.message, id_) from None


def _from_plain_json(data: dict, number: int, id_: Any, base: GenerationSettings, prompt: str | None) -> Record:
    unknown = sorted(set(data) - _RECORD_KEYS)
    if unknown:
        raise _BadLine("invalid_record", f"unknown field(s): {', '.join(unknown)}")
    if "image" in data and "images" in data:
        raise _BadLine("invalid_record", "give either image or images, not both")
    images = data.get("images", [] if data.get("image") is None else [data["image"]])
    if not isinstance(images, list) or not all(isinstance(s, str) for s in images):
        raise _BadLine("invalid_record", "image must be a string and images a list of strings")
    question = data.get("prompt", prompt)
    if data.get("questions") is not None:
        return _decisions_record(data, number, id_, images, question, base)
    if not isinstance(question, str) or not question.strip():
        raise _BadLine("invalid_record", "missing prompt" if question is None else "prompt must be a non-empty string")
    system = data.get("system", base.system)
    if system is not None and not isinstance(system, str):
        raise _BadLine("invalid_record", "system must be a string")
    options = {k: data[k] for k in (*_INT_OPTIONS, *_FLOAT_OPTIONS, "stop") if k in data}
    answer_format = _record_format(data)
    if answer_format is not None:
        options["answer_format"] = answer_format
    if "logprobs" in data:
        value = data["logprobs"]
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise _BadLine("invalid_record", "logprobs must be an integer (top alternatives per token, 0-20)")
        options["logprobs"] = value
    return Record(id_, number, check_text(question), _sources(images), system, _settings(base, options, system))


def _decisions_record(data: dict, number: int, id_: Any, images: list[str], text: Any,
                      base: GenerationSettings) -> Record:
    """A record of typed questions: its images and optional prompt are the input (dsvl decide's)."""
    from dsvl_cli.decide.questions import parse_questions
    from dsvl_cli.structured.spec import decisions_format

    clash = [k for k in (*_FORMAT_KEYS, "logprobs") if data.get(k) is not None]
    if clash:
        raise _BadLine("invalid_record", f"questions are answered with probabilities: give no {clash[0]} with them")
    if text is not None and not isinstance(text, str):
        raise _BadLine("invalid_record", "prompt must be a string")
    if not images and not (text or "").strip():
        raise _BadLine("invalid_record", "questions need an input: an image or a prompt")
    system = data.get("system", base.system)
    if system is not None and not isinstance(system, str):
        raise _BadLine("invalid_record", "system must be a string")
    questions = parse_questions(data["questions"])
    gen = base.replace(system=system, answer_format=decisions_format(questions), logprobs=None)
    return Record(id_, number, check_text(text or ""), _sources(images), system, gen)


def _record_format(data: dict):
    """A record's `schema` (an object, or a string as --schema takes it), `regex` or `choices` (a
    list of labels: scored instead of generated); None: the command's."""
    from dsvl_cli.structured.spec import choices_format, parse_regex, parse_schema, schema_format

    given = [k for k in _FORMAT_KEYS if data.get(k) is not None]
    if len(given) > 1:
        raise _BadLine("invalid_record", f"give one of schema, regex or choices, not {given[0]} and {given[1]}")
    if not given:
        return None
    value = data[given[0]]
    if given[0] == "choices":
        return choices_format(value, source="choices", flag="choices")
    if given[0] == "regex":
        if not isinstance(value, str):
            raise _BadLine("invalid_record", "regex must be a string")
        return parse_regex(value, "regex")
    if isinstance(value, str):
        return parse_schema(value, "schema")
    return schema_format(value, source=json.dumps(value, ensure_ascii=False), flag="schema")


def _from_openai(data: dict, number: int, id_: Any, base: GenerationSettings) -> Record:
    body = data["body"]
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        raise _BadLine("invalid_record", "body.messages must be a list")
    options: dict = wire.logprob_changes(body)
    for key, value in body.items():
        if key in ("messages", "model", *wire.LOGPROB_FIELDS, *wire.ANSWER_FORMAT_FIELDS) or (key == "n" and value == 1):
            continue  # the command's --model answers; logprobs and the answer format are read apart
        if key not in wire.SAMPLING_FIELDS:
            raise _BadLine("invalid_record", f"unsupported body field: {key}")
        if value is not None:
            options[wire.SAMPLING_FIELDS[key]] = value
    system, user = None, None
    for message in body["messages"]:
        role = message.get("role") if isinstance(message, dict) else None
        if role in ("system", "developer") and system is None and user is None:
            system = _openai_text(message.get("content"), allow_images=False)[0]
        elif role == "user" and user is None:
            user = _openai_text(message.get("content"), allow_images=True)
        else:
            raise _BadLine("invalid_record", "only one user message (after an optional system message) is supported")
    if user is None or not user[0].strip():
        raise _BadLine("invalid_record", "missing prompt: the user message has no text")
    system = base.system if system is None else system
    answer_format = wire.answer_format(body)
    if answer_format is not None:
        options["answer_format"] = answer_format
    return Record(id_, number, check_text(user[0]), _sources(user[1]), system, _settings(base, options, system))


def _openai_text(content: Any, *, allow_images: bool) -> tuple[str, list[str]]:
    if content is None:
        raise _BadLine("invalid_record", "message content must be a string or a list of parts")
    try:
        text, images = wire.split_content(content)
    except ValueError as exc:
        raise _BadLine("invalid_record", str(exc)) from None
    if images and not allow_images:
        raise _BadLine("invalid_record", "unsupported content part: 'image_url'")
    return text, images


def _sources(images: list[str]) -> list[str]:
    if "-" in images:  # stdin may carry the records themselves; it is never an image in a batch
        raise _BadLine("image_error", "image -: stdin cannot be an image source in dsvl batch")
    return images


def _settings(base: GenerationSettings, options: dict, system: str | None) -> GenerationSettings:
    """The command's settings with this record's options applied (type-checked, then validated)."""
    if system is not None:
        check_text(system, "system")
    for key, value in options.items():
        if key in _INT_OPTIONS and (isinstance(value, bool) or not isinstance(value, int)):
            raise _BadLine("invalid_record", f"{key} must be an integer")
        if key in _FLOAT_OPTIONS and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value)):
            raise _BadLine("invalid_record", f"{key} must be a number")
    if "stop" in options:
        stop = options["stop"]
        stop = [stop] if isinstance(stop, str) else stop
        if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
            raise _BadLine("invalid_record", "stop must be a string or a list of non-empty strings")
        options["stop"] = tuple(stop)
    for key in _FLOAT_OPTIONS:
        if options.get(key) is not None:
            options[key] = float(options[key])
    return base.replace(**options, system=system)


def read_inputs(paths: list[str], *, base: GenerationSettings, prompt: str | None = None,
                stdin: TextIO | None = None) -> list[Record | BadRecord]:
    """Every record of every input (`-` or none: stdin). Raises UsageError for an input that cannot
    be read at all, and for an id given twice."""
    paths = paths or ["-"]
    if paths.count("-") > 1:
        raise UsageError("stdin (-) can be given once as an input")
    items: list[Record | BadRecord] = []
    qualify = len(paths) > 1

    def parse(lines: list[str], name: str) -> list[Record | BadRecord]:
        return parse_lines(lines, base=base, prompt=prompt, name=name, qualify_ids=qualify)

    for path in paths:
        if path != "-":  # a file, a folder of images, Parquet, s3://... (batch/sources.py)
            from dsvl_cli.batch.sources import read_path

            items += read_path(path, parse=parse, prompt=prompt)
            continue
        stream = stdin or sys.stdin
        if stream.isatty():
            raise UsageError("no input: give a FILE, or pipe records in (cat jobs.jsonl | dsvl batch)")
        raw = getattr(stream, "buffer", None)  # bytes, decoded as files are: a bad byte spoils one line only
        text = raw.read().decode("utf-8", errors="replace") if raw is not None else stream.read()
        items += parse(text.splitlines(), "<stdin>")
    refuse_duplicates(items, "<stdin>" if paths == ["-"] else paths[0])
    return items
