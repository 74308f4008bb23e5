"""`dsvl serve` on the warm engine loop: /metrics, cached tokens in every usage, a picture asked about
again reuses its KV and its features, a client that leaves frees its row (tiny-random, greedy)."""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from conftest import EXAMPLES
from test_serve import _start

REQUIRED = ("dsvl_requests_running", "dsvl_requests_waiting", "dsvl_prompt_tokens_total",
            "dsvl_prompt_tokens_cached_total", "dsvl_generation_tokens_total", "dsvl_image_cache_hits_total",
            "dsvl_image_cache_misses_total", "dsvl_kv_cache_bytes", "dsvl_time_to_first_token_seconds")


@pytest.fixture(scope="module")
def url(engine):
    from dsvl_cli.serve.app import create_app
    from dsvl_cli.settings import GenerationSettings

    base, stop = _start(create_app(engine, defaults=GenerationSettings(max_new_tokens=8)))
    yield base
    stop()


def scrape(base: str) -> dict[str, float]:
    """Every sample of /metrics by name (labels dropped: one model)."""
    from prometheus_client.parser import text_string_to_metric_families

    response = httpx.get(base + "/metrics", timeout=30)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {sample.name: sample.value for family in text_string_to_metric_families(response.text)
            for sample in family.samples if sample.labels.get("le") in (None, "+Inf")}


def picture_message(text: str, system: str = "You look at pictures.") -> list[dict]:
    data = base64.b64encode((EXAMPLES / "shapes.png").read_bytes()).decode()
    return [{"role": "system", "content": system},
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}},
                                         {"type": "text", "text": text}]}]


def test_metrics_names_and_a_second_question_about_one_picture_reuses_its_kv(url, engine):
    from dsvl_cli.conversation import Conversation
    from dsvl_cli.images import load_image
    from dsvl_cli.settings import GenerationSettings

    before = scrape(url)
    assert set(REQUIRED) <= {name.removesuffix("_count").removesuffix("_bucket") for name in before} | set(before)
    answers = []
    for question in ("What shapes are there?", "And which colours?"):
        body = {"model": "default", "messages": picture_message(question), "max_tokens": 8}
        answers.append(httpx.post(url + "/v1/chat/completions", json=body, timeout=60).json())
    first, second = (a["usage"] for a in answers)
    assert first["prompt_tokens_details"]["cached_tokens"] <= 1
    # the system prompt and the picture come before the question: their KV is reused
    ids = engine.tokenizer(engine.expand_placeholders(engine.render(Conversation.single(
        "And which colours?", [load_image(str(EXAMPLES / "shapes.png"))], system="You look at pictures."))))["input_ids"]
    (_, picture_end), = engine.image_spans(ids)
    assert second["prompt_tokens_details"]["cached_tokens"] >= picture_end
    local = engine.run(Conversation.single("And which colours?", [load_image(str(EXAMPLES / "shapes.png"))],
                                           system="You look at pictures."), GenerationSettings(max_new_tokens=8))
    assert answers[1]["choices"][0]["message"]["content"] == local.answer
    after = scrape(url)
    assert after["dsvl_prompt_tokens_cached_total"] - before["dsvl_prompt_tokens_cached_total"] >= picture_end
    assert after["dsvl_prompt_tokens_total"] - before["dsvl_prompt_tokens_total"] == first["prompt_tokens"] + second["prompt_tokens"]
    assert after["dsvl_generation_tokens_total"] - before["dsvl_generation_tokens_total"] == 16
    assert after["dsvl_time_to_first_token_seconds_count"] - before["dsvl_time_to_first_token_seconds_count"] == 2
    assert after["dsvl_kv_cache_bytes"] > 0 and after["dsvl_requests_running"] == 0


def test_a_streaming_client_that_leaves_frees_its_row(url, engine):
    config = engine.model.generation_config
    eos, config.eos_token_id = config.eos_token_id, None  # the answer would run to 2000 tokens
    try:
        tokens_before = scrape(url)["dsvl_generation_tokens_total"]
        body = {"model": "default", "messages": [{"role": "user", "content": "Go on and on."}],
                "max_tokens": 2000, "stream": True}
        with httpx.Client(timeout=60) as client:
            with client.stream("POST", url + "/v1/chat/completions", json=body) as response:
                lines, chunks = response.iter_lines(), 0
                while chunks < 3:
                    line = next(lines)
                    chunks += line.startswith("data: {") and bool(json.loads(line[6:])["choices"])
                assert scrape(url)["dsvl_requests_running"] == 1  # it decodes while its client reads
                response.close()  # the client leaves
        for _ in range(500):  # bounded: each scrape is a round trip through the server
            if scrape(url)["dsvl_requests_running"] == 0:
                break
        assert scrape(url)["dsvl_requests_running"] == 0
        assert scrape(url)["dsvl_generation_tokens_total"] - tokens_before < 2000  # it stopped early
    finally:
        config.eos_token_id = eos
