"""The payload validator cache stays bounded however many workflow schemas a process sees."""

from __future__ import annotations

from opus_runner import payload
from opus_runner.models import InputField, WorkflowSchema
from opus_runner.payload import VALIDATOR_CACHE_SIZE, validate_payload, wire_entry


def schema_number(number: int) -> WorkflowSchema:
    title = InputField(variable_name=f"workflow_input_{number}", display_name="Title", type="str")
    return WorkflowSchema(workflow_id=f"wf-{number}", inputs=(title,))


def test_ten_thousand_distinct_schemas_do_not_grow_the_validator_cache() -> None:
    payload._VALIDATORS.clear()
    for number in range(10_000):
        schema = schema_number(number)
        sent = {f.variable_name: wire_entry(f, "hello") for f in schema.inputs}
        assert validate_payload(sent, schema, "s.yaml", {}, {}) == []
        assert len(payload._VALIDATORS) <= VALIDATOR_CACHE_SIZE
    assert len(payload._VALIDATORS) == VALIDATOR_CACHE_SIZE


def test_the_schemas_of_a_batch_stay_cached_and_each_validates_its_own_payloads() -> None:
    payload._VALIDATORS.clear()
    batch = [schema_number(number) for number in range(3)]
    for schema in batch:
        validate_payload({}, schema, "s.yaml", {}, {})
    compiled = {id(s): payload._VALIDATORS[id(s)][1] for s in batch}
    for number in range(VALIDATOR_CACHE_SIZE * 2):
        schema = batch[number % 3]
        validate_payload({}, schema, "s.yaml", {}, {})
        assert payload._VALIDATORS[id(schema)][1] is compiled[id(schema)]  # compiled once
    # A payload for another workflow is refused by this one's validator, not a cached stranger's.
    other = {f.variable_name: wire_entry(f, "x") for f in batch[1].inputs}
    assert validate_payload(other, batch[0], "s.yaml", {}, {})
