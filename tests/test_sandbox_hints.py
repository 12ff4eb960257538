"""After a ``--sandbox`` command its in-process sandbox is gone: no hint may send the user to
``opus-run status`` or ``resume`` on it; each says the sandbox ended and how to keep one."""

from __future__ import annotations

import json
import signal

from conftest import WF, WORKFLOWS, Project, header, journal_jobs, opus_run, wait_for

ENDED = "the --sandbox ended with this command"
KEEP = "start `opus-run sandbox` in another terminal and set OPUS_BASE_URL and OPUS_SERVICE_KEY"


def _fixture(project: Project, duration: str) -> str:
    workflows = json.loads(json.dumps(WORKFLOWS))
    workflows["workflows"][WF["quick"]]["duration"] = duration
    project.file("sandbox.json", json.dumps(workflows))
    return "sandbox.json"


def _spec(project: Project, wait: str = "") -> str:
    project.spec("q.yaml", header("q", "quick") + "inputs:\n  Question: q\n" + wait)
    return "q.yaml"


def test_no_wait_with_sandbox_does_not_suggest_status(project: Project) -> None:
    result = project.run("run", _spec(project), "--sandbox", "--sandbox-workflows", _fixture(project, "5s"), "--no-wait")
    assert result.exit_code == 0, result.output
    assert ENDED in result.stderr and KEEP in result.stderr
    assert "opus-run status" not in result.output


def test_no_wait_against_a_server_that_stays_suggests_status(project: Project) -> None:
    result = project.run("run", _spec(project), "--no-wait")
    assert result.exit_code == 0, result.output
    assert "follow it with: opus-run status" in result.stderr and ENDED not in result.stderr


def test_a_timed_out_job_of_a_sandbox_run_says_the_sandbox_ended(project: Project) -> None:
    spec = _spec(project, "wait: {timeout: 0.3s, poll_interval: 50ms}\n")
    result = project.run("run", spec, "--sandbox", "--sandbox-workflows", _fixture(project, "30s"))
    assert result.exit_code == 1, result.output
    assert ENDED in result.output
    assert "opus-run status" not in result.output and "opus-run resume" not in result.output


def _has_job_id(project: Project) -> bool:
    """Whether the run's journal holds a job id yet (the job was initiated on the sandbox)."""
    import sqlite3

    if not (project.root / ".opus-run" / "state.db").exists():
        return False
    try:
        return any(row["job_id"] for row in journal_jobs(project))
    except sqlite3.Error:  # the journal is being created
        return False


def test_ctrl_c_of_a_sandbox_run_says_the_sandbox_ended_not_resume(project: Project) -> None:
    spec = _spec(project)
    proc = opus_run(project, "run", spec, "--sandbox", "--sandbox-workflows", _fixture(project, "30s"))
    try:
        wait_for(lambda: _has_job_id(project) or proc.poll() is not None, timeout=60)
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert "interrupted; " + ENDED in err and KEEP in err
    assert "opus-run resume" not in err
