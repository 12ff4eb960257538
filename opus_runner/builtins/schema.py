"""Built-in plugin: fetch a workflow's inputs (the ``opus_workflow_schema`` hook).

The documented route first: ``GET /workflow/{id}`` with the version pin. The platform has been
reported to remove that route (HTTP 500 "V1 workflow details are no longer supported") and to
identify workflows by uuid, so on a 404 or that answer the v2 workflow object is read instead,
a pinned version being looked up in the version list first (opus-api.md, "Drift").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from ..errors import ApiError, NotFoundError
from ..hookspecs import hookimpl
from ..models import Context, WorkflowRef, WorkflowSchema
from ..workflow import schema_from_workflow, schema_from_workflow_object

_NUMBER_KEYS = ("version", "version_number", "versionNumber", "workflowVersionNumber")
_ID_KEYS = ("workflow_version_id", "workflowVersionId", "version_id", "versionId", "id")


def _route_removed(error: ApiError) -> bool:
    return "no longer supported" in error.message.lower()


def _number(entry: Mapping[str, Any]) -> int | None:
    for key in _NUMBER_KEYS:
        value = entry.get(key)
        if isinstance(value, bool):
            continue
        if isinstance(value, int):
            return value
        if isinstance(value, str) and value.strip().isdigit():
            return int(value.strip())
    return None


def _ids(entry: Mapping[str, Any]) -> list[str]:
    return [str(entry[key]) for key in _ID_KEYS if entry.get(key) not in (None, "")]


def pick_version(versions: list[dict[str, Any]], ref: WorkflowRef) -> dict[str, Any] | None:
    """The entry of ``versions`` (the versions route's list) that ``ref`` pins, else None."""
    for entry in versions:
        if ref.version_id:
            if ref.version_id in _ids(entry):
                return entry
        elif ref.version is not None and _number(entry) == ref.version:
            return entry
    return None


def version_list(versions: list[dict[str, Any]]) -> str:
    """``1, 2, 3``: the numbers of the versions route's entries (ids for unnumbered ones)."""
    numbers = sorted(n for n in map(_number, versions) if n is not None)
    unnumbered = [(_ids(v) or ["?"])[0] for v in versions if _number(v) is None]
    return ", ".join([*map(str, numbers), *unnumbered])


async def _from_workflow_object(client: Any, ref: WorkflowRef) -> WorkflowSchema:
    if not ref.version_id and ref.version is None:
        return schema_from_workflow_object(await client.get_workflow_object(ref.id), ref.id)

    versions = await client.list_versions(ref.id)
    entry = pick_version(versions, ref)
    pin = f"version id {ref.version_id}" if ref.version_id else f"version {ref.version}"
    if entry is None:
        raise NotFoundError(
            f"workflow {ref.id} has no {pin} (its versions: {version_list(versions) or 'none listed'}); fix "
            "workflow.version or workflow.versionId in the spec",
            method="GET",
            endpoint=f"/executor/workflow/{ref.id}/versions",
        )
    number = _number(entry)
    schema = schema_from_workflow_object(
        await client.get_workflow_object(ref.id, version=number), ref.id
    )
    # If the platform ignored the version asked for, its inputs describe another version:
    # validating a pinned spec against them would be wrong, so say so instead.
    if number is not None and schema.version is not None and schema.version != number:
        raise ApiError(
            f"asked for {pin} of workflow {ref.id} but the platform described version "
            f"{schema.version}, so the pinned version's inputs cannot be read; remove the pin "
            "or run against a platform that serves GET /workflow/{id}",
            method="GET",
            endpoint=f"/reference-workflow/v2/workflow-object/{ref.id}",
        )
    entry_ids = _ids(entry)
    return dataclasses.replace(
        schema,
        version=number if number is not None else schema.version,
        version_id=ref.version_id or (entry_ids[0] if entry_ids else schema.version_id),
    )


@hookimpl
async def opus_workflow_schema(workflow_ref: WorkflowRef, ctx: Context) -> WorkflowSchema | None:
    """Fetch ``workflow_ref``'s inputs through ``ctx.client``; None when offline (no client)."""
    client = getattr(ctx, "client", None)
    if client is None:
        return None
    try:
        body = await client.get_workflow(
            workflow_ref.id, version=workflow_ref.version, version_id=workflow_ref.version_id
        )
    except NotFoundError:
        pass
    except ApiError as exc:
        if not _route_removed(exc):
            raise
    else:
        return schema_from_workflow(
            body,
            version=workflow_ref.version,
            version_id=workflow_ref.version_id,
            workflow_id=workflow_ref.id,
        )
    return await _from_workflow_object(client, workflow_ref)
