"""``opus-run resume``: finish an interrupted run from its journal, executing nothing twice.

Jobs never initiated are run; initiated ones are executed (unless the platform shows they
already started); executed ones are followed; finished ones get the outputs that were not
delivered delivered again. Every job is in the report, however its resumption ended.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from pathlib import Path

from .. import redact
from ..config import load_project_config
from ..errors import OpusRunnerError, UsageError
from ..paths import display_path
from ..planning import Planner
from ..progress import Reporter
from ..state import JobRecord, Journal, Phase, RunRecord
from .batch import Job, run_batch, run_info
from .listening import agreed_by, receiving
from .options import RunOptions
from .report import RunReport, worst
from .session import Session, environ_of, open_journal


async def resume(
    options: RunOptions,
    run_id: str | None = None,
    *,
    reporter: Reporter | None = None,
    attach: Callable[[Session], None] = lambda session: None,
) -> RunReport:
    """Resume run ``run_id`` (default: the latest unfinished run of the project here) with
    ``options`` (the command line's: they win over the journal's). ``attach`` is given the
    session as soon as it exists (the CLI names the run when interrupted)."""
    journal = open_journal(options, load_project_config())
    claimed: str | None = None
    try:
        run, used_secrets = _resumable(journal, options, run_id)
        # One owner at a time: a run whose process is alive is not resumed beside it.
        journal.claim_run(run.run_id)
        claimed = run.run_id
        resumed = options.from_record(run.options, run_id=run.run_id)
        # Spec and vars-file paths were recorded as given, relative to the run's folder.
        cwd = Path(run.cwd)
        session = Session(
            resumed.options, reporter=reporter, base=cwd if cwd.is_dir() else None, trust=resumed, journal=journal
        )
        session.run_id = run.run_id
        attach(session)
        session.load_specs()
        session.load_plugins()
        planner = session.planner()
        session.journal_secrets(planner, run.run_id, used_secrets)
        records = {r.plan_key: r for r in journal.jobs(run.run_id)}
        # A rerun journaled every job it has before sending the first: nothing to plan from files.
        from_files = not run.options.get("rerun_of")
        jobs, refused, changed = _resume_plan(session, planner, records, run.options.get("inputs"), from_files=from_files)
        report = RunReport(run_id=run.run_id)
        settings = session.receiver_settings(agreed_by(job.plan for job in jobs))
        async with session.connection(), receiving(session, settings) as heard:
            info = run_info(session, run.run_id, resumed=True)
            listener = heard.begin(run.run_id)
            await run_batch(session, info, jobs, count=len(jobs), report=report, listener=listener)
        if refused:
            shown = ", ".join(display_path(Path(c)) for c in changed)
            report.notes.append(
                f"{len(refused)} job{'s' if len(refused) != 1 else ''} of run {run.run_id} not started: "
                f"{shown} changed since the run began, so {'they' if len(refused) != 1 else 'it'} would "
                "be planned from other data; the jobs already started were finished as recorded. "
                f"To plan the rest from the files as they are now: opus-run resume {run.run_id} --replan"
            )
            session.reporter.message(report.notes[-1], level="error")
            report.exit_code = worst([report.exit_code, 2])
            journal.release_run(run.run_id)  # unfinished on purpose: resume --replan continues it
        else:
            journal.finish_run(run.run_id, report.exit_code)
        session.reporter.summary([o.row() for o in report.outcomes])
        return report
    finally:
        if claimed is not None:
            # However the resume ended (a spec that no longer loads, a refusal, Ctrl-C),
            # the claim goes with it: only a process that is still running holds a run.
            with contextlib.suppress(OpusRunnerError):
                journal.release_run(claimed)
        journal.close()


def _resumable(journal: Journal, options: RunOptions, run_id: str | None) -> tuple[RunRecord, dict[str, str]]:
    """The run to resume, and the secrets it used (checked against the environment's)."""
    run = journal.get_run(run_id) if run_id else journal.latest_run(unfinished_only=True)
    if run is None:
        raise UsageError(f"nothing to resume: every run in {journal.path} is finished")
    recorded = run.options
    if recorded.get("sandbox"):
        raise UsageError(
            f"run {run.run_id} ran against an in-process --sandbox, which ended with it; "
            "there is nothing left to resume"
        )
    # Before anything is rendered or written: with another value than the run used, an
    # old value echoed back by a workflow would not be masked.
    used_secrets = journal.verify_secrets(run.run_id, environ_of(options))
    recorded_url = recorded.get("base_url")
    if not options.base_url and isinstance(recorded_url, str) and redact.MASK in recorded_url:
        raise UsageError(
            f"run {run.run_id} ran against {redact.without_userinfo(recorded_url)} with a password in "
            "the URL, which the journal does not keep; pass the URL again with --base-url"
        )
    return run, used_secrets


def _resume_plan(
    session: Session,
    planner: Planner,
    records: Mapping[str, JobRecord],
    recorded_inputs: Mapping[str, str] | None,
    *,
    from_files: bool = True,
) -> tuple[list[Job], list[str], list[str]]:
    """What a resume runs: every journaled job from its own record (its row and matrix as
    they were), then the plans the run never journaled, from the files. When those files
    changed since the run began, jobs not yet initiated are not started unless --replan.

    Returns ``(jobs, refused plan keys, changed files)``.
    """
    current = session.input_digests()
    before = dict(recorded_inputs or current)  # runs journaled before digests were kept
    changed = sorted(p for p in set(before) | set(current) if before.get(p) != current.get(p))
    replan = bool(changed) and session.options.replan
    specs = {str(spec.path): spec for spec in session.specs}
    jobs: list[Job] = []
    refused: list[str] = []
    for key, record in records.items():
        spec = specs.get(record.spec_path)
        if spec is None:
            continue  # a spec no longer given: load_specs has already said so
        if changed and record.phase == Phase.PLANNED and not replan:
            refused.append(key)
            continue
        jobs.append(Job(planner.plan_from_record(spec, record.plan), record=record))
    for plan in planner.plans(session.specs, session.plan_filter()) if from_files else ():
        if plan.key in records:
            continue
        if changed and not replan:
            refused.append(plan.key)
            continue
        jobs.append(Job(plan))
    return jobs, refused, changed
