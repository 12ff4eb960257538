"""Follow one job by its id to its end, outside any run: ``opus-run wait`` and ``status --watch``.

The schedule is the one a run's poll mode follows (:class:`~.schedule.PollSchedule`); a read
that fails for a reason that may pass (the network, a rate limit, a gateway) does not end the
wait.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from ..errors import ApiError, NetworkError
from ..models import TERMINAL_STATUSES
from ..planning import DEFAULT_MAX_INTERVAL, DEFAULT_POLL
from .job import transient
from .schedule import PollSchedule

#: Called with each status read that differs from the one before.
OnStatus = Callable[[str], None]
#: Called once, with the error, when a read first fails for a reason that may pass.
OnProblem = Callable[[Exception], None]


async def follow(
    client: Any,
    job_id: str,
    *,
    last: str | None = None,
    timeout: float | None = None,
    poll_interval: float = DEFAULT_POLL,
    max_interval: float = DEFAULT_MAX_INTERVAL,
    on_status: OnStatus = lambda status: None,
    on_problem: OnProblem = lambda exc: None,
) -> str | None:
    """Read job ``job_id``'s status until it is terminal (returned) or ``timeout`` seconds have
    passed (None). ``last`` is a status already read (and shown): the first read waits one
    interval then."""
    deadline = None if timeout is None else time.monotonic() + timeout
    schedule = PollSchedule(poll_interval, max_interval)
    read_now = last is None
    told = False
    while True:
        if not read_now:
            pause = schedule.pause()
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                pause = min(pause, remaining)
            await asyncio.sleep(pause)
        read_now = False
        try:
            status = await client.status(job_id)
        except (ApiError, NetworkError) as exc:
            if not transient(exc):
                raise
            if not told:
                told = True
                on_problem(exc)
            schedule.failed()
            continue
        if status != last:
            on_status(status)
            last = status
        if status in TERMINAL_STATUSES:
            return status
        schedule.read(status)
