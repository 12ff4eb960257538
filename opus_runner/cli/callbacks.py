"""``callbacks serve``: the callback receiver in the foreground, for every run of a journal."""

from __future__ import annotations

from pathlib import Path

import click

from .console import handle_errors, setup_logging
from .options import CONTEXT_SETTINGS, state_dir_option, verbose_option


@click.group("callbacks", context_settings=CONTEXT_SETTINGS)
def callbacks_group() -> None:
    """Hear Opus's job callbacks (docs/callbacks.md)."""


@callbacks_group.command("serve", context_settings=CONTEXT_SETTINGS)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0 behind a proxy or tunnel).")
@click.option("--port", type=click.IntRange(0, 65535), default=8787, show_default=True, help="Port (0: any free port).")
@state_dir_option()
@verbose_option()
@handle_errors
def serve_command(host: str, port: int, state_dir: Path | None, verbose: bool) -> None:
    """Serve the callback receiver until Ctrl-C, for every run journaled in the state folder.

    Runs started with `--callback-public-url` (and no `--callback-listen`) are woken through it.
    Under --verbose, the shape of each callback's body is logged (never its values)."""
    from ..callbacks.server import serve
    from ..config import default_state_dir, load_project_config

    setup_logging(verbose, False)
    folder = state_dir or default_state_dir(load_project_config())
    try:
        serve(Path(folder), host, port)
    except KeyboardInterrupt:
        pass
