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
from ..planning import JobPlan, PlanFailed, Planner, PlanFilter
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
    #: a spec could not be read or planned at all: no single job to skip (--keep-going stops too)
    whole_spec: bool = False


async def check(session: Session, planner: Planner, plan_filter: PlanFilter, *, keep: bool, remember: bool = False) -> Checked:
    """Plan and check every job (against the live schema when there is one), in one pass: the
    problems of specs that could not be read, of every job's templates and of every payload
    are found together. A problem shared by several jobs of a spec is reported once, with the
    jobs it affects (:class:`_Problems`)."""
    found = Checked(jobs=[] if remember else None)
    found.errors.extend(session.load_errors)
    found.whole_spec = bool(session.load_errors)
    live = session.client is not None or session.lock is not None
    for spec in session.specs:
        problems = _Problems()
        iterator = planner.plans_or_failures([spec], plan_filter)
        while True:
            try:
                plan = next(iterator)
            except StopIteration:
                break
            except SpecError as exc:  # planning stops for this spec (e.g. unreadable foreach file)
                problems.spec_wide.append(exc)
                break
            except ValidationFailed as exc:
                problems.spec_wide.extend(exc.errors)
                break
            if isinstance(plan, PlanFailed):
                problems.add(plan, plan.errors)
                found.invalid.add(plan.key)
                continue
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
                problems.add(plan, exc.errors)
                found.invalid.add(plan.key)
                continue
            except SpecError as exc:
                problems.add(plan, [exc])
                found.invalid.add(plan.key)
                continue
            problems.jobs += 1
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
        found.whole_spec = found.whole_spec or bool(problems.spec_wide)
        found.errors.extend(problems.merged())
    if not found.errors:
        planner.check_selection(plan_filter, session.specs)
    return found


#: Jobs named in "(in 37 of 200 jobs: rows 3, 9, 12, ...)", at most.
JOBS_NAMED = 5


class _Problems:
    """The problems of one spec's jobs, grouped: the same problem (file, key, line, message)
    in many jobs of a fan-out is one entry that counts and names the jobs it affects."""

    def __init__(self) -> None:
        self.jobs = 0  # jobs planned and checked, valid or not
        self.spec_wide: list[SpecError] = []  # problems of the spec itself (no job to name)
        self._groups: dict[tuple[Any, ...], tuple[SpecError, list[JobPlan | PlanFailed]]] = {}

    def add(self, plan: JobPlan | PlanFailed, errors: Iterable[SpecError]) -> None:
        self.jobs += 1
        for err in errors:
            group = (type(err), err.file, err.key, err.line, err.message)
            entry = self._groups.setdefault(group, (err, []))
            if not entry[1] or entry[1][-1] is not plan:  # a problem twice in one job counts once
                entry[1].append(plan)

    def merged(self) -> list[SpecError]:
        """Each problem once, in the order first found, with the jobs it affects named."""
        out = list(self.spec_wide)
        for err, plans in self._groups.values():
            suffix = _affected(plans, self.jobs)
            out.append(type(err)(f"{err.message} ({suffix})", file=err.file, key=err.key, line=err.line) if suffix else err)
        return out


def _affected(plans: list[JobPlan | PlanFailed], total: int) -> str:
    """Which jobs of a spec share a problem: none for a lone job, ``all 200 jobs``, ``job
    k, foreach row 3`` for one, ``in 37 of 200 jobs: rows 3, 9, 12, ...`` for some."""
    first = plans[0]
    if first.key == first.spec.name and total == 1:
        return ""  # the spec's only job: the file and key say it all
    if len(plans) == total and total > 1:
        return f"all {total} jobs"
    if len(plans) == 1:
        return f"job {first.key}" + (f", foreach row {first.row_number}" if first.row_number is not None else "")
    rows = list(dict.fromkeys(p.row_number for p in plans))
    if None not in rows:
        named = "rows " + ", ".join(str(r) for r in rows[:JOBS_NAMED])
        more = len(rows) > JOBS_NAMED
    else:
        named = ", ".join(p.key for p in plans[:JOBS_NAMED])
        more = len(plans) > JOBS_NAMED
    return f"in {len(plans)} of {total} jobs: {named}{', ...' if more else ''}"


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
        if not opts.keep_going or not found.invalid or found.whole_spec:
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
                jobs = (
                    Job(plan)
                    for plan in planner.plans_or_failures(session.specs, plan_filter)
                    if not isinstance(plan, PlanFailed) and plan.key not in found.invalid
                )
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
