"""Callbacks (issue 14), over real loopback HTTP: the sandbox POSTs each job's callback to the
receiver the run serves (``--callback-listen``) or to one serving the journal from elsewhere
(``opus-run callbacks serve``, here in a thread), and the runner reads status and results when
woken. Counts are the sandbox's (requests per route, callbacks sent and failed) and the
receiver's (accepted, refused)."""

from __future__ import annotations

import json
import socket
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import WF, WORKFLOWS, Project, header, make_project, old_journal, opus_run, wait_for
from opus_runner.callbacks import job_token, parse_listen, public_url_problem, token_digest
from opus_runner.callbacks.server import receiver_server
from opus_runner.state import Journal

LATER = "00000000-0000-4000-8000-0000000000c1"
#: the test workflows, and one that takes long enough to restart a receiver before it ends
CALLBACK_WORKFLOWS: dict[str, Any] = {
    "workflows": {
        **WORKFLOWS["workflows"],
        LATER: {
            "name": "Later",
            "duration": "5s",
            "inputs": [{"variable_name": "workflow_input_q", "display_name": "Question", "type": "str"}],
            "outputs": {"answer": "Later: {{ inputs.Question }}"},
        },
    }
}
NDJSON = "outputs: [{type: ndjson, path: out.ndjson}]\n"


def waiting(mode: str, safety: str = "10m") -> str:
    """A wait block: with a safety interval of 10 minutes a job ends only through its callback
    (without one, the test runs into pytest's timeout)."""
    return f"wait: {{mode: {mode}, timeout: 5m, poll_interval: 50ms, max_interval: 200ms, safety_interval: {safety}}}\n"


def spec(project: Project, name: str, mode: str = "callback", *, workflow: str = "quick", safety: str = "10m", extra: str = NDJSON) -> Path:
    body = header(name, WF.get(workflow, workflow), f"inputs:\n  Question: {name}\n" + waiting(mode, safety) + extra)
    return project.spec(f"{name}.yaml", body)


def status_reads(project: Project) -> int:
    return project.sandbox.state.requests[("GET", "status")]


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def cb_project(tmp_path: Path, opus_sandbox_factory: Callable[..., Any]) -> Project:
    return make_project(tmp_path, opus_sandbox_factory, CALLBACK_WORKFLOWS)


@pytest.fixture
def receiver(cb_project: Project) -> Iterator[Any]:
    """A receiver serving the project's journal from this process, as ``opus-run callbacks
    serve`` does from another: ``.server`` and ``.receiver``."""
    with Journal(cb_project.root / ".opus-run") as journal:
        server, counts = receiver_server(journal, "127.0.0.1", 0)
        server.start()
        try:
            yield _Served(server, counts)
        finally:
            server.stop()


class _Served:
    def __init__(self, server: Any, receiver: Any) -> None:
        self.server, self.receiver = server, receiver

    @property
    def url(self) -> str:
        return self.server.base_url


# -- delivered --------------------------------------------------------------------------


def test_a_job_woken_by_its_callback_reads_its_status_once(cb_project: Project) -> None:
    path = spec(cb_project, "one")
    result = cb_project.run("run", str(path), "--callback-listen", "127.0.0.1:0", "-q")
    assert result.exit_code == 0, result.output
    state = cb_project.sandbox.state
    assert state.callbacks_sent == 1
    # initiate, execute, one status read when woken, results: nothing more per job
    assert status_reads(cb_project) == 1
    assert state.requests[("POST", "initiate")] == 1 and state.requests[("GET", "results")] == 1
    assert [line["status"] for line in lines(cb_project.root / "out.ndjson")] == ["COMPLETED"]


def test_each_job_gets_its_own_unguessable_callback_url_and_the_journal_keeps_no_token(cb_project: Project) -> None:
    cb_project.file("rows.csv", "q\na\nb\nc\n")
    body = header("rows", "quick", "foreach: {file: rows.csv}\ninputs:\n  Question: '{{ row.q }}'\n" + waiting("callback") + NDJSON)
    path = cb_project.spec("rows.yaml", body)
    result = cb_project.run("run", str(path), "--callback-listen", "127.0.0.1:0", "-q")
    assert result.exit_code == 0, result.output
    urls = [job.callback_url for job in cb_project.sandbox.state.jobs.values()]
    tokens = [url.rsplit("/callback/", 1)[1] for url in urls]
    assert len(set(tokens)) == 3 and all(len(t) >= 43 for t in tokens)
    journal = cb_project.journal_bytes()
    assert not any(t.encode() in journal for t in tokens)
    assert status_reads(cb_project) == 3


def test_a_receiver_elsewhere_wakes_the_run_through_the_journal(cb_project: Project, receiver: _Served) -> None:
    path = spec(cb_project, "elsewhere")
    result = cb_project.run("run", str(path), "--callback-public-url", receiver.url, "-q")
    assert result.exit_code == 0, result.output
    assert receiver.receiver.accepted == 1 and receiver.receiver.rejected == 0
    assert status_reads(cb_project) == 1


def test_the_receiver_settings_can_come_from_the_spec_and_the_project_file(cb_project: Project) -> None:
    spec_side = spec(cb_project, "inspec", extra="callback: {listen: '127.0.0.1:0'}\n" + NDJSON)
    assert cb_project.run("run", str(spec_side), "-q").exit_code == 0
    (cb_project.root / "opus-runner.toml").write_text('state_dir = ".opus-run"\n[callback]\nlisten = "127.0.0.1:0"\n')
    toml_side = spec(cb_project, "intoml")
    assert cb_project.run("run", str(toml_side), "-q").exit_code == 0
    assert cb_project.sandbox.state.callbacks_sent == 2
    assert status_reads(cb_project) == 2


# -- forged, duplicated, late ----------------------------------------------------------------


def executed_callback_url(project: Project) -> str:
    """The callback URL of the one job, once its execute was processed: the request is counted
    when it arrives, before the handler has stored the URL it carries."""
    jobs = project.sandbox.state.jobs
    wait_for(lambda: any(job.callback_url for job in list(jobs.values())))
    return str(next(job.callback_url for job in list(jobs.values()) if job.callback_url))


def test_forged_callbacks_get_404_are_counted_and_change_nothing(cb_project: Project, receiver: _Served) -> None:
    path = spec(cb_project, "forged", workflow=LATER)
    child = opus_run(cb_project, "run", str(path), "--callback-public-url", receiver.url, "-q")
    try:
        real = executed_callback_url(cb_project)
        token = real.rsplit("/", 1)[1]
        forged = [
            f"{receiver.url}/callback/{'A' * 43}",
            f"{receiver.url}/callback/{token[:-1]}{'B' if token[-1] != 'B' else 'C'}",
            f"{receiver.url}/callback/",
            f"{receiver.url}/callback",
        ]
        for url in forged:
            answer = httpx.post(url, json={"jobExecutionId": "1", "status": "COMPLETED"})
            assert answer.status_code == 404
        assert receiver.receiver.rejected == len(forged)
        assert receiver.receiver.accepted == 0
        assert status_reads(cb_project) == 0  # a forged wake-up reads nothing
        out, err = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 0, err
    assert receiver.receiver.accepted == 1
    assert status_reads(cb_project) == 1


def test_duplicated_and_late_callbacks_change_nothing(cb_project: Project, receiver: _Served) -> None:
    path = spec(cb_project, "dup")
    result = cb_project.run("run", str(path), "--callback-public-url", receiver.url, "-q")
    assert result.exit_code == 0, result.output
    real = next(iter(cb_project.sandbox.state.jobs.values())).callback_url
    # Delivered again after the run ended (late), twice (duplicated), with another body
    # (reordered or rewritten): accepted, since the token is right, and nothing changes.
    for body in ({"status": "FAILED"}, {"status": "COMPLETED", "results": {"answer": "forged"}}):
        assert httpx.post(real, json=body).status_code == 200
    assert receiver.receiver.accepted == 3
    assert [line["status"] for line in lines(cb_project.root / "out.ndjson")] == ["COMPLETED"]
    assert lines(cb_project.root / "out.ndjson")[0]["outputs"] == {"answer": "Answer to dup"}
    assert status_reads(cb_project) == 1
    assert cb_project.sandbox.state.requests[("GET", "results")] == 1
    db = sqlite3.connect(cb_project.root / ".opus-run" / "state.db")
    try:
        calls = db.execute("SELECT shape FROM callback_calls ORDER BY seq").fetchall()
        status = db.execute("SELECT status, phase FROM jobs").fetchall()
    finally:
        db.close()
    assert len(calls) == 3
    assert "forged" not in json.dumps(calls)  # the shape of a body, never its values
    assert status == [("COMPLETED", "finished")]


def test_a_body_is_logged_by_shape_under_verbose(cb_project: Project) -> None:
    path = spec(cb_project, "shape")
    result = cb_project.run("run", str(path), "--callback-listen", "127.0.0.1:0", "-v")
    assert result.exit_code == 0, result.output
    line = next(text for text in result.stderr.splitlines() if "body shape" in text)
    assert '"status": "string"' in line and "Answer to shape" not in line


# -- dropped, receiver down, restarted ----------------------------------------------------


def test_with_the_receiver_down_hybrid_finishes_every_job_by_polling(cb_project: Project) -> None:
    with socket.socket() as sock:  # a port nobody listens on once it is closed
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    cb_project.file("rows.csv", "q\na\nb\nc\n")
    body = header("down", "quick", "foreach: {file: rows.csv}\ninputs:\n  Question: '{{ row.q }}'\n" + waiting("hybrid", "200ms") + NDJSON)
    path = cb_project.spec("down.yaml", body)
    result = cb_project.run("run", str(path), "--callback-public-url", dead, "-q")
    assert result.exit_code == 0, result.output
    # the sandbox POSTs each callback callback_delay (0.2 s) after its job ends: maybe after the run
    wait_for(lambda: cb_project.sandbox.state.callbacks_failed == 3)
    assert cb_project.sandbox.state.callbacks_sent == 0
    assert sorted(line["status"] for line in lines(cb_project.root / "out.ndjson")) == ["COMPLETED"] * 3


def test_a_receiver_restarted_mid_run_wakes_the_jobs_that_end_after(cb_project: Project) -> None:
    with Journal(cb_project.root / ".opus-run") as journal:
        server, counts = receiver_server(journal, "127.0.0.1", 0)
        server.start()
        url, port = server.base_url, server.port
        server.stop()  # down when the run starts
        # One job at a time: the first ends (its callback lost, found by its 200 ms safety
        # read), then the second runs 5 s, far longer than the restart takes; its safety read is
        # 10 minutes away, so only its callback can end it.
        first = spec(cb_project, "first", "hybrid", safety="200ms")
        second = spec(cb_project, "second", "hybrid", workflow=LATER)
        child = opus_run(cb_project, "run", str(first), str(second), "--callback-public-url", url, "--concurrency", "1", "-q")
        try:
            wait_for(lambda: cb_project.sandbox.state.callbacks_failed == 1)
            restarted, counts = receiver_server(journal, "127.0.0.1", port)
            restarted.start()
            try:
                out, err = child.communicate(timeout=30)
            finally:
                restarted.stop()
        finally:
            if child.poll() is None:
                child.kill()
    assert child.returncode == 0, err
    assert counts.accepted == 1
    assert cb_project.sandbox.state.callbacks_sent == 1 and cb_project.sandbox.state.callbacks_failed == 1
    statuses = {line["spec_name"]: line["status"] for line in lines(cb_project.root / "out.ndjson")}
    assert statuses == {"first": "COMPLETED", "second": "COMPLETED"}


def test_two_runs_share_one_receiver(cb_project: Project, receiver: _Served) -> None:
    one, two = spec(cb_project, "one", workflow="medium"), spec(cb_project, "two", workflow="medium")
    children = [opus_run(cb_project, "run", str(path), "--callback-public-url", receiver.url, "-q") for path in (one, two)]
    try:
        ends = [child.communicate(timeout=30) for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
    assert [child.returncode for child in children] == [0, 0], ends
    assert receiver.receiver.accepted == 2 and receiver.receiver.rejected == 0
    assert status_reads(cb_project) == 2
    runs = sqlite3.connect(cb_project.root / ".opus-run" / "state.db").execute("SELECT DISTINCT run_id FROM callback_calls").fetchall()
    assert len(runs) == 2


# -- bad input ------------------------------------------------------------------------------


def test_callback_mode_without_a_receiver_is_a_validation_error_naming_what_to_set(cb_project: Project) -> None:
    path = spec(cb_project, "nobody")
    result = cb_project.run("run", str(path))
    assert result.exit_code == 2
    assert "wait.mode is 'callback', but no callback receiver is configured" in result.output
    assert "callback.public_url" in result.output and "--callback-listen" in result.output
    assert cb_project.sandbox.state.requests[("POST", "initiate")] == 0


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--callback-public-url", "http://ci.example.com/opus"], "--callback-public-url must be https"),
        (["--callback-public-url", "ftp://x"], "must be an https URL"),
        (["--callback-listen", "8787"], "--callback-listen must be HOST:PORT"),
        (["--callback-listen", "0.0.0.0:8787"], "set callback.public_url"),
    ],
)
def test_bad_receiver_options_are_refused_before_anything_is_sent(cb_project: Project, args: list[str], words: str) -> None:
    path = spec(cb_project, "bad", "hybrid")
    result = cb_project.run("run", str(path), *args)
    assert result.exit_code == 2, result.output
    assert words in result.output
    assert "Traceback" not in result.output
    assert cb_project.sandbox.state.requests[("POST", "initiate")] == 0


def test_a_receiver_port_in_use_is_one_sentence_naming_the_port(cb_project: Project) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        port = sock.getsockname()[1]
        path = spec(cb_project, "busy")
        result = cb_project.run("run", str(path), "--callback-listen", f"127.0.0.1:{port}")
    assert result.exit_code == 2, result.output
    assert f"Cannot serve the callback receiver on 127.0.0.1:{port}" in result.output
    assert cb_project.sandbox.state.requests[("POST", "initiate")] == 0


def test_a_spec_with_its_own_callback_url_cannot_wait_for_callbacks(cb_project: Project) -> None:
    path = spec(cb_project, "own", extra="callback: {url: 'https://hooks.example.com/x'}\n")
    result = cb_project.run("validate", str(path), "--callback-listen", "127.0.0.1:0")
    assert result.exit_code == 2
    assert "callback.url sends this job's callback to your own receiver" in result.output


def test_two_specs_naming_different_receivers_are_refused(cb_project: Project) -> None:
    a = spec(cb_project, "a", extra="callback: {public_url: 'https://a.example.com/cb'}\n")
    b = spec(cb_project, "b", extra="callback: {public_url: 'https://b.example.com/cb'}\n")
    result = cb_project.run("run", str(a), str(b))
    assert result.exit_code == 2
    assert "a run has one callback receiver" in result.output


# -- units: tokens, addresses ----------------------------------------------------------------


def test_tokens_are_keyed_and_bound_to_run_plan_and_job() -> None:
    key = b"k" * 32
    token = job_token(key, "run", "plan", "1")
    assert token == job_token(key, "run", "plan", "1")
    others = {job_token(b"x" * 32, "run", "plan", "1"), job_token(key, "run2", "plan", "1"), job_token(key, "run", "plan2", "1"), job_token(key, "run", "plan", "2")}
    assert token not in others and len(others) == 4
    assert token_digest(token) != token and len(token_digest(token)) == 64


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://ci.example.com/opus", True),
        ("http://127.0.0.1:8787", True),
        ("http://[::1]:8787", True),
        ("http://ci.example.com/opus", False),
        ("https://user:pw@ci.example.com", False),
        ("https://ci.example.com/?x=1", False),
        ("ci.example.com", False),
    ],
)
def test_public_urls(url: str, ok: bool) -> None:
    assert (public_url_problem(url) is None) is ok


def test_listen_addresses() -> None:
    assert parse_listen("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_listen("[::1]:8787") == ("::1", 8787)
    for bad in ("8787", ":8787", "host:x", "host:70000"):
        with pytest.raises(ValueError):
            parse_listen(bad)


def test_a_journal_of_schema_3_gains_the_callback_tables(tmp_path: Path) -> None:
    from opus_runner import state

    folder = tmp_path / "old"
    old_journal(folder, version=3, up_to="callbacks")
    with Journal(folder) as journal:
        assert journal.callbacks_since("r1", 0) == []
        assert journal.get_run("r1").run_id == "r1"
    raw = sqlite3.connect(folder / "state.db")
    try:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == state.SCHEMA_VERSION == 4
    finally:
        raw.close()


def test_a_token_whose_digest_is_known_but_whose_hmac_is_wrong_is_refused(tmp_path: Path) -> None:
    """The digest lookup finds the job; the constant-time HMAC comparison still refuses a token
    that is not the job's (a journal row planted or copied from another run's key)."""
    from opus_runner.callbacks.receiver import CallbackReceiver

    with Journal(tmp_path / "state") as journal:
        run_id = journal.begin_run(argv=[], cwd=str(tmp_path), options={})
        row = journal.add_job(run_id, plan_key="p", spec_path="s", spec_digest="d", spec_name="s", workflow_key="w", title="t", payload={}, plan={})
        journal.set_job_id(row, "42")
        planted = job_token(b"another key" * 3, run_id, "p", "42")
        journal.add_callback(row, token_digest(planted))
        receiver = CallbackReceiver(journal)
        assert receiver.accept(planted, {}) is False
        assert receiver.rejected == 1
        real = job_token(journal.derived_key("callback-token", run_id), run_id, "p", "42")
        journal.add_callback(row, token_digest(real))
        assert receiver.accept(real, {}) is True
        assert journal.callbacks_since(run_id, 0) == [(1, row)]


def test_without_a_mode_a_configured_receiver_means_hybrid(cb_project: Project) -> None:
    body = header("plain", "quick", "inputs:\n  Question: plain\nwait: {timeout: 30s, poll_interval: 50ms}\n" + NDJSON)
    path = cb_project.spec("plain.yaml", body)
    result = cb_project.run("run", str(path), "--callback-listen", "127.0.0.1:0", "-q")
    assert result.exit_code == 0, result.output
    # hybrid: no read at once (polling would read at once, then every 50 ms); one when woken
    assert status_reads(cb_project) == 1
    assert cb_project.sandbox.state.callbacks_sent == 1


def test_a_callback_that_comes_before_the_status_says_so_is_followed_by_a_few_quick_reads(cb_project: Project, receiver: _Served) -> None:
    path = spec(cb_project, "early", workflow="slow")  # runs 30 s: it is running throughout
    child = opus_run(cb_project, "run", str(path), "--callback-public-url", receiver.url, "-q")
    try:
        real = executed_callback_url(cb_project)
        assert httpx.post(real, json={}).status_code == 200
        # the early wake-up's read (IN PROGRESS), then three quick reads at the poll interval:
        # what catches a status that lags its callback. Without them: one read, then 10 minutes.
        wait_for(lambda: status_reads(cb_project) >= 4)
    finally:
        child.kill()
        child.communicate(timeout=30)
    assert receiver.receiver.accepted == 1


def test_a_callback_that_came_while_the_run_was_down_wakes_the_job_on_resume(cb_project: Project, receiver: _Served) -> None:
    import signal

    path = spec(cb_project, "crashed", workflow=LATER)
    child = opus_run(cb_project, "run", str(path), "--callback-public-url", receiver.url, "-q")
    try:
        # An early wake-up makes the run read the status once (IN PROGRESS), which journals
        # the job as executed: resume then follows it without settling anything first.
        real = executed_callback_url(cb_project)
        assert httpx.post(real, json={}).status_code == 200
        wait_for(lambda: any(r["phase"] == "executed" for r in journal_rows(cb_project)))
    finally:
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=30)
    wait_for(lambda: receiver.receiver.accepted == 2)  # the job ended while nobody followed it
    reads_before = status_reads(cb_project)
    result = cb_project.run("resume", "-q")
    assert result.exit_code == 0, result.output
    assert status_reads(cb_project) - reads_before == 1
    assert cb_project.sandbox.state.requests[("POST", "execute")] == 1
    assert [line["status"] for line in lines(cb_project.root / "out.ndjson")] == ["COMPLETED"]
    assert cb_project.sandbox.state.executes and set(cb_project.sandbox.state.executes.values()) == {1}


def test_callbacks_serve_prints_its_address_refuses_forgeries_and_stops_on_sigterm(cb_project: Project) -> None:
    import signal

    child = opus_run(cb_project, "callbacks", "serve", "--port", "0")
    try:
        first = child.stdout.readline().strip()
        assert first.startswith("Opus callback receiver listening on http://127.0.0.1:"), first
        url = first.rsplit(" ", 1)[1]
        assert httpx.post(f"{url}/callback/{'x' * 43}", json={}).status_code == 404
        assert httpx.get(f"{url}/healthz").json() == {"ok": True, "accepted": 0, "rejected": 1}
        child.send_signal(signal.SIGTERM)
        out, err = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 0, err
    assert "Traceback" not in err


def journal_rows(project: Project) -> list[Any]:
    path = project.root / ".opus-run" / "state.db"
    if not path.exists():
        return []
    db = sqlite3.connect(path)
    db.row_factory = sqlite3.Row
    try:
        return db.execute("SELECT * FROM jobs").fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        db.close()


def test_dropped_callbacks_are_made_up_for_by_the_safety_reads(cb_project: Project) -> None:
    cb_project.sandbox.faults.add({"route": "callback", "kind": "drop", "times": 2})
    cb_project.file("rows.csv", "q\na\nb\nc\n")
    body = header("dropped", "quick", "foreach: {file: rows.csv}\ninputs:\n  Question: '{{ row.q }}'\n" + waiting("hybrid", "300ms") + NDJSON)
    path = cb_project.spec("dropped.yaml", body)
    result = cb_project.run("run", str(path), "--callback-listen", "127.0.0.1:0", "-q")
    assert result.exit_code == 0, result.output
    wait_for(lambda: cb_project.sandbox.state.callbacks_dropped == 2)
    assert sorted(line["status"] for line in lines(cb_project.root / "out.ndjson")) == ["COMPLETED"] * 3


def test_a_callback_the_platform_sends_twice_changes_nothing(cb_project: Project, receiver: _Served) -> None:
    cb_project.sandbox.faults.add({"route": "callback", "kind": "duplicate", "gap": 0.2})
    path = spec(cb_project, "twice")
    result = cb_project.run("run", str(path), "--callback-public-url", receiver.url, "-q")
    assert result.exit_code == 0, result.output
    wait_for(lambda: receiver.receiver.accepted == 2)
    assert cb_project.sandbox.state.callbacks_duplicated == 1
    assert [line["status"] for line in lines(cb_project.root / "out.ndjson")] == ["COMPLETED"]
    assert cb_project.sandbox.state.requests[("GET", "results")] == 1
