"""``submit``, ``worker`` and ``cancel``: runs on a durable engine (Temporal) instead of this
process. ``status RUN_ID`` and ``wait RUN_ID`` take ``--engine temporal`` too (cli/history.py
hands them here). Nothing of Temporal is imported until one of these runs: ``pip install
'opus-runner[temporal]'`` brings it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from .completion import complete_spec_paths
from .console import handle_errors, setup_logging
from .options import (
    CONTEXT_SETTINGS,
    base_url_option,
    output_options,
    plugin_option,
    spec_options,
    timeout_option,
    together,
)

ENGINES = ("temporal",)


def engine_options(func: Any) -> Any:
    """Where the engine is: every command that talks to it takes these."""
    return together(
        click.option(
            "--engine",
            type=click.Choice(ENGINES),
            required=True,
            help="The durable engine that runs the jobs (only temporal so far).",
        ),
        click.option(
            "--temporal-address",
            metavar="HOST:PORT",
            help="The Temporal server's frontend [default: $TEMPORAL_ADDRESS, else [temporal] address in opus-runner.toml, else localhost:7233].",
        ),
        click.option("--namespace", metavar="N", help="The Temporal namespace [default: $TEMPORAL_NAMESPACE, else [temporal] namespace, else default]."),
        click.option("--task-queue", metavar="Q", help="The task queue the run's workers poll [default: [temporal] task_queue, else opus-runner]."),
    )(func)


def engine_of(**kwargs: Any) -> Any:
    """The engine options: the command line, the environment, then ``[temporal]`` of the
    project file of the current folder (the temporal extra is checked here)."""
    import os

    from ..config import load_project_config
    from ..temporal.runs import EngineOptions, require_temporal

    config = load_project_config(kwargs.get("project") or os.getcwd())
    require_temporal()
    return EngineOptions.from_env(
        config,
        address=kwargs.get("temporal_address"),
        namespace=kwargs.get("namespace"),
        task_queue=kwargs.get("task_queue"),
        chunk_size=kwargs.get("chunk_size"),
        heartbeat=kwargs.get("heartbeat_timeout"),
    )


@click.command("submit", context_settings=CONTEXT_SETTINGS)
@click.argument("specs", nargs=-1, required=True, shell_complete=complete_spec_paths)
@engine_options
@click.option("--run-id", metavar="ID", help="The run's id (the same id submitted again starts nothing new) [default: a new one].")
@click.option("--chunk-size", type=int, metavar="N", help="Jobs per chunk workflow [default: 100].")
@click.option(
    "--heartbeat-timeout",
    type=float,
    metavar="SECONDS",
    help="How long a worker may go unheard before its steps move to another worker [default: 30].",
)
@spec_options
@base_url_option()
@timeout_option()
@click.option(
    "--callback-public-url",
    metavar="URL",
    help="Where Opus reaches 'opus-run callbacks serve --engine temporal' [default: [callback] public_url]: jobs are "
    "woken by their callback, polled as the safety net (workers and receiver share $OPUS_RUNNER_CALLBACK_SECRET).",
)
@click.option("--no-wait", is_flag=True, help="The workers execute each job and do not follow it (follow one with: opus-run status JOB_ID).")
# Not offered, but refused in words: a --sandbox would end with this command (opus_runner.temporal.runs.submit).
@click.option("--sandbox", is_flag=True, hidden=True)
@output_options
@handle_errors
def submit_command(specs: tuple[str, ...], output_format: str, quiet: bool, verbose: bool, **kwargs: Any) -> None:
    """Validate every job as `run` does, then hand the run to the engine's workers: one chunk
    workflow per --chunk-size jobs, ids derived from the run id. Nothing starts if any job is
    invalid. Prints the run id and how to follow it."""
    import asyncio

    from ..engine import RunOptions

    setup_logging(verbose, quiet)
    engine = engine_of(**kwargs)
    from ..temporal.runs import submit

    from .options import chosen_api

    fields = set(RunOptions.__dataclass_fields__)
    options = {"api": chosen_api(), **{k: v for k, v in kwargs.items() if k in fields and k not in ("specs",)}}
    handle = asyncio.run(
        submit(list(specs), engine=engine, run_id=kwargs.get("run_id"), output_format=output_format, quiet=quiet, verbose=verbose, **options)
    )
    follow = f"opus-run wait {handle.run_id} --engine temporal" + _where(kwargs)
    if output_format == "json":
        from ..progress import dumps

        click.echo(
            dumps(
                {
                    "event": "submitted",
                    "run_id": handle.run_id,
                    "jobs": handle.jobs,
                    "chunks": handle.chunks_submitted,
                    "started": handle.started,
                }
            )
        )
        return
    if handle.started == 0:
        said = f"run {handle.run_id} was submitted before ({handle.jobs} jobs in {handle.chunks_submitted} chunks); nothing new was started"
    else:
        said = f"submitted run {handle.run_id}: {handle.jobs} jobs in {handle.chunks_submitted} chunk{'s' if handle.chunks_submitted != 1 else ''}"
    click.echo(said)
    if not quiet:
        click.echo(f"follow it with: {follow}", err=True)


def _where(kwargs: dict[str, Any]) -> str:
    """The engine options a follow-up command needs again."""
    parts = []
    for option, name in (("--temporal-address", "temporal_address"), ("--namespace", "namespace")):
        if kwargs.get(name):
            parts.append(f" {option} {kwargs[name]}")
    return "".join(parts)


@click.command("worker", context_settings=CONTEXT_SETTINGS)
@engine_options
@click.option("--concurrency", "-c", type=int, metavar="N", help="Job steps this worker runs at once [default: 50].")
@click.option(
    "--api-rate",
    type=float,
    metavar="R",
    help="Steps per second across every worker of the task queue, enforced by the Temporal server (it holds for the whole account's workers).",
)
@click.option(
    "--project",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="The worker's checkout of the project: run specs are found there [default: the current folder].",
)
@base_url_option()
@plugin_option()
@click.option("--verbose", "-v", is_flag=True, help="Log every step and request.")
@click.option("--quiet", "-q", is_flag=True, help="Log errors only.")
@handle_errors
def worker_command(verbose: bool, quiet: bool, **kwargs: Any) -> None:
    """Run the engine's job steps: initiate, upload, execute, status, results and delivery.
    The service key, secrets and files are read here, from this machine's environment and
    checkout; the engine's history holds plan keys, job ids and statuses only. Stop with
    Ctrl-C or SIGTERM: steps in flight are taken over by another worker."""
    import asyncio
    import os

    from ..engine import RunOptions

    setup_logging(verbose, quiet)
    engine = engine_of(**kwargs)
    from ..temporal.worker import WorkerOptions, serve

    root = Path(kwargs.get("project") or os.getcwd())
    worker = WorkerOptions(
        root=root,
        task_queue=engine.task_queue,
        concurrency=kwargs.get("concurrency") or 50,
        api_rate=kwargs.get("api_rate"),
    )
    options = RunOptions(base_url=kwargs.get("base_url"), plugins=list(kwargs.get("plugin") or []), quiet=True, concurrency=worker.concurrency)

    def ready() -> None:
        if not quiet:
            click.echo(f"worker polling task queue {engine.task_queue!r} on {engine.address} (project {root})", err=True)

    try:
        asyncio.run(_until_stopped(serve(engine, worker, options, ready=ready)))
    except KeyboardInterrupt:
        if not quiet:
            click.echo("worker stopped", err=True)


async def _until_stopped(work: Any) -> Any:
    from .run import _until_stopped as until_stopped

    return await until_stopped(work)


@click.command("cancel", context_settings=CONTEXT_SETTINGS)
@click.argument("run_id")
@engine_options
@output_options
@handle_errors
def cancel_command(run_id: str, output_format: str, quiet: bool, verbose: bool, **kwargs: Any) -> None:
    """Stop following and delivering a run's jobs. Opus documents no job cancel: jobs already
    executed run on in Opus, unfollowed; jobs not yet executed are not sent."""
    import asyncio

    from ..temporal.runs import RunHandle

    setup_logging(verbose, quiet)
    engine = engine_of(**kwargs)

    async def cancel() -> int:
        handle = await RunHandle.attach(run_id, engine)
        return await handle.cancel()

    signalled = asyncio.run(cancel())
    if output_format == "json":
        from ..progress import dumps

        click.echo(dumps({"event": "cancelled", "run_id": run_id, "chunks": signalled}))
        return
    click.echo(
        f"run {run_id}: {signalled} chunk{'s' if signalled != 1 else ''} told to stop. Jobs not yet executed are not sent; "
        "jobs already executed run on in Opus (it documents no job cancel), no longer followed nor delivered"
    )


def engine_status(run_id: str, *, wait: bool, output_format: str, quiet: bool, verbose: bool, **kwargs: Any) -> None:
    """``status RUN_ID --engine temporal`` and ``wait RUN_ID --engine temporal``: the run's
    summary as ``run`` prints it, and its exit codes (4 while a job has not finished)."""
    import asyncio

    from ..progress import make_reporter
    from ..temporal.runs import RunHandle

    engine = engine_of(**kwargs)

    async def read() -> Any:
        handle = await RunHandle.attach(run_id, engine)
        return await (handle.wait() if wait else handle.report())

    report = asyncio.run(_until_stopped(read()))
    reporter = make_reporter(output_format, quiet=quiet, verbose=verbose or not wait, live=False)
    if report.elapsed is not None:
        reporter.began(report.elapsed)
    try:
        reporter.summary([o.row() for o in report.outcomes])
    finally:
        reporter.close()
    for note in report.notes:
        click.echo(f"warning: {note}", err=True)
    sys.exit(report.exit_code)
