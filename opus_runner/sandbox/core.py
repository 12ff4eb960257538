"""What every route handler shares: the fixture, the state, job numbering and the lookups.

:class:`SandboxCore` is the sandbox without its HTTP layer; :class:`~.asgi.SandboxApp` adds the
route table and the outer ASGI layer on top.
"""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import unquote, urlsplit

from starlette.requests import Request
from starlette.responses import Response

from ..urls import is_loopback_host
from .callbacks import Callbacks
from .faults import FaultSet
from .fixture import Fixture, VersionDef, WorkflowDef, is_uuid
from .responses import bad_request, not_found
from .state import FoundFile, Job, SandboxState
from .validation import is_int

#: The first job id a server hands out (live jobs have numeric-string ids such as "72964").
FIRST_JOB_NUMBER = 72964


class SandboxCore:
    """The fixture, state and fault rules a sandbox serves, and what its routes look up in them.

    ``base_url`` is what file URLs are built on; the server sets it once it knows its port
    (without it, the URL the request came in on is used). ``callback_delay`` (seconds), when
    given, replaces the fixture's callback delays.
    """

    def __init__(
        self,
        fixture: Fixture,
        *,
        state: SandboxState | None = None,
        faults: FaultSet | None = None,
        base_url: str | None = None,
        callback_delay: float | None = None,
    ) -> None:
        self.fixture = fixture
        self.state = state if state is not None else SandboxState()
        self.faults = faults if faults is not None else FaultSet()
        self.base_url = base_url.rstrip("/") if base_url else None
        self.workspaces = frozenset(w.workspace_id for w in fixture.workflows.values())
        self.callbacks = Callbacks(self.state, self.faults, callback_delay)
        self._next_job = FIRST_JOB_NUMBER

    def base(self, request: Request) -> str:
        return self.base_url or str(request.base_url).rstrip("/")

    def new_job_id(self, workflow: WorkflowDef, *, api: str = "v0") -> str:
        """A numeric string for a live v0 job; a UUID for a documented one and for a v1 case."""
        if api == "v1" or not workflow.live:
            return str(uuid.uuid4())
        number = self._next_job
        self._next_job += 1
        return str(number)

    def workflow_or_error(self, workflow_id: Any, field_name: str = "workflowId") -> WorkflowDef | Response:
        """The workflow named by ``workflow_id``: 400 for a non-UUID, 404 for an unknown one."""
        if not is_uuid(workflow_id):
            return bad_request([f"{field_name} must be a UUID"])
        workflow = self.fixture.workflows.get(str(workflow_id).lower())
        if workflow is None:
            return not_found(f"Workflow {workflow_id} not found")
        return workflow

    def unknown_workspaces(self, raw: str) -> list[str]:
        names = [part.strip() for part in raw.split(",") if part.strip()]
        return [name for name in names if name.lower() not in self.workspaces]

    def resolve_version(
        self, workflow: WorkflowDef, number: Any, version_id: Any, *, field_name: str = "version"
    ) -> VersionDef | Response:
        """The pinned (or latest) version, or the error response to send (the uuid wins)."""
        if version_id not in (None, ""):
            if not isinstance(version_id, str):
                return bad_request(["workflowVersionId must be a string"])
            found = workflow.find_version(version_id=version_id)
            if found is None:
                return not_found(f"Version {version_id} of workflow {workflow.id} not found")
            return found
        if number not in (None, ""):
            if isinstance(number, str) and number.strip().isdigit():
                number = int(number)
            if not is_int(number) or number < 1:
                return bad_request([f"{field_name} must be a positive whole number"])
            found = workflow.find_version(number=number)
            if found is None:
                return not_found(f"Version {number} of workflow {workflow.id} not found")
            return found
        return workflow.latest_version

    def job_or_404(self, request: Request) -> Job | Response:
        job_id = request.path_params["job_id"]
        job = self.state.jobs.get(job_id)
        if job is None:
            return not_found(f"Job {job_id} not found")
        return job

    def created(self, job_or_workflow: Job | WorkflowDef | None) -> int:
        """201 (live, NestJS's default for a POST) or 200 (documented)."""
        workflow = job_or_workflow.workflow if isinstance(job_or_workflow, Job) else job_or_workflow
        return 200 if workflow is not None and not workflow.live else 201

    def find_file(self, url: str, request: Request) -> FoundFile | str | None:
        """``(token, name, data or None if never PUT, workspace)`` of one of our file URLs.

        A string says why an own URL names no file; None means the URL is not ours.
        """
        parts = urlsplit(url)
        if not self._is_own_url(parts, request):
            return None
        found = self.state.file_at(unquote(parts.path))
        return found if found is not None else f"{url} is not a file uploaded to this server"

    def _is_own_url(self, parts: Any, request: Request) -> bool:
        own = urlsplit(self.base(request))
        if parts.netloc == own.netloc:
            return True
        return is_loopback_host(parts.hostname) and is_loopback_host(own.hostname) and parts.port == own.port
