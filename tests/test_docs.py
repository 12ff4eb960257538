"""Meta-tests that keep the docs honest: the CLI reference, the spec reference, the event stream
schema (validated against real runs), and the commands the guides tell users to type."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from click.testing import CliRunner
from jsonschema import Draft202012Validator

from conftest import Project, header
from opus_runner.cli import main
from opus_runner.spec import spec_schema

DOCS = Path(__file__).resolve().parent.parent / "docs"
GUIDES = ("spec.md", "ci.md", "events.md", "editors.md")
#: The generator of docs/cli.md, a development tool outside the package.
GEN_CLI_DOCS = Path(__file__).resolve().parent.parent / "tools" / "gen_cli_docs.py"


def cli_reference_markdown() -> str:
    import importlib.util

    spec = importlib.util.spec_from_file_location("gen_cli_docs", GEN_CLI_DOCS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.cli_reference_markdown()


# -- docs/cli.md -------------------------------------------------------------------------------


def test_cli_reference_is_up_to_date() -> None:
    committed = (DOCS / "cli.md").read_text(encoding="utf-8")
    assert committed == cli_reference_markdown(), (
        "docs/cli.md is out of date with the click commands; regenerate with python tools/gen_cli_docs.py"
    )


def test_cli_reference_covers_every_command_and_option() -> None:
    text = (DOCS / "cli.md").read_text(encoding="utf-8")
    ctx = click.Context(main, info_name="opus-run")
    for name in main.list_commands(ctx):
        command = main.get_command(ctx, name)
        assert command is not None
        assert f"## opus-run {name}\n" in text
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden:
                assert f"`{param.opts[0]}`" in text, f"{name} {param.opts[0]}"


def test_cli_reference_generator_runs_as_a_script() -> None:
    done = subprocess.run(
        [sys.executable, str(GEN_CLI_DOCS), "-"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == cli_reference_markdown()


def test_documented_shell_completion_works() -> None:
    text = (DOCS / "cli.md").read_text(encoding="utf-8")
    for shell in ("bash", "zsh", "fish"):
        assert f"_OPUS_RUN_COMPLETE={shell}_source opus-run" in text
        result = CliRunner().invoke(main, [], prog_name="opus-run", env={"_OPUS_RUN_COMPLETE": f"{shell}_source"})
        assert result.exit_code == 0
        assert "_OPUS_RUN_COMPLETE" in result.output  # the script calls opus-run back with this variable


# -- docs/spec.md ------------------------------------------------------------------------------


def _schema_paths(node: dict[str, Any], prefix: str = "") -> Iterator[str]:
    for name, child in node.get("properties", {}).items():
        path = f"{prefix}.{name}" if prefix else name
        yield path
        yield from _schema_paths(child, path)
        if isinstance(child.get("items"), dict):
            yield from _schema_paths(child["items"], f"{path}[]")


def test_spec_reference_mentions_every_key_of_the_schema() -> None:
    text = (DOCS / "spec.md").read_text(encoding="utf-8")
    paths = list(_schema_paths(spec_schema()))
    assert "wait.poll_interval" in paths and "notify[].on" in paths  # the walk reaches nested keys
    missing = [p for p in paths if f"`{p}`" not in text]
    assert missing == [], f"docs/spec.md does not mention {missing}"


def test_spec_reference_examples_are_valid_specs(tmp_path: Path) -> None:
    from opus_runner.spec import load_spec

    text = (DOCS / "spec.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.S)
    complete = [b for b in blocks if b.startswith("apiVersion:") and "\nworkflow:" in b]
    assert complete, "docs/spec.md has a complete example"
    for number, block in enumerate(complete):
        path = tmp_path / f"example{number}.yaml"
        path.write_text(block)
        load_spec(path)


def test_coercion_table_lists_every_input_type() -> None:
    from opus_runner.models import INPUT_TYPES

    text = (DOCS / "spec.md").read_text(encoding="utf-8")
    table = text.split("## Value coercion", 1)[1].split("## Files", 1)[0]
    assert [t for t in INPUT_TYPES if f"| `{t}` |" not in table] == []


# -- commands the guides show ------------------------------------------------------------------


def _code_blocks(text: str) -> list[tuple[str, str]]:
    return re.findall(r"```(\w*)\n(.*?)```", text, re.S)


def _commands(text: str) -> Iterator[list[str]]:
    """``opus-run ...`` invocations in code blocks and inline code."""
    snippets = [body for _lang, body in _code_blocks(text)] + re.findall(r"`(opus-run [^`]*)`", text)
    for snippet in snippets:
        for line in snippet.splitlines():
            start = line.find("opus-run ")
            if start < 0 or line.lstrip().startswith("#") or "_OPUS_RUN_COMPLETE" in line:
                continue
            words = shlex.split(line[start:].split("|")[0].split(">")[0].split("&&")[0], posix=True)
            yield words[1:]


def test_guides_only_use_commands_and_options_that_exist() -> None:
    ctx = click.Context(main, info_name="opus-run")
    names = set(main.list_commands(ctx))
    checked = 0
    for guide in GUIDES:
        for words in _commands((DOCS / guide).read_text(encoding="utf-8")):
            if not words or words[0].startswith("-") and words[0] not in ("--version",):
                continue
            name = words[0]
            if name not in names:
                continue  # `opus-run SPEC...` is `run`; placeholders like WORKFLOW_ID are fine
            command = main.get_command(ctx, name)
            assert command is not None
            known = {o for p in command.params if isinstance(p, click.Option) for o in (*p.opts, *p.secondary_opts)}
            for word in words[1:]:
                option = word.split("=")[0]
                if option.startswith("--"):
                    assert option in known, f"{guide}: 'opus-run {name}' has no option {option}"
                    checked += 1
    assert checked >= 10


def test_guide_yaml_and_json_blocks_parse() -> None:
    for guide in GUIDES:
        for lang, body in _code_blocks((DOCS / guide).read_text(encoding="utf-8")):
            if lang == "yaml":
                assert yaml.safe_load(body) is not None, guide
            elif lang == "json":
                for line in body.splitlines() if body.lstrip().startswith('{"event"') else [body]:
                    json.loads(line)


def test_ci_workflow_is_a_github_actions_workflow() -> None:
    text = (DOCS / "ci.md").read_text(encoding="utf-8")
    workflow = next(yaml.safe_load(b) for lang, b in _code_blocks(text) if lang == "yaml" and b.startswith("name: opus"))
    jobs = workflow["jobs"]
    assert set(jobs) == {"validate", "drift", "run"}
    assert workflow[True]["pull_request"] is None  # YAML 1.1 reads `on:` as true
    steps = {name: " ".join(s.get("run", "") for s in job["steps"]) for name, job in jobs.items()}
    assert "validate --locked" in steps["validate"] and "secrets" not in json.dumps(jobs["validate"])
    assert "opus-run drift" in steps["drift"] and "secrets.OPUS_SERVICE_KEY" in jobs["drift"]["env"]["OPUS_SERVICE_KEY"]
    assert "secrets.OPUS_SERVICE_KEY" in jobs["run"]["env"]["OPUS_SERVICE_KEY"]
    assert any("junit" in s.get("uses", "") for s in jobs["run"]["steps"])


# -- docs/events.md and events.schema.json -----------------------------------------------------


@pytest.fixture(scope="module")
def event_validator() -> Draft202012Validator:
    schema = json.loads((DOCS / "events.schema.json").read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def test_every_event_kind_is_documented(event_validator: Draft202012Validator) -> None:
    kinds = event_validator.schema["properties"]["event"]["enum"]
    assert set(kinds) == {
        "batch", "submitted", "status", "completed", "failed", "cancelled", "timed_out",
        "message", "retry", "summary", "error", "rendered",
    }
    text = (DOCS / "events.md").read_text(encoding="utf-8")
    for kind in kinds:
        assert f"#### `{kind}`" in text or f"### `{kind}`" in text, kind
        assert {"$ref": f"#/$defs/{kind}"} in event_validator.schema["oneOf"]


def _lines(project: Project, *args: str, env: dict[str, str | None] | None = None) -> tuple[int, list[dict[str, Any]]]:
    result = project.run(*args, "--format", "json", env=env)  # type: ignore[arg-type]
    lines = result.stdout.splitlines()
    assert lines, result.output
    return result.exit_code, [json.loads(line) for line in lines]  # every stdout line is JSON


def test_real_event_streams_match_the_schema(project: Project, event_validator: Draft202012Validator) -> None:
    fast = "wait: {timeout: 20s, poll_interval: 50ms, max_interval: 100ms}\n"
    project.spec("ok.yaml", header("ok", "quick") + "matrix: {n: [1, 2]}\ninputs:\n  Question: 'q{{ matrix.n }}'\n" + fast, wait=False)
    project.spec("bad.yaml", header("bad", "broken") + "inputs:\n  Question: q\n" + fast, wait=False)
    project.spec("slow.yaml", header("slow", "slow") + "inputs:\n  Question: q\nwait: {timeout: 0.2s, poll_interval: 50ms}\n", wait=False)
    project.spec("invalid.yaml", header("invalid", "quick") + "inputs:\n  Question: [1]\n  Colour: red\n")

    streams = {
        "run": _lines(project, "run", "ok.yaml", "bad.yaml", "slow.yaml"),
        "invalid": _lines(project, "run", "invalid.yaml"),
        "validate": _lines(project, "validate", "ok.yaml"),
        "validate-offline": _lines(project, "validate", "ok.yaml", env={"OPUS_SERVICE_KEY": None}),
        "render": _lines(project, "render", "ok.yaml"),
        "dry-run": _lines(project, "run", "--dry-run", "ok.yaml"),
        "usage": _lines(project, "run", "missing.yaml"),
    }
    seen: set[str] = set()
    for name, (_code, events) in streams.items():
        for event in events:
            problems = [e.message for e in event_validator.iter_errors(event)]
            assert problems == [], f"{name}: {event} does not match docs/events.schema.json: {problems}"
            seen.add(event["event"])
    assert streams["run"][0] == 1 and streams["invalid"][0] == 2 and streams["usage"][0] == 2
    assert seen >= {"batch", "submitted", "status", "completed", "failed", "timed_out", "message", "summary", "error", "rendered"}
    [error] = streams["invalid"][1]
    assert error["exit_code"] == 2 and len(error["problems"]) == 2
    failed = next(e for e in streams["run"][1] if e["event"] == "failed")
    assert failed["status"] == "FAILED" and "Score" in failed["error"]


@pytest.mark.parametrize(
    "event",
    [
        {"event": "completed", "time": "2026-01-01T00:00:00.000Z", "job_id": "j", "spec_name": "s", "plan_key": "s", "status": "FAILED", "outputs": {}},
        {"event": "batch", "time": "2026-01-01T00:00:00.000Z", "jobs": 1, "surprise": True},
        {"event": "message", "time": "yesterday", "level": "info", "message": "m"},
        {"event": "error", "exit_code": 5, "message": "m"},
        {"event": "unknown"},
    ],
)
def test_events_schema_rejects_what_is_not_documented(event_validator: Draft202012Validator, event: dict[str, Any]) -> None:
    assert not event_validator.is_valid(event)
