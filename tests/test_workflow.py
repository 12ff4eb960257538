"""workflow.py: InputFields from both API shapes, key resolution, the payload JSON Schema."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import jsonschema
import pytest

from opus_runner.errors import ApiError
from opus_runner.models import InputField, WorkflowSchema
from opus_runner.workflow import (
    fields_from_job_payload_schema,
    payload_json_schema,
    resolve_input,
    schema_fingerprint,
    schema_from_workflow,
    schema_from_workflow_object,
)

JOB_PAYLOAD_SCHEMA: dict[str, Any] = {
    "workflow_input_we4tej0ly": {
        "id": "we4tej0ly",
        "variable_name": "workflow_input_we4tej0ly",
        "display_name": "Project name",
        "type": "str",
        "is_nullable": False,
    },
    "workflow_input_contract": {
        "variable_name": "workflow_input_contract",
        "display_name": "Contract",
        "type": "file",
        "is_nullable": False,
        "tags": [
            {"variable_name": "something_else", "value": ["IGNORED"]},
            {"variable_name": "allowed_file_types", "value": [".pdf", "csv", " Xlsx ", "PDF"]},
        ],
    },
    "workflow_input_budget": {
        "variable_name": "workflow_input_budget",
        "type": "float",
        "is_nullable": True,
    },
    "workflow_input_notes": {"display_name": "Notes"},
}


def test_fields_from_job_payload_schema() -> None:
    fields = fields_from_job_payload_schema(JOB_PAYLOAD_SCHEMA)
    assert [f.variable_name for f in fields] == list(JOB_PAYLOAD_SCHEMA)  # API order kept
    name, contract, budget, notes = fields
    assert name == InputField(
        "workflow_input_we4tej0ly", "Project name", "str", False, (), "we4tej0ly"
    )
    assert contract.type == "file" and contract.is_file
    assert contract.allowed_file_types == ("PDF", "CSV", "XLSX")
    assert budget.display_name == "workflow_input_budget"  # no display name: the variable name
    assert budget.nullable and not budget.required
    assert notes.variable_name == "workflow_input_notes"  # no variable name: the mapping key
    assert notes.type == "" and not notes.known  # no type stated: never guessed as str
    assert notes.id is None


@pytest.mark.parametrize(
    ("entry", "attr", "expected"),
    [
        ({"type": "FLOAT"}, "type", "float"),
        ({"type": {"type": "bool", "type_definition": None}}, "type", "bool"),
        ({"is_nullable": "true"}, "nullable", True),
        ({"is_nullable": "false"}, "nullable", False),
        (
            {"tags": {"variable_name": "allowed_file_types", "value": ["png"]}},
            "allowed_file_types",
            ("PNG",),
        ),
        ({"allowed_file_types": [".JPG"]}, "allowed_file_types", ("JPG",)),
    ],
)
def test_field_variants(entry: dict[str, Any], attr: str, expected: Any) -> None:
    (field,) = fields_from_job_payload_schema({"v": entry})
    assert getattr(field, attr) == expected


def test_malformed_payload_schema_is_an_api_error() -> None:
    with pytest.raises(ApiError, match="input 'v' of the workflow's input schema is a JSON list"):
        fields_from_job_payload_schema({"v": ["str"]})
    with pytest.raises(ApiError, match="not an object"):
        fields_from_job_payload_schema(["v"])  # type: ignore[arg-type]
    assert fields_from_job_payload_schema(None) == ()


def test_schema_from_workflow() -> None:
    body = {
        "workflowId": "CIAwZYFzQJwmADQN",
        "name": "Invoice triage",
        "description": "Monthly",
        "active": True,
        "workflowBlueprint": {"big": "graph"},
        "jobPayloadSchema": JOB_PAYLOAD_SCHEMA,
    }
    schema = schema_from_workflow(body)
    assert (schema.workflow_id, schema.name, schema.description, schema.source) == (
        "CIAwZYFzQJwmADQN",
        "Invoice triage",
        "Monthly",
        "v1",
    )
    assert len(schema.inputs) == 4 and schema.version is None and schema.version_id is None
    pinned = schema_from_workflow(body, version=3, version_id="9b2e", workflow_id="asked-for")
    assert (pinned.version, pinned.version_id, pinned.workflow_id) == (3, "9b2e", "asked-for")
    own = schema_from_workflow({**body, "version": 4, "workflowVersionId": "v-4"})
    assert (own.version, own.version_id) == (4, "v-4")


def test_schema_from_workflow_odd_bodies() -> None:
    as_text = schema_from_workflow(
        {"workflowId": "w", "jobPayloadSchema": json.dumps(JOB_PAYLOAD_SCHEMA)}
    )
    assert len(as_text.inputs) == 4
    assert schema_from_workflow({"workflowId": "w", "jobPayloadSchema": None}).inputs == ()
    wrapped = schema_from_workflow({"data": {"workflowId": "w", "jobPayloadSchema": {}}})
    assert wrapped.workflow_id == "w"
    with pytest.raises(ApiError, match="has no jobPayloadSchema"):
        schema_from_workflow({"workflowId": "w", "name": "x"})


UUID = "3f69dcbf-713a-493d-8d08-3fdb754825ab"


def _object(input_node: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "workflow_id": UUID,
        "name": "Test Workflow",
        "description": "A test",
        "version": 3,
        "workflow_input_node_id": "n-in",
        "nodes": {
            "n-in": {"id": "n-in", "type": "input", "name": "Input", **input_node},
            "n-out": {"id": "n-out", "type": "output", "name": "Output"},
        },
        "edges": {},
        **extra,
    }


def test_schema_from_workflow_object_reads_the_input_node() -> None:
    out_schema = {
        "a": {
            "variable_name": "a",
            "display_name": "Doc",
            "type": "str",
            "allowed_types": [{"type": "file"}],
        },
        "b": {
            "variable_name": "b",
            "display_name": "Docs",
            "type": "array",
            "allowed_types": [{"type": "file"}],
        },
        "c": {
            "variable_name": "c",
            "display_name": "Pdf",
            "type": "file",
            "allowed_types": [{"type": "file"}],
        },
        "d": {
            "variable_name": "d",
            "display_name": "Count",
            "type": "float",
            "allowed_types": [{"type": "float"}],
        },
    }
    # The older v2 shape: a bare type next to allowed_types naming files.
    body = _object(
        {
            "workflow_version_id": "ver-3",
            "input_schema": {"schema": out_schema},
            "output_schema": {"schema": {"ignored": {"type": "str"}}},
        }
    )
    schema = schema_from_workflow_object(body, UUID)
    assert [(f.variable_name, f.type, f.sent_type) for f in schema.inputs] == [
        ("a", "file", "file"),
        ("b", "array_files", "array"),
        ("c", "file", "file"),
        ("d", "float", "float"),
    ]
    assert (schema.source, schema.workflow_id, schema.name, schema.version, schema.version_id) == (
        "v2",
        UUID,
        "Test Workflow",
        3,
        "ver-3",
    )


def test_schema_from_workflow_object_falls_back_to_output_schema() -> None:
    # Inputs live under input_schema; some clients read output_schema, so an empty
    # input_schema falls back to it.
    node = {
        "input_schema": {"schema": {}},
        "output_schema": {"schema": {"x": {"display_name": "X", "type": "bool"}}},
    }
    schema = schema_from_workflow_object(_object(node), UUID)
    assert [(f.variable_name, f.display_name, f.type) for f in schema.inputs] == [
        ("x", "X", "bool")
    ]
    bare = schema_from_workflow_object(_object({}), UUID)
    assert bare.inputs == ()


def test_schema_from_workflow_object_with_node_list() -> None:
    body = _object({})
    body["nodes"] = [{"id": "n-in", "input_schema": {"schema": {"y": {"type": "date"}}}}]
    assert [f.type for f in schema_from_workflow_object(body, UUID).inputs] == ["date"]


@pytest.mark.parametrize(
    "mutate", [lambda b: b.pop("workflow_input_node_id"), lambda b: b["nodes"].pop("n-in")]
)
def test_schema_from_workflow_object_without_input_node(mutate: Any) -> None:
    body = _object({})
    mutate(body)
    with pytest.raises(ApiError, match=f"the v2 graph of workflow {UUID} has no input node"):
        schema_from_workflow_object(body, UUID)


def _schema(*fields: InputField) -> WorkflowSchema:
    return WorkflowSchema(workflow_id="wf1", inputs=fields)


def test_resolve_input_prefers_variable_name_then_display_name() -> None:
    a = InputField("workflow_input_a", "Title", "str")
    # b's display name is a's variable name: the variable name wins.
    b = InputField("workflow_input_b", "workflow_input_a", "str")
    schema = _schema(a, b)
    assert resolve_input(schema, "workflow_input_a") is a
    assert resolve_input(schema, "Title") is a
    assert resolve_input(schema, "workflow_input_b") is b


def test_resolve_input_shared_display_name() -> None:
    schema = _schema(InputField("v_one", "Budget", "float"), InputField("v_two", "Budget", "str"))
    with pytest.raises(LookupError) as info:
        resolve_input(schema, "Budget")
    assert "'v_one'" in str(info.value) and "'v_two'" in str(info.value)
    assert "variable name" in str(info.value)
    assert resolve_input(schema, "v_two").type == "str"


def test_resolve_input_unknown_lists_names_and_suggests() -> None:
    schema = _schema(InputField("v1", "Project name", "str"), InputField("v2", "Budget", "float"))
    with pytest.raises(LookupError) as info:
        resolve_input(schema, "Projekt name")
    assert str(info.value) == (
        "workflow wf1 has no input 'Projekt name'; its inputs are 'Project name', 'Budget' "
        "(did you mean 'Project name'?)"
    )
    with pytest.raises(LookupError) as far:
        resolve_input(schema, "zzz")
    assert "did you mean" not in str(far.value)
    with pytest.raises(LookupError, match="did you mean 'Budget'"):
        resolve_input(schema, "BUDGET")


FULL = _schema(
    InputField("s", "S", "str"),
    InputField("f", "F", "float"),
    InputField("b", "B", "bool"),
    InputField("d", "D", "date"),
    InputField("file", "File", "file", allowed_file_types=("PDF",)),
    InputField("arr", "Arr", "array"),
    InputField("files", "Files", "array_files"),
    InputField("o", "O", "object"),
    InputField("opt", "Opt", "float", nullable=True),
)


def _entry(value: Any, type_: str, name: str = "x") -> dict[str, Any]:
    return {"value": value, "type": type_, "displayName": name}


def _valid_payload() -> dict[str, Any]:
    return {
        "s": _entry("hello", "str"),
        "f": _entry(45.8, "float"),
        "b": _entry(True, "bool"),
        "d": _entry("2026-11-30", "date"),
        "file": _entry("https://files.opus.com/media/a.pdf", "file"),
        "arr": _entry([1, "two"], "array"),
        "files": _entry(["https://f/1", "https://f/2"], "array_files"),
        "o": _entry({"depth": 2}, "object"),
    }


def _errors(payload: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft202012Validator(payload_json_schema(FULL))
    return [e.message for e in validator.iter_errors(payload)]


def test_payload_json_schema_is_valid_draft_2020_12() -> None:
    schema = payload_json_schema(FULL)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["required"] == ["s", "f", "b", "d", "file", "arr", "files", "o"]
    assert schema["additionalProperties"] is False
    assert _errors(_valid_payload()) == []


def test_payload_json_schema_accepts_nullable_and_integers() -> None:
    payload = _valid_payload()
    payload["opt"] = _entry(None, "float")
    payload["f"] = _entry(45, "float")
    payload["f"].pop("displayName")
    payload["files"]["typeDefinition"] = {"id": "file"}
    assert _errors(payload) == []


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda p: p.pop("s"), "'s' is a required property"),
        (lambda p: p.update(s=_entry(None, "str")), "None is not of type 'string'"),
        (lambda p: p.update(f=_entry(True, "float")), "True is not of type 'number'"),
        (lambda p: p.update(f=_entry("45.8", "float")), "'45.8' is not of type 'number'"),
        (lambda p: p.update(b=_entry("yes", "bool")), "'yes' is not of type 'boolean'"),
        (lambda p: p.update(d=_entry("30/11/2026", "date")), "does not match"),
        (lambda p: p.update(d=_entry("2026-13-01", "date")), "does not match"),
        (lambda p: p.update(file=_entry("", "file")), "should be non-empty"),
        (lambda p: p.update(files=_entry("https://f/1", "array_files")), "is not of type 'array'"),
        (lambda p: p.update(files=_entry([1], "array_files")), "1 is not of type 'string'"),
        (lambda p: p.update(o=_entry([], "object")), "[] is not of type 'object'"),
        (lambda p: p.update(s=_entry("x", "float")), "'str' was expected"),
        (lambda p: p.update(s={"type": "str"}), "'value' is a required property"),
        (lambda p: p.update(unknown=_entry("x", "str")), "Additional properties are not allowed"),
    ],
)
def test_payload_json_schema_rejects(change: Any, fragment: str) -> None:
    payload = _valid_payload()
    change(payload)
    errors = _errors(payload)
    assert errors and any(fragment in e for e in errors), errors


def test_schema_fingerprint() -> None:
    a = InputField("a", "A", "str", id="1")
    b = InputField("b", "B", "file", allowed_file_types=("PDF", "CSV"))
    first = schema_fingerprint(WorkflowSchema("wf", name="one", inputs=(a, b)))
    assert len(first) == 64 and int(first, 16) >= 0
    reordered = WorkflowSchema(
        "wf",
        name="renamed",
        inputs=(
            InputField("b", "B", "file", allowed_file_types=("CSV", "PDF")),
            InputField("a", "A", "str", id="other"),
        ),
    )
    assert schema_fingerprint(reordered) == first
    changed = WorkflowSchema("wf", inputs=(InputField("a", "A", "float"), b))
    assert schema_fingerprint(changed) != first
    nullable = WorkflowSchema("wf", inputs=(InputField("a", "A", "str", nullable=True), b))
    assert schema_fingerprint(nullable) != first


def test_workflow_module_is_cheap_to_import() -> None:
    code = (
        "import sys, opus_runner.workflow\n"
        "heavy = ('httpx', 'jsonschema', 'jinja2', 'starlette', 'rich')\n"
        "heavy = [m for m in heavy if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
