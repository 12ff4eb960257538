"""The small pieces every error message is made of: a did-you-mean, a line shortener, and the
sentences for JSON Schema violations.

The shortener masks before it cuts (issue 12): a cut through a registered secret would leave
its start in the message, where the masking that runs later no longer recognises it.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .redact import mask

__all__ = [
    "close_match",
    "did_you_mean",
    "explain_schema_error",
    "extra_keys",
    "one_line",
    "schema_errors",
    "shorten",
    "show_value",
]

#: How close a word must be to a choice to be suggested (difflib's ratio).
CLOSE = 0.6


def close_match(word: str, choices: Iterable[str], *, cutoff: float = CLOSE) -> str | None:
    """The choice ``word`` most likely meant: the same word in another case, else the closest
    one at least ``cutoff`` alike; None when nothing is close."""
    candidates = [str(c) for c in choices]
    lowered = {c.lower(): c for c in candidates}
    if word.lower() in lowered:
        return lowered[word.lower()]
    matches = difflib.get_close_matches(word, candidates, n=1, cutoff=cutoff)
    return matches[0] if matches else None


def did_you_mean(word: str, choices: Iterable[str], *, cutoff: float = CLOSE) -> str:
    """``did you mean 'x'?`` for the closest choice, or ``""`` when none is close."""
    close = close_match(word, choices, cutoff=cutoff)
    return f"did you mean {close!r}?" if close is not None else ""


def shorten(text: str, limit: int, *, ellipsis: str = "…") -> str:
    """``text`` with secrets masked, then cut to at most ``limit`` characters (``ellipsis`` included)."""
    text = mask(text)
    return text if len(text) <= limit else text[: limit - len(ellipsis)] + ellipsis


def one_line(text: Any, limit: int | None = None, *, ellipsis: str = "…") -> str:
    """``text`` on one line (runs of white space made one space), secrets masked, cut to ``limit``."""
    flat = " ".join(mask(str(text)).split())
    return flat if limit is None else shorten(flat, limit, ellipsis=ellipsis)


# -- JSON Schema violations ---------------------------------------------------------------------


def schema_errors(validator: Any, instance: Any) -> list[Any]:
    """Every violation of ``instance``, in key-path order, so messages come out the same each run."""
    return sorted(validator.iter_errors(instance), key=lambda e: [str(p) for p in e.absolute_path])


def extra_keys(instance: Any, schema: Mapping[str, Any]) -> list[str]:
    """The keys of ``instance`` that neither ``properties`` nor ``patternProperties`` of ``schema`` allow."""
    if not isinstance(instance, dict):
        return []
    allowed = schema.get("properties", {})
    patterns = [re.compile(p) for p in schema.get("patternProperties", {})]
    return [k for k in instance if k not in allowed and not any(p.search(str(k)) for p in patterns)]


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


_EXPECTED = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "array": "a list",
    "object": "a mapping",
    "null": "null",
}


def show_value(value: Any, limit: int = 200) -> str:
    """A value as a message shows it: its repr, masked, then cut."""
    return shorten(repr(value), limit)


def explain_schema_error(
    error: Any,
    *,
    show: Callable[[Any], str] = show_value,
    skip: Callable[[Any], bool] = lambda value: False,
) -> list[tuple[tuple[str | int, ...], str]]:
    """Readable ``(key path, sentence)`` pairs for one jsonschema error.

    ``show`` renders a value in a sentence (masked and short); values for which ``skip`` is true
    (templates, say, that are checked once rendered) are not reported. The spec's own schema has
    a richer wording of its own (:mod:`opus_runner.spec`), with hints for its keys.
    """
    path = tuple(error.absolute_path)
    if skip(error.instance):
        return []
    if error.validator == "required" and isinstance(error.instance, dict):
        missing = [k for k in error.validator_value if k not in error.instance]
        return [(path, f"missing required key {k!r}") for k in missing]
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = list(error.schema.get("properties", {}))
        out = []
        for extra in extra_keys(error.instance, error.schema):
            hint = did_you_mean(str(extra), allowed)
            known = f"known keys: {', '.join(sorted(allowed))}" if allowed else "no other keys are allowed"
            out.append(((*path, extra), f"unknown key {extra!r}; " + (hint if hint else known)))
        return out
    if error.validator == "type":
        expected = error.validator_value
        names = [_EXPECTED.get(str(t), str(t)) for t in (expected if isinstance(expected, list) else [expected])]
        return [(path, f"expected {' or '.join(names)}, found {_json_type(error.instance)} {show(error.instance)}")]
    if error.validator == "enum":
        choices = ", ".join(repr(c) for c in error.validator_value)
        return [(path, f"{show(error.instance)} is not one of {choices}")]
    if error.validator in ("pattern", "format") and isinstance(error.schema.get("description"), str):
        return [(path, f"{show(error.instance)} is not valid here: {error.schema['description']}")]
    return [(path, one_line(error.message))]

