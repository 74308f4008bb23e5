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
