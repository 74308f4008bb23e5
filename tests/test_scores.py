"""`--choices` (label scoring) and `--logprobs` on tiny-random, greedy: against references computed
here from plain transformers (forward passes over each full sequence; `generate(output_logits=True)`),
through the engine, ask, chat, batch and serve (the openai client), local and `--server`."""

from __future__ import annotations

import json

import pytest

from conftest import EXAMPLES

PROMPT = "Is there a red square in this picture?"
# Multi-token labels, a unicode one, and more than SCORE_ROWS (16) so the label rows come in two groups.
LABELS = ["yes", "no", "a red square", "maybe", "猫", "two circles and a line", *[f"label {k}" for k in range(11)]]


def _image():
    from dsvl_cli.images import load_image

    return load_image(str(EXAMPLES / "shapes.png"))


def _messages(text: str, n_images: int) -> list[dict]:
    return [{"role": "user", "content": [*([{"type": "image"}] * n_images), {"type": "text", "text": text}]}]


def reference_label(model, processor, prompt: str, images: list, label: str) -> tuple[float, list[int]]:
    """log P(" " + label + EOS | prompt) by one plain forward pass over the whole sequence, and the
    tokens it scored."""
    import torch

    full = processor(text=prompt + " " + label + processor.tokenizer.eos_token, images=images or None,
                     return_tensors="pt")
    start = processor(text=prompt, images=images or None, return_tensors="pt")["input_ids"].shape[1]
    with torch.inference_mode():
        logprobs = model(**full).logits[0].float().log_softmax(-1)
    ids = full["input_ids"][0].tolist()
    return sum(logprobs[k - 1, ids[k]].item() for k in range(start, len(ids))), ids[start:]


def reference_logprobs(model, processor, text: str, images: list, n: int, top: int, **kwargs):
    """Greedy tokens of plain `generate` and, per token, (its logprob, the top-`top` logprobs) from
    log_softmax of `output_logits` (the raw logits)."""
    import torch

    prompt = processor.apply_chat_template(_messages(text, len(images)), add_generation_prompt=True)
    inputs = processor(text=prompt, images=images or None, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=n, do_sample=False, output_logits=True,
                             return_dict_in_generate=True, **kwargs)
    tokens = out.sequences[0, inputs["input_ids"].shape[1]:].tolist()
    steps = []
    for token, logits in zip(tokens, out.logits):
        logprobs = logits[0].float().log_softmax(-1)
        steps.append((logprobs[token].item(), logprobs.topk(top).values.tolist()))
    return tokens, steps


def assert_entries_match(entries: list[dict], tokens: list[int], steps: list, eos: int) -> None:
    if tokens and tokens[-1] == eos:  # the EOS that ends an answer is not listed
        tokens, steps = tokens[:-1], steps[:-1]
    assert len(entries) == len(tokens)
    for entry, (chosen, top) in zip(entries, steps):
        assert entry["logprob"] == pytest.approx(chosen, abs=1e-4)
        values = [alt["logprob"] for alt in entry["top_logprobs"]]
        assert values == sorted(values, reverse=True)
        assert values == pytest.approx(top, abs=1e-4)
        assert entry["top_logprobs"][0]["logprob"] >= entry["logprob"] - 1e-6
        assert set(entry) == {"token", "logprob", "bytes", "top_logprobs"}


def _answer_bytes(entries: list[dict]) -> str:
    return b"".join(bytes(e["bytes"]) for e in entries).decode("utf-8").lstrip()


@pytest.fixture(scope="module")
def fast_engine(tiny_folder):
    from dsvl_cli.engine.local import LocalEngine
    from dsvl_cli.settings import ModelSettings

    engine = LocalEngine.load(ModelSettings(model="tiny-random", device="cpu", compile=False))
    engine.enable_fast_path(compile=False)  # static cache, decode step not compiled (CPU compile is slow)
    return engine


def _choices(labels) -> object:
    from dsvl_cli.settings import GenerationSettings
    from dsvl_cli.structured.spec import choices_format

    return GenerationSettings(answer_format=choices_format(list(labels)))


# -- --choices: the engine -------------------------------------------------------------------------

@pytest.mark.parametrize("with_image", [True, False])
def test_choice_scores_equal_plain_forward_passes_over_each_full_sequence(engine, reference, with_image):
    from dsvl_cli.conversation import Conversation
    from dsvl_cli.engine.scoring import label_rows

    model, processor = reference
    images = [_image()] if with_image else []
    labels = LABELS if with_image else LABELS[:3]
    result = engine.run(Conversation.single(PROMPT, images), _choices(labels))

    prompt = processor.apply_chat_template(_messages(PROMPT, len(images)), add_generation_prompt=True)
    assert prompt.endswith("Assistant:")
    expected = {}
    rows = label_rows(engine.tokenizer, tuple(labels), engine.tokenizer.eos_token_id)
    for label, row in zip(labels, rows):
        expected[label], scored = reference_label(model, processor, prompt, [i.image for i in images], label)
        assert scored == row  # " " + label tokenized alone = tokenized after the prompt; then EOS
        assert scored[-1] == processor.tokenizer.eos_token_id
    got = {s["label"]: s for s in result.scores}
    assert set(got) == set(labels)
    for label in labels:
        assert got[label]["logprob"] == pytest.approx(expected[label], abs=1e-4), label
    import math

    total = sum(math.exp(v) for v in expected.values())
    for label in labels:
        assert got[label]["probability"] == pytest.approx(math.exp(expected[label]) / total, abs=1e-4)
    assert sum(s["probability"] for s in result.scores) == pytest.approx(1.0, abs=1e-9)
    probabilities = [s["probability"] for s in result.scores]
    assert probabilities == sorted(probabilities, reverse=True)
    assert result.answer == max(expected, key=expected.get) == result.scores[0]["label"]
    assert result.finish_reason == "stop" and result.stats.generated_tokens == 0
    assert result.stats.prompt_tokens == processor(text=prompt, images=[i.image for i in images] or None,
                                                   return_tensors="pt")["input_ids"].shape[1]


def test_choice_scores_on_the_1_3b_architecture_equal_plain_forward_passes(cli, tiny13_folder):
    """DeepseekVLForConditionalGeneration (SigLIP only) through `dsvl ask --choices --json`."""
    from conftest import load_reference

    model, processor = load_reference(tiny13_folder)
    labels = ["yes", "no", "a red square"]
    result = cli(["ask", str(EXAMPLES / "shapes.png"), PROMPT, "-m", "tiny-random-1.3b", "--choices", ",".join(labels),
                  "--json"])
    assert result.exit_code == 0, result.output
    got = {s["label"]: s["logprob"] for s in json.loads(result.stdout)["scores"]}
    prompt = processor.apply_chat_template(_messages(PROMPT, 1), add_generation_prompt=True)
    for label in labels:
        assert got[label] == pytest.approx(reference_label(model, processor, prompt, [_image().image], label)[0],
                                           abs=1e-4), label


def test_choices_in_a_batch_equal_single_questions_and_stream_the_label(engine):
    from dsvl_cli.conversation import Conversation
    from dsvl_cli.engine.batched import BatchItem, generate_batch
    from dsvl_cli.results import Result, TextChunk

    gen = _choices(["yes", "no", "a red square"])
    conversations = [Conversation.single(PROMPT, [_image()]), Conversation.single("Hello there", system="Terse."),
                     Conversation.single("Two pictures of one thing?", [_image(), _image()])]
    done: list = []
    items = [BatchItem.prepare(engine, c, on_done=done.append) for c in conversations]
    results = generate_batch(engine, items, gen)
    assert len(done) == 3
    for conversation, result in zip(conversations, results):
        single = list(engine.stream(conversation, gen))
        assert [type(c) for c in single] == [TextChunk, Result] and single[0].text == single[1].answer
        assert result.answer == single[1].answer
        for ours, theirs in zip(result.scores, single[1].scores):
            assert ours["label"] == theirs["label"]
            assert ours["logprob"] == pytest.approx(theirs["logprob"], abs=1e-4)


# -- --logprobs: the engine ------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["engine", "fast_engine"])
def test_logprobs_equal_log_softmax_of_plain_generate_logits(request, reference, which):
    from dsvl_cli.conversation import Conversation
    from dsvl_cli.results import Result, TextChunk
    from dsvl_cli.settings import GenerationSettings

    engine = request.getfixturevalue(which)
    model, processor = reference
    image = _image()
    tokens, steps = reference_logprobs(model, processor, "Describe this image.", [image.image], 16, 3)
    chunks = list(engine.stream(Conversation.single("Describe this image.", [image]),
                                GenerationSettings(max_new_tokens=16, logprobs=3)))
    result = chunks[-1]
    assert isinstance(result, Result) and result.token_ids == tokens
    assert_entries_match(result.logprobs, tokens, steps, processor.tokenizer.eos_token_id)
    eos = processor.tokenizer.eos_token_id
    shown = processor.tokenizer.decode([t for t in tokens if t != eos], skip_special_tokens=False).lstrip()
    assert _answer_bytes(result.logprobs) == shown  # each entry's bytes, joined: the answer's text
    # Streamed: the chunks' entries, in order, are the Result's.
    streamed = [e for c in chunks if isinstance(c, TextChunk) for e in (c.logprobs or [])]
    assert streamed == result.logprobs[:len(streamed)] and len(streamed) >= len(result.logprobs) - 2


def test_logprobs_are_raw_before_the_repetition_penalty_and_zero_gives_the_chosen_token_only(engine, reference):
    from dsvl_cli.conversation import Conversation
    from dsvl_cli.settings import GenerationSettings

    model, processor = reference
    tokens, steps = reference_logprobs(model, processor, "Hello there", [], 20, 2, repetition_penalty=1.8)
    result = engine.run(Conversation.single("Hello there"),
                        GenerationSettings(max_new_tokens=20, logprobs=2, repetition_penalty=1.8))
    assert result.token_ids == tokens  # the penalty still shapes the answer
    eos = processor.tokenizer.eos_token_id
    raw = [(chosen, top) for chosen, top in steps]
    body = tokens[:-1] if tokens[-1] == eos else tokens
    assert [e["logprob"] for e in result.logprobs] == pytest.approx([c for c, _ in raw[:len(body)]], abs=1e-4)
    none = engine.run(Conversation.single("Hello there"), GenerationSettings(max_new_tokens=6, logprobs=0))
    assert none.logprobs and all(e["top_logprobs"] == [] for e in none.logprobs)
    plain = engine.run(Conversation.single("Hello there"), GenerationSettings(max_new_tokens=6))
    assert plain.logprobs is None and "logprobs" not in plain.to_dict()


@pytest.mark.parametrize("which", ["engine", "fast_engine"])
def test_batched_logprobs_per_row_equal_plain_generate(request, reference, which):
    """Left-padded rows of different lengths: each row's entries are its own single run's."""
    from dsvl_cli.conversation import Conversation
    from dsvl_cli.engine.batched import BatchItem, generate_batch
    from dsvl_cli.settings import GenerationSettings

    engine = request.getfixturevalue(which)
    model, processor = reference
    image = _image()
    questions = [("Hello there", []), ("Describe this image.", [image]),
                 ("A much longer question about the colours and shapes in this picture, please?", [image])]
    streamed: dict[int, list] = {0: [], 1: [], 2: []}

    def on_tokens(row):
        return lambda ids, logprobs=None: streamed[row].extend(logprobs or [])

    items = [BatchItem.prepare(engine, Conversation.single(text, images), on_tokens=on_tokens(k))
             for k, (text, images) in enumerate(questions)]
    results = generate_batch(engine, items, GenerationSettings(max_new_tokens=12, logprobs=2))
    eos = processor.tokenizer.eos_token_id
    for k, ((text, images), result) in enumerate(zip(questions, results)):
        tokens, steps = reference_logprobs(model, processor, text, [i.image for i in images], 12, 2)
        assert result.token_ids == tokens
        assert_entries_match(result.logprobs, tokens, steps, eos)
        assert streamed[k] == result.logprobs


# -- the command line ----------------------------------------------------------------------------

def test_ask_choices_prints_the_label_and_json_gives_every_score(cli, engine):
    from dsvl_cli.conversation import Conversation

    image = str(EXAMPLES / "shapes.png")
    plain = cli(["ask", image, PROMPT, "-m", "tiny-random", "--choices", "yes,no,maybe"])
    assert plain.exit_code == 0, plain.output
    data = cli(["ask", image, PROMPT, "-m", "tiny-random", "--choices", "yes,no,maybe", "--json"])
    got = json.loads(data.stdout)
    want = engine.run(Conversation.single(PROMPT, [_image()]), _choices(["yes", "no", "maybe"]))
    assert plain.stdout == want.answer + "\n"
    assert got["answer"] == want.answer and got["finish_reason"] == "stop"
    assert [s["label"] for s in got["scores"]] == [s["label"] for s in want.scores]
    assert [s["probability"] for s in got["scores"]] == pytest.approx([s["probability"] for s in want.scores], abs=1e-6)
    assert all(set(s) == {"label", "probability", "logprob"} for s in got["scores"])


def test_ask_logprobs_json(cli, engine):
    from dsvl_cli.conversation import Conversation
    from dsvl_cli.settings import GenerationSettings

    result = cli(["ask", str(EXAMPLES / "shapes.png"), "Describe.", "-m", "tiny-random", "-n", "8", "--logprobs", "4",
                  "--json"])
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    want = engine.run(Conversation.single("Describe.", [_image()]), GenerationSettings(max_new_tokens=8, logprobs=4))
    assert got["logprobs"]["content"] == json.loads(json.dumps(want.logprobs))
    assert all(len(e["top_logprobs"]) == 4 for e in got["logprobs"]["content"])


@pytest.mark.parametrize("flags,message", [
    (["--choices", "yes,yes"], "the label 'yes' is given twice"),
    (["--choices", "yes,"], "a label is empty"),
    (["--choices", "yes"], "at least two labels"),
    (["--choices", "@/no/such/labels.txt"], "cannot read the file"),
    (["--choices", "a,<image_placeholder>"], "reserved token"),
    (["--choices", "a,b", "--logprobs", "2"], "cannot be used together"),
    (["--logprobs", "21"], "--logprobs 21: must be from 0 to 20"),
    (["--logprobs", "-1"], "--logprobs -1: must be from 0 to 20"),
])
def test_bad_choices_and_logprobs_exit_2_with_one_line_before_the_model_loads(cli, flags, message):
    # A model that does not exist: had the check come after loading, the error would be about it.
    result = cli(["ask", "Is it?", "-m", "/no/such/model", *flags])
    assert result.exit_code == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr and "/no/such/model" not in result.stderr


def test_chat_set_choices_scores_later_answers_until_off(cli, engine):
    script = "/set choices yes,no\nIs it red?\n/set\n/set choices yes,yes\n/set choices off\nIs it red?\n"
    result = cli(["chat", str(EXAMPLES / "shapes.png"), "-m", "tiny-random", "-n", "5", "--json"], input=script)
    assert result.exit_code == 2, result.stderr  # the bad /set line
    turns = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(turns) == 2
    assert [s["label"] for s in turns[0]["scores"]] in (["yes", "no"], ["no", "yes"])
    assert turns[0]["answer"] == turns[0]["scores"][0]["label"]
    assert "scores" not in turns[1] and turns[1]["stats"]["generated_tokens"] > 0
    assert "format = choices yes, no" in result.stderr and "the label 'yes' is given twice" in result.stderr


def test_batch_records_with_choices_and_logprobs_mixed_with_ordinary_ones(cli, engine, tmp_path):
    from dsvl_cli.conversation import Conversation
    from dsvl_cli.settings import GenerationSettings

    shapes = str(EXAMPLES / "shapes.png")
    lines = [{"id": "plain", "image": shapes, "prompt": "Describe."},
             {"id": "yn", "image": shapes, "prompt": PROMPT, "choices": ["yes", "no"]},
             {"id": "colour", "image": shapes, "prompt": "Which colour?", "choices": ["red", "green", "blue"]},
             {"id": "yn2", "prompt": "Hello?", "choices": ["yes", "no"]},
             {"id": "lp", "image": shapes, "prompt": "Describe the shapes in detail.", "logprobs": 2},
             {"id": "lp2", "prompt": "Hi", "logprobs": 2},
             {"id": "dup", "prompt": "x", "choices": ["a", "a"]},
             {"id": "one", "prompt": "x", "choices": ["a"]},
             {"id": "both", "prompt": "x", "choices": ["a", "b"], "logprobs": 1},
             {"id": "badlp", "prompt": "x", "logprobs": "3"},
             {"id": "farlp", "prompt": "x", "logprobs": 99},
             {"id": "openai", "body": {"messages": [{"role": "user", "content": "Hello?"}],
                                       "structured_outputs": {"choice": ["yes", "no"]}}}]
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("".join(json.dumps(r) + "\n" for r in lines))
    result = cli(["batch", str(jobs), "-m", "tiny-random", "-n", "6", "--batch-size", "4"])
    assert result.exit_code == 1  # some records failed; the others were answered
    records = {r["id"]: r for r in map(json.loads, result.stdout.splitlines())}
    assert set(records) == {r.get("id", "openai") for r in lines}
    for bad in ("dup", "one", "both", "badlp", "farlp"):
        assert "error" in records[bad], bad
    assert "given twice" in records["dup"]["error"]["message"]
    assert "together" in records["both"]["error"]["message"]
    assert "scores" not in records["plain"] and "logprobs" not in records["plain"]
    image = _image()
    for key, labels, images in (("yn", ["yes", "no"], [image]), ("colour", ["red", "green", "blue"], [image]),
                                ("yn2", ["yes", "no"], []), ("openai", ["yes", "no"], [])):
        prompt = next(r.get("prompt", "Hello?") for r in lines if r.get("id", "openai") == key)
        want = engine.run(Conversation.single(prompt, images), _choices(labels))
        assert records[key]["answer"] == want.answer, key
        assert [s["logprob"] for s in records[key]["scores"]] == pytest.approx(
            [s["logprob"] for s in want.scores], abs=1e-4)
    for key, prompt, images in (("lp", "Describe the shapes in detail.", [image]), ("lp2", "Hi", [])):
        want = engine.run(Conversation.single(prompt, images), GenerationSettings(max_new_tokens=6, logprobs=2))
        got = records[key]["logprobs"]["content"]
        assert [e["token"] for e in got] == [e["token"] for e in want.logprobs]
        assert [e["logprob"] for e in got] == pytest.approx([e["logprob"] for e in want.logprobs], abs=1e-4)


# -- serve and --server ----------------------------------------------------------------------------

KEY = "scores-key"


@pytest.fixture(scope="module")
def server(engine):
    from test_serve import _start

    from dsvl_cli.serve.app import create_app
    from dsvl_cli.settings import GenerationSettings

    url, stop = _start(create_app(engine, defaults=GenerationSettings(max_new_tokens=10), api_key=KEY))
    yield url
    stop()


@pytest.fixture
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server + "/v1", api_key=KEY, max_retries=0, timeout=60)


def _data_messages(text: str = PROMPT) -> list[dict]:
    import base64

    uri = "data:image/png;base64," + base64.b64encode((EXAMPLES / "shapes.png").read_bytes()).decode()
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": uri}},
                                         {"type": "text", "text": text}]}]


@pytest.mark.parametrize("extra", [{"structured_outputs": {"choice": ["yes", "no", "maybe"]}},
                                   {"guided_choice": ["yes", "no", "maybe"]}])
def test_serve_answers_vllm_choice_with_the_label_and_its_scores(client, engine, extra):
    from dsvl_cli.conversation import Conversation

    want = engine.run(Conversation.single(PROMPT, [_image()]), _choices(["yes", "no", "maybe"]))
    reply = client.chat.completions.create(model="tiny-random", messages=_data_messages(), extra_body=extra)
    assert reply.choices[0].message.content == want.answer  # what a vLLM client reads
    assert reply.choices[0].finish_reason == "stop"
    scores = reply.model_extra["scores"]
    assert [s["label"] for s in scores] == [s["label"] for s in want.scores]
    assert [s["probability"] for s in scores] == pytest.approx([s["probability"] for s in want.scores], abs=1e-6)
    assert sum(s["probability"] for s in scores) == pytest.approx(1.0)
    stream = list(client.chat.completions.create(model="tiny-random", messages=_data_messages(), extra_body=extra,
                                                 stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == want.answer
    assert [c.model_extra.get("scores") for c in stream if c.choices[0].finish_reason][0] == scores


def test_serve_logprobs_in_openai_shape_streamed_and_not(client, engine):
    from dsvl_cli.conversation import Conversation
    from dsvl_cli.settings import GenerationSettings

    want = engine.run(Conversation.single(PROMPT, [_image()]), GenerationSettings(max_new_tokens=10, logprobs=2))
    reply = client.chat.completions.create(model="tiny-random", messages=_data_messages(), logprobs=True,
                                           top_logprobs=2, max_tokens=10)
    content = reply.choices[0].logprobs.content
    assert [e.token for e in content] == [e["token"] for e in want.logprobs]
    assert [e.logprob for e in content] == pytest.approx([e["logprob"] for e in want.logprobs], abs=1e-5)
    assert [len(e.top_logprobs) for e in content] == [2] * len(content)
    assert [e.bytes for e in content] == [e["bytes"] for e in want.logprobs]
    chunks = list(client.chat.completions.create(model="tiny-random", messages=_data_messages(), logprobs=True,
                                                 top_logprobs=2, max_tokens=10, stream=True))
    with_text = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(with_text) > 1 and all(c.choices[0].logprobs.content for c in with_text)  # each piece, its tokens
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    # the second request reuses the first one's KV (prefix cache): equal up to float rounding
    assert [e.token for e in streamed] == [e.token for e in content]
    assert [e.logprob for e in streamed] == pytest.approx([e.logprob for e in content], abs=1e-5)
    assert [[t.token for t in e.top_logprobs] for e in streamed] == [[t.token for t in e.top_logprobs] for e in content]
    plain = client.chat.completions.create(model="tiny-random", messages=_data_messages(), max_tokens=4)
    assert plain.choices[0].logprobs is None


@pytest.mark.parametrize("body,message", [
    ({"top_logprobs": 2}, "top_logprobs needs logprobs: true"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"guided_choice": ["a", "a"]}, "given twice"),
    ({"guided_choice": ["a"]}, "at least two"),
    ({"structured_outputs": {"choice": ["a", "b"]}, "guided_choice": ["a", "b"]}, "give one answer format"),
    ({"structured_outputs": {"choice": ["a", "b"]}, "logprobs": True}, "cannot be used together"),
    ({"guided_choice": [f"l{k}" for k in range(300)]}, "guided_choice"),
])
def test_serve_bad_choice_and_logprobs_requests_are_400(server, body, message):
    import requests

    response = requests.post(server + "/v1/chat/completions", timeout=30, headers={"Authorization": f"Bearer {KEY}"},
                             json={"messages": [{"role": "user", "content": "Hi"}], **body})
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]["message"]


def assert_same_logprobs(got, want) -> bool:
    """Equal tokens, log-probabilities equal up to float rounding: the server may have the prompt's
    KV from its prefix cache, computed in another batch shape than a fresh prefill."""
    assert (got is None) == (want is None)
    if want is None:
        return True
    entries = lambda data: data["content"] if isinstance(data, dict) else data  # noqa: E731
    got, want = entries(got), entries(want)
    assert [e["token"] for e in got] == [e["token"] for e in want]
    assert [e["logprob"] for e in got] == pytest.approx([e["logprob"] for e in want], abs=1e-5)
    assert [[t["token"] for t in e["top_logprobs"]] for e in got] == [[t["token"] for t in e["top_logprobs"]] for e in want]
    return True


def test_ask_and_batch_through_the_server_give_the_local_output(cli, server, tmp_path):
    image = str(EXAMPLES / "shapes.png")
    for flags in (["--choices", "yes,no,maybe"], ["--logprobs", "3", "-n", "6"]):
        local = json.loads(cli(["ask", image, PROMPT, "-m", "tiny-random", "--json", *flags]).stdout)
        remote = cli(["ask", image, PROMPT, "--json", "--server", server, "--api-key", KEY, *flags])
        assert remote.exit_code == 0, remote.output
        got = json.loads(remote.stdout)
        assert set(got) == set(local)
        assert got["answer"] == local["answer"]
        assert json.dumps(got.get("scores")) == json.dumps(local.get("scores"))
        assert_same_logprobs(got.get("logprobs"), local.get("logprobs"))
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"id": 1, "image": image, "prompt": PROMPT, "choices": ["yes", "no"]}) + "\n"
                    + json.dumps({"id": 2, "prompt": "Hi", "logprobs": 1}) + "\n")
    local = cli(["batch", str(jobs), "-m", "tiny-random", "-n", "5"])
    remote = cli(["batch", str(jobs), "-n", "5", "--server", server, "--api-key", KEY])
    assert local.exit_code == remote.exit_code == 0, remote.output

    def by_id(out):
        return {r["id"]: r for r in map(json.loads, out.splitlines())}

    want, got = by_id(local.stdout), by_id(remote.stdout)
    assert got[1]["scores"] == want[1]["scores"] and got[1]["answer"] == want[1]["answer"]
    assert_same_logprobs(got[2]["logprobs"], want[2]["logprobs"]) and got[2]["answer"] == want[2]["answer"]


def test_keep_alive_gives_the_local_choices_and_logprobs_output(cli, engine):
    """The private keep-alive server (a real background process) answers as the local engine."""
    from dsvl_cli.conversation import Conversation
    from dsvl_cli.keepalive import registry
    from dsvl_cli.settings import GenerationSettings

    image = str(EXAMPLES / "shapes.png")
    conversation = Conversation.single(PROMPT, [_image()])
    try:
        for flags, gen in ((["--choices", "yes,no,maybe"], _choices(["yes", "no", "maybe"])),
                           (["--logprobs", "2", "-n", "5"], GenerationSettings(max_new_tokens=5, logprobs=2))):
            kept = cli(["ask", image, PROMPT, "-m", "tiny-random", "--json", "--keep-alive", "60s", *flags])
            assert kept.exit_code == 0, kept.output
            got, want = json.loads(kept.stdout), engine.run(conversation, gen).to_dict()
            assert got["answer"] == want["answer"]
            if "scores" in want:
                assert [s["label"] for s in got["scores"]] == [s["label"] for s in want["scores"]]
                assert [s["logprob"] for s in got["scores"]] == pytest.approx([s["logprob"] for s in want["scores"]],
                                                                              abs=1e-5)
            else:
                entries = got["logprobs"]["content"]
                assert [e["token"] for e in entries] == [e["token"] for e in want["logprobs"]["content"]]
                assert [e["logprob"] for e in entries] == pytest.approx(
                    [e["logprob"] for e in want["logprobs"]["content"]], abs=1e-5)
    finally:
        stopped = registry.stop(None, True)
        assert all(registry.wait_gone(row["pid"], 20) for row in stopped)
