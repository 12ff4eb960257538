"""Fault injection in the sandbox: each kind over real HTTP, rule matching, and rule sources."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from opus_runner.errors import ConfigError
from opus_runner.sandbox import SandboxServer
from opus_runner.sandbox.faults import FaultRuleError, FaultSet, load_faults_file, parse_rule

WORKFLOW = "0b6c1d5e-2f3a-4b7c-8d9e-1f2a3b4c5d6e"
DOCUMENTED = "1c7d2e6f-3a4b-4c8d-9e0f-2a3b4c5d6e7f"
FIXTURE: dict[str, Any] = {
    "workflows": {
        WORKFLOW: {
            "duration": "0.1s",
            "inputs": [{"variable_name": "in_title", "display_name": "Title", "type": "str"}],
            "outputs": {"summary": "S {{ inputs.Title }}"},
        },
        DOCUMENTED: {
            "dialect": "documented",
            "inputs": [{"variable_name": "in_title", "display_name": "Title", "type": "str"}],
        },
    }
}
PAYLOAD = {"in_title": {"value": "t", "type": "str", "displayName": "Title"}}
PLACEHOLDER = "https://opus-callback.invalid/hook"


@pytest.fixture(scope="module")
def server() -> Iterator[SandboxServer]:
    with SandboxServer(FIXTURE) as sandbox:
        yield sandbox


@pytest.fixture(autouse=True)
def _clean(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "server" in request.fixturenames:
        sandbox = request.getfixturevalue("server")
        sandbox.faults.clear()
        sandbox.state.reset()


@pytest.fixture
def client(server: SandboxServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, headers={"x-service-key": server.key}, timeout=10) as c:
        yield c


def initiate(client: httpx.Client, workflow: str = WORKFLOW) -> str:
    response = client.post("/job/initiate", json={"workflowId": workflow, "title": "t"})
    assert response.status_code in (200, 201), response.text
    return response.json()["jobExecutionId"]


def execute(client: httpx.Client, job_id: str) -> httpx.Response:
    return client.post(
        "/job/execute",
        json={"jobExecutionId": job_id, "jobPayloadSchemaInstance": PAYLOAD, "callbackUrl": PLACEHOLDER},
    )


def without_clock(body: dict[str, Any]) -> dict[str, Any]:
    """A NestJS error body without its timestamp (checked) and path."""
    assert body.pop("timestamp").endswith("Z")
    assert body.pop("path").startswith("/")
    return body


# --- each kind ------------------------------------------------------------------------------------


def test_injected_503_on_execute_does_not_execute(client: httpx.Client, server: SandboxServer) -> None:
    job = initiate(client)
    server.faults.add(route="execute", kind="status", status=503, times=1)
    faulted = execute(client, job)
    assert faulted.status_code == 503
    body = faulted.json()
    assert body["path"] == "/job/execute"
    assert without_clock(body) == {
        "statusCode": 503,
        "message": "Service Unavailable",
        "error": "Service Unavailable",
    }
    assert client.get(f"/job/{job}").json()["input"] is None
    assert server.state.executes[job] == 0 and job not in server.state.payloads
    assert server.state.count("POST", "execute") == 1  # the call arrived, it was not processed
    assert execute(client, job).status_code == 201  # times: 1 -> the next call goes through
    assert server.state.executes[job] == 1


@pytest.mark.parametrize(
    ("body", "content_type", "check"),
    [
        ("html", "text/html", lambda text: "<h1>502 Bad Gateway</h1>" in text),
        ("empty", None, lambda text: text == ""),
        ("json", "application/json", lambda text: json.loads(text)["statusCode"] == 502),
    ],
)
def test_status_fault_bodies(
    client: httpx.Client, server: SandboxServer, body: str, content_type: str | None, check: Any
) -> None:
    server.faults.add(route="workflow", kind="status", status=502, body=body)
    response = client.get(f"/workflow/{WORKFLOW}")
    assert response.status_code == 502
    if content_type:
        assert response.headers["content-type"].startswith(content_type)
    assert check(response.text)


def test_rate_limit_sends_no_retry_after_unless_asked(client: httpx.Client, server: SandboxServer) -> None:
    http_date = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=30), usegmt=True)
    bare = server.faults.add(route="status", kind="rate_limit", times=1)
    assert bare.retry_after is None and parse_rule({"kind": "rate_limit"}).retry_after is None
    server.faults.add(route="status", kind="rate_limit", retry_after=2, times=1)
    server.faults.add(route="status", kind="rate_limit", retry_after=http_date, times=1)
    job = initiate(client)
    first = client.get(f"/job/{job}/status")
    assert first.status_code == 429 and "retry-after" not in first.headers  # none is documented
    assert without_clock(first.json()) == {
        "statusCode": 429,
        "message": "Too Many Requests",
        "error": "Too Many Requests",
    }
    second = client.get(f"/job/{job}/status")
    assert second.status_code == 429 and second.headers["retry-after"] == "2"
    third = client.get(f"/job/{job}/status")
    assert third.status_code == 429 and third.headers["retry-after"] == http_date
    assert client.get(f"/job/{job}/status").status_code == 200


def test_delay_slows_the_answer_and_still_processes(client: httpx.Client, server: SandboxServer) -> None:
    rule = server.faults.add(route="initiate", kind="delay", seconds="200ms", times=1)
    started = time.monotonic()
    job = initiate(client)
    assert time.monotonic() - started >= 0.2  # a lower bound only: the wait happened
    assert job in server.state.jobs
    initiate(client)
    assert rule.fired == 1 and rule.exhausted and len(server.state.jobs) == 2
    with pytest.raises(httpx.ReadTimeout):
        server.faults.add(route="initiate", kind="delay", seconds=0.5, times=1)
        client.post("/job/initiate", json={"workflowId": WORKFLOW, "title": "t"}, timeout=0.1)


def test_drop_closes_the_connection_without_processing(
    client: httpx.Client, server: SandboxServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.faults.add(route="initiate", kind="drop", times=1)
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(httpx.RemoteProtocolError):
            client.post("/job/initiate", json={"workflowId": WORKFLOW, "title": "t"})
        assert server.state.jobs == {}  # not processed
        assert initiate(client) in server.state.jobs  # the client recovers on a new connection
    # injected drops are deliberate: uvicorn must not log them as application errors
    errors = [r for r in caplog.records if r.name.startswith("uvicorn") and r.levelno >= logging.ERROR]
    assert not errors, [(r.getMessage(), r.exc_info) for r in errors]


def test_lose_response_executes_but_the_client_never_hears(
    client: httpx.Client, server: SandboxServer
) -> None:
    job = initiate(client)
    server.faults.add(route="execute", kind="lose_response", times=1)
    with pytest.raises(httpx.RemoteProtocolError):
        execute(client, job)
    assert server.state.executes[job] == 1
    assert client.get(f"/job/{job}").json()["input"] == PAYLOAD  # how a client learns it arrived
    resent = execute(client, job)  # what a careless client would do: live, nothing refuses it
    assert resent.status_code == 201 and server.state.executes[job] == 2


def test_lose_response_then_a_resent_execute_on_a_documented_workflow_is_a_409(
    client: httpx.Client, server: SandboxServer
) -> None:
    job = initiate(client, DOCUMENTED)
    server.faults.add(route="execute", kind="lose_response", times=1)
    with pytest.raises(httpx.RemoteProtocolError):
        execute(client, job)
    assert client.get(f"/job/{job}/status").json()["status"] != "CREATED"
    assert execute(client, job).status_code == 409 and server.state.executes[job] == 2


def test_lose_response_keeps_the_key_check(client: httpx.Client, server: SandboxServer) -> None:
    job = initiate(client)
    server.faults.add(route="execute", kind="lose_response", times=1)
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.post(
            f"{server.base_url}/job/execute",
            json={"jobExecutionId": job, "jobPayloadSchemaInstance": PAYLOAD, "callbackUrl": PLACEHOLDER},
        )
    assert server.state.executes[job] == 0


def test_faults_apply_to_presigned_put_and_downloads(client: httpx.Client, server: SandboxServer) -> None:
    slot = client.post(
        "/job/file/upload", json={"fileExtension": ".txt", "originalName": "a.txt", "workflowId": WORKFLOW}
    ).json()
    server.faults.add(route="put", kind="status", status=500, times=1)
    assert httpx.put(slot["presignedUrl"], content=b"data").status_code == 500
    assert server.state.uploads == {}
    assert httpx.put(slot["presignedUrl"], content=b"data").status_code == 200
    server.faults.add(route="download", kind="status", status=503, times=1)
    assert client.post("/job/file/download", json={"fileUrl": slot["fileUrl"]}).status_code == 503
    link = client.post("/job/file/download", json={"fileUrl": slot["fileUrl"]}).json()["presignedUrl"]
    server.faults.add(route="presigned_get", kind="status", status=503, times=1)
    assert httpx.get(link).status_code == 503
    assert httpx.get(link).content == b"data"
    server.faults.add(route="media", kind="status", status=502, times=1)
    assert httpx.get(slot["fileUrl"]).status_code == 502
    assert httpx.get(slot["fileUrl"]).status_code == 404  # a live file URL is a reference, not a download
    documented = client.post(
        "/job/file/upload", json={"fileExtension": ".txt", "originalName": "b.txt", "workflowId": DOCUMENTED}
    ).json()
    assert httpx.put(documented["presignedUrl"], content=b"old").status_code == 200
    server.faults.add(route="file", kind="status", status=503, times=1)
    assert httpx.get(documented["fileUrl"]).status_code == 503
    assert httpx.get(documented["fileUrl"]).content == b"old"


def test_inner_error_answers_a_2xx_that_carries_a_failure(
    client: httpx.Client, server: SandboxServer
) -> None:
    job = initiate(client)
    server.faults.add(route="execute", kind="inner_error", times=1)
    answer = execute(client, job)
    assert answer.status_code == 200
    assert answer.json() == {"statusCode": 500, "message": "Request failed with status code 422"}
    assert (
        server.state.executes[job] == 0 and client.get(f"/job/{job}").json()["input"] is None
    )  # not processed

    server.faults.add(
        route="execute",
        kind="inner_error",
        variant="success_false",
        message="Quota exceeded",
        status=201,
        times=1,
    )
    refused = execute(client, job)
    assert refused.status_code == 201 and refused.json() == {"success": False, "message": "Quota exceeded"}

    server.faults.add(route="initiate", kind="inner_error", variant="error_object", inner_status=422, times=1)
    inner = client.post("/job/initiate", json={"workflowId": WORKFLOW, "title": "t"})
    assert inner.status_code == 200
    assert inner.json() == {"error": {"statusCode": 422, "message": "Request failed with status code 422"}}
    assert len(server.state.jobs) == 1

    # process: true -- the job was started, yet the answer says it failed
    server.faults.add(route="execute", kind="inner_error", process=True, times=1)
    assert execute(client, job).json()["statusCode"] == 500
    assert server.state.executes[job] == 1
    assert client.get(f"/job/{job}").json()["input"] == PAYLOAD
    assert execute(client, job).status_code == 201  # the rule is spent


# --- matching -------------------------------------------------------------------------------------


def test_times_every_method_and_wildcard(client: httpx.Client, server: SandboxServer) -> None:
    server.faults.add(route="status", kind="status", status=500, every=3, times=2)
    job = initiate(client)
    codes = [client.get(f"/job/{job}/status").status_code for _ in range(9)]
    assert codes == [200, 200, 500, 200, 200, 500, 200, 200, 200]

    server.faults.clear()
    server.faults.add(route="archive", method="DELETE", kind="status", status=504)
    assert client.post(f"/job/{job}/archive").status_code == 201
    assert client.delete(f"/job/{job}/archive").status_code == 504

    server.faults.clear()
    server.faults.add(kind="status", status=503, times=2)  # route "*": any API route
    assert client.get(f"/workflow/{WORKFLOW}").status_code == 503
    assert client.get(f"/job/{job}/audit").status_code == 503
    assert client.get(f"/job/{job}/audit").status_code == 200
    # the sandbox's own routes are never faulted, so tests can always inspect and clear
    server.faults.add(kind="status", status=503)
    assert httpx.get(f"{server.base_url}/_sandbox/stats").status_code == 200
    assert httpx.delete(f"{server.base_url}/_sandbox/faults").status_code == 200
    assert client.get(f"/workflow/{WORKFLOW}").status_code == 200


def test_first_firing_rule_wins_and_counts(server: SandboxServer, client: httpx.Client) -> None:
    first = server.faults.add(route="workflow", kind="status", status=500, times=1)
    second = server.faults.add(route="workflow", kind="rate_limit", times=1)
    assert [client.get(f"/workflow/{WORKFLOW}").status_code for _ in range(3)] == [500, 429, 200]
    assert (first.fired, second.fired) == (1, 1)
    assert first.exhausted and second.exhausted


def test_probability_with_a_seed_is_repeatable() -> None:
    def sequence(seed: int) -> list[bool]:
        rules = FaultSet([{"kind": "status", "probability": 0.3, "seed": seed}])
        return [rules.pick("status", "GET") is not None for _ in range(200)]

    first = sequence(7)
    assert first == sequence(7)
    assert first != sequence(8)
    assert 30 <= sum(first) <= 90  # about 30 % of 200
    capped = FaultSet([{"kind": "drop", "probability": 1, "seed": 1, "times": 3}])
    assert [capped.pick("execute", "POST") is not None for _ in range(5)] == [True, True, True, False, False]


def test_probability_over_http(client: httpx.Client, server: SandboxServer) -> None:
    rule = {"route": "workflow", "kind": "status", "status": 500, "probability": 0.5, "seed": 42}
    server.faults.add(rule)
    first = [client.get(f"/workflow/{WORKFLOW}").status_code for _ in range(20)]
    server.faults.clear()
    server.faults.add(rule)
    assert [client.get(f"/workflow/{WORKFLOW}").status_code for _ in range(20)] == first
    assert 500 in first and 200 in first


# --- rule sources ---------------------------------------------------------------------------------


def test_faults_over_http(server: SandboxServer, client: httpx.Client) -> None:
    added = httpx.post(
        f"{server.base_url}/_sandbox/faults",
        json=[{"route": "initiate", "kind": "status", "status": 500, "times": 1}],
    )
    assert added.status_code == 200
    assert added.json()["faults"][0] == {
        "route": "initiate",
        "kind": "status",
        "status": 500,
        "body": "json",
        "times": 1,
        "seen": 0,
        "fired": 0,
    }
    assert client.post("/job/initiate", json={"workflowId": WORKFLOW, "title": "t"}).status_code == 500
    listed = httpx.get(f"{server.base_url}/_sandbox/faults").json()["faults"]
    assert listed[0]["fired"] == 1
    assert httpx.get(f"{server.base_url}/_sandbox/stats").json()["faults"][0]["fired"] == 1
    bad = httpx.post(f"{server.base_url}/_sandbox/faults", json=[{"kind": "drop"}, {"kind": "explode"}])
    assert bad.status_code == 400
    assert bad.json()["message"] == [
        "rule 1: 'kind' must be one of status, rate_limit, delay, drop, lose_response, inner_error, "
        "trickle, gzip_bomb, deep_json, nan, duplicate, "
        "found 'explode'"
    ]
    assert len(server.faults) == 1  # a bad list adds nothing
    assert httpx.post(f"{server.base_url}/_sandbox/faults", content=b"nope").status_code == 400
    assert httpx.delete(f"{server.base_url}/_sandbox/faults").json() == {"faults": []}
    assert len(server.faults) == 0


def test_faults_from_the_fixture_and_from_a_file(tmp_path: Path, opus_sandbox_factory: Any) -> None:
    rules = tmp_path / "faults.yaml"
    rules.write_text("faults:\n  - {route: status, kind: status, status: 502, times: 1}\n")
    fixture = {
        **FIXTURE,
        "faults": [{"route": "workflow", "kind": "rate_limit", "retry_after": 1, "times": 1}],
    }
    sandbox = opus_sandbox_factory(fixture, faults=rules)
    assert [r.kind for r in sandbox.faults.rules] == ["rate_limit", "status"]
    with httpx.Client(base_url=sandbox.base_url, headers={"x-service-key": sandbox.key}) as c:
        assert c.get(f"/workflow/{WORKFLOW}").status_code == 429
        job = c.post("/job/initiate", json={"workflowId": WORKFLOW, "title": "t"}).json()["jobExecutionId"]
        assert c.get(f"/job/{job}/status").status_code == 502
        assert c.get(f"/job/{job}/status").status_code == 200
    as_json = tmp_path / "faults.json"
    as_json.write_text(json.dumps([{"kind": "drop", "route": "execute"}]))
    assert load_faults_file(as_json)[0].route == "execute"
    in_process = opus_sandbox_factory(FIXTURE, faults=[{"kind": "delay", "seconds": 0.01}])
    assert in_process.faults.rules[0].seconds == 0.01


def test_faults_file_errors_name_the_file_and_rule(tmp_path: Path) -> None:
    bad = tmp_path / "faults.yaml"
    bad.write_text("faults:\n  - {kind: drop}\n  - {kind: status, status: 200}\n")
    with pytest.raises(
        ConfigError, match=r"faults\.yaml: faults\[1\]: 'status' must be an HTTP error status"
    ):
        load_faults_file(bad)
    with pytest.raises(ConfigError, match="cannot read the faults file"):
        load_faults_file(tmp_path / "missing.yaml")
    (tmp_path / "odd.yaml").write_text("rules: []\n")
    with pytest.raises(ConfigError, match="a mapping with a 'faults:' list"):
        load_faults_file(tmp_path / "odd.yaml")
    (tmp_path / "broken.json").write_text("[")
    with pytest.raises(ConfigError, match="not valid json"):
        load_faults_file(tmp_path / "broken.json")
    with pytest.raises(ConfigError, match=r"faults\[0\]: 'route' must be"):
        SandboxServer(FIXTURE, faults=[{"kind": "drop", "route": "exec"}])


@pytest.mark.parametrize(
    ("rule", "field", "message"),
    [
        ({"kind": "status", "colour": "red"}, "colour", "unknown field 'colour'"),
        ({}, "kind", "'kind' must be one of"),
        ({"kind": "status", "route": "nope"}, "route", "'route' must be '*' or one of"),
        ({"kind": "status", "method": "PATCH"}, "method", "'method' must be one of"),
        ({"kind": "status", "status": "503"}, "status", "from 400 to 599"),
        ({"kind": "drop", "status": 500}, "status", "only applies to kinds 'status' and 'inner_error'"),
        ({"kind": "inner_error", "status": 500}, "status", "'status' must be from 200 to 299"),
        ({"kind": "inner_error", "variant": "boom"}, "variant", "success_false, error_object"),
        ({"kind": "inner_error", "inner_status": 200}, "inner_status", "from 400 to 599"),
        ({"kind": "inner_error", "message": ""}, "message", "non-empty string"),
        ({"kind": "inner_error", "process": "yes"}, "process", "true or false"),
        ({"kind": "status", "variant": "success_false"}, "variant", "only applies to kind 'inner_error'"),
        ({"kind": "status", "body": "xml"}, "body", "'body' must be one of json, html, empty"),
        ({"kind": "rate_limit", "retry_after": "soon"}, "retry_after", "HTTP date"),
        ({"kind": "rate_limit", "retry_after": -1}, "retry_after", "must not be negative"),
        ({"kind": "delay"}, "seconds", "needs 'seconds'"),
        ({"kind": "delay", "seconds": "fast"}, "seconds", "'seconds' is not valid"),
        ({"kind": "drop", "times": 0}, "times", "at least 1"),
        ({"kind": "drop", "every": True}, "every", "at least 1"),
        ({"kind": "drop", "probability": 1.5}, "probability", "from 0 to 1"),
        ({"kind": "drop", "seed": "x"}, "seed", "whole number"),
        ({"kind": "trickle"}, "seconds", "a 'trickle' rule needs 'seconds'"),
        ({"kind": "status", "seconds": 1}, "seconds", "only applies to kinds delay, trickle"),
        ({"kind": "gzip_bomb", "size": 0}, "size", "at least 1"),
        ({"kind": "deep_json", "depth": "deep"}, "depth", "at least 1"),
        ({"kind": "nan", "depth": 3}, "depth", "only applies to kind 'deep_json'"),
        ({"kind": "deep_json", "size": 3}, "size", "only applies to kind 'gzip_bomb'"),
        ({"kind": "nan", "process": True}, "process", "only applies to kinds"),
    ],
)
def test_rule_validation(rule: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(FaultRuleError) as info:
        parse_rule(rule)
    assert info.value.field == field
    assert message in str(info.value)


def test_fault_set_api() -> None:
    rules = FaultSet()
    rule = rules.add({"kind": "status", "route": "execute", "method": "post"})
    assert rule.method == "POST" and rules.rules == [rule] and repr(rules) == "FaultSet(1 rule)"
    with pytest.raises(TypeError):
        rules.add({"kind": "drop"}, times=1)
    assert rules.pick("status", "GET") is None and rules.pick("execute", "GET") is None
    assert rules.pick("execute", "POST") is rule and rule.fired == 1 and rule.seen == 1
    rules.clear()
    assert rules.pick("execute", "POST") is None and len(rules) == 0


# -- hostile answers: each over real HTTP, read with a plain client that has no defences -------


def test_trickle_sends_the_real_answer_one_byte_at_a_time(server: SandboxServer, client: httpx.Client) -> None:
    job_id = initiate(client)
    rule = server.faults.add(route="status", kind="trickle", seconds=0.01, times=1)
    with client.stream("GET", f"/job/{job_id}/status") as response:
        chunks = list(response.iter_raw())
    assert len(chunks) > 10 and all(len(chunk) == 1 for chunk in chunks)
    assert json.loads(b"".join(chunks)) == {"status": "PENDING"}
    assert rule.as_dict()["seconds"] == 0.01 and rule.fired == 1


def test_trickle_stops_when_the_client_leaves(server: SandboxServer) -> None:
    """The sandbox does not dribble on to a closed connection (it would outlive the test)."""
    server.faults.add(route="search", kind="trickle", seconds=0.05)
    with httpx.Client(base_url=server.base_url, headers={"x-service-key": server.key}) as c:
        with c.stream("GET", "/job/search") as response:
            next(response.iter_raw())
    assert server.faults.rules[0].fired == 1


def test_gzip_bomb_inflates_far_beyond_its_size(server: SandboxServer, client: httpx.Client) -> None:
    server.faults.add(route="workflow", kind="gzip_bomb", size=8 * 1024 * 1024, times=1)
    with client.stream("GET", f"/workflow/{WORKFLOW}") as response:
        assert response.headers["content-encoding"] == "gzip"
        sent = int(response.headers["content-length"])
        inflated = sum(len(chunk) for chunk in response.iter_bytes())
    assert inflated == 8 * 1024 * 1024 and sent < inflated // 500
    assert server.state.count("GET", "workflow") == 1


def test_deep_json_nests_depth_levels(server: SandboxServer, client: httpx.Client) -> None:
    server.faults.add(route="workflow", kind="deep_json", depth=50, times=1)
    body = client.get(f"/workflow/{WORKFLOW}").text
    assert body == "[" * 50 + "]" * 50
    server.faults.add(route="workflow", kind="deep_json", times=1)
    with pytest.raises(RecursionError):
        json.loads(client.get(f"/workflow/{WORKFLOW}").text)


def test_nan_spoils_the_numbers_of_a_real_answer(server: SandboxServer, client: httpx.Client) -> None:
    initiate(client)
    server.faults.add(route="search", kind="nan", times=1)
    text = client.get("/job/search", params={"maxResults": 5}).text
    assert "NaN" in text
    spoiled = json.loads(text)  # Python reads the literals; strict JSON parsers do not
    assert all(v != v or v in (float("inf"), float("-inf")) for v in _numbers(spoiled))
    clean = json.loads(client.get("/job/search", params={"maxResults": 5}).text)
    assert len(list(_numbers(clean))) == len(list(_numbers(spoiled))) > 0


def _numbers(value: Any) -> Iterator[float]:
    if isinstance(value, dict):
        for item in value.values():
            yield from _numbers(item)
    elif isinstance(value, list):
        for item in value:
            yield from _numbers(item)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield value
