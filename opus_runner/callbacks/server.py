"""The receiver served: in a thread of a run (``callback.listen``), or in the foreground
(``opus-run callbacks serve``) for every run that shares its journal."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from ..asgiserver import ThreadedServer, require_asgi, serve_foreground
from .receiver import CallbackReceiver, Receiver, Wake

if TYPE_CHECKING:  # pragma: no cover
    from ..state import Journal

INSTALL_HINT = "pip install 'opus-runner[sandbox]'"
WHAT = "the callback receiver"


def receiver_server(journal: Journal, host: str, port: int, *, on_wake: Wake | None = None) -> tuple[ThreadedServer, CallbackReceiver]:
    """A (not yet started) server of a receiver checking callbacks against ``journal``."""
    require_asgi("The callback receiver", INSTALL_HINT)
    receiver = CallbackReceiver(journal, on_wake=on_wake)
    return ThreadedServer(receiver.app(), host=host, port=port, what=WHAT, name="opus-callbacks"), receiver


def serve(state_dir: Path, host: str, port: int, *, out: TextIO | None = None) -> None:
    """Serve the receiver for the runs journaled in ``state_dir`` until Ctrl-C or SIGTERM.

    The first line printed is exactly ``Opus callback receiver listening on http://HOST:PORT``.
    """
    from ..state import DB_NAME, Journal

    with Journal(state_dir) as journal:
        serve_receiver(
            CallbackReceiver(journal), host, port,
            lambda url: f"serving the runs journaled in {state_dir / DB_NAME}; point callback.public_url at the "
            f"https address that reaches {url}",
            out,
        )  # fmt: skip


def serve_receiver(receiver: Receiver, host: str, port: int, says: Callable[[str], str], out: TextIO | None = None) -> None:
    """Serve ``receiver`` in the foreground: the banner (its address, then ``says(address)``)
    first, until Ctrl-C or SIGTERM."""
    require_asgi("The callback receiver", INSTALL_HINT)
    server = ThreadedServer(receiver.app(), host=host, port=port, what=WHAT, name="opus-callbacks")
    server.start()
    serve_foreground(server, [f"Opus callback receiver listening on {server.base_url}", says(server.base_url)], out)
