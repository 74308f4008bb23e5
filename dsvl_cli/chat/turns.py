"""The values a chat session hands its front ends: a Reply to an input, an AnsweredTurn, the
session's running Totals. No I/O here."""

from __future__ import annotations

from dataclasses import dataclass

from dsvl_cli.errors import DsvlError
from dsvl_cli.images import display_source
from dsvl_cli.results import Result, Stats


@dataclass(frozen=True)
class Reply:
    """What a front end shows after an input: a message, and whether to answer or leave now.

    `code` is the exit code the input's failure maps to (0: it did not fail); a pipe exits with the
    worst of them (see chat/ui.worst)."""

    text: str = ""
    code: int = 0
    answer: bool = False  # a question (or /retry) is ready: call ChatSession.respond
    exit: bool = False
    confirm: str | None = None  # a command that does what failed, if the user agrees (a terminal asks)

    @property
    def error(self) -> bool:
        return self.code != 0

    @classmethod
    def failure(cls, err: DsvlError) -> Reply:
        return cls(err.message, code=int(err.exit_code))


@dataclass(frozen=True)
class AnsweredTurn:
    """One answered exchange. `number` is its place in the conversation (a /retry repeats it)."""

    number: int
    prompt: str
    images: list[str]
    result: Result

    def to_dict(self, model: str) -> dict:
        return {"turn": self.number, "prompt": self.prompt, "images": [display_source(s) for s in self.images],
                **self.result.to_dict(), "model": model}


@dataclass
class Totals:
    turns: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    generated_tokens: int = 0
    total_s: float = 0.0

    def add(self, stats: Stats) -> None:
        self.turns += 1
        self.prompt_tokens += stats.prompt_tokens
        self.cached_tokens += stats.cached_tokens
        self.generated_tokens += stats.generated_tokens
        self.total_s += stats.total_s

