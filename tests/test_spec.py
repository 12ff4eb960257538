"""The spec loader: parsing, the bad-input messages users see, the shipped schema, find_specs."""

from __future__ import annotations

import datetime
import glob as globmod
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

import opus_runner.spec as spec_module
from opus_runner.durations import parse_duration
from opus_runner.errors import SpecError, UsageError, ValidationFailed
from opus_runner.spec import (
    MAX_SPEC_BYTES,
    SUPPORTED_API_VERSIONS,
    Spec,
    find_specs,
    load_spec,
    spec_schema,
)

REPO = Path(__file__).resolve().parents[1]
SPECS = REPO / "specs"

# Line numbers below are asserted by tests: keep this text's layout.
VALID = """\
apiVersion: opus-runner/v1
kind: Job
metadata:
  name: invoice-triage
  title: "Invoice triage {{ vars.month }}"
workflow:
  id: 7c1e2a9b-5d34-4f8e-a6b2-0e9d3c5f1a72
  version: 3
vars:
  month: "2026-11"
inputs:
  Budget: 45.8
wait:
  timeout: 30m
callback:
  url: https://example.com/opus/callback
outputs:
  - type: stdout
"""


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Messages show paths relative to the current folder: run every test from tmp_path.
    monkeypatch.chdir(tmp_path)


def write(name: str, text: str | bytes) -> Path:
    path = Path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def spec_error(name: str, text: str | bytes) -> SpecError:
    """Load ``text`` as ``name``; it must fail with exactly one SpecError (exit code 2)."""
    path = write(name, text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    err = info.value
    assert type(err) is SpecError
    assert err.exit_code == 2
    assert err.file == name
    assert str(err).startswith(name)
    return err


def replace(old: str, new: str, text: str = VALID) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


# ---------------------------------------------------------------------------------------------
# Valid specs
# ---------------------------------------------------------------------------------------------


def test_a_valid_spec_loads_with_lines_digest_and_paths(tmp_path: Path) -> None:
    path = write("specs/triage.yaml", VALID)
    spec = load_spec("specs/triage.yaml")
    assert isinstance(spec, Spec)
    assert spec.path == (tmp_path / "specs" / "triage.yaml") and spec.path.is_absolute()
    assert spec.dir == tmp_path / "specs"
    assert spec.name == "invoice-triage"
    assert spec.api_version == "opus-runner/v1"
    assert spec.digest == hashlib.sha256(path.read_bytes()).hexdigest()
    # Templates are kept as written; rendering is a later step.
    assert spec.data["metadata"]["title"] == "Invoice triage {{ vars.month }}"
    assert spec.data["inputs"] == {"Budget": 45.8}
    assert spec.lines[("inputs", "Budget")] == 12
    assert spec.lines[("outputs", 0)] == 18
    assert spec.line_of(("wait", "timeout")) == 14
    # A key the file does not have falls back to its nearest ancestor.
    assert spec.line_of(("inputs", "Budget", "value", 3)) == 12
    assert spec.line_of(("nothing", "here")) == 1
    hash(spec)  # usable as a dict key


def test_spec_error_names_file_line_and_key() -> None:
    write("specs/x.yaml", VALID)
    spec = load_spec("specs/x.yaml")
    err = spec.error("expected a number, found 'lots'", ("inputs", "Budget"))
    assert isinstance(err, SpecError) and err.exit_code == 2
    assert (err.file, err.line, err.key) == ("specs/x.yaml", 12, ("inputs", "Budget"))
    assert str(err) == "specs/x.yaml:12: inputs.Budget: expected a number, found 'lots'"


def test_a_spec_outside_the_current_folder_is_shown_by_its_absolute_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write("elsewhere/x.yaml", replace("kind: Job", "kind: Jobs"))
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    with pytest.raises(SpecError) as info:
        load_spec(tmp_path / "elsewhere" / "x.yaml")
    assert info.value.file == str(tmp_path / path)


def test_yaml_dates_stay_dates_and_scalars_follow_yaml_1_2() -> None:
    text = VALID + (
        "notify:\n"
        "  - type: webhook\n"
        "    url: https://hooks.example.com/T000\n"
        "    on: [completed, failed]\n"
    )
    text = replace(
        "  Budget: 45.8\n",
        "  Budget: 45.8\n  Due date: 2026-12-15\n  Country: no\n  Code: 010\n  Time: 1:30\n  Approved: true\n",
        text,
    )
    write("s.yaml", text)
    spec = load_spec("s.yaml")
    inputs = spec.data["inputs"]
    assert inputs["Due date"] == datetime.date(2026, 12, 15)
    # PyYAML's YAML 1.1 would make these False, 8 and 90.
    assert inputs["Country"] == "no"
    assert inputs["Code"] == "010"
    assert inputs["Time"] == "1:30"
    assert inputs["Approved"] is True
    # ... and the notifier's `on:` key would become the boolean True.
    assert spec.data["notify"][0]["on"] == ["completed", "failed"]


def test_templates_are_accepted_wherever_strings_are() -> None:
    text = VALID.replace("timeout: 30m", 'timeout: "{{ vars.timeout }}"') + (
        "matrix:\n"
        '  region: "{{ vars.regions }}"\n'
        "  month: [\"2026-10\", \"{{ vars.month }}\"]\n"
    )
    text = replace("  month: \"2026-11\"\n", "  month: \"2026-11\"\n  when: \"{{ today() }}\"\n", text)
    text = replace("  - type: stdout\n", "  - type: json\n    path: \"results/{{ metadata.name }}-{{ job.id }}.json\"\n", text)
    write("t.yaml", text)
    spec = load_spec("t.yaml")
    assert spec.data["matrix"]["region"] == "{{ vars.regions }}"
    assert spec.data["wait"]["timeout"] == "{{ vars.timeout }}"


def test_yaml_anchors_aliases_and_merge_keys_load() -> None:
    text = VALID + (
        "notify:\n"
        "  - &hook {type: webhook, url: https://hooks.example.com/a, on: [failed]}\n"
        "  - <<: *hook\n"
        "    url: https://hooks.example.com/b\n"
    )
    write("m.yaml", text)
    spec = load_spec("m.yaml")
    assert spec.data["notify"][1] == {"type": "webhook", "url": "https://hooks.example.com/b", "on": ["failed"]}
    assert spec.lines[("notify", 1, "url")] == 22
    assert spec.lines[("notify", 1, "type")] == 20  # merged in: where the merged mapping has it


def test_json_spec_loads_with_lines() -> None:
    data = yaml.safe_load(VALID)
    text = json.dumps(data, indent=2)
    write("j.json", text)
    spec = load_spec("j.json")
    assert spec.data == data
    expected = 1 + next(i for i, line in enumerate(text.splitlines()) if '"Budget"' in line)
    assert spec.line_of(("inputs", "Budget")) == expected


def test_a_utf8_bom_is_accepted() -> None:
    write("bom.yaml", b"\xef\xbb\xbf" + VALID.encode())
    assert load_spec("bom.yaml").name == "invoice-triage"


# ---------------------------------------------------------------------------------------------
# The bad-input list: one clear error each, exit code 2, file, key path and line
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "\n\n", "# just a comment\n# and another\n"])
def test_empty_yaml_file(text: str) -> None:
    err = spec_error("empty.yaml", text)
    assert "the spec file is empty" in err.message


def test_empty_json_file() -> None:
    err = spec_error("empty.json", "  \n")
    assert "the spec file is empty" in err.message


def test_yaml_syntax_error_gives_line_and_column() -> None:
    text = replace('  title: "Invoice triage {{ vars.month }}"', "   title: oops")
    err = spec_error("bad.yaml", text)
    assert err.line == 5
    assert err.message.startswith("YAML syntax error at line 5, column 9: ")
    assert "mapping values are not allowed" in err.message
    assert str(err).startswith("bad.yaml:5: YAML syntax error at line 5, column 9")


def test_yaml_tab_indentation_says_so() -> None:
    err = spec_error("tab.yaml", "apiVersion: opus-runner/v1\ninputs:\n\tBudget: 3\n")
    assert err.line == 3
    assert "column 1" in err.message and "tab" in err.message


def test_json_trailing_comma_says_so_plainly() -> None:
    text = '{\n  "apiVersion": "opus-runner/v1",\n  "kind": "Job",\n}\n'
    err = spec_error("trailing.json", text)
    assert "trailing comma?" in err.message
    assert err.line == 3
    assert "line 3, column 16" in err.message
    err = spec_error("trailing-list.json", '{"outputs": [\n  {"type": "stdout"},\n]}')
    assert "trailing comma?" in err.message and err.line == 2


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"a": 1 // note\n}', "JSON has no comments"),
        ("{'apiVersion': 'opus-runner/v1'}", "double quotes"),
        ('{"a": NaN}', "NaN is not valid JSON"),
    ],
)
def test_other_json_errors_are_explained(text: str, expected: str) -> None:
    err = spec_error("odd.json", text)
    assert expected in err.message


def test_a_list_at_the_top_level() -> None:
    err = spec_error("list.yaml", "- apiVersion: opus-runner/v1\n- kind: Job\n")
    assert err.message == "expected a mapping at the top level, found a list"
    assert err.line == 1 and err.key == ()


def test_missing_api_version_says_what_to_add() -> None:
    err = spec_error("noversion.yaml", VALID.replace("apiVersion: opus-runner/v1\n", ""))
    assert "missing required key 'apiVersion'" in err.message
    assert "add `apiVersion: opus-runner/v1`" in err.message
    err = spec_error("noversion.json", '{"kind": "Job"}')
    assert 'add `"apiVersion": "opus-runner/v1"`' in err.message


def test_unknown_api_version_lists_the_supported_ones() -> None:
    err = spec_error("v9.yaml", replace("opus-runner/v1", "opus-runner/v9"))
    assert err.key == ("apiVersion",) and err.line == 1
    assert "unsupported apiVersion 'opus-runner/v9'" in err.message
    assert all(v in err.message for v in SUPPORTED_API_VERSIONS)
    assert str(err).startswith("v9.yaml:1: apiVersion: unsupported")


def test_missing_workflow_id() -> None:
    err = spec_error("noid.yaml", replace("  id: 7c1e2a9b-5d34-4f8e-a6b2-0e9d3c5f1a72\n", ""))
    assert err.key == ("workflow",) and err.line == 6
    assert err.message.startswith("missing required key 'workflow.id'")
    assert str(err).startswith("noid.yaml:6: workflow: missing required key 'workflow.id'")


@pytest.mark.parametrize("name", ["Invoice Triage", "invoice triage", "Invoice-triage", "-leading-dash"])
def test_metadata_name_must_be_lower_case_without_spaces(name: str) -> None:
    err = spec_error("name.yaml", replace("name: invoice-triage", f"name: {name!r}"))
    assert err.key == ("metadata", "name") and err.line == 4
    assert err.message == (
        "must be lower-case letters, digits, '.', '_' or '-', starting with a letter or digit "
        f"(found {name!r})"
    )


def test_unknown_top_level_key_suggests_the_right_one() -> None:
    err = spec_error("typo.yaml", replace("inputs:", "inptus:"))
    assert err.key == ("inptus",) and err.line == 11
    assert err.message == "unknown key 'inptus'; did you mean 'inputs'?"
    assert str(err) == "typo.yaml:11: inptus: unknown key 'inptus'; did you mean 'inputs'?"


def test_unknown_top_level_key_without_a_close_match_lists_the_allowed_keys() -> None:
    err = spec_error("far.yaml", VALID + "zzz: 1\n")
    assert "unknown key 'zzz'; allowed keys: apiVersion, kind, metadata, workflow" in err.message


@pytest.mark.parametrize(
    ("key", "hint"),
    [("timeout", "did you mean 'wait.timeout'?"), ("concurrency", "not part of opus-runner/v1")],
)
def test_unknown_top_level_keys_that_belong_elsewhere(key: str, hint: str) -> None:
    err = spec_error("where.yaml", VALID + f"{key}: 3\n")
    assert err.key == (key,) and err.line == 19
    assert hint in err.message


@pytest.mark.parametrize(
    ("old", "new", "key", "line", "suggestion"),
    [
        ("  title:", "  titel:", ("metadata", "titel"), 5, "title"),
        ("  version: 3", "  verison: 3", ("workflow", "verison"), 8, "version"),
        ("  timeout: 30m", "  timout: 30m", ("wait", "timout"), 14, "timeout"),
        ("  url: https://example.com/opus/callback", "  uri: https://example.com/opus/callback", ("callback", "uri"), 16, "url"),
    ],
)
def test_unknown_keys_in_sections(old: str, new: str, key: tuple[str, ...], line: int, suggestion: str) -> None:
    err = spec_error("section.yaml", replace(old, new))
    assert err.key == key and err.line == line
    assert err.message == f"unknown key {key[-1]!r}; did you mean {suggestion!r}?"


@pytest.mark.parametrize("value", ["5 minutes", "soon", "-5s", "5x"])
def test_wait_timeout_must_be_a_duration(value: str) -> None:
    err = spec_error("wait.yaml", replace("timeout: 30m", f"timeout: {value}"))
    assert err.key == ("wait", "timeout") and err.line == 14
    assert err.message == f"expected a duration such as 45s, 5m, 1h30m or a number of seconds, found {value!r}"


def test_negative_duration_number() -> None:
    err = spec_error("neg.yaml", replace("timeout: 30m", "timeout: -1"))
    assert err.key == ("wait", "timeout")
    assert "a duration such as 45s" in err.message and "negative" in err.message


def test_a_50_mb_spec_is_refused_by_its_size_without_being_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    big = tmp_path / "huge.yaml"
    with open(big, "wb") as handle:  # sparse: costs no disk
        handle.truncate(50 * 1024 * 1024)

    def must_not_read(path: Path) -> bytes:
        raise AssertionError(f"{path} was read")

    monkeypatch.setattr(spec_module, "_read_limited", must_not_read)
    with pytest.raises(SpecError) as info:
        load_spec(big)
    err = info.value
    assert err.exit_code == 2 and err.file == "huge.yaml"
    assert err.message == "spec file is 50.0 MB; specs are limited to 1 MB — put large data in a foreach file"


def test_a_spec_just_over_the_limit_shows_its_exact_size(tmp_path: Path) -> None:
    path = tmp_path / "edge.yaml"
    with open(path, "wb") as handle:
        handle.truncate(MAX_SPEC_BYTES + 1)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert f"{MAX_SPEC_BYTES + 1} bytes" in info.value.message


BILLION_LAUGHS = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


def test_billion_laughs_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    constructed: list[Any] = []
    real = spec_module._SpecLoader.construct_document
    monkeypatch.setattr(
        spec_module._SpecLoader,
        "construct_document",
        lambda self, node: constructed.append(node) or real(self, node),
    )
    err = spec_error("lol.yaml", BILLION_LAUGHS)
    assert err.message.startswith("YAML aliases expand to more than 100000 nodes")
    assert constructed == []  # refused before any Python object was built


def test_many_values_without_aliases_are_refused_with_their_own_message() -> None:
    rows = "".join(f"  - {i}\n" for i in range(spec_module.MAX_YAML_NODES))
    err = spec_error("many.yaml", VALID + "vars2:\n" + rows)
    assert f"more than {spec_module.MAX_YAML_NODES} values" in err.message


def test_a_recursive_alias_is_refused() -> None:
    err = spec_error("loop.yaml", VALID + "vars2: &loop [1, *loop]\n")
    assert "recursive" in err.message and err.line == 19


def test_duplicate_keys_name_both_lines() -> None:
    err = spec_error("dup.yaml", replace("  Budget: 45.8\n", "  Budget: 45.8\n  Approved: true\n  Budget: 50\n"))
    assert err.key == ("inputs", "Budget") and err.line == 14
    assert err.message == "duplicate key 'Budget' (first at line 12, again at line 14); keep one of them"


def test_duplicate_keys_in_json_too() -> None:
    text = '{"apiVersion": "opus-runner/v1",\n "kind": "Job",\n "kind": "Job"}'
    err = spec_error("dup.json", text)
    assert err.key == ("kind",) and err.line == 3
    assert "first at line 2, again at line 3" in err.message


def test_non_text_keys_are_refused() -> None:
    err = spec_error("keys.yaml", replace("  Budget: 45.8", "  2026: 45.8"))
    assert err.key == ("inputs",) and err.line == 12
    assert err.message == 'keys must be text, found the number 2026; quote it ("2026")'


def test_a_value_yaml_cannot_build_is_located() -> None:
    err = spec_error("date.yaml", replace("  Budget: 45.8", "  Due date: 2026-13-45"))
    assert err.line == 12
    assert "month must be in 1..12" in err.message and "quote it" in err.message


def test_several_problems_are_reported_at_once_in_file_order() -> None:
    text = replace("name: invoice-triage", "name: Invoice Triage")
    text = replace("inputs:", "inptus:", text)
    text = replace("  id: 7c1e2a9b-5d34-4f8e-a6b2-0e9d3c5f1a72\n", "", text)
    text = replace("timeout: 30m", "timeout: 5 minutes", text)
    write("many.yaml", text)
    with pytest.raises(ValidationFailed) as info:
        load_spec("many.yaml")
    failed = info.value
    assert failed.exit_code == 2
    found = [(e.key, e.line) for e in failed.errors]
    assert found == [
        (("metadata", "name"), 4),
        (("workflow",), 6),
        (("inptus",), 10),
        (("wait", "timeout"), 13),
    ]
    assert all(isinstance(e, SpecError) and e.file == "many.yaml" for e in failed.errors)
    text = str(failed)
    assert text.startswith("4 problems found:")
    assert "many.yaml:10: inptus: unknown key 'inptus'; did you mean 'inputs'?" in text


@pytest.mark.parametrize(
    ("old", "new", "key", "message"),
    [
        ("kind: Job", "kind: Jobs", ("kind",), "must be 'Job', the only kind in opus-runner/v1 (found the string 'Jobs')"),
        ("metadata:\n  name: invoice-triage\n  title: \"Invoice triage {{ vars.month }}\"\n", "metadata: [a]\n", ("metadata",), "expected a mapping, found a list"),
        ("  version: 3", "  version: 0", ("workflow", "version"), "must be 1 or more (found 0)"),
        ("  version: 3", "  version: three", ("workflow", "version"), "expected a whole number, found the string 'three'"),
        ("  id: 7c1e2a9b-5d34-4f8e-a6b2-0e9d3c5f1a72", "  id: ''", ("workflow", "id"), "must not be empty"),
        ("  title: \"Invoice triage {{ vars.month }}\"", "  title: 2026-11-01", ("metadata", "title"), "expected a string, found the date 2026-11-01; quote it to keep it as text"),
        ("  timeout: 30m", "  enabled: yes", ("wait", "enabled"), "expected true or false, found the string 'yes'; only true and false are booleans in a spec"),
        ("  - type: stdout", "  - path: out.json", ("outputs", 0), "missing required key 'outputs[0].type'; set it to an output type such as stdout, json or ndjson"),
        ("inputs:\n  Budget: 45.8\n", "inputs: Budget\n", ("inputs",), "expected a mapping, found the string 'Budget'"),
    ],
)
def test_schema_errors_read_as_sentences(old: str, new: str, key: tuple[Any, ...], message: str) -> None:
    err = spec_error("s.yaml", replace(old, new))
    assert err.key == key
    assert err.message == message
    assert err.line is not None


@pytest.mark.parametrize(
    ("extra", "key", "message"),
    [
        ("matrix:\n  region: []\n", ("matrix", "region"), "expected a non-empty list of values (or a template that renders to one), found an empty list"),
        ("matrix:\n  my-region: [eu]\n", ("matrix", "my-region"), "name 'my-region' must be letters, digits or '_', not starting with a digit, because templates use it as matrix.NAME"),
        ("foreach:\n  file: data.csv\n  rows: [{a: 1}]\n", ("foreach",), "give either 'file' or 'rows', not both"),
        ("foreach:\n  format: csv\n", ("foreach",), "needs 'file' (a CSV, JSON or YAML file of rows) or 'rows' (a list of mappings)"),
        ("foreach:\n  file: data.txt\n  format: xml\n", ("foreach", "format"), "must be one of csv, json, yaml (found the string 'xml')"),
        ("foreach:\n  rows: [1, 2]\n", ("foreach", "rows", 0), "expected a mapping, found the number 1"),
        ("notify:\n  - type: webhook\n    on: [complete]\n", ("notify", 0, "on", 0), "must be one of submitted, status, completed, failed, cancelled, timed_out (found the string 'complete'); did you mean 'completed'?"),
    ],
)
def test_fan_out_and_notify_errors(extra: str, key: tuple[Any, ...], message: str) -> None:
    problems = []
    try:
        load_spec(write("f.yaml", VALID + extra))
    except ValidationFailed as exc:
        problems = exc.errors
    except SpecError as exc:
        problems = [exc]
    assert [(e.key, e.message) for e in problems if e.key == key] == [(key, message)]


def test_other_extensions_missing_files_and_folders(tmp_path: Path) -> None:
    err = spec_error("spec.txt", VALID)
    assert "cannot read a '.txt' file as a spec" in err.message
    with pytest.raises(SpecError) as info:
        load_spec("missing.yaml")
    assert str(info.value) == "missing.yaml: the spec file does not exist; check the path"
    (tmp_path / "folder.yaml").mkdir()
    with pytest.raises(SpecError) as info:
        load_spec("folder.yaml")
    assert "is a folder" in info.value.message


def test_a_spec_that_is_not_utf8() -> None:
    err = spec_error("latin.yaml", "apiVersion: opus-runner/v1\nkind: J\xf6b\n".encode("latin-1"))
    assert "not UTF-8" in err.message and "0xf6" in err.message


# ---------------------------------------------------------------------------------------------
# The example specs
# ---------------------------------------------------------------------------------------------

EXAMPLES = sorted(SPECS.glob("*.yaml")) + sorted(SPECS.glob("*.json"))


def test_there_are_examples() -> None:
    names = {p.name for p in EXAMPLES}
    assert {"summarize.yaml", "invoice-triage.yaml", "region-matrix.yaml", "customers-foreach.yaml", "ask-question.json"} <= names


def _fixture_workflows() -> dict[str, Any]:
    fixture = SPECS / "fixtures" / "sandbox-workflows.yaml"
    return yaml.safe_load(fixture.read_text(encoding="utf-8"))["workflows"]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_spec_loads_and_its_files_exist(path: Path) -> None:
    spec = load_spec(path)
    assert spec.name == path.stem
    for key, value in (spec.data.get("inputs") or {}).items():
        if isinstance(value, dict) and "file" in value:
            assert (spec.dir / value["file"]).is_file(), key
        if isinstance(value, dict) and "files" in value:
            for pattern in value["files"]:
                assert globmod.glob(str(spec.dir / pattern)), (key, pattern)
    if "foreach" in spec.data:
        assert (spec.dir / spec.data["foreach"]["file"]).is_file()


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_matches_its_sandbox_workflow(path: Path) -> None:
    spec = load_spec(path)
    workflow = _fixture_workflows()[spec.data["workflow"]["id"]]
    fields = workflow["inputs"]
    names = {f["variable_name"] for f in fields} | {f["display_name"] for f in fields}
    given = set(spec.data.get("inputs") or {})
    assert given <= names, given - names
    for field in fields:
        if not field.get("is_nullable"):
            assert field["variable_name"] in given or field["display_name"] in given, field


def test_invoice_triage_example_covers_every_input_type() -> None:
    spec = load_spec(SPECS / "invoice-triage.yaml")
    fields = _fixture_workflows()["7c1e2a9b-5d34-4f8e-a6b2-0e9d3c5f1a72"]["inputs"]
    inputs = spec.data["inputs"]
    by_type = {
        f["type"]: inputs.get(f["display_name"], inputs.get(f["variable_name"])) for f in fields
    }
    assert set(by_type) == {"str", "float", "bool", "date", "file", "array", "array_files", "object"}
    assert all(v is not None for v in by_type.values()), by_type
    assert isinstance(by_type["date"], datetime.date)
    assert by_type["array_files"] == {"files": ["data/*.csv"]}
    assert spec.data["workflow"]["version"] == 3
    assert any(key.startswith("workflow_input_") for key in inputs)  # one keyed by variable name
    assert "secret(" not in (SPECS / "invoice-triage.yaml").read_text()


def test_the_contract_pdf_is_a_well_formed_pdf() -> None:
    data = (SPECS / "data" / "contract.pdf").read_bytes()
    assert data.startswith(b"%PDF-1.4\n") and data.rstrip().endswith(b"%%EOF")
    startxref = int(re.search(rb"startxref\s+(\d+)", data).group(1))  # type: ignore[union-attr]
    assert data[startxref:].startswith(b"xref")
    entries = re.findall(rb"(\d{10}) 00000 n ", data[startxref:])
    assert len(entries) == 5
    for number, offset in enumerate(entries, start=1):
        assert data[int(offset):].startswith(b"%d 0 obj" % number)


def test_the_foreach_csv_has_five_rows_and_a_quoted_comma() -> None:
    import csv

    with open(SPECS / "data" / "customers.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 5
    assert any("," in row["customer"] for row in rows)


# ---------------------------------------------------------------------------------------------
# The schema
# ---------------------------------------------------------------------------------------------


def test_spec_schema_is_a_valid_draft_2020_12_schema() -> None:
    import jsonschema

    schema = spec_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["properties"]["apiVersion"]["const"] == "opus-runner/v1"
    assert set(schema["required"]) == {"apiVersion", "kind", "metadata", "workflow"}
    assert "concurrency" not in schema["properties"]


def _subschemas(schema: Any, where: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = []
    for name, sub in (schema.get("properties") or {}).items():
        found.append((f"{where}.{name}", sub))
        found.extend(_subschemas(sub, f"{where}.{name}"))
    for keyword in ("additionalProperties", "items", "propertyNames"):
        sub = schema.get(keyword)
        if isinstance(sub, dict):
            found.append((f"{where}/{keyword}", sub))
            found.extend(_subschemas(sub, f"{where}/{keyword}"))
    for name, sub in (schema.get("$defs") or {}).items():
        found.append((f"$defs.{name}", sub))
    return found


def test_every_key_of_the_schema_has_a_title_and_description() -> None:
    subschemas = _subschemas(spec_schema())
    assert len(subschemas) > 30
    for where, sub in subschemas:
        assert sub.get("title") and sub.get("description"), where


@pytest.mark.parametrize(("section", "table"), [("outputs", "outputs"), ("notify", "notifiers")])
def test_the_schemas_built_in_types_are_the_registered_ones(section: str, table: str) -> None:
    # The schema ships as a file for editors, so it is checked against the registrations rather
    # than generated from them: a built-in type added or renamed fails here until the schema says so.
    import re

    from opus_runner.builtins import BUILTIN_PLUGINS
    from opus_runner.plugins import make_plugin_host

    host = make_plugin_host(entrypoints=False)
    registered = [name for name, handler in getattr(host, table).items() if handler.plugin in BUILTIN_PLUGINS]
    items = spec_schema()["properties"][section]["items"]
    type_schema = items["properties"]["type"]
    assert sorted(type_schema["examples"]) == sorted(registered) and registered
    for description in (items["description"], type_schema["description"]):
        named = set(re.findall(r"\b[a-z]+\b", description))
        assert [name for name in registered if name not in named] == [], description


def test_spec_schema_returns_a_fresh_copy_and_refuses_unknown_versions() -> None:
    spec_schema()["properties"].clear()
    assert "inputs" in spec_schema()["properties"]
    with pytest.raises(UsageError, match="supported: opus-runner/v1"):
        spec_schema("opus-runner/v9")


@pytest.mark.parametrize(
    "value",
    ["45s", "5m", "1h30m", "250ms", "2.5s", "1d", "90", "0", " 5m ", "1H", "5 minutes", "", "-5s", "5x", "m", "1h 30m"],
)
def test_the_schema_and_parse_duration_agree_on_durations(value: str) -> None:
    import jsonschema

    validator = jsonschema.Draft202012Validator(spec_schema()["$defs"]["duration"])
    try:
        parse_duration(value)
        parses = True
    except ValueError:
        parses = False
    assert validator.is_valid(value) is parses


# ---------------------------------------------------------------------------------------------
# find_specs
# ---------------------------------------------------------------------------------------------


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    for name in ("specs/b.yaml", "specs/a.yml", "specs/README.md", "specs/.hidden.yaml",
                 "specs/nested/d.yaml", "specs/.git/x.yaml", "other/e.yaml"):
        write(name, VALID)
    write("specs/c.json", json.dumps(yaml.safe_load(VALID)))
    # Data beside the specs: a foreach file and a fixture, neither of them a spec.
    write("specs/rows.json", '[{"region": "eu"}]')
    write("specs/nested/fixture.yaml", "workflows: {}\napiVersion: v1\n")
    return tmp_path


def test_find_specs_files_in_the_order_given(tree: Path) -> None:
    assert find_specs(["other/e.yaml", "specs/b.yaml"]) == [tree / "other/e.yaml", tree / "specs/b.yaml"]


def test_find_specs_folder_means_its_tree_and_only_the_files_declaring_an_api_version(tree: Path) -> None:
    skipped: list[Path] = []
    found = find_specs(["specs"], skipped=skipped)
    assert found == [tree / "specs/a.yml", tree / "specs/b.yaml", tree / "specs/c.json", tree / "specs/nested/d.yaml"]
    assert skipped == [tree / "specs/rows.json", tree / "specs/nested/fixture.yaml"]


def test_find_specs_a_file_named_on_its_own_is_read_as_a_spec_whatever_it_holds(tree: Path) -> None:
    assert find_specs(["specs/rows.json"]) == [tree / "specs/rows.json"]
    with pytest.raises(SpecError, match=r"rows.json:1: expected a mapping at the top level"):
        load_spec(tree / "specs/rows.json")


def test_find_specs_a_folder_of_data_only_says_none_declares_an_api_version(tree: Path) -> None:
    write("data/rows.json", "[]")
    with pytest.raises(UsageError, match="folder 'data' holds no spec files: it has 1 .yaml, .yml or .json file, none declaring"):
        find_specs(["data"])


def test_find_specs_globs_including_recursive(tree: Path) -> None:
    assert find_specs(["specs/*.yaml"]) == [tree / "specs/b.yaml"]
    assert find_specs(["specs/**/*.yaml"]) == [tree / "specs/b.yaml", tree / "specs/nested/d.yaml"]  # no fixture.yaml
    assert find_specs(["specs/*"]) == [tree / "specs/a.yml", tree / "specs/b.yaml", tree / "specs/c.json"]


def test_find_specs_removes_duplicates_keeping_first_seen_order(tree: Path) -> None:
    found = find_specs(["specs/c.json", "specs", "./specs/b.yaml", "specs/*.yaml", str(tree / "specs/a.yml")])
    assert found == [tree / "specs/c.json", tree / "specs/a.yml", tree / "specs/b.yaml", tree / "specs/nested/d.yaml"]


def test_find_specs_resolves_against_the_given_cwd(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tree / "other")
    assert find_specs(["specs/b.yaml", "other"], cwd=tree) == [tree / "specs/b.yaml", tree / "other/e.yaml"]


def test_find_specs_passes_explicit_files_of_any_extension_to_the_loader(tree: Path) -> None:
    assert find_specs(["specs/README.md"]) == [tree / "specs/README.md"]


@pytest.mark.parametrize(
    ("arg", "message"),
    [
        ("specs/*.toml", "no spec files match 'specs/*.toml'"),
        ("nowhere/**/*.yaml", "no spec files match 'nowhere/**/*.yaml'"),
        ("specs/missing.yaml", "spec file 'specs/missing.yaml' does not exist"),
        ("specs/bb.yaml", "did you mean 'specs/b.yaml'?"),
        ("empty", "folder 'empty' holds no spec files"),
        ("", "an empty spec argument"),
    ],
)
def test_find_specs_errors_name_the_argument(tree: Path, arg: str, message: str) -> None:
    (tree / "empty").mkdir()
    with pytest.raises(UsageError) as info:
        find_specs(["specs/b.yaml", arg])
    assert info.value.exit_code == 2
    assert message in str(info.value)


def test_a_misspelt_required_key_is_reported_once_as_unknown() -> None:
    err = spec_error("nmae.yaml", replace("  name: invoice-triage", "  nmae: invoice-triage"))
    assert err.key == ("metadata", "nmae") and err.line == 4
    assert err.message == "unknown key 'nmae'; did you mean 'name'?"


def test_spec_repr_is_short_and_shows_no_data() -> None:
    write("r.yaml", VALID)
    text = repr(load_spec("r.yaml"))
    assert "r.yaml" in text and "Budget" not in text and "example.com" not in text
