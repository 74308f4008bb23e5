"""OpenAI's error object, both ways: one mapping between dsvl's errors and the wire.

- `from_dsvl`: the HTTP status and error body `dsvl serve` answers for a DsvlError (bad input 400,
  a prompt over the context `context_length_exceeded`, anything else 500 with the error's kind as
  its `code`).
- `to_dsvl`: such a body read back (the `--server` / `--keep-alive` client) as the DsvlError it came
  from, so a remote run exits with the code a local run would. Also what another OpenAI-compatible
  server sends: 400, 401 and model_not_found are the request's fault (exit 2), anything else a
  failure (exit 1).

Why an exception class for the server side: a route raises ApiError anywhere below it and one
handler writes `body()` with `status` (and `headers`, e.g. Retry-After).
"""

from __future__ import annotations

from dsvl_cli.errors import ContextLengthError, DsvlError, ExitCode, ImageLoadError, UsageError, of_kind

CONTEXT_LENGTH = "context_length_exceeded"  # OpenAI's code for a prompt over the context window
MODEL_NOT_FOUND = "model_not_found"


def error_body(message: str, type_: str = "invalid_request_error", code: str | None = None,
               param: str | None = None) -> dict:
    """OpenAI's error JSON: {"error": {"message", "type", "param", "code"}}."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class ApiError(Exception):
    """An HTTP error in OpenAI's shape."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 code: str | None = None, headers: dict | None = None, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.headers = status, message, type_, code, headers
        self.param = param  # the request field at fault, when one is

    def body(self) -> dict:
        return error_body(self.message, self.type, self.code, self.param)


def from_dsvl(err: BaseException) -> ApiError:
    """The HTTP status and OpenAI error of an error met while answering: bad input 400, else 500."""
    if not isinstance(err, DsvlError):
        return ApiError(500, str(err), "server_error")
    if isinstance(err, ContextLengthError):
        return ApiError(400, err.message, code=CONTEXT_LENGTH)
    if isinstance(err, ImageLoadError):
        return ApiError(400, err.message, code="invalid_image")
    if err.exit_code == ExitCode.USAGE:
        return ApiError(400, err.message)
    return ApiError(500, err.message, "server_error", err.kind)


def to_dsvl(error: dict, status: int | None) -> DsvlError:
    """The DsvlError an error body stands for (`status` None: an error chunk inside a stream)."""
    message = error.get("message")
    message = message if isinstance(message, str) and message else f"HTTP {status}"
    code = error.get("code")
    if code == CONTEXT_LENGTH:
        return ContextLengthError(message)
    if status in (400, 401) or code == MODEL_NOT_FOUND:  # the request's fault: exit 2
        return UsageError(message)
    err = of_kind(code, message) if isinstance(code, str) else None
    if err is None or err.exit_code == ExitCode.USAGE:  # a usage error has status 400; a 4xx is not one
        err = of_kind("generation_error", message)
    return err
