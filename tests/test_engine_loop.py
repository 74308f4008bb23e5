"""The warm engine loop (engine/loop.py): continuous batching, the prefix cache that knows pictures,
the image-feature cache — each answer token for token the one plain `generate` gives (greedy,
tiny-random). Synchronised on what the loop hands out (chunks, results), never on time."""

from __future__ import annotations

import queue
import shutil
import threading

import pytest
from PIL import Image

from conftest import EXAMPLES, reference_generate

from dsvl_cli.conversation import Conversation
from dsvl_cli.engine.loop import EngineLoop, QueueFull
from dsvl_cli.engine.rows import END, Request
from dsvl_cli.images import load_image
from dsvl_cli.results import Result, TextChunk
from dsvl_cli.settings import GenerationSettings

SHAPES, SUNSET, CHART = (str(EXAMPLES / n) for n in ("shapes.png", "sunset.jpg", "chart.png"))


def make_loop(engine, **overrides) -> EngineLoop:
    options = {"max_rows": 8, "cache_bytes": 2**28, "feature_bytes": 2**26, "kv_budget": 2**30, **overrides}
    loop = EngineLoop(engine, **options)
    loop.start()
    return loop


class Reader:
    """One request's items as the loop hands them out, readable from the test's thread."""

    def __init__(self, loop: EngineLoop, conversation, gen):
        self.items: queue.Queue = queue.Queue()
        self.seen: list = []
        self.request = loop.submit(Request(conversation, gen, self.items.put))

    def next(self, timeout: float = 60):
        item = self.items.get(timeout=timeout)
        self.seen.append(item)
        return item

    def chunks_until(self, n: int) -> None:
        """Read until `n` text chunks have arrived."""
        while sum(isinstance(i, TextChunk) for i in self.seen) < n:
            assert not isinstance(self.next(), (Result, BaseException)) and self.seen[-1] is not END

    def result(self) -> Result:
        while (item := self.next()) is not END:
            if isinstance(item, BaseException):
                raise item
        result = next(i for i in self.seen if isinstance(i, Result))
        assert "".join(i.text for i in self.seen if isinstance(i, TextChunk)) == result.answer
        return result


def plain(reference, prompt: str, sources: list[str], max_new_tokens: int) -> list[int]:
    model, processor = reference
    messages = [{"role": "user", "content": [{"type": "image"} for _ in sources] + [{"type": "text", "text": prompt}]}]
    return reference_generate(model, processor, messages, [load_image(s).image for s in sources], max_new_tokens)


@pytest.fixture
def no_eos(engine):
    """Answers run to max_new_tokens (tiny-random would end some early at random)."""
    config = engine.model.generation_config
    eos, config.eos_token_id = config.eos_token_id, None
    yield
    config.eos_token_id = eos


def test_rows_that_join_mid_flight_leave_early_and_differ_equal_plain_generate(engine, reference):
    asks = [("Describe this picture.", [SHAPES], 48), ("Hello there", [], 6), ("Which colours?", [SUNSET], 20),
            ("Compare them.", [SHAPES, CHART], 12)]
    loop = make_loop(engine)
    try:
        first = Reader(loop, Conversation.single(asks[0][0], [load_image(s) for s in asks[0][1]]),
                       GenerationSettings(max_new_tokens=asks[0][2]))
        first.chunks_until(4)  # the long one is decoding: the others join it mid-flight
        others = [Reader(loop, Conversation.single(p, [load_image(s) for s in srcs]), GenerationSettings(max_new_tokens=n))
                  for p, srcs, n in asks[1:]]
        results = [first.result(), *(r.result() for r in others)]
    finally:
        loop.close(5)
    for (prompt, sources, n), result in zip(asks, results):
        expected = plain(reference, prompt, sources, n)
        assert result.token_ids == expected, prompt
        assert result.stats.generated_tokens == len(expected)
    assert first.request.shared >= 2 and all(r.request.shared >= 2 for r in others)


def test_a_short_request_is_answered_while_a_long_one_still_decodes(engine, no_eos):
    loop = make_loop(engine)
    try:
        long = Reader(loop, Conversation.single("Tell a long story."), GenerationSettings(max_new_tokens=400))
        long.chunks_until(2)
        short = Reader(loop, Conversation.single("Hi"), GenerationSettings(max_new_tokens=4))
        assert short.result().finish_reason == "length"
        assert not any(isinstance(i, Result) for i in long.seen)  # the long one has not ended
        assert long.request.stop.is_set() is False
        long.request.stop.set()
        assert long.result().finish_reason == "interrupted"
    finally:
        loop.close(5)


def test_a_schema_row_beside_plain_rows_equals_its_single_answer(engine):
    from dsvl_cli.structured.spec import schema_format

    schema = schema_format({"type": "object", "properties": {"n": {"type": "integer", "maximum": 99}},
                            "required": ["n"], "additionalProperties": False})
    shapes = load_image(SHAPES)
    structured = GenerationSettings(max_new_tokens=40, answer_format=schema)
    loop = make_loop(engine)
    try:
        readers = [Reader(loop, Conversation.single("How many shapes?", [shapes]), structured),
                   Reader(loop, Conversation.single("Describe.", [shapes]), GenerationSettings(max_new_tokens=16)),
                   Reader(loop, Conversation.single("Count.", [shapes]), GenerationSettings(max_new_tokens=16, logprobs=2))]
        got = [r.result() for r in readers]
    finally:
        loop.close(5)
    alone = [engine.run(Conversation.single("How many shapes?", [shapes]), structured),
             engine.run(Conversation.single("Describe.", [shapes]), GenerationSettings(max_new_tokens=16)),
             engine.run(Conversation.single("Count.", [shapes]), GenerationSettings(max_new_tokens=16, logprobs=2))]
    assert [r.token_ids for r in got] == [r.token_ids for r in alone]
    assert got[0].data == alone[0].data and isinstance(got[0].data, dict)
    assert got[2].logprobs and len(got[2].logprobs) == len(alone[2].logprobs)
    for mine, theirs in zip(got[2].logprobs, alone[2].logprobs):  # batched matmuls: equal to float rounding
        assert mine["token"] == theirs["token"] and mine["logprob"] == pytest.approx(theirs["logprob"], abs=1e-4)
        assert [t["token"] for t in mine["top_logprobs"]] == [t["token"] for t in theirs["top_logprobs"]]


def test_stop_strings_and_seeds_per_row(engine, no_eos):
    conversation = Conversation.single("Say something.")
    plain_answer = engine.run(conversation, GenerationSettings(max_new_tokens=30)).answer
    stop = plain_answer.split()[2] if len(plain_answer.split()) > 2 else plain_answer[3:5]
    stopped = GenerationSettings(max_new_tokens=30, stop=(stop,))
    seeded = GenerationSettings(max_new_tokens=12, temperature=0.9, seed=7)
    loop = make_loop(engine)
    try:
        lone = Reader(loop, conversation, seeded).result()
        readers = [Reader(loop, conversation, stopped), Reader(loop, Conversation.single("Other words"), seeded),
                   Reader(loop, conversation, seeded)]
        got = [r.result() for r in readers]
    finally:
        loop.close(5)
    expected = engine.run(conversation, stopped)
    assert got[0].answer == expected.answer and got[0].finish_reason == "stop" and stop not in got[0].answer
    assert got[2].token_ids == lone.token_ids  # the same seed, the same answer, however busy


def test_two_pictures_of_one_size_behind_the_same_text_never_share_kv(engine, reference, tmp_path):
    red, blue = tmp_path / "red.png", tmp_path / "blue.png"
    Image.new("RGB", (96, 64), (220, 30, 30)).save(red)
    Image.new("RGB", (96, 64), (30, 30, 220)).save(blue)
    loop = make_loop(engine)
    try:
        first = Reader(loop, Conversation.single("What colour is it?", [load_image(str(red))]),
                       GenerationSettings(max_new_tokens=8)).result()
        second = Reader(loop, Conversation.single("What colour is it?", [load_image(str(blue))]),
                        GenerationSettings(max_new_tokens=8)).result()
        again = Reader(loop, Conversation.single("What colour is it?", [load_image(str(red))]),
                       GenerationSettings(max_new_tokens=8)).result()
    finally:
        loop.close(5)
    ids = engine.tokenizer(engine.expand_placeholders(engine.render(
        Conversation.single("What colour is it?", [load_image(str(red))]))))["input_ids"]
    (image_start, _), = engine.image_spans(ids)
    assert first.stats.cached_tokens == 0
    assert second.stats.cached_tokens == image_start  # the text before the picture, not the picture
    assert again.stats.cached_tokens == len(ids) - 1  # the same picture: all but the last prompt token
    assert second.token_ids == plain(reference, "What colour is it?", [str(blue)], 8)
    assert again.token_ids == first.token_ids == plain(reference, "What colour is it?", [str(red)], 8)


def test_a_tiny_cache_memory_evicts_and_answers_stay_right(engine, reference):
    from dsvl_cli.engine.loop import kv_bytes_per_token

    asks = [("Describe.", SHAPES), ("Describe.", SUNSET), ("Describe.", CHART), ("Describe.", SHAPES)]
    prompt = len(engine.tokenizer(engine.expand_placeholders(engine.render(
        Conversation.single("Describe.", [load_image(SHAPES)]))))["input_ids"])
    row_bytes = (prompt + 5) * kv_bytes_per_token(engine.model)  # one finished row's entry
    for budget in (row_bytes // 2, row_bytes * 5 // 2):  # none fits; two fit, so one must go
        loop = make_loop(engine, cache_bytes=budget)
        try:
            got = [Reader(loop, Conversation.single(p, [load_image(s)]), GenerationSettings(max_new_tokens=6)).result()
                   for p, s in asks]
        finally:
            loop.close(5)
        assert loop.prefix.bytes <= budget
        if budget < row_bytes:
            assert len(loop.prefix) == 0 and all(r.stats.cached_tokens == 0 for r in got)
        else:  # shapes' entry served the text before the others' pictures: the least recently used went
            assert len(loop.prefix) == 2 and loop.prefix.evicted == 1
            assert [r.stats.cached_tokens for r in got] == [0, got[1].stats.cached_tokens, got[1].stats.cached_tokens,
                                                            prompt - 1]
        for (p, source), result in zip(asks, got):
            assert result.token_ids == plain(reference, p, [source], 6)


def test_the_same_photo_from_another_path_runs_the_vision_towers_once(engine, tmp_path):
    copy = tmp_path / "copy-of-shapes.png"
    shutil.copy(SHAPES, copy)
    loop = make_loop(engine)
    try:
        a = Reader(loop, Conversation.single("First question.", [load_image(SHAPES)]), GenerationSettings(max_new_tokens=4))
        a.result()
        # another system prompt: the prefix cache cannot hold the picture's KV, its features come from the cache
        b = Reader(loop, Conversation.single("Another question.", [load_image(str(copy))], system="Be brief."),
                   GenerationSettings(max_new_tokens=4)).result()
        assert b.stats.cached_tokens <= 1  # the BOS token at most
        assert loop.features.encoded == 1 and loop.features.hits == 1
        assert loop.meters.image_cache_hits_total == 1 and loop.meters.image_cache_misses_total == 1
    finally:
        loop.close(5)
    assert b.token_ids == engine.run(Conversation.single("Another question.", [load_image(SHAPES)], system="Be brief."),
                                     GenerationSettings(max_new_tokens=4)).token_ids


def test_a_request_whose_client_leaves_frees_its_row_at_once(engine, no_eos):
    loop = make_loop(engine)
    try:
        stays = Reader(loop, Conversation.single("Keep going."), GenerationSettings(max_new_tokens=300))
        leaves = Reader(loop, Conversation.single("Me too."), GenerationSettings(max_new_tokens=300))
        leaves.chunks_until(2)
        stays.chunks_until(2)
        leaves.request.stop.set()
        result = leaves.result()
        assert result.finish_reason == "interrupted" and result.stats.generated_tokens < 300
        seen_running = []
        while len(seen_running) < 3:  # the next steps run one row: the other's is free
            stays.next()
            seen_running.append(len(loop.rows))
        assert seen_running[-1] == 1
        stays.request.stop.set()
        assert stays.result().finish_reason == "interrupted"
    finally:
        loop.close(5)


def test_past_the_waiting_bound_submit_says_queue_full(engine):
    loop = EngineLoop(engine, max_rows=1, max_waiting=2, cache_bytes=0, feature_bytes=0, kv_budget=2**30)
    seen: list = []
    for _ in range(3):  # not started: nothing runs, so one more than the bound may wait
        loop.submit(Request(Conversation.single("Hi"), GenerationSettings(max_new_tokens=1), seen.append))
    with pytest.raises(QueueFull):
        loop.submit(Request(Conversation.single("Hi"), GenerationSettings(max_new_tokens=1), seen.append))
    loop.close(1)


def test_sixty_four_clients_at_the_defaults_are_all_answered(engine):
    """No 429 for 64 at once: they wait (bounded by MAX_WAITING) and are answered."""
    loop = engine.warm_loop(max_rows=16, max_waiting=1024)
    loop.start()
    done = threading.Barrier(65, timeout=120)
    answers: list = []

    def ask(k: int) -> None:
        answers.append(list(loop.stream(Conversation.single(f"Question {k}"), GenerationSettings(max_new_tokens=3)))[-1])
        done.wait()

    try:
        for k in range(64):
            threading.Thread(target=ask, args=(k,), daemon=True).start()
        done.wait()
    finally:
        loop.close(5)
    assert len(answers) == 64 and all(isinstance(a, Result) and a.stats.generated_tokens >= 1 for a in answers)
