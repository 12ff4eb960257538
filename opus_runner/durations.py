"""Durations, parsed in one place: ``45s``, ``5m``, ``1h30m``, ``250ms``, or a number of seconds."""

from __future__ import annotations

import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_WHOLE = re.compile(r"^(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+$")

DURATION_HELP = "a duration such as 45s, 5m, 1h30m or a number of seconds"


def parse_duration(value: object) -> float:
    """Seconds in ``value``; ``ValueError`` naming the accepted forms otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"expected {DURATION_HELP}, found {value!r}")
    if isinstance(value, (int, float)):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"expected {DURATION_HELP}, found {value!r}")
        if value < 0:
            raise ValueError(f"expected {DURATION_HELP}, found a negative number {value!r}")
        return float(value)
    if isinstance(value, str):
        text = value.strip().lower()
        try:
            seconds = float(text) if re.fullmatch(r"\d+(?:\.\d+)?", text) else None
        except ValueError:
            seconds = None
        if seconds is not None:
            if seconds < 0:
                raise ValueError(f"expected {DURATION_HELP}, found {value!r}")
            return seconds
        if _WHOLE.match(text):
            return sum(float(n) * _UNITS[unit] for n, unit in _PART.findall(text))
    raise ValueError(f"expected {DURATION_HELP}, found {value!r}")


def format_duration(seconds: float) -> str:
    """``5400`` -> ``1h30m``; ``2.5`` -> ``2.5s``. The inverse of :func:`parse_duration`."""
    if seconds < 60:
        return f"{seconds:g}s"
    whole = int(round(seconds))
    h, rem = divmod(whole, 3600)
    m, s = divmod(rem, 60)
    return "".join(f"{n}{u}" for n, u in ((h, "h"), (m, "m"), (s, "s")) if n)
