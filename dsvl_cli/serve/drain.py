"""Shutdown's last word: the jobs still open when the grace period ends are cut, not dropped.

uvicorn, on SIGINT/SIGTERM, stops accepting and waits for open requests, then cancels their tasks:
a stream cancelled that way just stops, with no final chunk, and its client cannot tell a cut from
a finished answer. `Drain` cuts them first, at the end of the grace period (transport.py calls
`begin` when shutdown starts): each running or queued job is stopped with `cut` set, so a stream
ends with an error chunk and `[DONE]`, and a request still queued gets 503.
"""

from __future__ import annotations

import asyncio

from dsvl_cli.serve.scheduler import Job


class Drain:
    """The server's open jobs, so that shutdown can cut them once its grace period ends.

    `begin(grace_s)` runs on the event loop when uvicorn starts shutting down; `grace_s` later every
    job still open is stopped with `cut` set (its stream then ends with an error chunk and [DONE];
    a queued one gets 503) and `on_cut` runs (the image loads in flight are cancelled).
    """

    def __init__(self, on_cut=None):
        self._jobs: set[Job] = set()
        self._on_cut = on_cut

    def add(self, job: Job) -> None:
        self._jobs.add(job)

    def discard(self, job: Job) -> None:
        self._jobs.discard(job)

    def begin(self, grace_s: float) -> None:
        asyncio.get_running_loop().call_later(grace_s, self.cut_all)

    def cut_all(self) -> None:
        for job in list(self._jobs):
            job.cut = True
            job.stop.set()
        if self._on_cut is not None:
            self._on_cut()
