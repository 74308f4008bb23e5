"""Chat in a pipe, read ahead: the pictures of the next `/image` lines decode while an answer streams.

A script (`dsvl chat < questions.txt`) is all there before the first answer starts, so its
inputs are read by a thread, up to `depth` inputs ahead of the one being answered, and the image
sources of each `/image` line among them are decoded in a worker thread meanwhile (images/cache.py:
each source once, a failure remembered and raised at its own turn, with the same one-line error as
without reading ahead). When the script reaches that `/image` line, its pictures are ready: the
12 MP photo's ~100 ms of intake ran beside the previous answer instead of before the next one.

Only what a line names is read early: `-` (stdin is the script) and `/load` files are not, and a
source is decoded once per mention, so a file the script changes between two mentions is read
again. A terminal chat cannot know the next picture before it is typed; it decodes as before.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

from dsvl_cli.chat import files as chat_files
from dsvl_cli.chat.session import check_chat_sources, unwrap_block
from dsvl_cli.errors import DsvlError, ImageLoadError
from dsvl_cli.images import LoadedImage, display_source, load_images, load_source
from dsvl_cli.images.cache import SourceCache
from dsvl_cli.images.documents import too_many

DEPTH = 8  # inputs read ahead at most: bounds the pictures held before their turn
_END = object()


def image_sources(text: str) -> list[str]:
    """The sources an input's `/image` command names ([] for anything else, or a bad command)."""
    text = unwrap_block(text).strip()
    name, _, arg = text.partition(" ")
    if name.lower() != "/image":
        return []
    sources = chat_files.split_sources(arg.strip())
    try:
        check_chat_sources(sources)
    except DsvlError:
        return []  # the command reports it at its turn
    return sources


class ReadAhead:
    """Iterate the inputs (read by a thread, `depth` ahead); `load_images` is the session's loader."""

    def __init__(self, inputs: Iterable[str], *, exact: bool = False, depth: int = DEPTH):
        self._inputs = inputs
        self._exact = exact
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="dsvl-chat-images")
        self._cache = SourceCache(lambda source: load_source(source, exact=self._exact), pool=self._pool)
        self._reader = threading.Thread(target=self._read, name="dsvl-chat-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            for text in self._inputs:
                for source in image_sources(text):
                    self._cache.expect(source)
                    self._cache.prefetch(source)
                self._queue.put(text)
        except BaseException as err:  # a broken stdin: raised in the main thread, at its place
            self._queue.put(err)
        self._queue.put(_END)

    def __iter__(self) -> Iterator[str]:
        while True:
            item = self._queue.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def load_images(self, sources: Sequence[str], *, exact: bool = False,
                    max_pictures: int | None = None) -> list[LoadedImage]:
        """The pictures of one `/image` command (a PDF's pages, a video's frames: several for one
        source): read ahead where they were, else loaded now. Past `max_pictures`: refused."""
        return load_images(sources, exact=exact, max_pictures=max_pictures, load=self._load)

    def _load(self, source: str, *, stdin=None, exact: bool = False,
              max_pictures: int | None = None) -> list[LoadedImage]:
        """One source's pictures for images.load_images: the ones read ahead, else load_source's."""
        if source not in self._cache:
            return load_source(source, exact=exact, max_pictures=max_pictures)
        try:  # read ahead (as the session decodes, unless asked otherwise): this mention's use is over
            pictures = self._cache.get(source) if exact == self._exact else load_source(source, exact=exact)
        finally:
            self._cache.release(source)
        if max_pictures is not None and 1 < len(pictures) > max_pictures:
            raise ImageLoadError(display_source(source), too_many(len(pictures), "pictures", max_pictures,
                                                                  "#pages=1-"))
        return pictures

    def close(self) -> None:
        """Stop decoding what will not be asked for (the script ended early: /exit, Ctrl-C)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._cache.clear()
