"""Run the sandbox: in a daemon thread (tests, ``--sandbox``) or in the foreground (``opus-run sandbox``)."""

from __future__ import annotations

import logging
import secrets
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TextIO

from .. import redact
from ..errors import ConfigError
from .faults import FaultRule, FaultRuleError, FaultSet, load_faults_file
from .fixture import Fixture, callback_delay_override, load_fixture

if TYPE_CHECKING:  # pragma: no cover
    from .asgi import SandboxApp
    from .state import SandboxState

INSTALL_HINT = "pip install 'opus-runner[sandbox]'"
START_TIMEOUT = 10.0
FaultsArg = Iterable[Mapping[str, Any] | FaultRule] | str | Path | None


def _require_dependencies() -> None:
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        missing = exc.name or "starlette/uvicorn"
        raise ConfigError(
            f"The Opus sandbox needs starlette and uvicorn, but {missing} is not installed; "
            f"install them with: {INSTALL_HINT}"
        ) from None


_quiet_lock = threading.Lock()
_quiet_installed = False


def _quiet_injected_faults() -> None:
    """Keep uvicorn from printing a traceback for every connection the sandbox drops on purpose."""
    global _quiet_installed
    from .injection import InjectedConnectionDrop

    class _DropFilter(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            exc = record.exc_info[1] if record.exc_info else None
            return not isinstance(exc, InjectedConnectionDrop)

    with _quiet_lock:
        if not _quiet_installed:
            logging.getLogger("uvicorn.error").addFilter(_DropFilter())
            _quiet_installed = True


class SandboxServer:
    """A local Opus-compatible server on loopback, run by uvicorn in a daemon thread.

    ``workflows`` is a fixture file, a parsed fixture mapping, or None for the packaged demo
    workflows. ``key`` defaults to a fresh ``sk-sandbox-<hex>`` (registered as a secret, so it
    is masked wherever opus-runner prints). ``faults`` is a list of fault rules or a YAML/JSON
    file of them, added after the fixture's own ``faults:``. ``port=0`` picks a free port.
    ``callback_delay`` (seconds, or a duration such as ``"200ms"``) replaces every callback delay
    of the fixture.

    ```python
    from opus_runner.sandbox import DEMO_IDS

    with SandboxServer() as sandbox:
        workflow = DEMO_IDS["demo-summarize"]  # Opus workflow ids are UUIDs
        httpx.get(f"{sandbox.base_url}/workflow/{workflow}", headers={"x-service-key": sandbox.key})
    ```
    """

    def __init__(
        self,
        workflows: str | Path | Mapping[str, Any] | Fixture | None = None,
        *,
        key: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        faults: FaultsArg = None,
        allow_remote: bool = False,
        callback_delay: float | str | None = None,
    ) -> None:
        _require_dependencies()
        from ..urls import is_loopback_host
        from .asgi import SandboxApp
        from .state import SandboxState

        if not allow_remote and not is_loopback_host(host):
            raise ConfigError(
                f"Refusing to serve the sandbox on {host}: it is not a loopback address and the sandbox has "
                "no real security; use 127.0.0.1, or pass allow_remote=True if you really mean it."
            )
        self.fixture = load_fixture(workflows)
        self.key = key or f"sk-sandbox-{secrets.token_hex(16)}"
        redact.register(self.key)
        self.host = host
        self._requested_port = port
        self._port = port
        self.faults = FaultSet(self.fixture.faults)
        self._add_faults(faults)
        self.state: SandboxState = SandboxState()
        delay = callback_delay_override(callback_delay)
        self.app: SandboxApp = SandboxApp(
            self.fixture, key=self.key, state=self.state, faults=self.faults, callback_delay=delay
        )
        self._server: Any = None  # uvicorn.Server while running
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None
        self._error: BaseException | None = None

    def _add_faults(self, faults: FaultsArg) -> None:
        if faults is None:
            return
        if isinstance(faults, (str, Path)):
            self.faults.extend(load_faults_file(faults))
            return
        try:
            self.faults.extend(faults)
        except FaultRuleError as exc:
            index = getattr(exc, "index", None)
            where = f"faults[{index}]" if index is not None else "faults"
            raise ConfigError(f"{where}: {exc}") from None

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def port(self) -> int:
        """The port served (known once started when it was 0)."""
        return self._port

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        if self._port == 0:
            raise RuntimeError("the sandbox picks its port when started; call start() first")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self._port}"

    def start(self) -> SandboxServer:
        """Bind, start serving in a daemon thread and return once connections are accepted."""
        if self.running:
            raise RuntimeError("this sandbox server is already running")
        import uvicorn

        _quiet_injected_faults()
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # proto must say TCP: asyncio only turns Nagle off (TCP_NODELAY) on sockets that do, and
        # with Nagle on every keep-alive response waits ~40 ms for a delayed ACK.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.bind((self.host, self._requested_port))
            sock.listen(2048)
        except OSError as exc:
            sock.close()
            raise ConfigError(
                f"Cannot serve the sandbox on {self.host}:{self._requested_port}: {exc.strerror or exc}; "
                "choose another port, or 0 for any free one."
            ) from None
        self._socket = sock
        self._port = sock.getsockname()[1]
        self.app.base_url = self.base_url
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

        self._thread = threading.Thread(target=run, name=f"opus-sandbox-{self._port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not server.started:
            if not self._thread.is_alive():
                self._cleanup()
                raise ConfigError(f"The sandbox server stopped while starting: {self._error!r}")
            if time.monotonic() > deadline:
                self.stop()
                raise ConfigError(f"The sandbox server did not start within {START_TIMEOUT:g} seconds.")
            time.sleep(0.002)
        return self

    def stop(self) -> None:
        """Stop serving and wait for the thread to end (pending callbacks are cancelled)."""
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

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.base_url if self._port else f"{self.host}:(not started)"
        return f"<SandboxServer {where} {'running' if self.running else 'stopped'}>"


def serve(
    workflows: str | Path | Mapping[str, Any] | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    key: str | None = None,
    faults_file: str | Path | None = None,
    *,
    allow_remote: bool = False,
    callback_delay: float | str | None = None,
    out: TextIO | None = None,
) -> None:
    """Serve the sandbox until interrupted, after printing its URL and the environment to use it.

    The first two lines printed are exactly::

        Opus sandbox listening on http://127.0.0.1:PORT
        OPUS_BASE_URL=http://127.0.0.1:PORT OPUS_SERVICE_KEY=<key>

    Ctrl-C stops it and returns normally.
    """
    server = SandboxServer(
        workflows,
        key=key,
        host=host,
        port=port,
        faults=faults_file,
        allow_remote=allow_remote,
        callback_delay=callback_delay,
    )
    server.start()
    stream = out if out is not None else sys.stdout
    previous = _stop_on_sigterm()
    try:
        print(f"Opus sandbox listening on {server.base_url}", file=stream, flush=True)
        # Printing the sandbox's own key is the point here: it is how a user points the runner at it.
        print(f"OPUS_BASE_URL={server.base_url} OPUS_SERVICE_KEY={server.key}", file=stream, flush=True)
        server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _stop_on_sigterm() -> Any:
    """Make SIGTERM stop ``serve`` like Ctrl-C does (a service manager's way to stop it)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, interrupt)
