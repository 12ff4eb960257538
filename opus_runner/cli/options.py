"""Every option more than one command takes, written once, and the one base URL and key
resolution of the commands that talk to the API without a runner (``status``, ``results``,
``audit``).

Each flag has one factory; a command whose flag means a little more (``resume --no-local-plugins``
also skips the journal's plugins) passes its own ``help``. The groups (:func:`spec_options`,
:func:`connection_options`, ...) list their options in the order ``--help`` shows them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
UNTRUSTED_HELP = (
    "For a checkout you do not trust (a pull request): implies --no-local-plugins, ignores the "
    "plugins a resumed run's journal names and the base_url, api_v1_url and plugins_dir of opus-runner.toml, "
    "and says what it ignored."
)
ALLOW_OUTSIDE_ROOT_HELP = (
    "Allow paths outside the project root: file inputs, foreach data, --vars-file, output files and download folders."
)
BASE_URL_HELP = "Opus API base URL [env: OPUS_BASE_URL; default https://operator.opus.com]."
#: Without the default: ``resume`` uses the journal's URL first, the job commands share it.
BASE_URL_ENV_HELP = "Opus API base URL [env: OPUS_BASE_URL]."
PLUGIN_HELP = "Load a plugin module or .py file (repeatable)."
NO_LOCAL_PLUGINS_HELP = "Do not load the project's plugins folder (for untrusted specs)."
VERBOSE_HELP = "Debug logging and HTTP trace (key redacted); tracebacks on errors."


def together(*options: Decorator) -> Decorator:
    """One decorator applying ``options`` so that ``--help`` lists them in the order given."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


# -- one factory per flag ----------------------------------------------------------------------


def verbose_option() -> Decorator:
    return click.option("--verbose", "-v", is_flag=True, help=VERBOSE_HELP)


def quiet_option(help: str = "Only errors and results.") -> Decorator:
    return click.option("--quiet", "-q", is_flag=True, help=help)


#: Every command takes every format, so a CI script can pass one --format to each: github is
#: text plus GitHub Actions annotations where a command has problems or failures to annotate.
FORMATS = ("text", "json", "github")


def format_option(help: str = "json: one JSON object per event line on stdout, for CI; github: as text.") -> Decorator:
    return click.option(
        "--format", "output_format", type=click.Choice(FORMATS), default="text", show_default=True, help=help
    )


#: Where ``--api`` leaves its value (``click.Context.meta`` is shared by the whole command).
API_META = "opus_runner.api"
API_HELP = "The Opus API generation: v0 the Jobs API, v1 the Case API [env: OPUS_API; default: api of opus-runner.toml, else v0]."


def _remember_api(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value:
        ctx.meta[API_META] = value


def api_option() -> Decorator:
    """``--api v0|v1``: not passed to the command, read with :func:`chosen_api` where a client
    or a run is made, so every command with ``--base-url`` has it without a new parameter."""
    return click.option(
        "--api", type=click.Choice(["v0", "v1"]), expose_value=False, callback=_remember_api, help=API_HELP
    )


def chosen_api() -> str | None:
    """The ``--api`` of the command being run, or None when not given."""
    ctx = click.get_current_context(silent=True)
    return ctx.meta.get(API_META) if ctx is not None else None


def base_url_option(help: str = BASE_URL_HELP) -> Decorator:
    """``--base-url`` and, with it, ``--api``: where the API is and which generation it speaks."""
    return together(click.option("--base-url", metavar="URL", help=help), api_option())


def plugin_option(help: str = PLUGIN_HELP) -> Decorator:
    return click.option("--plugin", "plugins", multiple=True, metavar="MODULE", help=help)


def no_local_plugins_option(help: str = NO_LOCAL_PLUGINS_HELP) -> Decorator:
    return click.option("--no-local-plugins", is_flag=True, help=help)


def untrusted_option(help: str = UNTRUSTED_HELP) -> Decorator:
    return click.option("--untrusted", is_flag=True, help=help)


def var_option() -> Decorator:
    return click.option(
        "--var",
        "var",
        multiple=True,
        metavar="KEY=VALUE",
        help="Set a variable the spec declares under vars (repeatable; wins over --vars-file). VALUE reads as YAML: 3 a number, '[eu, us]' a list, '\"3\"' a string, anything else the text.",
    )


def vars_file_option() -> Decorator:
    return click.option("--vars-file", type=click.Path(path_type=Path), metavar="FILE", help="YAML or JSON mapping of template variables; - reads it from standard input.")


def allow_outside_root_option(help: str = ALLOW_OUTSIDE_ROOT_HELP) -> Decorator:
    return click.option("--allow-outside-root", is_flag=True, help=help)


def state_dir_option() -> Decorator:
    return click.option(
        "--state-dir",
        type=click.Path(file_okay=False, path_type=Path),
        help="Journal folder [default: .opus-run in the project root].",
    )


def timeout_option() -> Decorator:
    return click.option("--timeout", metavar="DURATION", help="Give up waiting after this long (45s, 5m, 1h30m).")


def concurrency_option() -> Decorator:
    return click.option("--concurrency", type=click.IntRange(min=1), metavar="N", help="Jobs in flight at once [default: 4].")


# -- the groups --------------------------------------------------------------------------------


def output_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--format (an event stream), --quiet, --verbose: the commands that follow jobs."""
    return together(format_option(), quiet_option(), verbose_option())(func)


def run_output_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """``output_options`` of run, validate, render and resume, whose --format also takes github."""
    return together(
        format_option(
            help="json: one JSON object per event line on stdout, for CI; github: text, with validation "
            "problems and job failures as GitHub Actions annotations on stdout."
        ),
        quiet_option(help="Only errors, results and the totals line."),
        verbose_option(),
    )(func)


def report_options(what: str) -> Decorator:
    """--format (one JSON document of ``what``) and --verbose: the commands that print one report."""
    return together(format_option(help=f"json: {what} as one JSON document on stdout; github: as text."), verbose_option())


def connection_options(func: Callable[..., Any]) -> Callable[..., Any]:
    return together(
        click.option(
            "--sandbox-workflows",
            type=click.Path(dir_okay=False, path_type=Path),
            help="Fixture file of the --sandbox's workflows [default: sandbox_workflows of opus-runner.toml, else the built-in demo workflows].",
        ),
        click.option("--sandbox", is_flag=True, help="Start a local Opus-compatible sandbox for this command and run against it."),
        base_url_option(),
    )(func)


def plugin_options(func: Callable[..., Any]) -> Callable[..., Any]:
    return together(plugin_option(), no_local_plugins_option(), untrusted_option())(func)


def loaded_plugins_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The plugin flags of the commands that only load plugins to show them (plugins, spec-schema)."""
    return together(
        plugin_option(help="Also load this plugin module or .py file."),
        no_local_plugins_option(help="Do not load the project's plugins folder."),
        untrusted_option(help="Do not load the project's plugins folder, nor the plugins_dir of opus-runner.toml."),
    )(func)


def var_options(func: Callable[..., Any]) -> Callable[..., Any]:
    return together(var_option(), vars_file_option(), allow_outside_root_option())(func)


def spec_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """What picks the jobs of a spec: variables, plugins, trust, confinement and the plan filter."""
    return together(
        var_option(),
        vars_file_option(),
        plugin_option(),
        no_local_plugins_option(),
        untrusted_option(),
        allow_outside_root_option(),
        click.option("--limit", type=int, metavar="N", help="Run only the first N jobs of the plan."),
        click.option("--only", multiple=True, metavar="KEY=VALUE", help="Run only jobs whose matrix or row value KEY equals VALUE (repeatable)."),
        click.option("--shard", metavar="K/N", help="Run the K-th of N deterministic shards of the plan."),
    )(func)


def version_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Which version of a workflow ``schema`` and ``init`` read."""
    return together(
        click.option("--version", type=click.IntRange(min=1), metavar="N", help="Use this version number of the workflow [default: the latest active version]."),
        click.option("--version-id", metavar="UUID", help="Use this version uuid of the workflow."),
    )(func)


def schema_source_options(verb: str) -> Decorator:
    """--offline and --locked: where validate and render take the workflow schema from."""
    return together(
        click.option("--offline", is_flag=True, help="Do not contact the API even if a service key is set."),
        click.option("--locked", is_flag=True, help=f"{verb} against opus-runner.lock instead of the live API (no key, no network)."),
    )


# -- where the key goes ------------------------------------------------------------------------


def client_from(base_url: str | None) -> Any:
    """An OpusClient for ``--base-url``, else OPUS_BASE_URL, else the project file's ``base_url``
    (named on stderr when it is not the Opus service), else the service, speaking ``--api``
    (else OPUS_API, else the file's ``api``); the key from OPUS_SERVICE_KEY, or the sentence
    saying how to set it."""
    import os

    from ..api import NO_KEY_MESSAGE, OpusClient
    from ..config import load_project_config
    from ..errors import ConfigError
    from ..progress import printable

    config = load_project_config()
    url, key = config.endpoint(base_url, None, os.environ)
    api = config.dialect(chosen_api(), os.environ)
    if not key:
        raise ConfigError(NO_KEY_MESSAGE)
    notice = None if base_url or os.environ.get("OPUS_BASE_URL") else config.base_url_notice()
    if notice:
        click.echo(printable(notice), err=True)
    return OpusClient(url, key, api=api, v1_url=config.v1_url(base_url, os.environ))


def callback_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """How jobs wait: polling, or callbacks heard by opus-runner's receiver (docs/callbacks.md)."""
    return together(
        click.option(
            "--wait-mode",
            type=click.Choice(["poll", "hybrid", "callback"]),
            help="poll: read statuses on a backoff schedule; hybrid: wake on each job's callback, with a "
            "status read every minute as the safety net; callback: the same, safety read every 10 minutes "
            "[default: hybrid with a receiver, else poll].",
        ),
        click.option(
            "--callback-listen",
            metavar="HOST:PORT",
            help="Serve the callback receiver in this run on HOST:PORT (0: any free port).",
        ),
        click.option(
            "--callback-public-url",
            metavar="URL",
            help="The https URL where Opus reaches the receiver (a server, tunnel or ingress); "
            "without --callback-listen, a receiver that runs elsewhere (opus-run callbacks serve) on the same journal.",
        ),
    )(func)
