"""The activities a worker runs: the steps ``initiate``, ``execute`` and ``check``, each for
some jobs of a run, each job done by the same parts as a local run (the session's client,
plugins and payload building, and the run engine's job and delivery steps).

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
from collections.abc import Awaitable, Callable
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
from ..models import TERMINAL_STATUSES, JobEvent, JobResult
from ..planning import JobPlan, PlanFailed
from ..progress import Reporter, now_iso
from .definition import JobAnswer, JobStep, RunDefinition, StepInput, StepResult, title_marker

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


class GivenUp(OpusRunnerError):
    """The engine gave up this attempt of the step (another worker takes it): send nothing more."""


def _unless_given_up() -> None:
    """Before an initiate or execute is sent: a step the engine gave up (its heartbeat timed
    out, and its work moved to another worker) sends nothing more, or the two could both send."""
    if activity.is_cancelled():
        raise GivenUp("the engine gave this step to another worker; nothing more was sent from this one")


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

    def __init__(self, root: Path, options: RunOptions, *, callback_key: bytes | None = None, concurrency: int = 50) -> None:
        self.root = root.resolve()
        self.concurrency = concurrency
        self._slots: asyncio.Semaphore | None = None
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
        """Plan the run as its submitter did. The checking, reading and planning happen in a
        thread: a thousand rows take seconds of CPU, and the worker's loop must keep sending
        heartbeats meanwhile, or the engine takes the worker for lost."""
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
            api=recorded.get("api"),
            mode="run",
        )
        session = Session(options, reporter=WorkerLog(), base=self.root)

        def read() -> None:
            check_checkout(self.root, definition)
            session.load_specs()
            session.load_plugins()

        def plan_all() -> dict[str, JobPlan]:
            planner = session.planner()
            return {
                plan.key: plan
                for plan in planner.plans_or_failures(session.specs, session.plan_filter())
                if not isinstance(plan, PlanFailed)
            }

        try:
            await asyncio.to_thread(read)
        except OpusRunnerError as exc:
            raise Final(f"run {definition.run_id} cannot be planned on this worker: {exc}") from None
        stack = contextlib.AsyncExitStack()
        await stack.enter_async_context(session.connection())
        try:
            plans = await asyncio.to_thread(plan_all)
        except (OpusRunnerError, ValidationFailed) as exc:
            await stack.aclose()
            raise Final(f"run {definition.run_id} cannot be planned on this worker: {exc}") from None
        session.run_id = definition.run_id
        delivery = Delivery(session)
        runner = JobRunner(session, delivery, definition.run_id, batch_size=len(plans))
        runner.before_write = _unless_given_up
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

    # -- the steps ------------------------------------------------------------------------------

    @activity.defn(name="opus-runner.initiate")
    async def initiate(self, step: StepInput) -> StepResult:
        async with Stepping(self, step) as stepping:
            run = stepping.run
            marked: dict[str, list[str]] | None = None
            await stepping.wait_out_lost_attempt()
            if activity.info().attempt > 1:
                # An earlier attempt may have initiated jobs the engine never heard of: one
                # look through the workflows' jobs finds them by their title markers.
                marked = await find_marked(run, [run.plan(job.plan_key) for job in step.jobs if job.plan_key in run.plans])

            async def one(job: JobStep) -> JobAnswer:
                plan = run.plan(job.plan_key)
                session, runner = run.session, run.runner
                marker = title_marker(run.definition.run_id, plan.key)
                found = (marked or {}).get(marker) or []
                if found:
                    log.info("%s: job %s found by its title marker, used instead of a new one", plan.key, found[0])
                    return JobAnswer(plan.key, job_id=found[0], orphans=found[1:])
                ctx = session.context(plan, plan.spec, dry_run=False)
                ctx.workflow = await session.schema_for(plan.workflow, ctx)
                heard: list[Any] = []
                _retries.set(heard)
                job_id = await runner.initiate(plan, runner.workspaces(plan, ctx), title=f"{plan.title} {marker}")
                if any(n.call == "POST /job/initiate" and n.status is None for n in heard):
                    # The client sent initiate again after a request that got no answer: the
                    # first may have created a job too. The marker finds it; the run reports it.
                    again = await find_marked(run, [plan])
                    return JobAnswer(plan.key, job_id=job_id, orphans=[j for j in again.get(marker, []) if j != job_id])
                return JobAnswer(plan.key, job_id=job_id)

            return await stepping.each(one)

    @activity.defn(name="opus-runner.execute")
    async def execute(self, step: StepInput) -> StepResult:
        async with Stepping(self, step) as stepping:
            run = stepping.run
            retried = activity.info().attempt > 1
            await stepping.wait_out_lost_attempt()

            async def one(job: JobStep) -> JobAnswer:
                plan = run.plan(job.plan_key)
                session, runner = run.session, run.runner
                assert session.client is not None and session.host is not None and job.job_id is not None
                following = _following(plan)
                if retried:
                    # The last attempt may have sent the payload before its worker was lost.
                    received, status = await session.client.execute_received(job.job_id)
                    if received:
                        return replace(following, status=status or "PENDING")
                    if received is None:
                        raise Final(
                            f"job {job.job_id} ({plan.key}) may have received its payload from a worker that was lost, "
                            f"and Opus does not show whether it did (status {status}); it was not sent again. Check it in Opus"
                        )
                built, ctx = await session.payload_for(plan, dry_run=False)
                ctx.job_id = job.job_id
                await session.host.payload_ready(built.payload, ctx)
                workspaces = runner.workspaces(plan, ctx)
                try:
                    execution = await runner.execute(plan, job.job_id, built.payload, workspaces, self._callback_url(run, plan, job.job_id))
                except ExecuteRefused as exc:
                    return replace(following, refused=True, reason=redact.mask(str(exc.message)), status="FAILED")
                status = execution.status or "PENDING"
                await run.delivery.event(JobEvent("submitted", job.job_id, plan.spec.name, status, plan.key), plan, ctx)
                return replace(following, status=status)

            return await stepping.each(one)

    @activity.defn(name="opus-runner.check")
    async def check(self, step: StepInput) -> StepResult:
        """Each job's status (``job.status`` None), and for each that ended (or whose wait ran
        out, or whose execute was refused): results, outputs and its end event, delivered
        again only where an earlier attempt may not have (the outputs check their target on
        redelivery)."""
        async with Stepping(self, step) as stepping:
            run = stepping.run
            redelivery = activity.info().attempt > 1

            async def one(job: JobStep) -> JobAnswer:
                plan = run.plan(job.plan_key)
                session, runner = run.session, run.runner
                assert session.client is not None and job.job_id is not None
                status = job.status
                if status is None:
                    try:
                        status = await session.client.status(job.job_id)
                    except (ApiError, NetworkError) as exc:
                        if not transient(exc):
                            raise
                        log.warning(redact.mask(f"{plan.key}: the status of job {job.job_id} could not be read ({exc}); reading it again later"))
                        return JobAnswer(plan.key)
                    if status.upper() not in TERMINAL_STATUSES:
                        return JobAnswer(plan.key, status=status)
                ctx = session.context(plan, plan.spec, dry_run=False)
                ctx.job_id = job.job_id
                ctx.redelivery = redelivery
                with contextlib.suppress(OpusRunnerError):
                    ctx.workflow = await session.schema_for(plan.workflow, ctx)
                if job.error:  # refused at execute: the platform's words
                    result = JobResult(
                        job_id=job.job_id, status="FAILED", spec_name=plan.spec.name, plan_key=plan.key,
                        title=plan.title, finished_at=now_iso(), error=job.error,
                    )  # fmt: skip
                else:
                    result = await runner.ending(plan, job.job_id, status.upper(), gave_up=job.gave_up)
                outcome = JobOutcome(plan.key, plan.spec.name, str(plan.spec.path), job_id=job.job_id, status=result.status)
                await run.delivery.deliver(plan, result, None, ctx, outcome)  # type: ignore[arg-type]
                await runner.ended(plan, result, ctx)
                return JobAnswer(
                    plan.key, status=result.status, finished=True, reason=result.error,
                    delivered=outcome.delivered, failed=outcome.delivery_failures,
                )  # fmt: skip

            return await stepping.each(one)

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

    def slots(self) -> asyncio.Semaphore:
        """Jobs in flight on this worker at once, over all its steps (made on the worker's loop)."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.concurrency)
        return self._slots

    def activities(self) -> list[Any]:
        return [self.initiate, self.execute, self.check]


class Stepping:
    """One step for its jobs: the run planned, each job done once (the answers of an attempt
    lost with its worker are in its last heartbeat, and are not done again), heartbeats while
    it works, and each job's own failure kept to that job."""

    def __init__(self, runtime: WorkerRuntime, step: StepInput) -> None:
        self.runtime = runtime
        self.step = step
        self.done: dict[str, JobAnswer] = {}
        self.run: PlannedRun = None  # type: ignore[assignment]
        self._beating: asyncio.Future[None] | None = None

    async def __aenter__(self) -> Stepping:
        details = activity.info().heartbeat_details
        if details:
            for raw in details[0] or []:
                answer = JobAnswer(**raw)
                self.done[answer.plan_key] = answer
        self._beating = asyncio.ensure_future(self._beat())
        try:
            self.run = await self.runtime.run(self.step.run)
        except BaseException:
            self._beating.cancel()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._beating is not None:
            self._beating.cancel()

    async def _beat(self) -> None:
        from dataclasses import asdict

        while True:
            activity.heartbeat([asdict(a) for a in self.done.values()])
            await asyncio.sleep(max(0.5, self.step.run.heartbeat / 3))

    async def each(self, one: Callable[[JobStep], Awaitable[JobAnswer]]) -> StepResult:
        slots = self.runtime.slots()

        async def guarded(job: JobStep) -> JobAnswer:
            if job.plan_key in self.done:
                return self.done[job.plan_key]
            async with slots:
                try:
                    answer = await one(job)
                except ApplicationError as exc:
                    answer = JobAnswer(job.plan_key, error=exc.message)
                except OpusRunnerError as exc:
                    answer = JobAnswer(job.plan_key, error=redact.mask(f"{job.plan_key}: {exc}"))
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # a bug or a plugin's unexpected error: this job ends with it
                    log.debug("unexpected error in %s", job.plan_key, exc_info=exc)
                    answer = JobAnswer(job.plan_key, error=redact.mask(f"{job.plan_key}: unexpected error: {type(exc).__name__}: {exc}"))
            if answer.error:
                log.error(answer.error)
            self.done[job.plan_key] = answer
            return answer

        # Cancelling a request mid-answer can leave its connection taken for good (httpcore
        # cannot shield a native cancel), so a step the engine gives up is not cancelled under
        # its jobs: each ends its call in flight, and sends nothing new (_unless_given_up).
        work = asyncio.gather(*(guarded(job) for job in self.step.jobs))
        return StepResult(list(await asyncio.shield(work)))

    async def wait_out_lost_attempt(self) -> None:
        """Before a retried step sends anything: a lost attempt whose worker is still alive may
        have a request in flight (until its whole-answer deadline), which must land or fail
        before this one looks at what Opus has. Its worker went unheard for the heartbeat
        timeout already; the rest of the deadline is waited here."""
        if activity.info().attempt <= 1:
            return
        config = self.run.session.config
        deadline = config.timeouts.request if config is not None else 60.0
        pause = deadline - self.step.run.heartbeat
        if pause > 0 and any(job.plan_key not in self.done for job in self.step.jobs):
            log.info("a retried step waits %.0f s for requests its lost attempt may still have in flight", pause)
            await asyncio.sleep(pause)


def _following(plan: JobPlan) -> JobAnswer:
    wait = plan.wait
    return JobAnswer(
        plan.key,
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


async def find_marked(run: PlannedRun, plans: list[JobPlan]) -> dict[str, list[str]]:
    """The jobs of ``plans``' workflows whose titles carry one of their markers: marker to job
    ids, oldest first. One pass through each workflow's jobs (the job search has no title filter)."""
    client = run.session.client
    assert client is not None
    wanted = {title_marker(run.definition.run_id, plan.key) for plan in plans}
    found: dict[str, list[tuple[str, str]]] = {}
    for workflow_id in sorted({plan.workflow.id for plan in plans}):
        for page in range(MARKER_SEARCH_PAGES):
            body = await client.search_jobs(workflow_id=workflow_id, offset=page * 100, max_results=100)
            items = body.get("jobs") if isinstance(body, dict) else body
            if not isinstance(items, list) or not items:
                break
            for item in items:
                if not isinstance(item, dict):
                    continue
                title = str(item.get("title") or "")
                job_id = item.get("jobExecutionId") or item.get("id")
                for marker in wanted:
                    if marker in title and job_id is not None:
                        found.setdefault(marker, []).append((str(item.get("createdAt") or ""), str(job_id)))
            if len(items) < 100:
                break
    return {marker: [job_id for _, job_id in sorted(ids)] for marker, ids in found.items()}
