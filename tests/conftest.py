"""Shared test helpers: a throw-away project folder and a CLI runner wired to a sandbox."""

from __future__ import annotations

import json
import os
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from opus_runner.cli import main

FAST_WAIT = "wait: {timeout: 20s, poll_interval: 50ms, max_interval: 200ms}\n"
#: The Opus API generations a ``both_apis`` test runs against (the ``api`` fixture).
APIS = ("v0", "v1")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "both_apis: run the test once per Opus API generation (v0 Jobs, v1 Case); the project "
        "fixture's opus-runner.toml then says api = ...",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # Parametrised here, not by copying tests: a module marked both_apis runs every test that
    # uses the project (or api) fixture against both dialects of the same sandbox.
    if "api" in metafunc.fixturenames and metafunc.definition.get_closest_marker("both_apis"):
        metafunc.parametrize("api", APIS, indirect=True)


@pytest.fixture
def api(request: pytest.FixtureRequest) -> str:
    """The API generation the project speaks: v0 unless the test is marked ``both_apis``."""
    return getattr(request, "param", "v0")

#: The test workflows' UUIDs (Opus identifies workflows by UUID), by a name tests can read.
WF: dict[str, str] = {
    "all-types": "00000000-0000-4000-8000-000000000001",
    "quick": "00000000-0000-4000-8000-000000000002",
    "medium": "00000000-0000-4000-8000-000000000003",
    "slow": "00000000-0000-4000-8000-000000000004",
    "broken": "00000000-0000-4000-8000-000000000005",
    "dup-names": "00000000-0000-4000-8000-000000000006",
    "newer": "00000000-0000-4000-8000-000000000007",
}

#: Small, fast workflows for end-to-end tests (durations in tenths of a second).
WORKFLOWS: dict[str, Any] = {
    "workflows": {
        WF["all-types"]: {
            "name": "Every input type",
            "duration": "0.1s",
            "version": 2,
            "nodes": ["Input", "Work", "Output"],
            "inputs": [
                {"variable_name": "workflow_input_title", "display_name": "Title", "type": "str"},
                {"variable_name": "workflow_input_budget", "display_name": "Budget", "type": "float"},
                {"variable_name": "workflow_input_ok", "display_name": "Approved", "type": "bool"},
                {"variable_name": "workflow_input_due", "display_name": "Due date", "type": "date"},
                {"variable_name": "workflow_input_doc", "display_name": "Contract", "type": "file", "allowed_file_types": ["PDF", "TXT"]},
                {"variable_name": "workflow_input_more", "display_name": "Attachments", "type": "array_files", "is_nullable": True, "allowed_file_types": ["CSV", "TXT"]},
                {"variable_name": "workflow_input_tags", "display_name": "Tags", "type": "array", "is_nullable": True},
                {"variable_name": "workflow_input_cfg", "display_name": "Settings", "type": "object", "is_nullable": True},
            ],
            "outputs": {"echo": "{{ inputs.Title }}", "budget": {"value": "{{ inputs.Budget }}", "type": "float"}},
            "versions": {
                1: {
                    "inputs": [{"variable_name": "workflow_input_old", "display_name": "Old title", "type": "str"}],
                    "outputs": {"echo": "v1 {{ inputs['Old title'] }}"},
                }
            },
        },
        WF["quick"]: {
            "name": "Quick",
            "duration": "0.1s",
            "inputs": [
                {"variable_name": "workflow_input_q", "display_name": "Question", "type": "str"},
                {"variable_name": "workflow_input_n", "display_name": "Count", "type": "float", "is_nullable": True},
            ],
            "outputs": {"answer": "Answer to {{ inputs.Question }}"},
        },
        WF["medium"]: {
            "name": "Medium",
            "duration": "1s",
            "inputs": [{"variable_name": "workflow_input_q", "display_name": "Question", "type": "str"}],
            "outputs": {"answer": "Answer to {{ inputs.Question }}"},
        },
        WF["slow"]: {
            "name": "Slow",
            "duration": "30s",
            "inputs": [{"variable_name": "workflow_input_q", "display_name": "Question", "type": "str"}],
            "outputs": {"answer": "late"},
        },
        WF["broken"]: {
            "name": "Broken",
            "duration": "0.1s",
            "fail": "Node 'Score' raised: model quota exceeded",
            "fail_node": "Score",
            "nodes": ["Input", "Score", "Output"],
            "inputs": [{"variable_name": "workflow_input_q", "display_name": "Question", "type": "str"}],
            "outputs": {"answer": "never"},
        },
        WF["dup-names"]: {
            "name": "Duplicate display names",
            "duration": "0.1s",
            "inputs": [
                {"variable_name": "workflow_input_a", "display_name": "Name", "type": "str"},
                {"variable_name": "workflow_input_b", "display_name": "Name", "type": "str"},
            ],
            "outputs": {"answer": "x"},
        },
        WF["newer"]: {
            "name": "Only on the v2 route",
            "api": "v2-only",
            "duration": "0.1s",
            "inputs": [{"variable_name": "workflow_input_q", "display_name": "Question", "type": "str"}],
            "outputs": {"answer": "v2 {{ inputs.Question }}"},
        },
    }
}


@dataclass
class Project:
    """A project folder (with opus-runner.toml) holding specs and data, and a sandbox to run them."""

    root: Path
    sandbox: Any
    env: dict[str, str]
    api: str = "v0"  # the generation its opus-runner.toml names

    def spec(self, name: str, body: str, *, wait: bool = True) -> Path:
        path = self.root / name
        text = textwrap.dedent(body)
        if wait and "wait:" not in text:
            text += FAST_WAIT
        path.write_text(text)
        return path

    def file(self, name: str, data: bytes | str) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return path

    def run(self, *args: str, env: dict[str, str] | None = None) -> Result:
        merged = {**self.env, **(env or {})}
        old = os.getcwd()
        os.chdir(self.root)
        try:
            return CliRunner().invoke(main, [str(a) for a in args], env=merged, catch_exceptions=False)
        finally:
            os.chdir(old)

    def events(self, result: Result) -> list[dict[str, Any]]:
        return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]

    def journal_bytes(self) -> bytes:
        state = self.root / ".opus-run"
        return b"".join(p.read_bytes() for p in state.glob("state.db*")) if state.exists() else b""


def make_project(
    tmp_path: Path, opus_sandbox_factory: Callable[..., Any], workflows: Any = None, *, api: str = "v0"
) -> Project:
    """A project folder under ``tmp_path`` speaking API generation ``api``, and a started
    sandbox serving ``workflows`` (in both generations)."""
    root = tmp_path / "repo"
    root.mkdir()
    settings = 'state_dir = ".opus-run"\n' + (f'api = "{api}"\n' if api != "v0" else "")
    (root / "opus-runner.toml").write_text(settings)
    sandbox = opus_sandbox_factory(WORKFLOWS if workflows is None else workflows)
    env = {"OPUS_BASE_URL": sandbox.base_url, "OPUS_SERVICE_KEY": sandbox.key}
    return Project(root=root, sandbox=sandbox, env=env, api=api)


@pytest.fixture
def project(tmp_path: Path, opus_sandbox_factory: Callable[..., Any], api: str) -> Project:
    return make_project(tmp_path, opus_sandbox_factory, api=api)


def opus_run(project: Project, *args: str) -> Any:
    """``python -m opus_runner ARGS`` as a child process in the project (for kill -9 and signals).

    faulthandler is on, so a child that must be aborted prints where every thread was.
    """
    import subprocess
    import sys

    env = {**os.environ, **project.env, "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "opus_runner", *args],
        cwd=project.root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    """Poll ``predicate`` every 20 ms until it holds; fail after ``timeout`` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def journal_jobs(project: Project) -> list[Any]:
    """The project's journal rows (``jobs`` table), in plan order."""
    import sqlite3

    db = sqlite3.connect(project.root / ".opus-run" / "state.db")
    db.row_factory = sqlite3.Row
    try:
        return db.execute("SELECT * FROM jobs ORDER BY row_id").fetchall()
    finally:
        db.close()


def make_ctx(tmp_path: Path, *, log_name: str = "t.out", **kw: Any) -> Any:
    """A Context for calling an output, notifier or hook directly (no run around it)."""
    import logging

    from opus_runner.models import Context

    return Context(spec=None, spec_path=tmp_path / "spec.yaml", spec_dir=tmp_path, log=logging.getLogger(log_name), **kw)


def make_result(**kw: Any) -> Any:
    """A finished JobResult with plausible defaults; keywords override them."""
    from opus_runner.models import JobResult

    base: dict[str, Any] = dict(
        job_id="job-123",
        status="COMPLETED",
        outputs={"summary": "All good", "total": 45.8},
        spec_name="invoice-triage",
        plan_key="invoice-triage[region=eu]",
        finished_at="2026-11-30T10:00:00Z",
    )
    base.update(kw)
    return JobResult(**base)


def header(name: str, workflow: str, extra: str = "") -> str:
    """A spec's first lines; ``workflow`` is a name from :data:`WF` or a workflow id."""
    workflow = WF.get(workflow, workflow)
    return textwrap.dedent(
        f"""\
        apiVersion: opus-runner/v1
        kind: Job
        metadata:
          name: {name}
        workflow:
          id: {workflow}
        """
    ) + textwrap.dedent(extra)


def old_journal(folder: Path, *, version: int, up_to: str) -> None:
    """A journal in ``folder`` as schema ``version`` wrote it: the tables before ``CREATE TABLE
    up_to``, and one run, ``r1``."""
    import sqlite3

    from opus_runner import state

    folder.mkdir(parents=True)
    db = sqlite3.connect(folder / "state.db")
    db.executescript(state._SCHEMA[: state._SCHEMA.index(f"CREATE TABLE {up_to}")])
    db.execute("INSERT INTO runs (run_id, started_at, argv, cwd, options) VALUES ('r1', 'now', '[]', '/', '{}')")
    db.execute(f"PRAGMA user_version = {version}")
    db.commit()
    db.close()
