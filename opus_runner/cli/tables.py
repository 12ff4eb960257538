"""The tables and times of the commands that look at work (runs, status, audit): columns two
spaces apart, and no row wider than the terminal (``COLUMNS``, else the terminal's width when
stdout is one): the free-text columns are cut with an ellipsis instead.

Only click is imported at start-up, like every command module.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any

import click

#: Statuses in the order counts are said; the rest follow in the order they are met.
COUNT_ORDER = ("COMPLETED", "FAILED", "CANCELLED", "STOPPED", "TIMED_OUT")
#: The narrowest a cut column gets (a cut below this says nothing).
MIN_COLUMN = 8


def terminal_width() -> int | None:
    """The columns rows must fit in: ``COLUMNS`` when set, else the terminal's when stdout is
    one; None (no limit) for a pipe or a file, which do not wrap."""
    import os
    import shutil

    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    if sys.stdout.isatty():
        return shutil.get_terminal_size().columns
    return None


def cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


def fit_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, width: int | None, shrink: Sequence[int] = ()) -> list[str]:
    """The lines of a table, columns two spaces apart; with ``width``, the ``shrink`` columns
    are cut (in that order, down to :data:`MIN_COLUMN`) until every line fits, and a line still
    too wide is cut at the end. Cells are made :func:`printable` (server text included)."""
    from ..progress import printable

    cells = [[printable("-" if c is None or c == "" else c) for c in row] for row in rows]
    widths = [max([len(h), *(len(row[i]) for row in cells)]) for i, h in enumerate(headers)]
    if width is not None:
        for col in shrink:
            excess = sum(widths) + 2 * (len(widths) - 1) - width
            if excess <= 0:
                break
            widths[col] = max(MIN_COLUMN, len(headers[col]), widths[col] - excess)

    def line(values: Sequence[str]) -> str:
        text = "  ".join(cut(v, w).ljust(w) for v, w in zip(values, widths)).rstrip()
        return text if width is None else cut(text, width)

    return [line(list(headers)), *(line(row) for row in cells)]


def local_time(iso: str | None) -> str:
    """A journal time (UTC, ISO 8601) in the local zone, to the second."""
    from datetime import datetime

    if not iso:
        return "-"
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone().strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return iso


def seconds_between(start: str | None, end: str | None = None) -> float | None:
    """Seconds from ``start`` to ``end`` (default: now), journal times; None when unknown."""
    from datetime import datetime, timezone

    try:
        begin = datetime.fromisoformat(str(start).replace("Z", "+00:00"))
        finish = datetime.fromisoformat(end.replace("Z", "+00:00")) if end else datetime.now(timezone.utc)
    except ValueError:
        return None
    return max(0.0, (finish - begin).total_seconds())


def duration_text(seconds: float | None) -> str:
    """``3.2s``, ``4m12s``, ``1h02m``."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def counts_text(counts: Mapping[str, int]) -> str:
    """``18 completed, 2 failed, 1 pending``: the ends first, then what is still going."""
    order = [s for s in COUNT_ORDER if s in counts] + [s for s in counts if s not in COUNT_ORDER]
    return ", ".join(f"{counts[s]} {s.lower().replace('_', ' ')}" for s in order if counts[s]) or "no jobs"


def echo_lines(lines: Sequence[str]) -> None:
    click.echo("\n".join(lines))
