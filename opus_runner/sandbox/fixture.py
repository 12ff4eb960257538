"""The sandbox's workflows, read from a fixture file (YAML/JSON) or an already-parsed mapping.

```yaml
workflows:
  <workflow id, a UUID>:
    name: Summarize a document
    dialect: live                 # live (opus-api.md, the default) | documented (the older notes)
    workspace_id: <uuid>          # the workflow's workspace (default: one shared sandbox workspace)
    duration: 1s                  # time from execute to the terminal status
    api: v1                       # v1 | v2-only | v1-404 (what GET /workflow/{id} does)
    status_spelling: underscore   # space | underscore | lower (default: live underscore, documented space)
    results_shape: current        # current | legacy | nested | flat | list | none
    fail: false                   # or a message: the job ends FAILED with it
    fail_node: null               # the node it fails at (default: the last)
    stop: false                   # true: the job ends with status "stopped"
    hold: {status: WAITING, duration: 2s}   # after PENDING, report WAITING (or UNKNOWN) this long,
                                            # on top of duration, before IN_PROGRESS
    callback_delay: 1s            # this workflow's callbacks: overrides the top-level value
    nodes: [Input, Process, Output]
    version: 1                    # the latest version number
    inputs: [{variable_name, display_name, type, is_nullable, allowed_file_types, description, wire}]
    outputs: {name: template | {value: template, type, displayName}}
    versions: {1: {inputs: [...], outputs: {...}}}   # older versions
callback_delay: 200ms             # from a job's end to its callback POST (default 0.2 s)
faults: []                        # fault rules applied when the server starts (faults.py)
```

Callbacks: when a job that was executed with a loopback ``callbackUrl`` ends, the sandbox POSTs
``{jobExecutionId, status, results}`` to it once, ``callback_delay`` after the end (a real
platform notices the end and queues the webhook first). ``callback_delay`` takes a duration
(``200ms``, ``1s``) or a number of seconds; the server's own ``callback_delay`` (``SandboxServer``,
``opus-run sandbox --callback-delay``) overrides every value here. Fault rules on the pseudo-route
``callback`` drop, delay or duplicate callbacks (faults.py). Callbacks to other hosts are never
sent (counted as ``callbacks_skipped``).

``wire`` (``array_files`` inputs only): ``array`` (default) describes the input live as an
``array`` of file items, which the client must send as ``type: "array"`` with a ``typeDefinition``;
``array_files`` describes it as ``array_files``, sent as ``type: "array_files"`` and a plain list.

Output templates are compiled once, here; rendering a job's outputs costs no parsing.
Every problem is a :class:`FixtureError` naming the file and the key path.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..durations import parse_duration
from ..errors import ConfigError, SpecError
from ..models import INPUT_TYPES
from .faults import FaultRule, FaultRuleError, parse_rule

if TYPE_CHECKING:  # pragma: no cover
    from jinja2.sandbox import ImmutableSandboxedEnvironment

_TYPE_NAME = re.compile(r"[a-z][a-z0-9_]*")
#: The packaged demo workflows, used when no fixture is given.
DEFAULT_WORKFLOWS = Path(__file__).with_name("default_workflows.yaml")

#: File extensions ``POST /job/file/upload`` accepts (opus-api.md).
UPLOAD_EXTENSIONS = (
    ".pdf",
    ".docx",
    ".csv",
    ".xls",
    ".xlsx",
    ".txt",
    ".json",
    ".html",
    ".xml",
    ".jpeg",
    ".jpg",
    ".png",
)
#: Names usable in ``allowed_file_types`` (the extensions, upper case, without the dot).
FILE_TYPES = tuple(ext[1:].upper() for ext in UPLOAD_EXTENSIONS)
OUTPUT_TYPES = ("str", "float", "int", "bool", "date", "object", "array", "file", "json_string")
DIALECTS = ("live", "documented")
API_MODES = ("v1", "v2-only", "v1-404")
STATUS_SPELLINGS = ("space", "underscore", "lower")
RESULTS_SHAPES = ("current", "legacy", "nested", "flat", "list", "none")
HOLD_STATUSES = ("WAITING", "UNKNOWN")
WIRE_FORMS = ("array", "array_files")
DEFAULT_NODES = ("Input", "Process", "Output")
DEFAULT_FAIL_MESSAGE = "The workflow failed"
#: Seconds from a job's end to its callback POST, unless the fixture or the server says otherwise.
DEFAULT_CALLBACK_DELAY = 0.2
#: The workspace of every workflow that names none.
DEFAULT_WORKSPACE_ID = str(uuid.uuid5(uuid.NAMESPACE_URL, "opus-sandbox:workspace"))
#: The packaged demo workflows' ids, by the names they had before Opus ids became UUIDs.
DEMO_IDS: Mapping[str, str] = {
    "demo-summarize": "3f69dcbf-2d6e-4b8a-9c1e-5a7b0c4d2e11",
    "invoice-triage": "7c1e2a9b-5d34-4f8e-a6b2-0e9d3c5f1a72",
    "region-report": "5a0d7e3c-8b21-4c6f-9e4a-2f7b1d0c8e93",
    "always-fails": "e2b4c6d8-1a3f-4e5b-8c7d-9f0a1b2c3d44",
    "v2-workflow": "9d8c7b6a-5e4f-4a3b-b2c1-d0e9f8a7b655",
}
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.IGNORECASE)

_WORKFLOW_KEYS = (
    "name",
    "description",
    "dialect",
    "workspace_id",
    "duration",
    "api",
    "status_spelling",
    "results_shape",
    "fail",
    "fail_node",
    "stop",
    "hold",
    "callback_delay",
    "nodes",
    "version",
    "inputs",
    "outputs",
    "versions",
)
_FIXTURE_KEYS = ("workflows", "faults", "callback_delay")
_INPUT_KEYS = (
    "variable_name",
    "display_name",
    "type",
    "is_nullable",
    "allowed_file_types",
    "description",
    "wire",
    "id",
)
_OUTPUT_KEYS = ("value", "type", "displayName")
_SINGLE_EXPRESSION = re.compile(r"^\s*\{\{(?P<expr>.*?)\}\}\s*$", re.DOTALL)

Key = tuple[str | int, ...]


class FixtureError(SpecError):
    """A sandbox fixture is malformed; ``file`` and ``key`` say where."""


class OutputRenderError(Exception):
    """A workflow's output template failed for one job; the job ends FAILED with this message."""


def is_uuid(value: Any) -> bool:
    """True for a canonical 36-character UUID (any case), the only workflow id Opus accepts."""
    return isinstance(value, str) and _UUID.fullmatch(value) is not None


def version_uuid(workflow_id: str, number: int) -> str:
    """The deterministic uuid of version ``number`` of ``workflow_id``."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"opus-sandbox:{workflow_id}:{number}"))


@lru_cache(maxsize=1)
def template_environment() -> ImmutableSandboxedEnvironment:
    """The one sandboxed Jinja environment every fixture template is compiled with."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    # Lenient Undefined on purpose: a nullable input that was not sent renders as empty/None,
    # so templates like "{{ inputs.Pages or 'all' }}" work.
    return ImmutableSandboxedEnvironment(autoescape=False, keep_trailing_newline=True)


class Template:
    """A compiled output template: a plain string, one native expression, or a text template."""

    __slots__ = ("_expression", "_template", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self._expression: Callable[..., Any] | None = None
        self._template: Any = None
        if "{{" not in source and "{%" not in source and "{#" not in source:
            return
        env = template_environment()
        match = _SINGLE_EXPRESSION.match(source)
        if match and not any(tok in match["expr"] for tok in ("{{", "}}", "{%", "%}")):
            # A single expression keeps its native type: "{{ vars.tags }}" stays a list.
            self._expression = env.compile_expression(match["expr"], undefined_to_none=True)
        else:
            self._template = env.from_string(source)

    def __repr__(self) -> str:
        return f"Template({self.source!r})"

    def render(self, context: Mapping[str, Any]) -> Any:
        """The rendered value: native for a single expression, else a string."""
        if self._expression is not None:
            return self._expression(**context)
        if self._template is not None:
            return self._template.render(context)
        return self.source


def _compile(value: Any, file: str | None, key: Key) -> Any:
    """Compile every string leaf of ``value`` into a Template."""
    from jinja2 import TemplateSyntaxError

    if isinstance(value, str):
        try:
            return Template(value)
        except TemplateSyntaxError as exc:
            raise FixtureError(
                f"the template {value!r} does not parse: {exc.message} (line {exc.lineno})",
                file=file,
                key=key,
            ) from None
    if isinstance(value, Mapping):
        return {str(k): _compile(v, file, (*key, str(k))) for k, v in value.items()}
    if isinstance(value, list):
        return [_compile(v, file, (*key, i)) for i, v in enumerate(value)]
    return value


def _render(compiled: Any, context: Mapping[str, Any]) -> Any:
    if isinstance(compiled, Template):
        return compiled.render(context)
    if isinstance(compiled, dict):
        return {k: _render(v, context) for k, v in compiled.items()}
    if isinstance(compiled, list):
        return [_render(v, context) for v in compiled]
    return compiled


#: The ``type_definition`` of a live ``array`` input whose items are files (opus-api.md section 2).
FILE_ITEMS_DEFINITION: Mapping[str, Any] = {
    "id": "file",
    "variable_name": "file",
    "allowed_types": [{"type": "file"}],
}


@dataclass(frozen=True)
class InputDef:
    """One input of one workflow version, as the sandbox declares it."""

    variable_name: str
    display_name: str
    type: str
    nullable: bool = False
    allowed_file_types: tuple[str, ...] = ()
    id: str = ""
    description: str = ""
    wire: str | None = None  # array_files inputs: "array" (default) or "array_files"

    @property
    def wire_type(self) -> str:
        """The ``type`` a live client must send for this input (and the graph states)."""
        if self.type == "array_files":
            return self.wire or "array"
        return self.type

    @property
    def file_items(self) -> bool:
        """True for a list of files sent as ``type: "array"`` with a ``typeDefinition``."""
        return self.type == "array_files" and self.wire_type == "array"

    def schema_entry(self, *, v2: bool = False) -> dict[str, Any]:
        """This input as a documented ``jobPayloadSchema`` entry (or a documented v2 entry)."""
        entry: dict[str, Any] = {
            "variable_name": self.variable_name,
            "display_name": self.display_name,
            "type": self.type,
            "is_nullable": self.nullable,
        }
        if not v2:
            entry = {"id": self.id, **entry}
        if self.allowed_file_types:
            entry["tags"] = [{"variable_name": "allowed_file_types", "value": list(self.allowed_file_types)}]
        if v2 and self.type in ("file", "array_files"):
            entry["allowed_types"] = [{"type": "file"}]
        return entry

    def live_entry(self) -> dict[str, Any]:
        """This input as the live v2 graph's ``input_schema.schema`` entry: no bare ``type``."""
        if self.file_items:
            allowed = [{"type": "array", "type_definition": dict(FILE_ITEMS_DEFINITION)}]
        else:
            allowed = [{"type": self.wire_type, "type_definition": None}]
        tags = []
        if self.allowed_file_types:
            tags.append({"variable_name": "allowed_file_types", "value": list(self.allowed_file_types)})
        return {
            "id": self.id,
            "variable_name": self.variable_name,
            "display_name": self.display_name,
            "description": self.description,
            "is_nullable": self.nullable,
            "default": None,
            "allowed_types": allowed,
            "tags": tags,
        }


@dataclass(frozen=True)
class OutputDef:
    """One output: its compiled value (a template tree) and its type."""

    name: str
    type: str
    display_name: str
    value: Any  # compiled: Template, dict/list of compiled values, or a literal
    file_name: Any = None  # for type file with {name, content}: the compiled name


@dataclass(frozen=True)
class VersionDef:
    """One version of a workflow: its inputs and outputs."""

    number: int
    version_id: str
    inputs: tuple[InputDef, ...]
    outputs: tuple[OutputDef, ...]
    inputs_by_var: Mapping[str, InputDef] = field(default_factory=dict, compare=False)

    def render_outputs(
        self, context: Mapping[str, Any], store_file: Callable[[str, bytes], str]
    ) -> list[tuple[OutputDef, Any]]:
        """Each output with its value for one job; file contents go to ``store_file(name, data)``.

        Raises :class:`OutputRenderError` naming the output whose template failed.
        """
        rendered = []
        for out in self.outputs:
            try:
                value = _render(out.value, context)
                if out.type == "file" and out.file_name is not None:
                    name = str(_render(out.file_name, context))
                    content = value if isinstance(value, (bytes, str)) else json.dumps(value)
                    value = store_file(name, content.encode("utf-8") if isinstance(content, str) else content)
                else:
                    value = _coerce_output(out, value)
            except OutputRenderError:
                raise
            except Exception as exc:  # noqa: BLE001 - any template failure is the fixture author's
                raise OutputRenderError(f"output {out.name!r} failed to render: {exc}") from None
            rendered.append((out, value))
        return rendered


def _coerce_output(out: OutputDef, value: Any) -> Any:
    """Bring a rendered value to the output's declared type, or say why it cannot be."""
    if value is None:
        return "" if out.type == "str" else None
    kind = out.type
    try:
        if kind in ("str", "date", "file"):
            return value if isinstance(value, str) else str(value)
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, (int, float)):
                return value
            number = float(str(value).strip())
            return int(number) if number.is_integer() and "." not in str(value) else number
        if kind == "int":
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, int):
                return value
            if isinstance(value, float) and value.is_integer():
                return int(value)
            return int(str(value).strip())
        if kind == "json_string":
            if isinstance(value, str):
                json.loads(value)  # JSON text already: it must parse
                return value
            return json.dumps(value)
        if kind == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("true", "false"):
                return text == "true"
            raise ValueError
        if kind == "object":
            if isinstance(value, str):
                value = json.loads(value)
            if isinstance(value, dict):
                return value
            raise ValueError
        if kind == "array":
            if isinstance(value, str):
                value = json.loads(value)
            if isinstance(value, (list, tuple)):
                return list(value)
            raise ValueError
    except ValueError:
        pass
    raise OutputRenderError(f"output {out.name!r} rendered {value!r}, which is not a {kind}")


@dataclass(frozen=True)
class Hold:
    """A status (WAITING or UNKNOWN) a job reports for ``seconds`` after PENDING."""

    status: str
    seconds: float


@dataclass(frozen=True)
class WorkflowDef:
    """One sandbox workflow with all its versions."""

    id: str
    name: str
    description: str = ""
    dialect: str = "live"
    workspace_id: str = DEFAULT_WORKSPACE_ID
    duration: float = 0.0
    api: str = "v1"
    status_spelling: str = "underscore"
    results_shape: str = "current"
    fail: str | None = None
    fail_node: str | None = None
    stop: bool = False
    hold: Hold | None = None
    callback_delay: float = DEFAULT_CALLBACK_DELAY  # from the end to the callback POST
    nodes: tuple[str, ...] = DEFAULT_NODES
    latest: int = 1
    versions: Mapping[int, VersionDef] = field(default_factory=dict)
    versions_by_id: Mapping[str, VersionDef] = field(default_factory=dict, compare=False)

    @property
    def live(self) -> bool:
        return self.dialect == "live"

    @property
    def latest_version(self) -> VersionDef:
        return self.versions[self.latest]

    def find_version(self, number: int | None = None, version_id: str | None = None) -> VersionDef | None:
        """The pinned version (the uuid wins over the number), the latest when unpinned, else None."""
        if version_id:
            return self.versions_by_id.get(version_id)
        if number is not None:
            return self.versions.get(number)
        return self.latest_version

    @property
    def fail_index(self) -> int:
        """The index of the node a failing job fails at."""
        if self.fail_node is not None:
            return self.nodes.index(self.fail_node)
        return len(self.nodes) - 1


@dataclass(frozen=True)
class Fixture:
    """Everything a fixture file declares."""

    workflows: Mapping[str, WorkflowDef]
    faults: tuple[FaultRule, ...] = ()
    source: str | None = None
    callback_delay: float = DEFAULT_CALLBACK_DELAY  # the top-level value (each workflow has its own)


# --- loading ------------------------------------------------------------------------------------


def load_fixture(source: str | Path | Mapping[str, Any] | Fixture | None = None) -> Fixture:
    """Read and check a fixture: a file path, a parsed mapping, or None for the packaged demo.

    Raises :class:`FixtureError` naming the file and key of the first problem.
    """
    if isinstance(source, Fixture):
        return source
    if source is None:
        source = DEFAULT_WORKFLOWS
    if not isinstance(source, (str, Path)):
        return _build(source, None)  # a parsed fixture (anything but a mapping is reported there)
    path = Path(source)
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FixtureError(
            "the sandbox workflows file does not exist; check the path, or omit it to use the demo workflows",
            file=file,
        ) from None
    except OSError as exc:
        raise FixtureError(
            f"cannot read the sandbox workflows file: {exc.strerror or exc}", file=file
        ) from None
    return _build(_parse(text, path), file)


def _parse(text: str, path: Path) -> Any:
    from ..errors import SpecError
    from ..spec import load_data

    try:
        return load_data(text, display=str(path), json_format=path.suffix.lower() == ".json")
    except SpecError as exc:
        raise FixtureError(exc.message, file=str(path), line=exc.line) from None


def _build(data: Any, file: str | None) -> Fixture:
    if not isinstance(data, Mapping):
        raise FixtureError("a sandbox fixture must be a mapping with a 'workflows:' key", file=file)
    unknown = [k for k in data if k not in _FIXTURE_KEYS]
    if unknown:
        raise FixtureError(
            f"unknown key {unknown[0]!r}; a sandbox fixture has only {', '.join(_FIXTURE_KEYS)}",
            file=file,
            key=(str(unknown[0]),),
        )
    callback_delay = _callback_delay(data, DEFAULT_CALLBACK_DELAY, file, ())
    workflows_data = data.get("workflows")
    if not isinstance(workflows_data, Mapping) or not workflows_data:
        raise FixtureError(
            "'workflows' must be a mapping of workflow id to its definition, with at least one workflow",
            file=file,
            key=("workflows",),
        )
    workflows = {}
    for wid, wdata in workflows_data.items():
        if not isinstance(wid, (str, int)) or isinstance(wid, bool) or not str(wid).strip():
            raise FixtureError(
                f"workflow ids must be non-empty strings, found {wid!r}", file=file, key=("workflows",)
            )
        if not is_uuid(str(wid)):
            suggestion = uuid.uuid5(uuid.NAMESPACE_URL, f"opus-sandbox:{wid}")
            raise FixtureError(
                f"Opus identifies workflows by UUID; {wid!r} is not one. Use a UUID as the workflow's "
                f"key (for example {suggestion}) and keep the old name in a comment",
                file=file,
                key=("workflows", str(wid)),
            )
        canonical = str(wid).lower()
        if canonical in workflows:
            raise FixtureError(
                f"the workflow id {wid!r} is used twice (UUIDs are compared without case)",
                file=file,
                key=("workflows", str(wid)),
            )
        workflows[canonical] = _workflow(canonical, wdata, file, ("workflows", str(wid)), callback_delay)

    faults_data = data.get("faults") or []
    if not isinstance(faults_data, list):
        raise FixtureError("'faults' must be a list of fault rules", file=file, key=("faults",))
    faults = []
    for index, item in enumerate(faults_data):
        try:
            faults.append(parse_rule(item))
        except FaultRuleError as exc:
            key: Key = ("faults", index, exc.field) if exc.field else ("faults", index)
            raise FixtureError(str(exc), file=file, key=key) from None
    return Fixture(workflows=workflows, faults=tuple(faults), source=file, callback_delay=callback_delay)


def callback_delay_override(value: float | str | None) -> float | None:
    """The server's ``callback_delay`` in seconds (None: the fixture's apply), or a ConfigError."""
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise ConfigError(
            f"callback_delay: {exc}; give the time from a job's end to its callback, e.g. 200ms or 1s"
        ) from None


def _callback_delay(data: Mapping[str, Any], default: float, file: str | None, key: Key) -> float:
    if "callback_delay" not in data:
        return default
    try:
        return parse_duration(data["callback_delay"])
    except ValueError as exc:
        raise FixtureError(
            f"{exc} (the time from a job's end to its callback)", file=file, key=(*key, "callback_delay")
        ) from None


def _choice(data: Mapping[str, Any], name: str, choices: tuple[str, ...], file: str | None, key: Key) -> str:
    value = data.get(name, choices[0])
    if value not in choices:
        raise FixtureError(
            f"must be one of {', '.join(choices)}, found {value!r}", file=file, key=(*key, name)
        )
    return str(value)


def _workflow(
    wid: str, data: Any, file: str | None, key: Key, callback_delay: float = DEFAULT_CALLBACK_DELAY
) -> WorkflowDef:
    if not isinstance(data, Mapping):
        raise FixtureError(
            "a workflow must be a mapping (name, duration, inputs, outputs, ...)", file=file, key=key
        )
    unknown = [k for k in data if k not in _WORKFLOW_KEYS]
    if unknown:
        raise FixtureError(
            f"unknown key {unknown[0]!r}; known keys: {', '.join(_WORKFLOW_KEYS)}",
            file=file,
            key=(*key, str(unknown[0])),
        )
    name = data.get("name", wid)
    description = data.get("description") or ""
    for field_name, value in (("name", name), ("description", description)):
        if not isinstance(value, str):
            raise FixtureError(f"must be a string, found {value!r}", file=file, key=(*key, field_name))
    try:
        duration = parse_duration(data.get("duration", 0))
    except ValueError as exc:
        raise FixtureError(str(exc), file=file, key=(*key, "duration")) from None

    fail = data.get("fail", False)
    if fail is True:
        fail = DEFAULT_FAIL_MESSAGE
    elif fail is False or fail is None:
        fail = None
    elif not isinstance(fail, str) or not fail.strip():
        raise FixtureError(
            f"must be false, true or the failure message, found {fail!r}", file=file, key=(*key, "fail")
        )

    nodes_data = data.get("nodes", list(DEFAULT_NODES))
    if (
        not isinstance(nodes_data, list)
        or not nodes_data
        or not all(isinstance(n, str) and n.strip() for n in nodes_data)
    ):
        raise FixtureError("must be a non-empty list of node names", file=file, key=(*key, "nodes"))
    if len(set(nodes_data)) != len(nodes_data):
        raise FixtureError("node names must be unique", file=file, key=(*key, "nodes"))
    fail_node = data.get("fail_node")
    if fail_node is not None and fail_node not in nodes_data:
        raise FixtureError(
            f"{fail_node!r} is not one of the workflow's nodes ({', '.join(nodes_data)})",
            file=file,
            key=(*key, "fail_node"),
        )

    dialect = _choice(data, "dialect", DIALECTS, file, key)
    workspace_id = data.get("workspace_id", DEFAULT_WORKSPACE_ID)
    if not is_uuid(workspace_id):
        raise FixtureError(
            f"a workspace id is a UUID, found {workspace_id!r}", file=file, key=(*key, "workspace_id")
        )
    stop = data.get("stop", False)
    if not isinstance(stop, bool):
        raise FixtureError(f"must be true or false, found {stop!r}", file=file, key=(*key, "stop"))
    if stop and fail is not None:
        raise FixtureError(
            "a job either fails ('fail') or is stopped ('stop'), not both; remove one",
            file=file,
            key=(*key, "stop"),
        )
    hold = _hold(data.get("hold"), file, (*key, "hold"))
    if "status_spelling" in data:
        spelling = _choice(data, "status_spelling", STATUS_SPELLINGS, file, key)
    else:
        spelling = "underscore" if dialect == "live" else "space"

    latest = data.get("version", 1)
    if isinstance(latest, bool) or not isinstance(latest, int) or latest < 1:
        raise FixtureError(
            f"must be a whole number of at least 1, found {latest!r}", file=file, key=(*key, "version")
        )

    base = _version(wid, latest, data, file, key)
    older_data = data.get("versions") or {}
    if not isinstance(older_data, Mapping):
        raise FixtureError(
            "must be a mapping of older version number to {inputs, outputs}",
            file=file,
            key=(*key, "versions"),
        )
    older: dict[int, Mapping[str, Any]] = {}
    for number_key, vdata in older_data.items():
        vkey: Key = (*key, "versions", str(number_key))
        try:
            number = int(number_key)
        except (TypeError, ValueError):
            number = 0
        if isinstance(number_key, bool) or number < 1 or str(number) != str(number_key).strip():
            raise FixtureError(
                f"version numbers must be whole numbers, found {number_key!r}", file=file, key=vkey
            )
        if number >= latest:
            raise FixtureError(
                f"older versions must be below the latest version {latest} (set 'version' to the newest)",
                file=file,
                key=vkey,
            )
        if not isinstance(vdata, Mapping):
            raise FixtureError("must be a mapping with 'inputs' and 'outputs'", file=file, key=vkey)
        extra = [k for k in vdata if k not in ("inputs", "outputs")]
        if extra:
            raise FixtureError(
                f"unknown key {extra[0]!r}; a version has only 'inputs' and 'outputs'",
                file=file,
                key=(*vkey, str(extra[0])),
            )
        older[number] = vdata

    versions: dict[int, VersionDef] = {latest: base}
    for number in range(1, latest):
        if number in older:
            versions[number] = _version(wid, number, older[number], file, (*key, "versions", str(number)))
        else:
            # A version the fixture does not describe has the latest version's inputs and outputs.
            versions[number] = VersionDef(
                number=number,
                version_id=version_uuid(wid, number),
                inputs=base.inputs,
                outputs=base.outputs,
                inputs_by_var=base.inputs_by_var,
            )
    versions = dict(sorted(versions.items()))
    return WorkflowDef(
        id=wid,
        name=name,
        description=description,
        duration=duration,
        dialect=dialect,
        workspace_id=workspace_id.lower(),
        api=_choice(data, "api", API_MODES, file, key),
        status_spelling=spelling,
        results_shape=_choice(data, "results_shape", RESULTS_SHAPES, file, key),
        fail=fail,
        fail_node=fail_node,
        stop=stop,
        hold=hold,
        callback_delay=_callback_delay(data, callback_delay, file, key),
        nodes=tuple(nodes_data),
        latest=latest,
        versions=versions,
        versions_by_id={v.version_id: v for v in versions.values()},
    )


def _hold(data: Any, file: str | None, key: Key) -> Hold | None:
    if data is None or data is False:
        return None
    if not isinstance(data, Mapping):
        raise FixtureError("must be a mapping such as {status: WAITING, duration: 2s}", file=file, key=key)
    unknown = [k for k in data if k not in ("status", "duration")]
    if unknown:
        raise FixtureError(
            f"unknown key {unknown[0]!r}; a hold has 'status' and 'duration'",
            file=file,
            key=(*key, str(unknown[0])),
        )
    status = data.get("status")
    if status not in HOLD_STATUSES:
        raise FixtureError(
            f"must be one of {', '.join(HOLD_STATUSES)} (the status a job reports while held), "
            f"found {status!r}",
            file=file,
            key=(*key, "status"),
        )
    if "duration" not in data:
        raise FixtureError("a hold needs a 'duration', e.g. duration: 2s", file=file, key=(*key, "duration"))
    try:
        seconds = parse_duration(data["duration"])
    except ValueError as exc:
        raise FixtureError(str(exc), file=file, key=(*key, "duration")) from None
    if seconds <= 0:
        raise FixtureError(
            "must be longer than 0 (omit 'hold' for no hold)", file=file, key=(*key, "duration")
        )
    return Hold(status=str(status), seconds=seconds)


def _version(wid: str, number: int, data: Mapping[str, Any], file: str | None, key: Key) -> VersionDef:
    inputs_data = data.get("inputs") or []
    if not isinstance(inputs_data, list):
        raise FixtureError("must be a list of inputs", file=file, key=(*key, "inputs"))
    inputs = []
    seen: set[str] = set()
    for index, item in enumerate(inputs_data):
        field_def = _input(wid, item, file, (*key, "inputs", index))
        if field_def.variable_name in seen:
            raise FixtureError(
                f"variable_name {field_def.variable_name!r} is used by two inputs",
                file=file,
                key=(*key, "inputs", index, "variable_name"),
            )
        seen.add(field_def.variable_name)
        inputs.append(field_def)

    outputs_data = data.get("outputs") or {}
    if not isinstance(outputs_data, Mapping):
        raise FixtureError(
            "must be a mapping of output name to a template or {value, type, displayName}",
            file=file,
            key=(*key, "outputs"),
        )
    outputs = tuple(
        _output(str(name), spec, file, (*key, "outputs", str(name))) for name, spec in outputs_data.items()
    )
    return VersionDef(
        number=number,
        version_id=version_uuid(wid, number),
        inputs=tuple(inputs),
        outputs=outputs,
        inputs_by_var={f.variable_name: f for f in inputs},
    )


def _input(wid: str, data: Any, file: str | None, key: Key) -> InputDef:
    if not isinstance(data, Mapping):
        raise FixtureError(
            "an input must be a mapping with variable_name, display_name and type", file=file, key=key
        )
    unknown = [k for k in data if k not in _INPUT_KEYS]
    if unknown:
        raise FixtureError(
            f"unknown key {unknown[0]!r}; known keys: {', '.join(_INPUT_KEYS)}",
            file=file,
            key=(*key, str(unknown[0])),
        )
    variable_name = data.get("variable_name")
    if not isinstance(variable_name, str) or not variable_name.strip():
        raise FixtureError(
            "every input needs a variable_name (a string)", file=file, key=(*key, "variable_name")
        )
    display_name = data.get("display_name", variable_name)
    if not isinstance(display_name, str) or not display_name.strip():
        raise FixtureError(
            f"must be a non-empty string, found {display_name!r}", file=file, key=(*key, "display_name")
        )
    kind = data.get("type")
    # Any other lower-case name models a type the platform added that clients do not know yet:
    # the sandbox takes any value for it, as long as the entry's `type` says it.
    if kind not in INPUT_TYPES and not (isinstance(kind, str) and _TYPE_NAME.fullmatch(kind)):
        raise FixtureError(
            f"must be one of {', '.join(INPUT_TYPES)} (or another lower-case type name, to model a "
            f"type clients do not know), found {kind!r}",
            file=file,
            key=(*key, "type"),
        )
    nullable = data.get("is_nullable", False)
    if not isinstance(nullable, bool):
        raise FixtureError(f"must be true or false, found {nullable!r}", file=file, key=(*key, "is_nullable"))
    allowed_data = data.get("allowed_file_types") or []
    if not isinstance(allowed_data, list):
        raise FixtureError("must be a list such as [PDF, TXT]", file=file, key=(*key, "allowed_file_types"))
    if allowed_data and kind not in ("file", "array_files"):
        raise FixtureError(
            f"only file and array_files inputs take allowed_file_types, this input is {kind}",
            file=file,
            key=(*key, "allowed_file_types"),
        )
    allowed = []
    for item in allowed_data:
        name = str(item).strip().lstrip(".").upper()
        if name not in FILE_TYPES:
            raise FixtureError(
                f"unknown file type {item!r}; use some of {', '.join(FILE_TYPES)}",
                file=file,
                key=(*key, "allowed_file_types"),
            )
        allowed.append(name)
    description = data.get("description", "")
    if not isinstance(description, str):
        raise FixtureError(f"must be a string, found {description!r}", file=file, key=(*key, "description"))
    wire = data.get("wire")
    if wire is not None:
        if kind != "array_files":
            raise FixtureError(
                f"only array_files inputs take 'wire', this input is {kind}", file=file, key=(*key, "wire")
            )
        if wire not in WIRE_FORMS:
            raise FixtureError(
                f"must be one of {', '.join(WIRE_FORMS)}, found {wire!r}", file=file, key=(*key, "wire")
            )
    input_id = data.get("id") or str(
        uuid.uuid5(uuid.NAMESPACE_URL, f"opus-sandbox:{wid}:input:{variable_name}")
    )
    return InputDef(
        variable_name=variable_name,
        display_name=display_name,
        type=kind,
        nullable=nullable,
        allowed_file_types=tuple(allowed),
        id=str(input_id),
        description=description,
        wire=wire,
    )


def _output(name: str, data: Any, file: str | None, key: Key) -> OutputDef:
    if not isinstance(data, Mapping):
        return OutputDef(name=name, type="str", display_name=name, value=_compile(data, file, key))
    unknown = [k for k in data if k not in _OUTPUT_KEYS]
    if unknown:
        raise FixtureError(
            f"unknown key {unknown[0]!r}; an output has {', '.join(_OUTPUT_KEYS)}",
            file=file,
            key=(*key, str(unknown[0])),
        )
    if "value" not in data:
        raise FixtureError("an output mapping needs a 'value' (a template)", file=file, key=(*key, "value"))
    kind = data.get("type", "str")
    if kind not in OUTPUT_TYPES:
        raise FixtureError(
            f"must be one of {', '.join(OUTPUT_TYPES)}, found {kind!r}", file=file, key=(*key, "type")
        )
    display_name = data.get("displayName", name)
    if not isinstance(display_name, str):
        raise FixtureError(f"must be a string, found {display_name!r}", file=file, key=(*key, "displayName"))
    value = data["value"]
    file_name = None
    if kind == "file" and isinstance(value, Mapping):
        if set(value) != {"name", "content"}:
            raise FixtureError(
                "a file output's value is {name: report.txt, content: template} or a URL template",
                file=file,
                key=(*key, "value"),
            )
        if not isinstance(value["name"], str) or not value["name"].strip():
            raise FixtureError(
                "must be a file name such as report.txt", file=file, key=(*key, "value", "name")
            )
        file_name = _compile(value["name"], file, (*key, "value", "name"))
        value = value["content"]
        key = (*key, "value", "content")
    elif kind == "file" and not isinstance(value, str):
        raise FixtureError(
            "a file output's value is {name: report.txt, content: template} or a URL template",
            file=file,
            key=(*key, "value"),
        )
    return OutputDef(
        name=name,
        type=kind,
        display_name=display_name,
        value=_compile(value, file, key),
        file_name=file_name,
    )
