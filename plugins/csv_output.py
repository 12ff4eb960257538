"""CSV output for opus-runner: one row per finished job, appended to a spreadsheet-ready file.

Put this file in your project's ``plugins/`` folder and add to a spec::

    outputs:
      - type: csv
        path: results/invoices.csv          # relative to the spec's folder
        columns: [plan_key, status, total]  # optional

Without ``columns`` a new file gets ``plan_key, job_id, status, finished_at`` followed by the
job's output names; an existing file keeps the columns of its header, so every row lines up.
Columns may name any result field (``job_id``, ``status``, ``spec_name``, ``title``, ``url``,
``started_at``, ``finished_at``, ``error``, ``plan_key``) or an output variable; lists and
mappings are written as JSON.

Cells are safe to open in a spreadsheet (CSV injection, OWASP): a text cell, or a column name,
that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return gets a leading ``'``,
so ``=HYPERLINK(...)`` from a workflow shows as text instead of running as a formula. Numbers
the workflow returned as JSON numbers are written as they are (``-3.5`` stays a number: a
number is never a formula); the same characters as a *string* (``"-3.5"``, ``"+44 20 ..."``) get
the quote too, since the file cannot tell them from a formula that starts the same way.

A job the runner stopped waiting for (``result.final`` is False: ``wait.timeout`` passed while
it may still run) gets no row; ``opus-run resume`` writes its real outcome later, so the file
holds each job once. On redelivery (``ctx.redelivery``: a resume after a crash) a row already in
the file for the same job and status is not written again.

Many jobs of one batch append to the same file at once. The header is written exactly once
and rows never mix, because each append holds an exclusive lock on the file while it looks at
the header and writes its row in one write (``opus_runner.files.locked_append``).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from opus_runner import hookimpl
from opus_runner.files import locked_append
from opus_runner.hookspecs import Register
from opus_runner.models import Context, JobResult
from opus_runner.paths import PATH_KEYWORD, resolve_spec_path
from opus_runner.redact import mask_obj

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "path": {"type": "string", "minLength": 1, "description": "CSV file; relative to the spec's folder.", PATH_KEYWORD: True},
        "columns": {
            "type": "array",
            "items": {"type": "string", "minLength": 1},
            "minItems": 1,
            "description": "Columns in order: result fields or output names.",
        },
    },
    "required": ["path"],
    "additionalProperties": False,
}

RESULT_COLUMNS = ("plan_key", "job_id", "status", "finished_at")
_FIELDS = {"job_id", "status", "spec_name", "plan_key", "title", "url", "started_at", "finished_at", "error"}


#: What a spreadsheet reads as the start of a formula (OWASP's list for CSV injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _text_cell(text: str) -> str:
    return "'" + text if text.startswith(_FORMULA_START) else text


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return _text_cell(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return json.dumps(value)  # a number, negative ones included, never a formula
    return _text_cell(json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str))


def _column_name(cell: str) -> str:
    """A header cell read back: the column it names, without the quote :func:`_text_cell` added."""
    return cell[1:] if cell.startswith("'") and cell[1:].startswith(_FORMULA_START) else cell


def _encode(row: list[str]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerow(row)
    return buffer.getvalue().encode("utf-8")


def row_for(result: JobResult, columns: list[str]) -> list[str]:
    """The cells of ``result`` for ``columns`` (result fields first, then outputs)."""
    data = mask_obj(result.as_dict())  # no secret reaches a file, whoever built the result
    outputs = data.get("outputs") or {}
    return [_cell(data.get(c) if c in _FIELDS else outputs.get(c)) for c in columns]


def csv_output(result: JobResult, config: dict[str, Any], ctx: Context) -> Path | None:
    """Append ``result`` as one row to ``config["path"]``, writing the header first if the file is new."""
    if not result.final:
        return None
    path = resolve_spec_path(config["path"], ctx)  # relative to the spec, confined to the project
    wanted = list(config.get("columns") or [])
    with locked_append(path) as handle:
        if handle.size == 0:
            columns = wanted or [*RESULT_COLUMNS, *(str(k) for k in result.outputs)]
            handle.write(_encode([_text_cell(c) for c in columns]) + _encode(row_for(result, columns)))
            return path
        header = [_column_name(c) for c in next(csv.reader([handle.first_line().decode("utf-8-sig")]), [])]
        if wanted and wanted != header:
            raise ValueError(
                f"{path} already has the columns {', '.join(header)}, not {', '.join(wanted)}; "
                "write to a new file or make `columns` match"
            )
        row = row_for(result, header)
        if ctx.redelivery and _already_there(path, header, row):
            return path  # a resume after a crash that came after this row was written
        handle.write(_encode(row))
    return path


def _already_there(path: Path, header: list[str], row: list[str]) -> bool:
    """Whether the file holds this job's row for this outcome (by job_id and status, when the
    file has those columns; else the identical row)."""
    keys = [header.index(c) for c in ("job_id", "status", "plan_key") if c in header]
    with path.open(newline="", encoding="utf-8-sig") as handle:
        for old in csv.reader(handle):
            if keys and all(i < len(old) and old[i] == row[i] for i in keys) or old == row:
                return True
    return False


@hookimpl
def opus_register_outputs(register: Register) -> None:
    register("csv", csv_output, schema=SCHEMA)
