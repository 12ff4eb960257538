"""Built-in uploader: local files through the API's presigned-URL flow; http(s) URLs as they are.

The same bytes are uploaded once per run: the file URL is cached by content hash in
``ctx.shared`` and reused by every job of the batch (concurrent jobs wait for the one upload in
flight instead of starting their own). Local files reach this hook already checked by the core
(existence, size, type, repo-root confinement; see ``payload.check_local_file``).

Files go into the spec's ``uploads.workspace_id``, else the workflow's own workspace when it
reports one, else they are scoped by the workflow id: a workflow's agents cannot read a file
that sits in another workspace (opus-api.md section 4).
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

from ..hookspecs import hookimpl
from ..models import Context, InputField
from ..payload import is_url, resolve_local

_CACHE = "opus_runner.upload"


def _read(path: Path) -> tuple[bytes, str]:
    data = path.read_bytes()
    return data, hashlib.sha256(data).hexdigest()


@hookimpl
async def opus_upload_file(field: InputField, source: str, ctx: Context) -> str | None:
    if source.startswith(("https://", "http://")):
        return source
    if is_url(source):
        return None  # another scheme (s3://...): a plugin's to handle
    path = resolve_local(source, ctx)
    if ctx.dry_run or ctx.client is None:
        # Validation and --dry-run: nothing is uploaded; the placeholder keeps the payload's shape.
        return f"upload://{source}"
    workflow_id = ctx.workflow.workflow_id if ctx.workflow else ctx.spec.data["workflow"]["id"]
    settings = ctx.uploads
    workspace_id = settings.workspace_id or (ctx.workflow.workspace_id if ctx.workflow else None)
    data, digest = await asyncio.to_thread(_read, path)
    cache: dict[str, Any] = ctx.shared.setdefault(_CACHE, {})
    key = f"{workspace_id or workflow_id}:{settings.access_scope}:{digest}:{path.suffix.lower()}"
    pending = cache.get(key)
    if pending is not None and pending.done() and (pending.cancelled() or pending.exception() is not None):
        pending = None  # a failed upload is not reused: this job tries again
    if pending is None:
        pending = asyncio.ensure_future(
            ctx.client.upload_file(
                data,
                original_name=path.name,
                # No Content-Type on the PUT: presigned URLs signed without one refuse it (403).
                workflow_id=workflow_id,
                workspace_id=workspace_id,
                access_scope=settings.access_scope,
            )
        )
        cache[key] = pending
        try:
            return str(await asyncio.shield(pending))
        except BaseException:
            # A failed upload is not cached: the next job tries again. One still running (this
            # job was cancelled) stays, for the jobs awaiting it and for the run to stop it
            # before its client closes (Session._settle_shared_work).
            if pending.done():
                cache.pop(key, None)
            raise
    return str(await asyncio.shield(pending))
