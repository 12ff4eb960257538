"""``opus-runner.lock``: the workflow input schemas a project's specs were checked against.

``opus-run lock SPEC...`` records, for every workflow and version the specs use, the inputs the
live API described; ``opus-run validate --locked`` and ``render --locked`` then check specs
against that file with no service key and no network (pull requests from forks, offline work),
and ``opus-run drift`` compares it with the live API. Without arguments, ``lock`` and ``drift``
take every spec of the project (:func:`project_spec_files`), as ``terraform plan`` needs none.

The file is JSON (sorted keys, indent 2, trailing newline, so diffs stay small)::

    {"lockVersion": 1,
     "api": "v0" | "v1",
     "specs": ["<spec path, relative to the project root>", ...],
     "workflows": {"<workflow id>@<version | version id | latest>": {
         "workflowId", "version", "versionId", "name",
         "jobPayloadSchema": {"<variable_name>": {"variable_name", "display_name", "type",
                                                  "is_nullable", "allowed_file_types"}},
         "fingerprint": "<sha256 of the inputs>"}}}

``specs`` lists the spec files the lock was taken from (a lock written before it existed has
none), so ``drift`` can say which specs are new since. ``api`` is the generation of the Opus API
the schemas were read with (docs/api-dialects.md); a lock without it was taken with v0, and
checking specs against a lock of the other generation is refused (:meth:`Lock.check_api`). Every entry carries the fingerprint of its inputs; reading recomputes it, so an entry edited by
hand (or mangled by a merge) is refused instead of silently checking specs against wrong types.
Cheap to import: only the standard library and opus-runner's own light modules.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .config import API_NAMES, DEFAULT_API
from .errors import LockError, ValidationFailed
from .paths import display_path
from .models import WorkflowRef, WorkflowSchema
from .workflow import fields_from_job_payload_schema, schema_fingerprint

__all__ = [
    "LOCK_FILE",
    "LOCK_VERSION",
    "Lock",
    "LockError",
    "load_lock",
    "lock_document",
    "lock_entry",
    "lock_path",
    "lock_text",
    "project_spec_files",
    "spec_names",
    "write_lock",
]

LOCK_FILE = "opus-runner.lock"
LOCK_VERSION = 1

_WIRE_KEYS = frozenset({"wire_type", "type_definition"})
_ENTRY_KEYS = frozenset({"workflowId", "version", "versionId", "name", "jobPayloadSchema", "fingerprint"})
_INPUT_KEYS = frozenset({"variable_name", "display_name", "type", "is_nullable", "allowed_file_types"})


def lock_path(project_root: str | Path) -> Path:
    """Where the lock file of the project rooted at ``project_root`` lives."""
    return Path(project_root) / LOCK_FILE


def _describe_ref(ref: WorkflowRef) -> str:
    if ref.version_id:
        return f"workflow {ref.id!r} (version id {ref.version_id})"
    if ref.version is not None:
        return f"workflow {ref.id!r} (version {ref.version})"
    return f"workflow {ref.id!r} (latest version)"


# -- writing ---------------------------------------------------------------------------------


def lock_entry(schema: WorkflowSchema) -> dict[str, Any]:
    """The lock file's entry for one workflow schema."""
    return {
        "workflowId": schema.workflow_id,
        "version": schema.version,
        "versionId": schema.version_id,
        "name": schema.name,
        "jobPayloadSchema": {f.variable_name: f.as_entry() for f in schema.inputs},
        "fingerprint": schema_fingerprint(schema),
    }


def lock_document(
    schemas: Mapping[str, WorkflowSchema], specs: Sequence[str] = (), api: str = DEFAULT_API
) -> dict[str, Any]:
    """The whole lock document for ``schemas`` (WorkflowRef.key -> schema), taken from ``specs``
    (paths relative to the project root, see :func:`spec_names`) through API generation ``api``."""
    return {
        "lockVersion": LOCK_VERSION,
        "api": api,
        "specs": sorted(set(specs)),
        "workflows": {key: lock_entry(s) for key, s in schemas.items()},
    }


def lock_text(schemas: Mapping[str, WorkflowSchema], specs: Sequence[str] = (), api: str = DEFAULT_API) -> str:
    """The lock file's text: sorted keys, indent 2, trailing newline (stable, diff-friendly)."""
    return json.dumps(lock_document(schemas, specs, api), sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def write_lock(
    project_root: str | Path,
    schemas: Mapping[str, WorkflowSchema],
    specs: Sequence[str] = (),
    api: str = DEFAULT_API,
) -> Path:
    """Write ``opus-runner.lock`` atomically in ``project_root``, replacing it whole; return its path.

    The file holds exactly ``schemas``: entries of workflows no longer used are dropped.
    ``specs`` names the spec files they were taken from, ``api`` the API generation that
    described them.
    """
    from .files import atomic_write_text

    return atomic_write_text(lock_path(project_root), lock_text(schemas, specs, api))


def spec_names(project_root: str | Path, paths: Iterable[str | Path]) -> list[str]:
    """``paths`` as the lock names them: relative to ``project_root``, with ``/``, sorted."""
    root = os.path.realpath(project_root)
    return sorted({Path(os.path.relpath(os.path.realpath(p), root)).as_posix() for p in paths})


# -- the project's specs -----------------------------------------------------------------------

#: Folders never searched for specs: dependencies, caches and tools' own state.
_SKIPPED_FOLDERS = frozenset({"node_modules", "__pycache__", "site-packages", "venv", "env"})
#: A spec says what it is near its top; this much of a file is read to find out.
_SNIFF_BYTES = 64 * 1024
_DECLARES_SPEC = re.compile(rb"""^\s*[{,]?\s*["']?apiVersion["']?\s*:\s*["']?opus-runner/""", re.MULTILINE)
_SPEC_SUFFIXES = (".yaml", ".yml", ".json")


def _declares_spec(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            head = handle.read(_SNIFF_BYTES)
    except OSError:
        return False
    return _DECLARES_SPEC.search(head) is not None


def project_spec_files(project_root: str | Path, *, skip: Iterable[str | Path] = ()) -> list[Path]:
    """Every spec of the project: the ``.yaml``, ``.yml`` and ``.json`` files under
    ``project_root`` that declare ``apiVersion: opus-runner/...``, sorted.

    Other YAML and JSON files (foreach data, sandbox fixtures, CI files) are not specs and are
    left out; so are hidden folders (``.git``, ``.venv``, the journal's ``.opus-run``), virtual
    environments, ``node_modules`` and the folders in ``skip`` (a ``state_dir`` elsewhere).
    Symlinked folders are not followed, so a link cannot pull in specs of another tree.
    """
    root = Path(project_root)
    skipped = {os.path.realpath(p) for p in skip}
    found: list[Path] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(
            d
            for d in dirs
            if not d.startswith(".")
            and d not in _SKIPPED_FOLDERS
            and os.path.realpath(os.path.join(folder, d)) not in skipped
            and not os.path.exists(os.path.join(folder, d, "pyvenv.cfg"))
        )
        for name in sorted(files):
            path = Path(folder) / name
            if not name.startswith(".") and name.lower().endswith(_SPEC_SUFFIXES) and _declares_spec(path):
                found.append(path)
    return found


# -- reading ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Lock:
    """A loaded, fingerprint-checked lock file. ``workflows`` maps WorkflowRef.key to its schema;
    ``specs`` names the spec files it was taken from (relative to the project root; empty in a
    lock written before opus-runner recorded them)."""

    path: Path
    workflows: Mapping[str, WorkflowSchema] = field(default_factory=dict)
    specs: tuple[str, ...] = ()
    #: the API generation the schemas were read with (a lock from before v1 existed: v0)
    api: str = DEFAULT_API

    def check_api(self, api: str) -> None:
        """Refuse to use this lock from a project speaking another API generation: the two
        describe workflows through different routes, so the lock may not say what ``api``
        would (one sentence: which generation each is, and the two ways out)."""
        if api == self.api:
            return
        raise LockError(
            f"{display_path(self.path)} was taken with the {self.api} API, but this command speaks "
            f"{api} (--api, OPUS_API or api in opus-runner.toml); run 'opus-run lock' again to take it with {api}, or pass --api {self.api}",
            path=self.path,
        )

    def schema(self, ref: WorkflowRef) -> WorkflowSchema | None:
        """The locked schema of ``ref`` (same workflow id and the same pin), or None."""
        return self.workflows.get(ref.key)

    def require(self, ref: WorkflowRef, *, spec: Any) -> WorkflowSchema:
        """The locked schema of ``ref``; a spec error pointing at ``workflow.id`` when it is missing."""
        schema = self.schema(ref)
        if schema is not None:
            return schema
        message = (
            f"{_describe_ref(ref)} is not in {LOCK_FILE}; run 'opus-run lock <specs>' with every "
            "spec of the project and commit the file"
        )
        if spec is None:
            raise LockError(message, path=self.path, entry=ref.key)
        raise ValidationFailed([spec.error(message, ("workflow", "id"))])


def _corrupt(path: Path, what: str, entry: str | None = None) -> LockError:
    where = display_path(path)
    if entry is not None:
        return LockError(
            f"{where}: the entry for {entry} was edited by hand or corrupted ({what}); "
            "run 'opus-run lock' again",
            path=path,
            entry=entry,
        )
    return LockError(f"{where} is corrupted ({what}); run 'opus-run lock' again", path=path)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _read_entry(path: Path, key: str, entry: Any) -> WorkflowSchema:
    if not isinstance(entry, dict):
        raise _corrupt(path, f"it is a JSON {type(entry).__name__}, not an object", key)
    missing = sorted(_ENTRY_KEYS - set(entry))
    if missing:
        raise _corrupt(path, f"missing {', '.join(missing)}", key)
    extra = sorted(set(entry) - _ENTRY_KEYS)
    if extra:
        raise _corrupt(path, f"unexpected {', '.join(extra)}", key)
    if not isinstance(entry["workflowId"], str) or not entry["workflowId"]:
        raise _corrupt(path, "workflowId is not a non-empty string", key)
    if entry["version"] is not None and not _is_int(entry["version"]):
        raise _corrupt(path, "version is neither a number nor null", key)
    if entry["versionId"] is not None and not isinstance(entry["versionId"], str):
        raise _corrupt(path, "versionId is neither a string nor null", key)
    if not isinstance(entry["name"], str):
        raise _corrupt(path, "name is not a string", key)
    if not isinstance(entry["fingerprint"], str):
        raise _corrupt(path, "fingerprint is not a string", key)
    inputs = entry["jobPayloadSchema"]
    if not isinstance(inputs, dict):
        raise _corrupt(path, "jobPayloadSchema is not an object", key)
    for var, item in inputs.items():
        # The wire form (wire_type, type_definition) is there only for inputs that have one.
        if not isinstance(item, dict) or not _INPUT_KEYS <= set(item) <= _INPUT_KEYS | _WIRE_KEYS:
            raise _corrupt(path, f"input {var!r} does not have exactly {', '.join(sorted(_INPUT_KEYS))}", key)
        if item["variable_name"] != var:
            raise _corrupt(path, f"input {var!r} names variable {item['variable_name']!r}", key)
        if not isinstance(item["display_name"], str) or not isinstance(item["type"], str):
            raise _corrupt(path, f"input {var!r} has a display_name or type that is not a string", key)
        if not isinstance(item["is_nullable"], bool):
            raise _corrupt(path, f"input {var!r} has an is_nullable that is not true or false", key)
        allowed = item["allowed_file_types"]
        if not isinstance(allowed, list) or not all(isinstance(t, str) for t in allowed):
            raise _corrupt(path, f"input {var!r} has allowed_file_types that are not a list of strings", key)
    schema = WorkflowSchema(
        workflow_id=entry["workflowId"],
        name=entry["name"],
        inputs=fields_from_job_payload_schema(inputs),
        version=entry["version"],
        version_id=entry["versionId"],
        source="lock",
    )
    if schema_fingerprint(schema) != entry["fingerprint"]:
        raise _corrupt(path, "fingerprint mismatch", key)
    return schema


def load_lock(project_root: str | Path) -> Lock:
    """Read and check ``opus-runner.lock`` of the project rooted at ``project_root``.

    Raises :class:`LockError` (exit 2) when the file is missing, is not JSON of the lock's shape,
    was written by a newer opus-runner, or holds an entry whose fingerprint does not match its
    inputs (edited by hand or corrupted).
    """
    path = lock_path(project_root)
    where = display_path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LockError(
            f"{where} does not exist; run 'opus-run lock <specs>' with a service key (or --sandbox) "
            "to write it, and commit it",
            path=path,
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LockError(f"{where} cannot be read ({exc}); run 'opus-run lock' again", path=path) from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise _corrupt(path, f"not JSON: {exc}") from None
    except RecursionError:
        raise _corrupt(path, "nested too deeply") from None
    if not isinstance(data, dict) or not {"lockVersion", "workflows"} <= set(data) <= {"lockVersion", "workflows", "specs", "api"}:
        raise _corrupt(path, "expected an object with lockVersion and workflows (and specs, api)")
    version = data["lockVersion"]
    if not _is_int(version):
        raise _corrupt(path, "lockVersion is not a number")
    if version > LOCK_VERSION:
        raise LockError(
            f"{where} has lockVersion {version}, written by a newer opus-runner; upgrade opus-runner "
            "or run 'opus-run lock' again",
            path=path,
        )
    if version != LOCK_VERSION:
        raise _corrupt(path, f"unknown lockVersion {version}")
    workflows = data["workflows"]
    if not isinstance(workflows, dict):
        raise _corrupt(path, "workflows is not an object")
    specs = data.get("specs", [])
    if not isinstance(specs, list) or not all(isinstance(s, str) for s in specs):
        raise _corrupt(path, "specs is not a list of file names")
    api = data.get("api", DEFAULT_API)
    if api not in API_NAMES:
        raise _corrupt(path, f"api is {api!r}, neither {' nor '.join(map(repr, API_NAMES))}")
    schemas = {str(key): _read_entry(path, str(key), entry) for key, entry in workflows.items()}
    return Lock(path=path, workflows=MappingProxyType(schemas), specs=tuple(specs), api=api)

