"""End to end against the sandbox in its default (live) dialect: issue 10's points, each over HTTP.

Each test drives the CLI against workflows that answer the way the live service does
(opus-api.md sections 2 to 6): the v2 graph from ``GET /workflow/{uuid}``, numeric job ids, a
required callbackUrl, refusals inside 2xx answers, lists of files with a ``typeDefinition``,
output files behind ``/job/file/download``, workspaces, ``stopped`` and ``UNKNOWN`` statuses.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from conftest import Project, make_project
from opus_runner.urls import PLACEHOLDER_CALLBACK_URL

PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"

TYPES = "11111111-0000-4000-8000-000000000001"
FILES = "11111111-0000-4000-8000-000000000002"
QUICK = "11111111-0000-4000-8000-000000000003"
STOPS = "11111111-0000-4000-8000-000000000004"
UNSURE = "11111111-0000-4000-8000-000000000005"
REPORT = "11111111-0000-4000-8000-000000000006"
OLD = "11111111-0000-4000-8000-000000000007"
ELSEWHERE = "11111111-0000-4000-8000-000000000008"
NOVEL = "11111111-0000-4000-8000-000000000009"
WORKSPACE = "22222222-0000-4000-8000-000000000001"
OTHER_WORKSPACE = "22222222-0000-4000-8000-000000000002"

QUESTION = [{"variable_name": "workflow_input_q", "display_name": "Question", "type": "str"}]

WORKFLOWS: dict[str, Any] = {
    "workflows": {
        TYPES: {
            "name": "New input types",
            "duration": "0.1s",
            "workspace_id": WORKSPACE,
            "inputs": [
                {"variable_name": "workflow_input_n", "display_name": "Count", "type": "int"},
                {"variable_name": "workflow_input_rules", "display_name": "Rules", "type": "json_string"},
            ],
            "outputs": {
                "doubled": {"value": "{{ inputs.Count * 2 }}", "type": "float"},
                "echo": {"value": "{{ inputs.Rules }}", "type": "json_string"},
            },
        },
        FILES: {
            "name": "Lists of files",
            "duration": "0.1s",
            "workspace_id": WORKSPACE,
            "inputs": [
                # Described live as `array` with file items: must go with its typeDefinition.
                {"variable_name": "workflow_input_docs", "display_name": "Docs", "type": "array_files", "allowed_file_types": ["PDF", "TXT"]},
                # Described as `array_files`: goes as a plain list.
                {"variable_name": "workflow_input_more", "display_name": "More", "type": "array_files", "wire": "array_files", "is_nullable": True},
            ],
            "outputs": {"count": {"value": "{{ inputs.Docs | length }}", "type": "float"}},
        },
        QUICK: {
            "name": "Quick",
            "duration": "0.1s",
            "workspace_id": WORKSPACE,
            "inputs": QUESTION,
            "outputs": {"answer": "Answer to {{ inputs.Question }}"},
        },
        STOPS: {"name": "Gets stopped", "duration": "0.1s", "stop": True, "inputs": QUESTION, "outputs": {"answer": "x"}},
        UNSURE: {
            "name": "Unsure",
            "duration": "0.5s",
            "hold": {"status": "UNKNOWN", "duration": "0.3s"},
            "inputs": QUESTION,
            "outputs": {"answer": "finally"},
        },
        REPORT: {
            "name": "Writes a report",
            "duration": "0.1s",
            "workspace_id": WORKSPACE,
            "inputs": QUESTION,
            "outputs": {
                "report": {"type": "file", "displayName": "Report", "value": {"name": "report.txt", "content": "About {{ inputs.Question }}"}}
            },
        },
        OLD: {
            "name": "Documented shapes",
            "dialect": "documented",
            "duration": "0.1s",
            "inputs": QUESTION,
            "outputs": {"answer": "old {{ inputs.Question }}"},
        },
        NOVEL: {
            "name": "A type nobody knows yet",
            "duration": "0.1s",
            "inputs": [
                *QUESTION,
                {"variable_name": "workflow_input_geo", "display_name": "Location", "type": "geo_point"},
            ],
            "outputs": {"answer": "near {{ inputs.Location.lat }}"},
        },
        ELSEWHERE: {
            "name": "Another workspace",
            "duration": "0.1s",
            "workspace_id": OTHER_WORKSPACE,
            "inputs": [{"variable_name": "workflow_input_doc", "display_name": "Doc", "type": "file"}],
            "outputs": {"answer": "read it"},
        },
    }
}


@pytest.fixture
def live(tmp_path: Path, opus_sandbox_factory: Callable[..., Any]) -> Project:
    return make_project(tmp_path, opus_sandbox_factory, WORKFLOWS)


def spec(project: Project, name: str, workflow: str, body: str, *, workflow_extra: str = "") -> Path:
    return project.spec(
        f"{name}.yaml",
        f"apiVersion: opus-runner/v1\nkind: Job\nmetadata:\n  name: {name}\nworkflow:\n  id: {workflow}\n"
        + workflow_extra
        + body,
    )


def payload_of(project: Project) -> dict[str, Any]:
    [body] = project.sandbox.state.payloads.values()
    return body


def events(project: Project, result: Any) -> list[dict[str, Any]]:
    return project.events(result)


# -- inputs -------------------------------------------------------------------------------------


def test_int_and_json_string_inputs_are_coerced_and_sent_typed(live: Project) -> None:
    path = spec(live, "t", TYPES, "inputs:\n  Count: '21'\n  Rules: {allow: [a, b], depth: 2}\n")
    result = live.run("run", path, "--format", "json")
    assert result.exit_code == 0, result.output
    sent = payload_of(live)["jobPayloadSchemaInstance"]
    assert sent["workflow_input_n"] == {"value": 21, "type": "int", "displayName": "Count"}
    assert sent["workflow_input_rules"]["type"] == "json_string"
    assert json.loads(sent["workflow_input_rules"]["value"]) == {"allow": ["a", "b"], "depth": 2}
    [done] = [e for e in events(live, result) if e["event"] == "completed"]
    # A json_string output reaches outputs decoded.
    assert done["outputs"]["echo"] == {"allow": ["a", "b"], "depth": 2}
    assert done["outputs"]["doubled"] == 42


def test_bad_int_and_json_string_values_are_refused_before_anything_is_sent(live: Project) -> None:
    path = spec(live, "t", TYPES, "inputs:\n  Count: 2.5\n  Rules: '{not json'\n")
    result = live.run("run", path)
    assert result.exit_code == 2
    assert "t.yaml:8: inputs.Count: input 'Count' (int): expected a whole number, found a number 2.5" in result.stderr
    assert "inputs.Rules: input 'Rules' (json_string): expected JSON text" in result.stderr
    assert live.sandbox.state.count("POST", "initiate") == 0


def test_an_unknown_input_type_is_kept_sent_as_stated_and_warned_about(live: Project) -> None:
    path = spec(live, "g", NOVEL, "inputs:\n  Question: q\n  Location: {lat: 52.1, lon: 4.3}\n")
    result = live.run("run", path)
    assert result.exit_code == 0, result.output
    sent = payload_of(live)["jobPayloadSchemaInstance"]["workflow_input_geo"]
    assert sent == {"value": {"lat": 52.1, "lon": 4.3}, "type": "geo_point", "displayName": "Location"}
    warning = (
        f"warning: workflow {NOVEL}: input 'Location' (workflow_input_geo) has type 'geo_point', "
        "which this opus-runner does not understand"
    )
    assert result.stderr.count(warning) == 1
    assert "geo_point (not understood)" in live.run("schema", NOVEL).stdout
    # Only its presence is checked: leaving it out is still an error, before anything is sent.
    live.sandbox.state.reset()
    missing = spec(live, "m", NOVEL, "inputs:\n  Question: q\n")
    result = live.run("run", missing)
    assert result.exit_code == 2
    assert "required input 'Location' (workflow_input_geo, type geo_point) is missing" in result.stderr
    assert live.sandbox.state.count("POST", "initiate") == 0


def test_a_list_of_files_goes_as_array_with_its_type_definition(live: Project) -> None:
    live.file("a.pdf", PDF)
    live.file("b.txt", "notes\n")
    path = spec(live, "f", FILES, "inputs:\n  Docs: {files: [a.pdf, b.txt]}\n  More: {files: [b.txt]}\n")
    result = live.run("run", path)
    assert result.exit_code == 0, result.output
    sent = payload_of(live)["jobPayloadSchemaInstance"]
    docs, more = sent["workflow_input_docs"], sent["workflow_input_more"]
    assert docs["type"] == "array" and len(docs["value"]) == 2
    assert docs["typeDefinition"]["allowed_types"] == [{"type": "file"}]
    assert more["type"] == "array_files" and "typeDefinition" not in more
    # The schema view says how the list goes.
    shown = live.run("schema", FILES)
    assert "array_files (sent as array of files)" in shown.stdout


def test_a_coercion_plugin_may_take_over_the_wire_form(live: Project) -> None:
    live.file("a.pdf", PDF)
    live.file(
        "plugins/wire.py",
        "from opus_runner import WireValue, hookimpl\n\n"
        "@hookimpl\n"
        "def opus_coerce_value(field, value, ctx):\n"
        "    if field.variable_name == 'workflow_input_docs':\n"
        "        return WireValue(value, type='array_files')\n",
    )
    path = spec(live, "f", FILES, "inputs:\n  Docs: {files: [a.pdf]}\n")
    result = live.run("run", path)
    docs = payload_of(live)["jobPayloadSchemaInstance"]["workflow_input_docs"]
    assert docs["type"] == "array_files" and "typeDefinition" not in docs
    # The sandbox, like the service, hands such a list to the workflow as text: the job fails.
    assert result.exit_code == 1


# -- execute ------------------------------------------------------------------------------------


def test_callback_url_is_always_sent_and_never_to_a_resolvable_placeholder(live: Project) -> None:
    path = spec(live, "q", QUICK, "inputs:\n  Question: why\n")
    assert live.run("run", path).exit_code == 0
    sent = payload_of(live)["callbackUrl"]
    assert sent == PLACEHOLDER_CALLBACK_URL and urlsplit(sent).hostname.endswith(".invalid")


def test_callback_url_comes_from_the_spec_else_the_project(live: Project) -> None:
    (live.root / "opus-runner.toml").write_text(
        'state_dir = ".opus-run"\ncallback_url = "https://hooks.example.com/opus"\n'
    )
    first = spec(live, "a", QUICK, "inputs:\n  Question: one\n")
    second = spec(live, "b", QUICK, "inputs:\n  Question: two\ncallback: {url: 'https://mine.example.com/cb'}\n")
    assert live.run("run", first, second).exit_code == 0
    sent = sorted(p["callbackUrl"] for p in live.sandbox.state.payloads.values())
    assert sent == ["https://hooks.example.com/opus", "https://mine.example.com/cb"]


def test_a_project_callback_url_that_is_not_https_is_refused(live: Project) -> None:
    (live.root / "opus-runner.toml").write_text('callback_url = "http://example.com/cb"\n')
    path = spec(live, "q", QUICK, "inputs:\n  Question: q\n")
    result = live.run("run", path)
    assert result.exit_code == 2
    assert "callback_url must be an https URL that Opus can reach" in result.stderr


@pytest.mark.parametrize(
    "fault",
    [
        {"route": "execute", "kind": "inner_error", "times": 1},
        {"route": "execute", "kind": "inner_error", "variant": "success_false", "message": "Workflow is not active", "times": 1},
        {"route": "execute", "kind": "inner_error", "variant": "error_object", "message": "Workflow is not active", "times": 1},
    ],
)
def test_an_execute_refused_inside_a_2xx_fails_that_job_with_the_platforms_words(live: Project, fault: dict[str, Any]) -> None:
    live.sandbox.faults.add(fault)
    path = spec(live, "q", QUICK, "inputs:\n  Question: q\noutputs: [{type: json, path: out.json}]\n")
    result = live.run("run", path)
    assert result.exit_code == 1, result.output
    words = fault.get("message", "Request failed with status code 422")
    assert "Opus refused to execute job" in result.stderr and words in result.stderr
    assert live.sandbox.state.count("POST", "execute") == 1  # nothing retried blindly
    written = json.loads((live.root / "out.json").read_text())
    assert written["status"] == "FAILED" and words in written["error"]
    # The journal has it finished: a resume has nothing to send again.
    again = live.run("resume")
    assert live.sandbox.state.count("POST", "execute") == 1, again.output


def test_job_ids_are_numeric_strings(live: Project) -> None:
    path = spec(live, "q", QUICK, "matrix: {n: [1, 2]}\ninputs:\n  Question: 'q{{ matrix.n }}'\n")
    result = live.run("run", path, "--format", "json")
    assert result.exit_code == 0
    ids = {e["job_id"] for e in events(live, result) if e["event"] == "completed"}
    assert len(ids) == 2 and all(isinstance(i, str) and i.isdigit() for i in ids)


# -- following ----------------------------------------------------------------------------------


def test_a_stopped_job_is_reported_like_a_cancellation(live: Project) -> None:
    path = spec(live, "s", STOPS, "inputs:\n  Question: q\n")
    result = live.run("run", path, "--format", "json")
    assert result.exit_code == 1
    [end] = [e for e in events(live, result) if e["event"] in ("completed", "failed", "cancelled")]
    assert (end["event"], end["status"]) == ("cancelled", "STOPPED")


def test_a_job_stuck_in_unknown_is_rechecked_and_warned_about(live: Project) -> None:
    path = spec(live, "u", UNSURE, "inputs:\n  Question: q\nwait: {timeout: 20s, poll_interval: 50ms, max_interval: 2s}\n")
    result = live.run("run", path)
    assert result.exit_code == 0, result.output
    assert "has reported status UNKNOWN 3 times in a row; still checking" in result.stderr
    # Re-checked at the first interval, not backed off: many readings in 0.3 s.
    assert live.sandbox.state.count("GET", "status") >= 4


def test_every_results_shape_reaches_outputs(opus_sandbox_factory: Callable[..., Any], tmp_path: Path) -> None:
    shapes = ("current", "legacy", "nested", "flat", "list")
    fixture = {
        "workflows": {
            f"33333333-0000-4000-8000-00000000000{i}": {
                "name": shape,
                "duration": "0.05s",
                "results_shape": shape,
                "inputs": QUESTION,
                "outputs": {"answer": "A {{ inputs.Question }}"},
            }
            for i, shape in enumerate(shapes)
        }
    }
    project = make_project(tmp_path, opus_sandbox_factory, fixture)
    paths = [spec(project, f"r{i}", wid, "inputs:\n  Question: q\n") for i, wid in enumerate(fixture["workflows"])]
    result = project.run("run", *paths, "--format", "json")
    assert result.exit_code == 0, result.output
    outputs = [e["outputs"] for e in project.events(result) if e["event"] == "completed"]
    assert len(outputs) == len(shapes)
    assert all(o.get("answer") == "A q" for o in outputs), outputs


def test_results_with_no_outputs_are_a_warning_naming_the_job(opus_sandbox_factory: Callable[..., Any], tmp_path: Path) -> None:
    wid = "33333333-0000-4000-8000-0000000000ff"
    project = make_project(
        tmp_path,
        opus_sandbox_factory,
        {"workflows": {wid: {"name": "Says nothing", "duration": "0.05s", "results_shape": "none", "inputs": QUESTION, "outputs": {"answer": "x"}}}},
    )
    result = project.run("run", spec(project, "n", wid, "inputs:\n  Question: q\n"))
    assert result.exit_code == 0, result.output
    [job_id] = list(project.sandbox.state.payloads)
    assert f"warning: n: job {job_id} completed, but its results hold no outputs opus-runner recognises" in result.stderr
    assert f"opus-run results {job_id}" in result.stderr


# -- files --------------------------------------------------------------------------------------


def test_output_files_are_downloaded_through_the_download_endpoint(live: Project) -> None:
    path = spec(live, "r", REPORT, "inputs:\n  Question: dogs\noutputs: [{type: download, dir: got}]\n")
    result = live.run("run", path)
    assert result.exit_code == 0, result.output
    assert (live.root / "got" / "report.txt").read_text() == "About dogs"
    assert live.sandbox.state.count("POST", "download") == 1
    assert live.sandbox.state.key_sent_to_presigned == 0


def test_a_file_output_that_cannot_be_downloaded_exits_1_naming_it(live: Project) -> None:
    live.sandbox.faults.add({"route": "download", "kind": "status", "status": 403})
    path = spec(live, "r", REPORT, "inputs:\n  Question: dogs\noutputs: [{type: download, dir: got}]\n")
    result = live.run("run", path)
    assert result.exit_code == 1
    assert "could not download output 'report' (report.txt) of job" in result.stderr
    assert not (live.root / "got" / "report.txt").exists()


def test_uploads_and_jobs_go_to_the_workflows_own_workspace(live: Project) -> None:
    live.file("a.pdf", PDF)
    path = spec(live, "f", FILES, "inputs:\n  Docs: {files: [a.pdf]}\n")
    assert live.run("run", path).exit_code == 0
    [slot] = live.sandbox.state.upload_slots.values()
    assert (slot.workspace_id, slot.workflow_id, slot.access_scope) == (WORKSPACE, None, "organization")
    assert payload_of(live)["workspaces"] == WORKSPACE


def test_upload_scope_and_workspaces_from_the_spec(live: Project) -> None:
    live.file("a.pdf", PDF)
    path = spec(
        live,
        "f",
        FILES,
        f"uploads: {{access_scope: workspace, workspace_id: {WORKSPACE}}}\ninputs:\n  Docs: {{files: [a.pdf]}}\n",
        workflow_extra=f"  workspaces: [{WORKSPACE}, {OTHER_WORKSPACE}]\n",
    )
    result = live.run("run", path)
    assert result.exit_code == 0, result.output
    [slot] = live.sandbox.state.upload_slots.values()
    assert (slot.workspace_id, slot.access_scope) == (WORKSPACE, "workspace")
    assert payload_of(live)["workspaces"] == f"{WORKSPACE},{OTHER_WORKSPACE}"


def test_a_file_in_another_workspace_than_the_workflows_fails_the_job(live: Project) -> None:
    # Why the default matters: the workflow's agents cannot read a file from another workspace.
    live.file("a.pdf", PDF)
    wrong = spec(live, "w", ELSEWHERE, f"uploads: {{workspace_id: {WORKSPACE}}}\ninputs:\n  Doc: a.pdf\n")
    assert live.run("run", wrong).exit_code == 1
    live.sandbox.state.reset()
    right = spec(live, "r", ELSEWHERE, "inputs:\n  Doc: a.pdf\n")
    assert live.run("run", right).exit_code == 0
    [slot] = live.sandbox.state.upload_slots.values()
    assert slot.workspace_id == OTHER_WORKSPACE


def test_a_403_on_upload_names_the_workspace(live: Project) -> None:
    live.file("a.pdf", PDF)
    stranger = "99999999-0000-4000-8000-000000000000"
    path = spec(live, "f", FILES, f"uploads: {{workspace_id: {stranger}}}\ninputs:\n  Docs: {{files: [a.pdf]}}\n")
    result = live.run("run", path)
    assert result.exit_code != 0
    assert f"lacks permission in workspace {stranger}" in result.stderr
    assert "a.pdf" in result.stderr
    assert live.sandbox.state.count("POST", "execute") == 0


# -- retries ------------------------------------------------------------------------------------


def test_a_429_without_retry_after_backs_off_and_says_so(live: Project, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    import opus_runner
    from opus_runner.client import RetryPolicy

    live.sandbox.faults.add({"route": "status", "kind": "rate_limit", "times": 2})
    path = spec(live, "q", QUICK, "inputs:\n  Question: q\n")
    caplog.set_level(logging.INFO, logger="opus_runner.http")
    report = opus_runner.run(
        path,
        base_url=live.sandbox.base_url,
        service_key=live.sandbox.key,
        retry=RetryPolicy(attempts=5, base=0.01, cap=0.05),
        quiet=True,
    )
    assert report.exit_code == 0
    retries = [r.getMessage() for r in caplog.records if "rate limited (HTTP 429, no Retry-After)" in r.getMessage()]
    assert len(retries) == 2 and all("retrying in" in line for line in retries)
    assert all(r.levelno == logging.INFO for r in caplog.records if "retrying in" in r.getMessage())


# -- the documented shapes still work -----------------------------------------------------------


def test_a_workflow_in_the_documented_dialect_runs_too(live: Project) -> None:
    path = spec(live, "o", OLD, "inputs:\n  Question: q\n")
    result = live.run("run", path, "--format", "json")
    assert result.exit_code == 0, result.output
    [done] = [e for e in events(live, result) if e["event"] == "completed"]
    assert done["outputs"] == {"answer": "old q"}


def test_the_example_specs_run_end_to_end_against_the_live_dialect(tmp_path: Path) -> None:
    """``specs/`` against the packaged sandbox, in its default (live) dialect."""
    import os
    import shutil

    from click.testing import CliRunner

    from opus_runner.cli import main

    root = Path(__file__).resolve().parents[1]
    work = tmp_path / "repo"
    shutil.copytree(root / "specs", work / "specs")
    shutil.copytree(root / "plugins", work / "plugins")
    shutil.copy(root / "opus-runner.toml", work / "opus-runner.toml")
    old = os.getcwd()
    os.chdir(work)
    try:
        result = CliRunner().invoke(main, ["run", "--sandbox", "specs/", "--format", "json"], catch_exceptions=False)
    finally:
        os.chdir(old)
    assert result.exit_code == 0, result.output
    done = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert sum(1 for e in done if e["event"] == "completed") >= 5

