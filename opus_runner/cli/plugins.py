"""``plugins``: which plugins load, from where, and what each registers."""

from __future__ import annotations

import click

from .console import handle_errors, setup_logging
from .options import CONTEXT_SETTINGS, loaded_plugins_options, output_options


@click.command("plugins", context_settings=CONTEXT_SETTINGS)
@loaded_plugins_options
@output_options
@handle_errors
def plugins_command(plugins: tuple[str, ...], no_local_plugins: bool, untrusted: bool, output_format: str, quiet: bool, verbose: bool) -> None:
    """List loaded plugins, where each came from, their hooks and output/notifier types."""
    import json
    from dataclasses import asdict

    from ..config import default_plugins_dir, load_project_config
    from ..plugins import make_plugin_host

    setup_logging(verbose, quiet)
    config = load_project_config()
    host = make_plugin_host(
        plugins_dir=None if no_local_plugins or untrusted else default_plugins_dir(config), modules=list(plugins)
    )
    infos = host.describe()
    if output_format == "json":
        click.echo(json.dumps([asdict(i) for i in infos], indent=2))
        return
    for info in infos:
        click.echo(f"{info.name}  [{info.origin}] {info.source}")
        click.echo(f"    hooks: {', '.join(info.hooks) or '-'}")
        if info.outputs:
            click.echo(f"    outputs: {', '.join(info.outputs)}")
        if info.notifiers:
            click.echo(f"    notifiers: {', '.join(info.notifiers)}")
