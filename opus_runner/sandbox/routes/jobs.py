"""The job routes: initiate, status, results, audit, detail, search, archive and delete.

Execute, the route that starts a job, has its own module (execute.py).
"""

from __future__ import annotations

import time
from typing import Any, cast

from starlette.requests import Request
from starlette.responses import Response

from ..bodies import audit_body, results_body
from ..core import SandboxCore
from ..fixture import is_uuid
from ..responses import BadBody, bad_request, error, forbidden, iso, json_body, json_response
from ..state import Job
from ..validation import is_int

JOB_SOURCES = ("api", "email-agent", "chat-agent", "scheduled", "manual", "agent", "opus-ai", "web-app")
ARCHIVE_STATUSES = ("all", "archivedOnly", "nonArchivedOnly")
DEFAULT_SEARCH_RESULTS = 25


async def initiate(sandbox: SandboxCore, request: Request) -> Response:
    """``POST /job/initiate``: create a job (PENDING live, CREATED documented)."""
    try:
        body = await json_body(request)
    except BadBody as bad:
        return bad.response
    job = new_job(sandbox, body)
    if isinstance(job, Response):
        return job
    sandbox.state.add_job(job)
    return json_response({"jobExecutionId": job.id}, sandbox.created(job.workflow))


def new_job(sandbox: SandboxCore, body: dict[str, Any], *, api: str = "v0") -> Job | Response:
    """The job an initiate body asks for (v0 ``POST /job/initiate``, v1 ``POST /case``), or
    the error to answer: the same checks in both, a UUID id for a v1 case."""
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
    if number is not None and (not is_int(number) or number < 1):
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
        return bad_request(problems)
    workflow = sandbox.workflow_or_error(workflow_id, field_name)
    if isinstance(workflow, Response):
        return workflow
    version = sandbox.resolve_version(workflow, number, version_id, field_name="workflowVersionNumber")
    if isinstance(version, Response):
        return version
    workspaces = body.get("workspaces")
    if workspaces:
        unknown = sandbox.unknown_workspaces(workspaces)
        if unknown:
            return forbidden(unknown[0])
    return Job(
        id=sandbox.new_job_id(workflow, api=api),
        workflow=workflow,
        version=version,
        title=cast(str, title),
        description=body.get("description") or "",
        workspaces=workspaces or None,
        source=source or "api",
        api=api,
    )


async def initiate_v2(sandbox: SandboxCore, request: Request) -> Response:
    """``POST /job/v2/initiate``: a permanent redirect to ``/job/initiate``."""
    return Response(b"", status_code=308, headers={"location": "/job/initiate"})


async def job_status(sandbox: SandboxCore, request: Request) -> Response:
    """``GET /job/{id}/status``."""
    job = sandbox.job_or_404(request)
    if isinstance(job, Response):
        return job
    now = time.monotonic()
    if job.is_terminal(now):
        sandbox.state.job_seen_finished(job.id)
    return json_response({"status": job.status(now)})


async def job_results(sandbox: SandboxCore, request: Request) -> Response:
    """``GET /job/{id}/results``: 400 until the job is finished."""
    job = sandbox.job_or_404(request)
    if isinstance(job, Response):
        return job
    if not job.is_terminal(time.monotonic()):
        return error(400, "Job is not completed yet", "Bad Request")
    sandbox.state.job_seen_finished(job.id)
    return json_response(results_body(job))


async def job_audit(sandbox: SandboxCore, request: Request) -> Response:
    """``GET /job/{id}/audit``: node-level progress, proportional to the time elapsed."""
    job = sandbox.job_or_404(request)
    if isinstance(job, Response):
        return job
    return json_response(audit_body(job, time.monotonic()))


async def job_detail(sandbox: SandboxCore, request: Request) -> Response:
    """``GET /job/{id}``: the job's detail; ``input`` is null until an execute was accepted."""
    job = sandbox.job_or_404(request)
    if isinstance(job, Response):
        return job
    now = time.monotonic()
    terminal = job.is_terminal(now)
    return json_response(
        {
            "jobExecutionId": job.id,
            "status": job.status(now),
            "input": job.input,
            "output": results_body(job) if terminal else None,
            "audit": audit_body(job, now),
            "title": job.title,
            "description": job.description,
            "createdAt": iso(job.created_at),
            "workflow": {"id": job.workflow.id, "name": job.workflow.name},
            "workflowVersionId": job.version.version_id,
            "builderType": "v2" if job.live else "v1",
        }
    )


async def search(sandbox: SandboxCore, request: Request) -> Response:
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
        return bad_request(problems)
    from ...models import normalise_status

    wanted = {normalise_status(s) for s in query.get("status", "").split(",") if s.strip()}
    spaces = {s.strip().lower() for s in query.get("workspaceIds", "").split(",") if s.strip()}
    now = time.monotonic()
    found = []
    for job in list(sandbox.state.jobs.values()):
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
                "createdAt": iso(job.created_at),
                "archived": job.archived,
                "workflow": {
                    "id": job.workflow.id,
                    "name": job.workflow.name,
                    "description": job.workflow.description,
                },
            }
        )
    offset, limit = numbers["offset"], numbers["maxResults"]
    return json_response({"totalCount": len(found), "jobs": found[offset : offset + limit]})


async def archive(sandbox: SandboxCore, request: Request) -> Response:
    """``POST /job/{id}/archive`` archives; ``DELETE`` un-archives."""
    job = sandbox.job_or_404(request)
    if isinstance(job, Response):
        return job
    job.archived = request.method == "POST"
    status = sandbox.created(job) if request.method == "POST" else 200
    return json_response({"success": True, "jobExecutionId": job.id, "archived": job.archived}, status)


async def delete(sandbox: SandboxCore, request: Request) -> Response:
    """``DELETE /job/{id}/delete``."""
    job = sandbox.job_or_404(request)
    if isinstance(job, Response):
        return job
    sandbox.state.jobs.pop(job.id, None)
    sandbox.state.job_seen_finished(job.id)
    sandbox.callbacks.cancel(job.id)
    return json_response({"success": True, "jobExecutionId": job.id, "message": "Job deleted"})
