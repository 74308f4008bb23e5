"""Reading a named pipe (a FIFO, or `<(curl -s URL)`) as an image source without hanging.

Why not a plain `open()`: opening a FIFO for reading blocks until some process opens it for
writing, so `dsvl ask some.fifo "..."` with no writer waited forever (and a batch with it never
ended). Here the pipe is opened non-blocking and each read waits at most PIPE_IDLE_S for bytes (or
for the writer to close it), so a pipe nobody writes to fails with a clear line, while process
substitution (`dsvl ask <(curl -s URL) "..."`), whose writer is already running, works as before.

Limits: the bytes are buffered under the same cap as stdin (MAX_IMAGE_BYTES); PIPE_IDLE_S bounds
each wait, not the whole read (a slow but steady writer is fine). POSIX only (select on a pipe).
"""

from __future__ import annotations

import os
import select

from dsvl_cli.errors import ImageLoadError
from dsvl_cli.images.limits import CHUNK, max_image_bytes, oserror_text, too_big

PIPE_IDLE_S = 30.0  # the same patience as a URL's read timeout


def read_pipe(source: str, path: str) -> bytes:
    """Every byte a writer puts into the pipe at `path`, until it closes its end."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # never blocks, even with no writer
    except OSError as e:
        raise ImageLoadError(source, f"cannot open the pipe: {oserror_text(e)}") from None
    cap, data = max_image_bytes(), bytearray()
    try:
        while True:
            readable, _, _ = select.select([fd], [], [], PIPE_IDLE_S)
            if not readable:
                what = "no writer opened it" if not data else "the writer stopped sending"
                raise ImageLoadError(source, f"a named pipe with nothing to read for {PIPE_IDLE_S:g} s ({what})")
            try:
                chunk = os.read(fd, CHUNK)
            except BlockingIOError:  # woken, but the bytes went elsewhere: wait again
                continue
            if not chunk:  # the writer closed its end
                return bytes(data)
            data += chunk
            if len(data) > cap:
                raise ImageLoadError(source, too_big())
    except OSError as e:
        raise ImageLoadError(source, f"cannot read the pipe: {oserror_text(e)}") from None
    finally:
        os.close(fd)
