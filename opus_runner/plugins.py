"""The plugin host: one pluggy ``PluginManager`` per run, built by :func:`make_plugin_host`.

Plugins load in a fixed order, and later ones are asked first by firstresult hooks:

1. the built-ins named in :data:`opus_runner.builtins.BUILTIN_PLUGINS` (so they run last and
   any plugin can take a field or a file over from them);
2. installed distributions with an entry point in the ``opus_runner`` group;
3. the ``*.py`` files of the project's ``plugins_dir``, in sorted order (``_``-prefixed skipped);
4. ``--plugin MODULE`` options (a dotted module name or a path to a ``.py`` file).

A plugin that fails to import or register stops the run with a :class:`PluginError` naming it
(file, distribution or module) and the error. There is no module-level manager: every run and
every test gets a fresh host, so nothing leaks between them.

Hook implementations may be plain or ``async def``; :meth:`PluginHost.first` and
:meth:`PluginHost.each` await what needs awaiting and can move blocking third-party code off the
event loop. This module stays cheap to import: jsonschema is loaded only to check configs.

Plugin code gets a time limit (``[timeouts]`` in opus-runner.toml): blocking code runs in a
daemon thread, which cannot be stopped but never keeps the process alive after the run, and
whose late result is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import importlib
import importlib.util
import inspect
import logging
import os
import re
import sys
import threading
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, cast

import pluggy

from . import hookspecs
from .errors import OpusRunnerError, PluginError, PluginTimeout, SpecError
from .messages import did_you_mean as _did_you_mean
from .messages import explain_schema_error, schema_errors, shorten
from .messages import one_line as _one_line
from .models import EVENT_KINDS, Context, InputField, JobEvent, RunInfo, WireValue, WorkflowRef, WorkflowSchema

__all__ = [
    "DEFAULT_NOTIFY_ON",
    "ENTRY_POINT_GROUP",
    "NOTIFY_ON_SCHEMA",
    "Handler",
    "PluginHost",
    "PluginInfo",
    "call_handler",
    "hook_names",
    "make_plugin_host",
    "notify_events",
    "with_notify_on",
]

#: The entry-point group installed plugins declare (``[project.entry-points.opus_runner]``).
ENTRY_POINT_GROUP = "opus_runner"
#: Events a notifier hears when its entry has no ``on:`` key.
DEFAULT_NOTIFY_ON = ("completed", "failed")
#: The ``on:`` key every notifier entry accepts, whatever plugin owns its type.
NOTIFY_ON_SCHEMA: dict[str, Any] = {
    "type": "array",
    "items": {"enum": list(EVENT_KINDS)},
    "uniqueItems": True,
    "description": "Job events that trigger this notifier (default: completed, failed).",
}

_TYPE_NAME = re.compile(r"[a-z][a-z0-9_-]*\Z")
_KINDS = {
    "outputs": ("output", "opus_register_outputs"),
    "notify": ("notifier", "opus_register_notifiers"),
}
_HINTS = {
    "builtin": "this is a bug in opus-runner, please report it",
    "entrypoint": "upgrade, reinstall or uninstall that package",
    "local": "fix the file, or run with --no-local-plugins to skip the plugins folder",
    "option": "check the --plugin option",
}
_ORIGIN_NOUN = {
    "builtin": "a built-in",
    "entrypoint": "an installed plugin",
    "local": "a plugin of the plugins folder",
    "option": "a --plugin option",
}
_TRACE_WIDTH = 200
_NAMED_PARAMS = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def hook_names() -> list[str]:
    """The names of every hook in :mod:`opus_runner.hookspecs`, in file order."""
    marker = f"{hookspecs.PROJECT_NAME}_spec"
    return [name for name, obj in vars(hookspecs).items() if callable(obj) and hasattr(obj, marker)]


def notify_events(config: Mapping[str, Any]) -> tuple[str, ...]:
    """The event kinds a ``notify`` entry subscribes to: its ``on:`` list, else the default."""
    on = config.get("on")
    if on is None:
        return DEFAULT_NOTIFY_ON
    if isinstance(on, str):
        return (on,)
    return tuple(on)


def with_notify_on(schema: Mapping[str, Any] | None) -> dict[str, Any]:
    """A copy of a notifier's config schema with the shared ``on:`` property added."""
    result: dict[str, Any] = dict(schema) if schema is not None else {"type": "object"}
    properties = dict(result.get("properties", {}))
    properties.setdefault("on", NOTIFY_ON_SCHEMA)
    result["properties"] = properties
    return result


def _entry_schema(kind: str, name: str, schema: Mapping[str, Any] | None) -> dict[str, Any] | None:
    # Entries carry their own `type` key; adding it here spares every plugin author from
    # listing it before `additionalProperties: false`.
    if kind == "notify":
        result = with_notify_on(schema)
    elif schema is None:
        return None
    else:
        result = dict(schema)
    properties = dict(result.get("properties", {}))
    properties.setdefault("type", {"const": name})
    result["properties"] = properties
    return result


@dataclass(frozen=True)
class Handler:
    """A registered output or notifier type.

    ``plugin`` is the registering plugin's name; ``schema`` the JSON Schema its config entries
    are checked against (with ``type``, and for notifiers ``on``, already added), or None.
    ``whole_run``: an output that reports on the whole run (junit) is called for every job of
    every process of a run, a resume included, even for jobs delivered before.
    ``inline``: a plain handler called on the event loop instead of in a worker thread. Set at
    registration for the built-ins only (trusted and quick: a thread per call cost about 1 ms
    of CPU a job); another plugin's plain handler may block, so it keeps its thread.
    """

    name: str
    func: Callable[..., Any]
    plugin: str
    schema: dict[str, Any] | None = None
    whole_run: bool = False
    inline: bool = False


@dataclass
class PluginInfo:
    """One loaded plugin, as ``opus-run plugins`` lists it."""

    name: str
    origin: str  # "builtin" | "entrypoint" | "local" | "option"
    source: str  # module name, "dist 1.2.0 (entry point mod)", or an absolute file path
    hooks: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    notifiers: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Loaded:
    name: str
    origin: str
    source: str
    obj: Any


def _is_async(func: Any) -> bool:
    if inspect.iscoroutinefunction(func):
        return True
    # A callable object whose `__call__` is `async def`; callable() cannot tell that apart.
    call = getattr(func, "__call__", None)  # noqa: B004
    return call is not None and inspect.iscoroutinefunction(call)


def _is_template(value: Any) -> bool:
    return isinstance(value, str) and ("{{" in value or "{%" in value)


def _describe_exc(exc: BaseException, file: Path | None = None) -> str:
    """``ExcType: message`` on one line; for a SyntaxError, and for errors raised in ``file``, the line."""
    if isinstance(exc, SyntaxError):
        where = f"line {exc.lineno}" if exc.lineno else ""
        if exc.filename and (file is None or os.path.realpath(exc.filename) != os.path.realpath(file)):
            where = f"{exc.filename}, {where}" if where else exc.filename
        return _one_line(f"{type(exc).__name__}: {exc.msg}" + (f" ({where})" if where else ""))
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if file is not None:
        real = os.path.realpath(file)
        lines = [f.lineno for f in traceback.extract_tb(exc.__traceback__) if os.path.realpath(f.filename) == real]
        if lines and lines[-1]:
            text += f" (line {lines[-1]})"
    return _one_line(text)


def _short(value: Any) -> str:
    if hasattr(value, "spec_path") and hasattr(value, "spec_dir"):
        return f"<ctx {value.spec_path}>"
    return shorten(repr(value), _TRACE_WIDTH)


class PluginHost:
    """The loaded plugins of one run: the pluggy manager plus the output and notifier types.

    Build it with :func:`make_plugin_host`. ``outputs`` and ``notifiers`` map a spec entry's
    ``type`` to its :class:`Handler`.
    """

    def __init__(self, pm: pluggy.PluginManager, log: logging.Logger) -> None:
        self.pm = pm
        self.log = log
        self.outputs: dict[str, Handler] = {}
        self.notifiers: dict[str, Handler] = {}
        self._loaded: dict[str, _Loaded] = {}  # insertion order is load order
        self._validators: dict[tuple[str, str], Any] = {}
        #: seconds one offloaded hook implementation may take (None: no limit)
        self.hook_timeout: float | None = None
        #: every hook implementation that ran out of time, also the ones ``each`` isolated
        self.timed_out: list[PluginTimeout] = []

    # -- what is loaded -------------------------------------------------------------------

    def describe(self) -> list[PluginInfo]:
        """Every loaded plugin in load order, with its origin, hooks and registered types."""
        infos = []
        for rec in self._loaded.values():
            callers = self.pm.get_hookcallers(rec.obj) or []
            infos.append(
                PluginInfo(
                    name=rec.name,
                    origin=rec.origin,
                    source=rec.source,
                    hooks=sorted(c.name for c in callers),
                    outputs=sorted(h.name for h in self.outputs.values() if h.plugin == rec.name),
                    notifiers=sorted(h.name for h in self.notifiers.values() if h.plugin == rec.name),
                )
            )
        return infos

    def origin_of(self, plugin_name: str) -> str | None:
        """``builtin``, ``entrypoint``, ``local`` or ``option`` for a loaded plugin's name."""
        rec = self._loaded.get(plugin_name)
        return rec.origin if rec else None

    def source_of(self, plugin_name: str) -> str:
        """Where a plugin came from (module, distribution or file), for messages."""
        rec = self._loaded.get(plugin_name)
        return rec.source if rec else plugin_name

    def hook_failure(self, hook_name: str, exc: BaseException, consequence: str) -> PluginError:
        """The error for an implementation of ``hook_name`` that raised ``exc``, naming its plugin.

        The implementation is the one whose code is in the traceback (the host calls them one by
        one, so exactly one raised); ``consequence`` says what it means for the run.
        """
        impls = self._impls(hook_name)
        codes = {getattr(i.function, "__code__", None): i for i in impls}
        raised = next(
            (codes[frame.f_code] for frame, _ in traceback.walk_tb(exc.__traceback__) if frame.f_code in codes),
            impls[0] if len(impls) == 1 else None,
        )
        plugin = self.source_of(raised.plugin_name) if raised is not None else None
        return PluginError(f"failed in {hook_name}: {_describe_exc(exc)}; {consequence}", plugin=plugin)

    @contextlib.contextmanager
    def _named(self, hook_name: str, consequence: str) -> Iterator[None]:
        """Turn a plugin's unexpected exception in ``hook_name`` into one PluginError naming the
        plugin and ``consequence``; the runner's own errors pass as they are."""
        try:
            yield
        except OpusRunnerError:
            raise
        except Exception as exc:
            raise self.hook_failure(hook_name, exc, consequence) from None

    # -- calling hooks ----------------------------------------------------------------------

    def _impls(self, hook_name: str, kwargs: Mapping[str, Any] | None = None) -> list[Any]:
        """The hook's implementations in pluggy's call order (last registered first)."""
        caller = getattr(self.pm.hook, hook_name, None)
        if caller is None or caller.spec is None:
            raise ValueError(f"unknown hook {hook_name!r}; hooks are: {', '.join(hook_names())}")
        if kwargs is not None:
            missing = [a for a in caller.spec.argnames if a not in kwargs]
            if missing:
                raise TypeError(f"{hook_name} needs the argument(s) {', '.join(missing)}")
        return [i for i in reversed(caller.get_hookimpls()) if not (i.wrapper or i.hookwrapper)]

    def _trace(self, hook_name: str, impl: Any, kwargs: Mapping[str, Any], verb: str, value: Any) -> None:
        if self.log.isEnabledFor(logging.DEBUG):
            args = ", ".join(f"{k}={_short(kwargs[k])}" for k in impl.argnames if k in kwargs)
            shown = _describe_exc(value) if isinstance(value, BaseException) else _short(value)
            self.log.debug("hook %s(%s) in %s %s %s", hook_name, args, impl.plugin_name, verb, shown)

    async def _call_impl(self, hook_name: str, impl: Any, kwargs: Mapping[str, Any], offload: bool) -> Any:
        args = [kwargs[name] for name in impl.argnames]
        func = impl.function
        third_party = self.origin_of(impl.plugin_name) != "builtin"
        limit = self.hook_timeout if offload and third_party else None
        try:
            if offload and not _is_async(func) and third_party:
                # Third-party sync code may block (boto3, requests); built-ins never do.
                work = _in_thread(func, *args)
            else:
                work = func(*args)
            if inspect.isawaitable(work):
                try:
                    result = await asyncio.wait_for(work, limit)
                except TimeoutError:
                    assert limit is not None
                    timed_out = PluginTimeout(
                        f"plugin {self.source_of(impl.plugin_name)} did not finish {hook_name} within "
                        f"{limit:g} s (timeouts.hooks in opus-runner.toml); the run went on without it",
                        plugin=self.source_of(impl.plugin_name),
                        hook=hook_name,
                        seconds=limit,
                    )
                    self.timed_out.append(timed_out)
                    raise timed_out from None
            else:
                result = work
        except Exception as exc:
            self._trace(hook_name, impl, kwargs, "raised", exc)
            raise
        self._trace(hook_name, impl, kwargs, "returned", result)
        return result

    async def first(
        self, hook_name: str, *, offload: bool = False, returns: type | None = None, **kwargs: Any
    ) -> Any:
        """Call a firstresult hook: implementations in call order, the first non-None result wins.

        Coroutines are awaited. With ``offload=True`` plain third-party implementations run in
        a worker thread (built-ins run inline). A plugin's exception propagates unchanged; a
        result that is not a ``returns`` (when given) is a PluginError naming the plugin.
        """
        for impl in self._impls(hook_name, kwargs):
            result = await self._call_impl(hook_name, impl, kwargs, offload)
            if result is None:
                continue
            if returns is not None and not isinstance(result, returns):
                raise PluginError(
                    f"{hook_name} must return a {returns.__name__} or None, it returned {type(result).__name__}",
                    plugin=self.source_of(impl.plugin_name),
                )
            return result
        return None

    async def each(self, hook_name: str, *, offload: bool = False, isolate: bool = False, **kwargs: Any) -> list[Any]:
        """Call every implementation in call order; return their non-None results.

        With ``isolate=True`` an implementation that raises is logged with its plugin's name
        and the others still run (observers must not stop a run).
        """
        results = []
        for impl in self._impls(hook_name, kwargs):
            try:
                result = await self._call_impl(hook_name, impl, kwargs, offload)
            except Exception as exc:
                if not isolate:
                    raise
                if isinstance(exc, PluginTimeout):
                    self.log.error("%s", exc)  # it names the plugin, the hook and the limit
                    continue
                self.log.error(
                    "plugin %s failed in %s: %s",
                    self.source_of(impl.plugin_name),
                    hook_name,
                    _describe_exc(exc),
                    exc_info=self.log.isEnabledFor(logging.DEBUG),
                )
                continue
            if result is not None:
                results.append(result)
        return results

    # -- the hooks, one typed method each ------------------------------------------------------
    #
    # Callers use these, not ``first``/``each`` with a hook's name: a misspelt hook is then an
    # attribute error at import time for type checkers, and every result has the hookspec's type.

    async def workflow_schema(self, workflow_ref: WorkflowRef, ctx: Context) -> WorkflowSchema | None:
        """``opus_workflow_schema``: the first plugin's description of the workflow, or None.

        A plugin that answers with anything but a :class:`WorkflowSchema` is a PluginError.
        """
        with self._named("opus_workflow_schema", f"the inputs of workflow {workflow_ref.id} are unknown"):
            schema = await self.first(
                "opus_workflow_schema", offload=True, returns=WorkflowSchema, workflow_ref=workflow_ref, ctx=ctx
            )
        return cast("WorkflowSchema | None", schema)

    async def upload_file(self, field: InputField, source: str, ctx: Context) -> str | None:
        """``opus_upload_file``: the file URL the first plugin made of ``source``, or None when none did."""
        url = await self.first("opus_upload_file", offload=True, field=field, source=source, ctx=ctx)
        return None if url is None else str(url)

    async def coerce_value(self, field: InputField, value: Any, ctx: Context) -> WireValue | None:
        """``opus_coerce_value``: the value to send for ``field``, or None when no plugin coerced it.

        A plain value a plugin returns comes back as a ``WireValue`` without ``type``, which
        sends the type the workflow's schema states, exactly as the plain value would be sent.
        Runs inline (coercers do no I/O); a ``ValueError`` or ``TypeError`` rejects the value.
        """
        sent = await self.first("opus_coerce_value", field=field, value=value, ctx=ctx)
        if sent is None or isinstance(sent, WireValue):
            return sent
        return WireValue(sent)

    async def payload_ready(self, payload: dict[str, Any], ctx: Context) -> None:
        """``opus_payload_ready``: every plugin may adjust ``payload`` in place; one that raises stops
        the job, with a PluginError naming it."""
        with self._named("opus_payload_ready", "the job was not executed"):
            await self.each("opus_payload_ready", offload=True, payload=payload, ctx=ctx)

    def observes_jobs(self) -> bool:
        """Whether any plugin implements ``opus_job_event`` (else events need not be built for it)."""
        return bool(self.pm.hook.opus_job_event.get_hookimpls())

    async def job_event(self, event: JobEvent, ctx: Context) -> None:
        """``opus_job_event``: every observer hears ``event``; one that raises or overruns is logged, not raised."""
        if self.observes_jobs():
            await self.each("opus_job_event", offload=True, isolate=True, event=event, ctx=ctx)

    async def run_started(self, run: RunInfo, ctx: Context) -> None:
        """``opus_run_started``: every plugin hears that the run's jobs are about to be submitted;
        one that raises stops the run, with a PluginError naming it."""
        with self._named("opus_run_started", "no job was submitted"):
            await self.each("opus_run_started", offload=True, run=run, ctx=ctx)

    async def run_finished(self, run: RunInfo, report: Any, ctx: Context) -> None:
        """``opus_run_finished``: every plugin sees the run's report (an engine ``RunReport``,
        typed ``Any`` here because the engine sits above the plugin host)."""
        await self.each("opus_run_finished", offload=True, run=run, report=report, ctx=ctx)

    def _merged_dicts(self, hook_name: str, ctx: Any, *, callables: bool) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        kwargs = {"ctx": ctx}
        # Registration order, so a later plugin's name overwrites an earlier one's.
        for impl in reversed(self._impls(hook_name, kwargs)):
            source = self.source_of(impl.plugin_name)
            try:
                result = impl.function(*[kwargs[a] for a in impl.argnames])
            except Exception as exc:
                raise PluginError(f"{hook_name} failed: {_describe_exc(exc)}", plugin=source) from exc
            self._trace(hook_name, impl, kwargs, "returned", result)
            if inspect.isawaitable(result):
                if inspect.iscoroutine(result):
                    result.close()
                raise PluginError(f"{hook_name} must be a plain def returning a dict, not async", plugin=source)
            if result is None:
                continue
            if not isinstance(result, Mapping):
                raise PluginError(
                    f"{hook_name} must return a dict or None, it returned {type(result).__name__}", plugin=source
                )
            if callables:
                for name, value in result.items():
                    if not callable(value):
                        raise PluginError(f"{hook_name}: filter {name!r} is not callable", plugin=source)
            merged.update(result)
        return merged

    def template_globals(self, ctx: Context) -> dict[str, Any]:
        """``opus_template_globals``: Jinja globals from every plugin, merged in load order (later plugins win)."""
        return self._merged_dicts("opus_template_globals", ctx, callables=False)

    def template_filters(self, ctx: Context) -> dict[str, Callable[..., Any]]:
        """``opus_template_filters``: Jinja filters from every plugin, merged in load order (later plugins win)."""
        return self._merged_dicts("opus_template_filters", ctx, callables=True)

    # -- config entries -------------------------------------------------------------------

    def _table(self, kind: str) -> tuple[dict[str, Handler], str]:
        if kind == "outputs":
            return self.outputs, "output"
        if kind == "notify":
            return self.notifiers, "notifier"
        raise ValueError(f"kind must be 'outputs' or 'notify', not {kind!r}")

    def _validator(self, kind: str, handler: Handler) -> Any:
        cache_key = (kind, handler.name)
        if cache_key not in self._validators:
            from jsonschema import exceptions, validators

            cls = validators.validator_for(handler.schema, default=validators.Draft202012Validator)
            try:
                cls.check_schema(handler.schema)
            except exceptions.SchemaError as exc:
                noun = self._table(kind)[1]
                raise PluginError(
                    f"the config schema of {noun} type {handler.name!r} is not a valid JSON Schema: "
                    f"{_one_line(exc.message)}",
                    plugin=self.source_of(handler.plugin),
                ) from None
            self._validators[cache_key] = cls(handler.schema)
        return self._validators[cache_key]

    def check_config(
        self, kind: str, entries: Any, *, file: str | Path | None, key: str | Sequence[str | int]
    ) -> list[SpecError]:
        """Check ``outputs`` (kind ``"outputs"``) or ``notify`` (kind ``"notify"``) entries.

        Returns one :class:`SpecError` per problem (empty when all is well): an unknown ``type``
        (listing the known ones, with a did-you-mean), and every violation of the handler's
        config schema with its key path (``outputs[1].path``). Values that are still templates
        (``{{ ... }}``) are accepted wherever they stand, since they render later; call this
        again on rendered entries to check those values too.
        """
        table, noun = self._table(kind)
        prefix: tuple[str | int, ...] = (key,) if isinstance(key, str) else tuple(key)
        if not isinstance(entries, list):
            return [SpecError(f"must be a list of {noun} entries, each a mapping with a 'type'", file=file, key=prefix)]
        known = ", ".join(sorted(table)) or "none"
        errors: list[SpecError] = []
        for index, entry in enumerate(entries):
            here = (*prefix, index)
            if _is_template(entry):
                continue
            if not isinstance(entry, dict):
                errors.append(
                    SpecError(
                        f"each {noun} entry must be a mapping with a 'type', found {type(entry).__name__}",
                        file=file,
                        key=here,
                    )
                )
                continue
            type_name = entry.get("type")
            if _is_template(type_name):
                continue
            if not isinstance(type_name, str) or not type_name:
                errors.append(SpecError(f"missing 'type'; known {noun} types: {known}", file=file, key=here))
                continue
            handler = table.get(type_name)
            if handler is None:
                hint = _did_you_mean(type_name, sorted(table))
                errors.append(
                    SpecError(
                        f"unknown {noun} type {type_name!r}"
                        + (f" ({hint})" if hint else "")
                        + f"; known types: {known}. A type from a plugin needs that plugin installed or loaded",
                        file=file,
                        key=(*here, "type"),
                    )
                )
                continue
            if handler.schema is None:
                continue
            validator = self._validator(kind, handler)
            for problem in schema_errors(validator, entry):
                for path, message in explain_schema_error(problem, show=_short, skip=_is_template):
                    errors.append(SpecError(message, file=file, key=(*here, *path)))
        return errors


async def _in_thread(func: Callable[..., Any], *args: Any) -> Any:
    """``func(*args)`` in a daemon thread (with this context's variables), awaited.

    Not ``asyncio.to_thread``: the default executor's threads are joined when the loop and the
    interpreter shut down, so one stuck plugin call would keep the process alive forever.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if future.done():  # timed out and cancelled: the late result is dropped
            return
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)

    def work() -> None:
        try:
            outcome = (True, func(*args))
        except BaseException as exc:  # handed to the awaiting task, which re-raises it
            outcome = (False, exc)
        try:
            loop.call_soon_threadsafe(settle, *outcome)
        except RuntimeError:
            pass  # the loop is closed: the run ended without waiting for this call

    context = contextvars.copy_context()
    name = f"opus-plugin-{getattr(func, '__name__', 'call')}"
    threading.Thread(target=context.run, args=(work,), name=name, daemon=True).start()
    result = await future
    if inspect.isawaitable(result):
        result = await result
    return result


async def call_handler(handler: Handler, *args: Any, timeout: float | None = None) -> Any:
    """Run an output or notifier handler: await an async one, call a plain built-in one
    (``handler.inline``) directly, and run any other plain one in a worker thread.

    ``timeout`` (seconds, None for no limit) raises :class:`TimeoutError` when exceeded; a
    plain built-in runs to its end (it is quick and does not block). A plain third-party
    handler's thread cannot be stopped: it is a daemon thread, so it never keeps the process
    alive, and whatever it returns late is dropped.
    """
    if _is_async(handler.func):
        work = handler.func(*args)
    elif handler.inline:
        work = handler.func(*args)
        if not inspect.isawaitable(work):
            return work
    else:
        work = _in_thread(handler.func, *args)
    return await asyncio.wait_for(work, timeout)


# -- loading ------------------------------------------------------------------------------


class _Loader:
    """Imports and registers plugins into one host, turning every failure into a PluginError."""

    def __init__(self, host: PluginHost) -> None:
        self.host = host
        self.pm = host.pm
        self.specs = set(hook_names())

    def register(self, obj: Any, *, name: str, origin: str, source: str) -> None:
        loaded = self.host._loaded
        if name in loaded:
            other = loaded[name]
            if other.source == source:
                raise PluginError(
                    f"it is already loaded as {_ORIGIN_NOUN[other.origin]}; load it only once", plugin=source
                )
            raise PluginError(
                f"its name {name!r} is already taken by {other.source} ({other.origin}); rename or remove one of them",
                plugin=source,
            )
        for other in loaded.values():
            if other.obj is obj:
                raise PluginError(
                    f"it is already loaded from {other.source} ({other.origin}); load it only once",
                    plugin=source,
                )
        self._check_impls(obj, source)
        try:
            self.pm.register(obj, name=name)
        except pluggy.PluginValidationError as exc:
            raise PluginError(_one_line(str(exc)), plugin=source) from None
        except ValueError as exc:
            raise PluginError(_one_line(str(exc)), plugin=source) from None
        loaded[name] = _Loaded(name=name, origin=origin, source=source, obj=obj)

    def _check_impls(self, obj: Any, source: str) -> None:
        found = []
        for attr in dir(obj):
            opts = self.pm.parse_hookimpl_opts(obj, attr)
            if opts is None:
                continue
            hook = opts.get("specname") or attr
            found.append(hook)
            if opts.get("wrapper") or opts.get("hookwrapper"):
                raise PluginError(
                    f"{hook} is declared as a wrapper, which opus-runner does not support (hooks may be async); "
                    "implement the hook directly",
                    plugin=source,
                )
            if hook not in self.specs and not opts.get("optionalhook"):
                hint = _did_you_mean(hook, sorted(self.specs))
                raise PluginError(
                    f"implements unknown hook {hook!r}"
                    + (f"; {hint}" if hint else f"; the hooks are: {', '.join(sorted(self.specs))}"),
                    plugin=source,
                )
            caller = getattr(self.pm.hook, hook, None)
            func = getattr(obj, attr)
            if caller is not None and caller.spec is not None:
                try:
                    params = inspect.signature(func).parameters.values()
                except (TypeError, ValueError):  # no signature to read: pluggy checks what it can
                    continue
                # As pluggy does: only arguments without a default are passed by the hook.
                wanted = [p.name for p in params if p.default is p.empty and p.kind in _NAMED_PARAMS]
                unknown = [p for p in wanted if p not in caller.spec.argnames]
                if unknown:
                    raise PluginError(
                        f"{hook} asks for argument(s) {', '.join(unknown)} that the hook does not pass; "
                        f"it passes: {', '.join(caller.spec.argnames)}",
                        plugin=source,
                    )
        if not found:
            lookalikes = [a for a in dir(obj) if a in self.specs or a.startswith("opus_")]
            hint = f" (is @hookimpl missing on {', '.join(lookalikes)}?)" if lookalikes else ""
            raise PluginError(
                f"defines no @hookimpl functions{hint}; decorate hook implementations with @opus_runner.hookimpl",
                plugin=source,
            )

    def load_module_name(self, module_name: str, *, origin: str) -> None:
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            raise PluginError(f"failed to import: {_describe_exc(exc)}; {_HINTS[origin]}", plugin=module_name) from exc
        self.register(module, name=module_name, origin=origin, source=module_name)

    def load_entry_points(self) -> None:
        from importlib.metadata import entry_points

        def sort_key(ep: Any) -> tuple[str, str]:
            return ((ep.dist.name if ep.dist else "").lower(), ep.name)

        for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=sort_key):
            dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist else "an unknown distribution"
            source = f"{dist} (entry point {ep.value})"
            try:
                obj = ep.load()
            except Exception as exc:
                raise PluginError(
                    f"failed to load entry point {ep.name} = {ep.value}: {_describe_exc(exc)}; {_HINTS['entrypoint']}",
                    plugin=dist,
                ) from exc
            self.register(obj, name=ep.name, origin="entrypoint", source=source)

    def import_file(self, path: Path, module_name: str, origin: str) -> ModuleType:
        try:
            spec = importlib.util.spec_from_file_location(module_name, path)
            if spec is None or spec.loader is None:
                raise ImportError(f"cannot load {path.name} as a Python module")
            module = importlib.util.module_from_spec(spec)
            # In sys.modules while it runs, as a normal import would be (dataclasses need it).
            sys.modules[module_name] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                sys.modules.pop(module_name, None)
                raise
        except (Exception, SystemExit) as exc:
            raise PluginError(
                f"failed to import: {_describe_exc(exc, path)}; {_HINTS[origin]}", plugin=str(path)
            ) from exc
        return module

    def load_file(self, path: Path, *, origin: str) -> None:
        stem = re.sub(r"\W", "_", path.stem)
        prefix = "opus_runner_local" if origin == "local" else "opus_runner_option"
        module = self.import_file(path, f"{prefix}.{stem}", origin)
        self.register(module, name=path.stem, origin=origin, source=str(path))

    def load_dir(self, folder: Path) -> None:
        if not folder.is_dir():
            return
        for path in sorted(folder.glob("*.py")):
            if path.name.startswith("_") or not path.is_file():
                continue
            self.load_file(path.resolve(), origin="local")

    def load_option(self, spec: str) -> None:
        if spec.endswith(".py") or "/" in spec or os.sep in spec:
            path = Path(spec).expanduser()
            if not path.is_file():
                raise PluginError(
                    f"--plugin {spec}: no such file; give a path to a .py file or a dotted module name",
                    plugin=spec,
                )
            self.load_file(path.resolve(), origin="option")
        else:
            self.load_module_name(spec, origin="option")

    def collect_handlers(self) -> None:
        for kind, (noun, hook_name) in _KINDS.items():
            table = self.host._table(kind)[0]
            # Registration order, so a clash names the plugin that came first as the owner.
            for impl in reversed(self.host._impls(hook_name)):
                source = self.host.source_of(impl.plugin_name)
                if _is_async(impl.function):
                    raise PluginError(
                        f"{hook_name} must be a plain def (it runs while plugins load), not async def",
                        plugin=source,
                    )
                register = self._register_callback(table, kind, noun, impl.plugin_name)
                try:
                    impl.function(*[register for _ in impl.argnames])
                except PluginError:
                    raise
                except Exception as exc:
                    raise PluginError(f"{hook_name} failed: {_describe_exc(exc)}", plugin=source) from exc

    def _register_callback(self, table: dict[str, Handler], kind: str, noun: str, plugin: str) -> Callable[..., None]:
        source = self.host.source_of(plugin)
        # Decided by where the registering plugin came from, never by what it asks for.
        inline = self.host.origin_of(plugin) == "builtin"

        def register(
            name: str, handler: Callable[..., Any], schema: dict[str, Any] | None = None, *, whole_run: bool = False
        ) -> None:
            """Register ``handler`` under the type ``name``, with an optional config JSON Schema;
            ``whole_run`` for an output that reports on the whole run (see :class:`Handler`)."""
            if not isinstance(name, str) or not _TYPE_NAME.match(name):
                raise PluginError(
                    f"{name!r} is not a valid {noun} type name; use lower-case letters, digits, '-' and '_', "
                    "starting with a letter",
                    plugin=source,
                )
            if not callable(handler):
                raise PluginError(f"the handler of {noun} type {name!r} is not callable", plugin=source)
            if schema is not None and not isinstance(schema, dict):
                raise PluginError(
                    f"the schema of {noun} type {name!r} must be a dict (a JSON Schema), not {type(schema).__name__}",
                    plugin=source,
                )
            if name in table:
                other = self.host.source_of(table[name].plugin)
                raise PluginError(
                    f"{noun} type {name!r} is registered by both {other} and {source}; remove or rename one of them",
                    plugin=source,
                )
            table[name] = Handler(
                name=name,
                func=handler,
                plugin=plugin,
                schema=_entry_schema(kind, name, schema),
                whole_run=whole_run,
                inline=inline,
            )

        return register

    def check_pending(self) -> None:
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            name = self.pm.get_name(exc.plugin)
            raise PluginError(_one_line(str(exc)), plugin=self.host.source_of(name or "?")) from None


def _add_tracing(host: PluginHost) -> None:
    log = host.log

    def before(hook_name: str, impls: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
        args = ", ".join(f"{k}={_short(v)}" for k, v in kwargs.items())
        log.debug("hook %s(%s) -> %s", hook_name, args, ", ".join(i.plugin_name for i in impls))

    def after(outcome: Any, hook_name: str, impls: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
        if outcome.exception is not None:
            log.debug("hook %s raised %s", hook_name, _describe_exc(outcome.exception))
        else:
            log.debug("hook %s returned %s", hook_name, _short(outcome.get_result()))

    host.pm.add_hookcall_monitoring(before, after)


def make_plugin_host(
    *,
    plugins_dir: Path | None = None,
    modules: Sequence[str] = (),
    entrypoints: bool = True,
    builtins: bool = True,
    log: logging.Logger | None = None,
) -> PluginHost:
    """Load every plugin of a run into a fresh :class:`PluginHost`.

    Order: built-ins, entry points of group ``opus_runner``, the ``*.py`` files of
    ``plugins_dir`` (None or a missing folder: none), then ``modules`` (dotted names or ``.py``
    paths, from ``--plugin``). Raises :class:`PluginError` naming the plugin on any failure.
    With ``log`` at DEBUG, every hook call is traced there (secrets masked).
    """
    log = log or logging.getLogger("opus_runner.plugins")
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    host = PluginHost(pm, log)
    loader = _Loader(host)
    if builtins:
        # Read at call time, not import time, so the tuple is the one place that decides.
        for module_name in importlib.import_module("opus_runner.builtins").BUILTIN_PLUGINS:
            loader.load_module_name(module_name, origin="builtin")
    if entrypoints:
        loader.load_entry_points()
    if plugins_dir is not None:
        loader.load_dir(Path(plugins_dir))
    for spec in modules:
        loader.load_option(spec)
    loader.check_pending()
    loader.collect_handlers()
    if log.isEnabledFor(logging.DEBUG):
        _add_tracing(host)
    return host
