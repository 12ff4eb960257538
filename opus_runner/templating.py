"""Spec templating: a sandboxed Jinja environment that renders only the string leaves of a spec.

Rules (SPEC.md section 1): the document is parsed first and only string leaves are rendered, so a
value can never inject structure; a string that is exactly one ``{{ expression }}`` keeps the
expression's native type; an undefined name is an error naming the file, key path and name;
``secret('NAME')`` reads an environment variable and marks it secret. The service key is never
templated: ``env`` does not hold it and ``secret()`` refuses it.
"""

from __future__ import annotations

import copy
import datetime as _dt
import difflib
import functools
import itertools
import logging
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from . import redact
from .errors import TemplateError

if TYPE_CHECKING:  # pragma: no cover
    from .models import Context
    from .spec import Spec

# "{{ expr }}" and nothing else (the expression itself may not close and reopen a block).
_SINGLE_EXPRESSION = re.compile(r"^\s*\{\{(?P<expr>(?:(?!\}\}|\{\{|\{%|\{#).)*)\}\}\s*$", re.DOTALL)
_TEMPLATE_MARKERS = ("{{", "{%", "{#")
#: The environment variable the runner reads the service key from (config.ProjectConfig.endpoint).
SERVICE_KEY_VARIABLE = "OPUS_SERVICE_KEY"
_KEY_NEVER_TEMPLATED = (
    f"{SERVICE_KEY_VARIABLE} is the Opus service key, which is never templated (the runner sends "
    "it itself, and never to a workflow); use secret('NAME') with another variable for credentials "
    "a workflow needs"
)


class Namespace(dict):  # type: ignore[type-arg]
    """A mapping exposed to templates under a name (``vars``, ``env``, ``row``...).

    The name makes undefined-key errors readable: "vars has no key 'mnth'; did you mean 'month'?"
    instead of Jinja's "'dict object' has no attribute 'mnth'".
    """

    def __init__(
        self,
        label: str,
        data: Mapping[str, Any] | None = None,
        *,
        listed: bool = True,
        withheld: Mapping[str, str] | None = None,
    ):
        withheld = dict(withheld or {})
        super().__init__({k: v for k, v in (data or {}).items() if k not in withheld})
        self.label = label
        self.listed = listed  # False for env: never list environment variable names in errors
        #: names left out on purpose -> why (what a template asking for one is told)
        self.withheld = withheld


#: CPU seconds one template value may take to render (``template_budget`` in opus-runner.toml).
DEFAULT_TEMPLATE_BUDGET = 2.0
#: Characters one rendered value may hold: a loop that writes gigabytes is stopped early.
MAX_RENDERED_CHARS = 10 * 1024 * 1024
#: Digits an integer built by template arithmetic may have: Python refuses to print more than
#: 4300, and computing far larger powers takes minutes in one uninterruptible step.
MAX_INT_DIGITS = 4300
#: Budget checks read the thread's CPU clock once per this many sandbox operations.
_CHECK_EVERY = 64
#: Pieces of output read between two checks of the size cap (each piece is at most
#: MAX_RENDERED_CHARS, see _checked_product, so little is held past the cap).
_BATCH = 8


class _OverBudget(Exception):
    """Raised inside a render that used up its CPU budget or output size (never leaves render_str)."""


class _Budget:
    """When the render in progress must stop, checked from inside the sandbox.

    Checks happen where a sandboxed template does work (every ``range`` step, attribute and item
    access, calls, intercepted operators, output): no signals and no tracing, which would break
    renders in worker threads and slow every template. One per environment: a Templater renders
    on one thread at a time (the run's event loop).
    """

    __slots__ = ("deadline", "left")

    def __init__(self) -> None:
        self.deadline: float | None = None
        self.left = _CHECK_EVERY

    def start(self, limit: float) -> float | None:
        previous = self.deadline
        if previous is None:  # a nested render (a filter that renders) keeps the outer deadline
            self.deadline = time.thread_time() + limit
        return previous

    def stop(self, previous: float | None) -> None:
        self.deadline = previous

    def tick(self) -> None:
        self.left -= 1
        if self.left <= 0:
            self.check()

    def check(self) -> None:
        self.left = _CHECK_EVERY
        if self.deadline is not None and time.thread_time() > self.deadline:
            raise _OverBudget("time")


class _BudgetRange:
    """``range`` for templates: Jinja's MAX_RANGE cap, and budget checks while it is iterated."""

    __slots__ = ("_budget", "_range")

    def __init__(self, budget: _Budget, *args: int) -> None:
        from jinja2.sandbox import safe_range

        budget.tick()
        self._budget = budget
        self._range = safe_range(*args)

    def __iter__(self) -> Any:
        return self._steps(self._range)

    def __reversed__(self) -> Any:
        return self._steps(self._range[::-1])

    def _steps(self, items: range) -> Any:
        # A short range is counted once, as it starts (nested short loops tick at every start);
        # a long one is checked every _CHECK_EVERY steps.
        self._budget.tick()
        if len(items) <= _CHECK_EVERY:
            return iter(items)
        return self._checked_steps(items)

    def _checked_steps(self, items: range) -> Any:
        for start in range(0, len(items), _CHECK_EVERY):
            self._budget.check()
            yield from items[start : start + _CHECK_EVERY]

    def __len__(self) -> int:
        return len(self._range)

    def __getitem__(self, index: Any) -> Any:
        return self._range[index]

    def __contains__(self, item: Any) -> bool:
        return item in self._range

    def __repr__(self) -> str:
        return repr(self._range)


def _loop_steps(context: Any, iterable: Any) -> Any:
    """What every ``{% for %}`` iterates (see SpecEnvironment._parse): the iterable itself when it
    is short, else the same items with a budget check every _CHECK_EVERY steps, so nested loops
    over data (``{% for a in rows %}{% for b in rows %}``) stop at the budget too."""
    budget: _Budget = context.environment.budget
    budget.tick()
    if isinstance(iterable, _BudgetRange) or (hasattr(iterable, "__len__") and len(iterable) <= _CHECK_EVERY):
        return iterable
    return _checked_items(budget, iterable)


def _checked_items(budget: _Budget, iterable: Any) -> Any:
    items = iter(iterable)
    while True:
        budget.check()
        batch = list(itertools.islice(items, _CHECK_EVERY))
        if not batch:
            return
        yield from batch


_MAX_INT_BITS = int(MAX_INT_DIGITS / 0.30103)  # log10(2): digits -> bits


def _too_big_int() -> OverflowError:
    return OverflowError(f"the result would have more than {MAX_INT_DIGITS} digits; templates compute numbers of at most that size")


def _checked_power(left: Any, right: Any) -> Any:
    # Refused before computing: 2 ** 10**10 would run for minutes in one step nothing interrupts.
    if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
        if right * (abs(left).bit_length() - 1) > _MAX_INT_BITS:
            raise _too_big_int()
    return _checked_int(left**right)


def _checked_product(left: Any, right: Any) -> Any:
    if isinstance(left, int) and isinstance(right, int):
        if left.bit_length() + right.bit_length() - 1 > _MAX_INT_BITS:
            raise _too_big_int()
    # "x" * 10**10 or [0] * 10**10 would also be built in one uninterruptible step.
    for sized, count in ((left, right), (right, left)):
        if isinstance(count, int) and isinstance(sized, (str, list, tuple)):
            _check_size(len(sized) * count)
    return left * right


def _checked_int(value: Any) -> Any:
    if isinstance(value, int) and value.bit_length() > _MAX_INT_BITS:
        raise _too_big_int()
    return value


def _checked_sum(left: Any, right: Any) -> Any:
    if isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)):
        _check_size(len(left) + len(right))
    return _checked_int(left + right)


def _check_size(size: int) -> None:
    if size > MAX_RENDERED_CHARS:
        raise OverflowError(
            f"the value would hold more than {MAX_RENDERED_CHARS} items; templates build values of at most that size"
        )


def _make_namespace_class() -> type:
    from jinja2.utils import Namespace as JinjaNamespace

    class BoundedNamespace(JinjaNamespace):
        """``namespace()``: the one place a template keeps a value across loop steps, so the one
        place ``{% set ns.s = ns.s ~ ns.s %}`` could double a string until memory runs out."""

        def __setitem__(self, name: str, value: Any) -> None:
            if isinstance(value, (str, list, tuple, dict)):
                _check_size(len(value))
            super().__setitem__(name, value)

    return BoundedNamespace


def _checked_difference(left: Any, right: Any) -> Any:
    return _checked_int(left - right)


def is_template(text: str) -> bool:
    return any(marker in text for marker in _TEMPLATE_MARKERS)


def contains_template(value: Any) -> bool:
    """True if any string leaf of ``value`` holds a Jinja marker."""
    if isinstance(value, str):
        return is_template(value)
    if isinstance(value, Mapping):
        return any(contains_template(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(contains_template(v) for v in value)
    return False


def _make_undefined_class() -> type:
    from jinja2 import StrictUndefined
    from jinja2.utils import missing

    class SpecUndefined(StrictUndefined):
        @property
        def _undefined_message(self) -> str:
            if self._undefined_hint:  # e.g. the sandbox's "access to attribute ... is unsafe"
                return self._undefined_hint
            obj = self._undefined_obj
            name = self._undefined_name
            if obj is missing:
                return f"{name!r} is undefined"
            if isinstance(obj, Namespace) and name in obj.withheld:
                return f"{obj.label}.{name}: {obj.withheld[name]}"
            if isinstance(obj, Namespace):
                message = f"{obj.label} has no key {name!r}"
                if obj.listed and isinstance(name, str):
                    close = difflib.get_close_matches(name, [str(k) for k in obj], n=1)
                    if close:
                        message += f"; did you mean {close[0]!r}?"
                    elif obj:
                        message += f" (it has: {', '.join(sorted(map(str, obj)))})"
                    else:
                        message += f" ({obj.label} is empty here)"
                return message
            return super()._undefined_message

    return SpecUndefined


_LOOP_FILTER = "_opus_loop_steps"


def _make_environment(undefined: type) -> Any:
    from jinja2 import pass_context
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class SpecEnvironment(ImmutableSandboxedEnvironment):
        """Keys of the context mappings win over dict methods: ``vars.items`` is the var.

        Attribute and item access, calls and the operators that can build huge values also
        count against the render's budget (see :class:`_Budget`).
        """

        # Intercepted operators are also never folded at compile time, where 10 ** 5000 would
        # be computed (and fail to print) while the template is still being parsed.
        intercepted_binops = frozenset({"**", "*", "+", "-"})

        def __init__(self, **options: Any) -> None:
            super().__init__(**options)
            self.budget = _Budget()
            self.globals["range"] = functools.partial(_BudgetRange, self.budget)
            self.globals["namespace"] = _make_namespace_class()
            self.filters[_LOOP_FILTER] = pass_context(_loop_steps)
            self.binop_table.update(
                {"**": _checked_power, "*": _checked_product, "+": _checked_sum, "-": _checked_difference}
            )

        def _parse(self, source: str, name: str | None, filename: str | None) -> Any:
            # Every for loop iterates through _loop_steps: the one place a loop over plain data
            # (no range, no attribute access inside) can be made to check the budget.
            from jinja2 import nodes

            tree = super()._parse(source, name, filename)
            for loop in tree.find_all(nodes.For):
                loop.iter = nodes.Filter(loop.iter, _LOOP_FILTER, [], [], None, None, lineno=loop.iter.lineno)
            return tree

        def getattr(self, obj: Any, attribute: str) -> Any:
            self.budget.tick()
            if isinstance(obj, Namespace) and attribute in obj:
                return dict.__getitem__(obj, attribute)
            return super().getattr(obj, attribute)

        def getitem(self, obj: Any, argument: Any) -> Any:
            self.budget.tick()
            return super().getitem(obj, argument)

        def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
            __self.budget.tick()
            return super().call(__context, __obj, *args, **kwargs)

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            self.budget.tick()
            return super().call_binop(context, operator, left, right)

    return SpecEnvironment(undefined=undefined, autoescape=False, keep_trailing_newline=True)


def _plain(value: Any) -> Any:
    """A native result leaves the template world as plain data (no Namespace wrappers)."""
    if isinstance(value, Namespace):
        return dict(value)
    return value


def _utc_now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def _utc_today() -> _dt.date:
    return _utc_now().date()


class TemplateHooks(Protocol):
    """What a Templater asks of the plugin host: the two template hooks, called with a ctx."""

    def template_globals(self, ctx: Context) -> dict[str, Any]: ...

    def template_filters(self, ctx: Context) -> dict[str, Callable[..., Any]]: ...


def run_level_context(spec: Spec | None) -> Context:
    """The ``ctx`` the template hooks get when the caller gives no ``context_for``: the spec's
    path, folder and name (``plan_key``); outside any spec (None), ``spec`` None and the working
    directory as ``spec_path`` and ``spec_dir``. No client, and ``vars`` empty: the hooks run
    before the spec's vars are rendered."""
    from .models import Context

    log = logging.getLogger("opus_runner")
    if spec is None:
        cwd = Path.cwd()
        return Context(spec=None, spec_path=cwd, spec_dir=cwd, log=log)
    return Context(spec=spec, spec_path=spec.path, spec_dir=spec.dir, log=log, plan_key=spec.name)


class Templater:
    """Renders spec values. One per run: compiled templates are cached by their source.

    With ``plugins`` (the run's plugin host), the Jinja globals and filters of the template
    hooks join ``globals`` and ``filters``: this templater has those the hooks return for the
    run-level context, and :meth:`for_spec` gives one per spec with those the hooks return for
    that spec's context (``context_for(spec)``, default :func:`run_level_context`). Each spec's
    templater shares this one's environment, secrets and budget; only the Jinja environment
    (and its compiled templates) is its own.
    """

    def __init__(
        self,
        *,
        globals: Mapping[str, Any] | None = None,
        filters: Mapping[str, Callable[..., Any]] | None = None,
        environ: Mapping[str, str] | None = None,
        missing_secrets_ok: bool = False,
        budget: float | None = None,
        plugins: TemplateHooks | None = None,
        context_for: Callable[[Spec | None], Context] | None = None,
    ) -> None:
        #: CPU seconds one value may take to render (opus-runner.toml ``template_budget``)
        self.budget = DEFAULT_TEMPLATE_BUDGET if budget is None else budget
        self.environ = dict(os.environ if environ is None else environ)
        # Masked before anything is rendered, even when no client (which registers it) is made.
        redact.register(self.environ.get(SERVICE_KEY_VARIABLE))
        self.missing_secrets_ok = missing_secrets_ok
        #: names of secrets that were not set while ``missing_secrets_ok`` (offline validate)
        self.missing_secrets: set[str] = set()
        #: every secret read so far, by variable name (the journal keeps a keyed hash of each)
        self.secrets_used: dict[str, str] = {}
        #: called with (name, value) the first time a secret is read (the runner journals it)
        self.on_secret: Callable[[str, str], None] | None = None
        self._globals = dict(globals or {})
        self._filters = dict(filters or {})
        self._plugins = plugins
        self._context_for = context_for or run_level_context
        self._root = self
        self._by_spec: dict[Path, Templater] = {}
        self._env_ns: Namespace | None = None
        self._use_env(self._plugin_context(None))

    def _plugin_context(self, spec: Spec | None) -> Context | None:
        return None if self._plugins is None else self._context_for(spec)

    def _use_env(self, ctx: Context | None) -> None:
        """A fresh Jinja environment: the built-in globals, the caller's, then the plugins' for ``ctx``."""
        self._env = _make_environment(_make_undefined_class())
        # Bound to the root: one templater per run holds the secrets read and their callback.
        self._env.globals.update({"now": _utc_now, "today": _utc_today, "secret": self._root._secret})
        self._env.globals.update(self._globals)
        self._env.filters.update(self._filters)
        if self._plugins is not None and ctx is not None:
            self._env.globals.update(self._plugins.template_globals(ctx))
            self._env.filters.update(self._plugins.template_filters(ctx))
        self._templates: dict[str, Any] = {}
        self._expressions: dict[str, Any] = {}

    def for_spec(self, spec: Spec) -> Templater:
        """The templater for ``spec``'s values: this one without ``plugins``; with them, one whose
        plugin globals and filters are those the template hooks return for the spec's context
        (the hooks are called once per spec and run)."""
        root = self._root
        if root._plugins is None:
            return root
        scoped = root._by_spec.get(spec.path)
        if scoped is None:
            scoped = copy.copy(root)
            scoped._by_spec = {}
            scoped._env_ns = root.env_namespace()
            scoped._use_env(root._plugin_context(spec))
            root._by_spec[spec.path] = scoped
        return scoped

    def _secret(self, name: str) -> str:
        if not isinstance(name, str) or not name:
            raise ValueError("secret() takes the name of an environment variable, e.g. secret('API_TOKEN')")
        if name == SERVICE_KEY_VARIABLE:
            raise ValueError(f"secret({name!r}): {_KEY_NEVER_TEMPLATED}")
        value = self.environ.get(name)
        if value is None:
            if self.missing_secrets_ok:
                self.missing_secrets.add(name)
                return redact.MASK
            raise ValueError(f"secret({name!r}): the environment variable {name} is not set")
        if not isinstance(value, str) or len(value) < redact.MIN_LENGTH:
            # A shorter value could not be masked (it would mask ordinary words everywhere).
            held = "is empty" if not value else f"has only {len(value)} character{'s' if len(value) > 1 else ''}"
            raise ValueError(
                f"secret({name!r}): the environment variable {name} {held}; a secret needs at least "
                f"{redact.MIN_LENGTH} characters to be masked in output, so set {name} to the real value"
            )
        redact.register(value)
        if self.secrets_used.get(name) != value:
            self.secrets_used[name] = value
            if self.on_secret is not None:
                self.on_secret(name, value)
        return value

    def env_namespace(self) -> Namespace:
        # One shared mapping per run: templates cannot change it (immutable sandbox), and
        # copying the environment for every job of a large foreach is measurable.
        if self._env_ns is None:
            self._env_ns = Namespace(
                "env", self.environ, listed=False, withheld={SERVICE_KEY_VARIABLE: _KEY_NEVER_TEMPLATED}
            )
        return self._env_ns

    # -- rendering ---------------------------------------------------------------------------

    def render(
        self,
        value: Any,
        context: Mapping[str, Any],
        *,
        file: str | Path | None = None,
        key: Sequence[str | int] = (),
    ) -> Any:
        """Render every string leaf of ``value``; other leaves are returned as they are."""
        if isinstance(value, str):
            return self.render_str(value, context, file=file, key=key)
        if isinstance(value, Mapping):
            return {
                k: self.render(v, context, file=file, key=(*key, k)) for k, v in value.items()
            }
        if isinstance(value, list):
            return [
                self.render(v, context, file=file, key=(*key, i)) for i, v in enumerate(value)
            ]
        return value

    def render_str(
        self,
        text: str,
        context: Mapping[str, Any],
        *,
        file: str | Path | None = None,
        key: Sequence[str | int] = (),
    ) -> Any:
        if not is_template(text):
            return text
        from jinja2 import TemplateSyntaxError, UndefinedError
        from jinja2.exceptions import SecurityError
        from jinja2.runtime import Undefined

        budget = self._env.budget
        outer = budget.start(self.budget)
        try:
            match = _SINGLE_EXPRESSION.match(text)
            if match:
                expr = match.group("expr")
                found = _lookup_path(expr, context)
                if found is not _MISSING:
                    return _plain(found)
                compiled = self._expressions.get(expr)
                if compiled is None:
                    compiled = self._env.compile_expression(expr, undefined_to_none=False)
                    self._expressions[expr] = compiled
                result = compiled(**context)
                if isinstance(result, Undefined):
                    str(result)  # raises UndefinedError with our readable message
                if isinstance(result, str) and len(result) > MAX_RENDERED_CHARS:
                    raise _OverBudget("size")
                return _plain(_checked_int(result))
            template = self._templates.get(text)
            if template is None:
                template = self._env.from_string(text)
                self._templates[text] = template
            return _bounded_render(template, context, budget)
        except _OverBudget as exc:
            if str(exc) == "size":
                problem = f"renders more than {MAX_RENDERED_CHARS // (1024 * 1024)} MB of text"
            else:
                problem = (
                    f"did not finish within its {_seconds(self.budget)} CPU budget "
                    "(template_budget in opus-runner.toml)"
                )
            raise TemplateError(
                f"template {_short(text)} {problem}; loop over less, or move the work out of the spec",
                file=file,
                key=key,
            ) from None
        except (MemoryError, RecursionError) as exc:
            what = "too much memory" if isinstance(exc, MemoryError) else "too deep a recursion"
            raise TemplateError(
                f"template {_short(text)} needs {what} to render; simplify it", file=file, key=key
            ) from None
        except UndefinedError as exc:
            raise TemplateError(
                f"undefined name in template {_short(text)}: {exc.message}", file=file, key=key
            ) from None
        except TemplateSyntaxError as exc:
            raise TemplateError(
                f"template syntax error in {_short(text)}: {exc.message}", file=file, key=key
            ) from None
        except SecurityError as exc:
            raise TemplateError(
                f"template {_short(text)} was refused by the sandbox: {exc}; templates may only use "
                "the documented context (vars, env, matrix, row, metadata, now(), today(), secret())",
                file=file,
                key=key,
            ) from None
        except TemplateError:
            raise
        except Exception as exc:  # a filter or global raised: name it with the template
            if isinstance(exc, ValueError) and "integer string conversion" in str(exc):
                raise TemplateError(
                    f"template {_short(text)} produces a number of more than {MAX_INT_DIGITS} digits; "
                    "compute a smaller number",
                    file=file,
                    key=key,
                ) from None
            raise TemplateError(
                f"template {_short(text)} failed: {redact.mask(str(exc)) or type(exc).__name__}",
                file=file,
                key=key,
            ) from None
        finally:
            budget.stop(outer)


def _bounded_render(template: Any, context: Mapping[str, Any], budget: _Budget) -> str:
    """``template.render(**context)``, stopped once the output outgrows the size cap.

    Read in small batches (``render`` would hold every piece before joining them): a loop that
    writes gigabytes stops at the cap, and the batches keep the per-piece cost in C.
    """
    pieces = template.root_render_func(template.new_context(dict(context)))
    out: list[str] = []
    size = 0
    while True:
        batch = list(itertools.islice(pieces, _BATCH))
        if not batch:
            return "".join(out)
        size += sum(map(len, batch))
        if size > MAX_RENDERED_CHARS:
            raise _OverBudget("size")
        out += batch
        budget.check()


def _seconds(value: float) -> str:
    return f"{value:g} s"


_MISSING = object()
_DOTTED = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)\s*$")


def _lookup_path(expr: str, context: Mapping[str, Any]) -> Any:
    """``row.customer``-style expressions resolved without Jinja, when every step is a key of a
    context mapping (the common case in large foreach batches). Anything else, including a
    missing key, returns _MISSING and goes through Jinja, which gives the same value or the
    error message.
    """
    match = _DOTTED.match(expr)
    if match is None:
        return _MISSING
    names = match.group(1).split(".")
    current: Any = context.get(names[0], _MISSING)
    if current is _MISSING or len(names) == 1:
        return _MISSING  # a bare name may be a Jinja global (now, today...): let Jinja decide
    for name in names[1:]:
        if not isinstance(current, Namespace) or name not in current:
            return _MISSING
        current = dict.__getitem__(current, name)
    return current


def _short(text: str, limit: int = 80) -> str:
    text = redact.mask(text)
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return repr(text)


def build_context(
    templater: Templater,
    *,
    vars: Mapping[str, Any] | None = None,
    matrix: Mapping[str, Any] | None = None,
    row: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The template context of SPEC.md section 1 (``job``/``result`` come in ``extra``)."""
    context: dict[str, Any] = {
        "vars": vars_namespace(vars),
        "env": templater.env_namespace(),
        "matrix": Namespace("matrix", matrix),
        "row": Namespace("row", row),
        "metadata": Namespace("metadata", metadata),
    }
    if extra:
        for name, value in extra.items():
            context[name] = Namespace(name, value) if isinstance(value, Mapping) else value
    return context


# -- template variables: what --var and --vars-file give, and the vars a spec leaves unset ------

#: Why ``{{ vars.NAME }}`` fails for a variable whose value is null (``vars: {quarter: null}``).
UNSET_VAR = "declared with no value (null) in the spec's vars; pass --var {name}=... (or set it in --vars-file)"
_COLLECTION_START = ("[", "{")
_QUOTES = ('"', "'")


def vars_namespace(variables: Mapping[str, Any] | None) -> Namespace:
    """``vars`` as templates see it: a variable left null is not there, and a template asking
    for it is told how to give it a value."""
    unset = {str(k): UNSET_VAR.format(name=k) for k, v in (variables or {}).items() if v is None}
    return Namespace("vars", variables, withheld=unset)


def parse_var_value(text: str, *, name: str, option: str = "--var") -> Any:
    """The value of ``--var NAME=TEXT``, as the same text would be in a spec's ``vars:`` where
    that cannot surprise: a YAML/JSON list or mapping (``[eu, us]``), a quoted string (``'"3"'``
    is the string 3), a number, true/false or null; anything else is the text itself, so that
    ``--var title='Q3: draft #2'`` stays that string and a date stays text.

    A value that starts like a list, mapping or quoted string but is not one is a UsageError,
    not text: ``[eu, us`` is a typo, not a title.
    """
    import math

    from .errors import SpecError, UsageError
    from .spec import load_data

    stripped = text.strip()
    if not stripped:
        return text
    if stripped.startswith(_COLLECTION_START + _QUOTES):
        want = (list, dict) if stripped.startswith(_COLLECTION_START) else (str,)
        what = "list or mapping" if want != (str,) else "quoted string"
        try:
            value = load_data(stripped, display=option)
        except SpecError as exc:
            problem = exc.message
        else:
            if isinstance(value, want):
                return value
            problem = f"it reads as {type(value).__name__}"
        raise UsageError(
            f"{option} {name}: {_short(text)} is not a valid YAML or JSON {what} ({problem}); "
            f"fix it, or quote the whole value to pass it as text: {option} '{name}=\"...\"'"
        )
    if "#" in stripped:  # YAML would drop a comment: "x #2" is text, not "x"
        return text
    try:
        value = load_data(stripped, display=option)
    except SpecError:
        return text
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and math.isfinite(value):
        return value
    return text
