"""How a run shows what is happening: JSON event lines, plain log lines, or a live terminal display.

stdout belongs to results (the ``stdout`` output) and, with ``--format json``, to the event
stream: one JSON object per line, nothing else (``--format github`` adds GitHub Actions
annotations there, which the runner of a workflow reads from stdout). Human progress goes to
stderr: one line per finished job while the batch runs, then a pytest-style summary, the
failures with their reasons last and one totals line below them.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import re
import sys
import textwrap
import time
from collections import Counter
from typing import IO, Any

from . import jsontext, redact
from .models import CANCELLED_STATUSES, TERMINAL_STATUSES, JobEvent

_TERMINAL_KINDS = {"completed", "failed", "cancelled", "timed_out"}


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


#: C1 controls: json.dumps leaves them raw (it escapes only C0), and some terminals act on them.
_C1 = re.compile("[\x7f-\x9f]")


def dumps(obj: Any) -> str:
    # Masked as data, not as the JSON text: a secret such as "null" or "true" must not turn a
    # JSON literal into ***, which would break the event line.
    text = jsontext.dumps(redact.mask_obj(obj), ensure_ascii=False, default=_masked_text, separators=(",", ":"))
    # Only inside strings, so the escape keeps the JSON valid and the data the same.
    return _C1.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _masked_text(value: Any) -> str:
    return redact.mask(str(value))


#: Terminal control sequences (ECMA-48): CSI (``ESC [`` or 8-bit ``\x9b``) with its parameters;
#: OSC, DCS, SOS, PM and APC strings up to their terminator (they set window titles, write to
#: the clipboard...); any other escape with its intermediate bytes.
_ESCAPE_SEQUENCE = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]"
    r"|(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f]).*?(?:\x07|\x1b\\|\x9c)"
    r"|\x1b[ -/]*[0-~]",
    re.DOTALL,
)
#: What is left that a terminal would act on: C0 and C1 controls, DEL, and the bidirectional
#: overrides that make text display in another order than it reads.
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_CONTROL_KEEP_NEWLINES = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def printable(text: Any, *, newlines: bool = False) -> str:
    """``text`` fit for a terminal: escape sequences removed, other control characters shown
    escaped (``\\x07``), tabs kept; newlines kept only with ``newlines`` (for text the caller
    lays out on several lines), else shown as ``\\n`` so a value cannot forge a line of its own.

    Every text printer passes server-supplied text through this; ``--format json`` does not
    (JSON escapes control characters itself, and keeps the data exact).
    """
    text = _ESCAPE_SEQUENCE.sub("", str(text))
    control = _CONTROL_KEEP_NEWLINES if newlines else _CONTROL
    return control.sub(lambda m: repr(m.group())[1:-1], text)


class PrintableFilter(logging.Filter):
    """A logging filter that makes every record's message :func:`printable` (lines kept)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = printable(message, newlines=True)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


class Reporter:
    """Receives the run's events and messages. The base class shows nothing (retries it logs)."""

    #: True when the display wants node progress (the runner then polls audits too)
    wants_progress = False
    #: True when ``rendered`` shows payloads as they are built (the report then keeps none)
    streams_payloads = False

    def start(self, total: int) -> None:
        """The batch is validated and ``total`` jobs are about to be submitted."""

    def event(self, event: JobEvent) -> None:
        """A job event (submitted, status, completed, failed, cancelled, timed_out)."""

    def shows(self, kind: str) -> bool:
        """Whether :meth:`event` shows events of ``kind``: when nothing else listens either,
        the runner does not build the event at all. A subclass that overrides :meth:`event`
        (docs/library.md) hears every kind unless it overrides this too."""
        return type(self).event is not Reporter.event

    def began(self, seconds_ago: float) -> None:
        """The work summarised began ``seconds_ago`` (a run on an engine, which this process
        only looks at): the totals line counts from then, not from this process's start."""
        self._started = time.monotonic() - seconds_ago

    def progress(self, plan_key: str, job_id: str, status: str, node: str | None, done: int, total: int) -> None:
        """Node progress of one running job (only when ``wants_progress``)."""

    def finished(self, row: dict[str, Any]) -> None:
        """One job is over, its results delivered (``row`` as in :meth:`summary`)."""

    def job_error(self, text: str) -> None:
        """Why a job ended badly, when no terminal event says it (an API error, a failed
        output), its plan key in ``text``. An error message by default; the text reporters
        leave it to the summary's failures, so a failure is printed once."""
        self.message(text, level="error")

    def retrying(self, notice: Any) -> None:
        """The client is about to retry a call (an :class:`~opus_runner.api.RetryNotice`)."""
        # As the client logs a retry when no one listens: what library callers' logs have read.
        logging.getLogger("opus_runner.http").info(
            redact.mask(f"{notice.call}: {notice.reason}; retrying in {notice.delay:.1f} s (attempt {notice.attempt} of {notice.attempts})")
        )

    def message(self, text: str, *, level: str = "info", data: dict[str, Any] | None = None) -> None:
        """A note for humans (skipped checks, resume hints) or, in JSON mode, an event line."""

    def rendered(self, outcome: Any, *, header: str | None = None) -> None:
        """The payload one job would send (``render``, ``--dry-run``), secrets masked."""

    def summary(self, rows: list[dict[str, Any]]) -> None:
        """The end of the run: one row per job (plan_key, job_id, status, duration, delivered,
        error, spec)."""

    def close(self) -> None:
        """Tear down any live display."""


class JsonReporter(Reporter):
    """One JSON object per line on stdout, for CI (documented in docs/events.md)."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stdout
        self._flush_soon = False
        self._started = time.monotonic()

    def _emit(self, data: dict[str, Any]) -> None:
        self.stream.write(dumps(data) + "\n")
        if self._flush_soon:
            return
        # Inside the run's event loop, every line written in one turn of the loop goes out in
        # one flush at the end of that turn: a reader of the pipe sees each line as soon as the
        # loop has a moment, and a crash can only take lines of the turn it happened in (an
        # exit, Ctrl-C included, flushes stdout anyway). Outside a loop: at once.
        asyncio = sys.modules.get("asyncio")  # never imported just for this
        try:
            loop = asyncio.get_running_loop() if asyncio is not None else None
        except RuntimeError:
            loop = None
        if loop is None:
            self.stream.flush()
            return
        self._flush_soon = True
        loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_soon = False
        try:
            self.stream.flush()
        except (OSError, ValueError):
            pass  # the reader went away or the stream was closed: nothing left to tell

    def shows(self, kind: str) -> bool:
        return True

    def start(self, total: int) -> None:
        self._started = time.monotonic()
        self._emit({"event": "batch", "time": now_iso(), "jobs": total})

    def event(self, event: JobEvent) -> None:
        self._emit(event.as_dict())

    def retrying(self, notice: Any) -> None:
        self._emit({"event": "retry", "time": now_iso(), **notice.as_dict()})

    def message(self, text: str, *, level: str = "info", data: dict[str, Any] | None = None) -> None:
        self._emit({"event": "message", "time": now_iso(), "level": level, "message": text, **(data or {})})

    streams_payloads = True

    def rendered(self, outcome: Any, *, header: str | None = None) -> None:
        self._emit({"event": "rendered", "plan_key": outcome.plan_key, "spec": outcome.spec_path, "payload": outcome.payload})

    def summary(self, rows: list[dict[str, Any]]) -> None:
        counts = Counter(r.get("status") or "NOT_SUBMITTED" for r in rows)
        elapsed = round(time.monotonic() - self._started, 3)
        self._emit({"event": "summary", "time": now_iso(), "jobs": len(rows), "statuses": dict(counts), "elapsed": elapsed})
        self._flush()

    def close(self) -> None:
        self._flush()


class PlainReporter(Reporter):
    """Plain lines on stderr: for logs, cron mails, CI consoles and terminals without rich.

    While the batch runs: one line per finished job (``[17/200] name  COMPLETED  3.2s``) and
    one per retry. At the end: the per-job table (``verbose`` only), the failures with their
    reasons, then the totals line. ``quiet`` keeps the failures and the totals line only.
    """

    def __init__(
        self, stream: IO[str] | None = None, *, quiet: bool = False, verbose: bool = False, width: int | None = None
    ) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.verbose = verbose
        #: columns a line may take (None: any); lines are cut to it, so none wraps
        self.width = width if width is not None else terminal_width(self.stream)
        self._started = time.monotonic()
        self.total = 0
        self.done = 0

    def _line(self, text: str) -> None:
        self.stream.write(printable(redact.mask(text), newlines=True) + "\n")
        self.stream.flush()

    def start(self, total: int) -> None:
        self._started = time.monotonic()
        self.total, self.done = total, 0
        if not self.quiet and total != 1:
            self._line(f"submitting {total} jobs")

    def shows(self, kind: str) -> bool:
        # Finished jobs are told by finished(); events show only with --verbose, and a lone
        # job's submission (its id is what `opus-run status` takes).
        if self.quiet:
            return False
        return self.verbose or (kind == "submitted" and self.total == 1)

    def event(self, event: JobEvent) -> None:
        if self.shows(event.kind):
            self._line(fit(_event_line(event), self.width))

    def finished(self, row: dict[str, Any]) -> None:
        self.done += 1
        if self._says_finished(row):
            self._line(self._finished_line(row))

    def _says_finished(self, row: dict[str, Any]) -> bool:
        """Whether a finished job gets a line: not under --quiet, not for a lone job (the
        summary's line says it all), and not when the stdout output has just printed its
        result, headed by its name, on this same terminal: one line per job, never two."""
        if self.quiet or self.total == 1:
            return False
        return not (row.get("stdout") and _same_terminal(self.stream))

    def _finished_line(self, row: dict[str, Any]) -> str:
        digits = len(str(self.total))
        prefix = f"[{self.done:>{digits}}/{self.total}] " if self.total else ""
        tail = f"  {outcome_label(row)}  {_seconds(row.get('duration'))}"
        name = printable(row.get("plan_key") or "")
        if self.width is not None:  # the name gives way first: the status is what the line is for
            name = fit(name, max(4, self.width - len(prefix) - len(tail)))
        return fit(prefix + name + tail, self.width)

    def job_error(self, text: str) -> None:
        pass  # in the summary's failures, with the job's other reasons

    def retrying(self, notice: Any) -> None:
        if not self.quiet:
            self._line(fit(notice.text(), self.width))

    def message(self, text: str, *, level: str = "info", data: dict[str, Any] | None = None) -> None:
        if self.quiet and level == "info":
            return
        prefix = {"warning": "warning: ", "error": "error: "}.get(level, "")
        self._line(prefix + text)

    streams_payloads = True

    def rendered(self, outcome: Any, *, header: str | None = None) -> None:
        # Payloads are the command's output: stdout, like results.
        title = f"# {printable(outcome.plan_key)}" + (f" ({header})" if header else "")
        body = json.dumps(outcome.payload, indent=2, ensure_ascii=False, default=str)
        sys.stdout.write(printable(redact.mask(f"{title}\n{body}\n"), newlines=True))
        sys.stdout.flush()

    def summary(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        text = format_summary(rows, time.monotonic() - self._started, verbose=self.verbose, width=self.width)
        self._line(text.lstrip("\n") if self.quiet else text)  # quiet: no jobs' lines to set it apart from


class GithubReporter(PlainReporter):
    """``--format github``: text on stderr as :class:`PlainReporter`, and the job failures (and
    the problems of jobs ``--keep-going`` skipped) as GitHub Actions annotations on stdout."""

    def message(self, text: str, *, level: str = "info", data: dict[str, Any] | None = None) -> None:
        super().message(text, level=level, data=data)
        if data and data.get("file") and level in ("warning", "error"):
            annotate(level, str(data.get("problem") or text), file=data.get("file"), line=data.get("line"))

    def summary(self, rows: list[dict[str, Any]]) -> None:
        super().summary(rows)
        for row in rows:
            if _is_failure(row):
                title = f"{row.get('plan_key') or 'job'} {outcome_label(row)}"
                annotate("error", str(row.get("error") or title), file=row.get("spec"), title=title)


class RichReporter(PlainReporter):
    """A live display on a terminal: counts, elapsed time and ETA; node n of m for one job.
    Finished jobs, retries and messages scroll above it as plain lines."""

    wants_progress = True

    def __init__(
        self, stream: IO[str] | None = None, *, quiet: bool = False, verbose: bool = False, width: int | None = None
    ) -> None:
        super().__init__(stream, quiet=quiet, verbose=verbose, width=width)
        from rich.console import Console
        from rich.live import Live

        self.console = Console(file=self.stream, stderr=True, markup=False, highlight=False)
        if width is None:
            self.width = self.console.width if self.console.is_terminal else self.width
        self.counts: Counter[str] = Counter()
        self.nodes: dict[str, str] = {}
        # Results printed to stdout scroll above the live line only when stdout is the same
        # terminal; redirected to a file or a pipe, stdout must stay untouched.
        self.live = Live(
            console=self.console,
            refresh_per_second=4,
            transient=True,
            get_renderable=self._render,
            redirect_stdout=sys.stdout.isatty(),
            redirect_stderr=False,
        )

    def start(self, total: int) -> None:
        super().start(total)
        self.counts["queued"] = total
        self.live.start()

    def _render(self) -> Any:
        from rich.text import Text

        elapsed = time.monotonic() - self._started
        done = self.counts["completed"] + self.counts["failed"]
        text = (
            f"{self.counts['queued']} queued · {self.counts['running']} running · "
            f"{self.counts['completed']} completed · {self.counts['failed']} failed · {elapsed:.0f}s"
        )
        if done and self.total > 1 and done < self.total:
            eta = elapsed / done * (self.total - done)
            text += f" · ETA {eta:.0f}s"
        lines = [text]
        if self.total == 1:
            lines.extend(f"{printable(key)}: {node}" for key, node in self.nodes.items())
        return Text("\n".join(fit(line, self.width) for line in lines), no_wrap=True, overflow="ellipsis")

    def shows(self, kind: str) -> bool:
        return kind != "status" or self.verbose  # the live line counts jobs

    def event(self, event: JobEvent) -> None:
        if event.kind == "submitted":
            self.counts["queued"] -= 1
            self.counts["running"] += 1
        elif event.kind in _TERMINAL_KINDS:
            self.counts["running"] -= 1
            self.counts["completed" if event.kind == "completed" else "failed"] += 1
            self.nodes.pop(event.plan_key or event.spec_name, None)
        # A lone job's submission is a line of its own, so its id is on screen; the rest only
        # with --verbose (finished jobs get their line from finished()).
        if (event.kind == "submitted" and self.total == 1) or (self.verbose and event.kind in ("submitted", "status")):
            self._print(fit(_event_line(event), self.width))

    def _print(self, text: str, *, style: str | None = None) -> None:
        self.live.console.print(
            printable(redact.mask(text), newlines=True), highlight=False, markup=False, style=style, soft_wrap=True
        )

    def progress(self, plan_key: str, job_id: str, status: str, node: str | None, done: int, total: int) -> None:
        where = f"node {min(done + 1, total)} of {total}" if total else status
        self.nodes[plan_key] = printable(f"{status} · {where}" + (f" ({node})" if node else ""))

    def finished(self, row: dict[str, Any]) -> None:
        self.done += 1
        if self._says_finished(row):
            self._print(self._finished_line(row))

    def retrying(self, notice: Any) -> None:
        if not self.quiet:
            self._print(fit(notice.text(), self.width), style="dim")

    def message(self, text: str, *, level: str = "info", data: dict[str, Any] | None = None) -> None:
        if self.quiet and level == "info":
            return
        prefix = {"warning": "warning: ", "error": "error: "}.get(level, "")
        self._print(prefix + text)

    def summary(self, rows: list[dict[str, Any]]) -> None:
        self.live.stop()  # the summary is printed below the finished display, not through it
        super().summary(rows)

    def close(self) -> None:
        self.live.stop()


def _event_line(event: JobEvent) -> str:
    """An event as a line of --verbose (a terminal one without its reason: the summary has it)."""
    who, job_id = printable(event.plan_key or event.spec_name), printable(event.job_id)
    if event.kind == "submitted":
        return f"{who}: submitted job {job_id}"
    if event.kind == "status":
        return f"{who}: job {job_id} is {printable(event.status)}"
    return f"{who}: job {job_id} {printable(event.status or event.kind.upper())}"


def _same_terminal(stream: IO[str]) -> bool:
    """Whether ``stream`` and stdout are both a terminal (then they show on one screen)."""
    try:
        return bool(stream.isatty() and sys.stdout.isatty())
    except (AttributeError, OSError, ValueError):
        return False


# -- the end of a run ------------------------------------------------------------------------

#: How a job ended, in the totals line, in the order the line lists them.
_TOTALS = {
    "COMPLETED": "completed",
    "FAILED": "failed",
    "TIMED_OUT": "timed out",
    **{status: "cancelled" for status in sorted(CANCELLED_STATUSES)},
    "NOT DELIVERED": "not delivered",
    "ERROR": "errors",
}
_TOTALS_ORDER = ["completed", "failed", "timed out", "cancelled", "not delivered", "errors", "not followed"]


def outcome_label(row: dict[str, Any]) -> str:
    """The word for how a job ended: its terminal status; ``NOT DELIVERED`` for a completed job
    whose results an output could not take; ``ERROR`` for one that ended without a terminal
    status (the API refused a call, a plugin raised); else the status it was left in."""
    status = row.get("status")
    if row.get("error") and status not in TERMINAL_STATUSES:
        return "ERROR"
    if row.get("error") and status == "COMPLETED":
        return "NOT DELIVERED"
    return printable(status or "ERROR")


def _is_failure(row: dict[str, Any]) -> bool:
    label = outcome_label(row)
    return bool(row.get("error")) or (label in _TOTALS and label != "COMPLETED")


def totals_line(rows: list[dict[str, Any]], elapsed: float) -> str:
    """``196 completed, 3 failed, 1 timed out in 4m12s``."""
    counts = Counter(_TOTALS.get(outcome_label(r), "not followed") for r in rows)
    parts = [f"{counts[name]} {name if name != 'errors' or counts[name] != 1 else 'error'}" for name in _TOTALS_ORDER if counts[name]]
    return f"{', '.join(parts)} in {_elapsed(elapsed)}"


def format_summary(rows: list[dict[str, Any]], elapsed: float, *, verbose: bool = False, width: int | None = None) -> str:
    """The end of a run, pytest-style: the table (``verbose``), the failures and their reasons,
    and one totals line, last. A single job gets one line: how it ended, in how long, and
    where its results went (its reasons above it when it failed)."""
    failures = [r for r in rows if _is_failure(r)]
    if len(rows) == 1:
        row = rows[0]
        job = f"job {printable(row['job_id'])} " if row.get("job_id") else ""
        line = f"{printable(row.get('plan_key') or '')}: {job}{outcome_label(row)} in {_seconds(row.get('duration'))}"
        if row.get("delivered"):
            line += f"; results: {printable(row['delivered'])}"
        reasons = _indented(printable(row["error"], newlines=True), width) if failures and row.get("error") else []
        return "\n".join([line, *reasons])
    lines: list[str] = [""]  # a blank line between the jobs' lines and the summary
    if verbose:
        lines += [format_table(rows, width=width), ""]
    if failures:
        lines.append(fit(f"failures ({len(failures)}):", width))
    for row in failures:
        about = ([f"job {printable(row['job_id'])}"] if row.get("job_id") else []) + (
            [_seconds(row["duration"])] if row.get("duration") is not None else []
        )
        head = f"{outcome_label(row)} {printable(row.get('plan_key') or '')}" + (f" ({', '.join(about)})" if about else "")
        lines.append(fit(head, width))
        lines += _indented(printable(row.get("error") or "no reason given", newlines=True), width)
    lines.append(totals_line(rows, elapsed))
    return "\n".join(lines)


def _indented(text: str, width: int | None, indent: str = "    ") -> list[str]:
    """A reason under its job: indented, each of its lines wrapped within ``width``."""
    out: list[str] = []
    for part in text.splitlines() or [""]:
        if width is None or width - len(indent) < 20:
            out.append(indent + part)
        else:
            out += textwrap.wrap(part, width, initial_indent=indent, subsequent_indent=indent, break_on_hyphens=False) or [indent]
    return out


def format_table(rows: list[dict[str, Any]], *, width: int | None = None) -> str:
    """The per-job table (``--verbose``): plan key, job id, status, duration, where the results
    went. Within ``width`` the widest of the job and results columns are cut (with ``…``), so
    no row wraps."""
    headers = ["job", "job id", "status", "duration", "results"]
    body = [
        [
            printable(r.get("plan_key") or ""),
            printable(r.get("job_id") or "-"),
            outcome_label(r) if r.get("status") or r.get("error") else "-",
            _seconds(r.get("duration")),
            printable(r.get("delivered") or "-"),
        ]
        for r in rows
    ]
    widths = [max(len(h), *(len(row[i]) for row in body)) for i, h in enumerate(headers)]
    if width is not None:
        # Shrink the job (0) and results (4) columns, the widest first, until a row fits.
        while sum(widths) + 2 * (len(widths) - 1) > width and max(widths[0], widths[4]) > 8:
            widest = 0 if widths[0] >= widths[4] else 4
            widths[widest] -= 1
    lines = ["  ".join(fit(h, w).ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines += ["  ".join(fit(c, w).ljust(w) for c, w in zip(row, widths)).rstrip() for row in body]
    return "\n".join(fit(line, width) for line in lines)


def fit(text: str, width: int | None) -> str:
    """``text`` cut to ``width`` columns with an ellipsis, so a terminal never wraps it."""
    if width is None or len(text) <= width:
        return text
    return text[: max(width - 1, 0)] + "…"


def terminal_width(stream: IO[str]) -> int | None:
    """Columns of the terminal ``stream`` writes to (``COLUMNS`` wins); None for a file or pipe,
    whose lines may be as long as they are."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    try:
        if stream.isatty():
            return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        pass
    return None


def _seconds(value: Any) -> str:
    return f"{value:.1f}s" if isinstance(value, (int, float)) else "-"


def _elapsed(seconds: float) -> str:
    """``3.1s`` under a minute, else ``4m12s`` / ``1h2m``."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    from .durations import format_duration

    return format_duration(round(seconds))


# -- GitHub Actions ----------------------------------------------------------------------------


def annotation(level: str, message: str, *, file: Any = None, line: Any = None, title: str | None = None) -> str:
    """A GitHub Actions workflow command: ``::error file=specs/x.yaml,line=12::message``.

    The message keeps its lines (escaped as the runner wants them); properties cannot break
    out of their ``key=value`` either.
    """
    command = "warning" if level == "warning" else "error"
    props = []
    if file:
        props.append(f"file={_property(str(file))}")
    if isinstance(line, int) and line > 0:
        props.append(f"line={line}")
    if title:
        props.append(f"title={_property(title)}")
    text = printable(redact.mask(message), newlines=True)
    data = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return f"::{command}{' ' + ','.join(props) if props else ''}::{data}"


def _property(value: str) -> str:
    value = printable(redact.mask(value))
    return value.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A").replace(":", "%3A").replace(",", "%2C")


def annotate(level: str, message: str, *, file: Any = None, line: Any = None, title: str | None = None) -> None:
    """Write one annotation to stdout, where the Actions runner reads workflow commands."""
    sys.stdout.write(annotation(level, message, file=file, line=line, title=title) + "\n")
    sys.stdout.flush()


def make_reporter(output_format: str, *, quiet: bool = False, verbose: bool = False, live: bool | None = None) -> Reporter:
    """JSON events for ``--format json``; text with annotations for ``--format github``; a live
    display on a terminal when rich is installed; else plain lines."""
    if output_format == "json":
        return JsonReporter()
    if output_format == "github":
        return GithubReporter(quiet=quiet, verbose=verbose)
    if live is None:
        live = sys.stderr.isatty()
    if live and not quiet:
        try:
            return RichReporter(quiet=quiet, verbose=verbose)
        except ImportError:
            pass
    return PlainReporter(quiet=quiet, verbose=verbose)
