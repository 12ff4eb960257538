"""What every command prints besides its results: the logging set-up of --verbose/--quiet, and
errors turned into one line and an exit code, in one place (:func:`handle_errors`). The codes
are those of ``errors.EXIT_CODES`` (the table in docs/cli.md)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click

from ..errors import EXIT_API, EXIT_INTERRUPTED, OpusRunnerError, ValidationFailed


def setup_logging(verbose: bool, quiet: bool = False) -> None:
    import logging
    from ..progress import PrintableFilter
    from ..redact import MaskingFilter

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


def fail(exc: BaseException, *, output_format: str, verbose: bool) -> None:
    """Print one clear error (a traceback only with --verbose) and exit with its code."""
    from .. import redact

    if isinstance(exc, OpusRunnerError):
        code = exc.exit_code
        text = redact.mask(redact.without_userinfo(str(exc)))
    elif isinstance(exc, KeyboardInterrupt):
        # Ctrl-C in a command with no run to save (a look-up, a listing): nothing to resume.
        code, text = EXIT_INTERRUPTED, "interrupted"
    else:
        # Not an error raised on purpose: a bug, reported like a failure outside the runner (3).
        code = EXIT_API
        text = redact.mask(redact.without_userinfo(f"unexpected error: {type(exc).__name__}: {exc}"))
    if verbose:
        import traceback

        sys.stderr.write(redact.mask(redact.without_userinfo("".join(traceback.format_exception(exc)))))
    if output_format == "json":
        data: dict[str, Any] = {"event": "error", "exit_code": code, "message": text}
        if isinstance(exc, ValidationFailed):
            from ..errors import format_key

            data["problems"] = [
                {"file": e.file, "key": format_key(e.key), "line": e.line, "message": e.message} for e in exc.errors
            ]
        # The shared event writer: masked as data, C1 controls escaped, like every event line.
        from ..progress import dumps

        click.echo(dumps(data))
    elif output_format == "github" and isinstance(exc, ValidationFailed):
        # One annotation per problem, on its file and line in the pull request's diff.
        from ..errors import format_key
        from ..progress import annotate

        for e in exc.errors:
            key = format_key(e.key)
            annotate("error", f"{key}: {e.message}" if key else e.message, file=e.file, line=e.line)
    from ..progress import printable

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
            fail(exc, output_format=output_format, verbose=False)
        except Exception as exc:
            fail(exc, output_format=output_format, verbose=verbose)

    return wrapper


def print_notes(report: Any, output_format: str, quiet: bool) -> None:
    """The notes of a dry run, validate or render (checks skipped, and why)."""
    from ..progress import JsonReporter, printable

    for note in report.notes:
        if output_format == "json":
            JsonReporter().message(note)
        elif not quiet:
            click.echo(printable(note, newlines=True), err=True)
