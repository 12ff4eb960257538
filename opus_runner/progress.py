"""How a run shows what is happening: JSON event lines, plain log lines, or a live terminal display.

stdout belongs to results (the ``stdout`` output) and, with ``--format json``, to the event
stream: one JSON object per line, nothing else. Human progress goes to stderr.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import re
import sys
import time
from collections import Counter
from typing import IO, Any

from . import jsontext, redact
from .models import JobEvent

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
    """Receives the run's events and messages. The base class shows nothing."""

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

    def progress(self, plan_key: str, job_id: str, status: str, node: str | None, done: int, total: int) -> None:
        """Node progress of one running job (only when ``wants_progress``)."""

    def message(self, text: str, *, level: str = "info", data: dict[str, Any] | None = None) -> None:
        """A note for humans (skipped checks, resume hints) or, in JSON mode, an event line."""

    def rendered(self, outcome: Any, *, header: str | None = None) -> None:
        """The payload one job would send (``render``, ``--dry-run``), secrets masked."""

    def summary(self, rows: list[dict[str, Any]]) -> None:
        """The final table: one row per job."""

    def close(self) -> None:
        """Tear down any live display."""


class JsonReporter(Reporter):
    """One JSON object per line on stdout, for CI (documented in docs/events.md)."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stdout
        self._flush_soon = False

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
        self._emit({"event": "batch", "time": now_iso(), "jobs": total})

    def event(self, event: JobEvent) -> None:
        self._emit(event.as_dict())

    def message(self, text: str, *, level: str = "info", data: dict[str, Any] | None = None) -> None:
        self._emit({"event": "message", "time": now_iso(), "level": level, "message": text, **(data or {})})

    streams_payloads = True

    def rendered(self, outcome: Any, *, header: str | None = None) -> None:
        self._emit({"event": "rendered", "plan_key": outcome.plan_key, "spec": outcome.spec_path, "payload": outcome.payload})

    def summary(self, rows: list[dict[str, Any]]) -> None:
        counts = Counter(r.get("status") or "NOT_SUBMITTED" for r in rows)
        self._emit({"event": "summary", "time": now_iso(), "jobs": len(rows), "statuses": dict(counts)})
        self._flush()

    def close(self) -> None:
        self._flush()


class PlainReporter(Reporter):
    """Plain lines on stderr: for logs, cron mails and CI consoles without a terminal."""

    def __init__(self, stream: IO[str] | None = None, *, quiet: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self._started = time.monotonic()

    def _line(self, text: str) -> None:
        self.stream.write(printable(redact.mask(text), newlines=True) + "\n")
        self.stream.flush()

    def start(self, total: int) -> None:
        self._started = time.monotonic()
        if not self.quiet and total != 1:
            self._line(f"submitting {total} jobs")

    def shows(self, kind: str) -> bool:
        return not self.quiet or kind in ("failed", "cancelled", "timed_out")

    def event(self, event: JobEvent) -> None:
        if not self.shows(event.kind):
            return
        if event.kind == "status":
            who, job_id, status = (printable(v) for v in (event.plan_key or event.spec_name, event.job_id, event.status))
            self._line(f"{who}: job {job_id} is {status}")
        elif event.kind == "completed":
            who, job_id = (printable(v) for v in (event.plan_key or event.spec_name, event.job_id))
            self._line(f"{who}: job {job_id} COMPLETED")
        else:
            self._line(_event_text(event))

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
        if self.quiet or not rows:
            return
        if len(rows) == 1:  # one job: no table, but say where its results went
            if rows[0].get("delivered"):
                self._line(f"results: {rows[0]['delivered']}")
            return
        self._line(format_table(rows))


class RichReporter(PlainReporter):
    """A live display on a terminal: counts, elapsed time and ETA; node n of m for one job."""

    wants_progress = True

    def __init__(self, stream: IO[str] | None = None, *, quiet: bool = False) -> None:
        super().__init__(stream, quiet=quiet)
        from rich.console import Console
        from rich.live import Live

        self.console = Console(file=self.stream, stderr=True, markup=False, highlight=False)
        self.counts: Counter[str] = Counter()
        self.total = 0
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
        self.total = total
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
        return Text("\n".join(lines))

    def shows(self, kind: str) -> bool:
        return kind != "status"  # the live line counts jobs; status changes show nowhere

    def event(self, event: JobEvent) -> None:
        if event.kind == "submitted":
            self.counts["queued"] -= 1
            self.counts["running"] += 1
        elif event.kind in _TERMINAL_KINDS:
            self.counts["running"] -= 1
            self.counts["completed" if event.kind == "completed" else "failed"] += 1
            self.nodes.pop(event.plan_key or event.spec_name, None)
        # The live line shows counts; only what needs attention becomes a line of its own (and,
        # for a single job, its submission, so its id is on screen).
        if event.kind in ("failed", "cancelled", "timed_out") or (event.kind == "submitted" and self.total == 1):
            self.live.console.print(printable(redact.mask(_event_text(event)), newlines=True), highlight=False, markup=False)

    def progress(self, plan_key: str, job_id: str, status: str, node: str | None, done: int, total: int) -> None:
        where = f"node {min(done + 1, total)} of {total}" if total else status
        self.nodes[plan_key] = printable(f"{status} · {where}" + (f" ({node})" if node else ""))

    def message(self, text: str, *, level: str = "info", data: dict[str, Any] | None = None) -> None:
        if self.quiet and level == "info":
            return
        prefix = {"warning": "warning: ", "error": "error: "}.get(level, "")
        self.live.console.print(printable(redact.mask(prefix + text), newlines=True), highlight=False, markup=False)

    def summary(self, rows: list[dict[str, Any]]) -> None:
        self.live.stop()  # the table is printed below the finished display, not through it
        super().summary(rows)

    def close(self) -> None:
        self.live.stop()


def _event_text(event: JobEvent) -> str:
    """A submitted, failed, cancelled or timed-out event as one line: the server's words in it
    (job id, status, error) cannot break the line or reach the terminal as controls."""
    who, job_id = printable(event.plan_key or event.spec_name), printable(event.job_id)
    if event.kind == "submitted":
        return f"{who}: submitted job {job_id}"
    detail = f": {printable(event.error)}" if event.error else ""
    return f"{who}: job {job_id} {printable(event.status or event.kind.upper())}{detail}"


def format_table(rows: list[dict[str, Any]]) -> str:
    """The final summary: plan key, job id, status, duration, where the results went."""
    headers = ["job", "job id", "status", "duration", "results"]
    body = [
        [
            printable(r.get("plan_key") or ""),
            printable(r.get("job_id") or "-"),
            printable(r.get("status") or "-"),
            f"{r['duration']:.1f}s" if r.get("duration") is not None else "-",
            printable(r.get("delivered") or "-"),
        ]
        for r in rows
    ]
    widths = [max(len(h), *(len(row[i]) for row in body)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in body]
    return "\n".join(lines)


def make_reporter(output_format: str, *, quiet: bool = False, live: bool | None = None) -> Reporter:
    """JSON events for ``--format json``; a live display on a terminal when rich is installed; else plain lines."""
    if output_format == "json":
        return JsonReporter()
    if live is None:
        live = sys.stderr.isatty()
    if live and not quiet:
        try:
            return RichReporter(quiet=quiet)
        except ImportError:
            pass
    return PlainReporter(quiet=quiet)
