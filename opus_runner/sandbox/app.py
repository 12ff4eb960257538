"""The sandbox's ASGI application: the Opus API of opus-api.md, computed from a fixture.

Each workflow speaks a dialect (fixture key ``dialect``):

- ``live`` (the default): the shapes clients saw on the live service (opus-api.md section 8):
  numeric-string job ids, ``GET /workflow/{uuid}`` answering the v2 graph, snake_case versions,
  201s, ``callbackUrl`` required, a wrong input ``type`` accepted and the job then FAILED at its
  Input node, presigned PUTs refusing a ``Content-Type``, output files downloadable only through
  ``POST /job/file/download``, ``PENDING`` before execute.
- ``documented``: the older documented shapes (``jobPayloadSchema``, camelCase versions, 200s,
  ``CREATED`` before execute, 400 for a wrong value on execute, 409 on a second execute).

Job status follows the clock (no background loop): ``PENDING`` (``CREATED`` when documented)
until execute, then ``PENDING`` briefly, the fixture's ``hold`` status (``WAITING`` or
``UNKNOWN``) if any, ``IN_PROGRESS`` until the workflow's duration has passed, then
``COMPLETED``, ``FAILED`` or ``stopped``. Outputs are rendered once, when execute is accepted.
The only timers are for callbacks, which are POSTed to loopback hosts only.

:class:`SandboxApp` wraps a Starlette router with an outer ASGI layer that names the route,
counts the call, injects faults (faults.py) and checks the service key, in that order, so a
faulted request never reaches a handler. Every error is a NestJS body
``{statusCode, message, error, timestamp, path}``, except on the routes standing in for S3
(presigned PUT and GET), which answer S3's XML errors.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import hashlib
import hmac
import itertools
import json
import logging
import math
import mimetypes
import re
import secrets
import struct
import time
import uuid
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from http import HTTPStatus
from typing import Any, cast
from urllib.parse import quote, unquote, urlsplit

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match, Route

from ..urls import is_loopback_host
from .faults import FaultRule, FaultRuleError, FaultSet, parse_rules
from .fixture import (
    UPLOAD_EXTENSIONS,
    Fixture,
    InputDef,
    OutputDef,
    OutputRenderError,
    VersionDef,
    WorkflowDef,
    is_uuid,
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

log = logging.getLogger("opus_runner.sandbox")

MAX_UPLOAD_BYTES = 10 * 1024 * 1024
#: How long a job stays PENDING after execute (less when the whole run is shorter).
PENDING_SECONDS = 0.05
#: How long after an accepted execute a job whose inputs do not fit fails at its Input node.
INPUT_FAILURE_SECONDS = 0.1
#: The first job id a server hands out (live jobs have numeric-string ids such as "72964").
FIRST_JOB_NUMBER = 72964
IN_PROGRESS_SPELLINGS = {"space": "IN PROGRESS", "underscore": "IN_PROGRESS", "lower": "in_progress"}
ACCESS_SCOPES = ("all", "user", "workspace", "organization")
JOB_SOURCES = ("api", "email-agent", "chat-agent", "scheduled", "manual", "agent", "opus-ai", "web-app")
ARCHIVE_STATUSES = ("all", "archivedOnly", "nonArchivedOnly")
CALLBACK_TIMEOUT = 5.0
DEFAULT_DOWNLOAD_EXPIRY = 3600
MIN_DOWNLOAD_EXPIRY, MAX_DOWNLOAD_EXPIRY = 60, 86400
DEFAULT_SEARCH_RESULTS = 25
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
#: Routes that need no service key: the S3 stand-ins (presigned PUT/GET, file paths) and the
#: /job/v2/initiate redirect.
_KEYLESS_ROUTES = frozenset({"put", "file", "media", "presigned_get", "initiate_v2"})
#: The request path (with its query) of the request being answered, for error bodies.
_request_path: contextvars.ContextVar[str] = contextvars.ContextVar("sandbox_request_path", default="/")


class InjectedConnectionDrop(Exception):
    """Raised inside the app to make uvicorn close the connection mid-response (an injected fault)."""


async def _buffered(receive: Receive) -> Receive:
    """Read the whole request body now; return a ``receive`` that hands it out again."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    body = b"".join(chunks)
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


@functools.lru_cache(maxsize=4)
def _gzip_bomb(size: int) -> bytes:
    """A gzip stream of ``size`` spaces (rounded up to whole MiB), about 1 KiB per MiB.

    Deflate blocks after a full flush do not refer back, so one compressed MiB is repeated
    instead of compressing gigabytes; only the CRC is computed over the whole.
    """
    chunk = b" " * (1 << 20)
    count = -(-size // len(chunk))
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    block = compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH)
    end = compressor.flush()
    crc = 0
    for _ in range(count):
        crc = zlib.crc32(chunk, crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    trailer = struct.pack("<II", crc, (count * len(chunk)) & 0xFFFFFFFF)
    return header + block * count + end + trailer


class _BodyTracker:
    """An ASGI ``receive`` that knows whether the request body was read to its end.

    A connection cut while request bytes are unread (or still arriving) is reset (RST) by the
    kernel, and the client may then see a reset instead of the incomplete response we intend;
    so the body is drained before a drop. Draining must stop at the body's end: one more
    ``receive()`` would wait for the client to disconnect.
    """

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self.done = False

    async def __call__(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.disconnect" or not message.get("more_body", False):
            self.done = True
        return message

    async def drain(self) -> None:
        while not self.done:
            await self()


# --- state --------------------------------------------------------------------------------------


@dataclass(eq=False)
class Job:
    """One job: its workflow version, timing, rendered outputs and flags."""

    id: str
    workflow: WorkflowDef
    version: VersionDef
    title: str
    description: str = ""
    created_at: float = field(default_factory=time.time)  # wall clock, for search results
    executed_at: float | None = None  # monotonic clock: the status is computed from it
    executed_wall: float | None = None  # wall clock of the execute, for the audit's start times
    callback_url: str | None = None
    outputs: list[tuple[OutputDef, Any]] = field(default_factory=list)
    error: str | None = None  # the failure message of a job that ends FAILED
    input_failed: bool = False  # True: it fails at its Input node (its inputs did not fit)
    input: dict[str, Any] | None = None  # the jobPayloadSchemaInstance of the execute that started it
    workspaces: str | None = None  # the ``workspaces`` initiate received
    source: str = "api"
    archived: bool = False
    callback_sent: bool = False
    callback_skipped: bool = False  # the callbackUrl is not on loopback: never delivered

    @property
    def live(self) -> bool:
        return self.workflow.live

    @property
    def stops(self) -> bool:
        return self.workflow.stop and self.error is None

    @property
    def hold_seconds(self) -> float:
        hold = self.workflow.hold
        return hold.seconds if hold is not None and not self.input_failed else 0.0

    @property
    def run_seconds(self) -> float:
        """Seconds from execute to the terminal status."""
        if self.input_failed:
            return min(self.workflow.duration, INPUT_FAILURE_SECONDS)
        return self.workflow.duration + self.hold_seconds

    @property
    def pending_seconds(self) -> float:
        return min(PENDING_SECONDS, self.run_seconds)

    def phase(self, now: float) -> str:
        """``initiated``, ``pending``, ``held``, ``running``, ``completed``, ``failed`` or ``stopped``."""
        if self.executed_at is None:
            return "initiated"
        elapsed = now - self.executed_at
        if elapsed >= self.run_seconds:
            if self.error is not None:
                return "failed"
            return "stopped" if self.stops else "completed"
        if elapsed < self.pending_seconds:
            return "pending"
        if elapsed < self.pending_seconds + self.hold_seconds:
            return "held"
        return "running"

    def status(self, now: float) -> str:
        """The status as the API spells it for this workflow."""
        phase = self.phase(now)
        if phase == "initiated":
            return "PENDING" if self.live else "CREATED"
        if phase == "held":
            assert self.workflow.hold is not None
            return self.workflow.hold.status
        if phase == "running":
            return IN_PROGRESS_SPELLINGS[self.workflow.status_spelling]
        if phase == "stopped":
            return "stopped"
        return phase.upper()

    def is_terminal(self, now: float) -> bool:
        return self.phase(now) in ("completed", "failed", "stopped")

    def work_elapsed(self, now: float) -> float:
        """Seconds of work done at ``now``: time since execute, without the hold."""
        if self.executed_at is None:
            return 0.0
        elapsed = max(0.0, now - self.executed_at)
        pending, hold = self.pending_seconds, self.hold_seconds
        if elapsed < pending:
            return elapsed
        if elapsed < pending + hold:
            return pending
        return elapsed - hold

    @property
    def ends_at(self) -> float | None:
        return None if self.executed_at is None else self.executed_at + self.run_seconds


@dataclass(frozen=True)
class UploadSlot:
    """What ``POST /job/file/upload`` registered for one token.

    ``original_name``, ``extension``, ``workflow_id``, ``workspace_id`` and ``access_scope`` are
    what the client sent (None when omitted); ``name`` is the name the file URL carries,
    ``workspace`` the workspace the file lives in, ``path`` the file URL's path.
    """

    original_name: str | None
    extension: str
    workflow_id: str | None = None
    workspace_id: str | None = None
    access_scope: str | None = None
    name: str = ""
    workspace: str = ""
    dialect: str = "live"
    path: str = ""

    @property
    def scope(self) -> str:
        """The access scope in effect: omitted means ``unlisted``."""
        return self.access_scope or "unlisted"

    @property
    def file_type(self) -> str:
        """``PDF`` for ``.pdf``."""
        return self.extension.lstrip(".").upper()


@dataclass(frozen=True)
class StoredFile:
    """A file the sandbox produced as a job output."""

    name: str
    data: bytes
    workspace: str = ""
    path: str = ""


@dataclass(frozen=True)
class DownloadLink:
    """A presigned download URL handed out by ``POST /job/file/download``."""

    file_token: str
    name: str
    expires_at: float  # monotonic


class SandboxState:
    """Everything the sandbox saw and did, for tests to inspect (in-process or ``/_sandbox/stats``).

    ``requests`` counts calls per ``(method, route name)``, faulted or not; ``executes`` counts
    execute calls a handler processed per job id (a resent execute shows as 2); ``payloads`` holds
    the execute body that started the job (or the last one refused, while none started it) and
    ``payload_history`` every execute body in order; ``max_active_jobs`` is the most jobs at one
    time that were initiated and whose terminal status or results the client had not read yet.
    ``key_sent_to_presigned`` counts presigned PUTs and GETs that carried the service key,
    ``content_type_sent_to_presigned`` the live presigned PUTs refused for a ``Content-Type``.
    ``callbacks_skipped`` counts jobs whose callbackUrl is not on loopback (never POSTed).
    """

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, str]] = Counter()
        self.executes: Counter[str] = Counter()
        self.payloads: dict[str, dict[str, Any]] = {}
        self.payload_history: dict[str, list[dict[str, Any]]] = {}
        self.uploads: dict[str, bytes] = {}
        self.upload_slots: dict[str, UploadSlot] = {}
        self.files: dict[str, StoredFile] = {}
        self.download_links: dict[str, DownloadLink] = {}
        self.jobs: dict[str, Job] = {}
        self.active_jobs: set[str] = set()
        self.max_active_jobs = 0
        self.key_sent_to_presigned = 0
        self.content_type_sent_to_presigned = 0
        self.callbacks_sent = 0
        self.callbacks_failed = 0
        self.callbacks_skipped = 0

    def reset(self) -> None:
        """Forget everything (in place, so references held by tests stay valid)."""
        self.requests.clear()
        self.executes.clear()
        self.payloads.clear()
        self.payload_history.clear()
        self.uploads.clear()
        self.upload_slots.clear()
        self.files.clear()
        self.download_links.clear()
        self.jobs.clear()
        self.active_jobs.clear()
        self.max_active_jobs = 0
        self.key_sent_to_presigned = 0
        self.content_type_sent_to_presigned = 0
        self.callbacks_sent = 0
        self.callbacks_failed = 0
        self.callbacks_skipped = 0

    def add_job(self, job: Job) -> None:
        self.jobs[job.id] = job
        self.active_jobs.add(job.id)
        if len(self.active_jobs) > self.max_active_jobs:
            self.max_active_jobs = len(self.active_jobs)

    def job_seen_finished(self, job_id: str) -> None:
        """The client read a terminal status or the results: the job no longer counts as active."""
        self.active_jobs.discard(job_id)

    def count(self, method: str, route: str) -> int:
        """How many ``method route`` calls arrived, e.g. ``state.count("POST", "execute")``."""
        return self.requests[(method, route)]

    def as_json(self) -> dict[str, Any]:
        """The state as JSON-ready data (what ``GET /_sandbox/stats`` returns)."""
        now = time.monotonic()
        return {
            "requests": {f"{m} {r}": n for (m, r), n in sorted(self.requests.items())},
            "executes": dict(self.executes),
            "payloads": dict(self.payloads),
            "uploads": {token: len(data) for token, data in self.uploads.items()},
            "upload_slots": {
                token: {
                    "originalName": slot.original_name,
                    "fileExtension": slot.extension,
                    "workflowId": slot.workflow_id,
                    "workspaceId": slot.workspace_id,
                    "accessScope": slot.access_scope,
                    "workspace": slot.workspace,
                }
                for token, slot in list(self.upload_slots.items())
            },
            "jobs": {
                job.id: {
                    "workflowId": job.workflow.id,
                    "version": job.version.number,
                    "title": job.title,
                    "status": job.status(now),
                    "archived": job.archived,
                    "error": job.error,
                }
                for job in list(self.jobs.values())
            },
            "active_jobs": len(self.active_jobs),
            "max_active_jobs": self.max_active_jobs,
            "key_sent_to_presigned": self.key_sent_to_presigned,
            "content_type_sent_to_presigned": self.content_type_sent_to_presigned,
            "callbacks_sent": self.callbacks_sent,
            "callbacks_failed": self.callbacks_failed,
            "callbacks_skipped": self.callbacks_skipped,
        }


# --- responses ----------------------------------------------------------------------------------


def _json(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return JSONResponse(body, status_code=status, headers=dict(headers) if headers else None)


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:  # a valid but unnamed status such as 599
        return "Error"


def nest_error(status: int, message: Any, error: str | None = None) -> dict[str, Any]:
    """A NestJS error body for the request being answered."""
    return {
        "statusCode": status,
        "message": message,
        "error": error or _phrase(status),
        "timestamp": _now_iso(),
        "path": _request_path.get(),
    }


def _error(
    status: int, message: Any, error: str | None = None, headers: Mapping[str, str] | None = None
) -> Response:
    return _json(nest_error(status, message, error), status, headers)


def _bad_request(problems: list[str]) -> Response:
    """A NestJS validation error: every problem listed."""
    return _error(400, problems, "Bad Request")


def _not_found(message: str) -> Response:
    return _error(404, message, "Not Found")


def _forbidden(workspace: str) -> Response:
    return _error(
        403,
        f"Forbidden: the key's user lacks permission in workspace {workspace}",
        "Forbidden",
    )


def _s3_error(status: int, code: str, message: str) -> Response:
    """An S3-style XML error, as the presigned URLs (S3, not Opus) answer."""
    request_id = secrets.token_hex(8).upper()
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        f"<RequestId>{request_id}</RequestId></Error>"
    )
    return Response(body, status_code=status, media_type="application/xml")


class _BadBody(Exception):
    def __init__(self, response: Response) -> None:
        self.response = response


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        data = json.loads(raw) if raw else None
    except (ValueError, UnicodeDecodeError):
        raise _BadBody(_bad_request(["the request body is not valid JSON"])) from None
    if not isinstance(data, dict):
        raise _BadBody(_bad_request(["the request body must be a JSON object"]))
    return data


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _extension_of(name: str) -> str:
    """``"Q4.Report.PDF"`` -> ``"PDF"``; ``""`` when there is none."""
    base = name.rsplit("/", 1)[-1]
    return base.rsplit(".", 1)[-1].upper() if "." in base.strip(".") else ""


def _type_allowed(extension: str, allowed: tuple[str, ...]) -> bool:
    if not allowed:
        return True
    same = {"JPG": "JPEG"}
    ext = same.get(extension, extension)
    return any(same.get(a, a) == ext for a in allowed)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat().replace("+00:00", "Z")


def _is_url(value: Any) -> bool:
    """An absolute http(s) URL with a host (what NestJS's ``@IsUrl`` accepts, roughly)."""
    if not isinstance(value, str) or not value or any(c.isspace() for c in value):
        return False
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises for a malformed port
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _describes_files(definition: Any) -> bool:
    """True when a ``typeDefinition`` says the list's items are files."""
    if not isinstance(definition, Mapping):
        return False
    if definition.get("type") == "file":
        return True
    allowed = definition.get("allowed_types", definition.get("allowedTypes"))
    return isinstance(allowed, list) and any(
        isinstance(item, Mapping) and item.get("type") == "file" for item in allowed
    )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --- the application ----------------------------------------------------------------------------


class SandboxApp:
    """The sandbox as an ASGI application.

    ``base_url`` is what file URLs are built on; the server sets it once it knows its port
    (without it, the URL the request came in on is used).
    """

    def __init__(
        self,
        fixture: Fixture,
        *,
        key: str,
        state: SandboxState | None = None,
        faults: FaultSet | None = None,
        base_url: str | None = None,
    ) -> None:
        self.fixture = fixture
        self.state = state if state is not None else SandboxState()
        self.faults = faults if faults is not None else FaultSet()
        self.base_url = base_url.rstrip("/") if base_url else None
        self.workspaces = frozenset(w.workspace_id for w in fixture.workflows.values())
        self._key = key.encode("utf-8")
        self._next_job = FIRST_JOB_NUMBER
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._http: Any = None  # httpx.AsyncClient for callbacks, created on first use
        self._router = Starlette(
            routes=self._routes(),
            exception_handlers={404: self._http_error, 405: self._http_error},
            lifespan=self._lifespan,
        )

    def __repr__(self) -> str:
        return f"<SandboxApp {len(self.fixture.workflows)} workflows>"

    def _routes(self) -> list[Route]:
        return [
            Route("/workflow/{workflow_id}", self.get_workflow, methods=["GET"], name="workflow"),
            Route(
                "/reference-workflow/v2/workflow-object/{workflow_id}",
                self.get_workflow_object,
                methods=["GET"],
                name="workflow_object",
            ),
            Route(
                "/executor/workflow/{workflow_id}/versions",
                self.get_versions,
                methods=["GET"],
                name="versions",
            ),
            Route("/job/initiate", self.initiate, methods=["POST"], name="initiate"),
            Route("/job/v2/initiate", self.initiate_v2, methods=["POST"], name="initiate_v2"),
            Route("/job/file/upload", self.upload, methods=["POST"], name="upload"),
            Route("/job/file/download", self.download, methods=["POST"], name="download"),
            Route("/job/execute", self.execute, methods=["POST"], name="execute"),
            Route("/job/search", self.search, methods=["GET"], name="search"),
            Route("/job/{job_id}", self.job_detail, methods=["GET"], name="job"),
            Route("/job/{job_id}/status", self.job_status, methods=["GET"], name="status"),
            Route("/job/{job_id}/results", self.job_results, methods=["GET"], name="results"),
            Route("/job/{job_id}/audit", self.job_audit, methods=["GET"], name="audit"),
            Route("/job/{job_id}/archive", self.archive, methods=["POST", "DELETE"], name="archive"),
            Route("/job/{job_id}/delete", self.delete, methods=["DELETE"], name="delete"),
            Route("/_upload/{token}", self.put_upload, methods=["PUT"], name="put"),
            Route(
                "/_download/{token}/{name:path}", self.get_presigned, methods=["GET"], name="presigned_get"
            ),
            Route("/files/{token}/{name:path}", self.get_file, methods=["GET"], name="file"),
            Route("/media/{token}/{name:path}", self.get_media, methods=["GET"], name="media"),
            Route("/_sandbox/stats", self.sandbox_stats, methods=["GET"], name="_sandbox_stats"),
            Route("/_sandbox/reset", self.sandbox_reset, methods=["POST"], name="_sandbox_reset"),
            Route(
                "/_sandbox/faults",
                self.sandbox_faults,
                methods=["GET", "POST", "DELETE"],
                name="_sandbox_faults",
            ),
        ]

    # -- the outer ASGI layer --------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._router(scope, receive, send)
            return
        query = scope.get("query_string", b"").decode("latin-1")
        _request_path.set(scope.get("path", "/") + (f"?{query}" if query else ""))
        route = self._route_name(scope)
        if route is None or route.startswith("_sandbox"):
            await self._router(scope, receive, send)
            return
        method = scope["method"]
        self.state.requests[(method, route)] += 1
        rule = self.faults.pick(route, method)
        if rule is None:
            await self._process(scope, receive, send, route)
        elif rule.kind == "delay":
            # The request is taken in whole first, then held: like a slow gateway or server, it
            # is processed late even if the client gave up waiting and closed the connection.
            replay = await _buffered(receive)
            await asyncio.sleep(rule.seconds)
            await self._process(scope, replay, send, route)
        elif rule.kind == "lose_response":
            await self._lose_response(scope, _BodyTracker(receive), send, route)
        elif rule.kind == "inner_error":
            await self._inner_error(rule, scope, _BodyTracker(receive), send, route)
        elif rule.kind == "trickle":
            await self._trickle(rule, scope, _BodyTracker(receive), send, route)
        elif rule.kind == "nan":
            await self._nan(scope, _BodyTracker(receive), send, route)
        elif rule.kind in ("gzip_bomb", "deep_json"):
            await self._hostile_body(rule, scope, _BodyTracker(receive), send)
        else:
            await self._inject(rule, scope, _BodyTracker(receive), send)

    def _route_name(self, scope: Scope) -> str | None:
        for candidate in self._router.routes:
            match, _ = candidate.matches(scope)
            if match is Match.FULL:
                return getattr(candidate, "name", None)
        return None

    async def _process(self, scope: Scope, receive: Receive, send: Send, route: str) -> None:
        if route not in _KEYLESS_ROUTES:
            problem = self._key_problem(scope)
            if problem:
                await _error(401, problem, "Unauthorized")(scope, receive, send)
                return
        await self._router(scope, receive, send)

    def _key_problem(self, scope: Scope) -> str | None:
        for name, value in scope["headers"]:
            if name == b"x-service-key":
                return None if hmac.compare_digest(value, self._key) else "Invalid or expired API key"
        return "API key is required"

    async def _inject(self, rule: FaultRule, scope: Scope, receive: _BodyTracker, send: Send) -> None:
        if rule.process and rule.kind in ("status", "rate_limit"):
            route = self._route_name(scope) or ""
            await self._capture(scope, receive, route)  # done for real; the gateway's answer wins
        if rule.kind == "drop":
            await receive.drain()
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"64")],
                }
            )
            raise InjectedConnectionDrop("connection dropped by an injected fault")
        status = 429 if rule.kind == "rate_limit" else rule.status
        headers = {}
        if rule.kind == "rate_limit" and rule.retry_after is not None:
            headers["retry-after"] = rule.retry_after
        phrase = _phrase(status)
        if rule.body == "json":
            response: Response = _error(status, phrase, phrase, headers)
        elif rule.body == "html":
            html = (
                f"<html><head><title>{status} {phrase}</title></head><body>"
                f"<center><h1>{status} {phrase}</h1></center><hr><center>nginx</center></body></html>"
            )
            response = Response(html, status_code=status, headers=headers, media_type="text/html")
        else:
            response = Response(b"", status_code=status, headers=headers)
        await response(scope, receive, send)

    async def _capture(self, scope: Scope, receive: _BodyTracker, route: str) -> list[Message]:
        """Process the request for real and return the response messages instead of sending them."""
        captured: list[Message] = []

        async def capture(message: Message) -> None:
            captured.append(message)

        await self._process(scope, receive, capture, route)
        await receive.drain()
        return captured

    async def _lose_response(self, scope: Scope, receive: _BodyTracker, send: Send, route: str) -> None:
        """Process the request for real, then cut the connection before the answer is complete."""
        captured = await self._capture(scope, receive, route)
        start = next((m for m in captured if m["type"] == "http.response.start"), None)
        body = b"".join(m.get("body", b"") for m in captured if m["type"] == "http.response.body")
        headers = [(k, v) for k, v in (start or {}).get("headers", []) if k.lower() != b"content-length"]
        # Announce more bytes than will ever come, so the client cannot mistake it for an answer.
        headers.append((b"content-length", str(len(body) + 1).encode()))
        await send(
            {"type": "http.response.start", "status": start["status"] if start else 200, "headers": headers}
        )
        raise InjectedConnectionDrop("response lost by an injected fault")

    async def _inner_error(
        self, rule: FaultRule, scope: Scope, receive: _BodyTracker, send: Send, route: str
    ) -> None:
        """Answer a 2xx whose body carries a failure (opus-api.md section 5)."""
        if rule.process:
            await self._capture(scope, receive, route)  # the work is done, the answer says it failed
        else:
            await receive.drain()
        if rule.variant == "success_false":
            body: dict[str, Any] = {"success": False, "message": rule.message}
        elif rule.variant == "error_object":
            body = {"error": {"statusCode": rule.inner_status, "message": rule.message}}
        else:
            body = {"statusCode": rule.inner_status, "message": rule.message}
        await _json(body, rule.status)(scope, receive, send)

    async def _trickle(
        self, rule: FaultRule, scope: Scope, receive: _BodyTracker, send: Send, route: str
    ) -> None:
        """Process the request for real, then send the answer one byte every ``rule.seconds``."""
        captured = await self._capture(scope, receive, route)
        start = next((m for m in captured if m["type"] == "http.response.start"), None)
        body = b"".join(m.get("body", b"") for m in captured if m["type"] == "http.response.body")
        await send(start or {"type": "http.response.start", "status": 200, "headers": []})

        async def dribble() -> None:
            for index in range(len(body)):
                await asyncio.sleep(rule.seconds)
                await send({"type": "http.response.body", "body": body[index : index + 1], "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        # uvicorn drops writes to a closed connection silently: without watching for the
        # client leaving, a gone client would keep this request alive for len(body) ticks.
        dribbling = asyncio.ensure_future(dribble())
        leaving = asyncio.ensure_future(receive())
        try:
            await asyncio.wait({dribbling, leaving}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (dribbling, leaving):
                task.cancel()
            await asyncio.gather(dribbling, leaving, return_exceptions=True)

    async def _nan(self, scope: Scope, receive: _BodyTracker, send: Send, route: str) -> None:
        """Process the request for real; answer its 2xx JSON with NaN and infinities for numbers."""
        captured = await self._capture(scope, receive, route)
        start = next((m for m in captured if m["type"] == "http.response.start"), None)
        body = b"".join(m.get("body", b"") for m in captured if m["type"] == "http.response.body")
        status = start["status"] if start else 500
        try:
            data = json.loads(body) if 200 <= status < 300 else None
        except ValueError:
            data = None
        if data is None:
            # Nothing numeric to spoil: the real answer goes out unchanged.
            headers = [(k, v) for k, v in (start or {}).get("headers", [])]
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body, "more_body": False})
            return
        spoilers = itertools.cycle((math.nan, math.inf, -math.inf))

        def spoil(value: Any) -> Any:
            if isinstance(value, dict):
                return {k: spoil(v) for k, v in value.items()}
            if isinstance(value, list):
                return [spoil(v) for v in value]
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return next(spoilers)
            return value

        text = json.dumps(spoil(data))  # allow_nan (the default) writes the bare literals
        await Response(text, status_code=status, media_type="application/json")(scope, receive, send)

    async def _hostile_body(self, rule: FaultRule, scope: Scope, receive: _BodyTracker, send: Send) -> None:
        """Answer 200 with a gzip bomb or deeply nested JSON; the request is not processed."""
        await receive.drain()
        headers = {}
        if rule.kind == "gzip_bomb":
            body = await asyncio.to_thread(_gzip_bomb, rule.size)  # the CRC takes a second
            headers["content-encoding"] = "gzip"
        else:
            body = b"[" * rule.depth + b"]" * rule.depth
        await Response(body, status_code=200, headers=headers, media_type="application/json")(
            scope, receive, send
        )

    @asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            for handle in self._timers.values():
                handle.cancel()
            self._timers.clear()
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            if self._http is not None:
                await self._http.aclose()
                self._http = None

    async def _http_error(self, request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        if status == 405:
            return _error(405, f"Cannot {request.method} {request.url.path}", "Method Not Allowed")
        return _error(404, f"Cannot {request.method} {request.url.path}", "Not Found")

    # -- helpers ---------------------------------------------------------------------------------

    def _base(self, request: Request) -> str:
        return self.base_url or str(request.base_url).rstrip("/")

    def _new_job_id(self, workflow: WorkflowDef) -> str:
        if not workflow.live:
            return str(uuid.uuid4())
        number = self._next_job
        self._next_job += 1
        return str(number)

    def _workflow_or_error(self, workflow_id: Any, field_name: str = "workflowId") -> WorkflowDef | Response:
        """The workflow named by ``workflow_id``: 400 for a non-UUID, 404 for an unknown one."""
        if not is_uuid(workflow_id):
            return _bad_request([f"{field_name} must be a UUID"])
        workflow = self.fixture.workflows.get(str(workflow_id).lower())
        if workflow is None:
            return _not_found(f"Workflow {workflow_id} not found")
        return workflow

    def _unknown_workspaces(self, raw: str) -> list[str]:
        names = [part.strip() for part in raw.split(",") if part.strip()]
        return [name for name in names if name.lower() not in self.workspaces]

    def _resolve_version(
        self, workflow: WorkflowDef, number: Any, version_id: Any, *, field_name: str = "version"
    ) -> VersionDef | Response:
        """The pinned (or latest) version, or the error response to send (the uuid wins)."""
        if version_id not in (None, ""):
            if not isinstance(version_id, str):
                return _bad_request(["workflowVersionId must be a string"])
            found = workflow.find_version(version_id=version_id)
            if found is None:
                return _not_found(f"Version {version_id} of workflow {workflow.id} not found")
            return found
        if number not in (None, ""):
            if isinstance(number, str) and number.strip().isdigit():
                number = int(number)
            if not _is_int(number) or number < 1:
                return _bad_request([f"{field_name} must be a positive whole number"])
            found = workflow.find_version(number=number)
            if found is None:
                return _not_found(f"Version {number} of workflow {workflow.id} not found")
            return found
        return workflow.latest_version

    def _job_or_404(self, request: Request) -> Job | Response:
        job_id = request.path_params["job_id"]
        job = self.state.jobs.get(job_id)
        if job is None:
            return _not_found(f"Job {job_id} not found")
        return job

    def _created(self, job_or_workflow: Job | WorkflowDef | None) -> int:
        """201 (live, NestJS's default for a POST) or 200 (documented)."""
        workflow = job_or_workflow.workflow if isinstance(job_or_workflow, Job) else job_or_workflow
        return 200 if workflow is not None and not workflow.live else 201

    # -- workflow routes -------------------------------------------------------------------------

    def _workflow_and_version(self, request: Request) -> tuple[WorkflowDef, VersionDef] | Response:
        workflow = self._workflow_or_error(request.path_params["workflow_id"])
        if isinstance(workflow, Response):
            return workflow
        query = request.query_params
        version = self._resolve_version(workflow, query.get("version"), query.get("workflowVersionId"))
        if isinstance(version, Response):
            return version
        return workflow, version

    async def get_workflow(self, request: Request) -> Response:
        """``GET /workflow/{id}``: live, the v2 graph; documented, a description with ``jobPayloadSchema``."""
        found = self._workflow_and_version(request)
        if isinstance(found, Response):
            return found
        workflow, version = found
        if workflow.api == "v2-only":
            return _error(500, "V1 workflow details are no longer supported")
        if workflow.api == "v1-404":
            return _error(404, f"Cannot GET {request.url.path}", "Not Found")
        if workflow.live:
            return _json(live_graph(workflow, version))
        return _json(
            {
                "workflowId": workflow.id,
                "name": workflow.name,
                "description": workflow.description,
                "active": True,
                "workflowBlueprint": {
                    "nodes": [{"id": f"n-{i + 1}", "name": name} for i, name in enumerate(workflow.nodes)],
                    "edges": [
                        {"source": f"n-{i + 1}", "target": f"n-{i + 2}"}
                        for i in range(len(workflow.nodes) - 1)
                    ],
                },
                "jobPayloadSchema": {f.variable_name: f.schema_entry() for f in version.inputs},
                "version": version.number,
                "workflowVersionId": version.version_id,
            }
        )

    async def get_workflow_object(self, request: Request) -> Response:
        """``GET /reference-workflow/v2/workflow-object/{id}``: the workflow as a graph (every api mode)."""
        found = self._workflow_and_version(request)
        if isinstance(found, Response):
            return found
        workflow, version = found
        if workflow.live:
            return _json(live_graph(workflow, version))
        return _json(documented_graph(workflow, version))

    async def get_versions(self, request: Request) -> Response:
        """``GET /executor/workflow/{id}/versions``."""
        workflow = self._workflow_or_error(request.path_params["workflow_id"])
        if isinstance(workflow, Response):
            return workflow
        if not workflow.live:
            return _json(
                {
                    "versions": [
                        {
                            "versionNumber": n,
                            "workflowVersionId": v.version_id,
                            "active": n == workflow.latest,
                        }
                        for n, v in workflow.versions.items()
                    ]
                }
            )
        created = datetime(2026, 1, 1, tzinfo=timezone.utc)
        return _json(
            {
                "workflow_id": workflow.id,
                "name": workflow.name,
                "latest_version": workflow.latest,
                "versions": [
                    {
                        "workflow_version_id": v.version_id,
                        "version": n,
                        "status": "active" if n == workflow.latest else "inactive",
                        "major_version": n,
                        "minor_version": 0,
                        "version_label": f"v{n}.0",
                        "created_at": _iso((created + timedelta(days=n - 1)).timestamp()),
                        "change_description": "",
                    }
                    for n, v in sorted(workflow.versions.items(), reverse=True)
                ],
            }
        )

    # -- job routes ------------------------------------------------------------------------------

    async def initiate(self, request: Request) -> Response:
        """``POST /job/initiate``: create a job (PENDING live, CREATED documented)."""
        try:
            body = await _json_body(request)
        except _BadBody as bad:
            return bad.response
        problems = []
        field_name = "referenceEntityId" if body.get("referenceEntityId") else "workflowId"
        workflow_id = body.get(field_name)
        if not isinstance(workflow_id, str) or not workflow_id.strip():
            problems.append("workflowId should not be empty")
        elif not is_uuid(workflow_id):
            problems.append(f"{field_name} must be a UUID")
        title = body.get("title")
        if title is None or title == "":
            problems.append("title should not be empty")
        elif not isinstance(title, str):
            problems.append("title must be a string")
        for name in ("description", "refUserId", "webAppId", "workspaces"):
            value = body.get(name)
            if value is not None and not isinstance(value, str):
                problems.append(f"{name} must be a string")
        number = body.get("workflowVersionNumber")
        if number is not None and (not _is_int(number) or number < 1):
            problems.append("workflowVersionNumber must be a positive whole number")
        version_id = body.get("workflowVersionId")
        if version_id is not None and not isinstance(version_id, str):
            problems.append("workflowVersionId must be a string")
        source = body.get("source")
        if source is not None and source not in JOB_SOURCES:
            problems.append(f"source must be one of the following values: {', '.join(JOB_SOURCES)}")
        initial = body.get("initialInput")
        if initial is not None and not isinstance(initial, dict):
            problems.append("initialInput must be an object")
        if problems:
            return _bad_request(problems)
        workflow = self._workflow_or_error(workflow_id, field_name)
        if isinstance(workflow, Response):
            return workflow
        version = self._resolve_version(workflow, number, version_id, field_name="workflowVersionNumber")
        if isinstance(version, Response):
            return version
        workspaces = body.get("workspaces")
        if workspaces:
            unknown = self._unknown_workspaces(workspaces)
            if unknown:
                return _forbidden(unknown[0])
        job = Job(
            id=self._new_job_id(workflow),
            workflow=workflow,
            version=version,
            title=cast(str, title),
            description=body.get("description") or "",
            workspaces=workspaces or None,
            source=source or "api",
        )
        self.state.add_job(job)
        return _json({"jobExecutionId": job.id}, self._created(workflow))

    async def initiate_v2(self, request: Request) -> Response:
        """``POST /job/v2/initiate``: a permanent redirect to ``/job/initiate``."""
        return Response(b"", status_code=308, headers={"location": "/job/initiate"})

    async def upload(self, request: Request) -> Response:
        """``POST /job/file/upload``: register a file and hand out its presigned URL and file URL."""
        try:
            body = await _json_body(request)
        except _BadBody as bad:
            return bad.response
        workflow_id = body.get("workflowId")
        workspace_id = body.get("workspaceId")
        documented = None
        if isinstance(workflow_id, str) and is_uuid(workflow_id) and not workspace_id:
            named = self.fixture.workflows.get(workflow_id.lower())
            documented = named is not None and not named.live
        problems = []
        extension = body.get("fileExtension")
        if not isinstance(extension, str) or not extension.strip(".").strip():
            problems.append("fileExtension should not be empty")
        else:
            if not documented and not extension.startswith("."):
                extension = "." + extension  # live accepts the extension with or without its dot
            if extension.lower() not in UPLOAD_EXTENSIONS:
                problems.append(
                    f"fileExtension must be one of the following values: {', '.join(UPLOAD_EXTENSIONS)}"
                )
        original_name = body.get("originalName")
        if documented and (not isinstance(original_name, str) or not original_name.strip()):
            problems.append("originalName should not be empty")
        elif original_name is not None and (not isinstance(original_name, str) or not original_name.strip()):
            problems.append("originalName must be a non-empty string")
        scope = body.get("accessScope")
        if scope is not None and scope not in ACCESS_SCOPES:
            problems.append(f"accessScope must be one of the following values: {', '.join(ACCESS_SCOPES)}")
        if not workflow_id and not workspace_id:
            problems.append("workflowId or workspaceId must be provided")
        for name, value in (("workflowId", workflow_id), ("workspaceId", workspace_id)):
            if value is None:
                continue
            if not isinstance(value, str):
                problems.append(f"{name} must be a string")
            elif not documented and value and not is_uuid(value):
                problems.append(f"{name} must be a UUID")
        if problems:
            return _bad_request(problems)
        extension = cast(str, extension).lower()
        workflow: WorkflowDef | None = None
        if workspace_id:
            if workspace_id.lower() not in self.workspaces:
                return _forbidden(workspace_id)
            workspace = workspace_id.lower()
        else:
            found = self._workflow_or_error(workflow_id)
            if isinstance(found, Response):
                return found
            workflow = found
            workspace = workflow.workspace_id
        token = secrets.token_hex(16)
        name = original_name.strip() if isinstance(original_name, str) else f"upload-{token[:8]}{extension}"
        live = workflow is None or workflow.live
        path = f"/{'media' if live else 'files'}/{token}/{quote(name)}"
        self.state.upload_slots[token] = UploadSlot(
            original_name=original_name,
            extension=extension,
            workflow_id=workflow_id,
            workspace_id=workspace_id,
            access_scope=scope,
            name=name,
            workspace=workspace,
            dialect="live" if live else "documented",
            path=path,
        )
        return _json(
            {"presignedUrl": f"{self._base(request)}/_upload/{token}", "fileUrl": self._base(request) + path},
            201 if live else 200,
        )

    async def put_upload(self, request: Request) -> Response:
        """``PUT /_upload/{token}``: the presigned URL; stores the raw bytes (10 MB at most)."""
        token = request.path_params["token"]
        if "x-service-key" in request.headers:
            # A presigned URL goes to storage, not to Opus: a client must not send its key there.
            self.state.key_sent_to_presigned += 1
        slot = self.state.upload_slots.get(token)
        if slot is None:
            return _s3_error(404, "NoSuchUpload", "The presigned URL is unknown or has expired")
        live = slot.dialect == "live"
        if live and "content-type" in request.headers:
            # The URL was signed without a Content-Type: sending one breaks the signature.
            self.state.content_type_sent_to_presigned += 1
            await request.body()
            return _s3_error(
                403,
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided. "
                "Check your key and signing method. (This URL was signed without a Content-Type "
                "header; send none.)",
            )
        if live:
            too_big = _s3_error(413, "EntityTooLarge", "Your proposed upload exceeds the 10 MB limit")
        else:
            too_big = _json({"message": "File exceeds the 10 MB limit"}, 413)
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > MAX_UPLOAD_BYTES:
            return too_big
        chunks = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_UPLOAD_BYTES:
                return too_big
            chunks.append(chunk)
        data = b"".join(chunks)
        self.state.uploads[token] = data
        return Response(b"", status_code=200, headers={"etag": f'"{hashlib.md5(data).hexdigest()}"'})

    def _find_file(self, url: str, request: Request) -> tuple[str, str, bytes | None, str] | str | None:
        """``(token, name, data or None if never PUT, workspace)`` of one of our file URLs.

        A string says why an own URL names no file; None means the URL is not ours.
        """
        parts = urlsplit(url)
        if not self._is_own_url(parts, request):
            return None
        found = self._file_at(unquote(parts.path))
        return found if found is not None else f"{url} is not a file uploaded to this server"

    def _file_at(self, path: str) -> tuple[str, str, bytes | None, str] | None:
        """The file whose (unquoted) URL path is ``path``, as :meth:`_find_file` describes it."""
        segments = path.split("/", 3)
        if len(segments) != 4 or segments[1] not in ("files", "media"):
            return None
        token = segments[2]
        stored = self.state.files.get(token)
        if stored is not None and unquote(stored.path) == path:
            return token, stored.name, stored.data, stored.workspace
        slot = self.state.upload_slots.get(token)
        if slot is not None and unquote(slot.path) == path:
            return token, slot.name, self.state.uploads.get(token), slot.workspace
        return None

    async def get_file(self, request: Request) -> Response:
        """``GET /files/{token}/{name}``: a documented file's bytes (uploaded or an output)."""
        token, name = request.path_params["token"], request.path_params["name"]
        found = self._file_at(f"/files/{token}/{name}")
        if found is None or found[2] is None:
            return _json({"message": "File not found"}, 404)
        _, name, data, _ = found
        media_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        return Response(data, media_type=media_type)

    async def get_media(self, request: Request) -> Response:
        """``GET /media/...``: live file URLs are references, not downloads (opus-api.md section 4)."""
        return _error(404, f"Cannot GET {request.url.path}", "Not Found")

    async def download(self, request: Request) -> Response:
        """``POST /job/file/download {fileUrl, customExpiry | workspaceId}``: a presigned GET URL."""
        try:
            body = await _json_body(request)
        except _BadBody as bad:
            return bad.response
        problems = []
        file_url = body.get("fileUrl")
        if not _is_url(file_url):
            problems.append("fileUrl must be a URL address")
        expiry = body.get("customExpiry")
        if expiry is not None:
            if not _is_int(expiry):
                problems.append("customExpiry must be an integer number")
            elif expiry < MIN_DOWNLOAD_EXPIRY:
                problems.append(f"customExpiry must not be less than {MIN_DOWNLOAD_EXPIRY}")
            elif expiry > MAX_DOWNLOAD_EXPIRY:
                problems.append(f"customExpiry must not be greater than {MAX_DOWNLOAD_EXPIRY}")
        workspace_id = body.get("workspaceId")
        if workspace_id is not None and not isinstance(workspace_id, str):
            problems.append("workspaceId must be a string")
        if problems:
            return _bad_request(problems)
        if workspace_id and workspace_id.lower() not in self.workspaces:
            return _forbidden(workspace_id)
        found = self._find_file(cast(str, file_url), request)
        if not isinstance(found, tuple) or found[2] is None:
            return _not_found(f"File {file_url} not found")
        token, name, data, _ = found
        seconds = expiry if expiry is not None else DEFAULT_DOWNLOAD_EXPIRY
        link = secrets.token_hex(16)
        self.state.download_links[link] = DownloadLink(token, name, time.monotonic() + seconds)
        signature = hashlib.sha256(f"{link}:{seconds}".encode()).hexdigest()
        presigned = (
            f"{self._base(request)}/_download/{link}/{quote(name)}"
            f"?X-Amz-Expires={seconds}&X-Amz-Signature={signature}"
        )
        return _json(
            {
                "presignedUrl": presigned,
                "fileUrl": file_url,
                "contentType": mimetypes.guess_type(name)[0] or "application/octet-stream",
                "contentLength": len(cast(bytes, data)),
            },
            201,
        )

    async def get_presigned(self, request: Request) -> Response:
        """``GET /_download/{token}/{name}``: a presigned download URL (S3, so no key)."""
        if "x-service-key" in request.headers:
            self.state.key_sent_to_presigned += 1
        link = self.state.download_links.get(request.path_params["token"])
        if link is None:
            return _s3_error(404, "NoSuchKey", "The specified key does not exist.")
        if time.monotonic() > link.expires_at:
            return _s3_error(403, "AccessDenied", "Request has expired")
        stored = self.state.files.get(link.file_token)
        data = stored.data if stored is not None else self.state.uploads.get(link.file_token)
        if data is None:  # deleted by a reset
            return _s3_error(404, "NoSuchKey", "The specified key does not exist.")
        media_type = mimetypes.guess_type(link.name)[0] or "application/octet-stream"
        return Response(data, media_type=media_type)

    # -- execute ---------------------------------------------------------------------------------

    async def execute(self, request: Request) -> Response:
        """``POST /job/execute``: check the body like the real service, then start the job."""
        try:
            body = await _json_body(request)
        except _BadBody as bad:
            return bad.response
        job_id = body.get("jobExecutionId")
        if not isinstance(job_id, str) or not job_id:
            if job_id is None or job_id == "":
                return _bad_request(["jobExecutionId should not be empty"])
            return _bad_request(["jobExecutionId must be a string"])
        self.state.executes[job_id] += 1
        self.state.payload_history.setdefault(job_id, []).append(body)
        job = self.state.jobs.get(job_id)
        if job is None or job.live:
            return self._execute_live(job_id, job, body, request)
        return self._execute_documented(job, body, request)

    def _execute_live(self, job_id: str, job: Job | None, body: dict[str, Any], request: Request) -> Response:
        # What NestJS's validation pipe refuses before the handler runs.
        problems = []
        if not _is_url(body.get("callbackUrl")):
            problems.append("callbackUrl must be a URL address")
        instance = body.get("jobPayloadSchemaInstance")
        if not isinstance(instance, dict):
            problems.append("jobPayloadSchemaInstance must be an object")
        workspaces = body.get("workspaces")
        if workspaces is not None and not isinstance(workspaces, str):
            problems.append("workspaces must be a string")
        if problems:
            if job is not None and job.executed_at is None:
                self.state.payloads[job_id] = body
            return _bad_request(problems)
        if job is None:
            return _not_found(f"Job {job_id} not found")
        if job.executed_at is None:
            self.state.payloads[job_id] = body
        instance = cast(dict[str, Any], instance)
        problems = self._structural_problems(job, instance)
        if problems:
            return _bad_request(problems)
        if any(isinstance(entry.get("type"), (dict, list)) for entry in instance.values()):
            return _error(500, "Internal server error")
        if workspaces:
            unknown = self._unknown_workspaces(workspaces)
            if unknown:
                return _forbidden(unknown[0])
        accepted = _json(
            {"success": True, "jobExecutionId": job.id, "message": "Job execution has been started"}, 201
        )
        if job.executed_at is not None:
            # A second execute: the live answer is unknown, so it is accepted and changes nothing.
            return accepted
        failures = self._input_failures(job, instance, request)
        if failures:
            job.input_failed = True
            job.error = f"Node '{job.workflow.nodes[0]}' failed: " + "; ".join(failures)
        self._start(job, body, instance, request)
        return accepted

    def _execute_documented(self, job: Job, body: dict[str, Any], request: Request) -> Response:
        if job.executed_at is not None:
            return _error(409, f"Job {job.id} has already been executed", "Conflict")
        self.state.payloads[job.id] = body
        problems = self._documented_problems(job, body, request)
        if problems:
            return _bad_request(problems)
        self._start(job, body, body["jobPayloadSchemaInstance"], request)
        return _json({"success": True, "jobExecutionId": job.id, "message": "Job execution started"})

    def _start(self, job: Job, body: Mapping[str, Any], instance: dict[str, Any], request: Request) -> None:
        """Accept the execute: render the outputs (unless the job already fails) and start the clock."""
        values = {var: entry.get("value") for var, entry in instance.items()}
        context = {
            "inputs": {job.version.inputs_by_var[var].display_name: value for var, value in values.items()},
            "vars": values,
            "job": {"id": job.id, "title": job.title},
        }
        base = self._base(request)
        prefix = "media" if job.live else "files"

        def store(name: str, data: bytes) -> str:
            token = secrets.token_hex(16)
            path = f"/{prefix}/{token}/{quote(name)}"
            self.state.files[token] = StoredFile(
                name=name, data=data, workspace=job.workflow.workspace_id, path=path
            )
            return base + path

        if job.error is None:
            job.error = job.workflow.fail
        if job.error is None:
            try:
                job.outputs = job.version.render_outputs(context, store)
            except OutputRenderError as exc:
                # A broken fixture template fails this job, visibly, instead of the request.
                job.error = f"workflow {job.workflow.id}: {exc}"
        job.input = instance
        job.callback_url = body.get("callbackUrl") or None
        job.executed_at = time.monotonic()
        job.executed_wall = time.time()
        if job.callback_url:
            if is_loopback_host(urlsplit(job.callback_url).hostname):
                self._schedule_callback(job)
            else:
                # The network rule: the sandbox only ever talks to loopback.
                job.callback_skipped = True
                self.state.callbacks_skipped += 1

    def _structural_problems(self, job: Job, instance: Mapping[str, Any]) -> list[str]:
        """Live: what refuses an execute with 400 (the job does not start)."""
        problems: list[str] = []
        inputs = job.version.inputs_by_var
        for var, entry in instance.items():
            where = f"jobPayloadSchemaInstance.{var}"
            input_def = inputs.get(var)
            if input_def is None:
                known = ", ".join(inputs) or "none"
                problems.append(
                    f"{where} is not an input of workflow {job.workflow.id} version {job.version.number} "
                    f"(its inputs: {known})"
                )
                continue
            if not isinstance(entry, dict):
                problems.append(f"{where} must be an object with value and type")
                continue
            if entry.get("type") in (None, ""):
                problems.append(f"{where}.type should not be empty")
            display = entry.get("displayName")
            if display is not None and not isinstance(display, str):
                problems.append(f"{where}.displayName must be a string")
            if entry.get("value") is None and not input_def.nullable:
                problems.append(f"{where}.value ({input_def.display_name}) is required and must not be null")
        for var, input_def in inputs.items():
            if var not in instance and not input_def.nullable:
                problems.append(f"jobPayloadSchemaInstance.{var} ({input_def.display_name}) is required")
        return problems

    def _input_failures(self, job: Job, instance: Mapping[str, Any], request: Request) -> list[str]:
        """Live: what an accepted execute's Input node fails on, one message per input."""
        failures: list[str] = []
        for var, entry in instance.items():
            input_def = job.version.inputs_by_var[var]
            label = f"input {var} ({input_def.display_name})"
            sent, expected = entry.get("type"), input_def.wire_type
            if sent != expected:
                failures.append(
                    f"{label}: the workflow expects type {expected!r}, the request sent type {sent!r}"
                )
                continue
            value = entry.get("value")
            if value is None:
                continue  # a nullable input left empty
            if input_def.file_items:
                definition = entry.get("typeDefinition")
                if definition is None:
                    hint = (
                        " (found type_definition; the field is typeDefinition)"
                        if "type_definition" in entry
                        else ""
                    )
                    failures.append(
                        f"{label}: the files arrived as text: type 'array' needs a typeDefinition "
                        f"describing file items (typeDefinition missing){hint}"
                    )
                    continue
                if not _describes_files(definition):
                    failures.append(
                        f"{label}: the files arrived as text: its typeDefinition does not describe "
                        f"file items, found {_short(definition)}"
                    )
                    continue
            failures.extend(self._value_failures(job, input_def, value, label, request))
        return failures

    def _value_failures(
        self, job: Job, input_def: InputDef, value: Any, label: str, request: Request
    ) -> list[str]:
        kind = input_def.type
        found = f"found {type(value).__name__} {_short(value)}"
        if kind == "str" and not isinstance(value, str):
            return [f"{label}: expected a string, {found}"]
        if kind == "float" and (isinstance(value, bool) or not isinstance(value, (int, float))):
            return [f"{label}: expected a number (float), {found}"]
        if kind == "int" and not (_is_int(value) or (isinstance(value, float) and value.is_integer())):
            return [f"{label}: expected an integer (int), {found}"]
        if kind == "bool" and not isinstance(value, bool):
            return [f"{label}: expected a boolean (bool), {found}"]
        if kind == "date" and not _is_date(value):
            return [f"{label}: expected a date formatted YYYY-MM-DD, {found}"]
        if kind == "object" and not isinstance(value, dict):
            return [f"{label}: expected an object, {found}"]
        if kind == "array" and not isinstance(value, list):
            return [f"{label}: expected an array, {found}"]
        if kind == "json_string":
            if not isinstance(value, str):
                return [f"{label}: expected a JSON string (text that parses as JSON), {found}"]
            try:
                json.loads(value)
            except ValueError:
                return [
                    f"{label}: expected a JSON string, found text that does not parse as JSON: "
                    + _short(value)
                ]
        if kind == "file":
            problem = self._live_file_problem(job, input_def, value, request)
            return [f"{label}: {problem}"] if problem else []
        if kind == "array_files":
            if not isinstance(value, list):
                return [f"{label}: expected a list of file URLs, {found}"]
            failures = []
            for index, item in enumerate(value):
                problem = self._live_file_problem(job, input_def, item, request)
                if problem:
                    failures.append(f"{label}[{index}]: {problem}")
            return failures
        return []

    def _live_file_problem(self, job: Job, input_def: InputDef, url: Any, request: Request) -> str | None:
        if not _is_url(url):
            return f"expected a file URL from /job/file/upload, found {_short(url)}"
        extension = _extension_of(unquote(urlsplit(url).path))
        found = self._find_file(url, request)
        if isinstance(found, str):
            return f"the file was never uploaded: {found}"
        if found is not None:
            token, name, data, workspace = found
            if data is None:
                return f"the file {url} was registered by /job/file/upload but never PUT to its presigned URL"
            if workspace != job.workflow.workspace_id:
                return (
                    f"403 Forbidden reading {url}: the file is in workspace {workspace}, the workflow in "
                    f"workspace {job.workflow.workspace_id}; upload it with this workflow's workflowId "
                    "(or its workspaceId)"
                )
            slot = self.state.upload_slots.get(token)
            extension = slot.file_type if slot is not None else _extension_of(name)
        if not _type_allowed(extension, input_def.allowed_file_types):
            allowed = ", ".join(input_def.allowed_file_types)
            shown = f".{extension.lower()}" if extension else "no extension"
            return f"expected a file of type {allowed}, found {shown}"
        return None

    def _documented_problems(self, job: Job, body: Mapping[str, Any], request: Request) -> list[str]:
        """Documented: every problem of an execute body, as NestJS would list them (400)."""
        problems: list[str] = []
        instance = body.get("jobPayloadSchemaInstance")
        inputs = job.version.inputs_by_var
        if not isinstance(instance, dict):
            problems.append(
                "jobPayloadSchemaInstance must be an object mapping input variable names to {value, type}"
            )
            instance = {}
        # The shape of the body is checked as live; the documented service also judged types
        # and values at once (400) instead of failing the job at its Input node.
        problems.extend(self._structural_problems(job, instance))
        for var, entry in instance.items():
            input_def = inputs.get(var)
            if input_def is None or not isinstance(entry, dict):
                continue
            where = f"jobPayloadSchemaInstance.{var}"
            kind = entry.get("type")
            if kind not in (None, "") and kind != input_def.type:
                problems.append(
                    f"{where}.type must be {input_def.type!r} as the workflow declares, found {kind!r}"
                )
            value = entry.get("value")
            if value is not None:
                problems.extend(self._check_value(input_def, value, f"{where}.value", request))
        callback = body.get("callbackUrl")
        if callback not in (None, ""):
            problem = self._check_callback(callback)
            if problem:
                problems.append(problem)
        return problems

    def _check_value(self, input_def: InputDef, value: Any, where: str, request: Request) -> list[str]:
        kind = input_def.type
        if kind == "str" and not isinstance(value, str):
            return [f"{where} must be a string, found {type(value).__name__}"]
        if kind == "float" and (isinstance(value, bool) or not isinstance(value, (int, float))):
            return [f"{where} must be a number, found {type(value).__name__}"]
        if kind == "int" and not _is_int(value):
            return [f"{where} must be an integer, found {type(value).__name__}"]
        if kind == "bool" and not isinstance(value, bool):
            return [f"{where} must be a boolean, found {type(value).__name__}"]
        if kind == "date" and not _is_date(value):
            return [f"{where} must be a date formatted YYYY-MM-DD, found {value!r}"]
        if kind == "array" and not isinstance(value, list):
            return [f"{where} must be an array, found {type(value).__name__}"]
        if kind == "object" and not isinstance(value, dict):
            return [f"{where} must be an object, found {type(value).__name__}"]
        if kind == "json_string":
            try:
                json.loads(value) if isinstance(value, str) else None
            except ValueError:
                return [f"{where} must be a JSON string, found text that does not parse"]
            if not isinstance(value, str):
                return [f"{where} must be a JSON string, found {type(value).__name__}"]
        if kind == "file":
            return self._check_file_url(input_def, value, where, request)
        if kind == "array_files":
            if not isinstance(value, list):
                return [f"{where} must be an array of file URLs, found {type(value).__name__}"]
            problems = []
            for index, item in enumerate(value):
                problems.extend(self._check_file_url(input_def, item, f"{where}[{index}]", request))
            return problems
        return []

    def _check_file_url(self, input_def: InputDef, url: Any, where: str, request: Request) -> list[str]:
        if not isinstance(url, str) or not url:
            return [f"{where} must be a file URL (a string), found {type(url).__name__}"]
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            return [f"{where} must be a file URL from /job/file/upload or an http(s) URL, found {url!r}"]
        extension = _extension_of(unquote(parts.path))
        found = self._find_file(url, request)
        if isinstance(found, str):
            return [f"{where}: {found}"]
        if found is not None:
            token, name, data, _ = found
            if data is None:
                return [
                    f"{where}: the file {url} was registered by /job/file/upload "
                    "but never PUT to its presigned URL"
                ]
            slot = self.state.upload_slots.get(token)
            extension = slot.file_type if slot is not None else _extension_of(name)
        if not _type_allowed(extension, input_def.allowed_file_types):
            allowed = ", ".join(input_def.allowed_file_types)
            found_ext = f".{extension.lower()}" if extension else "no extension"
            return [f"{where} ({input_def.display_name}) must be a file of type {allowed}, found {found_ext}"]
        return []

    def _is_own_url(self, parts: Any, request: Request) -> bool:
        own = urlsplit(self._base(request))
        if parts.netloc == own.netloc:
            return True
        return is_loopback_host(parts.hostname) and is_loopback_host(own.hostname) and parts.port == own.port

    @staticmethod
    def _check_callback(url: Any) -> str | None:
        if not isinstance(url, str):
            return "callbackUrl must be a URL string"
        parts = urlsplit(url)
        if parts.scheme == "https" and parts.hostname:
            return None
        if parts.scheme == "http" and is_loopback_host(parts.hostname):
            return None  # the sandbox lets tests receive callbacks on a local port
        return f"callbackUrl must be an https URL (http only for loopback addresses), found {url!r}"

    # -- reading jobs ----------------------------------------------------------------------------

    async def job_status(self, request: Request) -> Response:
        """``GET /job/{id}/status``."""
        job = self._job_or_404(request)
        if isinstance(job, Response):
            return job
        now = time.monotonic()
        if job.is_terminal(now):
            self.state.job_seen_finished(job.id)
        return _json({"status": job.status(now)})

    def results_body(self, job: Job) -> Any:
        """The results of a finished job, in the shape its workflow uses (``results_shape``)."""
        if job.error is not None:
            return {"jobResultsPayloadSchema": {}, "error": job.error}
        if job.stops:
            return {"jobResultsPayloadSchema": {}}
        shape = job.workflow.results_shape
        if shape == "legacy":
            summary = next((v for out, v in job.outputs if out.type == "str"), "")
            return {
                "jobExecutionId": job.id,
                "status": "COMPLETED",
                "results": {
                    "summary": summary,
                    "outputFiles": [v for out, v in job.outputs if out.type == "file" and v],
                    "data": {out.name: v for out, v in job.outputs},
                },
            }
        if shape == "flat":
            return {"results": {out.name: {"value": v} for out, v in job.outputs}}
        if shape == "list":
            return [{out.name: v for out, v in job.outputs}]
        if shape == "none":
            return {}
        schema = {
            out.name: {"value": v, "type": out.type, "displayName": out.display_name}
            for out, v in job.outputs
        }
        if shape == "nested":
            return {"results": {"jobResultsPayloadSchema": schema}}
        return {"jobResultsPayloadSchema": schema}

    async def job_results(self, request: Request) -> Response:
        """``GET /job/{id}/results``: 400 until the job is finished."""
        job = self._job_or_404(request)
        if isinstance(job, Response):
            return job
        if not job.is_terminal(time.monotonic()):
            return _error(400, "Job is not completed yet", "Bad Request")
        self.state.job_seen_finished(job.id)
        return _json(self.results_body(job))

    async def job_audit(self, request: Request) -> Response:
        """``GET /job/{id}/audit``: node-level progress, proportional to the time elapsed."""
        job = self._job_or_404(request)
        if isinstance(job, Response):
            return job
        return _json(audit_body(job, time.monotonic()))

    async def job_detail(self, request: Request) -> Response:
        """``GET /job/{id}``: the job's detail; ``input`` is null until an execute was accepted."""
        job = self._job_or_404(request)
        if isinstance(job, Response):
            return job
        now = time.monotonic()
        terminal = job.is_terminal(now)
        return _json(
            {
                "jobExecutionId": job.id,
                "status": job.status(now),
                "input": job.input,
                "output": self.results_body(job) if terminal else None,
                "audit": audit_body(job, now),
                "title": job.title,
                "description": job.description,
                "createdAt": _iso(job.created_at),
                "workflow": {"id": job.workflow.id, "name": job.workflow.name},
                "workflowVersionId": job.version.version_id,
                "builderType": "v2" if job.live else "v1",
            }
        )

    async def search(self, request: Request) -> Response:
        """``GET /job/search?workflowId=&status=&workspaceIds=&archiveStatus=&offset=&maxResults=``."""
        query = request.query_params
        problems = []
        numbers = {}
        for name, default, low in (("offset", 0, 0), ("maxResults", DEFAULT_SEARCH_RESULTS, 1)):
            raw = query.get(name)
            if raw is None:
                numbers[name] = default
            elif raw.isdigit() and int(raw) >= low:
                numbers[name] = int(raw)
            else:
                problems.append(f"{name} must be a whole number of at least {low}")
        workflow_id = query.get("workflowId")
        if workflow_id and not is_uuid(workflow_id):
            problems.append("workflowId must be a UUID")
        archive = query.get("archiveStatus") or "all"
        if archive not in ARCHIVE_STATUSES:
            problems.append(
                f"archiveStatus must be one of the following values: {', '.join(ARCHIVE_STATUSES)}"
            )
        if problems:
            return _bad_request(problems)
        from ..models import normalise_status

        wanted = {normalise_status(s) for s in query.get("status", "").split(",") if s.strip()}
        spaces = {s.strip().lower() for s in query.get("workspaceIds", "").split(",") if s.strip()}
        now = time.monotonic()
        found = []
        for job in list(self.state.jobs.values()):
            if workflow_id and job.workflow.id != workflow_id.lower():
                continue
            if spaces and job.workflow.workspace_id not in spaces:
                continue
            if (archive == "archivedOnly" and not job.archived) or (
                archive == "nonArchivedOnly" and job.archived
            ):
                continue
            status = job.status(now)
            if wanted and normalise_status(status) not in wanted:
                continue
            found.append(
                {
                    "jobExecutionId": job.id,
                    "workflowId": job.workflow.id,
                    "title": job.title,
                    "description": job.description,
                    "status": status,
                    "createdAt": _iso(job.created_at),
                    "archived": job.archived,
                    "workflow": {
                        "id": job.workflow.id,
                        "name": job.workflow.name,
                        "description": job.workflow.description,
                    },
                }
            )
        offset, limit = numbers["offset"], numbers["maxResults"]
        return _json({"totalCount": len(found), "jobs": found[offset : offset + limit]})

    async def archive(self, request: Request) -> Response:
        """``POST /job/{id}/archive`` archives; ``DELETE`` un-archives."""
        job = self._job_or_404(request)
        if isinstance(job, Response):
            return job
        job.archived = request.method == "POST"
        status = self._created(job) if request.method == "POST" else 200
        return _json({"success": True, "jobExecutionId": job.id, "archived": job.archived}, status)

    async def delete(self, request: Request) -> Response:
        """``DELETE /job/{id}/delete``."""
        job = self._job_or_404(request)
        if isinstance(job, Response):
            return job
        self.state.jobs.pop(job.id, None)
        self.state.job_seen_finished(job.id)
        handle = self._timers.pop(job.id, None)
        if handle is not None:
            handle.cancel()
        return _json({"success": True, "jobExecutionId": job.id, "message": "Job deleted"})

    # -- callbacks -------------------------------------------------------------------------------

    def _schedule_callback(self, job: Job) -> None:
        loop = asyncio.get_running_loop()
        delay = max(0.0, (job.ends_at or 0.0) - time.monotonic())
        self._timers[job.id] = loop.call_later(delay, self._fire_callback, job)

    def _fire_callback(self, job: Job) -> None:
        self._timers.pop(job.id, None)
        task = asyncio.get_running_loop().create_task(self._send_callback(job))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_callback(self, job: Job) -> None:
        if job.callback_sent or not job.callback_url:
            return
        if not is_loopback_host(urlsplit(job.callback_url).hostname):  # pragma: no cover - never scheduled
            return
        job.callback_sent = True  # at most once, even if the POST fails
        body = {
            "jobExecutionId": job.id,
            "status": job.status(time.monotonic()),
            "results": self.results_body(job),
        }
        try:
            import httpx

            if self._http is None:
                self._http = httpx.AsyncClient(timeout=CALLBACK_TIMEOUT, follow_redirects=False)
            await self._http.post(job.callback_url, json=body)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a receiver's failure is the receiver's business
            self.state.callbacks_failed += 1
            log.debug("callback for job %s failed: %s", job.id, exc)
        else:
            self.state.callbacks_sent += 1

    # -- /_sandbox -------------------------------------------------------------------------------

    async def sandbox_stats(self, request: Request) -> Response:
        """``GET /_sandbox/stats``: the state as JSON, plus the fault rules and their counters."""
        return _json({**self.state.as_json(), "faults": self.faults.as_list()})

    async def sandbox_reset(self, request: Request) -> Response:
        """``POST /_sandbox/reset``: forget every job, upload and counter."""
        self.state.reset()
        return _json({"success": True})

    async def sandbox_faults(self, request: Request) -> Response:
        """``GET`` lists the fault rules, ``POST`` adds a JSON list of rules, ``DELETE`` clears them."""
        if request.method == "DELETE":
            self.faults.clear()
        elif request.method == "POST":
            try:
                data = json.loads(await request.body())
                self.faults.extend(parse_rules(data))
            except ValueError as exc:
                index = getattr(exc, "index", None)
                prefix = f"rule {index}: " if isinstance(exc, FaultRuleError) and index is not None else ""
                message = (
                    str(exc) if isinstance(exc, FaultRuleError) else "the request body is not valid JSON"
                )
                return _bad_request([prefix + message])
        return _json({"faults": self.faults.as_list()})


def _is_date(value: Any) -> bool:
    if not isinstance(value, str) or _DATE.fullmatch(value) is None:
        return False
    try:
        date.fromisoformat(value)
    except ValueError:
        return False
    return True


# --- bodies -------------------------------------------------------------------------------------

INPUT_NODE_ID = "n-in"
OUTPUT_NODE_ID = "n-out"


def live_graph(workflow: WorkflowDef, version: VersionDef) -> dict[str, Any]:
    """The live v2 workflow graph (opus-api.md section 2): nodes and edges keyed by id.

    An input node carrying the inputs, a task node per fixture node, an output node.
    """
    vid = version.version_id
    task_ids = [f"n-{i + 1}" for i in range(len(workflow.nodes))]
    order = [INPUT_NODE_ID, *task_ids, OUTPUT_NODE_ID]
    outputs = {
        out.name: {
            "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"opus-sandbox:{workflow.id}:output:{out.name}")),
            "variable_name": out.name,
            "display_name": out.display_name,
            "description": "",
            "is_nullable": False,
            "default": None,
            "allowed_types": [{"type": out.type, "type_definition": None}],
            "tags": [],
        }
        for out in version.outputs
    }
    nodes: dict[str, dict[str, Any]] = {
        INPUT_NODE_ID: {
            "id": INPUT_NODE_ID,
            "type": "input",
            "name": "Input",
            "workflow_version_id": vid,
            "input_schema": {"schema": {f.variable_name: f.live_entry() for f in version.inputs}},
            "output_schema": {"schema": {}},
        }
    }
    for node_id, name in zip(task_ids, workflow.nodes, strict=True):
        nodes[node_id] = {"id": node_id, "type": "task", "name": name, "workflow_version_id": vid}
    nodes[OUTPUT_NODE_ID] = {
        "id": OUTPUT_NODE_ID,
        "type": "output",
        "name": "Output",
        "workflow_version_id": vid,
        "input_schema": {"schema": outputs},
        "output_schema": {"schema": {}},
    }
    edges = {
        f"e-{i + 1}": {"id": f"e-{i + 1}", "from_node_id": order[i], "to_node_id": order[i + 1]}
        for i in range(len(order) - 1)
    }
    return {
        "workflow_id": workflow.id,
        "name": workflow.name,
        "description": workflow.description,
        "version": version.number,
        "major_version": version.number,
        "minor_version": 0,
        "validity_status": "valid",
        "active_status": "active" if version.number == workflow.latest else "inactive",
        "workspace_id": workflow.workspace_id,
        "workflow_input_node_id": INPUT_NODE_ID,
        "workflow_output_node_id": OUTPUT_NODE_ID,
        "starting_nodes_ids": [INPUT_NODE_ID],
        "ending_nodes_ids": [OUTPUT_NODE_ID],
        "nodes": nodes,
        "edges": edges,
        "parent_adjacency": {order[i + 1]: [order[i]] for i in range(len(order) - 1)},
        "child_adjacency": {order[i]: [order[i + 1]] for i in range(len(order) - 1)},
    }


def documented_graph(workflow: WorkflowDef, version: VersionDef) -> dict[str, Any]:
    """The older documented v2 graph: lists of nodes and edges, entries with a bare ``type``."""
    node_ids = ["n-input", *(f"n-{i + 1}" for i in range(len(workflow.nodes)))]
    nodes: list[dict[str, Any]] = [
        {
            "id": "n-input",
            "type": "workflowInput",
            "name": "Workflow input",
            "output_schema": {"schema": {f.variable_name: f.schema_entry(v2=True) for f in version.inputs}},
        }
    ]
    nodes += [{"id": f"n-{i + 1}", "type": "task", "name": name} for i, name in enumerate(workflow.nodes)]
    edges = [
        {"id": f"e-{i}", "source": node_ids[i], "target": node_ids[i + 1]} for i in range(len(node_ids) - 1)
    ]
    return {
        "id": workflow.id,
        "name": workflow.name,
        "description": workflow.description,
        "version": version.number,
        "workflowVersionId": version.version_id,
        "workflow_input_node_id": "n-input",
        "nodes": nodes,
        "edges": edges,
    }


def audit_body(job: Job, now: float) -> dict[str, Any]:
    """Node-level progress of ``job`` at monotonic time ``now``.

    A job walks its nodes evenly over its duration; a failing job walks only up to its fail node
    and fails there at the end (a job whose inputs did not fit fails at its first node); a
    stopped job stops at its last node. The failed node's ``execution_output`` carries the error.
    """
    workflow = job.workflow
    nodes = workflow.nodes
    phase = job.phase(now)
    if job.input_failed:
        last = 0
    elif job.error is not None:
        last = workflow.fail_index
    else:
        last = len(nodes) - 1
    span = last + 1
    work_seconds = job.run_seconds - job.hold_seconds
    slice_seconds = work_seconds / span if span else 0.0
    elapsed = job.work_elapsed(now)

    running = ""
    failed: list[str] = []
    stopped = ""
    if phase in ("initiated", "pending"):
        done = 0
        remaining = list(nodes)
    elif phase in ("held", "running"):
        done = min(int(elapsed / slice_seconds), span - 1) if slice_seconds else span - 1
        running = nodes[done]
        remaining = list(nodes[done + 1 :])
    elif phase == "failed":
        done = last
        failed = [nodes[done]]
        remaining = list(nodes[done + 1 :])
    elif phase == "stopped":
        done = last
        stopped = nodes[done]
        remaining = list(nodes[done + 1 :])
    else:
        done = len(nodes)
        remaining = []
    executed = list(nodes[:done])

    started_wall = job.executed_wall
    data: dict[str, dict[str, Any]] = {}
    for index, name in enumerate(nodes):
        output: list[Any] = []
        if index < done:
            status, ms = "COMPLETED", slice_seconds * 1000
        elif name == running:
            status, ms = "RUNNING", (elapsed - done * slice_seconds) * 1000
        elif name in failed:
            status, ms = "FAILED", slice_seconds * 1000
            output = [{"error": job.error}]
        elif name == stopped:
            status, ms = "STOPPED", slice_seconds * 1000
        else:
            status, ms = "PENDING", 0
        entry: dict[str, Any] = {
            "execution_status": status,
            "execution_time": max(0, round(ms)),
            "execution_output": output,
        }
        if status != "PENDING" and started_wall is not None:
            offset = index * slice_seconds + (job.hold_seconds if index else 0.0)
            entry["execution_start_time"] = int((started_wall + offset) * 1000)
        data[name] = entry
    terminal = phase in ("completed", "failed", "stopped")
    return {
        "jobExecutionId": job.id,
        "status": job.status(now),
        "nb_nodes": len(nodes),
        "executed_nodes": executed,
        "nb_executed_nodes": len(executed),
        "running_node": running,
        "next_node_to_execute": "" if terminal or not remaining else remaining[0],
        "remaining_nodes_to_execute": remaining,
        "failed_nodes": failed,
        "nb_failed_nodes": len(failed),
        "audit": {"nodes_execution_data": data},
    }
