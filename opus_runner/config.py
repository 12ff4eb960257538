"""Project configuration: ``opus-runner.toml`` or ``[tool.opus-runner]`` in ``pyproject.toml``.

Found by walking up from the spec's folder (or the current folder, for commands without a spec).
One rule gives the *project root*: the folder holding the project file, else the git root, else
the folder the search began in. Everything that depends on where the project is follows it: the
journal (``state_dir``), the plugins folder (``plugins_dir``), the confinement of every path a
spec reads or writes, and the default ``sandbox_workflows``.

A project file comes with the checkout, so a pull request can change it. Two of its settings
could hand the service key to someone else or run code: ``base_url`` (where the key is sent)
and ``plugins_dir`` (Python files that are imported). ``--untrusted`` drops them
(:meth:`ProjectConfig.for_untrusted`); without it, a ``base_url`` that is not the Opus service is
named before anything else is printed (:meth:`ProjectConfig.base_url_notice`). The other keys
are kept: ``outputs``, ``notify`` and ``callback_url`` say where results go, which a spec can
say itself (never the key), and ``state_dir``, ``concurrency`` and ``sandbox_workflows`` neither
send anything nor run code.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .callbacks.tokens import ReceiverSettings
from .errors import ConfigError

DEFAULT_BASE_URL = "https://operator.opus.com"
CONFIG_FILE = "opus-runner.toml"
#: The generations of the Opus API a project can speak (``api``, ``--api``, ``OPUS_API``):
#: v0 the Jobs API, v1 the Case API (docs/api-dialects.md).
API_NAMES = ("v0", "v1")
DEFAULT_API = "v0"
#: Where the Case API lives under the base URL unless ``api_v1_url`` says otherwise.
V1_PATH = "/api/v1"
#: The project-file settings ``--untrusted`` ignores: where the key goes, and code to import.
UNTRUSTED_KEYS = ("base_url", "api_v1_url", "plugins_dir")
_KNOWN_KEYS = {
    "api",
    "api_v1_url",
    "base_url",
    "plugins_dir",
    "state_dir",
    "concurrency",
    "outputs",
    "notify",
    "sandbox_workflows",
    "callback_url",
    "callback",
    "wait",
    "timeouts",
    "temporal",
}
# Limits on what one spec may make the runner do (docs/spec.md, "Limits").
_KNOWN_KEYS |= {"template_budget"}


@dataclass(frozen=True)
class Timeouts:
    """``[timeouts]``: seconds before the runner gives up on a server answer or on plugin code.

    ``read``: one read or connect of an HTTP exchange; ``request``: a whole exchange, answer
    read to its end; ``outputs``, ``notify``, ``hooks``: one call of an output handler, a
    notifier, a hook implementation (``opus_payload_ready``, ``opus_job_event``...).
    """

    read: float = 30.0
    request: float = 60.0
    outputs: float = 60.0
    notify: float = 10.0
    hooks: float = 30.0


def _timeouts(file: Path, table: Any) -> Timeouts:
    from .durations import DURATION_HELP, parse_duration

    if table is None:
        return Timeouts()
    known = [f.name for f in dataclasses.fields(Timeouts)]
    if not isinstance(table, dict):
        raise ConfigError(f"{file}: timeouts must be a table such as [timeouts] outputs = \"60s\"")
    values: dict[str, float] = {}
    for key, value in table.items():
        if key not in known:
            raise ConfigError(f"{file}: unknown setting timeouts.{key}; known: {', '.join(known)}")
        try:
            values[key] = parse_duration(value)
        except ValueError:
            values[key] = 0.0
        if values[key] <= 0:
            raise ConfigError(f"{file}: timeouts.{key} must be {DURATION_HELP}, above zero; found {value!r}")
    return Timeouts(**values)


@dataclass(frozen=True)
class ProjectConfig:
    """Settings from the project file, with paths resolved against the project root."""

    root: Path  # the project root: the project file's folder, else the git root, else ``start``
    start: Path  # where the search began (the spec's folder, or the current folder)
    file: Path | None = None  # the file the settings came from
    base_url: str | None = None
    #: ``api``: the generation of the Opus API the project speaks (None: v0)
    api: str | None = None
    #: ``api_v1_url``: where the Case API lives (None: ``{base_url}/api/v1``)
    api_v1_url: str | None = None
    plugins_dir: Path | None = None
    state_dir: Path | None = None
    concurrency: int | None = None
    outputs: list[dict[str, Any]] = field(default_factory=list)
    notify: list[dict[str, Any]] = field(default_factory=list)
    sandbox_workflows: Path | None = None
    #: the receiver Opus POSTs to when a spec names none (callback.url wins)
    callback_url: str | None = None
    #: ``[callback] listen / public_url``: opus-runner's receiver for every run of the project
    receiver: ReceiverSettings = field(default_factory=lambda: ReceiverSettings())
    #: ``[wait] mode``: how jobs wait when their spec does not say
    wait_mode: str | None = None
    timeouts: Timeouts = field(default_factory=Timeouts)
    #: CPU seconds one template value may take to render; None: the default (2 s)
    template_budget: float | None = None
    #: ``[temporal] address / namespace / task_queue``: where the project's engine runs are
    temporal: dict[str, str] = field(default_factory=dict)

    @property
    def repo_root(self) -> Path:
        """The folder file inputs must stay inside (SPEC.md section 1): the project root."""
        return self.root

    @property
    def root_reason(self) -> str:
        """Why :attr:`root` is the project root, in words, for messages."""
        if self.file is not None:
            from .paths import display_path

            return f"it holds {display_path(self.file)}"
        if (self.root / ".git").exists():
            return "it is the git root (no opus-runner.toml above the spec)"
        return "it is the spec's folder (no opus-runner.toml above it, not in a git repository)"

    def for_untrusted(self) -> tuple[ProjectConfig, list[str]]:
        """This configuration without :data:`UNTRUSTED_KEYS`, and what was dropped, in words
        (``base_url = 'https://x'``), for the message saying so."""
        from .urls import display_url

        dropped = []
        if self.base_url is not None:
            dropped.append(f"base_url = {display_url(self.base_url)!r}")
        if self.api_v1_url is not None:
            dropped.append(f"api_v1_url = {display_url(self.api_v1_url)!r}")
        if self.plugins_dir is not None:
            dropped.append(f"plugins_dir = {_shown(self.plugins_dir, self.root)!r}")
        return replace(self, base_url=None, api_v1_url=None, plugins_dir=None), dropped

    def endpoint(
        self, base_url: str | None, service_key: str | None, environ: Mapping[str, str]
    ) -> tuple[str, str | None]:
        """``(base URL, key)`` a command talks to: what the command line (or the library call)
        gives, else ``OPUS_BASE_URL`` / ``OPUS_SERVICE_KEY``, else this file's ``base_url``, else
        the Opus service; the key may be None (the caller says how to set it)."""
        url = base_url or environ.get("OPUS_BASE_URL") or self.base_url or DEFAULT_BASE_URL
        return url, service_key or environ.get("OPUS_SERVICE_KEY") or None

    def dialect(self, api: str | None, environ: Mapping[str, str]) -> str:
        """The API generation a command speaks: ``api`` (``--api``), else ``OPUS_API``, else this
        file's ``api``, else v0; one sentence naming where a wrong value came from."""
        for value, where in ((api, "--api"), (environ.get("OPUS_API"), "OPUS_API")):
            if value:
                return _api_name(value, where)
        return self.api or DEFAULT_API

    def v1_url(self, base_url: str | None, environ: Mapping[str, str]) -> str | None:
        """This file's ``api_v1_url``, unless the base URL comes from elsewhere (``--base-url``,
        ``OPUS_BASE_URL``): the Case API is then looked for under that base URL."""
        if base_url or environ.get("OPUS_BASE_URL"):
            return None
        return self.api_v1_url

    def base_url_notice(self) -> str | None:
        """The sentence that names this file's ``base_url`` (and ``api_v1_url``) when it is not
        the Opus service, or None (neither set, or the service's own)."""
        from .urls import display_url

        from .paths import display_path

        named = [
            f"{key} {display_url(url)}"
            for key, url in (("base_url", self.base_url), ("api_v1_url", self.api_v1_url))
            if url is not None and not is_opus_service(url)
        ]
        if not named:
            return None
        where = display_path(self.file) if self.file is not None else "the project file"
        return (
            f"using {' and '.join(named)} from {where}, not the Opus service: "
            "the service key is sent there (--untrusted ignores it)"
        )


def _api_name(value: Any, where: str) -> str:
    if value not in API_NAMES:
        raise ConfigError(
            f"{where}: api must be \"v0\" (the Jobs API, the default) or \"v1\" (the Case API), "
            f"found {value!r}"
        )
    return str(value)


def is_opus_service(url: str) -> bool:
    """Whether ``url`` points at the Opus service itself (its host over https), whatever the path."""
    official = urlsplit(DEFAULT_BASE_URL)
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return False
    return parts.scheme.lower() == "https" and parts.hostname == official.hostname and port in (None, 443)


def _shown(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def find_git_root(start: Path) -> Path | None:
    """The nearest folder from ``start`` up holding ``.git`` (a folder, or a worktree's file)."""
    for folder in (start, *start.parents):
        if (folder / ".git").exists():
            return folder
    return None


def _read_toml(path: Path) -> dict[str, Any]:
    import tomllib

    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the project file: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def _settings_in(folder: Path) -> tuple[Path, dict[str, Any]] | None:
    own = folder / CONFIG_FILE
    if own.is_file():
        return own, _read_toml(own)
    pyproject = folder / "pyproject.toml"
    if pyproject.is_file():
        table = _read_toml(pyproject).get("tool", {}).get("opus-runner")
        if isinstance(table, dict):
            return pyproject, table
    return None


@lru_cache(maxsize=64)
def _load_cached(start: Path, stamp: tuple[tuple[str, int, int], ...], git_root: Path | None) -> ProjectConfig:
    for folder in (start, *start.parents):
        found = _settings_in(folder)
        if found is not None:
            return _parse(folder, start, *found)
    return ProjectConfig(root=git_root or start, start=start)


def load_project_config(start: str | Path | None = None) -> ProjectConfig:
    """The project configuration governing ``start`` (a folder; default: the current folder),
    with its project root (see the module docstring)."""
    folder = Path(start if start is not None else os.getcwd()).resolve()
    if folder.is_file():
        folder = folder.parent
    return _load_cached(folder, _stamp(folder), find_git_root(folder))


def _stamp(folder: Path) -> tuple[tuple[str, int, int], ...]:
    """The candidate project files from ``folder`` up, as they are now: a file edited (or
    added) since the last load is read again, by a long-lived process or a test alike."""
    found = []
    for parent in (folder, *folder.parents):
        for name in (CONFIG_FILE, "pyproject.toml"):
            try:
                st = (parent / name).stat()
            except OSError:
                continue
            found.append((str(parent / name), st.st_mtime_ns, st.st_size))
            if name == CONFIG_FILE:
                return tuple(found)  # the nearest opus-runner.toml wins over every folder above
    return tuple(found)


def _parse(root: Path, start: Path, file: Path, table: dict[str, Any]) -> ProjectConfig:
    import difflib

    for key in table:
        if key not in _KNOWN_KEYS:
            close = difflib.get_close_matches(key, sorted(_KNOWN_KEYS), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(sorted(_KNOWN_KEYS))}"
            raise ConfigError(f"{file}: unknown setting {key!r}{hint}")

    def path_of(key: str) -> Path | None:
        value = table.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{file}: {key} must be a path string, found {value!r}")
        return (root / value).resolve()

    concurrency = table.get("concurrency")
    if concurrency is not None and (
        isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1
    ):
        raise ConfigError(f"{file}: concurrency must be a positive integer, found {concurrency!r}")
    for key in ("outputs", "notify"):
        entries = table.get(key, [])
        if not isinstance(entries, list) or not all(
            isinstance(e, dict) and isinstance(e.get("type"), str) for e in entries
        ):
            raise ConfigError(f"{file}: {key} must be a list of tables, each with a 'type'")
    base_url = table.get("base_url")
    if base_url is not None and not isinstance(base_url, str):
        raise ConfigError(f"{file}: base_url must be a string, found {base_url!r}")
    if base_url is not None:
        from .redact import register_url_credentials

        register_url_credentials(base_url)  # masked from the moment it is read
    api = _api_name(table["api"], str(file)) if table.get("api") is not None else None
    api_v1_url = table.get("api_v1_url")
    if api_v1_url is not None and (not isinstance(api_v1_url, str) or not api_v1_url.startswith(("https://", "http://"))):
        raise ConfigError(
            f"{file}: api_v1_url must be the http(s) URL the Case API lives at (like "
            f"https://operator.opus.com/api/v1), found {api_v1_url!r}; remove it to use base_url + /api/v1"
        )
    if api_v1_url is not None:
        from .redact import register_url_credentials

        register_url_credentials(api_v1_url)
    callback_url = table.get("callback_url")
    if callback_url is not None and (not isinstance(callback_url, str) or not callback_url.startswith("https://")):
        raise ConfigError(
            f"{file}: callback_url must be an https URL that Opus can reach, found {callback_url!r}; "
            "remove it to send the never-resolving placeholder"
        )
    template_budget = _template_budget(file, table.get("template_budget"))
    receiver = _receiver(file, table.get("callback"))
    if receiver and callback_url is not None:
        raise ConfigError(
            f"{file}: callback_url (your own receiver) and the [callback] table (opus-runner's) "
            "cannot both be set: Opus POSTs each job's callback to one URL"
        )
    return ProjectConfig(
        root=root,
        start=start,
        file=file,
        base_url=base_url,
        api=api,
        api_v1_url=api_v1_url.rstrip("/") if api_v1_url else None,
        plugins_dir=path_of("plugins_dir"),
        state_dir=path_of("state_dir"),
        concurrency=concurrency,
        outputs=list(table.get("outputs", [])),
        notify=list(table.get("notify", [])),
        sandbox_workflows=path_of("sandbox_workflows"),
        callback_url=callback_url,
        receiver=receiver,
        wait_mode=_wait_mode(file, table.get("wait")),
        timeouts=_timeouts(file, table.get("timeouts")),
        template_budget=template_budget,
        temporal=_temporal(file, table.get("temporal")),
    )


#: the settings of ``[temporal]``
TEMPORAL_KEYS = ("address", "namespace", "task_queue")


def _temporal(file: Path, table: Any) -> dict[str, str]:
    """``[temporal]``: ``address = "HOST:PORT"``, ``namespace``, ``task_queue`` (docs/scale-out.md)."""
    if table is None:
        return {}
    if not isinstance(table, dict):
        raise ConfigError(f'{file}: temporal must be a table such as [temporal] address = "temporal.internal:7233"')
    unknown = sorted(set(table) - set(TEMPORAL_KEYS))
    if unknown:
        raise ConfigError(f"{file}: unknown setting temporal.{unknown[0]}; known: {', '.join(TEMPORAL_KEYS)}")
    for key, value in table.items():
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{file}: temporal.{key} must be a non-empty string, found {value!r}")
    return {key: str(value) for key, value in table.items()}


def _receiver(file: Path, table: Any) -> ReceiverSettings:
    """``[callback]``: ``listen = "HOST:PORT"``, ``public_url = "https://..."``."""
    from .callbacks.tokens import parse_listen, public_url_problem

    if table is None:
        return ReceiverSettings()
    if not isinstance(table, dict):
        raise ConfigError(f'{file}: callback must be a table such as [callback] listen = "127.0.0.1:8787"')
    unknown = sorted(set(table) - {"listen", "public_url"})
    if unknown:
        raise ConfigError(f"{file}: unknown setting callback.{unknown[0]}; known: listen, public_url")
    listen = None
    if "listen" in table:
        try:
            listen = parse_listen(table["listen"])
        except ValueError as exc:
            raise ConfigError(f"{file}: callback.listen {exc}") from None
    public_url = table.get("public_url")
    if public_url is not None:
        problem = public_url_problem(public_url)
        if problem:
            raise ConfigError(f"{file}: callback.public_url {problem}")
    return ReceiverSettings(listen, public_url)


def _wait_mode(file: Path, table: Any) -> str | None:
    """``[wait] mode = "poll" | "hybrid" | "callback"``."""
    if table is None:
        return None
    modes = ("poll", "hybrid", "callback")
    if not isinstance(table, dict) or set(table) - {"mode"}:
        raise ConfigError(f'{file}: wait must be a table with one setting, mode, such as [wait] mode = "hybrid"')
    mode = table.get("mode")
    if mode not in modes:
        raise ConfigError(f"{file}: wait.mode must be one of {', '.join(modes)}, found {mode!r}")
    return str(mode)


def _template_budget(file: Path, value: Any) -> float | None:
    from .durations import parse_duration

    if value is None:
        return None
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise ConfigError(f"{file}: template_budget: {exc}") from None
    if seconds <= 0:
        raise ConfigError(f"{file}: template_budget must be more than 0 seconds, found {value!r}")
    return seconds


def default_plugins_dir(config: ProjectConfig) -> Path:
    return config.plugins_dir or (config.root / "plugins")


def default_state_dir(config: ProjectConfig) -> Path:
    return config.state_dir or (config.root / ".opus-run")
