"""Specs and inputs that are too big or too clever end in one clear sentence (exit 2), never a hang,
a traceback or "unexpected error": template CPU and size budgets, giant numbers, job counts, YAML
alias bombs and deep nesting in every file the runner reads, a raising hook, a missing version.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import Project, header

# Ten billion loop steps and no output: only the CPU budget can stop it.
NESTED_LOOPS = "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}"


def quick_spec(project: Project, question: str, name: str = "budget") -> Path:
    return project.spec(f"{name}.yaml", header(name, "quick") + f"inputs:\n  Question: {json.dumps(question)}\n")


def assert_refused(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    assert "unexpected error" not in result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output, result.output


def set_config(project: Project, extra: str) -> None:
    (project.root / "opus-runner.toml").write_text(f'state_dir = ".opus-run"\n{extra}\n')


# -- 1. the CPU budget and size cap of one template value ----------------------------------------


@pytest.mark.parametrize("command", ["validate", "render", "run"])
def test_a_template_that_never_ends_stops_at_its_cpu_budget(project: Project, command: str) -> None:
    set_config(project, 'template_budget = "200ms"')
    spec = quick_spec(project, NESTED_LOOPS)
    result = project.run(command, spec)
    assert_refused(result, "budget.yaml", "inputs.Question", "0.2 s CPU budget", "template_budget in opus-runner.toml")


def test_nested_loops_over_data_stop_at_the_cpu_budget(project: Project) -> None:
    set_config(project, 'template_budget = "200ms"')
    spec = project.spec(
        "data.yaml",
        header("data", "quick")
        + 'vars:\n  rows: "{{ range(1000) | list }}"\n'
        + "inputs:\n  Question: \"{% set rows = vars.rows %}{% for a in rows %}{% for b in rows %}{% for c in rows %}{% endfor %}{% endfor %}{% endfor %}\"\n",
    )
    assert_refused(project.run("render", spec, "--offline"), "data.yaml", "inputs.Question", "CPU budget")


def test_a_template_that_writes_gigabytes_stops_at_the_size_cap(project: Project) -> None:
    spec = quick_spec(project, '{% for a in range(1000) %}{{ "x" * 1000000 }}{% endfor %}')
    assert_refused(project.run("render", spec), "inputs.Question", "renders more than 10 MB of text")


def test_ordinary_loops_and_arithmetic_still_render(project: Project) -> None:
    spec = quick_spec(project, "{% for i in range(3)|reverse %}{{ i * 2 + 1 }}{% endfor %} {{ 2 ** 10 }} {{ range(5)|length }}")
    result = project.run("render", spec, "--offline")
    assert result.exit_code == 0, result.output
    assert "531 1024 5" in result.output


def test_template_budget_must_be_a_duration(project: Project) -> None:
    set_config(project, 'template_budget = "soon"')
    result = project.run("validate", quick_spec(project, "{{ 1 }}"), "--offline")
    assert result.exit_code == 2, result.output
    assert "opus-runner.toml: template_budget:" in result.output and "unexpected" not in result.output


# -- 2. job counts are refused before the jobs are built -----------------------------------------


def test_a_matrix_of_a_billion_combinations_is_refused_before_it_is_built(project: Project) -> None:
    spec = project.spec(
        "wide.yaml",
        header("wide", "quick")
        + "matrix:\n"
        + "".join(f'  {n}: "{{{{ range(1000) | list }}}}"\n' for n in "abc")
        + "inputs:\n  Question: \"{{ matrix.a }}\"\n",
    )
    for command in ("validate", "run"):
        assert_refused(project.run(command, spec), "wide.yaml", "matrix:", "1000000000 matrix combinations", "100000")


def test_foreach_rows_times_the_matrix_are_capped(project: Project) -> None:
    project.file("rows.csv", "q\n" + "".join(f"q{i}\n" for i in range(101)))
    spec = project.spec(
        "rows.yaml",
        header("rows", "quick")
        + 'matrix:\n  n: "{{ range(1000) | list }}"\nforeach:\n  file: rows.csv\n'
        + "inputs:\n  Question: \"{{ row.q }}\"\n",
    )
    assert_refused(project.run("validate", spec, "--offline"), "rows.yaml", "foreach:", "rows.csv (more than 100 rows) times 1000 matrix combinations")


def test_the_cap_counts_every_spec_of_the_run(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    import opus_runner.planning

    monkeypatch.setattr(opus_runner.planning, "MAX_JOBS_PER_RUN", 3)
    first = project.spec("one.yaml", header("one", "quick") + "matrix:\n  n: [1, 2]\ninputs:\n  Question: x\n")
    second = project.spec("two.yaml", header("two", "quick") + "matrix:\n  n: [1, 2]\ninputs:\n  Question: x\n")
    assert_refused(project.run("validate", first, second, "--offline"), "two.yaml", "more than 3 jobs")


# -- 3. giant numbers ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "template",
    [
        "{{ 2 ** 10000000000 }}",  # minutes of CPU in one step, if it were computed
        "{{ 10 ** 5000 }}",  # folded at compile time, where printing it fails
        "{{ 10 ** 4000 * 10 ** 4000 }}",
        "n = {{ 10 ** 4000 * 10 ** 4000 }}",
    ],
)
def test_a_huge_integer_is_one_sentence_naming_the_key(project: Project, template: str) -> None:
    spec = quick_spec(project, template)
    for command in ("render", "validate"):
        assert_refused(project.run(command, spec, "--offline"), "budget.yaml", "inputs.Question", "more than 4300 digits")


@pytest.mark.parametrize("name, text", [("big.json", '{"n": ' + "9" * 5000 + "}"), ("big.yaml", "n: " + "9" * 5000 + "\n")])
def test_a_huge_integer_in_a_vars_file_is_one_sentence(project: Project, name: str, text: str) -> None:
    project.file(name, text)
    spec = quick_spec(project, "{{ vars.n }}")
    assert_refused(project.run("render", spec, "--offline", "--vars-file", name), f"--vars-file {name}", "a number has more than 4300 digits; quote it")


# -- 4. one loader for every YAML document -------------------------------------------------------


def billion_laughs() -> str:
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    previous = "a"
    for name in "bcdefghi":
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{previous}"] * 9) + "]")
        previous = name
    return "\n".join(lines) + "\n"


def test_a_vars_file_alias_bomb_is_refused_by_validate_and_run_alike(project: Project) -> None:
    project.file("bomb.yaml", billion_laughs())
    spec = quick_spec(project, "{{ vars.a }}")
    sentence = "--vars-file bomb.yaml: YAML aliases expand to more than 100000 values; refusing to load it"
    validated = project.run("validate", spec, "--vars-file", "bomb.yaml")
    ran = project.run("run", spec, "--vars-file", "bomb.yaml")
    assert_refused(validated, sentence)
    assert_refused(ran, sentence)


def test_a_foreach_yaml_alias_bomb_is_refused(project: Project) -> None:
    project.file("rows.yaml", "- " + billion_laughs().replace("\n", "\n  ").rstrip() + "\n")
    spec = project.spec("fe.yaml", header("fe", "quick") + "foreach:\n  file: rows.yaml\ninputs:\n  Question: x\n")
    assert_refused(project.run("validate", spec, "--offline"), "foreach.file", "YAML aliases expand to more than 100000 values")


def test_a_vars_file_reads_yaml_like_a_spec(project: Project) -> None:
    # YAML 1.2, as in a spec's vars: the country code "no" stays a string.
    project.file("vars.yaml", "country: no\nflag: true\n")
    spec = quick_spec(project, "{{ vars.country }} {{ vars.flag }}")
    result = project.run("render", spec, "--offline", "--vars-file", "vars.yaml")
    assert result.exit_code == 0, result.output
    assert "no True" in result.output


def test_a_sandbox_fixture_alias_bomb_is_refused(tmp_path: Path) -> None:
    from opus_runner.sandbox.fixture import FixtureError, load_fixture

    path = tmp_path / "workflows.yaml"
    path.write_text("workflows: {}\n" + billion_laughs())
    with pytest.raises(FixtureError, match="YAML aliases expand to more than 100000 values"):
        load_fixture(path)


# -- 5. deep structures and giant cells ----------------------------------------------------------


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("depth", [150, 900])
def test_a_deeply_nested_spec_is_refused(project: Project, depth: int) -> None:
    spec = project.spec("deep.yaml", header("deep", "quick") + f"inputs:\n  Question: {nested(depth)}\n")
    for command in ("validate", "render"):
        assert_refused(project.run(command, spec, "--offline"), "deep.yaml", "more than 100 levels deep")


def test_a_deeply_nested_json_spec_is_refused(project: Project) -> None:
    body = {"apiVersion": "opus-runner/v1", "kind": "Job", "metadata": {"name": "deepj"}, "workflow": {"id": header("x", "quick").split("id: ")[1].strip()}}
    text = json.dumps(body)[:-1] + ', "inputs": {"Question": ' + nested(5000) + "}}"
    spec = project.file("deep.json", text)
    assert_refused(project.run("validate", spec, "--offline"), "deep.json", "more than 100 levels deep")


@pytest.mark.parametrize("name, text", [("deep.yaml", f"a: {nested(900)}\n"), ("deep.json", '{"a": ' + nested(5000) + "}")])
def test_a_deeply_nested_vars_file_is_refused(project: Project, name: str, text: str) -> None:
    project.file(name, text)
    spec = quick_spec(project, "{{ vars.a }}")
    for command in ("validate", "run"):
        assert_refused(project.run(command, spec, "--vars-file", name), f"--vars-file {name}", "more than 100 levels deep")


def test_a_deeply_nested_foreach_file_is_refused(project: Project) -> None:
    project.file("rows.json", "[" + '{"q": ' + nested(3000) + "}]")
    spec = project.spec("fe.yaml", header("fe", "quick") + "foreach:\n  file: rows.json\ninputs:\n  Question: x\n")
    assert_refused(project.run("validate", spec, "--offline"), "foreach.file", "more than 100 levels deep")


def test_a_gigantic_csv_cell_is_one_sentence(project: Project) -> None:
    project.file("rows.csv", "q\n" + "x" * 300_000 + "\n")
    spec = project.spec("fe.yaml", header("fe", "quick") + "foreach:\n  file: rows.csv\ninputs:\n  Question: \"{{ row.q }}\"\n")
    assert_refused(project.run("validate", spec, "--offline"), "foreach.file", "rows.csv", "field larger than field limit")


# -- 6. a raising hook is named ------------------------------------------------------------------


def test_a_raising_payload_ready_hook_is_named_with_its_plugin(project: Project) -> None:
    project.file(
        "plugins/strict.py",
        "from opus_runner import hookimpl\n\n\n@hookimpl\ndef opus_payload_ready(payload, ctx):\n    raise KeyError('no such field')\n",
    )
    project.file(
        "plugins/calm.py",
        "from opus_runner import hookimpl\n\n\n@hookimpl\ndef opus_payload_ready(payload, ctx):\n    return None\n",
    )
    result = project.run("run", quick_spec(project, "hello"))
    assert_refused(result, "strict.py: failed in opus_payload_ready: KeyError: 'no such field'; the job was not executed")
    assert "calm.py" not in result.output


def test_a_raising_schema_hook_is_named_with_its_plugin(project: Project) -> None:
    project.file(
        "plugins/schemas.py",
        "from opus_runner import hookimpl\n\n\n@hookimpl(tryfirst=True)\ndef opus_workflow_schema(workflow_ref, ctx):\n    raise ValueError('catalogue offline')\n",
    )
    for command in ("validate", "run"):
        assert_refused(project.run(command, quick_spec(project, "hello")), "schemas.py: failed in opus_workflow_schema: ValueError: catalogue offline")


def test_a_raising_job_event_observer_is_named_and_the_run_goes_on(project: Project) -> None:
    project.file(
        "plugins/watch.py",
        "from opus_runner import hookimpl\n\n\n@hookimpl\ndef opus_job_event(event, ctx):\n    raise RuntimeError('observer broke')\n",
    )
    result = project.run("run", quick_spec(project, "hello"))
    assert result.exit_code == 0, result.output
    assert "watch.py failed in opus_job_event: RuntimeError: observer broke" in result.output


# -- 7. a pinned version the workflow does not have ----------------------------------------------


def test_a_missing_pinned_version_names_the_versions_there_are(project: Project) -> None:
    spec = project.spec("pinned.yaml", header("pinned", "all-types") + "  version: 7\ninputs:\n  Old title: x\n")
    for command in ("validate", "run"):
        assert_refused(
            project.run(command, spec),
            "pinned.yaml:7: workflow.version:",
            "has no version 7; its versions are 1, 2;",
        )
    assert "was not found" not in project.run("validate", spec).output


def test_a_missing_workflow_is_still_not_found(project: Project) -> None:
    spec = project.spec("gone.yaml", header("gone", "00000000-0000-4000-8000-0000000000ff") + "  version: 7\ninputs:\n  Q: x\n")
    assert_refused(project.run("validate", spec), "workflow.id:", "was not found")


def test_a_value_doubled_in_a_namespace_stops_at_the_size_cap(project: Project) -> None:
    doubling = "{% set ns = namespace(s='x') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}"
    assert_refused(project.run("render", quick_spec(project, doubling), "--offline"), "inputs.Question", "more than 10485760 items")
