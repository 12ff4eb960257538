"""Looking at work, from the journal: ``runs`` (the past runs), ``status [RUN_ID]`` (one run's
jobs, ``--watch`` until it is done; a job id is looked up in the API as before), ``rerun
--failed`` (a new run of a run's failed jobs) and ``wait JOB_ID`` (follow one job to its end).
No row of their tables wraps (cli/tables.py).

Exit codes follow the table in errors.py: ``status RUN`` and ``wait`` exit by the outcome (0 every
job completed, 1 one failed, was cancelled or timed out, 4 not finished yet).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .console import handle_errors, setup_logging
from .tables import counts_text, cut, duration_text, echo_lines, fit_table, local_time, seconds_between, terminal_width
from .options import (
    ALLOW_OUTSIDE_ROOT_HELP,
    BASE_URL_ENV_HELP,
    CONTEXT_SETTINGS,
    allow_outside_root_option,
    base_url_option,
    callback_options,
    client_from,
    concurrency_option,
    connection_options,
    no_local_plugins_option,
    output_options,
    plugin_option,
    report_options,
    state_dir_option,
    timeout_option,
    together,
    untrusted_option,
    var_option,
)

if TYPE_CHECKING:  # pragma: no cover
    from ..state import JobRecord, Journal, RunRecord

INTERVAL_HELP = "First pause between status reads (45s, 500ms) [default: 2s]; it grows up to 30s."


# -- the journal of the project here -----------------------------------------------------------


def engine_lookup_options(func: Any) -> Any:
    """--engine and where the engine is, for the commands that look a run up there too."""
    return together(
        click.option("--engine", type=click.Choice(("temporal",)), help="Look the run up on this durable engine (a run of opus-run submit)."),
        click.option("--temporal-address", metavar="HOST:PORT", help="With --engine temporal: the server [default: $TEMPORAL_ADDRESS, else [temporal] address in opus-runner.toml, else localhost:7233]."),
        click.option("--namespace", metavar="N", help="With --engine temporal: the namespace [default: $TEMPORAL_NAMESPACE, else [temporal] namespace, else default]."),
    )(func)


def journal_if_any(state_dir: Path | None) -> Journal | None:
    """The project's journal (or ``--state-dir``'s), or None when there is none yet: a look-up
    never creates one."""
    from ..config import default_state_dir, load_project_config
    from ..state import DB_NAME, Journal

    folder = state_dir if state_dir is not None else default_state_dir(load_project_config())
    return Journal(folder) if (folder / DB_NAME).is_file() else None


def _no_journal(state_dir: Path | None) -> Any:
    from ..config import default_state_dir, load_project_config
    from ..errors import UsageError
    from ..paths import display_path

    folder = state_dir if state_dir is not None else default_state_dir(load_project_config())
    return UsageError(
        f"no journal at {display_path(folder)}: no run has been started from this project yet; "
        "run specs first (opus-run SPEC...), or point --state-dir at the journal's folder"
    )


def run_state(journal: Journal, run: RunRecord) -> str:
    """``running`` (a live process owns it), ``ended`` (it recorded its end) or ``stopped``."""
    if journal.is_running(run.run_id):
        return "running"
    return "ended" if run.finished_at is not None else "stopped"


# -- opus-run status [RUN_ID|JOB_ID] -------------------------------------------------------------


@click.command("status", context_settings=CONTEXT_SETTINGS)
@click.argument("target", metavar="[RUN_ID|JOB_ID]", required=False)
@click.option("--watch", "-w", is_flag=True, help="Show it again at each change until it is done (a run: its jobs; a job: its status).")
@click.option("--interval", metavar="DURATION", help="With --watch, the first pause between reads (45s, 500ms) [default: 2s].")
@base_url_option(help=BASE_URL_ENV_HELP)
@state_dir_option()
@engine_lookup_options
@output_options
@handle_errors
def status_command(
    target: str | None,
    watch: bool,
    interval: str | None,
    base_url: str | None,
    state_dir: Path | None,
    output_format: str,
    quiet: bool,
    verbose: bool,
    **engine: Any,
) -> None:
    """Show a run's jobs (default: the latest run of the journal), or a job's status; with
    --engine temporal, a run on the engine.

    A run's table lists each job's plan key, job id, status, duration and error. Exit 0 when
    every job COMPLETED, 1 when one failed, was cancelled or timed out, 4 while one has not
    finished."""
    setup_logging(verbose, quiet)
    if engine.get("engine"):
        from .engine import engine_status

        if target is None:
            raise click.UsageError("status --engine temporal needs the RUN_ID that submit printed")
        engine_status(target, wait=False, output_format=output_format, quiet=quiet, verbose=verbose, **engine)
    pause = parse_duration_option("--interval", interval)
    journal = journal_if_any(state_dir)
    if journal is not None:
        with journal:
            run_id = _run_of(journal, target)
            if run_id is not None:
                sys.exit(
                    show_run(
                        journal,
                        run_id,
                        watch=watch,
                        interval=pause or 2.0,
                        base_url=base_url,
                        output_format=output_format,
                        quiet=quiet,
                    )
                )
    if target is None:
        raise _no_journal(state_dir)
    if looks_like_run_id(target):
        from ..errors import UsageError

        raise UsageError(f"{target!r} looks like a run id, and there is no journal here to find it in; run this in the project that ran it, or give --state-dir")
    sys.exit(_job_status(target, watch=watch, interval=pause, base_url=base_url, output_format=output_format, quiet=quiet))


def looks_like_run_id(text: str) -> bool:
    """``20261201-134538-63c05e``: the shape of the journal's run ids (job ids are numeric or UUIDs)."""
    import re

    return re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{6}", text) is not None


def _run_of(journal: Any, target: str | None) -> str | None:
    """The run ``target`` names in ``journal`` (its latest run when None); None when it names
    no run there and is not shaped like a run id (then it is a job id)."""
    if target is None:
        latest = journal.latest_run()
        if latest is None:
            from ..errors import UsageError

            raise UsageError(f"no runs in {journal.path} yet: run specs first (opus-run SPEC...), or give a job id")
        return str(latest.run_id)
    if journal.has_run(target):
        return target
    if looks_like_run_id(target):
        journal.get_run(target)  # the journal's "no run X; the most recent runs are ..."
    return None


def _job_status(job_id: str, *, watch: bool, interval: float | None, base_url: str | None, output_format: str, quiet: bool) -> int:
    """``status JOB_ID``: the job's status from the API (followed to its end with --watch)."""
    import asyncio

    from .. import redact
    from ..progress import printable
    from .jobs import _of_known_job, outcome_code

    if watch:
        announce = not quiet and output_format == "text"
        status = asyncio.run(follow_job(job_id, base_url=base_url, timeout=None, interval=interval, announce=announce))
    else:

        async def read() -> str:
            async with client_from(base_url) as client:
                return str(await _of_known_job(client, job_id, client.status(job_id)))

        status = asyncio.run(read())
    if output_format == "json":
        import json

        click.echo(json.dumps(redact.mask(status), ensure_ascii=False))
    else:
        click.echo(printable(redact.mask(status)))
    return outcome_code(status)


# -- opus-run runs -----------------------------------------------------------------------------


@click.command("runs", context_settings=CONTEXT_SETTINGS)
@click.option("--limit", type=int, metavar="N", help="Show the N most recent runs [default: 20].")
@state_dir_option()
@report_options("the runs")
@handle_errors
def runs_command(limit: int | None, state_dir: Path | None, output_format: str, verbose: bool) -> None:
    """List the project's past runs, newest first: id, start, exit code, jobs by status, specs."""
    setup_logging(verbose)
    if limit is not None and limit < 1:
        from ..errors import UsageError

        raise UsageError(f"--limit must be 1 or more, found {limit}")
    journal = journal_if_any(state_dir)
    if journal is None:
        if output_format == "json":
            click.echo("[]")
        else:
            click.echo("no runs yet: run specs with opus-run SPEC...", err=True)
        return
    with journal:
        runs = journal.runs(limit or 20)
        counts = journal.status_counts([r.run_id for r in runs])
        states = {r.run_id: run_state(journal, r) for r in runs}
    if output_format == "json":
        from ..progress import dumps

        click.echo(dumps([_run_document(r, states[r.run_id], counts[r.run_id]) for r in runs]))
        return
    rows = [
        [
            r.run_id,
            local_time(r.started_at),
            str(r.exit_code) if states[r.run_id] == "ended" else states[r.run_id],
            counts_text(counts[r.run_id]),
            " ".join(map(str, r.options.get("specs") or [])),
        ]
        for r in runs
    ]
    echo_lines(fit_table(["run", "started", "exit", "jobs", "specs"], rows, width=terminal_width(), shrink=(4, 3)))


def _run_document(run: RunRecord, state: str, counts: Mapping[str, int]) -> dict[str, Any]:
    return {
        "run_id": run.run_id,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "state": state,
        "exit_code": run.exit_code,
        "specs": list(run.options.get("specs") or []),
        "jobs": sum(counts.values()),
        "counts": dict(counts),
        **({"rerun_of": run.options["rerun_of"]} if run.options.get("rerun_of") else {}),
    }


# -- opus-run status RUN -----------------------------------------------------------------------


#: What a job that has no status yet shows: where it got to (an executed job was sent, and not
#: yet read: a --no-wait run).
_PHASE_WORDS = {"executed": "SUBMITTED"}


class RunView:
    """One run's jobs as the journal has them, with the statuses read from the API for the jobs
    still running when no process follows them (``live``, by job id)."""

    def __init__(self, journal: Journal, run_id: str) -> None:
        self.journal = journal
        self.run_id = run_id
        self.live: dict[str, str] = {}
        #: why the API cannot be asked (no key, another server): watching cannot show more
        self.blocked: str | None = None
        self.refresh()

    def refresh(self) -> None:
        self.run = self.journal.get_run(self.run_id)
        self.jobs = self.journal.jobs(self.run_id)
        self.state = run_state(self.journal, self.run)

    def status_of(self, job: JobRecord) -> str:
        """The API's status when it was read, else the journal's; a job never sent shows its phase."""
        return self.live.get(job.job_id or "") or job.status or _PHASE_WORDS.get(job.phase.value, job.phase.value.upper())

    def done(self, job: JobRecord) -> bool:
        """The job has ended (as the journal or the API says)."""
        from ..models import TERMINAL_STATUSES
        from ..state import Phase

        return (job.phase == Phase.FINISHED and job.status in TERMINAL_STATUSES) or self.live.get(job.job_id or "") in TERMINAL_STATUSES

    def to_read(self) -> list[str]:
        """Job ids whose status only the API can tell: sent, not ended, and no process follows them."""
        from ..state import Phase

        if self.state == "running":
            return []
        return [j.job_id for j in self.jobs if j.job_id and not self.done(j) and j.phase in (Phase.EXECUTING, Phase.EXECUTED)]

    def error_of(self, job: JobRecord) -> str | None:
        if job.error:
            return job.error
        return f"undelivered: {', '.join(job.undelivered)}" if job.undelivered else None

    def exit_code(self) -> int:
        from ..errors import EXIT_FAILED, EXIT_NOT_FINISHED, EXIT_OK

        if any(not self.done(j) for j in self.jobs):
            return EXIT_NOT_FINISHED
        if any(self.status_of(j) != "COMPLETED" or self.error_of(j) for j in self.jobs):
            return EXIT_FAILED
        return EXIT_OK

    def duration(self, job: JobRecord) -> float | None:
        from ..state import Phase

        if job.job_id is None and job.phase != Phase.FINISHED:
            return None
        if job.phase != Phase.FINISHED and self.done(job):
            return None  # ended, as the API says: the journal does not know when
        return seconds_between(job.created_at, job.updated_at if job.phase == Phase.FINISHED else None)

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for job in self.jobs:
            status = self.status_of(job)
            counts[status] = counts.get(status, 0) + 1
        return counts

    def rows(self) -> list[dict[str, Any]]:
        return [
            {
                "plan_key": j.plan_key,
                "job_id": j.job_id,
                "status": self.status_of(j),
                "duration": self.duration(j),
                "error": self.error_of(j),
            }
            for j in self.jobs
        ]

    def document(self) -> dict[str, Any]:
        return {
            **_run_document(self.run, self.state, self.counts()),
            "jobs": self.rows(),
            "outcome": self.exit_code(),
        }

    def lines(self, width: int | None) -> list[str]:
        run = self.run
        elapsed = seconds_between(run.started_at, run.finished_at)
        specs = " ".join(map(str, run.options.get("specs") or []))
        state = f"ended, exit {run.exit_code}" if self.state == "ended" else self.state
        head = f"run {run.run_id}  started {local_time(run.started_at)}  {state}  {specs}".rstrip()
        body = [
            [r["plan_key"], r["job_id"], r["status"], duration_text(r["duration"]), r["error"]] for r in self.rows()
        ]
        table = fit_table(["job", "job id", "status", "duration", "error"], body, width=width, shrink=(4, 0))
        totals = f"{counts_text(self.counts())} in {duration_text(elapsed)}"
        return [cut(head, width) if width else head, *table, totals]

    def hints(self) -> list[str]:
        """What to do next, for a run that is not running."""
        from ..state import Phase

        run, hints = self.run, []
        if self.state == "running":
            return hints
        unfinished = [j for j in self.jobs if not self.done(j)]
        sent = all(j.job_id and j.phase in (Phase.EXECUTING, Phase.EXECUTED) for j in unfinished)
        if unfinished and run.options.get("sandbox"):
            hints.append(
                f"run {run.run_id} ran against an in-process --sandbox, which ended with it: its unfinished jobs "
                "cannot be followed; keep a sandbox running with `opus-run sandbox` to follow jobs after a run"
            )
        elif unfinished and run.options.get("no_wait") and sent:
            hints.append(f"follow its jobs to their end with: opus-run status {run.run_id} --watch")
        elif unfinished:
            hints.append(f"finish the run with: opus-run resume {run.run_id}")
        if any(self.status_of(j) in _rerun_statuses() for j in self.jobs):
            hints.append(f"run the failed jobs again with: opus-run rerun --failed {run.run_id}")
        return hints


def _rerun_statuses() -> frozenset[str]:
    from ..engine.rerun import RERUN_STATUSES

    return RERUN_STATUSES


async def _read_live(view: RunView, base_url: str | None, notes: list[str]) -> None:
    """Read the API's status of the jobs only it can tell about; say once why it could not."""
    import os

    from ..config import load_project_config
    from ..errors import ApiError, NetworkError
    from ..urls import display_url

    ids = view.to_read()
    if not ids:
        return
    recorded = view.run.options
    if recorded.get("sandbox"):
        return  # the hint says it: that server is gone
    url, key = load_project_config().endpoint(base_url, None, os.environ)
    ran_at = recorded.get("base_url")
    if not key:
        view.blocked = f"{len(ids)} job(s) of run {view.run_id} may still be running; set OPUS_SERVICE_KEY to read their status from Opus"
    elif ran_at and not base_url and str(ran_at).rstrip("/") != url.rstrip("/"):
        view.blocked = f"run {view.run_id} ran against {display_url(ran_at)}; pass --base-url {display_url(ran_at)} to read its jobs' status there"
    if view.blocked:
        _note(notes, view.blocked)
        return

    async with client_from(base_url) as client:
        for job_id in ids:
            try:
                view.live[job_id] = await client.status(job_id)
            except (ApiError, NetworkError) as exc:
                _note(notes, f"the status of job {job_id} could not be read: {exc}")


def _note(notes: list[str], text: str) -> None:
    if text not in notes:
        notes.append(text)
        click.echo(text, err=True)


def show_run(
    journal: Journal,
    run_id: str,
    *,
    watch: bool,
    interval: float,
    base_url: str | None,
    output_format: str,
    quiet: bool,
) -> int:
    """Print run ``run_id``'s jobs (again at each change with ``watch``, until the run is done);
    the exit code of its outcome."""
    import asyncio
    import random
    import time

    view = RunView(journal, run_id)
    notes: list[str] = []
    redraw = watch and output_format == "text" and sys.stdout.isatty()
    shown: Any = None
    pause = interval
    while True:
        asyncio.run(_read_live(view, base_url, notes))
        current = view.document()
        if current != shown:
            if output_format == "json":
                from ..progress import dumps

                click.echo(dumps(current))
            else:
                if redraw:
                    click.echo("\x1b[H\x1b[J", nl=False)
                elif shown is not None:
                    click.echo()
                echo_lines(view.lines(terminal_width()))
            shown = current
        code = view.exit_code()
        if not watch or code != 4 or not _can_change(view):
            break
        time.sleep(pause * random.uniform(0.8, 1.0))
        # The journal is cheap to read; the API is asked less and less often, as a run's wait does.
        pause = interval if view.state == "running" else min(30.0, pause * 1.3)
        view.refresh()
    if not quiet and output_format == "text":
        for hint in view.hints():
            click.echo(hint, err=True)
    return view.exit_code()


def _can_change(view: RunView) -> bool:
    """Whether watching longer can show anything new: a process runs the run, or the API can be
    asked about jobs still running."""
    return view.state == "running" or (bool(view.to_read()) and not view.run.options.get("sandbox") and not view.blocked)


# -- opus-run rerun ----------------------------------------------------------------------------


@click.command("rerun", context_settings=CONTEXT_SETTINGS)
@click.argument("run_id", required=False)
@click.option("--failed", is_flag=True, help="Rerun the jobs that failed, were cancelled or timed out (required: the one selection so far).")
@var_option()
@connection_options
@state_dir_option()
@timeout_option()
@callback_options
@concurrency_option()
@click.option("--no-wait", is_flag=True, help="Submit and exit without following the jobs.")
@plugin_option()
@no_local_plugins_option(help="Do not load the project's plugins folder, nor the plugins the run's journal names.")
@untrusted_option()
@allow_outside_root_option(help=ALLOW_OUTSIDE_ROOT_HELP + " Without it, the flag the run was started with (not under --untrusted).")
@output_options
@handle_errors
def rerun_command(run_id: str | None, failed: bool, output_format: str, quiet: bool, verbose: bool, **kwargs: Any) -> None:
    """Start a new run of the failed, cancelled and timed-out jobs of a run (default: the latest
    run), each planned from its journal record, with the run's options unless given here."""
    import asyncio

    from ..errors import UsageError
    from ..progress import make_reporter
    from .run import _interrupted, _run_options, _until_stopped

    setup_logging(verbose, quiet)
    if not failed:
        raise UsageError("say which jobs to rerun: --failed (the failed, cancelled and timed-out jobs of the run)")
    options = _run_options(output_format=output_format, quiet=quiet, verbose=verbose, **kwargs)
    reporter = make_reporter(output_format, quiet=quiet)
    from ..engine.rerun import rerun

    sessions: list[Any] = []
    try:
        report = asyncio.run(_until_stopped(rerun(options, run_id, reporter=reporter, attach=sessions.append)))
    except KeyboardInterrupt as exc:
        new_id = sessions[0].run_id if sessions else None
        if new_id:
            raise _interrupted(exc, f"interrupted; the journal has every job's state. Finish the rerun with: opus-run resume {new_id}") from None
        raise _interrupted(exc, "interrupted before anything was submitted") from None
    finally:
        reporter.close()
    sys.exit(report.exit_code)


# -- opus-run wait -----------------------------------------------------------------------------


@click.command("wait", context_settings=CONTEXT_SETTINGS)
@click.argument("job_id")
@click.option("--timeout", metavar="DURATION", help="Give up after this long (45s, 5m, 1h30m) and exit 4 [default: no limit].")
@click.option("--interval", metavar="DURATION", help=INTERVAL_HELP)
@base_url_option(help=BASE_URL_ENV_HELP)
@engine_lookup_options
@output_options
@handle_errors
def wait_command(
    job_id: str, timeout: str | None, interval: str | None, base_url: str | None, output_format: str, quiet: bool, verbose: bool, **engine: Any
) -> None:
    """Follow a job to its end; with --engine temporal, a run on the engine (JOB_ID is then
    the run id). Exit 0 when it COMPLETED, 1 when it failed, was cancelled or timed out, 4
    when --timeout passed first."""
    import asyncio

    from .jobs import outcome_code

    setup_logging(verbose, quiet)
    if engine.get("engine"):
        from .engine import engine_status

        engine_status(job_id, wait=True, output_format=output_format, quiet=quiet, verbose=verbose, **engine)
    limit = parse_duration_option("--timeout", timeout)
    first = parse_duration_option("--interval", interval)
    status = asyncio.run(follow_job(job_id, base_url=base_url, timeout=limit, interval=first, announce=not quiet and output_format == "text"))
    if output_format == "json":
        from ..progress import dumps

        click.echo(dumps({"job_id": job_id, "status": status}))
    else:
        from ..progress import printable

        click.echo(printable(status))
    sys.exit(outcome_code(status))


def parse_duration_option(name: str, value: str | None) -> float | None:
    from ..durations import parse_duration
    from ..errors import UsageError

    if value is None:
        return None
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise UsageError(f"{name}: {exc}") from None
    if seconds <= 0:
        raise UsageError(f"{name} must be more than 0, found {value!r}")
    return seconds


async def follow_job(job_id: str, *, base_url: str | None, timeout: float | None, interval: float | None, announce: bool) -> str:
    """Job ``job_id``'s terminal status, each change said on stderr with ``announce``; raises
    JobNotFinished when ``timeout`` passes first."""
    from ..engine.follow import follow
    from ..errors import JobNotFinished
    from ..planning import DEFAULT_POLL
    from ..progress import printable
    from .jobs import _of_known_job

    seen: list[str] = []

    def said(status: str) -> None:
        seen.append(status)
        if announce:
            click.echo(f"job {printable(job_id)}: {printable(status)}", err=True)

    def problem(exc: Exception) -> None:
        click.echo(f"job {printable(job_id)}: its status could not be read ({exc}); still trying", err=True)

    async with client_from(base_url) as client:
        first = await _of_known_job(client, job_id, client.status(job_id))
        said(first)
        end = await follow(
            client, job_id, last=first, timeout=timeout, poll_interval=interval or DEFAULT_POLL, on_status=said, on_problem=problem
        )
    if end is None:
        raise JobNotFinished(
            f"job {job_id} has not finished after {duration_text(timeout)} (it is {seen[-1]}); wait again, or "
            f"check it with `opus-run status {job_id}`",
            job_id=job_id,
            status=seen[-1],
        )
    return end
