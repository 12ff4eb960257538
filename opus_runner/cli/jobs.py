"""``status``, ``results`` and ``audit``: one job, read from the API by its id (no spec, no runner).

``status`` and ``results`` exit by the job's outcome (docs/cli.md, exit codes): 0 completed,
1 failed, cancelled or timed out, 4 not finished yet. ``audit`` only shows progress: 0 when it
could. A job id the API does not know is the user's input error (2), as for a workflow.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from typing import Any

import click

from .console import handle_errors, setup_logging
from .options import BASE_URL_ENV_HELP, CONTEXT_SETTINGS, base_url_option, client_from, output_options

#: What a job command found: the data it prints, and the exit code it leaves with.
Looked = tuple[Any, int]


def job_command(name: str, help_text: str) -> Callable[[Callable[[Any, str], Awaitable[Looked]]], click.Command]:
    """A command ``NAME JOB_ID`` printing what ``fetch(client, job_id)`` returns, masked, and
    exiting with the code it returns."""

    def decorate(fetch: Callable[[Any, str], Awaitable[Looked]]) -> click.Command:
        @click.command(name, context_settings=CONTEXT_SETTINGS, help=help_text)
        @click.argument("job_id")
        @base_url_option(help=BASE_URL_ENV_HELP)
        @output_options
        @handle_errors
        def command(job_id: str, base_url: str | None, output_format: str, quiet: bool, verbose: bool) -> None:
            import asyncio
            import json
            setup_logging(verbose, quiet)

            async def go() -> Looked:
                async with client_from(base_url) as client:
                    return await fetch(client, job_id)

            data, code = asyncio.run(go())
            from .. import redact
            from ..progress import printable

            if output_format == "json":
                click.echo(json.dumps(redact.mask_obj(data), ensure_ascii=False, default=str))
            elif not isinstance(data, str):
                click.echo(printable(json.dumps(redact.mask_obj(data), indent=2, ensure_ascii=False, default=str), newlines=True))
            else:
                click.echo(printable(redact.mask(data), newlines=True))
            sys.exit(code)

        return command

    return decorate


async def _of_known_job(client: Any, job_id: str, call: Awaitable[Any]) -> Any:
    """The answer of the command's first call about the job, with the API's 404 turned into
    the one sentence of an unknown id (a later 404 is the API's error, not the user's)."""
    from .. import redact
    from ..errors import JobNotFound, NotFoundError

    try:
        return await call
    except NotFoundError as exc:
        where = redact.without_userinfo(client.base_url)
        raise JobNotFound(
            f"job {job_id!r} not found at {where}; check the job id (and --base-url or OPUS_BASE_URL)",
            status_code=exc.status_code,
            method=exc.method,
            endpoint=exc.endpoint,
            job_id=job_id,
        ) from None


def outcome_code(status: str) -> int:
    """The exit code of a job's status: 0 COMPLETED, 1 another terminal status, 4 not finished."""
    from ..errors import EXIT_FAILED, EXIT_NOT_FINISHED, EXIT_OK
    from ..models import TERMINAL_STATUSES

    if status == "COMPLETED":
        return EXIT_OK
    return EXIT_FAILED if status in TERMINAL_STATUSES else EXIT_NOT_FINISHED


@job_command("status", "Show a job's status. Exit 0 when it COMPLETED, 1 when it failed, was cancelled or timed out, 4 while it has not finished.")
async def status_command(client: Any, job_id: str) -> Looked:
    status = await _of_known_job(client, job_id, client.status(job_id))
    return status, outcome_code(status)


@job_command("results", "Show a finished job's results. Exit 0 when it COMPLETED, 1 when it failed, was cancelled or timed out, 4 (and no results) while it has not finished.")
async def results_command(client: Any, job_id: str) -> Looked:
    from ..errors import ApiError, EXIT_NOT_FINISHED, JobFailed, JobNotFinished

    # The status first: before a job ends, what its results route answers is not documented
    # (a 400, a 202, an empty body), and none of it says "not yet" in words.
    status = await _of_known_job(client, job_id, client.status(job_id))
    code = outcome_code(status)
    if code == EXIT_NOT_FINISHED:
        raise JobNotFinished(
            f"job {job_id} has not finished (it is {status}), so it has no results yet; ask again when it "
            f"has ended: `opus-run status {job_id}` exits 4 until then",
            job_id=job_id,
            status=status,
        )
    try:
        data = await client.results(job_id)
    except ApiError as exc:
        if status == "COMPLETED" or exc.status_code is None or exc.status_code >= 500:
            raise
        # A job that did not complete may have no results at all: that is its failure to report.
        raise JobFailed(f"job {job_id} ended {status} and has no results ({exc.message})", job_id=job_id, status=status) from None
    shown = {"job_id": job_id, "status": status, "outputs": data.outputs, **({"error": data.error} if data.error else {})}
    return shown, code


@job_command("audit", "Show a job's node-by-node progress.")
async def audit_command(client: Any, job_id: str) -> Looked:
    from ..errors import EXIT_OK

    audit = await _of_known_job(client, job_id, client.audit(job_id))
    return audit.raw, EXIT_OK
