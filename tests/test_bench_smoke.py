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


def test_batch_compares_the_runner_with_a_floor_doing_the_same_work() -> None:
    data, report = run_bench("batch.py", "--jobs", "20", "--concurrency", "5", "--repeat", "1", "--no-aaico")
    lines = ratio_lines(report)
    assert lines["wall ratio opus-runner/floor"].endswith(("ok", "MISSED"))
    assert "(target <= 1.10x)" in lines["wall ratio opus-runner/floor"]
    assert "(target <= 1.10x)" in lines["CPU ratio opus-runner/floor"]
    assert "opus-aaico skipped, no comparison published: --no-aaico was given" in report
    runner, floor = data["results"]["opus-runner"], data["results"]["floor"]
    # Same calls per job: initiate, execute, one status (duration 0), results; the workflow once.
    # (Both wrote one ndjson line per job: batch.py refuses to report otherwise.)
    expected = {"GET results": 20, "GET status": 20, "GET workflow": 1, "POST execute": 20, "POST initiate": 20}
    assert runner["requests"] == expected
    assert floor["requests"] == expected
    for figures in (runner, floor):
        assert figures["wall"] > 0 and figures["cpu"] > 0 and figures["maxrss_mb"] > 10
    assert {r["name"] for r in data["ratios"]} >= {"wall ratio opus-runner/floor", "CPU ratio opus-runner/floor"}
    assert data["settings"]["repeat"] == 1


def test_batch_runs_opus_runner_through_the_v1_case_api() -> None:
    data, report = run_bench("batch.py", "--jobs", "10", "--concurrency", "5", "--repeat", "1", "--no-aaico", "--no-lean-floor", "--api", "v1")
    assert data["settings"]["api"] == "v1"
    assert "opus-runner spoke the v1 API; the floor and opus-aaico speak only v0" in report
    # The same calls per job as the v0 floor, through v1's routes (each named like its v0 twin).
    expected = {"GET results": 10, "GET status": 10, "GET workflow": 1, "POST execute": 10, "POST initiate": 10}
    runner, floor = data["results"]["opus-runner"], data["results"]["floor"]
    assert runner["requests"] == expected == floor["requests"]
    assert runner["api_requests"] == {"v1": 41} and floor["api_requests"] == {"v0": 41}


def test_batch_rounds_default_to_five() -> None:
    import batch

    assert batch.make_parser().parse_args([]).repeat == 5


def _floor(sandbox: _common.Sandbox, work: Path, jobs: int) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]]:
    _common.write_rows(work / "rows.csv", jobs)
    out = work / "floor.ndjson"
    proc = subprocess.run(
        [
            sys.executable, str(BENCH / "floor_client.py"), "--rows", str(work / "rows.csv"),
            "--workflow", _common.BENCH_WORKFLOW_ID, "--ndjson", str(out), "--concurrency", "2", "--poll-interval", "0.05",
        ],
        capture_output=True, text=True, timeout=60, env=sandbox.env(),
    )  # fmt: skip
    lines = out.read_text(encoding="utf-8").splitlines() if out.exists() else []
    return proc, [json.loads(line) for line in lines]


def _fixture_with_faults(path: Path, faults: list[dict[str, Any]]) -> Path:
    _common.write_fixture(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    path.write_text(json.dumps({**data, "faults": faults}), encoding="utf-8")
    return path


def test_the_floor_retries_resets_and_writes_the_runners_result_lines(tmp_path: Path) -> None:
    import batch

    faults = [
        {"kind": "drop", "route": "initiate", "times": 1},
        {"kind": "drop", "route": "status", "times": 3},
        {"kind": "drop", "route": "results", "times": 2},
    ]
    with _common.Sandbox(_fixture_with_faults(tmp_path / "workflows.json", faults)) as sandbox:
        proc, records = _floor(sandbox, tmp_path, 4)
        requests = sandbox.stats()["requests"]
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout) == {"jobs": 4, "completed": 4, "statuses": {"COMPLETED": 4}}
    # Each dropped call was sent again; nothing else was.
    assert requests["POST initiate"] == 4 + 1 and requests["GET status"] >= 4 + 3 and requests["GET results"] == 4 + 2
    assert requests["POST execute"] == 4
    assert len(records) == 4 and len({r["job_id"] for r in records}) == 4
    for record in records:
        assert set(record) == batch.RESULT_FIELDS
        assert record["status"] == "COMPLETED" and record["final"] is True and record["error"] is None
        assert record["outputs"]["summary"].startswith("Report for customer-")


def test_the_floor_never_sends_an_execute_twice(tmp_path: Path) -> None:
    # A dropped execute may have arrived: the floor gives up instead of sending it again.
    with _common.Sandbox(_fixture_with_faults(tmp_path / "workflows.json", [{"kind": "drop", "route": "execute", "times": 1}])) as sandbox:
        proc, records = _floor(sandbox, tmp_path, 1)
        requests = sandbox.stats()["requests"]
    assert proc.returncode != 0
    assert "RemoteProtocolError" in proc.stderr or "ReadError" in proc.stderr
    assert requests["POST execute"] == 1
    assert records == []


def test_an_incomplete_aaico_environment_is_named_and_refused(tmp_path: Path) -> None:
    # This interpreter, made to lack sniffio the way a fresh `pip install opus-aaico` does.
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text("import sys\nsys.modules['sniffio'] = None\n", encoding="utf-8")
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\nPYTHONPATH={hide} exec {sys.executable} "$@"\n', encoding="utf-8")
    python.chmod(0o755)
    env, why = _common.aaico_env(str(python))
    assert env is not None and why == ""
    assert env.version and env.missing == ["sniffio"]
    refusal = env.refusal()
    assert refusal is not None
    assert "lacks sniffio" in refusal and f"{python} -m pip install sniffio" in refusal
    complete, _ = _common.aaico_env(sys.executable)
    assert complete is not None and complete.missing == [] and complete.refusal() is None
    missing, why = _common.aaico_env(str(tmp_path / "no-such-python"))
    assert missing is None and "cannot be run" in why


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


def test_requests_per_job_counts_requests_and_lags_with_the_clock_sped_up() -> None:
    data, report = run_bench("requests_per_job.py", "--modes", "poll", "--durations", "2,4", "--jobs", "2", "--scale", "4")
    lines = ratio_lines(report)
    assert "requests per job, 2 s poll" in report and "finish lag after the end, 4 s poll" in lines
    for name in ("2 s poll", "4 s poll"):
        figures = data["results"][name]
        requests = figures["requests"]
        assert requests["POST initiate"] == requests["POST execute"] == requests["GET results"] == 2
        assert requests["GET workflow"] == 1
        assert "GET audit" not in requests  # --format json: no progress display, no audit
        # the first status at once (the job runs 0.5 s or 1 s), at least one more to see the end
        assert requests["GET status"] >= 2 * 2
        assert figures["requests_per_job"] == (sum(requests.values()) - 1) / 2
        # A job cannot be reported before it ended.
        assert figures["lag_after_end"] > 0
        assert figures["lag_after_callback"] is None


def test_requests_per_job_follows_jobs_by_callback() -> None:
    data, report = run_bench("requests_per_job.py", "--modes", "callback", "--durations", "2,4", "--jobs", "2", "--scale", "4")
    lines = ratio_lines(report)
    assert "(target <= 4 req)" in report
    assert lines["finish lag after the callback, 4 s callback"].endswith(("ok", "MISSED"))
    for name in ("2 s callback", "4 s callback"):
        figures = data["results"][name]
        requests = figures["requests"]
        assert requests["POST initiate"] == requests["POST execute"] == requests["GET results"] == 2
        assert figures["callbacks_sent"] == 2  # the sandbox POSTed each job's callback...
        # ...and the runner was woken by it: fewer status reads than polling makes (3 or more).
        assert requests.get("GET status", 0) <= 2 * 2
        # Read from the journal's accepted callbacks: the job is reported after its callback came.
        assert figures["lag_after_callback"] > 0
        assert figures["lag_after_end"] >= figures["lag_after_callback"]


def test_temporal_batch_runs_one_and_two_workers_and_checks_exactly_once() -> None:
    from temporal_support import need_temporal

    need_temporal()
    data, report = run_bench("temporal_batch.py", "--jobs", "30", "--repeat", "1", "--chunk-size", "10")
    names = {r["name"]: r for r in data["ratios"]}
    assert names["worker CPU per job on 2 workers"]["target"] == 30.0
    assert names["Temporal server CPU per job on 2 workers"]["target"] == 2.0
    assert names["wall, 1 worker / 2 workers"]["target"] == 1.6
    for workers in ("1", "2"):
        (run,) = data["results"]["runs"][workers]
        assert run["worker_batch_cpu"] > 0 and run["server_cpu"] > 0 and run["wall"] > 0
    assert "two workers could shorten it" in report


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
