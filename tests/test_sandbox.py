"""The sandbox server over real loopback HTTP: routes, validation, lifecycle, results, callbacks.

The workflows here speak the live dialect (opus-api.md section 8) unless their name starts with
``doc-`` (``dialect: documented``). States that last a moment are checked on the job's clock
(``Job.status(now)``) or by moving a job's execute back in time (:func:`age`), never by sleeping
and hoping.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from opus_runner import redact
from opus_runner.errors import ConfigError, format_key
from opus_runner.sandbox import DEMO_IDS, SandboxServer
from opus_runner.sandbox.bodies import audit_body
from opus_runner.sandbox.core import FIRST_JOB_NUMBER
from opus_runner.sandbox.fixture import (
    DEFAULT_WORKFLOWS,
    DEFAULT_WORKSPACE_ID,
    FixtureError,
    load_fixture,
    version_uuid,
)

ROOT = Path(__file__).resolve().parents[1]
SPEC_FIXTURE = ROOT / "specs" / "fixtures" / "sandbox-workflows.yaml"
#: A callbackUrl that can never resolve: what a client with no receiver sends.
PLACEHOLDER = "https://opus-callback.invalid/hook"


def wid(name: str) -> str:
    """The test workflow ``name``'s UUID."""
    return str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{name}.sandbox.test"))


OTHER_WORKSPACE = wid("other-workspace")
UNKNOWN_WORKSPACE = wid("nobody's-workspace")

ALL_INPUTS: list[dict[str, Any]] = [
    {"variable_name": "in_title", "display_name": "Title", "type": "str"},
    {
        "variable_name": "in_doc",
        "display_name": "Doc",
        "type": "file",
        "is_nullable": True,
        "allowed_file_types": ["PDF", "TXT"],
    },
    {"variable_name": "in_n", "display_name": "N", "type": "float", "is_nullable": True},
    {"variable_name": "in_count", "display_name": "Count", "type": "int", "is_nullable": True},
    {"variable_name": "in_flag", "display_name": "Flag", "type": "bool", "is_nullable": True},
    {"variable_name": "in_day", "display_name": "Day", "type": "date", "is_nullable": True},
    {"variable_name": "in_items", "display_name": "Items", "type": "array", "is_nullable": True},
    {
        "variable_name": "in_files",
        "display_name": "Files",
        "type": "array_files",
        "is_nullable": True,
        "allowed_file_types": ["CSV"],
    },
    {
        "variable_name": "in_more",
        "display_name": "More files",
        "type": "array_files",
        "wire": "array_files",
        "is_nullable": True,
        "allowed_file_types": ["CSV"],
    },
    {"variable_name": "in_obj", "display_name": "Obj", "type": "object", "is_nullable": True},
    {"variable_name": "in_json", "display_name": "Settings", "type": "json_string", "is_nullable": True},
]
TITLE_ONLY = [{"variable_name": "in_title", "display_name": "Title", "type": "str"}]
#: The inputs the old (documented) quick workflow had, before int and json_string.
DOC_INPUTS = [i for i in ALL_INPUTS if i["variable_name"] not in ("in_count", "in_more", "in_json")]

FIXTURE: dict[str, Any] = {
    "workflows": {
        wid("quick"): {
            "name": "Quick",
            "duration": "0.3s",
            "nodes": ["A", "B", "C"],
            "inputs": ALL_INPUTS,
            "outputs": {
                "summary": "Hello {{ inputs.Title }} from {{ job.title }}",
                "count": {"value": "{{ vars.in_n }}", "type": "float", "displayName": "Count"},
                "whole": {"value": "{{ vars.in_count }}", "type": "int"},
                "items": {"value": "{{ inputs.Items or [] }}", "type": "array"},
                "flag": {"value": "{{ inputs.Flag }}", "type": "bool"},
                "settings": {"value": "{{ vars.in_json }}", "type": "json_string"},
                "echo": {"value": {"n": "{{ vars.in_count }}"}, "type": "json_string"},
                "report": {
                    "type": "file",
                    "value": {"name": "r-{{ inputs.Title }}.txt", "content": "R={{ inputs.Title }}"},
                },
            },
        },
        wid("typed"): {"nodes": ["Input", "Work", "Output"], "inputs": ALL_INPUTS, "outputs": {"ok": "yes"}},
        wid("instant"): {"inputs": TITLE_ONLY, "outputs": {"summary": "{{ inputs.Title | upper }}"}},
        wid("slow"): {"duration": "30s", "nodes": ["A", "B", "C"], "inputs": TITLE_ONLY},
        wid("failing"): {
            "duration": "0.3s",
            "fail": "Node 'B' raised: boom",
            "fail_node": "B",
            "nodes": ["A", "B", "C"],
            "inputs": TITLE_ONLY,
            "outputs": {"summary": "never"},
        },
        wid("broken-template"): {"outputs": {"n": {"value": "{{ 'abc' }}", "type": "float"}}},
        wid("space"): {"status_spelling": "space", "duration": "30s"},
        wid("lower"): {"status_spelling": "lower", "duration": "30s"},
        wid("waiting"): {"hold": {"status": "WAITING", "duration": "30s"}, "duration": "30s"},
        wid("unknown"): {"hold": {"status": "UNKNOWN", "duration": "30s"}, "duration": "30s"},
        wid("brief-hold"): {"hold": {"status": "WAITING", "duration": "0.2s"}, "duration": "0.3s"},
        wid("stopping"): {"stop": True, "duration": "0.1s", "nodes": ["A", "B", "C"], "outputs": {"x": "1"}},
        **{
            wid(f"shape-{shape}"): {
                "results_shape": shape,
                "inputs": TITLE_ONLY,
                "outputs": {
                    "summary": "S {{ inputs.Title }}",
                    "data": {"value": {"n": "{{ 2 * 3 }}"}, "type": "object"},
                    "file": {"type": "file", "value": {"name": "out.txt", "content": "x"}},
                },
            }
            for shape in ("legacy", "nested", "flat", "list", "none")
        },
        wid("elsewhere"): {
            "workspace_id": OTHER_WORKSPACE,
            "inputs": [{"variable_name": "in_doc", "display_name": "Doc", "type": "file"}],
        },
        wid("api-v2-only"): {"api": "v2-only", "inputs": TITLE_ONLY},
        wid("versioned"): {
            "version": 3,
            "inputs": [
                {"variable_name": "a", "display_name": "A", "type": "str"},
                {"variable_name": "b", "display_name": "B", "type": "float"},
            ],
            "outputs": {"which": "v3 {{ vars.a }}"},
            "versions": {
                1: {
                    "inputs": [{"variable_name": "a", "display_name": "A", "type": "str"}],
                    "outputs": {"which": "v1 {{ vars.a }}"},
                }
            },
        },
        # --- the older documented shapes --------------------------------------------------------
        wid("doc-quick"): {
            "dialect": "documented",
            "name": "Quick (documented)",
            "duration": "0.3s",
            "nodes": ["A", "B", "C"],
            "inputs": DOC_INPUTS,
            "outputs": {
                "summary": "Hello {{ inputs.Title }} from {{ job.title }}",
                "report": {"type": "file", "value": {"name": "r-{{ inputs.Title }}.txt", "content": "R"}},
            },
        },
        wid("doc-instant"): {
            "dialect": "documented",
            "inputs": TITLE_ONLY,
            "outputs": {"s": "{{ inputs.Title }}"},
        },
        wid("doc-slow"): {"dialect": "documented", "duration": "30s"},
        wid("doc-legacy"): {
            "dialect": "documented",
            "results_shape": "legacy",
            "inputs": TITLE_ONLY,
            "outputs": {
                "data": {"value": {"n": "{{ 2 * 3 }}"}, "type": "object"},
                "summary": "Legacy {{ inputs.Title }}",
                "file": {"type": "file", "value": {"name": "out.txt", "content": "x"}},
            },
        },
        wid("doc-v2only"): {
            "dialect": "documented",
            "api": "v2-only",
            "inputs": [
                {"variable_name": "q", "display_name": "Question", "type": "str"},
                {
                    "variable_name": "ctx",
                    "display_name": "Context",
                    "type": "file",
                    "allowed_file_types": ["TXT"],
                    "is_nullable": True,
                },
            ],
        },
        wid("doc-v1gone"): {
            "dialect": "documented",
            "api": "v1-404",
            "inputs": [{"variable_name": "q", "display_name": "Question", "type": "str"}],
        },
        wid("doc-versioned"): {
            "dialect": "documented",
            "version": 3,
            "inputs": [
                {"variable_name": "a", "display_name": "A", "type": "str"},
                {"variable_name": "b", "display_name": "B", "type": "float"},
            ],
            "outputs": {"which": "v3 {{ vars.a }}"},
            "versions": {
                1: {
                    "inputs": [{"variable_name": "a", "display_name": "A", "type": "str"}],
                    "outputs": {"which": "v1 {{ vars.a }}"},
                }
            },
        },
    }
}
W = {name: wid(name) for name in ("quick", "typed", "instant", "slow", "failing", "elsewhere", "versioned")}


@pytest.fixture(scope="module")
def server() -> Iterator[SandboxServer]:
    with SandboxServer(FIXTURE) as sandbox:
        yield sandbox


@pytest.fixture(autouse=True)
def _clean(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "server" in request.fixturenames:
        sandbox = request.getfixturevalue("server")
        sandbox.state.reset()
        sandbox.faults.clear()


@pytest.fixture
def client(server: SandboxServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, headers={"x-service-key": server.key}, timeout=10) as c:
        yield c


def initiate(client: httpx.Client, workflow: str, **extra: Any) -> str:
    response = client.post("/job/initiate", json={"workflowId": workflow, "title": "Job title", **extra})
    assert response.status_code in (200, 201), response.text
    return response.json()["jobExecutionId"]


def instance_of(values: dict[str, Any]) -> dict[str, Any]:
    """``{var: (value, type)}`` -> a jobPayloadSchemaInstance; anything but a tuple is sent as is."""
    return {
        var: {"value": item[0], "type": item[1], "displayName": var} if isinstance(item, tuple) else item
        for var, item in values.items()
    }


def execute(
    client: httpx.Client,
    job_id: str,
    values: dict[str, Any],
    *,
    callback: str | None = PLACEHOLDER,
    **extra: Any,
) -> httpx.Response:
    body: dict[str, Any] = {
        "jobExecutionId": job_id,
        "jobPayloadSchemaInstance": instance_of(values),
        **extra,
    }
    if callback is not None:
        body.setdefault("callbackUrl", callback)
    return client.post("/job/execute", json=body)


def run(client: httpx.Client, workflow: str, values: dict[str, Any], **extra: Any) -> str:
    """Initiate and execute a live job (the execute must be accepted); its id."""
    job = initiate(client, workflow)
    response = execute(client, job, values, **extra)
    assert response.status_code == 201, response.text
    return job


def upload(client: httpx.Client, name: str, data: bytes, workflow: str = W["typed"], **fields: Any) -> str:
    ext = "." + name.rsplit(".", 1)[-1]
    slot = client.post(
        "/job/file/upload",
        json={"fileExtension": ext, "originalName": name, "workflowId": workflow, **fields},
    )
    assert slot.status_code in (200, 201), slot.text
    assert httpx.put(slot.json()["presignedUrl"], content=data).status_code == 200
    return slot.json()["fileUrl"]


def wait_terminal(client: httpx.Client, job_id: str, timeout: float = 5.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get(f"/job/{job_id}/status").json()["status"]
        if status in ("COMPLETED", "FAILED", "stopped"):
            return status
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} did not finish within {timeout}s")


def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    """Wait (boundedly) until ``predicate()`` is true."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "the condition did not come true in time"
        time.sleep(0.01)


def age(server: SandboxServer, job_id: str, seconds: float) -> None:
    """Move the job's execute ``seconds`` into the past (its status follows the clock)."""
    job = server.state.jobs[job_id]
    assert job.executed_at is not None
    job.executed_at = time.monotonic() - seconds


def nest(response: httpx.Response, status: int) -> dict[str, Any]:
    """The NestJS error body of ``response``, checked: statusCode, message, error, timestamp, path."""
    body = response.json()
    assert response.status_code == status, body
    assert body["statusCode"] == status and isinstance(body["error"], str)
    assert body["timestamp"].endswith("Z") and body["path"].startswith("/")
    return body


def problems_of(response: httpx.Response) -> list[str]:
    body = nest(response, 400)
    assert body["error"] == "Bad Request" and isinstance(body["message"], list)
    return body["message"]


def error_of(client: httpx.Client, job_id: str) -> str:
    """A FAILED job's error message, as GET /job/{id} shows it."""
    detail = client.get(f"/job/{job_id}").json()
    assert detail["status"] == "FAILED", detail
    return detail["output"]["error"]


# --- packaging, import cost, server object ----------------------------------------------------


def test_importing_the_package_and_the_pytest_plugin_does_not_load_the_server() -> None:
    code = (
        "import sys, opus_runner.sandbox, opus_runner.testing;"
        "heavy = [m for m in ('starlette', 'uvicorn', 'jinja2', 'httpx') if m in sys.modules];"
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_packaged_default_workflows_equal_the_spec_fixture() -> None:
    assert DEFAULT_WORKFLOWS.read_text() == SPEC_FIXTURE.read_text()
    fixture = load_fixture(SPEC_FIXTURE)
    assert DEMO_IDS == {
        "demo-summarize": "3f69dcbf-2d6e-4b8a-9c1e-5a7b0c4d2e11",
        "invoice-triage": "7c1e2a9b-5d34-4f8e-a6b2-0e9d3c5f1a72",
        "region-report": "5a0d7e3c-8b21-4c6f-9e4a-2f7b1d0c8e93",
        "always-fails": "e2b4c6d8-1a3f-4e5b-8c7d-9f0a1b2c3d44",
        "v2-workflow": "9d8c7b6a-5e4f-4a3b-b2c1-d0e9f8a7b655",
    }
    assert set(fixture.workflows) == set(DEMO_IDS.values())
    text = SPEC_FIXTURE.read_text()
    for name, workflow_id in DEMO_IDS.items():  # each UUID key carries its old name in a comment
        assert f"  # {name}\n  {workflow_id}:\n" in text
    assert all(
        w.dialect == "live" and w.workspace_id == DEFAULT_WORKSPACE_ID for w in fixture.workflows.values()
    )
    demo = fixture.workflows[DEMO_IDS["demo-summarize"]].latest_version
    assert [(i.display_name, i.variable_name, i.type) for i in demo.inputs] == [
        ("Title", "workflow_input_title", "str"),
        ("Document", "workflow_input_doc", "file"),
        ("Pages", "workflow_input_pages", "float"),
    ]
    assert fixture.workflows[DEMO_IDS["demo-summarize"]].name == "Summarize a document"
    invoice = fixture.workflows[DEMO_IDS["invoice-triage"]]
    assert invoice.latest == 3 and invoice.name == "Invoice triage"
    assert [len(invoice.versions[n].inputs) for n in (1, 2, 3)] == [2, 4, 8]
    assert invoice.latest_version.inputs_by_var["workflow_input_we4tej0ly"].display_name == "Project name"
    assert fixture.workflows[DEMO_IDS["always-fails"]].fail_node == "Score"
    assert fixture.workflows[DEMO_IDS["v2-workflow"]].name == "Question answering (v2 only)"


def test_server_key_is_random_registered_secret_and_never_in_repr() -> None:
    first, second = SandboxServer(), SandboxServer()
    assert first.key.startswith("sk-sandbox-") and first.key != second.key
    assert redact.is_registered(first.key)
    assert redact.mask(f"key={first.key}") == "key=***"
    assert first.key not in repr(first)
    with pytest.raises(RuntimeError, match="start"):
        first.base_url  # noqa: B018 - the port is unknown before start


def test_refuses_non_loopback_hosts_unless_allowed() -> None:
    with pytest.raises(ConfigError, match=r"0\.0\.0\.0.*allow_remote=True"):
        SandboxServer(host="0.0.0.0")
    assert SandboxServer(host="0.0.0.0", allow_remote=True).host == "0.0.0.0"
    assert SandboxServer(host="localhost").host == "localhost"


def test_missing_starlette_or_uvicorn_is_a_config_error_with_the_install_hint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    with pytest.raises(ConfigError, match=r"pip install 'opus-runner\[sandbox\]'"):
        SandboxServer()


def test_port_in_use_is_a_config_error(server: SandboxServer) -> None:
    with pytest.raises(ConfigError, match=f"127.0.0.1:{server.port}.*another port"):
        SandboxServer(port=server.port).start()


def test_pytest_fixtures_start_and_stop_servers(
    opus_sandbox: SandboxServer, opus_sandbox_factory: Any
) -> None:
    assert opus_sandbox.running
    response = httpx.get(
        f"{opus_sandbox.base_url}/workflow/{DEMO_IDS['demo-summarize']}",
        headers={"x-service-key": opus_sandbox.key},
    )
    assert response.json()["name"] == "Summarize a document"
    other = opus_sandbox_factory(FIXTURE, key="sk-test-factory", faults=[{"route": "status", "kind": "drop"}])
    assert other.running and other.port != opus_sandbox.port and other.key == "sk-test-factory"
    assert len(other.faults) == 1


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_serve_prints_exactly_two_lines_then_serves_until_stopped(stop_signal: int) -> None:
    code = "from opus_runner.sandbox import serve; serve(None, '127.0.0.1', 0, 'sk-sandbox-printed')"
    with subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    ) as proc:
        try:
            assert proc.stdout is not None
            first, second = proc.stdout.readline().strip(), proc.stdout.readline().strip()
            assert first.startswith("Opus sandbox listening on http://127.0.0.1:")
            base = first.rsplit(" ", 1)[1]
            assert second == f"OPUS_BASE_URL={base} OPUS_SERVICE_KEY=sk-sandbox-printed"
            response = httpx.get(
                f"{base}/executor/workflow/{DEMO_IDS['demo-summarize']}/versions",
                headers={"x-service-key": "sk-sandbox-printed"},
            )
            assert response.status_code == 200
            proc.send_signal(stop_signal)
            rest, errors = proc.communicate(timeout=10)
            assert proc.returncode == 0
            assert rest == "" and "Traceback" not in errors
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


def test_the_listening_socket_turns_nagle_off(server: SandboxServer) -> None:
    # With Nagle on, every response on a reused connection waits ~40 ms for a delayed ACK; asyncio
    # only sets TCP_NODELAY on accepted sockets when the listening socket's proto says TCP.
    sock = server._socket
    assert sock is not None and sock.proto == socket.IPPROTO_TCP
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


# --- auth, routing and error bodies -------------------------------------------------------------


def test_missing_and_wrong_key_are_refused(server: SandboxServer) -> None:
    url = f"{server.base_url}/workflow/{W['quick']}"
    missing = nest(httpx.get(url), 401)
    assert missing["message"] == "API key is required" and missing["error"] == "Unauthorized"
    assert missing["path"] == f"/workflow/{W['quick']}"
    wrong = nest(httpx.get(url, headers={"x-service-key": "sk-wrong"}), 401)
    assert wrong["message"] == "Invalid or expired API key"
    for path in ("/job/initiate", "/job/execute", "/job/file/upload", "/job/file/download"):
        assert httpx.post(server.base_url + path, json={}).status_code == 401
    assert httpx.get(f"{server.base_url}/_sandbox/stats").status_code == 200
    assert server.state.count("GET", "workflow") == 2


def test_every_error_is_a_nestjs_body_with_timestamp_and_path(client: httpx.Client) -> None:
    unknown_route = nest(client.get("/no/such/route", params={"a": "1"}), 404)
    assert unknown_route["message"] == "Cannot GET /no/such/route" and unknown_route["error"] == "Not Found"
    assert unknown_route["path"] == "/no/such/route?a=1"
    assert nest(client.put("/job/initiate"), 405)["error"] == "Method Not Allowed"
    assert nest(client.get(f"/workflow/{wid('nope')}"), 404)["message"] == f"Workflow {wid('nope')} not found"
    assert nest(client.get("/job/12345/status"), 404)["message"] == "Job 12345 not found"
    forbidden = nest(
        client.post("/job/file/upload", json={"fileExtension": ".pdf", "workspaceId": UNKNOWN_WORKSPACE}), 403
    )
    assert forbidden["error"] == "Forbidden" and "lacks permission" in forbidden["message"]
    job = initiate(client, W["instant"])
    crash = nest(execute(client, job, {"in_title": {"value": "t", "type": {"type": "str"}}}), 500)
    assert crash["message"] == "Internal server error"
    assert nest(client.get(f"/job/{job}/results"), 400)["message"] == "Job is not completed yet"
    assert problems_of(client.post("/job/initiate", content=b"{not json")) == [
        "the request body is not valid JSON"
    ]


# --- §8.1 UUID workflow ids -----------------------------------------------------------------------


def test_the_fixture_loader_refuses_workflow_ids_that_are_not_uuids() -> None:
    with pytest.raises(FixtureError) as info:
        load_fixture({"workflows": {"demo-summarize": {}}})
    assert format_key(info.value.key) == "workflows.demo-summarize"
    assert info.value.message.startswith("Opus identifies workflows by UUID; 'demo-summarize' is not one")
    with pytest.raises(FixtureError, match="used twice"):
        load_fixture({"workflows": {W["quick"]: {}, W["quick"].upper(): {}}})
    assert list(load_fixture({"workflows": {W["quick"].upper(): {}}}).workflows) == [W["quick"]]


def test_requests_naming_a_non_uuid_workflow_answer_400(client: httpx.Client) -> None:
    must = ["workflowId must be a UUID"]
    for path in (
        "/workflow/demo-summarize",
        "/reference-workflow/v2/workflow-object/demo-summarize",
        "/executor/workflow/demo-summarize/versions",
    ):
        assert problems_of(client.get(path)) == must
    assert problems_of(client.get("/workflow/0123456789abcdef")) == must  # a 16-character short id
    assert (
        problems_of(client.post("/job/initiate", json={"workflowId": "demo-summarize", "title": "t"})) == must
    )
    assert problems_of(
        client.post("/job/initiate", json={"referenceEntityId": "x", "workflowId": W["quick"], "title": "t"})
    ) == ["referenceEntityId must be a UUID"]
    assert (
        problems_of(
            client.post("/job/file/upload", json={"fileExtension": ".pdf", "workflowId": "demo-summarize"})
        )
        == must
    )
    assert problems_of(client.get("/job/search", params={"workflowId": "demo-summarize"})) == must
    # a UUID that names no workflow is a 404, in upper case too
    assert client.get(f"/workflow/{W['quick'].upper()}").status_code == 200
    assert client.post("/job/initiate", json={"workflowId": wid("nope"), "title": "t"}).status_code == 404


# --- §8.2 numeric-string job ids ------------------------------------------------------------------


def test_job_ids_are_increasing_numeric_strings(client: httpx.Client, opus_sandbox_factory: Any) -> None:
    ids = [initiate(client, W["instant"]) for _ in range(3)]
    assert all(isinstance(i, str) and i.isdigit() and len(i) == 5 for i in ids)
    assert [int(i) for i in ids] == list(range(int(ids[0]), int(ids[0]) + 3))
    assert int(ids[0]) >= FIRST_JOB_NUMBER
    execute(client, ids[0], {"in_title": ("t", "str")})
    assert client.get(f"/job/{ids[0]}").json()["jobExecutionId"] == ids[0]
    assert client.get("/job/search").json()["jobs"][0]["jobExecutionId"] == ids[0]
    fresh = opus_sandbox_factory(FIXTURE)  # per server
    first = httpx.post(
        f"{fresh.base_url}/job/initiate",
        json={"workflowId": W["instant"], "title": "t"},
        headers={"x-service-key": fresh.key},
    ).json()["jobExecutionId"]
    assert first == str(FIRST_JOB_NUMBER)
    assert initiate(client, wid("doc-instant")).count("-") == 4  # documented: uuid job ids


# --- §8.3, 8.4 the workflow object ----------------------------------------------------------------


def test_get_workflow_answers_the_v2_graph_and_pins_versions(client: httpx.Client) -> None:
    workflow = W["versioned"]
    graph = client.get(f"/workflow/{workflow}").json()
    assert graph == client.get(f"/reference-workflow/v2/workflow-object/{workflow}").json()
    assert "jobPayloadSchema" not in graph and graph["version"] == 3
    inputs = graph["nodes"][graph["workflow_input_node_id"]]["input_schema"]["schema"]
    assert list(inputs) == ["a", "b"]
    v1 = client.get(f"/workflow/{workflow}", params={"version": 1}).json()
    assert v1["version"] == 1 and v1["active_status"] == "inactive"
    assert list(v1["nodes"][v1["workflow_input_node_id"]]["input_schema"]["schema"]) == ["a"]
    assert all(n.get("workflow_version_id") == version_uuid(workflow, 1) for n in v1["nodes"].values())
    # version 2 is not described by the fixture: it has the latest version's inputs
    v2 = client.get(f"/reference-workflow/v2/workflow-object/{workflow}", params={"version": 2}).json()
    assert list(v2["nodes"]["n-in"]["input_schema"]["schema"]) == ["a", "b"]
    # the uuid wins over the number
    pinned = client.get(
        f"/workflow/{workflow}", params={"version": 3, "workflowVersionId": version_uuid(workflow, 1)}
    )
    assert pinned.json()["version"] == 1
    assert client.get(f"/workflow/{workflow}", params={"version": 9}).status_code == 404
    assert (
        client.get(f"/workflow/{workflow}", params={"workflowVersionId": str(uuid.uuid4())}).status_code
        == 404
    )
    assert problems_of(client.get(f"/workflow/{workflow}", params={"version": "x"})) == [
        "version must be a positive whole number"
    ]


def test_live_graph_shape(client: httpx.Client) -> None:
    graph = client.get(f"/workflow/{W['quick']}").json()
    assert {
        "workflow_id",
        "name",
        "description",
        "version",
        "active_status",
        "workspace_id",
        "workflow_input_node_id",
        "workflow_output_node_id",
        "nodes",
        "edges",
    } <= set(graph)
    assert (
        graph["workflow_id"] == W["quick"] and graph["name"] == "Quick" and graph["active_status"] == "active"
    )
    assert graph["workspace_id"] == DEFAULT_WORKSPACE_ID
    nodes, edges = graph["nodes"], graph["edges"]
    assert isinstance(nodes, dict) and isinstance(edges, dict)
    assert all(node_id == node["id"] for node_id, node in nodes.items())
    assert all(
        edge_id == edge["id"] and set(edge) == {"id", "from_node_id", "to_node_id"}
        for edge_id, edge in edges.items()
    )
    # input -> a task node per fixture node -> output, chained
    order = [graph["workflow_input_node_id"]]
    while len(order) <= len(edges):
        order.append(next(e["to_node_id"] for e in edges.values() if e["from_node_id"] == order[-1]))
    assert order[-1] == graph["workflow_output_node_id"]
    assert [nodes[n]["name"] for n in order[1:-1]] == ["A", "B", "C"]
    assert [nodes[n]["type"] for n in order] == ["input", "task", "task", "task", "output"]
    node = nodes[graph["workflow_input_node_id"]]
    assert node["workflow_version_id"] == version_uuid(W["quick"], 1)
    assert node["output_schema"] == {"schema": {}}
    schema = node["input_schema"]["schema"]
    assert list(schema) == [i["variable_name"] for i in ALL_INPUTS]
    assert all("type" not in entry for entry in schema.values())
    assert schema["in_title"] == {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"opus-sandbox:{W['quick']}:input:in_title")),
        "variable_name": "in_title",
        "display_name": "Title",
        "description": "",
        "is_nullable": False,
        "default": None,
        "allowed_types": [{"type": "str", "type_definition": None}],
        "tags": [],
    }
    assert schema["in_doc"]["allowed_types"] == [{"type": "file", "type_definition": None}]
    assert schema["in_doc"]["tags"] == [{"variable_name": "allowed_file_types", "value": ["PDF", "TXT"]}]
    for var, kind in (
        ("in_count", "int"),
        ("in_json", "json_string"),
        ("in_items", "array"),
        ("in_obj", "object"),
    ):
        assert schema[var]["allowed_types"] == [{"type": kind, "type_definition": None}]
    # a list of files: by default an array of file items, with wire: array_files the other form seen
    assert schema["in_files"]["allowed_types"] == [
        {
            "type": "array",
            "type_definition": {"id": "file", "variable_name": "file", "allowed_types": [{"type": "file"}]},
        }
    ]
    assert schema["in_files"]["tags"] == [{"variable_name": "allowed_file_types", "value": ["CSV"]}]
    assert schema["in_more"]["allowed_types"] == [{"type": "array_files", "type_definition": None}]


def test_api_modes_are_honoured_live_too(client: httpx.Client) -> None:
    gone = nest(client.get(f"/workflow/{wid('api-v2-only')}"), 500)
    assert gone["message"] == "V1 workflow details are no longer supported"
    graph = client.get(f"/reference-workflow/v2/workflow-object/{wid('api-v2-only')}")
    assert graph.status_code == 200 and isinstance(graph.json()["nodes"], dict)


# --- §8.5 versions ---------------------------------------------------------------------------------


def test_live_versions_are_snake_case(client: httpx.Client) -> None:
    body = client.get(f"/executor/workflow/{W['versioned']}/versions").json()
    assert body["workflow_id"] == W["versioned"] and body["name"] == W["versioned"]
    assert body["latest_version"] == 3
    assert [v["version"] for v in body["versions"]] == [3, 2, 1]
    assert body["versions"][0] == {
        "workflow_version_id": version_uuid(W["versioned"], 3),
        "version": 3,
        "status": "active",
        "major_version": 3,
        "minor_version": 0,
        "version_label": "v3.0",
        "created_at": "2026-01-03T00:00:00Z",
        "change_description": "",
    }
    assert {v["status"] for v in body["versions"][1:]} == {"inactive"}
    old = initiate(client, W["versioned"], workflowVersionNumber=1)
    assert execute(client, old, {"a": ("x", "str")}).status_code == 201
    by_id = initiate(client, W["versioned"], workflowVersionId=body["versions"][2]["workflow_version_id"])
    assert execute(client, by_id, {"a": ("y", "str")}).status_code == 201
    assert "jobPayloadSchemaInstance.b (B) is required" in problems_of(
        execute(client, initiate(client, W["versioned"]), {"a": ("z", "str")})
    )
    assert client.get(f"/job/{old}/results").json()["jobResultsPayloadSchema"]["which"]["value"] == "v1 x"
    bad = client.post(
        "/job/initiate", json={"workflowId": W["versioned"], "title": "t", "workflowVersionNumber": 7}
    )
    assert nest(bad, 404)["message"] == f"Version 7 of workflow {W['versioned']} not found"


# --- §8.6 201s ---------------------------------------------------------------------------------------


def test_live_posts_answer_201_and_v2_initiate_redirects(client: httpx.Client, server: SandboxServer) -> None:
    initiated = client.post(
        "/job/initiate", json={"workflowId": W["instant"], "title": "t", "description": "d"}
    )
    assert initiated.status_code == 201 and set(initiated.json()) == {"jobExecutionId"}
    job = initiated.json()["jobExecutionId"]
    slot = client.post("/job/file/upload", json={"fileExtension": ".pdf", "workflowId": W["instant"]})
    assert slot.status_code == 201 and set(slot.json()) == {"presignedUrl", "fileUrl"}
    executed = execute(client, job, {"in_title": ("t", "str")})
    assert executed.status_code == 201
    assert executed.json() == {
        "success": True,
        "jobExecutionId": job,
        "message": "Job execution has been started",
    }
    assert client.post(f"/job/{job}/archive").status_code == 201
    redirect = httpx.post(f"{server.base_url}/job/v2/initiate", json={})
    assert redirect.status_code == 308 and redirect.headers["location"] == "/job/initiate"
    followed = client.post(
        "/job/v2/initiate", json={"workflowId": W["instant"], "title": "t"}, follow_redirects=True
    )
    assert followed.status_code == 201 and followed.json()["jobExecutionId"].isdigit()
    assert server.state.count("POST", "initiate_v2") == 2 and server.state.count("POST", "initiate") == 2


def test_initiate_validation(client: httpx.Client, server: SandboxServer) -> None:
    assert problems_of(client.post("/job/initiate", json={})) == [
        "workflowId should not be empty",
        "title should not be empty",
    ]
    assert problems_of(
        client.post(
            "/job/initiate",
            json={
                "workflowId": W["instant"],
                "title": 3,
                "source": "robot",
                "workspaces": ["a"],
                "initialInput": 1,
            },
        )
    ) == [
        "title must be a string",
        "workspaces must be a string",
        "source must be one of the following values: "
        "api, email-agent, chat-agent, scheduled, manual, agent, opus-ai, web-app",
        "initialInput must be an object",
    ]
    # referenceEntityId wins over workflowId
    job = initiate(client, W["slow"], referenceEntityId=W["instant"], source="scheduled", refUserId="u-1")
    assert server.state.jobs[job].workflow.id == W["instant"] and server.state.jobs[job].source == "scheduled"


# --- §8.7 callbackUrl ------------------------------------------------------------------------------


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[dict[str, Any]], threading.Event]]:
    received: list[dict[str, Any]] = []
    arrived = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # http.server's naming
            length = int(self.headers["content-length"])
            received.append(json.loads(self.rfile.read(length)))
            self.send_response(204)
            self.end_headers()
            arrived.set()

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/hook", received, arrived
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.parametrize("callback", [None, "", "not a url", "ftp://host/x", "https://", 7])
def test_callback_url_is_required(client: httpx.Client, server: SandboxServer, callback: Any) -> None:
    job = initiate(client, W["instant"])
    body: dict[str, Any] = {
        "jobExecutionId": job,
        "jobPayloadSchemaInstance": instance_of({"in_title": ("t", "str")}),
    }
    if callback is not None:
        body["callbackUrl"] = callback
    assert problems_of(client.post("/job/execute", json=body)) == ["callbackUrl must be a URL address"]
    assert server.state.jobs[job].executed_at is None


def test_any_http_url_is_accepted_but_only_loopback_receives_the_callback(
    client: httpx.Client, server: SandboxServer, receiver: Any
) -> None:
    url, received, arrived = receiver
    remote = [PLACEHOLDER, "https://example.com/hooks/opus?token=abc", "http://10.1.2.3:8080/x"]
    jobs = [run(client, W["instant"], {"in_title": ("t", "str")}, callback=c) for c in remote]
    assert server.state.callbacks_skipped == 3
    assert all(server.state.jobs[j].callback_skipped for j in jobs)
    local = run(client, W["quick"], {"in_title": ("CB", "str")}, callback=url)
    assert arrived.wait(5)
    wait_for(lambda: server.state.callbacks_sent == 1)  # the receiver answered; the sandbox counts it
    assert len(received) == 1
    body = received[0]
    assert body["jobExecutionId"] == local and body["status"] == "COMPLETED"
    assert body["results"]["jobResultsPayloadSchema"]["summary"]["value"] == "Hello CB from Job title"
    assert server.state.callbacks_skipped == 3 and server.state.callbacks_failed == 0


def test_failed_job_callback_and_unreachable_receiver(
    client: httpx.Client, server: SandboxServer, receiver: Any
) -> None:
    url, received, arrived = receiver
    run(client, W["failing"], {"in_title": ("T", "str")}, callback=url)
    assert arrived.wait(5)
    assert received[0]["status"] == "FAILED" and received[0]["results"]["error"] == "Node 'B' raised: boom"
    # a receiver that is not listening is counted as a failed callback, never raised
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    closed_port = sock.getsockname()[1]
    sock.close()
    job = run(
        client, W["instant"], {"in_title": ("T", "str")}, callback=f"http://127.0.0.1:{closed_port}/hook"
    )
    wait_for(lambda: server.state.callbacks_failed == 1 and server.state.callbacks_sent == 1)
    assert client.get(f"/job/{job}/status").json()["status"] == "COMPLETED"


# --- §8.8 execute validation -----------------------------------------------------------------------


def test_execute_refuses_an_unknown_job_and_structural_problems(
    client: httpx.Client, server: SandboxServer
) -> None:
    assert problems_of(client.post("/job/execute", json={})) == ["jobExecutionId should not be empty"]
    assert problems_of(client.post("/job/execute", json={"jobExecutionId": 72964})) == [
        "jobExecutionId must be a string"
    ]
    missing = execute(client, "99999999", {})
    assert nest(missing, 404)["message"] == "Job 99999999 not found"
    job = initiate(client, W["typed"])
    assert problems_of(
        client.post("/job/execute", json={"jobExecutionId": job, "callbackUrl": PLACEHOLDER})
    ) == ["jobPayloadSchemaInstance must be an object"]
    problems = problems_of(
        execute(
            client,
            job,
            {
                "in_n": {"value": 1, "type": "float", "displayName": 5},
                "in_flag": {"value": True},
                "in_obj": "not an entry",
                "in_bogus": ("x", "str"),
                "in_day": (None, "date"),  # nullable: fine
            },
        )
    )
    assert problems == [
        "jobPayloadSchemaInstance.in_n.displayName must be a string",
        "jobPayloadSchemaInstance.in_flag.type should not be empty",
        "jobPayloadSchemaInstance.in_obj must be an object with value and type",
        f"jobPayloadSchemaInstance.in_bogus is not an input of workflow {W['typed']} version 1 "
        "(its inputs: in_title, in_doc, in_n, in_count, in_flag, in_day, in_items, in_files, in_more, "
        "in_obj, in_json)",
        "jobPayloadSchemaInstance.in_title (Title) is required",
    ]
    assert problems_of(execute(client, job, {"in_title": (None, "str")})) == [
        "jobPayloadSchemaInstance.in_title.value (Title) is required and must not be null"
    ]
    # refused executes leave the job startable; they were processed, and the last body is kept
    assert client.get(f"/job/{job}").json()["input"] is None
    assert server.state.executes[job] == 3 and len(server.state.payload_history[job]) == 3
    assert server.state.payloads[job]["jobPayloadSchemaInstance"]["in_title"]["value"] is None
    assert execute(client, job, {"in_title": ("t", "str")}).status_code == 201


def test_a_type_sent_as_an_object_is_a_500(client: httpx.Client, server: SandboxServer) -> None:
    job = initiate(client, W["typed"])
    for kind in ({"type": "str"}, ["str"]):
        crash = execute(client, job, {"in_title": {"value": "t", "type": kind}})
        assert nest(crash, 500)["message"] == "Internal server error"
    assert server.state.jobs[job].executed_at is None


def test_a_wrong_type_is_accepted_and_the_job_fails_at_its_input_node(
    client: httpx.Client, server: SandboxServer
) -> None:
    job = initiate(client, W["quick"])
    accepted = execute(client, job, {"in_title": ("Q", "str"), "in_n": (3, "str")})
    assert accepted.status_code == 201 and accepted.json()["success"] is True
    # a fraction of a second later, well before the workflow's 0.3 s
    record = server.state.jobs[job]
    assert record.executed_at is not None and record.ends_at == pytest.approx(record.executed_at + 0.1)
    assert record.status(record.executed_at + 0.01) == "PENDING"
    assert wait_terminal(client, job) == "FAILED"
    message = (
        "Node 'A' failed: input in_n (N): the workflow expects type 'float', the request sent type 'str'"
    )
    assert error_of(client, job) == message
    audit = client.get(f"/job/{job}/audit").json()
    assert audit["failed_nodes"] == ["A"] and audit["executed_nodes"] == []
    assert audit["remaining_nodes_to_execute"] == ["B", "C"]
    assert audit["audit"]["nodes_execution_data"]["A"]["execution_output"] == [{"error": message}]
    assert client.get(f"/job/{job}/results").json() == {"jobResultsPayloadSchema": {}, "error": message}
    detail = client.get(f"/job/{job}").json()
    assert detail["input"]["in_n"] == {"value": 3, "type": "str", "displayName": "in_n"}
    assert detail["audit"]["failed_nodes"] == ["A"]


@pytest.mark.parametrize(
    ("var", "value", "kind", "expected"),
    [
        ("in_title", 5, "str", "input in_title (Title): expected a string, found int 5"),
        ("in_n", "abc", "float", "input in_n (N): expected a number (float), found str 'abc'"),
        ("in_n", True, "float", "input in_n (N): expected a number (float), found bool True"),
        ("in_count", 2.5, "int", "input in_count (Count): expected an integer (int), found float 2.5"),
        ("in_count", True, "int", "input in_count (Count): expected an integer (int), found bool True"),
        ("in_flag", "yes", "bool", "input in_flag (Flag): expected a boolean (bool), found str 'yes'"),
        ("in_day", "2026-13-01", "date", "input in_day (Day): expected a date formatted YYYY-MM-DD"),
        ("in_day", "2026-W01-1", "date", "input in_day (Day): expected a date formatted YYYY-MM-DD"),
        ("in_items", {"a": 1}, "array", "input in_items (Items): expected an array, found dict"),
        ("in_obj", [1], "object", "input in_obj (Obj): expected an object, found list [1]"),
        (
            "in_json",
            "{not json",
            "json_string",
            "input in_json (Settings): expected a JSON string, found text",
        ),
        ("in_json", {"a": 1}, "json_string", "input in_json (Settings): expected a JSON string (text that"),
        (
            "in_doc",
            "ftp://host/x.pdf",
            "file",
            "input in_doc (Doc): expected a file URL from /job/file/upload",
        ),
        (
            "in_doc",
            "https://files.example.com/x.png",
            "file",
            "input in_doc (Doc): expected a file of type PDF, TXT, found .png",
        ),
        ("in_more", "x.csv", "array_files", "input in_more (More files): expected a list of file URLs"),
    ],
)
def test_a_value_that_does_not_fit_its_type_fails_at_the_input_node(
    client: httpx.Client, var: str, value: Any, kind: str, expected: str
) -> None:
    values = {"in_title": ("t", "str"), var: (value, kind)}
    job = run(client, W["typed"], values)
    assert wait_terminal(client, job) == "FAILED"
    message = error_of(client, job)
    assert message.startswith(f"Node 'Input' failed: {expected}"), message


def test_file_inputs_must_be_uploaded_put_and_of_an_allowed_type(
    client: httpx.Client, server: SandboxServer
) -> None:
    never_put = client.post(
        "/job/file/upload", json={"fileExtension": ".pdf", "workflowId": W["typed"]}
    ).json()
    unknown = f"{server.base_url}/media/{'0' * 32}/x.pdf"
    png = upload(client, "photo.png", b"\x89PNG")
    renamed = png.rsplit("/", 1)[0] + "/photo.pdf"  # a real token under another name
    cases = {
        never_put["fileUrl"]: "was registered by /job/file/upload but never PUT to its presigned URL",
        unknown: f"the file was never uploaded: {unknown} is not a file uploaded to this server",
        renamed: "the file was never uploaded",
        png: "expected a file of type PDF, TXT, found .png",
    }
    for url, expected in cases.items():
        job = run(client, W["typed"], {"in_title": ("t", "str"), "in_doc": (url, "file")})
        assert wait_terminal(client, job) == "FAILED"
        assert expected in error_of(client, job)
    txt = upload(client, "notes.txt", b"hello")
    external = "https://files.example.com/a/contract.PDF?signature=abc"  # cannot be checked: accepted
    for url in (txt, external):
        job = run(client, W["typed"], {"in_title": ("t", "str"), "in_doc": (url, "file")})
        assert wait_terminal(client, job) == "COMPLETED"


def test_every_type_that_fits_is_accepted(client: httpx.Client) -> None:
    pdf = upload(client, "a.pdf", b"%PDF")
    csv = upload(client, "a.csv", b"a,b")
    values = {
        "in_title": ("t", "str"),
        "in_doc": (pdf, "file"),
        "in_n": (2, "float"),
        "in_count": (4.0, "int"),  # JSON has one number type: 4.0 is an integer
        "in_flag": (False, "bool"),
        "in_day": ("2026-02-28", "date"),
        "in_items": (["x", 1], "array"),
        "in_obj": ({"k": [1]}, "object"),
        "in_json": ('{"k": [1]}', "json_string"),
        "in_files": {
            "value": [csv],
            "type": "array",
            "typeDefinition": {"id": "file", "variable_name": "file", "allowed_types": [{"type": "file"}]},
        },
        "in_more": ([csv], "array_files"),
    }
    job = run(client, W["typed"], values)
    assert wait_terminal(client, job) == "COMPLETED"
    # displayName is optional
    bare = run(client, W["typed"], {"in_title": {"value": "t", "type": "str"}})
    assert wait_terminal(client, bare) == "COMPLETED"


def test_a_list_of_files_needs_type_array_with_a_type_definition(client: httpx.Client) -> None:
    csv = upload(client, "a.csv", b"a,b")
    files = {"id": "file", "variable_name": "file", "allowed_types": [{"type": "file"}]}
    cases = [
        (
            {"value": [csv], "type": "array"},
            "the files arrived as text: type 'array' needs a typeDefinition "
            "describing file items (typeDefinition missing)",
        ),
        (
            {"value": [csv], "type": "array", "type_definition": files},
            "(found type_definition; the field is typeDefinition)",
        ),
        (
            {
                "value": [csv],
                "type": "array",
                "typeDefinition": {"id": "x", "allowed_types": [{"type": "str"}]},
            },
            "its typeDefinition does not describe file items",
        ),
        (
            {"value": [csv], "type": "array_files"},
            "the workflow expects type 'array', the request sent type 'array_files'",
        ),
        (
            {"value": [csv, "https://x.example/a.pdf"], "type": "array", "typeDefinition": files},
            "input in_files (Files)[1]: expected a file of type CSV, found .pdf",
        ),
        # wire: array_files takes the other form, and refuses this one
        (
            {"value": [csv], "type": "array", "typeDefinition": files},
            "the workflow expects type 'array_files'",
        ),
    ]
    for index, (entry, expected) in enumerate(cases):
        var = "in_more" if index == len(cases) - 1 else "in_files"
        job = run(client, W["typed"], {"in_title": ("t", "str"), var: entry})
        assert wait_terminal(client, job) == "FAILED"
        assert expected in error_of(client, job), index
    for entry in (
        {"value": [csv], "type": "array", "typeDefinition": {"type": "file"}},
        {"value": [csv], "type": "array", "typeDefinition": {"allowedTypes": [{"type": "file"}]}},
    ):
        job = run(client, W["typed"], {"in_title": ("t", "str"), "in_files": entry})
        assert wait_terminal(client, job) == "COMPLETED"


# --- §8.10 uploads ------------------------------------------------------------------------------------


def test_presigned_put_refuses_a_content_type_and_keeps_the_key_check(
    client: httpx.Client, server: SandboxServer
) -> None:
    slot = client.post(
        "/job/file/upload",
        json={"fileExtension": "pdf", "originalName": "Q4 report.pdf", "workflowId": W["typed"]},
    ).json()
    assert slot["presignedUrl"].startswith(f"{server.base_url}/_upload/")
    assert slot["fileUrl"].startswith(f"{server.base_url}/media/") and slot["fileUrl"].endswith(
        "/Q4%20report.pdf"
    )
    refused = httpx.put(slot["presignedUrl"], content=b"%PDF", headers={"content-type": "application/pdf"})
    assert refused.status_code == 403 and refused.headers["content-type"].startswith("application/xml")
    assert "<Code>SignatureDoesNotMatch</Code>" in refused.text
    assert server.state.content_type_sent_to_presigned == 1 and server.state.uploads == {}
    assert httpx.put(slot["presignedUrl"], content=b"first").status_code == 200
    assert httpx.put(slot["presignedUrl"], content=b"%PDF-1.7 second").status_code == 200  # overwrites
    token = slot["presignedUrl"].rsplit("/", 1)[1]
    assert server.state.uploads[token] == b"%PDF-1.7 second"
    assert server.state.key_sent_to_presigned == 0
    httpx.put(slot["presignedUrl"], content=b"x", headers={"x-service-key": server.key})
    assert server.state.key_sent_to_presigned == 1
    unknown = httpx.put(f"{server.base_url}/_upload/unknown", content=b"x")
    assert unknown.status_code == 404 and "<Code>NoSuchUpload</Code>" in unknown.text
    assert server.state.count("PUT", "put") == 5


def test_upload_validation_and_what_the_slot_records(client: httpx.Client, server: SandboxServer) -> None:
    assert problems_of(client.post("/job/file/upload", json={"fileExtension": ".exe"})) == [
        "fileExtension must be one of the following values: "
        ".pdf, .docx, .csv, .xls, .xlsx, .txt, .json, .html, .xml, .jpeg, .jpg, .png",
        "workflowId or workspaceId must be provided",
    ]
    assert problems_of(
        client.post(
            "/job/file/upload",
            json={"fileExtension": "", "originalName": "", "accessScope": "unlisted", "workspaceId": 3},
        )
    ) == [
        "fileExtension should not be empty",
        "originalName must be a non-empty string",
        "accessScope must be one of the following values: all, user, workspace, organization",
        "workspaceId must be a string",
    ]
    # with or without the dot, any case; originalName and accessScope are optional
    for extension, scope in (("Xlsx", None), (".csv", "workspace"), ("json", "all")):
        fields = {"fileExtension": extension, "workflowId": W["typed"]}
        if scope:
            fields["accessScope"] = scope
        assert client.post("/job/file/upload", json=fields).status_code == 201
    slots = list(server.state.upload_slots.values())
    assert [(s.extension, s.original_name, s.access_scope, s.scope) for s in slots] == [
        (".xlsx", None, None, "unlisted"),
        (".csv", None, "workspace", "workspace"),
        (".json", None, "all", "all"),
    ]
    assert all(s.workflow_id == W["typed"] and s.workspace_id is None for s in slots)
    assert all(s.workspace == DEFAULT_WORKSPACE_ID and s.name.endswith(s.extension) for s in slots)
    assert (
        client.post("/job/file/upload", json={"fileExtension": ".pdf", "workflowId": wid("nope")}).status_code
        == 404
    )


def test_uploads_are_limited_to_10_mb(client: httpx.Client, server: SandboxServer) -> None:
    slot = client.post(
        "/job/file/upload",
        json={"fileExtension": ".txt", "originalName": "big.txt", "workflowId": W["typed"]},
    ).json()
    token = slot["presignedUrl"].rsplit("/", 1)[1]
    limit = 10 * 1024 * 1024
    assert httpx.put(slot["presignedUrl"], content=b"x" * limit).status_code == 200
    too_big = httpx.put(slot["presignedUrl"], content=b"y" * (limit + 1))
    assert too_big.status_code == 413 and "<Code>EntityTooLarge</Code>" in too_big.text

    def chunks() -> Iterator[bytes]:  # no content-length: the server must count as it reads
        for _ in range(11):
            yield b"z" * (1024 * 1024)

    assert httpx.put(slot["presignedUrl"], content=chunks()).status_code == 413
    assert server.state.uploads[token] == b"x" * limit  # the rejected PUTs changed nothing


# --- §8.11 output files ------------------------------------------------------------------------------


def test_output_files_download_only_through_job_file_download(
    client: httpx.Client, server: SandboxServer
) -> None:
    job = run(client, W["quick"], {"in_title": ("Q4", "str")})
    age(server, job, 1)
    results = client.get(f"/job/{job}/results").json()["jobResultsPayloadSchema"]
    url = results["report"]["value"]
    assert results["report"]["type"] == "file"
    assert url.startswith(f"{server.base_url}/media/") and url.endswith("/r-Q4.txt")
    direct = httpx.get(url)
    assert direct.status_code == 404 and direct.json()["statusCode"] == 404
    answer = client.post("/job/file/download", json={"fileUrl": url, "customExpiry": 60})
    assert answer.status_code == 201
    body = answer.json()
    assert body["fileUrl"] == url and body["contentType"] == "text/plain" and body["contentLength"] == 4
    assert "X-Amz-Expires=60" in body["presignedUrl"]
    fetched = httpx.get(body["presignedUrl"])
    assert fetched.content == b"R=Q4" and fetched.headers["content-type"].startswith("text/plain")
    assert server.state.key_sent_to_presigned == 0
    httpx.get(body["presignedUrl"], headers={"x-service-key": server.key})
    assert server.state.key_sent_to_presigned == 1
    # an uploaded file downloads the same way; workspaceId instead of customExpiry
    uploaded = upload(client, "in.txt", b"hello")
    link = client.post(
        "/job/file/download", json={"fileUrl": uploaded, "workspaceId": DEFAULT_WORKSPACE_ID}
    ).json()
    assert httpx.get(link["presignedUrl"]).content == b"hello"
    # the link expires
    token = link["presignedUrl"].split("/_download/", 1)[1].split("/", 1)[0]
    expired = server.state.download_links[token]
    server.state.download_links[token] = type(expired)(expired.file_token, expired.name, time.monotonic() - 1)
    gone = httpx.get(link["presignedUrl"])
    assert gone.status_code == 403 and "Request has expired" in gone.text
    assert "<Code>NoSuchKey</Code>" in httpx.get(f"{server.base_url}/_download/nope/x.txt").text

    assert nest(
        client.post("/job/file/download", json={"fileUrl": f"{server.base_url}/media/abc/x.txt"}), 404
    )
    assert nest(
        client.post("/job/file/download", json={"fileUrl": "https://files.opus.com/media/x.pdf"}), 404
    )
    assert problems_of(client.post("/job/file/download", json={"fileUrl": url, "customExpiry": 59})) == [
        "customExpiry must not be less than 60"
    ]
    assert problems_of(client.post("/job/file/download", json={"fileUrl": "x", "customExpiry": 86401})) == [
        "fileUrl must be a URL address",
        "customExpiry must not be greater than 86400",
    ]
    assert nest(
        client.post("/job/file/download", json={"fileUrl": url, "workspaceId": UNKNOWN_WORKSPACE}), 403
    )


# --- §8.12 PENDING, IN_PROGRESS -----------------------------------------------------------------------


def test_pending_before_execute_then_in_progress(client: httpx.Client, server: SandboxServer) -> None:
    job = initiate(client, W["slow"])
    assert client.get(f"/job/{job}/status").json() == {"status": "PENDING"}  # not CREATED
    assert nest(client.get(f"/job/{job}/results"), 400)["message"] == "Job is not completed yet"
    execute(client, job, {"in_title": ("t", "str")})
    record = server.state.jobs[job]
    assert record.executed_at is not None
    assert record.status(record.executed_at + 0.01) == "PENDING"  # the same word as before execute
    age(server, job, 1)
    assert client.get(f"/job/{job}/status").json() == {"status": "IN_PROGRESS"}
    age(server, job, 31)
    assert client.get(f"/job/{job}/status").json() == {"status": "COMPLETED"}


@pytest.mark.parametrize(("name", "spelling"), [("space", "IN PROGRESS"), ("lower", "in_progress")])
def test_status_spelling(client: httpx.Client, server: SandboxServer, name: str, spelling: str) -> None:
    job = run(client, wid(name), {})
    age(server, job, 1)
    assert client.get(f"/job/{job}/status").json()["status"] == spelling


def test_lifecycle_and_results(client: httpx.Client, server: SandboxServer) -> None:
    job = initiate(client, W["quick"], description="d")
    values = {
        "in_title": ("Q4", "str"),
        "in_n": (3, "float"),
        "in_count": (7, "int"),
        "in_flag": (True, "bool"),
        "in_items": (["a", "b"], "array"),
        "in_json": ('{"mode": "fast"}', "json_string"),
    }
    assert execute(client, job, values).status_code == 201
    seen: list[str] = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        status = client.get(f"/job/{job}/status").json()["status"]
        if not seen or seen[-1] != status:
            seen.append(status)
        if status == "COMPLETED":
            break
        time.sleep(0.01)
    assert seen[-1] == "COMPLETED" and set(seen) <= {"PENDING", "IN_PROGRESS", "COMPLETED"}
    assert seen == sorted(seen, key=["PENDING", "IN_PROGRESS", "COMPLETED"].index)
    results = client.get(f"/job/{job}/results").json()["jobResultsPayloadSchema"]
    assert results["summary"] == {"value": "Hello Q4 from Job title", "type": "str", "displayName": "summary"}
    assert results["count"] == {"value": 3, "type": "float", "displayName": "Count"}
    assert results["whole"] == {"value": 7, "type": "int", "displayName": "whole"}
    assert results["items"]["value"] == ["a", "b"] and results["flag"]["value"] is True
    # json_string outputs are JSON text
    assert results["settings"] == {
        "value": '{"mode": "fast"}',
        "type": "json_string",
        "displayName": "settings",
    }
    assert json.loads(results["echo"]["value"]) == {"n": 7}


# --- §8.13 GET /job/{id} -------------------------------------------------------------------------------


def test_job_detail_shows_whether_an_execute_arrived(client: httpx.Client, server: SandboxServer) -> None:
    job = initiate(client, W["slow"], description="about it")
    detail = client.get(f"/job/{job}").json()
    assert set(detail) == {
        "jobExecutionId",
        "status",
        "input",
        "output",
        "audit",
        "title",
        "description",
        "createdAt",
        "workflow",
        "workflowVersionId",
        "builderType",
    }
    assert detail["jobExecutionId"] == job and detail["status"] == "PENDING"
    assert detail["input"] is None and detail["output"] is None
    assert detail["title"] == "Job title" and detail["description"] == "about it"
    assert detail["workflow"] == {"id": W["slow"], "name": W["slow"]}
    assert detail["workflowVersionId"] == version_uuid(W["slow"], 1)
    assert detail["createdAt"].endswith("Z") and detail["audit"]["nb_nodes"] == 3
    # a refused execute did not arrive
    execute(client, job, {})
    assert client.get(f"/job/{job}").json()["input"] is None
    execute(client, job, {"in_title": ("t", "str")})
    assert client.get(f"/job/{job}").json()["input"] == {
        "in_title": {"value": "t", "type": "str", "displayName": "in_title"}
    }
    age(server, job, 31)
    done = client.get(f"/job/{job}").json()
    assert done["status"] == "COMPLETED" and done["output"] == {"jobResultsPayloadSchema": {}}
    assert nest(client.get("/job/1/status"), 404)


# --- §8.14 search ----------------------------------------------------------------------------------


def test_search_total_count_filters_pages_archive_and_delete(client: httpx.Client) -> None:
    done = run(client, W["instant"], {"in_title": ("t", "str")})
    waiting = initiate(client, W["slow"])
    everything = client.get("/job/search").json()
    assert set(everything) == {"totalCount", "jobs"}
    assert everything["totalCount"] == 2 and {j["jobExecutionId"] for j in everything["jobs"]} == {
        done,
        waiting,
    }
    assert (
        client.get("/job/search", params={"workflowId": W["slow"]}).json()["jobs"][0]["jobExecutionId"]
        == waiting
    )
    assert [
        j["jobExecutionId"] for j in client.get("/job/search", params={"status": "completed"}).json()["jobs"]
    ] == [done]
    both = client.get("/job/search", params={"status": "COMPLETED,PENDING"}).json()
    assert both["totalCount"] == 2
    page = client.get("/job/search", params={"offset": 1, "maxResults": 1}).json()
    assert page["totalCount"] == 2 and [j["jobExecutionId"] for j in page["jobs"]] == [waiting]
    assert problems_of(client.get("/job/search", params={"maxResults": 0})) == [
        "maxResults must be a whole number of at least 1"
    ]
    item = everything["jobs"][0]
    assert item["workflow"]["id"] == W["instant"] and item["workflowId"] == W["instant"]
    assert client.get("/job/search", params={"workspaceIds": OTHER_WORKSPACE}).json()["totalCount"] == 0

    assert client.post(f"/job/{done}/archive").json() == {
        "success": True,
        "jobExecutionId": done,
        "archived": True,
    }
    assert (
        client.get("/job/search", params={"workflowId": W["instant"]}).json()["jobs"][0]["archived"] is True
    )
    assert client.get("/job/search", params={"archiveStatus": "nonArchivedOnly"}).json()["totalCount"] == 1
    assert client.get("/job/search", params={"archiveStatus": "archivedOnly"}).json()["totalCount"] == 1
    assert client.delete(f"/job/{done}/archive").json()["archived"] is False
    assert client.delete(f"/job/{done}/delete").json()["success"] is True
    assert client.get(f"/job/{done}/status").status_code == 404
    assert client.delete(f"/job/{done}/delete").status_code == 404
    assert client.post("/job/nope/archive").status_code == 404


def test_search_pages_25_jobs_by_default(client: httpx.Client) -> None:
    for _ in range(27):
        initiate(client, W["instant"])
    body = client.get("/job/search").json()
    assert body["totalCount"] == 27 and len(body["jobs"]) == 25


# --- §8.15 WAITING, UNKNOWN and stopped -----------------------------------------------------------------


@pytest.mark.parametrize(("name", "status"), [("waiting", "WAITING"), ("unknown", "UNKNOWN")])
def test_a_hold_reports_its_status_after_pending(
    client: httpx.Client, server: SandboxServer, name: str, status: str
) -> None:
    job = run(client, wid(name), {})
    age(server, job, 1)  # 30 s of hold: it lasts
    assert client.get(f"/job/{job}/status").json()["status"] == status
    assert client.get(f"/job/{job}").json()["audit"]["running_node"] == "Input"
    age(server, job, 31)  # the hold is over, 29 s of work remain
    assert client.get(f"/job/{job}/status").json()["status"] == "IN_PROGRESS"
    age(server, job, 61)
    assert client.get(f"/job/{job}/status").json()["status"] == "COMPLETED"


def test_a_hold_comes_between_pending_and_in_progress(client: httpx.Client, server: SandboxServer) -> None:
    job = server.state.jobs[run(client, wid("brief-hold"), {})]
    start = job.executed_at
    assert start is not None and job.ends_at == pytest.approx(start + 0.5)
    statuses = [job.status(start + t) for t in (0.0, 0.04, 0.06, 0.24, 0.26, 0.49, 0.51)]
    assert statuses == ["PENDING", "PENDING", "WAITING", "WAITING", "IN_PROGRESS", "IN_PROGRESS", "COMPLETED"]
    assert wait_terminal(client, job.id) == "COMPLETED"


def test_stop_ends_the_job_stopped(client: httpx.Client, server: SandboxServer) -> None:
    job = run(client, wid("stopping"), {})
    assert wait_terminal(client, job) == "stopped"
    assert client.get(f"/job/{job}/results").json() == {"jobResultsPayloadSchema": {}}
    audit = client.get(f"/job/{job}/audit").json()
    assert audit["executed_nodes"] == ["A", "B"] and audit["failed_nodes"] == []
    assert audit["audit"]["nodes_execution_data"]["C"]["execution_status"] == "STOPPED"
    assert server.state.active_jobs == set()  # a terminal status was read


# --- §8.18 workspaces ---------------------------------------------------------------------------------


def test_workspaces(client: httpx.Client, server: SandboxServer) -> None:
    forbidden = client.post(
        "/job/file/upload", json={"fileExtension": ".pdf", "workspaceId": UNKNOWN_WORKSPACE}
    )
    assert (
        nest(forbidden, 403)["message"]
        == f"Forbidden: the key's user lacks permission in workspace {UNKNOWN_WORKSPACE}"
    )
    there = client.post(
        "/job/file/upload",
        json={"fileExtension": ".pdf", "workspaceId": OTHER_WORKSPACE, "accessScope": "organization"},
    )
    assert there.status_code == 201
    slot = server.state.upload_slots[there.json()["presignedUrl"].rsplit("/", 1)[1]]
    assert (slot.workspace_id, slot.workflow_id, slot.workspace, slot.access_scope) == (
        OTHER_WORKSPACE,
        None,
        OTHER_WORKSPACE,
        "organization",
    )
    assert httpx.put(there.json()["presignedUrl"], content=b"%PDF").status_code == 200
    here = upload(client, "here.pdf", b"%PDF")  # through workflowId: the default workspace

    assert nest(
        client.post(
            "/job/initiate",
            json={
                "workflowId": W["elsewhere"],
                "title": "t",
                "workspaces": f"{OTHER_WORKSPACE},{UNKNOWN_WORKSPACE}",
            },
        ),
        403,
    )
    job = initiate(client, W["elsewhere"], workspaces=f"{OTHER_WORKSPACE}, {DEFAULT_WORKSPACE_ID}")
    assert server.state.jobs[job].workspaces == f"{OTHER_WORKSPACE}, {DEFAULT_WORKSPACE_ID}"
    assert nest(execute(client, job, {"in_doc": (here, "file")}, workspaces=UNKNOWN_WORKSPACE), 403)
    assert execute(client, job, {"in_doc": (here, "file")}, workspaces=OTHER_WORKSPACE).status_code == 201
    assert wait_terminal(client, job) == "FAILED"
    message = error_of(client, job)
    assert f"403 Forbidden reading {here}: the file is in workspace {DEFAULT_WORKSPACE_ID}" in message
    ok = run(client, W["elsewhere"], {"in_doc": (there.json()["fileUrl"], "file")})
    assert wait_terminal(client, ok) == "COMPLETED"
    graph = client.get(f"/workflow/{W['elsewhere']}").json()
    assert graph["workspace_id"] == OTHER_WORKSPACE


# --- §8.19 a second execute ---------------------------------------------------------------------------


def test_a_second_execute_is_accepted_and_counted(client: httpx.Client, server: SandboxServer) -> None:
    job = run(client, W["instant"], {"in_title": ("once", "str")})
    second = execute(client, job, {"in_title": ("twice", "str")})
    assert second.status_code == 201 and second.json()["success"] is True
    assert server.state.executes[job] == 2
    assert [
        b["jobPayloadSchemaInstance"]["in_title"]["value"] for b in server.state.payload_history[job]
    ] == [
        "once",
        "twice",
    ]
    assert server.state.payloads[job]["jobPayloadSchemaInstance"]["in_title"]["value"] == "once"
    assert client.get(f"/job/{job}/results").json()["jobResultsPayloadSchema"]["summary"]["value"] == "ONCE"


# --- §8.20 results shapes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "check"),
    [
        ("nested", lambda b: b["results"]["jobResultsPayloadSchema"]["summary"]["value"] == "S T"),
        (
            "flat",
            lambda b: (
                b["results"]["summary"] == {"value": "S T"} and b["results"]["data"] == {"value": {"n": 6}}
            ),
        ),
        ("list", lambda b: isinstance(b, list) and b[0]["summary"] == "S T" and b[0]["data"] == {"n": 6}),
        ("none", lambda b: b == {}),
    ],
)
def test_results_shapes(client: httpx.Client, shape: str, check: Any) -> None:
    job = run(client, wid(f"shape-{shape}"), {"in_title": ("T", "str")})
    response = client.get(f"/job/{job}/results")
    assert response.status_code == 200 and check(response.json()), response.json()


def test_legacy_results_shape(client: httpx.Client, server: SandboxServer) -> None:
    job = run(client, wid("shape-legacy"), {"in_title": ("T", "str")})
    body = client.get(f"/job/{job}/results").json()
    assert body["jobExecutionId"] == job and body["status"] == "COMPLETED"
    results = body["results"]
    assert results["summary"] == "S T" and results["data"]["data"] == {"n": 6}
    assert len(results["outputFiles"]) == 1
    link = client.post("/job/file/download", json={"fileUrl": results["outputFiles"][0]}).json()
    assert httpx.get(link["presignedUrl"]).text == "x"


# --- failures, audit -----------------------------------------------------------------------------------


def test_failed_job_results_and_audit(client: httpx.Client, server: SandboxServer) -> None:
    job = run(client, W["failing"], {"in_title": ("T", "str")})
    assert wait_terminal(client, job) == "FAILED"
    assert client.get(f"/job/{job}/results").json() == {
        "jobResultsPayloadSchema": {},
        "error": "Node 'B' raised: boom",
    }
    audit = client.get(f"/job/{job}/audit").json()
    assert (
        audit["executed_nodes"] == ["A"] and audit["failed_nodes"] == ["B"] and audit["nb_failed_nodes"] == 1
    )
    assert audit["remaining_nodes_to_execute"] == ["C"] and audit["running_node"] == ""
    assert audit["audit"]["nodes_execution_data"]["B"]["execution_status"] == "FAILED"
    assert audit["audit"]["nodes_execution_data"]["B"]["execution_output"] == [
        {"error": "Node 'B' raised: boom"}
    ]


def test_broken_output_template_fails_the_job_with_a_clear_error(client: httpx.Client) -> None:
    job = run(client, wid("broken-template"), {})
    assert wait_terminal(client, job) == "FAILED"
    error = client.get(f"/job/{job}/results").json()["error"]
    assert error == f"workflow {wid('broken-template')}: output 'n' rendered 'abc', which is not a float"


def test_audit_progress(client: httpx.Client, server: SandboxServer) -> None:
    job = initiate(client, W["slow"])  # 30 s over A, B, C: 10 s each
    before = client.get(f"/job/{job}/audit").json()
    assert before["nb_nodes"] == 3 and before["executed_nodes"] == [] and before["running_node"] == ""
    assert before["next_node_to_execute"] == "A" and before["remaining_nodes_to_execute"] == ["A", "B", "C"]
    execute(client, job, {"in_title": ("T", "str")})
    record = server.state.jobs[job]
    assert record.executed_at is not None
    middle = audit_body(record, record.executed_at + 25)
    assert middle["executed_nodes"] == ["A", "B"] and middle["nb_executed_nodes"] == 2
    assert middle["running_node"] == "C" and middle["next_node_to_execute"] == ""
    data = middle["audit"]["nodes_execution_data"]
    assert data["A"]["execution_status"] == "COMPLETED" and data["A"]["execution_time"] == 10000
    assert data["C"]["execution_status"] == "RUNNING" and data["C"]["execution_time"] == 5000
    assert abs(data["B"]["execution_start_time"] - data["A"]["execution_start_time"] - 10000) <= 1
    age(server, job, 15)
    assert client.get(f"/job/{job}/audit").json()["running_node"] == "B"
    age(server, job, 31)
    done = client.get(f"/job/{job}/audit").json()
    assert done["executed_nodes"] == ["A", "B", "C"] and done["remaining_nodes_to_execute"] == []
    assert done["failed_nodes"] == [] and done["running_node"] == ""
    assert client.get("/job/unknown/audit").status_code == 404


# --- the documented dialect ---------------------------------------------------------------------------


def test_documented_get_workflow_describes_inputs_with_job_payload_schema(client: httpx.Client) -> None:
    workflow = wid("doc-quick")
    body = client.get(f"/workflow/{workflow}").json()
    assert body["workflowId"] == workflow and body["name"] == "Quick (documented)" and body["active"] is True
    assert body["version"] == 1 and body["workflowVersionId"] == version_uuid(workflow, 1)
    assert [n["name"] for n in body["workflowBlueprint"]["nodes"]] == ["A", "B", "C"]
    schema = body["jobPayloadSchema"]
    assert list(schema) == [i["variable_name"] for i in DOC_INPUTS]
    assert schema["in_title"]["display_name"] == "Title" and schema["in_title"]["type"] == "str"
    assert schema["in_title"]["id"] and "tags" not in schema["in_title"]
    assert schema["in_doc"]["tags"] == [{"variable_name": "allowed_file_types", "value": ["PDF", "TXT"]}]
    assert schema["in_files"]["type"] == "array_files"


def test_documented_api_modes_and_graph(client: httpx.Client) -> None:
    gone = nest(client.get(f"/workflow/{wid('doc-v2only')}"), 500)
    assert gone["message"] == "V1 workflow details are no longer supported"
    assert (
        nest(client.get(f"/workflow/{wid('doc-v1gone')}"), 404)["message"]
        == f"Cannot GET /workflow/{wid('doc-v1gone')}"
    )
    for name in ("doc-quick", "doc-v2only", "doc-v1gone"):
        graph = client.get(f"/reference-workflow/v2/workflow-object/{wid(name)}").json()
        assert graph["id"] == wid(name) and graph["workflow_input_node_id"] == "n-input"
        assert isinstance(graph["nodes"], list) and len(graph["edges"]) == len(graph["nodes"]) - 1
    graph = client.get(f"/reference-workflow/v2/workflow-object/{wid('doc-v2only')}").json()
    schema = graph["nodes"][0]["output_schema"]["schema"]
    assert schema["q"] == {
        "variable_name": "q",
        "display_name": "Question",
        "type": "str",
        "is_nullable": False,
    }
    assert schema["ctx"]["allowed_types"] == [{"type": "file"}]
    job = initiate(client, wid("doc-v2only"))
    assert execute(client, job, {"q": ("why?", "str")}, callback=None).status_code == 200


def test_documented_versions_are_camel_case(client: httpx.Client) -> None:
    workflow = wid("doc-versioned")
    assert client.get(f"/executor/workflow/{workflow}/versions").json() == {
        "versions": [
            {"versionNumber": n, "workflowVersionId": version_uuid(workflow, n), "active": n == 3}
            for n in (1, 2, 3)
        ]
    }
    assert list(client.get(f"/workflow/{workflow}", params={"version": 1}).json()["jobPayloadSchema"]) == [
        "a"
    ]


def test_documented_jobs_are_created_and_answer_200(client: httpx.Client, server: SandboxServer) -> None:
    initiated = client.post("/job/initiate", json={"workflowId": wid("doc-slow"), "title": "t"})
    assert initiated.status_code == 200
    job = initiated.json()["jobExecutionId"]
    assert client.get(f"/job/{job}/status").json() == {"status": "CREATED"}
    assert client.get(f"/job/{job}").json()["status"] == "CREATED"
    executed = execute(client, job, {}, callback=None)  # callbackUrl optional
    assert executed.status_code == 200
    assert executed.json() == {"success": True, "jobExecutionId": job, "message": "Job execution started"}
    age(server, job, 1)
    assert client.get(f"/job/{job}/status").json() == {"status": "IN PROGRESS"}


def test_documented_execute_lists_every_problem_with_400(client: httpx.Client, server: SandboxServer) -> None:
    workflow = wid("doc-quick")
    job = initiate(client, workflow)
    slot = client.post(
        "/job/file/upload",
        json={"fileExtension": ".pdf", "originalName": "never.pdf", "workflowId": workflow},
    )
    assert slot.status_code == 200 and "/files/" in slot.json()["fileUrl"]
    csv_url = upload(client, "data.csv", b"a,b", workflow=workflow)
    problems = problems_of(
        execute(
            client,
            job,
            {
                "in_n": (True, "float"),
                "in_flag": ("yes", "bool"),
                "in_day": ("2026-13-01", "date"),
                "in_items": ({"a": 1}, "array"),
                "in_files": (
                    [csv_url, 7, "ftp://host/x.csv", "https://example.com/report.pdf"],
                    "array_files",
                ),
                "in_obj": ([1], "str"),
                "in_doc": (slot.json()["fileUrl"], "file"),
                "in_bogus": ("x", "str"),
            },
            callback="http://example.com/hook",
        )
    )
    # Every problem is listed (in the order NestJS happens to check them, which is not the point).
    assert sorted(problems) == sorted([
        "jobPayloadSchemaInstance.in_n.value must be a number, found bool",
        "jobPayloadSchemaInstance.in_flag.value must be a boolean, found str",
        "jobPayloadSchemaInstance.in_day.value must be a date formatted YYYY-MM-DD, found '2026-13-01'",
        "jobPayloadSchemaInstance.in_items.value must be an array, found dict",
        "jobPayloadSchemaInstance.in_files.value[1] must be a file URL (a string), found int",
        "jobPayloadSchemaInstance.in_files.value[2] must be a file URL from /job/file/upload "
        "or an http(s) URL, found 'ftp://host/x.csv'",
        "jobPayloadSchemaInstance.in_files.value[3] (Files) must be a file of type CSV, found .pdf",
        "jobPayloadSchemaInstance.in_obj.type must be 'object' as the workflow declares, found 'str'",
        "jobPayloadSchemaInstance.in_obj.value must be an object, found list",
        f"jobPayloadSchemaInstance.in_doc.value: the file {slot.json()['fileUrl']} was registered by "
        "/job/file/upload but never PUT to its presigned URL",
        f"jobPayloadSchemaInstance.in_bogus is not an input of workflow {workflow} version 1 "
        "(its inputs: in_title, in_doc, in_n, in_flag, in_day, in_items, in_files, in_obj)",
        "jobPayloadSchemaInstance.in_title (Title) is required",
        "callbackUrl must be an https URL (http only for loopback addresses), "
        "found 'http://example.com/hook'",
    ])
    assert client.get(f"/job/{job}/status").json()["status"] == "CREATED"
    assert server.state.executes[job] == 1
    assert server.state.payloads[job]["jobPayloadSchemaInstance"]["in_bogus"]["value"] == "x"


def test_documented_second_execute_is_a_409(client: httpx.Client, server: SandboxServer) -> None:
    job = initiate(client, wid("doc-instant"))
    assert execute(client, job, {"in_title": ("once", "str")}, callback=None).status_code == 200
    second = nest(execute(client, job, {"in_title": ("twice", "str")}, callback=None), 409)
    assert second["message"] == f"Job {job} has already been executed" and second["error"] == "Conflict"
    assert server.state.executes[job] == 2
    assert server.state.payloads[job]["jobPayloadSchemaInstance"]["in_title"]["value"] == "once"


def test_documented_files_download_directly_and_puts_take_a_content_type(
    client: httpx.Client, server: SandboxServer
) -> None:
    workflow = wid("doc-quick")
    slot = client.post(
        "/job/file/upload",
        json={"fileExtension": ".PDF", "originalName": "Q4 report.pdf", "workflowId": workflow},
    ).json()
    assert slot["fileUrl"].startswith(f"{server.base_url}/files/") and slot["fileUrl"].endswith(
        "/Q4%20report.pdf"
    )
    assert httpx.get(slot["fileUrl"]).status_code == 404  # not PUT yet
    put = httpx.put(slot["presignedUrl"], content=b"%PDF", headers={"content-type": "application/pdf"})
    assert put.status_code == 200 and server.state.content_type_sent_to_presigned == 0
    downloaded = httpx.get(slot["fileUrl"])
    assert downloaded.content == b"%PDF" and downloaded.headers["content-type"] == "application/pdf"
    assert problems_of(
        client.post("/job/file/upload", json={"fileExtension": "pdf", "workflowId": workflow})
    ) == [
        "fileExtension must be one of the following values: "
        ".pdf, .docx, .csv, .xls, .xlsx, .txt, .json, .html, .xml, .jpeg, .jpg, .png",
        "originalName should not be empty",
    ]
    job = initiate(client, workflow)
    execute(client, job, {"in_title": ("T", "str"), "in_doc": (slot["fileUrl"], "file")}, callback=None)
    age(server, job, 1)
    report = client.get(f"/job/{job}/results").json()["jobResultsPayloadSchema"]["report"]["value"]
    assert "/files/" in report and httpx.get(report).text == "R"
    too_big = httpx.put(slot["presignedUrl"], content=b"y" * (10 * 1024 * 1024 + 1))
    assert too_big.status_code == 413 and too_big.json() == {"message": "File exceeds the 10 MB limit"}


# --- counters, stats ---------------------------------------------------------------------------------


def test_counters_and_max_active_jobs(client: httpx.Client, server: SandboxServer) -> None:
    jobs = [initiate(client, W["instant"]) for _ in range(3)]
    assert server.state.max_active_jobs == 3
    for job in jobs:
        execute(client, job, {"in_title": ("t", "str")})
    client.get(f"/job/{jobs[0]}/status")  # terminal status read: no longer active
    client.get(f"/job/{jobs[1]}/results")  # results read: no longer active
    assert len(server.state.active_jobs) == 1
    initiate(client, W["instant"])
    assert server.state.max_active_jobs == 3
    initiate(client, W["instant"])
    assert server.state.max_active_jobs == 3
    initiate(client, W["instant"])
    assert server.state.max_active_jobs == 4
    client.post("/job/file/upload", json={"fileExtension": ".pdf", "workflowId": W["instant"]})

    stats = httpx.get(f"{server.base_url}/_sandbox/stats").json()
    assert stats["requests"]["POST initiate"] == 6 and stats["requests"]["POST execute"] == 3
    assert stats["executes"] == {job: 1 for job in jobs}
    assert stats["max_active_jobs"] == 4 and len(stats["jobs"]) == 6
    assert stats["jobs"][jobs[0]]["status"] == "COMPLETED"
    assert stats["callbacks_skipped"] == 3 and stats["content_type_sent_to_presigned"] == 0
    assert [s["workflowId"] for s in stats["upload_slots"].values()] == [W["instant"]]
    assert server.state.requests[("GET", "status")] == 1 and server.state.count("GET", "results") == 1

    assert httpx.post(f"{server.base_url}/_sandbox/reset").json() == {"success": True}
    stats = httpx.get(f"{server.base_url}/_sandbox/stats").json()
    assert stats["requests"] == {} and stats["jobs"] == {} and stats["max_active_jobs"] == 0
    assert client.get(f"/job/{jobs[0]}/status").status_code == 404


# --- fixtures -----------------------------------------------------------------------------------


WF = wid("w")


def _wf(**fields: Any) -> dict[str, Any]:
    return {"workflows": {WF: {"inputs": [{"variable_name": "a", "type": "str"}], **fields}}}


@pytest.mark.parametrize(
    ("data", "key", "message"),
    [
        ([], "", "must be a mapping"),
        ({"workflow": {}}, "workflow", "unknown key 'workflow'"),
        ({"workflows": {}}, "workflows", "at least one workflow"),
        ({"workflows": {"w": {}}}, "workflows.w", "Opus identifies workflows by UUID"),
        (_wf(duraton="1s"), f"workflows.{WF}.duraton", "unknown key 'duraton'"),
        (_wf(duration="soon"), f"workflows.{WF}.duration", "a duration such as"),
        (_wf(dialect="v0"), f"workflows.{WF}.dialect", "must be one of live, documented"),
        (_wf(workspace_id="ws-1"), f"workflows.{WF}.workspace_id", "a workspace id is a UUID"),
        (_wf(api="v3"), f"workflows.{WF}.api", "must be one of v1, v2-only, v1-404"),
        (_wf(status_spelling="camel"), f"workflows.{WF}.status_spelling", "space, underscore, lower"),
        (
            _wf(results_shape="new"),
            f"workflows.{WF}.results_shape",
            "current, legacy, nested, flat, list, none",
        ),
        (_wf(fail=3), f"workflows.{WF}.fail", "false, true or the failure message"),
        (_wf(stop="yes"), f"workflows.{WF}.stop", "true or false"),
        (_wf(stop=True, fail="x"), f"workflows.{WF}.stop", "either fails ('fail') or is stopped ('stop')"),
        (_wf(hold="WAITING"), f"workflows.{WF}.hold", "{status: WAITING, duration: 2s}"),
        (
            _wf(hold={"status": "HITL_PENDING", "duration": 1}),
            f"workflows.{WF}.hold.status",
            "WAITING, UNKNOWN",
        ),
        (_wf(hold={"status": "WAITING"}), f"workflows.{WF}.hold.duration", "needs a 'duration'"),
        (
            _wf(hold={"status": "WAITING", "duration": "ages"}),
            f"workflows.{WF}.hold.duration",
            "a duration such as",
        ),
        (_wf(hold={"status": "WAITING", "duration": 0}), f"workflows.{WF}.hold.duration", "longer than 0"),
        (
            _wf(hold={"status": "WAITING", "duration": 1, "node": "A"}),
            f"workflows.{WF}.hold.node",
            "unknown key 'node'",
        ),
        (
            _wf(fail_node="Z"),
            f"workflows.{WF}.fail_node",
            "'Z' is not one of the workflow's nodes (Input, Process, Output)",
        ),
        (_wf(nodes=[]), f"workflows.{WF}.nodes", "non-empty list"),
        (_wf(nodes=["A", "A"]), f"workflows.{WF}.nodes", "unique"),
        (_wf(version=0), f"workflows.{WF}.version", "at least 1"),
        (_wf(version=2, versions={2: {}}), f"workflows.{WF}.versions.2", "below the latest version 2"),
        (
            _wf(version=2, versions={1: {"nodes": []}}),
            f"workflows.{WF}.versions.1.nodes",
            "unknown key 'nodes'",
        ),
        (_wf(inputs=[{"type": "str"}]), f"workflows.{WF}.inputs[0].variable_name", "needs a variable_name"),
        (
            _wf(inputs=[{"variable_name": "a", "type": "Text Field"}]),
            f"workflows.{WF}.inputs[0].type",
            "must be one of str, float, int, bool, date, file, array, array_files, object, json_string "
            "(or another lower-case type name",
        ),
        (
            _wf(inputs=[{"variable_name": "a", "type": "str"}, {"variable_name": "a", "type": "str"}]),
            f"workflows.{WF}.inputs[1].variable_name",
            "used by two inputs",
        ),
        (
            _wf(inputs=[{"variable_name": "a", "type": "file", "allowed_file_types": ["EXE"]}]),
            f"workflows.{WF}.inputs[0].allowed_file_types",
            "unknown file type 'EXE'",
        ),
        (
            _wf(inputs=[{"variable_name": "a", "type": "str", "allowed_file_types": ["PDF"]}]),
            f"workflows.{WF}.inputs[0].allowed_file_types",
            "only file and array_files",
        ),
        (
            _wf(inputs=[{"variable_name": "a", "type": "str", "is_nullable": "no"}]),
            f"workflows.{WF}.inputs[0].is_nullable",
            "true or false",
        ),
        (
            _wf(inputs=[{"variable_name": "a", "type": "array", "wire": "array_files"}]),
            f"workflows.{WF}.inputs[0].wire",
            "only array_files inputs take 'wire'",
        ),
        (
            _wf(inputs=[{"variable_name": "a", "type": "array_files", "wire": "list"}]),
            f"workflows.{WF}.inputs[0].wire",
            "must be one of array, array_files",
        ),
        (
            _wf(inputs=[{"variable_name": "a", "type": "str", "description": 3}]),
            f"workflows.{WF}.inputs[0].description",
            "must be a string",
        ),
        (_wf(outputs={"x": "{{ oops"}), f"workflows.{WF}.outputs.x", "does not parse"),
        (
            _wf(outputs={"x": {"value": "1", "type": "money"}}),
            f"workflows.{WF}.outputs.x.type",
            "must be one of str, float, int, bool, date, object, array, file, json_string",
        ),
        (_wf(outputs={"x": {"type": "str"}}), f"workflows.{WF}.outputs.x.value", "needs a 'value'"),
        (
            _wf(outputs={"x": {"type": "file", "value": {"name": "a"}}}),
            f"workflows.{WF}.outputs.x.value",
            "{name: report.txt",
        ),
        ({"workflows": {WF: {}}, "faults": [{"kind": "boom"}]}, "faults[0].kind", "'kind' must be one of"),
    ],
)
def test_fixture_errors_name_the_key(data: Any, key: str, message: str) -> None:
    with pytest.raises(FixtureError) as info:
        load_fixture(data)
    assert format_key(info.value.key) == key
    assert message in info.value.message


def test_fixture_defaults_per_dialect() -> None:
    fixture = load_fixture(
        {
            "workflows": {
                wid("a"): {},
                wid("b"): {"dialect": "documented"},
                wid("c"): {"workspace_id": OTHER_WORKSPACE.upper()},
            }
        }
    )
    live, documented, other = (fixture.workflows[wid(n)] for n in "abc")
    assert (live.dialect, live.status_spelling, live.results_shape, live.hold, live.stop) == (
        "live",
        "underscore",
        "current",
        None,
        False,
    )
    assert (documented.dialect, documented.status_spelling) == ("documented", "space")
    assert other.workspace_id == OTHER_WORKSPACE
    held = load_fixture(_wf(hold={"status": "UNKNOWN", "duration": "250ms"})).workflows[WF]
    assert held.hold is not None and (held.hold.status, held.hold.seconds) == ("UNKNOWN", 0.25)


def test_fixture_file_errors_name_the_file_and_line(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    with pytest.raises(FixtureError, match="does not exist"):
        load_fixture(missing)
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("workflows:\n  w:\n    name: [unclosed\n")
    with pytest.raises(FixtureError) as info:
        load_fixture(bad_yaml)
    assert (
        info.value.file == str(bad_yaml)
        and info.value.line is not None
        and "not valid YAML" in str(info.value)
    )
    bad_key = tmp_path / "key.yaml"
    bad_key.write_text(f"workflows:\n  {WF}:\n    inputs:\n      - {{variable_name: a, type: 'Str!'}}\n")
    with pytest.raises(FixtureError) as info:
        load_fixture(bad_key)
    assert str(info.value).startswith(f"{bad_key}: workflows.{WF}.inputs[0].type: must be one of str")
    as_json = tmp_path / "w.json"
    as_json.write_text(
        json.dumps({"workflows": {WF: {"duration": 0}}, "faults": [{"kind": "drop", "times": 1}]})
    )
    fixture = load_fixture(as_json)
    assert list(fixture.workflows) == [WF] and fixture.faults[0].kind == "drop"
    with pytest.raises(FixtureError, match="not valid JSON"):
        (tmp_path / "broken.json").write_text("{")
        load_fixture(tmp_path / "broken.json")
    with pytest.raises(FixtureError, match="does not exist"):
        SandboxServer(tmp_path / "nope.yaml")


# --- the demo workflows ---------------------------------------------------------------------------


def test_demo_workflows_run_end_to_end(opus_sandbox: SandboxServer) -> None:
    summarize, invoice, fails = (DEMO_IDS[n] for n in ("demo-summarize", "invoice-triage", "always-fails"))
    with httpx.Client(base_url=opus_sandbox.base_url, headers={"x-service-key": opus_sandbox.key}) as c:
        doc = upload(c, "paper.pdf", b"%PDF", workflow=summarize)
        job = run(
            c,
            summarize,
            {"workflow_input_title": ("Annual report", "str"), "workflow_input_doc": (doc, "file")},
        )
        assert wait_terminal(c, job) == "COMPLETED"
        results = c.get(f"/job/{job}/results").json()["jobResultsPayloadSchema"]
        assert results["summary"]["value"] == "Summary of Annual report (all pages)"
        assert results["word_count"]["value"] == 240
        link = c.post("/job/file/download", json={"fileUrl": results["report"]["value"]}).json()
        assert "Report for Annual report" in httpx.get(link["presignedUrl"]).text

        contract = upload(c, "contract.pdf", b"%PDF", workflow=invoice)
        attachment = upload(c, "lines.csv", b"a,b", workflow=invoice)
        graph = c.get(f"/workflow/{invoice}").json()
        entry = graph["nodes"][graph["workflow_input_node_id"]]["input_schema"]["schema"][
            "workflow_input_attachments"
        ]
        definition = entry["allowed_types"][0]["type_definition"]
        job = run(
            c,
            invoice,
            {
                "workflow_input_we4tej0ly": ("Bridge", "str"),
                "workflow_input_budget": (45800, "float"),
                "workflow_input_approved": (True, "bool"),
                "workflow_input_due": ("2026-12-01", "date"),
                "workflow_input_contract": (contract, "file"),
                "workflow_input_attachments": {
                    "value": [attachment],
                    "type": "array",
                    "typeDefinition": definition,
                },
                "workflow_input_tags": (["a"], "array"),
            },
        )
        assert wait_terminal(c, job) == "COMPLETED"
        results = c.get(f"/job/{job}/results").json()["jobResultsPayloadSchema"]
        assert results["decision"]["value"] == "approve" and results["score"]["value"] == 45.8
        assert results["notes"]["value"] == {
            "project": "Bridge",
            "due": "2026-12-01",
            "attachments": 1,
            "tags": ["a"],
            "settings": {},
        }

        job = run(c, fails, {"workflow_input_title": ("x", "str")})
        assert wait_terminal(c, job) == "FAILED"
        audit = c.get(f"/job/{job}/audit").json()
        assert audit["failed_nodes"] == ["Score"] and audit["executed_nodes"] == ["Input"]
        assert c.get(f"/job/{job}/results").json()["error"] == "Node 'Score' raised: model quota exceeded"
