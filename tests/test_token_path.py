"""The per-token path (issue 31): what the engine loop's thread hands the server's event loop, and
how the stream writes it, without a model; the loop's precomputed suppress mask against
transformers' processor. (Token-for-token equality with plain `generate`, streamed and not, is
tests/test_serve.py's and tests/test_engine_loop.py's.)"""

from __future__ import annotations

import asyncio
import threading

import pytest

from dsvl_cli.results import Result, TextChunk
from dsvl_cli.settings import GenerationSettings


def _job(loop):
    from dsvl_cli.serve.scheduler import Job

    return Job(conversation=None, gen=GenerationSettings(), loop=loop)


def test_what_accumulates_while_the_event_loop_is_busy_goes_over_in_one_wake_up():
    from dsvl_cli.serve.scheduler import END

    loop = asyncio.new_event_loop()
    wake_ups = []
    real = loop.call_soon_threadsafe

    def counted(*args):
        wake_ups.append(args)
        return real(*args)

    loop.call_soon_threadsafe = counted
    job = _job(loop)
    items = [TextChunk(f"t{k} ") for k in range(100)] + [Result(answer="done", finish_reason="stop")]
    emitter = threading.Thread(target=lambda: [job.emit(item) for item in [*items, END, END]])
    emitter.start()  # the event loop is not running: everything piles up behind one hand-over
    emitter.join()

    async def read():
        got = []
        while (item := await job.out.get()) is not END:
            got.append(item)
        return got, job.out.empty()

    try:
        got, empty = loop.run_until_complete(read())
    finally:
        loop.close()
    assert got == items and empty  # in order, END once
    assert len(wake_ups) == 1


def test_a_wake_up_is_scheduled_again_once_the_last_one_was_taken():
    from dsvl_cli.serve.scheduler import END

    loop = asyncio.new_event_loop()
    job = _job(loop)

    async def one_by_one():
        got = []
        for k in range(5):  # the emitter waits for each item to be read before the next
            await loop.run_in_executor(None, job.emit, TextChunk(str(k)))
            got.append(await asyncio.wait_for(job.out.get(), 10))
        await loop.run_in_executor(None, job.emit, END)
        assert await asyncio.wait_for(job.out.get(), 10) is END
        return [c.text for c in got]

    try:
        assert loop.run_until_complete(one_by_one()) == ["0", "1", "2", "3", "4"]
    finally:
        loop.close()


def test_a_stream_reads_what_has_arrived_as_one_batch_and_ends_at_end():
    from dsvl_cli.serve.drain import Drain
    from dsvl_cli.serve.jobs import Run
    from dsvl_cli.serve.scheduler import END

    async def scenario():
        job = _job(asyncio.get_running_loop())
        run = Run(job, request=None, drain=Drain())
        first, *rest = [TextChunk(f"{k}") for k in range(6)]
        for item in rest[:3]:
            job.out.put_nowait(item)
        run.first = first
        batches = []
        async for batch in run.batches():
            batches.append([c.text for c in batch])
            if len(batches) == 1:  # more arrives while the first batch is written
                for item in [*rest[3:], END]:
                    job.out.put_nowait(item)
        return batches, run.done

    batches, done = asyncio.run(scenario())
    assert batches == [["0123"], ["45"]] and done  # adjacent text: one chunk, one JSON object


def test_adjacent_text_chunks_join_with_their_logprobs_and_other_items_stay_apart():
    from dsvl_cli.serve.jobs import joined

    a, b = TextChunk("a", logprobs=[{"token": "a"}]), TextChunk("b", logprobs=[{"token": "b"}])
    result = Result(answer="ab", finish_reason="stop")
    got = joined([a, b, result, TextChunk("c"), TextChunk("d")])
    assert [type(x).__name__ for x in got] == ["TextChunk", "Result", "TextChunk"]
    assert got[0].text == "ab" and got[0].logprobs == [{"token": "a"}, {"token": "b"}]
    assert got[1] is result and got[2].text == "cd" and got[2].logprobs is None


def test_the_loops_suppress_mask_gives_transformers_scores():
    import torch
    from transformers import SuppressTokensLogitsProcessor

    from dsvl_cli.engine.rows import SuppressedTokens

    tokens = [3, 7, 8, 40, 99]
    ours, theirs = SuppressedTokens(torch.tensor(tokens)), SuppressTokensLogitsProcessor(tokens)
    ids = torch.zeros((4, 3), dtype=torch.long)
    for _ in range(3):  # the mask is built once and reused
        scores = torch.randn(4, 100)
        assert torch.equal(ours(ids, scores.clone()), theirs(ids, scores.clone()))
    assert ours(ids, torch.randn(2, 120)).isinf().sum() == 2 * len(tokens)  # another vocabulary size: rebuilt


@pytest.mark.parametrize("sampling", [False, True])
def test_rows_of_the_loop_use_the_precomputed_mask(engine, sampling):
    """A row built for the model's suppressed tokens gets SuppressedTokens, never transformers' own."""
    from dsvl_cli.engine.core import Generation
    from dsvl_cli.engine.rows import SuppressedTokens, logits_processors

    suppressed = getattr(engine.model.generation_config, "suppress_tokens", None)
    assert suppressed, "tiny-random suppresses its image tokens"
    gen = GenerationSettings(max_new_tokens=4, temperature=0.7 if sampling else 0.0, seed=1)
    ids = engine.tokenizer("Hello", return_tensors="pt")["input_ids"]
    plan = Generation.plan(engine, gen, prompt_tokens=int(ids.shape[1]))
    processors, _ = logits_processors(engine, plan, ids)
    names = [type(p).__name__ for p in processors]
    assert "SuppressedTokens" in names and "SuppressTokensLogitsProcessor" not in names
    assert any(isinstance(p, SuppressedTokens) for p in processors)


def test_greedy_plans_suppress_with_the_mask_built_once_and_sampling_and_logprobs_keep_transformers_place(engine):
    from dsvl_cli.engine.core import Generation
    from dsvl_cli.engine.suppress import SuppressedTokens

    def plan(**settings):
        return Generation.plan(engine, GenerationSettings(max_new_tokens=4, **settings), prompt_tokens=10)

    greedy = plan()
    assert greedy.kwargs["suppress_tokens"] is None  # transformers builds none of its own
    [ours] = [p for p in greedy.logits_processors if isinstance(p, SuppressedTokens)]
    assert ours.suppress_tokens.tolist() == list(engine.model.generation_config.suppress_tokens)
    sampled = plan(temperature=0.8, seed=3)
    assert "suppress_tokens" not in sampled.kwargs and not sampled.logits_processors
    recorded = plan(logprobs=2)
    assert not any(isinstance(p, SuppressedTokens) for p in recorded.logits_processors)


def test_a_greedy_answer_with_the_precomputed_mask_is_plain_generates(engine, reference):
    """The greedy ask path now suppresses after transformers' processors: still generate's tokens,
    with a repetition penalty too (the one processor that rescales scores)."""
    import torch
    from conftest import EXAMPLES, reference_generate

    from dsvl_cli.conversation import Conversation
    from dsvl_cli.images import load_image

    model, processor = reference
    image = load_image(str(EXAMPLES / "shapes.png"))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe it."}]}]
    want = reference_generate(model, processor, messages, [image.image], 24)
    got = engine.run(Conversation.single("Describe it.", [image]), GenerationSettings(max_new_tokens=24))
    assert got.token_ids == want
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(text=prompt, images=[image.image], return_tensors="pt")
    with torch.inference_mode():
        penalised = model.generate(**inputs, max_new_tokens=24, do_sample=False, repetition_penalty=1.3)
    got = engine.run(Conversation.single("Describe it.", [image]),
                     GenerationSettings(max_new_tokens=24, repetition_penalty=1.3))
    assert got.token_ids == penalised[0, inputs["input_ids"].shape[1]:].tolist()


def test_text_goes_over_at_most_every_interval_the_first_and_the_end_at_once():
    """The first text goes at once; a burst of text right after it waits for the interval and goes
    in one hand-over; text after a pause longer than the interval goes at once again; the end
    (Result, END) never waits for the interval."""
    import time

    from dsvl_cli.serve.scheduler import END, HAND_OVER_S

    loop = asyncio.new_event_loop()
    job = _job(loop)
    handed = []  # the items of each hand-over
    real = job.out.put_nowait
    job.out.put_nowait = lambda item: (handed[-1].append(item), real(item))  # noqa: E731
    hand_over = job._hand_over

    def counted():
        handed.append([])
        hand_over()
        if not handed[-1]:
            handed.pop()  # a hand-over that found everything taken already

    job._hand_over = counted
    text = [TextChunk(f"{k} ") for k in range(60)]
    result = Result(answer="x", finish_reason="stop")

    def produce():
        job.emit(text[0])  # the first: at once
        time.sleep(0.05)  # longer than the interval: the event loop has taken it
        for item in text[1:31]:  # in a burst: one hand-over, after the interval
            job.emit(item)
        time.sleep(0.05)
        job.emit(text[31])  # the interval has passed: at once
        for item in text[32:]:
            job.emit(item)
        job.emit(result)  # the end: at once, taking what waits with it
        job.emit(END)

    async def consume():
        loop.run_in_executor(None, produce)
        got = []
        while (item := await asyncio.wait_for(job.out.get(), 30)) is not END:
            got.append(item)
        return got

    try:
        got = loop.run_until_complete(consume())
    finally:
        loop.close()
    assert got == [*text, result]
    assert handed[:2] == [[text[0]], text[1:31]]  # the burst waited for the interval, then went whole
    assert handed[2][0] is text[31]  # at once, with whatever came before the event loop ran
    assert [item for batch in handed[2:] for item in batch] == [*text[31:], result, END] and len(handed) <= 4
