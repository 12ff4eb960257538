"""The sandbox's answers: JSON, NestJS error bodies, S3's XML errors, and reading a JSON body.

Every Opus error is a NestJS body ``{statusCode, message, error, timestamp, path}``; the routes
standing in for S3 (presigned PUT and GET) answer S3's XML errors instead.
"""

from __future__ import annotations

import contextvars
import json
import secrets
from collections.abc import Mapping
from datetime import datetime, timezone
from http import HTTPStatus
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

#: The request path (with its query) of the request being answered, for error bodies.
request_path: contextvars.ContextVar[str] = contextvars.ContextVar("sandbox_request_path", default="/")


def json_response(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return JSONResponse(body, status_code=status, headers=dict(headers) if headers else None)


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def iso(ts: float) -> str:
    """A wall-clock timestamp as the API writes it: ISO 8601 in UTC with a ``Z``."""
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat().replace("+00:00", "Z")


def phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:  # a valid but unnamed status such as 599
        return "Error"


def nest_error(status: int, message: Any, error: str | None = None) -> dict[str, Any]:
    """A NestJS error body for the request being answered."""
    return {
        "statusCode": status,
        "message": message,
        "error": error or phrase(status),
        "timestamp": _now_iso(),
        "path": request_path.get(),
    }


def error(
    status: int, message: Any, error: str | None = None, headers: Mapping[str, str] | None = None
) -> Response:
    return json_response(nest_error(status, message, error), status, headers)


def bad_request(problems: list[str]) -> Response:
    """A NestJS validation error: every problem listed."""
    return error(400, problems, "Bad Request")


def not_found(message: str) -> Response:
    return error(404, message, "Not Found")


def forbidden(workspace: str) -> Response:
    return error(
        403,
        f"Forbidden: the key's user lacks permission in workspace {workspace}",
        "Forbidden",
    )


def s3_error(status: int, code: str, message: str) -> Response:
    """An S3-style XML error, as the presigned URLs (S3, not Opus) answer."""
    request_id = secrets.token_hex(8).upper()
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        f"<RequestId>{request_id}</RequestId></Error>"
    )
    return Response(body, status_code=status, media_type="application/xml")


class BadBody(Exception):
    def __init__(self, response: Response) -> None:
        self.response = response


async def json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object; :class:`BadBody` carries the 400 to send otherwise."""
    raw = await request.body()
    try:
        data = json.loads(raw) if raw else None
    except (ValueError, UnicodeDecodeError):
        raise BadBody(bad_request(["the request body is not valid JSON"])) from None
    if not isinstance(data, dict):
        raise BadBody(bad_request(["the request body must be a JSON object"]))
    return data
