"""``run``, ``validate``, ``render`` and ``resume``: the commands that drive the runner, and how
SIGTERM, SIGHUP and Ctrl-C stop them with every job's state saved."""

from __future__ import annotations

import sys
from typing import Any

import click

from .completion import complete_run_ids, complete_spec_paths
from .console import handle_errors, print_notes, setup_logging
from .options import (
    ALLOW_OUTSIDE_ROOT_HELP,
    BASE_URL_ENV_HELP,
    CONTEXT_SETTINGS,
    allow_outside_root_option,
    base_url_option,
    callback_options,
    concurrency_option,
    connection_options,
    no_local_plugins_option,
    plugin_option,
    run_output_options,
    schema_source_options,
    spec_options,
    state_dir_option,
    timeout_option,
    untrusted_option,
)


def _run_options(**kwargs: Any) -> Any:
    from ..engine import RunOptions

    from .options import chosen_api

    fields = set(RunOptions.__dataclass_fields__)
    return RunOptions(**{"api": chosen_api(), **{k: v for k, v in kwargs.items() if k in fields}})


#: The stop signal received while jobs ran (SIGTERM, SIGHUP), for the exit code; empty for Ctrl-C.
_stopped_by: list[int] = []


async def _until_stopped(work: Any) -> Any:
    """Await ``work``; SIGTERM (what CI sends on cancel) and SIGHUP stop it the way Ctrl-C does.

    The handlers are the event loop's own (``loop.add_signal_handler``), so the loop wakes at
    once and cancels the run: every job saves its state, then KeyboardInterrupt goes up to the
    same handling as Ctrl-C.
    """
    import asyncio
    import signal

    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    _stopped_by.clear()

    def stop(signum: int) -> None:
        _stopped_by.append(signum)
        if task is not None:
            task.cancel()

    installed = []
    for name in ("SIGTERM", "SIGHUP"):
        signum = getattr(signal, name, None)
        if signum is None:
            continue
        try:
            loop.add_signal_handler(signum, stop, signum)
        except (NotImplementedError, RuntimeError, ValueError):  # no signals here (Windows, a thread)
            continue
        installed.append(signum)
    try:
        return await work
    except asyncio.CancelledError:
        if _stopped_by:
            raise KeyboardInterrupt from None
        raise
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)


def _interrupted(exc: KeyboardInterrupt, text: str) -> Any:
    from ..errors import Interrupted

    error = Interrupted(text)
    if _stopped_by:
        error.exit_code = 128 + _stopped_by[-1]  # 143 for SIGTERM, 129 for SIGHUP, as shells report
    return error


def _execute(options: Any, reporter: Any, summary_md: str | None = None) -> Any:
    import asyncio
    from ..engine import Runner

    from ..engine.session import later

    runner = Runner(options, reporter=reporter)
    try:
        report = asyncio.run(_until_stopped(runner.run()))
        if summary_md and report.run_id:
            _append_summary(summary_md, runner)
        return report
    except KeyboardInterrupt as exc:
        if runner.run_id:
            raise _interrupted(
                exc,
                "interrupted; "
                + later(options, f"the journal has every job's state. Finish the run with: {runner.session.resume_command(runner.run_id)}"),
            ) from None
        raise _interrupted(exc, "interrupted before anything was submitted") from None
    finally:
        reporter.close()


def _append_summary(path: str, runner: Any) -> None:
    """``--summary-md``: the run's Markdown summary appended to ``path``, from the journal."""
    from ..engine.session import open_journal
    from ..reports import load_run
    from ..reports.markdown import append_markdown

    with open_journal(runner.options, runner.config) as journal:
        data = load_run(journal, runner.run_id)
    try:
        append_markdown(path, data)
    except OSError as exc:
        from ..errors import ConfigError

        raise ConfigError(f"--summary-md {path}: cannot append the run's summary ({exc.strerror or exc}); the run itself is in the journal: opus-run report {runner.run_id} --format md") from None


@click.command("run", context_settings=CONTEXT_SETTINGS)
@click.argument("specs", nargs=-1, required=True, shell_complete=complete_spec_paths)
@spec_options
@connection_options
@click.option("--dry-run", is_flag=True, help="Do everything up to, not including, initiating jobs.")
@click.option("--no-wait", is_flag=True, help="Submit and exit without following the jobs.")
@concurrency_option()
@timeout_option()
@callback_options
@click.option("--keep-going", is_flag=True, help="Skip invalid jobs of a batch instead of submitting nothing.")
@click.option("--summary-md", metavar="FILE", help='Append a Markdown summary of the run (totals, failures) to FILE at its end: --summary-md "$GITHUB_STEP_SUMMARY".')
@state_dir_option()
@run_output_options
@handle_errors
def run_command(specs: tuple[str, ...], output_format: str, quiet: bool, verbose: bool, summary_md: str | None, **kwargs: Any) -> None:
    """Validate, submit and follow jobs; route their results to outputs."""
    from ..progress import make_reporter

    if summary_md is not None and not summary_md.strip():
        from ..errors import UsageError

        raise UsageError("--summary-md was given an empty file name (is $GITHUB_STEP_SUMMARY set?); name the file to append the summary to")
    setup_logging(verbose, quiet)
    options = _run_options(specs=specs, output_format=output_format, quiet=quiet, verbose=verbose, **kwargs)
    reporter = make_reporter(output_format, quiet=quiet, verbose=verbose)
    report = _execute(options, reporter, summary_md)
    if options.dry_run:
        print_notes(report, output_format, quiet)
        return
    sys.exit(report.exit_code)


def _check(mode: str, specs: tuple[str, ...], output_format: str, quiet: bool, verbose: bool, **kwargs: Any) -> None:
    """validate and render: the runner in a checking mode, then the notes (skipped checks)."""
    from ..progress import Reporter, make_reporter

    setup_logging(verbose, quiet)
    options = _run_options(specs=specs, mode=mode, output_format=output_format, quiet=quiet, verbose=verbose, **kwargs)
    # render prints each payload as it is built (the reporter streams them); validate prints none.
    reporter = make_reporter(output_format, quiet=quiet, verbose=verbose, live=False) if mode == "render" else Reporter()
    report = _execute(options, reporter)
    print_notes(report, output_format, quiet)


@click.command("validate", context_settings=CONTEXT_SETTINGS)
@click.argument("specs", nargs=-1, required=True, shell_complete=complete_spec_paths)
@spec_options
@connection_options
@schema_source_options("Check inputs")
@callback_options
@run_output_options
@handle_errors
def validate_command(specs: tuple[str, ...], output_format: str, quiet: bool, verbose: bool, **kwargs: Any) -> None:
    """Check specs without submitting: format and templates offline; with a key or --sandbox,
    also against the live workflow schema (no job is created, no file uploaded)."""
    _check("validate", specs, output_format, quiet, verbose, **kwargs)


@click.command("render", context_settings=CONTEXT_SETTINGS)
@click.argument("specs", nargs=-1, required=True, shell_complete=complete_spec_paths)
@spec_options
@connection_options
@schema_source_options("Render")
@callback_options
@run_output_options
@handle_errors
def render_command(specs: tuple[str, ...], output_format: str, quiet: bool, verbose: bool, **kwargs: Any) -> None:
    """Print what each job would send, secrets masked: the rendered inputs offline, the exact
    jobPayloadSchemaInstance with a key or --sandbox."""
    _check("render", specs, output_format, quiet, verbose, **kwargs)


@click.command("resume", context_settings=CONTEXT_SETTINGS)
@click.argument("run_id", required=False, shell_complete=complete_run_ids)
@base_url_option(help=BASE_URL_ENV_HELP)
@state_dir_option()
@timeout_option()
@callback_options
@concurrency_option()
@plugin_option()
@no_local_plugins_option(help="Do not load the project's plugins folder, nor the plugins the run's journal names.")
@untrusted_option()
@allow_outside_root_option(help=ALLOW_OUTSIDE_ROOT_HELP + " Without it, the flag the run was started with (not under --untrusted).")
@click.option("--replan", is_flag=True, help="Plan jobs the run never started from its spec and data files as they are now, though they changed since the run began.")
@run_output_options
@handle_errors
def resume_command(run_id: str | None, output_format: str, quiet: bool, verbose: bool, **kwargs: Any) -> None:
    """Finish an interrupted run (default: the latest unfinished one) without resubmitting:
    unsent jobs are sent, running ones followed, undelivered results delivered."""
    import asyncio
    from ..progress import make_reporter
    from ..engine import Runner

    setup_logging(verbose, quiet)
    options = _run_options(output_format=output_format, quiet=quiet, verbose=verbose, **kwargs)
    reporter = make_reporter(output_format, quiet=quiet, verbose=verbose)
    runner = Runner(options, reporter=reporter)
    try:
        report = asyncio.run(_until_stopped(runner.resume(run_id)))
    except KeyboardInterrupt as exc:
        raise _interrupted(
            exc, f"interrupted; finish the run with: opus-run resume {runner.run_id or run_id or ''}".rstrip()
        ) from None
    finally:
        reporter.close()
    sys.exit(report.exit_code)
