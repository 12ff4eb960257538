"""What a report shows of one run, read from the journal (``state.Journal``): the run's times
and exit code, and per job its status, when it started and ended, and why it failed.

A job starts when the journal first records it (just before it is initiated: with
``--concurrency``, later jobs start later) and ends at its terminal status. Times are the
journal's own (UTC, written by the runner), never the server's, so one clock draws the
timeline. Every text here is what the journal holds, already masked; the renderers escape it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from ..durations import format_duration
from ..errors import UsageError

if TYPE_CHECKING:  # pragma: no cover
    from ..state import Journal, JobRecord

#: Statuses that end a job without a result; a report lists them as failures.
FAILURE_STATUSES = ("FAILED", "CANCELLED", "TIMED_OUT", "STOPPED")
#: The order totals are given in: the good news first, then what went wrong, then the rest.
STATUS_ORDER = ("COMPLETED", *FAILURE_STATUSES, "IN_PROGRESS", "PENDING", "NOT_SUBMITTED")
#: What a job reads as before the service gave it any status (planned, or its execute unanswered).
NOT_SUBMITTED = "NOT_SUBMITTED"


def _parse(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


@dataclass(frozen=True)
class JobRow:
    """One job of the run as a report shows it."""

    name: str  # the plan key: spec name and matrix/row values
    title: str
    spec_name: str
    job_id: str | None
    status: str
    started: datetime | None
    #: when the service first said the job was running (the end of its wait in the queue)
    running: datetime | None
    ended: datetime | None
    error: str | None
    #: targets whose delivery failed (the result is in the journal, not where it should be)
    undelivered: tuple[str, ...] = ()

    @property
    def duration(self) -> float | None:
        """Seconds from start to end; None while the job has not ended."""
        if self.started is None or self.ended is None:
            return None
        return max(0.0, (self.ended - self.started).total_seconds())

    @property
    def failed(self) -> bool:
        return self.status in FAILURE_STATUSES or bool(self.undelivered)

    @property
    def reason(self) -> str:
        """Why the job is a failure, in one line."""
        if self.error:
            return self.error
        if self.undelivered:
            return "result not delivered to " + ", ".join(self.undelivered)
        return f"ended {self.status}"


@dataclass(frozen=True)
class RunData:
    """One run: when it ran, how it ended, and its jobs in plan order."""

    run_id: str
    started: datetime | None
    finished: datetime | None
    exit_code: int | None
    jobs: list[JobRow] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        """Jobs per status, in :data:`STATUS_ORDER` (statuses it does not name last)."""
        counter = Counter(job.status for job in self.jobs)
        order = [s for s in STATUS_ORDER if s in counter]
        order += sorted(s for s in counter if s not in STATUS_ORDER)
        return {status: counter[status] for status in order}

    @property
    def failures(self) -> list[JobRow]:
        return [job for job in self.jobs if job.failed]

    @property
    def elapsed(self) -> float | None:
        """Seconds from the run's start to its end (or to its last job's end while unfinished)."""
        end = self.finished or max((j.ended for j in self.jobs if j.ended), default=None)
        if self.started is None or end is None:
            return None
        return max(0.0, (end - self.started).total_seconds())

    @property
    def finished_ok(self) -> bool:
        return self.exit_code == 0

    def totals_line(self) -> str:
        """``18 completed, 2 failed in 2.4s``: every status with its count, then the run's time."""
        parts = [f"{n} {status.lower().replace('_', ' ')}" for status, n in self.counts.items()] or ["no jobs"]
        elapsed = self.elapsed
        when = f" in {format_duration(round(elapsed, 1))}" if elapsed is not None else ""
        return ", ".join(parts) + when


def job_row(job: JobRecord, history: list[tuple[str, str]]) -> JobRow:
    """A job's row from its journal record and status history (``Journal.status_history``)."""
    from ..models import TERMINAL_STATUSES

    status = job.status or NOT_SUBMITTED
    running = next((_parse(at) for at, s in history if s not in ("PENDING", "QUEUED")), None)
    ended = None
    if status in TERMINAL_STATUSES:
        ended = next((_parse(at) for at, s in reversed(history) if s == status), None) or _parse(job.updated_at)
    error = job.error or (job.result or {}).get("error")
    return JobRow(
        name=job.plan_key,
        title=job.title,
        spec_name=job.spec_name,
        job_id=job.job_id,
        status=status,
        started=_parse(job.created_at),
        running=running,
        ended=ended,
        error=error,
        undelivered=tuple(job.undelivered),
    )


def load_run(journal: Journal, run_id: str | None = None) -> RunData:
    """Run ``run_id`` of ``journal`` (default: the latest) as a report's data.

    An unknown id is the journal's :class:`UsageError` naming the latest runs; a journal with
    no runs says so.
    """
    if run_id is None:
        record = journal.latest_run()
        if record is None:
            raise UsageError(f"the journal {journal.path} holds no runs yet; run some specs first, or give --state-dir")
    else:
        record = journal.get_run(run_id)
    jobs = [job_row(job, journal.status_history(job.row_id)) for job in journal.jobs(record.run_id)]
    return RunData(
        run_id=record.run_id,
        started=_parse(record.started_at),
        finished=_parse(record.finished_at),
        exit_code=record.exit_code,
        jobs=jobs,
    )
