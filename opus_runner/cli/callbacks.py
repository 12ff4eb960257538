"""``callbacks serve``: the callback receiver in the foreground, for every run of a journal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
@click.option("--engine", type=click.Choice(("temporal",)), help="Wake the jobs of engine runs (opus-run submit) instead of a journal's: each callback becomes a signal.")
@click.option("--temporal-address", metavar="HOST:PORT", help="With --engine temporal: the server [default: $TEMPORAL_ADDRESS, else [temporal] address in opus-runner.toml, else localhost:7233].")
@click.option("--namespace", metavar="N", help="With --engine temporal: the namespace [default: $TEMPORAL_NAMESPACE, else [temporal] namespace, else default].")
@verbose_option()
@handle_errors
def serve_command(host: str, port: int, state_dir: Path | None, verbose: bool, **engine: Any) -> None:
    """Serve the callback receiver until Ctrl-C, for every run journaled in the state folder
    (or, with --engine temporal, for the engine's runs).

    Runs started with `--callback-public-url` (and no `--callback-listen`) are woken through it.
    Under --verbose, the shape of each callback's body is logged (never its values)."""
    from ..callbacks.server import serve
    from ..config import default_state_dir, load_project_config

    setup_logging(verbose, False)
    if engine.get("engine"):
        import os

        from ..temporal.callbacks import serve as serve_engine, shared_key
        from .engine import engine_of

        options = engine_of(**engine)
        key = shared_key(os.environ)
        try:
            serve_engine(options, key, host, port)
        except KeyboardInterrupt:
            pass
        return
    folder = state_dir or default_state_dir(load_project_config())
    try:
        serve(Path(folder), host, port)
    except KeyboardInterrupt:
        pass
