"""Typed questions (OpenAI's Decisions API) on tiny-random: the engine against plain forward passes over
each question's whole rendered prompt, then the same probabilities from `dsvl serve` (the openai
client's `client.decisions.create`, also under concurrent load), `dsvl decide` (local, --server,
--keep-alive) and batch; every bad request is a 400 in OpenAI's shape (exit 2 on the command line)."""

from __future__ import annotations

import json
import math

import pytest

from conftest import EXAMPLES
from test_scores import reference_label
from test_serve import image_url  # noqa: F401 (a fixture)

INPUT = "A picture from the test suite."
QUESTIONS = [
    {"type": "predicate", "name": "red", "instructions": "There is a red square in the picture."},
    {"type": "choice", "name": "shape", "instructions": "Which shape is largest?",
     "choices": [{"value": "circle", "description": "round"}, {"value": "square"}, {"value": "a long thin line"}]},
    {"type": "choice", "instructions": "Is the picture a photograph?",
     "choices": [{"value": True}, {"value": False}, {"value": "true", "description": "the word"}]},
    {"type": "score", "name": "busy", "instructions": [{"type": "input_text", "text": "How busy is the picture?"},
                                                      {"type": "input_json", "data": {"scale": "calm to busy"}}],
     "levels": [{"label": "calm", "description": "one shape"}, {"label": "some"}, {"label": "busy"}]},
]


def _image():
    from dsvl_cli.images import load_image

    return load_image(str(EXAMPLES / "shapes.png"))


def _input_conversation(image):
    from dsvl_cli.conversation import Conversation

    return Conversation.single(INPUT, [image])


def reference_answers(reference, questions, image, text: str = INPUT) -> list[list[float]]:
    """Per question, its options' probabilities: softmax of log P(" " + label + EOS | the whole
    prompt), each from one plain forward pass over the full sequence (no shared prefix, no cache)."""
    model, processor = reference
    out = []
    for q in questions:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]},
                    {"role": "user", "content": [{"type": "text", "text": q.prompt()}]}]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
        logprobs = [reference_label(model, processor, prompt, [image.image], label)[0] for label in q.labels]
        top = max(logprobs)
        weights = [math.exp(lp - top) for lp in logprobs]
        out.append([w / sum(weights) for w in weights])
    return out


@pytest.fixture(scope="module")
def questions():
    from dsvl_cli.decide.questions import parse_questions

    return parse_questions(QUESTIONS)


@pytest.fixture(scope="module")
def expected(reference, questions):
    return reference_answers(reference, questions, _image())


def answer_probabilities(answer: dict) -> list[float]:
    if answer["type"] == "predicate":
        return [answer["probability"], 1 - answer["probability"]]
    return [p["probability"] for p in answer["probabilities"]]


def assert_answers(answers: list[dict], expected: list[list[float]]) -> None:
    """Every answer's probabilities equal the reference's (1e-4), and its fields follow from them."""
    assert [a["type"] for a in answers] == ["predicate", "choice", "choice", "score"]
    assert [a["name"] for a in answers] == ["red", "shape", None, "busy"]
    for a, probs in zip(answers, expected):
        assert answer_probabilities(a) == pytest.approx(probs, abs=1e-4)
    shape, boolean, busy = answers[1], answers[2], answers[3]
    assert [p["value"] for p in shape["probabilities"]] == ["circle", "square", "a long thin line"]
    values = [p["value"] for p in boolean["probabilities"]]
    assert values == [True, False, "true"] and [type(v) for v in values] == [bool, bool, str]
    for a, probs in ((shape, expected[1]), (boolean, expected[2])):
        best = probs.index(max(probs))
        assert a["choice"] == a["probabilities"][best]["value"] and type(a["choice"]) is type(
            a["probabilities"][best]["value"])
        assert a["confidence"] == pytest.approx(max(probs), abs=1e-4)
    assert [(p["label"], p["value"]) for p in busy["probabilities"]] == [("calm", 0), ("some", 1), ("busy", 2)]
    assert busy["score"] == pytest.approx(sum(k * p for k, p in enumerate(expected[3])), abs=1e-4)
    assert busy["confidence"] == pytest.approx(max(expected[3]), abs=1e-4)


# -- the engine -----------------------------------------------------------------------------------------

def test_answers_equal_plain_forward_passes_over_each_whole_prompt(engine, questions, expected):
    from dsvl_cli.engine import decisions
    from dsvl_cli.settings import GenerationSettings
    from dsvl_cli.structured.spec import decisions_format

    gen = GenerationSettings(answer_format=decisions_format(questions))
    result = engine.run(_input_conversation(_image()), gen)
    assert_answers(result.answers, expected)
    assert result.finish_reason == "stop" and result.stats.generated_tokens == 0
    # the input counted once, then each question's own tokens: more than one whole prompt, less than all of them
    lengths = [engine.count_tokens(decisions.asked(_input_conversation(_image()), q)) for q in questions]
    assert max(lengths) < result.stats.prompt_tokens < sum(lengths)


def test_labels_are_the_choices_definition_and_typed_values_are_told_apart(questions):
    assert questions[0].labels == ("Yes", "No")
    assert questions[1].labels == ("circle", "square", "a long thin line")
    assert questions[2].labels == ("true", "false", '"true"')  # a string reading as a boolean: JSON for all
    assert questions[3].values == questions[3].labels == ("calm", "some", "busy")
    assert "- circle: round" in questions[1].prompt() and '{"scale":"calm to busy"}' in questions[3].instructions


# -- dsvl serve, through the openai package -----------------------------------------------------------

KEY = "test-key"


@pytest.fixture(scope="module")
def server(engine):
    from test_serve import _start

    from dsvl_cli.images.guard import MediaPolicy
    from dsvl_cli.serve.app import create_app

    url, stop = _start(create_app(engine, api_key=KEY, policy=MediaPolicy(allow_private=True)))
    yield url
    stop()


@pytest.fixture
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server + "/v1", api_key=KEY, max_retries=0, timeout=120)


def _api_input(url: str, text: str = INPUT) -> list[dict]:
    return [{"role": "user", "content": [{"type": "input_image", "image_url": url}, {"type": "input_text", "text": text}]}]


def test_openai_client_decisions_equal_the_reference(client, expected):
    from test_serve import _data_uri

    decision = client.decisions.create(model="tiny-random", input=_api_input(_data_uri()), questions=QUESTIONS)
    answers = [a.model_dump() for a in decision.answers]
    assert_answers(answers, expected)
    typed = decision.answers[2].probabilities  # typed values survive the client's pydantic models
    assert typed[0].value is True and typed[1].value is False and typed[2].value == "true"
    assert decision.model == "tiny-random"
    assert decision.usage.output_tokens == 0 and decision.usage.input_tokens_details.cached_tokens == 0
    assert decision.usage.input_tokens == decision.usage.total_tokens > 0


def test_an_image_url_in_the_input_gives_the_same_answers(client, expected, image_url):
    decision = client.decisions.create(model="default", input=_api_input(image_url), questions=QUESTIONS)
    assert_answers([a.model_dump() for a in decision.answers], expected)


def test_concurrent_requests_each_get_the_reference(client, expected, server):
    from concurrent.futures import ThreadPoolExecutor

    from test_serve import _data_uri

    chat = {"model": "default", "messages": [{"role": "user", "content": "Say something."}], "max_tokens": 4}

    def one(k: int):
        if k % 3 == 2:  # chat requests in between: decisions never join their batch
            return client.chat.completions.create(**chat)
        return client.decisions.create(model="default", input=_api_input(_data_uri()), questions=QUESTIONS)

    with ThreadPoolExecutor(6) as pool:
        outs = list(pool.map(one, range(9)))
    for k, out in enumerate(outs):
        if k % 3 == 2:
            assert out.choices[0].message.content is not None
        else:
            assert_answers([a.model_dump() for a in out.answers], expected)


PREDICATE = {"type": "predicate", "instructions": "There is a square."}
BAD = [
    ([], "ask at least one question"),
    ([PREDICATE] * 401, "at most 400"),
    ([{"type": "choice", "instructions": "Which?", "choices": [{"value": "a"}]}], "at least 2 choices"),
    ([{"type": "choice", "instructions": "Which?", "choices": [{"value": f"v{k}"} for k in range(256)]}],
     "at most 255"),
    ([{"type": "choice", "instructions": "Which?", "choices": [{"value": "a"}, {"value": "b"}, {"value": "a"}]}],
     "questions.0.choices.2.value: 'a' is given twice"),
    ([{"type": "choice", "instructions": "Which?", "choices": [{"value": 1}, {"value": 2}]}],
     "must be a string or a boolean"),
    ([{"type": "score", "instructions": "How?", "levels": [{"label": "only"}]}], "at least 2 levels"),
    ([PREDICATE, {"type": "rating", "instructions": "How?"}], "questions.1.type: unknown question type 'rating'"),
    ([{"type": "predicate", "instructions": [{"type": "input_image", "image_url": "data:,"}]}],
     "pictures in a question are not supported"),
]


@pytest.mark.parametrize("questions,message", BAD, ids=[m for _, m in BAD])
def test_bad_questions_are_400s_in_openais_shape(client, questions, message):
    import openai

    with pytest.raises(openai.BadRequestError) as caught:
        client.decisions.create(model="default", input="A square.", questions=questions)
    error = caught.value.body
    assert caught.value.status_code == 400 and message in error["message"], error
    assert error["type"] == "invalid_request_error"


def test_bad_inputs_and_models_are_refused_and_the_server_goes_on(client, server):
    import openai
    import requests

    for input_, message in ([{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"}],
                            "items of type 'function_call' are not supported"), (
            [{"role": "user", "content": [{"type": "input_image", "image_url": "/etc/passwd"}]}], "image_url must be"), (
            [{"role": "user", "content": [{"type": "input_json", "data": "not an object"}]}], "input_json part needs"):
        with pytest.raises(openai.BadRequestError) as caught:
            client.decisions.create(model="default", input=input_, questions=[PREDICATE])
        assert message in caught.value.body["message"]
    with pytest.raises(openai.NotFoundError):
        client.decisions.create(model="gpt-6-luna", input="x", questions=[PREDICATE])
    missing = requests.post(server + "/v1/decisions", json={"input": "x"}, headers={"Authorization": f"Bearer {KEY}"})
    assert missing.status_code == 400 and "questions: required" in missing.json()["error"]["message"]
    unauthorised = requests.post(server + "/v1/decisions", json={"input": "x", "questions": [PREDICATE]})
    assert unauthorised.status_code == 401
    ok = client.decisions.create(model="default", input="A square.", questions=[PREDICATE])
    assert ok.answers[0].type == "predicate" and 0 < ok.answers[0].probability < 1


def test_a_question_past_the_context_is_refused_and_the_others_answered(engine, client):
    long = {"type": "predicate", "name": "long", "instructions": "word " * (engine.context_length + 10)}
    decision = client.decisions.create(model="default", input="A square.", questions=[PREDICATE, long])
    assert decision.answers[0].type == "predicate" and decision.answers[1].type == "refusal"
    assert decision.answers[1].name == "long"


def test_a_second_request_with_the_same_input_reuses_its_kv_and_gives_the_same_answers(engine, client):
    """The input's prefill is kept in the warm engine's prefix cache: the next request about the same
    picture reads it back (cached_tokens) and its probabilities do not move."""
    import base64
    import io

    from PIL import Image

    from dsvl_cli.engine import decisions
    from dsvl_cli.images import load_image

    picture = Image.new("RGB", (96, 64), (10, 200, 30))  # a picture no other test sends
    picture.paste((250, 240, 0), (20, 10, 60, 40))
    png = io.BytesIO()
    picture.save(png, format="PNG")
    uri = "data:image/png;base64," + base64.b64encode(png.getvalue()).decode()
    text = "The same picture, asked twice."
    first = client.decisions.create(model="default", input=_api_input(uri, text), questions=QUESTIONS)
    again = client.decisions.create(model="default", input=_api_input(uri, text), questions=QUESTIONS[:2])
    [(start, end)] = engine.image_spans(decisions._ids(engine, _input_conversation(load_image(uri))))
    # the first may reuse the system prompt before the picture (an earlier request's); never the picture
    assert first.usage.input_tokens_details.cached_tokens <= start
    cached = again.usage.input_tokens_details.cached_tokens
    assert end < cached < again.usage.input_tokens  # the picture and the text, not the questions
    for a, b in zip(first.answers[:2], again.answers):
        assert answer_probabilities(b.model_dump()) == pytest.approx(answer_probabilities(a.model_dump()), abs=1e-4)


# -- dsvl decide, batch ------------------------------------------------------------------------------

def _decide_args(questions_file) -> list[str]:
    return ["decide", str(EXAMPLES / "shapes.png"), INPUT, "--questions", str(questions_file)]


@pytest.fixture
def questions_file(tmp_path):
    path = tmp_path / "questions.json"
    path.write_text(json.dumps(QUESTIONS))
    return path


def test_dsvl_decide_json_is_the_decision_object_with_the_reference_probabilities(cli, questions_file, expected):
    out = cli([*_decide_args(questions_file), "-m", "tiny-random", "--json"])
    assert out.exit_code == 0, out.output
    decision = json.loads(out.stdout)
    assert decision["object"] == "decision" and decision["usage"]["output_tokens"] == 0
    assert_answers(decision["answers"], expected)


def test_dsvl_decide_in_a_pipe_prints_one_tab_separated_line_per_question(cli, questions_file, expected):
    flags = ["-p", "The picture is mostly white.", "-c", "Which colour is most common? = red, green, blue"]
    out = cli([*_decide_args(questions_file), "-m", "tiny-random", *flags])
    assert out.exit_code == 0, out.output
    lines = [line.split("\t") for line in out.stdout.splitlines()]
    assert [line[:2] for line in lines] == [["red", "predicate"], ["shape", "choice"], ["3", "choice"],
                                            ["busy", "score"], ["5", "predicate"], ["6", "choice"]]
    assert lines[0][4] == f"P(true)={expected[0][0]:.4f}"
    best = max(range(3), key=lambda k: expected[1][k])
    assert lines[1][2] == ["circle", "square", "a long thin line"][best]
    assert lines[3][2] == f"{sum(k * p for k, p in enumerate(expected[3])):.4f}"
    assert lines[5][4].startswith("red=") and " green=" in lines[5][4] and " blue=" in lines[5][4]


def test_dsvl_decide_through_the_server_and_keep_alive_gives_the_local_answers(cli, server, questions_file, expected):
    from dsvl_cli.keepalive import registry

    remote = cli([*_decide_args(questions_file), "--json", "--server", server, "--api-key", KEY])
    assert remote.exit_code == 0, remote.output
    assert_answers(json.loads(remote.stdout)["answers"], expected)
    try:
        kept = cli([*_decide_args(questions_file), "-m", "tiny-random", "--json", "--keep-alive", "60s"])
        assert kept.exit_code == 0, kept.output
        assert_answers(json.loads(kept.stdout)["answers"], expected)
    finally:
        stopped = registry.stop(None, True)
        assert all(registry.wait_gone(row["pid"], 20) for row in stopped)


@pytest.mark.parametrize("flags,message", [
    (["-c", "Which one? = a"], "at least 2 choices"),
    (["--score", "no equals sign"], "write 'QUESTION = a, b, c'"),
    ([], "no questions"),
])
def test_dsvl_decide_bad_questions_exit_2_with_one_line_before_the_model_loads(cli, flags, message):
    out = cli(["decide", str(EXAMPLES / "shapes.png"), "-m", "no-such-model-anywhere", *flags])
    assert out.exit_code == 2 and message in out.stderr and "Traceback" not in out.output, out.output
    assert len(out.stderr.strip().splitlines()) == 1


def test_batch_records_with_questions_get_the_reference_answers_and_bad_ones_error_records(cli, tmp_path, expected):
    shapes = str(EXAMPLES / "shapes.png")
    lines = [{"id": "q", "image": shapes, "prompt": INPUT, "questions": QUESTIONS},
             {"id": "plain", "image": shapes, "prompt": "Describe."},
             {"id": "bad", "image": shapes, "questions": [{"type": "choice", "instructions": "?", "choices": [{"value": "a"}]}]},
             {"id": "clash", "prompt": "x", "questions": [PREDICATE], "choices": ["a", "b"]},
             {"id": "q2", "image": shapes, "prompt": INPUT, "questions": QUESTIONS}]
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("".join(json.dumps(r) + "\n" for r in lines))
    result = cli(["batch", str(jobs), "-m", "tiny-random", "-n", "4"])
    assert result.exit_code == 1, result.output  # some records failed, the others were answered
    records = {r["id"]: r for r in map(json.loads, result.stdout.splitlines())}
    assert set(records) == {r["id"] for r in lines}
    for key in ("q", "q2"):
        assert_answers(records[key]["answers"], expected)
    assert "at least 2 choices" in records["bad"]["error"]["message"]
    assert "error" in records["clash"] and "answers" not in records["plain"] and records["plain"]["answer"]
