"""The OpenAI wire layer both ways: errors (wire/errors.py) and the --server client (engine/remote.py)
against servers other than dsvl's, in process (httpx's MockTransport stands in for the network)."""

from __future__ import annotations

import json

import httpx
import pytest

from dsvl_cli.conversation import Conversation, Message
from dsvl_cli.engine.remote import RemoteEngine
from dsvl_cli.errors import (ContextLengthError, DsvlError, ExitCode, GenerationError, ImageLoadError, ModelError,
                             UsageError, of_kind)
from dsvl_cli.results import Result, TextChunk
from dsvl_cli.settings import GenerationSettings
from dsvl_cli.wire.errors import ApiError, from_dsvl, to_dsvl

MODELS = {"object": "list", "data": [{"id": "other-vlm", "object": "model"}]}


@pytest.mark.parametrize("err,status", [
    (UsageError("temperature: must be at least 0"), 400),
    (ContextLengthError("the prompt has 5000 tokens; the model's context is 4096"), 400),
    (ImageLoadError("https://example.com/a.png", "HTTP 404 Not Found"), 400),
    (ModelError("weights missing"), 500),
    (GenerationError("CUDA out of memory"), 500),
])
def test_an_error_crosses_the_wire_and_comes_back_with_its_exit_code(err, status):
    api = from_dsvl(err)
    assert api.status == status
    body = json.loads(json.dumps(api.body()))  # what a client reads
    assert set(body["error"]) == {"message", "type", "param", "code"}
    back = to_dsvl(body["error"], api.status)
    assert back.exit_code == err.exit_code and back.message == err.message
    if isinstance(err, ContextLengthError):
        assert isinstance(back, ContextLengthError)
    if status == 500:
        assert type(back) is type(err)  # the kind travels as the code
    streamed = to_dsvl(body["error"], None)  # the same error inside a stream, after the headers
    assert streamed.exit_code == (ExitCode.USAGE if isinstance(err, ContextLengthError) else ExitCode.FAILURE)


def test_other_servers_errors_map_by_status():
    assert to_dsvl({"message": "bad key"}, 401).exit_code == ExitCode.USAGE
    assert to_dsvl({"message": "no", "code": "model_not_found"}, 404).exit_code == ExitCode.USAGE
    assert to_dsvl({"message": "too big", "code": "request_too_large"}, 413).exit_code == ExitCode.FAILURE
    assert to_dsvl({"code": "usage_error"}, 502).exit_code == ExitCode.FAILURE  # a 5xx is never the user's fault
    assert to_dsvl({}, 503).message == "HTTP 503"
    assert isinstance(from_dsvl(RuntimeError("boom")), ApiError) and from_dsvl(RuntimeError("boom")).status == 500
    assert of_kind("model_error", "m").__class__ is ModelError and of_kind("nonsense", "m") is None


class Mock(RemoteEngine):
    """RemoteEngine whose requests go to `handler` instead of a network."""

    def __init__(self, handler, **kwargs):
        self._handler = handler
        super().__init__("http://mock.test", **kwargs)

    def _new_client(self) -> httpx.Client:
        return httpx.Client(transport=httpx.MockTransport(self._handler))


def _server(chat):
    """A handler: /v1/models lists one model, /v1/chat/completions answers with `chat(request)`."""
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json=MODELS)
        return chat(request)
    return handler


def _ask(engine) -> tuple[str, Result]:
    chunks = list(engine.stream(Conversation([Message("user", "Hi")]), GenerationSettings(max_new_tokens=8)))
    assert isinstance(chunks[-1], Result)
    return "".join(c.text for c in chunks if isinstance(c, TextChunk)), chunks[-1]


def _chunk(content: str | None = None, finish: str | None = None) -> dict:
    delta = {"content": content} if content is not None else {}
    return {"id": "c", "object": "chat.completion.chunk", "model": "other-vlm",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def test_an_event_stream_is_read_as_the_sse_spec_has_it():
    pretty = json.dumps(_chunk(" world"), indent=1).splitlines()  # one event over several data: lines
    stream = "\r\n".join([
        ": a comment line keeps the connection open", "",
        "event: ping", "", "retry: 100", "",  # events without data carry nothing
        "data: " + json.dumps(_chunk("Hello")), "",
        *("data: " + line for line in pretty), "",
        "data: " + json.dumps(_chunk(finish="length")), "",
        "data: " + json.dumps({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}), "",
        "data: [DONE]", "", ""])
    seen = {}

    def chat(request):
        seen["accept"] = request.headers.get("accept")
        seen["body"] = json.loads(request.content)
        return httpx.Response(200, headers={"Content-Type": "text/event-stream; charset=utf-8"}, content=stream)

    text, result = _ask(Mock(_server(chat)))
    assert text == "Hello world"
    assert result.finish_reason == "length"
    assert (result.stats.prompt_tokens, result.stats.generated_tokens) == (3, 2)
    assert seen["accept"] == "text/event-stream" and seen["body"]["stream"] is True


def test_busy_answers_are_retried_after_retry_after_and_then_answered():
    calls = []

    def chat(request):
        calls.append(request)
        if len(calls) < 3:
            return httpx.Response(429, headers={"Retry-After": "0"}, json={"error": {"message": "busy"}})
        body = "data: " + json.dumps(_chunk("ok", finish="stop")) + "\n\ndata: [DONE]\n\n"
        return httpx.Response(200, headers={"Content-Type": "text/event-stream"}, content=body)

    text, _ = _ask(Mock(_server(chat)))
    assert text == "ok" and len(calls) == 3


@pytest.mark.parametrize("response,kind,code,words", [
    (httpx.Response(401, json={"error": {"message": "Incorrect API key"}}), UsageError, ExitCode.USAGE,
     ["server http://mock.test: Incorrect API key", "DSVL_API_KEY"]),
    (httpx.Response(400, json={"error": {"message": "temperature: too high"}}), UsageError, ExitCode.USAGE,
     ["temperature: too high"]),
    (httpx.Response(500, json={"error": {"message": "weights gone", "type": "server_error", "code": "model_error"}}),
     ModelError, ExitCode.FAILURE, ["server http://mock.test: weights gone"]),
    (httpx.Response(502, text="<html>Bad Gateway</html>"), GenerationError, ExitCode.FAILURE,
     ["server http://mock.test: HTTP 502"]),
    (httpx.Response(200, json={"choices": [{"message": {"content": "not streamed"}}]}), GenerationError,
     ExitCode.FAILURE, ["did not answer with an event stream", "application/json"]),
    (httpx.Response(200, headers={"Content-Type": "text/event-stream"},
                    content='data: {"error": {"message": "prompt too long", "code": "context_length_exceeded"}}\n\n'),
     ContextLengthError, ExitCode.USAGE, ["prompt too long"]),
])
def test_server_errors_become_one_line_dsvl_errors(response, kind, code, words):
    engine = Mock(_server(lambda request: response))
    with pytest.raises(DsvlError) as caught:
        _ask(engine)
    err = caught.value
    assert type(err) is kind and err.exit_code == code
    assert all(w in err.message for w in words) and "\n" not in err.message


def test_a_server_that_is_not_there_is_named():
    def refused(request):
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    with pytest.raises(ModelError, match=r"server http://mock.test is not reachable .*dsvl serve"):
        Mock(refused)


def test_chunks_of_the_wrong_shape_are_read_as_far_as_they_make_sense():
    odd = [{"choices": "not a list"}, {"choices": [5, {"delta": ["x"]}, {"delta": {"content": 7}}]},
           {"choices": [{"delta": {"content": "fine"}, "logprobs": ["x"]}], "model": 3, "usage": "many"},
           {"choices": [{"delta": {}, "finish_reason": "stop"}], "stats": "fast", "scores": {"a": 1}}]
    body = "".join("data: " + json.dumps(obj) + "\n\n" for obj in odd) + "data: [DONE]\n\n"

    def chat(request):
        return httpx.Response(200, headers={"Content-Type": "text/event-stream"}, content=body)

    text, result = _ask(Mock(_server(chat)))
    assert text == "fine" and result.finish_reason == "stop" and result.scores is None


def test_what_serve_sends_is_what_the_client_reads():
    from dsvl_cli.results import Stats
    from dsvl_cli.wire import chunks

    result = Result(answer="a", finish_reason="interrupted", stats=Stats(prompt_tokens=4, generated_tokens=1),
                    scores=[{"label": "a", "probability": 1.0, "logprob": 0.0}])
    entries = [{"token": "a", "logprob": -0.1, "bytes": [97], "top_logprobs": []}]
    sent = json.loads(json.dumps(chunks.final_chunk("id", "m", result, entries)))
    assert sent["choices"][0]["finish_reason"] == "stop"  # OpenAI's word; dsvl's rides beside it
    got = chunks.read_chunk(sent)
    (piece,) = got.pieces
    assert (piece.finish, piece.logprobs, got.scores, got.model) == ("interrupted", entries, result.scores, "m")
    assert Stats.from_dict(got.stats) == result.stats
