"""`dsvl serve` under attack (issue 13, items 4-6 and 10; issue 16's server items): bad rows, logs,
slow clients, values that used to 500, keys, model names, shutdown.

Raw sockets where an HTTP client would not send what is tested (trickled headers, a body cut off
mid-upload). Loopback only; every wait is bounded and waits on what the server shows.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import requests

from conftest import EXAMPLES, REPO
from test_serve import _blocking_engine, _post, _serving_url, _start
from test_serve_security import USER, FakeEngine, _app, _error


@pytest.fixture
def served():
    url, stop = _start(_app(FakeEngine()))
    yield url
    stop()


def _raw(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=10)


def _closed(sock: socket.socket, within: float) -> bool:
    """True when the server closes `sock` within `within` seconds (reads what it sends until then)."""
    sock.settimeout(within)
    deadline = time.monotonic() + within
    try:
        while time.monotonic() < deadline:
            if not sock.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False
    return False


# -- 4. a bad row never fails its batch-mates -----------------------------------------------------------

def test_placeholder_is_refused_in_every_role(served, cli):
    for role in ("system", "developer", "assistant"):
        messages = [{"role": role, "content": "see <image_placeholder> here"}, *USER]
        body = _error(_post(served, {"messages": messages}, key=None), 400)
        assert "<image_placeholder>" in body["message"] and f"messages.0 ({role})" in body["message"], role
    parts = [{"type": "text", "text": "a <image_placeholder>"}]
    assert _error(_post(served, {"messages": [{"role": "user", "content": parts}]}, key=None), 400)

    result = cli(["ask", str(EXAMPLES / "shapes.png"), "hi", "--system", "<image_placeholder>", "-m", "tiny-random"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "system prompt" in lines[0] and "<image_placeholder>" in lines[0], lines


def test_a_failing_row_is_isolated_and_its_batch_mates_answered(engine):
    from dsvl_cli.conversation import Conversation, Message
    from dsvl_cli.errors import DsvlError
    from dsvl_cli.images import load_image
    from dsvl_cli.results import Result
    from dsvl_cli.serve.scheduler import END, Worker
    from dsvl_cli.settings import GenerationSettings

    shapes = load_image(str(EXAMPLES / "shapes.png"))
    good = [Conversation.single("What is this?", [shapes]), Conversation.single("Hello there"),
            Conversation.single("Which colours?", [shapes])]
    bad = Conversation([Message("user", "x <image_placeholder> y", [shapes])])  # past every front-end check
    gen = GenerationSettings(max_new_tokens=6)

    async def run_all():
        worker = Worker(engine, max_queue=8, max_batch=8)
        jobs = [worker.submit(c, gen) for c in (good[0], bad, good[1], good[2])]
        worker.start()

        async def read(job):
            items = []
            while (item := await job.out.get()) is not END:
                items.append(item)
            return items

        seen = await asyncio.gather(*(read(job) for job in jobs))
        worker.stop(5)
        return seen

    seen = asyncio.run(run_all())
    assert isinstance(seen[1][-1], DsvlError)
    for items, conversation in zip((seen[0], seen[2], seen[3]), good):
        assert isinstance(items[-1], Result), items
        assert items[-1].answer == engine.run(conversation, gen).answer


# -- 5. logs and slow clients -----------------------------------------------------------------------------

def test_access_log_escapes_what_clients_send(served, caplog):
    caplog.set_level(logging.INFO, logger="dsvl.serve")
    for path in ("/x%0adsvl%20serve:%20FORGED", "/%1b]0;owned%07", "/a%0d%0ab%c2%85c"):
        requests.get(served + path, timeout=10)
    deadline = time.monotonic() + 10  # a line is written just after its response is sent
    while len(lines := [r.getMessage() for r in caplog.records if r.name == "dsvl.serve"]) < 3:
        assert time.monotonic() < deadline, lines
        time.sleep(0.01)
    for line in lines:
        assert line.isprintable() and "\x1b" not in line and " FORGED" not in line, line
    assert "%0Adsvl%20serve:%20FORGED" in lines[0] and "%1B]0;owned%07" in lines[1] and "%C2%85" in lines[2]


def test_trickled_headers_meet_a_deadline_and_connections_are_capped():
    url, stop = _start(_app(FakeEngine()), grace_s=1, max_connections=4, header_timeout_s=0.5)
    try:
        trickler = _raw(url)
        trickler.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        for _ in range(3):
            trickler.sendall(b"X")  # a byte of a header line, never finished
        assert _closed(trickler, 5), "a connection trickling its headers stayed open"

        idle = [_raw(url) for _ in range(4)]
        extra = _raw(url)
        assert _closed(extra, 3), "a connection past --max-connections was kept"
        for conn in idle:
            conn.close()
        assert requests.get(url + "/health", timeout=10).status_code == 200
        trickler.close()
    finally:
        stop()


def test_slow_and_abandoned_bodies(caplog):
    from dsvl_cli.serve.limits import ServeLimits

    caplog.set_level(logging.INFO)
    url, stop = _start(_app(FakeEngine(), limits=ServeLimits(body_timeout_s=0.5)))
    try:
        slow = _raw(url)
        slow.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"messages\"")
        slow.settimeout(10)
        assert slow.recv(65536).startswith(b"HTTP/1.1 408")
        slow.close()

        for _ in range(3):  # each client hangs up mid-upload
            gone = _raw(url)
            gone.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n" + b"x" * 5000)
            gone.close()
        # The server goes on, and it logged each drop as one line (client-gone), never a traceback.
        deadline = time.monotonic() + 10
        while sum("client-gone" in r.getMessage() for r in caplog.records) < 3:
            assert time.monotonic() < deadline, [r.getMessage() for r in caplog.records]
            assert requests.get(url + "/health", timeout=10).status_code == 200
    finally:
        stop()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info], \
        [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_auth_is_checked_before_the_body_is_read():
    url, stop = _start(_app(FakeEngine(), api_key="k3y"))
    try:
        conn = _raw(url)
        conn.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 5000000\r\n\r\n")
        conn.settimeout(10)
        assert conn.recv(65536).startswith(b"HTTP/1.1 401")  # answered with no byte of the body sent
        conn.close()
    finally:
        stop()


# -- 6. values that used to 500 --------------------------------------------------------------------------

def test_out_of_range_values_get_400_with_a_message(served):
    cases = {"seed": 2 ** 70, "temperature": 1e308, "top_p": 2, "repetition_penalty": 1e300, "max_tokens": 2 ** 70}
    for name, value in cases.items():
        body = _error(_post(served, {"messages": USER, name: value}, key=None), 400)
        assert name in body["message"], body
    base = '{"messages": [{"role": "user", "content": "Hi"}], '
    for raw in (base + '"temperature": 1e999}', base + '"temperature": NaN}', base + '"top_p": -Infinity}'):
        assert "finite" in _error(_post(served, raw, key=None), 400)["message"], raw
    deep = '{"x": ' + "[" * 100_000 + "]" * 100_000 + ', "messages": [{"role": "user", "content": "Hi"}]}'
    assert "JSON" in _error(_post(served, deep, key=None), 400)["message"]
    assert _post(served, {"messages": USER, "seed": 2 ** 63, "temperature": 1.5}, key=None).status_code == 200


def test_api_key_rules(tmp_path):
    from dsvl_cli.errors import UsageError
    from dsvl_cli.serve import config

    assert config.api_key(None, None, None) is None
    assert config.api_key(" s3cret ", None, None) == "s3cret"
    assert config.api_key(None, "from-env", None) == "from-env"
    for bad in ("", "   ", "clé", "two words", "tab\there"):
        with pytest.raises(UsageError):
            config.api_key(bad, None, None)
        with pytest.raises(UsageError, match="DSVL_API_KEY"):
            config.api_key(None, bad, None)
    key_file = tmp_path / "key"
    key_file.write_text("from-a-file\n")
    assert config.api_key(None, "exported-for-clients", key_file) == "from-a-file"
    with pytest.raises(UsageError, match="one way"):
        config.api_key("x", None, key_file)
    with pytest.raises(UsageError, match="no such file"):
        config.api_key(None, None, tmp_path / "nope")


@pytest.mark.parametrize("args, env, expected", [
    (["--port", "99999"], {}, "--port"),
    (["--port", "-1"], {}, "--port"),
    ([], {"DSVL_API_KEY": ""}, "DSVL_API_KEY"),
    (["--api-key", "naïve"], {}, "printable ASCII"),
])
def test_serve_refuses_bad_settings_before_loading(cli, args, env, expected):
    result = cli(["serve", "-m", "tiny-random", *args], env=env)
    assert result.exit_code == 2, result.output
    assert expected in result.output and "Traceback" not in result.output


# -- issue 16 #11: model names ---------------------------------------------------------------------------

def test_model_names(served):
    for model in ("fake", "default", None):
        body = {"messages": USER, **({"model": model} if model else {})}
        assert _post(served, body, key=None).status_code == 200, model
    for model in ("gpt-4", "nope", "7b"):
        body = _error(_post(served, {"messages": USER, "model": model}, key=None), 404)
        assert body["code"] == "model_not_found" and model in body["message"] and "fake" in body["message"]

    from dsvl_cli.serve.protocol import model_names

    assert model_names("7b") >= {"7b", "deepseek-community/deepseek-vl-7b-chat", "default"}
    assert "7b" in model_names("deepseek-community/deepseek-vl-7b-chat")


def test_ask_server_sends_the_model_it_was_given(cli, served):
    from dsvl_cli.conversation import Conversation
    from dsvl_cli.engine.remote import RemoteEngine
    from dsvl_cli.settings import GenerationSettings

    plain = cli(["ask", "hi", "--server", served])  # no -m: "default", whatever the server has
    assert plain.exit_code == 0 and plain.stdout == "ok\n", plain.output
    named = cli(["ask", "hi", "--server", served, "-m", "fake"])
    assert named.exit_code == 0 and "answered with" not in named.stderr
    other = cli(["ask", "hi", "--server", served, "-m", "7b"])
    assert other.exit_code == 2 and "model_not_found" not in other.stderr
    assert "does not exist on this server" in other.stderr and "fake" in other.stderr

    notes = []
    remote = RemoteEngine(served, model="asked-for", on_note=notes.append)
    assert remote.request_body(Conversation.single("x"), GenerationSettings())["model"] == "asked-for"
    remote._note_model("someone-else")
    remote._note_model("someone-else")
    assert len(notes) == 1 and "someone-else" in notes[0]


# -- 10. shutdown ----------------------------------------------------------------------------------------

def test_shutdown_cuts_open_streams_with_an_error_chunk_and_done():
    fake, servers = _blocking_engine(), []
    url, stop = _start(_app(fake), grace_s=0.5, server_out=servers)
    try:
        stream = _post(url, {"messages": USER, "stream": True}, key=None, stream=True)
        lines = stream.iter_lines()
        assert b"assistant" in next(lines)
        servers[0].should_exit = True  # what SIGTERM does
        rest = [line for line in lines if line]
        assert rest[-1] == b"data: [DONE]", rest
        error = json.loads(rest[-2][6:])["error"]
        assert error["code"] == "server_shutdown" and "shutting down" in error["message"]
        assert fake.stopped.is_set()
    finally:
        fake.release()
        stop()  # checks that the server stopped


def test_serve_ignores_dsvl_server_and_stops_cleanly_on_sigterm(tiny_folder, tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("file-key\n")
    env = {k: v for k, v in os.environ.items() if k != "DSVL_API_KEY"}
    env["DSVL_SERVER"] = "http://127.0.0.1:9"  # exported for clients: serve must not care
    proc = subprocess.Popen([sys.executable, "-m", "dsvl_cli", "serve", "-m", "tiny-random", "--device", "cpu",
                             "--port", "0", "-n", "3", "--api-key-file", str(key_file), "--grace-period", "1"],
                            stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)
    try:
        url = _serving_url(proc)
        assert _post(url, {"messages": USER}, key="wrong").status_code == 401
        assert _post(url, {"messages": USER}, key="file-key").status_code == 200
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=30)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "Traceback" not in rest


def test_ask_server_sends_a_large_local_picture_within_the_servers_caps(cli, served, tmp_path):
    from PIL import Image

    big = tmp_path / "big.png"
    Image.frombytes("RGB", (3000, 2000), os.urandom(3000 * 2000 * 3)).save(big, compress_level=1)
    assert big.stat().st_size > 10 * 1024 * 1024  # over the server's per-image cap as it is
    result = cli(["ask", str(big), "What is this?", "--server", served])
    assert result.exit_code == 0 and result.stdout == "ok\n", result.output


def test_bodies_of_many_tiny_values_and_long_stop_strings_are_refused_before_parsing(served):
    values = '{"messages": [{"role": "user", "content": "Hi"}], "x": [' + ",".join(["1"] * 200_000) + "]}"
    assert "JSON values" in _error(_post(served, values, key=None), 400)["message"]
    objects = '{"messages": [' + ",".join(['{"role": "user", "content": ""}'] * 50_000) + "]}"
    assert "JSON values" in _error(_post(served, objects, key=None), 400)["message"]
    assert "stop" in _error(_post(served, {"messages": USER, "stop": ["x" * 1000]}, key=None), 400)["message"]
    assert _post(served, {"messages": USER, "stop": ["\n\n", "END"]}, key=None).status_code == 200
