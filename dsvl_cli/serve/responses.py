"""`POST /v1/responses`, `GET` and `DELETE /v1/responses/{id}`: OpenAI's Responses API on the chat API's engine.

Why: code written against OpenAI's SDK today calls `client.responses.create`, and agent frameworks
built on it speak nothing else. The wire shapes are in responses_wire.py, the stored responses in
response_store.py; this module is the routes.

Same path as the chat API, on purpose: a request passes the same gate and caps (app.Intake: key,
JSON, body cap, text, pictures, the prompt's tokens before any picture is fetched), loads its
pictures under the same media policy (media.py), and runs through the same seam to the worker
(jobs.Runs): the same batching, the same stop when the client leaves, the same shutdown cut.
A request that continues `previous_response_id` runs the conversation the chat API would run
with the whole history sent again: the stored turns (pictures included, never fetched again),
then the new input; the engine's prefix cache, where it has the history's KV, reuses it and says
so in `usage.input_tokens_details.cached_tokens`.

Limits: no tools, no files API (`input_file`, `file_id`), no background responses, no
Conversations API; no logprobs yet. Stored responses live in memory only (response_store.py).
A streamed response is stored when its answer is complete; one whose client left is not.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from dsvl_cli.conversation import Conversation, Message
from dsvl_cli.results import Result, TextChunk
from dsvl_cli.serve import gate, protocol
from dsvl_cli.wire.errors import ApiError, from_dsvl
from dsvl_cli.wire.protocol import parse_request
from dsvl_cli.serve.jobs import Run, Runs
from dsvl_cli.serve.response_store import HistoryGone, ResponseStore, StoredResponse
from dsvl_cli.serve.responses_wire import (Events, ResponsesRequest, Shell, generation_settings, new_id, read_input,
                                           status_of)
from dsvl_cli.settings import GenerationSettings

SHUTDOWN = {"code": "server_error", "message": "the server is shutting down; the answer was cut short"}
log = logging.getLogger("dsvl.serve")


@dataclass
class Ask:
    """One checked request: what it asked, its settings, the turn it adds, the whole conversation."""

    req: ResponsesRequest
    gen: GenerationSettings
    systems: list[str]
    messages: list[Message]
    conversation: Conversation


def register(app: FastAPI, model: str, intake, runs: Runs, store: ResponseStore) -> None:
    """The routes of the Responses API on `app` (intake: app.Intake, the chat API's own)."""

    async def check(request: Request, raw: bytearray) -> Ask:
        return await _checked(intake, store, request, raw)

    @app.post("/v1/responses")
    async def create_response(request: Request):
        ask = await intake.read(request, check)
        shell = Shell(new_id(), new_id("msg"), model, ask.req)
        run = await runs.start(ask.conversation, ask.gen, request)
        ask.conversation = None  # the job holds it while it runs; the turn is kept for the store
        if ask.req.stream:
            return StreamingResponse(_events(run, shell, ask, store, request), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        result = await run.result()
        request.state.dsvl_tokens = (result.stats.prompt_tokens, result.stats.generated_tokens)
        body = shell.body(status_of(result), result)
        _keep(store, ask, body, result)
        return body

    @app.get("/v1/responses/{response_id}")
    async def get_response(response_id: str, request: Request) -> dict:
        gate.check_key(request, intake.api_key)
        entry = store.get(response_id)
        if entry is None:
            raise _not_found(response_id)
        return entry.body

    @app.delete("/v1/responses/{response_id}")
    async def delete_response(response_id: str, request: Request) -> dict:
        gate.check_key(request, intake.api_key)
        if not store.delete(response_id):
            raise _not_found(response_id)
        return {"id": response_id, "object": "response", "deleted": True}


def _not_found(response_id: str) -> ApiError:
    shown = response_id if len(response_id) <= 80 else response_id[:60] + "…"
    return ApiError(404, f"no stored response with id {shown!r} (responses sent with store: false are not kept, "
                         "and the server keeps only the most recently used within its memory bound)",
                    code="response_not_found")


async def _checked(intake, store: ResponseStore, request: Request, raw: bytearray) -> Ask:
    """The chat API's checks in its order (app.Intake._checked), on a Responses body."""
    intake.limits.check_json_shape(raw)
    req = await intake.offload(parse_request, raw, ResponsesRequest)  # empties raw
    protocol.check_model(req.model, intake.engine.name, intake.names)
    req.refuse_unsupported()
    gen = generation_settings(req, intake.defaults)
    turn = read_input(req)
    history = _history(store, req.previous_response_id)
    intake.limits.check_text(turn.chars + len(req.instructions or ""))
    sources = turn.sources()
    intake.limits.check_images(len(sources))
    intake.media.precheck(sources)
    standins = _conversation(req, history, turn.systems, turn.build({source: None for source in sources}))
    await intake.offload(intake.counter.check, standins)
    images = await intake.media.load(sources, request.is_disconnected)
    messages = turn.build(images)
    conversation = _conversation(req, history, turn.systems, messages)
    await intake.pictures_checked(conversation, images)
    return Ask(req, gen, turn.systems, messages, conversation)


def _history(store: ResponseStore, previous_id: str | None) -> list[StoredResponse]:
    if previous_id is None:
        return []
    try:
        chain = store.chain(previous_id)
    except HistoryGone as gone:
        raise ApiError(400, f"previous_response_id {previous_id!r}: an earlier response of its conversation "
                            f"({gone.id}) was deleted, so it cannot be continued", code="previous_response_not_found",
                       param="previous_response_id") from None
    if chain is None:
        error = _not_found(previous_id)
        error.code, error.param = "previous_response_not_found", "previous_response_id"
        raise error
    return chain


def _conversation(req: ResponsesRequest, history: list[StoredResponse], systems: list[str],
                  messages: list[Message]) -> Conversation:
    """What the chat API would be sent: the instructions and every system message as its system
    prompt, the stored turns' messages, then this turn's."""
    parts = ([req.instructions] if req.instructions is not None else [])
    parts += [text for entry in history for text in entry.systems] + systems
    earlier = [Message(m.role, m.text, list(m.images)) for entry in history for m in entry.messages]
    return Conversation(earlier + messages, system="\n\n".join(parts) if parts else None)


def _keep(store: ResponseStore, ask: Ask, body: dict, result: Result) -> None:
    if not ask.req.store:
        return
    turn = [*ask.messages, Message("assistant", result.answer)]
    kept = store.put(StoredResponse(body["id"], body, ask.req.previous_response_id, ask.systems, turn))
    if not kept and store.max_bytes:
        log.warning("response %s not stored: larger than the whole store (%d bytes)", body["id"], store.max_bytes)


async def _events(run: Run, shell: Shell, ask: Ask, store: ResponseStore, request: Request):
    """The stream: created, in_progress, the item and its part added, text deltas, the done events,
    then completed / incomplete (or failed, with the error, when generation fails or shutdown cuts
    it). Starlette cancels this generator when the client leaves; `finally` stops the job."""
    events = Events(shell)

    def sse(event: dict) -> str:
        return f"event: {event['type']}\ndata: {json.dumps(event, ensure_ascii=False)}\n\n"

    pieces: list[str] = []
    try:
        for event in events.opening():
            yield sse(event)
        async for batch in run.batches():  # what arrived together goes out in one write
            parts = []
            for item in batch:
                if isinstance(item, TextChunk):
                    pieces.append(item.text)
                    parts.append(sse(events.delta(item.text)))
                    continue
                if isinstance(item, Result):
                    request.state.dsvl_tokens = (item.stats.prompt_tokens, item.stats.generated_tokens)
                    body = shell.body("failed", item, error=SHUTDOWN) if run.cut else shell.body(status_of(item), item)
                    if not run.cut:
                        _keep(store, ask, body, item)
                elif isinstance(item, BaseException):  # after the headers: the stream says it
                    err = from_dsvl(item)
                    body = shell.body("failed", text="".join(pieces),
                                      error={"code": err.code or err.type, "message": err.message})
                else:
                    continue
                parts += [sse(event) for event in events.closing(body)]
            if parts:
                yield "".join(parts)
    finally:
        if not run.done:  # cancelled before the end: the client went away (or shutdown)
            request.state.dsvl_client_gone = True
        run.close()
