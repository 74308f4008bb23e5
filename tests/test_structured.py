"""--schema and --regex: grammar-constrained answers on tiny-random, greedy, on every path.

The reference for every constrained answer is built here, apart from dsvl's own code: plain
transformers `generate` on the model loaded straight from its folder, with a logits processor
written in this file that asks an llguidance matcher for its allowed tokens (one byte per token,
`compute_logit_bias`) and masks the rest. dsvl's answers (ask, chat, batch at batch size 1 and 8
with a different schema per row, the static-cache fast path, serve through the openai client,
--server) must equal it token for token (or in text where only text travels), and every answer
must validate with jsonschema.
"""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from conftest import EXAMPLES

PROMPT = "Describe this image."
SCHEMAS = {
    "nested_object": {"type": "object", "additionalProperties": False, "required": ["who", "where"], "properties": {
        "who": {"type": "object", "additionalProperties": False, "required": ["name", "age"], "properties": {
            "name": {"type": "string", "maxLength": 8}, "age": {"type": "integer", "minimum": 0, "maximum": 120}}},
        "where": {"type": "string", "enum": ["inside", "outside"]}}},
    "array_bounds": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9},
                     "minItems": 2, "maxItems": 4},
    "enums": {"type": "object", "additionalProperties": False, "required": ["colour", "shape"], "properties": {
        "colour": {"enum": ["red", "green", "blue"]},
        "shape": {"type": "string", "enum": ["circle", "square", "triangle"]}}},
    "refs_defs": {"$defs": {"point": {"type": "object", "additionalProperties": False, "required": ["x", "y"],
                                      "properties": {"x": {"type": "integer", "minimum": -5, "maximum": 5},
                                                     "y": {"type": "integer", "minimum": -5, "maximum": 5}}}},
                  "type": "object", "additionalProperties": False, "required": ["a", "b"],
                  "properties": {"a": {"$ref": "#/$defs/point"}, "b": {"$ref": "#/$defs/point"}}},
    "nullable": {"type": "object", "additionalProperties": False, "required": ["note", "n"], "properties": {
        "note": {"type": ["string", "null"], "maxLength": 6},
        "n": {"anyOf": [{"type": "integer", "minimum": 1, "maximum": 3}, {"type": "null"}]}}},
    "integer_range": {"type": "integer", "minimum": 100, "maximum": 250},
    "string_pattern": {"type": "object", "additionalProperties": False, "required": ["code", "ok"], "properties": {
        "code": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"}, "ok": {"type": "boolean"}}},
    "array_of_objects": {"type": "array", "minItems": 1, "maxItems": 2, "items": {
        "type": "object", "additionalProperties": False, "required": ["tag", "n"], "properties": {
            "tag": {"type": "string", "maxLength": 5}, "n": {"type": "integer", "minimum": 0, "maximum": 10}}}},
}
N = 120  # every answer above closes well within this on tiny-random (about 5 to 60 tokens)


# -- the reference: plain generate + a mask written here ----------------------------------------------

class ReferenceMask:
    """A logits processor for one row: the matcher's allowed tokens (a byte each), the rest -inf."""

    def __init__(self, tokenizer, grammar: str, vocab: int):
        import llguidance.hf
        from llguidance import LLMatcher

        self.matcher = LLMatcher(llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab), grammar)
        assert not self.matcher.is_error(), self.matcher.get_error()
        self.first = True

    def __call__(self, input_ids, scores):
        import torch

        if not self.first:
            assert self.matcher.consume_token(int(input_ids[0, -1]))
        self.first = False
        allowed = torch.frombuffer(bytearray(self.matcher.compute_logit_bias()), dtype=torch.uint8)
        blocked = torch.ones(scores.shape[1], dtype=torch.bool)
        blocked[: len(allowed)] = allowed[: scores.shape[1]] == 0
        return scores.masked_fill(blocked, float("-inf"))


def schema_grammar(schema: dict) -> str:
    from llguidance import LLMatcher

    return LLMatcher.grammar_from_json_schema(json.dumps(schema), defaults={"whitespace_flexible": False})


def regex_grammar(pattern: str) -> str:
    from llguidance import LLMatcher

    return LLMatcher.grammar_from_regex(pattern)


def masked_reference(reference, grammar: str, prompt: str = PROMPT, images=(), n: int = N) -> list[int]:
    """Greedy ids (EOS included) from plain `generate` with the reference mask."""
    import torch
    from transformers import LogitsProcessorList

    model, processor = reference
    content = [{"type": "image"} for _ in images] + [{"type": "text", "text": prompt}]
    text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    inputs = processor(text=text, images=list(images) or None, return_tensors="pt")
    mask = ReferenceMask(processor.tokenizer, grammar, model.config.text_config.vocab_size)
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=n, do_sample=False, logits_processor=LogitsProcessorList([mask]))
    return out[0, inputs["input_ids"].shape[1]:].tolist()


def text_of(reference, ids: list[int]) -> str:
    return reference[1].batch_decode([ids], skip_special_tokens=True)[0].strip()


@pytest.fixture(scope="module")
def shapes():
    from dsvl_cli.images import load_image

    return load_image(str(EXAMPLES / "shapes.png"))


@pytest.fixture(scope="module")
def expected(reference, shapes):
    """name -> the reference ids for each schema, about shapes.png."""
    return {name: masked_reference(reference, schema_grammar(schema), images=[shapes.image])
            for name, schema in SCHEMAS.items()}


def _gen(fmt, n: int = N):
    from dsvl_cli.settings import GenerationSettings

    return GenerationSettings(max_new_tokens=n, answer_format=fmt)


def _schema(name: str):
    from dsvl_cli.structured.spec import schema_format

    return schema_format(SCHEMAS[name])


@pytest.fixture
def session_engine(engine, monkeypatch):
    """CLI commands answer with the session's engine (no reload per invocation)."""
    from dsvl_cli.engine.local import LocalEngine

    monkeypatch.setattr(LocalEngine, "load", classmethod(lambda cls, *a, **k: engine))
    return engine


# -- the engine, one question at a time (streamed) ------------------------------------------------------

@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_schema_answer_validates_and_equals_masked_plain_generate(engine, reference, expected, shapes, name):
    from dsvl_cli.conversation import Conversation

    result = engine.run(Conversation.single(PROMPT, [shapes]), _gen(_schema(name)))
    assert result.finish_reason == "stop"
    assert result.token_ids == expected[name]
    jsonschema.validate(result.data, SCHEMAS[name])
    assert result.to_dict()["data"] == json.loads(result.answer)
    assert json.dumps(result.data, separators=(",", ":"), ensure_ascii=False) == result.answer  # compact


def test_sampled_answers_validate_too(engine, shapes):
    """Sampling (temperature, top-k, top-p): the mask comes before the warpers, so they only ever
    choose among allowed tokens; a seed gives the same answer again."""
    from dsvl_cli.conversation import Conversation

    for name in ("nested_object", "refs_defs", "string_pattern", "array_of_objects"):
        gen = _gen(_schema(name)).replace(temperature=1.5, top_k=20, top_p=0.9, seed=7)
        first = engine.run(Conversation.single(PROMPT, [shapes]), gen)
        jsonschema.validate(first.data, SCHEMAS[name])
        assert engine.run(Conversation.single(PROMPT, [shapes]), gen).token_ids == first.token_ids


def test_regex_answer_matches_and_equals_masked_plain_generate(engine, reference):
    from dsvl_cli.conversation import Conversation
    from dsvl_cli.structured.spec import parse_regex

    pattern = r"(yes|no): [a-z]{2,6} [0-9]{1,3}"
    result = engine.run(Conversation.single("Is it red?", []), _gen(parse_regex(pattern), 40))
    assert result.token_ids == masked_reference(reference, regex_grammar(pattern), "Is it red?", n=40)
    assert re.fullmatch(pattern, result.answer), result.answer
    assert result.finish_reason == "stop" and "data" not in result.to_dict()


def test_chat_kv_reuse_with_a_schema_equals_a_full_recompute(engine):
    from dsvl_cli.conversation import Conversation

    gen, cache = _gen(_schema("enums"), 40), engine.new_cache()
    conversation = Conversation()
    for question in ("What colour?", "And the shape?"):
        conversation.add_user(question, [])
        reused = engine.run(conversation, gen, cache=cache)
        fresh = engine.run(conversation, gen)
        assert reused.token_ids == fresh.token_ids and reused.data is not None
        conversation.add_assistant(reused.answer, reused.finish_reason)
    assert reused.stats.cached_tokens > 0


# -- ask -----------------------------------------------------------------------------------------------

def test_ask_prints_the_json_answer_and_json_adds_data(cli, reference, expected, tmp_path):
    """The real load: stdout is the compact JSON answer; --json adds `data`; a file, inline JSON
    and the same schema give the same answer."""
    schema_file = tmp_path / "item.json"
    schema_file.write_text(json.dumps(SCHEMAS["refs_defs"], indent=2))
    args = ["ask", str(EXAMPLES / "shapes.png"), PROMPT, "-m", "tiny-random", "-n", str(N)]
    plain = cli([*args, "--schema", str(schema_file)])
    assert plain.exit_code == 0, plain.output
    assert plain.stdout == text_of(reference, expected["refs_defs"]) + "\n"
    as_json = cli([*args, "--schema", json.dumps(SCHEMAS["refs_defs"]), "--json"])
    record = json.loads(as_json.stdout)
    assert record["answer"] == plain.stdout.strip() and record["finish_reason"] == "stop"
    assert record["data"] == json.loads(plain.stdout)
    jsonschema.validate(record["data"], SCHEMAS["refs_defs"])


def test_ask_short_form_and_regex(cli, session_engine):
    from dsvl_cli.structured.spec import parse_schema

    assert parse_schema("kind: what it is, or not\nx").schema_dict == {  # one field per line when multi-line
        "type": "object", "properties": {"kind": {"type": "string", "description": "what it is, or not"},
                                         "x": {"type": "string"}},
        "required": ["kind", "x"], "additionalProperties": False}
    assert parse_schema("kind: what it is, count int, ratio float, round bool").schema_dict == {
        "type": "object", "additionalProperties": False, "required": ["kind", "count", "ratio", "round"],
        "properties": {"kind": {"type": "string", "description": "what it is"}, "count": {"type": "integer"},
                       "ratio": {"type": "number"}, "round": {"type": "boolean"}}}
    short = cli(["ask", "Describe.", "-m", "tiny-random", "-n", "60", "--json", "--schema", "count int, round bool"])
    assert short.exit_code == 0, short.output
    data = json.loads(short.stdout)["data"]
    assert list(data) == ["count", "round"]  # the order written, no other key
    assert isinstance(data["count"], int) and isinstance(data["round"], bool)
    regex = cli(["ask", "Describe.", "-m", "tiny-random", "--regex", r"[A-Z][a-z]{3,8}\."])
    assert regex.exit_code == 0 and re.fullmatch(r"[A-Z][a-z]{3,8}\.\n", regex.stdout), regex.stdout
    rust = cli(["ask", "Describe.", "-m", "tiny-random", "--regex", r"\p{Lu}\p{Ll}{2,5}"])  # Rust syntax
    word = rust.stdout.strip()
    assert rust.exit_code == 0 and word[0].isupper() and word[1:].islower() and 3 <= len(word) <= 6, rust.output


def test_an_answer_cut_by_max_new_tokens_exits_1_saying_what_to_raise(cli, session_engine):
    args = ["ask", "Describe.", "-m", "tiny-random", "-n", "4", "--schema", json.dumps(SCHEMAS["nested_object"])]
    cut = cli(args)
    assert cut.exit_code == 1
    assert cut.stdout == '{"who"\n'  # the partial answer (4 tokens) was shown as it came
    lines = cut.stderr.strip().splitlines()
    assert "--max-new-tokens" in lines[-1] and "before its JSON closed" in lines[-1]
    record = json.loads(cli([*args, "--json"]).stdout)
    assert record["finish_reason"] == "length" and record["data"] is None


@pytest.mark.parametrize("flags, reason", [
    (["--schema", '{"type": "object",'], "not JSON"),
    (["--schema", '{"type": "objekt"}'], "not a valid JSON Schema"),
    (["--schema", '{"type": "array", "uniqueItems": true}'], "uniqueItems"),
    (["--schema", '{"type": "integer", "minimum": 5, "maximum": 1}'], "minimum"),
    (["--schema", "name, age years"], "type 'years'"),
    (["--schema", "missing/item.json"], "no such file"),
    (["--regex", "(unclosed"], "not a regular expression the grammar engine takes (Rust regex syntax): unclosed"),
    (["--regex", "(?=a)b"], "look-around"),
    (["--schema", "a", "--regex", "b"], "cannot be used together"),
])
def test_bad_schema_or_regex_exits_2_in_one_line_before_the_model_loads(cli, monkeypatch, flags, reason):
    from dsvl_cli.engine import local

    def no_load(*a, **k):
        raise AssertionError("the model must not load for a bad schema")

    monkeypatch.setattr(local.LocalEngine, "load", classmethod(no_load))
    for command in (["ask", "Describe."], ["batch", "-", "--prompt", "x"]):
        result = cli([*command, "-m", "tiny-random", *flags], input="")
        assert result.exit_code == 2, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and reason in lines[0] and "Traceback" not in result.output, lines


# -- batch ---------------------------------------------------------------------------------------------

def _batch_lines(tmp_path) -> list[dict]:
    image = str(EXAMPLES / "shapes.png")
    lines = [{"id": name, "image": image, "prompt": PROMPT, "schema": schema} for name, schema in SCHEMAS.items()]
    lines.append({"custom_id": "openai", "body": {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": image}}, {"type": "text", "text": PROMPT}]}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "e", "schema": SCHEMAS["enums"]}}}})
    lines.append({"id": "cut", "image": image, "prompt": PROMPT, "schema": SCHEMAS["nested_object"],
                  "max_new_tokens": 3})
    lines.append({"id": "free", "image": image, "prompt": PROMPT, "max_new_tokens": 8})
    return lines


@pytest.mark.parametrize("batch_size", ["1", "8"])
def test_batch_records_with_their_own_schemas_equal_the_reference(cli, session_engine, reference, expected,
                                                                  tmp_path, batch_size):
    """Batch size 8: rows with eight different schemas (and one without) share generate calls."""
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("".join(json.dumps(line) + "\n" for line in _batch_lines(tmp_path)))
    result = cli(["batch", str(jobs), "-m", "tiny-random", "-n", str(N), "--batch-size", batch_size])
    assert result.exit_code == 1, result.output  # the record cut by its max_new_tokens failed; the rest ran
    records = {r["id"]: r for r in map(json.loads, result.stdout.splitlines())}
    for name, schema in SCHEMAS.items():
        assert records[name]["answer"] == text_of(reference, expected[name]), name
        jsonschema.validate(records[name]["data"], schema)
    assert records["openai"]["data"] == json.loads(records["openai"]["answer"])
    jsonschema.validate(records["openai"]["data"], SCHEMAS["enums"])
    assert records["cut"]["error"]["type"] == "incomplete_answer"
    assert "--max-new-tokens" in records["cut"]["error"]["message"]
    assert "data" not in records["free"] and records["free"]["finish_reason"] == "length"
    assert "10 done, 1 failed" in result.stderr


def test_command_schema_applies_to_records_without_their_own(cli, session_engine, tmp_path):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"id": 1, "prompt": "a"}) + "\n" + json.dumps({"id": 2, "prompt": "b", "regex": "[0-9]{4}"})
                    + "\n" + json.dumps({"id": 3, "prompt": "c", "schema": {"type": "array", "uniqueItems": True}}) + "\n")
    result = cli(["batch", str(jobs), "-m", "tiny-random", "--schema", json.dumps(SCHEMAS["enums"])])
    records = {r["id"]: r for r in map(json.loads, result.stdout.splitlines())}
    jsonschema.validate(records[1]["data"], SCHEMAS["enums"])
    assert re.fullmatch("[0-9]{4}", records[2]["answer"]) and "data" not in records[2]
    assert records[3]["error"]["type"] == "usage_error" and "uniqueItems" in records[3]["error"]["message"]
    assert result.exit_code == 1


# -- the fast path (static cache; compiled in test_fastpath.py) -----------------------------------------

def test_static_cache_fast_path_equals_the_reference(tiny_folder, expected, shapes):
    from dsvl_cli.conversation import Conversation
    from dsvl_cli.engine.batched import BatchItem, generate_batch
    from dsvl_cli.engine.local import LocalEngine
    from dsvl_cli.settings import ModelSettings

    fast = LocalEngine.load(ModelSettings(model="tiny-random", device="cpu", compile=False))
    fast.enable_fast_path(compile=False)
    for name in ("refs_defs", "string_pattern"):
        assert fast.run(Conversation.single(PROMPT, [shapes]), _gen(_schema(name))).token_ids == expected[name]
    items = [BatchItem.prepare(fast, Conversation.single(PROMPT, [shapes]), answer_format=_schema(name))
             for name in ("enums", "nullable", "array_bounds")]
    results = generate_batch(fast, items, _gen(None))
    assert [r.token_ids for r in results] == [expected[n] for n in ("enums", "nullable", "array_bounds")]


# -- serve, --server --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(engine):
    from test_serve import _start

    from dsvl_cli.serve.app import create_app
    from dsvl_cli.settings import GenerationSettings

    url, stop = _start(create_app(engine, defaults=GenerationSettings(max_new_tokens=N)))
    yield url
    stop()


def test_openai_client_response_format_equals_the_reference(server, engine, reference, expected, shapes):
    """Four requests with four formats at once: they share batches (one matcher per row)."""
    from concurrent.futures import ThreadPoolExecutor

    from openai import OpenAI

    client = OpenAI(base_url=server + "/v1", api_key="none", max_retries=0, timeout=120)
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + __import__("base64").b64encode(
        (EXAMPLES / "shapes.png").read_bytes()).decode()}}
    messages = [{"role": "user", "content": [image, {"type": "text", "text": PROMPT}]}]
    names = ["nested_object", "refs_defs", "integer_range", "array_of_objects"]

    def ask(name):
        return client.chat.completions.create(model="default", messages=messages, response_format={
            "type": "json_schema", "json_schema": {"name": name, "schema": SCHEMAS[name], "strict": True}})

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(ask, names))
    for name, answer in zip(names, answers):
        content = answer.choices[0].message.content
        assert content == text_of(reference, expected[name]) and answer.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(content), SCHEMAS[name])
    anything = client.chat.completions.create(model="default", messages=messages, max_tokens=30,
                                              response_format={"type": "json_object"})
    from dsvl_cli.conversation import Conversation
    from dsvl_cli.structured.spec import schema_format

    local = engine.run(Conversation.single(PROMPT, [shapes]), _gen(schema_format({"type": "object"}), 30))
    assert anything.choices[0].message.content == local.answer and local.answer.startswith("{")
    assert anything.choices[0].finish_reason == local.finish_reason


def test_serve_refuses_a_schema_it_cannot_compile_with_a_400(server):
    import requests

    body = {"messages": [{"role": "user", "content": "hi"}],
            "response_format": {"type": "json_schema", "json_schema": {"schema": {"not": {"type": "string"}}}}}
    response = requests.post(server + "/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 400
    assert "response_format.json_schema.schema" in response.json()["error"]["message"]
    vllm = requests.post(server + "/v1/chat/completions", timeout=60, json={
        "messages": [{"role": "user", "content": "hi"}], "structured_outputs": {"regex": "[ab]{5}"}})
    assert re.fullmatch("[ab]{5}", vllm.json()["choices"][0]["message"]["content"])


def test_ask_through_the_server_equals_local(cli, server, reference, expected):
    args = ["ask", str(EXAMPLES / "shapes.png"), PROMPT, "-n", str(N), "--json"]
    remote = cli([*args, "--server", server, "--schema", json.dumps(SCHEMAS["string_pattern"])])
    record = json.loads(remote.stdout)
    assert record["answer"] == text_of(reference, expected["string_pattern"])
    jsonschema.validate(record["data"], SCHEMAS["string_pattern"])
    cut = cli(["ask", PROMPT, "-n", "3", "--server", server, "--schema", json.dumps(SCHEMAS["nested_object"])])
    assert cut.exit_code == 1 and "--max-new-tokens" in cut.stderr


def test_batch_through_the_server_gives_the_same_records(cli, server, tmp_path):
    """`batch --server`: per-record schemas travel as response_format; the same data and error records."""
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("".join(json.dumps(line) + "\n" for line in _batch_lines(tmp_path)
                            if line.get("id") in ("enums", "refs_defs", "cut")))
    local = cli(["batch", str(jobs), "-m", "tiny-random", "-n", str(N), "-o", str(tmp_path / "local.jsonl")])
    remote = cli(["batch", str(jobs), "--server", server, "-n", str(N), "-o", str(tmp_path / "remote.jsonl")])
    assert local.exit_code == remote.exit_code == 1, remote.output

    def by_id(name):
        return {r["id"]: r for r in map(json.loads, (tmp_path / name).read_text().splitlines())}

    want, got = by_id("local.jsonl"), by_id("remote.jsonl")
    for key in ("enums", "refs_defs"):
        assert got[key]["data"] == want[key]["data"] and got[key]["answer"] == want[key]["answer"], key
    assert got["cut"]["error"] == want["cut"]["error"]


# -- the wire mapping and chat -----------------------------------------------------------------------

def test_request_fields_map_to_one_answer_format():
    from dsvl_cli import wire
    from dsvl_cli.errors import UsageError

    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    by_openai = wire.answer_format({"response_format": {"type": "json_schema", "json_schema": {"schema": schema}}})
    assert by_openai.schema_dict == schema
    assert wire.answer_format({"guided_json": json.dumps(schema)}) == wire.answer_format({"structured_outputs": {"json": schema}})
    assert wire.answer_format({"guided_regex": "a+"}).regex == "a+"
    assert wire.answer_format({"response_format": {"type": "text"}}) is None
    assert wire.answer_format({"response_format": {"type": "json_object"}}).schema_dict == {"type": "object"}
    assert wire.answer_format(wire.answer_format_fields(by_openai)) == by_openai
    for bad, says in [({"response_format": {"type": "xml"}}, "response_format.type"),
                      ({"response_format": {"type": "json_schema", "json_schema": {}}}, "schema"),
                      ({"guided_regex": "a", "guided_json": schema}, "give one"),
                      ({"structured_outputs": {"grammar": "x"}}, "grammar")]:
        with pytest.raises(UsageError, match=says):
            wire.answer_format(bad)


def test_chat_set_schema_and_regex(cli, session_engine):
    colour = json.dumps({"type": "object", "properties": {"colour": {"enum": ["red", "blue"]}, "n": {"type": "integer"}},
                         "required": ["colour", "n"], "additionalProperties": False})
    script = "\n".join([f"/set schema {colour}", "/set", "Which colour?", "/set schema off",
                        r"/set regex [0-9]{3}", "How many?", "/set regex off", "Hello",
                        f"/set schema {colour}", "/set n 3", "Cut short?"]) + "\n"
    result = cli(["chat", "-m", "tiny-random", "--json", "-n", "60"], input=script)
    turns = [json.loads(line) for line in result.stdout.splitlines()]
    assert set(turns[0]["data"]) == {"colour", "n"} and isinstance(turns[0]["data"]["n"], int)
    assert re.fullmatch("[0-9]{3}", turns[1]["answer"]) and "data" not in turns[1]
    assert "data" not in turns[2]
    assert f"  format = schema {colour[:57]}..." in result.stderr  # /set shows it
    assert turns[3]["finish_reason"] == "length" and turns[3]["data"] is None
    assert "before its JSON closed (3 generated); /set max_new_tokens N, then /retry" in result.stderr
    assert result.exit_code == 1  # in a pipe, as in ask: the cut answer is a failure


def test_bitmask_unpacking_is_the_same_on_both_paths():
    """The CPU path (numpy) and the accelerator path (torch shifts, run here on the CPU) agree, with
    tokens past the grammar's vocabulary blocked."""
    import torch

    from dsvl_cli.structured.grammar import shifts_on, unpack_blocked, unpack_blocked_torch

    bits = torch.randint(-(2**31), 2**31 - 1, (3, 5), dtype=torch.int32, generator=torch.Generator().manual_seed(0))
    for vocab in (150, 160, 170):
        numpy_way = unpack_blocked(bits.numpy(), vocab)
        assert torch.equal(numpy_way, unpack_blocked_torch(bits, vocab, shifts_on("cpu")))
        assert numpy_way.shape == (3, vocab) and bool(numpy_way[:, 160:].all())
        word, bit = divmod(37, 32)
        assert bool(numpy_way[1, 37]) == (not (int(bits[1, word]) >> bit) & 1)
