"""What the sandbox holds and counts: jobs and their timeline of statuses, uploads, stored files.

A job's status follows the clock (no background loop): ``PENDING`` (``CREATED`` when
documented) until execute, then ``PENDING`` briefly, the fixture's ``hold`` status (``WAITING``
or ``UNKNOWN``) if any, ``IN_PROGRESS`` until the workflow's duration has passed, then
``COMPLETED``, ``FAILED`` or ``stopped``.

:class:`SandboxState` is what tests read (in-process, or over ``GET /_sandbox/stats``).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from .fixture import OutputDef, VersionDef, WorkflowDef

#: How long a job stays PENDING after execute (less when the whole run is shorter).
PENDING_SECONDS = 0.05
#: How long after an accepted execute a job whose inputs do not fit fails at its Input node.
INPUT_FAILURE_SECONDS = 0.1
IN_PROGRESS_SPELLINGS = {"space": "IN PROGRESS", "underscore": "IN_PROGRESS", "lower": "in_progress"}
#: What a file URL names: ``(token, name, data or None if never PUT, workspace)``.
FoundFile = tuple[str, str, bytes | None, str]


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
    api: str = "v0"  # the API generation that created it: v1 cases are jobs of the same store
    archived: bool = False
    callback_sent: bool = False  # its callback came due and was handled (POSTed or dropped)
    callback_skipped: bool = False  # the callbackUrl is not on loopback: never delivered
    callback_posts: int = 0  # callback POSTs attempted (2 when a duplicate fault fired)
    callback_dropped: bool = False  # a drop fault kept its callback from being sent

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
            return "PENDING" if self.live or self.api == "v1" else "CREATED"
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

    ``requests`` counts calls per ``(method, route name)``, faulted or not (a v1 route has the
    name of its v0 twin: ``initiate`` counts ``POST /job/initiate`` and ``POST /api/v1/case``);
    ``api_requests`` counts the Opus API calls per generation (``v0``, ``v1``); ``executes`` counts
    execute calls a handler processed per job id (a resent execute shows as 2); ``payloads`` holds
    the execute body that started the job (or the last one refused, while none started it) and
    ``payload_history`` every execute body in order; ``max_active_jobs`` is the most jobs at one
    time that were initiated and whose terminal status or results the client had not read yet.
    ``key_sent_to_presigned`` counts presigned PUTs and GETs that carried the service key,
    ``content_type_sent_to_presigned`` the live presigned PUTs refused for a ``Content-Type``.
    Callbacks: ``callbacks_sent`` counts POSTs the receiver answered (with any status; the
    statuses are in ``callback_answers``), ``callbacks_failed`` POSTs that got no answer
    (refused, reset, or no answer within 5 s), ``callbacks_dropped`` callbacks a ``drop`` fault
    kept from being sent, ``callbacks_duplicated`` the extra POSTs ``duplicate`` faults made, and
    ``callbacks_skipped`` jobs whose callbackUrl is not on loopback (never POSTed). So
    sent + failed = the POSTs attempted = jobs called back + duplicated.
    """

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, str]] = Counter()
        self.api_requests: Counter[str] = Counter()
        self.executes: Counter[str] = Counter()
        self.payloads: dict[str, dict[str, Any]] = {}
        self.payload_history: dict[str, list[dict[str, Any]]] = {}
        self.uploads: dict[str, bytes] = {}
        self.upload_slots: dict[str, UploadSlot] = {}
        self.files: dict[str, StoredFile] = {}
        self.download_links: dict[str, DownloadLink] = {}
        self.jobs: dict[str, Job] = {}
        self.active_jobs: set[str] = set()
        self.callback_answers: Counter[int] = Counter()
        self._zero_counters()

    def reset(self) -> None:
        """Forget everything (in place, so references held by tests stay valid)."""
        self.requests.clear()
        self.api_requests.clear()
        self.executes.clear()
        self.payloads.clear()
        self.payload_history.clear()
        self.uploads.clear()
        self.upload_slots.clear()
        self.files.clear()
        self.download_links.clear()
        self.jobs.clear()
        self.active_jobs.clear()
        self.callback_answers.clear()
        self._zero_counters()

    def _zero_counters(self) -> None:
        self.max_active_jobs = 0
        self.key_sent_to_presigned = 0
        self.content_type_sent_to_presigned = 0
        self.callbacks_sent = 0
        self.callbacks_failed = 0
        self.callbacks_skipped = 0
        self.callbacks_dropped = 0
        self.callbacks_duplicated = 0

    def add_job(self, job: Job) -> None:
        self.jobs[job.id] = job
        self.active_jobs.add(job.id)
        if len(self.active_jobs) > self.max_active_jobs:
            self.max_active_jobs = len(self.active_jobs)

    def job_seen_finished(self, job_id: str) -> None:
        """The client read a terminal status or the results: the job no longer counts as active."""
        self.active_jobs.discard(job_id)

    def sent_inputs(self, job_id: str) -> dict[str, Any]:
        """The inputs of the execute body kept in ``payloads`` for ``job_id``, in either
        dialect (v0 ``jobPayloadSchemaInstance``, v1 ``payload``)."""
        body = self.payloads[job_id]
        inputs = body.get("jobPayloadSchemaInstance", body.get("payload"))
        return inputs if isinstance(inputs, dict) else {}

    def count(self, method: str, route: str) -> int:
        """How many ``method route`` calls arrived, e.g. ``state.count("POST", "execute")``."""
        return self.requests[(method, route)]

    def file_at(self, path: str) -> FoundFile | None:
        """The file (an output or an upload) whose unquoted URL path is ``path``."""
        segments = path.split("/", 3)
        if len(segments) != 4 or segments[1] not in ("files", "media"):
            return None
        token = segments[2]
        stored = self.files.get(token)
        if stored is not None and unquote(stored.path) == path:
            return token, stored.name, stored.data, stored.workspace
        slot = self.upload_slots.get(token)
        if slot is not None and unquote(slot.path) == path:
            return token, slot.name, self.uploads.get(token), slot.workspace
        return None

    def as_json(self) -> dict[str, Any]:
        """The state as JSON-ready data (what ``GET /_sandbox/stats`` returns)."""
        now = time.monotonic()
        return {
            "requests": {f"{m} {r}": n for (m, r), n in sorted(self.requests.items())},
            "api_requests": dict(self.api_requests),
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
                    "callback_posts": job.callback_posts,
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
            "callbacks_dropped": self.callbacks_dropped,
            "callbacks_duplicated": self.callbacks_duplicated,
            "callback_answers": {str(status): n for status, n in sorted(self.callback_answers.items())},
        }
