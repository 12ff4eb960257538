"""What a run on Temporal is made of, as plain data: the run's definition (which specs, at
which digests, with which options) and what each chunk workflow reports of its jobs.

This module is standard library only: the workflow code imports it inside Temporal's
deterministic sandbox, and the submitter and the workers share it. Nothing secret goes into
these shapes: they are the engine's history. Values come from the spec files and the vars the
submitter was given; secrets are read on the worker, from its own environment.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

#: the workflow type every chunk runs as
WORKFLOW_NAME = "opus-runner.chunk"
#: the task queue when none is given
DEFAULT_TASK_QUEUE = "opus-runner"
DEFAULT_NAMESPACE = "default"
DEFAULT_ADDRESS = "localhost:7233"
DEFAULT_CHUNK_SIZE = 100
#: how long a worker may go unheard before its activities are given to another worker
DEFAULT_HEARTBEAT_SECONDS = 30.0

#: the options of ``run`` a run on the engine keeps: what planning the jobs again needs
PLANNING_OPTIONS = (
    "var", "vars_file", "vars", "only", "shard", "limit", "timeout", "wait_mode", "no_wait", "allow_outside_root",
    # where Opus reaches the run's callback receiver (opus-run callbacks serve --engine temporal)
    "callback_public_url",
    # the Opus API generation the jobs were checked against (v0 Jobs, v1 Case)
    "api",
)


def chunk_workflow_id(run_id: str, index: int) -> str:
    """The id of a run's ``index``-th chunk: starting the same run twice starts nothing new."""
    return f"opus-runner/{run_id}/chunk-{index}"


def title_marker(run_id: str, plan_key: str) -> str:
    """The mark a job's title carries, so a job initiated by a worker that was lost before the
    engine heard its id can be found again (Opus has no idempotency key on initiate)."""
    digest = hashlib.sha256(f"{run_id}\x1f{plan_key}".encode()).hexdigest()[:16]
    return f"[opus-runner:{digest}]"


@dataclass(frozen=True)
class RunDefinition:
    """Everything a worker needs to plan a run's jobs again exactly as the submitter did.

    ``specs`` and ``inputs`` are paths relative to the project root, each with its sha256: a
    worker whose checkout differs refuses the job rather than run another spec.
    """

    run_id: str
    version: str  # the submitter's opus-runner version
    specs: list[str]
    inputs: dict[str, str]  # relative path -> sha256 (specs, foreach data, vars file)
    options: dict[str, Any]
    digest: str = ""  # of all the above but the run id: one run id, one definition
    heartbeat: float = DEFAULT_HEARTBEAT_SECONDS

    @staticmethod
    def digest_of(version: str, specs: list[str], inputs: dict[str, str], options: dict[str, Any]) -> str:
        text = json.dumps({"version": version, "specs": specs, "inputs": inputs, "options": options}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ChunkInput:
    """One chunk workflow's input: the run, and the plan keys of its jobs."""

    run: RunDefinition
    index: int
    chunks: int  # how many chunks the run has
    plan_keys: list[str]


#: jobs one step (one activity) takes at once: the engine's cost is per step, not per job, and
#: ``--api-rate`` is enforced per step (a step makes about one call for each of its jobs)
SLICE = 50
#: the most API calls a step makes for one job: a check reads the status, then the results
#: (initiate and execute: one; a failed job's reason, an upload or a retry are not counted)
CALLS_PER_JOB_STEP = 2


@dataclass
class JobStep:
    """One job in a step's input: which job (the worker plans it from the definition), and what
    the workflow knows of it."""

    plan_key: str
    job_id: str | None = None
    status: str | None = None  # finish: the status it ended with
    gave_up: bool = False  # finish: the wait ran out before the job ended
    error: str | None = None  # finish: why Opus refused its execute (masked)


@dataclass
class StepInput:
    """An activity's input: a run and some of its jobs."""

    run: RunDefinition
    jobs: list[JobStep]


@dataclass
class JobAnswer:
    """What a step did for one job. ``error`` set: the step failed for this job for good (the
    job ends with it); otherwise the fields of the step apply."""

    plan_key: str
    error: str | None = None
    # initiate
    job_id: str | None = None
    orphans: list[str] = field(default_factory=list)  # other jobs found by its title marker
    # execute
    refused: bool = False
    wait: bool = True
    timeout: float = 0.0
    poll_interval: float = 5.0
    max_interval: float = 60.0
    mode: str = "poll"
    safety_interval: float = 60.0
    # execute: why Opus refused it; finish: why the job did not complete (both masked)
    reason: str | None = None
    # status and finish
    status: str | None = None
    finished: bool = False
    delivered: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # outputs that failed, with their reason


@dataclass
class StepResult:
    jobs: list[JobAnswer]


@dataclass
class JobView:
    """A job of a chunk as the workflow knows it (``status`` query and the chunk's result)."""

    plan_key: str
    phase: str = "planned"  # planned | initiated | executed | finished | cancelled | submitted (--no-wait)
    job_id: str | None = None
    status: str | None = None
    error: str | None = None
    orphans: list[str] = field(default_factory=list)
    delivered: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    duration: float = 0.0


@dataclass
class ChunkView:
    index: int
    jobs: list[JobView]
    cancelled: bool = False
    done: bool = False
    started_at: str | None = None  # ISO 8601, the engine's clock
    finished_at: str | None = None
