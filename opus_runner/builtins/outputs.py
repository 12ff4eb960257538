"""Built-in output types: ``stdout``, ``json``, ``ndjson`` and ``download``.

Each handler is ``handler(result, config, ctx)``: ``result`` is the finished job's
:class:`~opus_runner.models.JobResult` (secrets already masked), ``config`` the spec's entry after
templating. Relative paths resolve against the spec's folder; every file is written atomically
(:mod:`opus_runner.files`), so a crash never leaves half a result behind.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import files, jsontext
from ..hookspecs import Register, hookimpl
from ..models import Context, JobResult
from ..paths import PATH_KEYWORD, resolve_spec_path
from ..redact import mask_obj

# The download output lives in its own module; its names stay importable from here.
from .download import DOWNLOAD_SCHEMA, download_output, file_urls, plan_downloads, safe_file_name

#: Longest value the stdout summary shows before cutting (``full: true`` shows everything).
SUMMARY_LIMIT = 500

_PATH = {"type": "string", "minLength": 1, "description": "File path; relative to the spec's folder.", PATH_KEYWORD: True}

STDOUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"full": {"type": "boolean", "description": "Show long values whole instead of cut."}},
    "additionalProperties": False,
}
JSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "path": _PATH,
        "indent": {"type": ["integer", "null"], "minimum": 0, "description": "JSON indent (default 2)."},
    },
    "required": ["path"],
    "additionalProperties": False,
}
NDJSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"path": _PATH},
    "required": ["path"],
    "additionalProperties": False,
}


def resolve_path(value: str, ctx: Context, key: str = "path") -> Path:
    """``value`` as a path, relative ones against the spec's folder, confined to the project
    root (:func:`opus_runner.paths.resolve_spec_path`); ``key`` names the entry's key in a refusal."""
    return resolve_spec_path(value, ctx, key=key)


def _as_json(result: JobResult, indent: int | None) -> str:
    # mask again: the promise is that no output file ever holds a secret, whoever built result
    return jsontext.dumps(mask_obj(result.as_dict()), indent=indent, ensure_ascii=False, default=str)


# -- stdout -----------------------------------------------------------------------------------


def _show_value(value: Any, full: bool) -> str:
    if isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    if not full and len(text) > SUMMARY_LIMIT:
        cut = len(text) - SUMMARY_LIMIT
        text = f"{text[:SUMMARY_LIMIT]}… ({cut} more characters; set full: true to see all)"
    if "\n" in text:
        return "\n" + "\n".join(f"    {line}" for line in text.splitlines())
    return " " + text


def summary(result: JobResult, *, full: bool = False) -> str:
    """The text the ``stdout`` output prints for one finished job."""
    from ..progress import printable

    masked: dict[str, Any] = mask_obj(result.as_dict())
    # Plan keys start with the spec name ("region-matrix[region=eu]"), so they say it all.
    head = printable(masked["plan_key"] or masked["spec_name"] or "job")
    # What the server sent is shown on the lines laid out here (multi-line values indented),
    # never as terminal controls.
    lines = [f"{head}: job {printable(masked['job_id'])} {printable(masked['status'])}"]
    if masked["url"]:
        lines.append(f"  url: {printable(masked['url'])}")
    if masked["error"]:
        lines.append(f"  error:{_show_value(masked['error'], full)}")
    outputs = masked["outputs"] or {}
    if outputs:
        lines.append("  outputs:")
        for name, value in outputs.items():
            lines.append(f"  - {printable(name)}:{_show_value(value, full)}")
    elif result.ok:
        lines.append("  (no outputs)")
    return printable("\n".join(lines), newlines=True)


def stdout_output(result: JobResult, config: dict[str, Any], ctx: Context) -> None:
    """Print a readable summary (``--quiet`` too: results are what it keeps); nothing under
    ``--format json``, whose events carry it."""
    if ctx.output_format == "json":
        return
    import sys

    # One write per job, so concurrent jobs' summaries do not mix line by line. sys.stdout (not
    # click.echo, which writes to the underlying buffer) so a live terminal display that has
    # redirected stdout can print the summary above itself.
    sys.stdout.write(summary(result, full=bool(config.get("full", False))) + "\n")
    sys.stdout.flush()


# -- json / ndjson ----------------------------------------------------------------------------


def json_output(result: JobResult, config: dict[str, Any], ctx: Context) -> Path:
    """Write the result as one JSON file, atomically; return its path."""
    indent = config.get("indent", 2)
    path = resolve_path(config["path"], ctx)
    files.atomic_write_text(path, _as_json(result, indent) + "\n")
    return path


def ndjson_output(result: JobResult, config: dict[str, Any], ctx: Context) -> Path | None:
    """Append the result as one JSON line; concurrent jobs never interleave. Return the path
    (None for a result that is not final: the runner gave up waiting, and resume appends the
    job's real outcome later, so the file holds each job once).

    On redelivery (``ctx.redelivery``: a resume after a crash that may have come after the
    write) the line is appended only if the file holds no line for this job, plan key and
    status yet, so a job appears once per outcome whatever was interrupted.
    """
    if not result.final:
        return None
    path = resolve_path(config["path"], ctx)
    line = _as_json(result, None)
    if ctx.redelivery:
        files.append_line_once(path, line, _same_delivery(result))
    else:
        files.append_line(path, line)
    return path


def _same_delivery(result: JobResult) -> Callable[[bytes], bool]:
    wanted = (result.job_id, result.plan_key, result.status)

    def seen(line: bytes) -> bool:
        try:
            old = json.loads(line)
        except ValueError:
            return False  # a line of someone else's: not ours
        return isinstance(old, dict) and (old.get("job_id"), old.get("plan_key"), old.get("status")) == wanted

    return seen


_OUTPUTS: tuple[tuple[str, Callable[..., Any], dict[str, Any]], ...] = (
    ("stdout", stdout_output, STDOUT_SCHEMA),
    ("json", json_output, JSON_SCHEMA),
    ("ndjson", ndjson_output, NDJSON_SCHEMA),
    ("download", download_output, DOWNLOAD_SCHEMA),
)


@hookimpl
def opus_register_outputs(register: Register) -> None:
    """Register the built-in output types."""
    for name, handler, schema in _OUTPUTS:
        register(name, handler, schema=schema)
