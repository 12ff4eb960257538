"""Nothing lost, nothing leaked, nothing executed twice (issue 5), over real loopback HTTP."""

from __future__ import annotations

import os
import signal
from pathlib import Path


import opus_runner
from opus_runner.client import RetryPolicy
from conftest import Project, header, journal_jobs, opus_run, wait_for

FAST_RETRY = RetryPolicy(attempts=8, base=0.01, cap=0.05)
ECHO = "00000000-0000-4000-8000-0000000ec404"  # a workflow that echoes its inputs back


def batch_spec(project: Project, rows: int, workflow: str = "quick", name: str = "batch", extra: str = "") -> Path:
    project.file("rows.csv", "q\n" + "".join(f"question {i}\n" for i in range(rows)))
    return project.spec(
        f"{name}.yaml",
        header(name, workflow, "foreach: {file: rows.csv}\ninputs:\n  Question: '{{ row.q }}'\n" + extra),
    )


def run_lib(project: Project, spec: Path, **options):
    cwd = os.getcwd()
    os.chdir(project.root)
    try:
        return opus_runner.run(
            spec,
            base_url=project.sandbox.base_url,
            service_key=project.sandbox.key,
            retry=FAST_RETRY,
            **options,
        )
    finally:
        os.chdir(cwd)


def test_batch_of_50_under_429s_and_503s_executes_each_job_once(project: Project) -> None:
    spec = batch_spec(project, 50, extra="outputs: [{type: ndjson, path: out.ndjson}]\n")
    project.sandbox.faults.add({"route": "*", "kind": "status", "status": 503, "probability": 0.15, "seed": 7})
    project.sandbox.faults.add({"route": "*", "kind": "rate_limit", "retry_after": "0", "probability": 0.1, "seed": 11})
    report = run_lib(project, spec, concurrency=8, quiet=True)
    assert report.exit_code == 0, [o.error for o in report.outcomes if o.error]
    state = project.sandbox.state
    assert len(report.outcomes) == 50 and all(o.status == "COMPLETED" for o in report.outcomes)
    assert len(state.executes) == 50 and set(state.executes.values()) == {1}
    # Faults really happened: more requests arrived than a clean run needs.
    assert sum(state.requests.values()) > 50 * 4
    lines = (project.root / "out.ndjson").read_text().splitlines()
    assert len(lines) == 50


def test_lost_execute_response_is_resolved_by_status_not_resent(project: Project) -> None:
    spec = project.spec("q.yaml", header("q", "quick", "inputs:\n  Question: lost\n"))
    project.sandbox.faults.add({"route": "execute", "kind": "lose_response", "times": 1})
    report = run_lib(project, spec)
    assert report.exit_code == 0
    assert report.results[0].outputs == {"answer": "Answer to lost"}
    assert list(project.sandbox.state.executes.values()) == [1]
    assert project.sandbox.state.count("POST", "execute") == 1


def test_execute_answered_503_is_resent_and_runs_once(project: Project) -> None:
    spec = project.spec("q.yaml", header("q", "quick", "inputs:\n  Question: again\n"))
    project.sandbox.faults.add({"route": "execute", "kind": "status", "status": 503, "times": 2})
    report = run_lib(project, spec)
    assert report.exit_code == 0
    assert project.sandbox.state.count("POST", "execute") == 3
    assert list(project.sandbox.state.executes.values()) == [1]


def test_kill_9_mid_batch_then_resume_finishes_everything_once(project: Project) -> None:
    project.sandbox.state  # the sandbox outlives the killed runner
    spec = batch_spec(project, 16, workflow="quick", extra="outputs: [{type: ndjson, path: out.ndjson}]\n")
    # Slow the jobs down so the kill lands while some are running and some not started.
    project.sandbox.faults.add({"route": "status", "kind": "delay", "seconds": 0.2})
    proc = opus_run(project, "run", spec.name, "--concurrency", "4", "-q")
    wait_for(lambda: len(project.sandbox.state.executes) >= 5)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    executed_before = dict(project.sandbox.state.executes)
    assert 5 <= len(executed_before) < 16
    project.sandbox.faults.clear()

    resumed = opus_run(project, "resume", "-q")
    out, err = resumed.communicate(timeout=60)
    assert resumed.returncode == 0, err
    state = project.sandbox.state
    assert set(state.executes.values()) == {1}, "a job was executed twice"
    rows = journal_jobs(project)
    assert len({r["plan_key"] for r in rows}) == 16
    assert all(r["phase"] == "finished" and r["status"] == "COMPLETED" for r in rows)
    assert all(r["job_id"] in state.executes for r in rows)
    lines = (project.root / "out.ndjson").read_text().splitlines()
    assert len(lines) == 16


def test_ctrl_c_saves_state_prints_resume_and_exits_130(project: Project) -> None:
    spec = batch_spec(project, 6, workflow="slow", name="slowbatch")
    proc = opus_run(project, "run", spec.name, "--concurrency", "2")
    wait_for(lambda: len(project.sandbox.state.executes) >= 2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, err
    assert "opus-run resume" in err
    run_id = err.split("opus-run resume ")[1].split()[0]
    rows = journal_jobs(project)
    assert rows and all(r["run_id"] == run_id for r in rows)
    assert all(r["job_id"] for r in rows if r["phase"] in ("executing", "executed"))


FAILING_OUTPUT = '''
from opus_runner import hookimpl

def write(result, config, ctx):
    raise RuntimeError("disk quota exceeded")

@hookimpl
def opus_register_outputs(register):
    register("archive", write)
'''

FIXED_OUTPUT = '''
from pathlib import Path
from opus_runner import hookimpl

def write(result, config, ctx):
    (ctx.spec_dir / "archived.txt").write_text(f"{result.job_id} {result.outputs['answer']}")

@hookimpl
def opus_register_outputs(register):
    register("archive", write)
'''


def test_failing_output_keeps_result_and_resume_delivers_it(project: Project) -> None:
    project.file("plugins/archive.py", FAILING_OUTPUT)
    spec = project.spec(
        "q.yaml",
        header("q", "quick", "inputs:\n  Question: kept\noutputs:\n  - type: archive\n  - type: json\n    path: out.json\n"),
    )
    result = project.run("run", spec)
    assert result.exit_code == 1
    assert "archive" in result.stderr and "disk quota exceeded" in result.stderr
    assert (project.root / "out.json").exists()  # the other output still ran
    [row] = journal_jobs(project)
    assert row["status"] == "COMPLETED" and "Answer to kept" in row["result"]

    project.file("plugins/archive.py", FIXED_OUTPUT)
    resumed = project.run("resume")
    assert resumed.exit_code == 0, resumed.output
    [job_id] = list(project.sandbox.state.executes)
    assert (project.root / "archived.txt").read_text() == f"{job_id} Answer to kept"
    assert project.sandbox.state.executes[job_id] == 1
    assert project.run("resume").exit_code == 2  # nothing left to resume


def test_key_and_secrets_appear_nowhere(project: Project, opus_sandbox_factory) -> None:
    secret = "s3cr3t-token-value-4242"
    echo = opus_sandbox_factory(
        {
            "workflows": {
                ECHO: {
                    "duration": "0.1s",
                    "inputs": [
                        {"variable_name": "workflow_input_q", "display_name": "Question", "type": "str"},
                        {"variable_name": "workflow_input_t", "display_name": "Token", "type": "str"},
                    ],
                    "outputs": {"echoed": "{{ inputs.Token }} / {{ inputs.Question }}"},
                }
            }
        }
    )
    spec = project.spec(
        "s.yaml",
        header(
            "s",
            ECHO,
            """\
            inputs:
              Question: "uses {{ secret('MY_TOKEN') }}"
              Token: "{{ secret('MY_TOKEN') }}"
            outputs:
              - type: stdout
              - type: json
                path: out/{{ job.id }}.json
              - type: ndjson
                path: out/all.ndjson
            notify:
              - type: log
                on: [submitted, completed, failed]
            """,
        ),
    )
    env = {"OPUS_BASE_URL": echo.base_url, "OPUS_SERVICE_KEY": echo.key, "MY_TOKEN": secret}
    texts = []
    for args in (["run", "--verbose"], ["run", "--format", "json", "--verbose"], ["render"], ["validate", "--verbose"]):
        result = project.run(args[0], str(spec), *args[1:], env=env)
        assert result.exit_code == 0, result.output
        texts.append(result.stdout + result.stderr)
    # The workflow did receive the secret (it is sent to Opus)...
    received = [p["jobPayloadSchemaInstance"]["workflow_input_t"]["value"] for p in echo.state.payloads.values()]
    assert received == [secret, secret]
    files = [p.read_bytes() for p in (project.root / "out").rglob("*") if p.is_file()]
    blobs = [t.encode() for t in texts] + files + [project.journal_bytes()]
    assert project.journal_bytes() and files
    for needle in (secret.encode(), echo.key.encode()):
        for blob in blobs:
            assert needle not in blob
    assert any(b"***" in blob for blob in files)


def test_a_job_given_up_on_is_followed_again_by_resume(project: Project) -> None:
    spec = project.spec("s.yaml", header("s", "medium", "inputs:\n  Question: patience\n"))
    result = project.run("run", spec, "--timeout", "0.2s")
    assert result.exit_code == 1 and "opus-run resume" in result.output
    [row] = journal_jobs(project)
    assert row["phase"] == "executed" and row["status"] == "TIMED_OUT"
    resumed = project.run("resume", "--timeout", "20s")  # the run's own 0.2s would give up again
    assert resumed.exit_code == 0, resumed.output
    assert "Answer to patience" in resumed.stdout
    [row] = journal_jobs(project)
    assert row["phase"] == "finished" and row["status"] == "COMPLETED"
    assert list(project.sandbox.state.executes.values()) == [1]
