"""`dsvl chat [IMAGE ...]`: a conversation about images, on a terminal or scripted through a pipe."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from dsvl_cli.options import CommonOptions, shared_options
from dsvl_cli.models.completion import complete_image


@shared_options(exclude=("logprobs",))
def chat(
    images: Annotated[Optional[list[str]], typer.Argument(
        metavar="[IMAGE]...",
        help="Images for the first question (path, http(s) URL or data: URI).",
        show_default=False, autocompletion=complete_image)] = None,
    continue_: Annotated[bool, typer.Option(
        "-c", "--continue", help="Go on with the last logged conversation (dsvl logs shows it): its pictures, "
        "answers and model.")] = False,
    cid: Annotated[Optional[str], typer.Option(
        "--cid", metavar="ID", help="Go on with this logged conversation (its id, or a unique prefix).")] = None,
    no_log: Annotated[bool, typer.Option("--no-log", help="Do not log this chat's answers.")] = False,
    *,
    opts: CommonOptions,
) -> None:
    """Chat about images; each turn reuses the previous turns' KV cache.

    On a terminal: line editing, history, Tab completion, Markdown answers. Type /help for the
    commands (/image, /undo, /retry, /set, /save, /load, ...). Ctrl-C stops an answer, Ctrl-D leaves.

    Not a terminal: one question or command per input line (a \"\"\" block spans lines); plain answers,
    or one JSON object per turn with --json. Errors go to stderr and the script goes on.

    Input history is kept in $XDG_STATE_HOME/dsvl/chat_history (~/.local/state/dsvl/chat_history).

    \b
    Exit codes (a pipe reports the worst failure of the whole script):
      0    every input succeeded (on a terminal: always, errors were shown as they happened)
      2    a bad option, image, question or command (unknown command, missing file, too long
           for the context)
      1    a runtime failure: the model did not load, out of memory
      130  interrupted (Ctrl-C)

    \b
    Examples:
      dsvl chat diagram.png
      dsvl chat -c                  go on with the last logged conversation
      printf 'What is this?\\nAnd the colours?\\n' | dsvl chat photo.jpg --json
    """
    from dsvl_cli.errors import guarded
    from dsvl_cli.logs.history import continued

    with guarded(opts.debug):
        code = _run(images or [], opts, thread=continued(continue_, cid), log=not no_log)
    if code:
        raise typer.Exit(code)


def _answer_log(opts: CommonOptions, backend, thread, *, enabled: bool):
    """Where each answered turn is logged (logs/writer.py), in the continued conversation if any."""
    from dsvl_cli.logs.writer import AnswerLog

    return AnswerLog.for_command("chat", opts, backend, no_log=not enabled,
                                 conversation_id=thread.conversation_id if thread else None)


def _run(sources: list[str], opts: CommonOptions, *, thread=None, log: bool = True) -> int:
    from dsvl_cli.chat import pipe, terminal
    from dsvl_cli.chat.files import resume
    from dsvl_cli.chat.session import ChatSession, check_chat_sources
    from dsvl_cli.chat.ui import ChatUI
    from dsvl_cli.images import load_images
    from dsvl_cli.images.selection import PICTURES_PER_QUESTION
    from dsvl_cli.render import load_backend

    check_chat_sources(sources)
    opts = thread.options(opts) if thread is not None else opts
    first_images = load_images(sources, exact=opts.exact_pixels,  # validated before the model loads
                               max_pictures=PICTURES_PER_QUESTION)
    backend = load_backend(opts, prefer_fast=True)
    session = ChatSession(backend, opts.generation, images=first_images, exact_pixels=opts.exact_pixels)
    if thread is not None:
        resume(session, thread.conversation, thread.turn)
    ui = ChatUI(session, opts, log=_answer_log(opts, backend, thread, enabled=log))
    return terminal.run_terminal(ui) if opts.env.stdin_isatty else pipe.run_lines(ui, opts.env.stdin)
