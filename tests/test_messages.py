"""The shared message pieces (opus_runner/messages.py) and the modules that use them."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest

from opus_runner import messages, redact
from opus_runner.errors import UsageError
from opus_runner.models import InputField, WorkflowSchema
from opus_runner.payload import validate_payload
from opus_runner.spec import find_specs
from opus_runner.workflow import resolve_input

SECRET = "sk-messages-test-0123456789abcdef"


@pytest.mark.parametrize(
    ("word", "choices", "expected"),
    [
        ("pth", ["path", "suite"], "path"),
        ("PATH", ["path", "Path2"], "path"),  # the same word in another case wins over a near one
        ("name", ["Name", "nam"], "Name"),
        ("zzz", ["path", "suite"], None),
        ("x", [], None),
    ],
)
def test_close_match(word: str, choices: list[str], expected: str | None) -> None:
    assert messages.close_match(word, choices) == expected


def test_did_you_mean_wording_and_cutoff() -> None:
    assert messages.did_you_mean("ndjsn", ["json", "ndjson"]) == "did you mean 'ndjson'?"
    assert messages.did_you_mean("spec.yml", ["spex.yaml"]) == "did you mean 'spex.yaml'?"
    assert messages.did_you_mean("spec.yml", ["spex.yaml"], cutoff=0.9) == ""


def test_the_shortener_masks_before_it_cuts() -> None:
    redact.register(SECRET)
    text = "token " + SECRET + " and more"
    # A cut at 20 falls inside the secret: cutting first would leave "sk-messages-t" behind.
    for shortened in (messages.shorten(text, 20), messages.one_line(text, 20), messages.show_value(text, 20)):
        assert len(shortened) <= 20
        assert "sk-mess" not in shortened and SECRET[:6] not in shortened, shortened
    assert messages.shorten(text, 20) == "token *** and more"
    assert messages.shorten("x" * 30, 10, ellipsis="...") == "xxxxxxx..."
    assert messages.one_line(f"line one\n  {SECRET}\tline two") == "line one *** line two"


def _errors(schema: dict, instance: object) -> list[tuple[tuple, str]]:
    validator = jsonschema.Draft202012Validator(schema)
    return [pair for error in messages.schema_errors(validator, instance) for pair in messages.explain_schema_error(error)]


def test_the_schema_error_formatter() -> None:
    schema = {
        "type": "object",
        "properties": {"path": {"type": "string"}, "level": {"enum": ["info", "debug"]}},
        "required": ["path"],
        "additionalProperties": False,
    }
    assert _errors(schema, {"pth": 1, "level": "loud"}) == [
        ((), "missing required key 'path'"),
        (("pth",), "unknown key 'pth'; did you mean 'path'?"),  # reported where the mapping is
        (("level",), "'loud' is not one of 'info', 'debug'"),
    ]
    assert _errors(schema, {"path": 7}) == [(("path",), "expected a string, found a number 7")]
    skipped = jsonschema.Draft202012Validator({"type": "integer"}).iter_errors("{{ n }}")
    assert [messages.explain_schema_error(e, skip=lambda v: "{{" in str(v)) for e in skipped] == [[]]


def test_a_payload_that_does_not_fit_is_explained_in_words() -> None:
    schema = WorkflowSchema(workflow_id="wf", inputs=(InputField("count", "Count", "int"),))
    payload = {"count": {"value": "three", "type": "int", "displayName": "Count"}}
    (error,) = validate_payload(payload, schema, "s.yaml", {}, {})
    assert error.message == "the value sent for 'count' does not fit the workflow: expected an integer, found a string 'three'"


def test_the_callers_share_one_did_you_mean(tmp_path: Path) -> None:
    schema = WorkflowSchema(workflow_id="wf", inputs=(InputField("due", "Due date", "date"),))
    with pytest.raises(LookupError, match=r"did you mean 'Due date'\?"):
        resolve_input(schema, "due dat")
    (tmp_path / "spec.yaml").write_text("apiVersion: opus-runner/v1\n")
    # A file name in another case is suggested too (the shared did-you-mean tries the case first),
    # however unlike it looks letter by letter.
    with pytest.raises(UsageError, match=r"spec file 'SPEC.YAML' does not exist; did you mean 'spec.yaml'\?"):
        find_specs(["SPEC.YAML"], cwd=tmp_path)
