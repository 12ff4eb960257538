"""The v1 Case API's camelCase shapes of the bodies the v0 routes answer (opus-api.md section 0).

v1 writes ``workflowInputNodeId``, ``runningNode``, ``audit.nodesExecutionData``... where v0
writes snake_case. The bodies are computed once (bodies.py) and renamed here, field by field:
keys that are names (node ids, variable names, node names) keep their spelling.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any


def camel(name: str) -> str:
    """``workflow_input_node_id`` -> ``workflowInputNodeId``."""
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


Shape = Callable[[Any], Any]


def _record(fields: Mapping[str, Shape] | None = None) -> Shape:
    """A record whose field names go camelCase; the fields in ``fields`` take their own shape,
    the others keep their value as it is."""

    def shape(value: Any) -> Any:
        if not isinstance(value, Mapping):
            return value
        return {camel(k): (fields or {}).get(k, _same)(v) for k, v in value.items()}

    return shape


def _same(value: Any) -> Any:
    return value


def _named(shape: Shape) -> Shape:
    """A mapping keyed by names (kept) whose values take ``shape``."""
    return lambda value: {k: shape(v) for k, v in value.items()} if isinstance(value, Mapping) else value


def _each(shape: Shape) -> Shape:
    return lambda value: [shape(v) for v in value] if isinstance(value, list) else value


_ENTRY = _record(
    {
        "allowed_types": _each(_record({"type_definition": _record()})),
        "tags": _each(_record()),
    }
)
_SCHEMA = _record({"schema": _named(_ENTRY)})
_NODE = _record({"input_schema": _SCHEMA, "output_schema": _SCHEMA})
_GRAPH = _record({"nodes": _named(_NODE), "edges": _named(_record())})
_AUDIT = _record({"audit": _record({"nodes_execution_data": _named(_record())})})


def graph(body: Mapping[str, Any]) -> Any:
    """The live v2 graph (bodies.live_graph) as v1's ``GET /workflow/{id}`` answers it."""
    return _GRAPH(body)


def audit(body: Mapping[str, Any]) -> Any:
    """An audit (bodies.audit_body) as v1's ``GET /case/{id}/audit`` answers it."""
    return _AUDIT(body)
