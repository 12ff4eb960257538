"""The two generations of the Opus API, as two dialects of one client (opus-api.md section 0).

:class:`~.client.OpusClient` owns what does not depend on the generation: the transport, the
retries, the no-resend rule of execute, the error mapping. A dialect owns what does: for each
endpoint, the route, the request body, and how the answer reads. Nothing above the client knows
which dialect ran: ids, statuses, uploads, results and audits come back as the same models.

- :class:`JobsDialect` (``api = "v0"``, the default): the Jobs API at the base URL.
- :class:`CaseDialect` (``api = "v1"``): the Case API at ``{base}/api/v1``: ``POST /case``,
  ``/case/{id}/execute|status|results|audit``, ``POST /file/upload/presigned``, and a camelCase
  ``GET /workflow/{id}``. Its results answer 202 until the case is terminal.

v1 documents no route for a case's detail, the job search, file downloads, a workflow's versions
or its v2 object. The case detail is asked at ``GET /case/{id}`` (what the sandbox serves), and
read as "cannot tell" when the route is missing; the others use the v0 routes at the base URL,
which Opus still serves to the same key (docs/api-dialects.md lists what is not settled).
"""

from __future__ import annotations

import mimetypes
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import quote, urlsplit

from ..errors import UsageError
from ..urls import PLACEHOLDER_CALLBACK_URL
from ..workflow import is_workflow_uuid
from . import camel

from ..config import API_NAMES, DEFAULT_API, V1_PATH

__all__ = ["API_NAMES", "DEFAULT_API", "V1_PATH", "Call", "CaseDialect", "JobsDialect", "dialect_for"]


def _id(value: str) -> str:
    # Ids go into the path: quote everything so an id can never add a segment or a query.
    return quote(str(value), safe="")


@dataclass(frozen=True)
class Call:
    """One request: ``method`` and ``path`` (as errors and retry lines name it) under ``root``."""

    method: str
    path: str
    root: str
    body: Any = None
    params: Mapping[str, Any] | None = None

    @property
    def url(self) -> str:
        return f"{self.root}{self.path}"

    @property
    def label(self) -> str:
        """``POST /api/v1/case``: the call as a user would look it up, with the root's path."""
        return f"{self.method} {urlsplit(self.root).path.rstrip('/')}{self.path}"


def switch_hint(to: str) -> str:
    """How to make a project speak ``to``."""
    return f'pass --api {to}, or set api = "{to}" in opus-runner.toml'


class JobsDialect:
    """The v0 Jobs API: every route at the base URL (opus-api.md sections 1-7)."""

    name: ClassVar[str] = "v0"
    title: ClassVar[str] = "the v0 Jobs API"
    #: what a job is called in this dialect's messages
    noun: ClassVar[str] = "job"
    initiate_path: ClassVar[str] = "/job/initiate"
    upload_path: ClassVar[str] = "/job/file/upload"

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        #: the URL this dialect's own routes hang from
        self.root = base_url

    # ---- ids ------------------------------------------------------------------------------

    def check_job_id(self, job_id: str) -> None:
        """Refuse, before any request, an id this dialect can never have handed out. v0 job ids
        are numeric live, but other deployments hand out tokens, so nothing is refused here; a
        404 for a UUID says it may be a v1 case id instead (:meth:`unknown_id_hint`)."""

    def unknown_id_hint(self, job_id: str) -> str | None:
        """What to add to "job X not found" when X looks like the other dialect's id."""
        if is_workflow_uuid(job_id):
            return (
                f"{job_id!r} looks like a v1 case id (a UUID), and this project uses {self.title}, "
                f"whose job ids are numbers; to look at a v1 case, {switch_hint('v1')}"
            )
        return None

    def route_missing_hint(self, call: Call) -> str | None:
        """What a 404 saying the route itself does not exist means here; None: nothing more."""
        return None

    # ---- workflows ------------------------------------------------------------------------

    def workflow(self, workflow_id: str, params: Mapping[str, Any] | None) -> Call:
        return Call("GET", f"/workflow/{_id(workflow_id)}", self.root, params=params)

    def read_workflow(self, body: dict[str, Any]) -> dict[str, Any]:
        return body

    def workflow_object(self, workflow_uuid: str, version: int | None) -> Call:
        params = {"version": version} if version is not None else None
        return Call("GET", f"/reference-workflow/v2/workflow-object/{_id(workflow_uuid)}", self.base_url, params=params)

    def versions(self, workflow_uuid: str) -> Call:
        return Call("GET", f"/executor/workflow/{_id(workflow_uuid)}/versions", self.base_url)

    # ---- jobs -----------------------------------------------------------------------------

    def initiate(
        self,
        workflow_id: str,
        *,
        title: str,
        description: str,
        version: int | None,
        version_id: str | None,
        workspaces: tuple[str, ...] | list[str],
        extra: Mapping[str, Any] | None,
    ) -> Call:
        body: dict[str, Any] = {"workflowId": workflow_id, "title": title, "description": description}
        body.update(self._initiate_extras())
        if version_id:
            body["workflowVersionId"] = version_id
        elif version is not None:
            body["workflowVersionNumber"] = version
        if workspaces:
            body["workspaces"] = ",".join(workspaces)
        if extra:
            body.update(extra)
        return Call("POST", self.initiate_path, self.root, body=body)

    def _initiate_extras(self) -> dict[str, Any]:
        return {"source": "api"}

    #: the field of the initiate answer holding the new id
    id_field: ClassVar[str] = "jobExecutionId"

    def execute(
        self, job_id: str, payload: Mapping[str, Any], callback_url: str | None, workspaces: tuple[str, ...] | list[str]
    ) -> Call:
        # Opus refuses a v0 execute without a callbackUrl: the placeholder never resolves.
        body: dict[str, Any] = {
            "jobExecutionId": job_id,
            "jobPayloadSchemaInstance": payload,
            "callbackUrl": callback_url or PLACEHOLDER_CALLBACK_URL,
        }
        if workspaces:
            body["workspaces"] = ",".join(workspaces)
        return Call("POST", "/job/execute", self.root, body=body)

    def job(self, job_id: str, what: str = "") -> Call:
        """``GET /job/{id}`` (``what`` empty) or ``/job/{id}/{what}``: status, results, audit."""
        suffix = f"/{what}" if what else ""
        return Call("GET", f"/job/{_id(job_id)}{suffix}", self.root)

    def detail(self, job_id: str) -> Call:
        """The job's detail, which shows whether an execute arrived."""
        return self.job(job_id)

    def results_pending(self, status_code: int) -> bool:
        """Whether a results answer means "not yet, ask again" (v1's 202)."""
        return False

    def read_audit(self, body: Any) -> Any:
        return body

    def search(self, params: Mapping[str, Any]) -> Call:
        return Call("GET", "/job/search", self.base_url, params=params)

    # ---- files ----------------------------------------------------------------------------

    def access_scope(self, wanted: str | None) -> str | None:
        """The ``accessScope`` sent for ``wanted``; None sends none (the platform's unlisted)."""
        return wanted if wanted and wanted != "unlisted" else None

    def upload(
        self,
        *,
        extension: str,
        original_name: str | None,
        workflow_id: str | None,
        workspace_id: str | None,
        access_scope: str | None,
    ) -> Call:
        body: dict[str, Any] = {"fileExtension": extension}
        scope = self.access_scope(access_scope)
        if scope:
            body["accessScope"] = scope
        if original_name:
            body["originalName"] = original_name
        if workspace_id:
            body["workspaceId"] = workspace_id
        elif workflow_id:
            body["workflowId"] = workflow_id
        return Call("POST", self.upload_path, self.root, body=body)

    def put_content_type(self, original_name: str, given: str | None) -> str | None:
        """The ``Content-Type`` of the presigned PUT: none unless given, since v0's URLs are
        signed without one and answer 403 to a request that adds it (opus-api.md section 4)."""
        return given

    def download(self, file_url: str, expiry: int) -> Call:
        return Call("POST", "/job/file/download", self.base_url, body={"fileUrl": file_url, "customExpiry": expiry})


class CaseDialect(JobsDialect):
    """The v1 Case API at ``{base}/api/v1`` (or ``api_v1_url``): cases instead of jobs."""

    name: ClassVar[str] = "v1"
    title: ClassVar[str] = "the v1 Case API"
    noun: ClassVar[str] = "case"
    initiate_path: ClassVar[str] = "/case"
    upload_path: ClassVar[str] = "/file/upload/presigned"
    id_field: ClassVar[str] = "caseId"
    #: v1's two scopes; the v0 names are read as the nearest one that shares no more
    _SCOPES: ClassVar[dict[str, str]] = {
        "workspace": "workspace",
        "organization": "workspace",
        "all": "workspace",
        "unlisted": "unlisted",
    }

    def __init__(self, base_url: str, v1_url: str | None = None) -> None:
        super().__init__(base_url)
        self.root = (v1_url or f"{base_url}{V1_PATH}").rstrip("/")

    def check_job_id(self, job_id: str) -> None:
        # Case ids are UUIDs; a number can only be a v0 job id.
        if str(job_id).strip().isdigit():
            raise UsageError(
                f"{job_id!r} is a v0 job id (a number), but this project uses {self.title}, whose "
                f"case ids are UUIDs; to look at a v0 job, {switch_hint('v0')}"
            )

    def unknown_id_hint(self, job_id: str) -> str | None:
        return None

    def route_missing_hint(self, call: Call) -> str | None:
        if not call.root.startswith(self.root):
            return None
        return (
            f"the server has no route {call.label}, so {self.root} may not serve {self.title}; "
            f"check --base-url (or api_v1_url in opus-runner.toml), or {switch_hint('v0')}"
        )

    def read_workflow(self, body: dict[str, Any]) -> dict[str, Any]:
        graph = camel.workflow_graph(body)
        return dict(graph) if isinstance(graph, Mapping) else body

    def _initiate_extras(self) -> dict[str, Any]:
        return {}  # v1 documents no ``source``: an unknown field may be refused

    def execute(
        self, job_id: str, payload: Mapping[str, Any], callback_url: str | None, workspaces: tuple[str, ...] | list[str]
    ) -> Call:
        # callbackUrl is optional in v1: the placeholder is not sent, and v1 documents no
        # ``workspaces`` on execute (the case's workspace was set when it was created).
        body: dict[str, Any] = {"payload": payload}
        if callback_url and callback_url != PLACEHOLDER_CALLBACK_URL:
            body["callbackUrl"] = callback_url
        return Call("POST", f"/case/{_id(job_id)}/execute", self.root, body=body)

    def job(self, job_id: str, what: str = "") -> Call:
        suffix = f"/{what}" if what else ""
        return Call("GET", f"/case/{_id(job_id)}{suffix}", self.root)

    def results_pending(self, status_code: int) -> bool:
        return status_code == 202

    def read_audit(self, body: Any) -> Any:
        return camel.audit(body)

    def access_scope(self, wanted: str | None) -> str | None:
        if not wanted:
            return "unlisted"
        scope = self._SCOPES.get(wanted)
        if scope is None:
            raise UsageError(
                f"uploads.access_scope {wanted!r} does not exist in {self.title}, which knows only "
                "'workspace' and 'unlisted'; use one of those in the spec"
            )
        return scope

    def upload(
        self,
        *,
        extension: str,
        original_name: str | None,
        workflow_id: str | None,
        workspace_id: str | None,
        access_scope: str | None,
    ) -> Call:
        return super().upload(
            extension=extension,
            original_name=original_name or f"upload{extension}",  # v1 lists originalName as required
            workflow_id=workflow_id,
            workspace_id=workspace_id,
            access_scope=access_scope,
        )

    def put_content_type(self, original_name: str, given: str | None) -> str | None:
        # v1's presigned URLs accept a MIME type (opus-api.md section 4): say what the bytes are.
        return given or mimetypes.guess_type(original_name)[0] or "application/octet-stream"


def dialect_for(api: str | None, base_url: str, v1_url: str | None = None) -> JobsDialect:
    """The dialect named ``api`` (``v0`` when None)."""
    name = api or DEFAULT_API
    if name == "v0":
        return JobsDialect(base_url)
    if name == "v1":
        return CaseDialect(base_url, v1_url)
    raise UsageError(f"unknown Opus API {name!r}: use 'v0' (the Jobs API, the default) or 'v1' (the Case API)")
