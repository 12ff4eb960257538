"""One project root rule, against the sandbox: the folder of the nearest opus-runner.toml from
the spec, else the git root, else the spec's folder; the journal, plugins, output confinement
and file-input confinement all follow it, wherever the command is run from."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from opus_runner.cli import main

from conftest import Project, header

PLUGIN = """\
from opus_runner import hookimpl


@hookimpl
def opus_template_globals(ctx):
    return {"where_from": lambda: "plugins of the root"}
"""


def _run(cwd: Path, project: Project, *args: str) -> Result:
    old = os.getcwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(main, [str(a) for a in args], env=project.env, catch_exceptions=False)
    finally:
        os.chdir(old)


def _tree(base: Path, *, git: bool = False, toml_in: str | None = None) -> dict[str, Any]:
    """A repository under ``base``: ``repo/`` (a git root when ``git``), a plugins folder at its
    root, a spec in ``repo/team/specs/`` writing its result beside itself; ``toml_in`` puts an
    opus-runner.toml in that folder of the repository."""
    repo = base / "checkout"  # tmp_path/repo is the project fixture's (it has an opus-runner.toml)
    specs = repo / "team" / "specs"
    specs.mkdir(parents=True)
    if git:
        (repo / ".git").mkdir()
    if toml_in is not None:
        (repo / toml_in).mkdir(parents=True, exist_ok=True)
        (repo / toml_in / "opus-runner.toml").write_text("")
    root = repo / toml_in if toml_in is not None else repo if git else specs
    (root / "plugins").mkdir(exist_ok=True)
    (root / "plugins" / "where.py").write_text(PLUGIN)
    spec = specs / "s.yaml"
    spec.write_text(
        header("s", "quick")
        + "inputs:\n  Question: '{{ where_from() }}'\n"
        + "outputs:\n  - {type: json, path: 'out/s.json'}\n"
        + "wait: {timeout: 20s, poll_interval: 50ms, max_interval: 200ms}\n"
    )
    elsewhere = base / "elsewhere"
    elsewhere.mkdir()
    return {"repo": repo, "specs": specs, "spec": spec, "root": root, "elsewhere": elsewhere}


def _assert_follows(root: Path, tree: dict[str, Any], result: Result) -> None:
    assert result.exit_code == 0, result.output
    assert (root / ".opus-run" / "state.db").exists(), "the journal lives at the project root"
    assert not (tree["elsewhere"] / ".opus-run").exists(), "not in the current folder"
    # The root's plugins were loaded (the template global), and the output, relative to the
    # spec's folder, was written there.
    assert "plugins of the root" in (tree["specs"] / "out" / "s.json").read_text()


def test_without_a_project_file_the_git_root_is_the_root(project: Project, tmp_path: Path) -> None:
    tree = _tree(tmp_path, git=True)
    result = _run(tree["elsewhere"], project, "run", str(tree["spec"]))
    _assert_follows(tree["repo"], tree, result)


def test_without_a_project_file_or_git_the_specs_folder_is_the_root(project: Project, tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    result = _run(tree["elsewhere"], project, "run", str(tree["spec"]))
    _assert_follows(tree["specs"], tree, result)


def test_the_nearest_project_file_wins_over_the_git_root(project: Project, tmp_path: Path) -> None:
    tree = _tree(tmp_path, git=True, toml_in="team")
    result = _run(tree["elsewhere"], project, "run", str(tree["spec"]))
    _assert_follows(tree["repo"] / "team", tree, result)
    assert not (tree["repo"] / ".opus-run").exists()


def test_a_file_input_outside_the_git_root_is_refused(project: Project, tmp_path: Path) -> None:
    tree = _tree(tmp_path, git=True)
    (tmp_path / "secret.txt").write_text("outside")
    tree["spec"].write_text(
        header("s", "all-types")
        + "inputs:\n  Title: t\n  Budget: 1\n  Approved: true\n  Due date: '2026-11-30'\n"
        + "  Contract: {file: ../../../secret.txt}\n"
    )
    result = _run(tree["elsewhere"], project, "validate", str(tree["spec"]))
    assert result.exit_code == 2, result.output
    assert f"lies outside the project root {tree['repo'].resolve()}" in result.output


def test_an_output_outside_the_root_is_refused(project: Project, tmp_path: Path) -> None:
    tree = _tree(tmp_path)  # the root is the spec's folder: ../ leaves it
    text = tree["spec"].read_text().replace("path: 'out/s.json'", "path: '../s.json'")
    tree["spec"].write_text(text)
    result = _run(tree["elsewhere"], project, "validate", str(tree["spec"]))
    assert result.exit_code == 2, result.output
    assert "lies outside the project root" in result.output and str(tree["specs"].resolve()) in result.output


def test_commands_without_a_spec_find_the_root_from_the_current_folder(project: Project, tmp_path: Path) -> None:
    tree = _tree(tmp_path, git=True)
    result = _run(tree["specs"], project, "plugins")
    assert result.exit_code == 0, result.output
    assert "where.py" in result.output, "the plugins folder of the git root, from a folder inside it"


def test_specs_of_different_roots_are_named_and_the_first_root_holds_the_journal(project: Project, tmp_path: Path) -> None:
    first = _tree(tmp_path / "one", git=True)
    second = _tree(tmp_path / "two", git=True)
    second["spec"].write_text(second["spec"].read_text().replace("name: s", "name: t"))
    result = _run(first["elsewhere"], project, "run", str(first["spec"]), str(second["spec"]))
    assert result.exit_code == 0, result.output
    assert "the specs of this run belong to different project roots" in result.stderr
    assert str(second["repo"]) in result.stderr and "it is the git root" in result.stderr
    assert (first["repo"] / ".opus-run" / "state.db").exists()
    assert not (second["repo"] / ".opus-run").exists()


def test_the_resume_hint_names_the_journal_when_the_current_folder_would_not_find_it(project: Project, tmp_path: Path) -> None:
    tree = _tree(tmp_path, git=True)
    tree["spec"].write_text(header("s", "slow") + "inputs:\n  Question: q\nwait: {timeout: 0.3s, poll_interval: 50ms}\n")
    result = _run(tree["elsewhere"], project, "run", str(tree["spec"]))
    assert result.exit_code == 1, result.output
    hint = result.output.split("finish the run with '")[1].split("'")[0]
    assert hint.startswith("opus-run resume ") and hint.endswith(f"--state-dir {tree['repo'] / '.opus-run'}"), hint
    # The hint holds as given, from the folder it was printed in.
    again = _run(tree["elsewhere"], project, *hint.split()[1:], "--timeout", "0.2s")
    assert "no unfinished run" not in again.output and "does not exist" not in again.output, again.output
    here = _run(tree["repo"], project, "run", str(tree["spec"]))
    assert "--state-dir" not in here.output.split("finish the run with '")[1].split("'")[0]
