"""The ``opus-run`` group: every command of the ``cli`` modules, and ``opus-run SPEC...`` as
the short form of ``opus-run run SPEC...``.

The command modules import only click at start-up (their commands import the rest when they
run), so ``--help`` and ``--version`` start fast.
"""

from __future__ import annotations

import click

from ..__about__ import __version__
from . import authoring, callbacks, jobs, plugins, run, sandbox
from .options import CONTEXT_SETTINGS


class DefaultGroup(click.Group):
    """``opus-run SPEC...`` means ``opus-run run SPEC...``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help", "--version"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


@click.group(cls=DefaultGroup, context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, "--version", prog_name="opus-run")
def main() -> None:
    """Run Opus workflows from declarative job specs.

    \b
    opus-run SPEC...             validate, submit, wait, route results (same as `run`)
    opus-run --sandbox SPEC...   the same against a local sandbox: no account needed
    """


for _command in (
    run.run_command,
    run.validate_command,
    run.render_command,
    run.resume_command,
    jobs.status_command,
    jobs.results_command,
    jobs.audit_command,
    authoring.schema_command,
    authoring.init_command,
    authoring.lock_command,
    authoring.drift_command,
    authoring.spec_schema_command,
    plugins.plugins_command,
    sandbox.sandbox_command,
    callbacks.callbacks_group,
):
    main.add_command(_command)
