"""v1's camelCase answers read into the snake_case shapes the v0 readers already know.

The Case API names the fields of its workflow graph and its audit in camelCase
(``workflowInputNodeId``, ``runningNode``, ``audit.nodesExecutionData``; opus-api.md section 0)
where the Jobs API writes ``workflow_input_node_id``, ``running_node``... Converting here keeps
one reader per answer (:mod:`opus_runner.workflow`, :class:`.answers.AuditProgress`).

The conversion is structural, never blind: only *field names* are converted; the keys of
mappings keyed by the user's names (node ids, variable names, node names) are left as they are,
so an input called ``myInput`` stays ``myInput``. A field already in snake_case passes unchanged,
so an answer in either spelling (or a mix of both) reads the same.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

_UPPER = re.compile(r"(?<=[a-z0-9])([A-Z])")


def snake(name: str) -> str:
    """``workflowInputNodeId`` -> ``workflow_input_node_id``; snake_case stays as it is."""
    return _UPPER.sub(r"_\1", name).lower()


Reader = Callable[[Any], Any]


def _record(value: Any, fields: Mapping[str, Reader] | None = None) -> Any:
    """A record: its field names converted, the fields in ``fields`` read by their reader, the
    others kept as they came (nested records converted the same way)."""
    if not isinstance(value, Mapping):
        return value
    out: dict[str, Any] = {}
    for key, item in value.items():
        name = snake(key) if isinstance(key, str) else key
        reader = (fields or {}).get(name)
        out[name] = reader(item) if reader is not None else _plain(item)
    return out


def _plain(value: Any) -> Any:
    """A value with no known structure: records in it converted, lists walked."""
    if isinstance(value, Mapping):
        return _record(value)
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def _keyed(reader: Reader) -> Reader:
    """A mapping keyed by the user's names (kept) whose values ``reader`` reads; a list of
    values is read item by item (the older documented graphs list their nodes)."""

    def read(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {key: reader(item) for key, item in value.items()}
        if isinstance(value, list):
            return [reader(item) for item in value]
        return value

    return read


def _untouched(value: Any) -> Any:
    return value


def _entry(value: Any) -> Any:
    """One input (or output) of a schema: ``variableName``, ``allowedTypes``, ``tags``..."""
    return _record(
        value,
        {
            "allowed_types": _keyed(lambda t: _record(t, {"type_definition": _plain})),
            "tags": _keyed(lambda t: _record(t, {"value": _untouched})),
            "default": _untouched,
        },
    )


def _schema(value: Any) -> Any:
    return _record(value, {"schema": _keyed(_entry)})


def _node(value: Any) -> Any:
    return _record(value, {"input_schema": _schema, "output_schema": _schema})


_ADJACENCY = _keyed(_untouched)


def workflow_graph(body: Any) -> Any:
    """A v1 ``GET /workflow/{id}`` answer as the v2 graph of opus-api.md section 2."""
    if isinstance(body, Mapping) and "nodes" not in body:
        # Accept the graph wrapped in an envelope, as some v1 answers wrap their data.
        for wrapper in ("workflow", "data"):
            inner = body.get(wrapper)
            if isinstance(inner, Mapping) and "nodes" in inner:
                body = inner
                break
    return _record(
        body,
        {
            "nodes": _keyed(_node),
            "edges": _keyed(_record),
            "parent_adjacency": _ADJACENCY,
            "child_adjacency": _ADJACENCY,
            "job_payload_schema": _keyed(_entry),
        },
    )


def _node_data(value: Any) -> Any:
    return _record(value, {"execution_output": _untouched})


def audit(body: Any) -> Any:
    """A v1 ``GET /case/{id}/audit`` answer in the field names of the v0 audit (section 6)."""
    return _record(
        body,
        {
            "audit": lambda a: _record(a, {"nodes_execution_data": _keyed(_node_data)}),
            "audit_trail": _untouched,
        },
    )
