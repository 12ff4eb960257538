"""The data that moves between the steps of a run. Plain dataclasses, no I/O."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import httpx

#: Statuses after which a job never changes again.
# TIMED_OUT is a platform status too (the platform's own limit), not only the runner giving up.
TERMINAL_STATUSES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"})
#: Statuses of a job that was initiated but not executed yet.
NOT_STARTED_STATUSES = frozenset({"CREATED", "INITIATED", "NOT_STARTED", "DRAFT"})

#: Input types of the Opus API (opus-api.md, "Input types").
INPUT_TYPES = (
    "str",
    "float",
    "int",
    "bool",
    "date",
    "file",
    "array",
    "array_files",
    "object",
    "json_string",
)


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
    """One input of a workflow, as ``jobPayloadSchema`` describes it."""

    variable_name: str
    display_name: str
    type: str
    nullable: bool = False
    allowed_file_types: tuple[str, ...] = ()
    id: str | None = None

    @property
    def required(self) -> bool:
        return not self.nullable

    def as_entry(self) -> dict[str, Any]:
        """This input normalised as a ``jobPayloadSchema`` entry (lock files, fingerprints)."""
        return {
            "variable_name": self.variable_name,
            "display_name": self.display_name,
            "type": self.type,
            "is_nullable": self.nullable,
            "allowed_file_types": sorted(self.allowed_file_types),
        }

    @property
    def is_file(self) -> bool:
        return self.type in ("file", "array_files")


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
    source: str = "v1"  # which route described it: "v1" (/workflow) or "v2" (workflow object)

    def by_variable_name(self) -> dict[str, InputField]:
        return {f.variable_name: f for f in self.inputs}


@dataclass
class JobResult:
    """A finished (or given-up-on) job. ``outputs`` maps output variable name to value."""

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
