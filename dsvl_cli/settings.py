"""Typed, validated settings: built once at the CLI boundary, read everywhere else.

Each option has one default and one `DSVL_*` environment variable, declared here and in options.py.
"""

from __future__ import annotations

import dataclasses
import re
import math
from dataclasses import dataclass, field

from dsvl_cli import catalog
from dsvl_cli.errors import UsageError
from dsvl_cli.structured.spec import AnswerFormat

DEFAULT_MODEL = "deepseek-community/deepseek-vl-7b-chat"
DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "bfloat16", "float16", "float32")
QUANTIZE = ("int8", "int4")
RANDOM_MODELS = tuple(catalog.RANDOM_MODELS)  # built here: no revisions
MAX_TEMPERATURE = 100.0  # finite bounds: NaN and inf pass `< 0` checks and fail deep in generate
MAX_REPETITION_PENALTY = 100.0
MAX_LOGPROBS = 20  # OpenAI's top_logprobs bound


def _finite(flag: str, value: float | None) -> None:
    if value is not None and not math.isfinite(value):
        raise UsageError(f"{flag} {value}: must be a finite number")


def _check_device(device: str) -> None:
    base, _, index = device.partition(":")
    if base not in DEVICES or (index and (base != "cuda" or not index.isdigit())):
        raise UsageError(f"--device {device!r}: use auto, cpu, cuda, cuda:N or mps")


@dataclass(frozen=True)
class ModelSettings:
    """Which model to load and how. `compile=None` means: decide per command (fast path where it pays)."""

    model: str = DEFAULT_MODEL
    revision: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    offline: bool = False
    compile: bool | None = None
    quantize: str | None = None

    def __post_init__(self) -> None:
        _check_device(self.device)
        if self.dtype not in DTYPES:
            raise UsageError(f"--dtype {self.dtype!r}: use one of {', '.join(DTYPES)}")
        if self.quantize is not None and self.quantize not in QUANTIZE:
            raise UsageError(f"--quantize {self.quantize!r}: use int8 or int4")
        if not self.model:
            raise UsageError("--model is empty")
        if self.revision is not None and self.model in RANDOM_MODELS:
            raise UsageError(f"--revision {self.revision}: model {self.model} is built here, it has no "
                             "revisions (drop --revision)")


@dataclass(frozen=True)
class GenerationSettings:
    """Sampling options. temperature 0 means greedy decoding."""

    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    system: str | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)
    answer_format: AnswerFormat | None = None  # --schema / --regex / --choices (structured/spec.py)
    logprobs: int | None = None  # --logprobs N: the top-N alternatives of each token (0: the chosen one's only)

    def __post_init__(self) -> None:
        for flag, value in (("--temperature", self.temperature), ("--top-p", self.top_p),
                            ("--repetition-penalty", self.repetition_penalty)):
            _finite(flag, value)
        if self.max_new_tokens < 1:
            raise UsageError(f"--max-new-tokens {self.max_new_tokens}: must be at least 1")
        if not 0 <= self.temperature <= MAX_TEMPERATURE:
            raise UsageError(f"--temperature {self.temperature}: must be from 0 (greedy) to {MAX_TEMPERATURE:g}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise UsageError(f"--top-p {self.top_p}: must be in (0, 1]")
        if self.top_k is not None and self.top_k < 1:
            raise UsageError(f"--top-k {self.top_k}: must be at least 1")
        if self.repetition_penalty is not None and not 0 < self.repetition_penalty <= MAX_REPETITION_PENALTY:
            raise UsageError(f"--repetition-penalty {self.repetition_penalty}: must be above 0 and at most "
                             f"{MAX_REPETITION_PENALTY:g}")
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_LOGPROBS:
            raise UsageError(f"--logprobs {self.logprobs}: must be from 0 to {MAX_LOGPROBS}")
        if self.logprobs is not None and self.answer_format is not None and self.answer_format.kind == "choices":
            raise UsageError("choices and logprobs cannot be used together: choices already gives each "
                             "label's log-probability")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def replace(self, **changes) -> GenerationSettings:
        """A validated copy with some fields changed (used by /set, batch records, the server)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise UsageError(f"unknown generation option(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)

    def generate_kwargs(self) -> dict:
        """Keyword arguments for transformers' `generate` (sampling part only)."""
        kwargs: dict = {"max_new_tokens": self.max_new_tokens}  # answer_format, logprobs: engine/core.py
        if self.greedy:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(do_sample=True, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
        if self.repetition_penalty is not None:
            kwargs["repetition_penalty"] = self.repetition_penalty
        if self.stop:
            kwargs["stop_strings"] = list(self.stop)
        return kwargs


# -- durations as people type them (--keep-alive): `30s`, `5m`, `1h30m`, `250ms`, `90` (seconds), `0` (off).
# Why not a library: the grammar is ollama's `keep_alive` (Go's time.ParseDuration minus the exotic
# units) and fits in a regular expression; `--help` must stay free of imports. Limits: no negative
# durations ("forever" is not offered: an idle server should always end), no days or weeks.

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h)")


def parse_duration(text: str, flag: str = "--keep-alive") -> float:
    """Seconds in `text`; a bare number is seconds. UsageError names the flag and the value."""
    value = text.strip().lower()
    try:
        seconds = float(value)
    except ValueError:
        seconds = None
    if seconds is None and value and _PART.sub("", value) == "":
        seconds = sum(float(n) * _UNITS[unit] for n, unit in _PART.findall(value))
    if seconds is None or seconds != seconds or seconds < 0 or seconds == float("inf"):
        raise UsageError(f"{flag} {text!r}: use a duration such as 30s, 5m, 1h or 0 (off)")
    return seconds


def format_duration(seconds: float) -> str:
    """`4m59s`, `2h0m`, `12s`, `0.4s`: short and whole-second past 10 s."""
    if seconds < 10:
        return f"{seconds:.1f}s" if seconds % 1 else f"{int(seconds)}s"
    total = int(round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"
