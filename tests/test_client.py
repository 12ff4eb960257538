"""OpusClient over httpx.MockTransport: requests, retries, execute safety, errors, secrets."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

from urllib.parse import urlsplit

from opus_runner import redact
from opus_runner.api import (
    AuditProgress,
    ExecuteOutcome,
    OpusClient,
    RetryPolicy,
    error_from_response,
    parse_results,
)
from opus_runner.errors import (
    AnswerTooLarge,
    ApiError,
    AuthError,
    ConfigError,
    ExecuteNotReceived,
    ExecuteOutcomeUnknown,
    ExecuteRefused,
    NetworkError,
    NotFoundError,
    UsageError,
)
from opus_runner.urls import PLACEHOLDER_CALLBACK_URL

pytestmark = pytest.mark.anyio

KEY = "sk-live-Zq8W3x9LmN4pR7tY"
BASE = "https://opus.test"
PRESIGNED = (
    "https://bucket.storage.test/up/contract.pdf?X-Amz-Signature=SIGNATURE1234&X-Amz-Expires=300"
)

Answer = httpx.Response | Exception | Callable[[httpx.Request], httpx.Response]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Server:
    """A scripted fake server: per route (method, path), answers in order; records requests."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], list[Answer]] = {}
        self.requests: list[httpx.Request] = []

    def on(self, method: str, path: str, *answers: Answer) -> Server:
        self.routes.setdefault((method, path), []).extend(answers)
        return self

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        key = (request.method, request.url.raw_path.split(b"?")[0].decode())
        queue = self.routes.get(key)
        assert queue, f"unexpected request {key}"
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(answer, Exception):
            raise answer
        if callable(answer) and not isinstance(answer, httpx.Response):
            return answer(request)
        return answer

    def count(self, method: str, path: str) -> int:
        return sum(
            1
            for r in self.requests
            if r.method == method and r.url.raw_path.split(b"?")[0].decode() == path
        )


class FakeSleep:
    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def make(
    server: Server,
    *,
    rand: Callable[[], float] = lambda: 1.0,
    trace: bool = False,
    key: str | None = KEY,
    **policy: Any,
) -> tuple[OpusClient, FakeSleep]:
    sleep = FakeSleep()
    http = httpx.AsyncClient(transport=httpx.MockTransport(server))
    client = OpusClient(
        BASE, key, http=http, retry=RetryPolicy(sleep=sleep, random=rand, **policy), trace=trace
    )
    return client, sleep


def ok(body: Any = None, status: int = 200, **kw: Any) -> httpx.Response:
    return httpx.Response(status, json=body if body is not None else {}, **kw)


def body_of(request: httpx.Request) -> Any:
    return json.loads(request.content)


# ---------------------------------------------------------------------------------------------
# Request shapes


async def test_get_workflow_path_query_and_key_header() -> None:
    server = Server().on("GET", "/workflow/wf1", ok({"workflowId": "wf1"}))
    client, _ = make(server)
    assert await client.get_workflow("wf1") == {"workflowId": "wf1"}
    await client.get_workflow("wf1", version=3)
    await client.get_workflow("wf1", version=3, version_id="9b2e")
    plain, pinned, by_id = server.requests
    assert plain.url.query == b""
    assert dict(pinned.url.params) == {"version": "3"}
    assert dict(by_id.url.params) == {"workflowVersionId": "9b2e"}
    for request in server.requests:
        assert request.headers["x-service-key"] == KEY
        assert request.headers["accept"] == "application/json"
        assert request.headers["user-agent"].startswith("opus-runner/")


async def test_ids_are_quoted_into_one_path_segment() -> None:
    server = Server().on("GET", "/job/a%2Fb%3Fx/status", ok({"status": "PENDING"}))
    client, _ = make(server)
    assert await client.status("a/b?x") == "PENDING"
    assert server.requests[0].url.raw_path == b"/job/a%2Fb%3Fx/status"


async def test_get_workflow_object_and_versions() -> None:
    uuid = "3f69dcbf-713a-493d-8d08-3fdb754825ab"
    server = (
        Server()
        .on("GET", f"/reference-workflow/v2/workflow-object/{uuid}", ok({"workflow_id": uuid}))
        .on(
            "GET",
            f"/executor/workflow/{uuid}/versions",
            ok({"workflow_id": uuid, "versions": [{"version": 1}, {"version": 2}]}),
            ok([{"version": 7}]),
        )
    )
    client, _ = make(server)
    assert await client.get_workflow_object(uuid) == {"workflow_id": uuid}
    await client.get_workflow_object(uuid, version=2)
    assert dict(server.requests[1].url.params) == {"version": "2"}
    assert await client.list_versions(uuid) == [{"version": 1}, {"version": 2}]
    assert await client.list_versions(uuid) == [{"version": 7}]


async def test_list_versions_with_an_odd_shape_is_an_api_error() -> None:
    server = Server().on("GET", "/executor/workflow/u1/versions", ok({"count": 2}))
    client, _ = make(server)
    with pytest.raises(ApiError, match="unexpected shape"):
        await client.list_versions("u1")


async def test_initiate_body_pins_and_returns_a_string_id() -> None:
    server = Server().on("POST", "/job/initiate", ok({"jobExecutionId": 12345}, status=201))
    client, _ = make(server)
    job_id = await client.initiate("wf1", title="T", description="D")
    assert job_id == "12345"
    await client.initiate("wf1", title="T", version=3)
    await client.initiate("wf1", title="T", version=3, version_id="vid", extra={"workspaces": "w1"})
    plain, by_number, by_id = (body_of(r) for r in server.requests)
    assert plain == {"workflowId": "wf1", "title": "T", "description": "D", "source": "api"}
    assert by_number["workflowVersionNumber"] == 3 and "workflowVersionId" not in by_number
    assert by_id["workflowVersionId"] == "vid" and "workflowVersionNumber" not in by_id
    assert by_id["workspaces"] == "w1"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("72964", "72964"), (72964, "72964"), (72964.0, "72964"), (" 7 ", "7"), ("", None), (True, None), (None, None), ({}, None)],
)
def test_job_ids_are_kept_as_strings(raw: Any, expected: str | None) -> None:
    from opus_runner.api import job_id_of

    assert job_id_of(raw) == expected


async def test_initiate_sends_workspaces_comma_separated() -> None:
    server = Server().on("POST", "/job/initiate", ok({"jobExecutionId": "72964"}, status=201))
    client, _ = make(server)
    assert await client.initiate("wf1", title="T", workspaces=("w1", "w2")) == "72964"
    assert body_of(server.requests[0])["workspaces"] == "w1,w2"


async def test_initiate_without_an_id_in_the_answer() -> None:
    server = Server().on("POST", "/job/initiate", ok({"ok": True}))
    client, _ = make(server)
    with pytest.raises(ApiError, match="no jobExecutionId"):
        await client.initiate("wf1", title="T")


async def test_file_upload_url_body() -> None:
    server = Server().on(
        "POST", "/job/file/upload", ok({"presignedUrl": PRESIGNED, "fileUrl": "https://f/1"})
    )
    client, _ = make(server)
    got = await client.file_upload_url(extension="PDF", original_name="Q4.pdf", workflow_id="wf1")
    assert got == (PRESIGNED, "https://f/1")
    assert body_of(server.requests[0]) == {
        "fileExtension": ".pdf",
        "accessScope": "organization",
        "originalName": "Q4.pdf",
        "workflowId": "wf1",
    }
    assert server.requests[0].headers["x-service-key"] == KEY


async def test_file_upload_url_scope_workspace_and_unlisted() -> None:
    answer = ok({"presignedUrl": PRESIGNED, "fileUrl": "https://f/1"})
    server = Server().on("POST", "/job/file/upload", answer).on("POST", "/job/file/upload", answer)
    client, _ = make(server)
    await client.file_upload_url(extension="pdf", original_name=None, workflow_id="wf1", workspace_id="ws1", access_scope="workspace")
    await client.file_upload_url(extension=".csv", original_name="a.csv", workflow_id="wf1", access_scope="unlisted")
    in_workspace, unlisted = (body_of(r) for r in server.requests)
    # One scope only: the workspace when known (the file then sits where the workflow reads it).
    assert in_workspace == {"fileExtension": ".pdf", "accessScope": "workspace", "workspaceId": "ws1"}
    assert unlisted == {"fileExtension": ".csv", "originalName": "a.csv", "workflowId": "wf1"}


async def test_put_presigned_never_carries_the_key() -> None:
    server = Server().on("PUT", "/up/contract.pdf", httpx.Response(200))
    client, _ = make(server)
    await client.put_presigned(PRESIGNED, b"%PDF-1.7")
    await client.put_presigned(PRESIGNED, b"%PDF-1.7", content_type="application/pdf")
    bare, typed = server.requests
    assert bare.url == httpx.URL(PRESIGNED)
    assert bare.content == b"%PDF-1.7"
    assert "x-service-key" not in bare.headers and "x-service-key" not in typed.headers
    assert "content-type" not in bare.headers
    assert typed.headers["content-type"] == "application/pdf"


async def test_put_presigned_on_the_api_host_still_has_no_key() -> None:
    server = Server().on("PUT", "/storage/x.csv", httpx.Response(200))
    client, _ = make(server)
    await client.put_presigned(f"{BASE}/storage/x.csv?sig=abc", b"a,b")
    assert "x-service-key" not in server.requests[0].headers


async def test_put_presigned_rejection_names_storage_not_the_key() -> None:
    xml = (
        "<?xml version='1.0'?><Error><Code>AccessDenied</Code>"
        "<Message>Request has expired</Message></Error>"
    )
    server = Server().on("PUT", "/up/contract.pdf", httpx.Response(403, text=xml))
    client, _ = make(server)
    with pytest.raises(ApiError) as info:
        await client.put_presigned(PRESIGNED, b"x")
    assert not isinstance(info.value, AuthError)
    assert "Request has expired" in str(info.value)
    assert "SIGNATURE1234" not in str(info.value)
    assert info.value.endpoint == "https://bucket.storage.test/up/contract.pdf"


async def test_upload_file_runs_both_steps() -> None:
    server = (
        Server()
        .on("POST", "/job/file/upload", ok({"presignedUrl": PRESIGNED, "fileUrl": "https://f/9"}))
        .on("PUT", "/up/contract.pdf", httpx.Response(200))
    )
    client, _ = make(server)
    url = await client.upload_file(b"a,b\n", original_name="Data.CSV", workflow_id="wf1")
    assert url == "https://f/9"
    first, second = server.requests
    assert body_of(first)["fileExtension"] == ".csv"
    assert body_of(first)["workflowId"] == "wf1"
    assert second.method == "PUT" and second.content == b"a,b\n"
    assert "x-service-key" not in second.headers


async def test_upload_file_needs_an_extension() -> None:
    client, _ = make(Server())
    with pytest.raises(UsageError, match="no extension"):
        await client.upload_file(b"x", original_name="README", workflow_id="wf1")


async def test_execute_body_and_confirmation() -> None:
    answer = ok(
        {"success": True, "jobExecutionId": "j1", "message": "Job execution has been started"}
    )
    server = Server().on("POST", "/job/execute", answer)
    client, _ = make(server)
    payload = {"v1": {"value": "x", "type": "str", "displayName": "Title"}}
    outcome = await client.execute("j1", payload, callback_url="https://cb.example/x")
    assert outcome == ExecuteOutcome("j1", True, None, "Job execution has been started")
    await client.execute("j1", payload)
    with_cb, without_cb = (body_of(r) for r in server.requests)
    assert with_cb == {
        "jobExecutionId": "j1",
        "jobPayloadSchemaInstance": payload,
        "callbackUrl": "https://cb.example/x",
    }
    # Opus refuses an execute without callbackUrl: with no receiver, a never-resolving host.
    assert without_cb["callbackUrl"] == PLACEHOLDER_CALLBACK_URL
    assert urlsplit(PLACEHOLDER_CALLBACK_URL).hostname.endswith(".invalid")


async def test_status_results_audit_search_paths() -> None:
    server = (
        Server()
        .on("GET", "/job/j1/status", ok({"status": "COMPLETED"}))
        .on("GET", "/job/j1/results", ok({"jobResultsPayloadSchema": {"o": {"value": 1}}}))
        .on(
            "GET",
            "/job/j1/audit",
            ok({"nb_nodes": 5, "nb_executed_nodes": 2, "running_node": "Extract"}),
        )
        .on("GET", "/job/search", ok({"jobs": []}))
    )
    client, _ = make(server)
    assert await client.status("j1") == "COMPLETED"
    assert (await client.results("j1")).outputs == {"o": 1}
    audit = await client.audit("j1")
    assert (audit.nb_nodes, audit.nb_executed, audit.running_node) == (5, 2, "Extract")
    assert await client.search_jobs(workflow_id="wf1", status="FAILED", max_results=5) == {
        "jobs": []
    }
    assert dict(server.requests[-1].url.params) == {
        "offset": "0",
        "maxResults": "5",
        "workflowId": "wf1",
        "status": "FAILED",
    }


# ---------------------------------------------------------------------------------------------
# Retries


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
async def test_transient_status_is_retried(status: int) -> None:
    server = Server().on("GET", "/job/j1/status", httpx.Response(status), ok({"status": "PENDING"}))
    client, sleep = make(server)
    assert await client.status("j1") == "PENDING"
    assert len(server.requests) == 2
    assert sleep.waits == [0.5]


@pytest.mark.parametrize(
    "error",
    [
        httpx.ConnectError("refused"),
        httpx.ConnectTimeout("connect timed out"),
        httpx.ReadTimeout("timed out"),
        httpx.WriteTimeout("timed out"),
        httpx.PoolTimeout("no connection free"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
        httpx.ReadError("connection reset"),
        httpx.WriteError("broken pipe"),
    ],
    ids=lambda e: type(e).__name__,
)
async def test_transport_error_is_retried(error: Exception) -> None:
    server = Server().on("GET", "/job/j1/status", error, ok({"status": "IN PROGRESS"}))
    client, sleep = make(server)
    assert await client.status("j1") == "IN_PROGRESS"
    assert len(server.requests) == 2
    assert sleep.waits == [0.5]


@pytest.mark.parametrize(
    ("status", "header", "wait"), [(429, "7", 7.0), (503, "2.5", 2.5), (429, "0", 0.0)]
)
async def test_retry_after_seconds_is_honoured(status: int, header: str, wait: float) -> None:
    server = Server().on(
        "GET",
        "/job/j1/status",
        httpx.Response(status, headers={"Retry-After": header}),
        ok({"status": "X"}),
    )
    client, sleep = make(server, rand=lambda: 0.0)
    await client.status("j1")
    assert sleep.waits == [wait]  # never earlier than asked


@pytest.mark.parametrize(("header", "most"), [("10", 12.0), ("1", 1.5), ("0", 0.5)])
async def test_retry_after_gets_jitter_so_a_crowd_does_not_return_at_once(header: str, most: float) -> None:
    waits = []
    for rand in (0.0, 0.5, 1.0):
        server = Server().on(
            "GET", "/job/j1/status", httpx.Response(429, headers={"Retry-After": header}), ok({"status": "X"})
        )
        client, sleep = make(server, rand=lambda r=rand: r)
        await client.status("j1")
        waits += sleep.waits
    assert waits[0] == float(header) and waits[2] == pytest.approx(most)
    assert waits[0] < waits[1] < waits[2]


async def test_retry_after_http_date_is_honoured() -> None:
    when = datetime.now(timezone.utc) + timedelta(seconds=20)
    header = format_datetime(when, usegmt=True)
    server = Server().on(
        "GET",
        "/job/j1/status",
        httpx.Response(503, headers={"Retry-After": header}),
        ok({"status": "X"}),
    )
    client, sleep = make(server, rand=lambda: 0.0)
    await client.status("j1")
    # The date has whole-second precision and a moment passes before it is read.
    assert len(sleep.waits) == 1 and 18.0 <= sleep.waits[0] <= 20.0


async def test_retry_after_in_the_past_means_now() -> None:
    header = format_datetime(datetime.now(timezone.utc) - timedelta(minutes=5), usegmt=True)
    server = Server().on(
        "GET",
        "/job/j1/status",
        httpx.Response(429, headers={"Retry-After": header}),
        ok({"status": "X"}),
    )
    client, sleep = make(server, rand=lambda: 0.0)
    await client.status("j1")
    assert sleep.waits == [0.0]


async def test_retry_after_is_capped() -> None:
    server = Server().on(
        "GET",
        "/job/j1/status",
        httpx.Response(429, headers={"Retry-After": "3600"}),
        httpx.Response(429, headers={"Retry-After": "3600"}),
        ok({"status": "X"}),
    )
    client, sleep = make(server, cap=5.0)
    await client.status("j1")
    assert sleep.waits == [5.0, 5.0]


async def test_retry_after_is_ignored_on_a_500_and_when_unparseable() -> None:
    server = Server().on(
        "GET",
        "/job/j1/status",
        httpx.Response(500, headers={"Retry-After": "9"}),
        httpx.Response(503, headers={"Retry-After": "soon"}),
        ok({"status": "X"}),
    )
    client, sleep = make(server)
    await client.status("j1")
    assert sleep.waits == [0.5, 1.0]


async def test_backoff_grows_exponentially_then_gives_up_with_the_mapped_error() -> None:
    server = Server().on(
        "GET", "/job/j1/status", httpx.Response(503, json={"message": "overloaded"})
    )
    client, sleep = make(server)
    with pytest.raises(ApiError) as info:
        await client.status("j1")
    assert sleep.waits == [0.5, 1.0, 2.0, 4.0, 8.0]
    assert len(server.requests) == 6
    assert info.value.status_code == 503
    assert str(info.value) == "GET /job/j1/status failed with HTTP 503: overloaded"


async def test_backoff_is_capped() -> None:
    server = Server().on("GET", "/job/j1/status", httpx.Response(502))
    client, sleep = make(server, base=1.0, cap=3.0)
    with pytest.raises(ApiError):
        await client.status("j1")
    assert sleep.waits == [1.0, 2.0, 3.0, 3.0, 3.0]


async def test_full_jitter_scales_the_ceiling() -> None:
    draws = iter([0.0, 0.25, 0.999])
    server = Server().on(
        "GET",
        "/job/j1/status",
        httpx.Response(500),
        httpx.Response(500),
        httpx.Response(500),
        ok({"status": "X"}),
    )
    client, sleep = make(server, rand=lambda: next(draws))
    await client.status("j1")
    assert sleep.waits == pytest.approx([0.0, 0.25 * 1.0, 0.999 * 2.0])


async def test_real_jitter_stays_within_bounds() -> None:
    policy = RetryPolicy(base=0.5, cap=4.0)
    for retry in range(8):
        ceiling = min(4.0, 0.5 * 2**retry)
        waits = [policy.backoff(retry) for _ in range(200)]
        assert all(0.0 <= w <= ceiling for w in waits)
        assert max(waits) > ceiling / 2  # it really is spread over the range


async def test_network_error_after_the_last_attempt() -> None:
    server = Server().on(
        "GET", "/job/j1/status", httpx.ConnectError("[Errno 111] Connection refused")
    )
    client, sleep = make(server)
    with pytest.raises(NetworkError) as info:
        await client.status("j1")
    assert len(server.requests) == 6 and len(sleep.waits) == 5
    assert str(info.value) == (
        "could not reach https://opus.test for GET /job/j1/status after 6 attempts: "
        "ConnectError: [Errno 111] Connection refused"
    )


async def test_client_errors_are_not_retried() -> None:
    server = Server().on("GET", "/workflow/wf1", httpx.Response(400, json={"message": "bad id"}))
    client, sleep = make(server)
    with pytest.raises(ApiError, match="bad id"):
        await client.get_workflow("wf1")
    assert len(server.requests) == 1 and sleep.waits == []


async def test_removed_v1_route_is_not_retried() -> None:
    server = Server().on(
        "GET",
        "/workflow/wf1",
        httpx.Response(
            500, json={"statusCode": 500, "message": "V1 workflow details are no longer supported"}
        ),
    )
    client, sleep = make(server)
    with pytest.raises(ApiError, match="no longer supported"):
        await client.get_workflow("wf1")
    assert len(server.requests) == 1 and sleep.waits == []


async def test_put_presigned_is_retried_and_network_errors_hide_the_signature(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="opus_runner.http")
    server = Server().on("PUT", "/up/contract.pdf", httpx.Response(503), httpx.Response(200))
    client, sleep = make(server)
    await client.put_presigned(PRESIGNED, b"x")
    assert len(server.requests) == 2 and sleep.waits == [0.5]

    failing = Server().on(
        "PUT", "/up/contract.pdf", httpx.ConnectError(f"cannot connect to {PRESIGNED}")
    )
    client, _ = make(failing, attempts=2)
    with pytest.raises(NetworkError) as info:
        await client.put_presigned(PRESIGNED, b"x")
    assert "SIGNATURE1234" not in str(info.value)
    assert "https://bucket.storage.test" in str(info.value)
    assert "after 2 attempts" in str(info.value)
    # Retry notes are logged even without --verbose; they must not quote the signature either.
    assert any("retrying in" in r.getMessage() for r in caplog.records)
    assert "SIGNATURE1234" not in caplog.text


# ---------------------------------------------------------------------------------------------
# Execute is never resent once it may have reached the server


@pytest.mark.parametrize(
    "failure",
    [
        httpx.ReadTimeout("timed out"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
        httpx.ReadError("connection reset by peer"),
        httpx.Response(502, text="<html>Bad Gateway</html>", headers={"content-type": "text/html"}),
        httpx.Response(500, json={"message": "boom"}),
        httpx.Response(504),
    ],
    ids=["ReadTimeout", "RemoteProtocolError", "ReadError", "502", "500", "504"],
)
async def test_execute_is_not_resent_and_is_resolved_through_status(failure: Answer) -> None:
    server = (
        Server()
        .on("POST", "/job/execute", failure, ok({"success": True}))
        .on("GET", "/job/j1/status", httpx.Response(503), ok({"status": "in progress"}))
    )
    client, _ = make(server)
    outcome = await client.execute("j1", {})
    assert server.count("POST", "/job/execute") == 1
    assert server.count("GET", "/job/j1/status") == 2  # the status read itself retries
    assert outcome.confirmed is False
    assert outcome.status == "IN_PROGRESS"
    assert outcome.job_id == "j1"


@pytest.mark.parametrize(
    "refusal",
    [httpx.ConnectError("refused"), httpx.ConnectTimeout("connect timed out"), httpx.PoolTimeout("pool full")],
    ids=["ConnectError", "ConnectTimeout", "PoolTimeout"],
)
async def test_execute_is_resent_when_the_request_never_left(refusal: Answer) -> None:
    server = Server().on(
        "POST", "/job/execute", refusal, ok({"success": True, "message": "started"})
    )
    client, sleep = make(server)
    outcome = await client.execute("j1", {})
    assert server.count("POST", "/job/execute") == 2
    assert server.count("GET", "/job/j1/status") == 0
    assert outcome.confirmed is True
    assert sleep.waits == [0.5]


NO_INPUT = {"jobExecutionId": "j1", "status": "PENDING", "input": None}
HAS_INPUT = {"jobExecutionId": "j1", "status": "PENDING", "input": {"v1": {"value": "x"}}}


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(429, headers={"Retry-After": "3"}),
        httpx.Response(503),
        httpx.Response(502, text="<html>bad gateway</html>", headers={"content-type": "text/html"}),
    ],
    ids=["429", "503", "502"],
)
async def test_an_unclear_execute_is_resent_only_when_the_job_holds_no_input(answer: Answer) -> None:
    # A 429 or 503 may still have reached the server (a gateway in front of it): the job decides.
    server = (
        Server()
        .on("POST", "/job/execute", answer, ok({"success": True, "message": "started"}))
        .on("GET", "/job/j1/status", ok({"status": "PENDING"}))
        .on("GET", "/job/j1", ok(NO_INPUT))
    )
    client, sleep = make(server)
    outcome = await client.execute("j1", {})
    assert (server.count("POST", "/job/execute"), outcome.confirmed) == (2, True)
    assert server.count("GET", "/job/j1") == 1
    retry_after = isinstance(answer, httpx.Response) and answer.status_code == 429
    assert sleep.waits == ([pytest.approx(3.6)] if retry_after else [0.5])  # 3 s + jitter (rand 1.0)


@pytest.mark.parametrize("answer", [httpx.Response(503), httpx.Response(429), httpx.ReadTimeout("timed out")])
async def test_an_unclear_execute_that_reached_the_server_is_never_resent(answer: Answer) -> None:
    server = (
        Server()
        .on("POST", "/job/execute", answer)
        .on("GET", "/job/j1/status", ok({"status": "PENDING"}))
        .on("GET", "/job/j1", ok(HAS_INPUT))
    )
    client, sleep = make(server)
    outcome = await client.execute("j1", {})
    assert server.count("POST", "/job/execute") == 1
    assert (outcome.confirmed, outcome.status) == (False, "PENDING")
    assert sleep.waits == []


@pytest.mark.parametrize(
    "answer", [httpx.ReadTimeout("timed out"), httpx.RemoteProtocolError("peer closed connection")], ids=["ReadTimeout", "dropped"]
)
async def test_an_execute_that_got_no_answer_is_never_sent_again_in_the_same_run(answer: Answer) -> None:
    # No answer at all: the request may still be held by a slow gateway and land later, so the
    # job showing no input yet proves nothing. It stays unconfirmed for resume to ask again.
    server = (
        Server()
        .on("POST", "/job/execute", answer, ok({"success": True}))
        .on("GET", "/job/j1/status", ok({"status": "PENDING"}))
        .on("GET", "/job/j1", ok(NO_INPUT))
    )
    client, sleep = make(server)
    with pytest.raises(ExecuteOutcomeUnknown, match="got no answer and may still arrive") as info:
        await client.execute("j1", {})
    assert not isinstance(info.value, ExecuteNotReceived)
    assert server.count("POST", "/job/execute") == 1 and sleep.waits == []


async def test_an_unclear_execute_the_job_cannot_settle_stays_unconfirmed() -> None:
    server = (
        Server()
        .on("POST", "/job/execute", httpx.Response(503))
        .on("GET", "/job/j1/status", ok({"status": "PENDING"}))
        .on("GET", "/job/j1", ok({"jobExecutionId": "j1", "status": "PENDING"}))  # no `input`
    )
    client, _ = make(server)
    with pytest.raises(ExecuteOutcomeUnknown, match="does not show whether it got one"):
        await client.execute("j1", {})
    assert server.count("POST", "/job/execute") == 1


async def test_execute_outcome_unknown_when_the_job_never_started() -> None:
    # PENDING is what a never-executed job reads too: the job's detail (no input) decides, and
    # once the attempts are spent the job is left for resume to ask again.
    server = (
        Server()
        .on("POST", "/job/execute", httpx.ReadTimeout("timed out"))
        .on("GET", "/job/j1/status", ok({"status": "PENDING"}))
        .on("GET", "/job/j1", ok(NO_INPUT))
    )
    client, _ = make(server, attempts=2)
    with pytest.raises(ExecuteOutcomeUnknown) as info:
        await client.execute("j1", {})
    error = info.value
    assert server.count("POST", "/job/execute") == 1
    assert error.job_id == "j1"
    assert error.exit_code == 3
    text = str(error)
    assert "not resent" in text and "PENDING" in text and "holds no input yet" in text
    assert "opus-run status j1" in text and "opus-run resume" in text


@pytest.mark.parametrize(
    ("detail", "expected"),
    [
        ({"status": "PENDING", "input": {"v": {"value": 1, "type": "float"}}}, True),
        ({"status": "PENDING", "input": None}, False),
        ({"status": "PENDING", "input": {}}, False),
        ({"status": "PENDING"}, None),  # the detail does not say
        ({"data": {"status": "PENDING", "input": {"v": {"value": 1}}}}, True),
    ],
)
async def test_execute_received_reads_the_jobs_input_when_the_status_cannot_tell(
    detail: dict[str, Any], expected: bool | None
) -> None:
    server = Server().on("GET", "/job/j1/status", ok({"status": "PENDING"})).on("GET", "/job/j1", ok(detail))
    client, _ = make(server)
    assert (await client.execute_received("j1"))[0] is expected


@pytest.mark.parametrize("status", ["IN PROGRESS", "WAITING", "COMPLETED", "stopped"])
async def test_execute_received_trusts_a_status_past_pending(status: str) -> None:
    server = Server().on("GET", "/job/j1/status", ok({"status": status}))
    client, _ = make(server)
    assert (await client.execute_received("j1"))[0] is True
    assert server.count("GET", "/job/j1") == 0


@pytest.mark.parametrize(
    ("body", "inner", "words"),
    [
        ({"statusCode": 500, "message": "Request failed with status code 422"}, 500, "Request failed with status code 422"),
        ({"success": True, "error": {"message": "workflow inactive"}}, None, "workflow inactive"),
        ({"success": False, "message": "Job already running"}, None, "Job already running"),
        ({"statusCode": "403", "message": ["not allowed"]}, 403, "not allowed"),
    ],
)
@pytest.mark.parametrize("code", [200, 201])
async def test_a_2xx_execute_that_carries_a_failure_is_a_refusal(
    body: dict[str, Any], inner: int | None, words: str, code: int
) -> None:
    server = Server().on("POST", "/job/execute", httpx.Response(code, json=body))
    client, sleep = make(server)
    with pytest.raises(ExecuteRefused) as info:
        await client.execute("j1", {})
    error = info.value
    assert error.exit_code == 1 and error.job_id == "j1"
    assert str(error).startswith(f"Opus refused to execute job j1 (HTTP {code}")
    assert words in str(error)
    assert error.status_code == (inner or code)
    assert server.count("POST", "/job/execute") == 1 and sleep.waits == []


async def test_execute_outcome_unknown_when_status_cannot_be_read() -> None:
    server = (
        Server()
        .on("POST", "/job/execute", httpx.Response(502))
        .on("GET", "/job/j1/status", httpx.Response(404, json={"message": "Job not found"}))
    )
    client, _ = make(server)
    with pytest.raises(ExecuteOutcomeUnknown, match="could not be read") as info:
        await client.execute("j1", {})
    assert info.value.job_id == "j1"
    assert server.count("POST", "/job/execute") == 1


async def test_execute_validation_error_quotes_the_server() -> None:
    nest = {
        "statusCode": 400,
        "message": ["title must be a string", "value is required"],
        "error": "Bad Request",
    }
    server = Server().on("POST", "/job/execute", httpx.Response(400, json=nest))
    client, sleep = make(server)
    with pytest.raises(ExecuteRefused) as info:
        await client.execute("j1", {})
    assert info.value.status_code == 400 and info.value.exit_code == 1
    assert str(info.value) == (
        "Opus refused to execute job j1 (HTTP 400): title must be a string; value is required"
    )
    assert len(server.requests) == 1 and sleep.waits == []


async def test_execute_gives_up_safely_when_never_sent() -> None:
    server = Server().on("POST", "/job/execute", httpx.ConnectError("refused"))
    client, _ = make(server, attempts=3)
    with pytest.raises(NetworkError, match="after 3 attempts"):
        await client.execute("j1", {})
    assert server.count("POST", "/job/execute") == 3

    busy = (
        Server()
        .on("POST", "/job/execute", httpx.Response(429, json={"message": "slow down"}))
        .on("GET", "/job/j1/status", ok({"status": "PENDING"}))
        .on("GET", "/job/j1", ok(NO_INPUT))
    )
    client, _ = make(busy, attempts=3)
    with pytest.raises(ExecuteOutcomeUnknown, match="rate limited"):
        await client.execute("j1", {})
    assert busy.count("POST", "/job/execute") == 3


async def test_execute_refused_with_success_false() -> None:
    server = Server().on(
        "POST", "/job/execute", ok({"success": False, "message": "workflow inactive"})
    )
    client, _ = make(server)
    with pytest.raises(ExecuteRefused, match=r"refused to execute job j1 \(HTTP 200\): workflow inactive"):
        await client.execute("j1", {})


async def test_execute_unreadable_success_is_resolved_through_status() -> None:
    server = (
        Server()
        .on(
            "POST",
            "/job/execute",
            httpx.Response(200, text="<html>ok</html>", headers={"content-type": "text/html"}),
        )
        .on("GET", "/job/j1/status", ok({"status": "PENDING"}))
        .on("GET", "/job/j1", ok({"status": "PENDING", "input": {"v1": {"value": "x"}}}))
    )
    client, _ = make(server)
    outcome = await client.execute("j1", {})
    assert (outcome.confirmed, outcome.status) == (False, "PENDING")
    assert server.count("POST", "/job/execute") == 1


@pytest.mark.parametrize("detail", [HAS_INPUT, NO_INPUT], ids=["input", "no input"])
async def test_an_execute_answer_too_large_to_read_is_settled_by_the_job(detail: dict[str, Any]) -> None:
    # An answer came, so the request is over (answered), but it was not read: the job decides,
    # and within this call it is never sent a second time.
    server = (
        Server()
        .on("POST", "/job/execute", ok({"message": "x" * 200}))
        .on("GET", "/job/j1/status", ok({"status": "PENDING"}))
        .on("GET", "/job/j1", ok(detail))
    )
    http = httpx.AsyncClient(transport=httpx.MockTransport(server))
    client = OpusClient(BASE, KEY, http=http, retry=RetryPolicy(sleep=FakeSleep()), max_answer_bytes=100)
    if detail is HAS_INPUT:
        outcome = await client.execute("j1", {})
        assert (outcome.confirmed, outcome.status) == (False, "PENDING")
        assert "larger than 100 bytes" in outcome.message
    else:
        with pytest.raises(ExecuteNotReceived, match="larger than 100 bytes") as info:
            await client.execute("j1", {})
        assert info.value.answered is True
    assert server.count("POST", "/job/execute") == 1


async def test_an_answer_too_large_to_read_is_not_asked_again() -> None:
    server = Server().on("GET", "/workflow/wf1", ok({"blueprint": "x" * 200}))
    http = httpx.AsyncClient(transport=httpx.MockTransport(server))
    client = OpusClient(BASE, KEY, http=http, retry=RetryPolicy(sleep=FakeSleep()), max_answer_bytes=100)
    with pytest.raises(AnswerTooLarge, match="larger than 100 bytes once decompressed") as info:
        await client.get_workflow("wf1")
    assert info.value.endpoint == "/workflow/wf1"
    assert server.count("GET", "/workflow/wf1") == 1


# ---------------------------------------------------------------------------------------------
# Error mapping


def _response(status: int, **kw: Any) -> httpx.Response:
    return httpx.Response(status, request=httpx.Request("GET", f"{BASE}/x"), **kw)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"json": {"message": "Workflow is inactive"}}, "Workflow is inactive"),
        ({"json": {"statusCode": 400, "message": ["a", "b"]}}, "a; b"),
        ({"json": {"error": "Bad Request"}}, "Bad Request"),
        ({"json": {"error": {"message": "nested"}}}, "nested"),
        (
            {"text": "<!DOCTYPE html><html><body>502</body></html>"},
            "the server answered with an HTML page instead of JSON",
        ),
        (
            {"text": "<h1>oops</h1>", "headers": {"content-type": "text/html; charset=utf-8"}},
            "the server answered with an HTML page instead of JSON",
        ),
        ({"content": b""}, "the server answered with an empty body"),
        ({"text": "upstream connect error"}, "upstream connect error"),
        ({"json": {"statusCode": 418}}, '{"statusCode": 418}'),
    ],
)
def test_error_messages(kwargs: dict[str, Any], expected: str) -> None:
    error = error_from_response(_response(422, **kwargs), method="POST", endpoint="/job/initiate")
    assert type(error) is ApiError
    assert error.message == expected
    assert (error.status_code, error.method, error.endpoint) == (422, "POST", "/job/initiate")
    assert str(error) == f"POST /job/initiate failed with HTTP 422: {expected}"


def test_rejected_key_is_an_auth_error() -> None:
    error = error_from_response(
        _response(401, json={"message": "Invalid or expired API key"}), method="GET", endpoint="/job/j1/status"
    )
    assert isinstance(error, AuthError)
    assert error.message.startswith(
        "the service key was rejected (HTTP 401: Invalid or expired API key); check OPUS_SERVICE_KEY"
    )


def test_403_says_the_user_lacks_permission_in_the_workspace() -> None:
    # 403 is about the key's user's permission in a workspace, not about the key (opus-api.md 1).
    error = error_from_response(
        _response(403, json={"statusCode": 403, "message": "Forbidden resource", "error": "Forbidden"}),
        method="POST",
        endpoint="/job/file/upload",
        workspace="ws-9",
    )
    assert isinstance(error, AuthError)
    assert error.message.startswith(
        "the service key's user lacks permission in workspace ws-9 (HTTP 403: Forbidden resource)"
    )
    assert "OPUS_SERVICE_KEY" not in error.message


def test_no_auth_cookie_is_said_plainly() -> None:
    error = error_from_response(
        _response(401, json={"statusCode": 401, "message": "No auth cookie provided"}),
        method="GET",
        endpoint="/users",
    )
    assert isinstance(error, AuthError)
    assert "this endpoint does not accept service keys" in error.message
    assert "No auth cookie provided" in error.message
    assert "check OPUS_SERVICE_KEY" not in error.message


async def test_not_found_names_the_workflow_or_job() -> None:
    server = (
        Server()
        .on("GET", "/workflow/wf-x", httpx.Response(404, json={"message": "Workflow not found"}))
        .on("GET", "/job/j9/results", httpx.Response(404, json={"message": "No job"}))
    )
    client, _ = make(server)
    with pytest.raises(NotFoundError) as wf:
        await client.get_workflow("wf-x")
    assert wf.value.message == "workflow wf-x not found (Workflow not found)"
    assert wf.value.status_code == 404
    with pytest.raises(NotFoundError) as job:
        await client.results("j9")
    assert job.value.message == "job j9 not found (No job)"
    assert job.value.job_id == "j9"


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (httpx.Response(200, text="<html>login</html>"), "HTML page instead of JSON"),
        (httpx.Response(200, content=b""), "empty body"),
        (httpx.Response(200, text="OK"), "not JSON: OK"),
        (httpx.Response(200, json=["a"]), "expected a JSON object"),
    ],
)
async def test_unreadable_success_is_an_api_error(answer: httpx.Response, expected: str) -> None:
    server = Server().on("GET", "/workflow/wf1", answer)
    client, _ = make(server)
    with pytest.raises(ApiError, match=expected):
        await client.get_workflow("wf1")


async def test_redirects_are_not_followed_with_the_key() -> None:
    server = Server().on(
        "GET", "/workflow/wf1", httpx.Response(302, headers={"location": "https://evil.test/?k=1"})
    )
    http = httpx.AsyncClient(transport=httpx.MockTransport(server), follow_redirects=True)
    client = OpusClient(BASE, KEY, http=http, retry=RetryPolicy(sleep=FakeSleep()))
    with pytest.raises(ApiError, match=r"redirected to https://evil\.test/"):
        await client.get_workflow("wf1")
    assert [r.url.host for r in server.requests] == ["opus.test"]


# ---------------------------------------------------------------------------------------------
# The service key


def test_plain_http_is_refused_except_to_loopback() -> None:
    with pytest.raises(UsageError) as info:
        OpusClient("http://opus.example.com", KEY)
    assert (
        str(info.value)
        == "refusing to send the service key over plain http to opus.example.com; use https"
    )
    for url in (
        "http://127.0.0.1:8080",
        "http://127.3.4.5",
        "http://localhost:9000/",
        "http://[::1]:8000",
    ):
        assert OpusClient(url, KEY).base_url == url.rstrip("/")
    assert OpusClient("https://opus.example.com/", KEY).base_url == "https://opus.example.com"


@pytest.mark.parametrize("url", ["ftp://opus.test", "opus.test", "", "https://"])
def test_base_url_must_be_http(url: str) -> None:
    with pytest.raises(UsageError, match="is not an http"):
        OpusClient(url, KEY)


@pytest.mark.parametrize("key", [None, ""])
async def test_missing_key_is_a_config_error_at_the_first_call(key: str | None) -> None:
    server = Server()
    client, _ = make(server, key=key)
    with pytest.raises(ConfigError) as info:
        await client.status("j1")
    assert str(info.value) == (
        "no Opus service key: set OPUS_SERVICE_KEY (or pass --sandbox to try a local sandbox)"
    )
    with pytest.raises(ConfigError):
        await client.execute("j1", {})
    assert server.requests == []
    assert repr(client) == "OpusClient(base_url='https://opus.test', key=None)"


def test_repr_masks_the_key_and_the_key_is_registered() -> None:
    client = OpusClient(BASE, KEY)
    assert repr(client) == "OpusClient(base_url='https://opus.test', key=***)"
    assert KEY not in repr(client) and KEY not in str(client) and KEY not in repr(vars(client))
    assert redact.mask(f"x {KEY} y") == "x *** y"


async def test_the_key_never_appears_in_errors() -> None:
    server = (
        Server()
        .on("GET", "/job/j1/status", httpx.Response(401, json={"message": f"invalid key {KEY}"}))
        .on("GET", "/job/j2/status", httpx.ConnectError(f"proxy said {KEY}"))
        .on("GET", "/job/j3/status", httpx.Response(500, text=f"trace: x-service-key={KEY}"))
        .on("POST", "/job/execute", httpx.ReadTimeout("timed out"))
        .on("GET", "/job/j4/status", httpx.Response(400, json={"message": KEY}))
    )
    client, _ = make(server, attempts=2)
    errors: list[Exception] = []
    for call in (
        lambda: client.status("j1"),
        lambda: client.status("j2"),
        lambda: client.status("j3"),
        lambda: client.execute("j4", {}),
    ):
        with pytest.raises(Exception) as info:
            await call()
        errors.append(info.value)
    assert [type(e) for e in errors] == [AuthError, NetworkError, ApiError, ExecuteOutcomeUnknown]
    for error in errors:
        assert KEY not in str(error) and KEY not in repr(error)
        assert KEY.encode() not in str(error).encode()
        assert "***" in str(error)


async def test_trace_logs_requests_without_secrets(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="opus_runner.http")
    big = {"blob": "z" * 5000, "echo": KEY}
    server = (
        Server()
        .on("GET", "/workflow/wf1", ok(big))
        .on("POST", "/job/file/upload", ok({"presignedUrl": PRESIGNED, "fileUrl": "https://f/1"}))
        .on("PUT", "/up/contract.pdf", httpx.Response(200))
        .on("POST", "/job/execute", ok({"success": True, "message": f"started with {KEY}"}))
    )
    client, _ = make(server, trace=True)
    await client.get_workflow("wf1")
    await client.upload_file(b"%PDF", original_name="c.pdf", workflow_id="wf1")
    await client.execute("j1", {"secret": {"value": KEY, "type": "str"}})

    text = caplog.text
    messages = [r.getMessage() for r in caplog.records]
    assert all(r.name == "opus_runner.http" and r.levelno == logging.DEBUG for r in caplog.records)
    assert KEY not in text and KEY.encode() not in text.encode()
    assert all(KEY not in m for m in messages)
    # The presigned URL's query string is a credential: only scheme://host/path is logged.
    assert "SIGNATURE1234" not in text and "X-Amz" not in text
    assert any(
        m.startswith("-> PUT https://bucket.storage.test/up/contract.pdf ") for m in messages
    )
    request_line = next(
        m for m in messages if m.startswith("-> GET https://opus.test/workflow/wf1")
    )
    assert '"x-service-key": "***"' in request_line
    response_line = next(
        m for m in messages if m.startswith("<- 200 GET https://opus.test/workflow/wf1")
    )
    assert " ms) body=" in response_line and "more characters" in response_line
    assert len(response_line) < 2048 + 200


async def test_no_trace_without_verbose(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="opus_runner.http")
    server = Server().on("GET", "/job/j1/status", ok({"status": "PENDING"}))
    client, _ = make(server)
    await client.status("j1")
    assert not [r for r in caplog.records if r.getMessage().startswith(("->", "<-"))]


# ---------------------------------------------------------------------------------------------
# Results, statuses, audits, lifecycle


def test_current_results_shape() -> None:
    data = parse_results(
        {
            "jobResultsPayloadSchema": {
                "workflow_output_a": {"value": "Summary", "type": "str", "displayName": "Summary"},
                "workflow_output_b": {"value": ["https://f/1"], "type": "array_files"},
                "bare": 42,
            }
        }
    )
    assert data.outputs == {
        "workflow_output_a": "Summary",
        "workflow_output_b": ["https://f/1"],
        "bare": 42,
    }
    assert "jobResultsPayloadSchema" in data.raw and data.error is None


def test_legacy_results_shape() -> None:
    body = {
        "jobExecutionId": "j1",
        "status": "COMPLETED",
        "results": {"summary": "done", "outputFiles": ["https://f/2"], "data": {"score": 0.9}},
    }
    data = parse_results(body)
    assert data.outputs == {"summary": "done", "outputFiles": ["https://f/2"], "score": 0.9}
    assert data.raw == body
    only_data = parse_results({"results": {"data": {"x": 1}}})
    assert only_data.outputs == {"x": 1}


def test_results_without_outputs_and_with_an_error() -> None:
    assert parse_results({"jobResultsPayloadSchema": None}).outputs == {}
    failed = parse_results({"status": "FAILED", "error": {"message": f"node crashed {KEY}"}})
    assert failed.outputs == {} and failed.error == "node crashed ***"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("IN PROGRESS", "IN_PROGRESS"),
        ("in_progress", "IN_PROGRESS"),
        ("Hitl-Pending", "HITL_PENDING"),
        ("brand new  state", "BRAND_NEW_STATE"),
        (None, "UNKNOWN"),
    ],
)
async def test_status_normalisation(raw: Any, expected: str) -> None:
    server = Server().on("GET", "/job/j1/status", ok({"status": raw}))
    client, _ = make(server)
    assert await client.status("j1") == expected


def test_audit_progress_is_tolerant() -> None:
    full = AuditProgress.from_raw(
        {
            "nb_nodes": 5,
            "executed_nodes": ["Input", "Extract"],
            "nb_executed_nodes": 2,
            "running_node": "Summarise",
            "failed_nodes": ["Extract"],
            "audit": {"nodes_execution_data": {}},
        }
    )
    assert (full.nb_nodes, full.nb_executed, full.running_node, full.failed_nodes) == (
        5,
        2,
        "Summarise",
        ["Extract"],
    )
    partial = AuditProgress.from_raw(
        {"executed_nodes": ["a"], "remaining_nodes_to_execute": ["b", "c"], "running_node": ""}
    )
    assert (partial.nb_nodes, partial.nb_executed, partial.running_node) == (3, 1, None)
    empty = AuditProgress.from_raw("not an object")
    assert (
        empty.nb_nodes,
        empty.nb_executed,
        empty.running_node,
        empty.failed_nodes,
        empty.raw,
    ) == (0, 0, None, [], {})


async def test_aclose_closes_only_an_owned_client() -> None:
    shared = httpx.AsyncClient(transport=httpx.MockTransport(Server()))
    async with OpusClient(BASE, KEY, http=shared) as client:
        assert client.http is shared
    assert not shared.is_closed
    await shared.aclose()

    own = OpusClient(BASE, KEY, timeout=12.5)
    assert own.http.timeout.read == 12.5
    await own.aclose()
    assert own.http.is_closed


def test_the_public_import_path_re_exports_the_package() -> None:
    import opus_runner.api
    import opus_runner.client

    assert {"OpusClient", "RetryPolicy", "ExecuteOutcome", "NO_KEY_MESSAGE"} <= set(opus_runner.client.__all__)
    for name in opus_runner.api.__all__:
        assert getattr(opus_runner.client, name) is getattr(opus_runner.api, name), name


def test_retry_policy_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        RetryPolicy(attempts=0)
