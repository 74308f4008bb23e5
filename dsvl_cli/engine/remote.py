"""`--server URL`: a running `dsvl serve` (or another OpenAI-compatible server) as an engine.

ask, chat and batch call `stream(conversation, gen, cache=None, stop_event=None)` on whatever
`load_engine` returns; RemoteEngine turns that into one streamed Chat Completions request, so those
front ends work remotely unchanged: the same chunks, the same Result, the same stats keys, the same
exit codes. No torch here.

Limits, on purpose:
- Images given as http(s) URLs or data: URIs are sent as they are (the server fetches the URL
  itself); every other source (a path, stdin) is sent as a lossless PNG data: URI of the decoded
  pixels, so the server sees exactly the pixels a local run would (dsvl serve decodes them as a
  local intake does); only a PNG over SEND_MAX_BYTES (dsvl serve's byte cap) goes at SEND_MAX_SIDE.
- `cache` (chat's KV reuse) is ignored: the server keeps no per-client cache; cached_tokens is 0.
- The client is httpx (connection pool, streaming; a unix socket for --keep-alive) and the stream
  is read with httpx-sse (multi-line and comment events as the SSE spec has them). Timeouts:
  CONNECT_TIMEOUT_S to connect, READ_TIMEOUT_S between two pieces of the answer (a queued request
  waits its turn within that). 429 and 503 are retried after their Retry-After (0.1-10 s) for up
  to BUSY_RETRY_S in all; httpx itself retries nothing, so no request is ever sent twice here.
- Errors come back as the DsvlError they stand for (wire/errors.py: exit 2 for the request's
  fault, 1 otherwise), naming the server unless they are about the request itself (400).
- --schema / --regex / --choices travel as `response_format` / vLLM's `structured_outputs`
  (wire/messages.py), --logprobs as OpenAI's `logprobs`/`top_logprobs`; the scores and logprob
  entries are read back (wire/chunks.py) and `data` is parsed here from the answer's text, so the
  --json output is a local run's.
- Typed questions (dsvl decide) go as one `POST /v1/decisions` (remote_decisions.py).
- Result.token_ids is empty (the API sends text, not token ids). Against a server other than
  dsvl's, stats hold what `usage` and the client's own clock can tell.
- The request names the model `-m` gave, or "default" (whatever the server has loaded) when `-m`
  was not given; a dsvl server answers 404 for another model. If a server answers with a model
  other than the one asked for, `on_note` is told once per model.
"""

from __future__ import annotations

import base64
import io
import json
import re
import threading
import time
from collections.abc import Callable, Iterator

import httpx
from httpx_sse import EventSource, SSEError

from dsvl_cli import __version__, wire
from dsvl_cli.catalog import same_model
from dsvl_cli.conversation import Conversation
from dsvl_cli.engine.backend import Backend
from dsvl_cli.errors import ContextLengthError, DsvlError, GenerationError, ModelError, UsageError, load_json
from dsvl_cli.images import LoadedImage
from dsvl_cli.images.cache import SourceCache
from dsvl_cli.images.decode import INTAKE_KEY, downscaled
from dsvl_cli.results import Chunk, Result, Stats, TextChunk
from dsvl_cli.settings import GenerationSettings
from dsvl_cli.structured import answers
from dsvl_cli.wire.chunks import read_chunk
from dsvl_cli.wire.errors import to_dsvl

CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 600.0
BUSY_RETRY_S = 120.0
_URI_CACHE_SIZE = 16
SEND_MAX_SIDE = 1024  # a picture whose PNG is over SEND_MAX_BYTES is sent at this long side instead
SEND_MAX_BYTES = 8 * 1024 * 1024  # under dsvl serve's per-image cap (10 MiB): sent as intake left it
POOL_SIZE = 64  # kept-alive connections; more open streams than this still work (not kept afterwards)
TIMEOUT = httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
LIMITS = httpx.Limits(max_connections=None, max_keepalive_connections=POOL_SIZE)


def base_url(url: str) -> str:
    """`host:port`, `http://host:port/`, `.../v1` -> `http://host:port` (UsageError otherwise)."""
    url = url.strip().rstrip("/")
    if not re.match(r"^[a-z][a-z0-9+.-]*://", url, re.IGNORECASE):
        url = "http://" + url
    if not re.match(r"^https?://[^/]+", url, re.IGNORECASE):
        raise UsageError(f"--server {url}: use an http(s) URL such as http://127.0.0.1:8000")
    return url[: -len("/v1")] if url.endswith("/v1") else url


class RemoteEngine(Backend):
    """The Backend protocol over HTTP: streams only (no KV reuse, no batching here, no token
    counting: the server does those), so callers that read the capabilities fall back by themselves."""

    inline_images = False  # True: URLs too are fetched here and sent as data: URIs (--keep-alive)
    png_level = 6  # zlib level of those PNGs: smaller over a network, level 1 is faster over a local socket
    send_max_side: int | None = SEND_MAX_SIDE  # None: sent as loaded (--keep-alive: the pixels of a local run)

    def __init__(self, url: str, *, api_key: str | None = None, model: str | None = None,
                 on_note: Callable[[str], None] | None = None):
        self.url = base_url(url)
        self.requested_model = model
        self._on_note = on_note
        self._noted: set[str] = set()
        self._client = self._new_client()
        self._client.headers["User-Agent"] = f"dsvl/{__version__}"
        if api_key:
            self._client.headers["Authorization"] = f"Bearer {api_key}"
        self._uris = SourceCache(keep=_URI_CACHE_SIZE)  # thread-safe: batch streams several records at once
        listing = self._server_json(self._request("GET", "/v1/models").content)
        models = listing.get("data") or [{}]
        self.name = str(models[0].get("id") or self.url)
        self.random_weights = bool(models[0].get("random_weights", False))
        # dsvl serve says how many requests it batches and queues (batch --server keeps it busy).
        self.default_batch_size = _positive(models[0].get("max_batch"), 1)
        self.server_queue = _positive(models[0].get("max_queue"), 0)

    # -- the Backend protocol -----------------------------------------------------------------------
    def stream(self, conversation: Conversation, gen: GenerationSettings, *, cache=None,
               stop_event: threading.Event | None = None) -> Iterator[Chunk]:
        """Yield TextChunks as the server sends them, then one Result (see LocalEngine.stream)."""
        if gen.answer_format is not None and gen.answer_format.kind == "decisions":  # POST /v1/decisions
            from dsvl_cli.engine.remote_decisions import decide

            result = decide(self, conversation, gen)
            yield TextChunk(result.answer)
            yield result
            return
        started = time.perf_counter()
        response = self._request("POST", "/v1/chat/completions", json=self.request_body(conversation, gen),
                                 headers={"Accept": "text/event-stream"}, stream=True)
        pieces: list[str] = []
        finish, stats, usage, first_at, scores = None, None, None, None, None
        logprobs: list[dict] | None = [] if gen.logprobs is not None else None
        try:
            for data in _sse_data(response, self.url):
                if data == "[DONE]" or (stop_event is not None and stop_event.is_set()):
                    break
                got = read_chunk(self._server_json(data))
                if got.error is not None:
                    raise self._error(got.error, status=None)
                usage = got.usage or usage
                self._note_model(got.model)
                for piece in got.pieces:
                    if logprobs is not None and piece.logprobs:
                        logprobs += piece.logprobs
                    if piece.text:
                        first_at = first_at or time.perf_counter()
                        pieces.append(piece.text)
                        yield TextChunk(piece.text, logprobs=piece.logprobs)
                    if piece.finish:
                        finish, stats, scores = piece.finish, got.stats, got.scores
        except KeyboardInterrupt:  # Ctrl-C: closing the connection stops the server's generation
            finish = "interrupted"
        except httpx.HTTPError as exc:
            raise GenerationError(f"server {self.url}: connection lost while answering "
                                  f"({type(exc).__name__})") from None
        finally:
            response.close()
        if stop_event is not None and stop_event.is_set() and finish is None:
            finish = "interrupted"
        if stats is None:
            stats = _local_stats(usage, started, first_at).to_dict()
        result = Result(answer="".join(pieces), finish_reason=finish or "stop", stats=Stats.from_dict(stats),
                        scores=scores, logprobs=logprobs)
        yield answers.conclude(result, gen.answer_format)  # --schema: `data`, parsed here from the text

    # -- the request ----------------------------------------------------------------------------
    def request_body(self, conversation: Conversation, gen: GenerationSettings) -> dict:
        return {"model": self.requested_model or "default", "messages": wire.to_messages(conversation, self._image_ref),
                "stream": True, "stream_options": {"include_usage": True}, **wire.sampling_fields(gen),
                **wire.answer_format_fields(gen.answer_format), **wire.logprob_fields(gen)}

    def _server_json(self, data: str | bytes) -> dict:
        """What the server sent, parsed with the same bounds as any JSON a user gives."""
        try:
            obj = load_json(data)
        except json.JSONDecodeError as exc:
            raise GenerationError(f"server {self.url} sent a reply that is not valid JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise GenerationError(f"server {self.url} sent a reply that is not a JSON object")
        return obj

    def _note_model(self, answered) -> None:
        """Tell the user once when the server answered with another model than -m asked for."""
        asked = self.requested_model
        if asked in (None, "default") or not isinstance(answered, str) or answered in self._noted:
            return
        if answered not in same_model(asked):
            self._noted.add(answered)
            if self._on_note is not None:
                self._on_note(f"note: asked for model {asked}; server {self.url} answered with {answered}")

    def _image_ref(self, loaded: LoadedImage) -> str:
        if not self.inline_images and wire.IMAGE_URL.match(loaded.source):  # the server fetches these itself
            return loaded.source

        def png_uri(_key) -> tuple[LoadedImage, str]:  # holds `loaded`, so its id stays its own
            from PIL.PngImagePlugin import PngInfo

            image, text = loaded.image, PngInfo()
            if INTAKE_KEY in image.info:  # the server finishes the resize as a local run would
                text.add_text(INTAKE_KEY, str(image.info[INTAKE_KEY]))
            buffer = io.BytesIO()
            image.save(buffer, format="PNG", compress_level=self.png_level, pnginfo=text)
            if self.send_max_side and buffer.tell() > SEND_MAX_BYTES and max(image.size) > self.send_max_side:
                buffer = io.BytesIO()  # over dsvl serve's byte cap as it is: the model's size, the one way in
                downscaled(image, self.send_max_side).save(buffer, format="PNG", compress_level=self.png_level)
            return loaded, "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")

        return self._uris.get(id(loaded), png_uri)[1]  # chat resends its images every turn: encode once

    def _new_client(self) -> httpx.Client:
        return httpx.Client(timeout=TIMEOUT, limits=LIMITS)  # batch --server keeps several streams open

    def _send(self, method: str, path: str, **kwargs) -> httpx.Response:
        """One HTTP exchange, its body not read yet (the keep-alive engine wraps it to restart a
        server that went away)."""
        return self._client.send(self._client.build_request(method, self.url + path, **kwargs), stream=True)

    def _request(self, method: str, path: str, **kwargs) -> httpx.Response:
        """Send, retrying while the server is busy; errors become DsvlErrors naming the server.
        The answer's body is read unless the request asks for a stream (`stream=True`)."""
        stream = kwargs.pop("stream", False)
        deadline = time.monotonic() + BUSY_RETRY_S
        while True:
            try:
                response = self._send(method, path, **kwargs)
                if response.status_code < 400 and not stream:
                    response.read()
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                from dsvl_cli.images.fetch import connection_text  # the root cause: refused, DNS, reset

                raise ModelError(f"server {self.url} is not reachable ({connection_text(exc)}); "
                                 "start one with `dsvl serve` or check --server / DSVL_SERVER") from None
            except httpx.TimeoutException:
                raise GenerationError(f"server {self.url} did not answer within {READ_TIMEOUT_S:g} s") from None
            except httpx.HTTPError as exc:
                raise GenerationError(f"server {self.url}: the connection failed ({type(exc).__name__})") from None
            if response.status_code < 400:
                return response
            wait = _retry_after(response)
            if response.status_code in (429, 503) and time.monotonic() + wait < deadline:
                response.close()
                time.sleep(wait)
                continue
            raise self._error(_error_of(response), status=response.status_code, path=path)

    def _error(self, error: dict, *, status: int | None, path: str = "") -> Exception:
        """A server's error (its body's `error`, or an error event in a stream) as a DsvlError."""
        if status == 404 and path == "/v1/models":
            return ModelError(f"server {self.url} does not look like dsvl serve or an OpenAI-compatible "
                              "server (GET /v1/models: 404)")
        err = to_dsvl(error, status)
        if status == 401:
            return UsageError(f"server {self.url}: {err.message}; set DSVL_API_KEY or --api-key")
        return err if status == 400 or isinstance(err, ContextLengthError) else self._named(err)

    def _named(self, err: DsvlError) -> DsvlError:
        """An error that is not about the request itself, naming the server it came from."""
        named = type(err)(f"server {self.url}: {err.message}")
        named.exit_code = err.exit_code
        return named


def _error_of(response: httpx.Response) -> dict:
    """The `error` object of an error answer ({} when the body is not OpenAI's error JSON)."""
    try:
        error = load_json(response.read()).get("error") or {}
    except (ValueError, AttributeError, httpx.HTTPError):
        return {}
    finally:
        response.close()
    return error if isinstance(error, dict) else {"message": str(error)}


def _sse_data(response: httpx.Response, url: str) -> Iterator[str]:
    """The `data:` payloads of a server-sent event stream, as they arrive."""
    try:
        for event in EventSource(response).iter_sse():
            if event.data:  # an event with no data (a named ping) carries nothing to read
                yield event.data
    except SSEError:  # not text/event-stream: a server that ignored `stream: true`
        raise GenerationError(f"server {url} did not answer with an event stream "
                              f"(Content-Type: {response.headers.get('content-type', 'none')})") from None


def _positive(value, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else default


def _retry_after(response: httpx.Response) -> float:
    try:
        return min(max(float(response.headers.get("Retry-After", "1")), 0.1), 10.0)
    except ValueError:
        return 1.0


def _local_stats(usage: dict | None, started: float, first_at: float | None) -> Stats:
    usage = usage or {}
    now = time.perf_counter()
    return Stats(prompt_tokens=int(usage.get("prompt_tokens", 0)),
                 generated_tokens=int(usage.get("completion_tokens", 0)),
                 ttft_s=(first_at - started) if first_at else 0.0, total_s=now - started)
