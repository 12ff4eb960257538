"""The v1 Case API as a second dialect of OpusClient (issue 17), over httpx.MockTransport:
routes and bodies, 202 results, camelCase answers, ids of the other generation, missing routes."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from opus_runner.api import OpusClient, RetryPolicy
from opus_runner.api.camel import snake, workflow_graph
from opus_runner.errors import ApiError, NotFoundError, RouteMissing, UsageError
from opus_runner.urls import PLACEHOLDER_CALLBACK_URL
from opus_runner.workflow import schema_from_workflow

from test_client import BASE, KEY, FakeSleep, Server, body_of, ok

pytestmark = pytest.mark.anyio

V1 = "/api/v1"
CASE = "3f69dcbf-2d6e-4b8a-9c1e-5a7b0c4d2e11"
WORKFLOW = "00000000-0000-4000-8000-000000000002"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def v1_client(server: Server, **kw: Any) -> tuple[OpusClient, FakeSleep]:
    sleep = FakeSleep()
    http = httpx.AsyncClient(transport=httpx.MockTransport(server))
    client = OpusClient(BASE, KEY, api="v1", http=http, retry=RetryPolicy(sleep=sleep, random=lambda: 1.0), **kw)
    return client, sleep


async def test_initiate_creates_a_case_under_api_v1() -> None:
    server = Server().on("POST", f"{V1}/case", ok({"caseId": CASE}, 201))
    client, _ = v1_client(server)
    assert client.api == "v1" and client.api_url == f"{BASE}{V1}"
    assert await client.initiate(WORKFLOW, title="t", version=3, workspaces=["ws1"]) == CASE
    [request] = server.requests
    # v1 documents no ``source``: only the fields it knows are sent.
    assert body_of(request) == {
        "workflowId": WORKFLOW, "title": "t", "description": "", "workflowVersionNumber": 3, "workspaces": "ws1",
    }
    assert request.headers["x-service-key"] == KEY


async def test_an_initiate_answer_without_case_id_is_refused() -> None:
    server = Server().on("POST", f"{V1}/case", ok({"jobExecutionId": "72964"}, 201))
    client, _ = v1_client(server)
    with pytest.raises(ApiError, match="the answer has no caseId"):
        await client.initiate(WORKFLOW, title="t")


async def test_execute_sends_payload_and_only_a_real_callback() -> None:
    server = Server().on("POST", f"{V1}/case/{CASE}/execute", ok({"success": True, "caseId": CASE}, 201))
    client, _ = v1_client(server)
    payload = {"workflow_input_q": {"value": "x", "type": "str", "displayName": "Question"}}
    outcome = await client.execute(CASE, payload, callback_url=PLACEHOLDER_CALLBACK_URL, workspaces=["ws1"])
    assert outcome.confirmed
    await client.execute(CASE, payload, callback_url="https://hooks.example.com/cb")
    placeholder, real = server.requests
    # callbackUrl is optional in v1: the never-resolving placeholder is not sent, nor workspaces.
    assert body_of(placeholder) == {"payload": payload}
    assert body_of(real) == {"payload": payload, "callbackUrl": "https://hooks.example.com/cb"}


async def test_a_refusal_inside_a_2xx_execute_is_a_refusal_in_v1_too() -> None:
    from opus_runner.errors import ExecuteRefused

    server = Server().on("POST", f"{V1}/case/{CASE}/execute", ok({"success": False, "message": "no"}, 201))
    client, _ = v1_client(server)
    with pytest.raises(ExecuteRefused, match=f"/case/{CASE}/execute|job {CASE}"):
        await client.execute(CASE, {})


async def test_results_keep_polling_while_v1_answers_202() -> None:
    pending = httpx.Response(202, json={"status": "IN_PROGRESS"})
    done = ok({"results": {"answer": {"value": "42", "type": "str"}}})
    server = Server().on("GET", f"{V1}/case/{CASE}/results", pending, pending, pending, done)
    client, sleep = v1_client(server)
    data = await client.results(CASE)
    assert data.outputs == {"answer": "42"}
    assert server.count("GET", f"{V1}/case/{CASE}/results") == 4
    assert sleep.waits == [0.25, 0.5, 1.0]  # backing off between asks, never failing on a 202


async def test_results_say_not_finished_when_202_outlasts_the_wait() -> None:
    server = Server().on("GET", f"{V1}/case/{CASE}/results", httpx.Response(202, json={}))
    client, sleep = v1_client(server, results_pending_wait=2.0)
    with pytest.raises(ApiError, match=rf"case {CASE} still has no results after \d+ s .*opus-run results {CASE}"):
        await client.results(CASE)
    assert sum(sleep.waits) >= 2.0


async def test_v0_results_do_not_wait_on_a_202() -> None:
    server = Server().on("GET", "/job/72964/results", httpx.Response(202, json={"jobResultsPayloadSchema": {}}))
    sleep = FakeSleep()
    client = OpusClient(BASE, KEY, http=httpx.AsyncClient(transport=httpx.MockTransport(server)), retry=RetryPolicy(sleep=sleep))
    await client.results("72964")
    assert server.count("GET", "/job/72964/results") == 1 and sleep.waits == []


async def test_camel_case_audit_reads_into_the_same_progress() -> None:
    audit = {
        "caseId": CASE, "nbNodes": 3, "executedNodes": ["Input"], "nbExecutedNodes": 1, "runningNode": "Score",
        "failedNodes": [], "remainingNodesToExecute": ["Output"],
        "audit": {"nodesExecutionData": {"myNode": {"executionStatus": "COMPLETED", "executionTime": 12}}},
    }
    server = Server().on("GET", f"{V1}/case/{CASE}/audit", ok(audit))
    client, _ = v1_client(server)
    progress = await client.audit(CASE)
    assert (progress.nb_nodes, progress.nb_executed, progress.running_node) == (3, 1, "Score")
    # Field names become v0's; the names of nodes are kept as they are.
    assert progress.raw["audit"]["nodes_execution_data"] == {"myNode": {"execution_status": "COMPLETED", "execution_time": 12}}


def _camel_graph() -> dict[str, Any]:
    entry = {
        "id": "e1", "variableName": "myInput", "displayName": "ID Document", "isNullable": False,
        "allowedTypes": [{"type": "file", "typeDefinition": None}],
        "tags": [{"variableName": "allowed_file_types", "value": ["PDF"]}],
    }
    return {
        "workflowId": WORKFLOW, "name": "W", "version": 3, "workspaceId": "ws1", "workflowInputNodeId": "nIn",
        "nodes": {"nIn": {"id": "nIn", "type": "input", "workflowVersionId": "v-3", "inputSchema": {"schema": {"myInput": entry}}}},
        "edges": {"e1": {"id": "e1", "fromNodeId": "nIn", "toNodeId": "nOut"}},
    }


async def test_camel_case_workflow_graph_gives_the_same_inputs() -> None:
    server = Server().on("GET", f"{V1}/workflow/{WORKFLOW}", ok(_camel_graph()))
    client, _ = v1_client(server)
    body = await client.get_workflow(WORKFLOW, version=3)
    assert server.requests[0].url.params["version"] == "3"
    schema = schema_from_workflow(body, workflow_id=WORKFLOW)
    [field] = schema.inputs
    # The variable name keeps its camelCase: only the graph's field names are converted.
    assert (field.variable_name, field.display_name, field.type, field.nullable) == ("myInput", "ID Document", "file", False)
    assert field.allowed_file_types == ("PDF",) or list(field.allowed_file_types) == ["PDF"]
    assert schema.workspace_id == "ws1"


def test_camel_conversion_leaves_snake_case_and_names_alone() -> None:
    assert snake("workflowInputNodeId") == "workflow_input_node_id" and snake("workflow_input_x") == "workflow_input_x"
    graph = workflow_graph({"workflow": _camel_graph()})  # an envelope is opened too
    assert graph["workflow_input_node_id"] == "nIn"
    assert graph["edges"]["e1"] == {"id": "e1", "from_node_id": "nIn", "to_node_id": "nOut"}
    assert list(graph["nodes"]["nIn"]["input_schema"]["schema"]) == ["myInput"]


async def test_upload_asks_the_presigned_route_and_sends_a_mime_type() -> None:
    server = Server().on(
        "POST", f"{V1}/file/upload/presigned", ok({"presignedUrl": "https://bucket.test/up?sig=1", "fileUrl": "https://files.test/a.pdf"}, 201)
    ).on("PUT", "/up", ok(status=200))
    client, _ = v1_client(server)
    url = await client.upload_file(b"%PDF", original_name="a.pdf", workflow_id=WORKFLOW, access_scope="organization")
    assert url == "https://files.test/a.pdf"
    slot, put = server.requests
    # v1 knows only workspace and unlisted: the v0 default (organization) becomes the narrower workspace.
    assert body_of(slot) == {"fileExtension": ".pdf", "originalName": "a.pdf", "workflowId": WORKFLOW, "accessScope": "workspace"}
    assert put.headers["content-type"] == "application/pdf" and "x-service-key" not in put.headers
    await client.file_upload_url(extension="csv", original_name=None, workspace_id="ws1", access_scope=None)
    assert body_of(server.requests[-1]) == {
        "fileExtension": ".csv", "originalName": "upload.csv", "workspaceId": "ws1", "accessScope": "unlisted",
    }


async def test_an_access_scope_v1_does_not_have_is_one_sentence() -> None:
    client, _ = v1_client(Server())
    with pytest.raises(UsageError, match="uploads.access_scope 'user' does not exist in the v1 Case API"):
        await client.file_upload_url(extension="pdf", original_name="a.pdf", workflow_id=WORKFLOW, access_scope="user")


@pytest.mark.parametrize("call", ["status", "results", "audit", "job"])
async def test_a_v0_job_id_is_refused_before_any_request(call: str) -> None:
    server = Server()
    client, _ = v1_client(server)
    with pytest.raises(UsageError) as caught:
        await getattr(client, call)("72964")
    assert str(caught.value) == (
        "'72964' is a v0 job id (a number), but this project uses the v1 Case API, whose case ids are "
        'UUIDs; to look at a v0 job, pass --api v0, or set api = "v0" in opus-runner.toml'
    )
    assert server.requests == []


async def test_a_missing_v1_route_says_the_base_url_may_not_serve_v1() -> None:
    missing = httpx.Response(404, json={"statusCode": 404, "message": f"Cannot POST {V1}/case", "error": "Not Found"})
    server = Server().on("POST", f"{V1}/case", missing)
    client, _ = v1_client(server)
    with pytest.raises(RouteMissing) as caught:
        await client.initiate(WORKFLOW, title="t")
    assert not isinstance(caught.value, NotFoundError)  # no workflow or case is unknown
    assert f"the server has no route POST {V1}/case, so {BASE}{V1} may not serve the v1 Case API" in str(caught.value)
    assert "--api v0" in str(caught.value)


async def test_an_unknown_case_is_still_not_found() -> None:
    from opus_runner.errors import NotFoundError

    gone = httpx.Response(404, json={"statusCode": 404, "message": f"Case {CASE} not found"})
    client, _ = v1_client(Server().on("GET", f"{V1}/case/{CASE}/status", gone))
    with pytest.raises(NotFoundError, match=f"case {CASE} not found"):
        await client.status(CASE)


async def test_without_a_case_detail_route_an_execute_stays_unsettled() -> None:
    # v1 documents no GET /case/{id}: "PENDING" then says nothing, and nothing is resent on a guess.
    missing = httpx.Response(404, json={"statusCode": 404, "message": f"Cannot GET {V1}/case/{CASE}"})
    server = Server().on("GET", f"{V1}/case/{CASE}/status", ok({"status": "PENDING"})).on("GET", f"{V1}/case/{CASE}", missing)
    client, _ = v1_client(server)
    assert await client.execute_received(CASE) == (None, "PENDING")
    detail = Server().on("GET", f"{V1}/case/{CASE}/status", ok({"status": "PENDING"})).on("GET", f"{V1}/case/{CASE}", ok({"input": {}}))
    client, _ = v1_client(detail)
    assert await client.execute_received(CASE) == (False, "PENDING")


async def test_the_key_goes_to_the_v1_url_and_the_base_url_only() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path.endswith("/case"):
            return ok({"caseId": CASE}, 201)
        return ok({"totalCount": 0, "jobs": []})

    http = httpx.AsyncClient(transport=httpx.MockTransport(answer))
    client = OpusClient(BASE, KEY, api="v1", v1_url="https://cases.opus.test/v1/", http=http)
    assert client.api_url == "https://cases.opus.test/v1"
    await client.initiate(WORKFLOW, title="t")
    await client.search_jobs()  # no v1 search is documented: the v0 route at the base URL
    await client.put_presigned("https://bucket.test/up?sig=1", b"x")
    create, search, put = seen
    assert str(create.url) == "https://cases.opus.test/v1/case" and create.headers["x-service-key"] == KEY
    assert str(search.url).startswith(f"{BASE}/job/search?") and search.headers["x-service-key"] == KEY
    assert "x-service-key" not in put.headers


def test_a_plain_http_v1_url_is_refused_like_a_base_url() -> None:
    with pytest.raises(UsageError, match="refusing to send the service key over plain http to cases.example.com"):
        OpusClient(BASE, KEY, api="v1", v1_url="http://cases.example.com/api/v1")


def test_an_unknown_api_name_is_one_sentence() -> None:
    with pytest.raises(UsageError, match="unknown Opus API 'v2': use 'v0'"):
        OpusClient(BASE, KEY, api="v2")


def test_repr_names_the_dialect_but_never_the_key() -> None:
    client = OpusClient(BASE, KEY, api="v1")
    assert repr(client) == "OpusClient(base_url='https://opus.test', api='v1', key=***)"
    assert json.dumps(repr(client)).find(KEY) == -1
