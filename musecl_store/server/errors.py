"""Every failure as a JSON ``{"error", "parameter"}`` with a 4xx (or 503, 500) status.

:class:`ApiError` is what a route raises for a request it refuses itself; the handlers
installed by :func:`install_handlers` turn the store's errors, FastAPI's validation errors
and unknown routes into the same body, never a traceback.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from musecl_store.errors import MuseclError
from musecl_store.search.filters import SearchError
from musecl_store.server.schemas import ErrorOut

log = logging.getLogger("musecl.server")

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "A request the store cannot answer as asked."},
    404: {"model": ErrorOut, "description": "An unknown city, region, model or regressor."},
    413: {"model": ErrorOut, "description": "The request body is too large."},
    422: {"model": ErrorOut, "description": "A parameter of the wrong type or out of range."},
    503: {"model": ErrorOut, "description": "The database is unavailable."},
}
WRITE_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    401: {"model": ErrorOut, "description": "A missing or wrong API key."},
    403: {"model": ErrorOut, "description": "Writes are disabled on this server."},
}


class ApiError(Exception):
    """A request the server refuses: its status, the message and the parameter at fault."""

    def __init__(self, status: int, message: str, parameter: str | None = None):
        super().__init__(message)
        self.status, self.message, self.parameter = status, message, parameter


def error_response(status: int, message: str, parameter: str | None = None) -> JSONResponse:
    """The one error body: ``{"error": message, "parameter": parameter}``."""
    return JSONResponse({"error": message, "parameter": parameter}, status_code=status)


async def _api_error(_r: Request, exc: ApiError) -> JSONResponse:
    return error_response(exc.status, exc.message, exc.parameter)


async def _invalid(_r: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("query", "path", "body")]
    return error_response(422, str(first.get("msg", "invalid request")), ".".join(loc) or None)


async def _http(_r: Request, exc: StarletteHTTPException) -> JSONResponse:
    return error_response(exc.status_code, str(exc.detail))


async def _search(r: Request, exc: SearchError) -> JSONResponse:
    if exc.parameter is None:  # a query the store cannot answer, not one bad value
        return await _bad(r, exc)
    return error_response(422, str(exc), exc.parameter)


async def _bad(_r: Request, exc: MuseclError) -> JSONResponse:
    return error_response(404 if isinstance(exc, LookupError) else 400, str(exc))


async def _value(_r: Request, exc: ValueError) -> JSONResponse:
    return error_response(400, str(exc))


async def _db_down(_r: Request, exc: OperationalError) -> JSONResponse:
    log.warning("database error: %s", exc)
    return error_response(503, "the database is unavailable; try again")


async def _bug(_r: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error")  # the traceback stays in the server's log
    return error_response(500, f"internal error ({type(exc).__name__}); see the server log")


HANDLERS: dict[type[Exception], Any] = {
    ApiError: _api_error,
    RequestValidationError: _invalid,
    StarletteHTTPException: _http,
    SearchError: _search,
    MuseclError: _bad,
    ValueError: _value,
    OperationalError: _db_down,
    Exception: _bug,
}


def install_handlers(app: FastAPI) -> None:
    """Answer every exception a request can raise with :func:`error_response`; the most
    specific handler of an exception's class wins."""
    for kind, handler in HANDLERS.items():
        app.add_exception_handler(kind, handler)
