"""The command-line conventions of issue 16: a mistyped command named as such, ``help``,
``version`` and ``-V``, options before the command, ``--var`` names checked and values typed,
``--vars-file -``, and selectors that select nothing. Over real HTTP against the sandbox where a
command talks to Opus."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from conftest import Project, header
from opus_runner.__about__ import __version__
from opus_runner.cli import main
from opus_runner.planning import shard_of


def invoke(*args: str, cwd: Path | None = None, input: str | None = None, env: dict[str, str] | None = None):
    old = os.getcwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        return CliRunner().invoke(
            main,
            [str(a) for a in args],
            input=input,
            env={"OPUS_SERVICE_KEY": "", **(env or {})},
            prog_name="opus-run",
            catch_exceptions=False,
        )
    finally:
        os.chdir(old)


def run_in(project: Project, *args: str, input: str | None = None):
    """``project.run`` with ``input`` on standard input."""
    return invoke(*args, cwd=project.root, input=input, env=project.env)


def quick_spec(project: Project, name: str = "ask", extra: str = "") -> Path:
    return project.spec(f"{name}.yaml", header(name, "quick", "inputs:\n  Question: hello\n" + extra))


def runs_in_journal(project: Project) -> int:
    db = project.root / ".opus-run" / "state.db"
    if not db.exists():
        return 0
    connection = sqlite3.connect(db)
    try:
        return connection.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
    finally:
        connection.close()


# -- a mistyped command ------------------------------------------------------------------------


def test_a_mistyped_command_is_named_with_a_did_you_mean(tmp_path: Path) -> None:
    result = invoke("valdiate", "x.yaml", cwd=tmp_path)
    assert result.exit_code == 2
    assert "No such command 'valdiate'. Did you mean 'validate'?" in result.stderr
    assert "spec file" not in result.stderr


def test_a_word_close_to_no_command_lists_the_commands(tmp_path: Path) -> None:
    result = invoke("frobnicate", cwd=tmp_path)
    assert result.exit_code == 2
    assert "No such command 'frobnicate', and no file or folder of that name" in result.stderr
    assert "validate" in result.stderr and "a spec is a path" in result.stderr


@pytest.mark.parametrize("arg", ["valdiate.yaml", "specs/valdiate", "valdiate*"])
def test_what_looks_like_a_path_is_a_missing_spec_not_a_command(tmp_path: Path, arg: str) -> None:
    result = invoke(arg, cwd=tmp_path)
    assert result.exit_code == 2
    assert "No such command" not in result.stderr
    assert repr(arg) in result.stderr


def test_a_bare_folder_or_spec_still_means_run(project: Project) -> None:
    quick_spec(project)
    (project.root / "specs").mkdir()
    (project.root / "ask.yaml").rename(project.root / "specs" / "ask.yaml")
    # "specs" has no slash and no extension: it is a spec folder because it exists.
    result = project.run("specs")
    assert result.exit_code == 0, result.output
    assert len(project.sandbox.state.payloads) == 1


# -- help and version --------------------------------------------------------------------------


def test_help_command_prints_the_group_and_each_command_help() -> None:
    assert invoke("help").stdout == invoke("--help").stdout
    assert invoke("help", "run").stdout == invoke("run", "--help").stdout
    assert "Usage: opus-run status [OPTIONS] [RUN_ID|JOB_ID]" in invoke("help", "status").stdout


def test_help_of_an_unknown_command_says_did_you_mean() -> None:
    result = invoke("help", "stauts")
    assert result.exit_code == 2 and "No such command 'stauts'. Did you mean 'status'?" in result.stderr
    result = invoke("help", "status", "more")
    assert result.exit_code == 2 and "has no subcommands" in result.stderr


def test_help_reaches_a_command_inside_a_group() -> None:
    @click.group()
    def nested() -> None:
        """A group of commands."""

    @nested.command("list")
    def list_command() -> None:
        """List the things."""

    main.add_command(nested, "nested")
    try:
        result = invoke("help", "nested", "list")
        assert result.exit_code == 0 and "Usage: opus-run nested list" in result.stdout and "List the things." in result.stdout
        result = invoke("help", "nested", "lits")
        assert result.exit_code == 2 and "Did you mean 'list'?" in result.stderr
    finally:
        main.commands.pop("nested")


@pytest.mark.parametrize("args", [["version"], ["-V"], ["--version"]])
def test_version_command_and_short_flag(args: list[str]) -> None:
    result = invoke(*args)
    assert result.exit_code == 0 and result.stdout == f"opus-run, version {__version__}\n"


# -- options before the command ----------------------------------------------------------------


def test_sandbox_before_validate_checks_against_the_sandbox(project: Project) -> None:
    spec = project.spec("bad.yaml", header("bad", "quick", "inputs:\n  Questoin: hello\n"))
    # The in-process sandbox knows the workflow's inputs: the typo is caught live, not skipped.
    result = project.run("--sandbox", "--sandbox-workflows", _fixture(project), "validate", spec, env={"OPUS_SERVICE_KEY": ""})
    assert result.exit_code == 2, result.output
    assert "did you mean 'Question'?" in result.stderr
    assert "skipped" not in result.stderr


def _fixture(project: Project) -> Path:
    from conftest import WORKFLOWS

    path = project.root / "workflows.json"
    path.write_text(json.dumps(WORKFLOWS))
    return path


def _submitted_job(project: Project) -> str:
    result = project.run("run", quick_spec(project), "--no-wait")
    assert result.exit_code == 0, result.output
    [job_id] = list(project.sandbox.state.payloads)
    return job_id


def test_options_before_a_job_command_are_its_own(project: Project) -> None:
    job_id = _submitted_job(project)
    env = {"OPUS_BASE_URL": ""}
    result = project.run("-v", "--base-url", project.sandbox.base_url, "--format", "json", "status", job_id, env=env)
    assert result.exit_code in (0, 4), result.output  # 4: not finished yet
    # --format json reached status (the job may not have started yet: any status reads)
    assert json.loads(result.stdout) in ("PENDING", "IN_PROGRESS", "COMPLETED")
    # -v reached status: an error comes with its traceback.
    quiet = project.run("--base-url", project.sandbox.base_url, "status", "no-such-job", env=env)
    loud = project.run("-v", "--base-url", project.sandbox.base_url, "status", "no-such-job", env=env)
    assert quiet.exit_code == loud.exit_code != 0
    assert "Traceback" not in quiet.stderr and "Traceback" in loud.stderr


def test_the_commands_own_option_wins_over_the_one_before_it(project: Project) -> None:
    job_id = _submitted_job(project)
    env = {"OPUS_BASE_URL": ""}
    dead = "http://127.0.0.1:9"  # nothing listens on the discard port
    result = project.run("--base-url", dead, "status", "--base-url", project.sandbox.base_url, job_id, env=env)
    assert result.exit_code in (0, 4), result.output  # the job's outcome (4: not finished yet)
    result = project.run("--base-url", project.sandbox.base_url, "status", "--base-url", dead, job_id, env=env)
    assert result.exit_code == 3  # the network error


def test_an_option_the_command_lacks_is_refused_by_the_command(project: Project) -> None:
    result = project.run("--sandbox", "status", "abc")
    assert result.exit_code == 2 and "No such option '--sandbox'" in result.stderr


def test_an_option_name_takes_a_value_in_every_command_or_in_none() -> None:
    # The group moves options before the command behind it by knowing which take a value;
    # that needs each name to mean the same in every command.
    takes: dict[str, set[bool]] = {}
    for command in main.commands.values():
        for param in command.params:
            if isinstance(param, click.Option):
                for name in (*param.opts, *param.secondary_opts):
                    takes.setdefault(name, set()).add(not param.is_flag and not param.count)
    assert {name: kinds for name, kinds in takes.items() if len(kinds) > 1} == {}


# -- --var: declared names, typed values, stdin -------------------------------------------------


def vars_spec(project: Project, name: str = "report", vars: str = "vars: {quarter: Q3, month: '2026-11'}\n") -> Path:
    return project.spec(f"{name}.yaml", header(name, "quick", vars + "inputs:\n  Question: 'Report {{ vars.quarter }}'\n"))


def test_a_var_the_spec_does_not_declare_is_an_error_with_did_you_mean(project: Project) -> None:
    spec = vars_spec(project)
    result = project.run("run", spec, "--var", "quater=Q4")
    assert result.exit_code == 2
    message = result.stderr.strip()
    assert message.count("\n") == 0, message  # one sentence
    assert "--var quater" in message and "report.yaml declares no variable 'quater'" in message
    assert "did you mean 'quarter'?" in message and "(declared: quarter, month)" in message
    assert project.sandbox.state.payloads == {} and runs_in_journal(project) == 0


def test_a_spec_without_vars_says_how_to_declare_one(project: Project) -> None:
    spec = quick_spec(project)
    result = project.run("validate", spec, "--var", "quarter=Q4")
    assert result.exit_code == 2
    assert "ask.yaml declares no vars" in result.stderr and "vars: {quarter: null}" in result.stderr


def test_a_var_one_spec_of_the_batch_declares_is_accepted(project: Project) -> None:
    declared = vars_spec(project)
    other = quick_spec(project)
    result = project.run("run", declared, other, "--var", "quarter=Q4")
    assert result.exit_code == 0, result.output
    questions = sorted(p["jobPayloadSchemaInstance"]["workflow_input_q"]["value"] for p in project.sandbox.state.payloads.values())
    assert questions == ["Report Q4", "hello"]


def test_a_var_declared_null_must_be_given(project: Project) -> None:
    spec = vars_spec(project, vars="vars: {quarter: null}\n")
    result = project.run("run", spec)
    assert result.exit_code == 2
    assert "vars.quarter: declared with no value (null)" in result.stderr
    assert "pass --var quarter=..." in result.stderr and "report.yaml" in result.stderr
    assert project.sandbox.state.payloads == {}
    result = project.run("run", spec, "--var", "quarter=Q4")
    assert result.exit_code == 0, result.output
    [payload] = project.sandbox.state.payloads.values()
    assert payload["jobPayloadSchemaInstance"]["workflow_input_q"]["value"] == "Report Q4"


def test_a_null_var_no_template_uses_is_fine_and_default_fills_it(project: Project) -> None:
    spec = project.spec(
        "opt.yaml",
        header("opt", "quick", "vars: {unused: null, region: null}\ninputs:\n  Question: \"{{ vars.region | default('all') }}\"\n"),
    )
    result = project.run("run", spec)
    assert result.exit_code == 0, result.output
    [payload] = project.sandbox.state.payloads.values()
    assert payload["jobPayloadSchemaInstance"]["workflow_input_q"]["value"] == "all"


TYPED = """\
vars: {n: 1, regions: [x], s: "", when: "", title: "", empty: x}
inputs: {N: "{{ vars.n }}", R: "{{ vars.regions }}", S: "{{ vars.s }}", W: "{{ vars.when }}", T: "{{ vars.title }}", E: "{{ vars.empty }}"}
"""


def test_var_values_read_as_yaml_scalars_or_json(tmp_path: Path) -> None:
    spec = tmp_path / "typed.yaml"
    spec.write_text(header("typed", "quick", TYPED))
    result = invoke(
        "render", spec, "--format", "json",
        "--var", "n=3", "--var", "regions=[eu, us]", "--var", 's="3"', "--var", "when=2026-11-01",
        "--var", "title=Q3: draft #2", "--var", "empty=",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    [rendered] = [e for e in map(json.loads, result.stdout.splitlines()) if e["event"] == "rendered"]
    assert rendered["payload"] == {"N": 3, "R": ["eu", "us"], "S": "3", "W": "2026-11-01", "T": "Q3: draft #2", "E": ""}


def test_typed_vars_reach_the_api_as_their_types(project: Project) -> None:
    spec = project.spec(
        "typed.yaml",
        header(
            "typed",
            "all-types",
            """\
            vars: {budget: 1, tags: [], cfg: {}}
            inputs:
              Title: t
              Budget: "{{ vars.budget }}"
              Approved: true
              Due date: 2026-12-15
              Contract: "https://example.com/c.pdf"
              Tags: "{{ vars.tags }}"
              Settings: "{{ vars.cfg }}"
            """,
        ),
    )
    result = project.run("run", spec, "--var", "budget=45.8", "--var", "tags=[eu, us]", "--var", '''cfg={"depth": 2}''')
    assert result.exit_code == 0, result.output
    [payload] = project.sandbox.state.payloads.values()
    inputs = payload["jobPayloadSchemaInstance"]
    assert inputs["workflow_input_budget"]["value"] == 45.8
    assert inputs["workflow_input_tags"]["value"] == ["eu", "us"]
    assert inputs["workflow_input_cfg"]["value"] == {"depth": 2}


def test_a_var_that_starts_like_a_list_but_is_not_one_is_an_error(tmp_path: Path) -> None:
    spec = tmp_path / "typed.yaml"
    spec.write_text(header("typed", "quick", TYPED))
    result = invoke("render", spec, "--var", "regions=[eu, us")
    assert result.exit_code == 2
    assert "--var regions: '[eu, us' is not a valid YAML or JSON list or mapping" in result.stderr
    assert "quote the whole value" in result.stderr


def test_vars_file_dash_reads_standard_input(project: Project) -> None:
    spec = vars_spec(project)
    result = run_in(project, "run", spec, "--vars-file", "-", input="quarter: Q1\n")
    assert result.exit_code == 0, result.output
    [payload] = project.sandbox.state.payloads.values()
    assert payload["jobPayloadSchemaInstance"]["workflow_input_q"]["value"] == "Report Q1"
    # --var still wins over the vars file.
    result = run_in(project, "run", spec, "--vars-file", "-", "--var", "quarter=Q2", input='{"quarter": "Q1"}')
    assert result.exit_code == 0, result.output
    values = sorted(p["jobPayloadSchemaInstance"]["workflow_input_q"]["value"] for p in project.sandbox.state.payloads.values())
    assert values == ["Report Q1", "Report Q2"]


def test_vars_file_dash_that_is_not_a_mapping_is_one_sentence(project: Project) -> None:
    result = run_in(project, "validate", vars_spec(project), "--vars-file", "-", input="[a, b]\n")
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: --vars-file - (stdin): expected a mapping of variable names to values, found list"


def test_a_run_with_vars_from_stdin_resumes_with_them(project: Project) -> None:
    import signal
    import subprocess
    import sys

    from conftest import journal_jobs, wait_for

    project.file("rows.csv", "q\n" + "".join(f"r{i}\n" for i in range(4)))
    spec = project.spec(
        "slow.yaml",
        header("slow", "medium", "vars: {quarter: null}\nforeach: {file: rows.csv}\ninputs:\n  Question: '{{ vars.quarter }} {{ row.q }}'\n"),
    )
    env = {**os.environ, **project.env, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "opus_runner", "run", spec.name, "--vars-file", "-", "--concurrency", "1", "-q"],
        cwd=project.root, env=env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    assert proc.stdin is not None
    proc.stdin.write("quarter: Q4\n")
    proc.stdin.close()
    def a_job_started() -> bool:
        try:
            return any(row["job_id"] for row in journal_jobs(project))
        except sqlite3.Error:  # the journal is not written yet
            return False

    try:
        wait_for(a_job_started)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    result = run_in(project, "resume", input="")  # nothing on stdin now: the journal has the vars
    assert result.exit_code == 0, result.output
    questions = sorted(p["jobPayloadSchemaInstance"]["workflow_input_q"]["value"] for p in project.sandbox.state.payloads.values())
    assert questions == ["Q4 r0", "Q4 r1", "Q4 r2", "Q4 r3"]


# -- selectors that select nothing -------------------------------------------------------------


def matrix_spec(project: Project) -> Path:
    return project.spec(
        "triage.yaml",
        header("triage", "quick", "matrix: {region: [eu, us], tier: [a, b, c]}\ninputs:\n  Question: '{{ matrix.region }} {{ matrix.tier }}'\n"),
    )


def assert_refused(project: Project, result, *parts: str) -> None:
    assert result.exit_code == 2, result.output
    message = result.stderr.strip()
    assert message.count("\n") == 0, message
    for part in parts:
        assert part in message, message
    assert project.sandbox.state.payloads == {} and runs_in_journal(project) == 0


def test_only_with_a_misspelt_key_selects_nothing_and_exits_2(project: Project) -> None:
    result = project.run("run", matrix_spec(project), "--only", "regoin=eu")
    assert_refused(
        project, result,
        "--only regoin=eu selected none of the 6 jobs planned from triage.yaml",
        "no job has a matrix or row value named 'regoin'; did you mean 'region'?",
    )  # fmt: skip


def test_only_with_a_value_no_job_has_lists_the_values(project: Project) -> None:
    result = project.run("run", matrix_spec(project), "--only", "region=Eu", "--limit", "1")
    assert_refused(project, result, "--only region=Eu selected none of the 6 jobs", "matrix.region is one of eu, us; did you mean 'eu'?")


def test_only_terms_that_match_alone_but_not_together(project: Project) -> None:
    project.file("rows.csv", "customer,region\nacme,eu\nglobex,us\n")
    spec = project.spec("rows.yaml", header("rows", "quick", "foreach: {file: rows.csv}\ninputs:\n  Question: '{{ row.customer }}'\n"))
    result = project.run("run", spec, "--only", "customer=acme", "--only", "region=us")
    assert_refused(project, result, "--only customer=acme --only region=us together selected none of the 2 jobs")
    result = project.run("run", spec, "--only", "customer=initech")
    # A row value is the data file's content: named by column, never listed.
    assert_refused(project, result, "no foreach row has 'initech' in its 'customer' column")
    assert "globex" not in result.stderr


def test_a_shard_with_no_job_exits_2(project: Project) -> None:
    spec = quick_spec(project)
    empty = 2 if shard_of("ask", 2) == 1 else 1
    result = project.run("run", spec, "--shard", f"{empty}/2")
    assert_refused(project, result, f"--shard {empty}/2 selected none of the 1 job planned", "with 1 job over 2 shards some shards are empty; use fewer shards")
    result = project.run("run", spec, "--shard", f"{3 - empty}/2")
    assert result.exit_code == 0, result.output
    assert len(project.sandbox.state.payloads) == 1


def test_selectors_that_select_some_jobs_of_a_batch_run_them(project: Project) -> None:
    # --only region=eu selects nothing in ask.yaml, but some in triage.yaml: the batch runs.
    result = project.run("run", matrix_spec(project), quick_spec(project), "--only", "region=eu", "--limit", "2")
    assert result.exit_code == 0, result.output
    assert len(project.sandbox.state.payloads) == 2


@pytest.mark.parametrize("command", ["validate", "render"])
def test_checking_commands_refuse_an_empty_selection_too(project: Project, command: str) -> None:
    result = project.run(command, matrix_spec(project), "--only", "tier=d")
    assert result.exit_code == 2 and "--only tier=d selected none of the 6 jobs" in result.stderr
