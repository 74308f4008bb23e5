"""`dsvl decide IMAGE... [TEXT] --questions FILE`: typed questions about images, answered with probabilities."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from dsvl_cli.options import CommonOptions, shared_options
from dsvl_cli.models.completion import complete_image

# Sampling and answer-format options mean nothing here: nothing is generated.
NOT_HERE = ("max_new_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "seed", "schema", "regex",
            "choices", "logprobs")


@shared_options(exclude=NOT_HERE)
def decide(
    args: Annotated[list[str], typer.Argument(
        metavar="IMAGE... [TEXT]",
        help="Images (path, http(s) URL, data: URI, or - for stdin), then optional text: the input every "
             "question is about.", show_default=False, autocompletion=complete_image)],
    questions: Annotated[Optional[str], typer.Option(
        "-q", "--questions", metavar="FILE", help="A JSON list of questions in OpenAI's Decisions API shape "
        "(predicate, choice, score); - reads it from stdin.")] = None,
    predicate: Annotated[Optional[list[str]], typer.Option(
        "-p", "--predicate", metavar="STATEMENT", help="How likely STATEMENT is true (repeatable).")] = None,
    choice: Annotated[Optional[list[str]], typer.Option(
        "-c", "--choice", metavar="'QUESTION = a, b, c'", help="Pick one of the values (repeatable).")] = None,
    score: Annotated[Optional[list[str]], typer.Option(
        "--score", metavar="'QUESTION = low, ..., high'", help="Rate on levels, lowest first; the answer is "
        "the expected level, 0 for the lowest (repeatable).")] = None,
    *,
    opts: CommonOptions,
) -> None:
    """Ask typed questions about images: each answer is a probability, not generated text.

    Questions come from --questions FILE first, then -p, -c and --score in that order. On a
    terminal the answers are a table; in a pipe, tab-separated lines (question, type, answer,
    confidence, distribution); --json prints the Decisions API's response object.

    \b
    Examples:
      dsvl decide photo.jpg -p "There is a person in the photo."
      dsvl decide photo.jpg -c "Which animal is it? = cat, dog, bird" --score "How sharp is it? = blurry, ok, sharp"
      dsvl decide a.png b.png "Two screenshots of one app." --questions checks.json --json
    """
    from dsvl_cli.errors import UsageError, guarded

    with guarded(opts.debug):
        if questions == "-" and "-" in args:
            raise UsageError("stdin can carry the questions (--questions -) or an image (-), not both")
        _decide(args, _questions(questions, predicate or [], choice or [], score or [], opts), opts)


def _questions(path: str | None, predicates: list[str], choices: list[str], scores: list[str], opts):
    """Every question checked, before any image or model loads (UsageError names the place)."""
    from dsvl_cli.decide.questions import parse_questions
    from dsvl_cli.decide.wire import flag_question
    from dsvl_cli.errors import UsageError

    given = _read_questions(path, opts) if path is not None else []
    if path is not None:
        parse_questions(given, f"--questions {path}")  # a problem named in the file's own terms
    given += [flag_question("predicate", t) for t in predicates]
    given += [flag_question("choice", t) for t in choices]
    given += [flag_question("score", t) for t in scores]
    if not given:
        raise UsageError("no questions: give --questions FILE, -p STATEMENT, -c 'QUESTION = a, b' or "
                         "--score 'QUESTION = low, high'")
    return parse_questions(given)


def _read_questions(path: str, opts) -> list:
    import json
    from pathlib import Path

    from dsvl_cli.errors import UsageError, load_json

    try:
        text = opts.env.stdin.read() if path == "-" else Path(path).expanduser().read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--questions {path}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from None
    try:
        data = load_json(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--questions {path}: not valid JSON ({exc.msg})") from None
    if isinstance(data, dict) and "questions" in data:  # a whole request body works too
        data = data["questions"]
    if not isinstance(data, list):
        raise UsageError(f"--questions {path}: give a JSON list of questions")
    return data


def _split(args: list[str]) -> tuple[list[str], str]:
    """(image sources, text): the last argument is the text unless it looks like an image."""
    import re
    from pathlib import Path

    if not args:
        return [], ""
    last = args[-1]
    looks_like_image = last == "-" or re.match(r"^(https?://\S+|data:image/)", last, re.IGNORECASE)
    try:
        looks_like_image = looks_like_image or Path(last).expanduser().is_file()
    except (OSError, ValueError):
        pass
    return (args, "") if looks_like_image else (args[:-1], last)


def _decide(args: list[str], questions, opts: CommonOptions) -> None:
    from dsvl_cli.conversation import Conversation
    from dsvl_cli.decide.wire import body
    from dsvl_cli.errors import UsageError
    from dsvl_cli.images import load_images
    from dsvl_cli.images.selection import PICTURES_PER_QUESTION
    from dsvl_cli.render import load_backend, print_decision, print_stats
    from dsvl_cli.screen.text import write_json
    from dsvl_cli.structured.spec import decisions_format

    env = opts.env
    sources, text = _split(args)
    if not sources and not text.strip():
        raise UsageError("no input: give images and/or text for the questions to be about")
    images = load_images(sources, stdin=env.stdin_bytes, exact=opts.exact_pixels, max_pictures=PICTURES_PER_QUESTION)
    conversation = Conversation.single(text, images, system=opts.generation.system)
    backend = load_backend(opts)
    gen = opts.generation.replace(answer_format=decisions_format(questions))
    result = backend.run(conversation, gen)
    if opts.json:
        write_json(body(backend.name, result), env.stdout, terminal=env.stdout_isatty)
    else:
        print_decision(result.answers, env)
    if opts.stats:
        print_stats(env.stderr_console(), result.stats.to_dict())
