"""Every shape an Opus answer comes in, read in one place (``opus-api.md``).

Endpoints in :mod:`.client` hand their answer here and get a plain value or one
:mod:`opus_runner.errors` exception back. What is read:

- bodies: JSON only, never an HTML page or an empty body; ``NaN``/``Infinity`` become null and
  JSON nested too deeply to parse is refused (:mod:`opus_runner.jsontext`);
- error bodies: NestJS ``{statusCode, message, error}`` (``message`` a string or a list of
  constraint failures), ``detail``/``errorMessage``/``msg``, object-store XML; the server's own
  words are quoted in the error, one line, secrets masked (:func:`server_message`);
- job ids: numeric strings live, a JSON number kept as its digits, other deployments' tokens
  (:func:`job_id_of`); statuses in every spelling (``IN PROGRESS`` -> ``IN_PROGRESS``);
- execute: a refusal inside a 2xx body (inner ``statusCode``, ``error``, ``success: false``);
- the audit, the versions list, upload and download slots, results (:mod:`opus_runner.results`,
  shared with the download output).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from .. import jsontext, redact
from ..errors import ApiError, AuthError, ExecuteRefused, NotFoundError
from ..messages import one_line
from ..models import normalise_status
from ..results import ResultsData, parse_results
from ..urls import display_url

HTML_MESSAGE = "the server answered with an HTML page instead of JSON"
EMPTY_MESSAGE = "the server answered with an empty body"


@dataclass
class ExecuteOutcome:
    """What ``POST /job/execute`` led to.

    ``confirmed`` is True when the server answered success; False when the answer was lost and
    the outcome was resolved by reading the job's ``status`` (then set, normalised).
    """

    job_id: str
    confirmed: bool
    status: str | None
    message: str = ""


def _as_int(value: Any, default: int = 0) -> int:
    if isinstance(value, bool):
        return default
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return default


def _node_name(node: Any) -> str:
    if isinstance(node, Mapping):
        for key in ("name", "node_name", "id", "node_id"):
            if node.get(key):
                return str(node[key])
        return json.dumps(node, sort_keys=True, default=str)
    return str(node)


@dataclass
class AuditProgress:
    """Node-level progress of a job, parsed from ``GET /job/{id}/audit``.

    Tolerant of missing keys and odd types: a partial audit still yields a usable progress line.
    """

    nb_nodes: int
    nb_executed: int
    running_node: str | None
    failed_nodes: list[str]
    raw: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_raw(cls, body: Mapping[str, Any] | Any) -> AuditProgress:
        """Read an audit body; missing or malformed fields fall back to counting what is there."""
        data: dict[str, Any] = dict(body) if isinstance(body, Mapping) else {}
        executed = data.get("executed_nodes")
        executed_list = list(executed) if isinstance(executed, list) else []
        remaining = data.get("remaining_nodes_to_execute")
        remaining_list = list(remaining) if isinstance(remaining, list) else []
        failed = data.get("failed_nodes")
        failed_nodes = [_node_name(n) for n in failed] if isinstance(failed, list) else []

        running_raw = data.get("running_node")
        running = _node_name(running_raw).strip() if running_raw else ""
        running_node = running or None

        nb_executed = _as_int(data.get("nb_executed_nodes"), len(executed_list))
        nb_nodes = _as_int(data.get("nb_nodes"), 0)
        if nb_nodes <= 0:
            # No total given: count what the audit lists, so "node n of m" still makes sense.
            per_node = data.get("audit")
            per_node = (
                per_node.get("nodes_execution_data") if isinstance(per_node, Mapping) else None
            )
            listed = nb_executed + len(remaining_list) + (1 if running_node else 0)
            nb_nodes = max(listed, len(per_node) if isinstance(per_node, Mapping) else 0)
        return cls(
            nb_nodes=nb_nodes,
            nb_executed=nb_executed,
            running_node=running_node,
            failed_nodes=failed_nodes,
            raw=data,
        )


# --------------------------------------------------------------------------------------------
# The server's words


#: The longest server message quoted in an error.
MESSAGE_LIMIT = 300


def _looks_html(response: httpx.Response, text: str) -> bool:
    ctype = response.headers.get("content-type", "").lower()
    head = text.lstrip()[:15].lower()
    return "html" in ctype or head.startswith("<!doctype") or head.startswith("<html")


_XML_MESSAGE = re.compile(r"<Message>(.*?)</Message>", re.S | re.I)


def _message_from_json(body: Any) -> str | None:
    if isinstance(body, str):
        return body.strip() or None
    if not isinstance(body, Mapping):
        return None
    message = body.get("message")
    if isinstance(message, str) and message.strip():
        return message.strip()
    if isinstance(message, list) and message:
        # NestJS validation errors: one string per failed constraint.
        return "; ".join(m if isinstance(m, str) else json.dumps(m, default=str) for m in message)
    error = body.get("error")
    if isinstance(error, str) and error.strip():
        return error.strip()
    if isinstance(error, Mapping):
        return _message_from_json(error)
    for key in ("detail", "errorMessage", "msg"):
        value = body.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def server_message(response: httpx.Response) -> str:
    """The server's own words in ``response``, one line, with secrets masked.

    ``message`` (a string, or a NestJS list joined with ``; ``), else ``error``; an HTML page or
    an empty body is named as such rather than dumped.
    """
    try:
        text = response.text
    except (UnicodeDecodeError, httpx.ResponseNotRead):
        text = ""
    if not text.strip():
        return EMPTY_MESSAGE
    if _looks_html(response, text):
        return HTML_MESSAGE
    try:
        body = jsontext.loads(text)
    except RecursionError:
        return "the server answered with JSON nested too deeply to read"
    except ValueError:
        # Object stores answer in XML (<Error><Message>...</Message></Error>).
        match = _XML_MESSAGE.search(text)
        found = match.group(1) if match else text
        return one_line(found, MESSAGE_LIMIT)
    message = _message_from_json(body)
    if message is None:
        message = json.dumps(body, default=str)
    return one_line(message, MESSAGE_LIMIT)


def route_missing(response: httpx.Response) -> bool:
    """Whether a 404 says the route itself does not exist (NestJS's ``Cannot GET /path``, or a
    gateway's page), rather than that the thing it names is unknown."""
    message = server_message(response)
    return message.startswith("Cannot ") or message in (HTML_MESSAGE, EMPTY_MESSAGE)


def status_reason(response: httpx.Response) -> str:
    """Why an answer is worth another try, as a retry line shows it."""
    if response.status_code == 429:
        hint = "" if response.headers.get("retry-after") else ", no Retry-After"
        return f"rate limited (HTTP 429{hint})"
    return f"HTTP {response.status_code}"


def is_permanent(response: httpx.Response) -> bool:
    """A 5xx that will not go away: retrying only delays what follows."""
    # The removed v1 route answers 500 "no longer supported": retrying only delays the fallback.
    if response.status_code != 500:
        return False
    return "no longer supported" in server_message(response).lower()


def error_from_response(
    response: httpx.Response,
    *,
    method: str,
    endpoint: str,
    subject: str | None = None,
    job_id: str | None = None,
    api: bool = True,
    workspace: str | None = None,
) -> ApiError:
    """Map an unsuccessful answer to the matching :class:`~opus_runner.errors.ApiError`.

    ``subject`` ("workflow X", "job X") names what a 404 was about; ``workspace`` the workspace
    a 403 was about. ``api=False`` is for answers from somewhere other than the Opus API (a
    presigned storage URL), where a 401/403 says nothing about the service key.
    """
    status = response.status_code
    message = server_message(response)
    common: dict[str, Any] = {
        "status_code": status,
        "method": method,
        "endpoint": endpoint,
        "job_id": job_id,
    }
    if api and "no auth cookie" in message.lower():
        return AuthError(
            f'this endpoint does not accept service keys (the server said "{message}"): it '
            "only works from a signed-in browser session, so opus-runner cannot call it",
            **common,
        )
    if api and status == 401:
        return AuthError(
            f"the service key was rejected (HTTP 401: {message}); check OPUS_SERVICE_KEY (keys "
            "expire: generate a new one under My Organization > API Keys)",
            **common,
        )
    if api and status == 403:
        # 403 is about permission, not the key (opus-api.md section 1).
        where = f"workspace {workspace}" if workspace else "the workspace this call touches"
        return AuthError(
            f"the service key's user lacks permission in {where} (HTTP 403: {message}); ask an "
            "admin of that workspace to add the user, or use a workspace the user belongs to",
            **common,
        )
    if not api and status in (401, 403):
        return ApiError(
            f"the file storage refused the upload ({message}); the presigned URL may have "
            "expired, so run again to get a fresh one",
            **common,
        )
    if status == 404:
        what = f"{subject} not found" if subject else "not found"
        return NotFoundError(f"{what} ({message})", **common)
    if 300 <= status < 400:
        where = response.headers.get("location", "")
        where = display_url(where) if where else "another address"
        return ApiError(
            f"the server redirected to {where}; opus-runner does not follow redirects with the "
            "service key, so check the base URL",
            **common,
        )
    return ApiError(message, **common)


# --------------------------------------------------------------------------------------------
# Bodies


def decode_json(
    response: httpx.Response, *, method: str, endpoint: str, job_id: str | None = None
) -> Any:
    """The JSON of a 2xx body, or an :class:`ApiError` naming what came instead."""
    text = response.text
    if not text.strip():
        raise ApiError(EMPTY_MESSAGE, method=method, endpoint=endpoint, job_id=job_id)
    if _looks_html(response, text):
        raise ApiError(HTML_MESSAGE, method=method, endpoint=endpoint, job_id=job_id)
    try:
        return jsontext.loads(text)
    except RecursionError:
        raise ApiError(
            "the server answered with JSON nested too deeply to read; no Opus answer is, so "
            "the server or a proxy in front of it is broken or hostile",
            method=method,
            endpoint=endpoint,
            job_id=job_id,
        ) from None
    except ValueError:
        raise ApiError(
            "the server answered with something that is not JSON: "
            + one_line(text, 200),
            method=method,
            endpoint=endpoint,
            job_id=job_id,
        ) from None


def decoded(
    response: httpx.Response,
    *,
    method: str,
    endpoint: str,
    subject: str | None = None,
    job_id: str | None = None,
    workspace: str | None = None,
) -> Any:
    """The decoded JSON of a final answer, or the mapped error of an unsuccessful one."""
    if not response.is_success:
        raise error_from_response(
            response,
            method=method,
            endpoint=endpoint,
            subject=subject,
            job_id=job_id,
            workspace=workspace,
        )
    return decode_json(response, method=method, endpoint=endpoint, job_id=job_id)


def expect_object(
    body: Any, method: str, endpoint: str, *, job_id: str | None = None
) -> dict[str, Any]:
    if not isinstance(body, Mapping):
        raise ApiError(
            f"expected a JSON object, the server answered with a JSON {type(body).__name__}",
            method=method,
            endpoint=endpoint,
            job_id=job_id,
        )
    return dict(body)


#: What a job id may be: live ids are numeric strings, other deployments UUID-like tokens.
#: It names files (``results/{{ job.id }}.json``) and URL paths, so nothing else is accepted.
_JOB_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")


def job_id_of(value: Any) -> str | None:
    """A job id as a string: live ids are numeric strings (``"72964"``); a JSON number is kept
    as its digits. None for anything that is not an id; ``ValueError`` for a string that is
    not a safe token (letters, digits, ``-``, ``_``, ``.``, not starting with a dot, at most
    128 characters), which would otherwise end up in paths."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, (int, str)):
        text = str(value).strip()
        if text and not _JOB_ID.fullmatch(text):
            shown = repr(text[:60]) + ("…" if len(text) > 60 else "")
            raise ValueError(f"{shown} is not a job id (expected letters, digits, '-', '_' or '.')")
        return text or None
    return None


# --------------------------------------------------------------------------------------------
# One reader per endpoint whose answer has more than one shape


def versions_of(body: Any, path: str) -> list[dict[str, Any]]:
    """A versions list: a bare list or an object holding it under ``versions`` (or
    ``data``/``items``)."""
    items: Any = body
    if isinstance(body, Mapping):
        items = next(
            (body[k] for k in ("versions", "data", "items") if isinstance(body.get(k), list)),
            None,
        )
    if not isinstance(items, list):
        raise ApiError(
            "the versions list has an unexpected shape (no list of versions in it)",
            method="GET",
            endpoint=path,
        )
    return [dict(v) for v in items if isinstance(v, Mapping)]


def initiated_job_id(data: Any, *, field: str = "jobExecutionId", endpoint: str = "/job/initiate") -> str:
    """The new job's id in an initiate answer (``jobExecutionId``; v1's ``caseId``), as a str."""
    try:
        job_id = job_id_of(data.get(field) if isinstance(data, Mapping) else None)
    except ValueError as exc:
        raise ApiError(
            f"the answer's {field} {exc}, so the job is not followed",
            method="POST",
            endpoint=endpoint,
        ) from None
    if job_id is None:
        raise ApiError(
            f"the answer has no {field}, so the job cannot be followed",
            method="POST",
            endpoint=endpoint,
        )
    return job_id


def upload_slot(data: Any, original_name: str | None, *, endpoint: str = "/job/file/upload") -> tuple[str, str]:
    """``(presignedUrl, fileUrl)`` of an upload-slot answer (both dialects name them alike)."""
    presigned = data.get("presignedUrl") if isinstance(data, Mapping) else None
    file_url = data.get("fileUrl") if isinstance(data, Mapping) else None
    if not isinstance(presigned, str) or not isinstance(file_url, str) or not presigned:
        raise ApiError(
            f"the answer for {original_name!r} lacks presignedUrl or fileUrl",
            method="POST",
            endpoint=endpoint,
        )
    return presigned, file_url


def download_link(body: Any, file_url: str, path: str) -> dict[str, Any]:
    """A ``POST /job/file/download`` answer, which must hold a ``presignedUrl``."""
    data = expect_object(body, "POST", path)
    if not isinstance(data.get("presignedUrl"), str) or not data["presignedUrl"]:
        raise ApiError(
            f"the answer for {display_url(file_url)} has no presignedUrl", method="POST", endpoint=path
        )
    return data


def status_of(body: Any) -> str:
    """A ``GET /job/{id}/status`` answer, normalised; never raises on an unknown spelling."""
    raw = body.get("status") if isinstance(body, Mapping) else body
    return normalise_status(raw)


def results_of(body: Any, path: str, job_id: str) -> ResultsData:
    """A ``GET /job/{id}/results`` answer, every published shape normalised."""
    if not isinstance(body, (Mapping, list)):
        raise ApiError(
            f"expected a JSON object or list, the server answered with a JSON {type(body).__name__}",
            method="GET",
            endpoint=path,
            job_id=job_id,
        )
    return parse_results(body)


def received_from(detail: Mapping[str, Any], status: str) -> tuple[bool | None, str]:
    """Whether a job's detail shows it got its payload: ``(True | False | None, status)``.

    Asked only while the status is ambiguous (PENDING, :data:`~opus_runner.models.AMBIGUOUS_STATUSES`):
    an ``input`` holding values means the payload arrived, an empty or null one that it did
    not; None when there is no ``input`` field at all.
    """
    if "input" not in detail and isinstance(detail.get("data"), Mapping):
        detail = dict(detail["data"])
    if "input" not in detail:
        return None, status
    return bool(detail["input"]), normalise_status(detail.get("status") or status)


def _refusal_in(data: Mapping[str, Any]) -> tuple[int | None, str] | None:
    """``(inner status, reason)`` when a 2xx execute body carries a failure, else None.

    Seen: ``{statusCode: 500, message: "Request failed with status code 422"}`` inside a 200;
    the DTO has an ``error`` field; ``success: false`` (opus-api.md section 5).
    """
    inner = data.get("statusCode")
    inner_code = _as_int(inner, 0) if not isinstance(inner, bool) else 0
    error = data.get("error")
    if inner_code >= 400:
        return inner_code, _message_from_json(data) or f"inner status {inner_code}"
    if isinstance(error, Mapping) or (isinstance(error, str) and error.strip()):
        return None, _message_from_json(error) or _message_from_json(data) or "an error was reported"
    if data.get("success") is False:
        return None, _message_from_json(data) or "no reason given"
    return None


def execute_answer(job_id: str, response: httpx.Response, path: str) -> ExecuteOutcome | str:
    """A clear answer to execute as an outcome (or a raised refusal); an unclear one as the
    reason it is unclear, for the job to settle (:mod:`.execute`)."""
    status = response.status_code
    if status == 429 or status >= 500:
        return f"{status_reason(response)}: {server_message(response)}"
    if not response.is_success:
        error = error_from_response(
            response, method="POST", endpoint=path, subject=f"job {job_id}", job_id=job_id
        )
        if isinstance(error, (AuthError, NotFoundError)):
            raise error
        raise ExecuteRefused(
            f"Opus refused to execute job {job_id} (HTTP {status}): {error.message}",
            status_code=status,
            method="POST",
            endpoint=path,
            job_id=job_id,
        )
    try:
        data = decode_json(response, method="POST", endpoint=path, job_id=job_id)
    except ApiError as exc:
        return exc.message  # a 2xx we cannot read: the server may well have taken it
    data = data if isinstance(data, Mapping) else {}
    refusal = _refusal_in(data)
    if refusal is not None:
        inner, why = refusal
        shown = f"HTTP {status}" + (f" carrying status {inner}" if inner else "")
        raise ExecuteRefused(
            f"Opus refused to execute job {job_id} ({shown}): {redact.mask(why)}",
            status_code=inner or status,
            method="POST",
            endpoint=path,
            job_id=job_id,
        )
    message = data.get("message")
    message = message if isinstance(message, str) else ""
    return ExecuteOutcome(job_id=job_id, confirmed=True, status=None, message=redact.mask(message))
