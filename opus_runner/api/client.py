"""The endpoints of the Opus Job Operator API (``opus-api.md``), one method each.

A method builds its request, sends it through the :class:`~.transport.Transport` (the one retry
loop) and hands the answer to :mod:`.answers`. Execute's no-resend rule is :mod:`.execute`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

import httpx

from .. import redact
from ..errors import UsageError
from ..models import AMBIGUOUS_STATUSES, UploadSettings
from ..urls import PLACEHOLDER_CALLBACK_URL, display_url, is_loopback_host
from .answers import (
    AuditProgress,
    ExecuteOutcome,
    ResultsData,
    decoded,
    download_link,
    error_from_response,
    expect_object,
    initiated_job_id,
    received_from,
    results_of,
    status_of,
    upload_slot,
    versions_of,
)
from .execute import ExecuteAttempts
from .transport import (
    DEFAULT_DEADLINE,
    DEFAULT_TIMEOUT,
    MAX_ANSWER_BYTES,
    RetryNotice,
    RetryPolicy,
    Secret,
    Transport,
    origin_of,
    safe_url,
)

#: Seconds a download URL from ``/job/file/download`` stays valid (the API takes 60 to 86400).
DOWNLOAD_URL_EXPIRY = 900
#: Who may read an uploaded file: opus-aaico's default, seen working live (opus-api.md section 4).
DEFAULT_ACCESS_SCOPE = UploadSettings.access_scope
#: The ``accessScope`` values of ``POST /job/file/upload``; ``unlisted`` sends none.
ACCESS_SCOPES = ("all", "user", "workspace", "organization", "unlisted")


def _id(value: str) -> str:
    # Ids go into the path: quote everything so an id can never add a segment or a query.
    return quote(str(value), safe="")


class OpusClient:
    """Async client of the Opus Job Operator API. One per run; use ``async with`` or ``aclose``.

    ``http`` may be shared (the run's ``httpx.AsyncClient``); it is closed by :meth:`aclose`
    only when this client created it. The service key is registered with
    :func:`opus_runner.redact.register` at once, so it is masked everywhere from then on.
    """

    def __init__(
        self,
        base_url: str,
        service_key: str | None,
        *,
        http: httpx.AsyncClient | None = None,
        retry: RetryPolicy | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        deadline: float = DEFAULT_DEADLINE,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
        max_connections: int = 100,
        trace: bool = False,
    ) -> None:
        redact.register(service_key)
        redact.register_url_credentials(base_url)
        self._key = Secret(service_key)
        self.base_url = str(base_url).strip().rstrip("/")
        try:
            url = httpx.URL(self.base_url)
        except (httpx.InvalidURL, TypeError, ValueError):
            url = None
        if url is None or url.scheme not in ("http", "https") or not url.host:
            raise UsageError(
                f"the Opus base URL {redact.mask(redact.without_userinfo(self.base_url))!r} is not an http(s) URL; "
                "pass one like https://operator.opus.com with --base-url or OPUS_BASE_URL"
            )
        if url.scheme == "http" and not is_loopback_host(url.host):
            raise UsageError(
                f"refusing to send the service key over plain http to {url.host}; use https"
            )
        self._transport = Transport(
            self._key,
            (url.scheme, url.host, url.port),
            http=http,
            retry=retry or RetryPolicy(),
            timeout=timeout,
            deadline=deadline,
            max_answer_bytes=max_answer_bytes,
            max_connections=max_connections,
            trace=trace,
        )

    @property
    def on_retry(self) -> Callable[[RetryNotice], None] | None:
        """Called with a :class:`~.transport.RetryNotice` before each retry's pause (the run
        shows it); None (the default) logs retries at INFO instead."""
        return self._transport.on_retry

    @on_retry.setter
    def on_retry(self, callback: Callable[[RetryNotice], None] | None) -> None:
        self._transport.on_retry = callback

    @property
    def http(self) -> httpx.AsyncClient:
        """The ``httpx.AsyncClient`` every request goes through."""
        return self._transport.http

    @property
    def retry(self) -> RetryPolicy:
        return self._transport.retry

    @property
    def deadline(self) -> float:
        """Seconds one whole exchange may take."""
        return self._transport.deadline

    @property
    def max_answer_bytes(self) -> int:
        """The most answer bytes read, counted after decompression."""
        return self._transport.max_answer_bytes

    @property
    def trace(self) -> bool:
        return self._transport.trace

    def __repr__(self) -> str:
        return f"OpusClient(base_url={redact.mask(redact.without_userinfo(self.base_url))!r}, key={self._key!r})"

    async def aclose(self) -> None:
        """Close the HTTP client if this object created it (a shared one is left open)."""
        if self._transport.owns_http:
            await self.http.aclose()

    async def __aenter__(self) -> OpusClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # ---- plumbing -------------------------------------------------------------------------

    def _url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    async def _call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
        subject: str | None = None,
        job_id: str | None = None,
        workspace: str | None = None,
    ) -> Any:
        """An API call with retries; returns the decoded JSON body or raises the mapped error."""
        self._transport.require_key()
        url = self._url(path)

        async def send() -> httpx.Response:
            return await self._transport.send(method, url, params=params, json_body=json_body)

        response = await self._transport.exchange(f"{method} {path}", self.base_url, send)
        return decoded(
            response, method=method, endpoint=path, subject=subject, job_id=job_id, workspace=workspace
        )

    # ---- workflows ------------------------------------------------------------------------

    async def get_workflow(
        self, workflow_id: str, *, version: int | None = None, version_id: str | None = None
    ) -> dict[str, Any]:
        """``GET /workflow/{id}``: the workflow and its ``jobPayloadSchema``.

        ``version_id`` (a version uuid) wins over ``version`` (a number), as on the server.
        """
        params: dict[str, Any] = {}
        if version_id:
            params["workflowVersionId"] = version_id
        elif version is not None:
            params["version"] = version
        body = await self._call(
            "GET",
            f"/workflow/{_id(workflow_id)}",
            params=params or None,
            subject=f"workflow {workflow_id}",
        )
        return expect_object(body, "GET", f"/workflow/{workflow_id}")

    async def get_workflow_object(
        self, workflow_uuid: str, *, version: int | None = None
    ) -> dict[str, Any]:
        """``GET /reference-workflow/v2/workflow-object/{uuid}``: the v2 graph of a workflow.

        ``version`` is sent as ``?version=N`` to ask for one version's graph.
        """
        path = f"/reference-workflow/v2/workflow-object/{_id(workflow_uuid)}"
        body = await self._call(
            "GET",
            path,
            params={"version": version} if version is not None else None,
            subject=f"workflow {workflow_uuid}",
        )
        return expect_object(body, "GET", path)

    async def list_versions(self, workflow_uuid: str) -> list[dict[str, Any]]:
        """``GET /executor/workflow/{uuid}/versions``: the workflow's versions, as listed.

        Accepts a bare list or an object holding it under ``versions`` (or ``data``/``items``).
        """
        path = f"/executor/workflow/{_id(workflow_uuid)}/versions"
        body = await self._call("GET", path, subject=f"workflow {workflow_uuid}")
        return versions_of(body, path)

    # ---- jobs -----------------------------------------------------------------------------

    async def initiate(
        self,
        workflow_id: str,
        *,
        title: str,
        description: str = "",
        version: int | None = None,
        version_id: str | None = None,
        workspaces: tuple[str, ...] | list[str] = (),
        extra: Mapping[str, Any] | None = None,
    ) -> str:
        """``POST /job/initiate``: create a job; returns its ``jobExecutionId`` as a str.

        ``version_id`` is sent as ``workflowVersionId`` and wins over ``version``
        (``workflowVersionNumber``); ``workspaces`` as the comma-separated ``workspaces``.
        ``extra`` adds other documented fields. Job ids are numeric strings live; a JSON
        number is accepted and kept as its digits.
        """
        body: dict[str, Any] = {
            "workflowId": workflow_id,
            "title": title,
            "description": description,
            "source": "api",
        }
        if version_id:
            body["workflowVersionId"] = version_id
        elif version is not None:
            body["workflowVersionNumber"] = version
        if workspaces:
            body["workspaces"] = ",".join(workspaces)
        if extra:
            body.update(extra)
        data = await self._call(
            "POST",
            "/job/initiate",
            json_body=body,
            subject=f"workflow {workflow_id}",
            workspace=", ".join(workspaces) or None,
        )
        return initiated_job_id(data)

    async def file_upload_url(
        self,
        *,
        extension: str,
        original_name: str | None,
        workflow_id: str | None = None,
        workspace_id: str | None = None,
        access_scope: str | None = DEFAULT_ACCESS_SCOPE,
    ) -> tuple[str, str]:
        """``POST /job/file/upload``: returns ``(presignedUrl, fileUrl)`` for one file.

        ``extension`` is sent lower-case with its dot (``PDF`` -> ``.pdf``). The platform needs
        a scope: ``workspaceId`` when given (the file then sits in that workspace), else
        ``workflowId``. ``access_scope`` None (or ``"unlisted"``) sends none, which the
        platform takes as unlisted.
        """
        ext = extension.strip().lower()
        if not ext.startswith("."):
            ext = "." + ext
        body: dict[str, Any] = {"fileExtension": ext}
        if access_scope and access_scope != "unlisted":
            body["accessScope"] = access_scope
        if original_name:
            body["originalName"] = original_name
        if workspace_id:
            body["workspaceId"] = workspace_id
        elif workflow_id:
            body["workflowId"] = workflow_id
        else:
            raise UsageError(
                f"cannot upload {original_name or 'a file'!r}: Opus needs the workflow or the "
                "workspace the file belongs to"
            )
        data = await self._call(
            "POST",
            "/job/file/upload",
            json_body=body,
            workspace=workspace_id or (f"of workflow {workflow_id}" if workflow_id else None),
        )
        return upload_slot(data, original_name)

    async def put_presigned(
        self, presigned_url: str, data: bytes, *, content_type: str | None = None
    ) -> None:
        """``PUT`` the bytes to a presigned storage URL. Never carries the service key.

        No ``Content-Type`` is sent unless given: the platform's presigned URLs are signed
        without one and answer 403 to a request that adds it.
        """
        shown = safe_url(presigned_url)

        async def send() -> httpx.Response:
            return await self._transport.send(
                "PUT", presigned_url, content=data, content_type=content_type, api=False
            )

        response = await self._transport.exchange(f"PUT {shown}", origin_of(presigned_url), send)
        if not response.is_success:
            raise error_from_response(response, method="PUT", endpoint=shown, api=False)

    async def upload_file(
        self,
        data: bytes,
        *,
        original_name: str,
        workflow_id: str | None = None,
        workspace_id: str | None = None,
        access_scope: str | None = DEFAULT_ACCESS_SCOPE,
        content_type: str | None = None,
    ) -> str:
        """Upload one file through the presigned-URL flow; returns the ``fileUrl`` to send.

        No ``Content-Type`` goes with the PUT unless given: presigned URLs signed without one
        refuse a request that adds it (403).
        """
        dot = original_name.rfind(".")
        extension = original_name[dot:] if dot > 0 and dot < len(original_name) - 1 else ""
        if not extension:
            raise UsageError(
                f"cannot upload {original_name!r}: the file name has no extension, and Opus "
                "needs one (.pdf, .csv, ...); rename the file"
            )
        presigned, file_url = await self.file_upload_url(
            extension=extension,
            original_name=original_name,
            workflow_id=workflow_id,
            workspace_id=workspace_id,
            access_scope=access_scope,
        )
        await self.put_presigned(presigned, data, content_type=content_type)
        return file_url

    async def execute(
        self,
        job_id: str,
        payload: Mapping[str, Any],
        *,
        callback_url: str | None = None,
        workspaces: tuple[str, ...] | list[str] = (),
    ) -> ExecuteOutcome:
        """``POST /job/execute``, never sent twice once it may have reached the server.

        ``callbackUrl`` is always sent (Opus refuses an execute without one): ``callback_url``,
        else :data:`~opus_runner.urls.PLACEHOLDER_CALLBACK_URL`, a host that never resolves.

        It is sent again only when the request provably never left (a connect error, a pool
        timeout) or the service shows the job holds no input (:meth:`execute_received`). Any
        other unclear ending (read timeout, dropped connection, 429, 5xx, an unreadable 2xx)
        is settled by reading the job: received -> an unconfirmed :class:`ExecuteOutcome`;
        cannot tell, or still no input after the last attempt -> :class:`ExecuteOutcomeUnknown`
        (the journal keeps the job unconfirmed for ``resume`` to ask again). A refusal, also
        one inside a 2xx body, raises :class:`~opus_runner.errors.ExecuteRefused`. The rule
        itself is :class:`~.execute.ExecuteAttempts`.
        """
        self._transport.require_key()
        url = self._url("/job/execute")
        body: dict[str, Any] = {
            "jobExecutionId": job_id,
            "jobPayloadSchemaInstance": payload,
            "callbackUrl": callback_url or PLACEHOLDER_CALLBACK_URL,
        }
        if workspaces:
            body["workspaces"] = ",".join(workspaces)

        async def send() -> httpx.Response:
            return await self._transport.send("POST", url, json_body=body)

        rule = ExecuteAttempts(job_id, self.execute_received)
        return await self._transport.exchange("POST /job/execute", self.base_url, send, rule)

    async def job(self, job_id: str) -> dict[str, Any]:
        """``GET /job/{id}``: the job's detail (``status``, ``input``, ``output``, ``audit``...)."""
        path = f"/job/{_id(job_id)}"
        body = await self._call("GET", path, subject=f"job {job_id}", job_id=job_id)
        return expect_object(body, "GET", path, job_id=job_id)

    async def execute_received(self, job_id: str) -> tuple[bool | None, str]:
        """Whether Opus received an execute for ``job_id``: ``(True | False | None, status)``.

        A status past PENDING proves it. PENDING is also what an initiated, never-executed job
        may read (opus-api.md section 6), so then the job's detail decides: an ``input``
        holding values means the payload arrived, an empty or null one that it did not. None:
        the detail does not say (no ``input`` field at all).
        """
        status = await self.status(job_id)
        if status not in AMBIGUOUS_STATUSES:
            return True, status
        return received_from(await self.job(job_id), status)

    async def status(self, job_id: str) -> str:
        """``GET /job/{id}/status``, normalised (``IN PROGRESS`` -> ``IN_PROGRESS``). Never
        raises on an unknown spelling."""
        path = f"/job/{_id(job_id)}/status"
        body = await self._call("GET", path, subject=f"job {job_id}", job_id=job_id)
        return status_of(body)

    async def results(self, job_id: str) -> ResultsData:
        """``GET /job/{id}/results``, every published shape normalised (:mod:`opus_runner.results`)."""
        path = f"/job/{_id(job_id)}/results"
        body = await self._call("GET", path, subject=f"job {job_id}", job_id=job_id)
        return results_of(body, path, job_id)

    async def file_download_url(
        self, file_url: str, *, expiry: int = DOWNLOAD_URL_EXPIRY
    ) -> dict[str, Any]:
        """``POST /job/file/download``: a presigned URL for an output file reference.

        Returns the answer (``presignedUrl``, ``fileUrl``, ``contentType``, ``contentLength``);
        live clients could not GET ``fileUrl`` references directly (opus-api.md section 4).
        """
        path = "/job/file/download"
        body = await self._call(
            "POST",
            path,
            json_body={"fileUrl": file_url, "customExpiry": expiry},
            subject=f"file {display_url(file_url)}",
        )
        return download_link(body, file_url, path)

    async def audit(self, job_id: str) -> AuditProgress:
        """``GET /job/{id}/audit``: node-level progress."""
        path = f"/job/{_id(job_id)}/audit"
        body = await self._call("GET", path, subject=f"job {job_id}", job_id=job_id)
        return AuditProgress.from_raw(body)

    async def search_jobs(
        self,
        *,
        workflow_id: str | None = None,
        status: str | None = None,
        offset: int = 0,
        max_results: int = 25,
    ) -> Any:
        """``GET /job/search``: the server's answer as decoded JSON (its shape is not fixed)."""
        params: dict[str, Any] = {"offset": offset, "maxResults": max_results}
        if workflow_id:
            params["workflowId"] = workflow_id
        if status:
            params["status"] = status
        return await self._call("GET", "/job/search", params=params)
