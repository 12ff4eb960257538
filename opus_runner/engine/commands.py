"""The commands of the engine: run (validate, render), resume, and the schema look-ups of
``opus-run lock``, ``drift``, ``schema`` and ``init``. Each makes one :class:`Session`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, NotFoundError, SpecError, UsageError, ValidationFailed
from ..models import WorkflowRef, WorkflowSchema
from ..progress import Reporter
from ..spec import Spec
from .batch import check_only, submit
from .delivery import check_targets
from .options import RunOptions
from .report import RunReport
from .resume import resume
from .session import Session

if TYPE_CHECKING:  # pragma: no cover
    from ..api import OpusClient
    from ..planning import JobPlan
    from ..config import ProjectConfig


class Runner:
    """Runs (or validates, or renders, or resumes) a batch of specs. Create one per command."""

    def __init__(self, options: RunOptions, *, reporter: Reporter | None = None) -> None:
        self.options = options
        self.reporter = reporter or Reporter()
        #: the set-up of the command, once it began
        self.session: Session | None = None

    @property
    def run_id(self) -> str | None:
        return self.session.run_id if self.session else None

    @property
    def client(self) -> OpusClient | None:
        return self.session.client if self.session else None

    @property
    def config(self) -> ProjectConfig | None:
        return self.session.config if self.session else None

    def _session(self, **kwargs: Any) -> Session:
        self.session = Session(self.options, reporter=self.reporter, **kwargs)
        return self.session

    async def run(self) -> RunReport:
        """Validate, render or run the batch, per ``options.mode``."""
        opts = self.options
        if opts.output_format not in ("text", "json", "github"):
            raise UsageError(f"--format must be text, json or github, found {opts.output_format!r}")
        session = self._session()
        session.load_specs(defer_errors=True)
        session.load_plugins()
        check_targets(session)
        if opts.locked:
            if opts.mode == "run" and not opts.dry_run:
                raise UsageError("--locked checks specs against opus-runner.lock; it applies to validate, render and --dry-run")
            from ..lockfile import load_lock

            assert session.config is not None
            session.lock = load_lock(session.config.root)
            session.lock.check_api(session.api)
        planner = session.planner()
        plan_filter = session.plan_filter()
        async with session.connection():
            if opts.mode in ("validate", "render") or opts.dry_run:
                return await check_only(session, planner, plan_filter)
            return await submit(session, planner, plan_filter)

    async def resume(self, run_id: str | None = None) -> RunReport:
        """Finish an interrupted run from the journal, executing nothing twice (run/resume.py)."""
        return await resume(self.options, run_id, reporter=self.reporter, attach=self._attach)

    def _attach(self, session: Session) -> None:
        self.session = session

    async def collect_schemas(self, *, live: bool = True) -> list[tuple[Spec, WorkflowRef, WorkflowSchema | None]]:
        """Every (spec, workflow ref) the specs use, with the live schema of each (``opus-run
        lock`` and ``drift``). Refs come from every planned job, so templated versions count.
        ``live=False`` returns None for the schemas (no key needed)."""
        session = self._session(mode="validate")
        session.load_specs()
        session.load_plugins()
        seen: dict[tuple[str, str], JobPlan] = {}
        for plan in session.planner().plans(session.specs):
            seen.setdefault((str(plan.spec.path), plan.workflow.key), plan)
        if not live:
            return [(plan.spec, plan.workflow, None) for plan in seen.values()]
        out: list[tuple[Spec, WorkflowRef, WorkflowSchema | None]] = []
        unknown: list[SpecError] = []
        async with session.connection():
            if session.client is None:
                from ..api import NO_KEY_MESSAGE

                raise ConfigError(NO_KEY_MESSAGE)
            for plan in seen.values():
                ctx = session.context(None, plan.spec, dry_run=True)
                try:
                    out.append((plan.spec, plan.workflow, await session.schema_for(plan.workflow, ctx)))
                except NotFoundError as exc:
                    # A spec naming an unknown workflow is the spec's error (exit 2), as in run.
                    unknown.append(await session._not_found(plan, exc))
        if unknown:
            raise ValidationFailed(unknown)
        return out

    async def workflow_schema(self, ref: WorkflowRef) -> WorkflowSchema:
        """One workflow's inputs through the ``opus_workflow_schema`` hook (``opus-run schema``,
        ``init``), outside any spec."""
        session = self._session(mode="schema")
        session.load_plugins()
        async with session.connection():
            return await session.schema_for(ref, session.run_context())


def run(specs: str | Path | Sequence[str | Path], **options: Any) -> RunReport:
    """Run specs from Python code, with the same options as the command line.

    ``opus_runner.run("specs/summarize.yaml", sandbox=True, vars={"month": "2026-11"})``
    returns a :class:`RunReport` (``report.results``, ``report.exit_code``). Errors that stop the
    whole run raise :class:`~opus_runner.errors.OpusRunnerError` subclasses.
    """
    import asyncio

    return asyncio.run(arun(specs, **options))


async def arun(
    specs: str | Path | Sequence[str | Path], *, reporter: Reporter | None = None, **options: Any
) -> RunReport:
    """The async variant of :func:`run`, for event loops that already run (orchestrators, workers)."""
    if isinstance(specs, (str, Path)):
        specs = [specs]
    opts = RunOptions(specs=list(specs), **options)
    return await Runner(opts, reporter=reporter).run()
