"""Planning: expand loaded specs (matrix, foreach) into rendered job plans, each with a stable key.

Plans are produced by generators: a 10,000-row foreach is read row by row, never held whole,
and the same specs planned twice give the same plans in the same order (the runner plans once
to validate everything, then again to submit).
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .callbacks.tokens import ReceiverSettings, parse_listen, public_url_problem
from .durations import parse_duration
from .messages import did_you_mean
from .errors import SpecError, TemplateError, UsageError, ValidationFailed
from .models import UploadSettings, WorkflowRef
from .config import load_project_config
from .paths import confine, display_path
from .spec import Spec, load_data
from .templating import Templater, build_context, parse_var_value
from .urls import is_loopback_host
from .workflow import workflow_id_problem

#: Hex digits of a row digest in a plan key (48 bits: no collision in any real batch).
ROW_DIGEST_LENGTH = 12
DEFAULT_TIMEOUT = 3600.0
DEFAULT_POLL = 2.0
DEFAULT_MAX_INTERVAL = 30.0
WAIT_MODES = ("poll", "hybrid", "callback")
#: Status reads while a job waits for its callback: often in hybrid, rarely in callback mode.
DEFAULT_SAFETY_INTERVAL = {"hybrid": 60.0, "callback": 600.0}
#: Jobs one run may plan (matrix combinations times foreach rows, over every spec): a typo such
#: as a range too many turns into a refusal before anything is built, not a run that never ends.
MAX_JOBS_PER_RUN = 100_000


@dataclass(frozen=True)
class WaitSettings:
    enabled: bool = True
    timeout: float = DEFAULT_TIMEOUT
    poll_interval: float = DEFAULT_POLL
    max_interval: float = DEFAULT_MAX_INTERVAL
    #: poll: read the status on a backoff schedule; hybrid and callback: read it when the job's
    #: callback arrives, and every ``safety_interval`` in case it never does
    mode: str = "poll"
    safety_interval: float = 0.0


@dataclass
class JobPlan:
    """One job to run: everything rendered except ``outputs``/``notify`` (rendered after the job)."""

    spec: Spec
    key: str
    matrix: dict[str, Any]
    row: dict[str, Any] | None
    row_number: int | None
    vars: dict[str, Any]
    metadata: dict[str, Any]
    workflow: WorkflowRef
    title: str
    description: str
    inputs: dict[str, Any]
    wait: WaitSettings
    callback_url: str | None  # the spec's callback.url; the runner falls back (see docs/spec.md)
    outputs: list[dict[str, Any]]
    notify: list[dict[str, Any]]
    context: dict[str, Any] = field(repr=False, default_factory=dict)
    #: ``workspaces`` for initiate and execute; empty: the workflow's own workspace, if known
    workspaces: tuple[str, ...] = ()
    uploads: UploadSettings = field(default_factory=lambda: UploadSettings())
    #: the spec's callback.listen / callback.public_url (the run serves one receiver for all)
    receiver: ReceiverSettings = field(default_factory=lambda: ReceiverSettings())

    def describe(self) -> dict[str, Any]:
        """What the journal keeps to find this plan again on resume."""
        return {
            "key": self.key,
            "matrix": self.matrix,
            "row": self.row,
            "row_number": self.row_number,
            "vars": self.vars,
        }


@dataclass(frozen=True)
class PlanFailed:
    """One job of a spec that could not be planned: every template or setting problem of it,
    each as written in the spec, without the job's name (the check pass says which jobs share
    a problem). Its ``key``, ``matrix`` and ``row`` are those the plan would have had, so the
    selectors (``--only``, ``--shard``) treat it as they would the plan."""

    spec: Spec
    key: str
    matrix: dict[str, Any]
    row: dict[str, Any] | None
    row_number: int | None
    errors: tuple[SpecError, ...]

    def where(self) -> str:
        """The job among the spec's jobs: ``matrix region=eu, foreach row 3``; empty for a lone job."""
        parts = [f"matrix {_combo_text(self.matrix)}" if self.matrix else "", f"foreach row {self.row_number}" if self.row_number is not None else ""]
        return ", ".join(filter(None, parts))

    def error(self) -> SpecError:
        """The problems as one exception, each naming the job (planning outside the check pass)."""
        where = self.where()
        errors = [
            type(e)(f"{e.message} ({where})", file=e.file, key=e.key, line=e.line) if where else e for e in self.errors
        ]
        return errors[0] if len(errors) == 1 else ValidationFailed(errors)  # type: ignore[return-value]


@dataclass(frozen=True)
class PlanFilter:
    """``--only KEY=VALUE`` (all must match a matrix or row value), ``--shard K/N``, ``--limit N``."""

    only: tuple[tuple[str, str], ...] = ()
    shard: tuple[int, int] | None = None
    limit: int | None = None
    keys: frozenset[str] | None = None  # exactly these plan keys (resume)

    @property
    def selects(self) -> bool:
        """Whether a selector of the command line is given (--only, --shard, --limit)."""
        return bool(self.only) or self.shard is not None or self.limit is not None

    def admits(self, plan: JobPlan) -> bool:
        if self.keys is not None and plan.key not in self.keys:
            return False
        return all(self.only_matches(plan)) and self.in_shard(plan)

    def only_matches(self, plan: JobPlan) -> list[bool]:
        """For each ``--only KEY=VALUE``, whether the plan's matrix or row value KEY is VALUE."""
        out = []
        for name, wanted in self.only:
            values = [plan.matrix.get(name), (plan.row or {}).get(name)]
            out.append(any(v is not None and str(v) == wanted for v in values))
        return out

    def in_shard(self, plan: JobPlan) -> bool:
        if self.shard is None:
            return True
        k, n = self.shard
        # By hash of the plan key, not by position: a row added to a CSV moves no other job
        # to another shard.
        return shard_of(plan.key, n) == k


#: Matrix values a "selected nothing" message lists per key, at most.
_VALUES_SHOWN = 10


@dataclass
class Selection:
    """How the selectors of the command line thinned one spec's plans, for the message when
    they selected nothing. Row values are never kept: a message must not carry a data file's
    content (matrix values come from the spec itself)."""

    planned: int = 0
    #: plans each --only term admits on its own
    per_only: list[int] = field(default_factory=list)
    #: plans every --only term admits
    only: int = 0
    #: of those, the plans in the --shard
    sharded: int = 0
    row_keys: set[str] = field(default_factory=set)
    matrix_values: dict[str, list[str]] = field(default_factory=dict)

    def count(self, plan: JobPlan, matches: list[bool], in_shard: bool) -> None:
        self.planned += 1
        if not self.per_only:
            self.per_only = [0] * len(matches)
        for i, matched in enumerate(matches):
            self.per_only[i] += matched
        if plan.row:
            self.row_keys.update(str(k) for k in plan.row)
        for name, value in plan.matrix.items():
            seen = self.matrix_values.setdefault(str(name), [])
            if len(seen) <= _VALUES_SHOWN and _scalar(value) not in seen:
                seen.append(_scalar(value))
        if all(matches):
            self.only += 1
            self.sharded += in_shard


def nothing_selected(plan_filter: PlanFilter, selections: Sequence[tuple[Spec, Selection]]) -> str | None:
    """The sentence for selectors that admit none of the planned jobs (which one, out of how
    many), or None when they selected some, or there was nothing to select from."""
    planned = sum(s.planned for _spec, s in selections)
    if not plan_filter.selects or planned == 0:
        return None
    where = (
        f"of the {_jobs(planned)} planned from "
        + (_rel(selections[0][0]) if len(selections) == 1 else f"{len(selections)} specs")
    )
    if plan_filter.only and sum(s.only for _spec, s in selections) == 0:
        for i, (name, wanted) in enumerate(plan_filter.only):
            if sum(s.per_only[i] for _spec, s in selections if s.per_only) == 0:
                return f"--only {name}={wanted} selected none {where}: {_why_no_match(name, wanted, selections)}"
        given = " ".join(f"--only {n}={v}" for n, v in plan_filter.only)
        return f"{given} together selected none {where} (each alone selects some): no job has all those values; drop one"
    if plan_filter.shard is not None and sum(s.sharded for _spec, s in selections) == 0:
        k, n = plan_filter.shard
        after = sum(s.only for _spec, s in selections)
        among = f"the {_jobs(after)} --only selected" if plan_filter.only else f"the {_jobs(planned)} planned"
        return (
            f"--shard {k}/{n} selected none of {among}: jobs go to shards by a hash of their names, so "
            f"with {_jobs(after)} over {n} shards some shards are empty; use fewer shards"
        )
    return None


def _jobs(count: int) -> str:
    return f"{count} job{'s' if count != 1 else ''}"


def _why_no_match(name: str, wanted: str, selections: Sequence[tuple[Spec, Selection]]) -> str:
    matrix: dict[str, list[str]] = {}
    rows: set[str] = set()
    for _spec, s in selections:
        for key, values in s.matrix_values.items():
            matrix.setdefault(key, []).extend(v for v in values if v not in matrix.get(key, []))
        rows |= s.row_keys
    if name in matrix:
        values = matrix[name]
        shown = ", ".join(values[:_VALUES_SHOWN]) + (", ..." if len(values) > _VALUES_SHOWN else "")
        hint = did_you_mean(wanted, values)
        return f"matrix.{name} is one of {shown}" + (f"; {hint}" if hint else "")
    if name in rows:
        return f"no foreach row has {wanted!r} in its {name!r} column"
    names = sorted(set(matrix) | rows)
    if not names:
        return "the jobs have no matrix or foreach row values to select by"
    hint = did_you_mean(name, names)
    return f"no job has a matrix or row value named {name!r}" + (f"; {hint}" if hint else "") + f" (names: {', '.join(names)})"


def _workspaces(spec: Spec, raw: Any, line: int | None) -> tuple[str, ...]:
    """``workflow.workspaces`` as ids: a list, or one comma-separated string (as the API takes it)."""
    if raw in (None, "", []):
        return ()
    items = raw.split(",") if isinstance(raw, str) else raw
    if not isinstance(items, list) or not all(isinstance(i, str) and i.strip() for i in items):
        raise SpecError(
            f"workflow.workspaces must be a list of workspace ids (or one comma-separated string), found {raw!r}",
            file=_rel(spec),
            key=("workflow", "workspaces"),
            line=line,
        )
    return tuple(i.strip() for i in items)


def shard_of(key: str, shards: int) -> int:
    """The 1-based shard a plan key belongs to among ``shards``."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % shards + 1


def parse_shard(text: str) -> tuple[int, int]:
    try:
        k_text, n_text = text.split("/")
        k, n = int(k_text), int(n_text)
    except ValueError:
        raise UsageError(f"--shard expects K/N such as 2/5, found {text!r}") from None
    if n < 1 or not 1 <= k <= n:
        raise UsageError(f"--shard {text}: K must be between 1 and N (found K={k}, N={n})")
    return k, n


def parse_assignments(items: Sequence[str], option: str) -> list[tuple[str, str]]:
    """``["a=1", "b=x=y"]`` -> ``[("a", "1"), ("b", "x=y")]``; a missing ``=`` is a UsageError."""
    pairs = []
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise UsageError(f"{option} expects KEY=VALUE, found {item!r}")
        pairs.append((name.strip(), value))
    return pairs


def parse_var_assignments(items: Sequence[str], option: str = "--var") -> list[tuple[str, Any]]:
    """``["n=3", "regions=[eu, us]"]`` -> ``[("n", 3), ("regions", ["eu", "us"])]``: each value
    as :func:`~opus_runner.templating.parse_var_value` reads it."""
    return [(name, parse_var_value(text, name=name, option=option)) for name, text in parse_assignments(items, option)]


def check_declared_vars(specs: Sequence[Spec], names: Sequence[str], option: str = "--var") -> None:
    """A UsageError for the first of ``names`` that none of ``specs`` declares under ``vars``:
    a misspelt ``--var quater=Q4`` would otherwise be ignored while the spec runs with its
    default."""
    declared: list[str] = []
    for spec in specs:
        declared += [str(k) for k in spec.data.get("vars") or {} if str(k) not in declared]
    for name in names:
        if name in declared:
            continue
        files = ", ".join(_rel(s) for s in specs)
        if not declared:
            owner = f"{files} declares no vars" if len(specs) == 1 else f"none of {files} declares vars"
            raise UsageError(
                f"{option} {name}: {owner}; to take {name!r} from the command line, declare it in the "
                f"spec with a default or null (vars: {{{name}: null}})"
            )
        owner = f"{files} declares" if len(specs) == 1 else f"{files} declare"
        hint = did_you_mean(name, declared)
        raise UsageError(
            f"{option} {name}: {owner} no variable {name!r}"
            + (f"; {hint}" if hint else "")
            + f" (declared: {', '.join(declared)}); fix the name, or declare it under vars in the spec"
        )


class Planner:
    """Turns specs into JobPlans with one Templater (each spec rendered by its
    :meth:`~opus_runner.templating.Templater.for_spec`) and the run's variable overrides."""

    def __init__(
        self,
        templater: Templater,
        *,
        var_overrides: Mapping[str, Any] | None = None,
        default_outputs: Sequence[Mapping[str, Any]] = (),
        default_notify: Sequence[Mapping[str, Any]] = (),
        timeout: float | None = None,
        no_wait: bool = False,
        allow_outside_root: bool = False,
        wait_mode: str | None = None,
        default_wait_mode: str | None = None,
        receiver_configured: bool = False,
    ) -> None:
        self.templater = templater
        self.allow_outside_root = allow_outside_root
        self.var_overrides = dict(var_overrides or {})
        self.default_outputs = [dict(o) for o in default_outputs] or [{"type": "stdout"}]
        self.default_notify = [dict(n) for n in default_notify]
        self.timeout = timeout
        self.no_wait = no_wait
        #: --wait-mode, and whether the command line or project file names a receiver
        self.wait_mode = wait_mode
        self.default_wait_mode = default_wait_mode  # the project file's [wait] mode
        self.receiver_configured = receiver_configured
        # Jobs planned per spec, over every spec of the run: a spec planned again (the runner
        # checks, then submits) replaces its count rather than adding to it.
        self._jobs_of: dict[Path, int] = {}
        self._jobs_planned = 0
        #: per spec, how the last filtered planning of it selected (see check_selection)
        self._selections: dict[Path, tuple[Spec, Selection]] = {}

    # -- expansion ---------------------------------------------------------------------------

    def plans(self, specs: Sequence[Spec], plan_filter: PlanFilter | None = None) -> Iterator[JobPlan]:
        """Every job of the batch, in spec order, filtered; ``--limit`` applies last. A job
        that cannot be planned raises its problems (and ends the planning)."""
        for plan in self.plans_or_failures(specs, plan_filter):
            if isinstance(plan, PlanFailed):
                raise plan.error()
            yield plan

    def plans_or_failures(self, specs: Sequence[Spec], plan_filter: PlanFilter | None = None) -> Iterator[JobPlan | PlanFailed]:
        """As :meth:`plans`, but a job whose templates or settings are wrong is yielded as a
        :class:`PlanFailed` and planning goes on with the next job: the check pass reports every
        job's problems at once, and ``--keep-going`` skips just those jobs. A problem of the
        whole spec (its vars, matrix or foreach file) still raises."""
        produced = 0
        for spec in specs:
            selection = Selection()
            if plan_filter is not None and plan_filter.selects:
                self._selections[spec.path] = (spec, selection)
            for plan in self.plan_spec(spec):
                if plan_filter is not None:
                    if plan_filter.keys is not None and plan.key not in plan_filter.keys:
                        continue
                    matches, in_shard = plan_filter.only_matches(plan), plan_filter.in_shard(plan)
                    if plan_filter.selects:
                        selection.count(plan, matches, in_shard)
                    if not (all(matches) and in_shard):
                        continue
                    if plan_filter.limit is not None and produced >= plan_filter.limit:
                        return
                produced += 1
                yield plan

    def check_selection(self, plan_filter: PlanFilter, specs: Sequence[Spec]) -> None:
        """A UsageError when --only, --shard or --limit selected none of the jobs ``specs``
        planned (call it once every spec was planned with ``plan_filter``): a misspelt
        ``--only regoin=eu`` would otherwise run nothing and exit 0."""
        selections = [self._selections[spec.path] for spec in specs if spec.path in self._selections]
        problem = nothing_selected(plan_filter, selections)
        if problem:
            raise UsageError(problem)

    def plan_spec(self, spec: Spec) -> Iterator[JobPlan | PlanFailed]:
        self._jobs_planned -= self._jobs_of.get(spec.path, 0)
        self._jobs_of[spec.path] = 0
        for plan in self._expand(spec):
            self._jobs_of[spec.path] += 1
            self._jobs_planned += 1
            if self._jobs_planned > MAX_JOBS_PER_RUN:
                raise spec.error(
                    f"with this spec the run would plan more than {MAX_JOBS_PER_RUN} jobs, the limit per "
                    "run; run the specs in separate runs",
                )
            yield plan

    def _expand(self, spec: Spec) -> Iterator[JobPlan | PlanFailed]:
        base = build_context(self.templater)
        spec_vars = self.templater.for_spec(spec).render(spec.data.get("vars") or {}, base, file=_rel(spec), key=("vars",))
        variables = {**spec_vars, **self.var_overrides}
        combos = self._matrix(spec, variables)
        foreach = spec.data.get("foreach")
        for combo in combos:
            if foreach is None:
                yield self._plan(spec, variables, combo, None, None)
                continue
            seen: dict[str, int] = {}
            for number, row in self._rows(spec, foreach):
                if number * len(combos) > MAX_JOBS_PER_RUN:
                    what = f"{foreach.get('file') or 'foreach.rows'} (more than {number - 1} rows)"
                    if len(combos) > 1:
                        what += f" times {len(combos)} matrix combinations"
                    raise _too_many_jobs(spec, ("foreach",), what)
                identity = row_identity(spec, foreach, row, number)
                if identity in seen:
                    raise _duplicate_row(spec, foreach, identity, seen[identity], number)
                seen[identity] = number
                yield self._plan(spec, variables, combo, row, number, identity=identity)

    def plan_from_record(self, spec: Spec, recorded: Mapping[str, Any]) -> JobPlan:
        """The plan a journal row was made from (``JobPlan.describe()``): its matrix combination
        and foreach row as they were then, whatever the data files hold now."""
        base = build_context(self.templater)
        spec_vars = self.templater.for_spec(spec).render(spec.data.get("vars") or {}, base, file=_rel(spec), key=("vars",))
        variables = {**spec_vars, **self.var_overrides}
        row = recorded.get("row")
        number = recorded.get("row_number")
        key = str(recorded.get("key") or "")
        identity = key.rpartition("#")[2] if row is not None and "#" in key else None
        plan = self._plan(spec, variables, dict(recorded.get("matrix") or {}), row, number, identity=identity)
        if isinstance(plan, PlanFailed):
            raise plan.error()
        return plan

    def _matrix(self, spec: Spec, variables: Mapping[str, Any]) -> list[dict[str, Any]]:
        matrix = spec.data.get("matrix")
        if not matrix:
            return [{}]
        context = build_context(self.templater, vars=variables)
        rendered = self.templater.for_spec(spec).render(matrix, context, file=_rel(spec), key=("matrix",))
        names = list(rendered)
        combinations = 1
        for name in names:
            values = rendered[name]
            if not isinstance(values, list) or not values:
                raise spec.error(f"matrix values must be a non-empty list, found {values!r}", ("matrix", name))
            combinations *= len(values)
        if combinations > MAX_JOBS_PER_RUN:
            sizes = " x ".join(f"{len(rendered[n])} {n}" for n in names)
            raise _too_many_jobs(spec, ("matrix",), f"{combinations} matrix combinations ({sizes})")
        for name in names:
            values = rendered[name]
            seen: set[str] = set()
            for value in values:
                text = _scalar(value)  # what the plan key holds: 1 and "1" would collide
                if text in seen:
                    # Two jobs with one plan key: the journal could only ever track one of them.
                    raise spec.error(
                        f"the value {value!r} appears twice in matrix.{name}; every combination must be "
                        "unique, so remove the repeat",
                        ("matrix", name),
                    )
                seen.add(text)
        return [dict(zip(names, combo)) for combo in itertools.product(*(rendered[n] for n in names))]

    def _rows(self, spec: Spec, foreach: Mapping[str, Any]) -> Iterator[tuple[int, dict[str, Any]]]:
        if "rows" in foreach:
            for number, row in enumerate(foreach["rows"], start=1):
                yield number, _check_row(spec, row, number, "foreach.rows")
            return
        source = foreach["file"]
        confine(
            spec.dir / source,
            root=load_project_config(spec.dir).repo_root,
            allow_outside_root=self.allow_outside_root,
            file=_rel(spec),
            key=("foreach", "file"),
            line=spec.line_of(("foreach", "file")),
        )
        path = (spec.dir / source).resolve()
        if not path.is_file():
            raise spec.error(f"foreach file {source!r} does not exist (looked for {path})", ("foreach", "file"))
        kind = foreach.get("format") or {".csv": "csv", ".json": "json", ".yaml": "yaml", ".yml": "yaml"}.get(
            path.suffix.lower()
        )
        if kind is None:
            raise spec.error(
                f"cannot tell the format of {source!r}; name it .csv/.json/.yaml or set foreach.format",
                ("foreach", "format"),
            )
        if kind == "csv":
            yield from _csv_rows(spec, path, source)
            return
        try:
            text = path.read_text(encoding="utf-8")
        except (ValueError, OSError) as exc:
            raise spec.error(f"cannot read foreach file {source!r}: {exc}", ("foreach", "file")) from None
        try:
            data = load_data(text, display=source, json_format=kind == "json")
        except SpecError as exc:
            raise spec.error(f"foreach file {source!r}: {exc.message}", ("foreach", "file")) from None
        if not isinstance(data, list):
            raise spec.error(f"foreach file {source!r} must hold a list of rows, found {type(data).__name__}", ("foreach", "file"))
        for number, row in enumerate(data, start=1):
            yield number, _check_row(spec, row, number, source)

    # -- rendering one job -------------------------------------------------------------------

    def _plan(
        self,
        spec: Spec,
        variables: Mapping[str, Any],
        combo: Mapping[str, Any],
        row: dict[str, Any] | None,
        row_number: int | None,
        *,
        identity: str | None = None,
    ) -> JobPlan | PlanFailed:
        key = plan_key(spec.name, combo, identity)
        problems: list[SpecError] = []
        plan = self._render_plan(spec, key, variables, combo, row, row_number, problems)
        if problems or plan is None:
            return PlanFailed(spec, key, dict(combo), row, row_number, tuple(problems))
        return plan

    def _render_plan(
        self,
        spec: Spec,
        key: str,
        variables: Mapping[str, Any],
        combo: Mapping[str, Any],
        row: dict[str, Any] | None,
        row_number: int | None,
        problems: list[SpecError],
    ) -> JobPlan | None:
        """The job's plan; every problem of it is appended to ``problems`` (None when it has any
        that leave no plan). Each template is rendered however the others fared, and each
        setting checked when the templates it depends on rendered, so one pass finds them all."""
        data = spec.data
        file = _rel(spec)
        render = self.templater.for_spec(spec).render

        def at(path: tuple[str | int, ...]) -> int | None:
            return spec.line_of(path)

        def section(value: Any, path: tuple[str | int, ...]) -> tuple[Any, bool]:
            """``value`` rendered leaf by leaf (a failed leaf is kept as written), and whether
            every leaf rendered."""
            before = len(problems)

            def walk(item: Any, where: tuple[str | int, ...]) -> Any:
                if isinstance(item, Mapping):
                    return {k: walk(v, (*where, k)) for k, v in item.items()}
                if isinstance(item, list):
                    return [walk(v, (*where, i)) for i, v in enumerate(item)]
                try:
                    return render(item, context, file=file, key=where)
                except TemplateError as exc:
                    line = exc.line or spec.line_of(exc.key)
                    problems.append(exc if line == exc.line else type(exc)(exc.message, file=exc.file, key=exc.key, line=line))
                    return item

            rendered = walk(value, path)
            return rendered, len(problems) == before

        def check(step: Any) -> Any:
            try:
                return step()
            except ValidationFailed as exc:
                problems.extend(exc.errors)
            except SpecError as exc:
                problems.append(exc)
            return None

        context = build_context(self.templater, vars=variables, matrix=combo, row=row)
        raw_meta = data["metadata"]
        metadata = {"name": spec.name}
        for name in ("title", "description", "labels"):
            if name in raw_meta:
                # A title that failed is kept as written: templates reading it render on.
                metadata[name], _ok = section(raw_meta[name], ("metadata", name))
        context = build_context(self.templater, vars=variables, matrix=combo, row=row, metadata=metadata)
        workflow, workflow_ok = section(data["workflow"], ("workflow",))
        inputs, _ok = section(data.get("inputs") or {}, ("inputs",))
        wait_raw, wait_ok = section(data.get("wait") or {}, ("wait",))
        callback, callback_ok = section(data.get("callback") or {}, ("callback",))
        uploads_raw, _ok = section(data.get("uploads") or {}, ("uploads",))

        callback_url = callback.get("url") or None if callback_ok else None
        if callback_url is not None:
            if not isinstance(callback_url, str) or not callback_url.startswith("https://"):
                problems.append(
                    SpecError(
                        f"callback.url must be an https URL reachable by Opus, found {callback_url!r}",
                        file=file,
                        key=("callback", "url"),
                        line=at(("callback", "url")),
                    )
                )
        receiver = (check(lambda: _receiver(spec, callback, callback_url)) if callback_ok else None) or ReceiverSettings()
        wait = None
        if wait_ok and callback_ok:
            wait = check(lambda: self._wait(spec, wait_raw, receiver=bool(receiver) or self.receiver_configured, own_url=callback_url))
        version = None
        workspaces: tuple[str, ...] = ()
        if workflow_ok:
            problem = workflow_id_problem(workflow.get("id"))
            if problem:
                problems.append(SpecError(problem, file=file, key=("workflow", "id"), line=at(("workflow", "id"))))
            version = workflow.get("version")
            if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 1):
                problems.append(
                    SpecError(
                        f"workflow.version must be a whole number of 1 or more, found {version!r}",
                        file=file,
                        key=("workflow", "version"),
                        line=at(("workflow", "version")),
                    )
                )
            workspaces = check(lambda: _workspaces(spec, workflow.get("workspaces"), at(("workflow", "workspaces")))) or ()
        if problems or wait is None:
            return None
        title = metadata.get("title") or spec.name
        return JobPlan(
            spec=spec,
            key=key,
            matrix=dict(combo),
            row=row,
            row_number=row_number,
            vars=dict(variables),
            metadata=metadata,
            workflow=WorkflowRef(
                id=str(workflow["id"]),
                version=version,
                version_id=workflow.get("versionId") or None,
            ),
            title=str(title),
            description=str(metadata.get("description") or ""),
            inputs=inputs,
            wait=wait,
            callback_url=callback_url,
            outputs=[dict(o) for o in data.get("outputs") or self.default_outputs],
            notify=[dict(n) for n in data.get("notify") or self.default_notify],
            context=context,
            workspaces=workspaces,
            uploads=UploadSettings(
                access_scope=uploads_raw.get("access_scope") or UploadSettings.access_scope,
                workspace_id=uploads_raw.get("workspace_id") or None,
            ),
            receiver=receiver,
        )

    def _wait(self, spec: Spec, raw: Mapping[str, Any], *, receiver: bool, own_url: str | None) -> WaitSettings:
        values: dict[str, Any] = {}
        for name, default in (
            ("timeout", DEFAULT_TIMEOUT),
            ("poll_interval", DEFAULT_POLL),
            ("max_interval", DEFAULT_MAX_INTERVAL),
            ("safety_interval", None),
        ):
            if name not in raw:
                values[name] = default
                continue
            try:
                values[name] = parse_duration(raw[name])
            except ValueError as exc:
                raise spec.error(str(exc), ("wait", name)) from None
        if self.timeout is not None:
            values["timeout"] = self.timeout
        if values["poll_interval"] <= 0:
            values["poll_interval"] = 0.05  # a zero interval would spin: poll as fast as sensible
        values["max_interval"] = max(values["max_interval"], values["poll_interval"])
        mode = self._wait_mode(spec, raw, receiver=receiver, own_url=own_url)
        safety = values.pop("safety_interval")
        if safety is None:
            safety = DEFAULT_SAFETY_INTERVAL.get(mode, 0.0)
        elif safety <= 0:
            raise spec.error("must be longer than 0: it is how often a job waiting for its callback reads its status", ("wait", "safety_interval"))
        enabled = bool(raw.get("enabled", True)) and not self.no_wait
        return WaitSettings(enabled=enabled, mode=mode, safety_interval=safety, **values)

    def _wait_mode(self, spec: Spec, raw: Mapping[str, Any], *, receiver: bool, own_url: str | None) -> str:
        """The spec's (or --wait-mode's) mode; by default hybrid when a receiver is configured."""
        explicit = self.wait_mode or raw.get("mode")
        given = explicit or self.default_wait_mode
        where = "--wait-mode" if self.wait_mode else "wait.mode" if raw.get("mode") else "[wait] mode in opus-runner.toml"
        if given is not None and given not in WAIT_MODES:
            raise spec.error(f"{where} must be one of {', '.join(WAIT_MODES)}, found {given!r}", ("wait", "mode"))
        if own_url is not None:
            # callback.url sends the callback to the user's own receiver: opus-runner never hears it.
            if explicit in ("hybrid", "callback"):
                raise spec.error(
                    f"{where} is {given!r}, but callback.url sends this job's callback to your own receiver, "
                    "which opus-runner does not hear: remove callback.url (and set callback.public_url to "
                    "opus-runner's receiver) or use wait.mode: poll",
                    ("wait", "mode"),
                )
            return "poll"
        if given is None:
            return "hybrid" if receiver else "poll"
        if given != "poll" and not receiver:
            raise spec.error(
                f"{where} is {given!r}, but no callback receiver is configured: set callback.public_url "
                "(the https URL where Opus reaches the receiver) and/or callback.listen (HOST:PORT for "
                "the receiver this run starts), in the spec, in opus-runner.toml's [callback] table, or "
                "with --callback-public-url / --callback-listen",
                ("wait", "mode"),
            )
        return str(given)


def _receiver(spec: Spec, callback: Mapping[str, Any], own_url: str | None) -> ReceiverSettings:
    """The spec's ``callback.listen`` and ``callback.public_url``, checked."""
    listen_text, public_url = callback.get("listen"), callback.get("public_url")
    if own_url is not None and (listen_text is not None or public_url is not None):
        name = "public_url" if public_url is not None else "listen"
        raise spec.error(
            f"callback.url (your own receiver) and callback.{name} (opus-runner's) cannot both be "
            "set: Opus POSTs each job's callback to one URL",
            ("callback", name),
        )
    listen = None
    if listen_text is not None:
        try:
            listen = parse_listen(listen_text)
        except ValueError as exc:
            raise spec.error(f"callback.listen {exc}", ("callback", "listen")) from None
    if public_url is not None:
        problem = public_url_problem(public_url)
        if problem:
            raise spec.error(f"callback.public_url {problem}", ("callback", "public_url"))
    settings = ReceiverSettings(listen, public_url)
    problem = settings_problem(settings)
    if problem:
        raise spec.error(problem, ("callback", "listen"))
    return settings


def settings_problem(settings: ReceiverSettings) -> str | None:
    """Why these receiver settings cannot work together, or None."""
    if settings.listen is not None and settings.public_url is None and not is_loopback_host(settings.listen[0]):
        host, port = settings.listen
        return (
            f"callback.listen {host}:{port} is not a loopback address, so Opus reaches the receiver "
            "through another address: set callback.public_url to the https URL that forwards to it"
        )
    return None


def plan_key(name: str, combo: Mapping[str, Any], row: str | int | None) -> str:
    """``name``, ``name[region=eu,month=2026-10]``, ``name#acme`` or ``name[region=eu]#acme``.

    ``row`` is the foreach row's stable identity (:func:`row_identity`), not its position: a row
    added or removed elsewhere in the file changes no other job's key (resume, shards).
    """
    key = name
    if combo:
        key += f"[{_combo_text(combo)}]"
    if row is not None:
        key += f"#{row}"
    return key


def row_identity(spec: Spec, foreach: Mapping[str, Any], row: Mapping[str, Any], number: int) -> str:
    """A foreach row's stable identity: its ``foreach.key`` column, else a digest of its content."""
    column = foreach.get("key")
    if column:
        value = row.get(column)
        if value is None or str(value).strip() == "":
            raise spec.error(
                f"foreach row {number} has no value in its key column {column!r}; every row needs one "
                "(it names the row's job in the journal and the outputs)",
                ("foreach", "key"),
            )
        return _scalar(value).strip()
    text = json.dumps(row, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:ROW_DIGEST_LENGTH]


def _too_many_jobs(spec: Spec, key: tuple[str, ...], what: str) -> SpecError:
    return spec.error(
        f"{what} would make more jobs than the {MAX_JOBS_PER_RUN} a run may plan; shrink the lists "
        "or split the work over several specs run separately",
        key,
    )


def _duplicate_row(spec: Spec, foreach: Mapping[str, Any], identity: str, first: int, again: int) -> SpecError:
    source = foreach.get("file") or "foreach.rows"
    if foreach.get("key"):
        # Named by row and column, not quoted: a message must not carry a data file's content.
        return spec.error(
            f"rows {first} and {again} of {source} have the same value in the key column "
            f"{foreach['key']!r}; each row's key must be unique",
            ("foreach", "key"),
        )
    return spec.error(
        f"rows {first} and {again} of {source} are identical, so their jobs could not be told apart; "
        "remove one, or name a column that identifies rows in foreach.key",
        ("foreach",),
    )


def _combo_text(combo: Mapping[str, Any]) -> str:
    return ",".join(f"{k}={_scalar(v)}" for k, v in combo.items())


def _scalar(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return str(value)


def _csv_rows(spec: Spec, path: Path, source: str) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise spec.error(f"cannot read foreach file {source!r}: {exc}", ("foreach", "file")) from None
    with handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames:
            raise spec.error(f"foreach file {source!r} has no header row", ("foreach", "file"))
        blanks = [i for i, name in enumerate(reader.fieldnames, start=1) if not name or not name.strip()]
        if blanks:
            raise spec.error(f"foreach file {source!r}: header column {blanks[0]} has no name", ("foreach", "file"))
        number = 0
        try:
            for record in reader:
                # Blank lines (all cells empty) are skipped, not run as empty jobs.
                if not any((v or "").strip() for k, v in record.items() if k is not None):
                    continue
                number += 1
                if None in record:
                    raise spec.error(
                        f"foreach file {source!r}, row {number} (line {reader.line_num}) has more cells than the header",
                        ("foreach", "file"),
                    )
                yield number, {k: ("" if v is None else v) for k, v in record.items()}
        except csv.Error as exc:
            raise spec.error(f"foreach file {source!r}, line {reader.line_num}: {exc}", ("foreach", "file")) from None


def _check_row(spec: Spec, row: Any, number: int, source: str) -> dict[str, Any]:
    if not isinstance(row, Mapping):
        raise spec.error(f"{source}: row {number} must be a mapping of column to value, found {type(row).__name__}", ("foreach",))
    return dict(row)


def _rel(spec: Spec) -> str:
    return display_path(spec.path)
