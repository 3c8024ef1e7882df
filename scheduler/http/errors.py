"""The app's exception handlers: a database outage is a 503, and a 422 says when the body was not JSON."""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError

from scheduler.safetext import clean, first_line, printable
from scheduler.store import DatabaseUnavailable

log = structlog.get_logger(__name__)


def install_exception_handlers(app: FastAPI) -> None:
    """Install both handlers on ``app`` (the routers raise; the app decides how that answers)."""
    app.add_exception_handler(SQLAlchemyError, database_down)
    app.add_exception_handler(DatabaseUnavailable, database_down)
    app.add_exception_handler(RequestValidationError, invalid_request)  # type: ignore[arg-type]


async def database_down(request: Request, exc: Exception) -> JSONResponse:
    """Any route whose database read fails answers 503 with the first line of the error, and logs it."""
    log.warning("database error while serving", path=request.url.path, error=first_line(exc))
    return JSONResponse({"detail": f"database unavailable: {first_line(exc)}"}, status_code=503)


async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422, with the reason first when the body was not sent as JSON.

    A body sent with another content type (``curl -d`` sends
    ``application/x-www-form-urlencoded``) is not parsed as JSON, and the
    errors that follow from it ("Input should be a valid dictionary") do not
    say why: the first error then names the header and the value to send.
    """
    errors = list(exc.errors())
    content_type = request.headers.get("content-type")
    has_body = request.method in ("POST", "PUT")
    if has_body and content_type is not None and not _json_content_type(content_type):
        errors.insert(
            0,
            {
                "type": "content_type",
                "loc": ["header", "content-type"],
                "msg": "the body must be JSON sent with Content-Type: application/json, "
                f"not {content_type!r}",
                "input": content_type,
            },
        )
    # ``clean`` because the inputs echoed back are the caller's: a JSON ``NaN`` or ``1e400`` parses
    # to a float the strict encoder refuses, and ``"\ud800"`` to a lone surrogate UTF-8 cannot
    # carry; either would turn the 422 into a 500.
    detail = clean(jsonable_encoder([_printable_input(e) for e in errors]))
    return JSONResponse({"detail": detail}, status_code=422)


def _printable_input(error: Any) -> Any:
    """The error with a ``bytes`` input decoded with replacement characters.

    A body that is not JSON reaches the errors as raw bytes; the encoder would
    decode them strictly and fail (a 500) on bytes that are not UTF-8.
    """
    value = error.get("input") if isinstance(error, dict) else None
    if isinstance(value, bytes | bytearray):
        return {**error, "input": printable(bytes(value).decode("utf-8", errors="replace"))}
    return error


def _json_content_type(value: str) -> bool:
    media = value.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))
