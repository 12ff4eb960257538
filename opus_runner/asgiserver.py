"""Serve an ASGI app with uvicorn in a daemon thread: the sandbox and the callback receiver.

Both are small local servers started by a command or a test and stopped with it, so they share
one way to bind (a clear sentence when the port is taken), to start (return once connections are
accepted) and to stop (graceful, then forced). The server's thread runs its own event loop;
the caller's loop, if any, is left alone, and so are its signal handlers and logging.

Only starlette/uvicorn users import this module; uvicorn is imported when a server starts.
"""

from __future__ import annotations

import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, TextIO

from .errors import ConfigError

START_TIMEOUT = 10.0


def require_asgi(what: str, install_hint: str) -> None:
    """Raise one sentence naming the missing package when starlette or uvicorn is absent."""
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        missing = exc.name or "starlette/uvicorn"
        raise ConfigError(
            f"{what} needs starlette and uvicorn, but {missing} is not installed; install them with: {install_hint}"
        ) from None


def bind(host: str, port: int, what: str) -> socket.socket:
    """A listening TCP socket on ``host:port`` (0: any free port), or one sentence saying why not."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must say TCP: asyncio only turns Nagle off (TCP_NODELAY) on sockets that do, and
    # with Nagle on every keep-alive response waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"Cannot serve {what} on {host}:{port}: {exc.strerror or exc}; choose another port, or 0 for any free one."
        ) from None
    return sock


class ThreadedServer:
    """``app`` served by uvicorn on ``host:port`` in a daemon thread; ``what`` names it in errors."""

    def __init__(self, app: Any, *, host: str, port: int, what: str, name: str) -> None:
        self.app = app
        self.host = host
        self.what = what
        self.name = name
        self._requested_port = port
        self._port = port
        self._server: Any = None  # uvicorn.Server while running
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None
        self._error: BaseException | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def port(self) -> int:
        """The port served (known once started when it was 0)."""
        return self._port

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT`` (IPv6 hosts in brackets)."""
        if self._port == 0:
            raise RuntimeError(f"{self.what} picks its port when started; call start() first")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self._port}"

    def start(self, before_serving: Callable[[str], None] | None = None) -> None:
        """Bind, start serving and return once connections are accepted. ``before_serving``
        gets the base URL once the port is known, before the first request can arrive."""
        if self.running:
            raise RuntimeError(f"{self.what} is already running")
        import uvicorn

        sock = bind(self.host, self._requested_port, self.what)
        self._socket = sock
        self._port = sock.getsockname()[1]
        if before_serving is not None:
            before_serving(self.base_url)
        config = uvicorn.Config(
            self.app,
            log_config=None,  # leave the host program's logging alone
            log_level="warning",
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=2,
        )
        server = uvicorn.Server(config)
        self._server = server
        self._error = None

        def run() -> None:
            try:
                server.run(sockets=[sock])
            except BaseException as exc:  # noqa: BLE001 - reported by start() or stop()
                self._error = exc

        self._thread = threading.Thread(target=run, name=f"{self.name}-{self._port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not server.started:
            if not self._thread.is_alive():
                self._cleanup()
                raise ConfigError(f"{self.what} stopped while starting: {self._error!r}")
            if time.monotonic() > deadline:
                self.stop()
                raise ConfigError(f"{self.what} did not start within {START_TIMEOUT:g} seconds.")
            time.sleep(0.002)

    def stop(self) -> None:
        """Stop serving and wait for the thread to end."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.should_exit = True
        thread.join(timeout=START_TIMEOUT)
        if thread.is_alive():
            server.force_exit = True
            thread.join(timeout=START_TIMEOUT)
        self._cleanup()

    def _cleanup(self) -> None:
        if self._socket is not None:
            self._socket.close()
        self._socket = None
        self._server = None
        self._thread = None

    def wait(self) -> None:
        """Block until the server stops (Ctrl-C arrives here as KeyboardInterrupt)."""
        while self._thread is not None and self._thread.is_alive():
            self._thread.join(0.5)

    def __enter__(self) -> ThreadedServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def serve_foreground(server: ThreadedServer, banner: list[str], out: TextIO | None = None) -> None:
    """Serve until Ctrl-C or SIGTERM after printing ``banner`` (its lines), then stop and return."""
    stream = out if out is not None else sys.stdout
    previous = _stop_on_sigterm()
    try:
        for line in banner:
            print(line, file=stream, flush=True)
        server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _stop_on_sigterm() -> Any:
    """Make SIGTERM stop a foreground server like Ctrl-C does (a service manager's way to stop it)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, interrupt)
