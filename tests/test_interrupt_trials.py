"""Ctrl-C at random moments of a ``--sandbox`` run never prints an unexpected error.

The failure these trials caught: jobs sharing one file input await one upload (a shielded
future); Ctrl-C cancelled the jobs but not the upload, which went on to send its next request
after the run had closed its client (``unexpected error: RuntimeError: Cannot send a request,
as the client has been closed``, or "Task exception was never retrieved"). The in-process
sandbox also printed an ASGI traceback for each request the stopped run had cut off.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time

import pytest

from conftest import WF, WORKFLOWS, Project, header, opus_run, wait_for

#: What may never appear on stderr after Ctrl-C.
UNEXPECTED = ("unexpected error", "Traceback", "never retrieved", "Exception in ASGI application", "Cannot send a request")


def _batch(project: Project) -> str:
    """Eight jobs of one in-process sandbox workflow, all sending the same file (one upload)."""
    workflows = json.loads(json.dumps(WORKFLOWS))
    workflows["workflows"][WF["all-types"]]["duration"] = "1s"  # the signal comes while jobs run
    project.file("sandbox.json", json.dumps(workflows))
    project.file("doc.txt", "the same document for every job\n")
    project.spec(
        "shared.yaml",
        header("shared", "all-types")
        + "matrix:\n  n: [1, 2, 3, 4, 5, 6, 7, 8]\n"
        + "inputs:\n  Title: 't {{ matrix.n }}'\n  Budget: 1\n  Approved: true\n  Due date: '2026-11-30'\n"
        + "  Contract: {file: doc.txt}\n"
        + "wait: {timeout: 20s, poll_interval: 50ms, max_interval: 200ms}\n",
    )
    return "shared.yaml"


def _interrupt_once(project: Project, rng: random.Random) -> tuple[int, str]:
    spec = _batch(project)
    proc = opus_run(project, "run", spec, "--sandbox", "--sandbox-workflows", "sandbox.json", "--concurrency", "4")
    try:
        # Once the run is journaled (the checks are over, uploads and executes begin), at a
        # random moment of the next second and a half.
        wait_for(lambda: (project.root / ".opus-run" / "state.db").exists() or proc.poll() is not None, timeout=60)
        time.sleep(rng.uniform(0.0, 1.5))
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)  # faulthandler prints every thread
        _out, err = proc.communicate(timeout=10)
        raise AssertionError(f"the run did not stop after Ctrl-C:\n{err[-8000:]}") from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, err


def _check(code: int, err: str) -> None:
    assert not any(word in err for word in UNEXPECTED), err
    # Interrupted (130), or the batch had already ended when the signal came (0, or killed by
    # SIGINT while the interpreter exited, with nothing printed).
    assert code in (130, 0, -signal.SIGINT), err
    if code == 130:
        assert "interrupted" in err, err


@pytest.mark.parametrize("trial", range(3))
def test_ctrl_c_during_shared_uploads_says_interrupted_and_nothing_else(project: Project, trial: int) -> None:
    _check(*_interrupt_once(project, random.Random(1000 + trial)))


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(12))
def test_ctrl_c_at_a_random_moment_never_prints_an_unexpected_error(project: Project, trial: int) -> None:
    _check(*_interrupt_once(project, random.Random(trial)))


@pytest.mark.parametrize("route", ["upload", "put"])
def test_ctrl_c_while_the_shared_upload_is_held_stops_it_before_the_client_closes(project: Project, route: str) -> None:
    """The narrow cause, without racing: the in-process sandbox holds the shared upload's
    initiate (or its PUT), so Ctrl-C finds every job waiting on it. The upload must stop with
    the jobs, not retry into the closed client while the sandbox shuts down."""
    spec = _batch(project)
    fixture = json.loads((project.root / "sandbox.json").read_text())
    fixture["faults"] = [{"route": route, "kind": "delay", "seconds": 1.5}]  # within the sandbox's graceful stop
    project.file("sandbox.json", json.dumps(fixture))
    proc = opus_run(project, "run", spec, "--sandbox", "--sandbox-workflows", "sandbox.json", "--concurrency", "4")
    try:
        wait_for(lambda: (project.root / ".opus-run" / "state.db").exists(), timeout=60)
        time.sleep(0.5)  # the upload's request is on its way, and held
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    _check(proc.returncode, err)
    assert proc.returncode == 130, err
    assert "retrying" not in err, err  # nothing of the run goes on after Ctrl-C
