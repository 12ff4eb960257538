"""``status``, ``results`` and ``audit``: one job, read from the API by its id (no spec, no runner)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from .console import handle_errors, setup_logging
from .options import BASE_URL_ENV_HELP, CONTEXT_SETTINGS, base_url_option, client_from, output_options


def job_command(name: str, help_text: str) -> Callable[[Callable[[Any, str], Any]], click.Command]:
    """A command ``NAME JOB_ID`` printing what ``fetch(client, job_id)`` returns, masked."""

    def decorate(fetch: Callable[[Any, str], Any]) -> click.Command:
        @click.command(name, context_settings=CONTEXT_SETTINGS, help=help_text)
        @click.argument("job_id")
        @base_url_option(help=BASE_URL_ENV_HELP)
        @output_options
        @handle_errors
        def command(job_id: str, base_url: str | None, output_format: str, quiet: bool, verbose: bool) -> None:
            import asyncio
            import json
            setup_logging(verbose, quiet)

            async def go() -> Any:
                async with client_from(base_url) as client:
                    return await fetch(client, job_id)

            data = asyncio.run(go())
            from .. import redact
            from ..progress import printable

            if output_format == "json":
                click.echo(json.dumps(redact.mask_obj(data), ensure_ascii=False, default=str))
            elif not isinstance(data, str):
                click.echo(printable(json.dumps(redact.mask_obj(data), indent=2, ensure_ascii=False, default=str), newlines=True))
            else:
                click.echo(printable(redact.mask(data), newlines=True))

        return command

    return decorate


@job_command("status", "Show a job's status.")
async def status_command(client: Any, job_id: str) -> Any:
    return await client.status(job_id)


@job_command("results", "Show a finished job's results.")
async def results_command(client: Any, job_id: str) -> Any:
    data = await client.results(job_id)
    return {"job_id": job_id, "outputs": data.outputs, **({"error": data.error} if data.error else {})}


@job_command("audit", "Show a job's node-by-node progress.")
async def audit_command(client: Any, job_id: str) -> Any:
    audit = await client.audit(job_id)
    return audit.raw
