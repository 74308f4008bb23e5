"""`--schema`, `--regex`, `--choices`: what the user typed -> one validated `AnswerFormat`.

An `AnswerFormat` travels inside `GenerationSettings` (settings.py), so every path that carries
the sampling options (ask, chat, batch records, serve requests, --server) carries it too, and
requests with the same format batch together (it is frozen and hashable).

The schema short form is simonw/llm's (`llm --schema 'name, age int, bio: a short bio'`): fields
separated by commas (or by newlines when there is one), each `NAME [TYPE][: DESCRIPTION]` with TYPE
one of str (the default), int, float, bool; every field is required and no other is allowed
(`additionalProperties: false`: a program reading the answer gets exactly these keys).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from dsvl_cli.errors import UsageError, load_json

KINDS = ("json_schema", "regex", "choices", "decisions")
_SHORT_TYPES = {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}
_FIELD = re.compile(r"^(?P<name>[A-Za-z_][\w-]*)(?:\s+(?P<type>\w+))?\s*(?::\s*(?P<desc>.*))?$")


@dataclass(frozen=True)
class AnswerFormat:
    """What the answer must look like. `schema`: compact JSON text, key order kept (hashable);
    `choices`: labels."""

    kind: str
    schema: str | None = None
    regex: str | None = None
    choices: tuple[str, ...] = ()
    # decisions (dsvl decide, POST /v1/decisions): the checked questions (decide/questions.py) and a
    # key of the request's own, so that two requests never share a batch (they are scored, not generated)
    questions: tuple = ()
    request: str = ""
    source: str = field(default="", compare=False)  # as the user gave it: named in errors, not part
    # of the format's identity (the same schema from two files compiles once and batches together)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown answer format {self.kind!r}")

    @property
    def schema_dict(self) -> dict | None:
        return json.loads(self.schema) if self.schema is not None else None

    def describe(self) -> str:
        """In a few words, for a settings display (chat's /set)."""
        if self.kind == "json_schema":
            return f"schema {_short(self.source)}"
        if self.kind == "regex":
            return f"regex {self.regex!r}"
        if self.kind == "decisions":
            return f"{len(self.questions)} questions"
        return f"choices {', '.join(self.choices)}"

    def to_dict(self) -> dict:
        """For --json and records: {"type": ..., and the schema / regex / choices}."""
        if self.kind == "json_schema":
            return {"type": "json_schema", "schema": self.schema_dict}
        if self.kind == "regex":
            return {"type": "regex", "regex": self.regex}
        if self.kind == "decisions":
            return {"type": "decisions", "questions": [q.to_api() for q in self.questions]}
        return {"type": "choices", "choices": list(self.choices)}


def decisions_format(questions: tuple) -> AnswerFormat:
    """The format that asks `questions` (decide/questions.py) about the input instead of generating."""
    import uuid

    return AnswerFormat("decisions", questions=tuple(questions), request=uuid.uuid4().hex)


def _short(text: str) -> str:
    return text if len(text) <= 60 else text[:57] + "..."


def short_form_schema(text: str, flag: str = "--schema") -> dict:
    """llm's concise syntax -> a JSON Schema object with every field required."""
    parts = text.splitlines() if "\n" in text else text.split(",")
    properties: dict = {}
    for part in (p.strip() for p in parts):
        if not part:
            continue
        match = _FIELD.match(part)
        if not match:
            raise UsageError(f"{flag} {_short(text)!r}: cannot read the field {part!r} "
                             "(write NAME [TYPE][: DESCRIPTION], TYPE one of str, int, float, bool)")
        name, kind, desc = match["name"], match["type"] or "str", match["desc"]
        if kind not in _SHORT_TYPES:
            raise UsageError(f"{flag} {_short(text)!r}: field {name!r} has type {kind!r}; use str, int, float or bool")
        if name in properties:
            raise UsageError(f"{flag} {_short(text)!r}: field {name!r} is given twice")
        properties[name] = {"type": _SHORT_TYPES[kind], **({"description": desc.strip()} if desc else {})}
    if not properties:
        raise UsageError(f"{flag} {_short(text)!r}: no fields")
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


def _load_schema_text(text: str, flag: str) -> object:
    """The parsed JSON or short-form schema, from inline JSON, a file or the short form."""
    stripped = text.strip()
    if not stripped:
        raise UsageError(f"{flag} is empty")
    if stripped[0] in "{[":
        body = stripped
    else:
        path = Path(stripped).expanduser()
        try:
            is_file = path.is_file()
        except (OSError, ValueError):
            is_file = False
        if is_file:
            try:
                body = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as err:
                raise UsageError(f"{flag} {stripped}: cannot read the file ({err})") from None
        elif stripped.lower().endswith(".json") or "/" in stripped:
            raise UsageError(f"{flag} {stripped}: no such file")
        else:
            return short_form_schema(stripped, flag)
    try:
        return load_json(body)
    except json.JSONDecodeError as err:
        raise UsageError(f"{flag} {_short(stripped)}: not JSON ({err.msg} at line {err.lineno} column {err.colno})") from None


def parse_schema(text: str, flag: str = "--schema") -> AnswerFormat:
    """A JSON Schema from a file, inline JSON or the short form; checked against the JSON Schema
    meta-schema (UsageError naming it and the reason)."""
    schema = _load_schema_text(text, flag)
    return schema_format(schema, source=text.strip(), flag=flag)


def schema_format(schema: object, *, source: str = "schema", flag: str = "--schema") -> AnswerFormat:
    """An already parsed schema (a serve request's, a batch record's) -> AnswerFormat, checked."""
    if not isinstance(schema, dict):
        raise UsageError(f"{flag} {_short(source)}: a JSON Schema is a JSON object, not {type(schema).__name__}")
    import jsonschema

    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.exceptions.SchemaError as err:
        where = "/".join(str(p) for p in err.absolute_path) or "top level"
        raise UsageError(f"{flag} {_short(source)}: not a valid JSON Schema at {where}: "
                         f"{err.message.splitlines()[0][:160]}") from None
    # Key order kept: the answer's properties come out in the order the schema lists them.
    fmt = AnswerFormat("json_schema", schema=json.dumps(schema, separators=(",", ":"), ensure_ascii=False),
                       source=source)
    _compiles(fmt, flag)
    return fmt


def parse_regex(text: str, flag: str = "--regex") -> AnswerFormat:
    """A pattern in Rust's `regex` syntax (what the grammar engine takes: `\\p{L}` works, look-around
    and backreferences do not), checked by llguidance itself."""
    if not text:
        raise UsageError(f"{flag} is empty")
    fmt = AnswerFormat("regex", regex=text, source=text)
    _compiles(fmt, flag)
    return fmt


def _compiles(fmt: AnswerFormat, flag: str) -> None:
    """What the meta-schema allows but the grammar engine cannot do (`not`, `uniqueItems`, an
    unknown `format`, a regex with look-around) is refused here too, before any model loads."""
    from dsvl_cli.structured.grammar import check

    check(fmt, flag)


def parse_choices(text: str, flag: str = "--choices") -> AnswerFormat:
    """`a,b,c`, or `@FILE` with one label per line."""
    if text.startswith("@"):
        path = Path(text[1:]).expanduser()
        try:
            labels = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise UsageError(f"{flag} {text}: cannot read the file ({getattr(err, 'strerror', None) or err})") from None
    else:
        labels = text.split(",")
    return choices_format(labels, source=text, flag=flag)


def choices_format(labels: list, *, source: str = "choices", flag: str = "--choices") -> AnswerFormat:
    """Labels (a serve request's list, a batch record's) -> AnswerFormat: at least two, none empty,
    none twice."""
    if not isinstance(labels, (list, tuple)) or not all(isinstance(label, str) for label in labels):
        raise UsageError(f"{flag} {_short(str(source))}: give a list of labels (strings)")
    cleaned = [label.strip() for label in labels]
    if any(not label for label in cleaned):
        raise UsageError(f"{flag} {_short(str(source))}: a label is empty")
    seen: set[str] = set()
    for label in cleaned:
        if label in seen:
            raise UsageError(f"{flag} {_short(str(source))}: the label {label!r} is given twice")
        seen.add(label)
    if len(cleaned) < 2:
        raise UsageError(f"{flag} {_short(str(source))}: give at least two labels to choose from")
    from dsvl_cli.conversation import check_text  # a label is text after the prompt

    for label in cleaned:
        check_text(label, f"{flag} label {_short(label)!r}")
    return AnswerFormat("choices", choices=tuple(cleaned), source=str(source))


def from_options(schema: str | None, regex: str | None, choices: str | None) -> AnswerFormat | None:
    """The one format the flags ask for (UsageError when more than one is given)."""
    given = [(flag, value) for flag, value in (("--schema", schema), ("--regex", regex), ("--choices", choices))
             if value is not None]
    if len(given) > 1:
        raise UsageError(f"{given[0][0]} and {given[1][0]} cannot be used together: choose one answer format")
    if not given:
        return None
    flag, value = given[0]
    return {"--schema": parse_schema, "--regex": parse_regex, "--choices": parse_choices}[flag](value, flag)
