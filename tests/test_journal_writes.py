"""How many journal commits a job costs: each is a SQLite transaction on the event loop, so the
count is a cost the batch pays per job (issue 14). Counted, not timed."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import opus_runner
from conftest import Project, header
from opus_runner import state

JOBS = 10


@pytest.fixture
def commits(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Journal commits by the Journal method that made them."""
    import inspect

    counted: Counter[str] = Counter()
    original = state.Journal._write

    def counting(self: state.Journal) -> Any:
        counted[inspect.stack()[2].function] += 1
        return original(self)

    monkeypatch.setattr(state.Journal, "_write", counting)
    return counted


def run_batch(project: Project, workflow: str = "instant") -> Any:
    project.file("rows.csv", "q\n" + "".join(f"question {i}\n" for i in range(JOBS)))
    body = header("b", workflow, "foreach: {file: rows.csv}\ninputs:\n  Question: '{{ row.q }}'\noutputs: [{type: ndjson, path: out.ndjson}]\n")
    path = project.spec("b.yaml", body)
    cwd = os.getcwd()
    os.chdir(project.root)
    try:
        return opus_runner.run(path, base_url=project.sandbox.base_url, service_key=project.sandbox.key, quiet=True)
    finally:
        os.chdir(cwd)


def test_a_job_that_ends_before_its_first_status_read_costs_five_commits(tmp_path: Path, opus_sandbox_factory: Any, commits: Counter[str]) -> None:
    from conftest import WORKFLOWS, make_project

    instant = "00000000-0000-4000-8000-0000000000d1"
    workflows = {"workflows": {**WORKFLOWS["workflows"], instant: {
        "name": "Instant",
        "duration": 0,
        "inputs": [{"variable_name": "workflow_input_q", "display_name": "Question", "type": "str"}],
        "outputs": {"answer": "{{ inputs.Question }}"},
    }}}
    project = make_project(tmp_path, opus_sandbox_factory, workflows)
    report = run_batch(project, instant)
    assert report.exit_code == 0
    per_run = {"submit": 1, "owning": 1}  # begin_run; the run's claim (finish_run and release follow)
    per_job = Counter({name: n for name, n in commits.items() if name not in per_run})
    # the row, the job id, "executing" (both before execute), the result with its output
    # marked intended, the output delivered: the status and the execute's acknowledgement
    # ride along with the result
    assert sum(per_job.values()) == 5 * JOBS, dict(commits)
    assert (project.root / "out.ndjson").read_text().count("\n") == JOBS
