"""Runs on Temporal (issue 15), end to end: a real dev server, workers in subprocesses, the
sandbox as Opus over loopback HTTP. Every exactly-once claim is counted at the sandbox
(``state.executes`` per job id, each job's title marker naming its plan key) and in the outputs.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import Project, header, wait_for
from temporal_support import DevServer, Ran, Worker, need_temporal, run_cli

pytestmark = pytest.mark.timeout(300)

NDJSON = "outputs: [{type: ndjson, path: out.ndjson}]\n"


@pytest.fixture(scope="module")
def temporal_binary() -> str:
    return need_temporal()


@pytest.fixture(autouse=True)
def short_request_deadline(request: pytest.FixtureRequest) -> None:
    """A retried step waits out its lost attempt's requests (the whole-answer deadline): 5 s
    here, so the chaos tests do not wait the default minute."""
    if "project" in request.fixturenames:
        project = request.getfixturevalue("project")
        with (project.root / "opus-runner.toml").open("a") as toml:
            toml.write('[timeouts]\nrequest = "5s"\n')


@pytest.fixture
def server(temporal_binary: str, tmp_path: Path) -> Iterator[DevServer]:
    dev = DevServer(temporal_binary, tmp_path).start()
    try:
        yield dev
    finally:
        dev.stop()


def worker_env(project: Project) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPUS_", "TEMPORAL_"))}
    env.update(project.env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    return env


def start_worker(server: DevServer, project: Project, *args: str, name: str = "worker") -> Worker:
    return Worker(server, project.root, worker_env(project), *args, name=name)


def batch(project: Project, rows: int, workflow: str = "quick", extra: str = NDJSON) -> Path:
    project.file("rows.csv", "q\n" + "".join(f"question {i}\n" for i in range(rows)))
    return project.spec(
        "batch.yaml", header("batch", workflow, "foreach: {file: rows.csv}\ninputs:\n  Question: '{{ row.q }}'\n" + extra)
    )


def cli(project: Project, *args: str | Path, env: dict[str, str] | None = None) -> Ran:
    """An engine command, in a process of its own (temporal_support.run_cli says why)."""
    return run_cli(project.root, {**project.env, **(env or {})}, *map(str, args))


def submit(project: Project, server: DevServer, spec: Path, *args: str) -> Ran:
    return cli(project, "submit", spec, "--engine", "temporal", "--temporal-address", server.address, "--heartbeat-timeout", "2", *args)


def wait_run(project: Project, server: DevServer, run_id: str, *args: str) -> Ran:
    return cli(project, "wait", run_id, "--engine", "temporal", "--temporal-address", server.address, *args)


def executes_by_plan(project: Project) -> Counter[str]:
    """How many executes each plan key got, at the sandbox (by the job title's marker)."""
    from opus_runner.temporal.definition import title_marker  # noqa: F401

    state = project.sandbox.state
    counts: Counter[str] = Counter()
    for job_id, count in state.executes.items():
        job = state.jobs[job_id]
        counts[job.title] += count
    return counts


def ndjson_lines(project: Project) -> list[dict[str, Any]]:
    path = project.root / "out.ndjson"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_batch_runs_on_a_worker_exactly_once(project: Project, server: DevServer) -> None:
    spec = batch(project, 5)
    with start_worker(server, project):
        result = submit(project, server, spec, "--run-id", "r1", "--chunk-size", "2")
        assert result.exit_code == 0, result.output
        assert "submitted run r1: 5 jobs in 3 chunks" in result.stdout
        done = wait_run(project, server, "r1")
    assert done.exit_code == 0, done.output
    assert "5 completed" in done.output
    titles = executes_by_plan(project)
    assert len(titles) == 5 and set(titles.values()) == {1}
    lines = ndjson_lines(project)
    assert sorted(line["plan_key"] for line in lines) == sorted({line["plan_key"] for line in lines})
    assert len(lines) == 5 and {line["status"] for line in lines} == {"COMPLETED"}


def test_the_same_run_submitted_twice_starts_nothing_new(project: Project, server: DevServer) -> None:
    spec = batch(project, 3)
    with start_worker(server, project):
        first = submit(project, server, spec, "--run-id", "twice")
        again = submit(project, server, spec, "--run-id", "twice")
        assert first.exit_code == 0 and again.exit_code == 0, again.output
        assert "submitted before" in again.stdout and "nothing new was started" in again.stdout
        assert wait_run(project, server, "twice").exit_code == 0
    assert len(executes_by_plan(project)) == 3
    assert len(ndjson_lines(project)) == 3


def test_a_run_id_reused_for_other_specs_is_refused(project: Project, server: DevServer) -> None:
    spec = batch(project, 2)
    assert submit(project, server, spec, "--run-id", "same").exit_code == 0
    project.file("rows.csv", "q\nsomething else\n")
    refused = submit(project, server, spec, "--run-id", "same")
    assert refused.exit_code == 2
    assert "run id same is already used" in refused.output and "Traceback" not in refused.output


def test_nothing_starts_when_a_job_is_invalid(project: Project, server: DevServer) -> None:
    spec = project.spec("bad.yaml", header("bad", "quick", "inputs:\n  Nope: 1\n"))
    result = submit(project, server, spec, "--run-id", "bad")
    assert result.exit_code == 2, result.output
    missing = cli(project, "status", "bad", "--engine", "temporal", "--temporal-address", server.address)
    assert missing.exit_code == 2 and "no run 'bad'" in missing.output


def test_no_server_at_the_address_is_one_sentence(project: Project) -> None:
    spec = batch(project, 1)
    from temporal_support import free_port

    need_temporal()
    result = cli(project, "submit", spec, "--engine", "temporal", "--temporal-address", f"127.0.0.1:{free_port()}")
    assert result.exit_code == 3, result.output
    assert "no Temporal server answers at 127.0.0.1:" in result.output
    assert "temporal server start-dev" in result.output and "Traceback" not in result.output


# -- chaos: every plan key executed once, every output delivered once ---------------------------


def assert_exactly_once(project: Project, jobs: int) -> None:
    titles = executes_by_plan(project)
    assert len(titles) == jobs, titles
    assert set(titles.values()) == {1}, {t: n for t, n in titles.items() if n != 1}
    # and no job initiated but never executed was left behind unreported: every initiated job
    # of the run was executed (a reused job found by its marker counts once)
    state = project.sandbox.state
    assert all(job_id in state.executes for job_id in state.jobs), "a job was initiated and never executed"
    lines = ndjson_lines(project)
    assert Counter(line["plan_key"] for line in lines).most_common(1)[0][1] == 1
    assert len(lines) == jobs and {line["status"] for line in lines} == {"COMPLETED"}


def executed(project: Project) -> int:
    return len(project.sandbox.state.executes)


@pytest.mark.slow
def test_a_worker_killed_mid_batch_loses_and_repeats_nothing(project: Project, server: DevServer) -> None:
    spec = batch(project, 30, workflow="medium")
    first = start_worker(server, project, "--concurrency", "4", name="first")
    second = start_worker(server, project, "--concurrency", "4", name="second")
    try:
        assert submit(project, server, spec, "--run-id", "kill9", "--chunk-size", "10").exit_code == 0
        wait_for(lambda: executed(project) >= 6, timeout=60)
        first.kill()
        done = wait_run(project, server, "kill9")
    finally:
        first.kill()
        second.stop()
    assert done.exit_code == 0, done.output
    assert_exactly_once(project, 30)


@pytest.mark.slow
def test_a_worker_lost_right_after_its_execute_reached_opus_never_resends(project: Project, server: DevServer) -> None:
    spec = batch(project, 4)
    # The first execute is processed, then answered one byte a second: its worker is killed
    # while it waits, after Opus has the payload and before the engine heard of it.
    project.sandbox.faults.add({"route": "execute", "kind": "trickle", "seconds": 1, "times": 1})
    first = start_worker(server, project, "--concurrency", "1", name="first")
    try:
        assert submit(project, server, spec, "--run-id", "crash", "--chunk-size", "4").exit_code == 0
        wait_for(lambda: executed(project) >= 1, timeout=60)
        first.kill()
    finally:
        first.kill()
    with start_worker(server, project, name="second"):
        done = wait_run(project, server, "crash")
    assert done.exit_code == 0, done.output
    assert_exactly_once(project, 4)


@pytest.mark.slow
def test_the_temporal_server_killed_and_restarted_on_its_file(project: Project, server: DevServer) -> None:
    spec = batch(project, 20, workflow="medium")
    with start_worker(server, project, "--concurrency", "4"):
        assert submit(project, server, spec, "--run-id", "server", "--chunk-size", "5").exit_code == 0
        wait_for(lambda: executed(project) >= 4, timeout=60)
        server.kill()
        time.sleep(1)  # the workers see the server gone (what is being tested is the gap)
        server.start()
        done = wait_run(project, server, "server")
    assert done.exit_code == 0, done.output
    assert_exactly_once(project, 20)


@pytest.mark.slow
def test_the_api_rate_holds_across_two_workers(project: Project, server: DevServer) -> None:
    from opus_runner.temporal.definition import CALLS_PER_JOB_STEP, SLICE

    spec = batch(project, 40)
    rate = 2.0 * SLICE  # calls a second: one step a second on the task queue
    steps_per_second = rate / (CALLS_PER_JOB_STEP * SLICE)
    step_jobs = 10  # --chunk-size 10: each step takes 10 jobs
    with start_worker(server, project, "--api-rate", str(rate), name="first"), start_worker(
        server, project, "--api-rate", str(rate), name="second"
    ):
        started = time.monotonic()
        assert submit(project, server, spec, "--run-id", "rate", "--chunk-size", str(step_jobs)).exit_code == 0
        done = wait_run(project, server, "rate")
        elapsed = time.monotonic() - started
    assert done.exit_code == 0, done.output
    calls = sum(n for (method, route), n in project.sandbox.state.requests.items() if route != "workflow")
    assert calls >= 4 * 40  # initiate, execute, status, results
    # 12 steps (4 chunks x initiate, execute, check) at one a second, each of at most 2 calls
    # per job: what the steps the server handed out in `elapsed` could make, and a second's
    # worth of the server's bucket. Unlimited, the 160 calls come in a second or two and fail this.
    allowed_steps = steps_per_second * elapsed + 2
    assert calls <= CALLS_PER_JOB_STEP * step_jobs * allowed_steps, (calls, elapsed)
    assert_exactly_once(project, 40)


KILLER_PLUGIN = '''
import os, signal
from pathlib import Path
from opus_runner import hookimpl


def die_once(result, config, ctx):
    """Kill this worker the first time, after the outputs before it were written."""
    mark = Path(config["mark"])
    keys = Path(config["keys"])
    with keys.open("a") as handle:
        handle.write(f"{ctx.idempotency_key}\\n")
    if not mark.exists():
        mark.write_text("died")
        os.kill(os.getpid(), signal.SIGKILL)


@hookimpl
def opus_register_outputs(register):
    register("die_once", die_once)
'''


@pytest.mark.slow
def test_outputs_redelivered_after_a_crash_are_written_once(project: Project, server: DevServer) -> None:
    (project.root / "plugins").mkdir()
    (project.root / "plugins" / "killer.py").write_text(KILLER_PLUGIN)
    outputs = (
        "outputs:\n  - {type: ndjson, path: out.ndjson}\n"
        f"  - {{type: die_once, mark: {project.root / 'died'}, keys: {project.root / 'keys.txt'}}}\n"
    )
    spec = project.spec("one.yaml", header("one", "quick", "inputs:\n  Question: q\n" + outputs))
    first = start_worker(server, project, name="first")
    try:
        assert submit(project, server, spec, "--run-id", "redeliver").exit_code == 0
        wait_for(lambda: (project.root / "died").exists() and first.process.poll() is not None, timeout=60)
    finally:
        first.kill()
    with start_worker(server, project, name="second"):
        done = wait_run(project, server, "redeliver")
    assert done.exit_code == 0, done.output
    assert len(ndjson_lines(project)) == 1  # written by both attempts' ndjson, kept once
    # the same idempotency key both times: run id, plan key, target
    keys = (project.root / "keys.txt").read_text().split()
    assert keys == ["redeliver:one:outputs[1]:die_once"] * 2
    assert_exactly_once(project, 1)


LIBRARY_SCRIPT = """
import asyncio, json, os, sys
import opus_runner

async def go():
    handle = await opus_runner.submit(
        [sys.argv[1]], engine=opus_runner.EngineOptions(address=sys.argv[2]), run_id="lib",
        base_url=os.environ["OPUS_BASE_URL"], service_key=os.environ["OPUS_SERVICE_KEY"],
    )
    report = await handle.wait()
    return {"submitted": [handle.run_id, handle.jobs, handle.started], "exit_code": report.exit_code,
            "statuses": sorted(o.status for o in report.outcomes), "job_ids": [o.job_id for o in report.outcomes]}

print(json.dumps(asyncio.run(go())), flush=True)
os._exit(0)  # past the teardown of Temporal's runtime threads (temporalio/sdk-python#300)
"""


def test_the_library_submits_and_waits(project: Project, server: DevServer) -> None:
    import subprocess

    spec = batch(project, 3)
    script = project.file("submit_and_wait.py", LIBRARY_SCRIPT)
    with start_worker(server, project):
        done = subprocess.run(
            [sys.executable, str(script), str(spec), server.address], cwd=project.root, env=worker_env(project),
            capture_output=True, text=True, timeout=200,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["submitted"] == ["lib", 3, 1]
    assert found["exit_code"] == 0 and found["statuses"] == ["COMPLETED"] * 3 and all(found["job_ids"])


def test_status_while_running_then_cancel(project: Project, server: DevServer) -> None:
    spec = batch(project, 2, workflow="slow")
    with start_worker(server, project):
        assert submit(project, server, spec, "--run-id", "stop").exit_code == 0
        wait_for(lambda: executed(project) == 2, timeout=60)
        running = cli(project, "status", "stop", "--engine", "temporal", "--temporal-address", server.address)
        assert running.exit_code == 4, running.output  # not finished yet
        cancelled = cli(project, "cancel", "stop", "--engine", "temporal", "--temporal-address", server.address)
        assert cancelled.exit_code == 0, cancelled.output
        assert "documents no job cancel" in cancelled.output
        done = wait_run(project, server, "stop")
    assert done.exit_code == 1, done.output
    assert "the run was cancelled" in done.output
    assert not ndjson_lines(project)
    assert project.sandbox.state.requests.get(("GET", "results"), 0) == 0


def test_a_worker_whose_checkout_differs_refuses_the_job(project: Project, server: DevServer) -> None:
    spec = batch(project, 1)
    assert submit(project, server, spec, "--run-id", "drifted").exit_code == 0
    spec.write_text(spec.read_text() + "# edited on the worker\n")
    with start_worker(server, project):
        done = wait_run(project, server, "drifted")
    assert done.exit_code == 3, done.output
    assert "batch.yaml on this worker (sha256" in done.output and "is not the file run drifted was submitted with" in done.output
    assert not project.sandbox.state.jobs  # nothing was initiated from the other spec


def test_a_run_from_another_opus_runner_version_is_refused() -> None:
    from opus_runner.__about__ import __version__
    from opus_runner.temporal.activities import Final, check_checkout
    from opus_runner.temporal.definition import RunDefinition

    definition = RunDefinition("r", "0.0.1", [], {}, {})
    with pytest.raises(Final) as caught:
        check_checkout(Path("."), definition)
    assert f"submitted with opus-runner 0.0.1 and this worker runs {__version__}" in caught.value.message


SECRET = {"OPUS_RUNNER_CALLBACK_SECRET": "a-test-secret-of-enough-length"}


def test_callbacks_wake_engine_jobs_as_signals(project: Project, server: DevServer) -> None:
    import subprocess

    import httpx

    from temporal_support import free_port

    port = free_port()
    env = {**worker_env(project), **SECRET}
    log = (project.root / "receiver.log").open("ab")
    receiver = subprocess.Popen(
        [sys.executable, "-m", "opus_runner", "callbacks", "serve", "--engine", "temporal", "--temporal-address", server.address, "--port", str(port)],
        cwd=project.root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    log.close()
    try:
        wait_for(lambda: "listening on" in (project.root / "receiver.log").read_text(), timeout=60)
        # A job that is not woken would wait its 10-minute safety interval: only the signal ends it in time.
        wait = "wait: {mode: callback, safety_interval: 10m, timeout: 5m, poll_interval: 50ms}\n"
        spec = batch(project, 3, workflow="medium", extra=NDJSON + wait)
        with Worker(server, project.root, env):
            assert submit(project, server, spec, "--run-id", "called", "--callback-public-url", f"http://127.0.0.1:{port}").exit_code == 0
            done = wait_run(project, server, "called")
        assert done.exit_code == 0, done.output
        state = project.sandbox.state
        assert state.callbacks_sent == 3
        assert state.requests[("GET", "status")] <= 3 * (2 + 3)  # the first read, the woken one, at most 3 quick ones
        forged = httpx.post(f"http://127.0.0.1:{port}/callback/e30.AAAA", json={})
        assert forged.status_code == 404
        health = httpx.get(f"http://127.0.0.1:{port}/healthz").json()
        assert health["accepted"] == 3 and health["rejected"] == 1
    finally:
        receiver.terminate()
        receiver.wait(20)
    assert_exactly_once(project, 3)


def test_a_worker_without_the_shared_secret_says_so_for_a_run_woken_by_callbacks(project: Project, server: DevServer) -> None:
    spec = batch(project, 1, extra=NDJSON + "wait: {mode: callback, timeout: 1m}\n")
    with start_worker(server, project):  # no OPUS_RUNNER_CALLBACK_SECRET
        assert submit(project, server, spec, "--run-id", "nosecret", "--callback-public-url", "http://127.0.0.1:9").exit_code == 0
        done = wait_run(project, server, "nosecret")
    assert done.exit_code == 3, done.output
    assert "this worker has no OPUS_RUNNER_CALLBACK_SECRET to sign them with" in done.output
    assert not project.sandbox.state.executes  # nothing executed without its callback URL


def test_a_receiver_without_the_shared_secret_is_one_sentence(project: Project, server: DevServer) -> None:
    result = cli(
        project, "callbacks", "serve", "--engine", "temporal", "--temporal-address", server.address, "--port", "0",
        env={"OPUS_RUNNER_CALLBACK_SECRET": ""},
    )
    assert result.exit_code == 2, result.output
    assert "set OPUS_RUNNER_CALLBACK_SECRET" in result.output and "Traceback" not in result.output


def test_temporal_cloud_and_mtls_settings_come_from_temporals_own_variables(tmp_path: Path) -> None:
    need_temporal()
    from opus_runner import redact
    from opus_runner.errors import UsageError
    from opus_runner.temporal.runs import connection_settings

    assert connection_settings({}) == {}
    cloud = connection_settings({"TEMPORAL_API_KEY": "tk-cloud-key-0123456789"})
    assert cloud == {"api_key": "tk-cloud-key-0123456789", "tls": True}
    assert "tk-cloud-key-0123456789" not in redact.mask("key tk-cloud-key-0123456789")
    assert connection_settings({"TEMPORAL_TLS": "true"}) == {"tls": True}
    (tmp_path / "c.pem").write_bytes(b"CERT")
    (tmp_path / "k.pem").write_bytes(b"KEY")
    mtls = connection_settings({"TEMPORAL_TLS_CERT": str(tmp_path / "c.pem"), "TEMPORAL_TLS_KEY": str(tmp_path / "k.pem")})
    assert (mtls["tls"].client_cert, mtls["tls"].client_private_key) == (b"CERT", b"KEY")
    with pytest.raises(UsageError, match="go together"):
        connection_settings({"TEMPORAL_TLS_CERT": str(tmp_path / "c.pem")})
    with pytest.raises(UsageError, match="cannot be read"):
        connection_settings({"TEMPORAL_TLS_CERT": str(tmp_path / "none"), "TEMPORAL_TLS_KEY": str(tmp_path / "k.pem")})


def test_no_wait_submits_and_does_not_follow(project: Project, server: DevServer) -> None:
    spec = batch(project, 2, workflow="slow")
    with start_worker(server, project):
        assert submit(project, server, spec, "--run-id", "nowait", "--no-wait").exit_code == 0
        done = wait_run(project, server, "nowait")
    assert done.exit_code == 0, done.output
    state = project.sandbox.state
    assert len(state.executes) == 2 and state.requests.get(("GET", "status"), 0) == 0
    assert not ndjson_lines(project)


def test_an_engine_run_speaks_the_api_generation_it_was_submitted_with(project: Project, server: DevServer) -> None:
    spec = batch(project, 2)
    with start_worker(server, project):
        assert submit(project, server, spec, "--run-id", "v1run", "--api", "v1").exit_code == 0
        done = wait_run(project, server, "v1run")
    assert done.exit_code == 0, done.output
    calls = project.sandbox.state.api_requests
    # The workers' initiates, executes, status and results reads all went to the Case API.
    assert calls.get("v1", 0) >= 4 * 2 and calls.get("v0", 0) == 0, calls
    assert_exactly_once(project, 2)


def test_submit_refuses_the_sandbox_in_one_sentence(project: Project) -> None:
    need_temporal()
    spec = batch(project, 1)
    result = cli(project, "submit", spec, "--engine", "temporal", "--sandbox")
    assert result.exit_code == 2, result.output
    assert "--sandbox cannot serve an engine run" in result.output and "Traceback" not in result.output
