"""The run engine (opus_runner/engine/): every job ends as an outcome, resume reports every job,
and no library call changes the process's working directory."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path
from typing import Any

import pytest

import opus_runner
from conftest import Project, header
from opus_runner.engine.job import JobRunner

BATCH_OF_TWO = "foreach: {file: rows.csv}\ninputs:\n  Question: '{{ row.q }}'\n"

FAILING_OUTPUT = """\
from opus_runner import hookimpl


def keep(result, config, ctx):
    raise OSError("the archive volume is full")


@hookimpl
def opus_register_outputs(register):
    register("archive", keep)
"""


def _resume(project: Project, run_id: str | None = None, **options: Any) -> Any:
    """``Runner.resume`` from the library, with the project's journal and sandbox."""
    opts = opus_runner.RunOptions(
        state_dir=project.root / ".opus-run",
        base_url=project.sandbox.base_url,
        service_key=project.sandbox.key,
        quiet=True,
        **options,
    )
    return asyncio.run(opus_runner.Runner(opts).resume(run_id))


def _run_id(project: Project) -> str:
    import sqlite3

    db = sqlite3.connect(project.root / ".opus-run" / "state.db")
    try:
        return str(db.execute("SELECT run_id FROM runs ORDER BY started_at DESC LIMIT 1").fetchone()[0])
    finally:
        db.close()


@pytest.mark.parametrize("plugin_then", ["raises", "is gone"])
def test_resume_reports_a_redelivery_that_fails(project: Project, plugin_then: str, monkeypatch: pytest.MonkeyPatch) -> None:
    (project.root / "plugins").mkdir()
    plugin = project.root / "plugins" / "archive.py"
    plugin.write_text(FAILING_OUTPUT)
    project.file("rows.csv", "q\none\ntwo\n")
    spec = project.spec("b.yaml", header("b", "quick", BATCH_OF_TWO + "outputs: [{type: archive}]\n"))
    first = project.run("run", spec.name)
    assert first.exit_code == 1 and "the archive volume is full" in first.stderr
    if plugin_then == "is gone":
        plugin.unlink()
    monkeypatch.chdir(project.root)
    report = _resume(project, _run_id(project))
    assert report.exit_code == 1
    assert len(report.outcomes) == 2  # every job, none dropped
    reason = "the archive volume is full" if plugin_then == "raises" else "no plugin registers the type 'archive' now"
    for outcome in report.outcomes:
        assert outcome.status == "COMPLETED" and outcome.exit_code == 1
        [failure] = outcome.delivery_failures
        assert f"output 'archive'" in failure and f"failed for {outcome.plan_key}: " in failure and reason in failure
        assert reason in (outcome.row()["error"] or "")  # the summary row says why


def test_a_task_that_raises_is_an_outcome(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    project.file("rows.csv", "q\none\ntwo\n")
    spec = project.spec("b.yaml", header("b", "quick", BATCH_OF_TWO))
    original = JobRunner.run

    async def run(self: JobRunner, plan: Any, record: Any = None, prepared: Any = None) -> Any:
        if plan.inputs["Question"] == "two":
            raise RuntimeError("the engine tripped")
        return await original(self, plan, record, prepared)

    monkeypatch.setattr(JobRunner, "run", run)
    result = project.run("run", spec.name)
    assert result.exit_code == 3
    # Said once, in the failures: the job that raised is an ERROR with the exception as its reason.
    assert result.stderr.count("RuntimeError: the engine tripped") == 1
    assert re.search(r"^ERROR b#\S+\n    RuntimeError: the engine tripped$", result.stderr, re.M), result.stderr
    monkeypatch.chdir(project.root)
    report = opus_runner.run(spec.name, base_url=project.sandbox.base_url, service_key=project.sandbox.key, quiet=True)
    assert report.exit_code == 3
    assert len(report.outcomes) == 2
    tripped = [o for o in report.outcomes if o.exit_code == 3]
    assert len(tripped) == 1 and tripped[0].error == "RuntimeError: the engine tripped"


def test_run_and_resume_leave_the_working_directory_alone(project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    project.file("vars.yaml", "q: from the vars file\n")
    spec = project.spec("q.yaml", header("q", "quick", "inputs:\n  Question: '{{ vars.q }}'\noutputs: [{type: ndjson, path: out.ndjson}]\n"))
    monkeypatch.chdir(elsewhere)
    report = opus_runner.run(
        spec, base_url=project.sandbox.base_url, service_key=project.sandbox.key, quiet=True,
        state_dir=project.root / ".opus-run", no_wait=True, vars_file=project.root / "vars.yaml",
    )
    assert report.exit_code == 0 and os.getcwd() == str(elsewhere)
    # A run started in the project with relative paths, resumed from another folder: its spec
    # and vars file are found where the run was started, and the caller's folder stays its own.
    started = project.run("run", "q.yaml", "--vars-file", "vars.yaml", "--no-wait")
    assert started.exit_code == 0, started.output
    report = _resume(project)
    assert os.getcwd() == str(elsewhere)
    assert report.exit_code == 0, [o.error for o in report.outcomes]
    [outcome] = report.outcomes
    assert outcome.result is not None and outcome.result.outputs == {"answer": "Answer to from the vars file"}
    assert (project.root / "out.ndjson").exists() and not (elsewhere / "out.ndjson").exists()


KEY_RECORDER = '''
from pathlib import Path
from opus_runner import hookimpl


def record(subject, config, ctx):
    with Path("keys.txt").open("a") as handle:
        handle.write(f"{ctx.idempotency_key}\\n")


@hookimpl
def opus_register_outputs(register):
    register("record_key", record)


@hookimpl
def opus_register_notifiers(register):
    register("record_key", record)
'''


def test_every_delivery_has_an_idempotency_key_of_its_run_job_and_target(project: Project) -> None:
    project.file("plugins/keys.py", KEY_RECORDER)
    extra = "inputs:\n  Question: q\noutputs: [{type: record_key}]\nnotify: [{type: record_key, on: [submitted, completed]}]\n"
    project.spec("k.yaml", header("k", "quick", extra))
    result = project.run("run", "k.yaml", "--format", "json")
    assert result.exit_code == 0, result.output
    import sqlite3

    with sqlite3.connect(project.root / ".opus-run" / "state.db") as db:
        (run_id,) = db.execute("SELECT run_id FROM runs").fetchone()
    keys = (project.root / "keys.txt").read_text().split()
    assert sorted(keys) == sorted(
        [f"{run_id}:k:outputs[0]:record_key", f"{run_id}:k:notify[0]:record_key:submitted", f"{run_id}:k:notify[0]:record_key:completed"]
    )
