"""A job's results, from whichever shape the API served them in, to one :class:`ResultsData`.

Pure and cheap to import (outputs and the journal use it without httpx). The shapes accepted
(opus-api.md section 6):

- current: ``{"jobResultsPayloadSchema": {OUT: {"value", "type", "displayName"}}}``;
- older: ``{"jobExecutionId", "status", "results": {"summary", "outputFiles", "data"}}``;
- nested: ``{"results": {"jobResultsPayloadSchema": {...}}}``;
- flat: ``{"results": {OUT: {"value": ...}}}`` (v1 cases answer this too);
- a list: ``[{OUT: value}, ...]``.

Every shape ends as ``outputs`` (output name to value). A ``json_string`` output is JSON text
on the wire: ``outputs`` holds it decoded, ``raw`` keeps the text. File outputs (typed ``file``
or ``array_files``, and the older ``outputFiles`` list) are listed in ``files``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import jsontext, redact
from .models import FILE_TYPES

__all__ = ["FileOutput", "ResultsData", "parse_results"]

_LEGACY_KEYS = ("summary", "outputFiles", "data")


@dataclass(frozen=True)
class FileOutput:
    """One file-typed output: its name, display name (when given) and the file references."""

    name: str
    display_name: str | None
    urls: tuple[str, ...]


@dataclass
class ResultsData:
    """A job's results: ``outputs`` maps output variable to value, whichever shape was served.

    ``recognised`` is False when the body held nothing that reads as outputs (an answer the
    runner should warn about rather than report as an empty success); ``shape`` names the shape
    it was read as.
    """

    outputs: dict[str, Any]
    raw: Any
    error: str | None = None
    files: list[FileOutput] = field(default_factory=list)
    types: dict[str, str] = field(default_factory=dict)
    recognised: bool = True
    shape: str = "current"


def _message(value: Any) -> str | None:
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, Mapping):
        for key in ("message", "error", "detail"):
            text = _message(value.get(key))
            if text:
                return text
        return json.dumps(value, default=str, sort_keys=True)
    if isinstance(value, list) and value:
        return "; ".join(filter(None, (_message(v) for v in value))) or None
    return None


def _http_urls(value: Any) -> tuple[str, ...]:
    values = value if isinstance(value, list) else [value]
    return tuple(v for v in values if isinstance(v, str) and v.startswith(("https://", "http://")))


def _decode_json_text(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return jsontext.loads(value)
    except (ValueError, RecursionError):
        return value  # not JSON after all (or too deep to read): kept as the text it is


def _typed_entries(schema: Mapping[str, Any], out: ResultsData) -> None:
    """Read ``{OUT: {value, type, displayName}}`` (or bare values) into ``out``."""
    for name, entry in schema.items():
        key = str(name)
        if not (isinstance(entry, Mapping) and "value" in entry):
            out.outputs[key] = entry
            continue
        value = entry["value"]
        kind = entry.get("type")
        kind = str(kind.get("type") if isinstance(kind, Mapping) else kind or "").strip().lower()
        if kind:
            out.types[key] = kind
        display = entry.get("displayName", entry.get("display_name"))
        if kind == "json_string":
            value = _decode_json_text(value)
        elif kind in FILE_TYPES:
            out.files.append(FileOutput(key, display if isinstance(display, str) else None, _http_urls(value)))
        out.outputs[key] = value


def _legacy(results: Mapping[str, Any], out: ResultsData) -> None:
    if "summary" in results:
        out.outputs["summary"] = results["summary"]
    if "outputFiles" in results:
        out.outputs["outputFiles"] = results["outputFiles"]
        out.files.append(FileOutput("outputFiles", None, _http_urls(results["outputFiles"])))
    data = results.get("data")
    if isinstance(data, Mapping):
        out.outputs.update({str(k): v for k, v in data.items()})


def _listed(items: list[Any], out: ResultsData) -> None:
    """``[{OUT: value}, ...]``: every mapping's outputs, merged in order."""
    out.shape = "list"
    for item in items:
        if isinstance(item, Mapping):
            _typed_entries(item, out)
    out.recognised = bool(out.outputs)


def _is_legacy(results: Mapping[str, Any]) -> bool:
    # The older shape's own keys, not outputs that happen to be called "data".
    present = [k for k in _LEGACY_KEYS if k in results]
    return bool(present) and not any(
        isinstance(results[k], Mapping) and "value" in results[k] for k in present
    )


def parse_results(body: Any) -> ResultsData:
    """Normalise a results body of any shape in the module docstring into :class:`ResultsData`."""
    out = ResultsData(outputs={}, raw=body)
    if isinstance(body, list):
        _listed(body, out)
        return out
    if not isinstance(body, Mapping):
        out.recognised = False
        out.shape = "unknown"
        return out
    error = _message(body.get("error")) or _message(body.get("errorMessage"))
    current = body.get("jobResultsPayloadSchema")
    results = body.get("results")
    if isinstance(current, Mapping):
        _typed_entries(current, out)
        # An empty mapping is still the documented shape: a workflow may end with no outputs.
        out.recognised = bool(current) or error is not None
    elif isinstance(results, Mapping):
        nested = results.get("jobResultsPayloadSchema")
        if isinstance(nested, Mapping):
            out.shape = "nested"
            _typed_entries(nested, out)
        elif _is_legacy(results):
            out.shape = "older"
            _legacy(results, out)
        else:
            out.shape = "flat"
            _typed_entries(results, out)
        error = error or _message(results.get("error"))
        out.recognised = bool(out.outputs) or error is not None
    elif isinstance(results, list):
        _listed(results, out)
    else:
        out.shape = "unknown"
        out.recognised = error is not None
    out.error = redact.mask(error) if error else None
    return out
