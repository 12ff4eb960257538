"""The workflow routes: the v1 description, the v2 graph and the versions of a workflow."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from starlette.requests import Request
from starlette.responses import Response

from ..bodies import documented_graph, live_graph
from ..core import SandboxCore
from ..fixture import VersionDef, WorkflowDef
from ..responses import error, iso, json_response


def workflow_and_version(
    sandbox: SandboxCore, request: Request
) -> tuple[WorkflowDef, VersionDef] | Response:
    workflow = sandbox.workflow_or_error(request.path_params["workflow_id"])
    if isinstance(workflow, Response):
        return workflow
    query = request.query_params
    version = sandbox.resolve_version(workflow, query.get("version"), query.get("workflowVersionId"))
    if isinstance(version, Response):
        return version
    return workflow, version


async def get_workflow(sandbox: SandboxCore, request: Request) -> Response:
    """``GET /workflow/{id}``: live, the v2 graph; documented, a description with ``jobPayloadSchema``."""
    found = workflow_and_version(sandbox, request)
    if isinstance(found, Response):
        return found
    workflow, version = found
    if workflow.api == "v2-only":
        return error(500, "V1 workflow details are no longer supported")
    if workflow.api == "v1-404":
        return error(404, f"Cannot GET {request.url.path}", "Not Found")
    if workflow.live:
        return json_response(live_graph(workflow, version))
    return json_response(
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


async def get_workflow_object(sandbox: SandboxCore, request: Request) -> Response:
    """``GET /reference-workflow/v2/workflow-object/{id}``: the workflow as a graph (every api mode)."""
    found = workflow_and_version(sandbox, request)
    if isinstance(found, Response):
        return found
    workflow, version = found
    if workflow.live:
        return json_response(live_graph(workflow, version))
    return json_response(documented_graph(workflow, version))


async def get_versions(sandbox: SandboxCore, request: Request) -> Response:
    """``GET /executor/workflow/{id}/versions``."""
    workflow = sandbox.workflow_or_error(request.path_params["workflow_id"])
    if isinstance(workflow, Response):
        return workflow
    if not workflow.live:
        return json_response(
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
    return json_response(
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
                    "created_at": iso((created + timedelta(days=n - 1)).timestamp()),
                    "change_description": "",
                }
                for n, v in sorted(workflow.versions.items(), reverse=True)
            ],
        }
    )
