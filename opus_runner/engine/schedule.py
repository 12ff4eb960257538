"""The poll schedule: how long to wait before the next status read of a job.

A read, then a pause of the interval less up to a fifth of it (jitter, so a batch's reads
spread out), the interval growing by 1.3 up to ``max_interval``: a 10 s job is seen within
about 2 s of its end with 6 reads. UNKNOWN is read again at the first interval (a reading to
confirm, not progress); a read that failed for a reason that may pass doubles the interval.
One schedule for a run's poll mode (engine/job.py) and ``opus-run wait`` (engine/follow.py).
"""

from __future__ import annotations

import random

GROWTH = 1.3


class PollSchedule:
    def __init__(self, poll_interval: float, max_interval: float) -> None:
        self.first = poll_interval
        self.longest = max(max_interval, poll_interval)
        self.interval = poll_interval

    def pause(self) -> float:
        """Seconds to wait before the next read."""
        return self.interval * random.uniform(0.8, 1.0)

    def read(self, status: str) -> None:
        """A status was read: the next pause grows, unless the status must be confirmed."""
        self.interval = self.first if status == "UNKNOWN" else min(self.longest, self.interval * GROWTH)

    def failed(self) -> None:
        """A read failed for a reason that may pass: back off faster."""
        self.interval = min(self.longest, self.interval * 2)

    def restart(self) -> None:
        """Back to the first interval (a callback just woke the job)."""
        self.interval = self.first
