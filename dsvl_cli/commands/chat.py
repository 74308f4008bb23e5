"""`dsvl chat [IMAGE ...]`: a conversation about images, on a terminal or scripted through a pipe."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from dsvl_cli.options import CommonOptions, shared_options


@shared_options
def chat(
    images: Annotated[Optional[list[str]], typer.Argument(
        metavar="[IMAGE]...",
        help="Images for the first question (path, http(s) URL or data: URI).",
        show_default=False)] = None,
    *,
    opts: CommonOptions,
) -> None:
    """Chat about images; each turn reuses the previous turns' KV cache.

    On a terminal: line editing, history, Tab completion, Markdown answers. Type /help for the
    commands (/image, /undo, /retry, /set, /save, /load, ...). Ctrl-C stops an answer, Ctrl-D leaves.

    Not a terminal: one question or command per input line (a \"\"\" block spans lines); plain answers,
    or one JSON object per turn with --json. Errors go to stderr and the script goes on.

    \b
    Exit codes: 0 done; 1 (pipes only) some question or command failed, or the model did not load;
    2 bad option or image on the command line; 130 interrupted.

    \b
    Examples:
      dsvl chat diagram.png
      printf 'What is this?\\nAnd the colours?\\n' | dsvl chat photo.jpg --json
    """
    from dsvl_cli.cli import guarded

    with guarded(opts.debug):
        code = _run(images or [], opts)
    if code:
        raise typer.Exit(code)


def _run(sources: list[str], opts: CommonOptions) -> int:
    import sys

    from dsvl_cli import repl
    from dsvl_cli.chat_session import ChatSession, check_chat_sources
    from dsvl_cli.commands.common import load_engine
    from dsvl_cli.images import load_images
    from dsvl_cli.render import wants_markdown

    check_chat_sources(sources)
    first_images = load_images(sources)  # validated before the model loads
    session = ChatSession(load_engine(opts), opts.generation, images=first_images)
    terminal = sys.stdin.isatty()
    ui = repl.ChatUI(session, opts, markdown=wants_markdown(opts.plain))
    return repl.run_terminal(ui) if terminal else repl.run_lines(ui, sys.stdin)
