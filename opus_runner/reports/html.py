"""A run as one self-contained HTML page: totals, a timeline of the jobs, a histogram of their
durations, the failures with their reasons, and every job in a folded table.

Nothing is fetched: the CSS is inline, the charts are inline SVG, there is no JavaScript, and a
Content-Security-Policy forbids scripts and every network load, so the file reads the same from
a CI artifact, an e-mail or a laptop offline. Job titles, names and errors are user and server
text: every one goes through :func:`esc` (and the policy makes a script that slipped through
inert anyway).
"""

from __future__ import annotations

import math
from datetime import datetime
from html import escape

from ..durations import format_duration
from .data import STATUS_ORDER, JobRow, RunData

#: Rows the timeline draws; a larger run shows its first ones and says how many it left out.
MAX_TIMELINE_ROWS = 500
#: Characters of a job name beside its bar (the full name is the bar's tooltip).
LABEL_CHARS = 34

COLOURS = {
    "COMPLETED": "#2f9e44",
    "FAILED": "#e03131",
    "TIMED_OUT": "#f08c00",
    "CANCELLED": "#868e96",
    "STOPPED": "#868e96",
    "IN_PROGRESS": "#1c7ed6",
    "PENDING": "#74c0fc",
    "NOT_SUBMITTED": "#ced4da",
}
OTHER_COLOUR = "#ae3ec9"

_CSS = """
:root { color-scheme: light; --ink: #212529; --muted: #868e96; --line: #dee2e6; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink);
       margin: 0; padding: 24px 32px; background: #f8f9fa; }
h1 { font-size: 20px; margin: 0 0 4px; }
h2 { font-size: 16px; margin: 28px 0 8px; }
.meta { color: var(--muted); margin: 0 0 16px; }
.outcome { display: inline-block; padding: 1px 8px; border-radius: 10px; color: #fff; font-weight: 600; }
.outcome.ok { background: #2f9e44; } .outcome.bad { background: #e03131; } .outcome.open { background: #1c7ed6; }
#totals-line { font-size: 16px; font-weight: 600; margin: 8px 0 12px; }
.totals { display: flex; flex-wrap: wrap; gap: 10px; }
.total { background: #fff; border: 1px solid var(--line); border-left: 6px solid var(--c); border-radius: 6px;
         padding: 8px 14px; min-width: 120px; }
.total .n { display: block; font-size: 24px; font-weight: 700; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: 12px; overflow-x: auto; }
svg text { font: 11px system-ui, sans-serif; fill: var(--ink); }
svg .axis { stroke: var(--line); } svg .tick { fill: var(--muted); }
.legend span { display: inline-block; margin-right: 14px; }
.legend i { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 4px; background: var(--c); }
table { border-collapse: collapse; width: 100%; background: #fff; }
th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { background: #f1f3f5; }
td.reason { white-space: pre-wrap; word-break: break-word; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.status { font-weight: 600; color: var(--c); }
.note { color: var(--muted); }
details summary { cursor: pointer; margin: 28px 0 8px; font-size: 16px; font-weight: 600; }
"""


def esc(text: object) -> str:
    """``text`` as HTML text or attribute value: ``<``, ``>``, ``&`` and both quotes escaped."""
    return escape(str(text), quote=True)


def colour(status: str) -> str:
    return COLOURS.get(status, OTHER_COLOUR)


def _seconds(data: RunData, when: datetime | None) -> float | None:
    if when is None or data.started is None:
        return None
    return max(0.0, (when - data.started).total_seconds())


def _span(data: RunData) -> float:
    """Seconds the timeline's axis spans: the run's, at least every job's end, never 0."""
    ends = [_seconds(data, j.ended) or 0.0 for j in data.jobs] + [data.elapsed or 0.0]
    return max(max(ends, default=0.0), 0.001)


def _ticks(span: float, count: int = 5) -> list[float]:
    """Round tick positions from 0 to ``span`` (1, 2 or 5 times a power of ten apart)."""
    raw = span / count
    power = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    return [i * step for i in range(int(span / step) + 1)]


def _label(seconds: float) -> str:
    return format_duration(round(seconds, 3 if seconds < 1 else 1))


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _tooltip(job: JobRow) -> str:
    duration = f", {_label(job.duration)}" if job.duration is not None else ""
    reason = f": {job.reason}" if job.failed else ""
    return f"{job.name} ({job.title}) {job.status}{duration}{reason}"


def timeline_svg(data: RunData) -> str:
    """One row per job: a bar from its start to its end (to the axis' end while it runs),
    coloured by status; the part before the service ran it is drawn pale."""
    rows = data.jobs[:MAX_TIMELINE_ROWS]
    label_w, plot_w, row_h, top = 250, 720, 18, 22
    span = _span(data)
    height = top + row_h * len(rows) + 6
    scale = plot_w / span
    parts = [
        f'<svg id="timeline" xmlns="http://www.w3.org/2000/svg" width="{label_w + plot_w + 20}" '
        f'height="{height}" role="img" aria-label="timeline of {len(rows)} jobs">'
    ]
    for tick in _ticks(span):
        x = label_w + tick * scale
        parts.append(f'<line class="axis" x1="{x:.1f}" y1="{top - 6}" x2="{x:.1f}" y2="{height}"/>')
        parts.append(f'<text class="tick" x="{x:.1f}" y="{top - 10}" text-anchor="middle">{esc(_label(tick))}</text>')
    for i, job in enumerate(rows):
        y = top + i * row_h
        start = _seconds(data, job.started) or 0.0
        end = _seconds(data, job.ended)
        end = span if end is None else end
        running = _seconds(data, job.running)
        parts.append(f'<text x="{label_w - 8}" y="{y + 12}" text-anchor="end">{esc(_short(job.name, LABEL_CHARS))}</text>')
        width = max((end - start) * scale, 2.0)
        fill = colour(job.status)
        parts.append(
            f'<rect class="bar" data-status="{esc(job.status)}" x="{label_w + start * scale:.1f}" y="{y + 2}" '
            f'width="{width:.1f}" height="{row_h - 5}" rx="2" fill="{fill}"><title>{esc(_tooltip(job))}</title></rect>'
        )
        if running is not None and start < running < end:
            # The wait in the service's queue, paler, over the bar's start.
            parts.append(
                f'<rect class="queued" x="{label_w + start * scale:.1f}" y="{y + 2}" width="{(running - start) * scale:.1f}" '
                f'height="{row_h - 5}" rx="2" fill="#ffffff" fill-opacity="0.55"/>'
            )
    parts.append("</svg>")
    return "".join(parts)


def _bins(durations: list[float]) -> tuple[float, int]:
    """``(bin width, bin count)`` for ``durations``: up to 2 sqrt(n) bins (20 at most) of a
    round width, so 20 jobs of about one duration still show how they spread."""
    longest = max(durations)
    count = max(1, min(20, 2 * math.ceil(math.sqrt(len(durations)))))
    if longest <= 0:
        return 1.0, 1
    ticks = _ticks(longest, count)
    width = ticks[1] if len(ticks) > 1 else longest
    return width, int(longest // width) + 1


def histogram_svg(data: RunData) -> str:
    """Jobs by duration: a bar per bin, stacked by status; empty when no job has ended."""
    ended = [j for j in data.jobs if j.duration is not None]
    if not ended:
        return '<p class="note">No job has ended yet.</p>'
    width, count = _bins([j.duration or 0.0 for j in ended])
    bins: list[dict[str, int]] = [{} for _ in range(count)]
    for job in ended:
        index = min(int((job.duration or 0.0) // width), count - 1)
        bins[index][job.status] = bins[index].get(job.status, 0) + 1
    left, plot_w, plot_h, top = 40, 720, 160, 12
    bar_w = plot_w / count
    tallest = max(sum(b.values()) for b in bins)
    scale = plot_h / tallest
    parts = [
        f'<svg id="histogram" xmlns="http://www.w3.org/2000/svg" width="{left + plot_w + 20}" '
        f'height="{top + plot_h + 36}" role="img" aria-label="durations of {len(ended)} jobs">',
        f'<line class="axis" x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}"/>',
    ]
    for i, counts in enumerate(bins):
        x = left + i * bar_w
        base = top + plot_h
        for status in [s for s in STATUS_ORDER if s in counts] + sorted(set(counts) - set(STATUS_ORDER)):
            h = counts[status] * scale
            base -= h
            parts.append(
                f'<rect class="hist-bar" data-status="{esc(status)}" data-count="{counts[status]}" x="{x + 1:.1f}" '
                f'y="{base:.1f}" width="{max(bar_w - 2, 1):.1f}" height="{h:.1f}" fill="{colour(status)}">'
                f"<title>{counts[status]} {esc(status)} in {esc(_label(i * width))}–{esc(_label((i + 1) * width))}</title></rect>"
            )
        total = sum(counts.values())
        if total:
            parts.append(f'<text x="{x + bar_w / 2:.1f}" y="{base - 3:.1f}" text-anchor="middle">{total}</text>')
        parts.append(f'<text class="tick" x="{x:.1f}" y="{top + plot_h + 14}" text-anchor="middle">{esc(_label(i * width))}</text>')
    parts.append(
        f'<text class="tick" x="{left + plot_w:.1f}" y="{top + plot_h + 14}" text-anchor="middle">{esc(_label(count * width))}</text>'
    )
    parts.append(f'<text class="tick" x="{left + plot_w / 2:.1f}" y="{top + plot_h + 32}" text-anchor="middle">duration</text>')
    parts.append("</svg>")
    return "".join(parts)


def _legend(data: RunData) -> str:
    items = "".join(f'<span style="--c:{colour(s)}"><i></i>{esc(s)}</span>' for s in data.counts)
    return f'<p class="legend">{items} <span class="note">pale: waiting for the service to start it</span></p>'


def _totals(data: RunData) -> str:
    cards = "".join(
        f'<div class="total" data-status="{esc(status)}" style="--c:{colour(status)}"><span class="n">{n}</span>'
        f"{esc(status.lower().replace('_', ' '))}</div>"
        for status, n in data.counts.items()
    )
    return f'<p id="totals-line">{esc(data.totals_line())}</p><div class="totals">{cards}</div>'


def _job_cells(job: JobRow) -> str:
    duration = _label(job.duration) if job.duration is not None else "–"
    return (
        f"<td>{esc(job.name)}</td><td>{esc(job.title)}</td>"
        f'<td class="status" style="--c:{colour(job.status)}">{esc(job.status)}</td>'
        f"<td>{esc(job.job_id or '–')}</td><td class=\"num\">{esc(duration)}</td>"
    )


def _failures(data: RunData) -> str:
    failures = data.failures
    if not failures:
        return '<p class="note" id="no-failures">No job failed.</p>'
    rows = "".join(f'<tr class="failure">{_job_cells(j)}<td class="reason">{esc(j.reason)}</td></tr>' for j in failures)
    return (
        '<table id="failures"><thead><tr><th>job</th><th>title</th><th>status</th><th>job id</th>'
        f"<th>duration</th><th>reason</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def _outcome(data: RunData) -> str:
    if data.exit_code is None:
        return '<span class="outcome open">not finished</span>'
    if data.exit_code == 0:
        return '<span class="outcome ok">passed</span>'
    return f'<span class="outcome bad">exit code {data.exit_code}</span>'


def render_html(data: RunData) -> str:
    """The whole page for ``data``."""
    started = data.started.strftime("%Y-%m-%d %H:%M:%S %Z") if data.started else "unknown"
    left_out = len(data.jobs) - MAX_TIMELINE_ROWS
    more = f'<p class="note">The first {MAX_TIMELINE_ROWS} jobs are drawn; {left_out} more are in the table below.</p>' if left_out > 0 else ""
    all_rows = "".join(f"<tr>{_job_cells(j)}</tr>" for j in data.jobs)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; img-src data:">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>opus-run {esc(data.run_id)}</title>
<style>{_CSS}</style>
</head>
<body>
<h1>opus-run {esc(data.run_id)} {_outcome(data)}</h1>
<p class="meta">started {esc(started)} · {len(data.jobs)} jobs</p>
{_totals(data)}
<h2>Timeline</h2>
<div class="card">{_legend(data)}{timeline_svg(data)}{more}</div>
<h2>Durations</h2>
<div class="card">{histogram_svg(data)}</div>
<h2>Failures</h2>
{_failures(data)}
<details><summary>All {len(data.jobs)} jobs</summary>
<table id="jobs"><thead><tr><th>job</th><th>title</th><th>status</th><th>job id</th><th>duration</th></tr></thead>
<tbody>{all_rows}</tbody></table>
</details>
</body>
</html>
"""
