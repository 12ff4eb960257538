"""A run as Markdown, for ``$GITHUB_STEP_SUMMARY`` or a pull request comment: a heading with
the outcome, the totals line, a table of counts per status, and a table of the failures with
their reasons.

Job names and errors are user and server text: in a table cell, ``|`` would end the cell, a
newline the row, and ``<``/``&`` would reach GitHub's HTML renderer; :func:`cell` neutralises all
three. The text ends with a blank line, so summaries appended to one file stay apart.
"""

from __future__ import annotations

import re

from .data import RunData

#: Failures listed in full; the rest are counted, so a 5000-job disaster stays readable.
MAX_FAILURES = 50
#: Characters of one reason kept in a cell.
MAX_REASON = 300

_MARKDOWN_SPECIALS = re.compile(r"([\\`*_\[\]|#~])")


def cell(text: object, limit: int | None = None) -> str:
    """``text`` safe inside a Markdown table cell: one line, HTML-escaped, Markdown escaped."""
    value = " ".join(str(text).split())
    if limit is not None and len(value) > limit:
        value = value[: limit - 1] + "…"
    value = value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MARKDOWN_SPECIALS.sub(r"\\\1", value)


def render_markdown(data: RunData) -> str:
    """The Markdown summary of ``data``."""
    failures = data.failures
    if data.exit_code is None:
        outcome = "not finished"
    elif data.exit_code == 0:
        outcome = "passed"
    else:
        outcome = f"exit code {data.exit_code}"
    lines = [f"### opus-run {cell(data.run_id)}: {outcome}", "", f"**{cell(data.totals_line())}**", ""]
    if data.jobs:
        lines += ["| status | jobs |", "|---|---:|"]
        lines += [f"| {cell(status)} | {n} |" for status, n in data.counts.items()]
        lines.append("")
    if failures:
        lines += [f"#### Failures ({len(failures)})", "", "| job | status | job id | reason |", "|---|---|---|---|"]
        for job in failures[:MAX_FAILURES]:
            lines.append(
                f"| {cell(job.name)} | {cell(job.status)} | {cell(job.job_id or '-')} | {cell(job.reason, MAX_REASON)} |"
            )
        if len(failures) > MAX_FAILURES:
            lines += ["", f"… and {len(failures) - MAX_FAILURES} more; see `opus-run report {cell(data.run_id)}`."]
        lines.append("")
    return "\n".join(lines) + "\n"


def append_markdown(path: str, data: RunData) -> None:
    """Append the summary of ``data`` to ``path`` (created if missing), as GitHub expects of
    ``$GITHUB_STEP_SUMMARY``: what other steps wrote stays, and a blank line keeps them apart."""
    text = render_markdown(data).encode("utf-8")
    with open(path, "a+b") as handle:
        size = handle.seek(0, 2)
        handle.seek(max(0, size - 2))
        tail = handle.read()
        if size and not tail.endswith(b"\n\n"):
            text = (b"\n" if tail.endswith(b"\n") else b"\n\n") + text
        handle.write(text)  # append mode: at the end, whatever was read
