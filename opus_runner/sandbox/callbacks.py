"""Job callbacks: one POST to a job's ``callbackUrl`` when it ends, to loopback hosts only.

These are the sandbox's only timers; the statuses themselves follow the clock.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any
from urllib.parse import urlsplit

from ..urls import is_loopback_host
from .bodies import results_body
from .state import Job, SandboxState

CALLBACK_TIMEOUT = 5.0

log = logging.getLogger("opus_runner.sandbox")


class Callbacks:
    """The pending callback timers and the POSTs in flight; :meth:`aclose` ends them all."""

    def __init__(self, state: SandboxState) -> None:
        self.state = state
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._http: Any = None  # httpx.AsyncClient, created on first use

    def schedule(self, job: Job) -> None:
        loop = asyncio.get_running_loop()
        delay = max(0.0, (job.ends_at or 0.0) - time.monotonic())
        self._timers[job.id] = loop.call_later(delay, self._fire, job)

    def cancel(self, job_id: str) -> None:
        handle = self._timers.pop(job_id, None)
        if handle is not None:
            handle.cancel()

    def _fire(self, job: Job) -> None:
        self._timers.pop(job.id, None)
        task = asyncio.get_running_loop().create_task(self._send(job))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, job: Job) -> None:
        if job.callback_sent or not job.callback_url:
            return
        if not is_loopback_host(urlsplit(job.callback_url).hostname):  # pragma: no cover - never scheduled
            return
        job.callback_sent = True  # at most once, even if the POST fails
        body = {
            "jobExecutionId": job.id,
            "status": job.status(time.monotonic()),
            "results": results_body(job),
        }
        try:
            import httpx

            if self._http is None:
                self._http = httpx.AsyncClient(timeout=CALLBACK_TIMEOUT, follow_redirects=False)
            await self._http.post(job.callback_url, json=body)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a receiver's failure is the receiver's business
            self.state.callbacks_failed += 1
            log.debug("callback for job %s failed: %s", job.id, exc)
        else:
            self.state.callbacks_sent += 1

    async def aclose(self) -> None:
        """Cancel the pending timers and POSTs, and close the HTTP client (the server is stopping)."""
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.aclose()
            self._http = None
