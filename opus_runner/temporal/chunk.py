"""The chunk workflow: the jobs of one chunk of a run, each taken to its end, exactly once.

Per job: ``initiate`` (its id is in the history before anything else is sent), ``execute`` (a
retry first asks Opus whether the payload arrived, and never sends it twice), ``status`` on
durable timers or when the job's callback wakes it (the ``wake`` signal), then ``finish``
(results and outputs, each output at least once under an idempotency key that the outputs
honour). Everything that talks to Opus is an activity; this code only decides what comes next,
so it must stay deterministic: no I/O, no clock but ``workflow.now()``, no randomness but
``workflow.random()``.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from .definition import (
        WORKFLOW_NAME,
        ChunkInput,
        ChunkView,
        Executed,
        Finished,
        Initiated,
        JobRef,
        JobView,
    )

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT", "STOPPED"}
#: transient trouble is retried by the engine, gently; what the activity calls final is not
RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), backoff_coefficient=2.0, maximum_interval=timedelta(seconds=60))
#: reads at the poll interval after a wake-up that found the job still running
QUICK_READS = 3
#: how long initiate and execute may keep retrying when no wait.timeout bounds them
SUBMIT_WINDOW = timedelta(hours=1)


@workflow.defn(name=WORKFLOW_NAME)
class ChunkWorkflow:
    def __init__(self) -> None:
        self.jobs: dict[str, JobView] = {}
        self.woken: set[str] = set()
        self.cancelled = False
        self.index = 0

    @workflow.run
    async def run(self, chunk: ChunkInput) -> ChunkView:
        self.index = chunk.index
        self.jobs = {key: JobView(key) for key in chunk.plan_keys}
        await asyncio.gather(*(self._job(chunk, key) for key in chunk.plan_keys))
        return self.view()

    @workflow.query
    def view(self) -> ChunkView:
        done = all(job.phase in ("finished", "cancelled") for job in self.jobs.values())
        return ChunkView(self.index, list(self.jobs.values()), cancelled=self.cancelled, done=done)

    @workflow.signal
    def wake(self, plan_key: str) -> None:
        """A job's callback arrived (through the callback receiver): read its status now."""
        self.woken.add(plan_key)

    @workflow.signal
    def cancel(self) -> None:
        """Stop following and delivering: jobs already executed run on in Opus (no job cancel
        is documented), unfollowed."""
        self.cancelled = True

    async def _job(self, chunk: ChunkInput, key: str) -> None:
        view = self.jobs[key]
        started = workflow.now()
        try:
            await self._drive(chunk, key, view)
        except ActivityError as exc:
            view.error = _reason(exc)
            view.status = view.status if view.status in TERMINAL else "ERROR"
            view.phase = "finished"
        view.duration = (workflow.now() - started).total_seconds()

    async def _drive(self, chunk: ChunkInput, key: str, view: JobView) -> None:
        run = chunk.run
        beat = timedelta(seconds=run.heartbeat)
        if self.cancelled:
            view.phase = "cancelled"
            return
        initiated: Initiated = await workflow.execute_activity(
            "opus-runner.initiate",
            JobRef(run, key),
            result_type=Initiated,
            start_to_close_timeout=timedelta(minutes=5),
            heartbeat_timeout=beat,
            schedule_to_close_timeout=SUBMIT_WINDOW,
            retry_policy=RETRY,
        )
        view.job_id, view.orphans, view.phase = initiated.job_id, initiated.orphans, "initiated"
        if self.cancelled:
            view.phase = "cancelled"  # initiated, never executed: nothing was sent to it
            return
        executed: Executed = await workflow.execute_activity(
            "opus-runner.execute",
            JobRef(run, key, initiated.job_id),
            result_type=Executed,
            start_to_close_timeout=timedelta(minutes=10),
            heartbeat_timeout=beat,
            schedule_to_close_timeout=SUBMIT_WINDOW,
            retry_policy=RETRY,
        )
        view.phase, view.status = "executed", executed.status
        if executed.refused:
            await self._finish(chunk, key, view, "FAILED", beat, gave_up=False, error=executed.error)
            return
        if not executed.wait:
            view.phase = "finished"  # --no-wait: submitted, not followed
            return
        status = await self._follow(run, key, view, executed, beat)
        if status is None and self.cancelled:
            view.phase = "cancelled"
            return
        await self._finish(chunk, key, view, status or "TIMED_OUT", beat, gave_up=status is None)

    async def _follow(self, run: object, key: str, view: JobView, how: Executed, beat: timedelta) -> str | None:
        """Read the job's status until it ends (returned), the wait runs out or the run is
        cancelled (None). Poll mode reads on a growing interval; hybrid and callback modes read
        when woken and on the safety interval."""
        deadline = workflow.now() + timedelta(seconds=how.timeout)
        interval = how.poll_interval
        quick = 0
        first = True
        while True:
            if not first:
                remaining = (deadline - workflow.now()).total_seconds()
                if remaining <= 0 or self.cancelled:
                    return None
                if how.mode == "poll" or quick:
                    pause = interval
                    interval = min(how.max_interval, interval * 1.5)
                    quick = max(0, quick - 1)
                else:
                    pause = how.safety_interval * workflow.random().uniform(1.0, 1.1)
                pause = min(remaining, pause * workflow.random().uniform(0.9, 1.1))
                try:
                    await workflow.wait_condition(lambda: key in self.woken or self.cancelled, timeout=timedelta(seconds=pause))
                except asyncio.TimeoutError:
                    pass
                if self.cancelled:
                    return None
                if key in self.woken:
                    self.woken.discard(key)
                    quick, interval = QUICK_READS, how.poll_interval
            first = False
            status: str = await workflow.execute_activity(
                "opus-runner.status",
                JobRef(run, key, view.job_id),  # type: ignore[arg-type]
                result_type=str,
                start_to_close_timeout=timedelta(minutes=2),
                heartbeat_timeout=beat,
                schedule_to_close_timeout=max(timedelta(seconds=how.timeout), timedelta(minutes=2)),
                retry_policy=RETRY,
            )
            view.status = status
            if status.upper() in TERMINAL:
                return status

    async def _finish(self, chunk: ChunkInput, key: str, view: JobView, status: str, beat: timedelta, *, gave_up: bool, error: str | None = None) -> None:
        if self.cancelled:
            view.phase = "cancelled"
            return
        finished: Finished = await workflow.execute_activity(
            "opus-runner.finish",
            JobRef(chunk.run, key, view.job_id, status=status, gave_up=gave_up, error=error),
            result_type=Finished,
            start_to_close_timeout=timedelta(minutes=10),
            heartbeat_timeout=beat,
            schedule_to_close_timeout=SUBMIT_WINDOW,
            retry_policy=RETRY,
        )
        view.status, view.error = finished.status, finished.error
        view.delivered, view.failed = finished.delivered, finished.failed
        view.phase = "finished"


def _reason(exc: ActivityError) -> str:
    """The words of the activity's own failure, not the engine's wrapping of it."""
    cause = exc.cause
    while cause is not None and not isinstance(cause, ApplicationError) and getattr(cause, "cause", None) is not None:
        cause = cause.cause
    return str(cause.message if isinstance(cause, ApplicationError) else (cause or exc))
