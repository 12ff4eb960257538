"""``opus-run jobs`` (the API's job search) and ``opus-run workflows`` (the workflows the specs
use, as the API describes them), over real HTTP against the sandbox."""

from __future__ import annotations

import json

from conftest import WF, Project, header
from opus_runner.cli.jobs import found_jobs


def _batch(project: Project) -> None:
    project.spec("ok.yaml", header("ok", "quick") + "matrix: {n: [1, 2, 3]}\ninputs:\n  Question: 'q {{ matrix.n }}'\n")
    project.spec("bad.yaml", header("bad", "broken") + "inputs:\n  Question: q\n")
    assert project.run("run", "ok.yaml", "-q").exit_code == 0
    assert project.run("run", "bad.yaml", "-q").exit_code == 1


def test_jobs_lists_the_accounts_jobs_and_filters_them(project: Project) -> None:
    _batch(project)
    every = project.run("jobs")
    assert every.exit_code == 0, every.output
    lines = every.stdout.splitlines()
    assert lines[0].split() == ["job", "id", "status", "title", "workflow", "created"]
    assert len(lines) == 1 + 4 and "1-4 of 4 job(s)" in every.stderr
    failed = project.run("jobs", "--status", "failed")
    assert [line.split()[1] for line in failed.stdout.splitlines()[1:]] == ["FAILED"]
    quick = project.run("jobs", "--workflow", WF["quick"], "--format", "json")
    answer = json.loads(quick.stdout)
    assert answer["totalCount"] == 3 and {j["workflowId"] for j in answer["jobs"]} == {WF["quick"]}
    page = project.run("jobs", "--limit", "2", "--offset", "2")
    assert len(page.stdout.splitlines()) == 1 + 2 and "3-4 of 4 job(s)" in page.stderr


def test_jobs_refuses_a_workflow_that_is_not_a_uuid(project: Project) -> None:
    result = project.run("jobs", "--workflow", "abc")
    assert result.exit_code == 2 and "--workflow" in result.stderr
    assert project.sandbox.state.requests[("GET", "search")] == 0


def test_search_answers_of_every_shape_are_read() -> None:
    assert found_jobs([{"id": 7, "status": "in progress"}]) == (
        [{"id": "7", "status": "IN_PROGRESS", "title": "", "workflow": "", "created": ""}],
        1,
    )
    jobs, total = found_jobs({"data": [{"_id": "x", "workflowId": "w"}], "total": 9})
    assert jobs[0]["id"] == "x" and jobs[0]["workflow"] == "w" and total == 9
    assert found_jobs({"unexpected": True}) == ([], None)


def test_workflows_lists_the_workflows_the_projects_specs_use(project: Project) -> None:
    _batch(project)
    result = project.run("workflows")
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    assert set(rows) == {WF["quick"], WF["broken"]}
    assert "Quick" in rows[WF["quick"]] and "ok.yaml" in rows[WF["quick"]]
    listed = json.loads(project.run("workflows", "ok.yaml", "--format", "json").stdout)
    assert [(w["workflow_id"], w["name"], w["inputs"], w["specs"]) for w in listed] == [(WF["quick"], "Quick", 2, ["ok.yaml"])]
