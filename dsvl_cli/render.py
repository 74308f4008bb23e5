"""Terminal output: answers on stdout, everything else on stderr.

stdout carries answers only: live-rendered Markdown on a terminal; plain text streamed as it is
generated when stdout is not a terminal, with `--plain`, or with NO_COLOR set (no escape codes).
stderr carries status, warnings, errors and the `--stats` line.
"""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from typing import TextIO

from rich.console import Console

RANDOM_WEIGHTS_NOTE = "model {name} has random weights: its answers are noise (for trying dsvl offline)"


def note(console: Console, message: str, style: str = "yellow") -> None:
    """One status or warning line on stderr, never wrapped."""
    console.print(message, style=style, markup=False, highlight=False, soft_wrap=True)


def stderr_console() -> Console:
    return Console(stderr=True, highlight=False, no_color=bool(os.environ.get("NO_COLOR")) or None)


def wants_markdown(plain: bool, stream: TextIO | None = None) -> bool:
    stream = stream or sys.stdout
    return not plain and not os.environ.get("NO_COLOR") and stream.isatty()


class AnswerWriter:
    """Writes one streamed answer: live Markdown on a terminal, plain text otherwise."""

    def __init__(self, markdown: bool, stream: TextIO | None = None):
        self.stream = stream or sys.stdout
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


def print_json(obj: dict, stream: TextIO | None = None) -> None:
    stream = stream or sys.stdout
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
