"""Validation in one pass, against the sandbox: every problem of every spec and job at once,
a problem shared by many jobs printed once with the jobs it affects, and --keep-going skipping
the jobs whose templates fail."""

from __future__ import annotations

from conftest import Project, header


def _rows(count: int, bad: frozenset[int] = frozenset(), field: str = "n", value: str = "1") -> str:
    """A YAML list of ``count`` rows; the rows numbered in ``bad`` (1-based) hold ``field: abc``."""
    lines = []
    for number in range(1, count + 1):
        shown = "abc" if number in bad else value
        lines.append(f"- {{region: r{number}, {field}: '{shown}'}}")
    return "\n".join(lines) + "\n"


def _problems(output: str) -> list[str]:  # the listed lines of "N problems found:"
    return [line for line in output.splitlines() if line.startswith("  - ")]


def test_every_problem_of_every_spec_in_one_pass(project: Project) -> None:
    # A spec the schema refuses, beside one whose jobs' templates fail, beside one whose
    # payloads the live schema refuses: all three are reported by one validate.
    (project.root / "specs").mkdir()
    project.spec("specs/b.yaml", header("b", "quick") + "  versoin: 2\ninputs:\n  Question: q\n")
    project.file("specs/rows.yaml", _rows(20))
    project.spec(
        "specs/a.yaml",
        header("a", "quick")
        + "foreach: {file: rows.yaml}\n"
        + "inputs:\n"
        + "  Question: \"{{ row.mnth if row.region == 'r4' else row.region }}\"\n"
        + "  Count: '{{ vars.cnt }}'\n",
    )
    project.file("specs/c-rows.yaml", _rows(20, bad=frozenset({3, 9, 12, 15, 18, 19})))
    project.spec(
        "specs/c.yaml",
        header("c", "quick") + "foreach: {file: c-rows.yaml}\ninputs:\n  Question: '{{ row.region }}'\n  Count: '{{ row.n }}'\n",
    )
    result = project.run("validate", "specs")
    assert result.exit_code == 2, result.output
    problems = _problems(result.output)
    assert len(problems) == 4, result.output
    assert "5 problems" not in result.output and "4 problems found" in result.output
    text = "\n".join(problems)
    assert "b.yaml:7: workflow.versoin: unknown key 'versoin'; did you mean 'version'?" in text
    # Common to all 20 jobs of a.yaml: once, with the count.
    assert "a.yaml:10: inputs.Count: undefined name in template '{{ vars.cnt }}'" in text
    assert "(all 20 jobs)" in text
    # One job's problem names that job and row.
    assert "row has no key 'mnth'" in text and "foreach row 4)" in text
    # The live schema's refusal of six rows' payloads: once, the rows named, the rest elided.
    counted = [p for p in problems if "c.yaml" in p]
    assert len(counted) == 1 and counted[0].endswith("(in 6 of 20 jobs: rows 3, 9, 12, 15, 18, ...)"), counted


def test_a_mistake_in_a_200_row_foreach_is_one_problem(project: Project) -> None:
    project.file("rows.yaml", _rows(200))
    project.spec("big.yaml", header("big", "quick") + "foreach: {file: rows.yaml}\ninputs:\n  Question: '{{ row.regoin }}'\n")
    result = project.run("validate", "big.yaml")
    assert result.exit_code == 2, result.output
    problems = _problems(result.output)
    assert problems == [
        "  - big.yaml:9: inputs.Question: undefined name in template '{{ row.regoin }}': row has no key "
        "'regoin'; did you mean 'region'? (all 200 jobs)"
    ], result.output


def test_every_template_of_a_job_is_checked_not_just_the_first(project: Project) -> None:
    project.spec(
        "one.yaml",
        header("one", "quick").replace("  name: one\n", "  name: one\n  title: '{{ vars.titel }}'\n")
        + "vars: {title: x}\ninputs:\n  Question: '{{ vars.qestion }}'\nwait: {timeout: '{{ vars.tmeout }}'}\n",
    )
    result = project.run("validate", "one.yaml")
    assert result.exit_code == 2, result.output
    text = result.output
    assert "3 problems found" in text, text
    for name in ("titel", "qestion", "tmeout"):
        assert f"vars has no key '{name}'" in text, text
    assert "(all" not in text and "job " not in text  # a lone job needs no name


def test_keep_going_skips_the_rows_whose_templates_fail(project: Project) -> None:
    project.file("rows.yaml", "- {q: a}\n- {x: b}\n- {q: c}\n- {q: d}\n")
    spec = project.spec("kg.yaml", header("kg", "quick") + "foreach: {file: rows.yaml}\ninputs:\n  Question: '{{ row.q }}'\n")
    refused = project.run("run", spec)
    assert refused.exit_code == 2, refused.output
    assert project.sandbox.state.executes == {}, "nothing is submitted without --keep-going"
    result = project.run("run", spec, "--keep-going")
    assert result.exit_code == 1, result.output  # a skipped job is not a success
    assert sum(project.sandbox.state.executes.values()) == 3
    assert "skipped:" in result.stderr and "row has no key 'q'" in result.stderr and "foreach row 2" in result.stderr


def test_keep_going_still_stops_when_a_spec_cannot_be_read(project: Project) -> None:
    project.file("rows.yaml", "- {q: a}\n- {x: b}\n")
    project.spec("kg.yaml", header("kg", "quick") + "foreach: {file: rows.yaml}\ninputs:\n  Question: '{{ row.q }}'\n")
    project.spec("broken.yaml", header("broken", "quick") + "inptus: {}\n")
    result = project.run("run", "kg.yaml", "broken.yaml", "--keep-going")
    assert result.exit_code == 2, result.output
    assert "unknown key 'inptus'" in result.output and "row has no key 'q'" in result.output
    assert project.sandbox.state.executes == {}
