"""The v1 Case API's case routes under ``/api/v1`` (opus-api.md section 0).

A case is a job of the same store: the v0 and v1 routes see the same jobs, checked by the same
validation (jobs.new_job, execute.accept_live), with v1's shapes: ``{caseId}``, a
``{payload, callbackUrl?}`` execute, results answering 202 until the case is terminal, a
camelCase audit. ``GET /case/{id}`` (the detail v1 does not document) is served with the v0
detail's fields in v1's spelling, so a client can ask it whether an execute arrived.
"""

from __future__ import annotations

import time
from typing import Any, cast

from starlette.requests import Request
from starlette.responses import Response

from .. import v1_shapes
from ..bodies import audit_body
from ..core import SandboxCore
from ..responses import BadBody, bad_request, iso, json_body, json_response, not_found
from ..state import Job
from ..validation import is_url
from .execute import accept_live
from .jobs import new_job


async def create_case(sandbox: SandboxCore, request: Request) -> Response:
    """``POST /api/v1/case``: create a case (a job with a UUID id, PENDING until executed)."""
    try:
        body = await json_body(request)
    except BadBody as bad:
        return bad.response
    job = new_job(sandbox, body, api="v1")
    if isinstance(job, Response):
        return job
    sandbox.state.add_job(job)
    return json_response({"caseId": job.id}, 201)


async def execute_case(sandbox: SandboxCore, request: Request) -> Response:
    """``POST /api/v1/case/{id}/execute`` ``{payload, callbackUrl?}``: start the case."""
    case_id = request.path_params["job_id"]
    try:
        body = await json_body(request)
    except BadBody as bad:
        return bad.response
    sandbox.state.executes[case_id] += 1
    sandbox.state.payload_history.setdefault(case_id, []).append(body)
    job = sandbox.state.jobs.get(case_id)
    problems = []
    payload = body.get("payload")
    if not isinstance(payload, dict):
        problems.append("payload must be an object")
    callback = body.get("callbackUrl")
    if callback is not None and not is_url(callback):
        problems.append("callbackUrl must be a URL address")
    if problems:
        if job is not None and job.executed_at is None:
            sandbox.state.payloads[case_id] = body
        return bad_request(problems)
    if job is None:
        return _case_not_found(case_id)
    if job.executed_at is None:
        sandbox.state.payloads[case_id] = body
    accepted = json_response(
        {"success": True, "caseId": job.id, "message": "Case execution has been started"}, 201
    )
    return accept_live(sandbox, job, body, cast(dict[str, Any], payload), request, accepted, field="payload")


async def case_status(sandbox: SandboxCore, request: Request) -> Response:
    """``GET /api/v1/case/{id}/status``."""
    job = _case_or_404(sandbox, request)
    if isinstance(job, Response):
        return job
    now = time.monotonic()
    if job.is_terminal(now):
        sandbox.state.job_seen_finished(job.id)
    return json_response({"caseId": job.id, "status": job.status(now)})


async def case_results(sandbox: SandboxCore, request: Request) -> Response:
    """``GET /api/v1/case/{id}/results``: 202 until the case is terminal, then its results."""
    job = _case_or_404(sandbox, request)
    if isinstance(job, Response):
        return job
    now = time.monotonic()
    if not job.is_terminal(now):
        return json_response(
            {"caseId": job.id, "status": job.status(now), "message": "Case has not finished yet"}, 202
        )
    sandbox.state.job_seen_finished(job.id)
    return json_response(_results(job))


async def case_audit(sandbox: SandboxCore, request: Request) -> Response:
    """``GET /api/v1/case/{id}/audit``: the audit in camelCase."""
    job = _case_or_404(sandbox, request)
    if isinstance(job, Response):
        return job
    body = audit_body(job, time.monotonic())
    body.pop("jobExecutionId", None)
    return json_response({"caseId": job.id, **v1_shapes.audit(body)})


async def case_detail(sandbox: SandboxCore, request: Request) -> Response:
    """``GET /api/v1/case/{id}``: the case's detail; ``input`` is null until an execute was accepted."""
    job = _case_or_404(sandbox, request)
    if isinstance(job, Response):
        return job
    now = time.monotonic()
    return json_response(
        {
            "caseId": job.id,
            "status": job.status(now),
            "input": job.input,
            "output": _results(job) if job.is_terminal(now) else None,
            "title": job.title,
            "description": job.description,
            "createdAt": iso(job.created_at),
            "workflow": {"id": job.workflow.id, "name": job.workflow.name},
            "workflowVersionId": job.version.version_id,
        }
    )


def _results(job: Job) -> dict[str, Any]:
    """``{results: {VAR: {value, type, displayName}}}``, with ``error`` for a failed case."""
    if job.error is not None:
        return {"results": {}, "error": job.error}
    if job.stops:
        return {"results": {}}
    return {
        "results": {
            out.name: {"value": value, "type": out.type, "displayName": out.display_name}
            for out, value in job.outputs
        }
    }


def _case_not_found(case_id: str) -> Response:
    return not_found(f"Case {case_id} not found")


def _case_or_404(sandbox: SandboxCore, request: Request) -> Job | Response:
    job = sandbox.state.jobs.get(request.path_params["job_id"])
    if job is None:
        return _case_not_found(request.path_params["job_id"])
    return job
