"""The sandbox's v1 Case API under /api/v1 (issue 17), over real loopback HTTP: v1's shapes, the
same store as v0, the same validation, the same fault rules."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from conftest import WF, WORKFLOWS, wait_for
from opus_runner.sandbox import SandboxServer


@pytest.fixture(scope="module")
def server() -> Iterator[SandboxServer]:
    with SandboxServer(WORKFLOWS) as sandbox:
        yield sandbox


@pytest.fixture
def sandbox(server: SandboxServer) -> SandboxServer:
    server.state.reset()
    server.faults.clear()
    return server


def call(sandbox: SandboxServer, method: str, path: str, **kw: Any) -> httpx.Response:
    return httpx.request(method, f"{sandbox.base_url}/api/v1{path}", headers={"x-service-key": sandbox.key}, **kw)


def new_case(sandbox: SandboxServer, workflow: str = "quick") -> str:
    answer = call(sandbox, "POST", "/case", json={"workflowId": WF[workflow], "title": "t"})
    assert answer.status_code == 201, answer.text
    assert set(answer.json()) == {"caseId"}
    return str(answer.json()["caseId"])


QUESTION = {"workflow_input_q": {"value": "why", "type": "str", "displayName": "Question"}}


def test_a_case_runs_through_v1_shapes_and_is_a_job_of_the_same_store(sandbox: SandboxServer) -> None:
    case = new_case(sandbox)
    assert len(case) == 36 and call(sandbox, "GET", f"/case/{case}/status").json() == {"caseId": case, "status": "PENDING"}
    # Results answer 202 until the case is terminal.
    assert call(sandbox, "GET", f"/case/{case}/results").status_code == 202
    started = call(sandbox, "POST", f"/case/{case}/execute", json={"payload": QUESTION})
    assert started.status_code == 201 and started.json()["caseId"] == case
    wait_for(lambda: call(sandbox, "GET", f"/case/{case}/status").json()["status"] == "COMPLETED")
    results = call(sandbox, "GET", f"/case/{case}/results")
    assert results.status_code == 200
    assert results.json() == {"results": {"answer": {"value": "Answer to why", "type": "str", "displayName": "answer"}}}
    audit = call(sandbox, "GET", f"/case/{case}/audit").json()
    assert audit["nbNodes"] == 3 and audit["runningNode"] == "" and audit["failedNodes"] == []
    assert set(audit["audit"]["nodesExecutionData"]["Input"]) >= {"executionStatus", "executionTime"}
    # The same job, seen through v0.
    v0 = httpx.get(f"{sandbox.base_url}/job/{case}/status", headers={"x-service-key": sandbox.key})
    assert v0.json() == {"status": "COMPLETED"}
    # Every call counted once, by generation: the one v0 status, the rest (however many status
    # polls it took) v1.
    state = sandbox.state
    assert state.api_requests["v0"] == 1 and state.api_requests["v1"] == sum(state.requests.values()) - 1
    assert state.count("POST", "execute") == 1


def test_the_v1_workflow_is_a_camel_case_graph(sandbox: SandboxServer) -> None:
    graph = call(sandbox, "GET", f"/workflow/{WF['newer']}").json()  # v0's description route is gone for it
    assert graph["workflowInputNodeId"] == "n-in" and "workflow_input_node_id" not in graph
    entry = graph["nodes"]["n-in"]["inputSchema"]["schema"]["workflow_input_q"]
    assert entry["variableName"] == "workflow_input_q" and entry["allowedTypes"] == [{"type": "str", "typeDefinition": None}]


def test_execute_is_checked_like_v0_and_a_wrong_type_fails_the_case(sandbox: SandboxServer) -> None:
    case = new_case(sandbox)
    refused = call(sandbox, "POST", f"/case/{case}/execute", json={"payload": {}, "callbackUrl": "not a url"})
    assert refused.status_code == 400 and refused.json()["message"] == ["callbackUrl must be a URL address"]
    missing = call(sandbox, "POST", f"/case/{case}/execute", json={"payload": {}})
    assert missing.status_code == 400
    assert missing.json()["message"] == ["payload.workflow_input_q (Question) is required"]
    wrong = {"workflow_input_q": {"value": "why", "type": "float", "displayName": "Question"}}
    assert call(sandbox, "POST", f"/case/{case}/execute", json={"payload": wrong}).status_code == 201
    wait_for(lambda: call(sandbox, "GET", f"/case/{case}/status").json()["status"] == "FAILED")
    body = call(sandbox, "GET", f"/case/{case}/results").json()
    assert body["results"] == {} and "expects type 'str'" in body["error"]
    assert call(sandbox, "GET", "/case/00000000-0000-4000-8000-0000000000ff/status").status_code == 404


def test_v1_upload_takes_two_scopes_and_its_put_accepts_a_mime_type(sandbox: SandboxServer) -> None:
    body = {"fileExtension": "pdf", "originalName": "a.pdf", "workflowId": WF["all-types"], "accessScope": "organization"}
    refused = call(sandbox, "POST", "/file/upload/presigned", json=body)
    assert refused.status_code == 400
    assert refused.json()["message"] == ["accessScope must be one of the following values: workspace, unlisted"]
    nameless = call(sandbox, "POST", "/file/upload/presigned", json={**body, "accessScope": "workspace", "originalName": None})
    assert nameless.json()["message"] == ["originalName should not be empty"]
    slot = call(sandbox, "POST", "/file/upload/presigned", json={**body, "accessScope": "workspace"})
    assert slot.status_code == 201
    put = httpx.put(slot.json()["presignedUrl"], content=b"%PDF", headers={"content-type": "application/pdf"})
    assert put.status_code == 200 and sandbox.state.content_type_sent_to_presigned == 0
    [stored] = sandbox.state.upload_slots.values()
    assert stored.scope == "workspace" and stored.original_name == "a.pdf"


def test_fault_rules_name_routes_of_both_generations(sandbox: SandboxServer) -> None:
    sandbox.faults.add({"route": "initiate", "kind": "status", "status": 503, "times": 1})
    assert call(sandbox, "POST", "/case", json={"workflowId": WF["quick"], "title": "t"}).status_code == 503
    assert new_case(sandbox)  # the rule was used up by the v1 route
    assert sandbox.state.count("POST", "initiate") == 2


def test_a_route_v1_does_not_have_is_nests_cannot(sandbox: SandboxServer) -> None:
    answer = call(sandbox, "GET", "/job/search")
    assert answer.status_code == 404 and answer.json()["message"] == "Cannot GET /api/v1/job/search"
