"""`dsvl serve`: an OpenAI-compatible HTTP API over one warm LocalEngine (FastAPI + uvicorn).

Why: loading the model costs seconds (tiny-random) to minutes (7B); a server keeps it loaded for
shell loops (`dsvl ask --server`) and for any OpenAI client. The wire format lives in protocol.py;
the Responses API (`/v1/responses`) in responses.py, the Decisions API (`/v1/decisions`: typed
questions answered with probabilities) in decisions.py, on the same intake and worker (jobs.py).

Limits, on purpose:
- One warm engine loop owns the model (engine/loop.py, through scheduler.py): requests join the
  running rows at the next decode step (up to `max_batch` rows, and as many as the KV memory
  holds) and leave the moment their answer ends. At most `max_queue` requests (1024 by default)
  wait for a free row; past that the answer is 429 with Retry-After.
- Before any expensive work a request passes the gate (gate.py: Host, key, JSON only, body cap and
  timeout) and the cheap caps (limits.py: text, image count, prompt tokens); the body is parsed and
  tokens are counted on a helper thread, never on the event loop.
- Images are fetched and decoded on their own threads under the media policy (media.py: public
  addresses only by default, a total deadline per fetch, cancelled when the client goes away); a
  text-only request never waits for them. Local paths in `image_url` are refused.
- KV reuse across requests: the prefix cache is keyed by the tokens and by the content hash of
  every picture in them (engine/prefix_cache.py), so one picture's KV never answers for another of
  the same size; `cached_tokens` says how much of a prompt it held. Vision features are kept by
  the hash of the preprocessed pixels (engine/features.py). GET /metrics shows both (metrics.py).
- A client that disconnects stops its generation (the engine's stop_event); one that disconnects
  while queued is skipped. On SIGINT/SIGTERM uvicorn stops accepting and lets in-flight requests
  finish for up to the grace period (GRACE_S, `--grace-period`); then `Drain` cuts the rest:
  streams get an error chunk and `[DONE]`, queued requests a 503 (drain.py, transport.py).
- A request naming another model gets 404 model_not_found; the loaded model's name, its aliases
  and "default" are accepted.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from dsvl_cli.engine.loop import MAX_WAITING
from dsvl_cli.errors import DsvlError
from dsvl_cli.images.guard import MediaPolicy
from dsvl_cli.results import Result, TextChunk
from dsvl_cli.serve import decisions, gate, responses
from dsvl_cli.serve import protocol as chat_api
from dsvl_cli.serve import metrics
from dsvl_cli.serve.drain import Drain
from dsvl_cli.serve.gate import ClientClosed
from dsvl_cli.serve.jobs import Run, Runs
from dsvl_cli.serve.limits import PromptCounter, ServeLimits, image_side
from dsvl_cli.serve.logs import AccessLog
from dsvl_cli.serve.media import ClientGone, MediaLoader
from dsvl_cli.serve.response_store import STORE_BYTES, ResponseStore
from dsvl_cli.serve.scheduler import Worker
from dsvl_cli.serve.transport import GRACE_S, bind, configure_logging, make_server
from dsvl_cli.settings import GenerationSettings
from dsvl_cli.wire import chunks
from dsvl_cli.wire.errors import MODEL_NOT_FOUND, ApiError, error_body, from_dsvl
from dsvl_cli.wire.protocol import generation_settings, parse_request

__all__ = ["create_app", "bind", "make_server", "configure_logging", "GRACE_S"]
PARSE_WORKERS = 2  # threads that parse bodies and count tokens (text-only requests need only these)
BULK_BYTES = 1 << 20  # bodies larger than this (data: URIs) are parsed and decoded BULK_REQUESTS at a time
BULK_REQUESTS = 2
log = logging.getLogger("dsvl.serve")


# -- the app -------------------------------------------------------------------------------------------

def create_app(engine, *, defaults: GenerationSettings | None = None, api_key: str | None = None,
               max_queue: int = MAX_WAITING, max_batch: int | None = None, max_body_bytes: int | None = None,
               limits: ServeLimits | None = None, policy: MediaPolicy | None = None,
               allowed_hosts: frozenset[str] | None = None, image_max_side: int | None = None,
               response_store_bytes: int = STORE_BYTES, cache_bytes: int | None = None) -> FastAPI:
    """The ASGI app over a loaded engine (or anything with its `stream`, `name`, `random_weights`).

    `max_batch`: most rows decoding at once (default: twice batch's default for the device).
    `cache_bytes`: the prefix cache's bound (--cache-memory; default from free memory).
    `allowed_hosts`: the Host names answered (None: any). `policy`: what image URLs may be fetched.
    `response_store_bytes`: the memory kept for stored responses (`previous_response_id`, responses.py)."""
    limits = limits or ServeLimits()
    options = {"cache_bytes": cache_bytes} if cache_bytes is not None else {}
    worker = Worker(engine, max_queue, max_batch or 2 * engine.default_batch_size, **options)
    scrape = metrics.registry_for(worker.meters, engine.name)
    media = MediaLoader(policy or MediaPolicy(), limits, image_max_side or image_side(engine))
    intake = Intake(engine, defaults or GenerationSettings(), api_key, limits, media,
                    max_body_bytes or limits.body_bytes())
    drain = Drain(media.shutdown)
    runs = Runs(worker, drain)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        worker.start()
        try:
            yield
        finally:
            worker.stop(GRACE_S)
            media.shutdown()
            intake.shutdown()

    app = FastAPI(title="dsvl", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.dsvl_drain = drain
    app.add_middleware(gate.HostCheck, allowed=allowed_hosts)
    app.add_middleware(AccessLog)
    _error_handlers(app)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": engine.name}

    @app.get("/metrics")
    async def prometheus(request: Request) -> Response:
        gate.check_key(request, api_key)
        return Response(metrics.render(scrape), media_type=metrics.CONTENT_TYPE)

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict:
        gate.check_key(request, api_key)
        return {"object": "list", "data": [{"id": engine.name, "object": "model", "created": 0,
                                            "owned_by": "dsvl", "random_weights": engine.random_weights,
                                            "max_batch": worker.max_batch, "max_queue": worker.max_queue}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        stream, include_usage, gen, conversation = await intake.read(request)
        run = await runs.start(conversation, gen, request)
        del conversation
        cid = chunks.new_id()
        if stream:
            events = _sse(run, cid, engine.name, include_usage, request)
            return StreamingResponse(events, media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        result = await run.result()
        _note_tokens(request, result)
        return chunks.completion(cid, engine.name, result)

    responses.register(app, engine.name, intake, runs, ResponseStore(response_store_bytes))
    decisions.register(app, engine.name, intake, runs)
    return app


class Intake:
    """From an HTTP request to a checked Conversation: every cap checked cheapest first (limits.py),
    the body parsed and the tokens counted on helper threads, the images loaded last (media.py)."""

    def __init__(self, engine, defaults: GenerationSettings, api_key: str | None, limits: ServeLimits,
                 media: MediaLoader, body_cap: int):
        self.engine, self.defaults, self.api_key, self.limits = engine, defaults, api_key, limits
        self.media, self.body_cap = media, body_cap
        self.names = chat_api.model_names(engine.name)
        self.counter = PromptCounter(engine)
        self._pool = ThreadPoolExecutor(max_workers=PARSE_WORKERS, thread_name_prefix="dsvl-serve-parse")
        self._bulk = asyncio.Semaphore(BULK_REQUESTS)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def read(self, request: Request, check=None):
        """(stream?, include usage?, GenerationSettings, the Conversation with its images loaded), or
        what `check(request, raw body)` returns (another API's parser: responses.py).

        The parsed request is dropped on return: its data: URIs can be megabytes. A body over
        BULK_BYTES waits for one of BULK_REQUESTS slots before it is parsed and its images decoded,
        which bounds what several large requests at once can take."""
        gate.check_key(request, self.api_key)
        gate.require_json(request)
        raw = await gate.read_body(request, self.body_cap, self.limits.body_timeout_s)
        check = check or self._checked
        if len(raw) <= BULK_BYTES:
            return await check(request, raw)
        async with self._bulk:
            return await check(request, raw)

    async def offload(self, fn, *args):
        """fn(*args) on a parse thread, off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def _checked(self, request: Request, raw: bytearray):
        loop = asyncio.get_running_loop()
        self.limits.check_json_shape(raw)
        req = await loop.run_in_executor(self._pool, parse_request, raw)  # empties raw
        chat_api.check_model(req.model, self.engine.name, self.names)
        gen = generation_settings(req, self.defaults)
        self.limits.check_text(chat_api.check_messages(req))
        sources = chat_api.image_sources(req)
        self.limits.check_images(len(sources))
        self.media.precheck(sources)
        standins = chat_api.build_conversation(req, {source: None for source in sources})
        await loop.run_in_executor(self._pool, self.counter.check, standins)
        images = await self.media.load(sources, request.is_disconnected)
        conversation = chat_api.build_conversation(req, images)
        await self.pictures_checked(conversation, images)
        usage = bool(req.stream_options and req.stream_options.include_usage)
        return req.stream, usage, gen, conversation

    async def pictures_checked(self, conversation, images: dict) -> None:
        """PDFs and videos became several pictures each: the caps again, on the distinct pictures."""
        pictures = sum(len(each) for each in images.values())
        if pictures > len(images):
            self.limits.check_images(pictures)
            await asyncio.get_running_loop().run_in_executor(self._pool, self.counter.check, conversation)


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), exc.status, headers=exc.headers)

    @app.exception_handler(DsvlError)
    async def dsvl_error(request: Request, exc: DsvlError) -> JSONResponse:
        job = getattr(request.state, "dsvl_job", None)
        if job is not None and job.cut:
            return await api_error(request, ApiError(503, "the server is shutting down", "server_error",
                                                     "server_shutdown"))
        return await api_error(request, from_dsvl(exc))

    @app.exception_handler(chat_api.ModelNotFound)
    async def model_not_found(request: Request, exc: chat_api.ModelNotFound) -> JSONResponse:
        return await api_error(request, ApiError(404, str(exc), code=MODEL_NOT_FOUND))

    @app.exception_handler(ClientClosed)
    @app.exception_handler(ClientGone)
    async def client_gone(request: Request, exc: Exception) -> Response:
        request.state.dsvl_client_gone = True
        return Response(status_code=499)  # nobody reads it; the log line says client-gone

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ())) or "body"
        return await api_error(request, ApiError(400, f"{where}: {first.get('msg')}"))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return await api_error(request, ApiError(exc.status_code, str(exc.detail), headers=exc.headers))




async def _sse(run: Run, cid: str, model: str, include_usage: bool, request: Request) -> AsyncIterator[str]:
    """Server-sent events: a role chunk, content chunks, a finish chunk, [DONE].

    Starlette cancels this generator when the client disconnects; `finally` then stops the job. A
    stream cut by shutdown (Drain) ends with an error chunk, then [DONE].
    """
    def event(obj: dict) -> str:
        return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

    sent = 0  # logprob entries sent with content chunks; the finish chunk carries the rest
    try:
        yield event(chunks.chunk(cid, model, {"role": "assistant", "content": ""}))
        async for batch in run.batches():  # what arrived together goes out in one write
            parts = []
            for item in batch:
                if isinstance(item, TextChunk):
                    sent += len(item.logprobs or ())
                    parts.append(event(chunks.chunk(cid, model, {"content": item.text}, logprobs=item.logprobs)))
                elif isinstance(item, Result):
                    _note_tokens(request, item)
                    rest = item.logprobs[sent:] if item.logprobs is not None else None
                    parts.append(event(chunks.final_chunk(cid, model, item, rest)))
                    if include_usage:
                        parts.append(event(chunks.usage_chunk(cid, model, item)))
                elif isinstance(item, BaseException):  # after the headers: report it in the stream
                    err = from_dsvl(item)
                    parts.append(event(error_body(err.message, err.type, err.code)))
            if parts:
                yield "".join(parts)
        if run.cut:
            yield event(error_body("the server is shutting down; the answer was cut short",
                                            "server_error", "server_shutdown"))
        yield "data: [DONE]\n\n"
    finally:
        if not run.done:  # cancelled before the end: the client went away (or shutdown)
            request.state.dsvl_client_gone = True
        run.close()


def _note_tokens(request: Request, result: Result) -> None:
    request.state.dsvl_tokens = (result.stats.prompt_tokens, result.stats.generated_tokens)
