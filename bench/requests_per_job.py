"""Requests per job and how late the end is seen: 10 s, 60 s and 10 min jobs, poll and callback mode.

For every job length (``--durations``) and wait mode (``--modes``) one scenario: a sandbox of its
own (so its per-route counts are that scenario's alone) and one ``opus-run run --format json``
following ``--jobs`` jobs of that length. Measured per scenario:

- **requests per job**: what the sandbox counted (``GET /_sandbox/stats``), the batch's one
  ``GET workflow`` left out;
- **lag after the end**: the runner's ``completed`` event time minus the job's end at the
  sandbox (its execute time, the first node's start in ``GET /job/{id}/audit``, plus its
  duration);
- in callback mode, **lag after the callback**: the ``completed`` event time minus the time the
  runner's receiver accepted the job's callback (the journal lists every accepted callback,
  ``callback_calls``), and the callbacks the sandbox sent.

**The clock is sped up on both sides**: the longest job runs ``--scale`` k (default 10) times
faster, and every scenario fits in that time: a scenario's own k is its length divided by
the longest one's sped-up length, at least 1 (so with 10 s, 1 min and 10 min: 1, 1 and 10;
a job runs in real time when it can, where no scaling can distort it). The fixture's durations
are divided by that k, and so are the runner's wait intervals (``poll_interval`` 2 s and
``max_interval`` 30 s, its defaults; in callback mode ``wait.safety_interval`` 10 min too).
Request counts are reported as measured. In poll mode the lag after the end is multiplied back
by k, so it is in the job's own seconds (the runner's processing time, not scaled, then counts
k times: an overestimate by a few tenths of a second). In callback mode nothing between the
end and the runner's report is sped up (the sandbox's callback delay is left as it is, the
receiver and the reads that follow are real work), so both lags are real seconds. All
scenarios run at once, so the whole benchmark takes about the longest job divided by k, plus
start-ups.

Goals: callback mode <= 4 requests per job whatever its length, and the end seen <= 1 s after
the callback arrives; poll mode no more requests per job than before callbacks existed
(``POLL_BASELINE``, measured on main).

    python bench/requests_per_job.py
    python bench/requests_per_job.py --modes poll --durations 10,60 --jobs 20 --json
"""

from __future__ import annotations

import contextlib
import json
import socket
import statistics
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    BenchError,
    Measurement,
    Ratio,
    Report,
    Sandbox,
    Workdir,
    base_parser,
    diff_counts,
    main_guard,
    opus_run_command,
    require_ok,
    table,
    write_fixture,
    write_rows,
    write_spec,
)

#: The runner's own defaults (opus_runner/planning.py and the callback contract), divided by k.
POLL_INTERVAL, MAX_INTERVAL, CALLBACK_SAFETY_INTERVAL = 2.0, 30.0, 600.0
#: Requests per job in poll mode before callbacks existed (main at 0b69c24, 20 jobs x 3 rounds
#: per length, k as the script picks it): the mean per job, without the batch's GET workflow.
POLL_BASELINE = {10.0: 8.0, 60.0: 13.9, 600.0: 33.6}
CALLBACK_TARGET_REQUESTS = 4
CALLBACK_TARGET_LAG = 1.0
MODES = ("poll", "callback")


@dataclass
class Scenario:
    """One job length in one wait mode, with what was measured."""

    duration: float  # the job's length in its own (unscaled) seconds
    mode: str
    scale: float = 1.0  # this scenario's clock speed-up k
    runs: list[Measurement] = field(default_factory=list)
    jobs: int = 0  # over all runs
    lags: list[float] = field(default_factory=list)  # real seconds from each job's end to its completed event
    after_callback: list[float] = field(default_factory=list)  # real seconds from its callback's arrival
    callbacks_sent: int = 0

    def lag_after_end(self) -> float:
        """The median lag in the job's own seconds (see the module's doc on scaling)."""
        return statistics.median(self.lags) * (self.scale if self.mode == "poll" else 1.0)

    def max_lag_after_end(self) -> float:
        return max(self.lags) * (self.scale if self.mode == "poll" else 1.0)

    @property
    def name(self) -> str:
        return f"{_length(self.duration)} {self.mode}"

    def per_job(self, route: str | None = None) -> float:
        counts = Counter[str]()
        for m in self.runs:
            counts.update(m.requests)
        if route is not None:
            return counts.get(route, 0) / self.jobs
        return sum(n for r, n in counts.items() if r != "GET workflow") / self.jobs


def _length(seconds: float) -> str:
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _parse_time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _callbacks_heard(state_db: Path) -> dict[str, float]:
    """``job id -> time`` the receiver accepted the job's first callback, from the run's journal."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(f"file:{state_db}?mode=ro", uri=True)) as db:
        rows = db.execute(
            "SELECT j.job_id, MIN(c.at) FROM callback_calls c JOIN jobs j ON j.row_id = c.row_id GROUP BY j.job_id"
        ).fetchall()
    return {str(job_id): _parse_time(at) for job_id, at in rows}


def _measure(scenario: Scenario, args: Any, folder: Path, turn: threading.Event, next_turn: threading.Event) -> None:
    """One run of ``scenario`` in a sandbox of its own; add its counts, lags and callbacks.

    The runner starts at ``turn`` and hands the turn on once it has executed its jobs: start-ups
    (a second of CPU each) one at a time, so none of them delays another scenario's polling.
    """
    k = scenario.scale
    folder.mkdir(parents=True)
    write_rows(folder / "rows.csv", args.jobs)
    wait = {"timeout": f"{max(3600.0, 3 * scenario.duration) / k:g}s", "poll_interval": f"{POLL_INTERVAL / k:g}s", "max_interval": f"{MAX_INTERVAL / k:g}s"}
    argv = [*opus_run_command(), "run", "", "--format", "json", "-q", "--concurrency", str(args.concurrency), "--state-dir", str(folder / "state")]
    if scenario.mode == "callback":
        wait["safety_interval"] = f"{CALLBACK_SAFETY_INTERVAL / k:g}s"
        argv += ["--wait-mode", "callback", "--callback-listen", f"127.0.0.1:{_free_port()}"]
    argv[argv.index("")] = str(write_spec(folder / "job.yaml", rows_file="rows.csv", wait=wait, name="bench-requests"))
    fixture = write_fixture(folder / "workflows.json", duration=scenario.duration / k)
    try:
        with Sandbox(fixture) as sandbox:
            turn.wait()
            measured: list[Measurement] = []
            runner = threading.Thread(
                target=lambda: measured.append(sandbox.measure(scenario.name, argv, cwd=folder, timeout=3 * scenario.duration / k + 120))
            )
            runner.start()
            # The sandbox is fresh: its execute count is this run's (the /_sandbox routes are not counted).
            while runner.is_alive() and sandbox.stats()["requests"].get("POST execute", 0) < args.jobs:
                time.sleep(0.05)
            next_turn.set()
            runner.join()
            if not measured:
                raise BenchError(f"{scenario.name}: the measurement failed (see above)")
            m = measured[0]
            require_ok(m, f"opus-run ({scenario.name})")
            seen = {}
            for line in m.stdout.splitlines():
                event = json.loads(line)
                if event.get("event") == "completed":
                    seen[event["job_id"]] = _parse_time(event["time"])
            if len(seen) != args.jobs:
                raise BenchError(f"{scenario.name}: the runner reported {len(seen)} completed jobs of {args.jobs}")
            heard = _callbacks_heard(folder / "state" / "state.db") if scenario.mode == "callback" else {}
            if scenario.mode == "callback" and set(heard) != set(seen):
                raise BenchError(f"{scenario.name}: the receiver heard callbacks for {len(heard)} of {args.jobs} jobs")
            for job_id, completed in seen.items():
                if job_id in heard:
                    scenario.after_callback.append(completed - heard[job_id])
                nodes = sandbox.api(f"/job/{job_id}/audit")["audit"]["nodes_execution_data"]
                executed = min(n["execution_start_time"] for n in nodes.values() if "execution_start_time" in n) / 1000
                scenario.lags.append(completed - (executed + scenario.duration / k))
            scenario.runs.append(m)
            scenario.jobs += args.jobs
            scenario.callbacks_sent += int(sandbox.stats().get("callbacks_sent", 0))  # counted since measure's reset
    finally:
        turn.set()
        next_turn.set()  # a failed scenario must not hold the others up


def _durations(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise SystemExit(f"--durations: expected seconds separated by commas, such as 10,60,600; found {text!r}") from None
    if not values or min(values) <= 0:
        raise SystemExit(f"--durations: expected positive seconds separated by commas, such as 10,60,600; found {text!r}")
    return values


def run() -> int:
    parser = base_parser(__doc__ or "", jobs=10, concurrency=10, repeat=1)
    parser.add_argument("--durations", default="10,60,600", help="job lengths in seconds, before scaling [default: 10,60,600]")
    parser.add_argument("--modes", default="poll,callback", help="wait modes to measure: poll, callback or both [default: poll,callback]")
    parser.add_argument("--scale", type=float, default=10.0, help="speed-up of both clocks for the longest job; shorter ones are sped up only as much as needed to fit its time [default: 10]")
    args = parser.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes):
        parser.error(f"--modes: expected poll, callback or poll,callback; found {args.modes!r}")
    if args.scale <= 0:
        parser.error(f"--scale: expected a positive speed-up such as 10; found {args.scale:g}")
    durations = _durations(args.durations)
    report = Report("requests_per_job", args)
    report.settings(jobs=args.jobs, durations=",".join(_length(d) for d in durations), modes=",".join(modes), scale=f"{args.scale:g}")

    fastest = max(durations) / args.scale  # the real seconds the longest job takes
    scenarios = [Scenario(d, mode, max(1.0, d / fastest)) for mode in modes for d in durations]
    # Longest first, shortest last: a short job's few polls then meet no other start-up.
    order = sorted(scenarios, key=lambda s: -s.duration)
    with Workdir(args.keep) as work:
        for r in range(args.repeat):
            report.progress(f"round {r + 1}/{args.repeat}: {len(order)} scenarios at once; the longest takes about {max(durations) / args.scale:g} s")
            turns = [threading.Event() for _ in range(len(order) + 1)]
            turns[0].set()
            with ThreadPoolExecutor(len(order)) as pool:
                futures = [
                    pool.submit(_measure, s, args, work / f"round-{r + 1}" / f"{s.mode}-{s.duration:g}s", turns[i], turns[i + 1])
                    for i, s in enumerate(order)
                ]
                failures = []
                for s, future in zip(order, futures):
                    try:
                        future.result()
                    except BenchError as exc:
                        failures.append(f"{s.name}: {exc}")
            if failures:
                raise BenchError("\n".join(failures))

    rows = []
    for s in scenarios:
        after_callback = statistics.median(s.after_callback) if s.after_callback else None
        callbacks = s.callbacks_sent / s.jobs if s.mode == "callback" else None
        rows.append(
            [s.name, f"{s.scale:g}", s.per_job(), s.per_job("GET status"), s.per_job("GET audit"), callbacks, s.lag_after_end(), s.max_lag_after_end(), after_callback]
        )
        report.result(
            s.name,
            {
                "requests": diff_counts({}, sum((Counter(m.requests) for m in s.runs), Counter())),
                "cpu": statistics.median(m.cpu for m in s.runs),
                "wall": statistics.median(m.wall for m in s.runs),
                "duration": s.duration,
                "mode": s.mode,
                "jobs": s.jobs,
                "requests_per_job": s.per_job(),
                "lag_after_end": s.lag_after_end(),
                "lag_after_end_max": s.max_lag_after_end(),
                "lag_after_callback": after_callback,
                "scale": s.scale,
                "callbacks_sent": s.callbacks_sent,
            },
        )
    headers = ["job, mode", "k", "requests/job", "status/job", "audit/job", "callbacks/job", "lag after end s", "max lag s", "lag after callback s"]
    report.say(table(headers, rows))
    report.note(
        "clock sped up k times on both sides; requests as counted (GET workflow, once per batch, left out); "
        "poll-mode lags multiplied back by k, callback-mode lags in real seconds (nothing on that path is sped up)"
    )

    for s in scenarios:
        if s.mode == "poll":
            baseline = POLL_BASELINE.get(s.duration) or None
            report.add_ratio(Ratio(f"requests per job, {s.name}", round(s.per_job(), 2), baseline, unit=" req"))
        else:
            report.add_ratio(Ratio(f"requests per job, {s.name}", round(s.per_job(), 2), CALLBACK_TARGET_REQUESTS, unit=" req"))
            after = statistics.median(s.after_callback)
            report.add_ratio(Ratio(f"finish lag after the callback, {s.name}", round(after, 2), CALLBACK_TARGET_LAG, unit=" s"))
    for s in scenarios:
        report.add_ratio(Ratio(f"finish lag after the end, {s.name}", round(s.lag_after_end(), 2), unit=" s"))
    return report.finish()


if __name__ == "__main__":
    main_guard(run)
