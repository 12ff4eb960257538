"""Shell completion through click's protocol (the environment variables the bash script sets):
spec paths for spec arguments, the journal's run ids for RUN_ID."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from click.testing import CliRunner

from opus_runner.cli import main
from tests.conftest import WF, Project, header


def complete(cwd: Path, line: str, env: dict[str, str] | None = None) -> list[str]:
    """What ``opus-run`` offers for the last word of ``line`` (``line`` ending in a space: a new
    word), as bash would ask for it."""
    words = line.split()
    cword = len(words) if line.endswith(" ") else len(words) - 1
    old = os.getcwd()
    os.chdir(cwd)
    try:
        result = CliRunner().invoke(
            main,
            [],
            prog_name="opus-run",
            env={"_OPUS_RUN_COMPLETE": "bash_complete", "COMP_WORDS": line, "COMP_CWORD": str(cword), **(env or {})},
        )
    finally:
        os.chdir(old)
    assert result.exit_code == 0, result.output
    return [item.split(",", 1)[1] for item in result.stdout.splitlines() if item]


def _tree(root: Path) -> None:
    for name in ("a.yaml", "b.yml", "c.json", "notes.txt", "data.csv", ".hidden.yaml", "specs/x.yaml", "specs/deep/y.yaml", ".git/config"):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")


def test_spec_arguments_complete_to_spec_files_and_folders(tmp_path: Path) -> None:
    _tree(tmp_path)
    assert complete(tmp_path, "opus-run validate ") == ["a.yaml", "b.yml", "c.json", "specs/"]
    assert complete(tmp_path, "opus-run run a") == ["a.yaml"]
    assert complete(tmp_path, "opus-run render .h") == [".hidden.yaml"]  # hidden only when asked for
    # A single folder opens up, so the shell adds no space after it.
    assert complete(tmp_path, "opus-run lock sp") == ["specs/deep/", "specs/x.yaml"]
    assert complete(tmp_path, "opus-run drift specs/d") == ["specs/deep/y.yaml"]
    assert complete(tmp_path, "opus-run validate nowhere/") == []


def test_the_short_form_completes_commands_and_spec_paths(tmp_path: Path) -> None:
    _tree(tmp_path)
    (tmp_path / "report.yaml").write_text("x")
    assert complete(tmp_path, "opus-run rep") == ["report", "report.yaml"]
    # After an option the short form is run's: spec paths.
    assert complete(tmp_path, "opus-run --sandbox spe") == ["specs/deep/", "specs/x.yaml"]
    assert complete(tmp_path, "opus-run a.yaml b") == ["b.yml"]
    assert "--summary-md" in complete(tmp_path, "opus-run run --su")


def test_run_id_arguments_complete_to_the_journal_s_runs(project: Project) -> None:
    assert complete(project.root, "opus-run report ") == []  # no journal yet: nothing, and none made
    assert not (project.root / ".opus-run").exists()
    project.spec("q.yaml", header("q", "quick") + "inputs:\n  Question: q\n")
    for _ in range(2):
        assert project.run("run", "q.yaml").exit_code == 0
    db = sqlite3.connect(project.root / ".opus-run" / "state.db")
    first, second = [row[0] for row in db.execute("SELECT run_id FROM runs ORDER BY rowid")]
    db.close()
    assert complete(project.root, "opus-run report ") == [second, first]  # newest first
    assert complete(project.root, f"opus-run resume {first[:-2]}") == [first]
    assert complete(project.root, "opus-run report zz") == []
    # --state-dir given before the word is the journal read.
    assert project.run("run", "q.yaml", "--state-dir", "other").exit_code == 0
    db = sqlite3.connect(project.root / "other" / "state.db")
    (third,) = [row[0] for row in db.execute("SELECT run_id FROM runs")]
    db.close()
    assert complete(project.root, "opus-run report --state-dir other ") == [third]
    assert complete(project.root, "opus-run report ") == [second, first]


def test_completion_script_names_the_protocol() -> None:
    result = CliRunner().invoke(main, [], prog_name="opus-run", env={"_OPUS_RUN_COMPLETE": "bash_source"})
    assert result.exit_code == 0
    assert "_OPUS_RUN_COMPLETE=bash_complete" in result.stdout and "complete -o nosort -F" in result.stdout
