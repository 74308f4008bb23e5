"""`POST /v1/decisions`: OpenAI's Decisions API (typed questions about one input, answered with probabilities).

The shapes are those of the openai package's `types/decision_create_params.py` and
`types/decision.py`: `input` (a string, or messages) and 1-400 `questions` (predicate, choice,
score); the answer object holds `answers` in question order, `model` and `usage`
(`output_tokens` 0: nothing is generated), plus dsvl's `stats` as an extra field. How each
probability is read: decide/questions.py and engine/decisions.py (README, "Decisions").

Same path as the chat API: the same gate and caps (app.Intake: key, JSON, body cap, text with
the questions' text counted, pictures, the input's tokens before any picture is fetched), the same
media policy for `input_image` (media.py), the same seam to the worker (jobs.Runs). Each request
runs alone on the worker (its format carries its own key, so it never joins a batch): the input is
prefilled once for all of its questions.

Input mapping: a string is one user message. Messages (`type: "message"` or none) with role user
(content `input_text`, `input_image`, `input_json` parts: the JSON written compact, as text),
system / developer (`input_text`: they make the system prompt, joined by blank lines, as
/v1/responses), assistant (`output_text`, `input_text`, `refusal`): read by responses_wire.read_items,
the Responses API's own reader. Function and custom tool calls and their
outputs are a 400 (this server calls no tools). The questions follow the input as user turns.
`prompt_cache_key`, `prompt_cache_options`, `safety_identifier` are accepted and ignored.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict

from dsvl_cli.conversation import Conversation
from dsvl_cli.decide.questions import parse_questions
from dsvl_cli.decide.wire import body
from dsvl_cli.errors import UsageError
from dsvl_cli.wire.protocol import parse_request
from dsvl_cli.serve import protocol
from dsvl_cli.serve.jobs import Runs
from dsvl_cli.serve.responses_wire import RequestInput, read_items
from dsvl_cli.structured.spec import decisions_format

MAX_JSON_BYTES = 256 * 1024  # one input_json part, written compact (the API's own limit)


class DecisionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)
    model: str | None = None
    input: Any = None  # required; read_input checks it
    questions: Any = None  # required; decide/questions.py checks them


def register(app: FastAPI, model: str, intake, runs: Runs) -> None:
    """The route on `app` (intake: app.Intake, the chat API's own)."""

    async def check(request: Request, raw: bytearray):
        return await _checked(intake, request, raw)

    @app.post("/v1/decisions")
    async def create_decision(request: Request) -> dict:
        conversation, gen = await intake.read(request, check)
        run = await runs.start(conversation, gen, request)
        del conversation
        result = await run.result()
        request.state.dsvl_tokens = (result.stats.prompt_tokens, 0)
        return body(model, result)


async def _checked(intake, request: Request, raw: bytearray):
    """The chat API's checks in its order (app.Intake._checked), on a Decisions body."""
    intake.limits.check_json_shape(raw)
    req = await intake.offload(parse_request, raw, DecisionRequest)  # empties raw
    protocol.check_model(req.model, intake.engine.name, intake.names)
    if req.questions is None:
        raise UsageError("questions: required (a list of 1-400 questions)")
    questions = parse_questions(req.questions)
    turn = read_input(req.input)
    intake.limits.check_text(turn.chars + sum(q.chars for q in questions))
    sources = turn.sources()
    intake.limits.check_images(len(sources))
    intake.media.precheck(sources)
    standins = _conversation(turn, {source: None for source in sources})
    await intake.offload(intake.counter.check, standins)
    images = await intake.media.load(sources, request.is_disconnected)
    conversation = _conversation(turn, images)
    await intake.pictures_checked(conversation, images)
    return conversation, intake.defaults.replace(answer_format=decisions_format(questions))


def _conversation(turn: RequestInput, images) -> Conversation:
    return Conversation(turn.build(images), system="\n\n".join(turn.systems) if turn.systems else None)


def read_input(value: Any) -> RequestInput:
    """The request's input (the Responses API's shape, `input_json` parts too), checked before
    anything is loaded."""
    turn = read_items(value, _json_text)
    if not turn.messages:
        raise UsageError("input: give at least one user or assistant message (the questions are about it)")
    return turn


def _json_text(data: Any, at: str) -> str:
    if not isinstance(data, (dict, list)) or (isinstance(data, list) and not all(isinstance(d, dict) for d in data)):
        raise UsageError(f"{at}: an input_json part needs `data`: an object or a list of objects")
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    if len(text.encode()) > MAX_JSON_BYTES:
        raise UsageError(f"{at}: the JSON is {len(text.encode())} bytes written compact; at most {MAX_JSON_BYTES}")
    return text
