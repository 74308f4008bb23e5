"""Files the user owns (chat's /save, the config file, batch's rewritten -o FILE and its Parquet
file): written atomically.

A temp file in the same folder, flushed to disk, then renamed over the target: a full disk or a
crash leaves the old file or the new one, never a truncated mix. The new file keeps the old one's
permission bits (a new one gets the umask's, not mkstemp's 0600). A symlink at the target is
replaced by the file itself: nothing is written through the link to wherever it points.
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


def write_atomic(path: Path, text: str | bytes, *, private: bool = False) -> None:
    """Replace (or create) `path` with `text` (UTF-8; bytes as they are: a picture), atomically.
    `private`: mode 0600 (a secret)."""
    with atomic_file(path, private=private) as f:
        f.write(text if isinstance(text, bytes) else text.encode("utf-8"))


@contextmanager
def atomic_file(path: Path, *, private: bool = False) -> Iterator[BinaryIO]:
    """A binary file to write `path`'s new content to: on a clean exit it is flushed to disk and
    renamed over `path`; on an exception it is removed and `path` is as it was. `private`: mode
    0600 (a secret)."""
    try:
        old = path.lstat()
        mode = None if stat.S_ISLNK(old.st_mode) else stat.S_IMODE(old.st_mode)
    except FileNotFoundError:
        mode = None
    if private:
        mode = 0o600 if mode is None else mode & 0o700
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as to any new file
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
