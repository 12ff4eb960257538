"""A workflow's inputs: from the API's bodies to :class:`~opus_runner.models.WorkflowSchema`.

Pure functions, no I/O and cheap to import (the CLI imports this at start-up): turn a v1
``GET /workflow/{id}`` body or a v2 workflow object into InputFields, resolve a spec's input key
to one field, and describe a valid ``jobPayloadSchemaInstance`` as a JSON Schema.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from . import jsontext
from .errors import ApiError
from .inputs import FILE_TYPES, INPUT_TYPES, TYPES, value_schema
from .messages import did_you_mean
from .models import InputField, WorkflowSchema

__all__ = [
    "VALUE_SCHEMAS",
    "fields_from_job_payload_schema",
    "is_workflow_graph",
    "is_workflow_uuid",
    "payload_json_schema",
    "resolve_input",
    "schema_fingerprint",
    "schema_from_workflow",
    "schema_from_workflow_object",
    "unknown_type_warning",
    "workflow_id_problem",
]

JSON_SCHEMA_DRAFT = "https://json-schema.org/draft/2020-12/schema"
_TRUE = {"true", "yes", "1", "y", "on"}


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in _TRUE
    return bool(value)


def _type_name(raw: Any) -> str:
    """A stated type, lower case; ``""`` when none is stated (never a guess such as ``str``)."""
    # v2 sometimes nests the type: {"type": "float", "type_definition": null}.
    if isinstance(raw, Mapping):
        raw = raw.get("type")
    return str(raw).strip().lower() if raw not in (None, "") else ""


def _describes_files(definition: Any) -> bool:
    """Whether a list's ``type_definition`` says its items are files.

    Seen as ``{"id": "file", "variable_name": "file", "allowed_types": [{"type": "file"}]}``,
    as ``{"type": "file"}`` and as the bare string ``"file"``.
    """
    if isinstance(definition, str):
        return _type_name(definition) == "file"
    if not isinstance(definition, Mapping):
        return False
    if _type_name(definition.get("type")) == "file":
        return True
    allowed = definition.get("allowed_types")
    if isinstance(allowed, list) and allowed:
        return _type_name(allowed[0]) == "file"
    return False


def _allows_files(entry: Mapping[str, Any]) -> bool:
    allowed = entry.get("allowed_types")
    return isinstance(allowed, list) and any(_type_name(a) == "file" for a in allowed)


def _entry_type(entry: Mapping[str, Any]) -> tuple[str, str | None, Any]:
    """``(type, wire_type, type_definition)`` of one schema entry (see InputField).

    A bare ``type`` is read first (the documented ``jobPayloadSchema``, and lock files, which
    add ``wire_type``); a live v2 entry has none and states its type in ``allowed_types[0]``,
    with ``type_definition`` describing a list's items. A list whose items are files becomes
    ``array_files``, sent as the schema states it.
    """
    stated = _type_name(entry.get("type"))
    if stated:
        wire = entry.get("wire_type")
        if isinstance(wire, str) and wire:
            return stated, wire, entry.get("type_definition")
        if stated not in FILE_TYPES and _allows_files(entry):
            # The older v2 shape: a bare type plus allowed_types naming files.
            if stated == "array":
                return "array_files", "array", {"allowed_types": [{"type": "file"}]}
            return "file", None, None
        return stated, None, None
    allowed = entry.get("allowed_types")
    first = allowed[0] if isinstance(allowed, list) and allowed else None
    if not isinstance(first, Mapping):
        return "", None, None
    kind = _type_name(first.get("type"))
    definition = first.get("type_definition")
    if kind == "array" and _describes_files(definition):
        return "array_files", "array", definition
    return kind, None, definition if kind == "array" else None


def _file_type(value: Any) -> str:
    return str(value).strip().lstrip(".").upper()


def _allowed_file_types(entry: Mapping[str, Any]) -> tuple[str, ...]:
    found: list[Any] = []
    tags = entry.get("tags")
    if isinstance(tags, Mapping):
        tags = [tags]
    if isinstance(tags, list):
        for tag in tags:
            if isinstance(tag, Mapping) and tag.get("variable_name") == "allowed_file_types":
                value = tag.get("value")
                found.extend(value if isinstance(value, list) else [value])
    direct = entry.get("allowed_file_types")
    if isinstance(direct, list):
        found.extend(direct)
    definition = entry.get("type_definition")
    if not found and isinstance(definition, Mapping) and definition is not entry:
        # A list of files may carry the allowed types on its item definition.
        return _allowed_file_types(definition)
    out: list[str] = []
    for item in found:
        name = _file_type(item) if item is not None else ""
        if name and name not in out:
            out.append(name)
    return tuple(out)


def fields_from_job_payload_schema(mapping: Mapping[str, Any] | None) -> tuple[InputField, ...]:
    """InputFields from a ``jobPayloadSchema`` mapping, in the order the API listed them.

    Each entry is ``{id, variable_name, display_name, type, is_nullable, tags?}``. A missing
    ``variable_name`` falls back to the mapping key, a missing ``display_name`` to the variable
    name. The type is the bare ``type``, else ``allowed_types[0].type`` (live v2 entries); an
    unknown type is kept as stated, a missing one is ``""`` (see :func:`_entry_type`). ``tags``
    entries named ``allowed_file_types`` become upper-case extensions without dots
    (``.pdf`` -> ``PDF``).
    """
    if mapping is None:
        return ()
    if not isinstance(mapping, Mapping):
        raise ApiError(
            f"the workflow's input schema is a JSON {type(mapping).__name__}, not an object "
            "mapping variable names to inputs; the API answer cannot be used"
        )
    fields: list[InputField] = []
    for key, entry in mapping.items():
        if not isinstance(entry, Mapping):
            raise ApiError(
                f"input {key!r} of the workflow's input schema is a JSON "
                f"{type(entry).__name__}, not an object; the API answer cannot be used"
            )
        variable_name = str(entry.get("variable_name") or key)
        display_name = str(entry.get("display_name") or entry.get("displayName") or variable_name)
        nullable = entry.get("is_nullable", entry.get("nullable", False))
        raw_id = entry.get("id")
        kind, wire_type, definition = _entry_type(entry)
        fields.append(
            InputField(
                variable_name=variable_name,
                display_name=display_name,
                type=kind,
                nullable=_as_bool(nullable),
                allowed_file_types=_allowed_file_types(entry),
                id=str(raw_id) if raw_id not in (None, "") else None,
                wire_type=wire_type,
                type_definition=definition,
            )
        )
    return tuple(fields)


def _optional_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _decode_schema(value: Any, what: str) -> Any:
    # Some deployments serialise the schema as a JSON string inside the JSON body.
    if isinstance(value, str):
        try:
            return jsontext.loads(value)
        except (ValueError, RecursionError):
            raise ApiError(
                f"{what} is a string that is not JSON; the API answer cannot be used"
            ) from None
    return value


def schema_from_workflow(
    body: Mapping[str, Any],
    *,
    version: int | None = None,
    version_id: str | None = None,
    workflow_id: str | None = None,
) -> WorkflowSchema:
    """A WorkflowSchema from a ``GET /workflow/{id}`` body, whichever shape it has.

    The reference documents ``{jobPayloadSchema: {VAR: entry}}``; live, for a UUID id, the same
    route answers the v2 graph instead (opus-api.md section 2), which is read as such.
    ``version``/``version_id`` record the pin the body was fetched with (else the body's own
    version fields); ``workflow_id`` is the id asked for, used when the body does not name it.
    """
    if not isinstance(body, Mapping):
        raise ApiError(
            "the workflow description is not a JSON object; the API answer cannot be used"
        )
    if "jobPayloadSchema" not in body and isinstance(body.get("data"), Mapping):
        body = body["data"]
    if "jobPayloadSchema" not in body and is_workflow_graph(body):
        schema = schema_from_workflow_object(
            body, str(workflow_id or body.get("workflow_id") or body.get("id") or "")
        )
        return dataclasses.replace(
            schema,
            version=version if version is not None else schema.version,
            version_id=version_id or schema.version_id,
        )
    if "jobPayloadSchema" not in body:
        keys = ", ".join(sorted(map(str, body))) or "none"
        raise ApiError(
            f"the description of workflow {workflow_id or body.get('workflowId') or '?'} has no "
            f"jobPayloadSchema (keys: {keys}), so its inputs are unknown"
        )
    mapping = _decode_schema(body.get("jobPayloadSchema"), "jobPayloadSchema")
    resolved_id = workflow_id or body.get("workflowId") or body.get("workflow_id") or body.get("id")
    return WorkflowSchema(
        workflow_id=str(resolved_id or ""),
        name=str(body.get("name") or ""),
        description=str(body.get("description") or ""),
        inputs=fields_from_job_payload_schema(mapping),
        version=version
        if version is not None
        else _optional_int(body.get("version", body.get("workflowVersionNumber"))),
        version_id=version_id
        or (str(body["workflowVersionId"]) if body.get("workflowVersionId") else None),
        source="v1",
        workspace_id=_workspace_of(body),
    )


def is_workflow_graph(body: Mapping[str, Any]) -> bool:
    """Whether ``body`` is a v2 workflow graph (an input node id and nodes)."""
    return "workflow_input_node_id" in body or (
        "nodes" in body and ("workflow_id" in body or "edges" in body)
    )


def _workspace_of(body: Mapping[str, Any]) -> str | None:
    for key in ("workspace_id", "workspaceId"):
        value = body.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    workspace = body.get("workspace")
    if isinstance(workspace, Mapping):
        value = workspace.get("id")
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def schema_from_workflow_object(body: Mapping[str, Any], workflow_id: str) -> WorkflowSchema:
    """A WorkflowSchema from a v2 workflow object (``/reference-workflow/v2/workflow-object``).

    The inputs are on the node named by ``workflow_input_node_id``, under
    ``input_schema.schema`` else ``output_schema.schema`` (clients have read either). ``nodes``
    is a mapping keyed by node id (live), or a list of nodes (seen in older answers).
    """
    if not isinstance(body, Mapping):
        raise ApiError(
            f"the v2 object of workflow {workflow_id} is not a JSON object; the API answer "
            "cannot be used"
        )
    if "workflow_input_node_id" not in body and isinstance(body.get("data"), Mapping):
        body = body["data"]
    if isinstance(body.get("jobPayloadSchema"), (Mapping, str)):
        mapping: Any = _decode_schema(body["jobPayloadSchema"], "jobPayloadSchema")
        input_node: Mapping[str, Any] = {}
    else:
        node_id = body.get("workflow_input_node_id")
        nodes = body.get("nodes")
        if isinstance(nodes, list):
            nodes = {str(n.get("id")): n for n in nodes if isinstance(n, Mapping)}
        node = nodes.get(str(node_id)) if node_id and isinstance(nodes, Mapping) else None
        if not isinstance(node, Mapping):
            raise ApiError(
                f"the v2 graph of workflow {workflow_id} has no input node "
                f"(workflow_input_node_id is {node_id!r}), so its inputs are unknown; check the "
                "workflow in Opus"
            )
        input_node = node
        mapping = None
        for key in ("input_schema", "output_schema"):
            holder = node.get(key)
            candidate = holder.get("schema") if isinstance(holder, Mapping) else None
            candidate = (
                _decode_schema(candidate, f"{key}.schema") if candidate is not None else None
            )
            if isinstance(candidate, Mapping) and candidate:
                mapping = candidate
                break
        if mapping is None:
            mapping = {}
    raw_version_id = (
        body.get("workflow_version_id")
        or body.get("version_id")
        or input_node.get("workflow_version_id")
    )
    return WorkflowSchema(
        workflow_id=str(workflow_id),
        name=str(body.get("name") or ""),
        description=str(body.get("description") or ""),
        inputs=fields_from_job_payload_schema(mapping),
        version=_optional_int(body.get("version")),
        version_id=str(raw_version_id) if raw_version_id else None,
        source="v2",
        workspace_id=_workspace_of(body),
    )


def resolve_input(schema: WorkflowSchema, key: str) -> InputField:
    """The input a spec key names: exact ``variable_name`` first, then exact ``display_name``.

    Raises ``LookupError`` (one sentence, for the caller to wrap with file and key) when two
    inputs share the display name, or when nothing matches (listing the display names, with a
    "did you mean" when one is close).
    """
    for candidate in schema.inputs:
        if candidate.variable_name == key:
            return candidate
    matches = [f for f in schema.inputs if f.display_name == key]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        names = ", ".join(repr(f.variable_name) for f in matches)
        raise LookupError(
            f"the display name {key!r} is shared by inputs {names} of workflow "
            f"{schema.workflow_id}; key the input by its variable name instead"
        )
    shown = ", ".join(repr(f.display_name) for f in schema.inputs) or "none"
    message = f"workflow {schema.workflow_id} has no input {key!r}; its inputs are {shown}"
    choices = [f.display_name for f in schema.inputs] + [f.variable_name for f in schema.inputs]
    hint = did_you_mean(key, choices)
    if hint:
        message += f" ({hint})"
    raise LookupError(message)


#: The JSON Schema of a value of each input type, as sent (after coercion); read from the
#: input-type table, kept for callers that look a type up here.
VALUE_SCHEMAS: dict[str, dict[str, Any]] = {t.name: value_schema(t.name) for t in TYPES}


def payload_json_schema(schema: WorkflowSchema) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a valid ``jobPayloadSchemaInstance`` for ``schema``.

    One property per input variable, ``{value, type, displayName}`` with ``type`` fixed to the
    type the workflow states (:attr:`InputField.sent_type`) and ``value`` typed accordingly;
    non-nullable inputs are required and may not be null; variables the workflow does not have
    are refused. Entries may carry extra keys (``typeDefinition``), which the API accepts.
    """
    properties: dict[str, Any] = {}
    required: list[str] = []
    for f in schema.inputs:
        value = value_schema(f.type)
        if f.nullable and value:
            value = {"anyOf": [value, {"type": "null"}]}
        properties[f.variable_name] = {
            "type": "object",
            "title": f.display_name,
            "properties": {
                "value": value,
                "type": {"const": f.sent_type},
                "displayName": {"type": "string"},
            },
            "required": ["value", "type"] if f.sent_type else ["value"],
        }
        if not f.nullable:
            required.append(f.variable_name)
    return {
        "$schema": JSON_SCHEMA_DRAFT,
        "title": f"jobPayloadSchemaInstance of workflow {schema.workflow_id}",
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


def schema_fingerprint(schema: WorkflowSchema) -> str:
    """A sha256 hex digest of the inputs (names, types, nullability, file types), stable
    across input order and independent of the workflow's name, description and input ids."""
    inputs = sorted((f.as_entry() for f in schema.inputs), key=lambda item: str(item["variable_name"]))
    text = json.dumps(inputs, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
#: What to tell someone whose workflow id is not a UUID (opus-api.md section 1).
WORKFLOW_ID_HINT = (
    "Opus identifies workflows by UUID (like 3f69dcbf-2d6e-4b8a-9c1e-5a7b0c4d2e11): open the "
    "workflow from the Workflows tab of the Opus app and copy the UUID at the end of the "
    "address (.../app/workflow/<uuid>); the 16-character short ids of older links are refused"
)


def is_workflow_uuid(value: Any) -> bool:
    """Whether ``value`` is a workflow id of the form Opus uses (a UUID)."""
    return isinstance(value, str) and _UUID.match(value.strip()) is not None


def workflow_id_problem(value: Any) -> str | None:
    """The sentence to say about a workflow id that is not a UUID, or None when it is one."""
    if is_workflow_uuid(value):
        return None
    return f"the workflow id {value!r} is not a UUID; {WORKFLOW_ID_HINT}"


def unknown_type_warning(schema: WorkflowSchema, f: InputField) -> str:
    """The one sentence said (once per workflow and run) about an input type not understood."""
    stated = f"type {f.type!r}" if f.type else "no type"
    return (
        f"workflow {schema.workflow_id}: input {f.display_name!r} ({f.variable_name}) has "
        f"{stated}, which this opus-runner does not understand; its value is sent as written "
        f"with that type, and only its presence is checked (known types: {', '.join(INPUT_TYPES)})"
    )
