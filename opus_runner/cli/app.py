"""The ``opus-run`` group: every command of the ``cli`` modules, ``opus-run SPEC...`` as the
short form of ``opus-run run SPEC...``, and the conventions of gh, kubectl and git around them:
a mistyped command is named as such (with a did-you-mean), ``help [CMD]``, ``version`` and
``-V``, and options given before the command go to it.

The command modules import only click at start-up (their commands import the rest when they
run), so ``--help`` and ``--version`` start fast.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import click

from ..__about__ import __version__
from . import authoring, callbacks, engine, history, jobs, plugins, report, run, sandbox
from .options import CONTEXT_SETTINGS

#: The group's own options: they stay where they are, before any command.
GROUP_OPTIONS = ("-h", "--help", "--version", "-V")
#: What makes an argument a spec path rather than a command word (find_specs reads these).
SPEC_SUFFIXES = (".yaml", ".yml", ".json")
GLOB_CHARS = "*?["


class DefaultGroup(click.Group):
    """``opus-run SPEC...`` means ``opus-run run SPEC...``; ``opus-run -v status ID`` means
    ``opus-run status -v ID``; a first word that is neither a command nor a path is a mistyped
    command."""

    default_command = "run"

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in GROUP_OPTIONS:
            args = self._route(ctx, args)
        return super().parse_args(ctx, args)

    def _route(self, ctx: click.Context, args: list[str]) -> list[str]:
        """``args`` with the command first: the one named after the leading options (which move
        behind it, so that an option the command line repeats after the command wins), else
        ``run``."""
        index = self._command_index(args)
        if index is not None:
            return [args[index], *args[:index], *args[index + 1 :]]
        word = self._first_positional(args)
        if word is not None and not ctx.resilient_parsing and _looks_like_command(word):
            raise click.UsageError(no_such_command(word, self.list_commands(ctx)), ctx)
        return [self.default_command, *args]

    def shell_complete(self, ctx: click.Context, incomplete: str) -> list[Any]:
        """The commands, and spec paths too: ``opus-run specs/<Tab>`` completes as ``run`` would."""
        from .completion import complete_spec_paths

        found = super().shell_complete(ctx, incomplete)
        if incomplete.startswith("-"):
            return found
        return found + complete_spec_paths(ctx, self.commands[self.default_command].params[0], incomplete)

    def _takes_value(self, name: str) -> bool:
        """Whether option ``name`` takes a value in the commands that have it (no two commands
        give one name a flag in one and a value in another: test_cli_conventions checks)."""
        for command in self.commands.values():
            for param in command.params:
                if isinstance(param, click.Option) and name in (*param.opts, *param.secondary_opts):
                    return not param.is_flag and not param.count
        return False

    def _leading_options(self, args: list[str]) -> Iterable[tuple[int, str]]:
        """``(index, token)`` of each token up to the first that is not an option nor an
        option's value; stops at ``--``."""
        i = 0
        while i < len(args):
            token = args[i]
            if token == "--" or not token.startswith("-") or token == "-":
                yield i, token
                return
            i += 2 if "=" not in token and self._takes_value(token) else 1

    def _command_index(self, args: list[str]) -> int | None:
        for i, token in self._leading_options(args):
            return i if token in self.commands else None
        return None

    def _first_positional(self, args: list[str]) -> str | None:
        for _i, token in self._leading_options(args):
            return None if token == "--" else token
        return None


def _looks_like_command(word: str) -> bool:
    """A word that names no file or folder and has nothing of a path: no slash, no spec
    extension, no glob character."""
    if os.path.exists(os.path.expanduser(word)):
        return False
    if "/" in word or os.sep in word or word.startswith("~") or any(c in word for c in GLOB_CHARS):
        return False
    return not word.lower().endswith(SPEC_SUFFIXES)


def no_such_command(word: str, commands: Iterable[str]) -> str:
    """``No such command 'valdiate'. Did you mean 'validate'?``, or the list of commands."""
    from ..messages import did_you_mean

    names = list(commands)
    hint = did_you_mean(word, names)
    if hint:
        return f"No such command {word!r}. {hint[0].upper()}{hint[1:]}"
    return (
        f"No such command {word!r}, and no file or folder of that name. Commands: {', '.join(names)}; "
        f"a spec is a path (a .yaml, .yml or .json file, a folder or a glob)."
    )


@click.group(cls=DefaultGroup, context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, "--version", "-V", prog_name="opus-run")
def main() -> None:
    """Run Opus workflows from declarative job specs.

    \b
    opus-run SPEC...             validate, submit, wait, route results (same as `run`)
    opus-run --sandbox SPEC...   the same against a local sandbox: no account needed
    opus-run help COMMAND        a command's options (same as `opus-run COMMAND --help`)
    opus-run version             the version (same as --version and -V)

    Options given before a command are the command's own: `opus-run -v status ID` is
    `opus-run status -v ID`.
    """


@click.command("help", context_settings=CONTEXT_SETTINGS)
@click.argument("command", nargs=-1)
@click.pass_context
def help_command(ctx: click.Context, command: tuple[str, ...]) -> None:
    """Show the help of opus-run or of a command (`help run`; a group's command: `help GROUP CMD`)."""
    parent = ctx.parent
    assert parent is not None
    target: click.Command = parent.command
    target_ctx = parent
    for word in command:
        if not isinstance(target, click.Group):
            raise click.UsageError(f"{target_ctx.command_path} has no subcommands; see opus-run help {target.name}", ctx)
        found = target.get_command(target_ctx, word)
        if found is None:
            raise click.UsageError(no_such_command(word, target.list_commands(target_ctx)), ctx)
        target_ctx = click.Context(found, info_name=word, parent=target_ctx)
        target = found
    click.echo(target.get_help(target_ctx))


@click.command("version", context_settings=CONTEXT_SETTINGS)
def version_command() -> None:
    """Show the version (same as --version and -V)."""
    click.echo(f"opus-run, version {__version__}")


for _command in (
    run.run_command,
    run.validate_command,
    run.render_command,
    run.resume_command,
    history.rerun_command,
    history.runs_command,
    history.status_command,
    jobs.results_command,
    jobs.audit_command,
    jobs.jobs_command,
    history.wait_command,
    engine.submit_command,
    engine.worker_command,
    engine.cancel_command,
    authoring.schema_command,
    authoring.init_command,
    authoring.lock_command,
    authoring.drift_command,
    authoring.workflows_command,
    authoring.spec_schema_command,
    report.report_command,
    plugins.plugins_command,
    sandbox.sandbox_command,
    callbacks.callbacks_group,
    help_command,
    version_command,
):
    main.add_command(_command)
