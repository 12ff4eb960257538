"""Run the sandbox: in a daemon thread (tests, ``--sandbox``) or in the foreground (``opus-run sandbox``)."""

from __future__ import annotations

import logging
import secrets
import socket
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TextIO

from .. import redact
from ..asgiserver import ThreadedServer, require_asgi, serve_foreground
from ..errors import ConfigError
from .faults import FaultRule, FaultRuleError, FaultSet, load_faults_file
from .fixture import Fixture, callback_delay_override, load_fixture

if TYPE_CHECKING:  # pragma: no cover
    from .asgi import SandboxApp
    from .state import SandboxState

INSTALL_HINT = "pip install 'opus-runner[sandbox]'"
FaultsArg = Iterable[Mapping[str, Any] | FaultRule] | str | Path | None


def _require_dependencies() -> None:
    require_asgi("The Opus sandbox", INSTALL_HINT)


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
        self.faults = FaultSet(self.fixture.faults)
        self._add_faults(faults)
        self.state: SandboxState = SandboxState()
        delay = callback_delay_override(callback_delay)
        self.app: SandboxApp = SandboxApp(
            self.fixture, key=self.key, state=self.state, faults=self.faults, callback_delay=delay
        )
        self._http = ThreadedServer(self.app, host=host, port=port, what="the sandbox", name="opus-sandbox")

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
        return self._http.running

    @property
    def port(self) -> int:
        """The port served (known once started when it was 0)."""
        return self._http.port

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return self._http.base_url

    @property
    def _socket(self) -> socket.socket | None:
        return self._http._socket

    def start(self) -> SandboxServer:
        """Bind, start serving in a daemon thread and return once connections are accepted."""
        _quiet_injected_faults()

        def know_url(base_url: str) -> None:
            self.app.base_url = base_url

        self._http.start(before_serving=know_url)
        return self

    def stop(self) -> None:
        """Stop serving and wait for the thread to end (pending callbacks are cancelled)."""
        self._http.stop()

    def wait(self) -> None:
        """Block until the server stops (Ctrl-C arrives here as KeyboardInterrupt)."""
        self._http.wait()

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.base_url if self.port else f"{self.host}:(not started)"
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
    # Printing the sandbox's own key is the point here: it is how a user points the runner at it.
    banner = [
        f"Opus sandbox listening on {server.base_url}",
        f"OPUS_BASE_URL={server.base_url} OPUS_SERVICE_KEY={server.key}",
        f"(the v1 Case API at {server.base_url}/api/v1: add --api v1 or OPUS_API=v1)",
    ]
    serve_foreground(server._http, banner, out)
