"""The sandbox's live answers, parsed by the opus-aaico SDK's own models (opus-api.md section 8).

The SDK's models parse answers of the real service, so an answer of the sandbox they refuse, or
a field the sandbox sends that they do not know, is a drift from the live shapes. Pydantic
ignores unknown fields, so :func:`known` checks them separately, against the few extras the
sandbox is allowed to send (each named there with its reason).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from opus_aaico import OpusClient
from opus_aaico.payloads import file_array_input, file_input
from opus_aaico.types.jobs import (
    JobAudit,
    JobExecuteResponse,
    JobFileDownloadResponse,
    JobFileUploadResponse,
    JobInitiateResponse,
    JobResultsResponse,
    JobSearchItem,
    JobSearchResponse,
    JobStatusResponse,
    NodeExecutionData,
)
from opus_aaico.types.workflows import (
    WorkflowEdge,
    WorkflowNode,
    WorkflowObject,
    WorkflowVersionItem,
    WorkflowVersionsResponse,
)
from pydantic import BaseModel

from opus_runner.sandbox import SandboxServer

PLACEHOLDER = "https://opus-callback.invalid/hook"
WORKFLOW = str(uuid.uuid5(uuid.NAMESPACE_DNS, "models.sandbox.test"))
SLOW = str(uuid.uuid5(uuid.NAMESPACE_DNS, "slow.models.sandbox.test"))
HELD = {
    status: str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{status}.models.sandbox.test"))
    for status in ("WAITING", "UNKNOWN")
}
FIXTURE: dict[str, Any] = {
    "workflows": {
        WORKFLOW: {
            "name": "Models",
            "description": "Every answer parsed by the SDK.",
            "version": 2,
            "duration": "0.2s",
            "nodes": ["Read", "Think", "Write"],
            "inputs": [
                {"variable_name": "workflow_input_title", "display_name": "Title", "type": "str"},
                {
                    "variable_name": "workflow_input_doc",
                    "display_name": "Document",
                    "type": "file",
                    "allowed_file_types": ["PDF"],
                },
                {
                    "variable_name": "workflow_input_more",
                    "display_name": "More",
                    "type": "array_files",
                    "is_nullable": True,
                    "allowed_file_types": ["PDF", "CSV"],
                },
                {
                    "variable_name": "workflow_input_n",
                    "display_name": "N",
                    "type": "int",
                    "is_nullable": True,
                },
            ],
            "outputs": {
                "summary": "About {{ inputs.Title }}",
                "data": {"value": {"n": "{{ vars.workflow_input_n }}"}, "type": "json_string"},
                "report": {
                    "type": "file",
                    "value": {"name": "report.txt", "content": "R {{ inputs.Title }}"},
                },
            },
        },
        **{workflow: {"hold": {"status": status, "duration": "30s"}} for status, workflow in HELD.items()},
        SLOW: {"duration": "30s"},
    }
}


def known(model: type[BaseModel], body: dict[str, Any], extras: frozenset[str] = frozenset()) -> None:
    """Every key of ``body`` is a field of ``model`` (by name or alias), or one of ``extras``."""
    names = set()
    for name, info in model.model_fields.items():
        names.add(name)
        if info.alias:
            names.add(info.alias)
    unknown = set(body) - names - extras
    assert not unknown, f"{model.__name__} does not know {sorted(unknown)}"


#: Keys the sandbox sends that the SDK's models lack, and why.
SEARCH_EXTRAS = frozenset({"archived"})  # what the archive filter works on; harmless to a parser
AUDIT_EXTRAS = frozenset({"jobExecutionId", "status", "audit"})  # JobAudit is flattened from "audit"
NODE_DATA_EXTRAS = frozenset({"execution_output"})  # opus-api.md section 6 lists it


@pytest.fixture(scope="module")
def server() -> Iterator[SandboxServer]:
    with SandboxServer(FIXTURE) as sandbox:
        yield sandbox


@pytest.fixture
def client(server: SandboxServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, headers={"x-service-key": server.key}, timeout=10) as c:
        yield c
    server.state.reset()


@pytest.fixture
def sdk(server: SandboxServer) -> Iterator[OpusClient]:
    with OpusClient(api_key=server.key, base_url=server.base_url, max_retries=0) as opus:
        yield opus
    server.state.reset()


def wait_terminal(client: httpx.Client, job_id: str) -> str:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        status = client.get(f"/job/{job_id}/status").json()["status"]
        if status in ("COMPLETED", "FAILED"):
            return status
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} did not finish")


def upload(client: httpx.Client, extension: str, data: bytes) -> dict[str, Any]:
    body = client.post("/job/file/upload", json={"fileExtension": extension, "workflowId": WORKFLOW}).json()
    assert httpx.put(body["presignedUrl"], content=data).status_code == 200
    return body


# --- workflows --------------------------------------------------------------------------------------


@pytest.mark.parametrize("route", ["/workflow/{id}", "/reference-workflow/v2/workflow-object/{id}"])
def test_the_workflow_object_parses_as_a_workflow_object(client: httpx.Client, route: str) -> None:
    body = client.get(route.format(id=WORKFLOW)).json()
    known(WorkflowObject, body)
    graph = WorkflowObject.model_validate(body)
    assert graph.workflow_id == WORKFLOW and graph.name == "Models" and graph.version == 2
    assert graph.active_status == "active" and graph.workspace_id
    assert all(isinstance(n, WorkflowNode) for n in graph.nodes.values())
    assert all(isinstance(e, WorkflowEdge) for e in graph.edges.values())
    for node in body["nodes"].values():
        known(WorkflowNode, node)
    for edge in body["edges"].values():
        known(WorkflowEdge, edge)
    # the SDK's own reading of the inputs finds them
    inputs = graph.input_variables
    assert list(inputs) == [
        "workflow_input_title",
        "workflow_input_doc",
        "workflow_input_more",
        "workflow_input_n",
    ]
    assert inputs["workflow_input_doc"]["allowed_types"][0]["type"] == "file"
    assert inputs["workflow_input_n"]["allowed_types"][0]["type"] == "int"
    assert graph.workflow_output_node_id in graph.nodes
    assert graph.find_sub_workflows() == []
    older = WorkflowObject.model_validate(client.get(route.format(id=WORKFLOW), params={"version": 1}).json())
    assert older.version == 1


def test_the_versions_parse_as_workflow_versions(client: httpx.Client) -> None:
    body = client.get(f"/executor/workflow/{WORKFLOW}/versions").json()
    known(WorkflowVersionsResponse, body)
    versions = WorkflowVersionsResponse.model_validate(body)
    assert versions.workflow_id == WORKFLOW and versions.name == "Models" and versions.latest_version == 2
    assert [v.version for v in versions.versions] == [2, 1]
    for item in body["versions"]:
        known(WorkflowVersionItem, item)
    latest = versions.versions[0]
    assert latest.status == "active" and latest.major_version == 2 and latest.minor_version == 0
    assert latest.version_label == "v2.0" and latest.created_at and latest.change_description == ""


# --- jobs ---------------------------------------------------------------------------------------------


def test_a_job_answers_parse_with_the_job_models(client: httpx.Client, server: SandboxServer) -> None:
    doc = upload(client, ".pdf", b"%PDF")
    known(JobFileUploadResponse, doc)
    assert JobFileUploadResponse.model_validate(doc).file_url == doc["fileUrl"]
    extra = upload(client, "csv", b"a,b")

    initiated = client.post("/job/initiate", json={"workflowId": WORKFLOW, "title": "t", "description": "d"})
    known(JobInitiateResponse, initiated.json())
    job = JobInitiateResponse.model_validate(initiated.json()).job_execution_id
    assert job.isdigit()
    pending = JobStatusResponse.model_validate(client.get(f"/job/{job}/status").json())
    assert pending.status.value == "PENDING"

    payload = {
        "workflow_input_title": {"value": "Q4", "type": "str", "displayName": "Title"},
        "workflow_input_doc": {**file_input(doc["fileUrl"]), "displayName": "Document"},
        "workflow_input_more": {
            **file_array_input([doc["fileUrl"], extra["fileUrl"]]),
            "displayName": "More",
        },
        "workflow_input_n": {"value": 3, "type": "int", "displayName": "N"},
    }
    executed = client.post(
        "/job/execute",
        json={"jobExecutionId": job, "jobPayloadSchemaInstance": payload, "callbackUrl": PLACEHOLDER},
    )
    assert executed.status_code == 201
    known(JobExecuteResponse, executed.json())
    answer = JobExecuteResponse.model_validate(executed.json())
    assert answer.success is True and answer.job_execution_id == job
    assert answer.message == "Job execution has been started"

    assert wait_terminal(client, job) == "COMPLETED"
    assert (
        JobStatusResponse.model_validate(client.get(f"/job/{job}/status").json()).status.value == "COMPLETED"
    )

    body = client.get(f"/job/{job}/results").json()
    known(JobResultsResponse, body)
    results = JobResultsResponse.model_validate(body).job_results_payload_schema
    assert results is not None and results["summary"]["value"] == "About Q4"
    assert results["data"] == {"value": '{"n": 3}', "type": "json_string", "displayName": "data"}

    raw_audit = client.get(f"/job/{job}/audit").json()
    known(JobAudit, raw_audit, AUDIT_EXTRAS)
    audit = JobAudit.from_api_response(raw_audit)
    assert (
        audit.nb_nodes == 3
        and audit.executed_nodes == ["Read", "Think", "Write"]
        and audit.failed_nodes == []
    )
    assert audit.running_node == "" and audit.nb_failed_nodes == 0
    for data in raw_audit["audit"]["nodes_execution_data"].values():
        known(NodeExecutionData, data, NODE_DATA_EXTRAS)
    assert all(
        d.execution_status == "COMPLETED" and d.execution_start_time
        for d in audit.nodes_execution_data.values()
    )

    search = client.get("/job/search", params={"workflowId": WORKFLOW}).json()
    known(JobSearchResponse, search)
    found = JobSearchResponse.model_validate(search)
    assert found.total_count == 1 and found.jobs[0].job_execution_id == job
    assert found.jobs[0].status is not None and found.jobs[0].status.value == "COMPLETED"
    assert found.jobs[0].workflow is not None and found.jobs[0].workflow.id == WORKFLOW
    for item in search["jobs"]:
        known(JobSearchItem, item, SEARCH_EXTRAS)

    download = client.post(
        "/job/file/download", json={"fileUrl": results["report"]["value"], "customExpiry": 300}
    )
    known(JobFileDownloadResponse, download.json())
    link = JobFileDownloadResponse.model_validate(download.json())
    assert link.file_url == results["report"]["value"] and link.content_type == "text/plain"
    assert link.content_length == len(b"R Q4") and link.presigned_url
    assert httpx.get(link.presigned_url).content == b"R Q4"


@pytest.mark.parametrize("status", ["WAITING", "UNKNOWN", "IN_PROGRESS"])
def test_running_statuses_parse(client: httpx.Client, server: SandboxServer, status: str) -> None:
    workflow = HELD.get(status, SLOW)
    job = client.post("/job/initiate", json={"workflowId": workflow, "title": "t"}).json()["jobExecutionId"]
    client.post(
        "/job/execute",
        json={"jobExecutionId": job, "callbackUrl": PLACEHOLDER, "jobPayloadSchemaInstance": {}},
    )
    server.state.jobs[job].executed_at = time.monotonic() - 1  # inside the 30 s hold (or run)
    assert JobStatusResponse.model_validate(client.get(f"/job/{job}/status").json()).status.value == status


def test_a_job_failed_at_its_input_node_parses(client: httpx.Client) -> None:
    job = client.post("/job/initiate", json={"workflowId": WORKFLOW, "title": "t"}).json()["jobExecutionId"]
    instance = {
        "workflow_input_title": {"value": "t", "type": "text"},  # not the type the schema states
        "workflow_input_doc": file_input("https://files.example.com/a.pdf"),
    }
    client.post(
        "/job/execute",
        json={"jobExecutionId": job, "callbackUrl": PLACEHOLDER, "jobPayloadSchemaInstance": instance},
    )
    assert wait_terminal(client, job) == "FAILED"
    assert JobStatusResponse.model_validate(client.get(f"/job/{job}/status").json()).status.value == "FAILED"
    audit = JobAudit.from_api_response(client.get(f"/job/{job}/audit").json())
    assert audit.failed_nodes == ["Read"] and audit.nodes_execution_data["Read"].execution_status == "FAILED"
    assert (
        JobResultsResponse.model_validate(client.get(f"/job/{job}/results").json()).job_results_payload_schema
        == {}
    )


# --- the SDK itself, against the sandbox ------------------------------------------------------------------


def test_the_sdk_runs_a_job_against_the_sandbox(
    sdk: OpusClient, client: httpx.Client, server: SandboxServer
) -> None:
    graph = sdk.workflows.get(WORKFLOW)
    assert graph.workflow_id == WORKFLOW and "workflow_input_doc" in graph.input_variables
    assert sdk.workflows.list_versions(WORKFLOW).latest_version == 2
    # upload_bytes sends no originalName and PUTs without a Content-Type: both must work live
    url = sdk.files.upload_bytes(b"%PDF-1.7", ".pdf", workflow_id=WORKFLOW)
    slot = next(iter(server.state.upload_slots.values()))
    assert slot.original_name is None and slot.access_scope == "organization"
    assert server.state.content_type_sent_to_presigned == 0
    job = sdk.jobs.initiate(WORKFLOW, "From the SDK", "d").job_execution_id
    payload = {
        "workflow_input_title": {"value": "SDK", "type": "str", "displayName": "Title"},
        "workflow_input_doc": file_input(url),
        "workflow_input_more": file_array_input([url]),
    }
    answer = sdk.jobs.execute(job, payload, callback_url=PLACEHOLDER)
    assert answer.success is True and answer.job_execution_id == job
    assert wait_terminal(client, job) == "COMPLETED"
    assert sdk.jobs.get_status(job).status.value == "COMPLETED"
    results = sdk.jobs.get_results(job).job_results_payload_schema
    assert results is not None and results["summary"]["value"] == "About SDK"
    assert sdk.jobs.get_audit(job).nb_executed_nodes == 3
    assert sdk.jobs.search(workflow_id=WORKFLOW).total_count == 1
    detail = sdk.jobs.get(job)
    assert detail["input"]["workflow_input_doc"] == file_input(url)
    link = sdk.files.download(results["report"]["value"], custom_expiry=120)
    assert httpx.get(link.presigned_url or "").content == b"R SDK"
    assert server.state.key_sent_to_presigned == 0
