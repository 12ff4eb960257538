"""How each job of a run ended (:class:`JobOutcome`) and what the run did (:class:`RunReport`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..errors import SpecError
from ..models import JobResult
from ..paths import display_path


@dataclass
class JobOutcome:
    """How one planned job ended."""

    plan_key: str
    spec_name: str
    spec_path: str
    job_id: str | None = None
    status: str | None = None  # normalised Opus status; None when never submitted
    result: JobResult | None = None
    error: str | None = None
    exit_code: int = 0
    duration: float | None = None
    delivered: list[str] = field(default_factory=list)
    delivery_failures: list[str] = field(default_factory=list)
    payload: dict[str, Any] | None = None  # masked (render/dry-run)

    def row(self) -> dict[str, Any]:
        # A job that ended well but whose result could not be delivered is a failure of the
        # run: the summary says why, not only the stderr line printed when it happened.
        reasons = [self.error] if self.error else self.delivery_failures
        return {
            "plan_key": self.plan_key,
            "spec": display_path(self.spec_path),
            "job_id": self.job_id,
            "status": self.status,
            "duration": self.duration,
            "delivered": ", ".join(self.delivered) if self.delivered else None,
            "error": "; ".join(reasons) if reasons else None,
            # the stdout output printed it: on a terminal, that block is the job's line
            "stdout": "stdout" in self.delivered,
        }


@dataclass
class RunReport:
    """What a run did. ``exit_code`` follows SPEC.md section 3."""

    run_id: str | None
    outcomes: list[JobOutcome] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: list[SpecError] = field(default_factory=list)  # --keep-going: invalid jobs not submitted
    exit_code: int = 0
    #: seconds the run took, when another process ran it (an engine run); None: this one did
    elapsed: float | None = None

    @property
    def results(self) -> list[JobResult]:
        return [o.result for o in self.outcomes if o.result is not None]


# Exit-code precedence when jobs of one batch end differently: an interrupt, then usage and
# validation errors, then API/network errors, then failed jobs.
_SEVERITY = {0: 0, 1: 1, 3: 2, 2: 3, 129: 4, 130: 4, 143: 4}  # signals: 128 + signal number


def worst(codes: Iterable[int]) -> int:
    return max(codes, key=lambda c: _SEVERITY.get(c, 1), default=0)
