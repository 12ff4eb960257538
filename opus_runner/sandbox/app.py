"""The sandbox's ASGI application: the Opus API of opus-api.md, computed from a fixture.

Job status follows the clock (no background loop): ``CREATED`` until execute, then ``PENDING``
briefly, ``IN PROGRESS`` until the workflow's duration has passed, then ``COMPLETED`` or
``FAILED``. Outputs are rendered once, when execute is accepted. The only timers are for
callbacks.

:class:`SandboxApp` wraps a Starlette router with an outer ASGI layer that names the route,
counts the call, injects faults (faults.py) and checks the service key, in that order, so a
faulted request never reaches a handler.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import mimetypes
import re
import secrets
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
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
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

log = logging.getLogger("opus_runner.sandbox")

MAX_UPLOAD_BYTES = 10 * 1024 * 1024
#: How long a job stays PENDING after execute (less when the whole run is shorter).
PENDING_SECONDS = 0.05
IN_PROGRESS_SPELLINGS = {"space": "IN PROGRESS", "underscore": "IN_PROGRESS", "lower": "in progress"}
ACCESS_SCOPES = ("all", "user", "workspace", "organization")
CALLBACK_TIMEOUT = 5.0
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
#: Routes that need no service key: the presigned PUT and file downloads stand in for S3.
_KEYLESS_ROUTES = frozenset({"put", "file"})


class InjectedConnectionDrop(Exception):
    """Raised inside the app to make uvicorn close the connection mid-response (an injected fault)."""


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
    callback_url: str | None = None
    outputs: list[tuple[OutputDef, Any]] = field(default_factory=list)
    error: str | None = None  # the failure message of a job that ends FAILED
    archived: bool = False
    callback_sent: bool = False

    def phase(self, now: float) -> str:
        """``created``, ``pending``, ``running``, ``completed`` or ``failed`` at monotonic time ``now``."""
        if self.executed_at is None:
            return "created"
        elapsed = now - self.executed_at
        duration = self.workflow.duration
        if elapsed >= duration:
            return "failed" if self.error is not None else "completed"
        if elapsed < min(PENDING_SECONDS, duration):
            return "pending"
        return "running"

    def status(self, now: float) -> str:
        """The status as the API spells it for this workflow."""
        phase = self.phase(now)
        if phase == "running":
            return IN_PROGRESS_SPELLINGS[self.workflow.status_spelling]
        return phase.upper()

    def is_terminal(self, now: float) -> bool:
        return self.phase(now) in ("completed", "failed")

    @property
    def ends_at(self) -> float | None:
        return None if self.executed_at is None else self.executed_at + self.workflow.duration


@dataclass(frozen=True)
class UploadSlot:
    """What ``POST /job/file/upload`` registered for one token."""

    original_name: str
    extension: str
    workflow_id: str | None = None
    workspace_id: str | None = None
    access_scope: str | None = None


@dataclass(frozen=True)
class StoredFile:
    """A file the sandbox produced as a job output."""

    name: str
    data: bytes


class SandboxState:
    """Everything the sandbox saw and did, for tests to inspect (in-process or ``/_sandbox/stats``).

    ``requests`` counts calls per ``(method, route name)``, faulted or not; ``executes`` counts
    execute calls a handler processed per job id (a resent execute shows as 2); ``payloads`` holds
    the execute body as received; ``max_active_jobs`` is the most jobs at one time that were
    initiated and whose terminal status or results the client had not read yet.
    """

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, str]] = Counter()
        self.executes: Counter[str] = Counter()
        self.payloads: dict[str, dict[str, Any]] = {}
        self.uploads: dict[str, bytes] = {}
        self.upload_slots: dict[str, UploadSlot] = {}
        self.files: dict[str, StoredFile] = {}
        self.jobs: dict[str, Job] = {}
        self.active_jobs: set[str] = set()
        self.max_active_jobs = 0
        self.key_sent_to_presigned = 0
        self.callbacks_sent = 0
        self.callbacks_failed = 0

    def reset(self) -> None:
        """Forget everything (in place, so references held by tests stay valid)."""
        self.requests.clear()
        self.executes.clear()
        self.payloads.clear()
        self.uploads.clear()
        self.upload_slots.clear()
        self.files.clear()
        self.jobs.clear()
        self.active_jobs.clear()
        self.max_active_jobs = 0
        self.key_sent_to_presigned = 0
        self.callbacks_sent = 0
        self.callbacks_failed = 0

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
            "jobs": {
                job.id: {
                    "workflowId": job.workflow.id,
                    "version": job.version.number,
                    "title": job.title,
                    "status": job.status(now),
                    "archived": job.archived,
                }
                for job in list(self.jobs.values())
            },
            "active_jobs": len(self.active_jobs),
            "max_active_jobs": self.max_active_jobs,
            "key_sent_to_presigned": self.key_sent_to_presigned,
            "callbacks_sent": self.callbacks_sent,
            "callbacks_failed": self.callbacks_failed,
        }


# --- responses ----------------------------------------------------------------------------------


def _json(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return JSONResponse(body, status_code=status, headers=dict(headers) if headers else None)


def _error(status: int, message: Any, error: str | None = None) -> Response:
    body: dict[str, Any] = {"statusCode": status, "message": message}
    if error:
        body["error"] = error
    return _json(body, status)


def _bad_request(problems: list[str]) -> Response:
    """A NestJS validation error: every problem listed."""
    return _error(400, problems, "Bad Request")


def _not_found(message: str) -> Response:
    return _error(404, message)


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
        self._key = key.encode("utf-8")
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
            Route("/job/file/upload", self.upload, methods=["POST"], name="upload"),
            Route("/job/execute", self.execute, methods=["POST"], name="execute"),
            Route("/job/search", self.search, methods=["GET"], name="search"),
            Route("/job/{job_id}/status", self.job_status, methods=["GET"], name="status"),
            Route("/job/{job_id}/results", self.job_results, methods=["GET"], name="results"),
            Route("/job/{job_id}/audit", self.job_audit, methods=["GET"], name="audit"),
            Route("/job/{job_id}/archive", self.archive, methods=["POST", "DELETE"], name="archive"),
            Route("/job/{job_id}/delete", self.delete, methods=["DELETE"], name="delete"),
            Route("/_upload/{token}", self.put_upload, methods=["PUT"], name="put"),
            Route("/files/{token}/{name:path}", self.get_file, methods=["GET"], name="file"),
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
            await asyncio.sleep(rule.seconds)
            await self._process(scope, receive, send, route)
        elif rule.kind == "lose_response":
            await self._lose_response(scope, _BodyTracker(receive), send, route)
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
                await _error(401, problem)(scope, receive, send)
                return
        await self._router(scope, receive, send)

    def _key_problem(self, scope: Scope) -> str | None:
        for name, value in scope["headers"]:
            if name == b"x-service-key":
                return None if hmac.compare_digest(value, self._key) else "Invalid service key"
        return "Missing x-service-key header"

    async def _inject(self, rule: FaultRule, scope: Scope, receive: _BodyTracker, send: Send) -> None:
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
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:  # a valid but unnamed status such as 599
            phrase = "Error"
        if rule.body == "json":
            response: Response = _json({"statusCode": status, "message": phrase}, status, headers)
        elif rule.body == "html":
            html = (
                f"<html><head><title>{status} {phrase}</title></head><body>"
                f"<center><h1>{status} {phrase}</h1></center><hr><center>nginx</center></body></html>"
            )
            response = Response(html, status_code=status, headers=headers, media_type="text/html")
        else:
            response = Response(b"", status_code=status, headers=headers)
        await response(scope, receive, send)

    async def _lose_response(self, scope: Scope, receive: _BodyTracker, send: Send, route: str) -> None:
        """Process the request for real, then cut the connection before the answer is complete."""
        captured: list[Message] = []

        async def capture(message: Message) -> None:
            captured.append(message)

        await self._process(scope, receive, capture, route)
        await receive.drain()
        start = next((m for m in captured if m["type"] == "http.response.start"), None)
        body = b"".join(m.get("body", b"") for m in captured if m["type"] == "http.response.body")
        headers = [(k, v) for k, v in (start or {}).get("headers", []) if k.lower() != b"content-length"]
        # Announce more bytes than will ever come, so the client cannot mistake it for an answer.
        headers.append((b"content-length", str(len(body) + 1).encode()))
        await send(
            {"type": "http.response.start", "status": start["status"] if start else 200, "headers": headers}
        )
        raise InjectedConnectionDrop("response lost by an injected fault")

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

    def _file_url(self, request: Request, token: str, name: str) -> str:
        return f"{self._base(request)}/files/{token}/{quote(name)}"

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

    # -- workflow routes -------------------------------------------------------------------------

    async def get_workflow(self, request: Request) -> Response:
        """``GET /workflow/{id}``: the v1 workflow description with ``jobPayloadSchema``."""
        workflow_id = request.path_params["workflow_id"]
        workflow = self.fixture.workflows.get(workflow_id)
        if workflow is None:
            return _not_found(f"Workflow {workflow_id} not found")
        if workflow.api == "v2-only":
            return _error(500, "V1 workflow details are no longer supported")
        if workflow.api == "v1-404":
            return _error(404, f"Cannot GET /workflow/{workflow_id}", "Not Found")
        query = request.query_params
        version = self._resolve_version(workflow, query.get("version"), query.get("workflowVersionId"))
        if isinstance(version, Response):
            return version
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
        workflow_id = request.path_params["workflow_id"]
        workflow = self.fixture.workflows.get(workflow_id)
        if workflow is None:
            return _not_found(f"Workflow {workflow_id} not found")
        query = request.query_params
        version = self._resolve_version(workflow, query.get("version"), query.get("workflowVersionId"))
        if isinstance(version, Response):
            return version
        node_ids = ["n-input", *(f"n-{i + 1}" for i in range(len(workflow.nodes)))]
        nodes: list[dict[str, Any]] = [
            {
                "id": "n-input",
                "type": "workflowInput",
                "name": "Workflow input",
                "output_schema": {
                    "schema": {f.variable_name: f.schema_entry(v2=True) for f in version.inputs}
                },
            }
        ]
        nodes += [{"id": f"n-{i + 1}", "type": "task", "name": name} for i, name in enumerate(workflow.nodes)]
        edges = [
            {"id": f"e-{i}", "source": node_ids[i], "target": node_ids[i + 1]}
            for i in range(len(node_ids) - 1)
        ]
        return _json(
            {
                "id": workflow.id,
                "name": workflow.name,
                "description": workflow.description,
                "version": version.number,
                "workflowVersionId": version.version_id,
                "workflow_input_node_id": "n-input",
                "nodes": nodes,
                "edges": edges,
            }
        )

    async def get_versions(self, request: Request) -> Response:
        """``GET /executor/workflow/{id}/versions``."""
        workflow_id = request.path_params["workflow_id"]
        workflow = self.fixture.workflows.get(workflow_id)
        if workflow is None:
            return _not_found(f"Workflow {workflow_id} not found")
        return _json(
            {
                "versions": [
                    {"versionNumber": n, "workflowVersionId": v.version_id, "active": n == workflow.latest}
                    for n, v in workflow.versions.items()
                ]
            }
        )

    # -- job routes ------------------------------------------------------------------------------

    async def initiate(self, request: Request) -> Response:
        """``POST /job/initiate``: create a job in status CREATED."""
        try:
            body = await _json_body(request)
        except _BadBody as bad:
            return bad.response
        problems = []
        workflow_id = body.get("referenceEntityId") or body.get("workflowId")
        if not isinstance(workflow_id, str) or not workflow_id.strip():
            problems.append("workflowId should not be empty")
        title = body.get("title")
        if title is None or title == "":
            problems.append("title should not be empty")
        elif not isinstance(title, str):
            problems.append("title must be a string")
        description = body.get("description")
        if description is not None and not isinstance(description, str):
            problems.append("description must be a string")
        number = body.get("workflowVersionNumber")
        if number is not None and (not _is_int(number) or number < 1):
            problems.append("workflowVersionNumber must be a positive whole number")
        version_id = body.get("workflowVersionId")
        if version_id is not None and not isinstance(version_id, str):
            problems.append("workflowVersionId must be a string")
        if problems:
            return _bad_request(problems)
        workflow_id, title = cast(str, workflow_id), cast(str, title)  # validated above
        workflow = self.fixture.workflows.get(workflow_id)
        if workflow is None:
            return _not_found(f"Workflow {workflow_id} not found")
        version = self._resolve_version(workflow, number, version_id, field_name="workflowVersionNumber")
        if isinstance(version, Response):
            return version
        job = Job(
            id=str(uuid.uuid4()),
            workflow=workflow,
            version=version,
            title=title,
            description=description or "",
        )
        self.state.add_job(job)
        return _json({"jobExecutionId": job.id})

    async def upload(self, request: Request) -> Response:
        """``POST /job/file/upload``: register a file and hand out its presigned URL and file URL."""
        try:
            body = await _json_body(request)
        except _BadBody as bad:
            return bad.response
        problems = []
        extension = body.get("fileExtension")
        if not isinstance(extension, str) or not extension:
            problems.append("fileExtension should not be empty")
        elif extension.lower() not in UPLOAD_EXTENSIONS:
            problems.append(
                f"fileExtension must be one of the following values: {', '.join(UPLOAD_EXTENSIONS)}"
            )
        original_name = body.get("originalName")
        if not isinstance(original_name, str) or not original_name.strip():
            problems.append("originalName should not be empty")
        scope = body.get("accessScope")
        if scope is not None and scope not in ACCESS_SCOPES:
            problems.append(f"accessScope must be one of the following values: {', '.join(ACCESS_SCOPES)}")
        workflow_id = body.get("workflowId")
        workspace_id = body.get("workspaceId")
        if not workflow_id and not workspace_id:
            problems.append("workflowId or workspaceId must be provided")
        for name, value in (("workflowId", workflow_id), ("workspaceId", workspace_id)):
            if value is not None and not isinstance(value, str):
                problems.append(f"{name} must be a string")
        if problems:
            return _bad_request(problems)
        extension, original_name = cast(str, extension), cast(str, original_name)  # validated above
        token = secrets.token_hex(16)
        self.state.upload_slots[token] = UploadSlot(
            original_name=original_name,
            extension=extension.lower(),
            workflow_id=workflow_id,
            workspace_id=workspace_id,
            access_scope=scope,
        )
        return _json(
            {
                "presignedUrl": f"{self._base(request)}/_upload/{token}",
                "fileUrl": self._file_url(request, token, original_name),
            }
        )

    async def put_upload(self, request: Request) -> Response:
        """``PUT /_upload/{token}``: the presigned URL; stores the raw bytes (10 MB at most)."""
        token = request.path_params["token"]
        if "x-service-key" in request.headers:
            # A presigned URL goes to storage, not to Opus: a client must not send its key there.
            self.state.key_sent_to_presigned += 1
        if token not in self.state.upload_slots:
            return _json({"message": "The presigned URL is unknown or has expired"}, 404)
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

    async def get_file(self, request: Request) -> Response:
        """``GET /files/{token}/{name}``: an uploaded file's bytes, or an output file's."""
        token = request.path_params["token"]
        name = unquote(request.path_params["name"])
        data: bytes | None = None
        stored = self.state.files.get(token)
        if stored is not None and stored.name == name:
            data = stored.data
        elif token in self.state.uploads and self.state.upload_slots[token].original_name == name:
            data = self.state.uploads[token]
        if data is None:
            return _json({"message": "File not found"}, 404)
        media_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        return Response(data, media_type=media_type)

    async def execute(self, request: Request) -> Response:
        """``POST /job/execute``: validate the payload like the real service, then start the job."""
        try:
            body = await _json_body(request)
        except _BadBody as bad:
            return bad.response
        job_id = body.get("jobExecutionId")
        if not isinstance(job_id, str) or not job_id:
            return _bad_request(["jobExecutionId should not be empty"])
        self.state.executes[job_id] += 1
        job = self.state.jobs.get(job_id)
        if job is None:
            return _not_found(f"Job {job_id} not found")
        if job.executed_at is not None:
            return _error(409, f"Job {job_id} has already been executed", "Conflict")
        self.state.payloads[job_id] = body
        problems = self._check_payload(job, body, request)
        if problems:
            return _bad_request(problems)

        instance: dict[str, Any] = body["jobPayloadSchemaInstance"]
        values = {var: entry.get("value") for var, entry in instance.items()}
        context = {
            "inputs": {job.version.inputs_by_var[var].display_name: value for var, value in values.items()},
            "vars": values,
            "job": {"id": job.id, "title": job.title},
        }
        base = self._base(request)

        def store(name: str, data: bytes) -> str:
            token = secrets.token_hex(16)
            self.state.files[token] = StoredFile(name=name, data=data)
            return f"{base}/files/{token}/{quote(name)}"

        job.error = job.workflow.fail
        if job.error is None:
            try:
                job.outputs = job.version.render_outputs(context, store)
            except OutputRenderError as exc:
                # A broken fixture template fails this job, visibly, instead of the request.
                job.error = f"workflow {job.workflow.id}: {exc}"
        job.callback_url = body.get("callbackUrl") or None
        job.executed_at = time.monotonic()
        if job.callback_url:
            self._schedule_callback(job)
        return _json({"success": True, "jobExecutionId": job_id, "message": "Job execution started"})

    def _check_payload(self, job: Job, body: Mapping[str, Any], request: Request) -> list[str]:
        """Every problem of an execute body, as NestJS would list them."""
        problems: list[str] = []
        instance = body.get("jobPayloadSchemaInstance")
        inputs = job.version.inputs_by_var
        if not isinstance(instance, dict):
            problems.append(
                "jobPayloadSchemaInstance must be an object mapping input variable names to {value, type}"
            )
            instance = {}
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
            kind = entry.get("type")
            if kind is None:
                problems.append(f"{where}.type should not be empty (expected {input_def.type!r})")
            elif kind != input_def.type:
                problems.append(
                    f"{where}.type must be {input_def.type!r} as the workflow declares, found {kind!r}"
                )
            display = entry.get("displayName")
            if display is not None and not isinstance(display, str):
                problems.append(f"{where}.displayName must be a string")
            value = entry.get("value")
            if value is None:
                if not input_def.nullable:
                    problems.append(
                        f"{where}.value ({input_def.display_name}) is required and must not be null"
                    )
                continue
            problems.extend(self._check_value(input_def, value, f"{where}.value", request))
        for var, input_def in inputs.items():
            if var not in instance and not input_def.nullable:
                problems.append(f"jobPayloadSchemaInstance.{var} ({input_def.display_name}) is required")
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
        if kind == "bool" and not isinstance(value, bool):
            return [f"{where} must be a boolean, found {type(value).__name__}"]
        if kind == "date":
            ok = isinstance(value, str) and _DATE.fullmatch(value) is not None
            if ok:
                try:
                    date.fromisoformat(value)
                except ValueError:
                    ok = False
            if not ok:
                return [f"{where} must be a date formatted YYYY-MM-DD, found {value!r}"]
        if kind == "array" and not isinstance(value, list):
            return [f"{where} must be an array, found {type(value).__name__}"]
        if kind == "object" and not isinstance(value, dict):
            return [f"{where} must be an object, found {type(value).__name__}"]
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
        if self._is_own_url(parts, request):
            # Our own file URLs must name a stored file exactly: token and name.
            segments = parts.path.split("/", 3)
            token, name = (segments[2], unquote(segments[3])) if len(segments) == 4 else ("", "")
            stored = self.state.files.get(token) if segments[1] == "files" else None
            slot = self.state.upload_slots.get(token) if segments[1] == "files" else None
            if stored is not None and stored.name == name:
                extension = _extension_of(stored.name)
            elif slot is None or slot.original_name != name:
                return [f"{where}: {url} is not a file uploaded to this server"]
            elif token not in self.state.uploads:
                return [
                    f"{where}: the file {url} was registered by /job/file/upload "
                    "but never PUT to its presigned URL"
                ]
            else:
                extension = slot.extension.lstrip(".").upper()
        if not _type_allowed(extension, input_def.allowed_file_types):
            allowed = ", ".join(input_def.allowed_file_types)
            found = f".{extension.lower()}" if extension else "no extension"
            return [f"{where} ({input_def.display_name}) must be a file of type {allowed}, found {found}"]
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

    async def job_status(self, request: Request) -> Response:
        """``GET /job/{id}/status``."""
        job = self._job_or_404(request)
        if isinstance(job, Response):
            return job
        now = time.monotonic()
        if job.is_terminal(now):
            self.state.job_seen_finished(job.id)
        return _json({"status": job.status(now)})

    def results_body(self, job: Job) -> dict[str, Any]:
        """The results of a finished job, in the shape its workflow uses."""
        if job.error is not None:
            return {"jobResultsPayloadSchema": {}, "error": job.error}
        if job.workflow.results_shape == "legacy":
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
        return {
            "jobResultsPayloadSchema": {
                out.name: {"value": v, "type": out.type, "displayName": out.display_name}
                for out, v in job.outputs
            }
        }

    async def job_results(self, request: Request) -> Response:
        """``GET /job/{id}/results``: 400 until the job is finished."""
        job = self._job_or_404(request)
        if isinstance(job, Response):
            return job
        if not job.is_terminal(time.monotonic()):
            return _error(400, "Job is not completed yet")
        self.state.job_seen_finished(job.id)
        return _json(self.results_body(job))

    async def job_audit(self, request: Request) -> Response:
        """``GET /job/{id}/audit``: node-level progress, proportional to the time elapsed."""
        job = self._job_or_404(request)
        if isinstance(job, Response):
            return job
        return _json(audit_body(job, time.monotonic()))

    async def search(self, request: Request) -> Response:
        """``GET /job/search?workflowId=&status=&offset=&maxResults=``."""
        query = request.query_params
        problems = []
        numbers = {}
        for name, default, low in (("offset", 0, 0), ("maxResults", 20, 1)):
            raw = query.get(name)
            if raw is None:
                numbers[name] = default
            elif raw.isdigit() and int(raw) >= low:
                numbers[name] = int(raw)
            else:
                problems.append(f"{name} must be a whole number of at least {low}")
        if problems:
            return _bad_request(problems)
        from ..models import normalise_status

        workflow_id = query.get("workflowId")
        wanted = normalise_status(query["status"]) if query.get("status") else None
        now = time.monotonic()
        found = []
        for job in list(self.state.jobs.values()):
            if workflow_id and job.workflow.id != workflow_id:
                continue
            status = job.status(now)
            if wanted and normalise_status(status) != wanted:
                continue
            found.append(
                {
                    "jobExecutionId": job.id,
                    "workflowId": job.workflow.id,
                    "title": job.title,
                    "status": status,
                    "createdAt": _iso(job.created_at),
                    "archived": job.archived,
                }
            )
        offset, limit = numbers["offset"], numbers["maxResults"]
        return _json(
            {
                "jobs": found[offset : offset + limit],
                "total": len(found),
                "offset": offset,
                "maxResults": limit,
            }
        )

    async def archive(self, request: Request) -> Response:
        """``POST /job/{id}/archive`` archives; ``DELETE`` un-archives."""
        job = self._job_or_404(request)
        if isinstance(job, Response):
            return job
        job.archived = request.method == "POST"
        return _json({"success": True, "jobExecutionId": job.id, "archived": job.archived})

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
        job.callback_sent = True  # at most once, even if the POST fails
        body = {
            "jobExecutionId": job.id,
            "status": job.status(time.monotonic()),
            "results": self.results_body(job),
        }
        try:
            import httpx

            if self._http is None:
                self._http = httpx.AsyncClient(timeout=CALLBACK_TIMEOUT)
            await self._http.post(job.callback_url, json=body)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a receiver's failure is the receiver's business
            self.state.callbacks_failed += 1
            log.debug("callback for job %s to %s failed: %s", job.id, job.callback_url, exc)
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


def audit_body(job: Job, now: float) -> dict[str, Any]:
    """Node-level progress of ``job`` at monotonic time ``now``.

    A job walks its nodes evenly over its duration; a failing job walks only up to its fail node
    and fails there at the end.
    """
    workflow = job.workflow
    nodes = workflow.nodes
    phase = job.phase(now)
    # A failing job only walks up to the node it fails at.
    span = workflow.fail_index + 1 if job.error is not None else len(nodes)
    slice_seconds = workflow.duration / span if span else 0.0
    elapsed = 0.0 if job.executed_at is None else max(0.0, now - job.executed_at)

    running = ""
    failed: list[str] = []
    if phase in ("created", "pending"):
        done = 0
        remaining = list(nodes)
    elif phase == "running":
        done = min(int(elapsed / slice_seconds), span - 1) if slice_seconds else span - 1
        running = nodes[done]
        remaining = list(nodes[done + 1 :])
    elif phase == "failed":
        done = span - 1
        failed = [nodes[done]]
        remaining = list(nodes[done + 1 :])
    else:
        done = len(nodes)
        remaining = []
    executed = list(nodes[:done])

    data: dict[str, dict[str, Any]] = {}
    for index, name in enumerate(nodes):
        if index < done:
            status, ms = "COMPLETED", slice_seconds * 1000
        elif name == running:
            status, ms = "RUNNING", (elapsed - done * slice_seconds) * 1000
        elif name in failed:
            status, ms = "FAILED", slice_seconds * 1000
        else:
            status, ms = "PENDING", 0
        data[name] = {"execution_status": status, "execution_time": max(0, round(ms))}
    terminal = phase in ("completed", "failed")
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
