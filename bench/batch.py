"""Batch throughput: N duration-0 jobs at concurrency C, opus-runner against the floor.

(a) opus-runner: one spec with a CSV foreach of N rows and an ``ndjson`` output, run by
    ``opus-run run spec.yaml --concurrency C --format json -q --state-dir <tmp>`` (wait
    poll_interval 50 ms, so a duration-0 job is seen finished at its first status call);
(b) the floor: bench/floor_client.py, a hand-written httpx script that does the same work: the
    same API calls per job on the same poll schedule, one result line per job in an ndjson file,
    one AsyncClient and a semaphore of C;
(c) opus-aaico's async ``workflows.run`` on the same jobs, when an interpreter with a complete
    opus-aaico environment is at hand (``--aaico-python``; sniffio included: see
    ``_common.AAICO_STACK``); otherwise the report says what is missing and how to install it,
    and publishes no comparison.

Every client is a child process measured with ``os.wait4``: wall seconds, CPU seconds, peak
RSS. The sandbox runs in its own process and is reset before every run; the requests it
counted give the requests per job of each client. The variants run in interleaved rounds
(``--repeat``, default 5; the order rotated each round) and the figures are medians. Targets:
opus-runner's wall and CPU <= 1.1x the floor's, its CPU <= 0.7x opus-aaico's.

    python bench/batch.py                   # 1000 jobs, concurrency 50, 5 rounds
    python bench/batch.py --jobs 200 --repeat 3 --json
    python bench/batch.py --profile /tmp/runner.prof   # plus one opus-runner run under cProfile
    python bench/batch.py --api v1          # opus-runner through the v1 Case API

``--api v1`` runs opus-runner through the v1 Case API of the same sandbox; the floor and
opus-aaico speak only v0 (the Jobs API), so the ratios then compare opus-runner in v1 with
the v0 floor: the same jobs and the same requests per job, through the other generation's routes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    BENCH_DIR,
    BENCH_DOCUMENTED_ID,
    AAICO_STACK,
    BENCH_WORKFLOW_ID,
    PYTHON,
    BenchError,
    Measurement,
    Ratio,
    Report,
    Sandbox,
    Workdir,
    aaico_env,
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

WALL_TARGET = 1.1
CPU_TARGET = 1.1
AAICO_CPU_TARGET = 0.7
MAX_INTERVAL = 1.0
SPEC_NAME = "bench-batch"
RUNNER_NDJSON = "runner.ndjson"
#: The fields of each line of the runner's ndjson output (JobResult.as_dict): the floor writes them too.
RESULT_FIELDS = {"job_id", "status", "spec_name", "plan_key", "title", "url", "started_at", "finished_at", "error", "final", "outputs"}


def _runner_argv(spec: Path, concurrency: int, state_dir: Path, api: str = "v0") -> list[str]:
    return [
        *opus_run_command(),
        "run",
        str(spec),
        "--concurrency",
        str(concurrency),
        "--format",
        "json",
        "-q",
        "--state-dir",
        str(state_dir),
        "--api",
        api,
    ]


def _check_runner(m: Measurement, jobs: int) -> None:
    require_ok(m, "opus-run run")
    summary = None
    for line in reversed(m.stdout.splitlines()):
        data = json.loads(line)
        if data.get("event") == "summary":
            summary = data
            break
    if summary is None or summary.get("statuses", {}).get("COMPLETED") != jobs:
        raise BenchError(f"opus-run did not complete all {jobs} jobs: {summary}")


def _check_client(m: Measurement, jobs: int, what: str) -> None:
    require_ok(m, what)
    summary = json.loads(m.stdout.strip().splitlines()[-1])
    if summary.get("completed") != jobs:
        raise BenchError(f"{what} did not complete all {jobs} jobs: {summary}")


def _check_ndjson(path: Path, jobs: int, what: str) -> None:
    """The same work done: one line per job, each with the runner's ndjson fields, COMPLETED."""
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    records = [json.loads(line) for line in lines]
    if len(records) != jobs or len({r["job_id"] for r in records}) != jobs:
        raise BenchError(f"{what} wrote {len(records)} result lines to {path.name}, expected one for each of {jobs} jobs")
    for record in records:
        if set(record) != RESULT_FIELDS or record["status"] != "COMPLETED" or not record["outputs"]:
            raise BenchError(f"{what} wrote a result line unlike the runner's ndjson output: {record}")


def _profile(sandbox: Sandbox, spec: Path, concurrency: int, workdir: Path, out: Path, api: str) -> str:
    """One more opus-runner run under cProfile (not counted in the figures); its top functions."""
    import io
    import pstats

    runner_args = _runner_argv(spec, concurrency, workdir / "state-profile", api)[len(opus_run_command()) :]
    argv = [PYTHON, "-m", "cProfile", "-o", str(out), "-m", "opus_runner", *runner_args]
    m = sandbox.measure("opus-runner (cProfile)", argv, cwd=workdir)
    require_ok(m, "opus-run under cProfile")
    text = io.StringIO()
    pstats.Stats(str(out), stream=text).sort_stats("tottime").print_stats(20)
    return f"cProfile of one more opus-runner run ({m.wall:.1f} s under the profiler), saved to {out}:\n{text.getvalue()}"


def make_parser() -> argparse.ArgumentParser:
    """The options of this benchmark (five interleaved rounds by default)."""
    parser = base_parser(__doc__ or "", jobs=1000, concurrency=50, repeat=5)
    parser.add_argument("--poll-interval", type=float, default=0.05, help="first poll interval in seconds [default: 0.05]")
    parser.add_argument("--aaico-python", metavar="PYTHON", help="an interpreter that can import opus_aaico [env: OPUS_BENCH_AAICO_PYTHON]")
    parser.add_argument("--no-aaico", action="store_true", help="do not try the opus-aaico SDK")
    parser.add_argument("--no-lean-floor", action="store_true", help="do not also run the floor over opus-runner's connection pool")
    parser.add_argument("--profile", metavar="FILE", type=Path, help="also run opus-runner once under cProfile, saving the stats here")
    parser.add_argument(
        "--api", choices=("v0", "v1"), default="v0",
        help="the Opus API generation opus-runner speaks (the floor and opus-aaico speak v0) [default: v0]",
    )  # fmt: skip
    return parser


def run() -> int:
    args = make_parser().parse_args()
    report = Report("batch", args)
    report.settings(jobs=args.jobs, concurrency=args.concurrency, repeat=args.repeat, poll_interval=args.poll_interval, duration=0, api=args.api)

    aaico, why = None, "--no-aaico was given"
    if not args.no_aaico:
        env, why = aaico_env(args.aaico_python)
        if env is not None:
            why = env.refusal() or ""
            aaico = None if why else env
    variants: list[tuple[str, Any]] = [("opus-runner", None), ("floor", None)]
    if not args.no_lean_floor:
        variants.append(("floor+pool", None))
    if aaico is not None:
        variants.append((f"opus-aaico {aaico.version}", aaico.python))

    with Workdir(args.keep) as work:
        write_rows(work / "rows.csv", args.jobs)
        spec = write_spec(
            work / "batch.yaml",
            rows_file="rows.csv",
            wait={"timeout": "10m", "poll_interval": f"{args.poll_interval}s", "max_interval": f"{MAX_INTERVAL}s"},
            name=SPEC_NAME,
            ndjson=RUNNER_NDJSON,
        )
        runs: dict[str, list[Measurement]] = {label: [] for label, _ in variants}
        with Sandbox(write_fixture(work / "workflows.json", duration=0)) as sandbox:
            for r in range(args.repeat):
                # Rotate the order, so drift (caches, a warming server) favours no one.
                shift = r % len(variants)
                for label, python in variants[shift:] + variants[:shift]:
                    report.progress(f"run {r + 1}/{args.repeat}: {label}")
                    if label == "opus-runner":
                        out = work / RUNNER_NDJSON
                        out.unlink(missing_ok=True)  # the output appends: one round's lines only
                        m = sandbox.measure(label, _runner_argv(spec, args.concurrency, work / f"state-{r}", args.api), cwd=work)
                        _check_runner(m, args.jobs)
                        _check_ndjson(out, args.jobs, "opus-runner")
                    elif label.startswith("floor"):
                        out = work / "floor.ndjson"
                        out.unlink(missing_ok=True)
                        argv = [
                            PYTHON,
                            str(BENCH_DIR / "floor_client.py"),
                            "--rows", str(work / "rows.csv"),
                            "--workflow", BENCH_WORKFLOW_ID,
                            "--ndjson", str(out),
                            "--name", SPEC_NAME,
                            "--concurrency", str(args.concurrency),
                            "--poll-interval", str(args.poll_interval),
                            "--max-interval", str(MAX_INTERVAL),
                        ]  # fmt: skip
                        if label == "floor+pool":
                            argv.append("--lean-pool")
                        m = sandbox.measure(label, argv, cwd=work)
                        _check_client(m, args.jobs, "the floor client")
                        _check_ndjson(out, args.jobs, "the floor client")
                    else:
                        argv = [
                            python,
                            str(BENCH_DIR / "aaico_client.py"),
                            "--rows", str(work / "rows.csv"),
                            "--workflow", BENCH_DOCUMENTED_ID,
                            "--concurrency", str(args.concurrency),
                            "--poll-interval", str(args.poll_interval),
                        ]  # fmt: skip
                        m = sandbox.measure(label, argv, cwd=work)
                        _check_client(m, args.jobs, "the opus-aaico client")
                    runs[label].append(m)
            profile = None
            if args.profile is not None:
                report.progress("one more opus-runner run under cProfile")
                profile = _profile(sandbox, spec, args.concurrency, work, args.profile.resolve(), args.api)

    medians = {label: median_of(ms) for label, ms in runs.items()}
    rows = []
    for label, m in medians.items():
        total = sum(m.requests.values())
        rows.append(
            [label, m.wall, args.jobs / m.wall, m.cpu, m.user, m.sys, m.maxrss_mb, m.server_cpu, total / args.jobs]
        )
        report.result(label, {**m.as_dict(), "jobs_per_s": args.jobs / m.wall, "requests_per_job": total / args.jobs})
    report.say(table(["client", "wall s", "jobs/s", "cpu s", "user s", "sys s", "peak MB", "server cpu s", "req/job"], rows))
    report.say("")
    routes = sorted({k for m in medians.values() for k in m.requests})
    report.say(table(["requests", *medians], [[route, *(m.requests.get(route, 0) for m in medians.values())] for route in routes]))
    if args.api != "v0":
        report.note(f"opus-runner spoke the {args.api} API; the floor and opus-aaico speak only v0, over the same sandbox")
    if aaico is None:
        report.note(f"opus-aaico skipped, no comparison published: {why}")
    else:
        report.note(
            f"opus-aaico ran with {aaico.python} (its HTTP stack complete: {', '.join(AAICO_STACK)}) against "
            "the documented-dialect copy of the workflow: its workflows.run sends no callbackUrl, which "
            "the live service refuses with 400; it writes no result lines"
        )
        if aaico.wire_differences:
            report.note("optional HTTP modules that differ between the two interpreters: " + ", ".join(aaico.wire_differences))
    if profile is not None:
        report.say("")
        report.say(profile.rstrip())

    runner, floor = medians["opus-runner"], medians["floor"]
    report.add_ratio(ratio("wall ratio opus-runner/floor", runner.wall, floor.wall, WALL_TARGET))
    report.add_ratio(ratio("CPU ratio opus-runner/floor", runner.cpu, floor.cpu, CPU_TARGET))
    report.add_ratio(Ratio("requests/job ratio opus-runner/floor", sum(runner.requests.values()) / max(1, sum(floor.requests.values()))))
    if "floor+pool" in medians:
        # For information: the floor over opus-runner's own connection pool, so the share of
        # the runner's lead that is the pool alone is in plain sight.
        lean = medians["floor+pool"]
        report.add_ratio(ratio("CPU ratio opus-runner/floor+pool", runner.cpu, lean.cpu))
        report.add_ratio(ratio("wall ratio opus-runner/floor+pool", runner.wall, lean.wall))
    for label, m in medians.items():
        if label.startswith("opus-aaico"):
            report.add_ratio(ratio("CPU ratio opus-runner/opus-aaico", runner.cpu, m.cpu, AAICO_CPU_TARGET))
            report.add_ratio(ratio("wall ratio opus-runner/opus-aaico", runner.wall, m.wall))
            report.add_ratio(ratio("CPU ratio opus-aaico/floor", m.cpu, floor.cpu))
    return report.finish()


if __name__ == "__main__":
    main_guard(run)
