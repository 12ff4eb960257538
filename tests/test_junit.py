"""The built-in ``junit`` output: one testcase per job, failures for failed jobs, always valid XML."""

from __future__ import annotations

import logging
import signal
import sqlite3
import threading
import xml.etree.ElementTree as ET
from pathlib import Path

from conftest import Project, header, journal_jobs, opus_run, wait_for
from opus_runner import redact
from opus_runner.builtins.junit import JUNIT_SCHEMA, junit_output, opus_job_event, opus_run_finished
from opus_runner.models import Context, JobEvent, JobResult, RunInfo

JUNIT = "outputs:\n  - type: junit\n    path: reports/opus.xml\n    suite: ci\n"


def test_junit_report_of_a_batch(project: Project) -> None:
    ok = project.spec("ok.yaml", header("ok", "quick") + "matrix: {n: [1, 2]}\ninputs:\n  Question: 'q{{ matrix.n }}'\n" + JUNIT)
    bad = project.spec("bad.yaml", header("bad", "broken") + "inputs:\n  Question: q\n" + JUNIT)
    result = project.run("run", ok, bad, "--concurrency", "3")
    assert result.exit_code == 1, result.output

    root = ET.parse(project.root / "reports" / "opus.xml").getroot()
    assert root.tag == "testsuites"
    assert (root.get("tests"), root.get("failures")) == ("3", "1")
    [suite] = root.findall("testsuite")
    assert (suite.get("name"), suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("ci", "3", "1", "0")
    cases = {(c.get("classname"), c.get("name")): c for c in suite.findall("testcase")}
    assert set(cases) == {("ok", "ok[n=1]"), ("ok", "ok[n=2]"), ("bad", "bad")}
    for case in cases.values():
        assert float(case.get("time") or "nan") > 0  # from submission to the terminal status
    assert cases[("ok", "ok[n=1]")].find("failure") is None
    assert "Answer to q1" in (cases[("ok", "ok[n=1]")].findtext("system-out") or "")
    failure = cases[("bad", "bad")].find("failure")
    assert failure is not None and failure.get("message") == "FAILED"
    assert "Score" in (failure.text or "") and "model quota exceeded" in (failure.text or "")


def test_junit_timed_out_job_is_a_failure(project: Project) -> None:
    spec = project.spec(
        "slow.yaml",
        header("slow", "slow") + "inputs:\n  Question: q\nwait: {timeout: 0.3s, poll_interval: 50ms}\n" + JUNIT,
        wait=False,
    )
    result = project.run("run", spec)
    assert result.exit_code == 1
    case = ET.parse(project.root / "reports" / "opus.xml").getroot().find("testsuite/testcase")
    assert case is not None
    failure = case.find("failure")
    assert failure is not None and failure.get("message") == "TIMED_OUT"
    assert "did not finish within" in (failure.text or "")


def test_junit_config_is_checked_before_submitting(project: Project) -> None:
    spec = project.spec("x.yaml", header("x", "quick") + "inputs:\n  Question: q\noutputs:\n  - {type: junit, file: r.xml}\n")
    result = project.run("run", spec)
    assert result.exit_code == 2
    assert "outputs[0]: missing required key 'path'" in result.stderr
    assert "outputs[0].file: unknown key 'file'" in result.stderr
    assert project.sandbox.state.count("POST", "initiate") == 0
    assert JUNIT_SCHEMA["required"] == ["path"]


def _ctx(tmp_path: Path, shared: dict[str, object]) -> Context:
    return Context(spec=None, spec_path=tmp_path / "s.yaml", spec_dir=tmp_path, log=logging.getLogger("t"), shared=shared)


def finish(ctx: Context, *finished: JobResult) -> None:
    """The end of the run, whose journal holds ``finished``."""
    opus_run_finished(RunInfo("run-1", False, "2026-01-01T00:00:00Z", read_results=lambda: list(finished)), ctx)


def test_junit_notes_jobs_under_concurrency_and_writes_one_complete_file_at_the_end(tmp_path: Path) -> None:
    shared: dict[str, object] = {}
    ctx = _ctx(tmp_path, shared)
    for i in range(40):
        opus_job_event(JobEvent("submitted", f"j{i}", "spec", "PENDING", f"spec[{i}]", time="2026-01-01T00:00:00.000Z"), ctx)
        opus_job_event(JobEvent("completed", f"j{i}", "spec", "COMPLETED", f"spec[{i}]", time="2026-01-01T00:00:01.500Z"), ctx)

    def deliver(i: int) -> None:
        status = "FAILED" if i % 4 == 0 else "COMPLETED"
        result = JobResult(f"j{i}", status, outputs={"n": i}, spec_name="spec", plan_key=f"spec[{i}]", error="boom" if status == "FAILED" else None)
        junit_output(result, {"type": "junit", "path": "out/report.xml"}, ctx)

    threads = [threading.Thread(target=deliver, args=(i,)) for i in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not (tmp_path / "out" / "report.xml").exists()  # written once, when the run ends
    finish(ctx)
    root = ET.parse(tmp_path / "out" / "report.xml").getroot()
    suite = root.find("testsuite")
    assert suite is not None and suite.get("name") == "opus-runner"
    assert (root.get("tests"), root.get("failures")) == ("40", "10")
    assert {c.get("name") for c in suite.findall("testcase")} == {f"spec[{i}]" for i in range(40)}
    assert {c.get("time") for c in suite.findall("testcase")} == {"1.500"}
    assert not list((tmp_path / "out").glob(".*tmp"))  # no temporary files left behind
    # Delivering a job again (opus-run resume) replaces its case.
    junit_output(JobResult("j0", "COMPLETED", spec_name="spec", plan_key="spec[0]"), {"path": "out/report.xml"}, ctx)
    finish(ctx)
    root = ET.parse(tmp_path / "out" / "report.xml").getroot()
    assert (root.get("tests"), root.get("failures")) == ("40", "9")
    # The journal's word wins, and a job of the spec an earlier process finished is in too.
    earlier = JobResult("j99", "FAILED", spec_name="spec", plan_key="spec[99]", error="earlier")
    finish(ctx, JobResult("j1", "FAILED", spec_name="spec", plan_key="spec[1]", error="as journaled"), earlier)
    root = ET.parse(tmp_path / "out" / "report.xml").getroot()
    assert (root.get("tests"), root.get("failures")) == ("41", "11")


def test_junit_masks_secrets_and_survives_control_characters(tmp_path: Path) -> None:
    redact.register("s3cr3t-junit-value")
    ctx = _ctx(tmp_path, {})
    result = JobResult(
        "j1",
        "FAILED",
        outputs={"echo": "s3cr3t-junit-value"},
        spec_name="spec\x01",
        plan_key="spec",
        error="bad \x00 byte and s3cr3t-junit-value <tag> & more",
    )
    path = junit_output(result, {"path": "r.xml", "suite": "s"}, ctx)
    finish(ctx)
    text = path.read_text()
    assert "s3cr3t-junit-value" not in text
    case = ET.parse(path).getroot().find("testsuite/testcase")
    assert case is not None
    failure = case.find("failure")
    assert failure is not None and "<tag> & more" in (failure.text or "") and "***" in (failure.text or "")
    assert case.get("time") == "0.000"  # no events seen: the duration is unknown


def _finished_jobs(project: Project) -> int:
    try:
        return sum(row["phase"] == "finished" for row in journal_jobs(project))
    except sqlite3.OperationalError:  # no journal, or no table yet
        return 0


def test_junit_after_kill_9_and_resume_holds_every_job_of_the_run(project: Project) -> None:
    project.file("rows.csv", "q\n" + "".join(f"question {i}\n" for i in range(6)))
    spec = project.spec(
        "batch.yaml", header("batch", "medium", "foreach: {file: rows.csv}\ninputs:\n  Question: '{{ row.q }}'\n" + JUNIT)
    )
    proc = opus_run(project, "run", spec.name, "--concurrency", "2", "-q")
    try:
        wait_for(lambda: _finished_jobs(project) >= 2, timeout=60)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    before = _finished_jobs(project)
    assert 2 <= before < 6  # some jobs were finished by the killed process, not all
    resumed = opus_run(project, "resume", "-q")
    _out, err = resumed.communicate(timeout=90)
    assert resumed.returncode == 0, err
    root = ET.parse(project.root / "reports" / "opus.xml").getroot()
    assert (root.get("tests"), root.get("failures")) == ("6", "0")
    names = {case.get("name") for case in root.iter("testcase")}
    assert names == {row["plan_key"] for row in journal_jobs(project)} and len(names) == 6
    assert not list((project.root / "reports").glob(".*tmp"))


def test_junit_is_written_by_a_resume_whose_jobs_were_all_delivered_before_the_crash(project: Project) -> None:
    """The crash came after the last delivery and before the run's end, where the report is
    written: the resume has no job left to run and still writes the whole run's report."""
    project.file("rows.csv", "q\none\ntwo\nthree\n")
    spec = project.spec(
        "batch.yaml", header("batch", "quick", "foreach: {file: rows.csv}\ninputs:\n  Question: '{{ row.q }}'\n" + JUNIT)
    )
    assert project.run("run", spec.name).exit_code == 0
    report = project.root / "reports" / "opus.xml"
    report.unlink()
    db = sqlite3.connect(project.root / ".opus-run" / "state.db")
    db.execute("UPDATE runs SET finished_at = NULL")  # as a kill -9 before the run's end leaves it
    db.commit()
    db.close()
    resumed = project.run("resume")
    assert resumed.exit_code == 0, resumed.output
    root = ET.parse(report).getroot()
    assert (root.get("tests"), root.get("failures")) == ("3", "0")
