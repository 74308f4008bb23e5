"""The fast path (static KV cache + compiled decode) and --quantize, on tiny-random on CPU.

Greedy tokens through the fast path must equal plain `generate`'s; chat KV reuse must survive the
static cache (and fall back to a recompute where a static cache cannot take the turn). Most tests
run the static cache eagerly (compile=False); one test compiles, as compiling costs ~30 s on 2 cores.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from conftest import EXAMPLES, reference_generate


def _loaded(colour, size=(48, 40)):
    from dsvl_cli.images import LoadedImage

    return LoadedImage(colour, Image.new("RGB", size, colour), 0.0)


@pytest.fixture(scope="module")
def fast_engine(tiny_folder):
    from dsvl_cli.engine.local import LocalEngine
    from dsvl_cli.settings import ModelSettings

    engine = LocalEngine.load(ModelSettings(model="tiny-random", device="cpu", compile=False))
    assert engine.fast is None  # --no-compile: the plain path
    engine.enable_fast_path(compile=False)
    return engine


def _chat(engine, turns, cache, max_new=10, conversation=None):
    """Run `turns` user turns; return per-turn (token_ids, cached_tokens)."""
    from dsvl_cli.conversation import Conversation
    from dsvl_cli.settings import GenerationSettings

    gen = GenerationSettings(max_new_tokens=max_new)
    conversation = conversation if conversation is not None else Conversation()
    out = []
    for text, images in turns:
        conversation.add_user(text, images)
        result = engine.run(conversation, gen, cache=cache)
        out.append((result.token_ids, result.stats.cached_tokens))
        conversation.add_assistant(result.answer, result.finish_reason)
    return out


TURNS = [
    ("describe the image", [_loaded("red")]),
    ("what colour is it?", []),
    ("and this one?", [_loaded("blue", (30, 60))]),
    ("which is larger?", []),
]


def test_bucket_is_a_power_of_two_within_the_context():
    from dsvl_cli.engine.fastpath import bucket

    assert bucket(10, 4096) == 512
    assert bucket(512, 4096) == 512
    assert bucket(513, 4096) == 1024
    assert bucket(3000, 4096) == 4096
    assert bucket(5000, 6000) == 6000  # capped at the context length


@pytest.mark.parametrize("setting,prefer,device,expected", [
    (None, True, "cuda", True), (None, True, "cpu", False), (None, False, "cuda", False),
    (True, False, "cpu", True), (False, True, "cuda", False),
])
def test_fast_path_is_on_where_it_pays_and_the_flag_overrides(setting, prefer, device, expected):
    from dsvl_cli.engine.fastpath import wanted

    assert wanted(setting, prefer_fast=prefer, device=device) is expected


def test_fast_path_greedy_tokens_equal_plain_generate(fast_engine, reference):
    from dsvl_cli.conversation import Conversation
    from dsvl_cli.settings import GenerationSettings

    model, processor = reference
    image = _loaded("red")
    result = fast_engine.run(Conversation.single("describe the image", [image]), GenerationSettings(max_new_tokens=20))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "describe the image"}]}]
    assert result.token_ids == reference_generate(model, processor, messages, [image.image], 20)


def test_chat_kv_reuse_through_the_static_cache_equals_a_full_recompute(fast_engine, engine):
    from transformers import StaticCache

    from dsvl_cli.engine.streaming import PromptCache

    cache = PromptCache()
    reused = _chat(fast_engine, TURNS, cache)
    recomputed = _chat(engine, TURNS, None)
    assert [ids for ids, _ in reused] == [ids for ids, _ in recomputed]
    assert all(cached > 0 for _, cached in reused[1:])  # every later turn reused the KV
    assert isinstance(cache.kv, StaticCache)


def test_one_static_cache_is_reused_across_requests_but_a_chat_keeps_its_own(fast_engine, engine):
    """Requests without a PromptCache reuse one reset cache (stable addresses for CUDA graphs); an
    ask between two chat turns must neither clobber the chat's cache nor see stale KV."""
    from dsvl_cli.conversation import Conversation
    from dsvl_cli.engine.streaming import PromptCache
    from dsvl_cli.settings import GenerationSettings

    fast = fast_engine.fast
    first = fast.new_cache(1, 100)
    assert fast.new_cache(1, 200) is first  # same (batch, bucket): reset and handed out again
    assert fast.new_cache(2, 100) is not first  # another shape replaces it (one kept at a time)
    assert fast.new_cache(2, 100, shared=False) is not fast.new_cache(2, 100)

    cache, conversation = PromptCache(), Conversation()
    turn1 = _chat(fast_engine, TURNS[:1], cache, conversation=conversation)
    question = Conversation.single("what is this?", [_loaded("green")])
    asks = [fast_engine.run(question, GenerationSettings(max_new_tokens=10)).token_ids for _ in range(2)]
    assert asks[0] == asks[1] == engine.run(question, GenerationSettings(max_new_tokens=10)).token_ids
    turn2 = _chat(fast_engine, TURNS[1:2], cache, conversation=conversation)
    assert turn2[0][1] > 0  # reused the chat's own KV...
    assert [ids for ids, _ in turn1 + turn2] == [ids for ids, _ in _chat(engine, TURNS[:2], None)]  # ...intact


def test_a_turn_that_outgrows_the_static_cache_recomputes_into_a_bigger_one(fast_engine, engine, monkeypatch):
    from dsvl_cli.engine import fastpath
    from dsvl_cli.conversation import Conversation
    from dsvl_cli.engine.streaming import PromptCache

    turns = [("describe the image", [_loaded("red")]), ("and this one, in more detail?", [_loaded("blue")])]
    first_needed = len(fast_engine.encode(Conversation.single(*turns[0]))["input_ids"][0]) + 10
    monkeypatch.setattr(fastpath, "MIN_BUCKET", first_needed)  # turn 1 fills its cache exactly
    cache = PromptCache()
    reused = _chat(fast_engine, turns, cache)
    assert cache.kv.get_max_length() > first_needed
    assert reused[1][1] == 0  # no reuse on the turn that did not fit
    assert [ids for ids, _ in reused] == [ids for ids, _ in _chat(engine, turns, None)]


def test_a_dynamic_cache_from_before_the_fast_path_is_dropped_cleanly(tiny_folder, engine):
    from transformers import DynamicCache, StaticCache

    from dsvl_cli.conversation import Conversation
    from dsvl_cli.engine.local import LocalEngine
    from dsvl_cli.engine.streaming import PromptCache
    from dsvl_cli.settings import ModelSettings

    switching = LocalEngine.load(ModelSettings(model="tiny-random", device="cpu"))
    cache, conversation = PromptCache(), Conversation()
    _chat(switching, TURNS[:1], cache, conversation=conversation)
    assert isinstance(cache.kv, DynamicCache)
    switching.enable_fast_path(compile=False)
    second = _chat(switching, TURNS[1:2], cache, conversation=conversation)
    assert second[0][1] == 0  # the dynamic cache was not reused...
    assert isinstance(cache.kv, StaticCache)  # ...and the turn refilled a static one
    from dsvl_cli.settings import GenerationSettings

    conversation.messages.pop()  # the answer to turn 2: recompute it with the plain engine
    assert second[0][0] == engine.run(conversation, GenerationSettings(max_new_tokens=10)).token_ids


@pytest.fixture(scope="module")
def compiled_ask(tiny_folder):
    """`ask --compile` once per module: it compiles the decode step (~30 s on 2 cores) into
    DSVL_HOME's compile cache, which every later compiled run (the chat test) then reads. Tests
    that need a warm cache ask for this fixture instead of relying on test order."""
    from typer.testing import CliRunner

    from dsvl_cli.cli import app

    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
        return CliRunner().invoke(app, ["ask", str(EXAMPLES / "shapes.png"), "Describe this image.", "-m",
                                        "tiny-random", "-n", "16", "--json", "--compile", "--device", "cpu"],
                                  catch_exceptions=False)


def test_compiled_decode_equals_plain_generate_and_fills_the_compile_cache(compiled_ask, reference):
    """`ask --compile`: the whole CLI path with a compiled decode step (the one slow test, ~30 s)."""
    from dsvl_cli.engine import runtime
    from dsvl_cli.engine.fastpath import compile_cache_dir
    from dsvl_cli.images import load_image

    result, image = compiled_ask, EXAMPLES / "shapes.png"
    assert result.exit_code == 0, result.output
    model, processor = reference
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this image."}]}]
    ids = reference_generate(model, processor, messages, [load_image(str(image)).image], 16)
    assert json.loads(result.stdout)["answer"] == processor.batch_decode([ids], skip_special_tokens=True)[0].lstrip()
    assert any(p.is_file() for p in compile_cache_dir(runtime.dsvl_home()).rglob("*"))


def test_chat_with_compile_on_cpu_answers_each_turn_as_plain_generate(cli, reference, compiled_ask):
    """`chat --compile`: compiled decode + static-cache KV reuse across turns, token for token
    against plain `generate` on the whole re-encoded conversation (compile cache warmed by
    `compiled_ask`: ~10 s)."""
    from dsvl_cli.images import load_image

    image = EXAMPLES / "shapes.png"
    result = cli(["chat", str(image), "-m", "tiny-random", "--device", "cpu", "--compile", "--json", "-n", "12"],
                 input="describe it\nwhat colour is the square?\n")
    assert result.exit_code == 0, result.output
    turns = [json.loads(line) for line in result.stdout.splitlines()]
    assert turns[1]["stats"]["cached_tokens"] > 0  # the second turn reused the first one's KV
    model, processor = reference
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "describe it"}]}]
    for k, turn in enumerate(turns):
        ids = reference_generate(model, processor, messages, [load_image(str(image)).image], 12)
        assert turn["answer"] == processor.batch_decode([ids], skip_special_tokens=True)[0].lstrip(), k
        messages += [{"role": "assistant", "content": [{"type": "text", "text": turn["answer"]}]},
                     {"role": "user", "content": [{"type": "text", "text": "what colour is the square?"}]}]


def test_compiled_decode_with_a_schema_equals_masked_plain_generate(cli, reference, compiled_ask):
    """`ask --compile --schema`: the grammar mask is applied outside the compiled decode step (as a
    logits processor in generate's loop); greedy tokens equal plain `generate` with a mask written
    in test_structured.py (compile cache warmed by `compiled_ask`)."""
    import jsonschema
    from test_structured import SCHEMAS, masked_reference, schema_grammar, text_of

    from dsvl_cli.images import load_image

    image = EXAMPLES / "shapes.png"
    for name in ("refs_defs", "nullable"):
        result = cli(["ask", str(image), "Describe this image.", "-m", "tiny-random", "-n", "60", "--json",
                      "--compile", "--device", "cpu", "--schema", json.dumps(SCHEMAS[name])])
        assert result.exit_code == 0, result.output
        record = json.loads(result.stdout)
        ids = masked_reference(reference, schema_grammar(SCHEMAS[name]), images=[load_image(str(image)).image], n=60)
        assert record["answer"] == text_of(reference, ids), name
        jsonschema.validate(record["data"], SCHEMAS[name])


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_quantize_on_cpu_is_a_usage_error_before_loading(cli, kind):
    result = cli(["ask", str(EXAMPLES / "sunset.jpg"), "hi", "-m", "tiny-random", "--device", "cpu",
                  "--quantize", kind])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"dsvl: error: --quantize {kind}: needs a CUDA GPU (device is cpu); drop --quantize to run unquantized")


def test_quantize_without_torchao_or_in_fp16_says_why(monkeypatch):
    import torch

    from dsvl_cli.engine import quantize
    from dsvl_cli.errors import UsageError

    monkeypatch.setattr(quantize, "torchao_available", lambda: False)
    with pytest.raises(UsageError, match=r"--quantize int8: needs torchao, which is not installed"):
        quantize.check("int8", "cuda", torch.bfloat16)
    monkeypatch.setattr(quantize, "torchao_available", lambda: True)
    with pytest.raises(UsageError, match=r"--quantize int4: needs --dtype bfloat16 \(got float16\)"):
        quantize.check("int4", "cuda:0", torch.float16)
    quantize.check("int8", "cuda", torch.float16)  # int8 weight-only takes any float dtype


def test_quantization_config_keeps_the_vision_towers_unquantized():
    pytest.importorskip("torchao")
    from dsvl_cli.engine import quantize

    config = quantize.quantization_config("int4")
    assert "model.vision_model" in config.modules_to_not_convert
    assert type(config.quant_type).__name__ == "Int4WeightOnlyConfig"


@pytest.mark.parametrize("command,prefer", [
    (["ask", "Hi"], False),
    (["chat"], True),
    (["batch", "-", "--prompt", "Hi"], True),
])
def test_commands_that_generate_many_times_ask_for_the_fast_path(cli, monkeypatch, command, prefer):
    """chat and batch load with prefer_fast (on by default where it pays: CUDA); ask does not."""
    from dsvl_cli.engine.local import LocalEngine

    asked = []
    real_load = LocalEngine.load.__func__

    def spy(cls, settings, **kwargs):
        asked.append(kwargs.get("prefer_fast", False))
        return real_load(cls, settings, **kwargs)

    monkeypatch.setattr(LocalEngine, "load", classmethod(spy))
    shapes = Path(__file__).resolve().parent.parent / "examples" / "shapes.png"
    stdin = {"ask": "", "chat": "Hi\n", "batch": f"{shapes}\n"}[command[0]]
    result = cli([*command, "-m", "tiny-random", "-n", "2", "--no-compile"], input=stdin)
    assert asked == [prefer], result.output
