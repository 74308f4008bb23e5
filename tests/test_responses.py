"""`/v1/responses` through the official openai package, against a served app on tiny-random.

The answers are checked against plain transformers `generate` (greedy) and against the chat API
with the same conversation; the stored responses, the stream's events, the errors and a client
that leaves are checked through the same served app (a fake engine where only plumbing matters).
"""

from __future__ import annotations

import base64
import json

import jsonschema
import pytest
import requests
from PIL import Image

from conftest import EXAMPLES, reference_generate
from test_serve import _blocking_engine, _data_uri, _error, _start, image_url  # noqa: F401 (image_url: a fixture)

KEY = "test-key"
PROMPT = "Describe this image."
ENUMS = {"type": "object", "additionalProperties": False, "required": ["colour", "shape"], "properties": {
    "colour": {"enum": ["red", "green", "blue"]},
    "shape": {"type": "string", "enum": ["circle", "square", "triangle"]}}}


@pytest.fixture(scope="module")
def server(engine):
    from dsvl_cli.images.guard import MediaPolicy
    from dsvl_cli.serve.app import create_app
    from dsvl_cli.settings import GenerationSettings

    url, stop = _start(create_app(engine, defaults=GenerationSettings(max_new_tokens=12), api_key=KEY,
                                  policy=MediaPolicy(allow_private=True)))
    yield url
    stop()


@pytest.fixture
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server + "/v1", api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def expected(reference):
    """What plain `generate` says (greedy, 12 tokens) about shapes.png, and its token count."""
    from dsvl_cli.images import load_image

    model, processor = reference
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]
    ids = reference_generate(model, processor, messages, [load_image(str(EXAMPLES / "shapes.png")).image], 12)
    return processor.batch_decode([ids], skip_special_tokens=True)[0].lstrip(), len(ids)


def _picture(url: str, text: str = PROMPT) -> list[dict]:
    return [{"role": "user", "content": [{"type": "input_image", "image_url": url},
                                         {"type": "input_text", "text": text}]}]


def _chat(client, messages: list[dict], **fields) -> str:
    reply = client.chat.completions.create(model="tiny-random", messages=messages, **{"max_tokens": 12, **fields})
    return reply.choices[0].message.content


def _post(url: str, body, key: str | None = KEY) -> requests.Response:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    data = body if isinstance(body, str) else json.dumps(body)
    return requests.post(url + "/v1/responses", data=data, headers=headers, timeout=60)


# -- answers ------------------------------------------------------------------------------------------

def test_a_picture_answer_equals_plain_generate_plain_and_streamed(client, expected, image_url):
    text, count = expected
    for source in (_data_uri(), image_url):
        reply = client.responses.create(model="tiny-random", input=_picture(source), max_output_tokens=12,
                                        temperature=0)
        assert reply.output_text == text, source[:30]
        assert reply.status == "incomplete" and reply.incomplete_details.reason == "max_output_tokens"
        assert reply.usage.output_tokens == count == 12
        assert reply.usage.total_tokens == reply.usage.input_tokens + 12
        assert reply.usage.input_tokens_details.cached_tokens >= 0
        assert reply.output[0].type == "message" and reply.output[0].role == "assistant"

    events = list(client.responses.create(model="tiny-random", input=_picture(_data_uri()), max_output_tokens=12,
                                          stream=True))
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.incomplete"]
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) > 1, "the answer arrives in pieces"
    assert "".join(deltas) == text == events[-4].text
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert len({e.response.id for e in events if hasattr(e, "response")}) == 1
    assert events[-1].response.output_text == text and events[-1].response.usage.output_tokens == 12

    # The SDK's own accumulator (responses.stream) checks the order and identity of the events.
    with client.responses.stream(model="tiny-random", input=_picture(_data_uri()), max_output_tokens=12) as stream:
        last = list(stream)[-1]
    assert last.type == "response.incomplete" and last.response.output_text == text


def test_instructions_equal_a_system_message(client):
    question = "What is a square?"
    by_instructions = client.responses.create(input=question, instructions="You answer in riddles.").output_text
    by_developer = client.responses.create(input=[{"role": "developer", "content": "You answer in riddles."},
                                                  {"role": "user", "content": question}]).output_text
    by_chat = _chat(client, [{"role": "system", "content": "You answer in riddles."},
                             {"role": "user", "content": question}])
    assert by_instructions == by_developer == by_chat
    assert client.responses.create(input=question).output_text == _chat(client, [{"role": "user",
                                                                                   "content": question}])
    assert by_instructions != client.responses.create(input=question).output_text, "the instructions were used"


def test_previous_response_id_equals_the_chat_api_with_the_history(client):
    first = client.responses.create(input=_picture(_data_uri()), instructions="Answer briefly.")
    second = client.responses.create(input="And which colours?", previous_response_id=first.id)
    history = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": _data_uri()}},
                                            {"type": "text", "text": PROMPT}]},
               {"role": "assistant", "content": first.output_text}]
    assert first.output_text == _chat(client, [{"role": "system", "content": "Answer briefly."}, *history[:1]])
    # As OpenAI: a previous response's instructions are not carried on; its input and answer are.
    history.append({"role": "user", "content": "And which colours?"})
    assert second.output_text == _chat(client, history)
    assert second.previous_response_id == first.id

    events = list(client.responses.create(input=[{"role": "user", "content": "Count them."}], stream=True,
                                          previous_response_id=second.id))
    third = events[-1].response
    history += [{"role": "assistant", "content": second.output_text}, {"role": "user", "content": "Count them."}]
    assert third.output_text == _chat(client, history)
    assert third.usage.input_tokens > second.usage.input_tokens > first.usage.input_tokens
    assert third.usage.input_tokens_details.cached_tokens >= 0
    # A streamed response is stored too, and continues like any other.
    fourth = client.responses.create(input="Thanks.", previous_response_id=third.id, max_output_tokens=4)
    history += [{"role": "assistant", "content": third.output_text}, {"role": "user", "content": "Thanks."}]
    assert fourth.output_text == _chat(client, history, max_tokens=4)


def test_text_format_json_schema_gives_valid_json_equal_to_the_chat_api(client):
    fmt = {"type": "json_schema", "name": "shape", "schema": ENUMS, "strict": True}
    reply = client.responses.create(input=_picture(_data_uri()), text={"format": fmt}, max_output_tokens=60)
    assert reply.status == "completed"
    jsonschema.validate(json.loads(reply.output_text), ENUMS)
    assert reply.text.format.type == "json_schema"
    chat = _chat(client, [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": _data_uri()}},
                                                      {"type": "text", "text": PROMPT}]}], max_tokens=60,
                 response_format={"type": "json_schema", "json_schema": {"name": "shape", "schema": ENUMS}})
    assert reply.output_text == chat
    with client.responses.stream(model="default", input=_picture(_data_uri()), text={"format": fmt},
                                 max_output_tokens=60) as stream:
        assert stream.get_final_response().output_text == reply.output_text  # needs response.completed
    anything = client.responses.create(input="Hi", text={"format": {"type": "json_object"}}, max_output_tokens=60)
    assert anything.output_text.startswith("{")


# -- stored responses ---------------------------------------------------------------------------------

def test_a_stored_response_can_be_fetched_and_deleted(client, server):
    import openai

    reply = client.responses.create(input="Hello there", metadata={"who": "test"})
    fetched = client.responses.retrieve(reply.id)
    assert (fetched.id, fetched.output_text, fetched.metadata) == (reply.id, reply.output_text, {"who": "test"})
    client.responses.delete(reply.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(reply.id)
    gone = requests.delete(f"{server}/v1/responses/{reply.id}", headers={"Authorization": f"Bearer {KEY}"}, timeout=10)
    assert _error(gone, 404)["code"] == "response_not_found"
    assert _error(requests.get(f"{server}/v1/responses/{reply.id}", timeout=10), 401)["code"] == "invalid_api_key"

    unstored = client.responses.create(input="Hello there", store=False)
    assert unstored.output_text == reply.output_text
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.create(input="Go on", previous_response_id=unstored.id)
    assert caught.value.body["code"] == "previous_response_not_found"
    assert caught.value.body["param"] == "previous_response_id"


def test_the_store_is_bounded_in_bytes_and_evicts_leaves_first():
    from dsvl_cli.conversation import Message
    from dsvl_cli.images import LoadedImage
    from dsvl_cli.serve.response_store import HistoryGone, ResponseStore, StoredResponse

    def entry(id, previous=None, side=0):
        images = [LoadedImage("data:image/png;base64,AAAA", Image.new("RGB", (side, side)), 0.0)] if side else []
        return StoredResponse(id, {"id": id}, previous, [], [Message("user", "q", images), Message("assistant", "a")])

    picture = entry("p", side=100)
    assert picture.nbytes - entry("q").nbytes == 100 * 100 * 3 + len("data:image/png;base64,AAAA")
    store = ResponseStore(max_bytes=3 * entry("x").nbytes + 10)
    assert not store.put(picture) and store.get("p") is None and store.nbytes == 0, "larger than the whole store"
    for id, previous in [("a", None), ("b", "a"), ("c", None)]:
        assert store.put(entry(id, previous))
    store.get("c")  # now "b" is the least recently used, before its history "a"
    store.put(entry("d", "c"))
    assert store.get("b") is None and [e.id for e in store.chain("d")] == ["c", "d"]
    assert [e.id for e in store.chain("a")] == ["a"] and store.nbytes <= store.max_bytes
    assert store.delete("c") and not store.delete("c")
    with pytest.raises(HistoryGone, match="c"):
        store.chain("d")
    assert store.chain("nothing") is None


# -- errors ---------------------------------------------------------------------------------------------

def test_bad_inputs_are_400s_in_openais_shape_and_the_server_goes_on(server, client):
    import openai

    broken = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n not really a png").decode()
    user = [{"role": "user", "content": "Hi"}]
    cases = [
        ({}, "input"),
        ('{"input": [}', "JSON"),
        ({"input": []}, "input"),
        ({"input": 5}, "input"),
        ({"input": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]}, "input.0.content.0"),
        ({"input": [{"role": "user", "content": [{"type": "input_file", "file_data": "x"}]}]}, "input_file"),
        ({"input": [{"type": "function_call_output", "output": "x"}]}, "function_call_output"),
        ({"input": [{"role": "robot", "content": "x"}]}, "input.0.role"),
        ({"input": _picture(broken)}, "image"),
        ({"input": _picture("/etc/hostname")}, "/etc/hostname"),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file-1"}]}]}, "file_id"),
        ({"input": [{"role": "system", "content": [{"type": "input_image", "image_url": _data_uri()}]},
                    *user]}, "cannot hold images"),
        ({"input": [*user, {"role": "assistant", "content": "x"}]}, "last message"),
        ({"input": "a <image_placeholder> b"}, "<image_placeholder>"),
        ({"input": "Hi", "instructions": "<image_placeholder>"}, "<image_placeholder>"),
        ({"input": "Hi", "temperature": -1}, "temperature"),
        ({"input": "Hi", "text": {"format": {"type": "xml"}}}, "text.format.type"),
        ({"input": "Hi", "text": {"format": {"type": "json_schema", "schema": {"type": 5}}}}, "text.format.schema"),
        ({"input": "Hi", "tools": [{"type": "function", "name": "f"}]}, "tools"),
        ({"input": "Hi", "background": True}, "background"),
    ]
    for body, says in cases:
        error = _error(_post(server, body), 400)
        assert says in error["message"], (body, error)
        assert error["type"] == "invalid_request_error"
    assert _error(_post(server, {"input": "Hi", "model": "gpt-5"}), 404)["code"] == "model_not_found"
    assert _error(_post(server, {"input": "Hi"}, key=None), 401)["code"] == "invalid_api_key"
    assert _error(requests.get(server + "/v1/responses/resp_nothing", headers={"Authorization": f"Bearer {KEY}"},
                               timeout=10), 404)["code"] == "response_not_found"

    with pytest.raises(openai.BadRequestError, match="image"):
        client.responses.create(input=_picture(broken))
    assert client.responses.create(input="Hi", max_output_tokens=3).usage.output_tokens == 3


def test_a_stream_whose_client_leaves_stops_its_generation():
    from dsvl_cli.serve.app import create_app

    fake = _blocking_engine()
    url, stop = _start(create_app(fake, response_store_bytes=0))  # stores nothing
    try:
        running = requests.post(url + "/v1/responses", json={"input": "Hi", "stream": True}, stream=True, timeout=30)
        assert running.status_code == 200 and running.headers["content-type"].startswith("text/event-stream")
        lines = running.iter_lines(decode_unicode=True)
        while "response.output_text.delta" not in next(lines):
            pass
        running.close()  # the client goes away mid-stream: its generation must stop
        assert fake.stopped.wait(10), "disconnect did not stop the generation"
        fake.release()
        done = requests.post(url + "/v1/responses", json={"input": "Hi"}, timeout=30).json()
        assert done["status"] == "completed" and done["output"][0]["content"][0]["text"] == "first"
        assert _error(requests.get(f"{url}/v1/responses/{done['id']}", timeout=10), 404)["code"] == "response_not_found"
    finally:
        fake.release()
        stop()


def test_shutdown_ends_an_open_stream_with_response_failed():
    from dsvl_cli.serve.app import create_app

    fake, servers = _blocking_engine(), []
    url, stop = _start(create_app(fake), grace_s=0.5, server_out=servers)
    try:
        stream = requests.post(url + "/v1/responses", json={"input": "Hi", "stream": True}, stream=True, timeout=30)
        lines = stream.iter_lines(decode_unicode=True)
        while "response.output_text.delta" not in next(lines):
            pass
        servers[0].should_exit = True  # what SIGTERM does
        events = [json.loads(line[6:]) for line in lines if line.startswith("data: ")]
        assert [e["type"] for e in events][-1] == "response.failed", events
        last = events[-1]["response"]
        assert last["status"] == "failed" and "shutting down" in last["error"]["message"]
        assert last["output"][0]["content"][0]["text"] == "first"
        assert fake.stopped.is_set()
    finally:
        fake.release()
        stop()
