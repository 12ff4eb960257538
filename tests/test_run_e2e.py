"""End to end over real loopback HTTP: the CLI against the sandbox (issue 3's must-shows),
in both API generations (issue 17): every test runs once with v0 and once with v1."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import Project, header

pytestmark = pytest.mark.both_apis

PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"


def all_types_spec(project: Project, extra_inputs: str = "", name: str = "all") -> Path:
    project.file("data/contract.pdf", PDF)
    project.file("data/a.csv", "x,y\n1,2\n")
    project.file("data/b.csv", "x,y\n3,4\n")
    return project.spec(
        f"{name}.yaml",
        header(name, "all-types",
        """\
        vars:
          month: "2026-11"
        inputs:
          workflow_input_title: "Report {{ vars.month }}"
          Budget: "45.8"
          Approved: "yes"
          Due date: 2026-12-15
          Contract: {file: data/contract.pdf}
          Attachments: {files: ["data/*.csv", "https://example.com/extra.txt"]}
          Tags: '["a", "b"]'
          Settings: {value: {depth: 2}, type: object}
        """
        + extra_inputs),
    )


def test_every_input_type_reaches_the_sandbox_as_typed(project: Project) -> None:
    spec = all_types_spec(project)
    result = project.run("run", spec)
    assert result.exit_code == 0, result.output
    # Every call of the run went to the project's API generation, none to the other's.
    assert set(project.sandbox.state.api_requests) == {project.api}
    [job_id] = list(project.sandbox.state.payloads)
    payload = project.sandbox.state.sent_inputs(job_id)
    assert payload["workflow_input_title"] == {"value": "Report 2026-11", "type": "str", "displayName": "Title"}
    assert payload["workflow_input_budget"]["value"] == 45.8
    assert payload["workflow_input_ok"]["value"] is True
    assert payload["workflow_input_due"]["value"] == "2026-12-15"
    assert payload["workflow_input_tags"]["value"] == ["a", "b"]
    assert payload["workflow_input_cfg"] == {"value": {"depth": 2}, "type": "object", "displayName": "Settings"}
    # The file went through the presigned flow and its bytes arrived intact.
    doc_url = payload["workflow_input_doc"]["value"]
    assert doc_url.startswith(project.sandbox.base_url + "/media/")
    stored = {url: data for url, data in _stored_files(project).items()}
    assert stored[doc_url] == PDF
    attachments = payload["workflow_input_more"]["value"]
    assert len(attachments) == 3 and attachments[2] == "https://example.com/extra.txt"
    assert sorted(stored[u] for u in attachments[:2]) == [b"x,y\n1,2\n", b"x,y\n3,4\n"]
    assert project.sandbox.state.key_sent_to_presigned == 0
    # The stdout output printed the results.
    assert "Report 2026-11" in result.stdout


def _stored_files(project: Project) -> dict[str, bytes]:
    import httpx

    out = {}
    for job_id in project.sandbox.state.payloads:
        for entry in project.sandbox.state.sent_inputs(job_id).values():
            values = entry["value"] if isinstance(entry["value"], list) else [entry["value"]]
            for v in values:
                if isinstance(v, str) and v.startswith(project.sandbox.base_url):
                    # File URLs are references: read them the way the service lets clients.
                    link = httpx.post(
                        f"{project.sandbox.base_url}/job/file/download",
                        json={"fileUrl": v, "customExpiry": 60},
                        headers={"x-service-key": project.sandbox.key},
                    ).json()["presignedUrl"]
                    out[v] = httpx.get(link).content
    return out


def test_same_bytes_are_uploaded_once_per_run(project: Project) -> None:
    project.file("data/contract.pdf", PDF)
    spec = project.spec(
        "m.yaml",
        header("m", "all-types",
        """\
        matrix: {n: [1, 2, 3]}
        inputs:
          Title: "t{{ matrix.n }}"
          Budget: 1
          Approved: true
          Due date: "2026-01-01"
          Contract: data/contract.pdf
        """),
    )
    result = project.run("run", spec, "--concurrency", "3")
    assert result.exit_code == 0, result.output
    state = project.sandbox.state
    assert state.count("POST", "upload") == 1 and state.count("PUT", "put") == 1
    urls = {state.sent_inputs(job_id)["workflow_input_doc"]["value"] for job_id in state.payloads}
    assert len(urls) == 1 and len(state.payloads) == 3


def test_schema_fetched_once_for_a_batch(project: Project) -> None:
    rows = "q\n" + "".join(f"question {i}\n" for i in range(12))
    project.file("rows.csv", rows)
    spec = project.spec("b.yaml", header("b", "quick") + "foreach: {file: rows.csv}\ninputs:\n  Question: '{{ row.q }}'\n")
    result = project.run("run", spec, "--concurrency", "4", "--format", "json")
    assert result.exit_code == 0, result.output
    state = project.sandbox.state
    assert state.count("GET", "workflow") == 1
    assert state.count("POST", "execute") == 12 and all(n == 1 for n in state.executes.values())
    assert state.max_active_jobs <= 4


def test_display_name_and_variable_name_keys_and_ambiguity(project: Project) -> None:
    ok = project.spec("ok.yaml", header("ok", "dup-names") + "inputs:\n  workflow_input_a: x\n  workflow_input_b: y\n")
    assert project.run("run", ok).exit_code == 0
    bad = project.spec("bad.yaml", header("bad", "dup-names") + "inputs:\n  Name: x\n")
    result = project.run("run", bad)
    assert result.exit_code == 2
    assert "workflow_input_a" in result.stderr and "workflow_input_b" in result.stderr
    assert project.sandbox.state.count("POST", "initiate") == 1  # only the good spec's job


def test_version_pinning(project: Project) -> None:
    spec = project.spec(
        "v1.yaml",
        header("v1", "all-types") + "  version: 1\ninputs:\n  Old title: hello\n",
    )
    result = project.run("run", spec)
    assert result.exit_code == 0, result.output
    assert "v1 hello" in result.stdout
    [job_id] = project.sandbox.state.payloads
    assert set(project.sandbox.state.sent_inputs(job_id)) == {"workflow_input_old"}


def test_v2_only_workflow_is_described_through_the_fallback(project: Project) -> None:
    spec = project.spec("n.yaml", header("n", "newer") + "inputs:\n  Question: why\n")
    result = project.run("run", spec)
    assert result.exit_code == 0, result.output
    assert "v2 why" in result.stdout
    # v0's GET /workflow/{id} is gone for this workflow; v1's own route describes it.
    assert project.sandbox.state.count("GET", "workflow_object") == (1 if project.api == "v0" else 0)


def test_failed_job_exits_1_and_names_the_failed_node(project: Project) -> None:
    spec = project.spec("f.yaml", header("f", "broken") + "inputs:\n  Question: q\n")
    result = project.run("run", spec)
    assert result.exit_code == 1
    assert "FAILED" in result.output and "Score" in result.output


def test_timeout_exits_1_with_job_id_and_how_to_check(project: Project) -> None:
    spec = project.spec("s.yaml", header("s", "slow") + "inputs:\n  Question: q\n")
    result = project.run("run", spec, "--timeout", "0.3s")
    assert result.exit_code == 1
    [job_id] = list(project.sandbox.state.payloads)
    assert job_id in result.output and f"opus-run status {job_id}" in result.output


def test_dry_run_and_validate_submit_nothing(project: Project) -> None:
    spec = all_types_spec(project)
    result = project.run("run", spec, "--dry-run")
    assert result.exit_code == 0, result.output
    assert '"workflow_input_doc"' in result.stdout and "upload://data/contract.pdf" in result.stdout
    result = project.run("validate", spec)
    assert result.exit_code == 0, result.output
    state = project.sandbox.state
    assert state.count("POST", "initiate") == 0 and state.count("POST", "upload") == 0
    assert state.count("GET", "workflow") == 2  # once per command


def test_no_wait_submits_and_returns(project: Project) -> None:
    spec = project.spec("s.yaml", header("s", "slow") + "inputs:\n  Question: q\n")
    result = project.run("run", spec, "--no-wait")
    assert result.exit_code == 0, result.output
    assert project.sandbox.state.count("POST", "execute") == 1
    assert project.sandbox.state.count("GET", "status") == 0
    assert "opus-run status" in result.output


def test_json_events(project: Project) -> None:
    spec = project.spec("q.yaml", header("q", "quick") + "inputs:\n  Question: life\n")
    result = project.run("run", spec, "--format", "json")
    assert result.exit_code == 0, result.output
    events = project.events(result)
    kinds = [e["event"] for e in events]
    assert kinds[0] == "batch" and "submitted" in kinds and kinds[-1] == "summary"
    completed = next(e for e in events if e["event"] == "completed")
    assert completed["outputs"] == {"answer": "Answer to life"} and completed["status"] == "COMPLETED"
    # stdout holds nothing but JSON lines
    assert all(line.startswith("{") for line in result.stdout.splitlines())


@pytest.mark.parametrize(
    ("inputs", "files", "message"),
    [
        ("Budget: 1\nApproved: true\nDue date: 2026-01-01\nContract: data/contract.pdf\n", {}, "required input 'Title'"),
        ("Title: t\nBudget: lots\nApproved: true\nDue date: 2026-01-01\nContract: data/contract.pdf\n", {}, "expected a number, found a string 'lots'"),
        ("Title: t\nBudget: 1\nApproved: true\nDue date: 2026-01-01\nContract: data/missing.pdf\n", {}, "does not exist"),
        ("Title: t\nBudget: 1\nApproved: true\nDue date: 2026-01-01\nContract: data/big.pdf\n", {"data/big.pdf": b"%PDF" + b"0" * (10 * 1024 * 1024 + 1)}, "at most 10 MB"),
        ("Title: t\nBudget: 1\nApproved: true\nDue date: 2026-01-01\nContract: data/c.csv\n", {"data/c.csv": b"a\n"}, "accepts only PDF, TXT"),
        ("Title: t\nBudget: 1\nApproved: true\nDue date: 2026-01-01\nContract: data/c.exe\n", {"data/c.exe": b"MZ"}, "which Opus does not accept"),
        ("Title: t\nBudget: 1\nApproved: true\nDue date: 2026-01-01\nContract: ../../etc/passwd\n", {}, "outside the project root"),
        ("Title: t\nBudget: 1\nApproved: true\nDue date: 2026-01-01\nContract: data/contract.pdf\nNope: 1\n", {}, "'Nope'"),
    ],
)
def test_bad_inputs_are_refused_before_anything_is_sent(project: Project, inputs: str, files: dict, message: str) -> None:
    project.file("data/contract.pdf", PDF)
    for name, data in files.items():
        project.file(name, data)
    body = "inputs:\n" + "".join(f"  {line}\n" for line in inputs.splitlines())
    spec = project.spec("bad.yaml", header("bad", "all-types") + body)
    result = project.run("run", spec)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert "bad.yaml" in result.stderr and "inputs" in result.stderr
    assert "Traceback" not in result.output
    state = project.sandbox.state
    assert state.count("POST", "initiate") == 0 and state.count("POST", "upload") == 0


def test_symlink_out_of_the_repo_is_refused(project: Project, tmp_path: Path) -> None:
    outside = tmp_path / "secret.pdf"
    outside.write_bytes(PDF)
    (project.root / "data").mkdir(exist_ok=True)
    os.symlink(outside, project.root / "data" / "link.pdf")
    spec = project.spec(
        "l.yaml",
        header("l", "all-types") + "inputs:\n  Title: t\n  Budget: 1\n  Approved: true\n  Due date: 2026-01-01\n  Contract: data/link.pdf\n",
    )
    result = project.run("run", spec)
    assert result.exit_code == 2 and "through a symlink" in result.stderr
    assert project.sandbox.state.count("POST", "upload") == 0
    assert project.run("run", spec, "--allow-outside-root").exit_code == 0


def test_every_problem_is_listed_at_once(project: Project) -> None:
    spec = project.spec("many.yaml", header("many", "all-types") + "inputs:\n  Budget: lots\n  Approved: maybe\n  Due date: soon\n")
    result = project.run("validate", spec)
    assert result.exit_code == 2
    for text in ("'Title'", "'Contract'", "'lots'", "'maybe'", "'soon'"):
        assert text in result.stderr
    assert "problems found" in result.stderr


def test_unknown_workflow(project: Project) -> None:
    missing = "00000000-0000-4000-8000-00000000dead"
    spec = project.spec("u.yaml", header("u", missing) + "inputs: {}\n")
    result = project.run("run", spec)
    assert result.exit_code == 2
    assert "workflow.id" in result.stderr and f"{missing!r} was not found" in result.stderr
    assert project.sandbox.state.count("POST", "initiate") == 0


@pytest.mark.parametrize("command", ["run", "validate"])
def test_a_workflow_id_that_is_not_a_uuid_is_refused_at_validation(project: Project, command: str) -> None:
    spec = project.spec("s.yaml", header("s", "CIAwZYFzQJwmADQN") + "inputs:\n  Question: q\n")
    result = project.run(command, spec)
    assert result.exit_code == 2
    assert "s.yaml:6: workflow.id: the workflow id 'CIAwZYFzQJwmADQN' is not a UUID; Opus identifies workflows by UUID" in result.stderr
    assert "/app/workflow/" in result.stderr
    assert sum(project.sandbox.state.requests.values()) == 0  # nothing asked, nothing submitted


def test_missing_key_and_wrong_key(project: Project) -> None:
    spec = project.spec("q.yaml", header("q", "quick") + "inputs:\n  Question: q\n")
    result = project.run("run", spec, env={"OPUS_SERVICE_KEY": ""})
    assert result.exit_code == 2
    assert "OPUS_SERVICE_KEY" in result.stderr and "--sandbox" in result.stderr
    result = project.run("run", spec, env={"OPUS_SERVICE_KEY": "sk-wrong-key-123456"})
    assert result.exit_code == 3
    assert "the service key was rejected" in result.stderr
    assert "sk-wrong-key-123456" not in result.output


def test_plain_http_base_url_is_refused_unless_loopback(project: Project) -> None:
    spec = project.spec("q.yaml", header("q", "quick") + "inputs:\n  Question: q\n")
    result = project.run("run", spec, "--base-url", "http://opus.example.com")
    assert result.exit_code == 2
    assert "plain http" in result.stderr and "opus.example.com" in result.stderr


def test_html_and_empty_error_bodies(project: Project) -> None:
    spec = project.spec("q.yaml", header("q", "quick") + "inputs:\n  Question: q\n")
    project.sandbox.faults.add({"route": "workflow", "kind": "status", "status": 502, "body": "html", "times": 100})
    result = project.run("run", spec)
    assert result.exit_code == 3
    assert "HTML page" in result.stderr


def test_validate_against_the_sandbox_checks_the_live_schema(project: Project) -> None:
    spec = project.spec("q.yaml", header("q", "quick") + "inputs:\n  Question: q\n  Count: many\n")
    offline = project.run("validate", spec, "--offline")
    assert offline.exit_code == 0 and "skipped" in offline.stderr
    live = project.run("validate", spec)
    assert live.exit_code == 2 and "'many'" in live.stderr


def test_status_results_and_audit_commands(project: Project) -> None:
    spec = project.spec("q.yaml", header("q", "quick") + "inputs:\n  Question: q\n")
    assert project.run("run", spec).exit_code == 0
    [job_id] = list(project.sandbox.state.payloads)
    assert project.run("status", job_id).stdout.strip() == "COMPLETED"
    results = json.loads(project.run("results", job_id, "--format", "json").stdout)
    assert results["outputs"] == {"answer": "Answer to q"}
    audit = json.loads(project.run("audit", job_id, "--format", "json").stdout)
    assert audit["nb_nodes"] >= 1
    missing = project.run("status", "no-such-job")
    assert missing.exit_code == 2 and "not found" in missing.stderr


def test_library_api_runs_without_the_cli(project: Project) -> None:
    import opus_runner

    spec = project.spec("q.yaml", header("q", "quick") + "inputs:\n  Question: '{{ vars.q }}'\noutputs: [{type: json, path: out.json}]\n")
    report = opus_runner.run(spec, vars={"q": "library"}, base_url=project.sandbox.base_url, service_key=project.sandbox.key, state_dir=project.root / ".opus-run")
    assert report.exit_code == 0
    assert report.results[0].outputs == {"answer": "Answer to library"}
    assert json.loads((project.root / "out.json").read_text())["outputs"] == {"answer": "Answer to library"}
