"""The sandbox's callbacks over real loopback HTTP: their delay, and the faults that drop, delay or
duplicate them, as a model for testing a callback receiver.

A small ``http.server`` receiver records each arrival with its ``time.monotonic()``; the sandbox
runs in this process, so an arrival is compared with the job's own end (``Job.ends_at``, the
same clock). Only lower bounds are asserted: a callback is never early, however slow the machine.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from conftest import wait_for
from opus_runner.cli import main as opus_run
from opus_runner.errors import ConfigError, format_key
from opus_runner.sandbox import SandboxServer
from opus_runner.sandbox.faults import FaultRuleError, FaultSet, parse_rule
from opus_runner.sandbox.fixture import DEFAULT_CALLBACK_DELAY, FixtureError, load_fixture


def wid(name: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{name}.callbacks.test"))


INPUTS = [{"variable_name": "in_title", "display_name": "Title", "type": "str"}]
OUTPUTS = {"summary": "Hello {{ inputs.Title }}"}
QUICK, LATE, PROMPT = wid("quick"), wid("late"), wid("prompt")
FIXTURE: dict[str, Any] = {
    "callback_delay": "300ms",
    "workflows": {
        QUICK: {"duration": "100ms", "inputs": INPUTS, "outputs": OUTPUTS},
        LATE: {"duration": "100ms", "callback_delay": 0.6, "inputs": INPUTS, "outputs": OUTPUTS},
        PROMPT: {"duration": 0, "callback_delay": 0, "inputs": INPUTS, "outputs": OUTPUTS},
    },
}


@dataclass
class Arrival:
    at: float  # time.monotonic() when the POST was read
    body: dict[str, Any]


@dataclass
class Receiver:
    """A loopback receiver that records every POST and answers ``status``."""

    url: str
    arrivals: list[Arrival] = field(default_factory=list)
    status: int = 204

    def bodies(self) -> list[dict[str, Any]]:
        return [a.body for a in self.arrivals]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    recorder = Receiver(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # http.server's naming
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            recorder.arrivals.append(Arrival(time.monotonic(), body))
            self.send_response(recorder.status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    recorder.url = f"http://127.0.0.1:{httpd.server_address[1]}/hook"
    try:
        yield recorder
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def server() -> Iterator[SandboxServer]:
    with SandboxServer(FIXTURE) as sandbox:
        yield sandbox


def run(server: SandboxServer, workflow: str, callback: str, title: str = "T") -> str:
    """Initiate and execute a live job that calls ``callback`` back; its id."""
    headers = {"x-service-key": server.key}
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=10) as client:
        job = client.post("/job/initiate", json={"workflowId": workflow, "title": "Job"}).json()["jobExecutionId"]
        instance = {"in_title": {"value": title, "type": "str", "displayName": "Title"}}
        body = {"jobExecutionId": job, "jobPayloadSchemaInstance": instance, "callbackUrl": callback}
        response = client.post("/job/execute", json=body)
    assert response.status_code == 201, response.text
    return job


def settled(server: SandboxServer) -> bool:
    """Every callback scheduled so far is done (sent, failed or dropped, duplicates included)."""
    return server.app.callbacks.pending == 0


def ends_at(server: SandboxServer, job: str) -> float:
    end = server.state.jobs[job].ends_at
    assert end is not None
    return end


def closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


# --- the delay ----------------------------------------------------------------------------------


def test_a_callback_comes_the_fixture_delay_after_the_job_ends(server: SandboxServer, receiver: Receiver) -> None:
    quick = run(server, QUICK, receiver.url, "quick")
    late = run(server, LATE, receiver.url, "late")
    wait_for(lambda: len(receiver.arrivals) == 2 and settled(server))
    by_job = {a.body["jobExecutionId"]: a for a in receiver.arrivals}
    # the top-level callback_delay (300ms), and the workflow's own (0.6) overriding it
    assert by_job[quick].at >= ends_at(server, quick) + 0.3
    assert by_job[late].at >= ends_at(server, late) + 0.6
    # the body is unchanged: the job as it ended
    assert by_job[quick].body["status"] == "COMPLETED"
    assert by_job[quick].body["results"]["jobResultsPayloadSchema"]["summary"]["value"] == "Hello quick"
    assert set(by_job[late].body) == {"jobExecutionId", "status", "results"}
    stats = httpx.get(f"{server.base_url}/_sandbox/stats").json()
    assert stats["callbacks_sent"] == 2 and stats["callback_answers"] == {"204": 2}
    assert stats["callbacks_pending"] == 0
    assert stats["jobs"][quick]["callback_posts"] == 1


def test_the_default_delay_and_the_fixture_keys() -> None:
    plain = load_fixture({"workflows": {QUICK: {"duration": 0}}})
    assert plain.callback_delay == DEFAULT_CALLBACK_DELAY == 0.2
    assert plain.workflows[QUICK].callback_delay == 0.2
    fixture = load_fixture(FIXTURE)
    assert fixture.callback_delay == 0.3
    assert [fixture.workflows[w].callback_delay for w in (QUICK, LATE, PROMPT)] == [0.3, 0.6, 0.0]


def test_the_default_delay_over_http(receiver: Receiver) -> None:
    with SandboxServer({"workflows": {QUICK: {"duration": 0, "inputs": INPUTS}}}) as server:
        job = run(server, QUICK, receiver.url)
        wait_for(lambda: len(receiver.arrivals) == 1)
        assert receiver.arrivals[0].at >= ends_at(server, job) + 0.2


@pytest.mark.parametrize(
    ("fixture", "key"),
    [
        ({"callback_delay": "soon", "workflows": {QUICK: {}}}, "callback_delay"),
        ({"callback_delay": -1, "workflows": {QUICK: {}}}, "callback_delay"),
        ({"workflows": {QUICK: {"callback_delay": True}}}, f"workflows.{QUICK}.callback_delay"),
    ],
)
def test_a_bad_callback_delay_names_its_key(fixture: dict[str, Any], key: str) -> None:
    with pytest.raises(FixtureError) as caught:
        load_fixture(fixture)
    assert format_key(caught.value.key) == key
    assert "expected a duration such as 45s" in caught.value.message
    assert "the time from a job's end to its callback" in caught.value.message


def test_the_server_delay_overrides_every_delay_of_the_fixture(receiver: Receiver) -> None:
    with SandboxServer(FIXTURE, callback_delay="700ms") as server:
        job = run(server, PROMPT, receiver.url)  # its workflow says 0
        wait_for(lambda: len(receiver.arrivals) == 1)
        assert receiver.arrivals[0].at >= ends_at(server, job) + 0.7
        assert server.app.callbacks.delay_for(server.state.jobs[job]) == pytest.approx(0.7)
    with pytest.raises(ConfigError, match=r"^callback_delay: expected a duration .* found 'later'; give the time"):
        SandboxServer(FIXTURE, callback_delay="later")


def test_opus_run_sandbox_takes_a_callback_delay(tmp_path: Path, receiver: Receiver) -> None:
    fixture = tmp_path / "workflows.json"
    fixture.write_text(json.dumps(FIXTURE))
    command = [sys.executable, "-m", "opus_runner", "sandbox", "--port", "0", "--key", "sk-sandbox-cb"]
    command += ["--workflows", str(fixture), "--callback-delay", "0.8s"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) as proc:
        try:
            assert proc.stdout is not None
            base = proc.stdout.readline().strip().rsplit(" ", 1)[1]
            proc.stdout.readline()
            headers = {"x-service-key": "sk-sandbox-cb"}
            job = httpx.post(f"{base}/job/initiate", json={"workflowId": PROMPT, "title": "Job"}, headers=headers).json()
            instance = {"in_title": {"value": "T", "type": "str", "displayName": "Title"}}
            body = {
                "jobExecutionId": job["jobExecutionId"],
                "jobPayloadSchemaInstance": instance,
                "callbackUrl": receiver.url,
            }
            sent = time.monotonic()  # the job (duration 0) ends no earlier than this
            assert httpx.post(f"{base}/job/execute", json=body, headers=headers).status_code == 201
            wait_for(lambda: len(receiver.arrivals) == 1)
            assert receiver.arrivals[0].at >= sent + 0.8
        finally:
            proc.terminate()
            proc.communicate(timeout=10)


def test_a_bad_callback_delay_flag_is_one_usage_error() -> None:
    result = CliRunner().invoke(opus_run, ["sandbox", "--callback-delay", "soon"])
    assert result.exit_code == 2
    assert "Invalid value for '--callback-delay': expected a duration such as 45s" in result.output
    assert "Traceback" not in result.output


# --- faults on the callback route ---------------------------------------------------------------


def test_a_drop_rule_drops_the_first_callbacks(server: SandboxServer, receiver: Receiver) -> None:
    added = httpx.post(
        f"{server.base_url}/_sandbox/faults", json=[{"route": "callback", "kind": "drop", "times": 2}]
    )
    assert added.status_code == 200, added.text
    jobs = [run(server, PROMPT, receiver.url, f"job {n}") for n in range(3)]
    wait_for(lambda: server.state.callbacks_dropped + server.state.callbacks_sent == 3 and settled(server))
    assert len(receiver.arrivals) == 1
    dropped = [j for j in jobs if server.state.jobs[j].callback_dropped]
    assert len(dropped) == 2 and receiver.arrivals[0].body["jobExecutionId"] not in dropped
    assert all(server.state.jobs[j].callback_posts == 0 for j in dropped)
    stats = httpx.get(f"{server.base_url}/_sandbox/stats").json()
    assert (stats["callbacks_dropped"], stats["callbacks_sent"], stats["callbacks_failed"]) == (2, 1, 0)
    assert stats["faults"][0]["fired"] == 2


def test_a_delay_rule_holds_the_callback_back(server: SandboxServer, receiver: Receiver) -> None:
    server.faults.add(route="callback", kind="delay", seconds=0.6)
    job = run(server, PROMPT, receiver.url)  # no callback_delay of its own
    wait_for(lambda: len(receiver.arrivals) == 1)
    assert receiver.arrivals[0].at >= ends_at(server, job) + 0.6
    wait_for(lambda: server.state.callbacks_sent == 1)


def test_a_duplicate_rule_sends_the_same_callback_twice_gap_apart(
    server: SandboxServer, receiver: Receiver
) -> None:
    server.faults.add(route="callback", kind="duplicate", gap="400ms", times=1)
    twice = run(server, PROMPT, receiver.url, "twice")
    wait_for(lambda: len(receiver.arrivals) == 2 and settled(server))
    first, second = receiver.arrivals
    assert first.body == second.body and first.body["jobExecutionId"] == twice
    assert second.at >= first.at + 0.4
    once = run(server, PROMPT, receiver.url, "once")  # the rule fired its one time
    wait_for(lambda: len(receiver.arrivals) == 3 and settled(server))
    assert receiver.arrivals[2].body["jobExecutionId"] == once
    assert server.state.jobs[twice].callback_posts == 2 and server.state.jobs[once].callback_posts == 1
    stats = httpx.get(f"{server.base_url}/_sandbox/stats").json()
    assert (stats["callbacks_sent"], stats["callbacks_duplicated"]) == (3, 1)


def test_a_duplicate_to_a_receiver_that_is_down_fails_twice(server: SandboxServer) -> None:
    server.faults.add(route="callback", kind="duplicate", gap=0)
    job = run(server, PROMPT, f"http://127.0.0.1:{closed_port()}/hook")
    wait_for(lambda: settled(server) and server.state.callbacks_failed == 2)
    assert server.state.callbacks_duplicated == 1 and server.state.callbacks_sent == 0
    assert server.state.jobs[job].callback_posts == 2


def test_a_star_rule_never_faults_callbacks(server: SandboxServer, receiver: Receiver) -> None:
    job = run(server, LATE, receiver.url)
    server.faults.add(route="*", kind="drop")  # every API call from now on; not the callback
    wait_for(lambda: len(receiver.arrivals) == 1)
    assert receiver.arrivals[0].body["jobExecutionId"] == job
    assert server.state.callbacks_dropped == 0 and server.faults.rules[0].seen == 0


def test_fixture_faults_apply_to_callbacks(receiver: Receiver) -> None:
    fixture = {**FIXTURE, "faults": [{"route": "callback", "kind": "drop"}]}
    with SandboxServer(fixture) as server:
        run(server, PROMPT, receiver.url)
        wait_for(lambda: server.state.callbacks_dropped == 1 and settled(server))
        assert receiver.arrivals == []


# --- one attempt per job, and the counters --------------------------------------------------------


def test_one_post_per_job_whatever_the_receiver_answers(server: SandboxServer, receiver: Receiver) -> None:
    receiver.status = 500
    answered = run(server, PROMPT, receiver.url)
    down = run(server, PROMPT, f"http://127.0.0.1:{closed_port()}/hook")
    skipped = run(server, PROMPT, "https://example.com/hook")
    wait_for(lambda: settled(server) and server.state.callbacks_failed == 1)
    assert len(receiver.arrivals) == 1  # a 500 is an answer: no second try
    assert [server.state.jobs[j].callback_posts for j in (answered, down, skipped)] == [1, 1, 0]
    stats = httpx.get(f"{server.base_url}/_sandbox/stats").json()
    assert stats["callbacks_sent"] == 1 and stats["callback_answers"] == {"500": 1}
    assert (stats["callbacks_failed"], stats["callbacks_skipped"], stats["callbacks_dropped"]) == (1, 1, 0)
    assert httpx.post(f"{server.base_url}/_sandbox/reset").status_code == 200
    reset = httpx.get(f"{server.base_url}/_sandbox/stats").json()
    assert [reset[k] for k in ("callbacks_sent", "callbacks_failed", "callbacks_skipped")] == [0, 0, 0]
    assert reset["callback_answers"] == {} and reset["callbacks_duplicated"] == 0


def test_a_deleted_job_is_not_called_back(server: SandboxServer, receiver: Receiver) -> None:
    job = run(server, LATE, receiver.url)
    response = httpx.delete(f"{server.base_url}/job/{job}/delete", headers={"x-service-key": server.key})
    assert response.status_code == 200
    assert settled(server)
    other = run(server, PROMPT, receiver.url)  # a later callback arrives; the deleted job's never
    wait_for(lambda: len(receiver.arrivals) == 1 and settled(server))
    assert receiver.bodies()[0]["jobExecutionId"] == other
    # deleted while its callback is under way (held back by a delay rule): it never arrives either
    server.faults.add(route="callback", kind="delay", seconds=30)
    held = run(server, PROMPT, receiver.url)
    wait_for(lambda: held in server.app.callbacks._tasks)
    assert httpx.get(f"{server.base_url}/_sandbox/stats").json()["callbacks_pending"] == 1  # not done yet
    assert httpx.delete(f"{server.base_url}/job/{held}/delete", headers={"x-service-key": server.key}).status_code == 200
    wait_for(lambda: settled(server))
    assert len(receiver.arrivals) == 1


# --- rules for the callback route ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "field_name", "message"),
    [
        (
            {"route": "callback", "kind": "status", "status": 502},
            "kind",
            "the 'callback' route is the sandbox's own POST to a job's callbackUrl, so it takes only "
            "kinds drop, delay, duplicate, not 'status'",
        ),
        ({"route": "callback", "kind": "lose_response"}, "kind", "takes only kinds drop, delay, duplicate"),
        ({"route": "execute", "kind": "duplicate"}, "kind", "kind 'duplicate' only applies to route 'callback'"),
        ({"kind": "duplicate"}, "kind", "kind 'duplicate' only applies to route 'callback'"),
        ({"route": "callback", "kind": "drop", "method": "POST"}, "method", "'method' does not apply"),
        ({"route": "callback", "kind": "drop", "gap": 1}, "gap", "'gap' only applies to kind 'duplicate'"),
        ({"route": "callback", "kind": "duplicate", "gap": "often"}, "gap", "'gap' is not valid"),
        ({"route": "callback", "kind": "delay"}, "seconds", "a 'delay' rule needs 'seconds'"),
    ],
)
def test_callback_rules_are_checked(rule: dict[str, Any], field_name: str, message: str) -> None:
    with pytest.raises(FaultRuleError) as caught:
        parse_rule(rule)
    assert caught.value.field == field_name
    assert message in str(caught.value)


def test_a_bad_callback_rule_in_a_fixture_names_its_key() -> None:
    with pytest.raises(FixtureError) as caught:
        load_fixture({**FIXTURE, "faults": [{"route": "callback", "kind": "status"}]})
    assert format_key(caught.value.key) == "faults[0].kind"


def test_callback_rules_list_their_fields_and_match_only_callbacks() -> None:
    faults = FaultSet([{"route": "callback", "kind": "duplicate", "times": 1}, {"route": "callback", "kind": "drop"}])
    assert faults.as_list()[0] == {"route": "callback", "kind": "duplicate", "gap": 1.0, "times": 1, "seen": 0, "fired": 0}
    assert faults.pick("execute", "POST") is None
    assert [faults.pick("callback", "POST").kind for _ in range(2)] == ["duplicate", "drop"]  # type: ignore[union-attr]
