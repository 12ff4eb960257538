"""``opus-run report [RUN_ID]``: one run of the journal as a self-contained HTML page (totals,
timeline, durations, failures) or as a Markdown summary."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from .completion import complete_run_ids
from .console import handle_errors, setup_logging
from .options import CONTEXT_SETTINGS, state_dir_option, verbose_option

if TYPE_CHECKING:  # pragma: no cover
    from ..reports.data import RunData

MARKDOWN_SUFFIXES = (".md", ".markdown")


def _format_of(output: Path | None, given: str | None) -> str:
    """``--format``, else what the ``-o`` file's name says, else Markdown for a terminal."""
    if given:
        return given
    if output is not None and output.suffix.lower() not in MARKDOWN_SUFFIXES:
        return "html"
    return "md"


def open_run(state_dir: Path | None, run_id: str | None) -> RunData:
    """The report data of ``run_id`` (default: the latest run) in the journal of ``--state-dir``,
    else of the project; a missing journal is one sentence, and is not created."""
    from ..config import default_state_dir, load_project_config
    from ..errors import UsageError
    from ..reports import load_run
    from ..state import DB_NAME, Journal

    folder = state_dir if state_dir is not None else default_state_dir(load_project_config())
    if not (folder / DB_NAME).is_file():
        raise UsageError(
            f"no journal at {folder / DB_NAME}: nothing has run in this project yet; "
            "run from the project's folder, or give --state-dir"
        )
    with Journal(folder) as journal:
        return load_run(journal, run_id)


@click.command("report", context_settings=CONTEXT_SETTINGS)
@click.argument("run_id", required=False, shell_complete=complete_run_ids)
@click.option("-o", "--output", type=click.Path(path_type=Path), metavar="FILE",
              help="Write the report to FILE (replaced whole) instead of printing it.")
@click.option("--format", "output_format", type=click.Choice(["html", "md"]),
              help="html: one self-contained page (no network, no script); md: a Markdown summary "
              "[default: md for a FILE named *.md and for printing, else html].")
@state_dir_option()
@verbose_option()
@handle_errors
def report_command(run_id: str | None, output: Path | None, output_format: str | None, state_dir: Path | None, verbose: bool) -> None:
    """Report on a run from the journal (default: the latest run).

    The HTML page shows the run's totals, a timeline of its jobs coloured by status, a histogram
    of their durations and a table of the failures with their reasons: `opus-run report -o
    run.html`. The Markdown summary has the totals and the failures: `opus-run report --format
    md >> "$GITHUB_STEP_SUMMARY"`."""
    from .. import files
    from ..paths import display_path

    setup_logging(verbose)
    fmt = _format_of(output, output_format)
    data = open_run(state_dir, run_id)
    if fmt == "html":
        from ..reports.html import render_html

        text = render_html(data)
    else:
        from ..reports.markdown import render_markdown

        text = render_markdown(data)
    if output is None:
        click.echo(text, nl=False)
        return
    if output.is_dir():
        from ..errors import UsageError

        raise UsageError(f"-o {output} is a folder; give a file name (run.html, summary.md)")
    files.atomic_write_text(output, text)
    click.echo(f"wrote {display_path(output)} (run {data.run_id}: {data.totals_line()})", err=True)
