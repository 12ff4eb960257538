"""A worker: runs the chunk workflows and the job activities of one task queue.

Secrets, the service key and files are read here, on the worker, from its environment and its
checkout of the project; the engine's history holds plan keys, job ids and statuses only.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from ..engine.options import RunOptions
from .definition import CALLS_PER_JOB_STEP, DEFAULT_TASK_QUEUE, SLICE
from .runs import EngineOptions, connect

log = logging.getLogger("opus_runner.worker")


@dataclass(frozen=True)
class WorkerOptions:
    root: Path
    task_queue: str = DEFAULT_TASK_QUEUE
    concurrency: int = 50  # activities at once on this worker
    api_rate: float | None = None  # activities per second across every worker of the queue


async def serve(engine: EngineOptions, worker: WorkerOptions, options: RunOptions, *, ready: Any = None) -> None:
    """Run the worker until cancelled (SIGINT, SIGTERM)."""
    from temporalio.worker import Worker

    from .activities import WorkerRuntime
    from .chunk import ChunkWorkflow

    from ..errors import UsageError

    if worker.concurrency < 1:
        raise UsageError(f"--concurrency must be 1 or more, found {worker.concurrency}")
    if worker.api_rate is not None and worker.api_rate <= 0:
        raise UsageError(f"--api-rate must be above 0, found {worker.api_rate:g}")
    import os

    from ..callbacks.tokens import ENGINE_SECRET_ENV

    # Runs woken by callbacks need it to sign their tokens; without it the worker still runs
    # every other run (and says so when one needs it).
    key = None
    if os.environ.get(ENGINE_SECRET_ENV):
        from .callbacks import shared_key

        key = shared_key(os.environ)
    client = await connect(engine)
    runtime = WorkerRuntime(worker.root, options, callback_key=key, concurrency=worker.concurrency)
    kwargs: dict[str, Any] = {}
    if worker.api_rate is not None:
        # Set on the task queue and enforced by the server: it holds across every worker. The
        # server counts steps, and a step makes at most two calls for each of its at most SLICE
        # jobs (a check: status, then results), so R calls a second are R / (2 * SLICE) steps.
        kwargs["max_task_queue_activities_per_second"] = worker.api_rate / (CALLS_PER_JOB_STEP * SLICE)
    try:
        async with Worker(
            client,
            task_queue=worker.task_queue,
            workflows=[ChunkWorkflow],
            activities=runtime.activities(),
            max_concurrent_activities=worker.concurrency,
            # Heartbeats go out within a second (the default holds them for 80 % of the
            # heartbeat timeout), so a busy worker is not taken for a lost one.
            max_heartbeat_throttle_interval=timedelta(seconds=1),
            default_heartbeat_throttle_interval=timedelta(seconds=1),
            **kwargs,
        ):
            if ready is not None:
                ready()
            await asyncio.Event().wait()
    finally:
        await runtime.aclose()
