"""The v1 Case API's upload route: ``POST /api/v1/file/upload/presigned`` (opus-api.md section 0).

``{fileExtension, originalName, workflowId | workspaceId, accessScope: workspace | unlisted}``
-> 201 ``{presignedUrl, fileUrl}``. The slot is registered like a v0 one (files.upload_slot);
its presigned PUT accepts a ``Content-Type`` (v1's URLs take a MIME type), unlike v0's live ones.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from ..core import SandboxCore
from ..fixture import UPLOAD_EXTENSIONS, is_uuid
from ..responses import BadBody, bad_request, json_body
from .files import upload_slot

ACCESS_SCOPES = ("workspace", "unlisted")


async def upload(sandbox: SandboxCore, request: Request) -> Response:
    """``POST /api/v1/file/upload/presigned``: register a file, hand out its presigned URL."""
    try:
        body = await json_body(request)
    except BadBody as bad:
        return bad.response
    problems = []
    extension = body.get("fileExtension")
    if not isinstance(extension, str) or not extension.strip(".").strip():
        problems.append("fileExtension should not be empty")
    else:
        extension = extension if extension.startswith(".") else "." + extension
        if extension.lower() not in UPLOAD_EXTENSIONS:
            problems.append(f"fileExtension must be one of the following values: {', '.join(UPLOAD_EXTENSIONS)}")
    original_name = body.get("originalName")
    if not isinstance(original_name, str) or not original_name.strip():
        problems.append("originalName should not be empty")
    scope = body.get("accessScope")
    if scope is not None and scope not in ACCESS_SCOPES:
        problems.append(f"accessScope must be one of the following values: {', '.join(ACCESS_SCOPES)}")
    workflow_id, workspace_id = body.get("workflowId"), body.get("workspaceId")
    if not workflow_id and not workspace_id:
        problems.append("workflowId or workspaceId must be provided")
    for name, value in (("workflowId", workflow_id), ("workspaceId", workspace_id)):
        if value is not None and not is_uuid(value):
            problems.append(f"{name} must be a UUID")
    if problems:
        return bad_request(problems)
    return upload_slot(
        sandbox,
        request,
        extension=str(extension).lower(),
        original_name=original_name,
        workflow_id=workflow_id,
        workspace_id=workspace_id,
        scope=scope,
        v1=True,
    )
