"""One error hierarchy and the exit codes of the command contract (DESIGN §2).

Every error the user can cause or meet is a DsvlError; the CLI layer prints `str(err)` as one line
and exits with `err.exit_code`. Messages name the input they are about.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    FAILURE = 1  # runtime failure: model load, out of memory, a failed batch record
    USAGE = 2  # bad usage or bad input
    INTERRUPTED = 130


class DsvlError(Exception):
    """Base class: a message for the user and the exit code it maps to."""

    exit_code: ExitCode = ExitCode.FAILURE
    kind: str = "error"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class UsageError(DsvlError):
    """Bad options or bad text input (exit 2)."""

    exit_code = ExitCode.USAGE
    kind = "usage_error"


class ImageLoadError(DsvlError):
    """An image source that cannot be read, fetched or decoded (exit 2). `source` names it."""

    exit_code = ExitCode.USAGE
    kind = "image_error"

    def __init__(self, source: str, reason: str):
        super().__init__(f"image {source}: {reason}")
        self.source = source
        self.reason = reason


class ModelError(DsvlError):
    """The model cannot be found, downloaded or loaded (exit 1)."""

    kind = "model_error"


class GenerationError(DsvlError):
    """Generation failed at run time, e.g. out of memory (exit 1)."""

    kind = "generation_error"


class ContextLengthError(DsvlError):
    """The prompt would not fit in the model's context window (exit 2)."""

    exit_code = ExitCode.USAGE
    kind = "context_length"
