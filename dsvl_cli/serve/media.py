"""The server's images: fetched and decoded beside the event loop, under the media policy.

Why its own module: the server fetches URLs on behalf of anyone who can reach it, so what it may
fetch (MediaPolicy: public addresses only by default, checked after DNS resolution and on every
redirect hop), how long a fetch may take in all, and what a remote client is told about a failure
are decided here, apart from the routes.

Limits, on purpose:
- Each distinct source of a request is loaded once. URLs are fetched on a pool of FETCH_WORKERS
  threads shared by all requests; data: URIs are decoded on one thread of their own (no network
  to wait for, and one multi-megabyte payload in flight at a time bounds memory). A text-only
  request never waits for either.
- A fetch gets `limits.fetch_timeout_s` in all (not per read); at that deadline, or as soon as the
  client goes away, its socket is shut down and the request ends (a watchdog on the event loop
  checks every WATCH_S).
- A remote client learns only that an image URL could not be used; why (refused address, HTTP
  status, connection refused, not an image) goes to the server log, so the server is no oracle
  for scanning the network it sits in. Errors in data: URIs are the client's own bytes, and are
  reported in full.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from dsvl_cli.errors import ImageLoadError
from dsvl_cli.images import LoadedImage, load_source
from dsvl_cli.images.guard import Blocked, ImageGuard, MediaPolicy
from dsvl_cli.serve.limits import ServeLimits
from dsvl_cli.serve.logs import escape

FETCH_WORKERS = 8
WATCH_S = 0.1
log = logging.getLogger("dsvl.serve")


class ClientGone(Exception):
    """The client disconnected while its images were loading (the loads were cancelled)."""


class MediaLoader:
    """Loads a request's images under the policy and caps; one per app."""

    def __init__(self, policy: MediaPolicy, limits: ServeLimits, max_side: int | None):
        self.policy = policy
        self.limits = limits
        self.max_side = max_side
        self._pool = ThreadPoolExecutor(max_workers=FETCH_WORKERS, thread_name_prefix="dsvl-serve-fetch")
        self._local = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dsvl-serve-data-uris")
        self._guards: set[ImageGuard] = set()

    def shutdown(self) -> None:
        """Stop every load in flight (server shutdown) and the threads once they notice."""
        for guard in list(self._guards):
            guard.cancel("the server is shutting down")
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._local.shutdown(wait=False, cancel_futures=True)

    def precheck(self, sources: list[str]) -> None:
        """Refuse, before any connection, URLs the policy refuses from their text alone (scheme, the
        domain allow-list, --no-url-images): the client wrote those, so it may know why."""
        for source in sources:
            if not _is_data(source):
                try:
                    self.policy.check_url(source)
                except Blocked as exc:
                    raise ImageLoadError(_short(source), str(exc)) from None

    def _guard(self) -> ImageGuard:
        return ImageGuard(self.policy, max_bytes=self.limits.max_image_bytes,
                          max_pixels=self.limits.max_image_pixels, max_side=self.max_side,
                          timeout_s=self.limits.fetch_timeout_s, max_pictures=max(1, self.limits.max_images))

    async def load(self, sources: list[str], is_disconnected) -> dict[str, list[LoadedImage]]:
        """Every source loaded (each once) as its pictures (a PDF's pages, a video's frames), or the
        first failure: ImageLoadError, or ClientGone when `is_disconnected()` turns true first.
        Whatever is still loading is cancelled."""
        if not sources:
            return {}
        loop = asyncio.get_running_loop()
        guards = {source: self._guard() for source in sources}
        self._guards.update(guards.values())
        futures = {loop.run_in_executor(self._local if _is_data(source) else self._pool,
                                        partial(load_source, source, guard=guard)): source
                   for source, guard in guards.items()}
        try:
            pending = set(futures)
            while pending:
                done, pending = await asyncio.wait(pending, timeout=WATCH_S, return_when=asyncio.FIRST_EXCEPTION)
                for future in done:
                    if future.exception() is not None:
                        raise self._public(futures[future], future.exception())
                for guard in guards.values():
                    guard.expire_if_due()
                if pending and await is_disconnected():
                    raise ClientGone()
            return {futures[f]: f.result() for f in futures}
        finally:
            for guard in guards.values():
                guard.cancel("the request ended")
            self._guards.difference_update(guards.values())

    def _public(self, source: str, exc: BaseException) -> BaseException:
        """What the client is told: data: URI errors in full; for a URL, one generic line."""
        if not isinstance(exc, ImageLoadError):
            return exc
        if _is_data(source):
            return exc
        log.warning("image fetch failed: %s", escape(exc.message, 400, spaces=True))
        if not self.policy.allow_urls:
            return ImageLoadError(_short(source), "this server accepts images as data: URIs only")
        return ImageLoadError(_short(source), "could not be fetched or is not a usable image "
                                              "(the server's log says why)")


def _is_data(source: str) -> bool:
    return source[:5].lower() == "data:"


def _short(source: str) -> str:
    return source if len(source) <= 80 else source[:60] + "…"
