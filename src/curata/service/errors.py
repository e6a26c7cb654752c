"""One error shape for every failure: `{"error": {"code", "message", "field"}}`.

FastAPI's own errors (validation, 404, 405) are reshaped here too, and anything unexpected becomes a
500 with a fixed message: the trace goes to the server log, never into a response.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("curata.service")

_HTTP_CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
    406: "not_acceptable", 409: "conflict", 413: "request_too_large", 415: "unsupported_media_type",
    422: "invalid_request", 429: "too_many_requests", 503: "unavailable",
}


class ApiError(Exception):
    """A client-facing error: HTTP status, a short machine code, a human message, the field at fault."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.field, self.headers = status, code, message, field, headers


def error_body(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "field": field}}


def error_response(status: int, code: str, message: str, field: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(code, message, field), status_code=status, headers=headers)


def _field(loc: tuple[Any, ...] | list[Any]) -> str | None:
    """'query.k', 'body.images.0.base64': where the problem is, without FastAPI's internal prefixes."""
    parts = [str(p) for p in loc]
    return ".".join(parts) or None


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, _hide_paths(request, exc.message), exc.field, exc.headers)


def _hide_paths(request: Request, message: str) -> str:
    state = getattr(request.app.state, "curata", None)
    return hide_paths(message, state.workspace.root if state is not None else None)


# An absolute file path (not one of the API's own /v1/... paths): two or more segments after a slash.
_ABSOLUTE_PATH = re.compile(r"(?<![\w<>.:/])/(?!v1/)(?:[\w.+@~-]+/)+([\w.+@~-]*)")


def hide_paths(message: str, workspace: Path | None = None) -> str:
    """Library messages name files by their full path; clients learn nothing from the server's layout:
    the workspace becomes `<workspace>`, any other absolute path `<server>/<its file name>`."""
    if workspace is not None:
        for root in {str(workspace.resolve()), str(workspace)}:
            if root not in (".", "/"):
                message = message.replace(root, "<workspace>")
    return _ABSOLUTE_PATH.sub(lambda m: f"<server>/{m.group(1)}", message)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {}
    loc = first.get("loc", ())
    message = str(first.get("msg", "invalid request"))
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    # A body that is not JSON at all arrives as a json_invalid error: say so plainly.
    if first.get("type") == "json_invalid":
        return error_response(400, "invalid_json", f"the body is not valid JSON: {message}", _field(loc))
    return error_response(422, "invalid_request", message, _field(loc))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no such path: {request.url.path}"
    elif exc.status_code == 405:
        detail = f"method {request.method} is not allowed on {request.url.path}"
    return error_response(exc.status_code, code, detail, None, getattr(exc, "headers", None))


async def _too_deep(request: Request, exc: Exception) -> JSONResponse:
    # The body limit refuses deep JSON before parsing; this is the last line if anything recurses anyway.
    return error_response(400, "too_deep", "the request is nested too deeply to process")


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("internal error on %s %s", request.method, request.url.path)
    return error_response(500, "internal_error", "internal server error (details are in the server log)")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RecursionError, _too_deep)
    app.add_exception_handler(Exception, _unexpected)

