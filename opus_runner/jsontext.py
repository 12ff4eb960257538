"""JSON text the runner reads and writes is always valid JSON: no ``NaN`` or ``Infinity``.

Python's json reads and writes the bare literals ``NaN``, ``Infinity`` and ``-Infinity``,
which no JSON parser outside Python accepts. The one rule (docs/spec.md, "Values from the
server"): a non-finite number becomes ``null``, when an answer is parsed and again when the
runner writes JSON (a plugin may put ``float("nan")`` into a result).
"""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["dumps", "finite", "loads"]


def _null(_literal: str) -> None:
    return None


def loads(text: str | bytes) -> Any:
    """``json.loads`` that reads ``NaN``, ``Infinity`` and ``-Infinity`` as None."""
    return json.loads(text, parse_constant=_null)


def finite(value: Any) -> Any:
    """``value`` with every non-finite float (in dicts, lists and tuples) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def dumps(value: Any, **options: Any) -> str:
    """``json.dumps`` that never writes ``NaN`` or ``Infinity``: they are written as null."""
    try:
        return json.dumps(value, allow_nan=False, **options)
    except ValueError:
        # Rare, so the common case pays no walk; a circular reference raises again here.
        return json.dumps(finite(value), allow_nan=False, **options)
