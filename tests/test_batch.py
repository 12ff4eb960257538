"""Batches at scale against the sandbox: one schema fetch, the concurrency bound, keep-going, shards."""

from __future__ import annotations

import io
import json
from pathlib import Path

from conftest import Project, header
from opus_runner.models import JobEvent
from opus_runner.progress import JsonReporter, PlainReporter, format_table


def rows_spec(project: Project, rows: list[str], name: str = "batch") -> Path:
    project.file("rows.csv", "q,region\n" + "".join(f"{r},{'eu' if i % 2 else 'us'}\n" for i, r in enumerate(rows)))
    return project.spec(
        f"{name}.yaml",
        header(name, "quick", "foreach: {file: rows.csv}\ninputs:\n  Question: '{{ row.q }}'\n  Count: '{{ row.q }}'\n"),
    )


def test_200_jobs_one_schema_fetch_and_the_concurrency_bound(project: Project) -> None:
    spec = rows_spec(project, [str(i) for i in range(200)])
    result = project.run("run", spec, "--concurrency", "16", "--format", "json")
    assert result.exit_code == 0, result.output[-2000:]
    state = project.sandbox.state
    assert state.count("GET", "workflow") == 1
    assert len(state.executes) == 200 and set(state.executes.values()) == {1}
    assert 1 < state.max_active_jobs <= 16
    summary = project.events(result)[-1]
    assert summary == {**summary, "event": "summary", "jobs": 200, "statuses": {"COMPLETED": 200}}


def test_one_bad_row_submits_nothing_without_keep_going(project: Project) -> None:
    spec = rows_spec(project, ["1", "2", "three", "4"])
    result = project.run("run", spec)
    assert result.exit_code == 2
    assert "batch.yaml" in result.stderr and "'three'" in result.stderr and "foreach row 3)" in result.stderr
    assert project.sandbox.state.count("POST", "initiate") == 0

    result = project.run("run", spec, "--keep-going")
    assert result.exit_code == 1  # something was skipped
    assert "skipped" in result.stderr and "foreach row 3)" in result.stderr
    assert len(project.sandbox.state.executes) == 3


def test_shards_cover_the_plan_exactly_once(project: Project) -> None:
    spec = rows_spec(project, [str(i) for i in range(30)])
    seen: list[str] = []
    for k in (1, 2, 3):
        before = set(project.sandbox.state.payloads)
        result = project.run("run", spec, "--shard", f"{k}/3", "-q", "--concurrency", "10")
        assert result.exit_code == 0
        new = set(project.sandbox.state.payloads) - before
        seen += [project.sandbox.state.payloads[j]["jobPayloadSchemaInstance"]["workflow_input_q"]["value"] for j in new]
    assert sorted(seen, key=int) == [str(i) for i in range(30)]


def test_limit_and_only(project: Project) -> None:
    spec = rows_spec(project, [str(i) for i in range(10)])
    assert project.run("run", spec, "--limit", "3", "-q").exit_code == 0
    assert len(project.sandbox.state.executes) == 3
    assert project.run("run", spec, "--only", "region=eu", "-q").exit_code == 0
    assert len(project.sandbox.state.executes) == 3 + 5


def test_several_specs_and_folders_run_as_one_batch(project: Project) -> None:
    folder = project.root / "many"
    folder.mkdir()
    for name in ("a", "b", "c"):
        (folder / f"{name}.yaml").write_text(header(name, "quick", "inputs:\n  Question: x\n") + "wait: {poll_interval: 50ms}\n")
    result = project.run("run", "many/", "--format", "json")
    assert result.exit_code == 0, result.output
    assert {e["plan_key"] for e in project.events(result) if e["event"] == "completed"} == {"a", "b", "c"}
    assert project.sandbox.state.count("GET", "workflow") == 1


def test_duplicate_spec_names_in_one_batch_are_refused(project: Project) -> None:
    for file in ("x.yaml", "y.yaml"):
        project.spec(file, header("same", "quick", "inputs:\n  Question: x\n"))
    result = project.run("run", "x.yaml", "y.yaml")
    assert result.exit_code == 2 and "also used by" in result.stderr


def test_plain_and_json_reporters() -> None:
    stream = io.StringIO()
    reporter = PlainReporter(stream)
    reporter.start(2)
    reporter.event(JobEvent("submitted", "j1", "spec", "PENDING", "spec#1"))  # a batch's submissions: not shown
    reporter.event(JobEvent("failed", "j1", "spec", "FAILED", "spec#1", error="boom"))  # told by finished()
    rows = [
        {"plan_key": "spec#1", "job_id": "j1", "status": "FAILED", "duration": 1.25, "delivered": None, "error": "boom"},
        {"plan_key": "spec#2", "job_id": "j2", "status": "COMPLETED", "duration": 0.5, "delivered": "json:out.json"},
    ]
    for row in rows:
        reporter.finished(row)
    reporter.summary(rows)
    lines = stream.getvalue().splitlines()
    assert lines[:3] == ["submitting 2 jobs", "[1/2] spec#1  FAILED  1.2s", "[2/2] spec#2  COMPLETED  0.5s"]
    assert lines[3:] == ["", "failures (1):", "FAILED spec#1 (job j1, 1.2s)", "    boom", "1 completed, 1 failed in " + lines[-1].rsplit(" ", 1)[1]]
    out = io.StringIO()
    JsonReporter(out).event(JobEvent("completed", "j2", "spec", "COMPLETED", "spec"))
    assert json.loads(out.getvalue())["event"] == "completed"
    table = format_table([{"plan_key": "k", "job_id": "id", "status": "COMPLETED", "duration": 2.0, "delivered": "stdout"}])
    assert table.splitlines()[0].split() == ["job", "job", "id", "status", "duration", "results"]


def test_live_display_on_a_terminal() -> None:
    from opus_runner.progress import RichReporter

    stream = io.StringIO()
    reporter = RichReporter(stream)
    reporter.console.force_terminal = True  # type: ignore[attr-defined]
    reporter.start(1)
    reporter.event(JobEvent("submitted", "j1", "spec", "PENDING", "spec"))
    reporter.progress("spec", "j1", "IN_PROGRESS", "Summarize", 1, 3)
    rendered = str(reporter._render())
    assert "1 running" in rendered and "node 2 of 3 (Summarize)" in rendered
    reporter.event(JobEvent("failed", "j1", "spec", "FAILED", "spec", error="node Score failed"))
    assert "1 failed" in str(reporter._render())
    row = {"plan_key": "spec", "job_id": "j1", "status": "FAILED", "duration": 2.0, "error": "node Score failed"}
    reporter.finished(row)
    reporter.summary([row])
    reporter.close()
    text = stream.getvalue()
    # A lone job: its submission (the id to follow), then one line with its end, its reason under it.
    assert text.splitlines() == ["spec: submitted job j1", "spec: job j1 FAILED in 2.0s", "    node Score failed"]
