"""What the local front ends share: load images, load the engine, stream and render an answer."""

from __future__ import annotations

import sys

import typer

from dsvl_cli.errors import ExitCode
from dsvl_cli.options import CommonOptions
from dsvl_cli.render import RANDOM_WEIGHTS_NOTE, AnswerWriter, note, print_json, print_stats, status, stderr_console
from dsvl_cli.results import Result, TextChunk


def load_engine(opts: CommonOptions, *, prefer_fast: bool = False):
    """The local Engine, or with --server a RemoteEngine with the same interface (remote.py).

    `prefer_fast`: the caller generates many times (chat, batch), so the fast path pays where it is on by
    default (CUDA); --compile/--no-compile decides otherwise (fastpath.wanted)."""
    console = stderr_console()
    if opts.server:
        from dsvl_cli.engine.remote import RemoteEngine

        engine = RemoteEngine(opts.server, api_key=opts.api_key, model=opts.requested_model,
                              on_note=lambda text: note(console, text))
    else:
        from dsvl_cli.engine.local import Engine

        with status(console, f"Loading {opts.model.model}…"):
            engine = Engine.load(opts.model, verbose=opts.debug, prefer_fast=prefer_fast)
    if engine.random_weights:
        note(console, RANDOM_WEIGHTS_NOTE.format(name=engine.name))
    return engine


def stream_answer(engine, conversation, opts: CommonOptions, *, markdown: bool, cache=None) -> Result:
    """Stream one answer to stdout (unless --json) and return the Result (interrupted ones too)."""
    result = None
    writer = AnswerWriter(markdown=markdown and not opts.json)
    chunks = engine.stream(conversation, opts.generation, cache=cache)
    try:
        with writer:
            for chunk in chunks:
                if isinstance(chunk, TextChunk):
                    if not opts.json:
                        writer.write(chunk.text)
                else:
                    result = chunk
    except KeyboardInterrupt:  # arrived while we were printing: stop generation, keep the text
        chunks.close()
        result = Result(writer.text, "interrupted")
    assert result is not None
    return result


def answer_once(sources: list[str], prompt: str, opts: CommonOptions) -> None:
    from dsvl_cli.conversation import Conversation
    from dsvl_cli.images import load_images
    from dsvl_cli.render import wants_markdown

    images = load_images(sources)  # every image validated before the model loads
    conversation = Conversation.single(prompt, images, system=opts.generation.system)
    engine = load_engine(opts)
    result = stream_answer(engine, conversation, opts, markdown=wants_markdown(opts.plain))
    if opts.json:
        print_json({**result.to_dict(), "model": engine.name, "images": [i.source for i in images],
                    "prompt": prompt})
    if opts.stats:
        print_stats(stderr_console(), result.stats.to_dict())
    if result.finish_reason == "interrupted":
        print("dsvl: interrupted", file=sys.stderr)
        raise typer.Exit(int(ExitCode.INTERRUPTED))
