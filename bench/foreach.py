"""Foreach planning: a 10,000-row CSV checked by ``opus-run validate`` and ``opus-run run --dry-run``.

Both run against the sandbox (in its own process), so every row's payload is rendered, built,
coerced and checked against the live workflow schema, as before a real submission; nothing is
submitted. Reported per command: wall seconds, CPU seconds, rows per second and peak RSS, with
the same command on a 1-row CSV as the baseline measured in the same run (so the per-row cost
and the memory growth with rows are visible). Targets: >= 5,000 rows/s and < 150 MB.

    python bench/foreach.py                  # 10,000 rows
    python bench/foreach.py --jobs 50000 --json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    BenchError,
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

ROWS_TARGET = 5000.0
MEMORY_TARGET_MB = 150.0


def _check(kind: str, m: Measurement, rows: int, stdout_file: Path) -> None:
    require_ok(m, f"opus-run {kind}")
    if kind == "validate":
        wanted = f"{rows} job{'s' if rows != 1 else ''} valid"
        if wanted not in m.stderr:
            raise BenchError(f"opus-run validate did not report {wanted!r}: {m.stderr.strip()[-500:]}")
        return
    rendered = 0
    with stdout_file.open(encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("{") and json.loads(line).get("event") == "rendered":
                rendered += 1
    if rendered != rows:
        raise BenchError(f"opus-run run --dry-run rendered {rendered} payloads for {rows} rows")


def run() -> int:
    parser = base_parser(__doc__ or "", jobs=10_000, concurrency=4, repeat=1)
    args = parser.parse_args()
    report = Report("foreach", args)
    report.settings(rows=args.jobs, repeat=args.repeat)
    opus_run = opus_run_command()
    with Workdir(args.keep) as work:
        write_rows(work / "rows.csv", args.jobs)
        write_rows(work / "one.csv", 1)
        specs = {
            args.jobs: write_spec(work / "foreach.yaml", rows_file="rows.csv", name="bench-foreach"),
            1: write_spec(work / "foreach-one.yaml", rows_file="one.csv", name="bench-foreach-one"),
        }
        commands = {
            "validate": lambda spec: [*opus_run, "validate", str(spec)],
            "run --dry-run": lambda spec: [*opus_run, "run", str(spec), "--dry-run", "--format", "json", "--concurrency", str(args.concurrency), "--state-dir", str(work / "state")],
        }
        runs: dict[tuple[str, int], list[Measurement]] = {}
        with Sandbox(write_fixture(work / "workflows.json")) as sandbox:
            for r in range(args.repeat):
                for kind, argv in commands.items():
                    for rows, spec in specs.items():
                        report.progress(f"run {r + 1}/{args.repeat}: {kind}, {rows} row(s)")
                        out = work / "stdout.txt"
                        m = sandbox.measure(f"{kind} ({rows:,} row{'s' if rows != 1 else ''})", argv(spec), cwd=work, stdout_path=out)
                        _check(kind.split()[0] if kind == "validate" else "dry-run", m, rows, out)
                        runs.setdefault((kind, rows), []).append(m)

    medians = {key: median_of(ms) for key, ms in runs.items()}
    table_rows = []
    for (kind, rows), m in medians.items():
        table_rows.append([m.label, m.wall, m.cpu, rows / m.wall, m.maxrss_mb, sum(m.requests.values())])
        report.result(m.label, {**m.as_dict(), "rows": rows, "rows_per_s": rows / m.wall})
    report.say(table(["command", "wall s", "cpu s", "rows/s", "peak MB", "requests"], table_rows))

    for kind in commands:
        big, one = medians[(kind, args.jobs)], medians[(kind, 1)]
        marginal = (args.jobs - 1) / (big.wall - one.wall) if big.wall > one.wall else float("inf")
        report.result(f"{kind} marginal rows/s", marginal)
        report.add_ratio(Ratio(f"rows/s {kind}", args.jobs / big.wall, ROWS_TARGET, higher_is_better=True, unit=" rows/s"))
        report.add_ratio(Ratio(f"rows/s {kind}, start-up excluded (vs 1 row)", marginal, unit=" rows/s"))
        report.add_ratio(Ratio(f"peak RSS {kind}", big.maxrss_mb, MEMORY_TARGET_MB, unit=" MB"))
        report.add_ratio(ratio(f"peak RSS ratio {kind} {args.jobs:,} rows/1 row", big.maxrss_mb, one.maxrss_mb))
        report.add_ratio(ratio(f"wall ratio {kind} {args.jobs:,} rows/1 row", big.wall, one.wall))
    return report.finish()


if __name__ == "__main__":
    main_guard(run)
