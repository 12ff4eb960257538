"""opus-runner.lock: ``opus-run lock``, and ``validate``/``render --locked`` with no key and no network."""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import WF, Project, header
from opus_runner.errors import ValidationFailed
from opus_runner.lockfile import LOCK_FILE, Lock, LockError, load_lock, lock_text, write_lock
from opus_runner.models import InputField, WorkflowRef, WorkflowSchema
from opus_runner.spec import load_spec
from opus_runner.workflow import schema_fingerprint

#: schema, init, lock and drift work the same through the v1 Case API (issue 17).
pytestmark = pytest.mark.both_apis

PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
#: an address nothing answers on (TEST-NET-1): a connection attempt would hang, not fail fast
UNROUTABLE = "http://192.0.2.1:9"


def all_types_spec(project: Project, name: str = "a", budget: str = "45.8", extra: str = "") -> Path:
    project.file("data/contract.pdf", PDF)
    return project.spec(
        f"{name}.yaml",
        header(name, "all-types")
        + "inputs:\n"
        + f"  Title: hello\n  Budget: {budget}\n  Approved: true\n  Due date: 2026-12-15\n"
        + "  Contract: {file: data/contract.pdf}\n"
        + extra,
    )


def quick_spec(project: Project, name: str = "q", version: str = "") -> Path:
    return project.spec(f"{name}.yaml", header(name, "quick") + version + "inputs:\n  Question: why\n")


def offline_env() -> dict[str, str | None]:
    return {"OPUS_BASE_URL": UNROUTABLE, "OPUS_SERVICE_KEY": None}


_REAL_CONNECT = socket.socket.connect
_REAL_CONNECT_EX = socket.socket.connect_ex


@contextlib.contextmanager
def network_allowed() -> Iterator[None]:
    """Lift :func:`no_network` for a block (writing the lock needs the sandbox)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", _REAL_CONNECT)
        mp.setattr(socket.socket, "connect_ex", _REAL_CONNECT_EX)
        yield


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """Every outgoing connection attempt of the process is recorded and refused."""
    attempts: list[Any] = []

    def refuse(self: socket.socket, address: Any) -> None:
        attempts.append(address)
        raise OSError(f"test: no network allowed (tried {address})")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    yield attempts


def read_lock(project: Project) -> dict[str, Any]:
    return json.loads((project.root / LOCK_FILE).read_text())


# -- opus-run lock ---------------------------------------------------------------------------


def test_lock_writes_every_workflow_and_version_the_specs_use(project: Project) -> None:
    all_types_spec(project)
    quick_spec(project)
    quick_spec(project, "q2")
    project.spec("old.yaml", header("old", "all-types") + "  version: 1\ninputs:\n  Old title: x\n")
    result = project.run("lock", ".")
    assert result.exit_code == 0, result.output
    assert "3 workflows" in result.stderr
    text = (project.root / LOCK_FILE).read_text()
    data = json.loads(text)
    assert text == json.dumps(data, sort_keys=True, indent=2) + "\n"
    assert data["lockVersion"] == 1
    assert sorted(data["workflows"]) == sorted([f"{WF['all-types']}@1", f"{WF['all-types']}@latest", f"{WF['quick']}@latest"])
    entry = data["workflows"][f"{WF['all-types']}@latest"]
    assert (entry["workflowId"], entry["version"], entry["name"]) == (WF["all-types"], 2, "Every input type")
    assert entry["versionId"]
    assert entry["jobPayloadSchema"]["workflow_input_doc"] == {
        "variable_name": "workflow_input_doc",
        "display_name": "Contract",
        "type": "file",
        "is_nullable": False,
        "allowed_file_types": ["PDF", "TXT"],
    }
    assert set(data["workflows"][f"{WF['all-types']}@1"]["jobPayloadSchema"]) == {"workflow_input_old"}
    # The fingerprint is the one the runner computes for the live schema.
    lock = load_lock(project.root)
    live = lock.workflows[f"{WF['all-types']}@latest"]
    assert entry["fingerprint"] == schema_fingerprint(live)
    # Schemas were fetched once per workflow and version, not once per spec.
    assert project.sandbox.state.count("GET", "workflow") == 3


def test_lock_reflects_exactly_the_given_specs(project: Project) -> None:
    a = all_types_spec(project)
    q = quick_spec(project)
    assert project.run("lock", a, q).exit_code == 0
    assert sorted(read_lock(project)["workflows"]) == sorted([f"{WF['all-types']}@latest", f"{WF['quick']}@latest"])
    result = project.run("lock", q)
    assert result.exit_code == 0, result.output
    assert sorted(read_lock(project)["workflows"]) == [f"{WF['quick']}@latest"]


def _project_tree(project: Project) -> None:
    """Specs in nested folders, and YAML and JSON that are not specs beside them (foreach data,
    a fixture, CI files), in hidden and virtual-environment folders too."""
    quick_spec(project, "top")
    project.file("jobs/deep/a.yaml", header("deep", "all-types") + "inputs:\n  Title: t\n  Budget: 1\n  Approved: true\n  Due date: 2026-12-15\n  Contract: https://example.com/c.pdf\n")
    project.file("jobs/j.json", json.dumps({"apiVersion": "opus-runner/v1", "kind": "Job", "metadata": {"name": "j"}, "workflow": {"id": WF["quick"]}, "inputs": {"Question": "x"}}))
    project.file("jobs/rows.json", '[{"region": "eu"}]')
    project.file("sandbox/workflows.yaml", "workflows: {}\n")
    project.file(".github/workflows/ci.yml", "on: push\n")
    project.file(".hidden/x.yaml", header("hidden", "newer"))
    project.file("tools-env/pyvenv.cfg", "home = /usr\n")
    project.file("tools-env/lib/s.yaml", header("in-venv", "newer"))
    project.file("node_modules/pkg/s.yaml", header("in-node", "newer"))


def test_lock_without_arguments_takes_every_spec_of_the_project(project: Project) -> None:
    _project_tree(project)
    result = project.run("lock")
    assert result.exit_code == 0, result.output
    assert "from every spec of the project (3)" in result.stderr
    lock = read_lock(project)
    assert lock["specs"] == ["jobs/deep/a.yaml", "jobs/j.json", "top.yaml"]
    assert sorted(lock["workflows"]) == sorted([f"{WF['all-types']}@latest", f"{WF['quick']}@latest"])
    assert load_lock(project.root).specs == ("jobs/deep/a.yaml", "jobs/j.json", "top.yaml")
    # Given specs: the lock names those.
    assert project.run("lock", "top.yaml").exit_code == 0
    assert read_lock(project)["specs"] == ["top.yaml"]


def test_drift_without_arguments_checks_the_project_and_names_specs_new_or_gone(project: Project) -> None:
    _project_tree(project)
    assert project.run("lock").exit_code == 0
    clean = project.run("drift")
    assert clean.exit_code == 0, clean.output
    assert "no drift" in clean.stdout and "note:" not in clean.stderr
    (project.root / "jobs" / "j.json").unlink()
    quick_spec(project, "later")
    result = project.run("drift")
    assert result.exit_code == 0, result.output
    assert "note: specs not in opus-runner.lock: later.yaml; run 'opus-run lock' to add them" in result.stderr
    assert "note: opus-runner.lock was taken from specs that are gone: jobs/j.json" in result.stderr


def test_lock_and_drift_without_specs_in_the_project_say_so(project: Project) -> None:
    project.file("data/rows.yaml", "- {a: 1}\n")
    for command in ("lock", "drift"):
        result = project.run(command)
        assert result.exit_code == 2
        assert "error: no spec under the project root" in result.stderr
        assert "declaring apiVersion: opus-runner/v1" in result.stderr


def test_a_lock_without_specs_still_loads(tmp_path: Path) -> None:
    write_lock(tmp_path, {"wf@latest": SCHEMA})
    data = json.loads((tmp_path / LOCK_FILE).read_text())
    del data["specs"]
    (tmp_path / LOCK_FILE).write_text(json.dumps(data))
    assert load_lock(tmp_path).specs == ()
    data["specs"] = "a.yaml"
    (tmp_path / LOCK_FILE).write_text(json.dumps(data))
    with pytest.raises(LockError, match="specs is not a list of file names"):
        load_lock(tmp_path)


def test_lock_needs_a_key(project: Project) -> None:
    quick_spec(project)
    result = project.run("lock", "q.yaml", env={"OPUS_SERVICE_KEY": None})
    assert result.exit_code == 2
    assert "OPUS_SERVICE_KEY" in result.stderr and "Traceback" not in result.output
    assert not (project.root / LOCK_FILE).exists()


def test_lock_of_an_unknown_workflow_fails_without_writing(project: Project) -> None:
    missing = "00000000-0000-4000-8000-00000000dead"
    project.spec("x.yaml", header("x", missing) + "inputs: {}\n")
    result = project.run("lock", "x.yaml")
    assert result.exit_code == 2
    assert missing in result.stderr and "not found" in result.stderr
    assert not (project.root / LOCK_FILE).exists()


# -- --locked: no key, no network --------------------------------------------------------------


def test_validate_and_render_locked_use_no_key_and_no_network(project: Project, no_network: list[Any]) -> None:
    spec = all_types_spec(project)
    quick_spec(project)
    with network_allowed():  # locking reads the live schemas
        assert project.run("lock", ".").exit_code == 0
    before = sum(project.sandbox.state.requests.values())

    result = project.run("validate", "--locked", ".", env=offline_env())
    assert result.exit_code == 0, result.output
    assert "2 jobs valid" in result.stderr
    assert f"checked against {project.root / LOCK_FILE} (no network)" in result.stderr

    result = project.run("render", "--locked", spec, env=offline_env())
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout.split("\n", 1)[1])
    assert payload["workflow_input_budget"] == {"value": 45.8, "type": "float", "displayName": "Budget"}
    assert payload["workflow_input_due"]["value"] == "2026-12-15"

    assert no_network == []
    assert sum(project.sandbox.state.requests.values()) == before


def test_validate_locked_checks_types_against_the_lock(project: Project, no_network: list[Any]) -> None:
    with network_allowed():
        all_types_spec(project)
        assert project.run("lock", "a.yaml").exit_code == 0
    all_types_spec(project, budget='"lots"', extra="  Colour: red\n")
    result = project.run("validate", "--locked", "a.yaml", env=offline_env())
    assert result.exit_code == 2
    assert "inputs.Budget" in result.stderr and "expected a number" in result.stderr
    assert "no input 'Colour'" in result.stderr
    assert no_network == []


def test_locked_spec_whose_workflow_is_not_locked_says_run_lock(project: Project, no_network: list[Any]) -> None:
    with network_allowed():
        quick_spec(project)
        assert project.run("lock", "q.yaml").exit_code == 0
    all_types_spec(project)
    result = project.run("validate", "--locked", "a.yaml", env=offline_env())
    assert result.exit_code == 2
    assert f"a.yaml:6: workflow.id: workflow {WF['all-types']!r} (latest version) is not in opus-runner.lock" in result.stderr
    assert "run 'opus-run lock" in result.stderr
    # A pinned version is a different entry from the latest one.
    quick_spec(project, "q1", version="  version: 1\n")
    result = project.run("validate", "--locked", "q1.yaml", env=offline_env())
    assert result.exit_code == 2
    assert f"workflow {WF['quick']!r} (version 1) is not in opus-runner.lock" in result.stderr
    assert no_network == []


def test_missing_lock_is_a_usage_error(project: Project, no_network: list[Any]) -> None:
    quick_spec(project)
    result = project.run("validate", "--locked", "q.yaml", env=offline_env())
    assert result.exit_code == 2
    assert "opus-runner.lock does not exist; run 'opus-run lock" in result.stderr
    assert no_network == []


def _locked_project(project: Project) -> dict[str, Any]:
    quick_spec(project)
    with network_allowed():
        assert project.run("lock", "q.yaml").exit_code == 0
    return read_lock(project)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{not json", "opus-runner.lock is corrupted (not JSON"),
        ('{"lockVersion": 1, "workflows": []}', "opus-runner.lock is corrupted (workflows is not an object)"),
        ('{"lockVersion": 1}', "opus-runner.lock is corrupted (expected an object with lockVersion and workflows (and specs, api))"),
        ('{"lockVersion": 7, "workflows": {}}', "lockVersion 7, written by a newer opus-runner"),
        (
            '{"lockVersion": 1, "workflows": {"quick@latest": {"workflowId": "quick"}}}',
            "the entry for quick@latest was edited by hand or corrupted (missing fingerprint, jobPayloadSchema, name, version, versionId)",
        ),
    ],
)
def test_corrupted_lock_is_a_clear_usage_error(
    project: Project, no_network: list[Any], text: str, expected: str
) -> None:
    _locked_project(project)
    (project.root / LOCK_FILE).write_text(text)
    result = project.run("validate", "--locked", "q.yaml", env=offline_env())
    assert result.exit_code == 2
    assert expected in result.stderr
    assert "Traceback" not in result.output
    assert no_network == []


def test_hand_edited_lock_is_refused_by_fingerprint(project: Project, no_network: list[Any]) -> None:
    data = _locked_project(project)
    entry = data["workflows"][f"{WF['quick']}@latest"]
    entry["jobPayloadSchema"]["workflow_input_n"]["type"] = "str"  # "make the spec pass"
    (project.root / LOCK_FILE).write_text(json.dumps(data, indent=2))
    result = project.run("validate", "--locked", "q.yaml", env=offline_env())
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"error: opus-runner.lock: the entry for {WF['quick']}@latest was edited by hand or corrupted "
        "(fingerprint mismatch); run 'opus-run lock' again"
    )
    # Name and version are not part of the fingerprint: editing them is harmless.
    data = _locked_project(project)
    data["workflows"][f"{WF['quick']}@latest"]["name"] = "Renamed"
    (project.root / LOCK_FILE).write_text(json.dumps(data))
    assert project.run("validate", "--locked", "q.yaml", env=offline_env()).exit_code == 0
    assert no_network == []


# -- the library API ---------------------------------------------------------------------------

SCHEMA = WorkflowSchema(
    workflow_id="wf",
    name="A workflow",
    inputs=(
        InputField("v_b", "B", "float", nullable=True),
        InputField("v_a", "A", "file", allowed_file_types=("TXT", "PDF")),
    ),
    version=3,
    version_id="uuid-3",
)


def test_write_then_load_round_trips(tmp_path: Path) -> None:
    path = write_lock(tmp_path, {"wf@latest": SCHEMA})
    assert path == tmp_path / LOCK_FILE
    assert path.read_text() == lock_text({"wf@latest": SCHEMA})
    lock = load_lock(tmp_path)
    assert isinstance(lock, Lock) and lock.path == path
    got = lock.schema(WorkflowRef("wf"))
    assert got is not None
    assert (got.workflow_id, got.name, got.version, got.version_id) == ("wf", "A workflow", 3, "uuid-3")
    assert {f.variable_name: f for f in got.inputs} == {
        "v_b": InputField("v_b", "B", "float", nullable=True),
        "v_a": InputField("v_a", "A", "file", allowed_file_types=("PDF", "TXT")),
    }
    assert schema_fingerprint(got) == schema_fingerprint(SCHEMA)
    assert lock.schema(WorkflowRef("wf", version=3)) is None  # a pin is its own entry
    assert lock.require(WorkflowRef("wf"), spec=None) is got


def test_require_without_the_entry(tmp_path: Path) -> None:
    write_lock(tmp_path, {"wf@latest": SCHEMA})
    lock = load_lock(tmp_path)
    with pytest.raises(LockError, match=r"workflow 'other' \(version id u1\) is not in opus-runner.lock") as info:
        lock.require(WorkflowRef("other", version_id="u1"), spec=None)
    assert info.value.exit_code == 2 and info.value.entry == "other@u1"
    spec_file = tmp_path / "s.yaml"
    spec_file.write_text(header("s", "other"))
    spec = load_spec(spec_file)
    with pytest.raises(ValidationFailed) as failed:
        lock.require(WorkflowRef("other"), spec=spec)
    [error] = failed.value.errors
    assert error.key == ("workflow", "id") and error.line == 6
    assert "run 'opus-run lock <specs>'" in error.message and "commit the file" in error.message
