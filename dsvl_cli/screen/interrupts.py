"""Ctrl-C (and SIGTERM) handling, in one place: what the first press does and what a second does.

`SingleInterrupt` (ask's and chat's answers): the first Ctrl-C raises KeyboardInterrupt where the
answer streams, which stops it gracefully; later presses are ignored while it cleans up.
`StopOnSignal` (batch): the first Ctrl-C or SIGTERM sets a stop event (the run ends at its next
step, exit 130, or 143 for SIGTERM); a second one raises KeyboardInterrupt at once. Both set their
handlers only in the main thread (the only one Python lets) and put the previous ones back.
"""

from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager


class SingleInterrupt:
    """Within it, the first Ctrl-C raises KeyboardInterrupt and later ones are ignored (until `arm`).

    Why: the clean-up after a Ctrl-C (stopping generation, finishing the output) must not be cut
    short by a second press, and a press must not land in the middle of a write to the terminal
    (half an escape sequence, Rich's buffer left open): within `hold()` it waits for the block's
    end. The chat REPL holds one across its whole loop, disarmed while the prompt waits; an inner
    one (stream_answer's) then works through it. Only the main thread can set signal handlers;
    elsewhere, or where someone else handles SIGINT, this does nothing."""

    def __init__(self) -> None:
        self.armed, self.pressed, self.held, self.deferred = True, False, False, False
        self._previous = None
        self._active = self  # the instance whose handler is installed (an outer one, if any)

    def _handler(self, signum, frame) -> None:
        if not self.armed or self.pressed:
            return
        if self.held:
            self.deferred = True
            return
        self.pressed = True
        raise KeyboardInterrupt

    @contextmanager
    def hold(self):
        active = self._active
        outer, active.held = active.held, True
        try:
            yield
        finally:
            active.held = outer
            if not outer and active.deferred:
                active.deferred = False
                if active.armed and not active.pressed:
                    active.pressed = True
                    raise KeyboardInterrupt

    def arm(self) -> None:
        """Take the next press again (and take SIGINT back from whoever set it meanwhile, e.g.
        prompt_toolkit, which leaves Python's default handler behind)."""
        self.armed, self.pressed, self.deferred = True, False, False
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._handler)

    def disarm(self) -> None:
        self.armed = False

    def __enter__(self) -> SingleInterrupt:
        if threading.current_thread() is not threading.main_thread():
            return self
        current = signal.getsignal(signal.SIGINT)
        if current is signal.default_int_handler:
            self._previous = signal.signal(signal.SIGINT, self._handler)
        elif isinstance(getattr(current, "__self__", None), SingleInterrupt):
            self._active = current.__self__
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


class StopOnSignal:
    """First Ctrl-C or SIGTERM: set `stop` so the running batch ends at its next step, and remember
    which signal it was (`signum`, for the exit code). A second signal: abort now.

    Why SIGTERM too: `kill`, `timeout` and process managers send it; without a handler Python dies
    at once, with no summary and the running batch's finished records unwritten."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, stop: threading.Event):
        self.stop, self.previous, self.signum = stop, {}, None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def _handle(self, signum, frame) -> None:
        if self.stop.is_set() and self.signum is not None:
            raise KeyboardInterrupt
        self.signum = self.signum or signum
        self.stop.set()
        what = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
        print(f"dsvl: {what}: stopping after the current step ({what} again to abort)", file=sys.stderr, flush=True)

    def __exit__(self, *exc) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
