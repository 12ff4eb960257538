"""The one exception tree of opus-runner. Only ``cli/console.py`` turns these into messages and exit codes.

    OpusRunnerError                      exit 1 unless a subclass says otherwise
    ├── UsageError                       2  bad command-line use (``--var`` without ``=``, ...)
    │   └── LockError                    2  opus-runner.lock missing, corrupted or hand-edited
    ├── SpecError                        2  a spec file is malformed (file, key path, line)
    │   └── TemplateError                2  a template failed to render
    ├── ValidationFailed                 2  several SpecErrors found at once (all reported)
    ├── PluginError                      2  a plugin failed to load or registered badly
    ├── PluginTimeout                    1  a hook implementation ran out of time ([timeouts])
    ├── ConfigError                      3  missing or unusable configuration (no service key, ...)
    ├── ApiError                         3  the Opus API answered with an error
    │   ├── AuthError                    3  the service key was rejected
    │   ├── NotFoundError                3  unknown workflow or job
    │   │   └── WorkflowNotFound         3  schema/init named an unknown workflow or version
    │   ├── AnswerTooLarge               3  an answer larger than the client reads (decompressed)
    │   ├── ExecuteOutcomeUnknown        3  execute may or may not have reached the server
    │   │   └── ExecuteNotReceived       3  every attempt ended unclear, and the job shows no input
    │   └── ExecuteRefused               1  the platform refused to execute one job (inside a 2xx too)
    ├── NetworkError                     3  the API could not be reached (after retries)
    │   └── SlowAnswerError              3  an answer missed the whole-answer deadline (not retried)
    ├── JobFailed                        1  a job ended FAILED, CANCELLED or STOPPED
    ├── JobTimedOut                      1  a job did not finish within its timeout
    ├── DeliveryFailed                   1  an output or notifier plugin failed (result kept)
    └── Interrupted                      130  Ctrl-C; state is saved

Each error carries its context as attributes (``file``, ``key``, ``line``, ``job_id``,
``status_code``...) so callers can inspect it; ``str(error)`` is the one sentence shown to users.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path


class OpusRunnerError(Exception):
    """Base of every error opus-runner raises on purpose."""

    exit_code: int = 1


class UsageError(OpusRunnerError):
    exit_code = 2


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

    exit_code = 2

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

    exit_code = 2

    def __init__(self, errors: Iterable[SpecError]) -> None:
        self.errors: list[SpecError] = list(errors)
        n = len(self.errors)
        head = f"{n} problem{'s' if n != 1 else ''} found:"
        super().__init__("\n".join([head, *(f"  - {e}" for e in self.errors)]))


class PluginError(OpusRunnerError):
    """A plugin failed to import, or registered something invalid. ``plugin`` names it."""

    exit_code = 2

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
    exit_code = 3


class ApiError(OpusRunnerError):
    """The Opus API answered with an error. ``message`` quotes the server's own words."""

    exit_code = 3

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


class WorkflowNotFound(NotFoundError):
    """``opus-run schema``/``init`` named a workflow (or version) the API does not know.

    Its text is the one sentence given, without the HTTP call a generic ApiError names.
    """

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

    exit_code = 1

    def __str__(self) -> str:
        return self.message


class AnswerTooLarge(ApiError):
    """The answer was larger than the client reads (``max_answer_bytes``, after decompression)."""


class NetworkError(OpusRunnerError):
    exit_code = 3


class SlowAnswerError(NetworkError):
    """A call whose answer missed the deadline: the server is up but unusably slow.

    Not ``transient``: the runner's patient loops do not keep asking a server that trickles.
    """

    transient = False


class JobFailed(OpusRunnerError):
    exit_code = 1

    def __init__(self, message: str, *, job_id: str | None = None, status: str | None = None):
        self.job_id = job_id
        self.status = status
        super().__init__(message)


class JobTimedOut(JobFailed):
    pass


class DeliveryFailed(OpusRunnerError):
    """An output or notifier plugin raised; the result itself is safe in the journal."""

    exit_code = 1

    def __init__(self, message: str, *, plugin: str | None = None, job_id: str | None = None):
        self.plugin = plugin
        self.job_id = job_id
        super().__init__(message)


class Interrupted(OpusRunnerError):
    exit_code = 130
