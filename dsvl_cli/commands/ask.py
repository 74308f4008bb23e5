"""`dsvl ask [IMAGE ...] PROMPT`: one question, the answer streamed to stdout."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from dsvl_cli.options import CommonOptions, shared_options
from dsvl_cli.models.completion import complete_image


@shared_options
def ask(
    args: Annotated[list[str], typer.Argument(
        metavar="[IMAGE]... PROMPT",
        help="Zero or more images (path, http(s) URL, data: URI, or - for stdin), then the question.",
        show_default=False, autocompletion=complete_image)],
    continue_: Annotated[bool, typer.Option(
        "-c", "--continue", help="Go on with the last logged conversation: its pictures, answers and model "
        "(dsvl logs shows it); images given now go with the new question.")] = False,
    cid: Annotated[Optional[str], typer.Option(
        "--cid", metavar="ID", help="Go on with this logged conversation (its id, or a unique prefix).")] = None,
    no_log: Annotated[bool, typer.Option("--no-log", help="Do not log this answer (dsvl logs off: never log).")]
    = False,
    *,
    opts: CommonOptions,
) -> None:
    """Ask one question about zero or more images; the answer streams to stdout.

    \b
    Examples:
      dsvl ask photo.jpg "What is in this picture?"
      dsvl ask a.png b.png "What changed between these two?"
      curl -s https://example.com/cat.jpg | dsvl ask - "What breed is this?" --plain
      dsvl ask examples/shapes.png "Describe this image." --model tiny-random --json
      dsvl ask photo.jpg "List the objects." --schema 'objects: what is there, count int'
      dsvl ask -c "And the left side?"
    """
    from dsvl_cli.errors import ExitCode, guarded
    from dsvl_cli.logs.history import continued

    with guarded(opts.debug):
        *sources, prompt = args
        _check_question(prompt)
        thread = continued(continue_, cid)
        if thread is not None:
            opts = thread.options(opts)
        if _answer(sources, prompt, opts, thread, log=not no_log) == "interrupted":
            print("dsvl: interrupted", file=opts.env.stderr)
            raise typer.Exit(int(ExitCode.INTERRUPTED))


def _check_question(prompt: str) -> None:
    """A forgotten question (`dsvl ask photo.jpg`) would send the image's name as the question."""
    import re
    from pathlib import Path

    from dsvl_cli.errors import UsageError

    if not prompt.strip():
        raise UsageError("no question: the last argument is empty (dsvl ask [IMAGE]... QUESTION)")
    looks_like_image = prompt == "-" or re.match(r"^(https?://\S+|data:image/)", prompt, re.IGNORECASE)
    try:
        looks_like_image = looks_like_image or Path(prompt).expanduser().is_file()
    except (OSError, ValueError):
        pass
    if looks_like_image:
        raise UsageError(f"no question: the last argument is an image ({prompt[:60]}); "
                         "put the question after the images")


def _log(opts: CommonOptions, backend, conversation, result, thread, *, enabled: bool) -> None:
    """Log the answer (after it was printed; a failing log file is one warning line)."""
    from dsvl_cli.logs.writer import AnswerLog

    log = AnswerLog.for_command("ask", opts, backend, no_log=not enabled,
                                conversation_id=thread.conversation_id if thread else None)
    log.record(conversation, result, opts.generation, turn=thread.turn + 1 if thread else 1)


def _answer(sources: list[str], prompt: str, opts: CommonOptions, thread=None, *, log: bool = True) -> str:
    """Load the images (all checked before the model loads), answer, print; the finish reason."""
    from dsvl_cli.conversation import Conversation
    from dsvl_cli.errors import ContextLengthError
    from dsvl_cli.images import display_source, load_images
    from dsvl_cli.images.selection import PICTURES_PER_QUESTION
    from dsvl_cli.render import context_cut, load_backend, note, print_stats, stream_answer
    from dsvl_cli.screen.text import write_json

    env = opts.env
    images = load_images(sources, stdin=env.stdin_bytes, exact=opts.exact_pixels, max_pictures=PICTURES_PER_QUESTION)
    conversation = Conversation.single(prompt, images, system=opts.generation.system) if thread is None else \
        thread.follow_up(prompt, images, opts.generation.system)
    backend = load_backend(opts)
    structured = opts.generation.answer_format is not None  # JSON or a pattern: plain text, not Markdown
    try:
        result = stream_answer(backend, conversation, opts.generation, env,
                               markdown=env.markdown(opts.plain) and not structured, show=not opts.json)
    except ContextLengthError as err:  # the engine's advice may be chat's; say what applies to ask
        raise ContextLengthError(f"{err.message.split(';')[0]}; shorten the prompt, use fewer images, "
                                 "or lower -n") from None
    cut = context_cut(result, opts.generation, backend.context_length)
    if cut:
        note(env.stderr_console(), f"dsvl: warning: {cut}")
    if opts.json:
        write_json({**result.to_dict(), "model": backend.name, "images": [display_source(i.source) for i in images],
                    "prompt": prompt}, env.stdout, terminal=env.stdout_isatty)
    if opts.stats:
        print_stats(env.stderr_console(), result.stats.to_dict())
    _log(opts, backend, conversation, result, thread, enabled=log)
    _complete(result, opts.generation)
    return result.finish_reason


def _complete(result, gen) -> None:
    """A --schema / --regex answer cut before it was complete is a failure (exit 1), after the
    partial answer (and --json's object, finish_reason "length") were printed."""
    from dsvl_cli.errors import GenerationError
    from dsvl_cli.structured.answers import incomplete

    problem = incomplete(result, gen.answer_format)
    if problem:
        raise GenerationError(problem)
