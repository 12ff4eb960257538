"""Built-in output types: ``stdout``, ``json``, ``ndjson`` and ``download``.

Each handler is ``handler(result, config, ctx)``: ``result`` is the finished job's
:class:`~opus_runner.models.JobResult` (secrets already masked), ``config`` the spec's entry after
templating. Relative paths resolve against the spec's folder; every file is written atomically
(:mod:`opus_runner.files`), so a crash never leaves half a result behind.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from .. import files, jsontext
from ..hookspecs import Register, hookimpl
from ..models import Context, JobResult
from ..errors import ApiError, NotFoundError
from ..redact import mask_obj
from ..results import parse_results
from . import display_url, http_client, request_without_key

#: Longest value the stdout summary shows before cutting (``full: true`` shows everything).
SUMMARY_LIMIT = 500

_PATH = {"type": "string", "minLength": 1, "description": "File path; relative to the spec's folder."}

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
DOWNLOAD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "dir": {"type": "string", "minLength": 1, "description": "Folder for the files; relative to the spec."},
        "outputs": {
            "type": "array",
            "items": {"type": "string"},
            "description": "Only these outputs (variable or display names); default: every file output.",
        },
    },
    "required": ["dir"],
    "additionalProperties": False,
}


def resolve_path(value: str, ctx: Context) -> Path:
    """``value`` as a path, relative ones against the spec's folder."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else Path(ctx.spec_dir) / path


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
    """Print a readable summary; nothing under ``--format json`` (events carry it) or ``--quiet``."""
    if ctx.output_format == "json" or ctx.quiet:
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


# -- download ---------------------------------------------------------------------------------

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_NAME = 150


def _file_outputs(result: JobResult) -> list[tuple[str, str | None, list[str]]]:
    """``(variable name, display name, urls)`` of each file-typed output, in every results shape
    (:mod:`opus_runner.results`): typed ``file``/``array_files`` entries and the older
    ``outputFiles`` list."""
    return [(f.name, f.display_name, list(f.urls)) for f in parse_results(result.raw or {}).files]


def file_urls(result: JobResult, only: list[str] | None = None) -> list[tuple[str, str]]:
    """``(output name, url)`` for every file-typed output of ``result``.

    ``only`` keeps the outputs whose variable or display name it lists (``outputFiles`` names
    the legacy list).
    """
    return [
        (name, url)
        for name, display, urls in _file_outputs(result)
        if only is None or name in only or display in only
        for url in urls
    ]


def safe_file_name(url: str, fallback: str = "download") -> str:
    """A file name from the URL's last path segment that cannot leave its folder.

    Percent-escapes are decoded first, then only letters, digits, ``.``, ``_`` and ``-`` are
    kept; leading dots go, so neither ``..`` nor hidden files can come out.
    """
    segment = unquote(urlsplit(url).path).replace("\\", "/").rsplit("/", 1)[-1]
    name = _UNSAFE.sub("_", segment).lstrip("._-")
    if len(name) > _MAX_NAME:
        stem, dot, ext = name.rpartition(".")
        name = (stem[: _MAX_NAME - len(ext) - 1] + dot + ext) if dot and len(ext) <= 10 else name[:_MAX_NAME]
    return name or fallback


def _unique(name: str, taken: set[str]) -> str:
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        stem, ext = name, ""
    candidate, n = name, 1
    while candidate.lower() in taken:
        n += 1
        candidate = f"{stem}-{n}.{ext}" if ext else f"{stem}-{n}"
    taken.add(candidate.lower())
    return candidate


def plan_downloads(urls: list[tuple[str, str]], folder: Path) -> Iterator[tuple[str, Path]]:
    """Pair each URL with a distinct, safe path inside ``folder``."""
    taken: set[str] = set()
    root = folder.resolve()
    for output_name, url in urls:
        target = root / _unique(safe_file_name(url, fallback=output_name), taken)
        if target.parent != root:  # cannot happen with safe names; refuse rather than trust
            raise ValueError(f"refusing to write {target} outside {root}")
        yield url, target


def _check_names(result: JobResult, names: list[str]) -> None:
    """A name in ``outputs:`` that matches no file output is a typo, not "nothing to do"."""
    known = {n for name, display, _ in _file_outputs(result) for n in (name, display) if n}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(
            f"download: job {result.job_id} has no file output named {', '.join(map(repr, unknown))}; "
            f"its file outputs are: {', '.join(sorted(known)) or 'none'}"
        )


async def _presigned_for(ctx: Context, url: str) -> str:
    """Where to GET the bytes of output file ``url``.

    Output files are references that live clients could not fetch directly (opus-api.md section
    4): ``POST /job/file/download`` turns one into a presigned URL. Only a URL the API does not
    know as a file (404, 400), or a run without a client, is fetched as it is.
    """
    client = getattr(ctx, "client", None)
    if client is None:
        return url
    try:
        answer = await client.file_download_url(url)
    except NotFoundError:
        return url
    except ApiError as exc:
        if exc.status_code == 400:
            return url
        raise
    return str(answer["presignedUrl"])


async def _download(http: Any, url: str, target: Path) -> None:
    request = request_without_key(http, "GET", url)
    response = await http.send(request, stream=True, follow_redirects=True, auth=None)
    try:
        if not response.is_success:
            raise RuntimeError(f"{display_url(url)} answered HTTP {response.status_code}")
        writer = await asyncio.to_thread(files.AtomicFile, target)
        try:
            async for chunk in response.aiter_bytes(1 << 16):
                await asyncio.to_thread(writer.write, chunk)
            await asyncio.to_thread(writer.commit)
        except BaseException:
            writer.abort()
            raise
    finally:
        await response.aclose()


async def download_output(result: JobResult, config: dict[str, Any], ctx: Context) -> list[Path]:
    """Download every file-typed output into ``config["dir"]``; return the written paths.

    Each file reference is exchanged for a presigned URL (``POST /job/file/download``, with the
    key), then fetched without the key. Each file is streamed to a temporary file and renamed
    into place, so a failed download leaves nothing half-written; a failure names the output
    and the file.
    """
    only = config.get("outputs")
    if only is not None and result.ok:
        _check_names(result, list(only))
    folder = resolve_path(config["dir"], ctx)
    names = {url: name for name, url in file_urls(result, only)}
    planned = list(plan_downloads(file_urls(result, only), folder))
    written: list[Path] = []
    async with http_client(ctx) as http:
        for url, target in planned:
            try:
                await _download(http, await _presigned_for(ctx, url), target)
            except Exception as exc:  # noqa: BLE001 - named with the file, then raised as one sentence
                reason = str(exc) if isinstance(exc, (ApiError, RuntimeError)) else f"{type(exc).__name__}: {exc}"
                raise RuntimeError(
                    f"could not download output {names.get(url, '?')!r} ({target.name}) of job "
                    f"{result.job_id}: {reason}"
                ) from None
            written.append(target)
    if written:
        ctx.log.info("downloaded %d file(s) of job %s into %s", len(written), result.job_id, folder)
    return written


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
