"""Where batch inputs and images come from, beyond text files on this machine.

An INPUT of `dsvl batch` may be:
- a text file (JSONL, OpenAI batch JSONL, TSV, plain lines: batch/lines.py reads it);
- a Parquet file (`*.parquet`): one record per row, the JSONL fields as columns (`id` or
  `custom_id`, `image` or `images`, `prompt`, `system`, options). An `image` column of bytes (or
  Hugging Face datasets' `{bytes, path}` struct) is sent as a data: URI. A null cell is a missing field.
- a folder of images (with `--prompt`): every image file under it, sorted by path, recursively;
  each record's id is the file's path inside the folder (stable across runs, so --resume works
  when files are added), `line` its position in that order.
- any of these at a `scheme://` address that pyarrow's filesystems open (`s3://`, `gs://`,
  `hdfs://`, `abfs://`...), with the credentials pyarrow finds in the environment. Image sources
  with such a scheme are read the same way (load_source), so a Ray cluster can read a bucket.

Parquet and `scheme://` addresses need pyarrow (it comes with `pip install 'dsvl-cli[ray]'`).
Tests here use local files only: the `scheme://` path is pyarrow's `FileSystem.from_uri`, not code
of our own. Remote image reads are capped at the same size as URLs (images/limits.py).
"""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

from dsvl_cli.batch.lines import text_entries
from dsvl_cli.batch.records import Entry
from dsvl_cli.errors import DsvlError, ImageLoadError, UsageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
_URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# Schemes that go to pyarrow's filesystems (http(s) stays with images/fetch.py).
FS_SCHEMES = frozenset({"s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss", "file"})
_MIME = {"\x89PNG": "image/png", "\xff\xd8": "image/jpeg", "GIF8": "image/gif", "RIFF": "image/webp"}


def fs_uri(source: str) -> bool:
    """`source` names a file on a pyarrow filesystem (s3://bucket/key and the like)."""
    match = _URI.match(source)
    return bool(match) and match.group(1).lower() in FS_SCHEMES


def read_path(path: str, *, prompt: str | None) -> list[Entry]:
    """The entries of one INPUT that is not stdin: a folder's files, a document's pages or frames
    and a Parquet file's rows become the fields a JSON record would hold (no JSON text between)."""
    if fs_uri(path):
        return _read_uri(path, prompt=prompt)
    local = Path(path).expanduser()
    if local.is_dir():
        names = sorted(p.relative_to(local).as_posix() for p in local.rglob("*")
                       if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        return _folder_entries(path, names, [str(local / n) for n in names], prompt)
    if local.suffix.lower() == ".parquet":
        return _parquet_entries(path, lambda pq: pq.read_table(local))
    document = _document_entries(path, local, prompt)
    if document is not None:
        return document
    try:
        text = local.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    return text_entries(text.splitlines(), name=path, prompt=prompt)


def _image_entries(ids: list[str], images: list[str]) -> list[Entry]:
    return [Entry(line, fields={"id": i, "image": p}) for line, (i, p) in enumerate(zip(ids, images), start=1)]


def _document_entries(name: str, local: Path, prompt: str | None) -> list[Entry] | None:
    """A PDF (one record per page) or a video (one per sampled frame) as the input, or None. The
    records' images are the pages and frames named (`report.pdf#page=3`, `clip.mp4#t=12.5`), so
    each is rendered when its record is answered, and the output records carry `page` or `time`.
    `report.pdf#pages=2-4` and `clip.mp4#frames=16` select, as they do for ask."""
    from dsvl_cli.images import documents, selection, video

    sel = None
    if not local.exists():
        base, sel = selection.split(name)
        if sel is None or not Path(base).expanduser().is_file():
            return None
        local = Path(base).expanduser()
        name = base
    try:
        with local.open("rb") as f:
            head = f.read(1024)
        if documents.is_pdf(head):
            total = documents.page_count(name, str(local))
            pages = list(range(1, total + 1)) if sel is None else [p for p in sel.pages if p <= total]
            names = [selection.page_name(name, p) for p in pages]
        elif video.is_video(head):
            count = sel.count if sel is not None and sel.kind == "frames" else selection.DEFAULT_FRAMES
            names = [selection.time_name(name, t) for t in video.frame_times(name, str(local), count)]
        else:
            return None
    except ImageLoadError as exc:
        raise UsageError(exc.message) from None
    except OSError as exc:
        raise UsageError(f"{name}: cannot read it: {exc.strerror or exc}") from None
    if prompt is None:
        raise UsageError(f"{name}: a PDF or video as the input needs --prompt TEXT (the question for each page or frame)")
    if not names:
        raise UsageError(f"{name}: no pages selected")
    return _image_entries(names, names)


def _read_uri(uri: str, *, prompt: str | None) -> list[Entry]:
    fs, inner = _filesystem(uri)
    from pyarrow import fs as pafs

    info = fs.get_file_info(inner)
    if info.type == pafs.FileType.NotFound:
        raise UsageError(f"{uri}: no such file")
    scheme = _URI.match(uri).group(0)
    if info.type == pafs.FileType.Directory:
        found = fs.get_file_info(pafs.FileSelector(inner, recursive=True))
        paths = sorted(f.path for f in found if f.type == pafs.FileType.File
                       and Path(f.path).suffix.lower() in IMAGE_SUFFIXES)
        names = [p[len(inner.rstrip("/")) + 1:] for p in paths]
        return _folder_entries(uri, names, [scheme + p for p in paths], prompt)
    if inner.lower().endswith(".parquet"):
        return _parquet_entries(uri, lambda pq: pq.read_table(inner, filesystem=fs))
    with fs.open_input_stream(inner) as stream:
        return text_entries(stream.read().decode("utf-8", errors="replace").splitlines(), name=uri, prompt=prompt)


def _filesystem(uri: str):
    try:
        from pyarrow import fs as pafs
    except ImportError:
        raise UsageError(f"{uri}: reading {_URI.match(uri).group(1)}:// needs pyarrow "
                         "(pip install 'dsvl-cli[ray]')") from None
    try:
        return pafs.FileSystem.from_uri(uri)
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise UsageError(f"{uri}: cannot open it: {str(exc).splitlines()[0]}") from None


def _folder_entries(name: str, ids: list[str], paths: list[str], prompt: str | None) -> list[Entry]:
    if prompt is None:
        raise UsageError(f"{name}: a folder of images needs --prompt TEXT (the question for every image)")
    if not paths:
        raise UsageError(f"{name}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    return _image_entries(ids, paths)


def _parquet_entries(name: str, read) -> list[Entry]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UsageError(f"{name}: reading Parquet needs pyarrow (pip install 'dsvl-cli[ray]')") from None
    try:
        rows = read(pq).to_pylist()
    except (OSError, ValueError) as exc:
        raise UsageError(f"{name}: not a readable Parquet file: {str(exc).splitlines()[0]}") from None
    return [Entry(line, fields=_row(row)) for line, row in enumerate(rows, start=1)]


def _row(row: dict) -> dict:
    """A Parquet row as a record's fields: nulls dropped, image bytes as data: URIs."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if value is None:
            continue
        if key == "image":
            value = _image_value(value)
        elif key == "images" and isinstance(value, list):
            value = [_image_value(v) for v in value]
        out[key] = value
    return out


def _image_value(value: Any) -> Any:
    if isinstance(value, dict):  # Hugging Face datasets' Image feature: {"bytes": ..., "path": ...}
        value = value.get("bytes") or value.get("path")
    if isinstance(value, (bytes, bytearray)):
        head = bytes(value[:4]).decode("latin-1")
        mime = next((m for magic, m in _MIME.items() if head.startswith(magic)), "image/png")
        return f"data:{mime};base64," + base64.b64encode(value).decode("ascii")
    return value


def load_source(source: str, *, exact: bool = False):
    """A LoadedImage from any batch image source, through the one image loader (images/__init__.py):
    a pyarrow filesystem's (s3://...) opened here, read and decoded there like any other source. Every failure is
    an ImageLoadError naming the source (what batch turns into that record's error)."""
    try:
        return _load_source(source, exact)
    except ImageLoadError:
        raise
    except DsvlError as err:  # a bad DSVL_MAX_IMAGE_BYTES, a filesystem that cannot be used
        raise ImageLoadError(source, err.message) from None


def _load_source(source: str, exact: bool):
    from dsvl_cli.images import load_image

    return load_image(source, exact=exact, open_source=_open_fs if fs_uri(source) else None)


def _open_fs(source: str):
    """A pyarrow filesystem's stream of `source` (s3://...): the one image loader reads it."""
    fs, inner = _filesystem(source)
    return fs.open_input_stream(inner)
