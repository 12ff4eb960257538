"""Requests per job: one job lasting 10 s, followed with the default polling (no ``wait:`` in the spec).

The sandbox counts every request per route. Measured, on the same job:

- opus-runner with ``--format json`` (no progress display): the default schedule, first poll
  at once, then 2 s growing 1.6x per poll up to 30 s;
- opus-runner on a terminal (stderr is a pseudo-terminal, so the live display is on and the
  runner also reads the job's audit for "node n of m" at every poll);
- the baseline: bench/floor_client.py polling at a fixed 2 s (opus-aaico's default), the
  schedule a hand-written client would most likely use;
- the least possible: GET workflow, initiate, execute, one status call that sees the end,
  results (5 requests).

Also reported: the lag between the job's end and the client noticing it (wall time minus the
job's duration), the price of polling less often.

    python bench/requests_per_job.py
    python bench/requests_per_job.py --duration 30 --jobs 5 --json
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    BENCH_DIR,
    BENCH_WORKFLOW_ID,
    PYTHON,
    Measurement,
    Ratio,
    Report,
    Sandbox,
    Workdir,
    base_parser,
    main_guard,
    median_of,
    opus_run_command,
    ratio,
    require_ok,
    table,
    write_fixture,
    write_rows,
    write_spec,
)

#: GET workflow (once per batch), then per job: initiate, execute, one status, results.
LEAST_PER_JOB = 4


def _count(value: float) -> int | float:
    """A per-job request count: whole numbers shown as such."""
    return int(value) if float(value).is_integer() else round(value, 2)


def _on_a_terminal(sandbox: Sandbox, label: str, argv: list[str], cwd: Path) -> Measurement:
    """Run with stderr on a pseudo-terminal, read (and discarded) by a thread so it never fills."""
    import pty

    master, slave = pty.openpty()
    drained: list[int] = []

    def drain() -> None:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO once the child side is closed
                return
            if not chunk:
                return
            drained.append(len(chunk))

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        m = sandbox.measure(label, argv, cwd=cwd, stderr_fd=slave, env=sandbox.env({"TERM": "xterm-256color", "COLUMNS": "120"}))
    finally:
        os.close(slave)
        reader.join(5)
        os.close(master)
    m.stderr = f"<{sum(drained)} bytes of terminal output>"
    return m


def run() -> int:
    parser = base_parser(__doc__ or "", jobs=1, concurrency=4, repeat=1)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds each job runs [default: 10]")
    parser.add_argument("--no-terminal", action="store_true", help="skip the run on a pseudo-terminal")
    args = parser.parse_args()
    report = Report("requests_per_job", args)
    report.settings(jobs=args.jobs, duration=f"{args.duration:g}s", concurrency=args.concurrency, repeat=args.repeat, wait="default")
    opus_run = opus_run_command()
    terminal = not args.no_terminal and os.name == "posix"
    with Workdir(args.keep) as work:
        write_rows(work / "rows.csv", args.jobs)
        spec = write_spec(work / "job.yaml", rows_file="rows.csv", wait=None, name="bench-requests")
        variants: dict[str, list[str]] = {
            "opus-runner": [*opus_run, "run", str(spec), "--format", "json", "-q", "--concurrency", str(args.concurrency), "--state-dir", str(work / "state")],
            "floor, fixed 2 s": [
                PYTHON, str(BENCH_DIR / "floor_client.py"),
                "--rows", str(work / "rows.csv"),
                "--workflow", BENCH_WORKFLOW_ID,
                "--concurrency", str(args.concurrency),
                "--poll-interval", "2", "--backoff", "1",
            ],  # fmt: skip
        }
        if terminal:
            variants["opus-runner on a terminal"] = [*opus_run, "run", str(spec), "--concurrency", str(args.concurrency), "--state-dir", str(work / "state")]
        runs: dict[str, list[Measurement]] = {label: [] for label in variants}
        with Sandbox(write_fixture(work / "workflows.json", duration=args.duration)) as sandbox:
            for r in range(args.repeat):
                for label, argv in variants.items():
                    report.progress(f"run {r + 1}/{args.repeat}: {label} ({args.duration:g} s job)")
                    if label == "opus-runner on a terminal":
                        m = _on_a_terminal(sandbox, label, argv, work)
                    else:
                        m = sandbox.measure(label, argv, cwd=work)
                    require_ok(m, label)
                    runs[label].append(m)
        if not terminal:
            report.note("opus-runner on a terminal skipped: " + ("--no-terminal was given" if args.no_terminal else "needs a POSIX pseudo-terminal"))

    medians = {label: median_of(ms) for label, ms in runs.items()}
    routes = sorted({k for m in medians.values() for k in m.requests})
    rows = [[route, *(_count(m.requests.get(route, 0) / args.jobs) for m in medians.values())] for route in routes]
    rows.append(["total per job", *(_count(sum(m.requests.values()) / args.jobs) for m in medians.values())])
    rows.append(["least possible", *([_count(LEAST_PER_JOB + 1 / args.jobs)] * len(medians))])
    report.say(table(["requests per job", *medians], rows))
    report.say("")
    report.say(table(["client", "wall s", "lag after the end s", "cpu s"], [[label, m.wall, m.wall - args.duration, m.cpu] for label, m in medians.items()]))
    for label, m in medians.items():
        total = sum(m.requests.values())
        report.result(label, {**m.as_dict(), "requests_per_job": total / args.jobs, "lag": m.wall - args.duration})

    def per_job(label: str) -> float:
        return sum(medians[label].requests.values()) / args.jobs

    least = LEAST_PER_JOB + 1 / args.jobs
    report.add_ratio(ratio("requests/job ratio opus-runner/floor (fixed 2 s)", per_job("opus-runner"), per_job("floor, fixed 2 s")))
    report.add_ratio(ratio("requests/job ratio opus-runner/least possible", per_job("opus-runner"), least))
    if terminal:
        report.add_ratio(ratio("requests/job ratio opus-runner on a terminal/floor (fixed 2 s)", per_job("opus-runner on a terminal"), per_job("floor, fixed 2 s")))
    report.add_ratio(Ratio("finish lag opus-runner", medians["opus-runner"].wall - args.duration, unit=" s"))
    report.add_ratio(Ratio("finish lag floor (fixed 2 s)", medians["floor, fixed 2 s"].wall - args.duration, unit=" s"))
    return report.finish()


if __name__ == "__main__":
    main_guard(run)
