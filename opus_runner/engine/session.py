"""The one set-up of every command: project config, trust notices, plugins, client, journal.

A :class:`Session` is made once per command from options it never changes. Relative spec and
vars-file paths are read against :attr:`Session.base` (the current folder, or a resumed run's
recorded folder): nothing here changes the process's working directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import redact
from ..callbacks.tokens import ReceiverSettings
from ..config import ProjectConfig, default_plugins_dir, default_state_dir, load_project_config
from ..durations import parse_duration
from ..errors import ApiError, ConfigError, NetworkError, NotFoundError, OpusRunnerError, RouteMissing, SpecError, UsageError, ValidationFailed
from ..models import Context, UploadSettings, WorkflowRef, WorkflowSchema
from ..paths import confine, display_path
from ..planning import JobPlan, Planner, PlanFilter, check_declared_vars, parse_assignments, parse_shard, parse_var_assignments
from ..progress import Reporter
from ..spec import Spec, find_specs, load_spec
from ..workflow import unknown_type_warning
from .options import ResumedOptions, RunOptions

if TYPE_CHECKING:  # pragma: no cover
    from ..api import OpusClient
    from ..payload import BuiltPayload
    from ..plugins import PluginHost
    from ..state import Journal

log = logging.getLogger("opus_runner")
#: ``--vars-file -``: the variables come from standard input.
STDIN = "-"
#: What replaces a hint to look at jobs later (``opus-run status``, ``resume``) after a
#: ``--sandbox`` command: its in-process sandbox, and every job on it, ended with the command.
SANDBOX_ENDED = (
    "the --sandbox ended with this command, and its jobs with it: they cannot be looked at or "
    "resumed later. To keep a sandbox running, start `opus-run sandbox` in another terminal and "
    "set OPUS_BASE_URL and OPUS_SERVICE_KEY to the values it prints"
)


def later(options: RunOptions, hint: str) -> str:
    """``hint`` (look at a job, or resume the run, later), unless the command ran against its
    own ``--sandbox``: that server is gone once the command ends, so say so instead."""
    return SANDBOX_ENDED if options.sandbox else hint


def environ_of(options: RunOptions) -> dict[str, str]:
    """The environment templates and the key lookup see."""
    return dict(os.environ if options.environ is None else options.environ)


def open_journal(options: RunOptions, config: ProjectConfig) -> Journal:
    """The journal of ``--state-dir``, else of the project."""
    from ..state import Journal

    return Journal(Path(options.state_dir) if options.state_dir else default_state_dir(config))


class Session:
    """What one command sets up once and every step of it uses."""

    def __init__(
        self,
        options: RunOptions,
        *,
        reporter: Reporter | None = None,
        mode: str | None = None,
        base: str | Path | None = None,
        trust: ResumedOptions | None = None,
        journal: Journal | None = None,
    ) -> None:
        if options.vars_file is not None and str(options.vars_file) == STDIN and options.vars_stdin is None:
            # Read once, here, and kept in the options: the journal records them for resume,
            # when stdin is long gone.
            options = replace(options, vars_stdin=read_vars_stdin())
        self.options = options
        #: what the command does: run, validate, render, or schema (which asks the API)
        self.mode = mode or options.mode
        #: the folder relative spec and vars-file paths are relative to
        self.base = Path(os.path.abspath(base if base is not None else os.getcwd()))
        self.reporter = reporter or Reporter()
        self.environ = environ_of(options)
        self.log = log
        self.config: ProjectConfig | None = None
        self.specs: list[Spec] = []
        #: problems of the specs that could not be read (load_specs with defer_errors)
        self.load_errors: list[SpecError] = []
        #: files a folder or glob matched that are not specs (no opus-runner apiVersion)
        self._skipped: list[Path] = []
        self.host: PluginHost | None = None
        self.client: OpusClient | None = None
        self.journal = journal
        self.run_id: str | None = None
        self.lock: Any = None  # a lockfile.Lock with --locked
        #: state shared by every job of the run (ctx.shared)
        self.shared: dict[str, Any] = {}
        self._schemas: dict[str, asyncio.Future[WorkflowSchema]] = {}
        self._ignored = list(trust.ignored) if trust else []
        self._base_url_from_journal = trust.base_url_from_journal if trust else None
        self._noticed: set[str] = set()

    # -- set-up ------------------------------------------------------------------------------

    def load_specs(self, *, defer_errors: bool = False) -> None:
        """Read every spec (all problems at once) and the project config that governs them.

        With ``defer_errors`` the problems of specs that cannot be read are kept in
        :attr:`load_errors` rather than raised (unless no spec could be read), so the check
        pass reports them with the problems of the specs that could: one pass finds them all.
        """
        paths = find_specs([str(s) for s in self.options.specs], cwd=self.base, skipped=self._skipped)
        if not paths:
            raise UsageError("no spec given: pass one or more spec files, globs or folders")
        for path in self._skipped:
            self.log.debug("skipped %s: it does not declare apiVersion: opus-runner/...", display_path(path))
        errors: list[SpecError] = []
        for path in paths:
            try:
                self.specs.append(load_spec(path))
            except SpecError as exc:
                errors.append(exc)
            except ValidationFailed as exc:
                errors.extend(exc.errors)
        names: dict[str, Spec] = {}
        for spec in list(self.specs):
            if spec.name in names:
                errors.append(
                    spec.error(
                        f"metadata.name {spec.name!r} is also used by {display_path(names[spec.name].path)}; "
                        "names identify jobs in the journal and outputs, so give each spec its own",
                        ("metadata", "name"),
                    )
                )
                self.specs.remove(spec)
                continue
            names[spec.name] = spec
        if errors and (not defer_errors or not self.specs):
            raise ValidationFailed(errors)
        self.load_errors = errors
        self.config = self._project_of(self.specs)

    def _project_of(self, specs: list[Spec]) -> ProjectConfig:
        """The project of the run: the first spec's (one rule: its opus-runner.toml's folder,
        else its git root, else its folder). Specs of other roots are named, once: the journal
        and plugins are the first root's, while each spec's paths stay confined to its own."""
        config = load_project_config(specs[0].dir)
        others: dict[Path, Spec] = {}
        for spec in specs[1:]:
            root = self.repo_root(spec)
            if root != config.root.resolve() and root not in others:
                others[root] = spec
        if others:
            listed = "; ".join(f"{display_path(spec.path)} belongs to {display_path(root)}" for root, spec in others.items())
            self._notice(
                f"the specs of this run belong to different project roots: {display_path(specs[0].path)} "
                f"belongs to {display_path(config.root)} ({config.root_reason}), {listed}. The run's journal "
                f"and plugins are those of {display_path(config.root)}; each spec's files stay confined to its "
                "own root. Run each project's specs on their own, or put an opus-runner.toml in a folder "
                "above them all"
            )
        return config

    def load_plugins(self) -> PluginHost:
        """The trust notices, then the plugin host (no plugin is imported before the notices)."""
        from ..plugins import make_plugin_host

        if self.config is None:
            self.config = load_project_config(self.base)
        self._apply_trust()
        no_local = self.options.no_local_plugins or self.options.untrusted
        plugins_dir = None if no_local else default_plugins_dir(self.config)
        host = make_plugin_host(plugins_dir=plugins_dir, modules=list(self.options.plugins), log=self.log)
        host.hook_timeout = self.config.timeouts.hooks
        self.host = host
        return host

    def _apply_trust(self) -> None:
        """Before any plugin is imported: drop what --untrusted ignores, and say so; else name a
        base URL that neither the command line nor the environment gave, when it is not the
        Opus service. Either is the first line the command prints."""
        from ..config import is_opus_service

        assert self.config is not None
        opts = self.options
        if opts.untrusted:
            ignored = []
            folder = default_plugins_dir(self.config)
            if self.config.plugins_dir is None and folder.is_dir() and any(folder.glob("*.py")):
                ignored.append(f"the plugins folder {display_path(folder)}")
            self.config, dropped = self.config.for_untrusted()
            if dropped and self.config.file is not None:
                ignored.insert(0, f"{' and '.join(dropped)} from {display_path(self.config.file)}")
            if ignored or self._ignored:
                self._notice("--untrusted: ignored " + "; ".join([*ignored, *self._ignored]))
            return
        if self._ignored:
            self._notice("--no-local-plugins: ignored " + "; ".join(self._ignored))
        if opts.sandbox or not self.wants_live():
            return
        if opts.base_url and self._base_url_from_journal and not is_opus_service(opts.base_url):
            from ..urls import display_url

            # The journal's base URL wins over OPUS_BASE_URL, as the option it records did.
            self._notice(
                f"using base_url {display_url(opts.base_url)} recorded in the journal of run "
                f"{self._base_url_from_journal}, not the Opus service: the service key is sent there"
            )
        elif not opts.base_url and not self.environ.get("OPUS_BASE_URL"):
            notice = self.config.base_url_notice()
            if notice:
                self._notice(notice)

    def _notice(self, text: str) -> None:
        """A line about trust, before anything else: on stderr, or a ``message`` event under
        --format json; once per command."""
        if text in self._noticed:
            return
        self._noticed.add(text)
        if self.options.output_format == "json":
            from ..progress import JsonReporter

            JsonReporter().message(text, level="warning")
        else:
            self.log.warning(text)

    def resume_command(self, run_id: str) -> str:
        """``opus-run resume RUN_ID``, with ``--state-dir`` when the journal is not the one a
        command run here would find (the specs' project root is not the current folder's)."""
        from ..config import default_state_dir

        command = f"opus-run resume {run_id}"
        journal = self.journal
        if journal is None or self.options.state_dir:
            return command + (f" --state-dir {self.options.state_dir}" if self.options.state_dir else "")
        here = default_state_dir(load_project_config(os.getcwd()))
        if Path(journal.state_dir).resolve() != here.resolve():
            command += f" --state-dir {display_path(journal.state_dir)}"
        return command

    def later(self, hint: str) -> str:
        """``hint``, or why it would not hold after a ``--sandbox`` command (:func:`later`)."""
        return later(self.options, hint)

    def vars_file(self) -> Path | None:
        """``--vars-file``, read against :attr:`base` when relative; None for none or stdin."""
        if self.options.vars_file is None or str(self.options.vars_file) == STDIN:
            return None
        return self.base / Path(self.options.vars_file).expanduser()

    def _var_overrides(self) -> dict[str, Any]:
        """The variables that override the specs' defaults: --vars-file (or stdin), then
        --var (each a name some spec declares), then the library's ``vars`` mapping."""
        opts = self.options
        overrides: dict[str, Any] = dict(opts.vars_stdin or {})
        path = self.vars_file()
        if path is not None:
            assert self.config is not None
            shown = Path(opts.vars_file)  # type: ignore[arg-type]
            if path.exists():  # a missing file is "no such file", wherever it was looked for
                confine(
                    path,
                    root=self.config.repo_root,
                    allow_outside_root=opts.allow_outside_root,
                    label=f"--vars-file {shown}:",
                )
            overrides.update(load_vars_file(path, shown=shown))
        assigned = parse_var_assignments(list(opts.var), "--var")
        if not self.load_errors:  # a spec that could not be read may be the one declaring it
            check_declared_vars(self.specs, [name for name, _value in assigned], "--var")
        overrides.update(dict(assigned))
        if opts.vars:
            overrides.update(opts.vars)
        return overrides

    def planner(self) -> Planner:
        from ..templating import Templater, run_level_context

        assert self.host is not None and self.config is not None
        offline_validate = self.mode == "validate" and self.client is None
        dry_run = self.options.dry_run
        templater = Templater(
            plugins=self.host,
            # The template hooks see the spec being rendered, as every other hook does.
            context_for=lambda spec: run_level_context(None) if spec is None else self.context(None, spec, dry_run=dry_run),
            environ=self.environ,
            missing_secrets_ok=offline_validate,
            budget=self.config.template_budget,
        )
        timeout = None
        if self.options.timeout is not None:
            try:
                timeout = parse_duration(self.options.timeout)
            except ValueError as exc:
                raise UsageError(f"--timeout: {exc}") from None
        return Planner(
            templater,
            var_overrides=self._var_overrides(),
            default_outputs=self.config.outputs,
            default_notify=self.config.notify,
            timeout=timeout,
            no_wait=self.options.no_wait,
            allow_outside_root=self.options.allow_outside_root,
            wait_mode=self.options.wait_mode,
            default_wait_mode=self.config.wait_mode,
            receiver_configured=bool(self.receiver_settings()),
        )

    def receiver_settings(self, specs_say: ReceiverSettings | None = None) -> ReceiverSettings:
        """Where the run hears its callbacks: each of listen and public_url from the command
        line, else the project file, else the specs (``specs_say``, one setting for all)."""
        from ..callbacks.tokens import parse_listen, public_url_problem
        from ..planning import settings_problem

        assert self.config is not None
        opts, project = self.options, self.config.receiver
        listen = project.listen
        if opts.callback_listen is not None:
            try:
                listen = parse_listen(opts.callback_listen)
            except ValueError as exc:
                raise UsageError(f"--callback-listen {exc}") from None
        public_url = opts.callback_public_url or project.public_url
        if opts.callback_public_url is not None:
            problem = public_url_problem(opts.callback_public_url)
            if problem:
                raise UsageError(f"--callback-public-url {problem}")
        if specs_say is not None:
            listen = listen or specs_say.listen
            public_url = public_url or specs_say.public_url
        settings = ReceiverSettings(listen, public_url)
        problem = settings_problem(settings)
        if problem:
            raise UsageError(problem)
        return settings

    def plan_filter(self) -> PlanFilter:
        opts = self.options
        if opts.limit is not None and opts.limit < 1:
            raise UsageError(f"--limit must be 1 or more, found {opts.limit}")
        return PlanFilter(
            only=tuple(parse_assignments(list(opts.only), "--only")),
            shard=parse_shard(opts.shard) if opts.shard else None,
            limit=opts.limit,
        )

    def wants_live(self) -> bool:
        opts = self.options
        if self.mode in ("run", "schema"):
            return True
        if opts.offline or opts.locked:
            return False
        return opts.sandbox or bool(opts.service_key or self.environ.get("OPUS_SERVICE_KEY"))

    @property
    def api(self) -> str:
        """The Opus API generation the run speaks: ``--api``, else ``OPUS_API``, else the
        project's ``api``, else v0 (known without a connection, for ``--locked``)."""
        assert self.config is not None
        return self.config.dialect(self.options.api, self.environ)

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[None]:
        """The sandbox (if asked for) and the one OpusClient of the run."""
        opts = self.options
        assert self.config is not None
        if not self.wants_live():
            yield
            return
        base_url, key = self.config.endpoint(opts.base_url, opts.service_key, self.environ)
        v1_url = self.config.v1_url(opts.base_url, self.environ)
        sandbox: Any = None
        if opts.sandbox:
            from ..sandbox import SandboxServer

            sandbox = SandboxServer(opts.sandbox_workflows or self.config.sandbox_workflows)
            await asyncio.to_thread(sandbox.start)
            base_url, key, v1_url = sandbox.base_url, sandbox.key, None
        from ..api import NO_KEY_MESSAGE, OpusClient

        try:
            if not opts.sandbox and not key:
                raise ConfigError(NO_KEY_MESSAGE)
            concurrency = self.concurrency()
            self.client = OpusClient(
                base_url,
                key,
                api=self.api,
                v1_url=v1_url,
                # One request at a time per job in flight; httpcore scans its whole pool on
                # every request, so a pool larger than needed costs CPU on each call.
                max_connections=concurrency + 2,
                timeout=self.config.timeouts.read,
                deadline=self.config.timeouts.request,
                trace=opts.verbose,
                retry=opts.retry,
            )
            # Every retry is shown (a line, or a retry event): silence would look like a hang.
            self.client.on_retry = self.reporter.retrying
            yield
        finally:
            await self._settle_shared_work()
            if self.client is not None:
                await self.client.aclose()
            if sandbox is not None:
                await asyncio.to_thread(sandbox.stop)

    async def _settle_shared_work(self) -> None:
        """Stop what the jobs share and outlives them: a schema fetch or an upload several jobs
        await is a future of its own (shielded), so cancelling the jobs (Ctrl-C) leaves it
        running. Cancelled and awaited here, before the client closes, it cannot go on to send
        a request on a closed client (``RuntimeError: Cannot send a request, as the client has
        been closed``, reported as an unexpected error), nor retry after the command ended."""
        pending = [f for f in self._schemas.values() if not f.done()]
        for value in self.shared.values():
            if isinstance(value, Mapping):
                pending.extend(f for f in value.values() if isinstance(f, asyncio.Future) and not f.done())
        for future in pending:
            future.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    def concurrency(self) -> int:
        value = self.options.concurrency or (self.config.concurrency if self.config else None) or 4
        if value < 1:
            raise UsageError(f"--concurrency must be 1 or more, found {value}")
        return value

    # -- what every step gets ----------------------------------------------------------------

    def repo_root(self, spec: Spec) -> Path:
        """The folder file inputs must stay in, computed once per spec folder."""
        roots: dict[Path, Path] = self.shared.setdefault("opus_runner.roots", {})
        root = roots.get(spec.dir)
        if root is None:
            root = roots[spec.dir] = load_project_config(spec.dir).repo_root.resolve()
        return root

    def context(self, plan: JobPlan | None, spec: Spec, *, dry_run: bool) -> Context:
        return Context(
            spec=spec,
            spec_path=spec.path,
            spec_dir=spec.dir,
            log=self.log,
            vars=plan.vars if plan else {},
            http=self.client.http if self.client else None,
            client=self.client,
            plan_key=plan.key if plan else spec.name,
            root=self.repo_root(spec),
            allow_outside_root=self.options.allow_outside_root,
            dry_run=dry_run,
            # Plugins see text or json: github is text with annotations, which the reporter writes.
            output_format="json" if self.options.output_format == "json" else "text",
            quiet=self.options.quiet,
            shared=self.shared,
            uploads=plan.uploads if plan else UploadSettings(),
        )

    def run_context(self) -> Context:
        """The ``ctx`` of what belongs to no spec: a workflow looked up by id, the run's hooks."""
        assert self.config is not None
        return Context(
            spec=None,
            spec_path=self.base,
            spec_dir=self.base,
            log=self.log,
            http=self.client.http if self.client else None,
            client=self.client,
            root=self.config.repo_root,
            allow_outside_root=self.options.allow_outside_root,
            output_format="json" if self.options.output_format == "json" else "text",
            quiet=self.options.quiet,
            shared=self.shared,
        )

    # -- schemas and payloads ----------------------------------------------------------------

    async def schema_for(self, ref: WorkflowRef, ctx: Context) -> WorkflowSchema:
        """The workflow's inputs, fetched once per workflow and version per run."""
        future = self._schemas.get(ref.key)
        if future is None:
            future = asyncio.ensure_future(self._fetch_schema(ref, ctx))
            self._schemas[ref.key] = future
        return await asyncio.shield(future)

    async def _fetch_schema(self, ref: WorkflowRef, ctx: Context) -> WorkflowSchema:
        assert self.host is not None
        if self.lock is not None:
            return self.lock.require(ref, spec=ctx.spec)
        schema = await self.host.workflow_schema(ref, ctx)
        if schema is None:
            raise ConfigError(f"no plugin could describe workflow {ref.id}")
        for f in schema.inputs:
            if not f.known:
                self.reporter.message(unknown_type_warning(schema, f), level="warning")
        return schema

    async def payload_for(self, plan: JobPlan, *, dry_run: bool) -> tuple[BuiltPayload, Context]:
        from ..payload import build_payload

        assert self.host is not None
        ctx = self.context(plan, plan.spec, dry_run=dry_run)
        try:
            schema = await self.schema_for(plan.workflow, ctx)
        except ApiError as exc:
            # A missing route (a base URL without v1) is the server's, not the spec's.
            if (exc.status_code == 404 and not isinstance(exc, RouteMissing)) or isinstance(exc, NotFoundError):
                raise ValidationFailed([await self._not_found(plan, exc)]) from None
            raise
        ctx.workflow = schema
        lines = {str(k): plan.spec.line_of(("inputs", k)) for k in plan.inputs}
        # The submit pass builds the payload validated in the check pass again (now with real
        # file URLs), so the JSON Schema check runs once per job, in the check pass.
        built = await build_payload(plan.inputs, schema, self.host, ctx, input_lines=lines, check_schema=dry_run)
        return built, ctx

    async def _not_found(self, plan: JobPlan, exc: ApiError) -> SpecError:
        """A pinned version the workflow does not have is named as such, with the versions it has
        (when the versions route answers); anything else is an unknown workflow."""
        ref = plan.workflow
        if (ref.version is not None or ref.version_id) and self.client is not None:
            from ..builtins.schema import pick_version, version_list

            try:
                versions = await self.client.list_versions(ref.id)
            except (ApiError, NetworkError):
                versions = None
            if versions is not None and pick_version(versions, ref) is None:
                pin, key = (f"version id {ref.version_id}", "versionId") if ref.version_id else (f"version {ref.version}", "version")
                return plan.spec.error(
                    f"workflow {ref.id} has no {pin}; its versions are {version_list(versions) or 'none listed'}; "
                    f"fix workflow.{key} or remove it to run the current version",
                    ("workflow", key),
                )
        return plan.spec.error(f"workflow {ref.id!r} was not found: {exc.message}", ("workflow", "id"))

    # -- the journal -------------------------------------------------------------------------

    def open_journal(self) -> Journal:
        assert self.config is not None
        if self.journal is None:
            self.journal = open_journal(self.options, self.config)
        return self.journal

    def journal_secrets(self, planner: Planner, run_id: str, used: Mapping[str, str] | None = None) -> None:
        """Keep a keyed hash of every secret the run reads, now and later (resume checks them);
        on resume, ``used`` (checked against the journal) is masked before anything is read."""
        assert self.journal is not None
        journal, templater = self.journal, planner.templater
        for name, value in (used or {}).items():
            redact.register(value)
            templater.secrets_used[name] = value
        for name, value in templater.secrets_used.items():
            journal.record_secret(run_id, name, value)
        templater.on_secret = lambda name, value: journal.record_secret(run_id, name, value)

    @contextlib.asynccontextmanager
    async def owning(self, run_id: str) -> AsyncIterator[None]:
        """Keep this process's claim on ``run_id`` alive while the body runs; release it after,
        however the body ends (a kill -9 leaves a dead pid, which the next claim sees)."""
        from ..state import HEARTBEAT_SECONDS

        assert self.journal is not None
        journal = self.journal

        async def beat() -> None:
            while True:
                await asyncio.sleep(HEARTBEAT_SECONDS)
                with contextlib.suppress(OpusRunnerError):
                    journal.heartbeat(run_id)

        task = asyncio.ensure_future(beat())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            with contextlib.suppress(OpusRunnerError):
                journal.release_run(run_id)

    def input_digests(self) -> dict[str, str]:
        """sha256 of every file the batch is planned from: specs, foreach data, the vars file."""
        found: dict[str, str] = {}
        for spec in self.specs:
            found[str(spec.path.resolve())] = spec.digest
            source = (spec.data.get("foreach") or {}).get("file")
            if isinstance(source, str):
                found[str((spec.dir / source).resolve())] = file_digest((spec.dir / source).resolve())
        path = self.vars_file()
        if path is not None:
            found[str(path.resolve())] = file_digest(path.resolve())
        return found


def file_digest(path: Path) -> str:
    import hashlib

    try:
        with path.open("rb") as handle:  # in blocks: an input file may be larger than memory
            return hashlib.file_digest(handle, "sha256").hexdigest()
    except OSError:
        return "missing"


def read_vars_stdin() -> dict[str, Any]:
    """``--vars-file -``: a YAML or JSON mapping read from standard input, with a spec's size limit."""
    import sys

    from ..spec import MAX_SPEC_BYTES

    shown = "--vars-file - (stdin)"
    try:
        text = sys.stdin.read(MAX_SPEC_BYTES + 1)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UsageError(f"{shown}: cannot read standard input: {exc}") from None
    if len(text) > MAX_SPEC_BYTES:
        raise UsageError(f"{shown}: more than {MAX_SPEC_BYTES // (1024 * 1024)} MB of variables; pass a smaller mapping")
    return _vars_from_text(text, shown=shown, json_format=False)


def _vars_from_text(text: str, *, shown: str, json_format: bool) -> dict[str, Any]:
    from ..spec import load_data

    try:
        data = load_data(text, display=shown, json_format=json_format)
    except SpecError as exc:
        raise UsageError(f"{shown}: {exc.message}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"{shown}: expected a mapping of variable names to values, found {type(data).__name__}")
    return data


def load_vars_file(path: Path, *, shown: Path | None = None) -> dict[str, Any]:
    """Variables from a YAML or JSON mapping (``--vars-file``), read like a spec (spec.load_data).

    ``shown`` is the path as the user gave it, for messages (default: ``path``)."""
    shown = shown if shown is not None else path
    if not path.is_file():
        raise UsageError(f"--vars-file {shown}: no such file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--vars-file {shown}: cannot read it: {exc}") from None
    return _vars_from_text(text, shown=f"--vars-file {shown}", json_format=path.suffix.lower() == ".json")
