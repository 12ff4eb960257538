"""The run engine, one step per module, in the order a job goes through them:

    options.py   RunOptions, and what the journal keeps of them
    session.py   the one set-up: config, trust notices, plugins, client, journal
    batch.py     plan -> check -> submit, ``concurrency`` at a time; the run-level hooks
    job.py       one job's state machine: initiate, execute, wait, results
    delivery.py  events, outputs, notifiers; every delivery journaled
    resume.py    finish an interrupted run from the journal
    report.py    JobOutcome and RunReport
    commands.py  Runner (the commands) and run()/arun() (the library API)
"""

from __future__ import annotations

from .commands import Runner, arun, run
from .options import RunOptions
from .report import JobOutcome, RunReport, worst

__all__ = ["JobOutcome", "RunOptions", "RunReport", "Runner", "arun", "run", "worst"]
