"""The input-type table (opus_runner/inputs.py): one entry per type, and its facets agree."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import jsonschema
import pytest
import yaml

from opus_runner import authoring, inputs, models, payload
from opus_runner.builtins import coerce
from opus_runner.models import InputField
from opus_runner.workflow import VALUE_SCHEMAS

TODAY = dt.date(2026, 2, 28)
KNOWN = [t.name for t in inputs.TYPES]


def field(type_: str, allowed: tuple[str, ...] = ()) -> InputField:
    return InputField("v", "Value", type_, allowed_file_types=allowed)


def sent_value(spec_value: Any, f: InputField) -> Any:
    """What build_payload hands the coercer for ``spec_value`` (file sources already URLs)."""
    item = payload.unwrap("Value", spec_value, f)
    if item.sources is not None:
        return item.sources[0] if inputs.input_type(f.type).one_file else item.sources
    return item.value


def as_editor_sees(value: Any) -> Any:
    """A YAML value as an editor's schema checker sees it: a date is text there."""
    return json.loads(json.dumps(value, default=lambda v: v.isoformat()))


def test_every_type_has_every_facet() -> None:
    assert len(set(KNOWN)) == len(KNOWN) == 10
    assert models.INPUT_TYPES == tuple(KNOWN)
    for t in inputs.TYPES:
        assert t.known and callable(t.coerce) and callable(t.placeholder) and callable(t.example), t.name
        jsonschema.Draft202012Validator.check_schema(dict(t.value_schema))
        assert t.value_schema, f"{t.name} has no value schema"
        assert t.spec_forms, f"{t.name} lists no spec forms"
        for form in t.spec_forms:
            jsonschema.Draft202012Validator.check_schema(dict(form))
        assert t.file_form in (None, "file", "files")
        assert inputs.input_type(t.name) is t
        assert coerce.COERCERS[t.name] is t.coerce
        assert VALUE_SCHEMAS[t.name] == t.value_schema


def test_the_file_types_are_read_from_the_table() -> None:
    assert inputs.FILE_TYPES == models.FILE_TYPES == {"file", "array_files"}
    for name in [*KNOWN, "weird", ""]:
        assert field(name).is_file is inputs.input_type(name).is_file
    assert inputs.input_type("file").one_file and not inputs.input_type("array_files").one_file


@pytest.mark.parametrize("type_", KNOWN)
@pytest.mark.parametrize("allowed", [(), ("TXT",)])
def test_the_placeholder_init_writes_coerces_and_fits_the_value_schema(type_: str, allowed: tuple[str, ...]) -> None:
    f = field(type_, allowed)
    written = yaml.safe_load(f"Value: {authoring.placeholder(f, TODAY)}")["Value"]
    # The editor schema accepts it as written...
    jsonschema.validate(as_editor_sees(written), authoring.input_value_schema(f))
    # ...and what it becomes is a value of that type, as the payload schema describes it.
    sent = inputs.input_type(type_).coerce(sent_value(written, f))
    jsonschema.validate(sent, inputs.value_schema(type_))
    if allowed and f.is_file:
        assert ".txt" in str(written)


@pytest.mark.parametrize("type_", KNOWN)
def test_the_editor_example_coerces_and_fits_the_value_schema(type_: str) -> None:
    f = field(type_)
    example = inputs.input_type(type_).example(None)
    jsonschema.validate(example, authoring.input_value_schema(f))
    jsonschema.validate(inputs.input_type(type_).coerce(sent_value(example, f)), inputs.value_schema(type_))


@pytest.mark.parametrize(
    ("type_", "spec_value"),
    [
        ("str", 12.0),
        ("float", "1_000.5"),
        ("int", "42"),
        ("bool", "yes"),
        ("date", dt.datetime(2026, 3, 1, 12, 0)),
        ("array", '["a", 2]'),
        ("object", '{"depth": 2}'),
        ("json_string", {"a": [1, 2]}),
        ("file", {"file": "https://x/a.pdf"}),
        ("array_files", {"files": ["https://x/a.pdf", "https://x/b.pdf"]}),
    ],
)
def test_spec_forms_coercion_and_value_schema_agree(type_: str, spec_value: Any) -> None:
    f = field(type_)
    jsonschema.validate(as_editor_sees(spec_value), authoring.input_value_schema(f))
    jsonschema.validate(inputs.input_type(type_).coerce(sent_value(spec_value, f)), inputs.value_schema(type_))


def test_an_unknown_type_is_kept_as_stated() -> None:
    for name in ("geo_point", ""):
        kind = inputs.input_type(name)
        assert kind.name == name and not kind.known and not kind.is_file
        value = {"lat": 1}
        assert kind.coerce(value) is value
        assert inputs.value_schema(name) == {}
        assert authoring.placeholder(field(name), TODAY) == '"TODO"'


def test_value_schema_is_a_copy() -> None:
    schema = inputs.value_schema("array_files")
    schema["items"]["minLength"] = 99
    assert inputs.value_schema("array_files")["items"]["minLength"] == 1
