"""The app's exception handlers: a database outage is a 503, a 422 says when the body was not JSON,
and a 400 says why the body could not be read."""

from __future__ import annotations

import sys
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException

from scheduler.safetext import clean, first_line, printable
from scheduler.store import DatabaseUnavailable

log = structlog.get_logger(__name__)


def install_exception_handlers(app: FastAPI) -> None:
    """Install both handlers on ``app`` (the routers raise; the app decides how that answers)."""
    app.add_exception_handler(SQLAlchemyError, database_down)
    app.add_exception_handler(DatabaseUnavailable, database_down)
    app.add_exception_handler(RequestValidationError, invalid_request)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, internal_error)


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    """An error no handler expected: a JSON 500 like every other error, naming nothing of the cause.

    Starlette's own answer is ``text/plain`` "Internal Server Error". The
    cause is logged (by uvicorn, with the traceback) and not sent: its text
    can carry what the caller must not see.
    """
    log.error("unexpected error while serving", path=request.url.path, error=type(exc).__name__)
    return JSONResponse({"detail": "internal error (logged on the server)"}, status_code=500)


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
    So does a body sent with no ``Content-Type`` at all, which FastAPI does not
    read as JSON either (a browser can send such a body cross-site without a
    preflight, so reading it would open the token-less loopback mode to CSRF).
    """
    errors = list(exc.errors())
    content_type = request.headers.get("content-type")
    has_body = request.method in ("POST", "PUT")
    sent_body = isinstance(exc.body, bytes | bytearray) and bool(exc.body)
    if has_body and content_type is None and sent_body:
        errors.insert(0, _content_type_error("and the request has none", None))
    elif has_body and content_type is not None and not _json_content_type(content_type):
        errors.insert(0, _content_type_error(f"not {content_type!r}", content_type))
    # ``clean`` because the inputs echoed back are the caller's: a JSON ``NaN`` or ``1e400`` parses
    # to a float the strict encoder refuses, and ``"\ud800"`` to a lone surrogate UTF-8 cannot
    # carry; either would turn the 422 into a 500.
    detail = clean(jsonable_encoder([_printable_input(e) for e in errors]))
    return JSONResponse({"detail": detail}, status_code=422)


def _content_type_error(why: str, content_type: str | None) -> dict[str, Any]:
    return {
        "type": "content_type",
        "loc": ["header", "content-type"],
        "msg": f"the body must be JSON sent with Content-Type: application/json, {why}",
        "input": content_type,
    }


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


async def http_error(request: Request, exc: HTTPException) -> Response:
    """FastAPI's answer, but a body it could not read says why instead of "error parsing the body".

    FastAPI turns anything but a JSON syntax error raised while reading the
    body into ``400 There was an error parsing the body``, the cause kept as
    ``__cause__``: bytes that are not UTF-8 (a ``charset=latin-1`` body, a
    gzip one), an integer past Python's 4300 digits, nesting deeper than the
    parser's recursion limit. The caller cannot fix what the answer does not name.
    """
    cause = exc.__cause__
    if exc.status_code == 400 and isinstance(cause, ValueError | RecursionError):
        return JSONResponse({"detail": _unreadable(request, cause)}, status_code=400)
    return await http_exception_handler(request, exc)


def _unreadable(request: Request, cause: ValueError | RecursionError) -> str:
    if isinstance(cause, UnicodeDecodeError):
        byte = cause.object[cause.start : cause.start + 1].hex()
        detail = f"the body is not UTF-8 (byte 0x{byte} at offset {cause.start}): send JSON encoded as UTF-8"
        charset = _charset(request.headers.get("content-type", ""))
        if charset not in (None, "utf-8", "utf8"):
            detail += f" (charset={printable(charset, 40)} is not supported)"
        encoding = request.headers.get("content-encoding")
        if encoding:
            detail += f", uncompressed (Content-Encoding {printable(encoding, 40)!r} is not supported)"
        return detail
    if isinstance(cause, RecursionError):
        return "the body's JSON is nested too deeply to be read"
    if "integer string conversion" in str(cause):
        return f"a number in the body has more than {sys.get_int_max_str_digits()} digits"
    return f"the body's JSON cannot be read: {first_line(cause, 120)}"


def _charset(content_type: str) -> str | None:
    for param in content_type.split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            return value.strip().strip('"').lower()
    return None
