"""The plugin contract of opus-runner. Each hookspec's docstring is its documentation.

Plugins implement these with ``@opus_runner.hookimpl``. Any implementation, and any output or
notifier handler a plugin registers, may be a plain function or an ``async def``: the runner
awaits coroutines, and runs plain handlers that may do I/O in a worker thread so the event loop
never blocks.

``ctx`` is an :class:`opus_runner.models.Context`: ``ctx.spec``, ``ctx.spec_path``,
``ctx.spec_dir``, ``ctx.workflow`` (None before the schema is fetched), ``ctx.http`` (the run's
``httpx.AsyncClient``, None offline), ``ctx.client`` (the run's ``OpusClient``), ``ctx.log`` and
``ctx.vars``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

from .models import Context, InputField, JobEvent, RunInfo, WorkflowRef, WorkflowSchema

PROJECT_NAME = "opus_runner"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

#: ``register(name, handler, *, schema=None)`` as passed to the two ``register`` hooks.
Register = Callable[..., None]


@hookspec
def opus_register_outputs(register: Register) -> None:
    """Register output types: where a finished job's result goes.

    Call ``register(name, handler, schema=None)`` once per type. ``handler(result, config, ctx)``
    receives the :class:`~opus_runner.models.JobResult`, the spec's ``outputs`` entry (a dict,
    templated, ``type`` included) and ``ctx``. ``schema``, if given, is a JSON Schema for
    ``config``: ``opus-run validate`` checks every entry of that type against it before anything
    is submitted. Registering a name another plugin already registered is an error naming both.

    Every implementation is called (not firstresult). Example::

        @hookimpl
        def opus_register_outputs(register):
            register("print-summary", lambda result, config, ctx: print(result.outputs))
    """


@hookspec
def opus_register_notifiers(register: Register) -> None:
    """Register notifier types: who hears about job events.

    Call ``register(name, handler, schema=None)``. ``handler(event, config, ctx)`` receives a
    :class:`~opus_runner.models.JobEvent` whose ``kind`` is one of the entry's ``on:`` events
    (default ``[completed, failed]``), the spec's ``notify`` entry and ``ctx``. A notifier gets a
    bounded time (10 s by default); a notifier that raises or overruns is reported, and never
    loses the result. Every implementation is called (not firstresult).
    """


@hookspec(firstresult=True)
def opus_coerce_value(field: InputField, value: Any, ctx: Context) -> Any:
    """Turn a spec value into the value sent to Opus for ``field``.

    Return the value to send, or ``None`` to pass the field on to the next implementation
    (the built-ins, registered first, run last). Raise ``ValueError`` with a sentence saying
    what was expected to reject the value; the runner adds the file and key. File fields
    (``file``, ``array_files``) reach this hook with their sources already turned into file URLs.

    The entry is sent with the ``type`` the workflow's schema states (``field.sent_type``) and,
    for a list of files described as ``array``, its ``typeDefinition``. To choose the wire form
    yourself, return a :class:`~opus_runner.WireValue` (``value``, ``type``,
    ``type_definition``); the value is still checked against the input's type.

    **Stops at the first non-None result** (firstresult). Example, a coercer for one field::

        @hookimpl
        def opus_coerce_value(field, value, ctx):
            if field.variable_name == "workflow_input_tags" and isinstance(value, str):
                return [t.strip() for t in value.split(",")]
            return None
    """


@hookspec(firstresult=True)
def opus_upload_file(field: InputField, source: str, ctx: Context) -> str | None:
    """Make ``source`` (as written in the spec: a local path, a URL, ``s3://...``) a file URL.

    Return the URL to send, or ``None`` to pass to the next implementation. The built-in
    handles local paths (after the existence, size, type and repo-root checks) through the
    presigned-URL flow of the API, and passes http(s) URLs through unchanged. With
    ``ctx.dry_run`` true, return a placeholder URL instead of uploading.

    **Stops at the first non-None result** (firstresult).
    """


@hookspec(firstresult=True)
def opus_workflow_schema(workflow_ref: WorkflowRef, ctx: Context) -> WorkflowSchema | None:
    """Fetch a workflow's inputs as a :class:`~opus_runner.models.WorkflowSchema`.

    The built-in asks ``GET /workflow/{id}`` (with version pinning) and, when the platform
    answers 404 or "V1 workflow details are no longer supported", reads the v2 workflow object
    instead. The runner calls this once per workflow and version per run.

    **Stops at the first non-None result** (firstresult).
    """


@hookspec
def opus_template_globals(ctx: Context) -> dict[str, Any] | None:
    """Return a dict of extra Jinja globals (functions or values) for spec templates.

    Every implementation is called; later plugins win on a name clash. Called once per spec,
    with a ``ctx`` for that spec (``spec``, ``spec_path``, ``spec_dir``, ``plan_key`` set;
    ``vars`` empty and no ``job_id``: no job exists yet), and once with the run-level context
    (``spec`` None, the working directory as ``spec_path`` and ``spec_dir``) for templates no
    spec owns.
    """


@hookspec
def opus_template_filters(ctx: Context) -> dict[str, Any] | None:
    """Return a dict of extra Jinja filters for spec templates, with the ``ctx`` of
    :func:`opus_template_globals`. Every implementation is called."""


@hookspec
def opus_payload_ready(payload: dict[str, Any], ctx: Context) -> None:
    """Inspect or adjust ``payload`` (the ``jobPayloadSchemaInstance``) just before execute.

    Mutate the dict in place to change what is sent. Every implementation is called. Not
    called on ``--dry-run``, where nothing is executed.
    """


@hookspec
def opus_job_event(event: JobEvent, ctx: Context) -> None:
    """Observe every job event: ``submitted``, ``status`` changes, and the terminal
    ``completed``, ``failed``, ``cancelled`` or ``timed_out``. Every implementation is called;
    an observer that raises is reported and does not stop the run.
    """


@hookspec
def opus_run_started(run: RunInfo, ctx: Context) -> None:
    """A run is about to submit its first job: every job was checked, the run is in the journal.

    ``run`` is a :class:`~opus_runner.models.RunInfo`: ``run.run_id``, ``run.resumed`` (True in
    ``opus-run resume``), ``run.started_at`` and ``run.results()``. ``ctx`` belongs to no spec
    (``ctx.spec`` is None); ``ctx.shared`` is the one every job of the run shares. Not called
    by ``validate``, ``render`` or ``--dry-run``. Every implementation is called; one that raises
    stops the run before anything is submitted.
    """


@hookspec
def opus_run_finished(run: RunInfo, report: Any, ctx: Context) -> None:
    """Every job of this process has ended and been delivered; ``report`` is the
    :class:`~opus_runner.RunReport` (``report.outcomes``, ``report.exit_code``).

    ``run.results()`` reads the journal: the :class:`~opus_runner.models.JobResult` of every
    finished job of the whole run, jobs finished by earlier processes of a resumed run
    included. The place for an output that describes the whole run (a JUnit report, a
    summary). Called in ``opus-run resume`` too. One that raises is reported with its plugin's
    name and makes the run exit 1; the jobs' results are kept.
    """
