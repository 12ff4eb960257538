"""The command line offline: exit codes, one-sentence errors, render masking, fast start-up."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from opus_runner.cli import main

REPO = Path(__file__).resolve().parents[1]
SPEC = """\
apiVersion: opus-runner/v1
kind: Job
metadata:
  name: demo
  title: "Demo {{ vars.month }}"
workflow:
  id: 3f69dcbf-2d6e-4b8a-9c1e-5a7b0c4d2e11
vars:
  month: "2026-11"
  who: null
inputs:
  Title: "Report {{ vars.month }} for {{ vars.who }}"
  Token: "{{ secret('DEMO_TOKEN') }}"
"""


def invoke(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None):
    base = {"OPUS_SERVICE_KEY": "", "DEMO_TOKEN": "tok-cli-secret-9876"}
    import os

    old = os.getcwd()
    if cwd:
        os.chdir(cwd)
    try:
        return CliRunner().invoke(main, list(args), env={**base, **(env or {})}, catch_exceptions=False)
    finally:
        os.chdir(old)


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    path = tmp_path / "demo.yaml"
    path.write_text(SPEC)
    return path


def test_validate_examples_offline() -> None:
    result = invoke("validate", *sorted(str(p) for p in (REPO / "specs").glob("*.yaml")), "--offline")
    assert result.exit_code == 0, result.output
    assert "valid" in result.stderr and "skipped" in result.stderr and "--offline" in result.stderr


def test_validate_without_key_says_live_check_was_skipped(spec: Path) -> None:
    result = invoke("validate", str(spec), "--var", "who=ops")
    assert result.exit_code == 0, result.output
    assert "live workflow schema check was skipped" in result.stderr and "OPUS_SERVICE_KEY" in result.stderr


def test_render_masks_secrets_and_applies_vars(spec: Path, tmp_path: Path) -> None:
    vars_file = tmp_path / "vars.yaml"
    vars_file.write_text("month: '2027-01'\nwho: file\n")
    result = invoke("render", str(spec), "--vars-file", str(vars_file), "--var", "who=cli")
    assert result.exit_code == 0, result.output
    assert "Report 2027-01 for cli" in result.stdout  # --var beats --vars-file beats spec vars
    assert "tok-cli-secret-9876" not in result.output and '"***"' in result.stdout
    as_json = invoke("render", str(spec), "--var", "who=x", "--format", "json")
    events = [json.loads(line) for line in as_json.stdout.splitlines()]
    [event] = [e for e in events if e["event"] == "rendered"]
    assert {e["event"] for e in events} == {"rendered", "message"}
    assert event["event"] == "rendered" and event["payload"]["Token"] == "***"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--var", "month"], "--var expects KEY=VALUE, found 'month'"),
        (["--vars-file", "nope.yaml"], "--vars-file nope.yaml: no such file"),
        (["--limit", "0"], "--limit must be 1 or more"),
        (["--shard", "3/2"], "--shard 3/2"),
    ],
)
def test_bad_options_exit_2(spec: Path, args: list[str], message: str) -> None:
    result = invoke("validate", str(spec), "--var", "who=x", *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert "Traceback" not in result.output


def test_vars_file_must_be_a_mapping(spec: Path, tmp_path: Path) -> None:
    bad = tmp_path / "vars.yaml"
    bad.write_text("- a\n- b\n")
    result = invoke("validate", str(spec), "--vars-file", str(bad))
    assert result.exit_code == 2 and "expected a mapping of variable names to values, found list" in result.stderr


def test_undefined_variable_and_template_syntax(spec: Path, tmp_path: Path) -> None:
    spec.write_text(SPEC.replace("  who: null\n", ""))
    result = invoke("validate", str(spec))
    assert result.exit_code == 2
    assert "demo.yaml" in result.stderr and "inputs.Title" in result.stderr and "vars has no key 'who'" in result.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text(SPEC.replace("{{ vars.who }}", "{{ vars.who "))
    result = invoke("validate", str(broken))
    assert result.exit_code == 2 and "template syntax error" in result.stderr and "inputs.Title" in result.stderr


def test_sandbox_escape_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.yaml"
    path.write_text(SPEC.replace("{{ vars.who }}", "{{ ''.__class__.__mro__[1].__subclasses__() }}"))
    result = invoke("validate", str(path))
    assert result.exit_code == 2 and "refused by the sandbox" in result.stderr


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("apiVersion: opus-runner/v9\nkind: Job\n", "opus-runner/v1"),
        ("- a\n- b\n", "expected a mapping at the top level"),
        (SPEC.replace("inputs:", "inptus:"), "did you mean 'inputs'"),
        (SPEC.replace("name: demo", "name: Demo Job"), "metadata.name"),
        (SPEC + "wait: {timeout: 5 minutes}\n", "'5 minutes'"),
    ],
)
def test_bad_specs_exit_2_naming_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    result = invoke("validate", str(path), "--var", "who=x")
    assert result.exit_code == 2, result.output
    assert "bad.yaml" in result.stderr and message in result.stderr


def test_json_format_reports_errors_as_an_event(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(SPEC.replace("inputs:", "inptus:"))
    result = invoke("validate", str(path), "--format", "json")
    assert result.exit_code == 2
    event = json.loads(result.stdout)
    assert event["event"] == "error" and event["exit_code"] == 2 and event["problems"][0]["key"]


def test_spec_schema_version_and_module_entry() -> None:
    schema = json.loads(invoke("spec-schema").stdout)
    assert schema["properties"]["apiVersion"]
    assert invoke("--version").stdout.strip().endswith("0.1.0")
    out = subprocess.run([sys.executable, "-m", "opus_runner", "--version"], capture_output=True, text=True, check=True)
    assert "opus-run" in out.stdout


def test_console_script_runs_the_click_group() -> None:
    """The console script is :func:`opus_runner.cli.run`: the click group, then the process's
    end (past the teardown of Temporal's runtime threads when an engine command loaded them)."""
    import importlib
    import tomllib

    from opus_runner.__about__ import __version__

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, attr = scripts["opus-run"].partition(":")
    entry = getattr(importlib.import_module(module), attr)
    code = f"import sys; from {module} import {attr}; sys.argv = ['opus-run', '--version']; {attr}()"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert entry.__module__ == "opus_runner.cli" and done.returncode == 0
    assert done.stdout.strip() == f"opus-run, version {__version__}"
    failed = subprocess.run(
        [sys.executable, "-c", f"import sys; from {module} import {attr}; sys.argv = ['opus-run', 'valdiate']; {attr}()"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert failed.returncode == 2 and "Did you mean 'validate'?" in failed.stderr


def test_a_flag_is_spelled_the_same_in_every_command() -> None:
    """Shared flags come from one factory each (opus_runner/cli/options.py): only the help text
    may say more in one command than in another, and --format the formats it can print and its
    default (report: html and md, by the -o file's name)."""
    import click

    ctx = click.Context(main, info_name="opus-run")
    spellings: dict[str, dict[tuple, list[str]]] = {}
    for name in main.list_commands(ctx):
        command = main.get_command(ctx, name)
        assert command is not None
        for param in command.params:
            if isinstance(param, click.Option):
                info = param.type.to_info_dict()
                if param.opts[-1] == "--format":
                    info.pop("choices", None)
                kind = (type(param.type).__name__, repr(info))
                default = None if param.opts[-1] == "--format" else param.default
                spelling = (tuple(param.opts), param.name, kind, param.metavar, param.is_flag, param.multiple, default)
                spellings.setdefault(param.opts[-1], {}).setdefault(spelling, []).append(name)
    differing = {flag: list(found.values()) for flag, found in spellings.items() if len(found) > 1}
    assert not differing, f"flags spelled differently by these commands: {differing}"
    assert len(next(iter(spellings["--plugin"].values()))) >= 8  # run, resume, lock, plugins...


def test_default_command_is_run(spec: Path) -> None:
    result = invoke(str(spec), "--var", "who=x")
    assert result.exit_code == 2 and "OPUS_SERVICE_KEY" in result.stderr and "--sandbox" in result.stderr


def test_help_imports_no_heavy_modules() -> None:
    code = textwrap.dedent(
        """
        import sys
        from click.testing import CliRunner
        from opus_runner.cli import main
        for args in (["--help"], ["--version"], ["run", "--help"], ["validate", "--help"], ["submit", "--help"], ["worker", "--help"]):
            assert CliRunner().invoke(main, args).exit_code == 0
        heavy = {"httpx", "jinja2", "jsonschema", "rich", "starlette", "uvicorn", "yaml", "sqlite3", "temporalio"}
        print(sorted(heavy & set(sys.modules)))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_ci_runs_exactly_the_readme_test_command() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Running the tests", 1)[1]
    command = section.split("```bash\n", 1)[1].split("\n", 1)[0]
    assert "pytest" in command
    assert command in (REPO / ".ci" / "run").read_text().splitlines()
    quick = readme.split("## Quick start", 1)[1].split("```bash\n", 1)[1].split("\n", 1)[0]
    assert "--sandbox" in quick and "pip install" in quick


def test_no_local_plugins_loads_nothing_from_the_folder(tmp_path: Path) -> None:
    (tmp_path / "opus-runner.toml").write_text("")
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "boom.py").write_text("raise RuntimeError('this plugin must not be imported')\n")
    spec = tmp_path / "s.yaml"
    spec.write_text(SPEC.replace("inputs:", "outputs: [{type: stdout}]\ninputs:"))
    loaded = invoke("plugins", cwd=tmp_path)
    assert loaded.exit_code == 2 and "boom.py" in loaded.stderr and "this plugin must not be imported" in loaded.stderr
    skipped = invoke("plugins", "--no-local-plugins", cwd=tmp_path)
    assert skipped.exit_code == 0 and "boom" not in skipped.stdout
    assert invoke("validate", str(spec), "--var", "who=x", "--no-local-plugins", cwd=tmp_path).exit_code == 0
    assert invoke("validate", str(spec), "--var", "who=x", cwd=tmp_path).exit_code == 2
