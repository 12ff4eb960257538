"""``sandbox``: serve the local Opus-compatible server in the foreground."""

from __future__ import annotations

from pathlib import Path

import click

from .console import handle_errors
from .options import CONTEXT_SETTINGS


def _duration(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    from ..durations import parse_duration

    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command("sandbox", context_settings=CONTEXT_SETTINGS)
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True, help="Port on 127.0.0.1 (0: any free port).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Loopback address to bind.")
@click.option("--workflows", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Fixture file of workflows [default: the built-in demo workflows].")
@click.option("--faults", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="YAML/JSON list of fault-injection rules.")
@click.option("--key", metavar="KEY", help="Service key the sandbox accepts [default: a random one, printed].")
@click.option(
    "--callback-delay",
    metavar="DURATION",
    callback=_duration,
    help="Time from a job's end to its callback POST, for every workflow (200ms, 1s) [default: the fixture's, else 0.2s].",
)
@handle_errors
def sandbox_command(
    port: int, host: str, workflows: Path | None, faults: Path | None, key: str | None, callback_delay: float | None
) -> None:
    """Serve the local Opus-compatible sandbox until Ctrl-C."""
    from ..config import load_project_config
    from ..sandbox.server import serve

    workflows = workflows or load_project_config().sandbox_workflows
    try:
        serve(workflows, host=host, port=port, key=key, faults_file=faults, callback_delay=callback_delay)
    except KeyboardInterrupt:
        pass
