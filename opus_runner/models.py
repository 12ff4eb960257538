"""The data that moves between the steps of a run. Plain dataclasses, no I/O."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .inputs import FILE_TYPES, INPUT_TYPES  # noqa: F401  (the table's names, re-exported)

if TYPE_CHECKING:  # pragma: no cover
    import httpx

#: Statuses after which a job never changes again (opus-api.md section 6). TIMED_OUT is a
#: platform status too (the platform's own limit), not only the runner giving up; ``stopped``
#: (one source, any case) ends a job like a cancellation.
TERMINAL_STATUSES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT", "STOPPED"})
#: Terminal statuses reported as a cancellation (event ``cancelled``).
CANCELLED_STATUSES = frozenset({"CANCELLED", "STOPPED"})
#: Statuses that do not show whether an execute arrived: an initiated job that was never
#: executed may read PENDING, the same as a queued one, so the job's detail decides.
AMBIGUOUS_STATUSES = frozenset({"PENDING", "UNKNOWN"})


def normalise_status(raw: object) -> str:
    """``"in progress"``, ``"IN_PROGRESS"``, ``"In-Progress"`` -> ``"IN_PROGRESS"``.

    Unknown spellings are kept (normalised), never rejected: the API adds statuses over time.
    """
    text = str(raw or "UNKNOWN").strip().upper()
    for sep in (" ", "-"):
        text = text.replace(sep, "_")
    while "__" in text:
        text = text.replace("__", "_")
    return text or "UNKNOWN"


@dataclass(frozen=True)
class InputField:
    """One input of a workflow, as the workflow's schema describes it.

    ``type`` is what opus-runner coerces and validates for (``array_files`` for any list of
    files); ``wire_type`` the type to send when the schema states another one (a list of files
    described as ``array`` with file items), and ``type_definition`` the schema's description
    of a list's items, sent as ``typeDefinition`` beside it. A ``type`` outside
    :data:`INPUT_TYPES` is kept as the schema stated it (``known`` is then False); an entry that
    states no type at all has ``type`` ``""``.
    """

    variable_name: str
    display_name: str
    type: str
    nullable: bool = False
    allowed_file_types: tuple[str, ...] = ()
    id: str | None = None
    wire_type: str | None = None
    type_definition: Any = field(default=None, compare=False, hash=False)

    @property
    def required(self) -> bool:
        return not self.nullable

    @property
    def known(self) -> bool:
        """False for a type this version of opus-runner does not understand (or none at all)."""
        return self.type in INPUT_TYPES

    @property
    def sent_type(self) -> str:
        """The ``type`` sent in the payload: exactly what the workflow's schema states."""
        return self.wire_type or self.type

    def as_entry(self) -> dict[str, Any]:
        """This input normalised as a ``jobPayloadSchema`` entry (lock files, fingerprints).

        The wire form appears only when it differs from ``type``, so entries of inputs without
        one read as they always did (and lock files written before it still verify).
        """
        entry: dict[str, Any] = {
            "variable_name": self.variable_name,
            "display_name": self.display_name,
            "type": self.type,
            "is_nullable": self.nullable,
            "allowed_file_types": sorted(self.allowed_file_types),
        }
        if self.wire_type:
            entry["wire_type"] = self.wire_type
            entry["type_definition"] = self.type_definition
        return entry

    @property
    def is_file(self) -> bool:
        return self.type in FILE_TYPES


@dataclass(frozen=True)
class UploadSettings:
    """Where one job's uploaded files go (the spec's ``uploads``).

    ``workspace_id`` None: the workflow's own workspace when it reports one, else the upload
    is scoped by the workflow id (opus-api.md section 4).
    """

    access_scope: str = "organization"
    workspace_id: str | None = None


@dataclass(frozen=True)
class WireValue:
    """What an ``opus_coerce_value`` implementation returns to choose the wire form itself.

    ``value`` is sent as the entry's ``value``; ``type`` replaces the ``type`` sent (default:
    what the schema states) and ``type_definition``, when given, is sent as ``typeDefinition``.
    The payload's value is still checked against the input's type; its ``type`` is the
    plugin's choice.
    """

    value: Any
    type: str | None = None
    type_definition: Any = None


@dataclass(frozen=True)
class WorkflowRef:
    """Which workflow (and optionally which version) a spec runs."""

    id: str
    version: int | None = None
    version_id: str | None = None

    @property
    def key(self) -> str:
        """A stable cache key: one schema fetch per workflow and version per run."""
        pin = self.version_id or (str(self.version) if self.version is not None else "latest")
        return f"{self.id}@{pin}"


@dataclass(frozen=True)
class WorkflowSchema:
    """A workflow's identity and its inputs, in the order the API listed them."""

    workflow_id: str
    name: str = ""
    description: str = ""
    inputs: tuple[InputField, ...] = ()
    version: int | None = None
    version_id: str | None = None
    source: str = "v1"  # which shape described it: "v1" (jobPayloadSchema) or "v2" (the graph)
    workspace_id: str | None = None  # the workspace the workflow lives in, when it says

    def by_variable_name(self) -> dict[str, InputField]:
        return {f.variable_name: f for f in self.inputs}


@dataclass
class JobResult:
    """A finished (or given-up-on) job. ``outputs`` maps output variable name to value.

    ``final`` is False when the runner stopped waiting (``wait.timeout``) while the job may still
    be running: it reads ``TIMED_OUT`` now, and ``opus-run resume`` delivers the job's real
    outcome to every output later. An output that appends (a log line, a table row) skips such
    a result, so it never holds one job twice.
    """

    job_id: str
    status: str
    outputs: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)
    spec_name: str = ""
    plan_key: str = ""
    title: str = ""
    url: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    error: str | None = None
    final: bool = True

    @property
    def ok(self) -> bool:
        return self.status == "COMPLETED"

    def as_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "status": self.status,
            "spec_name": self.spec_name,
            "plan_key": self.plan_key,
            "title": self.title,
            "url": self.url,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "error": self.error,
            "final": self.final,
            "outputs": self.outputs,
        }


#: Event kinds a notifier can subscribe to with ``on:``; ``status`` events are for observers.
EVENT_KINDS = ("submitted", "status", "completed", "failed", "cancelled", "timed_out")


@dataclass
class JobEvent:
    """Something that happened to a job. Terminal kinds carry ``result`` or ``error``."""

    kind: str
    job_id: str | None
    spec_name: str
    status: str | None = None
    plan_key: str = ""
    result: JobResult | None = None
    error: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    time: str = ""

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "event": self.kind,
            "time": self.time,
            "job_id": self.job_id,
            "spec_name": self.spec_name,
            "plan_key": self.plan_key,
            "status": self.status,
        }
        if self.detail:
            data.update(self.detail)
        if self.result is not None:
            data["outputs"] = self.result.outputs
            data["final"] = self.result.final
        if self.error is not None:
            data["error"] = self.error
        return data


@dataclass
class Context:
    """What every hook and handler receives as ``ctx``."""

    spec: Any  # the parsed spec (opus_runner.spec.Spec)
    spec_path: Path
    spec_dir: Path
    log: logging.Logger
    vars: dict[str, Any] = field(default_factory=dict)
    workflow: WorkflowSchema | None = None
    http: httpx.AsyncClient | None = None
    client: Any = None  # the run's OpusClient (None offline)
    plan_key: str = ""
    root: Path | None = None  # the spec repository root (file confinement)
    allow_outside_root: bool = False
    dry_run: bool = False
    job_id: str | None = None
    output_format: str = "text"  # "text" or "json" (--format): json keeps stdout for events
    quiet: bool = False
    #: state shared by every job of one run: plugins may keep caches here under their own name
    shared: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    uploads: UploadSettings = field(default_factory=UploadSettings)
    #: True when this delivery may already have been written by an interrupted run (resume):
    #: outputs that append check the target for this job before writing again
    redelivery: bool = False
    #: the delivery's idempotency key (``run_id:plan_key:target``), the same every time this
    #: output of this job of this run is delivered: an output whose receiver can drop repeats
    #: sends it along
    idempotency_key: str | None = None


@dataclass
class RunInfo:
    """The run a run-level hook (``opus_run_started``, ``opus_run_finished``) is about."""

    run_id: str
    resumed: bool  # True in ``opus-run resume``: earlier processes may have finished jobs
    started_at: str  # when the run began (its first process), ISO 8601
    #: reads the journal; the runner gives it (models.py knows no journal)
    read_results: Callable[[], list[JobResult]] = field(default=list, repr=False, compare=False)

    def results(self) -> list[JobResult]:
        """The :class:`JobResult` of every finished job of the whole run, in plan order, read from
        the journal: jobs finished by earlier processes of a resumed run included."""
        return self.read_results()
