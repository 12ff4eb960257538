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
from temporal_support import DevServer, Worker, need_temporal

pytestmark = pytest.mark.timeout(300)

NDJSON = "outputs: [{type: ndjson, path: out.ndjson}]\n"


@pytest.fixture(scope="module")
def temporal_binary() -> str:
    return need_temporal()


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


def submit(project: Project, server: DevServer, spec: Path, *args: str) -> Any:
    return project.run("submit", spec, "--engine", "temporal", "--temporal-address", server.address, "--heartbeat-timeout", "2", *args)


def wait_run(project: Project, server: DevServer, run_id: str, *args: str) -> Any:
    return project.run("wait", run_id, "--engine", "temporal", "--temporal-address", server.address, *args)


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
    missing = project.run("status", "bad", "--engine", "temporal", "--temporal-address", server.address)
    assert missing.exit_code == 2 and "no run 'bad'" in missing.output


def test_no_server_at_the_address_is_one_sentence(project: Project) -> None:
    spec = batch(project, 1)
    from temporal_support import free_port

    need_temporal()
    result = project.run("submit", spec, "--engine", "temporal", "--temporal-address", f"127.0.0.1:{free_port()}")
    assert result.exit_code == 3, result.output
    assert "no Temporal server answers at 127.0.0.1:" in result.output
    assert "temporal server start-dev" in result.output and "Traceback" not in result.output
