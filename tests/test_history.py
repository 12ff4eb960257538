"""Looking at work, from the journal and the API, over real HTTP against the sandbox: ``runs``,
``status [RUN_ID]`` (``--watch``), ``rerun --failed``, ``wait JOB_ID`` and the node table of
``audit``.

A job that must still be running when a command looks is one of the 30-second "slow" workflow;
the test ends it by moving its start back in the sandbox (:func:`finish_now`), so nothing here
depends on how fast the machine is.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from conftest import WF, Project, header, opus_run, wait_for

#: One spec, three jobs: q=a runs the quick workflow (completes), b and c run ``vars.wf``
#: (default: the broken one, which fails at its node Score).
MIXED = header("mix", "\"{{ '%s' if matrix.q == 'a' else vars.wf }}\"" % WF["quick"]) + (
    f"vars:\n  wf: '{WF['broken']}'\nmatrix:\n  q: [a, b, c]\ninputs:\n  Question: 'q {{{{ matrix.q }}}}'\n"
)


def mixed(project: Project) -> None:
    project.spec("mix.yaml", MIXED)


def run_ids(project: Project) -> list[str]:
    result = project.run("runs", "--format", "json")
    assert result.exit_code == 0, result.output
    return [r["run_id"] for r in json.loads(result.stdout)]


def job_id_of(project: Project, result: Any) -> str:
    return next(e["job_id"] for e in project.events(result) if e["event"] == "submitted")


def finish_now(project: Project, job_id: str) -> None:
    """End a sandbox job now, as if its duration had passed."""
    job = project.sandbox.state.jobs[job_id]
    job.executed_at = time.monotonic() - job.run_seconds - 1


@contextlib.contextmanager
def slow_jobs_finishing(project: Project) -> Iterator[None]:
    """While the body runs, every job of the slow workflow ends as soon as it is executed."""
    stop = threading.Event()

    def finish() -> None:
        while not stop.wait(0.02):
            for job_id, job in list(project.sandbox.state.jobs.items()):
                if job.workflow.id == WF["slow"] and job.executed_at is not None:
                    finish_now(project, job_id)

    thread = threading.Thread(target=finish, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)


def journal_runs(project: Project) -> list[sqlite3.Row]:
    db = sqlite3.connect(project.root / ".opus-run" / "state.db")
    db.row_factory = sqlite3.Row
    try:
        return db.execute("SELECT * FROM runs ORDER BY rowid").fetchall()
    finally:
        db.close()


# -- opus-run runs -------------------------------------------------------------------------------


def test_runs_lists_the_journal_newest_first_with_counts_and_exit_codes(project: Project) -> None:
    mixed(project)
    project.spec("ok.yaml", header("ok", "quick") + "inputs:\n  Question: q\n")
    assert project.run("run", "mix.yaml").exit_code == 1
    assert project.run("run", "ok.yaml").exit_code == 0

    result = project.run("runs", env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    header_line, newest, oldest = result.stdout.splitlines()
    assert header_line.split() == ["run", "started", "exit", "jobs", "specs"]
    assert newest.split()[3:] == ["0", "1", "completed", "ok.yaml"]
    assert oldest.split()[3:] == ["1", "1", "completed,", "2", "failed", "mix.yaml"]

    listed = json.loads(project.run("runs", "--format", "json").stdout)
    assert [r["specs"] for r in listed] == [["ok.yaml"], ["mix.yaml"]]
    assert listed[1]["counts"] == {"COMPLETED": 1, "FAILED": 2} and listed[1]["jobs"] == 3
    assert [(r["state"], r["exit_code"]) for r in listed] == [("ended", 0), ("ended", 1)]
    assert [r["run_id"] for r in listed] == [row["run_id"] for row in reversed(journal_runs(project))]

    limited = project.run("runs", "--limit", "1")
    assert len(limited.stdout.splitlines()) == 2 and "ok.yaml" in limited.stdout


def test_runs_without_a_journal_says_so_and_creates_none(project: Project) -> None:
    result = project.run("runs")
    assert result.exit_code == 0
    assert "no runs yet" in result.stderr
    assert project.run("runs", "--format", "json").stdout.strip() == "[]"
    assert not (project.root / ".opus-run").exists()


def test_runs_shows_a_run_that_was_stopped(project: Project) -> None:
    project.spec("long.yaml", header("long", "slow") + "inputs:\n  Question: q\n")
    proc = opus_run(project, "run", "long.yaml")
    wait_for(lambda: len(project.sandbox.state.executes) >= 1)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)
    listed = json.loads(project.run("runs", "--format", "json").stdout)
    assert listed[0]["state"] == "stopped" and listed[0]["exit_code"] is None
    assert project.run("runs").stdout.splitlines()[1].split()[3] == "stopped"


# -- opus-run status [RUN_ID] ----------------------------------------------------------------------


def test_status_without_an_id_shows_the_latest_run_and_exits_by_its_outcome(project: Project) -> None:
    mixed(project)
    assert project.run("run", "mix.yaml").exit_code == 1
    run_id = run_ids(project)[0]

    result = project.run("status", env={"COLUMNS": "300"})
    assert result.exit_code == 1, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"run {run_id}  started ") and "ended, exit 1  mix.yaml" in lines[0]
    assert lines[1].split() == ["job", "job", "id", "status", "duration", "error"]
    rows = {line.split()[0]: line for line in lines[2:5]}
    assert set(rows) == {"mix[q=a]", "mix[q=b]", "mix[q=c]"}
    assert rows["mix[q=a]"].split()[2] == "COMPLETED" and rows["mix[q=a]"].rstrip().endswith("-")
    assert rows["mix[q=b]"].split()[2] == "FAILED" and "model quota exceeded" in rows["mix[q=b]"]
    assert lines[5].startswith("1 completed, 2 failed in ")
    assert f"run the failed jobs again with: opus-run rerun --failed {run_id}" in result.stderr

    shown = json.loads(project.run("status", run_id, "--format", "json").stdout)
    assert shown["run_id"] == run_id and shown["outcome"] == 1
    assert [(j["plan_key"], j["status"]) for j in shown["jobs"]] == [
        ("mix[q=a]", "COMPLETED"),
        ("mix[q=b]", "FAILED"),
        ("mix[q=c]", "FAILED"),
    ]
    assert all(j["job_id"] and j["duration"] is not None for j in shown["jobs"])


def test_status_tells_a_run_id_from_a_job_id(project: Project) -> None:
    project.spec("ok.yaml", header("ok", "quick") + "inputs:\n  Question: q\n")
    first = project.run("run", "ok.yaml", "--format", "json")
    job_id = job_id_of(project, first)
    run_id = run_ids(project)[0]

    as_run = project.run("status", run_id)
    assert as_run.exit_code == 0 and as_run.stdout.startswith(f"run {run_id}")
    as_job = project.run("status", job_id)
    assert (as_job.exit_code, as_job.stdout) == (0, "COMPLETED\n")

    unknown = project.run("status", "20200101-000000-abcdef")
    assert unknown.exit_code == 2
    assert unknown.stderr.strip().startswith("error: no run 20200101-000000-abcdef in ")
    assert f"the most recent runs are {run_id}" in unknown.stderr


def test_status_rows_never_wrap(project: Project) -> None:
    mixed(project)
    assert project.run("run", "mix.yaml").exit_code == 1
    result = project.run("status", env={"COLUMNS": "60"})
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 60
    failed = [line for line in lines if "FAILED" in line]
    assert len(failed) == 2 and all(line.endswith("…") for line in failed)
    wide = project.run("runs", env={"COLUMNS": "40"})
    assert max(len(line) for line in wide.stdout.splitlines()) <= 40


def test_status_of_a_run_whose_job_still_runs_exits_4_and_watch_follows_it_to_the_end(project: Project) -> None:
    project.spec("long.yaml", header("long", "slow") + "inputs:\n  Question: q\n")
    sent = project.run("run", "long.yaml", "--no-wait", "--format", "json")
    job_id = job_id_of(project, sent)
    run_id = run_ids(project)[0]

    now = project.run("status")
    assert now.exit_code == 4, now.output
    assert now.stdout.splitlines()[2].split()[2] in ("PENDING", "IN_PROGRESS")
    assert f"follow its jobs to their end with: opus-run status {run_id} --watch" in now.stderr

    proc = opus_run(project, "status", run_id, "--watch", "--interval", "100ms", "--format", "json")
    try:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())
        assert first["outcome"] == 4 and first["jobs"][0]["status"] in ("PENDING", "IN_PROGRESS")
        finish_now(project, job_id)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    last = json.loads(out.splitlines()[-1])
    assert proc.returncode == 0, err
    assert last["outcome"] == 0 and last["jobs"][0]["status"] == "COMPLETED"


def test_status_of_a_run_without_a_key_reads_only_the_journal(project: Project) -> None:
    project.spec("long.yaml", header("long", "slow") + "inputs:\n  Question: q\n")
    assert project.run("run", "long.yaml", "--no-wait").exit_code == 0
    before = project.sandbox.state.count("GET", "status")
    result = project.run("status", env={"OPUS_SERVICE_KEY": ""})
    assert result.exit_code == 4
    assert result.stdout.splitlines()[2].split()[2] == "SUBMITTED"
    assert "set OPUS_SERVICE_KEY to read their status from Opus" in result.stderr
    assert project.sandbox.state.count("GET", "status") == before


def test_status_with_no_journal_and_no_id_says_what_to_do(project: Project) -> None:
    result = project.run("status")
    assert result.exit_code == 2
    assert "no journal at .opus-run: no run has been started from this project yet" in result.stderr
    assert not (project.root / ".opus-run").exists()


# -- opus-run rerun --failed ----------------------------------------------------------------------


def test_rerun_runs_only_the_failed_jobs_as_recorded_with_options_overridden(project: Project) -> None:
    mixed(project)
    assert project.run("run", "mix.yaml", "--var", "wf=" + WF["broken"]).exit_code == 1
    first = run_ids(project)[0]
    # The spec's matrix changes after the run: the jobs are planned from the journal's records.
    project.spec("mix.yaml", MIXED.replace("q: [a, b, c]", "q: [a, z]"))
    executes = project.sandbox.state.count("POST", "execute")

    result = project.run("rerun", "--failed", "--var", "wf=" + WF["quick"], "--format", "json")
    assert result.exit_code == 0, result.output
    assert project.sandbox.state.count("POST", "execute") == executes + 2
    done = {e["plan_key"]: e["outputs"] for e in project.events(result) if e["event"] == "completed"}
    assert done == {"mix[q=b]": {"answer": "Answer to q b"}, "mix[q=c]": {"answer": "Answer to q c"}}

    second = run_ids(project)[0]
    recorded = json.loads(journal_runs(project)[-1]["options"])
    assert recorded["rerun_of"] == first
    # the run's --var, then the rerun's (which wins)
    assert recorded["var"] == ["wf=" + WF["broken"], "wf=" + WF["quick"]]
    shown = json.loads(project.run("status", second, "--format", "json").stdout)
    assert [(j["plan_key"], j["status"]) for j in shown["jobs"]] == [("mix[q=b]", "COMPLETED"), ("mix[q=c]", "COMPLETED")]


def test_rerun_picks_timed_out_jobs_and_the_command_line_timeout_wins(project: Project) -> None:
    project.spec("med.yaml", header("med", "medium") + "inputs:\n  Question: q\n")
    gave_up = project.run("run", "med.yaml", "--timeout", "200ms")
    assert gave_up.exit_code == 1 and "did not finish within" in gave_up.output
    assert project.run("rerun", "--failed").exit_code == 1  # the run's own 200ms again
    result = project.run("rerun", "--failed", "--timeout", "20s", "--format", "json")
    assert result.exit_code == 0, result.output
    assert [e["status"] for e in project.events(result) if e["event"] == "completed"] == ["COMPLETED"]


def test_rerun_says_when_there_is_nothing_to_rerun(project: Project) -> None:
    assert project.run("rerun", "--failed").stderr.startswith("error: nothing to rerun: ")
    project.spec("ok.yaml", header("ok", "quick") + "inputs:\n  Question: q\n")
    assert project.run("run", "ok.yaml").exit_code == 0
    run_id = run_ids(project)[0]
    result = project.run("rerun", "--failed")
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"error: nothing to rerun: no job of run {run_id} failed, was cancelled or timed out "
        f"(see them with: opus-run status {run_id})"
    )
    unasked = project.run("rerun", run_id)
    assert unasked.exit_code == 2 and "say which jobs to rerun: --failed" in unasked.stderr


def test_a_rerun_that_was_interrupted_resumes_only_its_own_jobs(project: Project) -> None:
    mixed(project)
    assert project.run("run", "mix.yaml").exit_code == 1
    proc = opus_run(project, "rerun", "--failed", "--var", "wf=" + WF["slow"], "--concurrency", "1")
    executes = len(project.sandbox.state.executes)
    wait_for(lambda: len(project.sandbox.state.executes) > executes)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    rerun_id = err.split("Finish the rerun with: opus-run resume ")[1].split()[0]
    with slow_jobs_finishing(project):  # the one running, and the one resume sends
        resumed = project.run("resume", rerun_id, "--format", "json")
    assert resumed.exit_code == 0, resumed.output
    shown = json.loads(project.run("status", rerun_id, "--format", "json").stdout)
    # b and c, journaled by the rerun before its first job was sent; not a, which had completed
    assert [(j["plan_key"], j["status"]) for j in shown["jobs"]] == [("mix[q=b]", "COMPLETED"), ("mix[q=c]", "COMPLETED")]


# -- opus-run wait JOB_ID --------------------------------------------------------------------------


def test_wait_follows_a_job_to_its_end(project: Project) -> None:
    project.spec("long.yaml", header("long", "slow") + "inputs:\n  Question: q\n")
    job_id = job_id_of(project, project.run("run", "long.yaml", "--no-wait", "--format", "json"))
    proc = opus_run(project, "wait", job_id, "--interval", "100ms")
    try:
        assert proc.stderr is not None
        assert proc.stderr.readline().strip() in (f"job {job_id}: PENDING", f"job {job_id}: IN_PROGRESS")
        finish_now(project, job_id)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert (proc.returncode, out) == (0, "COMPLETED\n"), err
    assert f"job {job_id}: COMPLETED" in err


def test_wait_exits_by_the_outcome_and_4_when_its_timeout_passes(project: Project) -> None:
    project.spec("bad.yaml", header("bad", "broken") + "inputs:\n  Question: q\n")
    failed = job_id_of(project, project.run("run", "bad.yaml", "--no-wait", "--format", "json"))
    result = project.run("wait", failed, "--interval", "50ms", "--format", "json")
    assert result.exit_code == 1
    assert json.loads(result.stdout) == {"job_id": failed, "status": "FAILED"}

    project.spec("long.yaml", header("long", "slow") + "inputs:\n  Question: q\n")
    running = job_id_of(project, project.run("run", "long.yaml", "--no-wait", "--format", "json"))
    late = project.run("wait", running, "--timeout", "300ms", "--interval", "50ms")
    assert late.exit_code == 4
    assert f"error: job {running} has not finished after 0.3s (it is " in late.stderr


def test_wait_refuses_a_duration_it_cannot_read(project: Project) -> None:
    result = project.run("wait", "1", "--timeout", "soon")
    assert result.exit_code == 2 and result.stderr.startswith("error: --timeout: expected ")


# -- opus-run audit JOB_ID -------------------------------------------------------------------------


def test_audit_is_a_table_of_the_jobs_nodes(project: Project) -> None:
    project.spec("bad.yaml", header("bad", "broken") + "inputs:\n  Question: q\n")
    job_id = job_id_of(project, project.run("run", "bad.yaml", "--format", "json"))
    result = project.run("audit", job_id, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"job {job_id}  FAILED  1 of 3 nodes completed  failed: Score"
    assert lines[1].split() == ["node", "status", "started", "time", "error"]
    assert [line.split()[:2] for line in lines[2:]] == [["Input", "COMPLETED"], ["Score", "FAILED"], ["Output", "PENDING"]]
    assert lines[3].endswith("Node 'Score' raised: model quota exceeded")
    assert lines[4].split()[2:] == ["-", "-", "-"]


@pytest.mark.parametrize("flag", [("--format", "json"), ("--raw",)])
def test_audit_keeps_the_raw_answer_on_request(project: Project, flag: tuple[str, ...]) -> None:
    project.spec("ok.yaml", header("ok", "quick") + "inputs:\n  Question: q\n")
    job_id = job_id_of(project, project.run("run", "ok.yaml", "--format", "json"))
    body = json.loads(project.run("audit", job_id, *flag).stdout)
    assert body["jobExecutionId"] == job_id and "nodes_execution_data" in body["audit"]


def test_an_audit_of_another_shape_is_shown_as_it_came() -> None:
    from opus_runner.cli.jobs import audit_lines

    assert audit_lines("1", {"auditTrail": [{"node": "Input"}]}) is None
    assert audit_lines("1", {"audit": {"nodes_execution_data": {}}}) is None


def test_status_of_a_sandbox_run_never_points_at_the_sandbox_that_ended(project: Project) -> None:
    import yaml

    from conftest import WORKFLOWS

    project.file("wf.yaml", yaml.safe_dump(WORKFLOWS))
    (project.root / "opus-runner.toml").write_text('state_dir = ".opus-run"\nsandbox_workflows = "wf.yaml"\n')
    project.spec("long.yaml", header("long", "slow") + "inputs:\n  Question: q\n")
    assert project.run("run", "long.yaml", "--sandbox", "--no-wait").exit_code == 0
    result = project.run("status")
    assert result.exit_code == 4
    assert "ran against an in-process --sandbox, which ended with it" in result.stderr
    assert "opus-run sandbox" in result.stderr
    assert "resume" not in result.stderr and "--watch" not in result.stderr
