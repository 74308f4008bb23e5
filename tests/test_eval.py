"""`dsvl eval`: benchmark files (VLMEvalKit TSV, JSONL) scored on tiny-random, in process.

The pictures are drawn with Pillow; the numbers are checked against the item records the run
wrote (and those against `dsvl ask --choices`), not against hard-coded answers: tiny-random's
accuracy is chance.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import math
from pathlib import Path

import pytest

TINY = ["-m", "tiny-random"]
COLOURS = [("red", (220, 30, 30)), ("green", (30, 180, 40)), ("blue", (30, 60, 220)), ("yellow", (240, 220, 20))]
SHAPES = ["circle", "square", "triangle"]


def _picture(k: int, size=(160, 120)) -> bytes:
    """A coloured shape on a grey background, PNG."""
    from PIL import Image, ImageDraw

    name, rgb = COLOURS[k % len(COLOURS)]
    image = Image.new("RGB", size, (128 + 9 * k % 60, 128, 128))
    draw = ImageDraw.Draw(image)
    box = (20 + 3 * k, 15, size[0] - 20, size[1] - 15)
    shape = SHAPES[k % len(SHAPES)]
    if shape == "circle":
        draw.ellipse(box, fill=rgb)
    elif shape == "square":
        draw.rectangle(box, fill=rgb)
    else:
        draw.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) // 2, box[1])], fill=rgb)
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def _tsv_rows(count: int = 6) -> list[dict]:
    """Rows 100-105; rows 100 and 104 (red shapes) have no option D."""
    rows = []
    for k in range(count):
        options = [c for c, _ in COLOURS]
        rows.append({"index": 100 + k, "image": base64.b64encode(_picture(k)).decode(),
                     "question": "What colour is the shape?", "hint": "The background is grey." if k % 2 else "",
                     "A": options[0], "B": options[1], "C": options[2], "D": "" if k % 4 == 0 else options[3],
                     "answer": "ABCD"[k % 4], "category": "colour" if k < 4 else "scene",
                     "l2-category": "perception", "split": "dev"})
    return rows


def _write_tsv(path: Path, rows: list[dict], columns: list[str] | None = None) -> Path:
    columns = columns or list(rows[0])
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, delimiter="\t", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def _items(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _run(cli, args: list[str]):
    return cli(["eval", *args, *TINY])


@pytest.fixture
def tsv(tmp_path) -> Path:
    return _write_tsv(tmp_path / "bench.tsv", _tsv_rows())


# -- extraction ----------------------------------------------------------------------------------

OPTIONS = (("A", "cat"), ("B", "dog"), ("C", "bird"), ("D", "a red car"))


@pytest.mark.parametrize("answer, letter", [
    ("B", "B"), ("(B)", "B"), ("The answer is B.", "B"), ("b) cat", "B"), ("B. dog", "B"), ("**C**", "C"),
    ("Answer: (D)", "D"), ("I think option C is right", "C"), ("It is a dog.", "B"), ("d", "D"),
    ("I am not sure.", None), ("", None), ("A or B", None), ("E", None), ("The answer is a cat and a dog.", None),
])
def test_letter_extraction(answer, letter):
    from dsvl_cli.eval.extract import letter as extract

    assert extract(answer, OPTIONS) == letter


@pytest.mark.parametrize("answer, want", [("Yes", "Yes"), ("yes, there is a dog.", "Yes"), ("No.", "No"),
                                          ("There is no dog", "No"), ("Yes and no", None), ("Maybe", None)])
def test_yes_no_extraction(answer, want):
    from dsvl_cli.eval.extract import yes_no

    assert yes_no(answer) == want


# -- the pieces ----------------------------------------------------------------------------------

def test_prompt_is_vlmevalkits_template_and_rotations_move_every_option_through_every_letter():
    from dsvl_cli.eval.prompt import mcq_prompt, rotate

    assert mcq_prompt("Which?", (("A", "cat"), ("B", "dog")), "Look.") == (
        "Hint: Look.\nQuestion: Which?\nOptions:\nA. cat\nB. dog\n"
        "Please select the correct answer from the options above. \n")
    options = (("A", "cat"), ("B", "dog"), ("C", "bird"))
    seen = {text: set() for _, text in options}
    for r in range(3):
        moved, answer = rotate(options, "B", r)
        assert dict(moved)[answer] == "dog"
        for letter, text in moved:
            seen[text].add(letter)
    assert all(places == {"A", "B", "C"} for places in seen.values())


def test_wilson_interval():
    from dsvl_cli.eval.metrics import wilson

    low, high = wilson(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)
    assert wilson(0, 5)[0] == 0.0 and wilson(5, 5)[1] == 1.0


def test_ece_bins_are_tenths_and_brier_sums_over_labels():
    from dsvl_cli.eval.metrics import brier, ece

    items = [{"prediction": "A", "answer": "A", "correct": True, "probabilities": {"A": 0.62, "B": 0.38}},
             {"prediction": "A", "answer": "B", "correct": False, "probabilities": {"A": 0.78, "B": 0.22}}]
    assert ece(items) == pytest.approx((0.38 + 0.78) / 2)  # bins [0.6, 0.7) and [0.7, 0.8), one item each
    assert brier(items) == pytest.approx((0.38 ** 2 * 2 + 0.78 ** 2 * 2) / 2)


def test_tsv_reading_mmbench_picture_references_lists_and_paths(tmp_path):
    from dsvl_cli.eval.files import read_rows

    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "a.png").write_bytes(_picture(0))
    rows = _tsv_rows(2)
    rows[1]["image"] = "100"  # MMBench: the picture of the row with index 100
    three = {**rows[0], "index": "x3", "image": str([rows[0]["image"], rows[0]["image"]])}
    _write_tsv(tmp_path / "refs.tsv", [*rows, three])
    got = read_rows(tmp_path / "refs.tsv")
    assert got[1].images == got[0].images and got[0].images[0].startswith("data:image/png;base64,iVBOR")
    assert len(got[2].images) == 2 and got[2].index == "x3" and got[0].index == 100
    assert got[0].hint is None and got[1].hint == "The background is grey."
    paths = [{"index": 1, "image_path": "pics/a.png", "question": "Q?", "A": "x", "B": "y", "answer": "b"}]
    row = read_rows(_write_tsv(tmp_path / "paths.tsv", paths))[0]
    assert row.images == (str(tmp_path / "pics" / "a.png"),) and row.answer == "B"


# -- whole runs ----------------------------------------------------------------------------------

def _ece(items: list[dict]) -> float:
    """Expected calibration error, 10 bins, written out again here."""
    bins: dict[int, list] = {}
    for item in items:
        p = max(item["probabilities"].values())
        bins.setdefault(min(9, math.floor(p * 10)), []).append((p, item["correct"]))
    return sum(len(b) / len(items) * abs(sum(c for _, c in b) / len(b) - sum(p for p, _ in b) / len(b))
               for b in bins.values())


def test_accuracy_calibration_and_categories_equal_the_item_records(cli, tsv, tmp_path):
    out = tmp_path / "items.jsonl"
    result = _run(cli, [str(tsv), "-o", str(out), "--json"])
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    items = _items(out)
    assert len(items) == summary["n"] == 6 and summary["errors"] == 0
    assert sorted(i["index"] for i in items) == list(range(100, 106))
    for item in items:
        probs = item["probabilities"]
        assert sum(probs.values()) == pytest.approx(1.0)
        assert item["prediction"] == max(probs, key=probs.get)
        assert item["correct"] == (item["prediction"] == item["answer"])
        assert item["choices"] == list(probs) == (["A", "B", "C", "D"] if "D. yellow" in item["prompt"] else ["A", "B", "C"])
    assert summary["accuracy"] == pytest.approx(sum(i["correct"] for i in items) / 6)
    assert summary["correct"] == sum(i["correct"] for i in items)
    low, high = summary["ci95"]
    assert 0 <= low <= summary["accuracy"] <= high <= 1
    for name in ("colour", "scene"):
        mine = [i for i in items if i["category"] == name]
        assert summary["categories"][name]["n"] == len(mine)
        assert summary["categories"][name]["accuracy"] == pytest.approx(sum(i["correct"] for i in mine) / len(mine))
    assert summary["l2_categories"] == {"perception": {"n": 6, "correct": summary["correct"],
                                                       "accuracy": summary["accuracy"], "ci95": summary["ci95"]}}
    brier = sum(sum((p - (k == i["answer"])) ** 2 for k, p in i["probabilities"].items()) for i in items) / 6
    assert summary["brier"] == pytest.approx(brier) and summary["ece"] == pytest.approx(_ece(items))


def test_a_row_is_reproduced_by_ask_choices(cli, tsv, tmp_path):
    out = tmp_path / "items.jsonl"
    assert _run(cli, [str(tsv), "-o", str(out), "--limit", "2"]).exit_code == 0
    item = _items(out)[1]
    row = next(r for r in _tsv_rows() if r["index"] == item["index"])
    image = tmp_path / "row.png"
    image.write_bytes(base64.b64decode(row["image"]))
    asked = cli(["ask", str(image), item["prompt"], "--choices", ",".join(item["choices"]), "--json", *TINY])
    assert asked.exit_code == 0, asked.stderr
    got = json.loads(asked.stdout)
    assert got["answer"] == item["prediction"]
    assert {s["label"]: s["probability"] for s in got["scores"]} == pytest.approx(item["probabilities"], abs=1e-5)


def test_circular_is_never_above_plain_and_keeps_n_at_rows(cli, tsv, tmp_path):
    plain_out, circular_out = tmp_path / "plain.jsonl", tmp_path / "circular.jsonl"
    plain = json.loads(_run(cli, [str(tsv), "-o", str(plain_out), "--json"]).stdout)
    circular = json.loads(_run(cli, [str(tsv), "-o", str(circular_out), "--json", "--circular"]).stdout)
    assert circular["n"] == plain["n"] == 6
    assert circular["accuracy"] <= plain["accuracy"]
    items = _items(circular_out)
    assert len(items) == circular["questions"] == 4 * 4 + 2 * 3  # k rotations for a row with k options
    by_plain = {i["index"]: i for i in _items(plain_out)}
    for index, first in by_plain.items():
        rotations = sorted((i for i in items if i["index"] == index), key=lambda i: i["rotation"])
        assert [i["rotation"] for i in rotations] == list(range(len(first["choices"])))
        assert rotations[0]["prompt"] == first["prompt"]  # rotation 0 is the row as given
        assert rotations[0]["probabilities"] == pytest.approx(first["probabilities"], abs=1e-5)
        assert len({i["prompt"] for i in rotations}) == len(rotations)
    right = {index for index in by_plain if all(i["correct"] for i in items if i["index"] == index)}
    assert circular["correct"] == len(right) and right <= {k for k, i in by_plain.items() if i["correct"]}


def test_jsonl_records_list_and_letter_options_answer_by_text(cli, tmp_path):
    (tmp_path / "p0.png").write_bytes(_picture(0))
    (tmp_path / "p1.png").write_bytes(_picture(1))
    lines = [{"id": "q1", "image": "p0.png", "question": "Which colour?", "options": ["red", "green"],
              "answer": "red", "category": "c1"},
             {"id": "q2", "image": "p1.png", "question": "Which colour?", "options": {"A": "red", "B": "green",
              "C": "blue"}, "answer": "B", "category": "c2"}]
    bench = tmp_path / "bench.jsonl"
    bench.write_text("".join(json.dumps(r) + "\n" for r in lines))
    out = tmp_path / "items.jsonl"
    result = _run(cli, [str(bench), "-o", str(out), "--json"])
    assert result.exit_code == 0, result.stderr
    summary, items = json.loads(result.stdout), {i["index"]: i for i in _items(out)}
    assert items["q1"]["answer"] == "A" and items["q1"]["choices"] == ["A", "B"]
    assert items["q2"]["prompt"].endswith("A. red\nB. green\nC. blue\n"
                                          "Please select the correct answer from the options above. \n")
    assert items["q1"]["image"] == str(tmp_path / "p0.png")
    assert summary["accuracy"] == pytest.approx(sum(i["correct"] for i in items.values()) / 2)
    assert set(summary["categories"]) == {"c1", "c2"}


def test_yes_no_set_reports_precision_recall_f1_and_yes_ratio(cli, tmp_path):
    lines = []
    for k in range(6):
        (tmp_path / f"p{k}.png").write_bytes(_picture(k))
        lines.append({"index": k, "image": f"p{k}.png", "question": f"Is there a {SHAPES[k % 3]} in the image?",
                      "answer": "yes" if k % 2 else "no", "category": "pope"})
    bench = tmp_path / "pope.jsonl"
    bench.write_text("".join(json.dumps(r) + "\n" for r in lines))
    out = tmp_path / "items.jsonl"
    summary = json.loads(_run(cli, [str(bench), "-o", str(out), "--json"]).stdout)
    items = _items(out)
    assert all(i["choices"] == ["Yes", "No"] and i["prompt"].endswith(" Please answer yes or no.") for i in items)
    pairs = [(i["prediction"], i["answer"]) for i in items]
    tp = sum(p == a == "Yes" for p, a in pairs)
    predicted, actual = sum(p == "Yes" for p, _ in pairs), sum(a == "Yes" for _, a in pairs)
    assert summary["yes_ratio"] == pytest.approx(predicted / 6)
    assert summary["recall"] == pytest.approx(tp / actual)
    assert summary["precision"] == pytest.approx(tp / predicted if predicted else 0.0)
    assert summary["accuracy"] == pytest.approx(sum(p == a for p, a in pairs) / 6)
    p, r = summary["precision"], summary["recall"]
    assert summary["f1"] == pytest.approx(2 * p * r / (p + r) if p + r else 0.0)


def test_generate_method_reads_letters_and_counts_the_unparsable(cli, tsv, tmp_path):
    from dsvl_cli.eval.extract import letter

    out = tmp_path / "items.jsonl"
    result = _run(cli, [str(tsv), "--method", "generate", "-n", "6", "-o", str(out), "--json", "--limit", "4"])
    assert result.exit_code == 0, result.stderr
    summary, items = json.loads(result.stdout), _items(out)
    assert summary["ece"] is None and summary["brier"] is None and summary["n"] == 4
    options = [tuple((k, v) for k, v in zip("ABCD", ("red", "green", "blue", "yellow")) if f"{k}. " in i["prompt"])
               for i in items]
    assert [i["prediction"] for i in items] == [letter(i["output"], o) for i, o in zip(items, options)]
    assert summary["unparsed"] == sum(not i["parsed"] for i in items) == sum(i["prediction"] is None for i in items)
    assert summary["accuracy"] == pytest.approx(sum(i["correct"] for i in items) / 4)


def test_a_broken_image_is_an_error_the_run_goes_on_exit_1(cli, tmp_path):
    rows = _tsv_rows(4)
    rows[2]["image"] = base64.b64encode(b"not a picture at all").decode()
    rows[3]["question"] = "Which <image_placeholder> is it?"  # would break the picture count: refused, alone
    out = tmp_path / "items.jsonl"
    result = _run(cli, [str(_write_tsv(tmp_path / "b.tsv", rows)), "-o", str(out), "--json"])
    assert result.exit_code == 1
    summary, items = json.loads(result.stdout), {i["index"]: i for i in _items(out)}
    assert summary["errors"] == 2 and summary["n"] == 2 and len(items) == 4
    assert items[102]["error"]["type"] == "image_error" and "prediction" not in items[102]
    assert "<image_placeholder>" in items[103]["error"]["message"]
    assert summary["accuracy"] == pytest.approx(sum(i.get("correct", False) for i in items.values()) / 2)
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("drop, needle", [("answer", "no `answer` column"), ("question", "no `question` column")])
def test_a_file_without_a_needed_column_is_refused_in_one_line(cli, tmp_path, drop, needle):
    rows = _tsv_rows(2)
    columns = [c for c in rows[0] if c != drop]
    result = _run(cli, [str(_write_tsv(tmp_path / "m.tsv", rows, columns))])
    assert result.exit_code == 2 and needle in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_files_without_options_or_answers_are_refused(cli, tmp_path):
    rows = _tsv_rows(2)
    no_options = _write_tsv(tmp_path / "n.tsv", rows, [c for c in rows[0] if c not in "ABCD"])
    result = _run(cli, [str(no_options)])
    assert result.exit_code == 2 and "no option columns (`A`, `B`, ...)" in result.stderr
    bench = tmp_path / "x.jsonl"
    bench.write_text(json.dumps({"question": "Q?", "options": ["a", "b"], "answer": "A"}) + "\n"
                     + json.dumps({"question": "Q?", "options": ["a", "b"]}) + "\n")
    result = _run(cli, [str(bench)])
    assert result.exit_code == 2 and "line 2: no `answer` field" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_resume_asks_only_what_is_missing_and_sums_up_the_whole_file(cli, tsv, tmp_path):
    whole = json.loads(_run(cli, [str(tsv), "--json", "--circular"]).stdout)
    out = tmp_path / "items.jsonl"
    first = _run(cli, [str(tsv), "--json", "--circular", "--limit", "2", "-o", str(out)])
    assert json.loads(first.stdout)["n"] == 2
    before = len(_items(out))
    assert before == 3 + 4  # row 100 has 3 options, row 101 has 4
    out.write_text(out.read_text() + '{"index": 10')  # a torn last line, as a killed run leaves
    again = _run(cli, [str(tsv), "--json", "--circular", "--resume", "-o", str(out)])
    assert again.exit_code == 0, again.stderr
    resumed, items = json.loads(again.stdout), _items(out)
    assert f"{22 - before} questions asked" in again.stderr
    assert len(items) == 22 and len({(i["index"], i["rotation"]) for i in items}) == 22
    for key in ("n", "correct", "questions", "categories"):
        assert resumed[key] == whole[key]
    assert resumed["accuracy"] == pytest.approx(whole["accuracy"]) and resumed["brier"] == pytest.approx(whole["brier"])
    other = _run(cli, [str(tsv), "--resume", "-o", str(out)])  # not --circular: other prompts per record
    assert other.exit_code == 2 and "was written with --circular" in other.stderr
    assert _run(cli, [str(tsv), "--resume"]).exit_code == 2  # --resume without -o


def test_plot_writes_a_reliability_diagram_and_generate_cannot(cli, tsv, tmp_path):
    pytest.importorskip("matplotlib")
    picture = tmp_path / "calibration.png"
    result = _run(cli, [str(tsv), "--plot", str(picture), "--limit", "3"])
    assert result.exit_code == 0, result.stderr
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    refused = _run(cli, [str(tsv), "--plot", str(picture), "--method", "generate"])
    assert refused.exit_code == 2 and "needs probabilities" in refused.stderr


def test_terminal_table_and_pipe_lines(tsv):
    from dsvl_cli.eval.report import print_summary
    from dsvl_cli.screen.environment import Environment

    summary = {"n": 3, "correct": 2, "accuracy": 2 / 3, "ci95": [0.2, 0.9], "errors": 1, "ece": 0.1, "brier": 0.5,
               "categories": {"colour": {"n": 3, "correct": 2, "accuracy": 2 / 3, "ci95": [0.2, 0.9]}}}
    for tty in (True, False):
        out = io.StringIO()
        print_summary(summary, Environment(stdin=io.StringIO(), stdout=out, stderr=io.StringIO(), stdout_isatty=tty))
        text = out.getvalue()
        assert "colour" in text and "overall" in text
        if tty:
            assert "66.7%" in text and "20.0%-90.0%" in text and "ece 0.1000" in text
        else:
            assert "overall\t3\t2\t0.6667\t0.2000\t0.9000\n" in text and "errors\t1\n" in text


def test_server_gives_the_local_runs_items(cli, tsv, tmp_path, engine):
    from dsvl_cli.serve.app import create_app
    from test_serve import _start

    local_out, remote_out = tmp_path / "local.jsonl", tmp_path / "remote.jsonl"
    local = json.loads(_run(cli, [str(tsv), "-o", str(local_out), "--json"]).stdout)
    url, stop = _start(create_app(engine))
    try:
        remote = cli(["eval", str(tsv), "-o", str(remote_out), "--json", "--server", url])
    finally:
        stop()
    assert remote.exit_code == 0, remote.stderr
    assert json.loads(remote.stdout)["n"] == local["n"]
    mine = {i["index"]: i for i in _items(local_out)}
    for item in _items(remote_out):
        assert item["prompt"] == mine[item["index"]]["prompt"] and item["prediction"] == mine[item["index"]]["prediction"]
        assert item["probabilities"] == pytest.approx(mine[item["index"]]["probabilities"], abs=1e-5)


def test_the_example_benchmark_reads_cleanly():
    from conftest import EXAMPLES
    from dsvl_cli.eval.files import read_rows

    rows = read_rows(EXAMPLES / "mcq.jsonl")
    assert len(rows) == 7 and all(r.problem is None for r in rows)
    assert rows[4].answer == "B" and rows[6].yes_no and all(Path(r.images[0]).is_file() for r in rows)
