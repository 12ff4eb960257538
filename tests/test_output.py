"""What a run prints (issue 16, "Output"): one line per finished job, a pytest-style end
(failures and their reasons last, then one totals line), --verbose's table within the terminal,
--quiet, a lone job's line, retries as lines and events, and --format github's annotations.

Every run here goes over real HTTP to the sandbox.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import WF, Project

TOTALS = re.compile(r"^(\d+ [a-z ]+)(, \d+ [a-z ]+)* in \d+(\.\d)?s$")


def _specs(project: Project, ok: int = 4, broken: int = 2, outputs: str = "[{type: ndjson, path: out.ndjson}]") -> list[str]:
    project.spec(
        "ask.yaml",
        f"""\
        apiVersion: opus-runner/v1
        kind: Job
        metadata: {{name: ask}}
        workflow: {{id: {WF['quick']}}}
        matrix: {{n: {list(range(1, ok + 1))}}}
        inputs: {{Question: "q{{{{ matrix.n }}}}"}}
        outputs: {outputs}
        """,
    )
    project.spec(
        "score.yaml",
        f"""\
        apiVersion: opus-runner/v1
        kind: Job
        metadata: {{name: score}}
        workflow: {{id: {WF['broken']}}}
        matrix: {{team: {['t' + str(i) for i in range(1, broken + 1)]}}}
        inputs: {{Question: "{{{{ matrix.team }}}}"}}
        outputs: {outputs}
        """,
    )
    return ["ask.yaml", "score.yaml"]


def test_a_batch_prints_one_line_per_finished_job_then_the_failures_then_the_totals(project: Project) -> None:
    result = project.run("run", *_specs(project))
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    progress = [line for line in lines if line.startswith("[")]
    # One line per job, counted, each job once: no second line about it while the batch runs.
    assert [line.split("]")[0] for line in progress] == [f"[{i}/6" for i in range(1, 7)]
    names = sorted(line.split()[1] for line in progress)
    assert names == ["ask[n=1]", "ask[n=2]", "ask[n=3]", "ask[n=4]", "score[team=t1]", "score[team=t2]"]
    assert all(re.fullmatch(r"\[\d/6\] \S+  (COMPLETED|FAILED)  \d+\.\ds", line) for line in progress)
    assert not any("submitted job" in line or " is IN_PROGRESS" in line for line in lines)
    # Each failure's reason is printed once, in the failures, which come last but the totals.
    assert result.stderr.count("model quota exceeded") == 2
    start = lines.index("failures (2):")
    heads, reasons = lines[start + 1 : -1 : 2], lines[start + 2 : -1 : 2]
    assert sorted(h.split(" (")[0] for h in heads) == ["FAILED score[team=t1]", "FAILED score[team=t2]"]
    assert all(re.fullmatch(r"FAILED \S+ \(job \S+, \d+\.\ds\)", h) for h in heads)
    assert all(r.startswith("    job ") and "failed node: Score" in r for r in reasons)
    assert len(lines) == start + 1 + 2 * 2 + 1
    assert lines[-1].startswith("4 completed, 2 failed in ") and TOTALS.match(lines[-1])
    # The jobs' lines, a blank line, the failures, the totals: nothing else, each once.
    assert lines[: start - 1] == ["submitting 6 jobs", *progress] and lines[start - 1] == ""
    assert [line for line in lines if TOTALS.match(line)] == [lines[-1]]
    assert "job id" not in result.stderr  # the per-job table is --verbose's


def test_verbose_adds_the_table_whose_rows_never_wrap(project: Project) -> None:
    specs = _specs(project, ok=2, broken=1, outputs="[{type: ndjson, path: results/a-rather-long-folder-name/out.ndjson}]")
    result = project.run("run", *specs, "--verbose", env={"COLUMNS": "60"})
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("job "))
    table = lines[header : header + 4]
    assert table[0].split() == ["job", "job", "id", "status", "duration", "results"]
    assert sorted(row.split()[0] for row in table[1:]) == ["ask[n=1]", "ask[n=2]", "score[team=t1]"]
    # Cut to the terminal, with an ellipsis, so no row takes two lines.
    assert all(len(row) <= 60 for row in table) and any("…" in row for row in table[1:])
    ours = [line for line in lines if line.startswith(("[", "FAILED", "failures", "1 failed", "2 completed")) or line in table]
    assert ours and all(len(line) <= 60 for line in ours)
    assert lines[-1].startswith("2 completed, 1 failed in ")


def test_a_finished_line_is_cut_to_the_terminal(project: Project) -> None:
    result = project.run("run", *_specs(project, ok=2, broken=0, outputs="[{type: ndjson, path: o.ndjson}]")[:1], env={"COLUMNS": "28"})
    assert result.exit_code == 0
    progress = [line for line in result.stderr.splitlines() if line.startswith("[")]
    # The name gives way, the status and duration stay.
    assert len(progress) == 2 and all(re.fullmatch(r"\[\d/2\] ask\[…  COMPLETED  \d\.\ds", line) for line in progress), progress


def test_quiet_prints_the_results_and_the_totals_line(project: Project) -> None:
    specs = _specs(project, ok=3, broken=0, outputs="[{type: stdout}]")[:1]
    result = project.run("run", *specs, "--quiet")
    assert result.exit_code == 0
    assert result.stderr.splitlines()[0] == result.stderr.strip() and result.stderr.startswith("3 completed in ")
    # The results: every job's, on stdout.
    assert sorted(re.findall(r"^(ask\[n=\d\]): job \S+ COMPLETED$", result.stdout, re.M)) == ["ask[n=1]", "ask[n=2]", "ask[n=3]"]
    assert result.stdout.count("Answer to q") == 3


def test_quiet_keeps_the_reasons_of_failures(project: Project) -> None:
    result = project.run("run", *_specs(project, ok=1, broken=1), "--quiet")
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert lines[0] == "failures (1):" and lines[1].startswith("FAILED score[team=t1] (job ")
    assert "model quota exceeded" in lines[2] and lines[3].startswith("1 completed, 1 failed in ") and len(lines) == 4


def test_a_single_job_shows_its_duration_and_where_its_results_went(project: Project) -> None:
    project.spec(
        "one.yaml",
        f"""\
        apiVersion: opus-runner/v1
        kind: Job
        metadata: {{name: one}}
        workflow: {{id: {WF['quick']}}}
        inputs: {{Question: solo}}
        outputs: [{{type: json, path: "out/{{{{ job.id }}}}.json"}}]
        """,
    )
    result = project.run("run", "one.yaml")
    assert result.exit_code == 0
    job_id = next(p.stem for p in (project.root / "out").iterdir())
    lines = result.stderr.splitlines()
    assert len(lines) == 2 and lines[0] == f"one: submitted job {job_id}"
    assert re.fullmatch(rf"one: job {job_id} COMPLETED in \d+\.\ds; results: json:out/{job_id}\.json", lines[1])
    quiet = project.run("run", "one.yaml", "-q")
    assert re.fullmatch(r"one: job \S+ COMPLETED in \d+\.\ds; results: json:out/\S+\.json\n", quiet.stderr)


def test_each_retry_is_a_line_on_the_terminal_and_an_event_in_json(project: Project) -> None:
    specs = _specs(project, ok=1, broken=0)[:1]
    project.sandbox.faults.add({"route": "execute", "kind": "status", "status": 503, "times": 1})
    result = project.run("run", *specs)
    assert result.exit_code == 0
    retries = [line for line in result.stderr.splitlines() if line.startswith("retrying in ")]
    assert len(retries) == 1
    assert re.fullmatch(r"retrying in \d+\.\ds: 503 from POST /job/execute \(attempt 2 of 6\)", retries[0])

    project.sandbox.faults.add({"route": "execute", "kind": "status", "status": 503, "times": 2})
    events = project.events(project.run("run", *specs, "--format", "json"))
    retry = [e for e in events if e["event"] == "retry"]
    assert [(e["call"], e["status"], e["attempt"], e["attempts"]) for e in retry] == [
        ("POST /job/execute", 503, 2, 6),
        ("POST /job/execute", 503, 3, 6),
    ]
    assert all(e["delay"] >= 0 and e["reason"] and e["time"] for e in retry)
    validator = _event_validator()
    assert [list(validator.iter_errors(e)) for e in events] == [[] for _ in events]
    summary = events[-1]
    assert summary["event"] == "summary" and summary["statuses"] == {"COMPLETED": 1} and summary["elapsed"] >= 0


def _event_validator():
    from jsonschema import Draft202012Validator

    schema = json.loads((Path(__file__).parents[1] / "docs" / "events.schema.json").read_text(encoding="utf-8"))
    return Draft202012Validator(schema)


def test_keep_going_skips_carry_their_place_in_json(project: Project) -> None:
    _skipping_spec(project)
    events = project.events(project.run("run", "rows.yaml", "--keep-going", "--format", "json"))
    [skipped] = [e for e in events if e["event"] == "message" and e["message"].startswith("skipped: ")]
    assert skipped["file"] == "rows.yaml" and isinstance(skipped["line"], int) and "Count" in skipped["problem"]
    assert not list(_event_validator().iter_errors(skipped))


def test_retries_of_a_server_that_is_down_show_as_they_happen(project: Project) -> None:
    """With nothing listening, each retry is a line: no long silence before the error."""
    specs = _specs(project, ok=1, broken=0)[:1]
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = project.run("validate", *specs, "--base-url", f"http://127.0.0.1:{port}")
    assert result.exit_code == 3
    retries = [line for line in result.stderr.splitlines() if "retrying in" in line]
    assert len(retries) == 5 and "ConnectError" in retries[0]


def test_github_format_annotates_job_failures_and_writes_text_for_the_rest(project: Project) -> None:
    result = project.run("run", *_specs(project, ok=1, broken=2), "--format", "github")
    assert result.exit_code == 1
    annotations = sorted(result.stdout.splitlines())
    assert len(annotations) == 2
    for team, line in zip(("t1", "t2"), annotations):
        assert re.fullmatch(
            rf"::error file=score\.yaml,title=score\[team={team}\] FAILED::job \S+ ended FAILED; "
            r"failed node: Score; Node 'Score' raised: model quota exceeded",
            line,
        ), line
    # The rest is the text of --format text, on stderr.
    assert result.stderr.splitlines()[-1].startswith("1 completed, 2 failed in ")


def test_github_format_annotates_each_validation_problem_at_its_line(project: Project) -> None:
    project.spec(
        "bad.yaml",
        f"""\
        apiVersion: opus-runner/v1
        kind: Job
        metadata: {{name: bad}}
        workflow: {{id: {WF['quick']}}}
        inputs:
          Question: fine
          Nonsense: 3
        """,
    )
    result = project.run("validate", "bad.yaml", "--format", "github")
    assert result.exit_code == 2
    annotations = result.stdout.splitlines()
    assert annotations and all(line.startswith("::error file=bad.yaml,line=") for line in annotations)
    assert any(re.match(r"::error file=bad\.yaml,line=7::inputs\.Nonsense: ", line) for line in annotations), annotations
    assert "error:" in result.stderr  # the text is still there for a human


def test_annotation_text_cannot_break_out_of_its_command() -> None:
    from opus_runner.progress import annotation

    line = annotation("error", "100% down\nsecond line", file="a,b:c.yaml", line=3, title="t:1,2")
    assert line == "::error file=a%2Cb%3Ac.yaml,line=3,title=t%3A1%2C2::100%25 down%0Asecond line"
    assert "\n" not in line


def _skipping_spec(project: Project) -> None:
    """Two jobs, the second with a value the workflow's Count (a number) cannot take."""
    project.spec(
        "rows.yaml",
        f"""\
        apiVersion: opus-runner/v1
        kind: Job
        metadata: {{name: rows}}
        workflow: {{id: {WF['quick']}}}
        matrix: {{n: [1, 2]}}
        inputs:
          Question: "q"
          Count: "{{{{ 'many' if matrix.n == 2 else 1 }}}}"
        outputs: [{{type: ndjson, path: out.ndjson}}]
        """,
    )


def test_keep_going_skips_are_annotated_as_warnings(project: Project) -> None:
    _skipping_spec(project)
    result = project.run("run", "rows.yaml", "--keep-going", "--format", "github")
    assert result.exit_code == 1
    warnings = [line for line in result.stdout.splitlines() if line.startswith("::warning ")]
    assert len(warnings) == 1 and warnings[0].startswith("::warning file=rows.yaml,line=") and "Count" in warnings[0]


def _on_a_terminal(project: Project, *args: str) -> str:
    """``opus-run ARGS`` with stdout and stderr on one pseudo-terminal, as in a shell: what the
    screen gets, escape sequences removed."""
    import pty

    leader, follower = pty.openpty()
    env = {**os.environ, **project.env, "COLUMNS": "100", "TERM": "xterm"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "opus_runner", *args], cwd=project.root, env=env, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=60)
    os.close(leader)
    from opus_runner.progress import _ESCAPE_SEQUENCE

    # A carriage return redraws the live line: what follows it starts a line of its own here.
    return _ESCAPE_SEQUENCE.sub("", b"".join(chunks).decode("utf-8", "replace")).replace("\r\n", "\n").replace("\r", "\n")


def test_on_a_terminal_the_stdout_output_is_each_jobs_only_line(project: Project) -> None:
    """The default stdout output prints each result headed by its job: on the same terminal the
    reporter adds no second line about that job (issue 16: each job was printed twice)."""
    pytest.importorskip("rich")
    screen = _on_a_terminal(project, "run", *_specs(project, ok=3, broken=1, outputs="[{type: stdout}]"))
    for key in ("ask[n=1]", "ask[n=2]", "ask[n=3]", "score[team=t1]"):
        assert len(re.findall(rf"^{re.escape(key)}: job \S+ (COMPLETED|FAILED)$", screen, re.M)) == 1, screen
        assert not re.search(rf"^\[\d/4\] {re.escape(key)} ", screen, re.M), screen
    assert re.search(r"^3 completed, 1 failed in \d+\.\ds$", screen, re.M), screen


def test_on_a_terminal_jobs_delivered_elsewhere_get_their_line(project: Project) -> None:
    pytest.importorskip("rich")
    screen = _on_a_terminal(project, "run", *_specs(project, ok=2, broken=1))
    assert sorted(re.findall(r"^\[\d/3\] (\S+)  (?:COMPLETED|FAILED)  \d+\.\ds$", screen, re.M)) == ["ask[n=1]", "ask[n=2]", "score[team=t1]"], screen
    assert screen.count("model quota exceeded") == 1


def test_a_failed_output_is_said_once_in_text_and_at_once_in_json(project: Project) -> None:
    """The text reporters keep a job's error for the summary; the event stream says it at once."""
    (project.root / "taken").mkdir()  # the json output cannot write a file where a folder is
    specs = _specs(project, ok=2, broken=0, outputs="[{type: json, path: taken}]")[:1]
    result = project.run("run", *specs)
    assert result.exit_code == 1
    assert result.stderr.count("output 'json'") == 2  # two jobs, each failure said once
    lines = result.stderr.splitlines()
    assert lines[lines.index("failures (2):") + 1].startswith("NOT DELIVERED ask[n=")
    assert lines[-1].startswith("2 not delivered in ")
    events = project.events(project.run("run", *specs, "--format", "json"))
    errors = [e for e in events if e["event"] == "message" and e["level"] == "error"]
    assert len(errors) == 2 and all("output 'json'" in e["message"] for e in errors)
