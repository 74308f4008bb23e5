"""One Entry validated into a Record (or a BadRecord saying why it cannot be answered).

A record's fields, from a JSONL line, a Parquet row, a folder's file or a document's page:
`{"id" or "custom_id", "image" or "images", "prompt", "system", generation options, "schema",
"regex" or "choices": [labels] (scored, not generated), "logprobs": N}`, or the OpenAI batch-file
shape (`custom_id` plus `body.messages` whose content parts are `text` and `image_url`;
`body.response_format`, `logprobs`/`top_logprobs` and vLLM's `structured_outputs`/`guided_*` too).
Both shapes may be mixed in one input. A record's `schema`, `regex` or `choices` replaces the
command's --schema/--regex/--choices. A record with `questions` (a list in OpenAI's Decisions API
shape, as `dsvl decide --questions`) asks them about its images and its optional prompt (the
input) and gets `answers`; bad questions: an error record. No torch here.
"""

from __future__ import annotations

import json
import math
from typing import Any

from dsvl_cli import wire
from dsvl_cli.batch.records import BadRecord, Entry, Record
from dsvl_cli.conversation import check_text
from dsvl_cli.errors import DsvlError
from dsvl_cli.settings import GenerationSettings

# Per-record generation options and the JSON types they accept.
_INT_OPTIONS = ("max_new_tokens", "top_k", "seed")
_FLOAT_OPTIONS = ("temperature", "top_p", "repetition_penalty")
_FORMAT_KEYS = ("schema", "regex", "choices")  # a record's own --schema (an object, or the CLI's forms) / --regex / --choices
_RECORD_KEYS = {"id", "custom_id", "image", "images", "prompt", "system", "stop", *_INT_OPTIONS, *_FLOAT_OPTIONS,
                *_FORMAT_KEYS, "logprobs", "questions"}
# An OpenAI body's fields a record may hold: the command's --model answers whatever `model` says.
_BODY_FIELDS = {"messages", "model", *wire.SAMPLING_FIELDS, *wire.LOGPROB_FIELDS, *wire.ANSWER_FORMAT_FIELDS}


class _Refused(Exception):
    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind, self.message = kind, message


def validate(entry: Entry, default_id: Any, base: GenerationSettings, prompt: str | None) -> Record | BadRecord:
    """`entry` as a Record with the command's settings `base` and --prompt `prompt` applied, or the
    BadRecord (its id when it has a usable one, else `default_id`) that says what is wrong."""
    id_ = default_id
    try:
        if entry.problem is not None:
            raise _Refused(*entry.problem)
        if entry.fields is None:
            return _from_line(entry, id_, base, prompt)
        id_ = entry.fields.get("custom_id", entry.fields.get("id", default_id))
        if isinstance(id_, bool) or not isinstance(id_, (str, int)):
            id_ = default_id
            raise _Refused("invalid_record", "id must be a string or an integer")
        if "body" in entry.fields:
            return _from_openai(entry.fields, entry.line, id_, base)
        return _from_fields(entry.fields, entry.line, id_, base, prompt)
    except _Refused as bad:
        return BadRecord(id_, entry.line, bad.kind, bad.message)
    except DsvlError as err:  # check_text / settings validation
        return BadRecord(id_, entry.line, err.kind, err.message)


def _from_line(entry: Entry, id_: Any, base: GenerationSettings, prompt: str | None) -> Record:
    """A TSV line (image, question) or a plain line (an image; the question is --prompt)."""
    question = entry.question or prompt
    if not question:
        raise _Refused("usage_error", "no prompt after the tab (and no --prompt)")
    return Record(id_, entry.line, check_text(question), _sources([entry.image] if entry.image else []),
                  base.system, base)


def _from_fields(data: dict, number: int, id_: Any, base: GenerationSettings, prompt: str | None) -> Record:
    unknown = sorted(set(data) - _RECORD_KEYS)
    if unknown:
        raise _Refused("invalid_record", f"unknown field(s): {', '.join(unknown)}")
    if "image" in data and "images" in data:
        raise _Refused("invalid_record", "give either image or images, not both")
    images = data.get("images", [] if data.get("image") is None else [data["image"]])
    if not isinstance(images, list) or not all(isinstance(s, str) for s in images):
        raise _Refused("invalid_record", "image must be a string and images a list of strings")
    question = data.get("prompt", prompt)
    if data.get("questions") is not None:
        return _decisions_record(data, number, id_, images, question, base)
    if not isinstance(question, str) or not question.strip():
        raise _Refused("invalid_record", "missing prompt" if question is None else "prompt must be a non-empty string")
    system = _system(data, base)
    options = {k: data[k] for k in (*_INT_OPTIONS, *_FLOAT_OPTIONS, "stop") if k in data}
    answer_format = _record_format(data)
    if answer_format is not None:
        options["answer_format"] = answer_format
    if "logprobs" in data:
        value = data["logprobs"]
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise _Refused("invalid_record", "logprobs must be an integer (top alternatives per token, 0-20)")
        options["logprobs"] = value
    return Record(id_, number, check_text(question), _sources(images), system, _settings(base, options, system))


def _system(data: dict, base: GenerationSettings) -> str | None:
    system = data.get("system", base.system)
    if system is not None and not isinstance(system, str):
        raise _Refused("invalid_record", "system must be a string")
    return system


def _decisions_record(data: dict, number: int, id_: Any, images: list[str], text: Any,
                      base: GenerationSettings) -> Record:
    """A record of typed questions: its images and optional prompt are the input (dsvl decide's)."""
    from dsvl_cli.decide.questions import parse_questions
    from dsvl_cli.structured.spec import decisions_format

    clash = [k for k in (*_FORMAT_KEYS, "logprobs") if data.get(k) is not None]
    if clash:
        raise _Refused("invalid_record", f"questions are answered with probabilities: give no {clash[0]} with them")
    if text is not None and not isinstance(text, str):
        raise _Refused("invalid_record", "prompt must be a string")
    if not images and not (text or "").strip():
        raise _Refused("invalid_record", "questions need an input: an image or a prompt")
    system = _system(data, base)
    questions = parse_questions(data["questions"])
    gen = base.replace(system=system, answer_format=decisions_format(questions), logprobs=None)
    return Record(id_, number, check_text(text or ""), _sources(images), system, gen)


def _record_format(data: dict):
    """A record's `schema` (an object, or a string as --schema takes it), `regex` or `choices` (a
    list of labels: scored instead of generated); None: the command's."""
    from dsvl_cli.structured.spec import choices_format, parse_regex, parse_schema, schema_format

    given = [k for k in _FORMAT_KEYS if data.get(k) is not None]
    if len(given) > 1:
        raise _Refused("invalid_record", f"give one of schema, regex or choices, not {given[0]} and {given[1]}")
    if not given:
        return None
    value = data[given[0]]
    if given[0] == "choices":
        return choices_format(value, source="choices", flag="choices")
    if given[0] == "regex":
        if not isinstance(value, str):
            raise _Refused("invalid_record", "regex must be a string")
        return parse_regex(value, "regex")
    if isinstance(value, str):
        return parse_schema(value, "schema")
    return schema_format(value, source=json.dumps(value, ensure_ascii=False), flag="schema")


def _from_openai(data: dict, number: int, id_: Any, base: GenerationSettings) -> Record:
    """An OpenAI batch-file line: its `body` read by the same request model as `dsvl serve` reads
    (wire/protocol.py, strict: no "0.5" for a number), within batch's rules: one user message after
    an optional system message, and no field it would ignore (`stream`, `n` > 1, tools...)."""
    from pydantic import ValidationError

    from dsvl_cli.wire.protocol import ChatRequest, first_error, generation_settings

    body = data["body"]
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        raise _Refused("invalid_record", "body.messages must be a list")
    for key, value in body.items():
        if key not in _BODY_FIELDS and not (key == "n" and value == 1):
            raise _Refused("invalid_record", f"unsupported body field: {key}")
    system, user = None, None
    for message in body["messages"]:
        role = message.get("role") if isinstance(message, dict) else None
        if role in ("system", "developer") and system is None and user is None:
            system = _openai_text(message.get("content"), allow_images=False)[0]
        elif role == "user" and user is None:
            user = _openai_text(message.get("content"), allow_images=True)
        else:
            raise _Refused("invalid_record", "only one user message (after an optional system message) is supported")
    if user is None or not user[0].strip():
        raise _Refused("invalid_record", "missing prompt: the user message has no text")
    try:
        request = ChatRequest.model_validate(body, strict=True)
    except ValidationError as exc:
        raise _Refused("invalid_record", "body." + first_error(exc)) from None
    system = base.system if system is None else system
    if system is not None:
        check_text(system, "system")
    return Record(id_, number, check_text(user[0]), _sources(user[1]), system,
                  generation_settings(request, base.replace(system=system)))


def _openai_text(content: Any, *, allow_images: bool) -> tuple[str, list[str]]:
    if content is None:
        raise _Refused("invalid_record", "message content must be a string or a list of parts")
    try:
        text, images = wire.split_content(content)
    except ValueError as exc:
        raise _Refused("invalid_record", str(exc)) from None
    if images and not allow_images:
        raise _Refused("invalid_record", "unsupported content part: 'image_url'")
    return text, images


def _sources(images: list[str]) -> list[str]:
    if "-" in images:  # stdin may carry the records themselves; it is never an image in a batch
        raise _Refused("image_error", "image -: stdin cannot be an image source in dsvl batch")
    return images


def _settings(base: GenerationSettings, options: dict, system: str | None) -> GenerationSettings:
    """The command's settings with this record's options applied (type-checked, then validated)."""
    if system is not None:
        check_text(system, "system")
    for key, value in options.items():
        if key in _INT_OPTIONS and (isinstance(value, bool) or not isinstance(value, int)):
            raise _Refused("invalid_record", f"{key} must be an integer")
        if key in _FLOAT_OPTIONS and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value)):
            raise _Refused("invalid_record", f"{key} must be a number")
    if "stop" in options:
        stop = options["stop"]
        stop = [stop] if isinstance(stop, str) else stop
        if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
            raise _Refused("invalid_record", "stop must be a string or a list of non-empty strings")
        options["stop"] = tuple(stop)
    for key in _FLOAT_OPTIONS:
        if options.get(key) is not None:
            options[key] = float(options[key])
    return base.replace(**options, system=system)
