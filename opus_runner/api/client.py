"""The endpoints of the Opus API (``opus-api.md``), one method each, in either dialect.

A method asks the client's dialect (:mod:`.dialects`: v0 Jobs or v1 Case) for its request,
sends it through the :class:`~.transport.Transport` (the one retry loop) and hands the answer
to :mod:`.answers`, read the dialect's way. Execute's no-resend rule is :mod:`.execute`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import httpx

from .. import redact
from ..errors import ApiError, RouteMissing, UsageError
from ..models import AMBIGUOUS_STATUSES, UploadSettings
from ..urls import display_url, is_loopback_host
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
    route_missing,
    status_of,
    upload_slot,
    versions_of,
)
from .dialects import Call, JobsDialect, dialect_for
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


#: How long ``results`` keeps asking while v1 answers 202 ("not terminal yet") before it says
#: so; statuses are read first, so this only covers the platform catching up.
RESULTS_PENDING_WAIT = 300.0


class OpusClient:
    """Async client of the Opus API, in the dialect ``api`` names. One per run; use ``async
    with`` or ``aclose``.

    ``api`` is ``"v0"`` (the Jobs API at ``base_url``, the default) or ``"v1"`` (the Case API
    at ``v1_url``, by default ``{base_url}/api/v1``); every method means the same in both and
    returns the same models (:mod:`.dialects`). ``http`` may be shared (the run's
    ``httpx.AsyncClient``); it is closed by :meth:`aclose` only when this client created it.
    The service key is registered with :func:`opus_runner.redact.register` at once, so it is
    masked everywhere from then on.
    """

    def __init__(
        self,
        base_url: str,
        service_key: str | None,
        *,
        api: str | None = None,
        v1_url: str | None = None,
        http: httpx.AsyncClient | None = None,
        retry: RetryPolicy | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        deadline: float = DEFAULT_DEADLINE,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
        max_connections: int = 100,
        trace: bool = False,
        results_pending_wait: float = RESULTS_PENDING_WAIT,
    ) -> None:
        redact.register(service_key)
        redact.register_url_credentials(base_url)
        if v1_url:
            redact.register_url_credentials(v1_url)
        self._key = Secret(service_key)
        self.base_url = str(base_url).strip().rstrip("/")
        origins = {_checked_origin(self.base_url)}
        self._dialect: JobsDialect = dialect_for(api, self.base_url, str(v1_url).strip() if v1_url else None)
        if self._dialect.root != self.base_url:
            origins.add(_checked_origin(self._dialect.root))
        self.results_pending_wait = results_pending_wait
        self._transport = Transport(
            self._key,
            origins,
            http=http,
            retry=retry or RetryPolicy(),
            timeout=timeout,
            deadline=deadline,
            max_answer_bytes=max_answer_bytes,
            max_connections=max_connections,
            trace=trace,
        )

    @property
    def api(self) -> str:
        """The dialect spoken: ``"v0"`` or ``"v1"``."""
        return self._dialect.name

    @property
    def api_url(self) -> str:
        """The URL the dialect's own routes hang from (the base URL for v0)."""
        return self._dialect.root

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
        shown = redact.mask(redact.without_userinfo(self.base_url))
        api = "" if self.api == "v0" else f", api={self.api!r}"
        return f"OpusClient(base_url={shown!r}{api}, key={self._key!r})"

    async def aclose(self) -> None:
        """Close the HTTP client if this object created it (a shared one is left open)."""
        if self._transport.owns_http:
            await self.http.aclose()

    async def __aenter__(self) -> OpusClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # ---- plumbing -------------------------------------------------------------------------

    def unknown_id_hint(self, job_id: str) -> str | None:
        """What to add to "job X not found" when X looks like the other dialect's id."""
        return self._dialect.unknown_id_hint(job_id)

    async def _send(self, call: Call) -> httpx.Response:
        """One call with retries: its final answer, whatever its status."""
        self._transport.require_key()

        async def send() -> httpx.Response:
            return await self._transport.send(call.method, call.url, params=call.params, json_body=call.body)

        return await self._transport.exchange(call.label, call.root, send)

    def _decoded(
        self,
        call: Call,
        response: httpx.Response,
        *,
        subject: str | None = None,
        job_id: str | None = None,
        workspace: str | None = None,
    ) -> Any:
        """The decoded JSON body, or the mapped error (a missing v1 route said as such)."""
        if response.status_code == 404 and route_missing(response):
            hint = self._dialect.route_missing_hint(call)
            if hint:
                raise RouteMissing(hint, status_code=404, method=call.method, endpoint=call.path, job_id=job_id)
        return decoded(
            response, method=call.method, endpoint=call.path, subject=subject, job_id=job_id, workspace=workspace
        )

    async def _call(
        self,
        call: Call,
        *,
        subject: str | None = None,
        job_id: str | None = None,
        workspace: str | None = None,
    ) -> Any:
        """An API call with retries; returns the decoded JSON body or raises the mapped error."""
        response = await self._send(call)
        return self._decoded(call, response, subject=subject, job_id=job_id, workspace=workspace)

    async def _job_call(self, job_id: str, what: str = "") -> tuple[Call, Any]:
        self._dialect.check_job_id(job_id)
        call = self._dialect.job(job_id, what)
        return call, await self._call(call, subject=f"{self._dialect.noun} {job_id}", job_id=job_id)

    # ---- workflows ------------------------------------------------------------------------

    async def get_workflow(
        self, workflow_id: str, *, version: int | None = None, version_id: str | None = None
    ) -> dict[str, Any]:
        """``GET /workflow/{id}``: the workflow and its inputs (``jobPayloadSchema``, or the v2
        graph; v1's camelCase graph is read into the v2 graph's field names).

        ``version_id`` (a version uuid) wins over ``version`` (a number), as on the server.
        """
        params: dict[str, Any] = {}
        if version_id:
            params["workflowVersionId"] = version_id
        elif version is not None:
            params["version"] = version
        call = self._dialect.workflow(workflow_id, params or None)
        body = await self._call(call, subject=f"workflow {workflow_id}")
        return self._dialect.read_workflow(expect_object(body, "GET", call.path))

    async def get_workflow_object(
        self, workflow_uuid: str, *, version: int | None = None
    ) -> dict[str, Any]:
        """``GET /reference-workflow/v2/workflow-object/{uuid}``: the v2 graph of a workflow.

        ``version`` is sent as ``?version=N`` to ask for one version's graph. (v1 documents no
        such route: the v0 one is asked.)
        """
        call = self._dialect.workflow_object(workflow_uuid, version)
        body = await self._call(call, subject=f"workflow {workflow_uuid}")
        return expect_object(body, "GET", call.path)

    async def list_versions(self, workflow_uuid: str) -> list[dict[str, Any]]:
        """``GET /executor/workflow/{uuid}/versions``: the workflow's versions, as listed.

        Accepts a bare list or an object holding it under ``versions`` (or ``data``/``items``).
        """
        call = self._dialect.versions(workflow_uuid)
        body = await self._call(call, subject=f"workflow {workflow_uuid}")
        return versions_of(body, call.path)

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
        """Create a job (v0 ``POST /job/initiate``, v1 ``POST /case``); returns its id as a str.

        ``version_id`` is sent as ``workflowVersionId`` and wins over ``version``
        (``workflowVersionNumber``); ``workspaces`` as the comma-separated ``workspaces``.
        ``extra`` adds other documented fields. Job ids are numeric strings live (case ids
        UUIDs); a JSON number is accepted and kept as its digits.
        """
        call = self._dialect.initiate(
            workflow_id,
            title=title,
            description=description,
            version=version,
            version_id=version_id,
            workspaces=workspaces,
            extra=extra,
        )
        data = await self._call(call, subject=f"workflow {workflow_id}", workspace=", ".join(workspaces) or None)
        return initiated_job_id(data, field=self._dialect.id_field, endpoint=call.path)

    async def file_upload_url(
        self,
        *,
        extension: str,
        original_name: str | None,
        workflow_id: str | None = None,
        workspace_id: str | None = None,
        access_scope: str | None = DEFAULT_ACCESS_SCOPE,
    ) -> tuple[str, str]:
        """An upload slot (v0 ``POST /job/file/upload``, v1 ``POST /file/upload/presigned``):
        returns ``(presignedUrl, fileUrl)`` for one file.

        ``extension`` is sent lower-case with its dot (``PDF`` -> ``.pdf``). The platform needs
        a scope: ``workspaceId`` when given (the file then sits in that workspace), else
        ``workflowId``. ``access_scope`` None (or ``"unlisted"``) sends none in v0, which the
        platform takes as unlisted; v1 knows only ``workspace`` and ``unlisted``.
        """
        ext = extension.strip().lower()
        if not ext.startswith("."):
            ext = "." + ext
        if not workspace_id and not workflow_id:
            raise UsageError(
                f"cannot upload {original_name or 'a file'!r}: Opus needs the workflow or the "
                "workspace the file belongs to"
            )
        call = self._dialect.upload(
            extension=ext,
            original_name=original_name,
            workflow_id=workflow_id,
            workspace_id=workspace_id,
            access_scope=access_scope,
        )
        data = await self._call(
            call, workspace=workspace_id or (f"of workflow {workflow_id}" if workflow_id else None)
        )
        return upload_slot(data, original_name, endpoint=call.path)

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

        v0: no ``Content-Type`` goes with the PUT unless given (presigned URLs signed without
        one refuse a request that adds it, 403); v1's accept one, so the file's MIME type goes.
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
        content_type = self._dialect.put_content_type(original_name, content_type)
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
        """Start the job with ``payload`` (v0 ``POST /job/execute``, v1 ``POST
        /case/{id}/execute``), never sent twice once it may have reached the server.

        v0 always sends ``callbackUrl`` (Opus refuses an execute without one): ``callback_url``,
        else :data:`~opus_runner.urls.PLACEHOLDER_CALLBACK_URL`, a host that never resolves;
        v1, where it is optional, sends only a real one.

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
        self._dialect.check_job_id(job_id)
        call = self._dialect.execute(job_id, payload, callback_url, workspaces)

        async def send() -> httpx.Response:
            return await self._transport.send(call.method, call.url, json_body=call.body)

        rule = ExecuteAttempts(job_id, self.execute_received, endpoint=call.path)
        return await self._transport.exchange(call.label, call.root, send, rule)

    async def job(self, job_id: str) -> dict[str, Any]:
        """The job's detail (v0 ``GET /job/{id}``: ``status``, ``input``, ``output``, ``audit``...;
        v1 ``GET /case/{id}``, which v1 does not document)."""
        call, body = await self._job_call(job_id)
        return expect_object(body, "GET", call.path, job_id=job_id)

    async def execute_received(self, job_id: str) -> tuple[bool | None, str]:
        """Whether Opus received an execute for ``job_id``: ``(True | False | None, status)``.

        A status past PENDING proves it. PENDING is also what an initiated, never-executed job
        may read (opus-api.md section 6), so then the job's detail decides: an ``input``
        holding values means the payload arrived, an empty or null one that it did not. None:
        the detail does not say (no ``input`` field at all), or, in v1, the service has no
        detail route (then nothing is ever resent on a guess).
        """
        status = await self.status(job_id)
        if status not in AMBIGUOUS_STATUSES:
            return True, status
        try:
            detail = await self.job(job_id)
        except ApiError as exc:
            if self.api == "v0" or exc.status_code != 404:
                raise
            return None, status  # v1 documents no case detail: missing route or not, no answer
        return received_from(detail, status)

    async def status(self, job_id: str) -> str:
        """The job's status (``GET /job/{id}/status``, ``/case/{id}/status``), normalised
        (``IN PROGRESS`` -> ``IN_PROGRESS``). Never raises on an unknown spelling."""
        _call, body = await self._job_call(job_id, "status")
        return status_of(body)

    async def results(self, job_id: str) -> ResultsData:
        """The job's results (``GET /job/{id}/results``, ``/case/{id}/results``), every
        published shape normalised (:mod:`opus_runner.results`).

        v1 answers 202 until the case is terminal: that is "not yet", never a failure, so the
        client asks again (backing off, up to ``results_pending_wait`` seconds), then says
        the case has not finished.
        """
        self._dialect.check_job_id(job_id)
        call = self._dialect.job(job_id, "results")
        waited, pause = 0.0, 0.25
        while True:
            response = await self._send(call)
            if not self._dialect.results_pending(response.status_code):
                break
            if waited >= self.results_pending_wait:
                raise ApiError(
                    f"{self._dialect.noun} {job_id} still has no results after {waited:.0f} s (HTTP "
                    f"{response.status_code}: not finished yet); ask again with `opus-run results {job_id}`",
                    status_code=response.status_code,
                    method=call.method,
                    endpoint=call.path,
                    job_id=job_id,
                )
            await self.retry.sleep(pause)
            waited += pause
            pause = min(pause * 2, 5.0)
        body = self._decoded(call, response, subject=f"{self._dialect.noun} {job_id}", job_id=job_id)
        return results_of(body, call.path, job_id)

    async def file_download_url(
        self, file_url: str, *, expiry: int = DOWNLOAD_URL_EXPIRY
    ) -> dict[str, Any]:
        """``POST /job/file/download``: a presigned URL for an output file reference.

        Returns the answer (``presignedUrl``, ``fileUrl``, ``contentType``, ``contentLength``);
        live clients could not GET ``fileUrl`` references directly (opus-api.md section 4).
        (v1 documents no download route: the v0 one is asked.)
        """
        call = self._dialect.download(file_url, expiry)
        body = await self._call(call, subject=f"file {display_url(file_url)}")
        return download_link(body, file_url, call.path)

    async def audit(self, job_id: str) -> AuditProgress:
        """Node-level progress (``GET /job/{id}/audit``, ``/case/{id}/audit``); v1's camelCase
        fields are read into the v0 names, so ``raw`` has one shape."""
        _call, body = await self._job_call(job_id, "audit")
        return AuditProgress.from_raw(self._dialect.read_audit(body))

    async def search_jobs(
        self,
        *,
        workflow_id: str | None = None,
        status: str | None = None,
        offset: int = 0,
        max_results: int = 25,
    ) -> Any:
        """``GET /job/search``: the server's answer as decoded JSON (its shape is not fixed).
        (v1 documents no search: the v0 route is asked.)"""
        params: dict[str, Any] = {"offset": offset, "maxResults": max_results}
        if workflow_id:
            params["workflowId"] = workflow_id
        if status:
            params["status"] = status
        return await self._call(self._dialect.search(params))


def _checked_origin(url_text: str) -> tuple[str, str, int | None]:
    """The ``(scheme, host, port)`` the key may go to, or the sentence saying why not."""
    try:
        url = httpx.URL(url_text)
    except (httpx.InvalidURL, TypeError, ValueError):
        url = None
    if url is None or url.scheme not in ("http", "https") or not url.host:
        raise UsageError(
            f"the Opus base URL {redact.mask(redact.without_userinfo(url_text))!r} is not an http(s) URL; "
            "pass one like https://operator.opus.com with --base-url or OPUS_BASE_URL"
        )
    if url.scheme == "http" and not is_loopback_host(url.host):
        raise UsageError(
            f"refusing to send the service key over plain http to {url.host}; use https"
        )
    return (url.scheme, url.host, url.port)
