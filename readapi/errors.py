"""The error answers of docs/api.md §3: one exception type and the JSON body every error carries.

Handlers raise ``ApiError``; ``readapi/endpoint.py`` turns it, aiohttp's own HTTP exceptions
and anything unexpected into
``{"code", "key", "message", "details", "request_id"}``.
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson

_KEY_OF_STATUS = {
    400: "invalid_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    429: "rate_limited",
    503: "unavailable",
    500: "internal_error",
}


class ApiError(Exception):
    """An answer other than 2xx, with its snake_case key and human-readable texts."""

    def __init__(
        self,
        status: int,
        key: str,
        message: str,
        details: str = "",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.key = key
        self.message = message
        self.details = details
        self.headers = dict(headers or {})


def invalid_request(message: str, details: str = "") -> ApiError:
    return ApiError(400, "invalid_request", message, details)


def unauthorized(details: str) -> ApiError:
    return ApiError(401, "unauthorized", "Missing or invalid credentials.", details)


def not_found(what: str) -> ApiError:
    return ApiError(404, "not_found", f"{what} not found.", "")


def unavailable(details: str) -> ApiError:
    return ApiError(503, "unavailable", "A backing service is unavailable; retry later.", details)


def key_for_status(status: int) -> str:
    """The error key of an HTTP status that no handler chose (aiohttp's own answers)."""
    key = _KEY_OF_STATUS.get(status)
    if key is not None:
        return key
    return "internal_error" if status >= 500 else "invalid_request"


def error_body(status: int, key: str, message: str, details: str, request_id: str) -> bytes:
    return orjson.dumps({
        "code": status,
        "key": key,
        "message": message,
        "details": details,
        "request_id": request_id,
    })
