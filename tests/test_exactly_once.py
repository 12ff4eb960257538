"""Exactly once, nothing lost (issue 11), over real HTTP against the sandbox and its faults.

Every test counts at the server (``state.executes``: execute calls a handler processed, per job
id) and in the outputs. The sandbox's faults play the proxy: a request dropped before it is
processed (``drop``, ``status`` without ``process``), a gateway answer after the server did the
work (``status``/``rate_limit`` with ``process: true``, ``lose_response``), a 413 page.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import opus_runner
from conftest import WF, Project, header, journal_jobs, opus_run, wait_for

WF_QUICK = WF["quick"]
from opus_runner.client import RetryPolicy

FAST_RETRY = RetryPolicy(attempts=4, base=0.01, cap=0.05)
NDJSON = "outputs: [{type: ndjson, path: out.ndjson}]\n"
#: ndjson (appends) and json (replaces) outputs, as a block list more entries can follow.
BOTH_OUTPUTS = "outputs:\n  - {type: ndjson, path: out.ndjson}\n  - {type: json, path: out.json}\n"


def run_lib(project: Project, spec: Path, **options: Any) -> Any:
    cwd = os.getcwd()
    os.chdir(project.root)
    try:
        return opus_runner.run(
            spec, base_url=project.sandbox.base_url, service_key=project.sandbox.key, retry=FAST_RETRY, quiet=True, **options
        )
    finally:
        os.chdir(cwd)


def one(project: Project, question: str = "q", workflow: str = "quick", extra: str = "") -> Path:
    return project.spec("q.yaml", header("q", workflow, f"inputs:\n  Question: {question}\n" + extra))


def batch(project: Project, rows: int, workflow: str = "quick", extra: str = NDJSON) -> Path:
    project.file("rows.csv", "q\n" + "".join(f"question {i}\n" for i in range(rows)))
    return project.spec(
        "batch.yaml", header("batch", workflow, "foreach: {file: rows.csv}\ninputs:\n  Question: '{{ row.q }}'\n" + extra)
    )


def journal_has_jobs(project: Project) -> bool:
    db = sqlite3.connect(project.root / ".opus-run" / "state.db")
    try:
        return bool(db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'jobs'").fetchone()[0]) and bool(
            db.execute("SELECT count(*) FROM jobs").fetchone()[0]
        )
    finally:
        db.close()


def assert_exactly_once(project: Project, plan_keys: int) -> None:
    """Every plan key executed once at the server, delivered once to out.ndjson."""
    rows = journal_jobs(project)
    executes = project.sandbox.state.executes
    assert len({r["plan_key"] for r in rows}) == plan_keys
    assert all(r["phase"] == "finished" and r["status"] == "COMPLETED" for r in rows), [dict(r) for r in rows]
    assert {executes[r["job_id"]] for r in rows} == {1}, "a job was executed twice"
    # No job id outside the journal was ever executed (an initiate cut short is never run).
    assert set(executes) == {r["job_id"] for r in rows}
    lines = [json.loads(line) for line in (project.root / "out.ndjson").read_text().splitlines()]
    assert Counter(line["plan_key"] for line in lines) == Counter({r["plan_key"]: 1 for r in rows})


# -- 1. did my execute arrive? -------------------------------------------------------------------


# The no-resend rule in both API generations (issue 17): v1 settles executes the same way.
@pytest.mark.both_apis
@pytest.mark.parametrize(
    "fault",
    [
        {"route": "execute", "kind": "status", "status": 502, "body": "html", "times": 1},  # gateway, not forwarded
        {"route": "execute", "kind": "status", "status": 503, "times": 2},
        {"route": "execute", "kind": "rate_limit", "times": 2},
    ],
    ids=["502-not-forwarded", "503", "429"],
)
def test_an_execute_that_never_arrived_is_sent_again_and_runs_once(project: Project, fault: dict[str, Any]) -> None:
    project.sandbox.faults.add(fault)
    report = run_lib(project, one(project, extra=NDJSON))
    assert report.exit_code == 0, [o.error for o in report.outcomes]
    assert_exactly_once(project, 1)
    assert project.sandbox.state.count("GET", "job") >= 1  # the job's input decided


# The no-resend rule in both API generations (issue 17): v1 settles executes the same way.
@pytest.mark.both_apis
@pytest.mark.parametrize(
    "fault",
    [
        {"route": "execute", "kind": "lose_response", "times": 1},  # processed, answer lost
        {"route": "execute", "kind": "status", "status": 502, "body": "html", "process": True, "times": 1},
        {"route": "execute", "kind": "status", "status": 504, "process": True, "times": 1},
        {"route": "execute", "kind": "status", "status": 503, "process": True, "times": 1},
        {"route": "execute", "kind": "rate_limit", "process": True, "times": 1},
    ],
    ids=["lost-answer", "502-after", "504-after", "503-after", "429-after"],
)
def test_an_execute_that_arrived_is_never_sent_again(project: Project, fault: dict[str, Any]) -> None:
    project.sandbox.faults.add(fault)
    report = run_lib(project, one(project, extra=NDJSON))
    assert report.exit_code == 0, [o.error for o in report.outcomes]
    assert project.sandbox.state.count("POST", "execute") == 1
    assert_exactly_once(project, 1)


def test_a_payload_refused_with_413_fails_that_job_and_is_never_followed(project: Project) -> None:
    project.sandbox.faults.add({"route": "execute", "kind": "status", "status": 413, "body": "html"})
    spec = one(project, extra=NDJSON)
    report = run_lib(project, spec)
    assert report.exit_code == 1
    [outcome] = report.outcomes
    assert outcome.status == "FAILED" and "Opus refused to execute job" in (outcome.error or "")
    assert project.sandbox.state.count("GET", "status") == 0  # not followed as if running
    [row] = journal_jobs(project)
    assert (row["phase"], row["status"]) == ("finished", "FAILED")
    project.sandbox.faults.clear()
    again = run_lib(project, spec)  # a new run of the spec is a new job; resume has nothing to do
    assert again.exit_code == 0


# The no-resend rule in both API generations (issue 17): v1 settles executes the same way.
@pytest.mark.both_apis
@pytest.mark.parametrize("times", [1, None], ids=["once", "always"])
def test_resume_asks_the_job_again_and_executes_what_never_arrived(project: Project, times: int | None) -> None:
    # The execute is cut without any answer: it may still be on its way, so the run does not
    # send it again; the job stays unconfirmed, and resume asks the job later.
    rule: dict[str, Any] = {"route": "execute", "kind": "drop"}
    if times:
        rule["times"] = times
    project.sandbox.faults.add(rule)
    spec = one(project, extra=NDJSON + "wait: {timeout: 1s, poll_interval: 50ms, max_interval: 200ms}\n")
    report = run_lib(project, spec)
    assert report.exit_code == 3 and project.sandbox.state.executes == Counter()
    [row] = journal_jobs(project)
    assert row["phase"] == "executing"  # unconfirmed: resume asks again rather than guess
    project.sandbox.faults.clear()
    cwd = os.getcwd()
    os.chdir(project.root)
    try:
        resumed = opus_runner.Runner(
            opus_runner.RunOptions(specs=[], base_url=project.sandbox.base_url, service_key=project.sandbox.key, quiet=True)
        )
        import asyncio

        final = asyncio.run(resumed.resume())
    finally:
        os.chdir(cwd)
    assert final.exit_code == 0
    assert_exactly_once(project, 1)


# -- 2. one owner ----------------------------------------------------------------------------


def test_resume_of_a_run_whose_process_is_alive_is_refused(project: Project) -> None:
    spec = batch(project, 6, workflow="medium")
    proc = opus_run(project, "run", spec.name, "--concurrency", "2", "-q")
    try:
        wait_for(lambda: len(project.sandbox.state.executes) >= 1)
        resumed = project.run("resume")
        assert resumed.exit_code == 2
        assert f"is still being run by process {proc.pid} on " in resumed.stderr
        assert "wait for it to end" in resumed.stderr
    finally:
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert_exactly_once(project, 6)


def test_two_resumes_of_a_crashed_run_race_safely(project: Project) -> None:
    spec = batch(project, 12, workflow="medium")
    proc = opus_run(project, "run", spec.name, "--concurrency", "3", "-q")
    wait_for(lambda: len(project.sandbox.state.executes) >= 3)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    first, second = opus_run(project, "resume", "-q"), opus_run(project, "resume", "-q")
    results = [p.communicate(timeout=90) for p in (first, second)]
    codes = sorted(p.returncode for p in (first, second))
    assert codes == [0, 2], results
    loser = results[[first.returncode, second.returncode].index(2)][1]
    assert "is still being run by process" in loser
    assert_exactly_once(project, 12)


def test_a_stale_owner_from_another_host_is_taken_over(project: Project, tmp_path: Path) -> None:
    from opus_runner.state import OWNER_STALE_SECONDS, Journal, RunOwned

    journal = Journal(tmp_path / "state")
    run_id = journal.begin_run(argv=[], cwd=str(tmp_path), options={})
    db = sqlite3.connect(journal.path)
    db.execute("UPDATE owners SET host = 'ci-runner-7', pid = 1, heartbeat = ?", (time.time(),))
    db.commit()
    other = Journal(tmp_path / "state")
    with pytest.raises(RunOwned, match="by process 1 on ci-runner-7"):
        other.claim_run(run_id)
    db.execute("UPDATE owners SET heartbeat = ?", (time.time() - OWNER_STALE_SECONDS - 1,))
    db.commit()
    db.close()
    other.claim_run(run_id)  # silent for two minutes: taken over
    assert other.owner(run_id)["pid"] == os.getpid()
    journal.close()
    other.close()


def test_a_dead_owner_on_this_host_is_taken_over(tmp_path: Path) -> None:
    from opus_runner.state import Journal

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    journal = Journal(tmp_path / "state")
    run_id = journal.begin_run(argv=[], cwd=str(tmp_path), options={})
    db = sqlite3.connect(journal.path)
    db.execute("UPDATE owners SET pid = ?", (gone.pid,))
    db.commit()
    db.close()
    other = Journal(tmp_path / "state")
    other.claim_run(run_id)
    assert other.owner(run_id)["pid"] == os.getpid()
    journal.close()
    other.close()


def test_claims_from_two_threads_exactly_one_wins(tmp_path: Path) -> None:
    import threading

    from opus_runner.state import Journal, RunOwned

    first = Journal(tmp_path / "state")
    run_id = first.begin_run(argv=[], cwd=str(tmp_path), options={})
    first.release_run(run_id)
    first.close()
    journals = [Journal(tmp_path / "state") for _ in range(6)]
    barrier = threading.Barrier(len(journals))
    outcomes: list[str] = []

    def claim(journal: Journal) -> None:
        barrier.wait()
        try:
            journal.claim_run(run_id)
            outcomes.append("won")
        except RunOwned:
            outcomes.append("refused")

    threads = [threading.Thread(target=claim, args=(j,)) for j in journals]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["refused"] * 5 + ["won"]
    for j in journals:
        j.close()


def test_a_version_1_journal_gains_owners_and_keeps_its_rows(tmp_path: Path) -> None:
    from opus_runner import state

    folder = tmp_path / "old"
    folder.mkdir()
    db = sqlite3.connect(folder / "state.db")
    old_schema = state._SCHEMA.replace(state._SCHEMA[state._SCHEMA.index("CREATE TABLE owners") : state._SCHEMA.index("CREATE TABLE deliveries")], "")
    db.executescript(old_schema)
    db.execute("INSERT INTO runs (run_id, started_at, argv, cwd, options) VALUES ('r1', 'now', '[]', '/', '{}')")
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    journal = state.Journal(folder)
    assert journal.get_run("r1").run_id == "r1"
    journal.claim_run("r1")
    assert journal.owner("r1")["pid"] == os.getpid()
    journal.close()


# -- 3. duplicate plan keys ----------------------------------------------------------------------


def test_a_repeated_matrix_value_is_a_validation_error(project: Project) -> None:
    spec = project.spec("m.yaml", header("m", "quick", "matrix: {region: [eu, us, eu]}\ninputs:\n  Question: '{{ matrix.region }}'\n"))
    result = project.run("run", spec)
    assert result.exit_code == 2
    assert "m.yaml:7: matrix.region: the value 'eu' appears twice in matrix.region" in result.stderr
    assert project.sandbox.state.count("POST", "initiate") == 0


# -- 4/5. executed jobs are followed to the end ----------------------------------------------


def test_sustained_429s_on_status_never_abandon_an_executed_job(project: Project) -> None:
    # More 429s in a row than the client's own attempts: the runner keeps following the job.
    project.sandbox.faults.add({"route": "status", "kind": "rate_limit", "times": 10})
    project.sandbox.faults.add({"route": "results", "kind": "status", "status": 503, "times": 6})
    report = run_lib(project, one(project, extra=NDJSON))
    assert report.exit_code == 0, [o.error for o in report.outcomes]
    assert_exactly_once(project, 1)


def test_a_batch_under_sustained_rate_limits_executes_everything_once(project: Project) -> None:
    project.sandbox.faults.add({"route": "*", "kind": "rate_limit", "probability": 0.35, "seed": 3})
    report = run_lib(project, batch(project, 24), concurrency=8)
    assert report.exit_code == 0, [o.error for o in report.outcomes if o.error]
    assert_exactly_once(project, 24)


# -- effectively-once delivery -----------------------------------------------------------------


def test_ndjson_redelivery_writes_a_job_once_per_outcome(tmp_path: Path) -> None:
    from conftest import make_ctx, make_result
    from opus_runner.builtins.outputs import ndjson_output

    out = tmp_path / "out.ndjson"
    done = make_result(job_id="72964", status="COMPLETED")
    ndjson_output(done, {"path": "out.ndjson"}, make_ctx(tmp_path))
    again = make_ctx(tmp_path)
    again.redelivery = True
    ndjson_output(done, {"path": "out.ndjson"}, again)  # a resume after a crash that came after the write
    assert len(out.read_text().splitlines()) == 1
    ndjson_output(make_result(job_id="72965", status="COMPLETED"), {"path": "out.ndjson"}, again)
    ndjson_output(make_result(job_id="72964", status="TIMED_OUT"), {"path": "out.ndjson"}, again)
    ndjson_output(make_result(job_id="72964", status="TIMED_OUT"), {"path": "out.ndjson"}, again)
    assert [(json.loads(x)["job_id"], json.loads(x)["status"]) for x in out.read_text().splitlines()] == [
        ("72964", "COMPLETED"),
        ("72965", "COMPLETED"),
        ("72964", "TIMED_OUT"),
    ]


def test_a_job_that_times_out_again_on_resume_is_not_appended_again(project: Project) -> None:
    spec = project.spec(
        "s.yaml",
        header("s", "slow", "inputs:\n  Question: q\nwait: {timeout: 0.3s, poll_interval: 50ms}\n" + BOTH_OUTPUTS),
        wait=False,
    )
    assert run_lib(project, spec).exit_code == 1
    for _ in range(2):
        result = project.run("resume", "--timeout", "0.3s")
        assert result.exit_code == 1, result.output
    # A give-up is not the job's outcome: the append-only file holds nothing yet, the replacing
    # one says what is known now, and says it is not final.
    assert not (project.root / "out.ndjson").exists()
    now = json.loads((project.root / "out.json").read_text())
    assert (now["status"], now["final"]) == ("TIMED_OUT", False)
    assert list(project.sandbox.state.executes.values()) == [1]


def test_a_job_given_up_on_then_finished_by_resume_is_delivered_once(project: Project) -> None:
    """The runner stops waiting (TIMED_OUT) while the job runs on; resume follows it to its end.
    Every output holds the job once, with its real outcome."""
    csv_plugin = Path(__file__).resolve().parents[1] / "plugins" / "csv_output.py"
    (project.root / "plugins").mkdir(exist_ok=True)
    (project.root / "plugins" / "csv_output.py").write_text(csv_plugin.read_text())
    outputs = BOTH_OUTPUTS + "  - {type: csv, path: out.csv}\n"
    spec = project.spec("m.yaml", header("m", "medium", "inputs:\n  Question: q\nwait: {timeout: 0.2s, poll_interval: 50ms}\n" + outputs))
    assert run_lib(project, spec).exit_code == 1
    assert not (project.root / "out.ndjson").exists() and not (project.root / "out.csv").exists()
    finished = project.run("resume", "--timeout", "30s")
    assert finished.exit_code == 0, finished.output
    [line] = [json.loads(x) for x in (project.root / "out.ndjson").read_text().splitlines()]
    assert (line["status"], line["final"], line["outputs"]["answer"]) == ("COMPLETED", True, "Answer to q")
    assert json.loads((project.root / "out.json").read_text())["status"] == "COMPLETED"
    rows = (project.root / "out.csv").read_text().splitlines()
    assert len(rows) == 2 and ",COMPLETED," in rows[1], rows
    assert list(project.sandbox.state.executes.values()) == [1]


def test_a_failing_notifier_exits_1(project: Project) -> None:
    spec = one(project, extra="notify: [{type: webhook, url: 'http://127.0.0.1:9/unreachable', on: [completed]}]\n")
    result = project.run("run", spec)
    assert result.exit_code == 1, result.output
    assert "notifier 'webhook'" in result.stderr and "failed" in result.stderr


# -- signals -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_sigterm_and_sighup_stop_like_ctrl_c(project: Project, signum: int, code: int) -> None:
    spec = batch(project, 4, workflow="slow", extra="")
    proc = opus_run(project, "run", spec.name, "--concurrency", "2", "--format", "json")
    wait_for(lambda: len(project.sandbox.state.executes) >= 2)
    proc.send_signal(signum)
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)  # faulthandler (PYTHONFAULTHANDLER) prints every thread
        out, err = proc.communicate(timeout=10)
        raise AssertionError(f"the run did not stop after signal {signum}:\n{err[-8000:]}") from None
    assert proc.returncode == code, err
    assert "opus-run resume" in err
    last = json.loads(out.strip().splitlines()[-1])
    assert last["event"] == "error" and last["exit_code"] == code and "opus-run resume" in last["message"]
    from jsonschema import Draft202012Validator

    schema = json.loads((Path(__file__).parents[1] / "docs" / "events.schema.json").read_text(encoding="utf-8"))
    assert list(Draft202012Validator(schema).iter_errors(last)) == []  # the documented final event
    assert all(r["job_id"] for r in journal_jobs(project) if r["phase"] in ("executing", "executed"))
    assert journal_jobs(project), "the journal was written"


# -- kill -9 at random moments, many times ---------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(20))
def test_kill_9_at_a_random_moment_then_resume_runs_and_delivers_each_job_once(project: Project, trial: int) -> None:
    rng = random.Random(trial)
    spec = batch(project, 10)
    project.sandbox.faults.add({"route": "status", "kind": "delay", "seconds": 0.05})
    proc = opus_run(project, "run", spec.name, "--concurrency", "4", "-q")
    time.sleep(rng.uniform(0.3, 2.5))
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    if rng.random() < 0.5:  # sometimes the resume is killed too
        again = opus_run(project, "resume", "-q")
        time.sleep(rng.uniform(0.1, 1.0))
        again.send_signal(signal.SIGKILL)
        again.wait(timeout=10)
    project.sandbox.faults.clear()
    final = opus_run(project, "resume", "-q")
    out, err = final.communicate(timeout=90)
    journaled = (project.root / ".opus-run" / "state.db").exists() and journal_has_jobs(project)
    if not journaled:
        # Killed before any job was journaled (while validating): nothing may have been sent,
        # and the user's next step is to run the spec again.
        assert project.sandbox.state.executes == Counter(), err
        rerun = opus_run(project, "run", spec.name, "-q")
        out, err = rerun.communicate(timeout=90)
        assert rerun.returncode == 0, err
    else:
        # 2: "nothing to resume", when the kill came after the run had finished.
        assert final.returncode == 0 or "nothing to resume" in err, err
    assert_exactly_once(project, 10)


# -- 3. resume finishes the run that was started -----------------------------------------------


def _row_key(question: str) -> str:
    import hashlib

    return "batch#" + hashlib.sha256(json.dumps({"q": question}, sort_keys=True).encode()).hexdigest()[:12]


def _crash_after(project: Project, proc: subprocess.Popen[str], executes: int) -> None:
    wait_for(lambda: len(project.sandbox.state.executes) >= executes)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)


def test_a_row_added_to_the_data_after_a_crash_runs_nothing_twice_and_files_nothing_wrongly(project: Project) -> None:
    spec = batch(project, 6, workflow="medium")
    _crash_after(project, opus_run(project, "run", spec.name, "--concurrency", "2", "-q"), 2)
    started = set(project.sandbox.state.executes)
    # Between the crash and the resume, a row is added at the top of the data.
    questions = ["question new"] + [f"question {i}" for i in range(6)]
    project.file("rows.csv", "q\n" + "".join(f"{q}\n" for q in questions))

    refused = opus_run(project, "resume", "-q")
    out, err = refused.communicate(timeout=60)
    assert refused.returncode == 2, err
    assert "rows.csv changed since the run began" in err and "--replan" in err
    assert set(project.sandbox.state.executes) == started  # what was started was finished, nothing else

    replanned = opus_run(project, "resume", "--replan", "-q")
    out, err = replanned.communicate(timeout=60)
    assert replanned.returncode == 0, err
    assert_exactly_once(project, 7)
    # Every result is filed under its own row: the answer names the row's question.
    lines = [json.loads(x) for x in (project.root / "out.ndjson").read_text().splitlines()]
    assert {line["plan_key"]: line["outputs"]["answer"] for line in lines} == {
        _row_key(q): f"Answer to {q}" for q in questions
    }


def test_a_matrix_value_removed_after_a_crash_keeps_the_executed_jobs_result(project: Project) -> None:
    body = "matrix: {region: [eu, us, ap]}\ninputs:\n  Question: '{{ matrix.region }}'\n" + NDJSON
    spec = project.spec("m.yaml", header("m", "medium", body))
    _crash_after(project, opus_run(project, "run", spec.name, "--concurrency", "1", "-q"), 1)
    project.spec("m.yaml", header("m", "medium", body.replace("[eu, us, ap]", "[us, ap]")))
    first = opus_run(project, "resume", "-q")
    _out, err = first.communicate(timeout=60)
    assert first.returncode == 2, err  # us and ap were never started: not planned from the new file blindly
    done = [json.loads(x) for x in (project.root / "out.ndjson").read_text().splitlines()]
    assert [(d["plan_key"], d["status"]) for d in done] == [("m[region=eu]", "COMPLETED")]
    again = opus_run(project, "resume", "--replan", "-q")
    _out, err = again.communicate(timeout=60)
    assert again.returncode == 0, err
    lines = [json.loads(x) for x in (project.root / "out.ndjson").read_text().splitlines()]
    assert sorted(d["plan_key"] for d in lines) == ["m[region=ap]", "m[region=eu]", "m[region=us]"]
    assert set(project.sandbox.state.executes.values()) == {1}
    assert project.run("resume").exit_code == 2  # nothing left: the run finished


# The no-resend rule in both API generations (issue 17): v1 settles executes the same way.
@pytest.mark.both_apis
def test_an_initiated_job_is_executed_as_recorded_or_not_at_all(project: Project) -> None:
    project.sandbox.faults.add({"route": "execute", "kind": "drop"})
    short = "wait: {timeout: 1s, poll_interval: 50ms, max_interval: 200ms}\n"
    spec = one(project, question="first", extra=NDJSON + short)
    assert run_lib(project, spec).exit_code == 3  # initiated, never executed: unconfirmed
    project.sandbox.faults.clear()
    one(project, question="second", extra=NDJSON + short)  # the spec is edited before the resume
    refused = project.run("resume")
    assert refused.exit_code == 2, refused.output
    assert "was initiated by the run that stopped, with other values for workflow_input_q" in refused.stderr
    assert "opus-run resume" in refused.stderr and "--replan" in refused.stderr
    assert project.sandbox.state.executes == Counter()
    replanned = project.run("resume", "--replan")
    assert replanned.exit_code == 0, replanned.output
    [job_id] = project.sandbox.state.payloads
    assert project.sandbox.state.sent_inputs(job_id)["workflow_input_q"]["value"] == "second"
    assert_exactly_once(project, 1)


def test_an_initiated_job_whose_file_changed_is_not_executed_with_the_new_content(project: Project) -> None:
    project.file("contract.txt", "the terms as they were")
    inputs = (
        "inputs:\n  Title: t\n  Budget: 1.5\n  Approved: true\n  Due date: 2026-12-24\n"
        "  Contract: {file: contract.txt}\nwait: {timeout: 1s, poll_interval: 50ms}\n"
    )
    spec = project.spec("f.yaml", header("f", "all-types", inputs + NDJSON))
    project.sandbox.faults.add({"route": "execute", "kind": "drop"})
    assert run_lib(project, spec).exit_code == 3  # initiated, never executed
    project.sandbox.faults.clear()
    project.file("contract.txt", "the terms as someone edited them")
    refused = project.run("resume")
    assert refused.exit_code == 2, refused.output
    assert "contract.txt it sends has changed since; it was not executed" in refused.stderr
    assert project.sandbox.state.executes == Counter()
    project.file("contract.txt", "the terms as they were")  # put back: resumed as recorded
    assert project.run("resume").exit_code == 0
    assert_exactly_once(project, 1)


# The no-resend rule in both API generations (issue 17): v1 settles executes the same way.
@pytest.mark.both_apis
def test_a_hanging_execute_is_not_sent_again_when_it_lands_late(project: Project) -> None:
    """The answer never comes in time (a slow gateway holds the request); the request then lands.

    Sent again on "no input yet", the job would run twice; it is left unconfirmed instead.
    """
    import asyncio

    from opus_runner.client import OpusClient
    from opus_runner.errors import ExecuteNotReceived, ExecuteOutcomeUnknown

    project.sandbox.faults.add({"route": "execute", "kind": "delay", "seconds": 1.0, "times": 1})

    async def go() -> None:
        async with OpusClient(
            project.sandbox.base_url, project.sandbox.key, api=project.api, timeout=0.3, retry=FAST_RETRY
        ) as client:
            job_id = await client.initiate(WF_QUICK, title="hanging")
            payload = {"workflow_input_q": {"value": "late", "type": "str", "displayName": "Question"}}
            with pytest.raises(ExecuteOutcomeUnknown) as info:
                await client.execute(job_id, payload)
            assert not isinstance(info.value, ExecuteNotReceived) and info.value.answered is False
            await asyncio.sleep(1.5)  # the held request reaches the server after all
            assert (await client.execute_received(job_id))[0] is True
            assert project.sandbox.state.executes[job_id] == 1

    asyncio.run(go())
    assert project.sandbox.state.count("POST", "execute") == 1
    assert set(project.sandbox.state.api_requests) == {project.api}
