"""The authoring and CI commands of ``opus-run``: ``schema``, ``init``, ``lock``, ``drift`` and
``spec-schema``.

Only click is imported at start-up; the commands import the runner, the lock file and
:mod:`opus_runner.authoring` (what they compute) when they run.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from .completion import complete_spec_paths
from .console import handle_errors, setup_logging
from .options import (
    CONTEXT_SETTINGS,
    connection_options,
    loaded_plugins_options,
    plugin_options,
    quiet_option,
    report_options,
    var_options,
    verbose_option,
    version_options,
)

WROTE_QUIET_HELP = "Do not say what was written."


def _runner(base_url: str | None, sandbox: bool, sandbox_workflows: Path | None, plugins: tuple[str, ...],
            no_local_plugins: bool, verbose: bool, specs: tuple[str, ...] = (), var: tuple[str, ...] = (),
            vars_file: Path | None = None, untrusted: bool = False, allow_outside_root: bool = False) -> Any:
    from ..engine import RunOptions, Runner
    from .options import chosen_api

    return Runner(
        RunOptions(
            api=chosen_api(),
            specs=list(specs),
            var=list(var),
            vars_file=vars_file,
            allow_outside_root=allow_outside_root,
            base_url=base_url,
            sandbox=sandbox,
            sandbox_workflows=sandbox_workflows,
            plugins=list(plugins),
            no_local_plugins=no_local_plugins,
            untrusted=untrusted,
            verbose=verbose,
        )
    )


def fetch_schema(workflow_id: str, version: int | None, version_id: str | None, **options: Any) -> tuple[Any, Any]:
    """``(WorkflowRef, WorkflowSchema)`` of one workflow, through the plugin hook (live API or sandbox).

    An unknown workflow or version is one sentence (exit 2, as when a spec names it); both pins
    at once is a usage error.
    """
    import asyncio
    from ..authoring import not_found
    from ..errors import NotFoundError, UsageError
    from ..models import WorkflowRef

    if version is not None and version_id:
        raise UsageError("--version and --version-id both pin the version; give only one of them")
    from ..workflow import workflow_id_problem

    problem = workflow_id_problem(workflow_id.strip())
    if problem:
        raise UsageError(problem)
    ref = WorkflowRef(workflow_id.strip(), version, version_id)
    runner = _runner(**options)
    try:
        schema = asyncio.run(runner.workflow_schema(ref))
    except NotFoundError as exc:
        where = "in the sandbox" if options.get("sandbox") else (
            f"at {runner.client.api_url}" if runner.client is not None else "on the Opus API"
        )
        raise not_found(ref, exc, where) from None
    return ref, schema


def _write_new(path: Path, text: str, force: bool) -> None:
    from .. import files
    from ..errors import UsageError

    if path.is_dir():
        raise UsageError(f"-o {path} is a folder; give a file name")
    if path.exists() and not force:
        raise UsageError(f"{path} already exists; pass --force to overwrite it, or choose another -o file")
    files.atomic_write_text(path, text)


def _init(
    workflow_id: str,
    output: Path | None,
    version: int | None,
    version_id: str | None,
    name: str | None,
    force: bool,
    editor_schema: bool,
    quiet: bool,
    options: dict[str, Any],
) -> None:
    import json
    from .. import authoring
    from ..errors import UsageError

    if name is not None:
        problem = authoring.check_name(name)
        if problem:
            raise UsageError(f"--name {name!r} {problem}")
    if editor_schema and name is not None:
        raise UsageError("--name names a starter spec; it has no effect with --editor-schema, so leave it out")
    if output is not None and not editor_schema and output.suffix.lower() not in (".yaml", ".yml"):
        raise UsageError(f"-o {output}: a starter spec is YAML, so name the file *.yaml or *.yml")
    if output is not None and output.exists() and not force and not output.is_dir():
        # Checked before the network call too, so a refusal costs nothing.
        raise UsageError(f"{output} already exists; pass --force to overwrite it, or choose another -o file")
    ref, schema = fetch_schema(workflow_id, version, version_id, **options)
    if editor_schema:
        text = json.dumps(authoring.editor_schema(schema), indent=2, ensure_ascii=False) + "\n"
    else:
        text = authoring.starter_spec(schema, ref=ref, name=name)
    if output is None:
        click.echo(text, nl=False)
        return
    _write_new(output, text, force)
    if not quiet:
        what = "editor schema" if editor_schema else "starter spec"
        hint = "see docs/editors.md to wire it in" if editor_schema else f"fill it in, then: opus-run validate {output}"
        click.echo(f"wrote {what} {output} for workflow {ref.id}; {hint}", err=True)


def _project_specs(state_dir: Path | None = None) -> tuple[str, ...]:
    """Every spec of the project of the current folder (``lock`` and ``drift`` without
    arguments), or the sentence saying there is none."""
    from ..config import default_state_dir, load_project_config
    from ..errors import UsageError
    from ..lockfile import project_spec_files
    from ..paths import display_path

    config = load_project_config()
    found = project_spec_files(config.root, skip=[state_dir or default_state_dir(config)])
    if not found:
        raise UsageError(
            f"no spec under the project root {display_path(config.root) or '.'} (a spec is a .yaml, .yml or .json "
            "file declaring apiVersion: opus-runner/v1); pass spec files, globs or folders, or run from the project"
        )
    return tuple(str(path) for path in found)


def _lock(specs: tuple[str, ...], quiet: bool, options: dict[str, Any]) -> None:
    import asyncio
    from ..config import load_project_config
    from ..errors import UsageError
    from ..lockfile import LOCK_FILE, spec_names, write_lock

    whole_project = not specs
    if whole_project:
        specs = _project_specs()
    runner = _runner(specs=specs, **options)
    collected = asyncio.run(runner.collect_schemas())
    roots = {load_project_config(spec.dir).root for spec, _ref, _schema in collected}
    if len(roots) > 1:
        listed = ", ".join(sorted(map(str, roots)))
        raise UsageError(f"the specs belong to different projects ({listed}); lock each project on its own")
    root = runner.config.root
    schemas = {ref.key: schema for _spec, ref, schema in sorted(collected, key=lambda item: item[1].key)}
    taken_from = spec_names(root, {spec.path for spec, _ref, _schema in collected})
    assert runner.session is not None
    path = write_lock(root, schemas, taken_from, api=runner.session.api)
    if not quiet:
        keys = ", ".join(schemas) or "none"
        noun = "workflow" if len(schemas) == 1 else "workflows"
        source = f"every spec of the project ({len(taken_from)})" if whole_project else f"{len(taken_from)} spec(s)"
        click.echo(f"wrote {path} ({len(schemas)} {noun}: {keys}) from {source}; commit {LOCK_FILE} with the specs", err=True)


def _drift(specs: tuple[str, ...], output_format: str, options: dict[str, Any]) -> int:
    import asyncio
    import json
    from ..authoring import drift_report
    from ..lockfile import load_lock

    from ..config import load_project_config
    from ..errors import UsageError
    from ..spec import find_specs

    whole_project = not specs
    if whole_project:
        specs = _project_specs()
    # The lock is read first, so a missing or corrupted one costs no request.
    paths = find_specs(list(specs))
    if not paths:
        raise UsageError("no spec given: pass one or more spec files, globs or folders")
    import os

    from .options import chosen_api

    config = load_project_config(paths[0].parent)
    root = config.root
    lock = load_lock(root)
    lock.check_api(config.dialect(chosen_api(), os.environ))
    runner = _runner(specs=specs, **options)
    report = drift_report(lock, asyncio.run(runner.collect_schemas()))
    if output_format == "json":
        click.echo(json.dumps(report.as_dict(), indent=2, ensure_ascii=False))
    else:
        click.echo(report.text())
    if whole_project and lock.specs:
        _say_unlocked_specs(lock, root, paths)
    return report.exit_code


def _say_unlocked_specs(lock: Any, root: Path, paths: list[Path]) -> None:
    """On stderr: the project's specs the lock was not taken from, and the ones it names that
    are gone; either means the next ``opus-run lock`` changes the lock."""
    from ..lockfile import spec_names

    now = set(spec_names(root, paths))
    new, gone = sorted(now - set(lock.specs)), sorted(set(lock.specs) - now)
    if new:
        click.echo(f"note: specs not in {lock.path.name}: {', '.join(new)}; run 'opus-run lock' to add them", err=True)
    if gone:
        click.echo(f"note: {lock.path.name} was taken from specs that are gone: {', '.join(gone)}; run 'opus-run lock' to drop them", err=True)


def _schema(workflow_id: str, version: int | None, version_id: str | None, output_format: str, options: dict[str, Any]) -> None:
    import json
    from ..authoring import schema_document, schema_table

    _ref, schema = fetch_schema(workflow_id, version, version_id, **options)
    if output_format == "json":
        click.echo(json.dumps(schema_document(schema), indent=2, ensure_ascii=False))
    else:
        click.echo(schema_table(schema))


@click.command("schema", context_settings=CONTEXT_SETTINGS)
@click.argument("workflow_id")
@version_options
@connection_options
@plugin_options
@report_options("the workflow and its inputs")
@handle_errors
def schema_command(workflow_id: str, version: int | None, version_id: str | None, output_format: str, verbose: bool, **options: Any) -> None:
    """Show a workflow's inputs.

    One row per input: variable name, display name, type, required, allowed file types
    (--format json for the same as JSON)."""
    setup_logging(verbose)
    _schema(workflow_id, version, version_id, output_format, {**options, "verbose": verbose})


@click.command("init", context_settings=CONTEXT_SETTINGS)
@click.argument("workflow_id")
@click.option("-o", "--output", type=click.Path(path_type=Path), metavar="FILE", help="Write to FILE instead of printing.")
@version_options
@click.option("--name", metavar="NAME", help="metadata.name of the spec [default: a slug of the workflow's name].")
@click.option("--force", is_flag=True, help="Overwrite FILE if it exists.")
@click.option("--editor-schema", is_flag=True, help="Write a JSON Schema for specs of this workflow instead, for editor completion (docs/editors.md).")
@connection_options
@plugin_options
@quiet_option(help=WROTE_QUIET_HELP)
@verbose_option()
@handle_errors
def init_command(
    workflow_id: str,
    output: Path | None,
    version: int | None,
    version_id: str | None,
    name: str | None,
    force: bool,
    editor_schema: bool,
    quiet: bool,
    verbose: bool,
    **options: Any,
) -> None:
    """Write a starter spec for a workflow.

    The spec comes from the live workflow schema: every input with a placeholder of its type
    and a comment (type, required, allowed files). With --editor-schema, a JSON Schema that
    lets an editor complete and check that workflow's inputs instead."""
    setup_logging(verbose)
    _init(workflow_id, output, version, version_id, name, force, editor_schema, quiet, {**options, "verbose": verbose})


@click.command("lock", context_settings=CONTEXT_SETTINGS)
@click.argument("specs", nargs=-1, shell_complete=complete_spec_paths)
@var_options
@connection_options
@plugin_options
@quiet_option(help=WROTE_QUIET_HELP)
@verbose_option()
@handle_errors
def lock_command(specs: tuple[str, ...], quiet: bool, verbose: bool, **options: Any) -> None:
    """Record the specs' workflow schemas in opus-runner.lock.

    Writes opus-runner.lock in the project root: the live input schema of every workflow and
    version the specs use, and which specs those were, so `validate --locked` and `render
    --locked` work with no key and no network. Without SPECS, every spec of the project: the
    .yaml, .yml and .json files under the project root that declare apiVersion: opus-runner/...
    The lock reflects exactly the specs it was taken from: entries of workflows they do not use
    are dropped."""
    setup_logging(verbose)
    _lock(specs, quiet, {**options, "verbose": verbose})


@click.command("drift", context_settings=CONTEXT_SETTINGS)
@click.argument("specs", nargs=-1, shell_complete=complete_spec_paths)
@var_options
@connection_options
@plugin_options
@report_options("the drift report")
@handle_errors
def drift_command(specs: tuple[str, ...], output_format: str, verbose: bool, **options: Any) -> None:
    """Compare the live workflow schemas with opus-runner.lock.

    Reports, per workflow, the inputs added, removed, retyped, made required or optional,
    renamed, and whose allowed file types changed; and the specs that break. Without SPECS,
    every spec of the project (as `lock` takes them), with a note naming the specs added or
    gone since the lock was taken. Exit 0 when
    nothing breaks a spec, 1 when a spec breaks, 2 when the lock lacks a workflow the specs
    use."""
    setup_logging(verbose)
    code = _drift(specs, output_format, {**options, "verbose": verbose})
    sys.exit(code)


@click.command("workflows", context_settings=CONTEXT_SETTINGS)
@click.argument("specs", nargs=-1, shell_complete=complete_spec_paths)
@var_options
@connection_options
@plugin_options
@report_options("the workflows")
@handle_errors
def workflows_command(specs: tuple[str, ...], output_format: str, verbose: bool, **options: Any) -> None:
    """List the workflows the specs use, as the API describes them now.

    One row per workflow and version: id, name, version, number of inputs, and the specs that
    use it. Without SPECS, every spec of the project (as `lock` takes them). Opus documents no
    route listing an account's workflows, so the specs say which ones to show."""
    setup_logging(verbose)
    _workflows(specs, output_format, {**options, "verbose": verbose})


def _workflows(specs: tuple[str, ...], output_format: str, options: dict[str, Any]) -> None:
    import asyncio
    import json

    from ..paths import display_path
    from .tables import fit_table, terminal_width

    runner = _runner(specs=specs or _project_specs(), **options)
    collected = asyncio.run(runner.collect_schemas())
    found: dict[str, dict[str, Any]] = {}
    for spec, ref, schema in collected:
        entry = found.setdefault(
            ref.key,
            {
                "workflow_id": ref.id,
                "name": schema.name if schema else "",
                "version": (schema.version if schema else None) or ref.version,
                "version_id": (schema.version_id if schema else None) or ref.version_id,
                "inputs": len(schema.inputs) if schema else None,
                "specs": [],
            },
        )
        entry["specs"].append(str(display_path(spec.path)))
    rows = sorted(found.values(), key=lambda e: (e["name"], e["workflow_id"]))
    if output_format == "json":
        click.echo(json.dumps(rows, ensure_ascii=False))
        return
    table = [[e["workflow_id"], e["name"], e["version"], e["inputs"], ", ".join(e["specs"])] for e in rows]
    for line in fit_table(["workflow", "name", "version", "inputs", "specs"], table, width=terminal_width(), shrink=(4, 1)):
        click.echo(line)


@click.command("spec-schema", context_settings=CONTEXT_SETTINGS)
@loaded_plugins_options
@handle_errors
def spec_schema_command(plugins: tuple[str, ...], no_local_plugins: bool, untrusted: bool) -> None:
    """Print the JSON Schema of the spec format (for editors), with the config schemas of the
    output and notifier types of the loaded plugins."""
    import json

    from ..authoring import spec_schema_with_plugins
    from ..config import default_plugins_dir, load_project_config
    from ..plugins import make_plugin_host

    config = load_project_config()
    host = make_plugin_host(
        plugins_dir=None if no_local_plugins or untrusted else default_plugins_dir(config), modules=list(plugins)
    )
    click.echo(json.dumps(spec_schema_with_plugins(host), indent=2))
