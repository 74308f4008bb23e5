"""`dsvl serve` under attack (issue 13): SSRF, cost caps, slow URLs, bad rows, logs, slow clients, values.

Every server here is on loopback: the app in-process (uvicorn in a thread, tests/test_serve.py's
`_start`) over a fake engine where the model does not matter, and a local image server whose
handlers count hits, redirect, trickle bytes and note when their client hung up. Waits are on
events the servers set, with bounded deadlines; no test sleeps to synchronise.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from conftest import EXAMPLES
from test_serve import _post, _start

from dsvl_cli.engine.backend import Backend

SHAPES = (EXAMPLES / "shapes.png").read_bytes()
USER = [{"role": "user", "content": "Hi"}]
GENERIC = "could not be fetched or is not a usable image"


class ImageServer:
    """A loopback HTTP server: /shapes.png, /redirect?to=URL, /slow (1 byte per 0.2 s), /text, /missing."""

    def __init__(self, host: str = "127.0.0.1"):
        self.hits: dict[str, int] = {}
        self.open_slow = 0
        self.slow_started = threading.Semaphore(0)
        self.slow_closed = threading.Semaphore(0)
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                path = urlsplit(self.path).path
                with outer.lock:
                    outer.hits[path] = outer.hits.get(path, 0) + 1
                if path == "/shapes.png":
                    self._send(200, "image/png", SHAPES)
                elif path == "/redirect":
                    self.send_response(302)
                    self.send_header("Location", parse_qs(urlsplit(self.path).query)["to"][0])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif path == "/text":
                    self._send(200, "text/plain", b"hello, not an image")
                elif path == "/slow":
                    self._trickle()
                else:
                    self._send(404, "text/plain", b"no")

            def _send(self, status, ctype, body):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _trickle(self):
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(SHAPES)))
                self.end_headers()
                with outer.lock:
                    outer.open_slow += 1
                outer.slow_started.release()
                try:
                    for k in range(600):  # at most 2 minutes, a byte at a time
                        self.wfile.write(SHAPES[k:k + 1])
                        self.wfile.flush()
                        time.sleep(0.2)  # the trickle itself, not a synchronisation
                except OSError:
                    pass
                finally:
                    with outer.lock:
                        outer.open_slow -= 1
                    outer.slow_closed.release()

        self.httpd = ThreadingHTTPServer((host, 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_port
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def images():
    server = ImageServer()
    yield server
    server.close()


class FakeEngine(Backend):
    """Answers "ok" at once; records the conversations it was given (declares no tokenizer, no
    batching: the Backend defaults)."""

    name = "fake"

    def __init__(self):
        self.seen = []

    def stream(self, conversation, gen, *, cache=None, stop_event=None):
        from dsvl_cli.results import Result, TextChunk

        self.seen.append(conversation)
        yield TextChunk("ok")
        yield Result("ok", "stop")


def _app(engine=None, **kwargs):
    from dsvl_cli.serve.app import create_app

    return create_app(engine or FakeEngine(), **kwargs)


@pytest.fixture
def served():
    """The app with its defaults over a FakeEngine; yields (url, engine)."""
    engine = FakeEngine()
    url, stop = _start(_app(engine))
    yield url, engine
    stop()


def _image_messages(*urls: str, text: str = "What is this?") -> list[dict]:
    parts = [{"type": "image_url", "image_url": {"url": u}} for u in urls]
    return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]


def _error(response: requests.Response, status: int) -> dict:
    assert response.status_code == status, (response.status_code, response.text[:300])
    return response.json()["error"]


def _png_uri(width: int, height: int, fmt: str = "PNG") -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buffer, format=fmt)
    kind = "png" if fmt == "PNG" else "jpeg"
    return f"data:image/{kind};base64," + base64.b64encode(buffer.getvalue()).decode()


# -- 1. SSRF ------------------------------------------------------------------------------------------

LOOPBACK_FORMS = ["127.0.0.1", "localhost", "2130706433", "0x7f000001", "017700000001", "127.1", "0", "[::1]",
                  "[::ffff:127.0.0.1]"]


def test_private_addresses_are_refused_in_every_spelling_with_one_generic_error(served, images, caplog):
    url, engine = served
    caplog.set_level(logging.INFO, logger="dsvl.serve")
    sources = [images.url("/shapes.png", host) for host in LOOPBACK_FORMS]
    sources.append(images.url("/shapes.png").replace("http://", "HTTP://"))
    sources += [images.url("/missing"), images.url("/text")]  # no oracle: 404 and "not an image" look alike
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        sources.append(f"http://127.0.0.1:{probe.getsockname()[1]}/closed.png")  # connection refused
    messages = set()
    for source in sources:
        body = _error(_post(url, {"messages": _image_messages(source)}, key=None), 400)
        assert body["code"] == "invalid_image" and GENERIC in body["message"], source
        messages.add(body["message"].replace(source[:80], "SOURCE"))
    assert len(messages) == 1, messages
    assert images.hits == {}, "the server reached the local image server"
    assert not engine.seen
    logged = [r.getMessage() for r in caplog.records if "image fetch failed" in r.getMessage()]
    assert any("not a public address" in line for line in logged)


def test_every_redirect_hop_is_checked_and_the_checked_address_is_connected_to(images, monkeypatch):
    from dsvl_cli.errors import ImageLoadError
    from dsvl_cli.images import load_image
    from dsvl_cli.images.guard import Blocked, ImageGuard, MediaPolicy

    other = ImageServer("127.0.0.2")
    try:
        class OnlyFirst(MediaPolicy):  # 127.0.0.1 stands for "public", 127.0.0.2 for "private"
            def check_address(self, address):
                if address != "127.0.0.1":
                    raise Blocked(f"address {address} is not a public address")

        def guard(policy=None):
            return ImageGuard(policy or OnlyFirst(), max_bytes=1 << 20, max_pixels=1 << 24, max_side=1024,
                              timeout_s=10)

        assert load_image(images.url("/shapes.png"), guard=guard()).image.size == (320, 240)
        hop = images.url("/redirect?to=" + other.url("/shapes.png", "127.0.0.2"))
        with pytest.raises(ImageLoadError, match="not a public address"):
            load_image(hop, guard=guard())
        file_hop = images.url("/redirect?to=file:///etc/hostname")
        with pytest.raises(ImageLoadError, match="scheme"):
            load_image(file_hop, guard=guard())
        by_name = MediaPolicy(allow_private=True, allowed_domains=frozenset({"localhost"}))
        with pytest.raises(ImageLoadError, match="allowed media domains"):
            load_image(images.url("/redirect?to=" + images.url("/shapes.png"), "localhost"), guard=guard(by_name))
        assert other.hits == {}

        # A name resolved once: checked and connected to, never looked up again (no rebinding).
        real = socket.getaddrinfo

        def rebinding(host, port, *args, **kwargs):
            if host == "rebind.test":
                return [*real("127.0.0.2", port, *args, **kwargs), *real("127.0.0.1", port, *args, **kwargs)]
            return real(host, port, *args, **kwargs)

        monkeypatch.setattr(socket, "getaddrinfo", rebinding)
        loaded = load_image(f"http://rebind.test:{images.port}/shapes.png", guard=guard())
        assert loaded.image.size == (320, 240) and other.hits == {}
    finally:
        other.close()


def test_the_cli_still_fetches_what_its_user_asks_for(images):
    from dsvl_cli.images import load_image

    assert load_image(images.url("/shapes.png")).image.size == (320, 240)
    assert load_image(images.url("/redirect?to=" + images.url("/shapes.png"))).image.size == (320, 240)


def test_media_policy_flags(images):
    from dsvl_cli.images.guard import MediaPolicy
    from dsvl_cli.serve import config

    only = config.media_policy(True, "localhost,*.example.org", False)
    assert only.allowed_domains == frozenset({"localhost", "*.example.org"})
    url, stop = _start(_app(policy=only))
    try:
        ok = _post(url, {"messages": _image_messages(images.url("/shapes.png", "localhost"))}, key=None)
        assert ok.status_code == 200, ok.text
        refused = _error(_post(url, {"messages": _image_messages(images.url("/shapes.png"))}, key=None), 400)
        assert "allowed media domains" in refused["message"]
    finally:
        stop()
    url, stop = _start(_app(policy=MediaPolicy(allow_urls=False)))
    try:
        refused = _error(_post(url, {"messages": _image_messages(images.url("/shapes.png"))}, key=None), 400)
        assert "data: URIs only" in refused["message"]
        assert _post(url, {"messages": _image_messages(_png_uri(8, 8))}, key=None).status_code == 200
    finally:
        stop()
    assert images.hits == {"/shapes.png": 1}


def test_images_per_request_are_capped_and_repeats_fetched_once(images):
    from dsvl_cli.images.guard import MediaPolicy

    url, stop = _start(_app(policy=MediaPolicy(allow_private=True)))
    try:
        shapes = images.url("/shapes.png")
        many = _post(url, {"messages": _image_messages(*[shapes] * 300)}, key=None)
        assert many.status_code == 200, many.text
        assert images.hits == {"/shapes.png": 1}
        nine = [f"{shapes}?n={k}" for k in range(9)]
        assert "at most 8" in _error(_post(url, {"messages": _image_messages(*nine)}, key=None), 400)["message"]
        assert images.hits == {"/shapes.png": 1}, "nothing fetched for a request over the cap"
    finally:
        stop()


def test_only_json_bodies_and_only_loopback_host_names(served):
    url, _ = served
    form = "model=x&messages=hi"
    assert _error(_post(url, form, key=None, content_type="application/x-www-form-urlencoded"), 415)
    assert _error(_post(url, json.dumps({"messages": USER}), key=None, content_type="text/plain"), 415)
    assert _error(_post(url, json.dumps({"messages": USER}), key=None, content_type=None), 415)
    ok = _post(url, {"messages": USER}, key=None, content_type="application/json; charset=utf-8")
    assert ok.status_code == 200

    from dsvl_cli.serve import config

    allowed = config.allowed_hosts("127.0.0.1", "proxy.example.com")
    assert allowed >= {"localhost", "127.0.0.1", "::1", "proxy.example.com"}
    assert config.allowed_hosts("0.0.0.0", None) is None and config.allowed_hosts("127.0.0.1", "*") is None
    guarded_url, stop = _start(_app(allowed_hosts=allowed))
    try:
        port = guarded_url.rsplit(":", 1)[1]
        for host in ("attacker.example", f"attacker.example:{port}", "127.0.0.1.nip.io"):
            body = _error(requests.get(guarded_url + "/health", headers={"Host": host}, timeout=10), 403)
            assert body["code"] == "host_not_allowed", host
        for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "proxy.example.com"):
            assert requests.get(guarded_url + "/health", headers={"Host": host}, timeout=10).status_code == 200
    finally:
        stop()


# -- 2. cost before checks ----------------------------------------------------------------------------

def test_cheap_limits_come_before_any_fetch(engine, images):
    from dsvl_cli.images.guard import MediaPolicy
    from dsvl_cli.serve.limits import ServeLimits

    limits = ServeLimits(max_text_chars=20_000)
    url, stop = _start(_app(engine, policy=MediaPolicy(allow_private=True), limits=limits, api_key=None))
    try:
        shapes = images.url("/shapes.png")
        long_text = "word " * 4001
        body = _error(_post(url, {"messages": _image_messages(shapes, text=long_text)}, key=None), 400)
        assert "20005 characters" in body["message"] and "--max-text-chars" in body["message"]
        system_too = [{"role": "system", "content": "x" * 16000}, *_image_messages(shapes, text="y" * 4001)]
        assert "characters" in _error(_post(url, {"messages": system_too}, key=None), 400)["message"]
        past_context = "zq " * 5000  # under the character cap, over tiny-random's 4,096 tokens
        body = _error(_post(url, {"messages": _image_messages(shapes, text=past_context)}, key=None), 400)
        assert body["code"] == "context_length_exceeded" and "fewer images" in body["message"]
        assert images.hits == {}, "an image was fetched for a request that could never run"
        assert _post(url, {"messages": _image_messages(shapes), "max_tokens": 2}, key=None).status_code == 200
        over = _post(url, "x" * (limits.body_bytes() + 1), key=None)
        assert _error(over, 413)["code"] == "request_too_large"
    finally:
        stop()
    assert limits.body_bytes() < 120 * 1024 * 1024  # lowered from ~270 MB: what the caps allow


def test_pixels_are_capped_and_pictures_downscaled_when_decoded():
    from dsvl_cli.errors import ImageLoadError
    from dsvl_cli.images import load_image
    from dsvl_cli.images.guard import ImageGuard, MediaPolicy

    def guard(max_pixels=4096 * 4096):
        return ImageGuard(MediaPolicy(), max_bytes=8 << 20, max_pixels=max_pixels, max_side=1024, timeout_s=5)

    with pytest.raises(ImageLoadError, match="5000x5000 pixels"):
        load_image(_png_uri(5000, 5000), guard=guard())
    # issue 29 #5: the server decodes a picture as the CLI does (the same pixels, the same mark), so
    # --server answers as a local run: reduced by a whole factor or a JPEG scale, the last resize the engine's.
    from dsvl_cli.images.decode import INTAKE_KEY

    served = load_image(_png_uri(3000, 1500), guard=guard()).image
    assert served.size == (1500, 750) and INTAKE_KEY in served.info
    assert served.tobytes() == load_image(_png_uri(3000, 1500)).image.tobytes()
    big_jpeg = _png_uri(6000, 3000, "JPEG")  # 18 M pixels: decoded at a JPEG scale first, so it fits
    served = load_image(big_jpeg, guard=guard()).image
    assert max(served.size) < 2048 and INTAKE_KEY in served.info
    assert load_image(_png_uri(2000, 1500), guard=guard()).image.size == (2000, 1500)  # 3 MP: as it is
    with pytest.raises(ImageLoadError, match="only http"):
        load_image(str(EXAMPLES / "shapes.png"), guard=guard())
    # The CLI: --exact-pixels keeps every pixel; by default a 4.5 MP picture is reduced by a whole
    # factor (intake), its last resize to 1024 px left to the engine (marked).
    assert load_image(_png_uri(3000, 1500), exact=True).image.size == (3000, 1500)
    cli_image = load_image(_png_uri(3000, 1500)).image
    assert cli_image.size == (1500, 750) and INTAKE_KEY in cli_image.info


# -- 3. slow URLs -------------------------------------------------------------------------------------

def test_slow_urls_meet_a_total_deadline_and_never_hold_up_text_requests(images):
    from dsvl_cli.images.guard import MediaPolicy
    from dsvl_cli.serve.limits import ServeLimits

    limits = ServeLimits(fetch_timeout_s=3)
    url, stop = _start(_app(policy=MediaPolicy(allow_private=True), limits=limits))
    pool = ThreadPoolExecutor(10)
    try:
        slow = [pool.submit(_post, url, {"messages": _image_messages(images.url(f"/slow?k={k}"))}, key=None)
                for k in range(10)]
        for _ in range(8):  # every image thread is busy trickling
            assert images.slow_started.acquire(timeout=20)
        started = time.monotonic()
        text = _post(url, {"messages": USER}, key=None)
        assert text.status_code == 200 and time.monotonic() - started < 2.5
        assert images.open_slow >= 1, "the text request waited for the slow fetches"
        for future in slow:
            body = _error(future.result(timeout=30), 400)
            assert GENERIC in body["message"]
        for _ in range(10):  # every trickle was cut by the server, long before its 2 minutes
            assert images.slow_closed.acquire(timeout=10)
    finally:
        pool.shutdown(wait=False)
        stop()


def test_a_client_that_hangs_up_cancels_its_fetch(images, caplog):
    from dsvl_cli.images.guard import MediaPolicy
    from dsvl_cli.serve.limits import ServeLimits

    caplog.set_level(logging.INFO, logger="dsvl.serve")
    url, stop = _start(_app(policy=MediaPolicy(allow_private=True), limits=ServeLimits(fetch_timeout_s=120)))
    try:
        body = json.dumps({"messages": _image_messages(images.url("/slow"))}).encode()
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            client.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                           b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            assert images.slow_started.acquire(timeout=20)
        started = time.monotonic()
        assert images.slow_closed.acquire(timeout=10), "the fetch ran on after its client left"
        assert time.monotonic() - started < 10
    finally:
        stop()
    assert any("client-gone" in r.getMessage() for r in caplog.records if r.name == "dsvl.serve")


# -- defended before issue 13: keep them so ---------------------------------------------------------

def test_fifty_clients_get_429_with_retry_after_and_the_rest_answers(served):
    from test_serve import _blocking_engine

    fake = _blocking_engine()
    url, stop = _start(_app(fake, max_queue=4))
    pool = ThreadPoolExecutor(50)
    try:
        first = _post(url, {"messages": USER, "stream": True}, key=None, stream=True)
        assert b"assistant" in next(first.iter_lines())  # running: the queue is now the limit
        futures = [pool.submit(_post, url, {"messages": USER}, key=None) for _ in range(49)]
        busy = []
        deadline = time.monotonic() + 30
        while len(busy) < 44:  # at most max_queue (+1 while the worker changes jobs) wait; the rest: 429
            assert time.monotonic() < deadline, len(busy)
            busy = [f for f in futures if f.done()]
        fake.release()
        replies = [f.result(timeout=30) for f in futures]
        turned_away = [r for r in replies if r.status_code == 429]
        assert all(_error(r, 429)["code"] == "queue_full" and r.headers["Retry-After"].isdigit()
                   for r in turned_away)
        assert 44 <= len(turned_away) <= 45 and all(r.status_code in (200, 429) for r in replies)
        first.close()
    finally:
        fake.release()
        pool.shutdown(wait=False)
        stop()


def test_local_files_and_file_urls_are_never_read(served):
    url, _ = served
    for source in ("/etc/hostname", "file:///etc/hostname", "FILE:///etc/passwd", "~/.ssh/id_rsa", "C:\\x.png"):
        body = _error(_post(url, {"messages": _image_messages(source)}, key=None), 400)
        assert "http(s) URL or a data: URI" in body["message"], source
