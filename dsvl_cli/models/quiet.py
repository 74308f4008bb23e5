"""transformers' logging for local loads and builds (the engine's loader and tiny-random's builder)."""

from __future__ import annotations


def quiet_transformers() -> None:
    """Local loads are fast: no per-weight progress bar, and warnings only at error level.

    `--debug` leaves transformers' own logging as it is.
    """
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
