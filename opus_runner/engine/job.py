"""One job, from wherever the journal says it is to its end.

    planned -> (journal) -> initiate -> initiated (job id journaled) -> executing -> execute
    -> executed -> wait -> results -> finished -> outputs

Each phase is a :class:`~opus_runner.state.Phase`; the job id is in the journal before execute
is sent, so a crash at any point leaves a job that ``opus-run resume`` continues without
executing it twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from .. import redact
from ..errors import (
    ApiError,
    ExecuteNotReceived,
    ExecuteOutcomeUnknown,
    ExecuteRefused,
    NetworkError,
    OpusRunnerError,
    UsageError,
)
from ..models import CANCELLED_STATUSES, TERMINAL_STATUSES, Context, JobEvent, JobResult, WorkflowSchema
from ..planning import JobPlan
from ..progress import now_iso
from ..state import Phase
from .delivery import Delivery
from .report import JobOutcome
from .schedule import PollSchedule
from .session import Session, file_digest

if TYPE_CHECKING:  # pragma: no cover
    from .listening import Listener

if TYPE_CHECKING:  # pragma: no cover
    from ..state import JobRecord

_T = TypeVar("_T")

#: the status a job gets in the journal and outputs when the runner stopped waiting for it
GAVE_UP = "TIMED_OUT"
_TERMINAL_EVENT = {
    "COMPLETED": "completed",
    "FAILED": "failed",
    **{status: "cancelled" for status in CANCELLED_STATUSES},
    "TIMED_OUT": "timed_out",
}
#: consecutive UNKNOWN statuses after which the user is warned (the job is still followed)
UNKNOWN_WARN_AFTER = 3


@dataclass
class Submitted:
    """A job Opus has: its journal row, its job id, and the ``ctx`` its hooks get."""

    row_id: int
    job_id: str
    ctx: Context


class JobRunner:
    """Runs the jobs of one run (``run_id``) on the session's client and journal."""

    def __init__(
        self, session: Session, delivery: Delivery, run_id: str, *, batch_size: int, listener: Listener | None = None
    ) -> None:
        self.session = session
        self.delivery = delivery
        self.run_id = run_id
        self.batch_size = batch_size
        #: the run's callback receiver, when it has one (hybrid and callback modes)
        self.listener = listener
        #: called before every initiate and execute is sent; raises to stop the job there (a
        #: Temporal worker: the engine gave up the step, which another worker now takes)
        self.before_write: Callable[[], None] | None = None

    async def run(self, plan: JobPlan, record: JobRecord | None = None, prepared: dict[str, Any] | None = None) -> JobOutcome:
        """Take the job to its end; whatever happens is in the outcome, nothing raises but a
        cancellation. ``prepared`` is the payload the check pass built, when sending it needs
        no upload; ``record`` the journal's row of a resumed job."""
        outcome = JobOutcome(plan.key, plan.spec.name, str(plan.spec.path))
        started = time.monotonic()
        try:
            await self._drive(plan, outcome, record, prepared)
        except OpusRunnerError as exc:
            outcome.error = redact.mask(str(exc))
            outcome.exit_code = exc.exit_code
            # A job that ended is reported with its result; one whose results could not be read
            # (COMPLETED, no result yet) is not, so its error is.
            if outcome.status is None or outcome.status not in TERMINAL_STATUSES or outcome.result is None:
                self.session.reporter.job_error(f"{plan.key}: {outcome.error}")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug or a plugin's unexpected error: keep the batch going
            unexpected(self.session, outcome, exc)
        outcome.duration = time.monotonic() - started
        return outcome

    async def _drive(
        self, plan: JobPlan, outcome: JobOutcome, record: JobRecord | None, prepared: dict[str, Any] | None
    ) -> None:
        phase = record.phase if record else Phase.PLANNED
        outcome.job_id = record.job_id if record else None
        seen: str | None = None  # a status read while settling: a terminal one ends the wait
        if phase == Phase.EXECUTING and record is not None and record.job_id is not None:
            phase, seen = await self._settle_executing(record)
        if phase in (Phase.PLANNED, Phase.INITIATED, Phase.EXECUTING):
            submitted = await self._submit(plan, outcome, record, prepared)
            if submitted is None:
                return  # refused by Opus: finished and delivered as FAILED
        else:
            assert record is not None
            submitted = await self._reattach(plan, record, outcome)
        job_id, row_id, ctx = submitted.job_id, submitted.row_id, submitted.ctx
        if not plan.wait.enabled:
            self.session.reporter.message(f"{plan.key}: job {job_id} submitted; " + self.session.later(f"follow it with: opus-run status {job_id}"))
            return
        if seen in TERMINAL_STATUSES:
            status: str | None = seen
            outcome.status = seen
        else:
            status = await self._wait(plan, job_id, row_id, ctx, outcome)
        result = await self._finish(plan, job_id, row_id, status or GAVE_UP, ctx, outcome, gave_up=status is None)
        # A real end was journaled with its outputs marked intended (one write); a give-up was not.
        await self.delivery.deliver(plan, result, row_id, ctx, outcome, marked=status is not None)

    async def _settle_executing(self, record: JobRecord) -> tuple[Phase, str]:
        """The run stopped between sending execute and hearing back: the platform knows. Its
        status cannot tell (a never-executed job reads PENDING too); the job's detail shows
        whether the payload arrived."""
        assert self.session.client is not None and self.session.journal is not None
        job_id = str(record.job_id)
        received, status = await self.session.client.execute_received(job_id)
        if received is None:
            raise ExecuteOutcomeUnknown(
                f"job {job_id} was being executed when the run stopped, and Opus does not "
                f"show whether the execute arrived (status {status}, no input in its "
                f"detail); it was not sent again. Check it in Opus, then resume again",
                job_id=job_id,
            )
        if received:
            self.session.journal.mark_executed(record.row_id)
            return Phase.EXECUTED, status
        return Phase.INITIATED, status

    async def _submit(
        self, plan: JobPlan, outcome: JobOutcome, record: JobRecord | None, prepared: dict[str, Any] | None
    ) -> Submitted | None:
        """Journal, initiate (unless the journal has the job id), then execute; None when Opus
        refused the execute (the job is then finished, FAILED, and delivered)."""
        session = self.session
        assert session.client is not None and session.journal is not None and session.host is not None
        client, journal, host = session.client, session.journal, session.host
        sent_files: dict[str, str] = {}
        if prepared is not None:
            payload = prepared
            ctx = session.context(plan, plan.spec, dry_run=False)
            ctx.workflow = await session.schema_for(plan.workflow, ctx)
        else:
            built, ctx = await session.payload_for(plan, dry_run=False)
            payload = built.payload
            sent_files = {str(path): file_digest(path) for path in built.files}
        if record is not None and record.job_id is not None and not session.options.replan:
            # Initiated by the run that stopped: it is sent as it was recorded, or not at all.
            check_as_recorded(plan, record, payload, ctx.workflow, sent_files)
        row_id = record.row_id if record else None
        if row_id is None:
            row_id = journal_plan(journal, self.run_id, plan, payload, sent_files)
        workspaces = self.workspaces(plan, ctx)
        job_id = record.job_id if record else None
        if job_id is None:
            job_id = await self.initiate(plan, workspaces)
            journal.set_job_id(row_id, job_id)  # durable before execute is sent
        outcome.job_id = ctx.job_id = job_id
        await host.payload_ready(payload, ctx)
        callback = self.callback_url(plan, row_id, job_id)
        journal.mark_executing(row_id)
        try:
            execution = await self.execute(plan, job_id, payload, workspaces, callback)
        except ExecuteRefused as exc:
            # The job never started: it ends here, FAILED with the platform's words, so
            # neither this run nor a resume sends it again blindly.
            result = await self._refused(plan, job_id, row_id, ctx, outcome, exc)
            await self.delivery.deliver(plan, result, row_id, ctx, outcome, marked=True)
            return None
        if not plan.wait.enabled:
            journal.mark_executed(row_id)
        # else the execute's acknowledgement is journaled with the first status read (one
        # write): a crash before it leaves the job "executing", which resume settles by asking
        # Opus whether the job holds its payload, never by sending it again.
        outcome.status = execution.status or "PENDING"
        await self.delivery.event(JobEvent("submitted", job_id, plan.spec.name, outcome.status, plan.key), plan, ctx)
        return Submitted(row_id, job_id, ctx)

    async def _reattach(self, plan: JobPlan, record: JobRecord, outcome: JobOutcome) -> Submitted:
        """An executed job of a resumed run: followed again from its journal row."""
        assert record.job_id is not None
        ctx = self.session.context(plan, plan.spec, dry_run=False)
        ctx.job_id = record.job_id
        # Followed again on resume: an earlier give-up (TIMED_OUT) may have been delivered.
        ctx.redelivery = bool(record.deliveries)
        with contextlib.suppress(OpusRunnerError):
            ctx.workflow = await self.session.schema_for(plan.workflow, ctx)
        outcome.status = record.status
        return Submitted(record.row_id, record.job_id, ctx)

    async def _wait(self, plan: JobPlan, job_id: str, row_id: int, ctx: Context, outcome: JobOutcome) -> str | None:
        """Follow the job to a terminal status (returned), or until the timeout (None).

        poll: the status is read at once, then on a gently growing interval with jitter.
        hybrid and callback: it is read when the job's callback wakes it, and every
        ``safety_interval`` in case the callback never comes (a receiver down, a lost POST).
        """
        settings = plan.wait
        deadline = time.monotonic() + settings.timeout
        listener = self.listener if settings.mode != "poll" else None
        follow = _Following(self, plan, job_id, row_id, ctx, outcome)
        schedule = PollSchedule(settings.poll_interval, settings.max_interval)
        soon = 0  # reads left at the poll interval: after a wake-up that found the job still running
        if listener is not None:
            listener.follow(row_id)
        try:
            read_now = listener is None
            while True:
                if not read_now:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return None
                    if listener is None or soon or follow.unsure:
                        pause = schedule.pause()
                        woken = await listener.wait(row_id, min(remaining, pause)) if listener else await _sleep(min(remaining, pause))
                    else:
                        # Never early: a safety read just before the end would be one read too many.
                        woken = await listener.wait(row_id, min(remaining, settings.safety_interval * random.uniform(1.0, 1.1)))
                    if woken:
                        # The callback may come a moment before the status says so: a few
                        # quick reads before going back to the safety schedule.
                        soon = 3
                        schedule.restart()
                    elif soon:
                        soon -= 1
                read_now = False
                status = await follow.read()
                if status is None:  # unreadable for now (already reported)
                    schedule.failed()
                    continue
                if status in TERMINAL_STATUSES:
                    return status
                if self.session.reporter.wants_progress and self.batch_size == 1:  # node progress shows for one job only
                    await follow.progress(status)
                schedule.read(status)
        finally:
            if listener is not None:
                listener.done(row_id)

    async def _finish(
        self,
        plan: JobPlan,
        job_id: str,
        row_id: int,
        status: str,
        ctx: Context,
        outcome: JobOutcome,
        *,
        gave_up: bool = False,
    ) -> JobResult:
        session = self.session
        assert session.journal is not None
        result = await self.ending(plan, job_id, status, gave_up=gave_up)
        outcome.status = status
        outcome.result = result
        outcome.error = result.error
        outcome.exit_code = 0 if status == "COMPLETED" else 1
        if gave_up:
            # The job may still finish on the platform: it stays unfinished in the journal, so
            # `opus-run resume` follows it again and delivers its real result.
            session.journal.add_status(row_id, status, executed=True)
        else:
            session.journal.set_result(
                row_id,
                status=status,
                result={**result.as_dict(), "raw": result.raw},
                error=result.error,
                intended=self.delivery.intended(plan),
            )
        await self.ended(plan, result, ctx)
        return result

    async def ended(self, plan: JobPlan, result: JobResult, ctx: Context) -> None:
        """The job's terminal event (completed, failed, cancelled, timed_out), for the
        reporter, the observers and the notifiers subscribed to it."""
        kind = _TERMINAL_EVENT.get(result.status, "failed")
        await self.delivery.event(
            JobEvent(kind, result.job_id, plan.spec.name, result.status, plan.key, result=result, error=result.error), plan, ctx
        )

    async def ending(self, plan: JobPlan, job_id: str, status: str, *, gave_up: bool = False) -> JobResult:
        """The result of a job that ended with ``status`` (read from Opus when COMPLETED; the
        reason, from the audit and results, when not), or that the runner gave up on."""
        session = self.session
        result = JobResult(
            job_id=job_id,
            status=status,
            spec_name=plan.spec.name,
            plan_key=plan.key,
            title=plan.title,
            finished_at=now_iso(),
            final=not gave_up,
        )
        if status == "COMPLETED":
            data = await self._results_patiently(plan, job_id)
            result.outputs = redact.mask_obj(data.outputs)
            result.raw = redact.mask_obj(data.raw)
            if not data.recognised:
                shown = ", ".join(sorted(map(str, data.raw))) if isinstance(data.raw, Mapping) else type(data.raw).__name__
                session.reporter.message(
                    f"{plan.key}: job {job_id} completed, but its results hold no outputs opus-runner "
                    f"recognises (keys: {shown or 'none'}); its outputs are left empty. "
                    + session.later(f"Look at the answer with 'opus-run results {job_id}'"),
                    level="warning",
                )
        elif status == GAVE_UP and gave_up:
            result.error = f"job {job_id} did not finish within {plan.wait.timeout:g}s; it may still be running: " + session.later(
                f"check it with 'opus-run status {job_id}' or finish the run with '{session.resume_command(self.run_id)}'"
            )
        else:
            result.error = await self._failure_reason(job_id, status)
        return result

    async def _failure_reason(self, job_id: str, status: str) -> str:
        """Name the failed node (from the audit) and the platform's error, when available."""
        client = self.session.client
        assert client is not None
        parts = [f"job {job_id} ended {status}"]
        with contextlib.suppress(OpusRunnerError):
            audit = await client.audit(job_id)
            if audit.failed_nodes:
                parts.append(f"failed node: {', '.join(audit.failed_nodes)}")
        with contextlib.suppress(OpusRunnerError):
            data = await client.results(job_id)
            if data.error:
                parts.append(data.error)
        return redact.mask("; ".join(parts))

    async def initiate(self, plan: JobPlan, workspaces: tuple[str, ...], *, title: str | None = None) -> str:
        """A new job for ``plan`` (``title`` instead of the plan's, e.g. with a marker): its id."""
        client = self.session.client
        assert client is not None

        async def send() -> str:
            self._may_write()
            return await client.initiate(
                plan.workflow.id,
                title=title or plan.title,
                description=plan.description,
                version=plan.workflow.version,
                version_id=plan.workflow.version_id,
                workspaces=workspaces,
            )

        return await self._patiently(plan, send)

    def _may_write(self) -> None:
        if self.before_write is not None:
            self.before_write()

    async def _patiently(self, plan: JobPlan, call: Callable[[], Awaitable[_T]]) -> _T:
        """``call()`` again through transient failures (rate limits, gateways, the network) for
        as long as the job's wait allows: a busy platform slows a batch down, never fails it.
        Only for calls that are safe to repeat (initiate: a lost one leaves an unused job)."""
        deadline = time.monotonic() + plan.wait.timeout
        interval = max(plan.wait.poll_interval, 0.5)
        while True:
            try:
                return await call()
            except (ApiError, NetworkError) as exc:
                remaining = deadline - time.monotonic()
                if isinstance(exc, (ExecuteOutcomeUnknown, ExecuteRefused)) or not transient(exc) or remaining <= 0:
                    raise
                self.session.log.info(redact.mask(f"{plan.key}: {exc}; trying again in about {interval:.0f} s"))
            await asyncio.sleep(min(remaining, interval * random.uniform(0.5, 1.0)))
            interval = min(plan.wait.max_interval, interval * 2)

    async def execute(
        self, plan: JobPlan, job_id: str, payload: dict[str, Any], workspaces: tuple[str, ...], callback_url: str
    ) -> Any:
        """Execute, sent again only while the job provably has no input; an unclear outcome is
        settled by asking the job, patiently, never by guessing."""
        client = self.session.client
        assert client is not None
        async def send() -> Any:
            self._may_write()
            return await client.execute(job_id, payload, callback_url=callback_url, workspaces=workspaces)

        deadline = time.monotonic() + plan.wait.timeout
        while True:
            try:
                return await self._patiently(plan, send)
            except ExecuteNotReceived:
                if time.monotonic() >= deadline:
                    raise  # the journal keeps it unconfirmed: resume asks again
                # No input after every attempt: safe to send again.
            except ExecuteOutcomeUnknown as exc:
                # The job could not be read, or the request got no answer: ask the job (within
                # the wait). "No input" allows sending again only when the request is over (an
                # HTTP answer came); after an answer-less one it may still land, so the job
                # stays unconfirmed for resume, never sent twice.
                try:
                    received, status = await self._patiently(plan, lambda: client.execute_received(job_id))
                except (ApiError, NetworkError):
                    raise exc from None  # it says what matters: the outcome is unknown, nothing was resent
                if received:
                    from ..api import ExecuteOutcome

                    return ExecuteOutcome(job_id, False, status, f"execute was settled by reading job {job_id}")
                if received is None or not exc.answered or time.monotonic() >= deadline:
                    raise
            await asyncio.sleep(random.uniform(0.5, 1.0) * max(plan.wait.poll_interval, 0.5))

    async def _results_patiently(self, plan: JobPlan, job_id: str) -> Any:
        """A completed job's results, read again through transient failures for as long as the
        job's wait allows (then the error stands, and the job stays unfinished for resume)."""
        client = self.session.client
        assert client is not None
        deadline = time.monotonic() + plan.wait.timeout
        interval = plan.wait.poll_interval
        while True:
            try:
                return await client.results(job_id)
            except (ApiError, NetworkError) as exc:
                remaining = deadline - time.monotonic()
                if not transient(exc) or remaining <= 0:
                    raise
            await asyncio.sleep(min(remaining, interval * random.uniform(0.5, 1.0)))
            interval = min(plan.wait.max_interval, interval * 2)

    def workspaces(self, plan: JobPlan, ctx: Context) -> tuple[str, ...]:
        """``workflow.workspaces``, else the workflow's own workspace when it reports one."""
        if plan.workspaces:
            return plan.workspaces
        own = ctx.workflow.workspace_id if ctx.workflow else None
        return (own,) if own else ()

    def callback_url(self, plan: JobPlan, row_id: int, job_id: str) -> str:
        """The spec's ``callback.url``; else, for a job waiting for its callback, the run's
        receiver with the job's token; else the project's ``callback_url``; else the
        never-resolving placeholder (Opus requires one on every execute)."""
        from ..urls import PLACEHOLDER_CALLBACK_URL

        if plan.callback_url:
            return plan.callback_url
        if self.listener is not None and plan.wait.mode != "poll":
            return self.listener.url_for(row_id, plan.key, job_id)
        config = self.session.config
        configured = config.callback_url if config else None
        return configured or PLACEHOLDER_CALLBACK_URL

    async def _refused(
        self, plan: JobPlan, job_id: str, row_id: int, ctx: Context, outcome: JobOutcome, exc: ExecuteRefused
    ) -> JobResult:
        journal = self.session.journal
        assert journal is not None
        error = redact.mask(str(exc.message))
        result = JobResult(
            job_id=job_id,
            status="FAILED",
            spec_name=plan.spec.name,
            plan_key=plan.key,
            title=plan.title,
            finished_at=now_iso(),
            error=error,
        )
        journal.set_result(
            row_id, status="FAILED", result={**result.as_dict(), "raw": {}}, error=error, intended=self.delivery.intended(plan)
        )
        outcome.status, outcome.result, outcome.error, outcome.exit_code = "FAILED", result, error, exc.exit_code
        self.session.reporter.job_error(f"{plan.key}: {error}")
        await self.delivery.event(JobEvent("failed", job_id, plan.spec.name, "FAILED", plan.key, result=result, error=error), plan, ctx)
        return result


def unexpected(session: Session, outcome: JobOutcome, exc: BaseException) -> None:
    """A bug or a plugin's unexpected error ends this job (exit 3, with the reason), not the batch."""
    session.log.debug("unexpected error in job %s", outcome.plan_key, exc_info=exc)
    outcome.error = redact.mask(f"{type(exc).__name__}: {exc}")
    outcome.exit_code = 3
    session.reporter.job_error(f"{outcome.plan_key}: unexpected error: {outcome.error}")


def check_as_recorded(
    plan: JobPlan,
    record: JobRecord,
    payload: Mapping[str, Any],
    schema: WorkflowSchema | None,
    sent_files: Mapping[str, str],
) -> None:
    """Refuse to execute an initiated job with other inputs than its run recorded.

    Values are compared as journaled, secrets masked: no trace of a secret, not even a hash
    (an offline guessing oracle for a weak one), is kept, so a rotated secret is no change.
    File inputs are compared by the sha256 of each local file's content, since a file is
    uploaded again by every run and gets a new URL (runs journaled before this was kept
    recorded no digests and compare values only).
    """
    then_files = record.plan.get("files")
    if isinstance(then_files, Mapping) and dict(then_files) != dict(sent_files):
        changed_files = sorted(p for p in set(then_files) | set(sent_files) if then_files.get(p) != sent_files.get(p))
        raise UsageError(
            f"job {record.job_id} ({plan.key}) was initiated by the run that stopped, and the file "
            f"{', '.join(changed_files)} it sends has changed since; it was not executed. To execute it "
            f"with the files of now: opus-run resume {record.run_id} --replan"
        )
    files = {f.variable_name for f in schema.inputs if f.is_file} if schema else set()

    def comparable(values: Mapping[str, Any]) -> dict[str, Any]:
        return {var: entry for var, entry in values.items() if var not in files}

    now, then = comparable(redact.mask_obj(jsonable(payload))), comparable(record.payload or {})
    if now != then:
        changed = sorted(v for v in set(now) | set(then) if now.get(v) != then.get(v))
        raise UsageError(
            f"job {record.job_id} ({plan.key}) was initiated by the run that stopped, with other values for "
            f"{', '.join(changed)} than the spec and data give now; it was not executed. To execute it "
            f"with the values of now: opus-run resume {record.run_id} --replan"
        )


def transient(exc: OpusRunnerError) -> bool:
    """A failure that says "not now" rather than "no": the network, a rate limit, a gateway."""
    if isinstance(exc, NetworkError):
        return getattr(exc, "transient", True)  # not an answer that trickled past its deadline
    status = getattr(exc, "status_code", None)
    return status in (408, 425, 429, 500, 502, 503, 504)


def jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


async def _sleep(seconds: float) -> bool:
    await asyncio.sleep(seconds)
    return False


class _Following:
    """The status reads of one job being followed: journaled and announced when they change,
    warned about when unreadable or UNKNOWN for long."""

    def __init__(self, runner: JobRunner, plan: JobPlan, job_id: str, row_id: int, ctx: Context, outcome: JobOutcome) -> None:
        self.runner = runner
        self.session = runner.session
        self.plan, self.job_id, self.row_id, self.ctx, self.outcome = plan, job_id, row_id, ctx, outcome
        self.last: str | None = None
        self.unknown = 0  # consecutive UNKNOWN readings
        self.unreadable = False  # the user was told the status could not be read
        self.failed_last = False  # the last read failed

    @property
    def unsure(self) -> bool:
        """The last reading settled nothing (unreadable, or UNKNOWN): read again soon."""
        return self.failed_last or self.unknown > 0

    async def read(self) -> str | None:
        """The status now; None when it could not be read for a reason that may pass."""
        session, plan, job_id = self.session, self.plan, self.job_id
        assert session.client is not None and session.journal is not None
        try:
            status = await session.client.status(job_id)
        except (ApiError, NetworkError) as exc:
            # An executed job is followed for as long as its wait allows: a rate limit or a
            # gateway hiccup (already retried by the client) never abandons it.
            if not transient(exc):
                raise
            self.failed_last = True
            if not self.unreadable:
                self.unreadable = True
                session.reporter.message(
                    f"{plan.key}: the status of job {job_id} could not be read ({exc}); still "
                    f"following it until wait.timeout ({plan.wait.timeout:g}s)",
                    level="warning",
                )
            return None
        self.failed_last = False
        self.unknown = self.unknown + 1 if status == "UNKNOWN" else 0
        if self.unknown == UNKNOWN_WARN_AFTER:
            session.reporter.message(
                f"{plan.key}: job {job_id} has reported status UNKNOWN {self.unknown} times in a row; "
                f"still checking until wait.timeout ({plan.wait.timeout:g}s). "
                + session.later(f"Look at it with 'opus-run status {job_id}' or in Opus"),
                level="warning",
            )
        if status != self.last:
            if status not in TERMINAL_STATUSES:
                # A terminal status is journaled with the result, in one write (_finish); until
                # then the journal says the job is still running, which resume reads again.
                session.journal.add_status(self.row_id, status, executed=True)
            self.outcome.status = status
            # The terminal status gets its own event (completed, failed...) from _finish.
            if status not in TERMINAL_STATUSES and (self.last is not None or status != "PENDING"):
                event = JobEvent("status", job_id, plan.spec.name, status, plan.key)
                await self.runner.delivery.event(event, plan, self.ctx)
            self.last = status
        return status

    async def progress(self, status: str) -> None:
        """Node n of m from the audit, for the progress display."""
        session = self.session
        assert session.client is not None
        with contextlib.suppress(OpusRunnerError):
            audit = await session.client.audit(self.job_id)
            session.reporter.progress(self.plan.key, self.job_id, status, audit.running_node, audit.nb_executed, audit.nb_nodes)


def journal_plan(journal: Any, run_id: str, plan: JobPlan, payload: dict[str, Any], files: dict[str, str]) -> int:
    """Journal a planned job of run ``run_id``: its row id. ``payload`` is kept masked, and
    ``files`` (path to sha256) is the content of each local file it sends, since its upload
    URL is new every time (resume compares file inputs by content)."""
    return journal.add_job(
        run_id,
        plan_key=plan.key,
        spec_path=str(plan.spec.path),
        spec_digest=plan.spec.digest,
        spec_name=plan.spec.name,
        workflow_key=plan.workflow.key,
        title=plan.title,
        payload=redact.mask_obj(jsonable(payload)),
        plan={**plan.describe(), "files": files},
    )
