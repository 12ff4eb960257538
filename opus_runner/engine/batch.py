"""A batch: plan -> check every job -> submit them, ``concurrency`` at a time, in plan order.

Nothing is submitted before every job is checked. Every job that was started ends as a
:class:`JobOutcome`, in the summary and the exit code, however it ended (a task that raised
included). The run-level hooks frame the submitting: ``opus_run_started`` before the first
job, ``opus_run_finished`` after the last.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import redact
from ..callbacks.tokens import ReceiverSettings
from ..errors import OpusRunnerError, SpecError, ValidationFailed, format_key
from ..models import TERMINAL_STATUSES, JobResult, RunInfo
from ..planning import JobPlan, Planner, PlanFilter
from ..state import Phase
from .delivery import Delivery, result_of
from .job import JobRunner, jsonable, unexpected
from .listening import Listener, agreed, receiving
from .report import JobOutcome, RunReport, worst
from .session import Session

if TYPE_CHECKING:  # pragma: no cover
    from ..state import JobRecord

#: validated plans kept between the check pass and the submit pass (beyond, plans are re-made)
MAX_CHECKED_PLANS = 5000


@dataclass(frozen=True)
class Job:
    """One job to take to its end: a plan, the payload the check pass built for it (when
    sending it needs no upload), and its journal row on resume."""

    plan: JobPlan
    prepared: dict[str, Any] | None = None
    record: JobRecord | None = None


@dataclass
class Checked:
    """What the check pass found."""

    count: int = 0  # valid jobs
    errors: list[SpecError] = field(default_factory=list)
    invalid: set[str] = field(default_factory=set)  # plan keys of invalid jobs
    outcomes: list[JobOutcome] = field(default_factory=list)  # with ``keep``: one per valid job, its masked payload
    #: the valid jobs, to submit without planning them again; None when the batch was too large
    jobs: list[Job] | None = None
    #: the receiver the specs name (callback.listen / public_url), one for the whole run
    receiver: ReceiverSettings = field(default_factory=lambda: ReceiverSettings())
    receiver_conflict: bool = False


async def check(session: Session, planner: Planner, plan_filter: PlanFilter, *, keep: bool, remember: bool = False) -> Checked:
    """Plan and check every job (against the live schema when there is one)."""
    found = Checked(jobs=[] if remember else None)
    live = session.client is not None or session.lock is not None
    for spec in session.specs:
        iterator = planner.plans([spec], plan_filter)
        while True:
            try:
                plan = next(iterator)
            except StopIteration:
                break
            except SpecError as exc:  # planning stops for this spec (e.g. unreadable foreach file)
                found.errors.append(exc)
                break
            except ValidationFailed as exc:
                found.errors.extend(exc.errors)
                break
            try:
                prepared: dict[str, Any] | None = None
                if live:
                    built, _ctx = await session.payload_for(plan, dry_run=True)
                    payload = built.payload
                    # Without uploads the payload sent will be this one: no need to build it again.
                    prepared = None if built.uploads else payload
                else:
                    payload = plan.inputs
            except ValidationFailed as exc:
                found.errors.extend(_tag(exc.errors, plan))
                found.invalid.add(plan.key)
                continue
            except SpecError as exc:
                found.errors.extend(_tag([exc], plan))
                found.invalid.add(plan.key)
                continue
            found.count += 1
            if not found.receiver_conflict:
                try:
                    found.receiver = agreed(found.receiver, plan)
                except SpecError as exc:
                    found.errors.append(exc)
                    found.receiver_conflict = True  # said once, not once per job
            if found.jobs is not None:
                if len(found.jobs) < MAX_CHECKED_PLANS:
                    found.jobs.append(Job(plan, prepared))
                else:
                    found.jobs = None  # a huge batch is planned again while it runs, not held
            if keep:
                outcome = JobOutcome(plan.key, spec.name, str(spec.path), payload=redact.mask_obj(jsonable(payload)))
                if session.reporter.streams_payloads:
                    # Shown as it is built, not held: a 100,000-row dry run stays small.
                    session.reporter.rendered(outcome, header="would submit" if session.options.dry_run else None)
                else:
                    found.outcomes.append(outcome)
    if not found.errors:
        planner.check_selection(plan_filter, session.specs)
    return found


async def check_only(session: Session, planner: Planner, plan_filter: PlanFilter) -> RunReport:
    """validate, render and --dry-run: the check pass, and what it could not check."""
    opts = session.options
    keep = session.mode == "render" or opts.dry_run
    found = await check(session, planner, plan_filter, keep=keep)
    report = RunReport(run_id=None, outcomes=found.outcomes)
    if session.lock is not None:
        report.notes.append(f"checked against {session.lock.path} (no network)")
    elif session.client is None:
        why = "--offline was given" if opts.offline else "no service key is set (set OPUS_SERVICE_KEY, or pass --sandbox)"
        report.notes.append(
            f"the live workflow schema check was skipped because {why}: inputs were not checked "
            "against the workflow's types and required inputs, and file inputs were not checked"
        )
        missing = sorted(planner.templater.missing_secrets)
        if missing:
            report.notes.append("secrets not set, rendered as *** for this check: " + ", ".join(missing))
    if found.errors:
        raise ValidationFailed(found.errors)
    report.notes.insert(0, f"{found.count} job{'s' if found.count != 1 else ''} valid")
    return report


async def submit(session: Session, planner: Planner, plan_filter: PlanFilter) -> RunReport:
    """Check every job, then journal the run and take every valid job to its end."""
    opts = session.options
    found = await check(session, planner, plan_filter, keep=False, remember=True)
    report = RunReport(run_id=None)
    if found.errors:
        if not opts.keep_going or not found.invalid:
            # Without --keep-going nothing is submitted; with it, a spec that could not be
            # planned at all (no single bad job to skip) still stops the run.
            raise ValidationFailed(found.errors)
        report.skipped = found.errors
        for err in found.errors:
            # The problem's place goes along, for annotations (--format github).
            problem = (f"{format_key(err.key)}: " if err.key else "") + err.message
            where = {"file": err.file, "line": err.line, "problem": problem} if err.file else None
            session.reporter.message(f"skipped: {err}", level="warning", data=where)
    settings = session.receiver_settings(found.receiver)
    journal = session.open_journal()
    try:
        # The receiver is up before the run is journaled: a port in use stops it here.
        async with receiving(session, settings) as heard:
            run_id = journal.begin_run(
                argv=[str(a) for a in sys.argv],
                cwd=str(session.base),
                options={**opts.to_record(), "inputs": session.input_digests()},
            )
            session.run_id = report.run_id = run_id
            session.journal_secrets(planner, run_id)
            if found.jobs is not None:
                jobs: Iterable[Job] = found.jobs
            else:
                jobs = (Job(plan) for plan in planner.plans(session.specs, plan_filter) if plan.key not in found.invalid)
            info = run_info(session, run_id, resumed=False)
            await run_batch(session, info, jobs, count=found.count, report=report, listener=heard.begin(run_id))
        if report.skipped:
            report.exit_code = worst([report.exit_code, 1])
        journal.finish_run(run_id, report.exit_code)
        session.reporter.summary([o.row() for o in report.outcomes])
        return report
    finally:
        journal.close()


def run_info(session: Session, run_id: str, *, resumed: bool) -> RunInfo:
    """The run as the run-level hooks see it; its results are read from the journal."""
    journal = session.journal
    assert journal is not None

    def finished() -> list[JobResult]:
        return [result_of(r) for r in journal.jobs(run_id) if r.phase == Phase.FINISHED]

    return RunInfo(run_id=run_id, resumed=resumed, started_at=journal.get_run(run_id).started_at, read_results=finished)


async def run_batch(
    session: Session, run: RunInfo, jobs: Iterable[Job], *, count: int, report: RunReport, listener: Listener | None
) -> None:
    """Take every job to its end under the run's claim, framed by the run-level hooks; fill
    ``report.outcomes`` and ``report.exit_code`` (the worse of the jobs', the notifiers' and
    the hooks')."""
    host = session.host
    assert host is not None
    delivery = Delivery(session)
    runner = JobRunner(session, delivery, run.run_id, batch_size=count, listener=listener)
    ctx = session.run_context()
    async with session.owning(run.run_id):
        await host.run_started(run, ctx)
        session.reporter.start(count)
        report.outcomes = await _take_all(session, runner, delivery, jobs)
        codes = [o.exit_code for o in report.outcomes] + ([1] if delivery.notify_failed else [])
        report.exit_code = worst(codes)
        try:
            await host.run_finished(run, report, ctx)
        except Exception as exc:
            # What the hook was to write (a report of the whole run) is missing: the run failed.
            message = str(host.hook_failure("opus_run_finished", exc, "the jobs' results are kept"))
            session.reporter.message(redact.mask(message), level="error")
            report.notes.append(redact.mask(message))
            report.exit_code = worst([report.exit_code, 1])


async def _take_all(session: Session, runner: JobRunner, delivery: Delivery, jobs: Iterable[Job]) -> list[JobOutcome]:
    """Every job, ``concurrency`` at a time; one outcome per job, in the order of ``jobs``."""
    semaphore = asyncio.Semaphore(session.concurrency())
    outcomes: dict[int, JobOutcome] = {}
    tasks: set[asyncio.Task[None]] = set()

    async def take(index: int, job: Job) -> None:
        try:
            if job.record is not None and job.record.phase == Phase.FINISHED:
                outcomes[index] = await delivery.redeliver(job.plan, job.record)
            else:
                outcomes[index] = await runner.run(job.plan, job.record, job.prepared)
        except Exception as exc:  # asyncio.CancelledError is no Exception: Ctrl-C still stops
            outcome = outcomes[index] = JobOutcome(
                job.plan.key,
                job.plan.spec.name,
                str(job.plan.spec.path),
                job_id=job.record.job_id if job.record else None,
                status=job.record.status if job.record else None,
            )
            if isinstance(exc, OpusRunnerError):
                outcome.error, outcome.exit_code = redact.mask(str(exc)), exc.exit_code
                session.reporter.job_error(f"{job.plan.key}: {outcome.error}")
            else:
                unexpected(session, outcome, exc)
        finally:
            semaphore.release()
        outcome = outcomes[index]
        # One line per job once it is over (a --no-wait job is not: it said where to follow it).
        if outcome.error or outcome.status in TERMINAL_STATUSES or job.plan.wait.enabled:
            session.reporter.finished(outcome.row())

    try:
        for index, job in enumerate(jobs):
            await semaphore.acquire()
            task = asyncio.ensure_future(take(index, job))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)
    finally:
        for task in list(tasks):
            task.cancel()
    return [outcomes[i] for i in sorted(outcomes)]


def _tag(errors: Iterable[SpecError], plan: JobPlan) -> list[SpecError]:
    """Name the fanned-out job (matrix/foreach) an error belongs to; a lone job needs no name."""
    if plan.key == plan.spec.name:
        return list(errors)
    where = f"job {plan.key}" + (f", foreach row {plan.row_number}" if plan.row_number is not None else "")
    return [SpecError(f"{err.message} ({where})", file=err.file, key=err.key, line=err.line) for err in errors]
