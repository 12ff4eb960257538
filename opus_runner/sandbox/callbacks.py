"""Job callbacks: one POST to a job's ``callbackUrl``, ``callback_delay`` after it ends, to loopback only.

Like a real platform's webhook, a callback comes a little after the end (the fixture's
``callback_delay``, 0.2 s unless told), is attempted once (a receiver that is down misses it),
and can be dropped, delayed or delivered twice by fault rules on the pseudo-route ``callback``
(faults.py), decided when the callback is due. These are the sandbox's only timers; the
statuses themselves follow the clock.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any
from urllib.parse import urlsplit

from ..urls import is_loopback_host
from .bodies import results_body
from .faults import CALLBACK_ROUTE, FaultSet
from .state import Job, SandboxState

CALLBACK_TIMEOUT = 5.0

log = logging.getLogger("opus_runner.sandbox")


class Callbacks:
    """The pending callback timers and the deliveries in progress; :meth:`aclose` ends them all.

    ``delay`` (seconds), when given, replaces every workflow's ``callback_delay``.
    """

    def __init__(self, state: SandboxState, faults: FaultSet | None = None, delay: float | None = None) -> None:
        self.state = state
        self.faults = faults if faults is not None else FaultSet()
        self.delay = delay
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._http: Any = None  # httpx.AsyncClient, created on first use

    @property
    def pending(self) -> int:
        """Callbacks not yet done: waiting for their time, or being delivered (a duplicate's gap too)."""
        return len(self._timers) + len(self._tasks)

    def delay_for(self, job: Job) -> float:
        """Seconds from the job's end to its callback: the server's override, else its workflow's."""
        return self.delay if self.delay is not None else job.workflow.callback_delay

    def schedule(self, job: Job) -> None:
        loop = asyncio.get_running_loop()
        due = max(0.0, (job.ends_at or 0.0) - time.monotonic()) + self.delay_for(job)
        self._timers[job.id] = loop.call_later(due, self._fire, job)

    def cancel(self, job_id: str) -> None:
        """Forget a job's callback (the job was deleted): its timer, or its delivery under way."""
        handle = self._timers.pop(job_id, None)
        if handle is not None:
            handle.cancel()
        task = self._tasks.pop(job_id, None)
        if task is not None:
            task.cancel()

    def _fire(self, job: Job) -> None:
        self._timers.pop(job.id, None)
        task = asyncio.get_running_loop().create_task(self._deliver(job))
        self._tasks[job.id] = task
        task.add_done_callback(lambda done: self._forget(job.id, done))

    def _forget(self, job_id: str, task: asyncio.Task[None]) -> None:
        if self._tasks.get(job_id) is task:
            del self._tasks[job_id]

    async def _deliver(self, job: Job) -> None:
        if job.callback_sent or not job.callback_url:
            return
        if not is_loopback_host(urlsplit(job.callback_url).hostname):  # pragma: no cover - never scheduled
            return
        job.callback_sent = True  # at most once (plus a duplicate on purpose), even if the POST fails
        rule = self.faults.pick(CALLBACK_ROUTE, "POST")
        if rule is not None and rule.kind == "drop":
            job.callback_dropped = True
            self.state.callbacks_dropped += 1
            log.debug("callback for job %s dropped by a fault rule", job.id)
            return
        if rule is not None and rule.kind == "delay":
            await asyncio.sleep(rule.seconds)
        # The body is what the job looks like when the callback goes out; a duplicate repeats it.
        body = {
            "jobExecutionId": job.id,
            "status": job.status(time.monotonic()),
            "results": results_body(job),
        }
        url = job.callback_url
        await self._post(job, url, body)
        if rule is not None and rule.kind == "duplicate":
            await asyncio.sleep(rule.gap)
            self.state.callbacks_duplicated += 1
            await self._post(job, url, body)

    async def _post(self, job: Job, url: str, body: dict[str, Any]) -> None:
        job.callback_posts += 1
        try:
            import httpx

            if self._http is None:
                self._http = httpx.AsyncClient(timeout=CALLBACK_TIMEOUT, follow_redirects=False)
            response = await self._http.post(url, json=body)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a receiver's failure is the receiver's business
            self.state.callbacks_failed += 1
            log.debug("callback for job %s failed: %s", job.id, exc)
        else:
            self.state.callbacks_sent += 1
            self.state.callback_answers[response.status_code] += 1

    async def aclose(self) -> None:
        """Cancel the pending timers and deliveries, and close the HTTP client (the server is stopping)."""
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        if self._http is not None:
            await self._http.aclose()
            self._http = None
