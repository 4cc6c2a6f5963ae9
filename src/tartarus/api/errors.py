"""One error shape for every failure: `{"error": {"type", "message"}}` (docs/api.md).

Engine exceptions carry their meaning in their class, so the mapping to a status lives here
once; routes raise `tartarus.errors` or `ApiError` and never build error bodies themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from tartarus.errors import (
    AdmissionDenied,
    AgentError,
    BuildError,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    RuntimeUnavailableError,
    TartarusError,
)

log = structlog.get_logger("tartarus.api")

STATUS_TYPES = {
    400: "invalid_request",
    401: "authentication",
    403: "permission_denied",
    404: "not_found",
    405: "invalid_request",
    409: "conflict",
    413: "payload_too_large",
    422: "invalid_request",
    429: "rate_limit",
}


class ApiError(Exception):
    """An HTTP error with the contract's type; raised by routes and dependencies."""

    def __init__(self, status: int, message: str, type_: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_ or STATUS_TYPES.get(status, "server_error")
        self.message = message


def error_body(type_: str, message: str) -> dict[str, Any]:
    return {"error": {"type": type_, "message": message}}


def error_response(status: int, type_: str, message: str) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(error_body(type_, message), status_code=status, headers=headers)


def engine_status(exc: TartarusError) -> tuple[int, str]:
    """The HTTP status and error type of an engine exception."""
    if isinstance(exc, NotFoundError):
        return 404, "not_found"
    if isinstance(exc, AdmissionDenied):
        return 403, "permission_denied"
    if isinstance(exc, InvalidRequestError):
        return 400, "invalid_request"
    if isinstance(exc, ConflictError):
        return 409, "conflict"
    if isinstance(exc, RuntimeUnavailableError):
        return 503, "server_error"
    if isinstance(exc, AgentError):
        return 502, "server_error"
    if isinstance(exc, BuildError):
        return 500, "server_error"
    return 500, "server_error"


def validation_message(errors: Sequence[Any]) -> str:
    """One line naming the first invalid field, e.g. `body.timeout: must be > 0`."""
    if not errors:
        return "invalid request"
    err = errors[0]
    loc = [str(p) for p in err.get("loc", ())]
    if len(loc) > 1 and loc[0] in ("body", "query", "path", "header"):
        loc = loc[1:]
    field = ".".join(loc) or "request"
    msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    return f"invalid {field}: {msg}"


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.type, exc.message)


async def _tartarus_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, TartarusError)
    status, type_ = engine_status(exc)
    if status >= 500:
        log.warning("request failed", error=str(exc), kind=type(exc).__name__)
    return error_response(status, type_, str(exc) or type(exc).__name__)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, (RequestValidationError, ValidationError))
    return error_response(422, "invalid_request", validation_message(exc.errors()))


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    type_ = STATUS_TYPES.get(exc.status_code, "server_error")
    message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    return error_response(exc.status_code, type_, message)


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return error_response(500, "server_error", f"internal error: {type(exc).__name__}")


def install(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(TartarusError, _tartarus_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(ValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
