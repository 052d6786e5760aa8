"""Every error leaves the server as OpenAI's body: {"error": {"message", "type", "param", "code"}}."""
from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger("gptserve.server")

_TYPE_BY_STATUS = {
    400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
    405: "invalid_request_error", 413: "invalid_request_error", 415: "invalid_request_error",
    408: "timeout", 429: "overloaded", 500: "server_error", 503: "service_unavailable",
}


def error_type_of(status_code: int) -> str:
    """The OpenAI error ``type`` this server gives a status."""
    return _TYPE_BY_STATUS.get(status_code, "server_error" if status_code >= 500 else "invalid_request_error")


class APIError(Exception):
    """An error with the HTTP status and OpenAI fields the client should see."""

    def __init__(self, status_code: int, message: str, *, param: str | None = None,
                 code: str | None = None, type: str | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.param = param
        self.code = code
        self.type = type or error_type_of(status_code)

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type,
                          "param": self.param, "code": self.code}}

    def response(self, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status_code, headers=headers)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def _param_of(loc: tuple) -> str | None:
    """("body", "messages", 0, "content") → "messages[0].content"; ("body",) → None."""
    parts = [p for p in loc if p != "body"]
    # drop pydantic's union-branch tags such as "str" or "list[int]" between field names
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif "[" in part or part in ("str", "int", "float", "bool", "function-after", "constrained-str"):
            continue
        else:
            out += f".{part}" if out else part
    return out or None


def validation_error_to_api_error(exc: RequestValidationError) -> APIError:
    errors = exc.errors()
    # the deepest error is the most specific one: for a union such as `str | list[Part]`, the
    # complaint from inside the list beats "Input should be a valid string"
    first = max(errors, key=lambda e: len(e.get("loc", ()))) if errors else {"loc": ("body",), "msg": "invalid request", "type": ""}
    if first.get("type") == "json_invalid":
        return bad_request(f"Invalid JSON body: {first.get('ctx', {}).get('error', 'decode error')}",
                           code="invalid_json")
    if tuple(first.get("loc", ())) == ("body",) and isinstance(first.get("input"), (bytes, type(None))):
        return bad_request("The request body must be a JSON object sent with "
                           "Content-Type: application/json.", code="invalid_json")
    param = _param_of(tuple(first.get("loc", ())))
    if first.get("type") in ("invalid_unicode", "json_too_deep"):  # server/body_checks.py names the place
        where = first["ctx"]["where"]
        return bad_request(f"Invalid request: {first['msg']}.", param=None if where == "the body" else where,
                           code="invalid_value")
    msg = first.get("msg", "invalid value")
    if param and param.startswith("prompt[") :  # four union branches: name them all instead
        return bad_request("'prompt' must be a string, a list of strings, a list of token ids "
                           "(non-negative integers) or a list of such lists, none of them empty.",
                           param="prompt", code="invalid_value")
    if first.get("type") == "missing":
        message = f"Missing required parameter: '{param}'."
    else:
        message = f"Invalid value for '{param}': {msg}." if param else f"Invalid request: {msg}."
    if len(errors) > 1:
        message += f" ({len(errors) - 1} more error{'s' if len(errors) > 2 else ''})"
    return bad_request(message, param=param, code="invalid_value" if first.get("type") != "missing" else "missing_required_parameter")


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error_to_api_error(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message = f"Unknown route: {request.method} {json.dumps(request.url.path)[1:-1]}"
        elif exc.status_code == 405:
            message = f"Method {request.method} is not allowed on this route."
        else:
            message = str(exc.detail)
        return APIError(exc.status_code, message).response(headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # the traceback goes to the log, never to the client
        logger.exception("unhandled error on %s %r", request.method, request.url.path)
        return APIError(500, "The server had an error while processing your request.").response()
