"""The sandbox server over real loopback HTTP: routes, validation, lifecycle, results, callbacks."""

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
from opus_runner.sandbox import SandboxServer
from opus_runner.sandbox.fixture import DEFAULT_WORKFLOWS, FixtureError, load_fixture, version_uuid

ROOT = Path(__file__).resolve().parents[1]
SPEC_FIXTURE = ROOT / "specs" / "fixtures" / "sandbox-workflows.yaml"

FIXTURE: dict[str, Any] = {
    "workflows": {
        "quick": {
            "name": "Quick",
            "duration": "0.3s",
            "nodes": ["A", "B", "C"],
            "inputs": [
                {"variable_name": "in_title", "display_name": "Title", "type": "str"},
                {
                    "variable_name": "in_doc",
                    "display_name": "Doc",
                    "type": "file",
                    "is_nullable": True,
                    "allowed_file_types": ["PDF", "TXT"],
                },
                {"variable_name": "in_n", "display_name": "N", "type": "float", "is_nullable": True},
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
                {"variable_name": "in_obj", "display_name": "Obj", "type": "object", "is_nullable": True},
            ],
            "outputs": {
                "summary": "Hello {{ inputs.Title }} from {{ job.title }}",
                "count": {"value": "{{ vars.in_n }}", "type": "float", "displayName": "Count"},
                "items": {"value": "{{ inputs.Items or [] }}", "type": "array"},
                "flag": {"value": "{{ inputs.Flag }}", "type": "bool"},
                "report": {
                    "type": "file",
                    "value": {"name": "r-{{ inputs.Title }}.txt", "content": "R={{ inputs.Title }}"},
                },
            },
        },
        "instant": {
            "inputs": [{"variable_name": "in_title", "display_name": "Title", "type": "str"}],
            "outputs": {"summary": "{{ inputs.Title | upper }}"},
        },
        "legacy": {
            "results_shape": "legacy",
            "inputs": [{"variable_name": "in_title", "display_name": "Title", "type": "str"}],
            "outputs": {
                "data": {"value": {"n": "{{ 2 * 3 }}"}, "type": "object"},
                "summary": "Legacy {{ inputs.Title }}",
                "file": {"type": "file", "value": {"name": "out.txt", "content": "x"}},
            },
        },
        "failing": {
            "duration": "0.3s",
            "fail": "Node 'B' raised: boom",
            "fail_node": "B",
            "nodes": ["A", "B", "C"],
            "inputs": [{"variable_name": "in_title", "display_name": "Title", "type": "str"}],
            "outputs": {"summary": "never"},
        },
        "broken-template": {
            "outputs": {"n": {"value": "{{ 'abc' }}", "type": "float"}},
        },
        "under": {"status_spelling": "underscore", "duration": "0.4s"},
        "lower": {"status_spelling": "lower", "duration": "0.4s"},
        "v2only": {
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
        "v1gone": {
            "api": "v1-404",
            "inputs": [{"variable_name": "q", "display_name": "Question", "type": "str"}],
        },
        "versioned": {
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
    assert response.status_code == 200, response.text
    return response.json()["jobExecutionId"]


def execute(
    client: httpx.Client, job_id: str, values: dict[str, tuple[Any, str]], **extra: Any
) -> httpx.Response:
    instance = {
        var: {"value": value, "type": kind, "displayName": var} for var, (value, kind) in values.items()
    }
    return client.post(
        "/job/execute", json={"jobExecutionId": job_id, "jobPayloadSchemaInstance": instance, **extra}
    )


def upload(client: httpx.Client, name: str, data: bytes, workflow: str = "quick") -> str:
    ext = "." + name.rsplit(".", 1)[-1]
    slot = client.post(
        "/job/file/upload", json={"fileExtension": ext, "originalName": name, "workflowId": workflow}
    )
    assert slot.status_code == 200, slot.text
    assert httpx.put(slot.json()["presignedUrl"], content=data).status_code == 200
    return slot.json()["fileUrl"]


def wait_terminal(client: httpx.Client, job_id: str, timeout: float = 5.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get(f"/job/{job_id}/status").json()["status"]
        if status in ("COMPLETED", "FAILED"):
            return status
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} did not finish within {timeout}s")


def problems_of(response: httpx.Response) -> list[str]:
    body = response.json()
    assert response.status_code == 400, body
    assert body["statusCode"] == 400 and body["error"] == "Bad Request"
    assert isinstance(body["message"], list)
    return body["message"]


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
    assert set(fixture.workflows) == {
        "demo-summarize",
        "invoice-triage",
        "region-report",
        "always-fails",
        "v2-workflow",
    }
    demo = fixture.workflows["demo-summarize"].latest_version
    assert [(i.display_name, i.variable_name, i.type) for i in demo.inputs] == [
        ("Title", "workflow_input_title", "str"),
        ("Document", "workflow_input_doc", "file"),
        ("Pages", "workflow_input_pages", "float"),
    ]
    invoice = fixture.workflows["invoice-triage"]
    assert invoice.latest == 3
    assert [len(invoice.versions[n].inputs) for n in (1, 2, 3)] == [2, 4, 8]
    assert invoice.latest_version.inputs_by_var["workflow_input_we4tej0ly"].display_name == "Project name"
    assert fixture.workflows["always-fails"].fail_node == "Score"
    assert fixture.workflows["v2-workflow"].api == "v2-only"


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
        f"{opus_sandbox.base_url}/workflow/demo-summarize", headers={"x-service-key": opus_sandbox.key}
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
                f"{base}/executor/workflow/demo-summarize/versions",
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


def test_keep_alive_requests_are_not_held_back_by_nagle(client: httpx.Client) -> None:
    # With Nagle on, every response on a reused connection waits ~40 ms for a delayed ACK.
    client.get("/workflow/instant")
    started = time.perf_counter()
    for _ in range(20):
        client.get("/workflow/instant")
    assert time.perf_counter() - started < 0.6


# --- auth and routing -------------------------------------------------------------------------


def test_missing_and_wrong_key_are_refused(server: SandboxServer) -> None:
    url = f"{server.base_url}/workflow/quick"
    missing = httpx.get(url)
    assert missing.status_code == 401
    assert missing.json() == {"statusCode": 401, "message": "Missing x-service-key header"}
    wrong = httpx.get(url, headers={"x-service-key": "sk-wrong"})
    assert wrong.json() == {"statusCode": 401, "message": "Invalid service key"}
    for path in ("/job/initiate", "/job/execute", "/job/file/upload"):
        assert httpx.post(server.base_url + path, json={}).status_code == 401
    assert httpx.get(f"{server.base_url}/_sandbox/stats").status_code == 200
    assert server.state.count("GET", "workflow") == 2


def test_unknown_route_answers_nestjs_404(client: httpx.Client) -> None:
    response = client.get("/no/such/route")
    assert response.status_code == 404
    assert response.json() == {
        "statusCode": 404,
        "message": "Cannot GET /no/such/route",
        "error": "Not Found",
    }


# --- workflows ----------------------------------------------------------------------------------


def test_workflow_v1_describes_inputs_with_tags(client: httpx.Client) -> None:
    body = client.get("/workflow/quick").json()
    assert body["workflowId"] == "quick" and body["name"] == "Quick" and body["active"] is True
    assert body["version"] == 1 and body["workflowVersionId"] == version_uuid("quick", 1)
    assert [n["name"] for n in body["workflowBlueprint"]["nodes"]] == ["A", "B", "C"]
    schema = body["jobPayloadSchema"]
    assert list(schema) == [
        "in_title",
        "in_doc",
        "in_n",
        "in_flag",
        "in_day",
        "in_items",
        "in_files",
        "in_obj",
    ]
    assert schema["in_title"]["display_name"] == "Title" and schema["in_title"]["is_nullable"] is False
    assert schema["in_title"]["id"] and "tags" not in schema["in_title"]
    assert schema["in_doc"]["tags"] == [{"variable_name": "allowed_file_types", "value": ["PDF", "TXT"]}]


def test_unknown_workflow_and_version(client: httpx.Client) -> None:
    assert client.get("/workflow/nope").json() == {"statusCode": 404, "message": "Workflow nope not found"}
    assert client.get("/workflow/versioned", params={"version": 9}).status_code == 404
    assert (
        client.get("/workflow/versioned", params={"workflowVersionId": str(uuid.uuid4())}).status_code == 404
    )
    assert problems_of(client.get("/workflow/versioned", params={"version": "x"})) == [
        "version must be a positive whole number"
    ]
    assert client.get("/executor/workflow/nope/versions").status_code == 404
    assert client.get("/reference-workflow/v2/workflow-object/nope").status_code == 404


def test_api_modes(client: httpx.Client) -> None:
    gone = client.get("/workflow/v2only")
    assert gone.status_code == 500
    assert gone.json() == {"statusCode": 500, "message": "V1 workflow details are no longer supported"}
    assert client.get("/workflow/v1gone").status_code == 404
    for workflow in ("quick", "v2only", "v1gone"):
        graph = client.get(f"/reference-workflow/v2/workflow-object/{workflow}").json()
        assert graph["id"] == workflow and graph["workflow_input_node_id"] == "n-input"
        node = next(n for n in graph["nodes"] if n["id"] == graph["workflow_input_node_id"])
        assert node["type"] == "workflowInput"
        assert len(graph["edges"]) == len(graph["nodes"]) - 1
    graph = client.get("/reference-workflow/v2/workflow-object/v2only").json()
    schema = graph["nodes"][0]["output_schema"]["schema"]
    assert schema["q"] == {
        "variable_name": "q",
        "display_name": "Question",
        "type": "str",
        "is_nullable": False,
    }
    assert schema["ctx"]["allowed_types"] == [{"type": "file"}]
    assert schema["ctx"]["tags"] == [{"variable_name": "allowed_file_types", "value": ["TXT"]}]
    # jobs of a v2-only workflow run like any other
    job = initiate(client, "v2only")
    assert execute(client, job, {"q": ("why?", "str")}).status_code == 200


def test_versions_and_pinning(client: httpx.Client) -> None:
    versions = client.get("/executor/workflow/versioned/versions").json()["versions"]
    assert versions == [
        {
            "versionNumber": n,
            "workflowVersionId": str(uuid.uuid5(uuid.NAMESPACE_URL, f"opus-sandbox:versioned:{n}")),
            "active": n == 3,
        }
        for n in (1, 2, 3)
    ]
    assert list(client.get("/workflow/versioned").json()["jobPayloadSchema"]) == ["a", "b"]
    assert list(client.get("/workflow/versioned", params={"version": 1}).json()["jobPayloadSchema"]) == ["a"]
    # version 2 is not described by the fixture: it has the latest version's inputs
    assert list(client.get("/workflow/versioned", params={"version": 2}).json()["jobPayloadSchema"]) == [
        "a",
        "b",
    ]
    # the uuid wins over the number
    pinned = client.get(
        "/workflow/versioned", params={"version": 3, "workflowVersionId": versions[0]["workflowVersionId"]}
    )
    assert pinned.json()["version"] == 1

    old = initiate(client, "versioned", workflowVersionNumber=1)
    assert execute(client, old, {"a": ("x", "str")}).status_code == 200
    by_id = initiate(client, "versioned", workflowVersionId=versions[0]["workflowVersionId"])
    assert execute(client, by_id, {"a": ("y", "str")}).status_code == 200
    latest = initiate(client, "versioned")
    assert "jobPayloadSchemaInstance.b (B) is required" in problems_of(
        execute(client, latest, {"a": ("z", "str")})
    )
    wait_terminal(client, old)
    assert client.get(f"/job/{old}/results").json()["jobResultsPayloadSchema"]["which"]["value"] == "v1 x"
    bad = client.post(
        "/job/initiate", json={"workflowId": "versioned", "title": "t", "workflowVersionNumber": 7}
    )
    assert bad.status_code == 404 and "Version 7" in bad.json()["message"]


# --- initiate and uploads -------------------------------------------------------------------------


def test_initiate_validation_and_created_status(client: httpx.Client) -> None:
    assert problems_of(client.post("/job/initiate", json={})) == [
        "workflowId should not be empty",
        "title should not be empty",
    ]
    assert problems_of(client.post("/job/initiate", content=b"{not json")) == [
        "the request body is not valid JSON"
    ]
    assert client.post("/job/initiate", json={"workflowId": "nope", "title": "t"}).json() == {
        "statusCode": 404,
        "message": "Workflow nope not found",
    }
    job = initiate(client, "quick")
    assert isinstance(job, str)
    assert client.get(f"/job/{job}/status").json() == {"status": "CREATED"}
    assert client.get(f"/job/{job}/results").json() == {
        "statusCode": 400,
        "message": "Job is not completed yet",
    }
    assert client.get("/job/unknown/status").status_code == 404


def test_upload_put_and_download_the_same_bytes(client: httpx.Client, server: SandboxServer) -> None:
    slot = client.post(
        "/job/file/upload",
        json={
            "fileExtension": ".PDF",
            "accessScope": "organization",
            "originalName": "Q4 report.pdf",
            "workflowId": "quick",
        },
    ).json()
    assert slot["presignedUrl"].startswith(f"{server.base_url}/_upload/")
    assert slot["fileUrl"].startswith(f"{server.base_url}/files/") and slot["fileUrl"].endswith(
        "/Q4%20report.pdf"
    )
    assert httpx.get(slot["fileUrl"]).status_code == 404  # not PUT yet
    assert httpx.put(slot["presignedUrl"], content=b"first").status_code == 200
    assert httpx.put(slot["presignedUrl"], content=b"%PDF-1.7 second").status_code == 200  # overwrites
    downloaded = httpx.get(slot["fileUrl"])
    assert downloaded.content == b"%PDF-1.7 second"
    assert downloaded.headers["content-type"] == "application/pdf"
    assert server.state.key_sent_to_presigned == 0
    httpx.put(slot["presignedUrl"], content=b"x", headers={"x-service-key": server.key})
    assert server.state.key_sent_to_presigned == 1
    assert httpx.put(f"{server.base_url}/_upload/unknown", content=b"x").status_code == 404
    assert server.state.count("PUT", "put") == 4


def test_upload_validation(client: httpx.Client) -> None:
    assert problems_of(
        client.post("/job/file/upload", json={"fileExtension": ".exe", "originalName": "a.exe"})
    ) == [
        "fileExtension must be one of the following values: "
        ".pdf, .docx, .csv, .xls, .xlsx, .txt, .json, .html, .xml, .jpeg, .jpg, .png",
        "workflowId or workspaceId must be provided",
    ]
    problems = problems_of(
        client.post(
            "/job/file/upload", json={"fileExtension": ".pdf", "accessScope": "world", "workspaceId": "ws-1"}
        )
    )
    assert problems == [
        "originalName should not be empty",
        "accessScope must be one of the following values: all, user, workspace, organization",
    ]
    ok = client.post(
        "/job/file/upload", json={"fileExtension": ".Xlsx", "originalName": "a.xlsx", "workspaceId": "w"}
    )
    assert ok.status_code == 200


def test_uploads_are_limited_to_10_mb(client: httpx.Client) -> None:
    slot = client.post(
        "/job/file/upload", json={"fileExtension": ".txt", "originalName": "big.txt", "workflowId": "quick"}
    ).json()
    limit = 10 * 1024 * 1024
    assert httpx.put(slot["presignedUrl"], content=b"x" * limit).status_code == 200
    too_big = httpx.put(slot["presignedUrl"], content=b"y" * (limit + 1))
    assert too_big.status_code == 413
    assert too_big.json() == {"message": "File exceeds the 10 MB limit"}

    def chunks() -> Iterator[bytes]:  # no content-length: the server must count as it reads
        for _ in range(11):
            yield b"z" * (1024 * 1024)

    assert httpx.put(slot["presignedUrl"], content=chunks()).status_code == 413
    assert httpx.get(slot["fileUrl"]).content == b"x" * limit  # the rejected PUTs changed nothing


# --- execute validation -------------------------------------------------------------------------


def test_execute_lists_every_problem_nestjs_style(client: httpx.Client, server: SandboxServer) -> None:
    job = initiate(client, "quick")
    slot = client.post(
        "/job/file/upload", json={"fileExtension": ".pdf", "originalName": "never.pdf", "workflowId": "quick"}
    ).json()
    csv_url = upload(client, "data.csv", b"a,b")
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
                "in_doc": (slot["fileUrl"], "file"),
                "in_bogus": ("x", "str"),
            },
            callbackUrl="http://example.com/hook",
        )
    )
    expected = [
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
        f"jobPayloadSchemaInstance.in_doc.value: the file {slot['fileUrl']} was registered by "
        "/job/file/upload but never PUT to its presigned URL",
        "jobPayloadSchemaInstance.in_bogus is not an input of workflow quick version 1 "
        "(its inputs: in_title, in_doc, in_n, in_flag, in_day, in_items, in_files, in_obj)",
        "jobPayloadSchemaInstance.in_title (Title) is required",
        "callbackUrl must be an https URL (http only for loopback addresses), found 'http://example.com/hook'",
    ]
    assert problems == expected
    # a rejected execute leaves the job startable, and was counted as processed
    assert client.get(f"/job/{job}/status").json()["status"] == "CREATED"
    assert server.state.executes[job] == 1
    assert server.state.payloads[job]["jobPayloadSchemaInstance"]["in_bogus"]["value"] == "x"


def test_execute_checks_null_values_file_types_and_foreign_sandbox_urls(
    client: httpx.Client, server: SandboxServer
) -> None:
    job = initiate(client, "quick")
    png = upload(client, "photo.png", b"\x89PNG")
    problems = problems_of(execute(client, job, {"in_title": (None, "str"), "in_doc": (png, "file")}))
    assert problems == [
        "jobPayloadSchemaInstance.in_title.value (Title) is required and must not be null",
        "jobPayloadSchemaInstance.in_doc.value (Doc) must be a file of type PDF, TXT, found .png",
    ]
    unknown = f"{server.base_url}/files/{'0' * 32}/x.pdf"
    values = {"in_title": ("t", "str"), "in_doc": (unknown, "file"), "in_day": ("2026-W01-1", "date")}
    assert problems_of(execute(client, job, values)) == [
        f"jobPayloadSchemaInstance.in_doc.value: {unknown} is not a file uploaded to this server",
        "jobPayloadSchemaInstance.in_day.value must be a date formatted YYYY-MM-DD, found '2026-W01-1'",
    ]
    renamed = png.rsplit("/", 1)[0] + "/photo.pdf"  # a real token under another name
    problems = problems_of(execute(client, job, {"in_title": ("t", "str"), "in_doc": (renamed, "file")}))
    assert problems == [
        f"jobPayloadSchemaInstance.in_doc.value: {renamed} is not a file uploaded to this server"
    ]
    missing_type = client.post(
        "/job/execute", json={"jobExecutionId": job, "jobPayloadSchemaInstance": {"in_title": {"value": "t"}}}
    )
    assert problems_of(missing_type) == [
        "jobPayloadSchemaInstance.in_title.type should not be empty (expected 'str')"
    ]
    assert problems_of(client.post("/job/execute", json={"jobExecutionId": job})) == [
        "jobPayloadSchemaInstance must be an object mapping input variable names to {value, type}",
        "jobPayloadSchemaInstance.in_title (Title) is required",
    ]
    txt = upload(client, "notes.txt", b"hello")
    external = "https://files.example.com/a/contract.PDF?signature=abc"
    assert execute(client, job, {"in_title": ("t", "str"), "in_doc": (txt, "file")}).status_code == 200
    other = initiate(client, "quick")
    assert execute(client, other, {"in_title": ("t", "str"), "in_doc": (external, "file")}).status_code == 200


def test_execute_unknown_job_and_already_executed(client: httpx.Client, server: SandboxServer) -> None:
    assert problems_of(client.post("/job/execute", json={})) == ["jobExecutionId should not be empty"]
    missing = execute(client, "no-such-job", {})
    assert missing.status_code == 404 and missing.json()["message"] == "Job no-such-job not found"
    job = initiate(client, "instant")
    first = execute(client, job, {"in_title": ("once", "str")})
    assert first.json() == {"success": True, "jobExecutionId": job, "message": "Job execution started"}
    second = execute(client, job, {"in_title": ("twice", "str")})
    assert second.status_code == 409
    assert second.json() == {
        "statusCode": 409,
        "message": f"Job {job} has already been executed",
        "error": "Conflict",
    }
    assert server.state.executes[job] == 2
    assert server.state.payloads[job]["jobPayloadSchemaInstance"]["in_title"]["value"] == "once"


# --- lifecycle, results, audit --------------------------------------------------------------------


def test_lifecycle_over_time_and_results(client: httpx.Client) -> None:
    job = initiate(client, "quick", description="d")
    started = time.monotonic()
    response = execute(
        client,
        job,
        {
            "in_title": ("Q4", "str"),
            "in_n": (3, "float"),
            "in_flag": (True, "bool"),
            "in_items": (["a", "b"], "array"),
        },
    )
    assert response.status_code == 200
    assert client.get(f"/job/{job}/results").json() == {
        "statusCode": 400,
        "message": "Job is not completed yet",
    }
    seen: list[str] = []
    while time.monotonic() - started < 5:
        status = client.get(f"/job/{job}/status").json()["status"]
        if not seen or seen[-1] != status:
            seen.append(status)
        if status == "COMPLETED":
            break
        time.sleep(0.01)
    assert seen[-2:] == ["IN PROGRESS", "COMPLETED"]
    assert set(seen) <= {"PENDING", "IN PROGRESS", "COMPLETED"}
    assert time.monotonic() - started >= 0.3
    results = client.get(f"/job/{job}/results").json()["jobResultsPayloadSchema"]
    assert results["summary"] == {"value": "Hello Q4 from Job title", "type": "str", "displayName": "summary"}
    assert results["count"] == {"value": 3, "type": "float", "displayName": "Count"}
    assert results["items"]["value"] == ["a", "b"]
    assert results["flag"]["value"] is True
    assert results["report"]["type"] == "file"
    report = httpx.get(results["report"]["value"])
    assert report.text == "R=Q4" and results["report"]["value"].endswith("/r-Q4.txt")


@pytest.mark.parametrize(("workflow", "spelling"), [("under", "IN_PROGRESS"), ("lower", "in progress")])
def test_status_spelling(client: httpx.Client, workflow: str, spelling: str) -> None:
    job = initiate(client, workflow)
    assert execute(client, job, {}).status_code == 200
    time.sleep(0.12)
    assert client.get(f"/job/{job}/status").json()["status"] == spelling


def test_legacy_results_shape(client: httpx.Client) -> None:
    job = initiate(client, "legacy")
    execute(client, job, {"in_title": ("T", "str")})
    body = client.get(f"/job/{job}/results").json()
    assert body["jobExecutionId"] == job and body["status"] == "COMPLETED"
    results = body["results"]
    assert results["summary"] == "Legacy T"
    assert results["data"]["data"] == {"n": 6} and results["data"]["summary"] == "Legacy T"
    assert len(results["outputFiles"]) == 1 and httpx.get(results["outputFiles"][0]).text == "x"


def test_failed_job_results_and_audit(client: httpx.Client) -> None:
    job = initiate(client, "failing")
    execute(client, job, {"in_title": ("T", "str")})
    time.sleep(0.15)
    running = client.get(f"/job/{job}/audit").json()
    assert running["running_node"] in ("A", "B") and running["failed_nodes"] == []
    assert wait_terminal(client, job) == "FAILED"
    results = client.get(f"/job/{job}/results")
    assert results.status_code == 200
    assert results.json() == {"jobResultsPayloadSchema": {}, "error": "Node 'B' raised: boom"}
    audit = client.get(f"/job/{job}/audit").json()
    assert (
        audit["executed_nodes"] == ["A"] and audit["failed_nodes"] == ["B"] and audit["nb_failed_nodes"] == 1
    )
    assert audit["remaining_nodes_to_execute"] == ["C"] and audit["running_node"] == ""
    assert audit["audit"]["nodes_execution_data"]["B"]["execution_status"] == "FAILED"


def test_broken_output_template_fails_the_job_with_a_clear_error(client: httpx.Client) -> None:
    job = initiate(client, "broken-template")
    execute(client, job, {})
    assert wait_terminal(client, job) == "FAILED"
    error = client.get(f"/job/{job}/results").json()["error"]
    assert error == "workflow broken-template: output 'n' rendered 'abc', which is not a float"


def test_audit_progress(client: httpx.Client) -> None:
    job = initiate(client, "quick")
    before = client.get(f"/job/{job}/audit").json()
    assert before["nb_nodes"] == 3 and before["executed_nodes"] == [] and before["running_node"] == ""
    assert before["next_node_to_execute"] == "A" and before["remaining_nodes_to_execute"] == ["A", "B", "C"]
    execute(client, job, {"in_title": ("T", "str")})
    time.sleep(0.22)  # two thirds of 0.3 s: the third node runs
    middle = client.get(f"/job/{job}/audit").json()
    assert middle["executed_nodes"] == ["A", "B"] and middle["nb_executed_nodes"] == 2
    assert middle["running_node"] == "C" and middle["next_node_to_execute"] == ""
    data = middle["audit"]["nodes_execution_data"]
    assert data["A"] == {"execution_status": "COMPLETED", "execution_time": 100}
    assert data["C"]["execution_status"] == "RUNNING"
    wait_terminal(client, job)
    done = client.get(f"/job/{job}/audit").json()
    assert done["executed_nodes"] == ["A", "B", "C"] and done["remaining_nodes_to_execute"] == []
    assert done["failed_nodes"] == [] and done["running_node"] == ""
    assert client.get("/job/unknown/audit").status_code == 404


# --- callbacks ----------------------------------------------------------------------------------


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


def test_callback_is_posted_once_when_the_job_finishes(
    client: httpx.Client, server: SandboxServer, receiver: Any
) -> None:
    url, received, arrived = receiver
    job = initiate(client, "quick")
    started = time.monotonic()
    assert execute(client, job, {"in_title": ("CB", "str")}, callbackUrl=url).status_code == 200
    assert arrived.wait(5)
    assert time.monotonic() - started >= 0.29
    time.sleep(0.1)
    assert len(received) == 1 and server.state.callbacks_sent == 1
    body = received[0]
    assert body["jobExecutionId"] == job and body["status"] == "COMPLETED"
    assert body["results"]["jobResultsPayloadSchema"]["summary"]["value"] == "Hello CB from Job title"


def test_failed_job_callback_and_unreachable_receiver(
    client: httpx.Client, server: SandboxServer, receiver: Any
) -> None:
    url, received, arrived = receiver
    failing = initiate(client, "failing")
    execute(client, failing, {"in_title": ("T", "str")}, callbackUrl=url)
    assert arrived.wait(5)
    assert received[0]["status"] == "FAILED" and received[0]["results"]["error"] == "Node 'B' raised: boom"
    # a receiver that is not listening is counted as a failed callback, never raised
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    closed_port = sock.getsockname()[1]
    sock.close()
    job = initiate(client, "instant")
    execute(client, job, {"in_title": ("T", "str")}, callbackUrl=f"http://127.0.0.1:{closed_port}/hook")
    deadline = time.monotonic() + 5
    while server.state.callbacks_failed == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.state.callbacks_failed == 1 and server.state.callbacks_sent == 1
    assert client.get(f"/job/{job}/status").json()["status"] == "COMPLETED"


# --- counters, stats, search ----------------------------------------------------------------------


def test_counters_and_max_active_jobs(client: httpx.Client, server: SandboxServer) -> None:
    jobs = [initiate(client, "instant") for _ in range(3)]
    assert server.state.max_active_jobs == 3
    for job in jobs:
        execute(client, job, {"in_title": ("t", "str")})
    client.get(f"/job/{jobs[0]}/status")  # terminal status read: no longer active
    client.get(f"/job/{jobs[1]}/results")  # results read: no longer active
    assert len(server.state.active_jobs) == 1
    initiate(client, "instant")
    assert server.state.max_active_jobs == 3
    initiate(client, "instant")
    assert server.state.max_active_jobs == 3
    initiate(client, "instant")
    assert server.state.max_active_jobs == 4

    stats = httpx.get(f"{server.base_url}/_sandbox/stats").json()
    assert stats["requests"]["POST initiate"] == 6 and stats["requests"]["POST execute"] == 3
    assert stats["executes"] == {job: 1 for job in jobs}
    assert stats["max_active_jobs"] == 4 and len(stats["jobs"]) == 6
    assert stats["jobs"][jobs[0]]["status"] == "COMPLETED"
    assert server.state.requests[("GET", "status")] == 1 and server.state.count("GET", "results") == 1

    assert httpx.post(f"{server.base_url}/_sandbox/reset").json() == {"success": True}
    stats = httpx.get(f"{server.base_url}/_sandbox/stats").json()
    assert stats["requests"] == {} and stats["jobs"] == {} and stats["max_active_jobs"] == 0
    assert client.get(f"/job/{jobs[0]}/status").status_code == 404


def test_search_archive_and_delete(client: httpx.Client) -> None:
    done = initiate(client, "instant")
    execute(client, done, {"in_title": ("t", "str")})
    waiting = initiate(client, "legacy")
    everything = client.get("/job/search").json()
    assert everything["total"] == 2 and {j["jobExecutionId"] for j in everything["jobs"]} == {done, waiting}
    by_workflow = client.get("/job/search", params={"workflowId": "legacy"}).json()
    assert [j["jobExecutionId"] for j in by_workflow["jobs"]] == [waiting]
    by_status = client.get("/job/search", params={"status": "completed"}).json()
    assert [j["jobExecutionId"] for j in by_status["jobs"]] == [done]
    page = client.get("/job/search", params={"offset": 1, "maxResults": 1}).json()
    assert page["total"] == 2 and len(page["jobs"]) == 1 and page["jobs"][0]["jobExecutionId"] == waiting
    assert problems_of(client.get("/job/search", params={"maxResults": 0})) == [
        "maxResults must be a whole number of at least 1"
    ]

    assert client.post(f"/job/{done}/archive").json() == {
        "success": True,
        "jobExecutionId": done,
        "archived": True,
    }
    assert client.get("/job/search", params={"workflowId": "instant"}).json()["jobs"][0]["archived"] is True
    assert client.delete(f"/job/{done}/archive").json()["archived"] is False
    assert client.delete(f"/job/{done}/delete").json()["success"] is True
    assert client.get(f"/job/{done}/status").status_code == 404
    assert client.delete(f"/job/{done}/delete").status_code == 404
    assert client.post("/job/nope/archive").status_code == 404


# --- fixtures -----------------------------------------------------------------------------------


def _wf(**fields: Any) -> dict[str, Any]:
    return {"workflows": {"w": {"inputs": [{"variable_name": "a", "type": "str"}], **fields}}}


@pytest.mark.parametrize(
    ("data", "key", "message"),
    [
        ([], "", "must be a mapping"),
        ({"workflow": {}}, "workflow", "unknown key 'workflow'"),
        ({"workflows": {}}, "workflows", "at least one workflow"),
        (_wf(duraton="1s"), "workflows.w.duraton", "unknown key 'duraton'"),
        (_wf(duration="soon"), "workflows.w.duration", "a duration such as"),
        (_wf(api="v3"), "workflows.w.api", "must be one of v1, v2-only, v1-404"),
        (_wf(status_spelling="camel"), "workflows.w.status_spelling", "space, underscore, lower"),
        (_wf(results_shape="new"), "workflows.w.results_shape", "current, legacy"),
        (_wf(fail=3), "workflows.w.fail", "false, true or the failure message"),
        (
            _wf(fail_node="Z"),
            "workflows.w.fail_node",
            "'Z' is not one of the workflow's nodes (Input, Process, Output)",
        ),
        (_wf(nodes=[]), "workflows.w.nodes", "non-empty list"),
        (_wf(nodes=["A", "A"]), "workflows.w.nodes", "unique"),
        (_wf(version=0), "workflows.w.version", "at least 1"),
        (_wf(version=2, versions={2: {}}), "workflows.w.versions.2", "below the latest version 2"),
        (_wf(version=2, versions={1: {"nodes": []}}), "workflows.w.versions.1.nodes", "unknown key 'nodes'"),
        (_wf(inputs=[{"type": "str"}]), "workflows.w.inputs[0].variable_name", "needs a variable_name"),
        (
            _wf(inputs=[{"variable_name": "a", "type": "text"}]),
            "workflows.w.inputs[0].type",
            "must be one of str,",
        ),
        (
            _wf(inputs=[{"variable_name": "a", "type": "str"}, {"variable_name": "a", "type": "str"}]),
            "workflows.w.inputs[1].variable_name",
            "used by two inputs",
        ),
        (
            _wf(inputs=[{"variable_name": "a", "type": "file", "allowed_file_types": ["EXE"]}]),
            "workflows.w.inputs[0].allowed_file_types",
            "unknown file type 'EXE'",
        ),
        (
            _wf(inputs=[{"variable_name": "a", "type": "str", "allowed_file_types": ["PDF"]}]),
            "workflows.w.inputs[0].allowed_file_types",
            "only file and array_files",
        ),
        (
            _wf(inputs=[{"variable_name": "a", "type": "str", "is_nullable": "no"}]),
            "workflows.w.inputs[0].is_nullable",
            "true or false",
        ),
        (_wf(outputs={"x": "{{ oops"}), "workflows.w.outputs.x", "does not parse"),
        (
            _wf(outputs={"x": {"value": "1", "type": "money"}}),
            "workflows.w.outputs.x.type",
            "must be one of str,",
        ),
        (_wf(outputs={"x": {"type": "str"}}), "workflows.w.outputs.x.value", "needs a 'value'"),
        (
            _wf(outputs={"x": {"type": "file", "value": {"name": "a"}}}),
            "workflows.w.outputs.x.value",
            "{name: report.txt",
        ),
        ({"workflows": {"w": {}}, "faults": [{"kind": "boom"}]}, "faults[0].kind", "'kind' must be one of"),
    ],
)
def test_fixture_errors_name_the_key(data: Any, key: str, message: str) -> None:
    with pytest.raises(FixtureError) as info:
        load_fixture(data)
    assert format_key(info.value.key) == key
    assert message in info.value.message


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
    bad_key.write_text("workflows:\n  w:\n    inputs:\n      - {variable_name: a, type: strr}\n")
    with pytest.raises(FixtureError) as info:
        load_fixture(bad_key)
    assert str(info.value).startswith(f"{bad_key}: workflows.w.inputs[0].type: must be one of str")
    as_json = tmp_path / "w.json"
    as_json.write_text(
        json.dumps({"workflows": {"j": {"duration": 0}}, "faults": [{"kind": "drop", "times": 1}]})
    )
    fixture = load_fixture(as_json)
    assert list(fixture.workflows) == ["j"] and fixture.faults[0].kind == "drop"
    with pytest.raises(FixtureError, match="not valid JSON"):
        (tmp_path / "broken.json").write_text("{")
        load_fixture(tmp_path / "broken.json")
    with pytest.raises(FixtureError, match="does not exist"):
        SandboxServer(tmp_path / "nope.yaml")


def test_demo_workflows_run_end_to_end(opus_sandbox: SandboxServer) -> None:
    with httpx.Client(base_url=opus_sandbox.base_url, headers={"x-service-key": opus_sandbox.key}) as c:
        doc = upload(c, "paper.pdf", b"%PDF", workflow="demo-summarize")
        job = initiate(c, "demo-summarize")
        response = execute(
            c, job, {"workflow_input_title": ("Annual report", "str"), "workflow_input_doc": (doc, "file")}
        )
        assert response.status_code == 200, response.text
        assert wait_terminal(c, job) == "COMPLETED"
        results = c.get(f"/job/{job}/results").json()["jobResultsPayloadSchema"]
        assert results["summary"]["value"] == "Summary of Annual report (all pages)"
        assert results["word_count"]["value"] == 240
        assert "Report for Annual report" in httpx.get(results["report"]["value"]).text

        invoice = initiate(c, "invoice-triage")
        contract = upload(c, "contract.pdf", b"%PDF", workflow="invoice-triage")
        response = execute(
            c,
            invoice,
            {
                "workflow_input_we4tej0ly": ("Bridge", "str"),
                "workflow_input_budget": (45800, "float"),
                "workflow_input_approved": (True, "bool"),
                "workflow_input_due": ("2026-12-01", "date"),
                "workflow_input_contract": (contract, "file"),
                "workflow_input_tags": (["a"], "array"),
            },
        )
        assert response.status_code == 200, response.text
        assert wait_terminal(c, invoice) == "COMPLETED"
        results = c.get(f"/job/{invoice}/results").json()["jobResultsPayloadSchema"]
        assert results["decision"]["value"] == "approve" and results["score"]["value"] == 45.8
        assert results["notes"]["value"] == {
            "project": "Bridge",
            "due": "2026-12-01",
            "attachments": 0,
            "tags": ["a"],
            "settings": {},
        }

        fails = initiate(c, "always-fails")
        execute(c, fails, {"workflow_input_title": ("x", "str")})
        assert wait_terminal(c, fails) == "FAILED"
        audit = c.get(f"/job/{fails}/audit").json()
        assert audit["failed_nodes"] == ["Score"] and audit["executed_nodes"] == ["Input"]
        assert c.get(f"/job/{fails}/results").json()["error"] == "Node 'Score' raised: model quota exceeded"
