"""The benchmarks in bench/ run in a tiny configuration, exit 0 and print their ratio lines.

They are measuring tools, not tests of speed: nothing here asserts a target is met (a busy CI
machine would make that flaky). What is asserted is that each benchmark still runs end to end
against the sandbox, that the clients it compares made the calls it claims they make, and
that its report (text and --json) keeps its shape, so the benchmarks cannot rot.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import _common  # noqa: E402
import startup  # noqa: E402

pytestmark = pytest.mark.timeout(90)


def run_bench(script: str, *args: str) -> tuple[dict[str, Any], str]:
    """Run ``bench/<script> ... --json``; return the JSON document and the human report."""
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), *args, "--json"],
        capture_output=True,
        text=True,
        timeout=80,
        env=_common.clean_env(),
    )
    assert proc.returncode == 0, f"{script} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout), proc.stderr


def ratio_lines(report: str) -> dict[str, str]:
    """``name -> rest`` for every ``name: 1.23x ...`` line of a report."""
    lines = {}
    for line in report.splitlines():
        name, sep, rest = line.partition(": ")
        if sep and ("ratio" in name or name.startswith(("rows/s", "peak RSS", "finish lag", "forbidden"))):
            lines[name] = rest
    return lines


def test_batch_compares_the_runner_with_a_floor_making_the_same_calls() -> None:
    data, report = run_bench("batch.py", "--jobs", "20", "--concurrency", "5", "--repeat", "1", "--no-aaico")
    lines = ratio_lines(report)
    assert lines["wall ratio opus-runner/floor"].endswith(("ok", "MISSED"))
    assert "(target <= 1.25x)" in lines["wall ratio opus-runner/floor"]
    assert "(target <= 1.50x)" in lines["CPU ratio opus-runner/floor"]
    assert "opus-aaico skipped: --no-aaico was given" in report
    runner, floor = data["results"]["opus-runner"], data["results"]["floor"]
    # Same calls per job: initiate, execute, one status (duration 0), results; the workflow once.
    expected = {"GET results": 20, "GET status": 20, "GET workflow": 1, "POST execute": 20, "POST initiate": 20}
    assert runner["requests"] == expected
    assert floor["requests"] == expected
    for figures in (runner, floor):
        assert figures["wall"] > 0 and figures["cpu"] > 0 and figures["maxrss_mb"] > 10
    assert {r["name"] for r in data["ratios"]} >= {"wall ratio opus-runner/floor", "CPU ratio opus-runner/floor"}


def test_startup_measures_the_cli_and_what_help_imports() -> None:
    data, report = run_bench("startup.py", "--repeat", "1")
    lines = ratio_lines(report)
    assert "(target <= 3.00x)" in lines["--help ratio opus-run/python"]
    assert "validate --offline ratio opus-run/python" in lines
    # A real check, not only a measurement: --help must not import the heavy modules.
    assert data["results"]["help_imports"]["forbidden"] == []
    assert data["results"]["help_imports"]["modules"] > 50
    assert lines["forbidden heavy modules imported by --help"].startswith("0 modules")


def test_foreach_builds_every_row_against_the_sandbox() -> None:
    data, report = run_bench("foreach.py", "--jobs", "200")
    lines = ratio_lines(report)
    for kind in ("validate", "run --dry-run"):
        assert "(target >= 5,000 rows/s)" in lines[f"rows/s {kind}"]
        assert "(target < 150 MB)" in lines[f"peak RSS {kind}"]
        # Only the workflow schema was fetched (once): nothing was submitted.
        assert data["results"][f"{kind} (200 rows)"]["requests"] == {"GET workflow": 1}


def test_requests_per_job_counts_every_route() -> None:
    data, report = run_bench("requests_per_job.py", "--duration", "0.3")
    lines = ratio_lines(report)
    assert "requests/job ratio opus-runner/floor (fixed 2 s)" in lines
    assert "requests/job ratio opus-runner/least possible" in lines
    runner = data["results"]["opus-runner"]["requests"]
    assert runner["POST initiate"] == runner["POST execute"] == runner["GET results"] == 1
    assert runner["GET status"] >= 2  # PENDING at once, then COMPLETED after the first interval
    assert "GET audit" not in runner  # no progress display, no audit
    if "opus-runner on a terminal" in data["results"]:
        assert data["results"]["opus-runner on a terminal"]["requests"].get("GET audit", 0) >= 1


def test_ratio_lines_say_whether_the_target_was_met() -> None:
    assert _common.ratio("wall ratio a/b", 1.1, 1.0, 1.25).line() == "wall ratio a/b: 1.10x (target <= 1.25x) ok"
    assert _common.ratio("wall ratio a/b", 1.5, 1.0, 1.25).line() == "wall ratio a/b: 1.50x (target <= 1.25x) MISSED"
    rows = _common.Ratio("rows/s x", 4000.0, 5000.0, higher_is_better=True, unit=" rows/s")
    assert rows.line() == "rows/s x: 4,000 rows/s (target >= 5,000 rows/s) MISSED"
    assert _common.Ratio("peak RSS x", 80.0, 150.0, unit=" MB").line() == "peak RSS x: 80 MB (target < 150 MB) ok"
    assert _common.Ratio("info", 2.0).line() == "info: 2.00x"


def test_request_counts_are_the_difference_of_two_readings() -> None:
    before = {"GET status": 3, "POST initiate": 1}
    after = {"GET status": 5, "POST initiate": 1, "GET results": 2}
    assert _common.diff_counts(before, after) == {"GET results": 2, "GET status": 2}


def test_importtime_lines_are_parsed_with_their_depth() -> None:
    text = "\n".join(
        [
            "import time: self [us] | cumulative | imported package",
            "import time:       120 |        120 |     pluggy._config",
            "import time:       300 |        420 |   pluggy",
            "import time:      1000 |       1500 | opus_runner",
            "some other line",
        ]
    )
    entries = startup.parse_importtime(text)
    assert entries == [("pluggy._config", 120, 120, 2), ("pluggy", 300, 420, 1), ("opus_runner", 1000, 1500, 0)]
    assert startup.heavy_imports(entries) == {"pluggy": 420}


def test_a_failing_client_is_one_clear_message() -> None:
    failed = _common.run_measured("x", [sys.executable, "-c", "import sys; sys.stderr.write('boom'); sys.exit(3)"])
    assert failed.returncode == 3 and failed.stderr == "boom"
    with pytest.raises(_common.BenchError, match="x exited 3; its last words:\nboom"):
        _common.require_ok(failed, "x")
