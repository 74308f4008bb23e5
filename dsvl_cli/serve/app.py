"""`dsvl serve`: an OpenAI-compatible HTTP API over one warm LocalEngine (FastAPI + uvicorn).

Why: loading the model costs seconds (tiny-random) to minutes (7B); a server keeps it loaded for
shell loops (`dsvl ask --server`) and for any OpenAI client. The wire format lives in chat_api.py.

Limits, on purpose:
- One `generate` at a time: a single worker thread owns the engine (serve_worker.py) and takes
  requests in arrival order; requests waiting together with the same generation settings run as
  one batch (up to `max_batch`). At most `max_queue` requests wait behind the running batch; past
  that the answer is 429 with Retry-After.
- Images are resolved in one helper thread (images.py decodes from one thread at a time), never on
  the event loop. The server fetches http(s) image URLs itself: bind to 127.0.0.1 (the default) or
  set an API key before exposing it. Local paths in `image_url` are refused.
- No KV reuse across requests: image placeholders are the same tokens for every picture, so a
  prefix cache shared between clients could reuse another image's KV; `cached_tokens` is 0.
- A client that disconnects stops its generation (the engine's stop_event); one that disconnects
  while queued is skipped. On SIGINT/SIGTERM uvicorn stops accepting, lets in-flight requests
  finish for up to GRACE_S seconds, then cancels them (which stops their generation).
- Request bodies are capped (413): room for a few images at the image byte cap, base64-encoded.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import socket
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from dsvl_cli.serve import protocol as chat_api
from dsvl_cli.errors import ContextLengthError, DsvlError, ExitCode, GenerationError, ImageLoadError
from dsvl_cli.images import load_image, max_image_bytes
from dsvl_cli.results import Result, TextChunk
from dsvl_cli.serve.scheduler import END as _END
from dsvl_cli.serve.scheduler import Job, QueueFull, Worker
from dsvl_cli.settings import GenerationSettings

IMAGE_WORKERS = 4  # requests whose images are fetched and decoded at once
GRACE_S = 10.0  # how long shutdown waits for in-flight requests before cancelling them
RETRY_AFTER_S = 1
log = logging.getLogger("dsvl.serve")


def default_max_body_bytes() -> int:
    """Four images at the image byte cap, base64-encoded, plus room for the text."""
    return max_image_bytes() * 4 // 3 * 4 + (1 << 20)


class ApiError(Exception):
    """An HTTP error in OpenAI's shape."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.headers = status, message, type_, code, headers


def _from_dsvl(err: DsvlError) -> ApiError:
    if isinstance(err, ContextLengthError):
        return ApiError(400, err.message, code="context_length_exceeded")
    if isinstance(err, ImageLoadError):
        return ApiError(400, err.message, code="invalid_image")
    if err.exit_code == ExitCode.USAGE:
        return ApiError(400, err.message)
    return ApiError(500, err.message, "server_error", err.kind)


# -- the app -------------------------------------------------------------------------------------------

def create_app(engine, *, defaults: GenerationSettings | None = None, api_key: str | None = None,
               max_queue: int = 16, max_batch: int | None = None, max_body_bytes: int | None = None) -> FastAPI:
    """The ASGI app over a loaded engine (or anything with its `stream`, `name`, `random_weights`).

    `max_batch`: most requests in one generate call (default: batch's default for the device)."""
    defaults = defaults or GenerationSettings()
    body_cap = max_body_bytes or default_max_body_bytes()
    worker = Worker(engine, max_queue, max_batch or engine.default_batch_size)
    # Image fetching runs beside the event loop; a slow URL must not hold up other requests' images.
    images = ThreadPoolExecutor(max_workers=IMAGE_WORKERS, thread_name_prefix="dsvl-serve-images")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        worker.start()
        try:
            yield
        finally:
            worker.stop(GRACE_S)
            images.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="dsvl", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(AccessLog)

    def check_key(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), api_key.encode()):
            raise ApiError(401, "missing or wrong API key (send Authorization: Bearer KEY)",
                           "authentication_error", "invalid_api_key")

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(chat_api.error_body(exc.message, exc.type, exc.code), exc.status, headers=exc.headers)

    @app.exception_handler(DsvlError)
    async def dsvl_error(request: Request, exc: DsvlError) -> JSONResponse:
        return await api_error(request, _from_dsvl(exc))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ())) or "body"
        return await api_error(request, ApiError(400, f"{where}: {first.get('msg')}"))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return await api_error(request, ApiError(exc.status_code, str(exc.detail), headers=exc.headers))

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": engine.name}

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict:
        check_key(request)
        return {"object": "list", "data": [{"id": engine.name, "object": "model", "created": 0,
                                            "owned_by": "dsvl", "random_weights": engine.random_weights}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        check_key(request)
        raw = await _read_body(request, body_cap)
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ApiError(400, f"request body is not valid JSON ({exc})") from None
        req = chat_api.parse_request(data)
        gen = chat_api.generation_settings(req, defaults)
        loop = asyncio.get_running_loop()
        conversation = await loop.run_in_executor(images, chat_api.build_conversation, req, load_image)
        try:
            job = worker.submit(conversation, gen)
        except QueueFull:
            raise ApiError(429, f"the server is busy: {max_queue} requests already waiting; retry later",
                           "rate_limit_error", "queue_full", headers={"Retry-After": str(RETRY_AFTER_S)}) from None
        request.state.dsvl_job = job
        try:
            first = await _next(job, request)  # waits through the queue; errors still get a status
            if isinstance(first, BaseException):
                raise first
        except BaseException:
            job.stop.set()
            raise
        cid = chat_api.new_id()
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            events = _sse(job, first, cid, engine.name, include_usage, request)
            return StreamingResponse(events, media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            result = await _collect(job, first, request)
        finally:
            job.stop.set()
        _note_tokens(request, result)
        return chat_api.completion(cid, engine.name, result)

    return app


async def _read_body(request: Request, cap: int) -> bytes:
    too_big = ApiError(413, f"request body is larger than {cap} bytes", code="request_too_large")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > cap:
        raise too_big
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > cap:
            raise too_big
    return bytes(body)


async def _next(job: Job, request: Request):
    """The job's next item; while waiting, notice a client that went away (and stop its job)."""
    while True:
        try:
            return await asyncio.wait_for(job.out.get(), timeout=0.25)
        except asyncio.TimeoutError:
            if await request.is_disconnected():
                job.stop.set()
                raise ApiError(499, "client closed the request") from None


async def _collect(job: Job, item, request: Request) -> Result:
    result = None
    while item is not _END:
        if isinstance(item, BaseException):
            raise item
        if isinstance(item, Result):
            result = item
        item = await _next(job, request)
    if result is None:
        raise GenerationError("generation ended without a result")
    return result


async def _sse(job: Job, item, cid: str, model: str, include_usage: bool, request: Request) -> AsyncIterator[str]:
    """Server-sent events: a role chunk, content chunks, a finish chunk, [DONE].

    Starlette cancels this generator when the client disconnects; `finally` then stops the job.
    """
    def event(obj: dict) -> str:
        return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

    try:
        yield event(chat_api.chunk(cid, model, {"role": "assistant", "content": ""}))
        while item is not _END:
            if isinstance(item, TextChunk):
                yield event(chat_api.chunk(cid, model, {"content": item.text}))
            elif isinstance(item, Result):
                _note_tokens(request, item)
                yield event(chat_api.final_chunk(cid, model, item))
                if include_usage:
                    yield event(chat_api.usage_chunk(cid, model, item))
            elif isinstance(item, BaseException):  # after the headers: report it in the stream
                err = _from_dsvl(item) if isinstance(item, DsvlError) else ApiError(500, str(item), "server_error")
                yield event(chat_api.error_body(err.message, err.type, err.code))
            item = await job.out.get()
        yield "data: [DONE]\n\n"
    finally:
        if item is not _END:  # cancelled before the end: the client went away (or shutdown)
            request.state.dsvl_client_gone = True
        job.stop.set()


def _note_tokens(request: Request, result: Result) -> None:
    request.state.dsvl_tokens = (result.stats.prompt_tokens, result.stats.generated_tokens)


class AccessLog:
    """One stderr line per request: client, method, path, status, tokens, seconds."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        scope.setdefault("state", {})
        started = time.perf_counter()
        status = {"code": None}

        async def send_and_note(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            state = scope["state"]
            tokens = state.get("dsvl_tokens")
            client = scope.get("client") or ("-", 0)
            parts = [client[0], scope["method"], scope["path"], str(status["code"] or 500)]
            if state.get("dsvl_client_gone"):
                parts.append("client-gone")
            if tokens:
                parts.append(f"tokens={tokens[0]}+{tokens[1]}")
            job = state.get("dsvl_job")
            if job is not None and job.batch_size:
                parts.append(f"batch={job.batch_size}")
            parts.append(f"{time.perf_counter() - started:.3f}s")
            log.info(" ".join(parts))


# -- running it ----------------------------------------------------------------------------------------

def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: any free port), so the URL is known before uvicorn starts."""
    from dsvl_cli.errors import UsageError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UsageError(f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc})") from None
    sock.listen(2048)  # clients that connect before uvicorn is up wait in the backlog, not refused
    return sock


def make_server(app: FastAPI, grace_s: float = GRACE_S):
    """A uvicorn Server for the app; `.run(sockets=[sock])` serves until SIGINT/SIGTERM."""
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                            timeout_graceful_shutdown=grace_s)
    return uvicorn.Server(config)


def configure_logging() -> None:
    """Request lines go to stderr as plain `dsvl serve: ...` lines."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("dsvl serve: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
