"""Terminal output: answers on stdout, everything else on stderr.

stdout carries answers only: live-rendered Markdown on a terminal; plain text streamed as it is
generated when stdout is not a terminal, with `--plain`, or with NO_COLOR set (no escape codes).
stderr carries status, warnings, errors and the `--stats` line. Which streams, and whether they
are terminals, comes from an `Environment` (environment.py), never from `sys` directly.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from typing import TextIO

from rich.console import Console

from dsvl_cli.environment import Environment
from dsvl_cli.results import Result, TextChunk

RANDOM_WEIGHTS_NOTE = "model {name} has random weights: its answers are noise (for trying dsvl offline)"


def note(console: Console, message: str, style: str = "yellow") -> None:
    """One status or warning line on stderr, never wrapped."""
    console.print(message, style=style, markup=False, highlight=False, soft_wrap=True)


class AnswerWriter:
    """Writes one streamed answer: live Markdown on a terminal, plain text otherwise."""

    def __init__(self, markdown: bool, stream: TextIO):
        self.stream = stream
        self.markdown = markdown
        self.text = ""
        self._live = None

    def __enter__(self) -> AnswerWriter:
        if self.markdown:
            from rich.live import Live
            from rich.markdown import Markdown

            self._markdown_cls = Markdown
            console = Console(file=self.stream)
            self._live = Live(Markdown(""), console=console, refresh_per_second=12,
                              vertical_overflow="visible", transient=False)
            self._live.__enter__()
        return self

    def write(self, text: str) -> None:
        self.text += text
        if self._live is not None:
            self._live.update(self._markdown_cls(self.text))
        else:
            self.stream.write(text)
            self.stream.flush()

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.update(self._markdown_cls(self.text), refresh=True)
            self._live.__exit__(*exc)
        else:
            if self.text and not self.text.endswith("\n"):
                self.stream.write("\n")
            self.stream.flush()


def stats_line(stats: dict) -> str:
    parts = [
        f"{stats['prompt_tokens']} prompt tokens ({stats['cached_tokens']} cached)",
        f"{stats['generated_tokens']} generated",
        f"image {stats['image_s']:.3f}s",
        f"first token {stats['ttft_s']:.3f}s",
        f"{stats['decode_tokens_per_s']:.1f} tok/s",
        f"total {stats['total_s']:.2f}s",
    ]
    if stats.get("peak_gpu_bytes") is not None:
        parts.append(f"peak GPU {stats['peak_gpu_bytes'] / 2**30:.2f} GiB")
    return " · ".join(parts)


def print_stats(console: Console, stats: dict) -> None:
    console.print(stats_line(stats), style="dim", markup=False, soft_wrap=True)


def print_json(obj: dict, stream: TextIO) -> None:
    stream.write(json.dumps(obj, ensure_ascii=False) + "\n")
    stream.flush()


@contextmanager
def status(console: Console, message: str):
    """A spinner on a terminal; nothing at all in a pipe (stderr stays clean for logs)."""
    if console.is_terminal:
        with console.status(message):
            yield
    else:
        yield


def load_backend(opts, *, prefer_fast: bool = False):
    """`engine.open_backend` with a spinner on a terminal, and the random-weights note."""
    from dsvl_cli.engine import open_backend

    console = opts.env.stderr_console()
    with status(console, f"Loading {opts.server or opts.model.model}…"):
        backend = open_backend(opts.model, server=opts.server, api_key=opts.api_key,
                               requested_model=opts.requested_model, on_note=lambda text: note(console, text),
                               prefer_fast=prefer_fast, verbose=opts.debug)
    if backend.random_weights:
        note(console, RANDOM_WEIGHTS_NOTE.format(name=backend.name))
    return backend


def stream_answer(backend, conversation, gen, env: Environment, *, markdown: bool, show: bool = True,
                  cache=None) -> Result:
    """Stream one answer to stdout (`show=False`: only collect it, for --json) and return the
    Result; Ctrl-C while printing stops generation and returns the partial answer as interrupted."""
    result, pieces = None, []
    writer = AnswerWriter(markdown=markdown and show, stream=env.stdout)
    chunks = backend.stream(conversation, gen, cache=cache)
    try:
        with writer:
            for chunk in chunks:
                if isinstance(chunk, TextChunk):
                    pieces.append(chunk.text)
                    if show:
                        writer.write(chunk.text)
                else:
                    result = chunk
    except KeyboardInterrupt:  # arrived while we were printing: stop generation, keep the text
        chunks.close()
        result = Result("".join(pieces), "interrupted")
    if result is None:
        raise RuntimeError("the answer stream ended without a result")
    return result
