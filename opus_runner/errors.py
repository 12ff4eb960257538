"""The one exception tree of opus-runner, and the one table of exit codes (:data:`EXIT_CODES`).

Only ``cli/console.py`` turns these errors into messages and exit codes; ``docs/cli.md``
prints :data:`EXIT_CODES` (``tools/gen_cli_docs.py``), so the table users read is this one.

    OpusRunnerError                      exit 1 unless a subclass says otherwise
    ├── UsageError                       2  bad command-line use (``--var`` without ``=``, ...)
    │   └── LockError                    2  opus-runner.lock missing, corrupted or hand-edited
    ├── SpecError                        2  a spec file is malformed (file, key path, line)
    │   └── TemplateError                2  a template failed to render
    ├── ValidationFailed                 2  several SpecErrors found at once (all reported)
    ├── PluginError                      2  a plugin failed to load or registered badly
    ├── PluginTimeout                    1  a hook implementation ran out of time ([timeouts])
    ├── ConfigError                      2  missing or unusable configuration (opus-runner.toml,
    │                                       no service key, the state folder, a sandbox fixture)
    ├── ApiError                         3  the Opus API answered with an error
    │   ├── AuthError                    3  the service key was rejected
    │   ├── NotFoundError                3  the API lost a workflow, job or file it named itself
    │   │   ├── WorkflowNotFound         2  the command named an unknown workflow or version
    │   │   └── JobNotFound              2  the command named a job id the API does not know
    │   ├── RouteMissing                 3  the server has no such route (a base URL without v1)
    │   ├── AnswerTooLarge               3  an answer larger than the client reads (decompressed)
    │   ├── ExecuteOutcomeUnknown        3  execute may or may not have reached the server
    │   │   └── ExecuteNotReceived       3  every attempt ended unclear, and the job shows no input
    │   └── ExecuteRefused               1  the platform refused to execute one job (inside a 2xx too)
    ├── NetworkError                     3  the API could not be reached (after retries)
    │   ├── SlowAnswerError              3  an answer missed the whole-answer deadline (not retried)
    │   └── TlsError                     3  the TLS handshake failed (a certificate): not retried
    ├── JobFailed                        1  a job ended FAILED, CANCELLED or STOPPED
    ├── JobTimedOut                      1  a job did not finish within its timeout
    ├── JobNotFinished                   4  ``status``/``results`` of a job still running
    ├── DeliveryFailed                   1  an output or notifier plugin failed (result kept)
    └── Interrupted                      130  Ctrl-C; state is saved (143/129: SIGTERM/SIGHUP)

Each error carries its context as attributes (``file``, ``key``, ``line``, ``job_id``,
``status_code``...) so callers can inspect it; ``str(error)`` is the one sentence shown to users.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

#: Every job completed; every check passed; the command did what it was asked.
EXIT_OK = 0
#: A job failed, was cancelled or timed out, or an output, notifier or hook failed.
EXIT_FAILED = 1
#: The input is wrong (usage, spec, configuration, an unknown workflow or job): nothing was submitted.
EXIT_USAGE = 2
#: The API answered with an error, refused the key, or could not be reached.
EXIT_API = 3
#: ``status``/``results`` of a job that has not finished: no outcome to report yet.
EXIT_NOT_FINISHED = 4
#: Ctrl-C (SIGINT); a stop signal exits ``128 + signal``, as shells report it.
EXIT_INTERRUPTED = 130


#: The commands that talk to the API (what exit 3 can come from).
API_COMMANDS = (
    "run", "validate", "render", "resume", "rerun", "schema", "init", "lock", "drift", "status", "results", "audit",
    "wait", "jobs", "workflows", "submit",
)
#: The commands that talk to a durable engine (Temporal): they exit 3 when it cannot be reached.
ENGINE_COMMANDS = ("submit", "worker", "cancel")


@dataclass(frozen=True)
class ExitCode:
    """One row of the exit-code table: ``code`` as printed, what it means, and the commands that
    exit with it: ``commands``, or every command but those in ``unless`` when ``commands`` is None."""

    code: str
    meaning: str
    commands: tuple[str, ...] | None = None
    unless: tuple[str, ...] = ()

    def names(self) -> str:
        """The commands column: ``every command``, ``every command but `x```, or a list."""
        if self.commands is None:
            but = ", ".join(f"`{name}`" for name in self.unless)
            return f"every command but {but}" if but else "every command"
        return ", ".join(f"`{name}`" for name in self.commands)


#: The table every command honours, printed in docs/cli.md; tests/test_exit_codes.py drives each
#: row for each command it names.
EXIT_CODES: tuple[ExitCode, ...] = (
    ExitCode(
        str(EXIT_OK),
        "Success: every job completed; every check passed (`validate`; `drift`: nothing breaks a spec); "
        "a `--dry-run` or `--no-wait` did what it was asked; `submit` started the run (or found it started); "
        "`cancel` told the run to stop; `sandbox`, `callbacks serve` or `worker` stopped with Ctrl-C.",
    ),
    ExitCode(
        str(EXIT_FAILED),
        "A job failed, was cancelled or timed out, or an output, notifier or hook failed or overran its time "
        "limit (the result is kept in the journal); `drift`: a workflow change breaks a spec.",
        ("run", "resume", "rerun", "status", "results", "wait", "drift"),
    ),
    ExitCode(
        str(EXIT_USAGE),
        "The input is wrong and nothing was submitted: usage, spec, template or validation error; a workflow, "
        "version or job id the API does not know; `opus-runner.toml`, the service key missing, an unusable "
        "state folder; a plugin that fails to load; a missing, outdated or edited `opus-runner.lock`.",
    ),
    ExitCode(
        str(EXIT_API),
        "API, auth or network error: the service answered with an error or rejected the key, or could not be "
        "reached after retries (a TLS certificate error fails at once: it is not retried); for `submit`, `worker` "
        "and `cancel`, the Temporal server could not be reached. Any command exits 3 "
        "on an unexpected error too (a bug: run again with `--verbose` and report the traceback).",
        tuple(dict.fromkeys(API_COMMANDS + ENGINE_COMMANDS)),
    ),
    ExitCode(
        str(EXIT_NOT_FINISHED),
        "The job (`status RUN`: a job of the run) has not finished yet (`PENDING`, `IN_PROGRESS`, `WAITING`...): "
        "no outcome to report; ask again later (`wait`: its `--timeout` passed first).",
        ("status", "results", "wait"),
    ),
    ExitCode(
        str(EXIT_INTERRUPTED),
        "Interrupted (Ctrl-C). `run`, `resume` and `rerun` keep every job's state in the journal, and the message says "
        "how to finish the run with `opus-run resume`.",
        # Ctrl-C is how these stop (exit 0), or they end before it can come (report reads only
        # the local journal; interrupted all the same, it exits 130).
        unless=("sandbox", "callbacks", "worker", "help", "version", "report"),
    ),
    ExitCode(
        "143 / 129",
        "Stopped by SIGTERM (what CI sends when it cancels a job) or SIGHUP: the same as Ctrl-C, resume hint "
        "included.",
        ("run", "resume", "rerun"),
    ),
)


class OpusRunnerError(Exception):
    """Base of every error opus-runner raises on purpose."""

    exit_code: int = EXIT_FAILED


class UsageError(OpusRunnerError):
    exit_code = EXIT_USAGE


class LockError(UsageError):
    """``opus-runner.lock`` is missing, unreadable, of the wrong shape or edited by hand.

    ``path`` is the lock file; ``entry`` the workflow key of the faulty entry, when one is to blame.
    """

    def __init__(self, message: str, *, path: Path, entry: str | None = None) -> None:
        self.path = path
        self.entry = entry
        super().__init__(message)


def format_key(path: Sequence[str | int]) -> str:
    """Render a key path like ``inputs.Budget`` or ``outputs[0].path``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


class SpecError(OpusRunnerError):
    """Something in one spec file is wrong.

    ``file`` is the spec path, ``key`` the key path inside it (a tuple of keys and list
    indexes), ``line`` the 1-based line in a YAML/JSON file when known.
    """

    exit_code = EXIT_USAGE

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        key: Sequence[str | int] = (),
        line: int | None = None,
    ) -> None:
        self.message = message
        self.file = str(file) if file is not None else None
        self.key = tuple(key)
        self.line = line
        super().__init__(self.__str__())

    @property
    def location(self) -> str:
        where = self.file or ""
        if where and self.line:
            where += f":{self.line}"
        key = format_key(self.key)
        if key:
            where = f"{where}: {key}" if where else key
        return where

    def __str__(self) -> str:
        where = self.location
        return f"{where}: {self.message}" if where else self.message


class TemplateError(SpecError):
    """A Jinja template in a spec failed to parse or render."""


class ValidationFailed(OpusRunnerError):
    """Every problem found in one pass, so users fix them all at once."""

    exit_code = EXIT_USAGE

    def __init__(self, errors: Iterable[SpecError]) -> None:
        self.errors: list[SpecError] = list(errors)
        n = len(self.errors)
        head = f"{n} problem{'s' if n != 1 else ''} found:"
        super().__init__("\n".join([head, *(f"  - {e}" for e in self.errors)]))


class PluginError(OpusRunnerError):
    """A plugin failed to import, or registered something invalid. ``plugin`` names it."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, *, plugin: str | None = None) -> None:
        self.plugin = plugin
        super().__init__(f"plugin {plugin}: {message}" if plugin else message)


class PluginTimeout(OpusRunnerError):
    """A plugin's hook implementation did not finish within its time limit (``[timeouts]``).

    Like a failing output it costs exit 1, not the run: results already in the journal stay.
    """

    def __init__(self, message: str, *, plugin: str, hook: str, seconds: float) -> None:
        self.plugin, self.hook, self.seconds = plugin, hook, seconds
        super().__init__(message)


class ConfigError(OpusRunnerError):
    """The configuration is missing or unusable: ``opus-runner.toml``, the service key, the state
    folder, a sandbox fixture. The user's to fix, like a spec error: nothing was submitted."""

    exit_code = EXIT_USAGE


class ApiError(OpusRunnerError):
    """The Opus API answered with an error. ``message`` quotes the server's own words."""

    exit_code = EXIT_API

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        method: str | None = None,
        endpoint: str | None = None,
        job_id: str | None = None,
    ) -> None:
        self.message = message
        self.status_code = status_code
        self.method = method
        self.endpoint = endpoint
        self.job_id = job_id
        super().__init__(self.__str__())

    def __str__(self) -> str:
        call = f"{self.method} {self.endpoint}" if self.method and self.endpoint else self.endpoint
        prefix = f"{call} failed" if call else "the Opus API failed"
        if self.status_code and f"HTTP {self.status_code}" not in self.message:
            prefix += f" with HTTP {self.status_code}"
        return f"{prefix}: {self.message}"


class AuthError(ApiError):
    pass


class NotFoundError(ApiError):
    pass


class RouteMissing(ApiError):
    """The server answered 404 for the route itself (NestJS's ``Cannot GET /path``), not for
    what the route names: the base URL does not serve that API (a v1 route on a server
    without the Case API). Not a :class:`NotFoundError`: no workflow or job is unknown."""


class WorkflowNotFound(NotFoundError):
    """``opus-run schema``/``init`` named a workflow (or version) the API does not know.

    The user's input is wrong, as when a spec names it (exit 2 in ``run`` too). Its text is the
    one sentence given, without the HTTP call a generic ApiError names.
    """

    exit_code = EXIT_USAGE

    def __str__(self) -> str:
        return self.message


class JobNotFound(NotFoundError):
    """``opus-run status``/``results``/``audit`` named a job id the API does not know (exit 2).

    Its text is the one sentence given (the id, where it was looked for, what to check).
    """

    exit_code = EXIT_USAGE

    def __str__(self) -> str:
        return self.message


class ExecuteOutcomeUnknown(ApiError):
    """Execute was sent but its answer was lost and the job's status does not show it running.

    It is never resent automatically; ``opus-run resume`` looks again later. ``answered`` is
    True when an HTTP answer did come (a 429 or 5xx: that request is over), False when none
    came (the request may still arrive).
    """

    answered: bool = False


class ExecuteNotReceived(ExecuteOutcomeUnknown):
    """Every attempt at execute ended unclear, and the job still shows no input: sending it
    again later is safe (the runner does, for as long as the job's wait allows)."""


class ExecuteRefused(ApiError):
    """The platform answered execute with a refusal: an error status, or a 2xx whose body says
    it failed (an inner ``statusCode >= 400``, an ``error`` object, ``success: false``).

    The job was not started; it is that job's failure (exit 1), not the whole run's, and it is
    never resent blindly. Its text is the one sentence given (it names the job and the status).
    """

    exit_code = EXIT_FAILED

    def __str__(self) -> str:
        return self.message


class AnswerTooLarge(ApiError):
    """The answer was larger than the client reads (``max_answer_bytes``, after decompression)."""


class NetworkError(OpusRunnerError):
    exit_code = EXIT_API


class SlowAnswerError(NetworkError):
    """A call whose answer missed the deadline: the server is up but unusably slow.

    Not ``transient``: the runner's patient loops do not keep asking a server that trickles.
    """

    transient = False


class TlsError(NetworkError):
    """The TLS handshake failed: a certificate that does not verify, or no TLS at that address.

    Not ``transient``, and never retried: a certificate does not fix itself between attempts.
    """

    transient = False


class JobFailed(OpusRunnerError):
    exit_code = EXIT_FAILED

    def __init__(self, message: str, *, job_id: str | None = None, status: str | None = None):
        self.job_id = job_id
        self.status = status
        super().__init__(message)


class JobTimedOut(JobFailed):
    pass


class JobNotFinished(OpusRunnerError):
    """``status``/``results`` of a job that is still running: there is no outcome yet (exit 4).

    ``status`` is the job's current status; the text says it and how to look again.
    """

    exit_code = EXIT_NOT_FINISHED

    def __init__(self, message: str, *, job_id: str, status: str) -> None:
        self.job_id = job_id
        self.status = status
        super().__init__(message)


class DeliveryFailed(OpusRunnerError):
    """An output or notifier plugin raised; the result itself is safe in the journal."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, *, plugin: str | None = None, job_id: str | None = None):
        self.plugin = plugin
        self.job_id = job_id
        super().__init__(message)


class Interrupted(OpusRunnerError):
    exit_code = EXIT_INTERRUPTED
