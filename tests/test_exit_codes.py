"""Every row of the exit-code table (``opus_runner.errors.EXIT_CODES``, printed in docs/cli.md),
driven for every command the row names, over real HTTP against the sandbox.

Each case is one function registered with :func:`case` under ``(command, code, what)``; a
meta-test checks the cases cover exactly the commands each row names, so a row, a command or a
case cannot be added without the others.
"""

from __future__ import annotations

import contextlib
import copy
import json
import signal
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from opus_runner.cli import main
from opus_runner.errors import EXIT_CODES, TlsError

from conftest import WF, WORKFLOWS, Project, header, make_project, opus_run, wait_for
from temporal_support import DevServer, need_temporal, run_cli

#: A workflow slow enough to interrupt that then fails, for resume's exit 1.
SLOW_BROKEN = "00000000-0000-4000-8000-0000000000b1"
UNKNOWN = "00000000-0000-4000-8000-0000000000ff"
WRONG_KEY = {"OPUS_SERVICE_KEY": "sk-wrong-key-000000"}

_WORKFLOWS = copy.deepcopy(WORKFLOWS)
_WORKFLOWS["workflows"][SLOW_BROKEN] = {
    **WORKFLOWS["workflows"][WF["broken"]],
    "name": "Slow, then broken",
    "duration": "1.5s",
}

Case = Callable[[Project], int]
CASES: dict[tuple[str, int, str], Case] = {}


def case(command: str, code: int, what: str) -> Callable[[Case], Case]:
    def register(fn: Case) -> Case:
        CASES[(command, code, what)] = fn
        return fn

    return register


@pytest.fixture
def exit_project(tmp_path: Path, opus_sandbox_factory: Callable[..., Any]) -> Project:
    project = make_project(tmp_path, opus_sandbox_factory, _WORKFLOWS)
    project.spec("ok.yaml", header("ok", "quick") + "inputs:\n  Question: q\n")
    return project


def _submitted(project: Project, spec: str) -> str:
    """Submit ``spec`` with --no-wait; the job id."""
    result = project.run("run", spec, "--no-wait", "--format", "json")
    assert result.exit_code == 0, result.output
    return next(e["job_id"] for e in project.events(result) if e["event"] == "submitted")


def _finished(project: Project, spec: str, code: int) -> str:
    result = project.run("run", spec, "--format", "json")
    assert result.exit_code == code, result.output
    return next(e["job_id"] for e in project.events(result) if e["event"] == "submitted")


def _interrupted_run(project: Project, workflow: str, signum: int = signal.SIGINT) -> tuple[int, str, str]:
    """``opus-run run`` of one job of ``workflow`` stopped by ``signum`` once the job runs:
    (exit code, stderr, run id from the resume hint)."""
    project.spec("long.yaml", header("long", workflow) + "inputs:\n  Question: q\n")
    proc = opus_run(project, "run", "long.yaml")
    wait_for(lambda: len(project.sandbox.state.executes) >= 1)
    proc.send_signal(signum)
    _out, err = proc.communicate(timeout=30)
    run_id = err.split("opus-run resume ")[1].split()[0] if "opus-run resume " in err else ""
    return proc.returncode, err, run_id


def _interrupt_when_waiting(project: Project, *args: str, signum: int = signal.SIGINT) -> int:
    """Run ``opus-run ARGS`` as a child; once it waits on a request the sandbox holds (a delay
    fault on every route), stop it with ``signum``. Its exit code."""
    before = sum(project.sandbox.state.requests.values())
    project.sandbox.faults.add({"route": "*", "kind": "delay", "seconds": 20})
    proc = opus_run(project, *args)
    try:
        wait_for(lambda: sum(project.sandbox.state.requests.values()) > before)
        proc.send_signal(signum)
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        project.sandbox.faults.clear()
    assert "Traceback" not in err and "unexpected error" not in err, err
    assert "error: interrupted" in err, err
    return proc.returncode


# -- 0: success ------------------------------------------------------------------------------


@case("run", 0, "completed")
def _(p: Project) -> int:
    return p.run("run", "ok.yaml").exit_code


@case("validate", 0, "valid")
def _(p: Project) -> int:
    return p.run("validate", "ok.yaml").exit_code


@case("render", 0, "rendered")
def _(p: Project) -> int:
    return p.run("render", "ok.yaml").exit_code


@case("schema", 0, "shown")
def _(p: Project) -> int:
    return p.run("schema", WF["quick"]).exit_code


@case("init", 0, "written")
def _(p: Project) -> int:
    result = p.run("init", WF["quick"], "-o", "new.yaml")
    assert (p.root / "new.yaml").is_file()
    return result.exit_code


@case("status", 0, "completed")
def _(p: Project) -> int:
    job = _finished(p, "ok.yaml", 0)
    result = p.run("status", job)
    assert result.stdout.strip() == "COMPLETED"
    return result.exit_code


@case("results", 0, "completed")
def _(p: Project) -> int:
    job = _finished(p, "ok.yaml", 0)
    result = p.run("results", job, "--format", "json")
    assert json.loads(result.stdout)["outputs"] == {"answer": "Answer to q"}
    return result.exit_code


@case("jobs", 0, "listed")
def _(p: Project) -> int:
    _finished(p, "ok.yaml", 0)
    return p.run("jobs").exit_code


@case("workflows", 0, "listed")
def _(p: Project) -> int:
    return p.run("workflows", "ok.yaml").exit_code


@case("audit", 0, "shown")
def _(p: Project) -> int:
    return p.run("audit", _finished(p, "ok.yaml", 0)).exit_code


@case("resume", 0, "finished")
def _(p: Project) -> int:
    code, _err, run_id = _interrupted_run(p, WF["medium"])
    assert code == 130 and run_id
    return p.run("resume", run_id).exit_code


@case("runs", 0, "listed")
def _(p: Project) -> int:
    assert p.run("run", "ok.yaml").exit_code == 0
    result = p.run("runs")
    assert "1 completed" in result.stdout
    return result.exit_code


@case("rerun", 0, "completed this time")
def _(p: Project) -> int:
    p.spec("med.yaml", header("med", "medium") + "inputs:\n  Question: q\n")
    assert p.run("run", "med.yaml", "--timeout", "200ms").exit_code == 1
    return p.run("rerun", "--failed", "--timeout", "20s").exit_code


@case("wait", 0, "completed")
def _(p: Project) -> int:
    result = p.run("wait", _submitted(p, "ok.yaml"), "--interval", "50ms")
    assert result.stdout.strip() == "COMPLETED"
    return result.exit_code


@case("plugins", 0, "listed")
def _(p: Project) -> int:
    return p.run("plugins").exit_code


@case("lock", 0, "written")
def _(p: Project) -> int:
    return p.run("lock", "ok.yaml").exit_code


@case("drift", 0, "no change")
def _(p: Project) -> int:
    assert p.run("lock", "ok.yaml").exit_code == 0
    return p.run("drift", "ok.yaml").exit_code


@case("report", 0, "written")
def _(p: Project) -> int:
    assert p.run("run", "ok.yaml").exit_code == 0
    return p.run("report", "-o", "run.html").exit_code


@case("spec-schema", 0, "printed")
def _(p: Project) -> int:
    return p.run("spec-schema").exit_code


@case("sandbox", 0, "stopped with ctrl-c")
def _(p: Project) -> int:
    proc = opus_run(p, "sandbox", "--port", "0")
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("Opus sandbox listening on")
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode


@contextlib.contextmanager
def _temporal(p: Project) -> Iterator[DevServer]:
    server = DevServer(need_temporal(), p.root.parent).start()
    try:
        yield server
    finally:
        server.stop()


@case("submit", 0, "submitted")
def _(p: Project) -> int:
    with _temporal(p) as server:
        return run_cli(p.root, p.env, "submit", "ok.yaml", "--engine", "temporal", "--temporal-address", server.address).exit_code


@case("cancel", 0, "told to stop")
def _(p: Project) -> int:
    with _temporal(p) as server:
        where = ("--engine", "temporal", "--temporal-address", server.address)
        assert run_cli(p.root, p.env, "submit", "ok.yaml", "--run-id", "r", *where).exit_code == 0
        return run_cli(p.root, p.env, "cancel", "r", *where).exit_code


@case("worker", 0, "stopped with ctrl-c")
def _(p: Project) -> int:
    with _temporal(p) as server:
        proc = opus_run(p, "worker", "--engine", "temporal", "--temporal-address", server.address)
        try:
            assert proc.stderr is not None
            assert proc.stderr.readline().startswith("worker polling task queue 'opus-runner'")
            proc.send_signal(signal.SIGINT)
            _out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert "Traceback" not in err, err
        return proc.returncode


# -- 1: a job failed, or what was to deliver its result --------------------------------------


@case("run", 1, "job failed")
def _(p: Project) -> int:
    p.spec("bad.yaml", header("bad", "broken") + "inputs:\n  Question: q\n")
    result = p.run("run", "bad.yaml")
    assert "model quota exceeded" in result.output
    return result.exit_code


@case("run", 1, "webhook failed")
def _(p: Project) -> int:
    url = f"{p.sandbox.base_url}/no-such-hook"
    p.spec("hook.yaml", header("hook", "quick") + f"inputs:\n  Question: q\nnotify:\n  - {{type: webhook, url: '{url}', on: [submitted, completed]}}\n")
    result = p.run("run", "hook.yaml")
    assert "notifier 'webhook'" in result.stderr and "HTTP 404" in result.stderr
    return result.exit_code


@case("run", 1, "webhook failed, no wait")
def _(p: Project) -> int:
    url = f"{p.sandbox.base_url}/no-such-hook"
    p.spec("hook.yaml", header("hook", "quick") + f"inputs:\n  Question: q\nnotify:\n  - {{type: webhook, url: '{url}', on: [submitted]}}\n")
    return p.run("run", "hook.yaml", "--no-wait").exit_code


@case("resume", 1, "job failed")
def _(p: Project) -> int:
    code, _err, run_id = _interrupted_run(p, SLOW_BROKEN)
    assert code == 130 and run_id
    return p.run("resume", run_id).exit_code


@case("status", 1, "failed")
def _(p: Project) -> int:
    p.spec("bad.yaml", header("bad", "broken") + "inputs:\n  Question: q\n")
    result = p.run("status", _finished(p, "bad.yaml", 1))
    assert result.stdout.strip() == "FAILED"
    return result.exit_code


@case("results", 1, "failed")
def _(p: Project) -> int:
    p.spec("bad.yaml", header("bad", "broken") + "inputs:\n  Question: q\n")
    result = p.run("results", _finished(p, "bad.yaml", 1), "--format", "json")
    shown = json.loads(result.stdout)
    assert shown["status"] == "FAILED" and "model quota exceeded" in shown["error"]
    return result.exit_code


@case("rerun", 1, "failed again")
def _(p: Project) -> int:
    p.spec("bad.yaml", header("bad", "broken") + "inputs:\n  Question: q\n")
    _finished(p, "bad.yaml", 1)
    result = p.run("rerun", "--failed")
    assert "model quota exceeded" in result.output
    return result.exit_code


@case("wait", 1, "failed")
def _(p: Project) -> int:
    p.spec("bad.yaml", header("bad", "broken") + "inputs:\n  Question: q\n")
    result = p.run("wait", _submitted(p, "bad.yaml"), "--interval", "50ms")
    assert result.stdout.strip() == "FAILED"
    return result.exit_code


@case("drift", 1, "a spec breaks")
def _(p: Project) -> int:
    assert p.run("lock", "ok.yaml").exit_code == 0
    changed = copy.deepcopy(_WORKFLOWS)
    changed["workflows"][WF["quick"]]["inputs"].append({"variable_name": "workflow_input_new", "display_name": "New", "type": "str"})
    live = p.sandbox.__class__(changed).start()
    try:
        return p.run("drift", "ok.yaml", env={"OPUS_BASE_URL": live.base_url, "OPUS_SERVICE_KEY": live.key}).exit_code
    finally:
        live.stop()


# -- 2: the input is wrong, nothing submitted --------------------------------------------------

#: Each command, with arguments that would otherwise work, for "opus-runner.toml is broken".
EVERY_COMMAND: dict[str, tuple[str, ...]] = {
    "run": ("run", "ok.yaml"),
    "validate": ("validate", "ok.yaml"),
    "render": ("render", "ok.yaml"),
    "resume": ("resume",),
    "schema": ("schema", WF["quick"]),
    "init": ("init", WF["quick"]),
    "lock": ("lock", "ok.yaml"),
    "drift": ("drift", "ok.yaml"),
    "status": ("status", "1"),
    "results": ("results", "1"),
    "audit": ("audit", "1"),
    "plugins": ("plugins",),
    "spec-schema": ("spec-schema",),
    "sandbox": ("sandbox", "--port", "0"),
    "runs": ("runs",),
    "rerun": ("rerun", "--failed"),
    "wait": ("wait", "1"),
    "jobs": ("jobs",),
    "workflows": ("workflows", "ok.yaml"),
    "submit": ("submit", "ok.yaml", "--engine", "temporal"),
    "worker": ("worker", "--engine", "temporal"),
    "cancel": ("cancel", "some-run", "--engine", "temporal"),
}


def _broken_toml(command: str) -> Case:
    def run(p: Project) -> int:
        (p.root / "opus-runner.toml").write_text('state_dir = ".opus-run"\nconcurrence = 4\n')
        before = sum(p.sandbox.state.requests.values())
        result = p.run(*EVERY_COMMAND[command])
        assert "opus-runner.toml: unknown setting 'concurrence'" in result.stderr, result.output
        assert sum(p.sandbox.state.requests.values()) == before  # nothing asked, nothing submitted
        return result.exit_code

    return run


for _command in EVERY_COMMAND:
    case(_command, 2, "opus-runner.toml error")(_broken_toml(_command))


def _unknown_workflow(command: str) -> Case:
    def run(p: Project) -> int:
        p.spec("unknown.yaml", header("unknown", UNKNOWN) + "inputs:\n  Question: q\n")
        result = p.run(command, "unknown.yaml")
        assert f"unknown.yaml:6: workflow.id: workflow '{UNKNOWN}' was not found" in result.stderr, result.output
        assert p.sandbox.state.count("POST", "execute") == 0
        return result.exit_code

    return run


for _command in ("run", "validate", "render", "lock"):
    case(_command, 2, "unknown workflow")(_unknown_workflow(_command))


def _unknown_workflow_id(command: str) -> Case:
    def run(p: Project) -> int:
        result = p.run(command, UNKNOWN)
        assert result.stderr.strip() == (
            f"error: workflow '{UNKNOWN}' not found at {p.sandbox.base_url}; check the workflow id (and --base-url or OPUS_BASE_URL)"
        )
        return result.exit_code

    return run


for _command in ("schema", "init"):
    case(_command, 2, "unknown workflow")(_unknown_workflow_id(_command))


def _unknown_job(command: str) -> Case:
    def run(p: Project) -> int:
        result = p.run(command, "424242")
        assert result.stderr.strip() == (
            f"error: job '424242' not found at {p.sandbox.base_url}; check the job id (and --base-url or OPUS_BASE_URL)"
        )
        return result.exit_code

    return run


for _command in ("status", "results", "audit", "wait"):
    case(_command, 2, "unknown job")(_unknown_job(_command))


@case("rerun", 2, "nothing to rerun")
def _(p: Project) -> int:
    assert p.run("run", "ok.yaml").exit_code == 0
    result = p.run("rerun", "--failed")
    assert "nothing to rerun" in result.stderr
    return result.exit_code


@case("runs", 2, "bad limit")
def _(p: Project) -> int:
    result = p.run("runs", "--limit", "0")
    assert result.stderr.strip() == "error: --limit must be 1 or more, found 0"
    return result.exit_code


@case("run", 2, "invalid spec")
def _(p: Project) -> int:
    p.spec("bad.yaml", header("bad", "quick") + "inputs:\n  Question: q\n  Colour: red\n")
    result = p.run("run", "bad.yaml")
    assert p.sandbox.state.count("POST", "execute") == 0
    return result.exit_code


@case("run", 2, "no service key")
def _(p: Project) -> int:
    result = p.run("run", "ok.yaml", env={"OPUS_SERVICE_KEY": ""})
    assert "OPUS_SERVICE_KEY" in result.stderr
    return result.exit_code


@case("status", 2, "no service key")
def _(p: Project) -> int:
    return p.run("status", "1", env={"OPUS_SERVICE_KEY": ""}).exit_code


@case("resume", 2, "nothing to resume")
def _(p: Project) -> int:
    assert p.run("run", "ok.yaml").exit_code == 0
    result = p.run("resume")
    assert "nothing to resume" in result.stderr
    return result.exit_code


@case("drift", 2, "no lock")
def _(p: Project) -> int:
    return p.run("drift", "ok.yaml").exit_code


@case("plugins", 2, "plugin does not load")
def _(p: Project) -> int:
    p.file("plugins/broken.py", "def oops(:\n")
    result = p.run("plugins")
    assert "broken" in result.stderr
    return result.exit_code


@case("report", 2, "unknown run")
def _(p: Project) -> int:
    assert p.run("run", "ok.yaml").exit_code == 0
    result = p.run("report", "no-such-run")
    assert "no run no-such-run" in result.stderr
    return result.exit_code


@case("sandbox", 2, "bad fixture")
def _(p: Project) -> int:
    p.file("wf.yaml", "workflows: [1, 2]\n")
    return p.run("sandbox", "--port", "0", "--workflows", "wf.yaml").exit_code


@case("callbacks", 0, "stopped with ctrl-c")
def _(p: Project) -> int:
    proc = opus_run(p, "callbacks", "serve", "--port", "0")
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("Opus callback receiver listening on")
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode


@case("callbacks", 2, "port in use")
def _(p: Project) -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        return p.run("callbacks", "serve", "--port", str(sock.getsockname()[1])).exit_code


@case("help", 0, "a command's help")
def _(p: Project) -> int:
    return p.run("help", "run").exit_code


@case("help", 2, "no such command")
def _(p: Project) -> int:
    return p.run("help", "valdiate").exit_code


@case("version", 0, "the version")
def _(p: Project) -> int:
    return p.run("version").exit_code


@case("version", 2, "an argument it does not take")
def _(p: Project) -> int:
    return p.run("version", "--nope").exit_code


# -- 3: API, auth or network --------------------------------------------------------------------

#: Each command that talks to the API, with arguments that reach it.
API_ARGS: dict[str, tuple[str, ...]] = {
    "run": ("run", "ok.yaml"),
    "validate": ("validate", "ok.yaml"),
    "render": ("render", "ok.yaml"),
    "schema": ("schema", WF["quick"]),
    "init": ("init", WF["quick"]),
    "lock": ("lock", "ok.yaml"),
    "status": ("status", "1"),
    "results": ("results", "1"),
    "audit": ("audit", "1"),
    "wait": ("wait", "1"),
    "jobs": ("jobs",),
    "workflows": ("workflows", "ok.yaml"),
    "submit": ("submit", "ok.yaml", "--engine", "temporal", "--temporal-address", "127.0.0.1:9"),
}


def _wrong_key(command: str) -> Case:
    def run(p: Project) -> int:
        result = p.run(*API_ARGS[command], env=WRONG_KEY)
        assert "the service key was rejected" in result.stderr, result.output
        return result.exit_code

    return run


for _command in API_ARGS:
    case(_command, 3, "key rejected")(_wrong_key(_command))


@case("drift", 3, "key rejected")
def _(p: Project) -> int:
    assert p.run("lock", "ok.yaml").exit_code == 0
    result = p.run("drift", "ok.yaml", env=WRONG_KEY)
    assert "the service key was rejected" in result.stderr, result.output
    return result.exit_code


@case("resume", 3, "key rejected")
def _(p: Project) -> int:
    code, _err, run_id = _interrupted_run(p, WF["medium"])
    assert code == 130 and run_id
    result = p.run("resume", run_id, env=WRONG_KEY)
    assert "the service key was rejected" in result.stderr, result.output
    return result.exit_code


@case("rerun", 3, "key rejected")
def _(p: Project) -> int:
    p.spec("bad.yaml", header("bad", "broken") + "inputs:\n  Question: q\n")
    _finished(p, "bad.yaml", 1)
    result = p.run("rerun", "--failed", env=WRONG_KEY)
    assert "the service key was rejected" in result.stderr, result.output
    return result.exit_code


def _no_tls(command: str) -> Case:
    def run(p: Project) -> int:
        https = p.sandbox.base_url.replace("http://", "https://")
        result = p.run(*API_ARGS[command], env={"OPUS_BASE_URL": https})
        assert f"the TLS handshake with {https} failed (wrong version number)" in result.stderr, result.output
        assert "TLS errors are not retried" in result.stderr and "retrying" not in result.stderr
        return result.exit_code

    return run


for _command in ("run", "schema", "status"):
    case(_command, 3, "no TLS at the address")(_no_tls(_command))


def _no_temporal_server(*args: str) -> Case:
    def run(p: Project) -> int:
        need_temporal()
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            address = f"127.0.0.1:{sock.getsockname()[1]}"  # nothing listens there once closed
        result = run_cli(p.root, p.env, *args, "--engine", "temporal", "--temporal-address", address)
        assert f"no Temporal server answers at {address}" in result.stderr, result.output
        return result.exit_code

    return run


case("submit", 3, "no temporal server")(_no_temporal_server("submit", "ok.yaml"))
case("worker", 3, "no temporal server")(_no_temporal_server("worker"))
case("cancel", 3, "no temporal server")(_no_temporal_server("cancel", "r"))


@case("cancel", 130, "ctrl-c")
def _(p: Project) -> int:
    """Ctrl-C while the engine's address takes the connection and never answers."""
    need_temporal()
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        proc = opus_run(p, "cancel", "r", "--engine", "temporal", "--temporal-address", address)
        try:
            silent.settimeout(60)
            connection, _ = silent.accept()  # it is waiting on us now
            proc.send_signal(signal.SIGINT)
            _out, err = proc.communicate(timeout=30)
            connection.close()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert "Traceback" not in err and "error: interrupted" in err, err
    return proc.returncode


# -- 4: not finished -------------------------------------------------------------------------------


@case("status", 4, "running")
def _(p: Project) -> int:
    p.spec("long.yaml", header("long", "slow") + "inputs:\n  Question: q\n")
    result = p.run("status", _submitted(p, "long.yaml"))
    assert result.stdout.strip() in ("PENDING", "IN_PROGRESS")
    return result.exit_code


@case("results", 4, "running")
def _(p: Project) -> int:
    p.spec("long.yaml", header("long", "slow") + "inputs:\n  Question: q\n")
    job = _submitted(p, "long.yaml")
    result = p.run("results", job)
    assert result.stdout == ""
    assert "HTTP 400" not in result.stderr
    assert f"job {job} has not finished (it is " in result.stderr
    assert f"ask again when it has ended: `opus-run status {job}` exits 4 until then" in result.stderr
    assert p.sandbox.state.count("GET", "results") == 0  # the status said it: no raw error to show
    return result.exit_code


@case("wait", 4, "timeout passed")
def _(p: Project) -> int:
    p.spec("long.yaml", header("long", "slow") + "inputs:\n  Question: q\n")
    job = _submitted(p, "long.yaml")
    result = p.run("wait", job, "--timeout", "200ms", "--interval", "50ms")
    assert result.stdout == "" and f"job {job} has not finished after 0.2s" in result.stderr
    return result.exit_code


# -- 130 / 143 / 129: stopped -----------------------------------------------------------------


@case("run", 130, "ctrl-c")
def _(p: Project) -> int:
    code, err, run_id = _interrupted_run(p, WF["slow"])
    assert f"Finish the run with: opus-run resume {run_id}" in err
    return code


@case("resume", 130, "ctrl-c")
def _(p: Project) -> int:
    code, _err, run_id = _interrupted_run(p, WF["slow"])
    assert code == 130
    return _interrupt_when_waiting(p, "resume", run_id)


for _command, _args in EVERY_COMMAND.items():
    if _command not in ("run", "resume", "rerun", "runs", "drift", "sandbox", "plugins", "spec-schema", "worker", "cancel"):
        case(_command, 130, "ctrl-c")(lambda p, _args=_args: _interrupt_when_waiting(p, *_args))


@case("drift", 130, "ctrl-c")
def _(p: Project) -> int:
    assert p.run("lock", "ok.yaml").exit_code == 0
    return _interrupt_when_waiting(p, "drift", "ok.yaml")

def _interrupted_rerun(signum: int) -> Case:
    def run(p: Project) -> int:
        p.spec("bad.yaml", header("bad", "broken") + "inputs:\n  Question: q\n")
        _finished(p, "bad.yaml", 1)
        return _interrupt_when_waiting(p, "rerun", "--failed", signum=signum)

    return run


for _signum, _code, _what in ((signal.SIGINT, 130, "ctrl-c"), (signal.SIGTERM, 143, "sigterm"), (signal.SIGHUP, 129, "sighup")):
    case("rerun", _code, _what)(_interrupted_rerun(_signum))


@case("runs", 130, "ctrl-c")
def _(p: Project) -> int:
    # runs asks no server a delay could hold: Ctrl-C comes while it reads the journal.
    from unittest import mock

    assert p.run("run", "ok.yaml").exit_code == 0
    with mock.patch("opus_runner.state.Journal.runs", side_effect=KeyboardInterrupt):
        result = p.run("runs")
    assert result.stderr.strip() == "error: interrupted"
    return result.exit_code


SLEEPY_PLUGIN = """
import pathlib, time
pathlib.Path("loading").write_text("1")
time.sleep(30)
"""


def _interrupted_while_loading_plugins(command: str) -> Case:
    def run(p: Project) -> int:
        p.file("plugins/sleepy.py", SLEEPY_PLUGIN)
        proc = opus_run(p, command)
        try:
            wait_for(lambda: (p.root / "loading").exists())
            proc.send_signal(signal.SIGINT)
            _out, err = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert "Traceback" not in err, err
        return proc.returncode

    return run


for _command in ("plugins", "spec-schema"):
    case(_command, 130, "ctrl-c")(_interrupted_while_loading_plugins(_command))


@case("run", 143, "sigterm")
def _(p: Project) -> int:
    return _interrupted_run(p, WF["slow"], signal.SIGTERM)[0]


@case("run", 129, "sighup")
def _(p: Project) -> int:
    return _interrupted_run(p, WF["slow"], signal.SIGHUP)[0]


@case("resume", 143, "sigterm")
def _(p: Project) -> int:
    code, _err, run_id = _interrupted_run(p, WF["slow"])
    assert code == 130
    return _interrupt_when_waiting(p, "resume", run_id, signum=signal.SIGTERM)


@case("resume", 129, "sighup")
def _(p: Project) -> int:
    code, _err, run_id = _interrupted_run(p, WF["slow"])
    assert code == 130
    return _interrupt_when_waiting(p, "resume", run_id, signum=signal.SIGHUP)


# -- the tests ------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize("key", list(CASES), ids=[f"{c}-{code}-{what.replace(' ', '_')}" for c, code, what in CASES])
def test_exit_code(key: tuple[str, int, str], exit_project: Project) -> None:
    assert CASES[key](exit_project) == key[1]


def _row_codes(code: str) -> list[int]:
    return [int(part) for part in code.split(" / ")]


def test_the_cases_drive_every_row_for_every_command_it_names() -> None:
    commands = set(main.commands)
    covered: dict[int, set[str]] = {}
    for command, code, _what in CASES:
        covered.setdefault(code, set()).add(command)
    expected: dict[int, set[str]] = {}
    for row in EXIT_CODES:
        named = commands - set(row.unless) if row.commands is None else set(row.commands)
        assert named <= commands, f"row {row.code} names commands opus-run does not have: {named - commands}"
        for code in _row_codes(row.code):
            expected[code] = named
    assert covered == expected


def test_the_cli_reference_prints_the_table() -> None:
    text = (Path(__file__).resolve().parent.parent / "docs" / "cli.md").read_text(encoding="utf-8")
    section = text.split("## Exit codes\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    assert [line.split(" | ")[0].strip("| ").replace("`", "") for line in rows] == [row.code for row in EXIT_CODES]
    for line, row in zip(rows, EXIT_CODES):
        assert line.endswith(f"| {row.names()} |")


def test_ci_docs_and_the_events_schema_know_every_code() -> None:
    docs = Path(__file__).resolve().parent.parent / "docs"
    codes = {code for row in EXIT_CODES for code in _row_codes(row.code)}
    ci = (docs / "ci.md").read_text(encoding="utf-8").split("## Exit codes\n", 1)[1]
    listed = {int(c) for line in ci.splitlines() if line.startswith("| `") for c in line.split(" | ")[0].strip("| ").replace("`", "").split(" / ")}
    assert listed == codes
    schema = json.loads((docs / "events.schema.json").read_text(encoding="utf-8"))
    assert set(schema["$defs"]["error"]["properties"]["exit_code"]["enum"]) == codes - {0}


# -- TLS: a certificate does not fix itself, so it is not asked again --------------------------


@pytest.fixture
def self_signed_server(tmp_path: Path) -> Iterator[tuple[str, list[int]]]:
    """A TLS server on loopback whose certificate nobody trusts: (base URL, handshakes seen)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    handshakes: list[int] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            handshakes.append(1)
            try:
                with context.wrap_socket(conn, server_side=True):
                    pass
            except (OSError, ssl.SSLError):
                pass  # the client refused the certificate: what the test is about

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{listener.getsockname()[1]}", handshakes
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def test_a_certificate_that_does_not_verify_is_one_sentence_after_one_attempt(
    exit_project: Project, self_signed_server: tuple[str, list[int]]
) -> None:
    url, handshakes = self_signed_server
    result = exit_project.run("schema", WF["quick"], env={"OPUS_BASE_URL": url})
    assert result.exit_code == 3
    assert result.stderr.strip() == (
        f"error: the TLS certificate of {url} was refused (self-signed certificate) during GET /workflow/{WF['quick']}; "
        "TLS errors are not retried: check the base URL; behind a proxy that re-signs TLS, point SSL_CERT_FILE at its "
        "CA certificates"
    )
    assert len(handshakes) == 1


def test_a_handshake_the_network_cut_short_is_retried() -> None:
    import asyncio

    from opus_runner.api import OpusClient
    from opus_runner.api.transport import RetryPolicy

    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) == 1:
            try:
                raise ssl.SSLEOFError(8, "EOF occurred in violation of protocol")
            except ssl.SSLError as exc:
                raise httpx.ConnectError("handshake cut", request=request) from exc
        return httpx.Response(200, json={"status": "COMPLETED"})

    async def noop(_seconds: float) -> None:
        return None

    async def go() -> str:
        http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        async with OpusClient("https://opus.example.com", "sk-x", http=http, retry=RetryPolicy(sleep=noop)) as client:
            return await client.status("1")

    assert asyncio.run(go()) == "COMPLETED" and len(calls) == 2


def test_a_certificate_error_raised_deep_in_the_transport_is_not_retried() -> None:
    import asyncio

    from opus_runner.api import OpusClient
    from opus_runner.api.transport import RetryPolicy

    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        try:
            try:
                raise ssl.SSLCertVerificationError(1, "certificate verify failed: certificate has expired")
            except ssl.SSLError as inner:
                raise OSError("wrapped by the connection pool") from inner
        except OSError as exc:
            raise httpx.ConnectError("TLS", request=request) from exc

    async def noop(_seconds: float) -> None:
        return None

    async def go() -> None:
        http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        async with OpusClient("https://opus.example.com", "sk-x", http=http, retry=RetryPolicy(sleep=noop)) as client:
            await client.status("1")

    with pytest.raises(TlsError, match="TLS certificate of https://opus.example.com was refused"):
        asyncio.run(go())
    assert len(calls) == 1
