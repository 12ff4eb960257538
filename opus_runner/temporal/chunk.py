"""The chunk workflow: the jobs of one chunk of a run, each taken to its end, exactly once.

A chunk's jobs go in slices of :data:`SLICE`, each slice through three kinds of step, each step
one activity for all the slice's jobs it concerns (the engine's cost is per step, not per job):

- ``initiate``: their job ids, in the history before anything else is sent;
- ``execute``: a retry (a worker lost) first asks Opus whether each payload arrived, and never
  sends one twice;
- ``check``: their status, read when due (durable timers) or when a job's callback woke it (the
  ``wake`` signal); a job found ended is finished in the same step: results, then outputs, each
  at least once under an idempotency key that the outputs honour.

Everything that talks to Opus is in the activities; this code only decides what comes next, so
it must stay deterministic: no I/O, no clock but ``workflow.now()``, no randomness but
``workflow.random()``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from .definition import (
        SLICE,
        WORKFLOW_NAME,
        ChunkInput,
        ChunkView,
        JobAnswer,
        JobStep,
        JobView,
        RunDefinition,
        StepInput,
        StepResult,
    )

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT", "STOPPED"}
#: a step lost with its worker is tried again at once elsewhere; jobs handle their own retries
RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), backoff_coefficient=2.0, maximum_interval=timedelta(seconds=30))
#: reads at the poll interval after a wake-up that found the job still running
QUICK_READS = 3
#: how long one step may run: its jobs retry transient failures within their wait.timeout
STEP_LIMIT = timedelta(hours=24)


@dataclass
class _Following:
    """When a job followed by its slice is read next, and until when it is followed."""

    how: JobAnswer  # the execute step's answer: the job's wait settings
    deadline: datetime
    next_at: datetime
    interval: float
    quick: int = 0


@workflow.defn(name=WORKFLOW_NAME)
class ChunkWorkflow:
    def __init__(self) -> None:
        self.jobs: dict[str, JobView] = {}
        self.woken: set[str] = set()
        self.cancelled = False
        self.index = 0
        self.started: dict[str, datetime] = {}
        self.started_at: str | None = None
        self.finished_at: str | None = None

    @workflow.run
    async def run(self, chunk: ChunkInput) -> ChunkView:
        self.index = chunk.index
        self.started_at = workflow.now().isoformat()
        self.jobs = {key: JobView(key) for key in chunk.plan_keys}
        slices = [chunk.plan_keys[i : i + SLICE] for i in range(0, len(chunk.plan_keys), SLICE)]
        await asyncio.gather(*(self._slice(chunk.run, keys) for keys in slices))
        self.finished_at = workflow.now().isoformat()
        return self.view()

    @workflow.query
    def view(self) -> ChunkView:
        done = all(job.phase in ("finished", "cancelled", "submitted") for job in self.jobs.values())
        return ChunkView(
            self.index, list(self.jobs.values()), cancelled=self.cancelled, done=done,
            started_at=self.started_at, finished_at=self.finished_at,
        )  # fmt: skip

    @workflow.signal
    def wake(self, plan_key: str) -> None:
        """A job's callback arrived (through the callback receiver): read its status now."""
        self.woken.add(plan_key)

    @workflow.signal
    def cancel(self) -> None:
        """Stop following and delivering: jobs already executed run on in Opus (no job cancel
        is documented), unfollowed."""
        self.cancelled = True

    # -- one slice of jobs ------------------------------------------------------------------

    async def _slice(self, run: RunDefinition, keys: list[str]) -> None:
        now = workflow.now()
        for key in keys:
            self.started[key] = now
        if self._stop(keys):
            return
        live = []
        for answer in await self._step("opus-runner.initiate", run, [JobStep(key) for key in keys]):
            view = self.jobs[answer.plan_key]
            if answer.error:
                self._end(view, "ERROR", answer.error)
                continue
            view.job_id, view.orphans, view.phase = answer.job_id, answer.orphans, "initiated"
            live.append(answer.plan_key)
        if self._stop(live):  # initiated, never executed: nothing was sent to them
            return
        following: dict[str, _Following] = {}
        refused: list[JobStep] = []
        answers = await self._step("opus-runner.execute", run, [JobStep(key, self.jobs[key].job_id) for key in live])
        now = workflow.now()
        for answer in answers:
            view = self.jobs[answer.plan_key]
            if answer.error:
                self._end(view, "ERROR", answer.error)
            elif answer.refused:
                view.phase = "executed"
                refused.append(JobStep(answer.plan_key, view.job_id, status="FAILED", error=answer.reason or "Opus refused the execute"))
            elif not answer.wait:
                view.phase, view.status = "submitted", answer.status  # --no-wait: submitted, not followed
            else:
                view.phase, view.status = "executed", answer.status
                following[answer.plan_key] = _Following(answer, now + timedelta(seconds=answer.timeout), now, answer.poll_interval)
        if refused:
            await self._check(run, refused, {})
        await self._follow(run, following)

    async def _follow(self, run: RunDefinition, following: dict[str, _Following]) -> None:
        """Read the jobs' statuses when due, and finish each that ended (or whose wait ran out),
        until none is left or the run is cancelled."""
        while following:
            if self._stop(list(following)):
                return
            now = workflow.now()
            due = [JobStep(key, self.jobs[key].job_id) for key, f in following.items() if f.next_at <= now and f.deadline > now]
            due += [
                JobStep(key, self.jobs[key].job_id, status="TIMED_OUT", gave_up=True) for key, f in following.items() if f.deadline <= now
            ]
            if due:
                await self._check(run, due, following)
                continue
            soonest = min(min(f.next_at, f.deadline) for f in following.values())
            pause = max(0.0, (soonest - now).total_seconds())
            try:
                await workflow.wait_condition(
                    lambda: self.cancelled or any(key in self.woken for key in following), timeout=timedelta(seconds=pause)
                )
            except asyncio.TimeoutError:
                pass
            now = workflow.now()
            for key, f in following.items():
                if key in self.woken:
                    # The callback may come a moment before the status says so: a few quick
                    # reads before going back to the safety interval.
                    self.woken.discard(key)
                    f.quick, f.interval, f.next_at = QUICK_READS, f.how.poll_interval, now

    async def _check(self, run: RunDefinition, steps: list[JobStep], following: dict[str, _Following]) -> None:
        for answer in await self._step("opus-runner.check", run, steps):
            view = self.jobs[answer.plan_key]
            f = following.get(answer.plan_key)
            if answer.error:
                self._end(view, view.status if view.status in TERMINAL else "ERROR", answer.error)
                following.pop(answer.plan_key, None)
            elif answer.finished:
                view.delivered, view.failed = answer.delivered, answer.failed
                self._end(view, answer.status or "ERROR", answer.reason or _first_failure(answer))
                following.pop(answer.plan_key, None)
            elif f is not None:
                if answer.status:
                    view.status = answer.status
                f.next_at = workflow.now() + timedelta(seconds=self._pause(f))

    def _pause(self, f: _Following) -> float:
        """Poll mode: a gently growing interval; hybrid and callback: the safety interval,
        except for the quick reads after a wake-up. With jitter, so jobs spread."""
        how = f.how
        if how.mode == "poll" or f.quick:
            pause = f.interval
            f.interval = min(how.max_interval, f.interval * 1.5)
            f.quick = max(0, f.quick - 1)
            return pause * workflow.random().uniform(0.9, 1.1)
        return how.safety_interval * workflow.random().uniform(1.0, 1.1)

    async def _step(self, name: str, run: RunDefinition, jobs: list[JobStep]) -> list[JobAnswer]:
        """One step for ``jobs``; a step that failed for good fails each of its jobs with why."""
        if not jobs:
            return []
        try:
            result: StepResult = await workflow.execute_activity(
                name,
                StepInput(run, jobs),
                result_type=StepResult,
                start_to_close_timeout=STEP_LIMIT,
                heartbeat_timeout=timedelta(seconds=run.heartbeat),
                retry_policy=RETRY,
            )
        except ActivityError as exc:
            reason = _reason(exc)
            return [JobAnswer(job.plan_key, error=reason) for job in jobs]
        return result.jobs

    def _stop(self, keys: list[str]) -> bool:
        """After a cancel: the jobs not yet over are left, unfollowed."""
        if not self.cancelled:
            return False
        for key in keys:
            view = self.jobs[key]
            if view.phase not in ("finished", "submitted"):
                view.phase = "cancelled"
                self._timed(view)
        return True

    def _end(self, view: JobView, status: str, error: str | None) -> None:
        view.status, view.error, view.phase = status, error, "finished"
        self._timed(view)

    def _timed(self, view: JobView) -> None:
        started = self.started.get(view.plan_key)
        if started is not None:
            view.duration = (workflow.now() - started).total_seconds()


def _first_failure(answer: JobAnswer) -> str | None:
    return "; ".join(answer.failed) if answer.failed else None


def _reason(exc: ActivityError) -> str:
    """The words of the activity's own failure, not the engine's wrapping of it."""
    cause = exc.cause
    while cause is not None and not isinstance(cause, ApplicationError) and getattr(cause, "cause", None) is not None:
        cause = cause.cause
    return str(cause.message if isinstance(cause, ApplicationError) else (cause or exc))
