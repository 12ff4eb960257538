"""What a run can be told (:class:`RunOptions`), and what of it the journal keeps for resume."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any


@dataclass
class RunOptions:
    """Everything a run can be told; the CLI fills it from its options, library users directly."""

    specs: Sequence[str | Path] = ()
    mode: str = "run"  # run | validate | render
    var: Sequence[str] = ()  # "KEY=VALUE"
    vars_file: str | Path | None = None  # "-": read the mapping from standard input
    #: what ``vars_file="-"`` read (the session fills it in), kept so a resume has it
    vars_stdin: Mapping[str, Any] | None = None
    vars: Mapping[str, Any] | None = None  # library users: variables as a mapping (wins over var)
    base_url: str | None = None
    api: str | None = None  # "v0" | "v1": the Opus API generation (default: OPUS_API, api of opus-runner.toml, v0)
    service_key: str | None = None  # default: $OPUS_SERVICE_KEY
    sandbox: bool = False
    sandbox_workflows: str | Path | None = None
    dry_run: bool = False
    no_wait: bool = False
    concurrency: int | None = None
    timeout: str | float | None = None
    output_format: str = "text"
    quiet: bool = False
    verbose: bool = False
    plugins: Sequence[str] = ()
    no_local_plugins: bool = False
    #: a checkout you do not trust (a pull request): no local plugins, none recorded in the
    #: journal, and no project-file setting that could send the key elsewhere or run code
    untrusted: bool = False
    state_dir: str | Path | None = None
    allow_outside_root: bool = False
    keep_going: bool = False
    limit: int | None = None
    only: Sequence[str] = ()
    shard: str | None = None
    offline: bool = False  # validate/render: never contact the API even if a key is set
    locked: bool = False  # validate/render against opus-runner.lock: no key, no network
    environ: Mapping[str, str] | None = None  # default: os.environ
    retry: Any = None  # a client.RetryPolicy (library users and tests); default policy otherwise
    replan: bool = False  # resume: plan jobs never started from files that changed since the run began
    wait_mode: str | None = None  # poll | hybrid | callback (wins over the spec's wait.mode)
    callback_listen: str | None = None  # "HOST:PORT": serve the callback receiver in the run
    callback_public_url: str | None = None  # where Opus reaches the receiver

    def to_record(self) -> dict[str, Any]:
        """What the journal keeps of the options, to resume with the same settings."""
        return {
            "specs": [str(s) for s in self.specs],
            "var": list(self.var),
            "vars_file": str(self.vars_file) if self.vars_file else None,
            "vars_stdin": dict(self.vars_stdin) if self.vars_stdin is not None else None,
            "vars": dict(self.vars) if self.vars else None,
            "base_url": self.base_url,
            "api": self.api,
            "sandbox": self.sandbox,
            "no_wait": self.no_wait,
            "timeout": self.timeout,
            "plugins": list(self.plugins),
            "no_local_plugins": self.no_local_plugins,
            "untrusted": self.untrusted,
            "allow_outside_root": self.allow_outside_root,
            "only": list(self.only),
            "shard": self.shard,
            "limit": self.limit,
            "wait_mode": self.wait_mode,
            "callback_listen": self.callback_listen,
            "callback_public_url": self.callback_public_url,
        }

    def from_record(self, recorded: Mapping[str, Any], *, run_id: str) -> ResumedOptions:
        """These (the resume command line's) options completed by what run ``run_id`` recorded.

        The command line wins. A journal comes with the checkout like any file, so with
        --no-local-plugins (and --untrusted) the plugins it names are not imported, and with
        --untrusted neither its base URL nor its --allow-outside-root is taken; what is left out
        is said, in :attr:`ResumedOptions.ignored`.
        """
        from ..urls import display_url

        untrusted = self.untrusted or bool(recorded.get("untrusted"))
        where = f"recorded in the journal of run {run_id}"
        ignored: list[str] = []
        plugins = list(self.plugins) or list(recorded.get("plugins") or [])
        if not self.plugins and plugins and (self.no_local_plugins or untrusted):
            ignored.append(f"--plugin {', '.join(map(str, plugins))} {where} (give --plugin again to load it)")
            plugins = []
        base_url = self.base_url or recorded.get("base_url")
        from_journal = None
        if not self.base_url and base_url:
            if untrusted:
                ignored.append(f"--base-url {display_url(base_url)} {where}")
                base_url = None
            else:
                from_journal = run_id
        allow_outside_root = self.allow_outside_root or bool(recorded.get("allow_outside_root"))
        if allow_outside_root and untrusted and not self.allow_outside_root:
            ignored.append(f"--allow-outside-root {where}")
            allow_outside_root = False
        options = replace(
            self,
            specs=recorded.get("specs") or [],
            var=recorded.get("var") or [],
            vars_file=recorded.get("vars_file"),
            # A run that read its vars from stdin resumes with them, not with this stdin.
            vars_stdin=recorded.get("vars_stdin") if recorded.get("vars_file") == "-" else None,
            vars=recorded.get("vars"),
            base_url=base_url,
            # A run's jobs are followed in the dialect that created them (job ids differ).
            api=self.api or recorded.get("api"),
            timeout=self.timeout or recorded.get("timeout"),
            plugins=plugins,
            no_local_plugins=self.no_local_plugins or bool(recorded.get("no_local_plugins")),
            untrusted=untrusted,
            allow_outside_root=allow_outside_root,
            only=recorded.get("only") or [],
            shard=recorded.get("shard"),
            limit=recorded.get("limit"),
            wait_mode=self.wait_mode or recorded.get("wait_mode"),
            callback_listen=self.callback_listen or recorded.get("callback_listen"),
            callback_public_url=self.callback_public_url or recorded.get("callback_public_url"),
            no_wait=False,
            mode="run",
        )
        return ResumedOptions(options, tuple(ignored), from_journal)


@dataclass(frozen=True)
class ResumedOptions:
    """The options a resume runs with, and what trust left out of the journal's."""

    options: RunOptions
    #: what --untrusted or --no-local-plugins left out of the journal's settings, in words
    ignored: tuple[str, ...] = ()
    #: the run whose journal gave the base URL, when it came from there
    base_url_from_journal: str | None = None
