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
    from dsvl_cli.errors import ExitCode, guarded

    with guarded(opts.debug):
        *sources, prompt = args
        if _answer(sources, prompt, opts) == "interrupted":
            print("dsvl: interrupted", file=opts.env.stderr)
            raise typer.Exit(int(ExitCode.INTERRUPTED))


def _answer(sources: list[str], prompt: str, opts: CommonOptions) -> str:
    """Load the images (all checked before the model loads), answer, print; the finish reason."""
    from dsvl_cli.conversation import Conversation
    from dsvl_cli.images import display_source, load_images
    from dsvl_cli.render import load_backend, print_json, print_stats, stream_answer

    env = opts.env
    images = load_images(sources, stdin=env.stdin_bytes, exact=opts.exact_pixels)
    conversation = Conversation.single(prompt, images, system=opts.generation.system)
    backend = load_backend(opts)
    result = stream_answer(backend, conversation, opts.generation, env, markdown=env.markdown(opts.plain),
                           show=not opts.json)
    if opts.json:
        print_json({**result.to_dict(), "model": backend.name, "images": [display_source(i.source) for i in images],
                    "prompt": prompt}, env.stdout)
    if opts.stats:
        print_stats(env.stderr_console(), result.stats.to_dict())
    return result.finish_reason
