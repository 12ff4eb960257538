"""Tests for the SQLite state journal (opus_runner.state)."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from opus_runner import redact
from opus_runner.errors import ConfigError, UsageError
from opus_runner.state import PHASES, SCHEMA_VERSION, JobRecord, Journal, RunRecord


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    with Journal(tmp_path / ".opus-run") as j:
        yield j


def add(journal: Journal, run_id: str, n: int = 0, **overrides: Any) -> int:
    fields: dict[str, Any] = dict(
        plan_key=f"spec.yaml#{n}",
        spec_path="specs/spec.yaml",
        spec_digest="sha256:abc",
        spec_name="report",
        workflow_key="wf-1@3",
        title=f"Report {n}",
        payload={"workflow_input_a": {"value": n, "type": "float"}},
        plan={"vars": {"n": n}, "row": None},
    )
    fields.update(overrides)
    return journal.add_job(run_id, **fields)


def new_run(journal: Journal) -> str:
    return journal.begin_run(argv=["opus-run", "spec.yaml"], cwd="/project", options={"c": 4})


# -- opening ---------------------------------------------------------------------------


def test_open_creates_folder_db_gitignore_and_wal(tmp_path: Path) -> None:
    state_dir = tmp_path / "deep" / ".opus-run"
    with Journal(state_dir) as j:
        assert j.path == state_dir / "state.db"
        assert j.path.is_file()
        assert (state_dir / ".gitignore").read_text(encoding="utf-8") == "*\n"
        raw = sqlite3.connect(j.path)
        try:
            assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
            rows = raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            tables = {r[0] for r in rows}
        finally:
            raw.close()
        assert {"runs", "jobs", "status_history", "deliveries"} <= tables
    # the parent folders created on the way are not ignored, only the state folder itself
    assert not (tmp_path / "deep" / ".gitignore").exists()


def test_existing_populated_folder_gets_no_gitignore(tmp_path: Path) -> None:
    (tmp_path / "opus-runner.toml").write_text("", encoding="utf-8")
    with Journal(tmp_path):
        pass
    assert not (tmp_path / ".gitignore").exists()


def test_existing_gitignore_is_left_alone(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    (state_dir / ".gitignore").write_text("custom\n", encoding="utf-8")
    with Journal(state_dir):
        pass
    assert (state_dir / ".gitignore").read_text(encoding="utf-8") == "custom\n"


def test_reopen_keeps_data(tmp_path: Path) -> None:
    with Journal(tmp_path / "s") as j:
        run_id = new_run(j)
        row = add(j, run_id)
    with Journal(tmp_path / "s") as j:
        assert j.get_run(run_id).run_id == run_id
        assert j.job(row).plan_key == "spec.yaml#0"


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    with Journal(tmp_path / "s") as j:
        path = j.path
    raw = sqlite3.connect(path)
    raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.commit()
    raw.close()
    with pytest.raises(ConfigError, match=r"newer opus-runner .*--state-dir"):
        Journal(tmp_path / "s")


def test_not_a_database_is_refused(tmp_path: Path) -> None:
    state_dir = tmp_path / "s"
    state_dir.mkdir()
    (state_dir / "state.db").write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(ConfigError, match=r"not a usable opus-runner state journal"):
        Journal(state_dir)


def test_unwritable_state_dir_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"cannot create the state folder"):
        Journal(blocker / "sub")


def test_closed_journal_raises_and_close_twice_is_harmless(tmp_path: Path) -> None:
    j = Journal(tmp_path / "s")
    j.close()
    j.close()
    with pytest.raises(RuntimeError, match="closed"):
        j.runs()


# -- runs ------------------------------------------------------------------------------


def test_run_round_trip(journal: Journal) -> None:
    run_id = journal.begin_run(
        argv=["opus-run", "a.yaml", "--var", "x=1"],
        cwd="/p",
        options={"concurrency": 2, "tags": ["a"]},
    )
    assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{6}", run_id)
    run = journal.get_run(run_id)
    assert isinstance(run, RunRecord)
    assert run.argv == ["opus-run", "a.yaml", "--var", "x=1"]
    assert run.cwd == "/p"
    assert run.options == {"concurrency": 2, "tags": ["a"]}
    assert run.finished_at is None and run.exit_code is None
    assert datetime.fromisoformat(run.started_at).tzinfo is not None

    journal.finish_run(run_id, 1)
    run = journal.get_run(run_id)
    assert run.exit_code == 1 and run.finished_at is not None
    journal.finish_run(run_id, 0)  # a resumed run finishes again
    assert journal.get_run(run_id).exit_code == 0


def test_explicit_run_id_and_duplicate(journal: Journal) -> None:
    assert journal.begin_run(argv=[], cwd="/", options={}, run_id="my-run") == "my-run"
    with pytest.raises(UsageError, match=r"run my-run already exists in .*state\.db"):
        journal.begin_run(argv=[], cwd="/", options={}, run_id="my-run")


def test_unknown_run_id_message(journal: Journal) -> None:
    with pytest.raises(UsageError) as info:
        journal.get_run("20990101-000000-abcdef")
    assert str(info.value).startswith(f"no run 20990101-000000-abcdef in {journal.path}; ")
    assert "holds no runs yet" in str(info.value)

    known = new_run(journal)
    with pytest.raises(UsageError, match=rf"^no run nope in .*; the most recent runs are {known}$"):
        journal.get_run("nope")
    with pytest.raises(UsageError, match=r"^no run nope in "):
        journal.finish_run("nope", 0)
    with pytest.raises(UsageError, match=r"^no run nope in "):
        journal.jobs("nope")
    with pytest.raises(UsageError, match=r"^no run nope in .*call begin_run first"):
        add(journal, "nope")


def test_runs_and_latest_run(journal: Journal) -> None:
    assert journal.latest_run() is None
    assert journal.latest_run(unfinished_only=True) is None
    assert journal.runs() == []
    ids = [journal.begin_run(argv=[], cwd="/", options={}, run_id=f"r{i}") for i in range(5)]
    assert [r.run_id for r in journal.runs()] == ids[::-1]
    assert [r.run_id for r in journal.runs(limit=2)] == ["r4", "r3"]
    latest = journal.latest_run()
    assert latest is not None and latest.run_id == "r4"


def test_latest_run_unfinished_only(journal: Journal) -> None:
    done = journal.begin_run(argv=[], cwd="/", options={}, run_id="done")
    row = add(journal, done)
    journal.set_result(row, status="COMPLETED", result={"outputs": {}}, error=None)
    journal.record_delivery(row, "outputs[0]:json", ok=True)
    journal.finish_run(done, 0)

    # never recorded its end (crashed), all jobs finished
    crashed = journal.begin_run(argv=[], cwd="/", options={}, run_id="crashed")
    journal.set_result(add(journal, crashed), status="COMPLETED", result={}, error=None)
    # recorded its end, but a job was left unfinished (--no-wait, or interrupted)
    pending = journal.begin_run(argv=[], cwd="/", options={}, run_id="pending")
    add(journal, pending)
    journal.finish_run(pending, 130)
    # everything finished but one delivery failed
    undelivered = journal.begin_run(argv=[], cwd="/", options={}, run_id="undelivered")
    urow = add(journal, undelivered)
    journal.set_result(urow, status="COMPLETED", result={}, error=None)
    journal.record_delivery(urow, "notify[0]:webhook", ok=False, error="HTTP 500")
    journal.finish_run(undelivered, 1)
    clean = journal.begin_run(argv=[], cwd="/", options={}, run_id="clean")
    journal.finish_run(clean, 0)

    def latest_unfinished() -> str | None:
        run = journal.latest_run(unfinished_only=True)
        return run.run_id if run else None

    assert journal.latest_run().run_id == "clean"  # type: ignore[union-attr]
    assert latest_unfinished() == "undelivered"
    journal.record_delivery(urow, "notify[0]:webhook", ok=True)
    assert latest_unfinished() == "pending"
    journal.set_result(journal.jobs(pending)[0].row_id, status="FAILED", result=None, error="x")
    assert latest_unfinished() == "crashed"
    journal.finish_run(crashed, 0)
    assert latest_unfinished() is None


# -- jobs ------------------------------------------------------------------------------


def test_job_round_trip(journal: Journal) -> None:
    run_id = new_run(journal)
    payload = {"in_a": {"value": ["é", 1.5, None, True], "type": "array"}, "d": date(2026, 1, 2)}
    plan = {"vars": {"when": datetime(2026, 1, 2, 3, 4, tzinfo=timezone.utc)}, "matrix": {"k": "v"}}
    row = journal.add_job(
        run_id,
        plan_key="a.yaml#matrix[1]",
        spec_path="specs/a.yaml",
        spec_digest="sha256:ff",
        spec_name="a",
        workflow_key="wf@2",
        title="Café report",
        payload=payload,
        plan=plan,
    )
    job = journal.job(row)
    assert isinstance(job, JobRecord)
    assert (job.row_id, job.run_id, job.plan_key, job.spec_path, job.spec_digest) == (
        row, run_id, "a.yaml#matrix[1]", "specs/a.yaml", "sha256:ff"
    )
    assert (job.spec_name, job.workflow_key, job.title) == ("a", "wf@2", "Café report")
    assert job.phase == "planned" and job.job_id is None and job.status is None
    assert job.result is None and job.error is None and job.deliveries == {}
    assert job.undelivered == []
    # dates are stored as text
    assert job.payload == {
        "in_a": {"value": ["é", 1.5, None, True], "type": "array"},
        "d": "2026-01-02",
    }
    assert job.plan == {"vars": {"when": "2026-01-02 03:04:00+00:00"}, "matrix": {"k": "v"}}
    assert job.created_at == job.updated_at
    # non-ASCII text is stored as UTF-8, not \u escapes
    raw = sqlite3.connect(journal.path)
    try:
        stored = raw.execute("SELECT payload FROM jobs WHERE row_id = ?", (row,)).fetchone()[0]
    finally:
        raw.close()
    assert "é" in stored

    journal.set_job_id(row, "job-123")
    assert journal.job(row).job_id == "job-123"
    found = journal.find_job("job-123")
    assert found is not None and found.row_id == row
    assert journal.find_job("job-unknown") is None

    journal.add_status(row, "IN PROGRESS")
    result = {"job_id": "job-123", "status": "COMPLETED", "outputs": {"x": 1}}
    journal.set_result(row, status="COMPLETED", result=result, error=None)
    job = journal.job(row)
    assert job.status == "COMPLETED" and job.result == result and job.phase == "finished"
    assert job.updated_at >= job.created_at

    journal.set_result(row, status="FAILED", result=None, error="boom")
    job = journal.job(row)
    assert (job.status, job.result, job.error) == ("FAILED", None, "boom")


def test_jobs_in_plan_order_and_per_run(journal: Journal) -> None:
    a = new_run(journal)
    b = new_run(journal)
    rows_a = [add(journal, a, n) for n in range(5)]
    add(journal, b, 99)
    journal.record_delivery(rows_a[2], "outputs[0]:json", ok=False, error="disk full")
    jobs = journal.jobs(a)
    assert [j.row_id for j in jobs] == rows_a
    assert [j.plan_key for j in jobs] == [f"spec.yaml#{n}" for n in range(5)]
    assert jobs[2].undelivered == ["outputs[0]:json"]
    assert [j.plan_key for j in journal.jobs(b)] == ["spec.yaml#99"]
    empty = new_run(journal)
    assert journal.jobs(empty) == []


def test_unknown_job_row(journal: Journal) -> None:
    with pytest.raises(UsageError, match=r"^no job row 42 in .*state\.db$"):
        journal.job(42)
    for call in (
        lambda: journal.set_job_id(42, "j"),
        lambda: journal.mark_executing(42),
        lambda: journal.mark_executed(42),
        lambda: journal.add_status(42, "QUEUED"),
        lambda: journal.set_result(42, status="COMPLETED", result=None, error=None),
        lambda: journal.record_delivery(42, "t", ok=True),
    ):
        with pytest.raises(UsageError, match="no job row 42"):
            call()
    assert journal.status_history(42) == []


def test_phases_move_forwards_only(journal: Journal) -> None:
    run_id = new_run(journal)
    row = add(journal, run_id)
    seen = [journal.job(row).phase]
    journal.set_job_id(row, "job-1")
    seen.append(journal.job(row).phase)
    journal.mark_executing(row)
    seen.append(journal.job(row).phase)
    journal.mark_executed(row)
    seen.append(journal.job(row).phase)
    journal.set_result(row, status="COMPLETED", result={}, error=None)
    seen.append(journal.job(row).phase)
    assert tuple(seen) == PHASES

    # a late or repeated call never moves a job back
    journal.mark_executing(row)
    journal.mark_executed(row)
    journal.set_job_id(row, "job-1")
    job = journal.job(row)
    assert job.phase == "finished" and job.job_id == "job-1"


def test_set_job_id_before_execute_may_be_replaced_after_it_is_refused(journal: Journal) -> None:
    run_id = new_run(journal)
    row = add(journal, run_id)
    journal.set_job_id(row, "first")
    journal.set_job_id(row, "second")  # initiate retried before execute was ever sent
    assert journal.job(row).job_id == "second"
    journal.mark_executing(row)
    with pytest.raises(ValueError, match="refusing to replace"):
        journal.set_job_id(row, "third")
    assert journal.job(row).job_id == "second"
    assert journal.job(row).phase == "executing"


def test_failed_write_is_rolled_back(journal: Journal) -> None:
    run_id = new_run(journal)
    row = add(journal, run_id)
    journal.set_job_id(row, "a")
    journal.mark_executing(row)
    before = journal.job(row)
    with pytest.raises(ValueError):
        journal.set_job_id(row, "b")
    assert journal.job(row) == before
    # the connection is usable (no transaction left open) after the failure
    journal.add_status(row, "QUEUED")
    assert journal.job(row).status == "QUEUED"


def test_status_history_deduplicates(journal: Journal) -> None:
    run_id = new_run(journal)
    row = add(journal, run_id)
    for status in ["QUEUED", "QUEUED", "IN PROGRESS", "IN PROGRESS", "IN PROGRESS", "QUEUED"]:
        journal.add_status(row, status)
    journal.set_result(row, status="COMPLETED", result={}, error=None)
    journal.set_result(row, status="COMPLETED", result={}, error=None)
    history = journal.status_history(row)
    assert [s for _, s in history] == ["QUEUED", "IN PROGRESS", "QUEUED", "COMPLETED"]
    times = [t for t, _ in history]
    assert times == sorted(times)
    assert all(datetime.fromisoformat(t).tzinfo is not None for t in times)
    assert journal.job(row).status == "COMPLETED"
    other = add(journal, run_id, 1)
    assert journal.status_history(other) == []


def test_add_status_touches_updated_at_only_on_change(journal: Journal) -> None:
    run_id = new_run(journal)
    row = add(journal, run_id)
    journal.add_status(row, "QUEUED")
    first = journal.job(row).updated_at
    time.sleep(0.002)
    journal.add_status(row, "QUEUED")
    assert journal.job(row).updated_at == first
    time.sleep(0.002)
    journal.add_status(row, "IN PROGRESS")
    assert journal.job(row).updated_at > first


def test_deliveries_upsert_and_undelivered(journal: Journal) -> None:
    run_id = new_run(journal)
    row = add(journal, run_id)
    journal.record_delivery(row, "outputs[0]:json", ok=True)
    journal.record_delivery(row, "outputs[1]:csv", ok=False, error="permission denied")
    journal.record_delivery(row, "notify[0]:webhook", ok=False, error="HTTP 502")
    job = journal.job(row)
    assert list(job.deliveries) == ["outputs[0]:json", "outputs[1]:csv", "notify[0]:webhook"]
    assert job.deliveries["outputs[0]:json"]["ok"] is True
    assert job.deliveries["outputs[0]:json"]["error"] is None
    assert job.deliveries["outputs[1]:csv"] == {
        "ok": False,
        "error": "permission denied",
        "at": job.deliveries["outputs[1]:csv"]["at"],
    }
    assert job.undelivered == ["outputs[1]:csv", "notify[0]:webhook"]

    # a retried delivery replaces the earlier attempt and keeps its place
    journal.record_delivery(row, "outputs[1]:csv", ok=True)
    journal.record_delivery(row, "outputs[0]:json", ok=False, error="disk full")
    job = journal.job(row)
    assert list(job.deliveries) == ["outputs[0]:json", "outputs[1]:csv", "notify[0]:webhook"]
    assert job.deliveries["outputs[1]:csv"]["error"] is None
    assert job.undelivered == ["outputs[0]:json", "notify[0]:webhook"]
    assert journal.find_job("nope") is None
    journal.set_job_id(row, "j-9")
    assert journal.find_job("j-9").undelivered == job.undelivered  # type: ignore[union-attr]
    assert journal.jobs(run_id)[0].deliveries == job.deliveries


def test_find_job_prefers_newest_row(journal: Journal) -> None:
    run_id = new_run(journal)
    old = add(journal, run_id, 0)
    new = add(journal, run_id, 1)
    journal.set_job_id(old, "same")
    journal.set_job_id(new, "same")
    assert journal.find_job("same").row_id == new  # type: ignore[union-attr]


def test_threads_share_one_journal(journal: Journal) -> None:
    run_id = new_run(journal)
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for n in range(50):
                row = add(journal, run_id, t * 1000 + n)
                journal.add_status(row, "QUEUED")
                journal.job(row)
        except BaseException as exc:  # collected so the test reports it
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    jobs = journal.jobs(run_id)
    assert len(jobs) == 200
    assert all(j.status == "QUEUED" for j in jobs)


# -- secrets ---------------------------------------------------------------------------


def test_registered_secret_never_reaches_the_db_files(tmp_path: Path) -> None:
    secret = f"sk-{uuid.uuid4().hex}"
    unicode_secret = f"clé-{uuid.uuid4().hex[:8]}-ü"
    redact.register(secret)
    redact.register(unicode_secret)

    class Opaque:
        """A non-JSON value whose text holds a secret (stored through json's default=)."""

        def __str__(self) -> str:
            return f"opaque {secret}"

    state_dir = tmp_path / "s"
    j = Journal(state_dir)
    try:
        run_id = j.begin_run(
            argv=["opus-run", "--var", f"key={secret}"],
            cwd=f"/home/{secret}",
            options={"service_key": secret, secret: [unicode_secret, ("t", secret)]},
        )
        row = j.add_job(
            run_id,
            plan_key=f"plan-{secret}",
            spec_path=f"/specs/{secret}.yaml",
            spec_digest=secret,
            spec_name=secret,
            workflow_key=secret,
            title=f"title {unicode_secret}",
            payload={"in": {"value": f"Bearer {secret}", "type": "str"}, "o": Opaque()},
            plan={"vars": {"token": secret, "path": Path(f"/x/{secret}")}},
        )
        j.set_job_id(row, f"job-{secret}")
        j.mark_executing(row)
        j.mark_executed(row)
        j.add_status(row, f"ODD {secret}")
        j.set_result(
            row,
            status="COMPLETED",
            result={"outputs": {"echo": secret, "nested": [{"k": unicode_secret}]}},
            error=f"server said {secret}",
        )
        j.record_delivery(row, f"notify[0]:{secret}", ok=False, error=f"401 for {secret}")

        wal = Path(f"{j.path}-wal")
        assert wal.exists() and wal.stat().st_size > 0  # the writes are still in the WAL
        for path in (j.path, wal):
            data = path.read_bytes()
            assert secret.encode() not in data, path
            assert unicode_secret.encode("utf-8") not in data, path
        assert b"***" in wal.read_bytes()  # the masked rows really are in the bytes read

        job = j.job(row)
        assert job.payload["in"]["value"] == "Bearer ***"
        assert job.payload["o"] == "opaque ***"
        assert job.plan["vars"] == {"token": "***", "path": "/x/***"}
        assert job.result == {"outputs": {"echo": "***", "nested": [{"k": "***"}]}}
        assert job.error == "server said ***"
        assert job.title == "title ***"
        assert job.deliveries == {
            "notify[0]:***": {
                "ok": False,
                "error": "401 for ***",
                "at": job.deliveries["notify[0]:***"]["at"],
            }
        }
        run = j.get_run(run_id)
        assert run.argv == ["opus-run", "--var", "key=***"]
        assert run.options == {"service_key": "***", "***": ["***", ["t", "***"]]}
        assert run.cwd == "/home/***"
        # lookups by the unmasked value still find what was stored masked
        assert j.find_job(f"job-{secret}").row_id == row  # type: ignore[union-attr]
        with pytest.raises(UsageError) as info:
            j.get_run(secret)
        assert secret not in str(info.value)
    finally:
        j.close()
    # after the final checkpoint everything is in the main file
    for path in state_dir.iterdir():
        data = path.read_bytes()
        assert secret.encode() not in data, path
        assert unicode_secret.encode("utf-8") not in data, path


# -- several processes and crashes -----------------------------------------------------


_WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from opus_runner.state import Journal

    state_dir, count, go = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    while not go.exists():
        time.sleep(0.005)
    with Journal(state_dir) as j:
        run_id = j.begin_run(argv=sys.argv, cwd=".", options={"writer": sys.argv[4]})
        for n in range(count):
            row = j.add_job(run_id, plan_key=f"k{n}", spec_path="s.yaml", spec_digest="d",
                            spec_name=sys.argv[4], workflow_key="w", title=f"t{n}",
                            payload={"n": n}, plan={"n": n})
            j.add_status(row, "QUEUED")
        j.finish_run(run_id, 0)
    print(run_id)
    """
)


def test_two_processes_write_concurrently(tmp_path: Path) -> None:
    state_dir = tmp_path / "shared"
    go = tmp_path / "go"
    # Both open a journal that does not exist yet, so creating the tables races too.
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(state_dir), "500", str(go), name],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("alpha", "beta")
    ]
    go.touch()
    outputs = [p.communicate(timeout=60) for p in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err
    run_ids = [out.strip() for out, _ in outputs]
    assert run_ids[0] != run_ids[1]
    with Journal(state_dir) as j:
        assert {r.run_id for r in j.runs()} == set(run_ids)
        for run_id, name in zip(run_ids, ("alpha", "beta")):
            jobs = j.jobs(run_id)
            assert [job.plan_key for job in jobs] == [f"k{n}" for n in range(500)]
            assert all(job.spec_name == name and job.status == "QUEUED" for job in jobs)
            assert [job.payload["n"] for job in jobs] == list(range(500))
            assert j.get_run(run_id).exit_code == 0


_OPENER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from opus_runner.state import Journal

    go = Path(sys.argv[2])
    while not go.exists():
        time.sleep(0.001)
    with Journal(Path(sys.argv[1])) as j:
        j.begin_run(argv=[], cwd=".", options={})
    """
)


def test_many_processes_create_one_new_journal_at_once(tmp_path: Path) -> None:
    # Switching a new file to WAL can fail at once with "locked" when another process does it
    # at the same moment; every opener must still succeed.
    for attempt in range(5):
        state_dir, go = tmp_path / f"s{attempt}", tmp_path / f"go{attempt}"
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", _OPENER, str(state_dir), str(go)],
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(4)
        ]
        time.sleep(0.15)  # let every interpreter start and wait at the line
        go.touch()
        for proc in procs:
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
        with Journal(state_dir) as j:
            assert len(j.runs()) == 4


_CRASHER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from opus_runner.state import Journal

    j = Journal(Path(sys.argv[1]))
    run_id = j.begin_run(argv=[], cwd=".", options={})
    blob = "x" * 4000  # large rows span several pages, so a torn write would show
    n = 0
    while True:
        row = j.add_job(run_id, plan_key=f"k{n}", spec_path="s", spec_digest="d", spec_name="s",
                        workflow_key="w", title="t", payload={"n": n, "blob": blob},
                        plan={"n": n, "blob": blob})
        j.set_job_id(row, f"job-{n}")
        j.mark_executing(row)
        j.mark_executed(row)
        j.add_status(row, "IN PROGRESS")
        j.set_result(row, status="COMPLETED", result={"n": n, "blob": blob}, error=None)
        j.record_delivery(row, "outputs[0]:json", ok=True)
        n += 1
        print(n, flush=True)
    """
)


def test_sigkill_mid_batch_leaves_a_consistent_journal(tmp_path: Path) -> None:
    state_dir = tmp_path / "s"
    proc = subprocess.Popen(
        [sys.executable, "-c", _CRASHER, str(state_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if int(line) >= 40:
                break
        else:
            pytest.fail(f"writer stopped early: {proc.stderr.read() if proc.stderr else ''}")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=10)
        if proc.stdout:
            proc.stdout.close()
        if proc.stderr:
            proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL

    with Journal(state_dir) as j:
        raw = sqlite3.connect(j.path)
        try:
            assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        finally:
            raw.close()
        run = j.latest_run(unfinished_only=True)
        assert run is not None and run.finished_at is None
        jobs = j.jobs(run.run_id)
        assert len(jobs) >= 40
        blob = "x" * 4000
        for n, job in enumerate(jobs):
            assert job.plan_key == f"k{n}"
            assert job.payload == {"n": n, "blob": blob}
            assert job.plan == {"n": n, "blob": blob}
            rank = PHASES.index(job.phase)
            assert (job.job_id == f"job-{n}") == (rank >= PHASES.index("initiated"))
            if job.phase == "finished":
                assert job.status == "COMPLETED"
                assert job.result == {"n": n, "blob": blob}
            else:
                assert job.result is None
        # every job before the last one went through all its steps
        for job in jobs[:-1]:
            assert job.phase == "finished" and job.deliveries["outputs[0]:json"]["ok"] is True
        # and the journal is writable again: resume can carry on
        last = jobs[-1]
        j.set_result(last.row_id, status="COMPLETED", result={}, error=None)
        j.finish_run(run.run_id, 0)


# -- import cost -----------------------------------------------------------------------


def test_import_is_cheap() -> None:
    code = (
        "import sys, json, opus_runner.state; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('httpx', 'jinja2', 'jsonschema', 'starlette', 'uvicorn', 'rich'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []
