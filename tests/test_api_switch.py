"""Switching a project between the v0 Jobs API and the v1 Case API (issue 17), end to end:
the setting, ``--api``, ids of the other generation, a base URL without v1, locks, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import WF, Project, header, make_project
from opus_runner.engine.options import RunOptions
from opus_runner.lockfile import LOCK_FILE

CASE = "3f69dcbf-2d6e-4b8a-9c1e-5a7b0c4d2e11"


def quick_spec(project: Project) -> Path:
    return project.spec("q.yaml", header("q", "quick") + "inputs:\n  Question: q\n")


def set_api(project: Project, line: str) -> None:
    (project.root / "opus-runner.toml").write_text(f'state_dir = ".opus-run"\n{line}\n')


def test_one_setting_switches_a_project_to_v1(project: Project) -> None:
    spec = quick_spec(project)
    set_api(project, 'api = "v1"')
    result = project.run("run", spec, "--format", "json")
    assert result.exit_code == 0, result.output
    state = project.sandbox.state
    assert set(state.api_requests) == {"v1"}
    [case_id] = state.payloads
    assert len(case_id) == 36 and state.payloads[case_id] == {
        "payload": {
            "workflow_input_q": {"value": "q", "type": "str", "displayName": "Question"},
            "workflow_input_n": {"value": None, "type": "float", "displayName": "Count"},
        }
    }
    completed = next(e for e in project.events(result) if e["event"] == "completed")
    assert completed["job_id"] == case_id and completed["outputs"] == {"answer": "Answer to q"}


def test_api_option_and_environment_win_over_the_project_file(project: Project) -> None:
    spec = quick_spec(project)
    set_api(project, 'api = "v1"')
    assert project.run("run", spec, "--api", "v0").exit_code == 0
    assert set(project.sandbox.state.api_requests) == {"v0"}
    project.sandbox.state.reset()
    set_api(project, "")
    assert project.run("run", spec, env={"OPUS_API": "v1"}).exit_code == 0
    assert set(project.sandbox.state.api_requests) == {"v1"}


@pytest.mark.parametrize(
    ("line", "env", "message"),
    [
        ('api = "v2"', {}, 'opus-runner.toml: api must be "v0" (the Jobs API, the default) or "v1" (the Case API), found \'v2\''),
        ("", {"OPUS_API": "cases"}, "OPUS_API: api must be \"v0\""),
        ('api_v1_url = "operator.opus.com/api/v1"', {}, "api_v1_url must be the http(s) URL the Case API lives at"),
    ],
)
def test_a_wrong_api_setting_is_one_sentence(project: Project, line: str, env: dict[str, str], message: str) -> None:
    spec = quick_spec(project)
    set_api(project, line)
    result = project.run("run", spec, env=env)
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Traceback" not in result.output
    assert sum(project.sandbox.state.requests.values()) == 0


def test_a_v0_job_id_in_a_v1_project_says_how_to_switch(project: Project) -> None:
    set_api(project, 'api = "v1"')
    result = project.run("status", "72964")
    assert result.exit_code == 2
    assert result.stderr == (
        "error: '72964' is a v0 job id (a number), but this project uses the v1 Case API, whose case ids "
        'are UUIDs; to look at a v0 job, pass --api v0, or set api = "v0" in opus-runner.toml\n'
    )
    assert sum(project.sandbox.state.requests.values()) == 0


def test_a_v1_case_id_in_a_v0_project_says_how_to_switch(project: Project) -> None:
    result = project.run("results", CASE)
    assert result.exit_code == 2
    assert result.stderr == (
        f"error: job '{CASE}' not found at {project.sandbox.base_url}; '{CASE}' looks like a v1 case id (a "
        "UUID), and this project uses the v0 Jobs API, whose job ids are numbers; to look at a v1 case, "
        'pass --api v1, or set api = "v1" in opus-runner.toml\n'
    )


def test_job_commands_follow_a_case_with_api_v1(project: Project) -> None:
    spec = quick_spec(project)
    assert project.run("run", spec, "--api", "v1").exit_code == 0
    [case_id] = project.sandbox.state.payloads
    assert project.run("status", case_id, "--api", "v1").stdout.strip() == "COMPLETED"
    results = json.loads(project.run("results", case_id, "--api", "v1", "--format", "json").stdout)
    assert results["outputs"] == {"answer": "Answer to q"}
    audit = json.loads(project.run("audit", case_id, "--api", "v1", "--format", "json").stdout)
    assert audit["nb_nodes"] == 3 and audit["audit"]["nodes_execution_data"]  # the same fields as v0's
    assert set(project.sandbox.state.api_requests) == {"v1"}


def test_a_base_url_without_v1_says_so(project: Project) -> None:
    spec = quick_spec(project)
    # The sandbox answers NestJS's "Cannot GET ..." on a path it has no route for, as Opus does.
    set_api(project, f'api = "v1"\napi_v1_url = "{project.sandbox.base_url}/no-v1-here"')
    env = {"OPUS_BASE_URL": ""}  # the base URL from the file's side, so api_v1_url counts
    (project.root / "opus-runner.toml").write_text(
        (project.root / "opus-runner.toml").read_text() + f'base_url = "{project.sandbox.base_url}"\n'
    )
    result = project.run("run", spec, env=env)
    assert result.exit_code == 3, result.output
    assert f"{project.sandbox.base_url}/no-v1-here may not serve the v1 Case API" in result.stderr
    assert "--api v0" in result.stderr and "Traceback" not in result.output
    assert project.sandbox.state.count("POST", "execute") == 0


def test_a_lock_records_its_api_and_the_other_api_is_refused(project: Project) -> None:
    spec = quick_spec(project)
    set_api(project, 'api = "v1"')
    assert project.run("lock", spec).exit_code == 0
    assert json.loads((project.root / LOCK_FILE).read_text())["api"] == "v1"
    offline = {"OPUS_SERVICE_KEY": ""}
    assert project.run("validate", "--locked", spec, env=offline).exit_code == 0
    result = project.run("validate", "--locked", spec, "--api", "v0", env=offline)
    assert result.exit_code == 2
    assert result.stderr == (
        "error: opus-runner.lock was taken with the v1 API, but this command speaks v0 (--api, OPUS_API or "
        "api in opus-runner.toml); run 'opus-run lock' again to take it with v0, or pass --api v1\n"
    )
    before = sum(project.sandbox.state.requests.values())
    drift = project.run("drift", spec, "--api", "v0")
    assert drift.exit_code == 2 and "was taken with the v1 API" in drift.stderr
    assert sum(project.sandbox.state.requests.values()) == before  # refused before any request


def test_a_lock_without_api_was_taken_with_v0(project: Project) -> None:
    spec = quick_spec(project)
    assert project.run("lock", spec).exit_code == 0
    path = project.root / LOCK_FILE
    data = json.loads(path.read_text())
    assert data.pop("api") == "v0"
    path.write_text(json.dumps(data))
    offline = {"OPUS_SERVICE_KEY": ""}
    assert project.run("validate", "--locked", spec, env=offline).exit_code == 0
    assert "taken with the v0 API" in project.run("validate", "--locked", spec, "--api", "v1", env=offline).stderr


def test_resume_follows_a_run_in_the_api_it_started_with() -> None:
    recorded = RunOptions(specs=["q.yaml"], api="v1").to_record()
    assert recorded["api"] == "v1"
    assert RunOptions().from_record(recorded, run_id="r1").options.api == "v1"
    assert RunOptions(api="v0").from_record(recorded, run_id="r1").options.api == "v0"  # the command line wins


def test_schema_and_init_read_a_v1_workflow(tmp_path: Path, opus_sandbox_factory) -> None:  # type: ignore[no-untyped-def]
    project = make_project(tmp_path, opus_sandbox_factory, api="v1")
    result = project.run("schema", WF["all-types"], "--format", "json")
    assert result.exit_code == 0, result.output
    assert {i["variable_name"] for i in json.loads(result.stdout)["inputs"]} >= {"workflow_input_title", "workflow_input_doc"}
    assert project.run("init", WF["quick"], "-o", "new.yaml").exit_code == 0
    assert "Question" in (project.root / "new.yaml").read_text()
    assert project.sandbox.state.count("GET", "workflow") == 2 and set(project.sandbox.state.api_requests) == {"v1"}


def test_api_v1_url_is_named_like_base_url_and_untrusted_ignores_it(project: Project) -> None:
    spec = quick_spec(project)
    elsewhere = f"{project.sandbox.base_url}/api/v1"
    set_api(project, f'api = "v1"\nbase_url = "{project.sandbox.base_url}"\napi_v1_url = "{elsewhere}"')
    result = project.run("run", spec, env={"OPUS_BASE_URL": ""})
    assert result.exit_code == 0, result.output
    assert f"api_v1_url {elsewhere} from opus-runner.toml, not the Opus service: the service key is sent there" in result.stderr
    # A pull request's project file cannot send the key to its own v1 URL.
    set_api(project, f'api = "v1"\napi_v1_url = "https://cases.example.invalid/api/v1"')
    untrusted = project.run("run", spec, "--untrusted")
    assert untrusted.exit_code == 0, untrusted.output
    assert "ignored api_v1_url = 'https://cases.example.invalid/api/v1' from opus-runner.toml" in untrusted.stderr
    assert set(project.sandbox.state.api_requests) == {"v1"}
