"""Errors as A1111's API returns them: `{"error", "detail", "body", "errors"}` with a real status code.

A1111 answers every failure with that JSON shape (A1111.md §8) but mostly with status 500, even for a
checkpoint name that does not exist. Here the status says whose fault it was: 422 for bad input
(the message names the field and the value, and says what would work), 404 for a checkpoint or job
that does not exist, 429 for a user of a shared server (`--multi-user`) who already has as many jobs
waiting as one user may, 507 when the server's disk is full, 500 only for other faults of the server
itself.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from modules.common.atomic_files import DiskFullError
from modules.common.validation import validation_problems
from modules.library.checkpoints import CheckpointNotFoundError
from modules.serving.jobs import QueueFullError

log = logging.getLogger(__name__)


class ApiError(Exception):
    """A failure a handler reports on purpose: `status_code` and a message that teaches."""

    def __init__(self, status_code: int, detail: str, *, name: str | None = None):
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail
        self.name = name or type(self).__name__


def bad_request(detail: str) -> ApiError:
    return ApiError(422, detail, name="ValueError")


def not_found(detail: str, name: str = "NotFoundError") -> ApiError:
    return ApiError(404, detail, name=name)


def error_body(name: str, detail: Any, errors: str, body: Any = "") -> dict[str, Any]:
    return {"error": name, "detail": detail, "body": body, "errors": errors}


def describe_validation_error(error: ValidationError | RequestValidationError) -> str:
    """One line per problem (`field: what is wrong (got value)`), joined for the API's `detail`."""
    return "; ".join(validation_problems(error)) or "invalid request"


def exception_to_api_error(exc: BaseException) -> ApiError:
    """How a failure raised by the core maps to a status: the core's ValueErrors (pydantic's
    ValidationError included) are bad input, a missing checkpoint is 404, anything else is a fault."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, CheckpointNotFoundError):
        return ApiError(404, str(exc), name=type(exc).__name__)
    if isinstance(exc, QueueFullError):  # the user's waiting jobs are at the limit: try again later
        return ApiError(429, f"{exc} (through the API: POST /sdapi/v1/jobs/{{id}}/interrupt; GET /sdapi/v1/jobs "
                             "lists yours)", name=type(exc).__name__)
    if isinstance(exc, DiskFullError):  # the server's disk, not the request: 507 Insufficient Storage
        return ApiError(507, str(exc), name=type(exc).__name__)
    if isinstance(exc, ValidationError):
        return ApiError(422, describe_validation_error(exc), name=type(exc).__name__)
    if isinstance(exc, ValueError):
        return ApiError(422, str(exc), name=type(exc).__name__)
    return ApiError(500, f"{type(exc).__name__}: {exc}", name=type(exc).__name__)


def install_error_handlers(app: FastAPI) -> None:
    """Every error from a route, and request validation, in A1111's JSON shape."""

    async def _mapped(request: Request, exc: Exception) -> JSONResponse:
        error = exception_to_api_error(exc)
        if not isinstance(exc, ApiError):
            # The core's ValueErrors are bad input; the traceback (debug level) shows where one came
            # from when it turns out to be Atelier's own fault.
            log.info("%s %s: %d %s: %s", request.method, request.url.path, error.status_code, error.name, error.detail)
            log.debug("%s %s raised", request.method, request.url.path, exc_info=exc)
        return JSONResponse(error_body(error.name, error.detail, error.detail), status_code=error.status_code)

    # Handled here, not by the catch-all below: Starlette re-raises what reaches the catch-all.
    for expected in (ApiError, CheckpointNotFoundError, ValueError, DiskFullError, QueueFullError):
        app.add_exception_handler(expected, _mapped)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        summary = describe_validation_error(exc)
        detail = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e.get("type", "")}
                  for e in exc.errors()]
        return JSONResponse(error_body(type(exc).__name__, detail, summary), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(error_body("HTTPException", exc.detail, f"{exc.status_code}: {exc.detail}"),
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _fault(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        error = exception_to_api_error(exc)
        return JSONResponse(error_body(error.name, error.detail, error.detail), status_code=error.status_code)
