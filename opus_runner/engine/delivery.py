"""Where a job's events and result go: observers, notifiers and outputs, each delivery journaled.

A delivery target is one entry of a job's ``outputs`` or ``notify`` list, keyed in the journal
as :attr:`Target.key` (``outputs[0]:json``). An output is marked intended before it is written
and delivered after, so a resume delivers again exactly what a crash or a failure left out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import redact
from ..errors import SpecError, ValidationFailed
from ..models import Context, JobEvent, JobResult
from ..paths import PATH_KEYWORD, OutsideRoot, confine, display_path
from ..planning import JobPlan
from ..progress import now_iso
from .report import JobOutcome, worst
from .session import Session

if TYPE_CHECKING:  # pragma: no cover
    from ..state import JobRecord


@dataclass(frozen=True)
class Target:
    """One entry of a job's ``outputs`` (or ``notify``) list."""

    kind: str  # "outputs" or "notify"
    index: int
    type_name: str

    @property
    def key(self) -> str:
        """The journal's name for this target."""
        return f"{self.kind}[{self.index}]:{self.type_name}"

    @property
    def label(self) -> str:
        """How a failure names it: ``output 'json'``, ``notifier 'slack'``."""
        return f"{'output' if self.kind == 'outputs' else 'notifier'} {self.type_name!r}"

    @classmethod
    def outputs_of(cls, plan: JobPlan) -> list[tuple[Target, Mapping[str, Any]]]:
        return [(cls("outputs", i, str(entry.get("type"))), entry) for i, entry in enumerate(plan.outputs)]


@dataclass(frozen=True)
class DeliveryRecord:
    """The journal's last word on one target of one job."""

    target: str  # a Target.key
    ok: bool
    error: str | None = None
    at: str | None = None

    @classmethod
    def all_of(cls, record: JobRecord) -> dict[str, DeliveryRecord]:
        return {
            key: cls(key, bool(d.get("ok")), d.get("error"), d.get("at")) for key, d in record.deliveries.items()
        }


def result_of(record: JobRecord) -> JobResult:
    """The result of a finished job, as the journal keeps it."""
    data = record.result or {}
    return JobResult(
        job_id=str(record.job_id),
        status=str(record.status),
        outputs=data.get("outputs") or {},
        raw=data.get("raw") or {},
        spec_name=record.spec_name,
        plan_key=record.plan_key,
        title=data.get("title") or record.title,
        url=data.get("url"),
        started_at=data.get("started_at"),
        finished_at=data.get("finished_at"),
        error=record.error,
    )


class Delivery:
    """Events, outputs and notifiers of one run."""

    def __init__(self, session: Session) -> None:
        self.session = session
        #: a notifier (or an observer) failed during the run: it exits 1 at least
        self.notify_failed = False

    async def event(self, event: JobEvent, plan: JobPlan, ctx: Context) -> None:
        """Tell the reporter, the ``opus_job_event`` observers and the notifiers subscribed to
        the event's kind; with none of them listening, nothing is done at all."""
        from ..plugins import notify_events

        host, reporter = self.session.host, self.session.reporter
        assert host is not None
        shown = reporter.shows(event.kind)
        observed = host.observes_jobs()
        notifiers = [] if event.kind == "status" else [
            (index, entry) for index, entry in enumerate(plan.notify) if event.kind in notify_events(entry)
        ]
        if not (shown or observed or notifiers):
            return
        event.time = event.time or now_iso()
        if shown:
            reporter.event(event)
        if observed:
            late = len(host.timed_out)
            await host.job_event(event, ctx)
            if len(host.timed_out) > late:
                self.notify_failed = True  # an observer ran out of time: exit 1, as for a notifier
        for index, entry in notifiers:
            target = Target("notify", index, str(entry.get("type")))
            await self._call(target, entry, plan, event, ctx, event.result, None, None)

    async def deliver(
        self,
        plan: JobPlan,
        result: JobResult,
        row_id: int,
        ctx: Context,
        outcome: JobOutcome,
        only: set[str] | None = None,
        *,
        marked: bool = False,
    ) -> None:
        """Route the result to every output (or the targets keyed in ``only``); a failing
        output never loses the result. ``marked``: the journal already has every target marked
        intended (:func:`intended`, written with the result)."""
        for target, entry in Target.outputs_of(plan):
            if only is not None and target.key not in only:
                continue
            await self._call(target, entry, plan, result, ctx, result, row_id, outcome, marked=marked)

    @staticmethod
    def intended(plan: JobPlan) -> list[str]:
        """The outputs a finished job is about to be delivered to, as the journal names them."""
        return [target.key for target, _ in Target.outputs_of(plan)]

    async def redeliver(self, plan: JobPlan, record: JobRecord) -> JobOutcome:
        """A finished job of a resumed run: deliver only what was not delivered before."""
        outcome = JobOutcome(plan.key, plan.spec.name, str(plan.spec.path), job_id=record.job_id, status=record.status)
        result = result_of(record)
        outcome.result = result
        outcome.error = record.error
        outcome.exit_code = 0 if record.status == "COMPLETED" else 1
        # Every output not recorded as delivered: failed ones, and ones a crash interrupted.
        done = DeliveryRecord.all_of(record)
        pending = {t.key for t, _ in Target.outputs_of(plan)} - {k for k, d in done.items() if d.ok}
        assert self.session.host is not None
        outputs = self.session.host.outputs
        # An output about the whole run (junit) hears of every job again: this process writes it.
        pending |= {t.key for t, _ in Target.outputs_of(plan) if getattr(outputs.get(t.type_name), "whole_run", False)}
        if pending:
            ctx = self.session.context(plan, plan.spec, dry_run=False)
            ctx.job_id = record.job_id
            # A target marked intended (or failed) may have been written before the crash.
            ctx.redelivery = any(t in done for t in pending)
            await self.deliver(plan, result, record.row_id, ctx, outcome, only=pending)
        return outcome

    async def _call(
        self,
        target: Target,
        entry: Mapping[str, Any],
        plan: JobPlan,
        subject: Any,
        ctx: Context,
        result: JobResult | None,
        row_id: int | None,
        outcome: JobOutcome | None,
        *,
        marked: bool = False,
    ) -> None:
        from ..plugins import call_handler

        session = self.session
        assert session.host is not None and session.config is not None
        registry = session.host.outputs if target.kind == "outputs" else session.host.notifiers
        journal = session.journal if row_id is not None else None
        if target.kind == "outputs" and journal is not None and not marked:
            # Intended before it is written: a crash between the write and its record leaves
            # this mark, and the redelivery then checks the target first (ctx.redelivery).
            journal.record_delivery(row_id, target.key, ok=False)  # type: ignore[arg-type]
        timeout = session.config.timeouts.notify if target.kind == "notify" else session.config.timeouts.outputs
        # A notifier hears several events of one job: each is its own delivery.
        kind = getattr(subject, "kind", None) if target.kind == "notify" else None
        ctx.idempotency_key = delivery_key(session.run_id, plan.key, target.key + (f":{kind}" if kind else "")) if session.run_id else None
        handler = registry.get(target.type_name)
        try:
            if handler is None:
                # Checked before the run; a resume loads the plugins of now, which may lack it.
                raise LookupError(f"no plugin registers the type {target.type_name!r} now; load the plugin that does and resume again")
            config = self._render(entry, plan, result, ctx, (target.kind, target.index))
            await call_handler(handler, subject, config, ctx, timeout=timeout)
        except Exception as exc:
            if isinstance(exc, OutsideRoot):  # the handler knows its key ("path"), not its entry
                key = (target.kind, target.index, *exc.key)
                exc = exc.under(target.kind, target.index, file=display_path(plan.spec.path), line=plan.spec.line_of(key))
            if isinstance(exc, TimeoutError):
                reason = f"did not finish within {timeout:g} s (timeouts.{target.kind} in opus-runner.toml); the result is kept"
            else:
                reason = redact.mask(str(exc) or type(exc).__name__)
            plugin = f" (plugin {handler.plugin})" if handler is not None else ""
            message = f"{target.label}{plugin} failed for {plan.key}: {reason}"
            if outcome is not None:  # the job's failure: its summary says it (the text reporters)
                session.reporter.job_error(message)
            else:
                session.reporter.message(message, level="error")
            if journal is not None:
                journal.record_delivery(row_id, target.key, ok=False, error=message)  # type: ignore[arg-type]
            if outcome is not None:
                outcome.delivery_failures.append(message)
                outcome.exit_code = worst([outcome.exit_code, 1])
            if target.kind == "notify":
                self.notify_failed = True  # the run's exit code says so (1), SPEC.md section 3
            return
        if journal is not None:
            journal.record_delivery(row_id, target.key, ok=True)  # type: ignore[arg-type]
        if outcome is not None:
            outcome.delivered.append(target_label(config))

    def _render(
        self,
        entry: Mapping[str, Any],
        plan: JobPlan,
        result: JobResult | None,
        ctx: Context,
        key: tuple[str | int, ...],
    ) -> dict[str, Any]:
        from ..templating import Namespace

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
        templater = self._templater().for_spec(plan.spec)
        return dict(templater.render(dict(entry), context, file=display_path(plan.spec.path), key=key))

    def _templater(self) -> Any:
        shared = self.session.shared
        cached = shared.get("opus_runner.target_templater")
        if cached is None:
            from ..templating import Templater

            session = self.session
            assert session.host is not None
            cached = Templater(
                plugins=session.host,
                environ=session.environ,
                budget=session.config.template_budget if session.config else None,
            )
            shared["opus_runner.target_templater"] = cached
        return cached


def check_targets(session: Session) -> None:
    """Output and notifier types and their configs are checked before anything is sent."""
    assert session.host is not None and session.config is not None
    errors: list[SpecError] = []
    for spec in session.specs:
        for kind in ("outputs", "notify"):
            entries = spec.data.get(kind)
            if entries is None:
                entries = getattr(session.config, kind) or ([{"type": "stdout"}] if kind == "outputs" else [])
            for err in session.host.check_config(kind, list(entries), file=display_path(spec.path), key=kind):
                err.line = err.line or spec.line_of(err.key)
                errors.append(err)
            if kind == "outputs" and isinstance(entries, list):
                errors.extend(_static_paths_outside(session, spec, entries))
    if errors:
        raise ValidationFailed(errors)


def _static_paths_outside(session: Session, spec: Any, entries: list[Any]) -> list[SpecError]:
    """Output paths written without a template, refused now rather than after the job ran
    (a templated one is checked when its output is written)."""
    assert session.host is not None
    errors: list[SpecError] = []
    for index, entry in enumerate(entries):
        handler = session.host.outputs.get(entry.get("type")) if isinstance(entry, dict) else None
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
                    root=session.repo_root(spec),
                    allow_outside_root=session.options.allow_outside_root,
                    file=display_path(spec.path),
                    key=key,
                    line=spec.line_of(key),
                )
            except OutsideRoot as exc:
                errors.append(exc)
    return errors


def delivery_key(run_id: str, plan_key: str, target: str) -> str:
    """The idempotency key of one delivery: one run, one job, one target (``outputs[0]:json``)."""
    return f"{run_id}:{plan_key}:{target}"


def target_label(entry: Mapping[str, Any]) -> str:
    where = entry.get("path") or entry.get("dir") or entry.get("url")
    return f"{entry.get('type')}:{where}" if where and entry.get("type") != "webhook" else str(entry.get("type"))
