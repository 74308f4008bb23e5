"""`dsvl batch` inputs beyond text files (a folder of images, Parquet) and `-o *.parquet` (no Ray)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import EXAMPLES

SHAPES, SUNSET, CHART = (str(EXAMPLES / n) for n in ("shapes.png", "sunset.jpg", "chart.png"))
TINY = ["-m", "tiny-random", "-n", "6"]
pq = pytest.importorskip("pyarrow.parquet")


def _records(path: Path) -> dict:
    return {r["id"]: r for r in map(json.loads, path.read_text().splitlines())}


def _answers(records) -> dict:
    return {r["id"]: (r.get("answer"), r.get("error", {}).get("type")) for r in records}


def test_folder_of_images_to_parquet_and_resume(cli, tmp_path):
    pics = tmp_path / "pics"
    (pics / "more").mkdir(parents=True)
    for source, name in ((SHAPES, "a.png"), (SUNSET, "more/b.JPG"), (CHART, "c.png")):
        shutil.copy(source, pics / name)
    (pics / "notes.txt").write_text("not an image")
    listed = tmp_path / "list.txt"
    listed.write_text("".join(str(pics / n) + "\n" for n in ("a.png", "c.png", "more/b.JPG")))
    assert cli(["batch", str(listed), "--prompt", "What?", "-o", str(tmp_path / "ref.jsonl"), *TINY]).exit_code == 0
    ref = _records(tmp_path / "ref.jsonl")  # the same images as plain lines: ids 1, 2, 3

    out = tmp_path / "out.parquet"
    result = cli(["batch", str(pics), "--prompt", "What?", "-o", str(out), *TINY])
    assert result.exit_code == 0, result.output
    rows = sorted(pq.read_table(out).to_pylist(), key=lambda r: r["id"])  # rows in completion order
    assert [r["id"] for r in rows] == ["a.png", "c.png", "more/b.JPG"]  # relative paths, text files skipped
    assert [r["answer"] for r in rows] == [ref[k]["answer"] for k in (1, 2, 3)]
    assert [json.loads(r["record"])["image"] for r in rows] == [str(pics / n) for n in ("a.png", "c.png", "more/b.JPG")]
    assert all(r["generated_tokens"] > 0 and r["error_type"] is None for r in rows)
    assert not Path(str(out) + ".part.jsonl").exists()

    shutil.copy(SHAPES, pics / "d.png")  # a new image: --resume answers only that one
    again = cli(["batch", str(pics), "--prompt", "What?", "-o", str(out), "--resume", *TINY])
    assert again.exit_code == 0 and "1 done, 0 failed, 3 skipped" in again.stderr
    rows = pq.read_table(out).to_pylist()
    assert sorted(r["id"] for r in rows) == ["a.png", "c.png", "d.png", "more/b.JPG"]

    bare = cli(["batch", str(pics), *TINY])
    assert bare.exit_code == 2 and "--prompt" in bare.stderr and "Traceback" not in bare.output


def test_parquet_input_with_image_bytes_paths_and_options(cli, tmp_path):
    import pyarrow as pa

    table = pa.table({
        "id": ["bytes", "path", "text"],
        "image": [Path(SHAPES).read_bytes(), None, None],
        "images": [None, [CHART], None],
        "prompt": ["What is this?", "What is this?", "Hi"],
        "max_new_tokens": [6, 6, 4],
    })
    pq.write_table(table, tmp_path / "jobs.parquet")
    result = cli(["batch", str(tmp_path / "jobs.parquet"), "-o", str(tmp_path / "out.jsonl"), *TINY])
    assert result.exit_code == 0, result.output
    got = _records(tmp_path / "out.jsonl")
    assert got["bytes"]["image"].startswith("data:image/png;base64,") and len(got["bytes"]["image"]) < 200
    assert got["text"]["stats"]["generated_tokens"] <= 4

    same = tmp_path / "same.jsonl"  # the same questions as JSONL, the image as a file
    same.write_text("".join(json.dumps(r) + "\n" for r in (
        {"id": "bytes", "image": SHAPES, "prompt": "What is this?"},
        {"id": "path", "images": [CHART], "prompt": "What is this?"},
        {"id": "text", "prompt": "Hi", "max_new_tokens": 4})))
    assert cli(["batch", str(same), "-o", str(tmp_path / "same_out.jsonl"), *TINY]).exit_code == 0
    assert _answers(got.values()) == _answers(_records(tmp_path / "same_out.jsonl").values())

    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    bad = cli(["batch", str(tmp_path / "bad.parquet"), *TINY])
    assert bad.exit_code == 2 and "bad.parquet: not a readable Parquet file" in bad.stderr


def test_parquet_cells_reach_validation_as_values_not_json_text(cli, tmp_path):
    """A Parquet row goes to the record's validation as its cells (no JSON text between): a cell
    JSON cannot hold (bytes as the prompt, a timestamp column) is that record's error, and the rest
    are answered."""
    import datetime

    import pyarrow as pa

    pq.write_table(pa.table({"id": ["a", "b"], "prompt": [b"bytes, not text", None]}), tmp_path / "bytes.parquet")
    pq.write_table(pa.table({"id": ["t"], "prompt": ["Hi"], "taken": [datetime.datetime(2026, 1, 2)]}),
                   tmp_path / "when.parquet")
    (tmp_path / "ok.jsonl").write_text(json.dumps({"id": "ok", "prompt": "Hi"}) + "\n")
    result = cli(["batch", str(tmp_path / "bytes.parquet"), str(tmp_path / "when.parquet"), str(tmp_path / "ok.jsonl"),
                  "-o", str(tmp_path / "out.jsonl"), *TINY])
    assert result.exit_code == 1 and "Traceback" not in result.output
    got = _records(tmp_path / "out.jsonl")
    assert got["a"]["error"] == {"type": "invalid_record", "message": "prompt must be a non-empty string"}
    assert got["b"]["error"] == {"type": "invalid_record", "message": "missing prompt"}
    assert got["t"]["error"] == {"type": "invalid_record", "message": "unknown field(s): taken"}
    assert got["ok"]["answer"] and got["a"]["input"].endswith("bytes.parquet")


def test_output_records_escape_controls_as_one_json_value(tmp_path):
    """The sink writes every record through record_json (the Ray workers too): a C1 control in a
    value is escaped (a terminal acts on raw ones), and the line is the same JSON value."""
    import io

    from dsvl_cli.batch import ray_workers  # noqa: F401  (imports the sink it writes through)
    from dsvl_cli.batch.output import Writer, record_json

    obj = {"id": "a\x9bb\x1b[2J", "answer": "é ok\u0085"}
    stream = io.StringIO()
    Writer(stream).write(obj)
    line = stream.getvalue()
    assert line == record_json(obj) + "\n" and json.loads(line) == obj
    assert not any(0x7f <= ord(c) <= 0x9f or c == "\x1b" for c in line) and "é" in line
    assert ray_workers.record_json is record_json


def test_filesystem_image_sources_go_through_the_one_loader(tmp_path):
    """A pyarrow filesystem source (file:// here, s3:// in a cluster) is read and decoded by the
    one image loader: the same pixels as the path, the same one-line errors."""
    from dsvl_cli.batch.sources import load_source
    from dsvl_cli.errors import ImageLoadError
    from dsvl_cli.images import load_image

    uri = Path(SHAPES).resolve().as_uri()
    got, want = load_source(uri), load_image(SHAPES)
    assert got.source == uri and got.image.size == want.image.size and got.image.tobytes() == want.image.tobytes()
    (tmp_path / "empty.png").write_bytes(b"")
    for source, reason in ((tmp_path / "gone.png").as_uri(), "cannot read it"), ((tmp_path / "empty.png").as_uri(),
                                                                                "empty file"):
        with pytest.raises(ImageLoadError) as err:
            load_source(source)
        assert reason in err.value.reason and err.value.source == source
