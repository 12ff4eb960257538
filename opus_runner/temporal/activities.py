"""The activities a worker runs: initiate, execute, status and finish, each one step of one
job, done by the same parts as a local run (the session's client, plugins and payload
building, and the run engine's job and delivery steps).

A worker plans the run again from its own checkout: the chunk's history carries plan keys and
digests, never a payload, a secret or a file. A checkout whose specs or inputs differ from the
submitter's, or another opus-runner version, fails the job with both named, never runs another
spec.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from .. import redact
from ..__about__ import __version__
from ..engine.delivery import Delivery
from ..engine.job import JobRunner, transient
from ..engine.options import RunOptions
from ..engine.report import JobOutcome
from ..engine.session import Session, file_digest
from ..errors import ApiError, ExecuteRefused, NetworkError, OpusRunnerError, ValidationFailed
from ..models import JobEvent, JobResult
from ..planning import JobPlan, PlanFailed
from ..progress import Reporter, now_iso
from .definition import Executed, Finished, Initiated, JobRef, RunDefinition, title_marker

log = logging.getLogger("opus_runner.worker")
#: runs a worker keeps planned at once (each holds its plans, plugins and one HTTP client)
RUNS_KEPT = 8
#: pages of the job search read to find a job by its title marker (100 jobs a page)
MARKER_SEARCH_PAGES = 20


#: the client's retries of the activity running in this task (each activity is a task of its own)
_retries: contextvars.ContextVar[list[Any] | None] = contextvars.ContextVar("opus_runner_retries", default=None)


def _heard_retry(notice: Any) -> None:
    heard = _retries.get()
    if heard is not None:
        heard.append(notice)


class Final(ApplicationError):
    """A failure that trying again cannot change (the engine does not retry it)."""

    def __init__(self, message: str) -> None:
        super().__init__(redact.mask(message), non_retryable=True)


@dataclass
class PlannedRun:
    """One run as this worker planned it: its session (client, plugins) and its jobs."""

    definition: RunDefinition
    session: Session
    plans: dict[str, JobPlan]
    runner: JobRunner
    delivery: Delivery
    stack: contextlib.AsyncExitStack

    def plan(self, key: str) -> JobPlan:
        plan = self.plans.get(key)
        if plan is None:
            raise Final(
                f"run {self.definition.run_id} has no job {key!r} when planned on this worker: its specs or "
                "vars differ from the submitter's"
            )
        return plan


class WorkerLog(Reporter):
    """What a worker's jobs say (warnings, job errors, retries), as log lines of the worker."""

    LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}

    def message(self, text: str, *, level: str = "info", data: Any = None) -> None:
        log.log(self.LEVELS.get(level, logging.INFO), redact.mask(text))

    def retrying(self, notice: Any) -> None:
        _heard_retry(notice)
        log.info(redact.mask(notice.text()))


class WorkerRuntime:
    """What the activities of one worker share: the project checkout and the planned runs."""

    def __init__(self, root: Path, options: RunOptions, *, callback_key: bytes | None = None) -> None:
        self.root = root.resolve()
        #: the key callback tokens are signed with (from the secret shared with the receiver)
        self.callback_key = callback_key
        self.options = options
        self._runs: OrderedDict[str, PlannedRun] = OrderedDict()
        self._planning: dict[str, asyncio.Future[PlannedRun]] = {}

    async def run(self, definition: RunDefinition) -> PlannedRun:
        known = self._runs.get(definition.digest)
        if known is not None:
            self._runs.move_to_end(definition.digest)
            return known
        future = self._planning.get(definition.digest)
        if future is None:
            future = self._planning[definition.digest] = asyncio.ensure_future(self._plan(definition))
        try:
            planned = await asyncio.shield(future)
        finally:
            if future.done():
                self._planning.pop(definition.digest, None)
        return planned

    async def _plan(self, definition: RunDefinition) -> PlannedRun:
        check_checkout(self.root, definition)
        recorded = {name: definition.options.get(name) for name in definition.options}
        options = replace(
            self.options,
            specs=[str(self.root / path) for path in definition.specs],
            var=list(recorded.get("var") or []),
            vars_file=str(self.root / recorded["vars_file"]) if recorded.get("vars_file") else None,
            vars=recorded.get("vars"),
            only=list(recorded.get("only") or []),
            shard=recorded.get("shard"),
            limit=recorded.get("limit"),
            timeout=recorded.get("timeout"),
            wait_mode=recorded.get("wait_mode"),
            no_wait=bool(recorded.get("no_wait")),
            allow_outside_root=bool(recorded.get("allow_outside_root")),
            callback_public_url=recorded.get("callback_public_url"),
            mode="run",
        )
        session = Session(options, reporter=WorkerLog(), base=self.root)
        try:
            session.load_specs()
            session.load_plugins()
        except OpusRunnerError as exc:
            raise Final(f"run {definition.run_id} cannot be planned on this worker: {exc}") from None
        stack = contextlib.AsyncExitStack()
        await stack.enter_async_context(session.connection())
        try:
            planner = session.planner()
            plans = {
                plan.key: plan
                for plan in planner.plans_or_failures(session.specs, session.plan_filter())
                if not isinstance(plan, PlanFailed)
            }
        except (OpusRunnerError, ValidationFailed) as exc:
            await stack.aclose()
            raise Final(f"run {definition.run_id} cannot be planned on this worker: {exc}") from None
        session.run_id = definition.run_id
        delivery = Delivery(session)
        runner = JobRunner(session, delivery, definition.run_id, batch_size=len(plans))
        planned = PlannedRun(definition, session, plans, runner, delivery, stack)
        self._runs[definition.digest] = planned
        while len(self._runs) > RUNS_KEPT:
            _, old = self._runs.popitem(last=False)
            await old.stack.aclose()
        return planned

    async def aclose(self) -> None:
        while self._runs:
            _, old = self._runs.popitem()
            await old.stack.aclose()

    # -- the activities ------------------------------------------------------------------------

    @activity.defn(name="opus-runner.initiate")
    async def initiate(self, ref: JobRef) -> Initiated:
        async with _guarded(ref):
            run = await self.run(ref.run)
            plan = run.plan(ref.plan_key)
            session, runner = run.session, run.runner
            ctx = session.context(plan, plan.spec, dry_run=False)
            ctx.workflow = await session.schema_for(plan.workflow, ctx)
            marker = title_marker(ref.run.run_id, plan.key)
            if activity.info().attempt > 1:
                # An earlier attempt may have initiated a job the engine never heard of.
                found = await find_marked(session, plan.workflow.id, marker)
                if found:
                    log.info("%s: job %s found by its title marker, used instead of a new one", plan.key, found[0])
                    return Initiated(found[0], orphans=found[1:], reused=True)
            heard: list[Any] = []
            _retries.set(heard)
            job_id = await runner.initiate(plan, runner.workspaces(plan, ctx), title=f"{plan.title} {marker}")
            if any(n.call == "POST /job/initiate" and n.status is None for n in heard):
                # The client sent initiate again after a request that got no answer: the first
                # may have created a job too. The marker finds it, and the run reports it.
                others = [found for found in await find_marked(session, plan.workflow.id, marker) if found != job_id]
                return Initiated(job_id, orphans=others)
            return Initiated(job_id)

    @activity.defn(name="opus-runner.execute")
    async def execute(self, ref: JobRef) -> Executed:
        async with _guarded(ref):
            run = await self.run(ref.run)
            plan = run.plan(ref.plan_key)
            session, runner = run.session, run.runner
            assert session.client is not None and session.host is not None and ref.job_id is not None
            following = _following(plan)
            if activity.info().attempt > 1:
                # The last attempt may have sent the payload before its worker was lost.
                received, status = await session.client.execute_received(ref.job_id)
                if received:
                    return replace(following, status=status or "PENDING", resent=False)
                if received is None:
                    raise Final(
                        f"job {ref.job_id} ({plan.key}) may have received its payload from a worker that was lost, "
                        f"and Opus does not show whether it did (status {status}); it was not sent again. Check it in Opus"
                    )
            built, ctx = await session.payload_for(plan, dry_run=False)
            ctx.job_id = ref.job_id
            await session.host.payload_ready(built.payload, ctx)
            workspaces = runner.workspaces(plan, ctx)
            try:
                execution = await runner.execute(plan, ref.job_id, built.payload, workspaces, self._callback_url(run, plan, ref.job_id))
            except ExecuteRefused as exc:
                return replace(following, refused=True, error=redact.mask(str(exc.message)), status="FAILED")
            status = execution.status or "PENDING"
            await run.delivery.event(JobEvent("submitted", ref.job_id, plan.spec.name, status, plan.key), plan, ctx)
            return replace(following, status=status, resent=True)

    def _callback_url(self, run: PlannedRun, plan: JobPlan, job_id: str) -> str:
        """The job's signed callback URL when it waits for its callback, else what a local run
        would send (the spec's callback.url, the project's, or the placeholder)."""
        public_url = run.definition.options.get("callback_public_url")
        if public_url and plan.wait.mode != "poll" and not plan.callback_url:
            from ..callbacks.tokens import ENGINE_SECRET_ENV, callback_url, signed_token

            if self.callback_key is None:
                raise Final(
                    f"run {run.definition.run_id} is woken by callbacks at {public_url}, and this worker has no "
                    f"{ENGINE_SECRET_ENV} to sign them with; set it to the secret the receiver was started with"
                )
            return callback_url(public_url, signed_token(self.callback_key, activity.info().workflow_id, plan.key, job_id))
        return run.runner.callback_url(plan, 0, job_id)

    @activity.defn(name="opus-runner.status")
    async def status(self, ref: JobRef) -> str:
        async with _guarded(ref):
            run = await self.run(ref.run)
            assert run.session.client is not None and ref.job_id is not None
            return await run.session.client.status(ref.job_id)

    @activity.defn(name="opus-runner.finish")
    async def finish(self, ref: JobRef) -> Finished:
        """Results, outputs and the job's end event; delivered again only where an earlier
        attempt may not have (the outputs check their target on redelivery)."""
        async with _guarded(ref):
            run = await self.run(ref.run)
            plan = run.plan(ref.plan_key)
            session, runner = run.session, run.runner
            assert ref.job_id is not None and ref.status is not None
            ctx = session.context(plan, plan.spec, dry_run=False)
            ctx.job_id = ref.job_id
            ctx.redelivery = activity.info().attempt > 1
            with contextlib.suppress(OpusRunnerError):
                ctx.workflow = await session.schema_for(plan.workflow, ctx)
            if ref.status == "FAILED" and ref.error:  # refused at execute: the platform's words
                result = JobResult(
                    job_id=ref.job_id, status="FAILED", spec_name=plan.spec.name, plan_key=plan.key,
                    title=plan.title, finished_at=now_iso(), error=ref.error,
                )
            else:
                result = await runner.ending(plan, ref.job_id, ref.status.upper(), gave_up=ref.gave_up)
            outcome = JobOutcome(plan.key, plan.spec.name, str(plan.spec.path), job_id=ref.job_id, status=result.status)
            await run.delivery.deliver(plan, result, None, ctx, outcome)  # type: ignore[arg-type]
            await runner.ended(plan, result, ctx)
            return Finished(result.status, result.error, delivered=outcome.delivered, failed=outcome.delivery_failures)

    def activities(self) -> list[Any]:
        return [self.initiate, self.execute, self.status, self.finish]


def _following(plan: JobPlan) -> Executed:
    wait = plan.wait
    return Executed(
        wait=wait.enabled,
        timeout=float(wait.timeout),
        poll_interval=float(wait.poll_interval),
        max_interval=float(wait.max_interval),
        mode=wait.mode,
        safety_interval=float(wait.safety_interval),
    )


def check_checkout(root: Path, definition: RunDefinition) -> None:
    """Refuse a run submitted with another opus-runner, or from other files than this checkout's."""
    if definition.version != __version__:
        raise Final(
            f"run {definition.run_id} was submitted with opus-runner {definition.version} and this worker runs "
            f"{__version__}; run workers of the submitter's version (pip install 'opus-runner=={definition.version}')"
        )
    for path, digest in sorted(definition.inputs.items()):
        here = file_digest(root / path)
        if here != digest:
            raise Final(
                f"{path} on this worker (sha256 {here[:12]}) is not the file run {definition.run_id} was submitted "
                f"with (sha256 {digest[:12]}); check out the submitter's commit in {root} on every worker"
            )


async def find_marked(session: Session, workflow_id: str, marker: str) -> list[str]:
    """The jobs of ``workflow_id`` whose title carries ``marker``, oldest first."""
    client = session.client
    assert client is not None
    found: list[tuple[str, str]] = []
    for page in range(MARKER_SEARCH_PAGES):
        body = await client.search_jobs(workflow_id=workflow_id, offset=page * 100, max_results=100)
        items = body.get("jobs") if isinstance(body, dict) else body
        if not isinstance(items, list) or not items:
            break
        for item in items:
            if isinstance(item, dict) and marker in str(item.get("title") or ""):
                job_id = item.get("jobExecutionId") or item.get("id")
                if job_id is not None:
                    found.append((str(item.get("createdAt") or ""), str(job_id)))
        if len(items) < 100:
            break
    found.sort()
    return [job_id for _, job_id in found]


@contextlib.asynccontextmanager
async def _guarded(ref: JobRef) -> Any:
    """Heartbeats while the step runs (a lost worker is noticed within the heartbeat timeout),
    and opus-runner's errors as the engine must see them: transient ones retried, the rest final."""

    async def beat() -> None:
        while True:
            activity.heartbeat()
            await asyncio.sleep(max(0.5, ref.run.heartbeat / 3))

    beating = asyncio.ensure_future(beat())
    try:
        yield
    except ApplicationError:
        raise
    except (ApiError, NetworkError) as exc:
        message = redact.mask(f"{ref.plan_key}: {exc}")
        if transient(exc):
            raise ApplicationError(message) from None
        raise Final(message) from None
    except OpusRunnerError as exc:
        raise Final(f"{ref.plan_key}: {exc}") from None
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # a bug or a plugin's unexpected error: the job ends with it
        log.debug("unexpected error in %s", ref.plan_key, exc_info=exc)
        raise Final(f"{ref.plan_key}: unexpected error: {type(exc).__name__}: {exc}") from None
    finally:
        beating.cancel()
