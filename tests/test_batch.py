"""`dsvl batch`: formats, batched greedy answers equal one-at-a-time generate, nothing lost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import EXAMPLES, REPO, load_reference, reference_generate

SHAPES, SUNSET, CHART = (str(EXAMPLES / n) for n in ("shapes.png", "sunset.jpg", "chart.png"))


def _jsonl(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def _records(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]  # fails on any invalid line


def _parse(lines, prompt=None, **base):
    from dsvl_cli.batch.inputs import parse_lines
    from dsvl_cli.settings import GenerationSettings

    return parse_lines(lines, base=GenerationSettings(**base), prompt=prompt)


# -- input formats --------------------------------------------------------------------------------


def test_jsonl_records_with_options_and_default_ids():
    from dsvl_cli.batch.records import BadRecord, Record

    items = _parse([
        json.dumps({"id": "a", "image": SHAPES, "prompt": "What?", "max_new_tokens": 5, "stop": "x"}),
        "",
        json.dumps({"images": [SHAPES, CHART], "prompt": "Compare.", "system": "Be brief.", "temperature": 0.5}),
        json.dumps({"prompt": "Hi", "max_new_tokens": 0}),
        json.dumps({"prompt": "Hi", "colour": "red"}),
    ])
    a, b, c, d = items
    assert isinstance(a, Record) and a.id == "a" and a.images == [SHAPES] and a.line == 1
    assert a.gen.max_new_tokens == 5 and a.gen.stop == ("x",)
    assert isinstance(b, Record) and b.id == 3 and b.line == 3 and b.images == [SHAPES, CHART]
    assert b.system == "Be brief." and b.gen.temperature == 0.5
    assert isinstance(c, BadRecord) and c.line == 4 and "max-new-tokens" in c.message
    assert isinstance(d, BadRecord) and d.type == "invalid_record" and "colour" in d.message


def test_openai_batch_shape():
    line = {"custom_id": "req-1", "method": "POST", "url": "/v1/chat/completions", "body": {
        "model": "whatever", "max_tokens": 7, "temperature": 0, "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": SHAPES}},
                                         {"type": "text", "text": "What shapes?"}]}]}}
    (record,) = _parse([json.dumps(line)])
    assert (record.id, record.images, record.prompt, record.system) == ("req-1", [SHAPES], "What shapes?", "You are terse.")
    assert record.gen.max_new_tokens == 7
    bad = {"custom_id": "req-2", "body": {"messages": [{"role": "user", "content": "a"},
                                                       {"role": "assistant", "content": "b"}]}}
    (err,) = _parse([json.dumps(bad)])
    assert err.id == "req-2" and "one user message" in err.message


@pytest.mark.parametrize("fields", [
    {"temperature": -1}, {"top_p": 0}, {"max_tokens": 0}, {"seed": 2 ** 70},
    {"stop": 3}, {"response_format": "json"}, {"model": 5},
])
def test_openai_body_records_are_checked_by_the_request_model_serve_uses(fields):
    from dsvl_cli.batch.records import BadRecord
    from dsvl_cli.errors import UsageError
    from dsvl_cli.wire.protocol import parse_request

    body = {"messages": [{"role": "user", "content": "Hi"}], **fields}
    with pytest.raises(UsageError) as served:  # what `dsvl serve` answers (400) for this body
        parse_request(bytearray(json.dumps(body).encode()))
    (err,) = _parse([json.dumps({"custom_id": "r", "body": body})])
    assert isinstance(err, BadRecord) and err.id == "r" and err.type == "invalid_record"
    assert err.message == "body." + served.value.message
    assert err.message.startswith(f"body.{next(iter(fields))}: ")


def test_openai_body_records_take_numbers_as_json_numbers_only():
    from dsvl_cli.batch.records import BadRecord

    given = [("temperature", "0.5"), ("max_tokens", 5.0), ("max_tokens", True), ("top_k", "3"), ("logprobs", "yes")]
    lines = [json.dumps({"custom_id": i, "body": {"messages": [{"role": "user", "content": "Hi"}], k: v}})
             for i, (k, v) in enumerate(given)]
    errors = _parse(lines)  # dsvl serve takes these as OpenAI's SDKs never send them; a record file is stricter
    assert [e.id for e in errors] == list(range(len(given)))
    assert all(isinstance(e, BadRecord) and e.message.startswith(f"body.{given[e.id][0]}: ") for e in errors)


def test_tsv_and_plain_lines():
    rows = _parse([f"{SHAPES}\tWhat is this?", "\tNo image here", f"{CHART}\t"], prompt="Default?")
    assert [(r.images, r.prompt) for r in rows] == [([SHAPES], "What is this?"), ([], "No image here"),
                                                     ([CHART], "Default?")]
    plain = _parse([SHAPES, "", SUNSET], prompt="Describe.")
    assert [(r.id, r.images, r.prompt) for r in plain] == [(1, [SHAPES], "Describe."), (3, [SUNSET], "Describe.")]


def test_bad_lines_become_errors_with_their_line():
    items = _parse(['{"id": "x", "prompt": "ok"}', '{"id": "y", "prompt": ', '[1, 2]', '{"id": "z"}',
                    '{"prompt": "<image_placeholder> hi"}', '{"prompt": "hi", "image": "-"}'])
    errors = [(i.line, i.type) for i in items if hasattr(i, "type")]
    assert errors == [(2, "invalid_json"), (3, "invalid_json"), (4, "invalid_record"),
                      (5, "usage_error"), (6, "image_error")]


def test_plain_lines_without_prompt_is_a_usage_error(cli, tmp_path):
    result = cli(["batch", str(_jsonl(tmp_path / "list.txt", [SHAPES])), "-m", "tiny-random"])
    assert result.exit_code == 2
    assert "--prompt" in result.stderr and "Traceback" not in result.output


def test_missing_input_file(cli, tmp_path):
    result = cli(["batch", str(tmp_path / "nope.jsonl"), "-m", "tiny-random"])
    assert result.exit_code == 2 and "nope.jsonl: no such file" in result.stderr


# -- batched generation ---------------------------------------------------------------------------

MIXED = [  # mixed prompt lengths and image counts, zero included; SHAPES asked three times
    {"id": "one", "image": SHAPES, "prompt": "What is this?"},
    {"id": "none", "prompt": "Say something about colours and shapes, at some length please."},
    {"id": "two", "images": [SUNSET, CHART], "prompt": "Compare these two pictures in detail."},
    {"id": "again", "image": SHAPES, "prompt": "Which shapes do you see, and what colours are they?"},
    {"id": "short", "prompt": "Hi"},
    {"id": "three", "images": [CHART, SHAPES, SUNSET], "prompt": "Describe each."},
]


def test_batched_greedy_answers_equal_one_at_a_time_generate(cli, tiny_folder, tmp_path):
    from dsvl_cli.images import load_image

    out = tmp_path / "out.jsonl"
    result = cli(["batch", str(_jsonl(tmp_path / "jobs.jsonl", MIXED)), "-o", str(out), "--batch-size", "4",
                  "-m", "tiny-random", "-n", "12"])
    assert result.exit_code == 0, result.output
    got = {r["id"]: r for r in _records(out.read_text())}
    assert sorted(got) == sorted(r["id"] for r in MIXED)
    model, processor = load_reference(tiny_folder)
    for record in MIXED:
        sources = record.get("images") or ([record["image"]] if "image" in record else [])
        messages = [{"role": "user", "content": [{"type": "image"} for _ in sources]
                     + [{"type": "text", "text": record["prompt"]}]}]
        ids = reference_generate(model, processor, messages, [load_image(s).image for s in sources], 12)
        assert got[record["id"]]["answer"] == processor.batch_decode([ids], skip_special_tokens=True)[0].lstrip()
        assert got[record["id"]]["stats"]["generated_tokens"] == len(ids)
    assert "6 done, 0 failed, 0 skipped" in result.stderr


def test_generate_batch_token_ids_and_image_encoded_once(engine):
    from dsvl_cli.engine.batched import BatchItem, FeatureStore, generate_batch
    from dsvl_cli.conversation import Conversation
    from dsvl_cli.images import load_image
    from dsvl_cli.settings import GenerationSettings

    shapes, chart = load_image(SHAPES), load_image(CHART)
    conversations = [Conversation.single("What is it?", [shapes]), Conversation.single("Hello there", system="Terse."),
                     Conversation.single("And this one, with more words?", [shapes, chart]),
                     Conversation.single("Shapes?", [shapes])]
    gen = GenerationSettings(max_new_tokens=10)
    store = FeatureStore(engine)
    results = generate_batch(engine, [BatchItem.prepare(engine, c) for c in conversations], gen, features=store)
    assert store.encoded == 2  # five image uses, two distinct images
    for conversation, result in zip(conversations, results):
        single = engine.run(conversation, gen)
        assert result.token_ids == single.token_ids and result.answer == single.answer
        assert result.finish_reason == single.finish_reason


def test_out_of_memory_splits_the_batch(engine, monkeypatch):
    import torch

    from dsvl_cli.engine.batched import BatchItem, generate_batch
    from dsvl_cli.conversation import Conversation
    from dsvl_cli.settings import GenerationSettings

    real, sizes = engine.model.generate, []

    def generate(**kwargs):
        sizes.append(kwargs["input_ids"].shape[0])
        if kwargs["input_ids"].shape[0] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (fake)")
        return real(**kwargs)

    monkeypatch.setattr(engine.model, "generate", generate)
    conversations = [Conversation.single(p) for p in ("a", "bb bb", "c c c")]
    gen = GenerationSettings(max_new_tokens=5)
    results = generate_batch(engine, [BatchItem.prepare(engine, c) for c in conversations], gen)
    assert sizes == [3, 1, 2, 1, 1]
    monkeypatch.setattr(engine.model, "generate", real)
    assert [r.token_ids for r in results] == [engine.run(c, gen).token_ids for c in conversations]


def test_per_record_options_and_stdin_input(cli):
    lines = [{"id": "s", "prompt": "Hi", "max_new_tokens": 3}, {"id": "l", "image": SHAPES, "prompt": "Hi"}]
    result = cli(["batch", "-m", "tiny-random", "-n", "9"], input="".join(json.dumps(r) + "\n" for r in lines))
    assert result.exit_code == 0, result.output
    got = {r["id"]: r for r in _records(result.stdout)}
    assert got["s"]["stats"]["generated_tokens"] <= 3 < got["l"]["stats"]["generated_tokens"] <= 9
    assert set(got["l"]) == {"id", "image", "answer", "finish_reason", "stats"} and got["l"]["image"] == SHAPES
    assert got["s"]["images"] == []  # every record names its images, so answers map back to files
    assert "\x1b[" not in result.stderr  # no progress bar when stderr is not a terminal


def test_plain_lines_from_stdin_with_prompt(cli):
    result = cli(["batch", "-", "--prompt", "Describe.", "-m", "tiny-random", "-n", "4"],
                 input=f"{SHAPES}\n\n{CHART}\n")
    assert result.exit_code == 0, result.output
    assert sorted(r["id"] for r in _records(result.stdout)) == [1, 3]


# -- nothing lost ---------------------------------------------------------------------------------


def test_good_and_bad_records_one_output_each(cli, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    lines = [{"id": "good1", "image": SHAPES, "prompt": "What?"},
             {"id": "broken", "image": str(broken), "prompt": "What?"},
             '{"id": "torn", "prompt": "Wh',
             {"id": "missing", "image": str(tmp_path / "nope.png"), "prompt": "What?"},
             {"id": "noprompt", "image": SHAPES},
             {"id": "good2", "prompt": "Hello"}]
    out = tmp_path / "out.jsonl"
    result = cli(["batch", str(_jsonl(tmp_path / "jobs.jsonl", lines)), "-o", str(out), "-m", "tiny-random", "-n", "4"])
    assert result.exit_code == 1
    records = _records(out.read_text())
    assert len(records) == len(lines)
    errors = {r["line"]: (r["id"], r["error"]["type"]) for r in records if "error" in r}
    assert errors == {2: ("broken", "image_error"), 3: (3, "invalid_json"), 4: ("missing", "image_error"),
                      5: ("noprompt", "invalid_record")}
    assert sorted(r["id"] for r in records if "answer" in r) == ["good1", "good2"]
    broken_record = next(r for r in records if r["id"] == "broken")
    assert "broken.png" in broken_record["error"]["message"] and broken_record["image"] == str(broken)
    assert "2 done, 4 failed" in result.stderr


def test_retry_failed_redoes_errors_and_writes_each_id_once(cli, tmp_path):
    image = tmp_path / "later.png"
    jobs = _jsonl(tmp_path / "jobs.jsonl", [{"id": "a", "prompt": "Hi"}, {"id": "b", "image": str(image), "prompt": "Hi"}])
    out = tmp_path / "out.jsonl"
    assert cli(["batch", str(jobs), "-o", str(out), "-m", "tiny-random", "-n", "3"]).exit_code == 1
    resumed = cli(["batch", str(jobs), "-o", str(out), "--resume", "-m", "tiny-random", "-n", "3"])
    assert resumed.exit_code == 1 and "0 done, 0 failed (+1 from before), 2 skipped" in resumed.stderr
    image.write_bytes((EXAMPLES / "shapes.png").read_bytes())
    retried = cli(["batch", str(jobs), "-o", str(out), "--retry-failed", "-m", "tiny-random", "-n", "3"])
    assert retried.exit_code == 0, retried.output
    records = _records(out.read_text())
    assert sorted(r["id"] for r in records) == ["a", "b"] and all("answer" in r for r in records)


def test_resume_drops_a_torn_last_line(tmp_path):
    from dsvl_cli.batch.output import read_previous

    out = tmp_path / "out.jsonl"
    out.write_text('{"id": "a", "answer": "x"}\n{"id": 2, "line": 2, "error": {}}\n{"id": "c", "ans')
    prev = read_previous(out, retry_failed=False)
    assert prev.answered == {'"a"'} and prev.failed == {("2", 2)}
    assert out.read_text() == '{"id": "a", "answer": "x"}\n{"id": 2, "line": 2, "error": {}}\n'


def test_resume_needs_output_file(cli):
    result = cli(["batch", "--resume", "-m", "tiny-random"], input="{}\n")
    assert result.exit_code == 2 and "-o FILE" in result.stderr


def test_sigint_then_resume_answers_every_id_once(cli, tiny_folder, tmp_path):
    ids = [f"r{k}" for k in range(40)]
    jobs = _jsonl(tmp_path / "jobs.jsonl", [{"id": i, "prompt": f"Tell me about number {k}." + " more" * (k % 7),
                                             **({"image": SHAPES} if k % 3 == 0 else {})} for k, i in enumerate(ids)])
    out = tmp_path / "out.jsonl"
    args = ["batch", str(jobs), "-o", str(out), "-m", "tiny-random", "-n", "48", "--batch-size", "2"]
    proc = subprocess.Popen([sys.executable, "-m", "dsvl_cli", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not out.exists() or out.read_text().count("\n") < 2):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr.decode()
    first = _records(out.read_text())  # valid JSONL after the interrupt
    assert 2 <= len(first) < len(ids)
    assert "interrupted" in stderr.decode() and "Traceback" not in stderr.decode()
    result = cli([*args, "--resume"])
    assert result.exit_code == 0, result.output
    assert f"{len(ids) - len(first)} done, 0 failed, {len(first)} skipped" in result.stderr
    records = _records(out.read_text())
    assert sorted(r["id"] for r in records) == sorted(ids)  # every id exactly once
    assert all("answer" in r for r in records)
