"""`dsvl serve` and `--server`: the official openai client, errors, concurrency, disconnects, ask remotely.

One in-process server (uvicorn in a thread on a free port) over the session's tiny-random engine
serves most tests; a fake engine stands in where only the plumbing matters (queue bound,
disconnects); one real `dsvl serve` process checks the command, its log lines and SIGINT.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from conftest import EXAMPLES, REPO

KEY = "test-key"
PROMPT = "Describe this image."
STATS_KEYS = {"prompt_tokens", "cached_tokens", "generated_tokens", "image_s", "ttft_s", "decode_tokens_per_s",
              "total_s"}


def _start(app, *, server_out: list | None = None, **server_options):
    """Serve `app` from a thread on a free port; returns (base URL, stop function). `server_options`
    go to make_server (grace_s 2 unless given); `server_out` receives the uvicorn Server."""
    from dsvl_cli.serve.app import bind, make_server

    sock = bind("127.0.0.1", 0)
    server = make_server(app, **{"grace_s": 2, **server_options})
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    if server_out is not None:
        server_out.append(server)

    def stop():
        server.should_exit = True
        thread.join(10)
        assert not thread.is_alive(), "the server did not stop"

    return f"http://127.0.0.1:{sock.getsockname()[1]}", stop


def _serving_url(proc) -> str:
    """The base URL a `dsvl serve` process prints on stderr once it listens (reads its lines)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        assert line, "dsvl serve exited before it was ready"
        if " at http://" in line:
            return line.split(" at ")[1].split()[0].removesuffix("/v1")
    raise AssertionError("no 'serving at' line")


@pytest.fixture(scope="module")
def server(engine):
    from dsvl_cli.images.guard import MediaPolicy
    from dsvl_cli.serve.app import create_app
    from dsvl_cli.settings import GenerationSettings

    # The image server of these tests is on loopback: allowed here, refused by default (test_serve_security).
    url, stop = _start(create_app(engine, defaults=GenerationSettings(max_new_tokens=12), api_key=KEY,
                                  policy=MediaPolicy(allow_private=True)))
    yield url
    stop()


@pytest.fixture(scope="module")
def image_url():
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(EXAMPLES))
    handler.log_message = lambda *a: None
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_port}/shapes.png"
    httpd.shutdown()


@pytest.fixture
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server + "/v1", api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def local_answer():
    """What local `dsvl ask` says (greedy, 12 tokens) about shapes.png."""
    from typer.testing import CliRunner

    from dsvl_cli.cli import app

    result = CliRunner().invoke(app, ["ask", str(EXAMPLES / "shapes.png"), PROMPT, "-m", "tiny-random",
                                      "-n", "12", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _data_uri() -> str:
    return "data:image/png;base64," + base64.b64encode((EXAMPLES / "shapes.png").read_bytes()).decode()


def _messages(url: str, text: str = PROMPT) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": text}]}]


def _post(url: str, body, *, key: str | None = KEY, content_type: str | None = "application/json",
          **kwargs) -> requests.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if content_type:
        headers["Content-Type"] = content_type
    data = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return requests.post(url + "/v1/chat/completions", data=data, headers=headers, timeout=60, **kwargs)


# -- the openai client ------------------------------------------------------------------------------

def test_openai_client_answers_equal_local_ask(client, image_url, local_answer):
    expected = local_answer["answer"]
    for source in (_data_uri(), image_url):
        reply = client.chat.completions.create(model="tiny-random", messages=_messages(source), max_tokens=12,
                                               temperature=0)
        assert reply.choices[0].message.content == expected, source[:30]
        assert reply.choices[0].finish_reason == "length"
        assert reply.usage.completion_tokens == 12
        assert reply.usage.prompt_tokens == local_answer["stats"]["prompt_tokens"]
        assert reply.usage.total_tokens == reply.usage.prompt_tokens + 12
        assert set(reply.model_extra["stats"]) == STATS_KEYS

    stream = client.chat.completions.create(model="tiny-random", messages=_messages(_data_uri()), max_tokens=12,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert len([p for p in pieces if p]) > 1, "the answer arrives in pieces"
    assert "".join(pieces) == expected
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 12


def test_stream_is_server_sent_events_ending_with_done(server):
    response = _post(server, {"messages": [{"role": "user", "content": "Hi"}], "stream": True, "max_tokens": 4},
                     stream=True)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [line for line in response.iter_lines(decode_unicode=True) if line]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    first = json.loads(events[0][6:])
    assert first["object"] == "chat.completion.chunk" and first["choices"][0]["delta"]["role"] == "assistant"


def test_models_and_health(client, server):
    assert [m.id for m in client.models.list().data] == ["tiny-random"]
    health = requests.get(server + "/health", timeout=10)
    assert health.status_code == 200 and health.json()["status"] == "ok"


def test_eight_concurrent_requests_are_all_answered(server):
    prompts = [f"Question number {i}: what do you see?" for i in range(8)]

    def ask(prompt: str) -> str:
        response = _post(server, {"messages": [{"role": "user", "content": prompt}], "max_tokens": 6})
        assert response.status_code == 200, response.text
        return response.json()["choices"][0]["message"]["content"]

    one_by_one = [ask(p) for p in prompts]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(ask, prompts))
    assert together == one_by_one
    assert len(set(one_by_one)) > 1, "different prompts, different answers"


def test_waiting_requests_share_one_batch_stream_and_stop_alone(engine):
    """Requests queued together decode side by side on the engine loop: each streams its own text,
    greedy answers equal single runs, a job whose client went away stops alone, and a seeded sampled
    answer is the one the same request gets alone."""
    import asyncio

    from dsvl_cli.conversation import Conversation
    from dsvl_cli.images import load_image
    from dsvl_cli.results import Result, TextChunk
    from dsvl_cli.serve.scheduler import END, Worker
    from dsvl_cli.settings import GenerationSettings

    shapes = load_image(str(EXAMPLES / "shapes.png"))
    conversations = [Conversation.single(PROMPT, [shapes]), Conversation.single("Hello there", system="Terse."),
                     Conversation.single("Which shapes, and which colours?", [shapes]),
                     Conversation.single("A question that will be cut short")]
    gen = GenerationSettings(max_new_tokens=24)
    engine.model.generation_config.eos_token_id, eos = None, engine.model.generation_config.eos_token_id
    try:
        async def run_all():
            worker = Worker(engine, max_queue=8, max_batch=8)
            jobs = [worker.submit(c, gen) for c in conversations]
            jobs.append(worker.submit(conversations[1], gen.replace(temperature=0.7, seed=1)))  # seeded: alone
            worker.start()

            async def read(k, job):
                items = []
                while (item := await job.out.get()) is not END:
                    items.append(item)
                    if k == 3 and isinstance(item, TextChunk):
                        job.stop.set()  # the client went away after its first piece
                return items

            seen = await asyncio.gather(*(read(k, job) for k, job in enumerate(jobs)))
            worker.stop(5)
            return jobs, seen

        async def alone(conversation, gen):
            worker = Worker(engine, max_queue=8, max_batch=8)
            job = worker.submit(conversation, gen)
            worker.start()
            items = []
            while (item := await job.out.get()) is not END:
                items.append(item)
            worker.stop(5)
            return job, items

        jobs, seen = asyncio.run(run_all())
        assert all(job.batch_size >= 4 for job in jobs), [job.batch_size for job in jobs]
        lone_job, lone = asyncio.run(alone(conversations[1], gen.replace(temperature=0.7, seed=1)))
        assert lone_job.batch_size == 1
        assert lone[-1].token_ids == seen[4][-1].token_ids  # a seed answers the same however busy
        for k, items in enumerate(seen[:4]):
            result = items[-1]
            assert isinstance(result, Result), items
            chunks = [i.text for i in items[:-1]]
            assert chunks and "".join(chunks) == result.answer
            if k == 3:
                assert result.finish_reason == "interrupted" and 0 < result.stats.generated_tokens < 24
            else:
                assert len(chunks) > 1, "the answer arrives in pieces"
                single = engine.run(conversations[k], gen)
                assert result.answer == single.answer and result.finish_reason == "length"
                assert result.stats.generated_tokens == 24
    finally:
        engine.model.generation_config.eos_token_id = eos


def test_a_batched_request_that_ends_early_is_answered_before_its_batch_ends(engine):
    """A row that reaches EOS gets its Result and END at once; the longer row goes on streaming."""
    import asyncio

    from dsvl_cli.conversation import Conversation
    from dsvl_cli.images import load_image
    from dsvl_cli.results import Result, TextChunk
    from dsvl_cli.serve.scheduler import END, Worker
    from dsvl_cli.settings import GenerationSettings

    # On tiny-random, greedy: this one ends with EOS after a few dozen tokens, the other runs on.
    short = Conversation.single("Hi", [load_image(str(EXAMPLES / "sunset.jpg"))])
    long = Conversation.single("Describe.", [load_image(str(EXAMPLES / "shapes.png"))])
    gen = GenerationSettings(max_new_tokens=120)
    alone = [engine.run(c, gen) for c in (short, long)]
    assert alone[0].finish_reason == "stop" and alone[1].finish_reason == "length"
    seen: dict[int, list] = {0: [], 1: []}
    long_chunks_when_short_ended = []

    async def run_both():
        worker = Worker(engine, max_queue=8, max_batch=8)
        jobs = [worker.submit(c, gen) for c in (short, long)]
        worker.start()

        async def read(k, job):
            while (item := await job.out.get()) is not END:
                seen[k].append(item)
            if k == 0:
                long_chunks_when_short_ended.append(len(seen[1]))

        await asyncio.gather(*(read(k, job) for k, job in enumerate(jobs)))
        worker.stop(5)
        return jobs

    jobs = asyncio.run(run_both())
    assert [job.batch_size for job in jobs] == [2, 2]
    results = [items[-1] for items in (seen[0], seen[1])]
    assert all(isinstance(r, Result) for r in results)
    assert [(r.answer, r.finish_reason) for r in results] == [(a.answer, a.finish_reason) for a in alone]
    long_pieces = [i for i in seen[1] if isinstance(i, TextChunk)]
    # When the short answer ended, the long one had streamed only part of its pieces.
    assert long_chunks_when_short_ended[0] < len(long_pieces)


# -- errors -------------------------------------------------------------------------------------------

def _error(response: requests.Response, status: int) -> dict:
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()["error"]
    assert set(body) == {"message", "type", "param", "code"} and body["message"]
    return body


def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(server, client, caplog):
    import openai

    caplog.set_level(logging.INFO, logger="dsvl.serve")
    user = [{"role": "user", "content": "Hi"}]
    broken = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n not really a png").decode()
    assert "JSON" in _error(_post(server, '{"messages": [}'), 400)["message"]
    assert "messages" in _error(_post(server, {"model": "x"}), 400)["message"]
    assert "messages" in _error(_post(server, {"messages": []}), 400)["message"]
    assert "image" in _error(_post(server, {"messages": _messages(broken)}), 400)["message"]
    assert "/etc/hostname" in _error(_post(server, {"messages": _messages("/etc/hostname")}), 400)["message"]
    assert "last message" in _error(_post(server, {"messages": user + [{"role": "assistant", "content": "x"}]}),
                                    400)["message"]
    assert "<image_placeholder>" in _error(
        _post(server, {"messages": [{"role": "user", "content": "a <image_placeholder> b"}]}), 400)["message"]
    assert "temperature" in _error(_post(server, {"messages": user, "temperature": -1}), 400)["message"]
    assert _error(_post(server, {"messages": user}, key=None), 401)["type"] == "authentication_error"
    assert _error(_post(server, {"messages": user}, key="wrong"), 401)["code"] == "invalid_api_key"
    _error(requests.get(server + "/v1/nothing-here", timeout=10), 404)

    with pytest.raises(openai.BadRequestError, match="image"):
        client.chat.completions.create(model="tiny-random", messages=_messages(broken))
    with pytest.raises(openai.AuthenticationError):
        client.with_options(api_key="wrong").chat.completions.create(model="tiny-random", messages=user)
    reply = client.chat.completions.create(model="tiny-random", messages=user, max_tokens=3)
    assert reply.usage.completion_tokens == 3
    lines = [r.getMessage() for r in caplog.records if r.name == "dsvl.serve"]
    assert any("POST /v1/chat/completions 400" in line for line in lines)
    assert any("POST /v1/chat/completions 200 tokens=" in line and line.endswith("s") for line in lines)


def _blocking_engine():
    """A test backend that yields one piece, then waits (no polling) until released or stopped."""
    from dsvl_cli.engine.backend import Backend
    from dsvl_cli.results import Result, TextChunk

    class BlockingEngine(Backend):
        name = "fake"  # streams one request at a time: no batching, no KV reuse (Backend's defaults)

        def __init__(self):
            self.stopped = threading.Event()
            self.released = False
            self._waiting: list[threading.Event] = []

        def release(self):
            """Let every waiting and later stream finish normally."""
            self.released = True
            for event in self._waiting:
                event.set()

        def stream(self, conversation, gen, *, cache=None, stop_event=None):
            yield TextChunk("first")
            self._waiting.append(stop_event)
            if not self.released:
                stop_event.wait(30)  # set by the server when the client goes away, or by release()
            if not self.released:
                self.stopped.set()
            yield Result("first", "stop" if self.released else "interrupted")

    return BlockingEngine()


def test_queue_bound_body_cap_and_disconnect_stop(caplog):
    from dsvl_cli.serve.app import create_app

    caplog.set_level(logging.INFO, logger="dsvl.serve")
    fake = _blocking_engine()
    url, stop = _start(create_app(fake, max_queue=0, max_body_bytes=2000))
    user = {"messages": [{"role": "user", "content": "Hi"}]}
    try:
        running = _post(url, {**user, "stream": True}, key=None, stream=True)
        assert running.status_code == 200
        lines = running.iter_lines()
        assert b"assistant" in next(lines)

        busy = _post(url, user, key=None)
        assert _error(busy, 429)["code"] == "queue_full"
        assert busy.headers["Retry-After"].isdigit()
        assert _error(_post(url, {**user, "pad": "x" * 5000}, key=None), 413)["code"] == "request_too_large"

        running.close()  # the client goes away mid-stream: its generation must stop
        assert fake.stopped.wait(10), "disconnect did not stop the generation"
        fake.release()
        done = _post(url, user, key=None)
        assert done.status_code == 200 and done.json()["choices"][0]["message"]["content"] == "first"
    finally:
        fake.release()
        stop()
    assert any("client-gone" in r.getMessage() for r in caplog.records if r.name == "dsvl.serve")


# -- --server on the front ends ----------------------------------------------------------------------

def test_ask_through_the_server_equals_local_ask(cli, server, local_answer):
    args = ["ask", str(EXAMPLES / "shapes.png"), PROMPT, "-n", "12", "--json", "--server", server, "--api-key", KEY]
    remote = cli(args)
    assert remote.exit_code == 0, remote.output
    got = json.loads(remote.stdout)
    assert set(got) == set(local_answer)
    assert set(got["stats"]) == set(local_answer["stats"])
    for key in ("answer", "finish_reason", "model", "images", "prompt"):
        assert got[key] == local_answer[key], key
    assert got["stats"]["generated_tokens"] == 12
    assert "random weights" in remote.stderr

    plain = cli(["ask", str(EXAMPLES / "shapes.png"), PROMPT, "-n", "12", "--plain", "--stats"],
                env={"DSVL_SERVER": server, "DSVL_API_KEY": KEY})
    assert plain.exit_code == 0, plain.output
    assert plain.stdout == local_answer["answer"] + "\n"
    assert "12 generated" in plain.stderr


def test_chat_through_the_server_equals_local_chat(cli, server):
    """A scripted chat with --server answers each turn as a local chat does (greedy): the server
    re-reads the whole conversation each turn (no KV reuse there, so cached_tokens is 0)."""
    script = "describe it\nwhat colour is the square?\n/image {0}\nand now?\n".format(EXAMPLES / "shapes.png")
    args = ["chat", str(EXAMPLES / "shapes.png"), "--json", "-n", "8"]
    local = cli([*args, "-m", "tiny-random", "--device", "cpu"], input=script)
    remote = cli([*args, "--server", server, "--api-key", KEY], input=script)
    assert local.exit_code == 0 and remote.exit_code == 0, remote.output
    local_turns = [json.loads(line) for line in local.stdout.splitlines()]
    remote_turns = [json.loads(line) for line in remote.stdout.splitlines()]
    assert len(remote_turns) == 3
    assert [t["answer"] for t in remote_turns] == [t["answer"] for t in local_turns]
    assert [t["turn"] for t in remote_turns] == [1, 2, 3]
    for turn in remote_turns[1:]:  # the server's prefix cache holds the earlier turns, as a local chat does
        assert turn["stats"]["cached_tokens"] * 2 >= turn["stats"]["prompt_tokens"], turn["stats"]


def test_local_model_flags_are_refused_with_server(cli, server):
    for flag in (["--quantize", "int8"], ["--compile"], ["--revision", "main"], ["--device", "cpu"]):
        result = cli(["ask", "hi", "--server", server, *flag])
        assert result.exit_code == 2, flag
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and flag[0] in lines[0] and "--server" in lines[0], lines


def test_ask_server_errors_are_one_clear_line(cli, server):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    down = cli(["ask", "hi", "--server", closed])
    assert down.exit_code == 1
    lines = down.stderr.strip().splitlines()
    assert len(lines) == 1 and closed in lines[0] and "not reachable" in lines[0], lines

    wrong = cli(["ask", "hi", "--server", server, "--api-key", "wrong"])
    assert wrong.exit_code == 2 and "API key" in wrong.stderr and "Traceback" not in wrong.stderr

    misused = cli(["serve", "--server", server])
    assert misused.exit_code == 2 and "--server" in misused.stderr


def test_serve_without_fastapi_says_how_to_install(cli, monkeypatch):
    import dsvl_cli.serve

    monkeypatch.delitem(sys.modules, "dsvl_cli.serve.app", raising=False)
    monkeypatch.delattr(dsvl_cli.serve, "app", raising=False)
    monkeypatch.setitem(sys.modules, "fastapi", None)
    result = cli(["serve", "-m", "tiny-random"])
    assert result.exit_code == 1
    assert "dsvl-cli[serve]" in result.stderr


def test_serve_command_logs_requests_and_stops_on_sigint(tiny_folder):
    proc = subprocess.Popen([sys.executable, "-m", "dsvl_cli", "serve", "-m", "tiny-random", "--device", "cpu",
                             "--port", "0", "-n", "5"], stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env={k: v for k, v in os.environ.items() if k != "DSVL_API_KEY"})
    try:
        url = _serving_url(proc)
        reply = _post(url, {"messages": [{"role": "user", "content": "Hi"}]}, key=None)
        assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] == 5
        proc.send_signal(signal.SIGINT)
        rest = proc.communicate(timeout=30)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode in (0, 130)
    assert "POST /v1/chat/completions 200 tokens=" in rest
    assert "Traceback" not in rest


def test_batch_through_the_server_equals_local_batch(cli, server, tmp_path, caplog):
    """Same records, answers, error records and exit code; several requests open at once; resume."""
    caplog.set_level(logging.INFO, logger="dsvl.serve")
    shapes, chart = str(EXAMPLES / "shapes.png"), str(EXAMPLES / "chart.png")
    lines = [{"id": "a", "image": shapes, "prompt": PROMPT}, {"id": "b", "prompt": "Hello there"},
             {"id": "c", "images": [chart, shapes], "prompt": "Compare."}, {"id": "d", "image": shapes, "prompt": "Hm?"},
             {"id": "e", "system": "Terse.", "prompt": "Why?"}, {"id": "bad", "image": str(tmp_path / "no.png"),
                                                                  "prompt": "x"}]
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"id": "torn", "pro\n')
    common = ["batch", str(jobs), "-n", "12", "--batch-size", "4"]
    local = cli([*common, "-o", str(tmp_path / "local.jsonl"), "-m", "tiny-random"])
    remote_out = tmp_path / "remote.jsonl"
    remote = cli([*common, "-o", str(remote_out), "--server", server, "--api-key", KEY])
    assert local.exit_code == remote.exit_code == 1, remote.output

    def by_id(path):
        return {r["id"]: r for r in map(json.loads, path.read_text().splitlines())}

    want, got = by_id(tmp_path / "local.jsonl"), by_id(remote_out)
    assert set(got) == set(want) == {*"abcde", "bad", 7}
    for key, record in want.items():
        if "error" in record:
            assert got[key] == record, key
        else:
            assert (got[key]["answer"], got[key]["finish_reason"]) == (record["answer"], record["finish_reason"]), key
            assert set(got[key]["stats"]) == set(record["stats"])
    assert "5 done, 2 failed" in remote.stderr
    batched = [r.getMessage() for r in caplog.records if "batch=" in r.getMessage()]
    assert any("batch=1" not in line for line in batched), "no two requests shared a batch"

    remote_out.write_text("".join(line + "\n" for line in remote_out.read_text().splitlines()[:3]))
    resumed = cli([*common, "-o", str(remote_out), "--resume", "--server", server, "--api-key", KEY])
    assert resumed.exit_code == 1 and "skipped" in resumed.stderr
    assert set(by_id(remote_out)) == set(want)
    assert len(remote_out.read_text().splitlines()) == len(want)  # every id exactly once

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    down = cli([*common, "-o", str(tmp_path / "down.jsonl"), "--server", closed])
    assert down.exit_code == 1 and "not reachable" in down.stderr and "Traceback" not in down.stderr
