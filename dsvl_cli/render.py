"""Terminal output: answers on stdout, everything else on stderr.

stdout carries answers only: live-rendered Markdown on a terminal; plain text streamed as it is
generated when stdout is not a terminal, with `--plain`, or with NO_COLOR set (no escape codes).
stderr carries status, warnings, errors and the `--stats` line. Which streams, and whether they
are terminals, comes from an `Environment` (environment.py), never from `sys` directly.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TextIO

from rich.console import Console

from dsvl_cli.screen.environment import Environment
from dsvl_cli.screen.interrupts import SingleInterrupt
from dsvl_cli.results import Result, TextChunk
from dsvl_cli.screen.text import for_terminal, visible

RANDOM_WEIGHTS_NOTE = "model {name} has random weights: its answers are noise (for trying dsvl offline)"


def note(console: Console, message: str, style: str = "yellow") -> None:
    """One status or warning line on stderr, never wrapped, never markup; control characters (from
    file names, servers, the model) are shown as visible escapes."""
    console.print(visible(message), style=style, markup=False, highlight=False, soft_wrap=True)


class AnswerWriter:
    """Writes one streamed answer: live Markdown on a terminal (screen/live.py), plain text otherwise.

    `terminal`: stdout is a terminal, so control characters are removed from what is shown (the
    answer returned stays as generated); in a pipe the answer is written byte for byte."""

    def __init__(self, markdown: bool, stream: TextIO, *, terminal: bool = False):
        self.stream = stream
        self.markdown = markdown
        self.terminal = terminal or markdown
        self.text = ""
        self._view = None

    def __enter__(self) -> AnswerWriter:
        if self.markdown:
            from dsvl_cli.screen.live import MarkdownStream

            self._view = MarkdownStream(Console(file=self.stream))
        return self

    def write(self, text: str) -> None:
        self.text += text
        shown = for_terminal(text) if self.terminal else text
        if self._view is not None:
            self._view.write(shown)
        else:
            self.stream.write(shown)
            self.stream.flush()

    def close(self) -> None:
        """Finish the output (idempotent: an interrupted close may run again)."""
        if self._view is not None:
            self._view.close()
        elif self.text and not self.text.endswith("\n"):
            self.text += "\n"
            self.stream.write("\n")
        self.stream.flush()

    def __exit__(self, *exc) -> None:
        self.close()


def context_cut(result: Result, gen, context_length: int | None) -> str | None:
    """Why an answer stopped short of -n, with the figures, when the context was what stopped it."""
    stats = result.stats
    if result.finish_reason != "length" or context_length is None or stats.generated_tokens >= gen.max_new_tokens \
            or stats.prompt_tokens + stats.generated_tokens < context_length:
        return None
    return (f"the answer stopped at the model's context length of {context_length} tokens: the prompt took "
            f"{stats.prompt_tokens}, leaving room for {stats.generated_tokens} of the {gen.max_new_tokens} "
            "new tokens asked (-n)")


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


def print_decision(answers: list[dict], env: Environment) -> None:
    """Typed answers: a table on a terminal, tab-separated lines in a pipe (decide/wire.py's rows)."""
    from dsvl_cli.decide.wire import rows, summary

    if not env.stdout_isatty:
        env.stdout.write(summary(answers) + "\n")
        env.stdout.flush()
        return
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("question", "type", "answer", "confidence", "probabilities"):
        table.add_column(column, justify="right" if column == "confidence" else "left")
    for row in rows(answers):
        table.add_row(*(Text(visible(cell)) for cell in row))  # text, never markup; controls shown visibly
    Console(file=env.stdout, force_terminal=True, no_color=env.no_color or None, highlight=False).print(table)


@contextmanager
def status(console: Console, message: str):
    """A spinner on a terminal; nothing at all in a pipe (stderr stays clean for logs)."""
    if console.is_terminal:
        from rich.text import Text

        with console.status(Text(visible(message))):  # a model name is text, never markup
            yield
    else:
        yield


def load_backend(opts, *, prefer_fast: bool = False):
    """`engine.open_backend` (or with --keep-alive the private server's client) with a spinner on a
    terminal, and the random-weights note."""
    from dsvl_cli.engine import open_backend

    console = opts.env.stderr_console()
    with status(console, f"Loading {opts.server or opts.model.model}…"):
        if opts.keep_alive > 0:
            from dsvl_cli.keepalive.client import KeepAliveEngine

            backend = KeepAliveEngine(opts.model, opts.keep_alive)
        else:
            backend = open_backend(opts.model, server=opts.server, api_key=opts.api_key,
                                   requested_model=opts.requested_model, on_note=lambda text: note(console, text),
                                   prefer_fast=prefer_fast, verbose=opts.debug)
    if backend.random_weights:
        note(console, RANDOM_WEIGHTS_NOTE.format(name=backend.name))
    return backend


def stream_answer(backend, conversation, gen, env: Environment, *, markdown: bool, show: bool = True,
                  cache=None) -> Result:
    """Stream one answer to stdout (`show=False`: only collect it, for --json) and return the
    Result; Ctrl-C while printing stops generation and returns the partial answer as interrupted.

    Ctrl-C is taken once: further presses while generation stops and the output is finished are
    ignored (a second one used to cut that clean-up short and leave the terminal in a mess)."""
    state = {"result": None, "pieces": []}
    writer = AnswerWriter(markdown=markdown and show, stream=env.stdout, terminal=env.stdout_isatty)
    chunks = backend.stream(conversation, gen, cache=cache)

    def finish() -> None:  # idempotent: it may be cut by the one Ctrl-C and run again
        chunks.close()  # stops generation and waits for it
        with interrupts.hold():
            writer.close()

    with SingleInterrupt() as interrupts:
        try:
            try:
                writer.__enter__()
                for chunk in chunks:
                    if isinstance(chunk, TextChunk):
                        state["pieces"].append(chunk.text)
                        if show:
                            with interrupts.hold():  # never half an escape sequence on the terminal
                                writer.write(chunk.text)
                    else:
                        state["result"] = chunk
            finally:
                finish()
        except KeyboardInterrupt:  # arrived while we were printing: stop generation, keep the text
            finish()
            if state["result"] is None:
                state["result"] = Result("".join(state["pieces"]), "interrupted")
                if cache is not None:  # the engine was cut mid-update: its KV may not match its ids
                    cache.clear()
    if state["result"] is None:
        raise RuntimeError("the answer stream ended without a result")
    return state["result"]
