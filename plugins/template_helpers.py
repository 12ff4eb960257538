"""Template helpers for opus-runner specs: a few filters and globals that monthly jobs keep needing.

Put this file in your project's ``plugins/`` folder; then in any spec string::

    metadata:
      title: "Invoices {{ vars.customer | slugify }} {{ today() | previous_month }}"
    inputs:
      Period start: "{{ today() | previous_month | month_start }}"   # 2026-10-01 in November 2026
      Period end: "{{ today() | previous_month | month_end }}"       # 2026-10-31
      Region: "{{ env_or('OPUS_REGION', 'eu') }}"

Filters: ``slugify``, ``month_start``, ``month_end``, ``previous_month``, ``add_days``.
Globals: ``env_or(name, default)``. Dates go in as ``date``/``datetime`` objects, ``YYYY-MM-DD``
or ``YYYY-MM`` strings; ``month_start``, ``month_end`` and ``add_days`` give ``datetime.date``
values, which render as ``YYYY-MM-DD`` and are accepted by ``date`` inputs as they are.

It doubles as an example of the two template hooks; both are plain functions returning dicts.
"""

from __future__ import annotations

import calendar
import datetime as dt
import os
import re
import unicodedata
from typing import Any

from opus_runner import hookimpl
from opus_runner.models import Context


def to_date(value: Any) -> dt.date:
    """A ``date`` from a date, a datetime, ``YYYY-MM-DD`` (or an ISO datetime) or ``YYYY-MM``."""
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"\d{4}-\d{2}", text):
            text += "-01"
        try:
            return dt.date.fromisoformat(text[:10])
        except ValueError:
            pass
    raise ValueError(f"expected a date, 'YYYY-MM-DD' or 'YYYY-MM', found {value!r}")


def slugify(value: Any, separator: str = "-") -> str:
    """``"Café Müller & Co."`` -> ``"cafe-muller-co"``: ASCII letters and digits joined by ``separator``."""
    text = unicodedata.normalize("NFKD", str(value)).encode("ascii", "ignore").decode("ascii")
    return separator.join(re.findall(r"[a-z0-9]+", text.lower()))


def month_start(value: Any) -> dt.date:
    """The first day of the month of ``value``."""
    return to_date(value).replace(day=1)


def month_end(value: Any) -> dt.date:
    """The last day of the month of ``value``."""
    day = to_date(value)
    return day.replace(day=calendar.monthrange(day.year, day.month)[1])


def previous_month(value: Any) -> str:
    """The month before ``value`` as ``YYYY-MM``."""
    last = month_start(value) - dt.timedelta(days=1)
    return f"{last.year:04d}-{last.month:02d}"


def add_days(value: Any, days: int) -> dt.date:
    """``value`` moved by ``days`` (negative goes back)."""
    return to_date(value) + dt.timedelta(days=int(days))


def env_or(name: str, default: Any = "") -> Any:
    """The environment variable ``name``, or ``default`` when it is unset or empty.

    Not for secrets: use ``secret('NAME')``, which keeps the value out of logs and files.
    """
    return os.environ.get(name) or default


FILTERS = {
    "slugify": slugify,
    "month_start": month_start,
    "month_end": month_end,
    "previous_month": previous_month,
    "add_days": add_days,
}
GLOBALS = {"env_or": env_or}


@hookimpl
def opus_template_filters(ctx: Context | None) -> dict[str, Any]:
    return dict(FILTERS)


@hookimpl
def opus_template_globals(ctx: Context | None) -> dict[str, Any]:
    return dict(GLOBALS)
