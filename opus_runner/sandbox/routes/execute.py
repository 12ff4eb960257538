"""``POST /job/execute``: check the body the way the job's dialect does, then start the job.

Starting a job renders its outputs once (unless it already fails), starts its clock and, for a
loopback ``callbackUrl``, schedules its callback.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from typing import Any, cast
from urllib.parse import quote, urlsplit

from starlette.requests import Request
from starlette.responses import Response

from ...urls import is_loopback_host
from ..core import SandboxCore
from ..fixture import OutputRenderError
from ..responses import BadBody, bad_request, error, forbidden, json_body, json_response, not_found
from ..state import Job, StoredFile
from ..validation import FindFile, documented_problems, input_failures, is_url, structural_problems


async def execute(sandbox: SandboxCore, request: Request) -> Response:
    """``POST /job/execute``: check the body like the real service, then start the job."""
    try:
        body = await json_body(request)
    except BadBody as bad:
        return bad.response
    job_id = body.get("jobExecutionId")
    if not isinstance(job_id, str) or not job_id:
        if job_id is None or job_id == "":
            return bad_request(["jobExecutionId should not be empty"])
        return bad_request(["jobExecutionId must be a string"])
    sandbox.state.executes[job_id] += 1
    sandbox.state.payload_history.setdefault(job_id, []).append(body)
    job = sandbox.state.jobs.get(job_id)
    if job is None or job.live:
        return _execute_live(sandbox, job_id, job, body, request)
    return _execute_documented(sandbox, job, body, request)


def _execute_live(
    sandbox: SandboxCore, job_id: str, job: Job | None, body: dict[str, Any], request: Request
) -> Response:
    # What NestJS's validation pipe refuses before the handler runs.
    problems = []
    if not is_url(body.get("callbackUrl")):
        problems.append("callbackUrl must be a URL address")
    instance = body.get("jobPayloadSchemaInstance")
    if not isinstance(instance, dict):
        problems.append("jobPayloadSchemaInstance must be an object")
    workspaces = body.get("workspaces")
    if workspaces is not None and not isinstance(workspaces, str):
        problems.append("workspaces must be a string")
    if problems:
        if job is not None and job.executed_at is None:
            sandbox.state.payloads[job_id] = body
        return bad_request(problems)
    if job is None:
        return not_found(f"Job {job_id} not found")
    if job.executed_at is None:
        sandbox.state.payloads[job_id] = body
    accepted = json_response(
        {"success": True, "jobExecutionId": job.id, "message": "Job execution has been started"}, 201
    )
    return accept_live(sandbox, job, body, cast(dict[str, Any], instance), request, accepted, workspaces=workspaces)


def accept_live(
    sandbox: SandboxCore,
    job: Job,
    body: dict[str, Any],
    instance: dict[str, Any],
    request: Request,
    accepted: Response,
    *,
    workspaces: str | None = None,
    field: str = "jobPayloadSchemaInstance",
) -> Response:
    """The live service's checks of a well-formed execute of ``job``, then its start; every
    dialect's execute route ends here (``field`` names where its body holds the inputs)."""
    problems = structural_problems(job, instance, field=field)
    if problems:
        return bad_request(problems)
    if any(isinstance(entry.get("type"), (dict, list)) for entry in instance.values()):
        return error(500, "Internal server error")
    if workspaces:
        unknown = sandbox.unknown_workspaces(workspaces)
        if unknown:
            return forbidden(unknown[0])
    if job.executed_at is not None:
        # A second execute: the live answer is unknown, so it is accepted and changes nothing.
        return accepted
    failures = input_failures(job, instance, _file_finder(sandbox, request), sandbox.state.upload_slots)
    if failures:
        job.input_failed = True
        job.error = f"Node '{job.workflow.nodes[0]}' failed: " + "; ".join(failures)
    _start(sandbox, job, body, instance, request)
    return accepted


def _execute_documented(sandbox: SandboxCore, job: Job, body: dict[str, Any], request: Request) -> Response:
    if job.executed_at is not None:
        return error(409, f"Job {job.id} has already been executed", "Conflict")
    sandbox.state.payloads[job.id] = body
    problems = documented_problems(job, body, _file_finder(sandbox, request), sandbox.state.upload_slots)
    if problems:
        return bad_request(problems)
    _start(sandbox, job, body, body["jobPayloadSchemaInstance"], request)
    return json_response({"success": True, "jobExecutionId": job.id, "message": "Job execution started"})


def _start(
    sandbox: SandboxCore, job: Job, body: Mapping[str, Any], instance: dict[str, Any], request: Request
) -> None:
    """Accept the execute: render the outputs (unless the job already fails) and start the clock."""
    values = {var: entry.get("value") for var, entry in instance.items()}
    context = {
        "inputs": {job.version.inputs_by_var[var].display_name: value for var, value in values.items()},
        "vars": values,
        "job": {"id": job.id, "title": job.title},
    }
    base = sandbox.base(request)
    prefix = "media" if job.live else "files"

    def store(name: str, data: bytes) -> str:
        token = secrets.token_hex(16)
        path = f"/{prefix}/{token}/{quote(name)}"
        sandbox.state.files[token] = StoredFile(
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
            sandbox.callbacks.schedule(job)
        else:
            # The network rule: the sandbox only ever talks to loopback.
            job.callback_skipped = True
            sandbox.state.callbacks_skipped += 1


def _file_finder(sandbox: SandboxCore, request: Request) -> FindFile:
    """Looks up file URLs as the server the request came in on sees them."""
    return lambda url: sandbox.find_file(url, request)
