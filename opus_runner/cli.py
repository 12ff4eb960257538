"""The ``opus-run`` command line: parses arguments, calls the runner, prints, maps exit codes.

No logic lives here. Heavy modules are imported inside the commands so ``--help`` and
``--version`` start fast.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from .__about__ import __version__
from .errors import OpusRunnerError, ValidationFailed

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
UNTRUSTED_HELP = (
    "For a checkout you do not trust (a pull request): implies --no-local-plugins, ignores the "
    "plugins a resumed run's journal names and the base_url and plugins_dir of opus-runner.toml, "
    "and says what it ignored."
)


class DefaultGroup(click.Group):
    """``opus-run SPEC...`` means ``opus-run run SPEC...``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help", "--version"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


def _setup_logging(verbose: bool, quiet: bool = False) -> None:
    import logging
    from .progress import PrintableFilter
    from .redact import MaskingFilter

    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(MaskingFilter())
    handler.addFilter(PrintableFilter())  # log lines quote the server (errors, the HTTP trace)
    fmt = "%(asctime)s %(name)s %(levelname)s %(message)s" if verbose else "%(message)s"
    handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger("opus_runner")
    root.handlers[:] = [handler]
    # INFO by default: the `log` notifier and plugins' notes are meant to be seen.
    root.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
    root.propagate = False
    # httpx and httpcore log full URLs at INFO/DEBUG, presigned signatures included; our own
    # trace (logger opus_runner.http) logs them without query strings.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _fail(exc: BaseException, *, output_format: str, verbose: bool) -> None:
    """Print one clear error (a traceback only with --verbose) and exit with its code."""
    import json
    from . import redact

    if isinstance(exc, OpusRunnerError):
        code = exc.exit_code
        text = redact.mask(redact.without_userinfo(str(exc)))
    else:
        code = 3 if not isinstance(exc, KeyboardInterrupt) else 130
        text = redact.mask(redact.without_userinfo(f"unexpected error: {type(exc).__name__}: {exc}"))
    if verbose:
        import traceback

        sys.stderr.write(redact.mask(redact.without_userinfo("".join(traceback.format_exception(exc)))))
    if output_format == "json":
        data: dict[str, Any] = {"event": "error", "exit_code": code, "message": text}
        if isinstance(exc, ValidationFailed):
            from .errors import format_key

            data["problems"] = [
                {"file": e.file, "key": format_key(e.key), "line": e.line, "message": e.message} for e in exc.errors
            ]
        # The shared event writer: masked as data, C1 controls escaped, like every event line.
        from .progress import dumps

        click.echo(dumps(data))
    from .progress import printable

    click.echo(f"error: {printable(text, newlines=True)}", err=True)
    sys.exit(code)


def handle_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn OpusRunnerError (and anything unexpected) into a message and an exit code."""
    import functools

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        output_format = kwargs.get("output_format", "text")
        verbose = kwargs.get("verbose", False)
        try:
            return func(*args, **kwargs)
        except click.exceptions.Exit:
            raise
        except (click.ClickException, click.Abort):
            raise
        except SystemExit:
            raise
        except KeyboardInterrupt as exc:
            _fail(exc, output_format=output_format, verbose=False)
        except Exception as exc:
            _fail(exc, output_format=output_format, verbose=verbose)

    return wrapper


# -- shared options ------------------------------------------------------------------------


def output_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option("--verbose", "-v", is_flag=True, help="Debug logging and HTTP trace (key redacted); tracebacks on errors.")(func)
    func = click.option("--quiet", "-q", is_flag=True, help="Only errors and results.")(func)
    func = click.option(
        "--format",
        "output_format",
        type=click.Choice(["text", "json"]),
        default="text",
        show_default=True,
        help="json: one JSON object per event line on stdout, for CI.",
    )(func)
    return func


def connection_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option("--base-url", metavar="URL", help="Opus API base URL [env: OPUS_BASE_URL; default https://operator.opus.com].")(func)
    func = click.option("--sandbox", is_flag=True, help="Start a local Opus-compatible sandbox for this command and run against it.")(func)
    func = click.option(
        "--sandbox-workflows",
        type=click.Path(dir_okay=False, path_type=Path),
        help="Fixture file of the --sandbox's workflows [default: sandbox_workflows of opus-runner.toml, else the built-in demo workflows].",
    )(func)
    return func


ALLOW_OUTSIDE_ROOT_HELP = (
    "Allow paths outside the project root: file inputs, foreach data, --vars-file, output files and download folders."
)


def spec_options(func: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--var", "var", multiple=True, metavar="KEY=VALUE", help="Set a template variable (repeatable; wins over --vars-file)."),
        click.option("--vars-file", type=click.Path(path_type=Path), metavar="FILE", help="YAML or JSON mapping of template variables."),
        click.option("--plugin", "plugins", multiple=True, metavar="MODULE", help="Load a plugin module or .py file (repeatable)."),
        click.option("--no-local-plugins", is_flag=True, help="Do not load the project's plugins folder (for untrusted specs)."),
        click.option("--untrusted", is_flag=True, help=UNTRUSTED_HELP),
        click.option("--allow-outside-root", is_flag=True, help=ALLOW_OUTSIDE_ROOT_HELP),
        click.option("--limit", type=int, metavar="N", help="Run only the first N jobs of the plan."),
        click.option("--only", multiple=True, metavar="KEY=VALUE", help="Run only jobs whose matrix or row value KEY equals VALUE (repeatable)."),
        click.option("--shard", metavar="K/N", help="Run the K-th of N deterministic shards of the plan."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _run_options(**kwargs: Any) -> Any:
    from .run import RunOptions

    fields = set(RunOptions.__dataclass_fields__)
    return RunOptions(**{k: v for k, v in kwargs.items() if k in fields})


#: The stop signal received while jobs ran (SIGTERM, SIGHUP), for the exit code; empty for Ctrl-C.
_stopped_by: list[int] = []


async def _until_stopped(work: Any) -> Any:
    """Await ``work``; SIGTERM (what CI sends on cancel) and SIGHUP stop it the way Ctrl-C does.

    The handlers are the event loop's own (``loop.add_signal_handler``), so the loop wakes at
    once and cancels the run: every job saves its state, then KeyboardInterrupt goes up to the
    same handling as Ctrl-C.
    """
    import asyncio
    import signal

    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    _stopped_by.clear()

    def stop(signum: int) -> None:
        _stopped_by.append(signum)
        if task is not None:
            task.cancel()

    installed = []
    for name in ("SIGTERM", "SIGHUP"):
        signum = getattr(signal, name, None)
        if signum is None:
            continue
        try:
            loop.add_signal_handler(signum, stop, signum)
        except (NotImplementedError, RuntimeError, ValueError):  # no signals here (Windows, a thread)
            continue
        installed.append(signum)
    try:
        return await work
    except asyncio.CancelledError:
        if _stopped_by:
            raise KeyboardInterrupt from None
        raise
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)


def _interrupted(exc: KeyboardInterrupt, text: str) -> Any:
    from .errors import Interrupted

    error = Interrupted(text)
    if _stopped_by:
        error.exit_code = 128 + _stopped_by[-1]  # 143 for SIGTERM, 129 for SIGHUP, as shells report
    return error


def _execute(options: Any, reporter: Any) -> Any:
    import asyncio
    from .run import Runner

    runner = Runner(options, reporter=reporter)
    try:
        return asyncio.run(_until_stopped(runner.run()))
    except KeyboardInterrupt as exc:
        if runner.run_id:
            raise _interrupted(
                exc,
                f"interrupted; the journal has every job's state. Finish the run with: opus-run resume {runner.run_id}",
            ) from None
        raise _interrupted(exc, "interrupted before anything was submitted") from None
    finally:
        reporter.close()


def _print_notes(report: Any, output_format: str, quiet: bool) -> None:
    from .progress import JsonReporter, printable

    for note in report.notes:
        if output_format == "json":
            JsonReporter().message(note)
        elif not quiet:
            click.echo(printable(note, newlines=True), err=True)


# -- the commands --------------------------------------------------------------------------


@click.group(cls=DefaultGroup, context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, "--version", prog_name="opus-run")
def main() -> None:
    """Run Opus workflows from declarative job specs.

    \b
    opus-run SPEC...             validate, submit, wait, route results (same as `run`)
    opus-run --sandbox SPEC...   the same against a local sandbox: no account needed
    """


@main.command("run", context_settings=CONTEXT_SETTINGS)
@click.argument("specs", nargs=-1, required=True)
@spec_options
@connection_options
@click.option("--dry-run", is_flag=True, help="Do everything up to, not including, initiating jobs.")
@click.option("--no-wait", is_flag=True, help="Submit and exit without following the jobs.")
@click.option("--concurrency", type=click.IntRange(min=1), metavar="N", help="Jobs in flight at once [default: 4].")
@click.option("--timeout", metavar="DURATION", help="Give up waiting after this long (45s, 5m, 1h30m).")
@click.option("--keep-going", is_flag=True, help="Skip invalid jobs of a batch instead of submitting nothing.")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), help="Journal folder [default: .opus-run in the project root].")
@output_options
@handle_errors
def run_command(specs: tuple[str, ...], output_format: str, quiet: bool, verbose: bool, **kwargs: Any) -> None:
    """Validate, submit and follow jobs; route their results to outputs."""
    from .progress import make_reporter

    _setup_logging(verbose, quiet)
    options = _run_options(specs=specs, output_format=output_format, quiet=quiet, verbose=verbose, **kwargs)
    reporter = make_reporter(output_format, quiet=quiet)
    report = _execute(options, reporter)
    if options.dry_run:
        _print_notes(report, output_format, quiet)
        return
    sys.exit(report.exit_code)


def schema_source_options(verb: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--offline and --locked: where validate and render take the workflow schema from."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        func = click.option("--locked", is_flag=True, help=f"{verb} against opus-runner.lock instead of the live API (no key, no network).")(func)
        func = click.option("--offline", is_flag=True, help="Do not contact the API even if a service key is set.")(func)
        return func

    return decorate


def _check(mode: str, specs: tuple[str, ...], output_format: str, quiet: bool, verbose: bool, **kwargs: Any) -> None:
    """validate and render: the runner in a checking mode, then the notes (skipped checks)."""
    from .progress import Reporter, make_reporter

    _setup_logging(verbose, quiet)
    options = _run_options(specs=specs, mode=mode, output_format=output_format, quiet=quiet, verbose=verbose, **kwargs)
    # render prints each payload as it is built (the reporter streams them); validate prints none.
    reporter = make_reporter(output_format, quiet=quiet, live=False) if mode == "render" else Reporter()
    report = _execute(options, reporter)
    _print_notes(report, output_format, quiet)


@main.command("validate", context_settings=CONTEXT_SETTINGS)
@click.argument("specs", nargs=-1, required=True)
@spec_options
@connection_options
@schema_source_options("Check inputs")
@output_options
@handle_errors
def validate_command(specs: tuple[str, ...], output_format: str, quiet: bool, verbose: bool, **kwargs: Any) -> None:
    """Check specs without submitting: format and templates offline; with a key or --sandbox,
    also against the live workflow schema (no job is created, no file uploaded)."""
    _check("validate", specs, output_format, quiet, verbose, **kwargs)


@main.command("render", context_settings=CONTEXT_SETTINGS)
@click.argument("specs", nargs=-1, required=True)
@spec_options
@connection_options
@schema_source_options("Render")
@output_options
@handle_errors
def render_command(specs: tuple[str, ...], output_format: str, quiet: bool, verbose: bool, **kwargs: Any) -> None:
    """Print what each job would send, secrets masked: the rendered inputs offline, the exact
    jobPayloadSchemaInstance with a key or --sandbox."""
    _check("render", specs, output_format, quiet, verbose, **kwargs)


@main.command("resume", context_settings=CONTEXT_SETTINGS)
@click.argument("run_id", required=False)
@click.option("--base-url", metavar="URL", help="Opus API base URL [env: OPUS_BASE_URL].")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), help="Journal folder [default: .opus-run in the project root].")
@click.option("--timeout", metavar="DURATION", help="Give up waiting after this long (45s, 5m, 1h30m).")
@click.option("--concurrency", type=click.IntRange(min=1), metavar="N", help="Jobs in flight at once [default: 4].")
@click.option("--plugin", "plugins", multiple=True, metavar="MODULE", help="Load a plugin module or .py file (repeatable).")
@click.option("--no-local-plugins", is_flag=True, help="Do not load the project's plugins folder, nor the plugins the run's journal names.")
@click.option("--untrusted", is_flag=True, help=UNTRUSTED_HELP)
@click.option("--allow-outside-root", is_flag=True, help=ALLOW_OUTSIDE_ROOT_HELP + " Without it, the flag the run was started with (not under --untrusted).")
@click.option("--replan", is_flag=True, help="Plan jobs the run never started from its spec and data files as they are now, though they changed since the run began.")
@output_options
@handle_errors
def resume_command(run_id: str | None, output_format: str, quiet: bool, verbose: bool, **kwargs: Any) -> None:
    """Finish an interrupted run (default: the latest unfinished one) without resubmitting:
    unsent jobs are sent, running ones followed, undelivered results delivered."""
    import asyncio
    from .progress import make_reporter
    from .run import Runner

    _setup_logging(verbose, quiet)
    options = _run_options(output_format=output_format, quiet=quiet, verbose=verbose, **kwargs)
    reporter = make_reporter(output_format, quiet=quiet)
    runner = Runner(options, reporter=reporter)
    try:
        report = asyncio.run(_until_stopped(runner.resume(run_id)))
    except KeyboardInterrupt as exc:
        raise _interrupted(
            exc, f"interrupted; finish the run with: opus-run resume {runner.run_id or run_id or ''}".rstrip()
        ) from None
    finally:
        reporter.close()
    sys.exit(report.exit_code)


@main.command("spec-schema", context_settings=CONTEXT_SETTINGS)
def spec_schema_command() -> None:
    """Print the JSON Schema of the spec format (for editors)."""
    import json
    from .spec import spec_schema

    click.echo(json.dumps(spec_schema(), indent=2))


def _client_from(base_url: str | None) -> Any:
    import os

    from .client import NO_KEY_MESSAGE, OpusClient
    from .config import DEFAULT_BASE_URL, load_project_config
    from .errors import ConfigError

    key = os.environ.get("OPUS_SERVICE_KEY")
    if not key:
        raise ConfigError(NO_KEY_MESSAGE)
    from .progress import printable

    config = load_project_config()
    notice = None if base_url or os.environ.get("OPUS_BASE_URL") else config.base_url_notice()
    if notice:
        click.echo(printable(notice), err=True)
    url = base_url or os.environ.get("OPUS_BASE_URL") or config.base_url or DEFAULT_BASE_URL
    return OpusClient(url, key)


def _job_command(name: str, help_text: str) -> Callable[[Callable[..., Any]], Any]:
    def decorate(fetch: Callable[[Any, str], Any]) -> Any:
        @main.command(name, context_settings=CONTEXT_SETTINGS, help=help_text)
        @click.argument("job_id")
        @click.option("--base-url", metavar="URL", help="Opus API base URL [env: OPUS_BASE_URL].")
        @output_options
        @handle_errors
        def command(job_id: str, base_url: str | None, output_format: str, quiet: bool, verbose: bool) -> None:
            import asyncio
            import json
            _setup_logging(verbose, quiet)

            async def go() -> Any:
                async with _client_from(base_url) as client:
                    return await fetch(client, job_id)

            data = asyncio.run(go())
            from . import redact
            from .progress import printable

            if output_format == "json":
                click.echo(json.dumps(redact.mask_obj(data), ensure_ascii=False, default=str))
            elif not isinstance(data, str):
                click.echo(printable(json.dumps(redact.mask_obj(data), indent=2, ensure_ascii=False, default=str), newlines=True))
            else:
                click.echo(printable(redact.mask(data), newlines=True))

        return command

    return decorate


@_job_command("status", "Show a job's status.")
async def _status(client: Any, job_id: str) -> Any:
    return await client.status(job_id)


@_job_command("results", "Show a finished job's results.")
async def _results(client: Any, job_id: str) -> Any:
    data = await client.results(job_id)
    return {"job_id": job_id, "outputs": data.outputs, **({"error": data.error} if data.error else {})}


@_job_command("audit", "Show a job's node-by-node progress.")
async def _audit(client: Any, job_id: str) -> Any:
    audit = await client.audit(job_id)
    return audit.raw


@main.command("plugins", context_settings=CONTEXT_SETTINGS)
@click.option("--plugin", "plugins", multiple=True, metavar="MODULE", help="Also load this plugin module or .py file.")
@click.option("--no-local-plugins", is_flag=True, help="Do not load the project's plugins folder.")
@click.option("--untrusted", is_flag=True, help="Do not load the project's plugins folder, nor the plugins_dir of opus-runner.toml.")
@output_options
@handle_errors
def plugins_command(plugins: tuple[str, ...], no_local_plugins: bool, untrusted: bool, output_format: str, quiet: bool, verbose: bool) -> None:
    """List loaded plugins, where each came from, their hooks and output/notifier types."""
    import json
    from dataclasses import asdict

    from .config import default_plugins_dir, load_project_config
    from .plugins import make_plugin_host

    _setup_logging(verbose, quiet)
    config = load_project_config()
    host = make_plugin_host(
        plugins_dir=None if no_local_plugins or untrusted else default_plugins_dir(config), modules=list(plugins)
    )
    infos = host.describe()
    if output_format == "json":
        click.echo(json.dumps([asdict(i) for i in infos], indent=2))
        return
    for info in infos:
        click.echo(f"{info.name}  [{info.origin}] {info.source}")
        click.echo(f"    hooks: {', '.join(info.hooks) or '-'}")
        if info.outputs:
            click.echo(f"    outputs: {', '.join(info.outputs)}")
        if info.notifiers:
            click.echo(f"    notifiers: {', '.join(info.notifiers)}")


@main.command("sandbox", context_settings=CONTEXT_SETTINGS)
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True, help="Port on 127.0.0.1 (0: any free port).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Loopback address to bind.")
@click.option("--workflows", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Fixture file of workflows [default: the built-in demo workflows].")
@click.option("--faults", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="YAML/JSON list of fault-injection rules.")
@click.option("--key", metavar="KEY", help="Service key the sandbox accepts [default: a random one, printed].")
@handle_errors
def sandbox_command(port: int, host: str, workflows: Path | None, faults: Path | None, key: str | None) -> None:
    """Serve the local Opus-compatible sandbox until Ctrl-C."""
    from .config import load_project_config
    from .sandbox.server import serve

    workflows = workflows or load_project_config().sandbox_workflows
    try:
        serve(workflows, host=host, port=port, key=key, faults_file=faults)
    except KeyboardInterrupt:
        pass


from .authoring_cli import register as _register_authoring  # noqa: E402  (needs the group above)

_register_authoring(main)
