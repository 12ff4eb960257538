"""The v1 Case API's workflow route: ``GET /api/v1/workflow/{id}`` (opus-api.md section 0).

The live v2 graph (bodies.live_graph) in v1's camelCase, ``workflowInputNodeId`` and all, for
every workflow of the fixture: v1 has no removed description route, so the fixture's ``api``
modes (``v2-only``, ``v1-404``), which model v0's ``GET /workflow/{id}``, do not apply here.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from .. import v1_shapes
from ..bodies import live_graph
from ..core import SandboxCore
from ..responses import json_response
from .workflows import workflow_and_version


async def get_workflow(sandbox: SandboxCore, request: Request) -> Response:
    """``GET /api/v1/workflow/{id}`` (``?version=N``, ``?workflowVersionId=uuid``, the uuid winning)."""
    found = workflow_and_version(sandbox, request)
    if isinstance(found, Response):
        return found
    workflow, version = found
    return json_response(v1_shapes.graph(live_graph(workflow, version)))
