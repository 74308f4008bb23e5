"""The prompt each benchmark row is asked with, and the rotations of --circular.

Multiple choice, VLMEvalKit's `ImageMCQDataset.build_prompt` to the character (the picture goes
before the text, as there):

    Hint: {hint}\\n                     (only when the row has a hint)
    Question: {question}\\n
    Options:\\n
    A. {option A}\\n
    B. {option B}\\n ...
    Please select the correct answer from the options above. \\n

Yes/no (POPE): `{question} Please answer yes or no.` (VLMEvalKit's yes/no datasets send the bare
question and leave this sentence to each model's wrapper; the wrappers that add one add this).

The labels scored are the option letters (`A`, `B`, ...) or `Yes`, `No`: `dsvl ask IMAGE PROMPT
--choices A,B,C,D` with a row's prompt scores exactly what eval scored.

--circular (MMBench's CircularEval): a row with k options is asked k times; in rotation r the
option under letter i is the original option (i + r) mod k, so every option takes every place once.
No torch here.
"""

from __future__ import annotations

from dataclasses import dataclass

from dsvl_cli.eval.files import YES_NO, Row

MCQ_INSTRUCTION = "Please select the correct answer from the options above. \n"
YES_NO_INSTRUCTION = " Please answer yes or no."


@dataclass(frozen=True)
class Question:
    """One prompt to ask: a row, or one rotation of it."""

    key: int  # its place in the run (the batch record's id)
    row: Row
    rotation: int | None  # None: not --circular
    prompt: str
    labels: tuple[str, ...]  # the labels scored: letters, or Yes/No
    answer: str  # the right label in this rotation
    options: tuple[tuple[str, str], ...]  # (letter, text) as shown in this rotation


def mcq_prompt(question: str, options: tuple[tuple[str, str], ...], hint: str | None = None) -> str:
    text = f"Hint: {hint}\n" if hint is not None else ""
    text += f"Question: {question}\n"
    if options:
        text += "Options:\n" + "".join(f"{letter}. {option}\n" for letter, option in options)
        text += MCQ_INSTRUCTION
    return text


def yes_no_prompt(question: str, hint: str | None = None) -> str:
    return (f"Hint: {hint}\n" if hint is not None else "") + question + YES_NO_INSTRUCTION


def rotate(options: tuple[tuple[str, str], ...], answer: str, r: int) -> tuple[tuple[tuple[str, str], ...], str]:
    """(the options with their texts moved r places, the answer's letter after the move)."""
    letters = [letter for letter, _ in options]
    texts = [text for _, text in options]
    k = len(options)
    moved = tuple((letters[i], texts[(i + r) % k]) for i in range(k))
    return moved, letters[(letters.index(answer) - r) % k]  # the place i where (i + r) mod k is the answer's


def questions(rows: list[Row], *, circular: bool) -> list[Question]:
    """Every prompt of the run, in row order (k per row with --circular and k options; a yes/no row
    is asked once). A row with a problem gets one Question (it becomes an error record)."""
    out: list[Question] = []
    for row in rows:
        if row.problem is not None:
            out.append(Question(len(out), row, None, "", (), row.answer, ()))
        elif row.yes_no:
            out.append(Question(len(out), row, None, yes_no_prompt(row.question, row.hint),
                                YES_NO, row.answer, ()))
        else:
            labels = tuple(letter for letter, _ in row.options)
            for r in range(len(row.options) if circular else 1):
                options, answer = rotate(row.options, row.answer, r)
                out.append(Question(len(out), row, r if circular else None,
                                    mcq_prompt(row.question, options, row.hint), labels, answer, options))
    return out
