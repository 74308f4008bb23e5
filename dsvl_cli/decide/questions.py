"""Typed questions (OpenAI's Decisions API shape) -> checked `Question`s, their prompts, their answers.

A question is asked by scoring options, never by generating (README, "Decisions: how a
probability is read"):
- its prompt is one more user message after the input: the instructions, then the options (with
  their descriptions), then what to answer (`Question.prompt`);
- each option is a label the model could answer with: `Yes` / `No` for a predicate, the value for
  a choice (a boolean as `true` / `false`; when a string value reads the same as a boolean one,
  every value of that question is written as JSON, `"true"` against `true`, so that the model
  can tell them apart), the level's label for a score;
- an option's log-probability is that of `" " + label` + EOS right after the prompt (the tokens the
  model generates when it answers with the label and stops: engine/scoring.py's definition for
  `--choices`); the probabilities are their softmax over the question's options;
- predicate: `probability` = P(Yes). choice: the most probable value (the first given on a tie),
  `confidence` = its probability. score: levels are valued 0, 1, ... from the lowest, `score` =
  the expected value, `confidence` = the most probable level's probability.

Limits (a 400 / exit 2 each, naming the place): 1-400 questions; a choice has 2-255 distinct
values, each a string or a boolean; a score has 2-255 levels with distinct labels; instructions
are text (`input_text` and `input_json` parts); pictures in a question's instructions are not
supported (put them in the input, where every question shares them).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from dsvl_cli.conversation import check_text
from dsvl_cli.errors import UsageError

KINDS = ("predicate", "choice", "score")
MAX_QUESTIONS = 400
MAX_OPTIONS = 255
PREDICATE_LABELS = ("Yes", "No")


@dataclass(frozen=True)
class Question:
    """One checked question. `values`: what an answer names (a predicate's True/False, a choice's
    typed values, a score's level labels); `labels`: what the model is scored on, one per value."""

    kind: str
    instructions: str
    name: str | None
    values: tuple
    labels: tuple[str, ...]
    descriptions: tuple[str | None, ...]

    def prompt(self) -> str:
        """The user message that asks this question after the input."""
        if self.kind == "predicate":
            return (f"Statement: {self.instructions}\n"
                    "Is this statement true of the input above? Answer Yes or No.")
        listed = "\n".join(f"- {label}" + (f": {text}" if text else "")
                           for label, text in zip(self.labels, self.descriptions))
        if self.kind == "choice":
            return f"{self.instructions}\nOptions:\n{listed}\nAnswer with one of the options, exactly as written."
        return (f"{self.instructions}\nLevels, from lowest to highest:\n{listed}\n"
                "Answer with one of the levels, exactly as written.")

    @property
    def chars(self) -> int:
        return len(self.instructions) + sum(len(label) + len(text or "") for label, text in
                                            zip(self.labels, self.descriptions))

    def to_api(self) -> dict:
        """Back to the API's question object (what --server sends)."""
        out: dict[str, Any] = {"type": self.kind, "instructions": self.instructions}
        if self.name is not None:
            out["name"] = self.name
        key = "choices" if self.kind == "choice" else "levels"
        if self.kind != "predicate":
            field = "value" if self.kind == "choice" else "label"
            out[key] = [{field: value, **({"description": text} if text else {})}
                        for value, text in zip(self.values, self.descriptions)]
        return out


def parse_questions(data: Any, where: str = "questions") -> tuple[Question, ...]:
    """The API's `questions` list -> Questions; UsageError naming the place of the first problem."""
    if not isinstance(data, list):
        raise UsageError(f"{where}: give a list of questions (objects with a type: predicate, choice or score)")
    if not data:
        raise UsageError(f"{where}: ask at least one question")
    if len(data) > MAX_QUESTIONS:
        raise UsageError(f"{where}: {len(data)} questions; ask at most {MAX_QUESTIONS} per request")
    return tuple(parse_question(item, f"{where}.{k}") for k, item in enumerate(data))


def parse_question(item: Any, where: str) -> Question:
    if not isinstance(item, dict):
        raise UsageError(f"{where}: a question is an object with a type (predicate, choice or score)")
    kind = item.get("type")
    if kind not in KINDS:
        raise UsageError(f"{where}.type: unknown question type {_shown(kind)}; use predicate, choice or score")
    name = item.get("name")
    if name is not None and not isinstance(name, str):
        raise UsageError(f"{where}.name: must be a string")
    instructions = _instructions(item.get("instructions"), f"{where}.instructions")
    if kind == "predicate":
        return Question(kind, instructions, name, (True, False), PREDICATE_LABELS, (None, None))
    if kind == "choice":
        values, texts = _options(item.get("choices"), f"{where}.choices", "value")
        return Question(kind, instructions, name, values, _choice_labels(values), texts)
    labels, texts = _options(item.get("levels"), f"{where}.levels", "label")
    return Question(kind, instructions, name, labels, labels, texts)


def _instructions(value: Any, where: str) -> str:
    """A string, or input_text / input_json parts joined by newlines (JSON written compact)."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, list) and value:
        pieces = []
        for k, part in enumerate(value):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "input_text" and isinstance(part.get("text"), str):
                pieces.append(part["text"])
            elif kind == "input_json" and isinstance(part.get("data"), (dict, list)):
                pieces.append(json.dumps(part["data"], ensure_ascii=False, separators=(",", ":")))
            elif kind == "input_image":
                raise UsageError(f"{where}.{k}: pictures in a question are not supported; put them in input "
                                 "(every question shares the input's pictures)")
            else:
                raise UsageError(f"{where}.{k}: a part is input_text (with text) or input_json (with data)")
        text = "\n".join(pieces)
    else:
        raise UsageError(f"{where}: give the question's text (a string or a list of input_text parts)")
    if not text.strip():
        raise UsageError(f"{where}: the question's text is empty")
    return check_text(text, where)


def _options(value: Any, where: str, field: str) -> tuple[tuple, tuple[str | None, ...]]:
    """(values, descriptions) of a choice's `choices` or a score's `levels`."""
    what = "choices" if field == "value" else "levels"
    if not isinstance(value, list) or len(value) < 2:
        raise UsageError(f"{where}: give at least 2 {what}")
    if len(value) > MAX_OPTIONS:
        raise UsageError(f"{where}: {len(value)} {what}; give at most {MAX_OPTIONS}")
    values, texts, seen = [], [], set()
    for k, option in enumerate(value):
        at = f"{where}.{k}"
        if not isinstance(option, dict) or field not in option:
            raise UsageError(f"{at}: each of the {what} is an object with a `{field}`")
        got = option[field]
        allowed = (str, bool) if field == "value" else (str,)
        if not isinstance(got, allowed):
            raise UsageError(f"{at}.{field}: must be a {'string or a boolean' if field == 'value' else 'string'}")
        if isinstance(got, str) and not got.strip():
            raise UsageError(f"{at}.{field}: must not be empty")
        key = (type(got).__name__, got)  # typed: "true" and true are different values
        if key in seen:
            raise UsageError(f"{at}.{field}: {_shown(got)} is given twice; each of the {what} must be unique")
        seen.add(key)
        text = option.get("description")
        if text is not None and not isinstance(text, str):
            raise UsageError(f"{at}.description: must be a string")
        check_text(got if isinstance(got, str) else "", f"{at}.{field}")
        values.append(got)
        texts.append(check_text(text, f"{at}.description") if text else None)
    return tuple(values), tuple(texts)


def _choice_labels(values: tuple) -> tuple[str, ...]:
    plain = tuple(("true" if v else "false") if isinstance(v, bool) else v for v in values)
    if len(set(plain)) == len(plain):
        return plain
    return tuple(json.dumps(v, ensure_ascii=False) for v in values)  # "true" and true, told apart


def _shown(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# -- answers ---------------------------------------------------------------------------------------

def softmax(logprobs: list[float]) -> list[float]:
    top = max(logprobs)
    weights = [math.exp(lp - top) for lp in logprobs]
    total = sum(weights)
    return [w / total for w in weights]


def answer(question: Question, logprobs: list[float]) -> dict:
    """The API's answer object for `question` from its options' log-probabilities (in option order)."""
    probs = softmax(logprobs)
    best = max(range(len(probs)), key=lambda k: (probs[k], -k))  # the first given wins a tie
    if question.kind == "predicate":
        return {"type": "predicate", "name": question.name, "probability": probs[0]}
    if question.kind == "choice":
        return {"type": "choice", "name": question.name, "choice": question.values[best], "confidence": probs[best],
                "probabilities": [{"value": v, "probability": p} for v, p in zip(question.values, probs)]}
    return {"type": "score", "name": question.name, "score": sum(k * p for k, p in enumerate(probs)),
            "confidence": probs[best],
            "probabilities": [{"label": label, "value": k, "probability": p}
                              for k, (label, p) in enumerate(zip(question.values, probs))]}


def refusal(question: Question) -> dict:
    return {"type": "refusal", "name": question.name}
