"""`dsvl ask [IMAGE ...] PROMPT`: one question, the answer streamed to stdout."""

from __future__ import annotations

from typing import Annotated

import typer

from dsvl_cli.options import CommonOptions, shared_options


@shared_options
def ask(
    args: Annotated[list[str], typer.Argument(
        metavar="[IMAGE]... PROMPT",
        help="Zero or more images (path, http(s) URL, data: URI, or - for stdin), then the question.",
        show_default=False)],
    opts: CommonOptions,
) -> None:
    """Ask one question about zero or more images; the answer streams to stdout.

    \b
    Examples:
      dsvl ask photo.jpg "What is in this picture?"
      dsvl ask a.png b.png "What changed between these two?"
      curl -s https://example.com/cat.jpg | dsvl ask - "What breed is this?" --plain
      dsvl ask examples/shapes.png "Describe this image." --model tiny-random --json
    """
    from dsvl_cli.errors import guarded
    from dsvl_cli.commands.common import answer_once

    with guarded(opts.debug):
        *sources, prompt = args
        answer_once(sources, prompt, opts)
