"""The one orchestrator: the only place that knows the order of the steps of a run.

    plan (specs, matrix, foreach) -> fetch schema (once per workflow+version) -> build payload
    -> [validate every job before the first submission]
    -> upload -> journal -> initiate -> journal job id -> execute -> wait -> results
    -> outputs -> notify

Jobs run concurrently under one bound (``--concurrency``) on one HTTP client. Every job id is in
the journal before execute is sent, so a crash loses nothing and ``opus-run resume`` finishes
the run without executing anything twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from . import redact
from .config import DEFAULT_BASE_URL, ProjectConfig, default_plugins_dir, default_state_dir, load_project_config
from .durations import parse_duration
from .errors import (
    ApiError,
    ConfigError,
    ExecuteNotReceived,
    ExecuteOutcomeUnknown,
    ExecuteRefused,
    NetworkError,
    NotFoundError,
    OpusRunnerError,
    SpecError,
    UsageError,
    ValidationFailed,
)
from .paths import PATH_KEYWORD, OutsideRoot, confine, display_path
from .models import (
    CANCELLED_STATUSES,
    TERMINAL_STATUSES,
    Context,
    UploadSettings,
    JobEvent,
    JobResult,
    WorkflowRef,
    WorkflowSchema,
)
from .planning import JobPlan, Planner, PlanFilter, parse_assignments, parse_shard
from .progress import Reporter, now_iso
from .spec import Spec, find_specs, load_spec
from .workflow import unknown_type_warning

if TYPE_CHECKING:  # pragma: no cover
    from .client import OpusClient
    from .payload import BuiltPayload
    from .plugins import PluginHost
    from .state import Journal, JobRecord

log = logging.getLogger("opus_runner")
_T = TypeVar("_T")

#: validated plans kept between the check pass and the submit pass (beyond, plans are re-made)
MAX_CHECKED_PLANS = 5000
#: the status a job gets in the journal and outputs when the runner stopped waiting for it
GAVE_UP = "TIMED_OUT"
_TERMINAL_EVENT = {
    "COMPLETED": "completed",
    "FAILED": "failed",
    **{status: "cancelled" for status in CANCELLED_STATUSES},
    "TIMED_OUT": "timed_out",
}
#: consecutive UNKNOWN statuses after which the user is warned (the job is still followed)
UNKNOWN_WARN_AFTER = 3


@dataclass
class RunOptions:
    """Everything a run can be told; the CLI fills it from its options, library users directly."""

    specs: Sequence[str | Path] = ()
    mode: str = "run"  # run | validate | render
    var: Sequence[str] = ()  # "KEY=VALUE"
    vars_file: str | Path | None = None
    vars: Mapping[str, Any] | None = None  # library users: variables as a mapping (wins over var)
    base_url: str | None = None
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


@dataclass
class JobOutcome:
    """How one planned job ended."""

    plan_key: str
    spec_name: str
    spec_path: str
    job_id: str | None = None
    status: str | None = None  # normalised Opus status; None when never submitted
    result: JobResult | None = None
    error: str | None = None
    exit_code: int = 0
    duration: float | None = None
    delivered: list[str] = field(default_factory=list)
    delivery_failures: list[str] = field(default_factory=list)
    payload: dict[str, Any] | None = None  # masked (render/dry-run)

    def row(self) -> dict[str, Any]:
        return {
            "plan_key": self.plan_key,
            "job_id": self.job_id,
            "status": self.status,
            "duration": self.duration,
            "delivered": ", ".join(self.delivered) if self.delivered else None,
            "error": self.error,
        }


@dataclass
class RunReport:
    """What a run did. ``exit_code`` follows SPEC.md section 3."""

    run_id: str | None
    outcomes: list[JobOutcome] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: list[SpecError] = field(default_factory=list)  # --keep-going: invalid jobs not submitted
    exit_code: int = 0

    @property
    def results(self) -> list[JobResult]:
        return [o.result for o in self.outcomes if o.result is not None]


# Exit-code precedence when jobs of one batch end differently: an interrupt, then usage and
# validation errors, then API/network errors, then failed jobs.
_SEVERITY = {0: 0, 1: 1, 3: 2, 2: 3, 129: 4, 130: 4, 143: 4}  # signals: 128 + signal number


def worst(codes: Iterable[int]) -> int:
    return max(codes, key=lambda c: _SEVERITY.get(c, 1), default=0)


class Runner:
    """Runs (or validates, or renders) a batch of specs. Create one per run."""

    def __init__(self, options: RunOptions, *, reporter: Reporter | None = None) -> None:
        self.options = options
        self.reporter = reporter or Reporter()
        self.environ = dict(os.environ if options.environ is None else options.environ)
        self.run_id: str | None = None
        self.journal: Journal | None = None
        self.client: OpusClient | None = None
        self.host: PluginHost | None = None
        self.specs: list[Spec] = []
        self.config: ProjectConfig | None = None
        self.shared: dict[str, Any] = {}
        self._schemas: dict[str, asyncio.Future[WorkflowSchema]] = {}
        self._sandbox: Any = None
        self.lock: Any = None  # a lockfile.Lock with --locked
        self._batch_size = 0
        self._notify_failed = False  # a notifier failed during the run: exit 1 at least
        #: the plans the check pass validated (with their payload when it needs no upload), so the
        #: submit pass does not plan and build them again; None when the batch was too large
        self._checked: list[tuple[JobPlan, dict[str, Any] | None]] | None = None
        self.log = log
        #: what --untrusted (or --no-local-plugins, for the journal's plugins) left out, in words
        self._ignored: list[str] = []
        self._noticed: set[str] = set()
        #: the run whose journal gave the base URL, when it came from there
        self._base_url_from_journal: str | None = None

    # -- set-up ------------------------------------------------------------------------------

    def _load(self) -> None:
        opts = self.options
        paths = find_specs([str(s) for s in opts.specs])
        if not paths:
            raise UsageError("no spec given: pass one or more spec files, globs or folders")
        errors: list[SpecError] = []
        for path in paths:
            try:
                self.specs.append(load_spec(path))
            except SpecError as exc:
                errors.append(exc)
            except ValidationFailed as exc:
                errors.extend(exc.errors)
        if errors:
            raise ValidationFailed(errors)
        names: dict[str, Spec] = {}
        for spec in self.specs:
            if spec.name in names:
                raise ValidationFailed(
                    [
                        spec.error(
                            f"metadata.name {spec.name!r} is also used by {names[spec.name].path}; "
                            "names identify jobs in the journal and outputs, so give each spec its own",
                            ("metadata", "name"),
                        )
                    ]
                )
            names[spec.name] = spec
        self.config = load_project_config(self.specs[0].dir)

    def _make_host(self) -> PluginHost:
        from .plugins import make_plugin_host

        assert self.config is not None
        self._apply_trust()
        no_local = self.options.no_local_plugins or self.options.untrusted
        plugins_dir = None if no_local else default_plugins_dir(self.config)
        host = make_plugin_host(plugins_dir=plugins_dir, modules=list(self.options.plugins), log=self.log)
        host.hook_timeout = self.config.timeouts.hooks
        return host

    def _apply_trust(self) -> None:
        """Before any plugin is imported: drop what --untrusted ignores, and say so; else name a
        base URL that neither the command line nor the environment gave, when it is not the
        Opus service. Either is the first line the command prints."""
        from .config import is_opus_service

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
        if opts.sandbox or not self._wants_live():
            return
        if opts.base_url and self._base_url_from_journal and not is_opus_service(opts.base_url):
            from .urls import display_url

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
        --format json; once per command (resume loads the configuration twice)."""
        if text in self._noticed:
            return
        self._noticed.add(text)
        if self.options.output_format == "json":
            from .progress import JsonReporter

            JsonReporter().message(text, level="warning")
        else:
            self.log.warning(text)

    def _var_overrides(self) -> dict[str, Any]:
        opts = self.options
        overrides: dict[str, Any] = {}
        if opts.vars_file is not None:
            assert self.config is not None
            path = Path(opts.vars_file)
            if path.exists():  # a missing file is "no such file", wherever it was looked for
                confine(
                    path.absolute(),
                    root=self.config.repo_root,
                    allow_outside_root=opts.allow_outside_root,
                    label=f"--vars-file {path}:",
                )
            overrides.update(load_vars_file(path))
        overrides.update(dict(parse_assignments(list(opts.var), "--var")))
        if opts.vars:
            overrides.update(opts.vars)
        return overrides

    def _planner(self) -> Planner:
        from .templating import Templater

        assert self.host is not None and self.config is not None
        offline_validate = self.options.mode == "validate" and self.client is None
        templater = Templater(
            globals=self.host.template_globals(None),
            filters=self.host.template_filters(None),
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
        )

    def _plan_filter(self) -> PlanFilter:
        opts = self.options
        if opts.limit is not None and opts.limit < 1:
            raise UsageError(f"--limit must be 1 or more, found {opts.limit}")
        return PlanFilter(
            only=tuple(parse_assignments(list(opts.only), "--only")),
            shard=parse_shard(opts.shard) if opts.shard else None,
            limit=opts.limit,
        )

    def _wants_live(self) -> bool:
        opts = self.options
        if opts.mode in ("run", "schema"):
            return True
        if opts.offline or opts.locked:
            return False
        return opts.sandbox or bool(opts.service_key or self.environ.get("OPUS_SERVICE_KEY"))

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[None]:
        """The sandbox (if asked for) and the one OpusClient of the run."""
        opts = self.options
        assert self.config is not None
        if not self._wants_live():
            yield
            return
        base_url = opts.base_url or self.environ.get("OPUS_BASE_URL") or self.config.base_url or DEFAULT_BASE_URL
        key = opts.service_key or self.environ.get("OPUS_SERVICE_KEY")
        if opts.sandbox:
            from .sandbox import SandboxServer

            workflows = opts.sandbox_workflows or self.config.sandbox_workflows
            self._sandbox = SandboxServer(workflows)
            await asyncio.to_thread(self._sandbox.start)
            base_url, key = self._sandbox.base_url, self._sandbox.key
        from .client import NO_KEY_MESSAGE, OpusClient

        if not opts.sandbox and not key:
            raise ConfigError(NO_KEY_MESSAGE)

        concurrency = self._concurrency()
        try:
            self.client = OpusClient(
                base_url,
                key,
                # One request at a time per job in flight; httpcore scans its whole pool on
                # every request, so a pool larger than needed costs CPU on each call.
                max_connections=concurrency + 2,
                timeout=self.config.timeouts.read,
                deadline=self.config.timeouts.request,
                trace=opts.verbose,
                retry=opts.retry,
            )
            yield
        finally:
            if self.client is not None:
                await self.client.aclose()
            if self._sandbox is not None:
                await asyncio.to_thread(self._sandbox.stop)

    def _concurrency(self) -> int:
        value = self.options.concurrency or (self.config.concurrency if self.config else None) or 4
        if value < 1:
            raise UsageError(f"--concurrency must be 1 or more, found {value}")
        return value

    def _repo_root(self, spec: Spec) -> Path:
        """The folder file inputs must stay in, computed once per spec folder."""
        roots: dict[Path, Path] = self.shared.setdefault("opus_runner.roots", {})
        root = roots.get(spec.dir)
        if root is None:
            root = roots[spec.dir] = load_project_config(spec.dir).repo_root.resolve()
        return root

    def _context(self, plan: JobPlan | None, spec: Spec, *, dry_run: bool) -> Context:
        assert self.config is not None
        return Context(
            spec=spec,
            spec_path=spec.path,
            spec_dir=spec.dir,
            log=self.log,
            vars=plan.vars if plan else {},
            http=self.client.http if self.client else None,
            client=self.client,
            plan_key=plan.key if plan else spec.name,
            root=self._repo_root(spec),
            allow_outside_root=self.options.allow_outside_root,
            dry_run=dry_run,
            output_format=self.options.output_format,
            quiet=self.options.quiet,
            shared=self.shared,
            uploads=plan.uploads if plan else UploadSettings(),
        )

    # -- schemas -----------------------------------------------------------------------------

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
        try:
            schema = await self.host.first("opus_workflow_schema", offload=True, workflow_ref=ref, ctx=ctx)
        except OpusRunnerError:
            raise
        except Exception as exc:
            raise self.host.hook_failure("opus_workflow_schema", exc, f"the inputs of workflow {ref.id} are unknown") from None
        if schema is None:
            raise ConfigError(f"no plugin could describe workflow {ref.id}")
        for f in schema.inputs:
            if not f.known:
                self.reporter.message(unknown_type_warning(schema, f), level="warning")
        return schema

    async def _payload_for(self, plan: JobPlan, *, dry_run: bool) -> tuple[BuiltPayload, Context]:
        from .payload import build_payload

        assert self.host is not None
        ctx = self._context(plan, plan.spec, dry_run=dry_run)
        try:
            schema = await self.schema_for(plan.workflow, ctx)
        except ApiError as exc:
            if exc.status_code == 404 or isinstance(exc, NotFoundError):
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
            from .builtins.schema import pick_version, version_list

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

    async def collect_schemas(self, *, live: bool = True) -> list[tuple[Spec, WorkflowRef, WorkflowSchema | None]]:
        """Every (spec, workflow ref) the specs use, with the live schema of each (``opus-run
        lock`` and ``drift``). Refs come from every planned job, so templated versions count.
        ``live=False`` returns None for the schemas (no key needed)."""
        self._load()
        self.host = self._make_host()
        planner = self._planner()
        seen: dict[tuple[str, str], tuple[Spec, WorkflowRef]] = {}
        for plan in planner.plans(self.specs):
            seen.setdefault((str(plan.spec.path), plan.workflow.key), (plan.spec, plan.workflow))
        if not live:
            return [(spec, ref, None) for spec, ref in seen.values()]
        self.options = replace(self.options, mode="validate")
        out: list[tuple[Spec, WorkflowRef, WorkflowSchema | None]] = []
        async with self._connection():
            if self.client is None:
                from .client import NO_KEY_MESSAGE

                raise ConfigError(NO_KEY_MESSAGE)
            for spec, ref in seen.values():
                ctx = self._context(None, spec, dry_run=True)
                out.append((spec, ref, await self.schema_for(ref, ctx)))
        return out

    async def workflow_schema(self, ref: WorkflowRef) -> WorkflowSchema:
        """One workflow's inputs through the ``opus_workflow_schema`` hook (``opus-run schema``,
        ``init``), outside any spec."""
        self.options = replace(self.options, mode="schema")
        self.config = load_project_config()
        self.host = self._make_host()
        async with self._connection():
            cwd = Path.cwd()
            ctx = Context(
                spec=None,
                spec_path=cwd,
                spec_dir=cwd,
                log=self.log,
                http=self.client.http if self.client else None,
                client=self.client,
                root=self.config.repo_root,
                shared=self.shared,
            )
            return await self.schema_for(ref, ctx)

    # -- the run -----------------------------------------------------------------------------

    async def run(self) -> RunReport:
        """Validate, render or run the batch, per ``options.mode``."""
        opts = self.options
        if opts.output_format not in ("text", "json"):
            raise UsageError(f"--format must be text or json, found {opts.output_format!r}")
        self._load()
        self.host = self._make_host()
        self._check_targets()
        if opts.locked:
            if opts.mode == "run" and not opts.dry_run:
                raise UsageError("--locked checks specs against opus-runner.lock; it applies to validate, render and --dry-run")
            from .lockfile import load_lock

            assert self.config is not None
            self.lock = load_lock(self.config.root)
        planner = self._planner()
        plan_filter = self._plan_filter()
        async with self._connection():
            if opts.mode in ("validate", "render") or opts.dry_run:
                return await self._check_only(planner, plan_filter)
            return await self._submit(planner, plan_filter)

    def _check_targets(self) -> None:
        """Output and notifier types and their configs are checked before anything is sent."""
        assert self.host is not None and self.config is not None
        errors: list[SpecError] = []
        for spec in self.specs:
            for kind in ("outputs", "notify"):
                entries = spec.data.get(kind)
                if entries is None:
                    entries = getattr(self.config, kind) or ([{"type": "stdout"}] if kind == "outputs" else [])
                for err in self.host.check_config(kind, list(entries), file=display_path(spec.path), key=kind):
                    err.line = err.line or spec.line_of(err.key)
                    errors.append(err)
                if kind == "outputs" and isinstance(entries, list):
                    errors.extend(self._static_paths_outside(spec, entries))
        if errors:
            raise ValidationFailed(errors)

    def _static_paths_outside(self, spec: Spec, entries: list[Any]) -> list[SpecError]:
        """Output paths written without a template, refused now rather than after the job ran
        (a templated one is checked when its output is written)."""
        assert self.host is not None
        errors: list[SpecError] = []
        for index, entry in enumerate(entries):
            handler = self.host.outputs.get(entry.get("type")) if isinstance(entry, dict) else None
            properties = (getattr(handler, "schema", None) or {}).get("properties") or {}
            for name, rule in properties.items():
                value = entry.get(name)
                if not (isinstance(rule, dict) and rule.get(PATH_KEYWORD)) or not isinstance(value, str):
                    continue
                if "{{" in value or "{%" in value:
                    continue
                path = Path(value).expanduser()
                key = ("outputs", index, name)
                try:
                    confine(
                        path if path.is_absolute() else spec.dir / path,
                        root=self._repo_root(spec),
                        allow_outside_root=self.options.allow_outside_root,
                        file=display_path(spec.path),
                        key=key,
                        line=spec.line_of(key),
                    )
                except OutsideRoot as exc:
                    errors.append(exc)
        return errors

    async def _validate_plans(
        self, planner: Planner, plan_filter: PlanFilter, *, keep: bool, remember: bool = False
    ) -> tuple[int, list[SpecError], set[str], list[JobOutcome]]:
        """Plan and check every job.

        Returns the number of valid jobs, the problems, the plan keys of invalid jobs, and (with
        ``keep``) an outcome per valid job carrying its masked payload.
        """
        errors: list[SpecError] = []
        bad: set[str] = set()
        checked: list[tuple[JobPlan, dict[str, Any] | None]] | None = [] if remember else None
        outcomes: list[JobOutcome] = []
        count = 0
        live = self.client is not None or self.lock is not None
        for spec in self.specs:
            iterator = planner.plans([spec], plan_filter)
            while True:
                try:
                    plan = next(iterator)
                except StopIteration:
                    break
                except SpecError as exc:  # planning stops for this spec (e.g. unreadable foreach file)
                    errors.append(exc)
                    break
                except ValidationFailed as exc:
                    errors.extend(exc.errors)
                    break
                try:
                    prepared: dict[str, Any] | None = None
                    if live:
                        built, _ctx = await self._payload_for(plan, dry_run=True)
                        payload = built.payload
                        # Without uploads the payload sent will be this one: no need to build it again.
                        prepared = None if built.uploads else payload
                    else:
                        payload = plan.inputs
                except ValidationFailed as exc:
                    errors.extend(_tag(exc.errors, plan))
                    bad.add(plan.key)
                    continue
                except SpecError as exc:
                    errors.extend(_tag([exc], plan))
                    bad.add(plan.key)
                    continue
                count += 1
                if checked is not None:
                    if len(checked) < MAX_CHECKED_PLANS:
                        checked.append((plan, prepared))
                    else:
                        checked = None  # a huge batch is planned again while it runs, not held
                if keep:
                    outcome = JobOutcome(plan.key, spec.name, str(spec.path), payload=redact.mask_obj(_jsonable(payload)))
                    if self.reporter.streams_payloads:
                        # Shown as it is built, not held: a 100,000-row dry run stays small.
                        self.reporter.rendered(outcome, header="would submit" if self.options.dry_run else None)
                    else:
                        outcomes.append(outcome)
        self._checked = checked
        return count, errors, bad, outcomes

    async def _check_only(self, planner: Planner, plan_filter: PlanFilter) -> RunReport:
        opts = self.options
        keep = opts.mode == "render" or opts.dry_run
        count, errors, _bad, outcomes = await self._validate_plans(planner, plan_filter, keep=keep)
        report = RunReport(run_id=None, outcomes=outcomes)
        if self.lock is not None:
            report.notes.append(f"checked against {self.lock.path} (no network)")
        elif self.client is None:
            if opts.offline:
                why = "--offline was given"
            else:
                why = "no service key is set (set OPUS_SERVICE_KEY, or pass --sandbox)"
            report.notes.append(
                f"the live workflow schema check was skipped because {why}: inputs were not checked "
                "against the workflow's types and required inputs, and file inputs were not checked"
            )
            missing = sorted(planner.templater.missing_secrets)
            if missing:
                report.notes.append(
                    "secrets not set, rendered as *** for this check: " + ", ".join(missing)
                )
        if errors:
            raise ValidationFailed(errors)
        report.notes.insert(0, f"{count} job{'s' if count != 1 else ''} valid")
        return report

    async def _submit(self, planner: Planner, plan_filter: PlanFilter) -> RunReport:
        opts = self.options
        count, errors, skip, _ = await self._validate_plans(planner, plan_filter, keep=False, remember=True)
        report = RunReport(run_id=None)
        if errors:
            if not opts.keep_going or not skip:
                # Without --keep-going nothing is submitted; with it, a spec that could not be
                # planned at all (no single bad job to skip) still stops the run.
                raise ValidationFailed(errors)
            report.skipped = errors
            for err in errors:
                self.reporter.message(f"skipped: {err}", level="warning")
        self.journal = self._open_journal()
        try:
            self.run_id = self.journal.begin_run(
                argv=[str(a) for a in sys.argv],
                cwd=os.getcwd(),
                options={**_options_record(opts), "inputs": self._input_digests()},
            )
            report.run_id = self.run_id
            self._journal_secrets(planner, self.run_id)
            self._batch_size = count
            self.reporter.start(count)
            async with self._owning(self.run_id):
                report.outcomes = await self._run_batch(planner, plan_filter, skip, {})
            report.exit_code = worst(
                [o.exit_code for o in report.outcomes] + ([1] if report.skipped or self._notify_failed else [])
            )
            self.journal.finish_run(self.run_id, report.exit_code)
            self.reporter.summary([o.row() for o in report.outcomes])
            return report
        finally:
            self.journal.close()

    def _journal_secrets(self, planner: Planner, run_id: str, used: Mapping[str, str] | None = None) -> None:
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
    async def _owning(self, run_id: str) -> AsyncIterator[None]:
        """Keep this process's claim on ``run_id`` alive while the body runs; release it after,
        however the body ends (a kill -9 leaves a dead pid, which the next claim sees)."""
        from .state import HEARTBEAT_SECONDS

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

    def _open_journal(self) -> Journal:
        from .state import Journal

        assert self.config is not None
        opts = self.options
        return Journal(Path(opts.state_dir) if opts.state_dir else default_state_dir(self.config))

    async def _run_batch(
        self,
        planner: Planner,
        plan_filter: PlanFilter,
        skip: set[str],
        records: Mapping[str, JobRecord],
        jobs: Iterable[tuple[JobPlan, dict[str, Any] | None]] | None = None,
    ) -> list[JobOutcome]:
        """Run every admitted plan (or exactly ``jobs``), ``concurrency`` at a time, in order.

        ``records`` (resume) maps plan keys to their journal rows: finished jobs only get their
        undelivered outputs, the others continue from their phase.
        """
        semaphore = asyncio.Semaphore(self._concurrency())
        tasks: set[asyncio.Task[JobOutcome]] = set()
        outcomes: list[JobOutcome] = []
        order: dict[str, int] = {}

        def collect(task: asyncio.Task[JobOutcome]) -> None:
            semaphore.release()
            tasks.discard(task)
            if not task.cancelled() and task.exception() is None:
                outcomes.append(task.result())

        if jobs is not None:
            pass
        elif self._checked is not None and not records:
            jobs = self._checked
        else:
            jobs = ((plan, None) for plan in planner.plans(self.specs, plan_filter))
        for plan, prepared in jobs:
            if plan.key in skip:
                continue
            order[plan.key] = len(order)
            record = records.get(plan.key)
            await semaphore.acquire()
            if record is not None and record.phase == "finished":
                job = self._redeliver(plan, record)
            else:
                job = self._run_job(plan, record, prepared)
            task = asyncio.ensure_future(job)
            tasks.add(task)
            task.add_done_callback(collect)
        try:
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            for task in tasks:
                task.cancel()
        outcomes.sort(key=lambda o: order.get(o.plan_key, 0))
        return outcomes

    # -- resume ------------------------------------------------------------------------------

    async def resume(self, run_id: str | None = None) -> RunReport:
        """Finish an interrupted run from the journal, executing nothing twice.

        Jobs never initiated are run; initiated ones are executed (unless the platform shows
        they already started); executed ones are followed; finished ones get the outputs and
        notifiers that failed delivered again.
        """
        self.config = load_project_config()
        journal = self._open_journal()
        self.journal = journal
        claimed: str | None = None
        try:
            run = journal.get_run(run_id) if run_id else journal.latest_run(unfinished_only=True)
            if run is None:
                raise UsageError(f"nothing to resume: every run in {journal.path} is finished")
            recorded = run.options
            if recorded.get("sandbox"):
                raise UsageError(
                    f"run {run.run_id} ran against an in-process --sandbox, which ended with it; "
                    "there is nothing left to resume"
                )
            # Before anything is rendered or written: with another value than the run used, an
            # old value echoed back by a workflow would not be masked.
            used_secrets = journal.verify_secrets(run.run_id, self.environ)
            recorded_url = recorded.get("base_url")
            if not self.options.base_url and isinstance(recorded_url, str) and redact.MASK in recorded_url:
                raise UsageError(
                    f"run {run.run_id} ran against {redact.without_userinfo(recorded_url)} with a password in "
                    "the URL, which the journal does not keep; pass the URL again with --base-url"
                )
            # One owner at a time: a run whose process is alive is not resumed beside it.
            journal.claim_run(run.run_id)
            claimed = run.run_id
            base_url, plugins, allow_outside_root = self._recorded_settings(run.run_id, recorded)
            self.options = replace(
                self.options,
                specs=recorded.get("specs") or [],
                var=recorded.get("var") or [],
                vars_file=recorded.get("vars_file"),
                vars=recorded.get("vars"),
                base_url=base_url,
                timeout=self.options.timeout or recorded.get("timeout"),
                plugins=plugins,
                no_local_plugins=self.options.no_local_plugins or bool(recorded.get("no_local_plugins")),
                untrusted=self.options.untrusted or bool(recorded.get("untrusted")),
                allow_outside_root=allow_outside_root,
                only=recorded.get("only") or [],
                shard=recorded.get("shard"),
                limit=recorded.get("limit"),
                no_wait=False,
                mode="run",
            )
            cwd = Path(run.cwd)
            if cwd.is_dir() and Path.cwd() != cwd:
                os.chdir(cwd)  # spec paths were recorded as given, relative to the run's folder
            self._load()
            self.host = self._make_host()
            planner = self._planner()
            self._journal_secrets(planner, run.run_id, used_secrets)
            records = {r.plan_key: r for r in journal.jobs(run.run_id)}
            jobs, refused, changed = self._resume_plan(planner, records, recorded.get("inputs"))
            self.run_id = run.run_id
            report = RunReport(run_id=run.run_id)
            async with self._connection(), self._owning(run.run_id):
                self._batch_size = len(jobs)
                self.reporter.start(len(jobs))
                report.outcomes = await self._run_batch(planner, self._plan_filter(), set(), records, jobs)
            if refused:
                shown = ", ".join(display_path(Path(c)) for c in changed)
                report.notes.append(
                    f"{len(refused)} job{'s' if len(refused) != 1 else ''} of run {run.run_id} not started: "
                    f"{shown} changed since the run began, so {'they' if len(refused) != 1 else 'it'} would "
                    "be planned from other data; the jobs already started were finished as recorded. "
                    f"To plan the rest from the files as they are now: opus-run resume {run.run_id} --replan"
                )
                self.reporter.message(report.notes[-1], level="error")
            report.exit_code = worst(
                [o.exit_code for o in report.outcomes] + ([1] if self._notify_failed else []) + ([2] if refused else [])
            )
            if refused:
                journal.release_run(run.run_id)  # unfinished on purpose: resume --replan continues it
            else:
                journal.finish_run(run.run_id, report.exit_code)
            self.reporter.summary([o.row() for o in report.outcomes])
            return report
        finally:
            if claimed is not None:
                # However the resume ended (a spec that no longer loads, a refusal, Ctrl-C),
                # the claim goes with it: only a process that is still running holds a run.
                with contextlib.suppress(OpusRunnerError):
                    journal.release_run(claimed)
            journal.close()

    def _recorded_settings(self, run_id: str, recorded: Mapping[str, Any]) -> tuple[str | None, list[str], bool]:
        """``(base_url, plugins, allow_outside_root)`` for a resume: the command line's, else the
        journal's. A journal comes with the checkout like any file, so with --no-local-plugins
        (and --untrusted) the plugins it names are not imported, and with --untrusted neither
        its base URL nor its --allow-outside-root is taken; what is left out is said."""
        from .urls import display_url

        opts = self.options
        untrusted = opts.untrusted or bool(recorded.get("untrusted"))
        where = f"recorded in the journal of run {run_id}"
        plugins = list(opts.plugins) or list(recorded.get("plugins") or [])
        if not opts.plugins and plugins and (opts.no_local_plugins or untrusted):
            self._ignored.append(f"--plugin {', '.join(map(str, plugins))} {where} (give --plugin again to load it)")
            plugins = []
        base_url = opts.base_url or recorded.get("base_url")
        if not opts.base_url and base_url:
            if untrusted:
                self._ignored.append(f"--base-url {display_url(base_url)} {where}")
                base_url = None
            else:
                self._base_url_from_journal = run_id
        allow_outside_root = opts.allow_outside_root or bool(recorded.get("allow_outside_root"))
        if allow_outside_root and untrusted and not opts.allow_outside_root:
            self._ignored.append(f"--allow-outside-root {where}")
            allow_outside_root = False
        return base_url, plugins, allow_outside_root

    def _input_digests(self) -> dict[str, str]:
        """sha256 of every file the batch is planned from: specs, foreach data, the vars file."""
        found: dict[str, str] = {}
        for spec in self.specs:
            found[str(spec.path.resolve())] = spec.digest
            source = (spec.data.get("foreach") or {}).get("file")
            if isinstance(source, str):
                found[str((spec.dir / source).resolve())] = _file_digest((spec.dir / source).resolve())
        if self.options.vars_file:
            path = Path(self.options.vars_file).resolve()
            found[str(path)] = _file_digest(path)
        return found

    def _resume_plan(
        self, planner: Planner, records: Mapping[str, JobRecord], recorded_inputs: Mapping[str, str] | None
    ) -> tuple[list[tuple[JobPlan, None]], list[str], list[str]]:
        """What a resume runs: every journaled job from its own record (its row and matrix as
        they were), then the plans the run never journaled, from the files. When those files
        changed since the run began, jobs not yet initiated are not started unless --replan.

        Returns ``(jobs, refused plan keys, changed files)``.
        """
        current = self._input_digests()
        before = dict(recorded_inputs or current)  # runs journaled before digests were kept
        changed = sorted(p for p in set(before) | set(current) if before.get(p) != current.get(p))
        replan = bool(changed) and self.options.replan
        specs = {str(spec.path): spec for spec in self.specs}
        jobs: list[tuple[JobPlan, None]] = []
        refused: list[str] = []
        for key, record in records.items():
            spec = specs.get(record.spec_path)
            if spec is None:
                continue  # a spec no longer given: _load has already said so
            if changed and record.phase == "planned" and not replan:
                refused.append(key)
                continue
            jobs.append((planner.plan_from_record(spec, record.plan), None))
        for plan in planner.plans(self.specs, self._plan_filter()):
            if plan.key in records:
                continue
            if changed and not replan:
                refused.append(plan.key)
                continue
            jobs.append((plan, None))
        return jobs, refused, changed

    async def _redeliver(self, plan: JobPlan, record: JobRecord) -> JobOutcome:
        """A finished job of a resumed run: deliver only what failed before."""
        outcome = JobOutcome(plan.key, plan.spec.name, str(plan.spec.path), job_id=record.job_id, status=record.status)
        data = record.result or {}
        result = JobResult(
            job_id=str(record.job_id),
            status=str(record.status),
            outputs=data.get("outputs") or {},
            raw=data.get("raw") or {},
            spec_name=plan.spec.name,
            plan_key=plan.key,
            title=data.get("title") or plan.title,
            finished_at=data.get("finished_at"),
            error=record.error,
        )
        outcome.result = result
        outcome.error = record.error
        outcome.exit_code = 0 if record.status == "COMPLETED" else 1
        # Every output not recorded as delivered: failed ones, and ones a crash interrupted.
        delivered = {t for t, d in record.deliveries.items() if d.get("ok")}
        pending = {f"outputs[{i}]:{entry.get('type')}" for i, entry in enumerate(plan.outputs)} - delivered
        if pending:
            ctx = self._context(plan, plan.spec, dry_run=False)
            ctx.job_id = record.job_id
            # A target marked intended (or failed) may have been written before the crash.
            ctx.redelivery = any(t in record.deliveries for t in pending)
            await self._deliver(plan, result, record.row_id, ctx, outcome, only=pending)
        return outcome

    # -- one job -----------------------------------------------------------------------------

    async def _run_job(
        self, plan: JobPlan, record: JobRecord | None = None, prepared: dict[str, Any] | None = None
    ) -> JobOutcome:
        outcome = JobOutcome(plan.key, plan.spec.name, str(plan.spec.path))
        started = time.monotonic()
        try:
            await self._drive(plan, outcome, record, prepared)
        except OpusRunnerError as exc:
            outcome.error = redact.mask(str(exc))
            outcome.exit_code = exc.exit_code
            # A job that ended is reported with its result; one whose results could not be read
            # (COMPLETED, no result yet) is not, so its error is.
            if outcome.status is None or outcome.status not in TERMINAL_STATUSES or outcome.result is None:
                self.reporter.message(f"{plan.key}: {outcome.error}", level="error")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug or a plugin's unexpected error: keep the batch going
            self.log.debug("unexpected error in job %s", plan.key, exc_info=True)
            outcome.error = redact.mask(f"{type(exc).__name__}: {exc}")
            outcome.exit_code = 3
            self.reporter.message(f"{plan.key}: unexpected error: {outcome.error}", level="error")
        outcome.duration = time.monotonic() - started
        return outcome

    async def _drive(
        self, plan: JobPlan, outcome: JobOutcome, record: JobRecord | None, prepared: dict[str, Any] | None = None
    ) -> None:
        """Take one job from wherever the journal says it is to its end.

        ``prepared`` is the payload the check pass built, when sending it needs no upload.
        """
        assert self.client is not None and self.journal is not None and self.host is not None
        assert self.run_id is not None
        client, journal = self.client, self.journal
        row_id = record.row_id if record else None
        job_id = record.job_id if record else None
        phase = record.phase if record else "planned"
        outcome.job_id = job_id

        if phase == "executing" and job_id is not None:
            # The run stopped between sending execute and hearing back: the platform knows.
            # Its status cannot tell (a never-executed job reads PENDING too); the job's detail
            # shows whether the payload arrived.
            received, status = await client.execute_received(job_id)
            if received is None:
                raise ExecuteOutcomeUnknown(
                    f"job {job_id} was being executed when the run stopped, and Opus does not "
                    f"show whether the execute arrived (status {status}, no input in its "
                    f"detail); it was not sent again. Check it in Opus, then resume again",
                    job_id=job_id,
                )
            if received:
                phase = "executed"
                journal.mark_executed(row_id)  # type: ignore[arg-type]
            else:
                phase = "initiated"

        if phase in ("planned", "initiated", "executing"):
            sent_files: dict[str, str] = {}
            if prepared is not None:
                payload = prepared
                ctx = self._context(plan, plan.spec, dry_run=False)
                ctx.workflow = await self.schema_for(plan.workflow, ctx)
            else:
                built, ctx = await self._payload_for(plan, dry_run=False)
                payload = built.payload
                sent_files = {str(path): _file_digest(path) for path in built.files}
            if record is not None and record.job_id is not None and not self.options.replan:
                # Initiated by the run that stopped: it is sent as it was recorded, or not at all.
                _check_as_recorded(plan, record, payload, ctx.workflow, sent_files)
            if row_id is None:
                row_id = journal.add_job(
                    self.run_id,
                    plan_key=plan.key,
                    spec_path=str(plan.spec.path),
                    spec_digest=plan.spec.digest,
                    spec_name=plan.spec.name,
                    workflow_key=plan.workflow.key,
                    title=plan.title,
                    payload=redact.mask_obj(_jsonable(payload)),
                    # The content of each local file it sends: its upload URL is new every time.
                    plan={**plan.describe(), "files": sent_files},
                )
            workspaces = self._workspaces(plan, ctx)
            if job_id is None:
                job_id = await self._patiently(
                    plan,
                    lambda: client.initiate(
                        plan.workflow.id,
                        title=plan.title,
                        description=plan.description,
                        version=plan.workflow.version,
                        version_id=plan.workflow.version_id,
                        workspaces=workspaces,
                    ),
                )
                journal.set_job_id(row_id, job_id)  # durable before execute is sent
            outcome.job_id = ctx.job_id = job_id
            try:
                await self.host.each("opus_payload_ready", offload=True, payload=payload, ctx=ctx)
            except OpusRunnerError:
                raise
            except Exception as exc:
                raise self.host.hook_failure("opus_payload_ready", exc, "the job was not executed") from None
            journal.mark_executing(row_id)
            try:
                execution = await self._execute_patiently(plan, job_id, payload, workspaces)
            except ExecuteRefused as exc:
                # The job never started: it ends here, FAILED with the platform's words, so
                # neither this run nor a resume sends it again blindly.
                result = await self._refused(plan, job_id, row_id, ctx, outcome, exc)
                await self._deliver(plan, result, row_id, ctx, outcome, only=None)
                return
            journal.mark_executed(row_id)
            outcome.status = execution.status or "PENDING"
            await self._event(JobEvent("submitted", job_id, plan.spec.name, outcome.status, plan.key), plan, ctx)
        else:
            assert job_id is not None and row_id is not None
            ctx = self._context(plan, plan.spec, dry_run=False)
            ctx.job_id = job_id
            # Followed again on resume: an earlier give-up (TIMED_OUT) may have been delivered.
            ctx.redelivery = bool(record and record.deliveries)
            with contextlib.suppress(OpusRunnerError):
                ctx.workflow = await self.schema_for(plan.workflow, ctx)
            outcome.status = record.status if record else None

        if not plan.wait.enabled:
            self.reporter.message(f"{plan.key}: job {job_id} submitted; follow it with: opus-run status {job_id}")
            return
        status = await self._wait(plan, job_id, row_id, ctx, outcome)
        gave_up = status is None
        result = await self._finish(plan, job_id, row_id, status or GAVE_UP, ctx, outcome, gave_up=gave_up)
        await self._deliver(plan, result, row_id, ctx, outcome, only=None)

    async def _wait(self, plan: JobPlan, job_id: str, row_id: int, ctx: Context, outcome: JobOutcome) -> str | None:
        """Poll status with capped exponential backoff and jitter until terminal (the status),
        or until the timeout (None)."""
        assert self.client is not None and self.journal is not None
        settings = plan.wait
        deadline = time.monotonic() + settings.timeout
        interval = settings.poll_interval
        last: str | None = None
        unknown = 0  # consecutive UNKNOWN readings
        unreadable = False
        while True:
            try:
                status = await self.client.status(job_id)
            except (ApiError, NetworkError) as exc:
                # An executed job is followed for as long as its wait allows: a rate limit or a
                # gateway hiccup (already retried by the client) never abandons it.
                if not _transient(exc):
                    raise
                if not unreadable:
                    unreadable = True
                    self.reporter.message(
                        f"{plan.key}: the status of job {job_id} could not be read ({exc}); still "
                        f"following it until wait.timeout ({settings.timeout:g}s)",
                        level="warning",
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                await asyncio.sleep(min(remaining, interval * random.uniform(0.5, 1.0)))
                interval = min(settings.max_interval, interval * 2)
                continue
            unknown = unknown + 1 if status == "UNKNOWN" else 0
            if unknown == UNKNOWN_WARN_AFTER:
                self.reporter.message(
                    f"{plan.key}: job {job_id} has reported status UNKNOWN {unknown} times in a row; "
                    f"still checking until wait.timeout ({settings.timeout:g}s). Look at it with "
                    f"'opus-run status {job_id}' or in Opus",
                    level="warning",
                )
            if status != last:
                self.journal.add_status(row_id, status)
                outcome.status = status
                # The terminal status gets its own event (completed, failed...) from _finish.
                if status not in TERMINAL_STATUSES and (last is not None or status != "PENDING"):
                    await self._event(JobEvent("status", job_id, plan.spec.name, status, plan.key), plan, ctx)
                last = status
            if status in TERMINAL_STATUSES:
                return status
            if self.reporter.wants_progress and self._batch_size == 1:  # node progress shows for one job only
                with contextlib.suppress(OpusRunnerError):
                    audit = await self.client.audit(job_id)
                    self.reporter.progress(
                        plan.key, job_id, status, audit.running_node, audit.nb_executed, audit.nb_nodes
                    )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            await asyncio.sleep(min(remaining, interval * random.uniform(0.8, 1.0)))
            # Gentle growth: a 10 s job is seen within about 2 s of its end with 6 status calls.
            # UNKNOWN is re-checked at the first interval: it is a reading to confirm, not progress.
            interval = settings.poll_interval if unknown else min(settings.max_interval, interval * 1.3)

    async def _finish(
        self,
        plan: JobPlan,
        job_id: str,
        row_id: int,
        status: str,
        ctx: Context,
        outcome: JobOutcome,
        *,
        gave_up: bool = False,
    ) -> JobResult:
        assert self.client is not None and self.journal is not None
        result = JobResult(
            job_id=job_id,
            status=status,
            spec_name=plan.spec.name,
            plan_key=plan.key,
            title=plan.title,
            finished_at=now_iso(),
            final=not gave_up,
        )
        if status == "COMPLETED":
            data = await self._results_patiently(plan, job_id)
            result.outputs = redact.mask_obj(data.outputs)
            result.raw = redact.mask_obj(data.raw)
            if not data.recognised:
                shown = ", ".join(sorted(map(str, data.raw))) if isinstance(data.raw, Mapping) else type(data.raw).__name__
                self.reporter.message(
                    f"{plan.key}: job {job_id} completed, but its results hold no outputs opus-runner "
                    f"recognises (keys: {shown or 'none'}); its outputs are left empty. Look at the "
                    f"answer with 'opus-run results {job_id}'",
                    level="warning",
                )
        elif status == GAVE_UP and gave_up:
            result.error = (
                f"job {job_id} did not finish within {plan.wait.timeout:g}s; it may still be running: "
                f"check it with 'opus-run status {job_id}' or finish the run with 'opus-run resume {self.run_id}'"
            )
        else:
            result.error = await self._failure_reason(job_id, status)
        outcome.status = status
        outcome.result = result
        outcome.error = result.error
        outcome.exit_code = 0 if status == "COMPLETED" else 1
        if gave_up:
            # The job may still finish on the platform: it stays unfinished in the journal, so
            # `opus-run resume` follows it again and delivers its real result.
            self.journal.add_status(row_id, status)
        else:
            self.journal.set_result(row_id, status=status, result={**result.as_dict(), "raw": result.raw}, error=result.error)
        kind = _TERMINAL_EVENT.get(status, "failed")
        await self._event(
            JobEvent(kind, job_id, plan.spec.name, status, plan.key, result=result, error=result.error), plan, ctx
        )
        return result

    async def _failure_reason(self, job_id: str, status: str) -> str:
        """Name the failed node (from the audit) and the platform's error, when available."""
        assert self.client is not None
        parts = [f"job {job_id} ended {status}"]
        with contextlib.suppress(OpusRunnerError):
            audit = await self.client.audit(job_id)
            if audit.failed_nodes:
                parts.append(f"failed node: {', '.join(audit.failed_nodes)}")
        with contextlib.suppress(OpusRunnerError):
            data = await self.client.results(job_id)
            if data.error:
                parts.append(data.error)
        return redact.mask("; ".join(parts))

    async def _patiently(self, plan: JobPlan, call: Callable[[], Awaitable[_T]]) -> _T:
        """``call()`` again through transient failures (rate limits, gateways, the network) for
        as long as the job's wait allows: a busy platform slows a batch down, never fails it.
        Only for calls that are safe to repeat (initiate: a lost one leaves an unused job)."""
        deadline = time.monotonic() + plan.wait.timeout
        interval = max(plan.wait.poll_interval, 0.5)
        while True:
            try:
                return await call()
            except (ApiError, NetworkError) as exc:
                remaining = deadline - time.monotonic()
                if isinstance(exc, (ExecuteOutcomeUnknown, ExecuteRefused)) or not _transient(exc) or remaining <= 0:
                    raise
                self.log.info(redact.mask(f"{plan.key}: {exc}; trying again in about {interval:.0f} s"))
            await asyncio.sleep(min(remaining, interval * random.uniform(0.5, 1.0)))
            interval = min(plan.wait.max_interval, interval * 2)

    async def _execute_patiently(
        self, plan: JobPlan, job_id: str, payload: dict[str, Any], workspaces: tuple[str, ...]
    ) -> Any:
        """Execute, sent again only while the job provably has no input; an unclear outcome is
        settled by asking the job, patiently, never by guessing."""
        assert self.client is not None
        client = self.client
        send = lambda: client.execute(job_id, payload, callback_url=self._callback_url(plan), workspaces=workspaces)  # noqa: E731
        deadline = time.monotonic() + plan.wait.timeout
        while True:
            try:
                return await self._patiently(plan, send)
            except ExecuteNotReceived:
                if time.monotonic() >= deadline:
                    raise  # the journal keeps it unconfirmed: resume asks again
                # No input after every attempt: safe to send again.
            except ExecuteOutcomeUnknown as exc:
                # The job could not be read, or the request got no answer: ask the job (within
                # the wait). "No input" allows sending again only when the request is over (an
                # HTTP answer came); after an answer-less one it may still land, so the job
                # stays unconfirmed for resume, never sent twice.
                try:
                    received, status = await self._patiently(plan, lambda: client.execute_received(job_id))
                except (ApiError, NetworkError):
                    raise exc from None  # it says what matters: the outcome is unknown, nothing was resent
                if received:
                    from .client import ExecuteOutcome

                    return ExecuteOutcome(job_id, False, status, f"execute was settled by reading job {job_id}")
                if received is None or not exc.answered or time.monotonic() >= deadline:
                    raise
            await asyncio.sleep(random.uniform(0.5, 1.0) * max(plan.wait.poll_interval, 0.5))

    async def _results_patiently(self, plan: JobPlan, job_id: str) -> Any:
        """A completed job's results, read again through transient failures for as long as the
        job's wait allows (then the error stands, and the job stays unfinished for resume)."""
        assert self.client is not None
        deadline = time.monotonic() + plan.wait.timeout
        interval = plan.wait.poll_interval
        while True:
            try:
                return await self.client.results(job_id)
            except (ApiError, NetworkError) as exc:
                remaining = deadline - time.monotonic()
                if not _transient(exc) or remaining <= 0:
                    raise
            await asyncio.sleep(min(remaining, interval * random.uniform(0.5, 1.0)))
            interval = min(plan.wait.max_interval, interval * 2)

    def _workspaces(self, plan: JobPlan, ctx: Context) -> tuple[str, ...]:
        """``workflow.workspaces``, else the workflow's own workspace when it reports one."""
        if plan.workspaces:
            return plan.workspaces
        own = ctx.workflow.workspace_id if ctx.workflow else None
        return (own,) if own else ()

    def _callback_url(self, plan: JobPlan) -> str:
        """The spec's ``callback.url``, else the project's ``callback_url``, else the
        never-resolving placeholder (Opus requires one on every execute)."""
        from .urls import PLACEHOLDER_CALLBACK_URL

        configured = self.config.callback_url if self.config else None
        return plan.callback_url or configured or PLACEHOLDER_CALLBACK_URL

    async def _refused(
        self, plan: JobPlan, job_id: str, row_id: int, ctx: Context, outcome: JobOutcome, exc: ExecuteRefused
    ) -> JobResult:
        assert self.journal is not None
        error = redact.mask(str(exc.message))
        result = JobResult(
            job_id=job_id,
            status="FAILED",
            spec_name=plan.spec.name,
            plan_key=plan.key,
            title=plan.title,
            finished_at=now_iso(),
            error=error,
        )
        self.journal.set_result(row_id, status="FAILED", result={**result.as_dict(), "raw": {}}, error=error)
        outcome.status, outcome.result, outcome.error, outcome.exit_code = "FAILED", result, error, exc.exit_code
        self.reporter.message(f"{plan.key}: {error}", level="error")
        await self._event(JobEvent("failed", job_id, plan.spec.name, "FAILED", plan.key, result=result, error=error), plan, ctx)
        return result

    # -- events, outputs, notifiers ----------------------------------------------------------

    async def _event(self, event: JobEvent, plan: JobPlan, ctx: Context) -> None:
        assert self.host is not None
        event.time = event.time or now_iso()
        self.reporter.event(event)
        late = len(self.host.timed_out)
        await self.host.each("opus_job_event", offload=True, isolate=True, event=event, ctx=ctx)
        if len(self.host.timed_out) > late:
            self._notify_failed = True  # an observer ran out of time: exit 1, as for a notifier
        if event.kind == "status":
            return
        from .plugins import notify_events

        for index, entry in enumerate(plan.notify):
            if event.kind not in notify_events(entry):
                continue
            await self._call_target("notify", index, entry, plan, event, ctx, event.result, None, None)

    async def _deliver(
        self,
        plan: JobPlan,
        result: JobResult,
        row_id: int,
        ctx: Context,
        outcome: JobOutcome,
        only: set[str] | None,
    ) -> None:
        """Route the result to every output; a failing output never loses the result."""
        for index, entry in enumerate(plan.outputs):
            target = f"outputs[{index}]:{entry.get('type')}"
            if only is not None and target not in only:
                continue
            await self._call_target("outputs", index, entry, plan, result, ctx, result, row_id, outcome)

    async def _call_target(
        self,
        kind: str,
        index: int,
        entry: Mapping[str, Any],
        plan: JobPlan,
        subject: Any,
        ctx: Context,
        result: JobResult | None,
        row_id: int | None,
        outcome: JobOutcome | None,
    ) -> None:
        from .plugins import call_handler

        assert self.host is not None
        registry = self.host.outputs if kind == "outputs" else self.host.notifiers
        type_name = str(entry.get("type"))
        target = f"{kind}[{index}]:{type_name}"
        handler = registry[type_name]
        if kind == "outputs" and self.journal is not None and row_id is not None:
            # Intended before it is written: a crash between the write and its record leaves
            # this mark, and the redelivery then checks the target first (ctx.redelivery).
            self.journal.record_delivery(row_id, target, ok=False)
        assert self.config is not None
        timeout = self.config.timeouts.notify if kind == "notify" else self.config.timeouts.outputs
        try:
            config = self._render_target(entry, plan, result, ctx, (kind, index))
            await call_handler(handler, subject, config, ctx, timeout=timeout)
        except Exception as exc:
            if isinstance(exc, OutsideRoot):  # the handler knows its key ("path"), not its entry
                key = (kind, index, *exc.key)
                exc = exc.under(kind, index, file=display_path(plan.spec.path), line=plan.spec.line_of(key))
            if isinstance(exc, TimeoutError):
                reason = f"did not finish within {timeout:g} s (timeouts.{kind} in opus-runner.toml); the result is kept"
            else:
                reason = redact.mask(str(exc) or type(exc).__name__)
            message = f"{kind[:-1] if kind == 'outputs' else 'notifier'} {type_name!r} (plugin {handler.plugin}) failed for {plan.key}: {reason}"
            self.reporter.message(message, level="error")
            if self.journal is not None and row_id is not None:
                self.journal.record_delivery(row_id, target, ok=False, error=message)
            if outcome is not None:
                outcome.delivery_failures.append(message)
                outcome.exit_code = worst([outcome.exit_code, 1])
            if kind == "notify":
                self._notify_failed = True  # the run's exit code says so (1), SPEC.md section 3
            return
        if self.journal is not None and row_id is not None:
            self.journal.record_delivery(row_id, target, ok=True)
        if outcome is not None:
            outcome.delivered.append(_target_label(config))

    def _render_target(
        self,
        entry: Mapping[str, Any],
        plan: JobPlan,
        result: JobResult | None,
        ctx: Context,
        key: tuple[str | int, ...],
    ) -> dict[str, Any]:
        from .templating import Namespace, Templater

        templater: Templater = self._templater_for_targets()
        job = {
            "id": ctx.job_id,
            "status": result.status if result else None,
            "title": plan.title,
            "url": result.url if result else None,
        }
        res = {"outputs": result.outputs if result else {}, "status": result.status if result else None}
        context = dict(plan.context)
        context["job"] = Namespace("job", job)
        context["result"] = Namespace("result", res)
        return dict(templater.render(dict(entry), context, file=display_path(plan.spec.path), key=key))

    def _templater_for_targets(self) -> Any:
        cached = self.shared.get("opus_runner.target_templater")
        if cached is None:
            from .templating import Templater

            assert self.host is not None
            cached = Templater(
                globals=self.host.template_globals(None),
                filters=self.host.template_filters(None),
                environ=self.environ,
                budget=self.config.template_budget if self.config else None,
            )
            self.shared["opus_runner.target_templater"] = cached
        return cached


def _check_as_recorded(
    plan: JobPlan,
    record: JobRecord,
    payload: Mapping[str, Any],
    schema: WorkflowSchema | None,
    sent_files: Mapping[str, str],
) -> None:
    """Refuse to execute an initiated job with other inputs than its run recorded.

    Values are compared as journaled, secrets masked: no trace of a secret, not even a hash
    (an offline guessing oracle for a weak one), is kept, so a rotated secret is no change.
    File inputs are compared by the sha256 of each local file's content, since a file is
    uploaded again by every run and gets a new URL (runs journaled before this was kept
    recorded no digests and compare values only).
    """
    then_files = record.plan.get("files")
    if isinstance(then_files, Mapping) and dict(then_files) != dict(sent_files):
        changed_files = sorted(p for p in set(then_files) | set(sent_files) if then_files.get(p) != sent_files.get(p))
        raise UsageError(
            f"job {record.job_id} ({plan.key}) was initiated by the run that stopped, and the file "
            f"{', '.join(changed_files)} it sends has changed since; it was not executed. To execute it "
            f"with the files of now: opus-run resume {record.run_id} --replan"
        )
    files = {f.variable_name for f in schema.inputs if f.is_file} if schema else set()

    def comparable(values: Mapping[str, Any]) -> dict[str, Any]:
        return {var: entry for var, entry in values.items() if var not in files}

    now, then = comparable(redact.mask_obj(_jsonable(payload))), comparable(record.payload or {})
    if now != then:
        changed = sorted(v for v in set(now) | set(then) if now.get(v) != then.get(v))
        raise UsageError(
            f"job {record.job_id} ({plan.key}) was initiated by the run that stopped, with other values for "
            f"{', '.join(changed)} than the spec and data give now; it was not executed. To execute it "
            f"with the values of now: opus-run resume {record.run_id} --replan"
        )


def _transient(exc: OpusRunnerError) -> bool:
    """A failure that says "not now" rather than "no": the network, a rate limit, a gateway."""
    if isinstance(exc, NetworkError):
        return getattr(exc, "transient", True)  # not an answer that trickled past its deadline
    status = getattr(exc, "status_code", None)
    return status in (408, 425, 429, 500, 502, 503, 504)


def _target_label(entry: Mapping[str, Any]) -> str:
    where = entry.get("path") or entry.get("dir") or entry.get("url")
    return f"{entry.get('type')}:{where}" if where and entry.get("type") != "webhook" else str(entry.get("type"))


def _tag(errors: Iterable[SpecError], plan: JobPlan) -> list[SpecError]:
    """Name the fanned-out job (matrix/foreach) an error belongs to; a lone job needs no name."""
    if plan.key == plan.spec.name:
        return list(errors)
    where = f"job {plan.key}" + (f", foreach row {plan.row_number}" if plan.row_number is not None else "")
    return [SpecError(f"{err.message} ({where})", file=err.file, key=err.key, line=err.line) for err in errors]


def _jsonable(value: Any) -> Any:
    import json

    return json.loads(json.dumps(value, default=str))


def _file_digest(path: Path) -> str:
    import hashlib

    try:
        with path.open("rb") as handle:  # in blocks: an input file may be larger than memory
            return hashlib.file_digest(handle, "sha256").hexdigest()
    except OSError:
        return "missing"


def _options_record(opts: RunOptions) -> dict[str, Any]:
    """What the journal keeps of the options (to resume with the same settings)."""
    return {
        "specs": [str(s) for s in opts.specs],
        "var": list(opts.var),
        "vars_file": str(opts.vars_file) if opts.vars_file else None,
        "vars": dict(opts.vars) if opts.vars else None,
        "base_url": opts.base_url,
        "sandbox": opts.sandbox,
        "no_wait": opts.no_wait,
        "timeout": opts.timeout,
        "plugins": list(opts.plugins),
        "no_local_plugins": opts.no_local_plugins,
        "untrusted": opts.untrusted,
        "allow_outside_root": opts.allow_outside_root,
        "only": list(opts.only),
        "shard": opts.shard,
        "limit": opts.limit,
    }


def load_vars_file(path: Path) -> dict[str, Any]:
    """Variables from a YAML or JSON mapping (``--vars-file``), read like a spec (spec.load_data)."""
    from .spec import load_data

    if not path.is_file():
        raise UsageError(f"--vars-file {path}: no such file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--vars-file {path}: cannot read it: {exc}") from None
    try:
        data = load_data(text, display=str(path), json_format=path.suffix.lower() == ".json")
    except SpecError as exc:
        raise UsageError(f"--vars-file {path}: {exc.message}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"--vars-file {path}: expected a mapping of variable names to values, found {type(data).__name__}")
    return data


def run(specs: str | Path | Sequence[str | Path], **options: Any) -> RunReport:
    """Run specs from Python code, with the same options as the command line.

    ``opus_runner.run("specs/summarize.yaml", sandbox=True, vars={"month": "2026-11"})``
    returns a :class:`RunReport` (``report.results``, ``report.exit_code``). Errors that stop the
    whole run raise :class:`~opus_runner.errors.OpusRunnerError` subclasses.
    """
    return asyncio.run(arun(specs, **options))


async def arun(specs: str | Path | Sequence[str | Path], *, reporter: Reporter | None = None, **options: Any) -> RunReport:
    """The async variant of :func:`run`, for event loops that already run (orchestrators, workers)."""
    if isinstance(specs, (str, Path)):
        specs = [specs]
    opts = RunOptions(specs=list(specs), **options)
    return await Runner(opts, reporter=reporter).run()
