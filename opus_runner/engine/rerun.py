"""``opus-run rerun --failed``: a new run of the jobs of an earlier run that failed, were
cancelled or timed out, with that run's options unless the command line says otherwise.

Each job is planned from its journal record (its matrix combination and foreach row as they
were, ``Planner.plan_from_record``), never re-planned from the data files, and checked like a
run's jobs before anything is sent. Every job is journaled before the first is sent and the run
records ``rerun_of``, so a resume of the rerun finishes exactly these jobs.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..config import load_project_config
from ..errors import SpecError, UsageError, ValidationFailed
from ..planning import JobPlan
from ..progress import Reporter
from ..state import JobRecord, Journal, RunRecord
from .batch import Job, run_batch, run_info
from .delivery import check_targets
from .job import journal_plan
from .listening import agreed_by, receiving
from .options import ResumedOptions, RunOptions
from .report import RunReport
from .session import Session, file_digest, open_journal

#: The statuses ``--failed`` picks: every end but COMPLETED (the runner's give-up is TIMED_OUT).
RERUN_STATUSES = frozenset({"FAILED", "CANCELLED", "STOPPED", "TIMED_OUT"})


def failed_jobs(journal: Journal, run_id: str) -> list[JobRecord]:
    """The jobs of run ``run_id`` that ended FAILED, CANCELLED, STOPPED or TIMED_OUT, in plan order."""
    return [r for r in journal.jobs(run_id) if r.status in RERUN_STATUSES]


def rerun_options(options: RunOptions, run: RunRecord) -> ResumedOptions:
    """The options of the run, with the command line's winning (as resume takes them), its
    ``--var`` added after the run's, and a fresh in-process sandbox for a run that had one."""
    trust = options.from_record(run.options, run_id=run.run_id)
    resumed = trust.options
    sandbox = options.sandbox or (bool(run.options.get("sandbox")) and not options.base_url)
    return replace(trust, options=replace(
        resumed,
        var=[*resumed.var, *options.var],
        sandbox=sandbox,
        no_wait=options.no_wait,
        keep_going=False,
        mode="run",
    ))


async def rerun(
    options: RunOptions,
    run_id: str | None = None,
    *,
    reporter: Reporter | None = None,
    attach: Callable[[Session], None] = lambda session: None,
) -> RunReport:
    """Run again the failed, cancelled and timed-out jobs of run ``run_id`` (default: the latest
    run) as a new run; ``attach`` is given the session as soon as it exists."""
    journal = open_journal(options, load_project_config())
    try:
        run = journal.get_run(run_id) if run_id else journal.latest_run()
        if run is None:
            raise UsageError(f"nothing to rerun: {journal.path} holds no runs yet")
        records = failed_jobs(journal, run.run_id)
        if not records:
            raise UsageError(
                f"nothing to rerun: no job of run {run.run_id} failed, was cancelled or timed out "
                f"(see them with: opus-run status {run.run_id})"
            )
        trust = rerun_options(options, run)
        opts = trust.options
        cwd = Path(run.cwd)
        session = Session(opts, reporter=reporter, base=cwd if cwd.is_dir() else None, trust=trust, journal=journal)
        attach(session)
        session.load_specs()
        session.load_plugins()
        check_targets(session)
        planner = session.planner()
        specs = {str(spec.path): spec for spec in session.specs}
        plans = []
        for record in records:
            spec = specs.get(record.spec_path)
            if spec is None:
                raise UsageError(
                    f"job {record.plan_key} of run {run.run_id} came from {record.spec_path}, which the run's "
                    "specs no longer include; it cannot be rerun"
                )
            plans.append(planner.plan_from_record(spec, record.plan))
        report = RunReport(run_id=None)
        settings = session.receiver_settings(agreed_by(plans))
        async with session.connection(), receiving(session, settings) as heard:
            checked = await _check(session, plans)
            new_id = journal.begin_run(
                argv=[str(a) for a in sys.argv],
                cwd=str(session.base),
                options={**opts.to_record(), "inputs": session.input_digests(), "rerun_of": run.run_id},
            )
            session.run_id = report.run_id = new_id
            session.journal_secrets(planner, new_id)
            jobs = [_journaled(journal, new_id, *entry) for entry in checked]
            info = run_info(session, new_id, resumed=False)
            await run_batch(session, info, jobs, count=len(jobs), report=report, listener=heard.begin(new_id))
        journal.finish_run(new_id, report.exit_code)
        session.reporter.summary([o.row() for o in report.outcomes])
        return report
    finally:
        journal.close()


#: A checked job, its payload (file inputs hold placeholders) and its local files' digests.
Checked = tuple[Job, dict[str, Any], dict[str, str]]


async def _check(session: Session, plans: list[JobPlan]) -> list[Checked]:
    """Build every job's payload against the live schema before anything is sent (all problems
    at once)."""
    errors: list[SpecError] = []
    checked: list[Checked] = []
    for plan in plans:
        try:
            built, _ctx = await session.payload_for(plan, dry_run=True)
        except ValidationFailed as exc:
            errors.extend(exc.errors)
            continue
        except SpecError as exc:
            errors.append(exc)
            continue
        files = {str(path): file_digest(path) for path in built.files}
        # Without uploads the payload sent is this one; with them it is built again when sent.
        checked.append((Job(plan, None if built.uploads else built.payload), built.payload, files))
    if errors:
        raise ValidationFailed(errors)
    return checked


def _journaled(journal: Journal, run_id: str, job: Job, payload: dict[str, Any], files: dict[str, str]) -> Job:
    """The job with its journal row, planned: a resume of the rerun finds every job in the
    journal, none from the data files. Its payload is the checked one: resume compares file
    inputs by ``files`` (their content digests), not by their values."""
    plan = job.plan
    row_id = journal_plan(journal, run_id, plan, payload, files)
    return replace(job, record=journal.job(row_id))
