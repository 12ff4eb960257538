"""The file routes: upload slots and presigned PUTs, downloads and presigned GETs, file URLs.

The presigned URLs stand in for S3: they take no service key and answer S3's XML errors.
"""

from __future__ import annotations

import hashlib
import mimetypes
import secrets
import time
from typing import Any, cast
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import Response

from ..core import SandboxCore
from ..fixture import UPLOAD_EXTENSIONS, WorkflowDef, is_uuid
from ..responses import BadBody, bad_request, error, forbidden, json_body, json_response, not_found, s3_error
from ..state import DownloadLink, UploadSlot
from ..validation import is_int, is_url

MAX_UPLOAD_BYTES = 10 * 1024 * 1024
ACCESS_SCOPES = ("all", "user", "workspace", "organization")
DEFAULT_DOWNLOAD_EXPIRY = 3600
MIN_DOWNLOAD_EXPIRY, MAX_DOWNLOAD_EXPIRY = 60, 86400


async def upload(sandbox: SandboxCore, request: Request) -> Response:
    """``POST /job/file/upload``: register a file and hand out its presigned URL and file URL."""
    try:
        body = await json_body(request)
    except BadBody as bad:
        return bad.response
    workflow_id = body.get("workflowId")
    workspace_id = body.get("workspaceId")
    documented = None
    if isinstance(workflow_id, str) and is_uuid(workflow_id) and not workspace_id:
        named = sandbox.fixture.workflows.get(workflow_id.lower())
        documented = named is not None and not named.live
    problems = []
    extension = body.get("fileExtension")
    if not isinstance(extension, str) or not extension.strip(".").strip():
        problems.append("fileExtension should not be empty")
    else:
        if not documented and not extension.startswith("."):
            extension = "." + extension  # live accepts the extension with or without its dot
        if extension.lower() not in UPLOAD_EXTENSIONS:
            problems.append(
                f"fileExtension must be one of the following values: {', '.join(UPLOAD_EXTENSIONS)}"
            )
    original_name = body.get("originalName")
    if documented and (not isinstance(original_name, str) or not original_name.strip()):
        problems.append("originalName should not be empty")
    elif original_name is not None and (not isinstance(original_name, str) or not original_name.strip()):
        problems.append("originalName must be a non-empty string")
    scope = body.get("accessScope")
    if scope is not None and scope not in ACCESS_SCOPES:
        problems.append(f"accessScope must be one of the following values: {', '.join(ACCESS_SCOPES)}")
    if not workflow_id and not workspace_id:
        problems.append("workflowId or workspaceId must be provided")
    for name, value in (("workflowId", workflow_id), ("workspaceId", workspace_id)):
        if value is None:
            continue
        if not isinstance(value, str):
            problems.append(f"{name} must be a string")
        elif not documented and value and not is_uuid(value):
            problems.append(f"{name} must be a UUID")
    if problems:
        return bad_request(problems)
    return upload_slot(
        sandbox,
        request,
        extension=cast(str, extension).lower(),
        original_name=original_name,
        workflow_id=workflow_id,
        workspace_id=workspace_id,
        scope=scope,
    )


def upload_slot(
    sandbox: SandboxCore,
    request: Request,
    *,
    extension: str,
    original_name: Any,
    workflow_id: Any,
    workspace_id: Any,
    scope: str | None,
    v1: bool = False,
) -> Response:
    """Register one upload of a checked request and answer ``{presignedUrl, fileUrl}``: 403
    for a workspace the key cannot reach, 404 for an unknown workflow. Every dialect's upload
    route ends here."""
    workflow: WorkflowDef | None = None
    if workspace_id:
        if workspace_id.lower() not in sandbox.workspaces:
            return forbidden(workspace_id)
        workspace = workspace_id.lower()
    else:
        found = sandbox.workflow_or_error(workflow_id)
        if isinstance(found, Response):
            return found
        workflow = found
        workspace = workflow.workspace_id
    token = secrets.token_hex(16)
    name = original_name.strip() if isinstance(original_name, str) else f"upload-{token[:8]}{extension}"
    live = v1 or workflow is None or workflow.live
    path = f"/{'media' if live else 'files'}/{token}/{quote(name)}"
    sandbox.state.upload_slots[token] = UploadSlot(
        original_name=original_name,
        extension=extension,
        workflow_id=workflow_id,
        workspace_id=workspace_id,
        access_scope=scope,
        name=name,
        workspace=workspace,
        dialect="v1" if v1 else ("live" if live else "documented"),
        path=path,
    )
    return json_response(
        {"presignedUrl": f"{sandbox.base(request)}/_upload/{token}", "fileUrl": sandbox.base(request) + path},
        201 if live else 200,
    )


async def put_upload(sandbox: SandboxCore, request: Request) -> Response:
    """``PUT /_upload/{token}``: the presigned URL; stores the raw bytes (10 MB at most)."""
    token = request.path_params["token"]
    if "x-service-key" in request.headers:
        # A presigned URL goes to storage, not to Opus: a client must not send its key there.
        sandbox.state.key_sent_to_presigned += 1
    slot = sandbox.state.upload_slots.get(token)
    if slot is None:
        return s3_error(404, "NoSuchUpload", "The presigned URL is unknown or has expired")
    # v1's presigned URLs accept a MIME type (opus-api.md section 4); v0's live ones refuse it.
    live = slot.dialect in ("live", "v1")
    if slot.dialect == "live" and "content-type" in request.headers:
        # The URL was signed without a Content-Type: sending one breaks the signature.
        sandbox.state.content_type_sent_to_presigned += 1
        await request.body()
        return s3_error(
            403,
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided. "
            "Check your key and signing method. (This URL was signed without a Content-Type "
            "header; send none.)",
        )
    if live:
        too_big = s3_error(413, "EntityTooLarge", "Your proposed upload exceeds the 10 MB limit")
    else:
        too_big = json_response({"message": "File exceeds the 10 MB limit"}, 413)
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_UPLOAD_BYTES:
        return too_big
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_UPLOAD_BYTES:
            return too_big
        chunks.append(chunk)
    data = b"".join(chunks)
    sandbox.state.uploads[token] = data
    return Response(b"", status_code=200, headers={"etag": f'"{hashlib.md5(data).hexdigest()}"'})


async def get_file(sandbox: SandboxCore, request: Request) -> Response:
    """``GET /files/{token}/{name}``: a documented file's bytes (uploaded or an output)."""
    token, name = request.path_params["token"], request.path_params["name"]
    found = sandbox.state.file_at(f"/files/{token}/{name}")
    if found is None or found[2] is None:
        return json_response({"message": "File not found"}, 404)
    _, name, data, _ = found
    media_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    return Response(data, media_type=media_type)


async def get_media(sandbox: SandboxCore, request: Request) -> Response:
    """``GET /media/...``: live file URLs are references, not downloads (opus-api.md section 4)."""
    return error(404, f"Cannot GET {request.url.path}", "Not Found")


async def download(sandbox: SandboxCore, request: Request) -> Response:
    """``POST /job/file/download {fileUrl, customExpiry | workspaceId}``: a presigned GET URL."""
    try:
        body = await json_body(request)
    except BadBody as bad:
        return bad.response
    problems = []
    file_url = body.get("fileUrl")
    if not is_url(file_url):
        problems.append("fileUrl must be a URL address")
    expiry = body.get("customExpiry")
    if expiry is not None:
        if not is_int(expiry):
            problems.append("customExpiry must be an integer number")
        elif expiry < MIN_DOWNLOAD_EXPIRY:
            problems.append(f"customExpiry must not be less than {MIN_DOWNLOAD_EXPIRY}")
        elif expiry > MAX_DOWNLOAD_EXPIRY:
            problems.append(f"customExpiry must not be greater than {MAX_DOWNLOAD_EXPIRY}")
    workspace_id = body.get("workspaceId")
    if workspace_id is not None and not isinstance(workspace_id, str):
        problems.append("workspaceId must be a string")
    if problems:
        return bad_request(problems)
    if workspace_id and workspace_id.lower() not in sandbox.workspaces:
        return forbidden(workspace_id)
    found = sandbox.find_file(cast(str, file_url), request)
    if not isinstance(found, tuple) or found[2] is None:
        return not_found(f"File {file_url} not found")
    token, name, data, _ = found
    seconds = expiry if expiry is not None else DEFAULT_DOWNLOAD_EXPIRY
    link = secrets.token_hex(16)
    sandbox.state.download_links[link] = DownloadLink(token, name, time.monotonic() + seconds)
    signature = hashlib.sha256(f"{link}:{seconds}".encode()).hexdigest()
    presigned = (
        f"{sandbox.base(request)}/_download/{link}/{quote(name)}"
        f"?X-Amz-Expires={seconds}&X-Amz-Signature={signature}"
    )
    return json_response(
        {
            "presignedUrl": presigned,
            "fileUrl": file_url,
            "contentType": mimetypes.guess_type(name)[0] or "application/octet-stream",
            "contentLength": len(cast(bytes, data)),
        },
        201,
    )


async def get_presigned(sandbox: SandboxCore, request: Request) -> Response:
    """``GET /_download/{token}/{name}``: a presigned download URL (S3, so no key)."""
    if "x-service-key" in request.headers:
        sandbox.state.key_sent_to_presigned += 1
    link = sandbox.state.download_links.get(request.path_params["token"])
    if link is None:
        return s3_error(404, "NoSuchKey", "The specified key does not exist.")
    if time.monotonic() > link.expires_at:
        return s3_error(403, "AccessDenied", "Request has expired")
    stored = sandbox.state.files.get(link.file_token)
    data = stored.data if stored is not None else sandbox.state.uploads.get(link.file_token)
    if data is None:  # deleted by a reset
        return s3_error(404, "NoSuchKey", "The specified key does not exist.")
    media_type = mimetypes.guess_type(link.name)[0] or "application/octet-stream"
    return Response(data, media_type=media_type)
