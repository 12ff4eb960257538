"""Answer bodies computed from a workflow or a job: the workflow graphs, results and audit."""

from __future__ import annotations

import uuid
from typing import Any

from .fixture import VersionDef, WorkflowDef
from .state import Job

INPUT_NODE_ID = "n-in"
OUTPUT_NODE_ID = "n-out"


def live_graph(workflow: WorkflowDef, version: VersionDef) -> dict[str, Any]:
    """The live v2 workflow graph (opus-api.md section 2): nodes and edges keyed by id.

    An input node carrying the inputs, a task node per fixture node, an output node.
    """
    vid = version.version_id
    task_ids = [f"n-{i + 1}" for i in range(len(workflow.nodes))]
    order = [INPUT_NODE_ID, *task_ids, OUTPUT_NODE_ID]
    outputs = {
        out.name: {
            "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"opus-sandbox:{workflow.id}:output:{out.name}")),
            "variable_name": out.name,
            "display_name": out.display_name,
            "description": "",
            "is_nullable": False,
            "default": None,
            "allowed_types": [{"type": out.type, "type_definition": None}],
            "tags": [],
        }
        for out in version.outputs
    }
    nodes: dict[str, dict[str, Any]] = {
        INPUT_NODE_ID: {
            "id": INPUT_NODE_ID,
            "type": "input",
            "name": "Input",
            "workflow_version_id": vid,
            "input_schema": {"schema": {f.variable_name: f.live_entry() for f in version.inputs}},
            "output_schema": {"schema": {}},
        }
    }
    for node_id, name in zip(task_ids, workflow.nodes, strict=True):
        nodes[node_id] = {"id": node_id, "type": "task", "name": name, "workflow_version_id": vid}
    nodes[OUTPUT_NODE_ID] = {
        "id": OUTPUT_NODE_ID,
        "type": "output",
        "name": "Output",
        "workflow_version_id": vid,
        "input_schema": {"schema": outputs},
        "output_schema": {"schema": {}},
    }
    edges = {
        f"e-{i + 1}": {"id": f"e-{i + 1}", "from_node_id": order[i], "to_node_id": order[i + 1]}
        for i in range(len(order) - 1)
    }
    return {
        "workflow_id": workflow.id,
        "name": workflow.name,
        "description": workflow.description,
        "version": version.number,
        "major_version": version.number,
        "minor_version": 0,
        "validity_status": "valid",
        "active_status": "active" if version.number == workflow.latest else "inactive",
        "workspace_id": workflow.workspace_id,
        "workflow_input_node_id": INPUT_NODE_ID,
        "workflow_output_node_id": OUTPUT_NODE_ID,
        "starting_nodes_ids": [INPUT_NODE_ID],
        "ending_nodes_ids": [OUTPUT_NODE_ID],
        "nodes": nodes,
        "edges": edges,
        "parent_adjacency": {order[i + 1]: [order[i]] for i in range(len(order) - 1)},
        "child_adjacency": {order[i]: [order[i + 1]] for i in range(len(order) - 1)},
    }


def documented_graph(workflow: WorkflowDef, version: VersionDef) -> dict[str, Any]:
    """The older documented v2 graph: lists of nodes and edges, entries with a bare ``type``."""
    node_ids = ["n-input", *(f"n-{i + 1}" for i in range(len(workflow.nodes)))]
    nodes: list[dict[str, Any]] = [
        {
            "id": "n-input",
            "type": "workflowInput",
            "name": "Workflow input",
            "output_schema": {"schema": {f.variable_name: f.schema_entry(v2=True) for f in version.inputs}},
        }
    ]
    nodes += [{"id": f"n-{i + 1}", "type": "task", "name": name} for i, name in enumerate(workflow.nodes)]
    edges = [
        {"id": f"e-{i}", "source": node_ids[i], "target": node_ids[i + 1]} for i in range(len(node_ids) - 1)
    ]
    return {
        "id": workflow.id,
        "name": workflow.name,
        "description": workflow.description,
        "version": version.number,
        "workflowVersionId": version.version_id,
        "workflow_input_node_id": "n-input",
        "nodes": nodes,
        "edges": edges,
    }


def results_body(job: Job) -> Any:
    """The results of a finished job, in the shape its workflow uses (``results_shape``)."""
    if job.error is not None:
        return {"jobResultsPayloadSchema": {}, "error": job.error}
    if job.stops:
        return {"jobResultsPayloadSchema": {}}
    shape = job.workflow.results_shape
    if shape == "legacy":
        summary = next((v for out, v in job.outputs if out.type == "str"), "")
        return {
            "jobExecutionId": job.id,
            "status": "COMPLETED",
            "results": {
                "summary": summary,
                "outputFiles": [v for out, v in job.outputs if out.type == "file" and v],
                "data": {out.name: v for out, v in job.outputs},
            },
        }
    if shape == "flat":
        return {"results": {out.name: {"value": v} for out, v in job.outputs}}
    if shape == "list":
        return [{out.name: v for out, v in job.outputs}]
    if shape == "none":
        return {}
    schema = {
        out.name: {"value": v, "type": out.type, "displayName": out.display_name}
        for out, v in job.outputs
    }
    if shape == "nested":
        return {"results": {"jobResultsPayloadSchema": schema}}
    return {"jobResultsPayloadSchema": schema}


def audit_body(job: Job, now: float) -> dict[str, Any]:
    """Node-level progress of ``job`` at monotonic time ``now``.

    A job walks its nodes evenly over its duration; a failing job walks only up to its fail node
    and fails there at the end (a job whose inputs did not fit fails at its first node); a
    stopped job stops at its last node. The failed node's ``execution_output`` carries the error.
    """
    workflow = job.workflow
    nodes = workflow.nodes
    phase = job.phase(now)
    if job.input_failed:
        last = 0
    elif job.error is not None:
        last = workflow.fail_index
    else:
        last = len(nodes) - 1
    span = last + 1
    work_seconds = job.run_seconds - job.hold_seconds
    slice_seconds = work_seconds / span if span else 0.0
    elapsed = job.work_elapsed(now)

    running = ""
    failed: list[str] = []
    stopped = ""
    if phase in ("initiated", "pending"):
        done = 0
        remaining = list(nodes)
    elif phase in ("held", "running"):
        done = min(int(elapsed / slice_seconds), span - 1) if slice_seconds else span - 1
        running = nodes[done]
        remaining = list(nodes[done + 1 :])
    elif phase == "failed":
        done = last
        failed = [nodes[done]]
        remaining = list(nodes[done + 1 :])
    elif phase == "stopped":
        done = last
        stopped = nodes[done]
        remaining = list(nodes[done + 1 :])
    else:
        done = len(nodes)
        remaining = []
    executed = list(nodes[:done])

    started_wall = job.executed_wall
    data: dict[str, dict[str, Any]] = {}
    for index, name in enumerate(nodes):
        output: list[Any] = []
        if index < done:
            status, ms = "COMPLETED", slice_seconds * 1000
        elif name == running:
            status, ms = "RUNNING", (elapsed - done * slice_seconds) * 1000
        elif name in failed:
            status, ms = "FAILED", slice_seconds * 1000
            output = [{"error": job.error}]
        elif name == stopped:
            status, ms = "STOPPED", slice_seconds * 1000
        else:
            status, ms = "PENDING", 0
        entry: dict[str, Any] = {
            "execution_status": status,
            "execution_time": max(0, round(ms)),
            "execution_output": output,
        }
        if status != "PENDING" and started_wall is not None:
            offset = index * slice_seconds + (job.hold_seconds if index else 0.0)
            entry["execution_start_time"] = int((started_wall + offset) * 1000)
        data[name] = entry
    terminal = phase in ("completed", "failed", "stopped")
    return {
        "jobExecutionId": job.id,
        "status": job.status(now),
        "nb_nodes": len(nodes),
        "executed_nodes": executed,
        "nb_executed_nodes": len(executed),
        "running_node": running,
        "next_node_to_execute": "" if terminal or not remaining else remaining[0],
        "remaining_nodes_to_execute": remaining,
        "failed_nodes": failed,
        "nb_failed_nodes": len(failed),
        "audit": {"nodes_execution_data": data},
    }
