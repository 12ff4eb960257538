"""``results`` and ``audit``: one job, read from the API by its id (no spec, no runner), and
what ``status JOB_ID`` and ``wait`` (cli/history.py) share with them.

``status`` and ``results`` exit by the outcome (docs/cli.md, exit codes): 0 completed,
1 failed, cancelled or timed out, 4 not finished yet. ``audit`` shows the job's nodes: 0 when it
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
        where = redact.without_userinfo(client.api_url)
        hint = client.unknown_id_hint(job_id)  # an id of the other API generation
        raise JobNotFound(
            f"job {job_id!r} not found at {where}; "
            + (hint if hint else "check the job id (and --base-url or OPUS_BASE_URL)"),
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


@click.command("audit", context_settings=CONTEXT_SETTINGS)
@click.argument("job_id")
@click.option("--raw", is_flag=True, help="Print the API's answer as it came (as --format json does), not the table.")
@base_url_option(help=BASE_URL_ENV_HELP)
@output_options
@handle_errors
def audit_command(job_id: str, raw: bool, base_url: str | None, output_format: str, quiet: bool, verbose: bool) -> None:
    """Show a job's nodes: status, start, time taken and error of each. --format json (or --raw)
    prints the API's answer instead."""
    import asyncio
    import json

    from .. import redact

    setup_logging(verbose, quiet)

    async def read() -> Any:
        async with client_from(base_url) as client:
            return await _of_known_job(client, job_id, client.audit(job_id))

    body = redact.mask_obj(asyncio.run(read()).raw)
    if output_format == "json":
        click.echo(json.dumps(body, ensure_ascii=False, default=str))
        return
    from ..progress import printable

    lines = None if raw else audit_lines(job_id, body)
    if lines is None:
        if not raw:
            click.echo("the audit is not in a shape opus-runner lays out as a table; shown as it came", err=True)
        click.echo(printable(json.dumps(body, indent=2, ensure_ascii=False, default=str), newlines=True))
        return
    click.echo("\n".join(lines))


def audit_lines(job_id: str, body: Any) -> list[str] | None:
    """The audit as a head line and a table of nodes (node, status, started, time, error), in
    the order they started; None when the body has no per-node data to lay out."""
    from collections.abc import Mapping

    from .tables import duration_text, fit_table, terminal_width

    data = body.get("audit") if isinstance(body, Mapping) else None
    nodes = data.get("nodes_execution_data") if isinstance(data, Mapping) else None
    if not isinstance(nodes, Mapping) or not nodes:
        return None
    entries = [(str(name), entry if isinstance(entry, Mapping) else {}) for name, entry in nodes.items()]
    # Started nodes in the order they started; the rest after them, as the audit lists them.
    order = sorted(range(len(entries)), key=lambda i: (_start_ms(entries[i][1]) is None, _start_ms(entries[i][1]) or 0, i))
    rows = []
    for i in order:
        name, entry = entries[i]
        started = _start_ms(entry)
        ms = entry.get("execution_time")
        rows.append(
            [
                name,
                entry.get("execution_status"),
                _clock(started) if started is not None else None,
                duration_text(ms / 1000) if isinstance(ms, (int, float)) and not isinstance(ms, bool) and started is not None else None,
                _node_error(entry),
            ]
        )
    failed = body.get("failed_nodes") or [name for name, e in entries if str(e.get("execution_status", "")).upper() == "FAILED"]
    running = body.get("running_node")
    done = sum(1 for _n, e in entries if str(e.get("execution_status", "")).upper() == "COMPLETED")
    head = [f"job {job_id}"]
    if body.get("status"):
        head.append(str(body["status"]))
    head.append(f"{done} of {body.get('nb_nodes') or len(entries)} nodes completed")
    if running:
        head.append(f"running: {running}")
    if failed:
        head.append(f"failed: {', '.join(map(str, failed))}")
    width = terminal_width()
    table = fit_table(["node", "status", "started", "time", "error"], rows, width=width, shrink=(4, 0))
    from ..progress import printable

    line = printable("  ".join(head))
    return [line if width is None else line[:width], *table]


def _start_ms(entry: Any) -> float | None:
    """A node's start as epoch milliseconds (a number, or an ISO time), or None."""
    value = entry.get("execution_start_time")
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    from datetime import datetime

    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp() * 1000
    except ValueError:
        return None


def _clock(ms: float) -> str:
    from datetime import datetime

    return datetime.fromtimestamp(ms / 1000).strftime("%H:%M:%S")


def _node_error(entry: Any) -> str | None:
    """The error a failed node gave in its execution output, on one line."""
    if str(entry.get("execution_status", "")).upper() != "FAILED":
        return None
    output = entry.get("execution_output")
    items = output if isinstance(output, list) else [output]
    for item in items:
        if isinstance(item, dict) and item.get("error"):
            return str(item["error"])
        if isinstance(item, str) and item:
            return item
    return "failed"


@click.command("jobs", context_settings=CONTEXT_SETTINGS)
@click.option("--workflow", "workflow_id", metavar="UUID", help="Only the jobs of this workflow.")
@click.option("--status", "statuses", multiple=True, metavar="STATUS", help="Only jobs with this status (repeatable: COMPLETED, FAILED, IN_PROGRESS, ...).")
@click.option("--limit", type=int, metavar="N", help="Show N jobs [default: 25].")
@click.option("--offset", type=int, metavar="N", help="Skip the first N jobs (the API's paging) [default: 0].")
@base_url_option(help=BASE_URL_ENV_HELP)
@output_options
@handle_errors
def jobs_command(
    workflow_id: str | None, statuses: tuple[str, ...], limit: int | None, offset: int | None, base_url: str | None,
    output_format: str, quiet: bool, verbose: bool,
) -> None:
    """List the account's jobs from the API's search (GET /job/search), newest first as the API
    orders them: id, status, title, workflow, created. With --format json, the API's answer."""
    import asyncio
    import json

    from .. import redact
    from ..errors import UsageError
    from ..workflow import workflow_id_problem
    from .tables import fit_table, terminal_width

    setup_logging(verbose, quiet)
    limit = 25 if limit is None else limit
    offset = 0 if offset is None else offset
    if not 1 <= limit <= 500:
        raise UsageError(f"--limit must be from 1 to 500, found {limit}")
    if offset < 0:
        raise UsageError(f"--offset must be 0 or more, found {offset}")
    if workflow_id and workflow_id_problem(workflow_id):
        raise UsageError(f"--workflow: {workflow_id_problem(workflow_id)}")
    wanted = ",".join(s.strip().upper().replace(" ", "_") for s in statuses if s.strip()) or None

    async def go() -> Any:
        async with client_from(base_url) as client:
            return await client.search_jobs(workflow_id=workflow_id, status=wanted, offset=offset, max_results=limit)

    answer = redact.mask_obj(asyncio.run(go()))
    if output_format == "json":
        click.echo(json.dumps(answer, ensure_ascii=False, default=str))
        return
    found, total = found_jobs(answer)
    rows = [[j["id"], j["status"], j["title"], j["workflow"], j["created"]] for j in found]
    for line in fit_table(["job id", "status", "title", "workflow", "created"], rows, width=terminal_width(), shrink=(2, 3)):
        click.echo(line)
    shown = f"{offset + 1}-{offset + len(found)}" if found else "none"
    click.echo(f"{shown} of {total if total is not None else '?'} job(s)", err=True)


def found_jobs(answer: Any) -> tuple[list[dict[str, Any]], int | None]:
    """The jobs of a search answer, whichever published shape (``{totalCount, jobs}``, a bare
    list, ``data``), each as ``{id, status, title, workflow, created}``; and the total."""
    from ..models import normalise_status

    items = answer
    total = None
    if isinstance(answer, dict):
        items = answer.get("jobs", answer.get("data", answer.get("results", [])))
        count = answer.get("totalCount", answer.get("total"))
        total = count if isinstance(count, int) else None
    found = []
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict):
            continue
        workflow = item.get("workflow") if isinstance(item.get("workflow"), dict) else {}
        found.append(
            {
                "id": str(item.get("jobExecutionId") or item.get("id") or item.get("_id") or ""),
                "status": normalise_status(str(item.get("status") or "UNKNOWN")),
                "title": str(item.get("title") or ""),
                "workflow": str(workflow.get("name") or item.get("workflowId") or workflow.get("id") or ""),
                "created": str(item.get("createdAt") or item.get("created_at") or ""),
            }
        )
    return found, total if total is not None else (len(found) if not isinstance(answer, dict) else None)
