"""The parsers against real-shaped bodies (tests/fixtures/live, written from opus-api.md).

The sandbox serves these shapes over HTTP too (tests/test_sandbox*.py, end-to-end tests); these
pin the parsers to the documented live answers themselves, one shape per test.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from opus_runner.builtins.coerce import to_int, to_json_string
from opus_runner.builtins.schema import pick_version as _pick_version
from opus_runner.models import InputField, WorkflowRef
from opus_runner.payload import wire_entry
from opus_runner.results import parse_results
from opus_runner.workflow import (
    payload_json_schema,
    schema_fingerprint,
    schema_from_workflow,
    workflow_id_problem,
)

LIVE = Path(__file__).parent / "fixtures" / "live"
WORKFLOW_ID = "3f69dcbf-2d6e-4b8a-9c1e-5a7b0c4d2e11"


def body(name: str) -> Any:
    return json.loads((LIVE / name).read_text(encoding="utf-8"))


def test_get_workflow_answering_the_v2_graph_is_read_as_the_graph() -> None:
    # Live, GET /workflow/{uuid} answers 200 with the graph and no jobPayloadSchema.
    schema = schema_from_workflow(body("workflow-graph.json"), workflow_id=WORKFLOW_ID)
    assert (schema.source, schema.workflow_id, schema.name, schema.version) == ("v2", WORKFLOW_ID, "KYC check", 3)
    assert schema.version_id == "9b2e4f6a-1c3d-4e5f-a7b8-c9d0e1f2a3b4"  # from the input node
    assert schema.workspace_id == "0b7e5c1a-9d2f-4e3b-8a6c-1f2e3d4c5b6a"
    by_var = schema.by_variable_name()
    # No bare `type` in a live entry: allowed_types[0].type is the type.
    assert [(f.variable_name, f.type, f.sent_type) for f in schema.inputs] == [
        ("workflow_input_x", "file", "file"),
        ("workflow_input_name", "str", "str"),
        ("workflow_input_age", "int", "int"),
        ("workflow_input_proofs", "array_files", "array"),
        ("workflow_input_scans", "array_files", "array_files"),
        ("workflow_input_tags", "array", "array"),
        ("workflow_input_rules", "json_string", "json_string"),
        ("workflow_input_geo", "geo_point", "geo_point"),
    ]
    assert by_var["workflow_input_x"].allowed_file_types == ("PDF",)
    assert by_var["workflow_input_proofs"].allowed_file_types == ("PDF", "PNG")
    assert by_var["workflow_input_proofs"].type_definition["allowed_types"] == [{"type": "file"}]
    assert not by_var["workflow_input_x"].nullable and by_var["workflow_input_age"].nullable


def test_an_unknown_type_is_kept_never_turned_into_str() -> None:
    schema = schema_from_workflow(body("workflow-graph.json"), workflow_id=WORKFLOW_ID)
    geo = schema.by_variable_name()["workflow_input_geo"]
    assert geo.type == "geo_point" and not geo.known
    # Only what can be validated is: the value is left to the server, the type is sent as stated.
    properties = payload_json_schema(schema)["properties"]["workflow_input_geo"]["properties"]
    assert properties["type"] == {"const": "geo_point"}
    assert properties["value"] == {"anyOf": [{}, {"type": "null"}]} or properties["value"] == {}


def test_a_list_of_files_goes_as_array_with_its_type_definition() -> None:
    schema = schema_from_workflow(body("workflow-graph.json"), workflow_id=WORKFLOW_ID)
    proofs = schema.by_variable_name()["workflow_input_proofs"]
    entry = wire_entry(proofs, ["https://files.opus.com/a.pdf"])
    assert entry == {
        "value": ["https://files.opus.com/a.pdf"],
        "type": "array",
        "typeDefinition": {"id": "file", "variable_name": "file", "allowed_types": [{"type": "file"}]},
        "displayName": "Proofs of address",
    }
    # Described as array_files, the list goes as it is.
    scans = schema.by_variable_name()["workflow_input_scans"]
    assert wire_entry(scans, ["u"]) == {"value": ["u"], "type": "array_files", "displayName": "Scans"}


def test_lock_entries_round_trip_the_wire_form() -> None:
    from opus_runner.workflow import fields_from_job_payload_schema

    schema = schema_from_workflow(body("workflow-graph.json"), workflow_id=WORKFLOW_ID)
    entries = {f.variable_name: f.as_entry() for f in schema.inputs}
    again = fields_from_job_payload_schema(json.loads(json.dumps(entries)))
    # What is sent is the same after the round trip (a lock replays the wire form).
    assert [wire_entry(f, ["u"]) for f in again] == [wire_entry(f, ["u"]) for f in schema.inputs]
    # An input with no wire form keeps the entry it always had, so older lock files verify.
    plain = InputField("v", "V", "str")
    assert plain.as_entry() == {
        "variable_name": "v",
        "display_name": "V",
        "type": "str",
        "is_nullable": False,
        "allowed_file_types": [],
    }
    array_files = schema.by_variable_name()["workflow_input_proofs"]
    other = InputField("workflow_input_proofs", "Proofs of address", "array_files", True, ("PDF", "PNG"))
    assert schema_fingerprint(schema) != schema_fingerprint(
        type(schema)(workflow_id=WORKFLOW_ID, inputs=tuple(other if f is array_files else f for f in schema.inputs))
    )


def test_snake_case_versions_pick_the_pinned_version() -> None:
    versions = body("versions.json")["versions"]
    assert _pick_version(versions, WorkflowRef(WORKFLOW_ID, version=2))["workflow_version_id"].startswith("5c6d")
    picked = _pick_version(versions, WorkflowRef(WORKFLOW_ID, version_id="9b2e4f6a-1c3d-4e5f-a7b8-c9d0e1f2a3b4"))
    assert picked["version"] == 3
    assert _pick_version(versions, WorkflowRef(WORKFLOW_ID, version=7)) is None


@pytest.mark.parametrize(
    ("name", "shape", "outputs"),
    [
        (
            "results-current.json",
            "current",
            {
                "workflow_output_verdict": "approved",
                "workflow_output_score": 0.93,
                "workflow_output_details": {"checks": ["face", "mrz"], "ok": True},
                "workflow_output_report": "https://files.opus.com/media/private/8f3a/report.pdf",
            },
        ),
        (
            "results-older.json",
            "older",
            {
                "summary": "Approved after review",
                "outputFiles": ["https://files.opus.com/media/private/8f3a/report.pdf"],
                "score": 0.93,
                "verdict": "approved",
            },
        ),
        ("results-nested.json", "nested", {"workflow_output_verdict": "approved"}),
        ("results-flat.json", "flat", {"workflow_output_verdict": "approved", "workflow_output_score": 0.93}),
        ("results-list.json", "list", {"workflow_output_verdict": "approved", "workflow_output_score": 0.93}),
    ],
)
def test_every_results_shape_becomes_the_same_outputs_mapping(name: str, shape: str, outputs: dict[str, Any]) -> None:
    data = parse_results(body(name))
    assert (data.shape, data.outputs, data.recognised) == (shape, outputs, True)


def test_json_string_outputs_are_decoded_and_raw_keeps_the_text() -> None:
    raw = body("results-current.json")
    data = parse_results(raw)
    assert data.outputs["workflow_output_details"] == {"checks": ["face", "mrz"], "ok": True}
    assert data.raw["jobResultsPayloadSchema"]["workflow_output_details"]["value"].startswith('{"checks"')
    assert data.types["workflow_output_details"] == "json_string"
    assert [(f.name, f.display_name, f.urls) for f in data.files] == [
        ("workflow_output_report", "Report", ("https://files.opus.com/media/private/8f3a/report.pdf",))
    ]


def test_older_results_list_their_output_files() -> None:
    data = parse_results(body("results-older.json"))
    assert [(f.name, f.urls) for f in data.files] == [
        ("outputFiles", ("https://files.opus.com/media/private/8f3a/report.pdf",))
    ]


@pytest.mark.parametrize("raw", [body("results-none.json"), {}, {"jobResultsPayloadSchema": {}}, [], "text"])
def test_a_body_with_no_outputs_is_flagged_not_silently_empty(raw: Any) -> None:
    data = parse_results(raw)
    assert data.outputs == {} and data.recognised is False


def test_a_failed_job_error_is_kept() -> None:
    data = parse_results({"jobResultsPayloadSchema": {}, "error": {"message": "Node 'Score' raised"}})
    assert data.error == "Node 'Score' raised" and data.recognised


@pytest.mark.parametrize(
    ("value", "sent"),
    [(12, 12), ("12", 12), (" -3 ", -3), ("1_000", 1000), (4.0, 4), ("7.0", 7)],
)
def test_int_accepts_integers_and_integral_strings(value: Any, sent: int) -> None:
    assert to_int(value) == sent


@pytest.mark.parametrize("value", [True, 1.5, "1.5", "twelve", None, [1]])
def test_int_refuses_the_rest(value: Any) -> None:
    with pytest.raises(ValueError, match="expected a whole number"):
        to_int(value)


def test_json_string_encodes_mappings_and_lists_and_checks_strings() -> None:
    import datetime as dt

    assert json.loads(to_json_string({"a": [1, 2], "day": dt.date(2026, 1, 31)})) == {"a": [1, 2], "day": "2026-01-31"}
    assert to_json_string([1, "é"]) == '[1, "é"]'
    assert to_json_string('{"a": 1}') == '{"a": 1}'
    with pytest.raises(ValueError, match="not JSON"):
        to_json_string("{a: 1")
    with pytest.raises(ValueError, match="a mapping, a list or a string holding JSON"):
        to_json_string(3)


@pytest.mark.parametrize("bad", ["CIAwZYFzQJwmADQN", "demo-summarize", "", "3f69dcbf-2d6e-4b8a-9c1e-5a7b0c4d2e1"])
def test_a_workflow_id_that_is_not_a_uuid_is_named_with_where_to_find_one(bad: str) -> None:
    problem = workflow_id_problem(bad)
    assert problem is not None and "is not a UUID" in problem and "Opus identifies workflows by UUID" in problem
    assert "/app/workflow/" in problem


def test_a_uuid_workflow_id_passes() -> None:
    assert workflow_id_problem(WORKFLOW_ID) is None
    assert workflow_id_problem(WORKFLOW_ID.upper()) is None
