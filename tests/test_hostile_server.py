"""Nothing hangs and nothing crashes: hostile server answers and stuck plugins end in one sentence.

Over real loopback HTTP with the sandbox's hostile fault kinds (trickle, gzip_bomb, deep_json,
nan), a server that accepts connections and never answers, and plugins in the project's
plugins/ folder that never return. Every limit is configured short in opus-runner.toml, so no
test waits long; the child processes get a generous hang guard, never a timed assertion.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import sqlite3
import subprocess
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import WF, WORKFLOWS, Project, header, journal_jobs, make_project, opus_run

from opus_runner.client import OpusClient, RetryPolicy
from opus_runner.errors import NetworkError

NUMBERS = "00000000-0000-4000-8000-0000000000a1"
HOSTILE_WORKFLOWS: dict[str, Any] = {
    "workflows": {
        **WORKFLOWS["workflows"],
        NUMBERS: {
            "name": "Numbers",
            "duration": "0.1s",
            "inputs": [{"variable_name": "workflow_input_q", "display_name": "Question", "type": "str"}],
            "outputs": {
                "answer": "A {{ inputs.Question }}",
                "score": {"value": "2.5", "type": "float"},
                "count": {"value": "3", "type": "int"},
                "ratio": {"value": "0.5", "type": "float"},
            },
        },
    }
}
#: Generous: a child that is still running after this has hung.
HANG_GUARD = 120


@pytest.fixture
def hostile(tmp_path: Path, opus_sandbox_factory: Callable[..., Any]) -> Project:
    return make_project(tmp_path, opus_sandbox_factory, HOSTILE_WORKFLOWS)


def settings(project: Project, **timeouts: str) -> None:
    lines = ['state_dir = ".opus-run"', "[timeouts]", *(f'{k} = "{v}"' for k, v in timeouts.items())]
    (project.root / "opus-runner.toml").write_text("\n".join(lines) + "\n")


def ended(child: subprocess.Popen[str]) -> tuple[str, str]:
    """The child's output once it exits; a child that never exits fails the test (hang guard)."""
    try:
        return child.communicate(timeout=HANG_GUARD)
    except subprocess.TimeoutExpired:
        child.kill()
        out, err = child.communicate()
        pytest.fail(f"the run never exited:\n{out}\n{err}")


def quick_spec(project: Project, extra: str = "", workflow: str = "quick") -> Path:
    return project.spec("job.yaml", header("job", workflow, "inputs: {Question: hi}\n" + textwrap.dedent(extra)))


def strict_json(text: str) -> Any:
    """json.loads that refuses NaN and Infinity, as every JSON parser outside Python does."""

    def refuse(literal: str) -> Any:
        raise AssertionError(f"invalid JSON literal {literal} written")

    return json.loads(text, parse_constant=refuse)


# -- answers that never finish --------------------------------------------------------------


@pytest.mark.parametrize("route", ["status", "results"])
def test_an_answer_that_trickles_ends_the_run_with_a_clear_message(project: Project, route: str) -> None:
    settings(project, request="0.5s")
    spec = quick_spec(project)
    project.sandbox.faults.add(route=route, kind="trickle", seconds=1)
    result = project.run("run", str(spec))
    assert result.exit_code == 3, result.output
    assert "answered too slowly" in result.output
    assert f"GET /job/" in result.output and f"/{route}" in result.output
    assert "unexpected" not in result.output and "Traceback" not in result.output


def test_a_trickled_execute_is_settled_by_reading_the_job_and_never_resent(project: Project) -> None:
    settings(project, request="0.5s")
    spec = quick_spec(project)
    project.sandbox.faults.add(route="execute", kind="trickle", seconds=1)
    result = project.run("run", str(spec))
    assert result.exit_code == 0, result.output
    assert project.sandbox.state.count("POST", "execute") == 1


def test_a_trickled_execute_whose_job_cannot_be_read_is_left_unknown(project: Project) -> None:
    settings(project, request="0.5s")
    spec = quick_spec(project)
    project.sandbox.faults.add(route="execute", kind="trickle", seconds=1)
    project.sandbox.faults.add(route="status", kind="trickle", seconds=1)
    result = project.run("run", str(spec))
    assert result.exit_code == 3, result.output
    assert "answered too slowly" in result.output and "may or may not be running" in result.output
    assert project.sandbox.state.count("POST", "execute") == 1
    (row,) = journal_jobs(project)
    assert row["phase"] == "executing"  # resume asks the job; it never sends execute blindly


@pytest.fixture
def mute_server() -> Iterator[str]:
    """A server that accepts every connection and never answers a byte."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        listener.close()
        for conn in held:
            conn.close()


def test_an_unresponsive_server_is_reported_within_the_retry_budget(mute_server: str) -> None:
    """Without the budget every one of the 50 attempts would wait out its read timeout."""
    policy = RetryPolicy(attempts=50, base=0.01, cap=0.02, budget=1.0)

    async def go() -> NetworkError:
        async with OpusClient(mute_server, "k-unused", timeout=0.2, retry=policy) as client:
            with pytest.raises(NetworkError) as info:
                await client.get_workflow(WF["quick"])
            return info.value

    error = asyncio.run(go())
    attempts = int(re.search(r"after (\d+) attempts?", str(error)).group(1))  # type: ignore[union-attr]
    assert 1 <= attempts < 50
    assert "ReadTimeout (nothing for 0.2 s while answering; the retry budget is 1 s)" in str(error)


# -- answers that do not fit ----------------------------------------------------------------


def test_a_gzip_bomb_is_one_api_error_naming_the_route(project: Project) -> None:
    spec = quick_spec(project)
    project.sandbox.faults.add(route="workflow", kind="gzip_bomb")  # 2 GiB once inflated
    result = project.run("run", str(spec))
    assert result.exit_code == 3, result.output
    assert f"GET /workflow/{WF['quick']} failed" in result.output
    assert "larger than 64 MiB once decompressed" in result.output
    assert "MemoryError" not in result.output and "unexpected" not in result.output


@pytest.mark.parametrize("route", ["workflow", "results"])
def test_deeply_nested_json_is_one_api_error_naming_the_route(project: Project, route: str) -> None:
    spec = quick_spec(project)
    project.sandbox.faults.add(route=route, kind="deep_json")
    result = project.run("run", str(spec))
    assert result.exit_code == 3, result.output
    assert "nested too deeply" in result.output
    assert ("GET /workflow/" if route == "workflow" else "/results failed") in result.output
    assert "RecursionError" not in result.output and "unexpected" not in result.output


def test_nan_and_infinity_from_the_server_are_written_as_null(hostile: Project) -> None:
    spec = quick_spec(
        hostile,
        """\
        outputs:
          - {type: json, path: out/result.json}
          - {type: ndjson, path: out/results.ndjson}
        """,
        workflow=NUMBERS,
    )
    hostile.sandbox.faults.add(route="results", kind="nan")
    result = hostile.run("run", str(spec), "--format", "json")
    assert result.exit_code == 0, result.output

    written = strict_json((hostile.root / "out" / "result.json").read_text())
    assert written["outputs"] == {"answer": "A hi", "score": None, "count": None, "ratio": None}
    (line,) = (hostile.root / "out" / "results.ndjson").read_text().splitlines()
    assert strict_json(line)["outputs"]["score"] is None
    events = [strict_json(line) for line in result.stdout.splitlines() if line.startswith("{")]
    (completed,) = [e for e in events if e["event"] == "completed"]
    assert completed["outputs"]["count"] is None
    db = sqlite3.connect(hostile.root / ".opus-run" / "state.db")
    try:
        for (text,) in db.execute("SELECT result FROM jobs"):
            assert strict_json(text)["outputs"]["ratio"] is None
    finally:
        db.close()


def test_the_client_reads_nan_and_infinity_as_null(hostile: Project) -> None:
    hostile.sandbox.faults.add(route="results", kind="nan")

    async def go() -> dict[str, Any]:
        async with OpusClient(hostile.sandbox.base_url, hostile.sandbox.key) as client:
            job_id = await client.initiate(NUMBERS, title="nan")
            payload = {"workflow_input_q": {"value": "hi", "type": "str", "displayName": "Question"}}
            await client.execute(job_id, payload)
            while await client.status(job_id) != "COMPLETED":
                await asyncio.sleep(0.05)
            return (await client.results(job_id)).outputs

    assert asyncio.run(go()) == {"answer": "A hi", "score": None, "count": None, "ratio": None}


def test_a_plugin_supplied_nan_is_written_as_null(project: Project) -> None:
    (project.root / "plugins").mkdir()
    (project.root / "plugins" / "nan_maker.py").write_text(
        textwrap.dedent(
            """\
            from opus_runner import hookimpl

            @hookimpl
            def opus_job_event(event, ctx):
                if event.result is not None:
                    event.result.outputs["made"] = float("nan")
            """
        )
    )
    spec = quick_spec(project, "outputs: [{type: json, path: out/result.json}]\n")
    result = project.run("run", str(spec))
    assert result.exit_code == 0, result.output
    assert strict_json((project.root / "out" / "result.json").read_text())["outputs"]["made"] is None


# -- plugin code that never returns ---------------------------------------------------------

SLEEPERS = {
    "sync-output": (
        """\
        import time
        from opus_runner import hookimpl

        def stuck(result, config, ctx):
            time.sleep(600)

        @hookimpl
        def opus_register_outputs(register):
            register("stuck", stuck)
        """,
        "outputs: [{type: stuck}, {type: json, path: out/result.json}]\n",
        "timeouts.outputs",
    ),
    "async-output": (
        """\
        import asyncio
        from opus_runner import hookimpl

        async def stuck(result, config, ctx):
            await asyncio.sleep(600)

        @hookimpl
        def opus_register_outputs(register):
            register("stuck", stuck)
        """,
        "outputs: [{type: stuck}, {type: json, path: out/result.json}]\n",
        "timeouts.outputs",
    ),
    "notifier": (
        """\
        import time
        from opus_runner import hookimpl

        def stuck(event, config, ctx):
            time.sleep(600)

        @hookimpl
        def opus_register_notifiers(register):
            register("stuck", stuck)
        """,
        "notify: [{type: stuck, on: [completed]}]\noutputs: [{type: json, path: out/result.json}]\n",
        "timeouts.notify",
    ),
    "job-event": (
        """\
        import time
        from opus_runner import hookimpl

        @hookimpl
        def opus_job_event(event, ctx):
            if event.kind == "submitted":
                time.sleep(600)
        """,
        "outputs: [{type: json, path: out/result.json}]\n",
        "opus_job_event",
    ),
}


@pytest.mark.parametrize("name", sorted(SLEEPERS))
def test_a_stuck_handler_or_hook_is_cut_and_the_process_exits(project: Project, name: str) -> None:
    source, outputs, named = SLEEPERS[name]
    settings(project, outputs="0.5s", notify="0.5s", hooks="0.5s")
    (project.root / "plugins").mkdir()
    (project.root / "plugins" / "sleeper.py").write_text(textwrap.dedent(source))
    spec = quick_spec(project, outputs)
    child = opus_run(project, "run", str(spec))
    out, err = ended(child)
    assert child.returncode == 1, out + err
    assert named in out + err and "0.5 s" in out + err and "sleeper" in out + err
    (row,) = journal_jobs(project)
    assert row["status"] == "COMPLETED" and json.loads(row["result"])["outputs"]["answer"]
    assert json.loads((project.root / "out" / "result.json").read_text())["status"] == "COMPLETED"


def test_a_stuck_payload_ready_hook_stops_its_job_before_execute(project: Project) -> None:
    settings(project, hooks="0.5s")
    (project.root / "plugins").mkdir()
    (project.root / "plugins" / "sleeper.py").write_text(
        textwrap.dedent(
            """\
            import time
            from opus_runner import hookimpl

            @hookimpl
            def opus_payload_ready(payload, ctx):
                time.sleep(600)
            """
        )
    )
    child = opus_run(project, "run", str(quick_spec(project)))
    out, err = ended(child)
    assert child.returncode == 1, out + err
    assert "opus_payload_ready" in out + err and "0.5 s" in out + err and "sleeper" in out + err
    assert project.sandbox.state.count("POST", "execute") == 0
