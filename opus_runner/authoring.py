"""Tools for spec authors and CI: what ``schema``, ``init``, ``init --editor-schema`` and ``drift``
compute.

Everything here is pure (no I/O, no network): the click commands in ``cli/authoring.py`` fetch
schemas through the runner and print what these functions return.
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ApiError, NotFoundError, WorkflowNotFound
from .paths import display_path
from .inputs import InputType, input_type
from .models import InputField, WorkflowRef, WorkflowSchema
from .progress import printable

__all__ = [
    "Break",
    "Change",
    "DriftReport",
    "WorkflowDrift",
    "WorkflowNotFound",
    "compare_schemas",
    "drift_report",
    "editor_schema",
    "input_keys",
    "schema_document",
    "schema_table",
    "slugify",
    "starter_spec",
]

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
MAX_NAME = 100



def not_found(ref: WorkflowRef, error: NotFoundError, where: str) -> WorkflowNotFound:
    """The one-sentence error for an unknown workflow or version; ``where`` names the server."""
    if ref.version is not None or ref.version_id:
        said = error.message.split(";")[0].strip()
        message = (
            f"{_describe_ref(ref)} was not found {where}; check the id and --version/--version-id "
            f"(the server said: {said})"
        )
    else:
        also = "" if where == "in the sandbox" else " (and --base-url or OPUS_BASE_URL)"
        message = f"workflow {ref.id!r} not found {where}; check the workflow id{also}"
    return WorkflowNotFound(message, status_code=error.status_code, method=error.method, endpoint=error.endpoint)


# -- helpers ---------------------------------------------------------------------------------


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], indent: str = "") -> str:
    body = [list(map(printable, row)) for row in rows]  # cells hold the server's names
    widths = [max([len(h), *(len(r[i]) for r in body)]) for i, h in enumerate(headers)]
    lines = [indent + "  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines += [indent + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in body]
    return "\n".join(lines)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _describe_ref(ref: WorkflowRef) -> str:
    if ref.version_id:
        return f"workflow {ref.id!r} (version id {ref.version_id})"
    if ref.version is not None:
        return f"workflow {ref.id!r} (version {ref.version})"
    return f"workflow {ref.id!r} (latest version)"


def _about(schema: WorkflowSchema) -> str:
    """``"Every input type" (all-types, version 2)``."""
    pins = [schema.workflow_id]
    if schema.version is not None:
        pins.append(f"version {schema.version}")
    name = f'"{_one_line(schema.name)}" ' if schema.name else ""
    return f"{name}({', '.join(pins)})"


def field_summary(f: InputField) -> str:
    """``file, required, allowed: PDF, TXT``: an input's type, need and file types in words."""
    text = f"{type_label(f)}, {'required' if f.required else 'optional'}"
    if f.allowed_file_types:
        text += f", allowed: {', '.join(f.allowed_file_types)}"
    return text


def type_label(f: InputField) -> str:
    """An input's type as shown to people: the wire form a list of files goes as, and a mark on
    a type this version does not understand."""
    if not f.type:
        return "(no type stated; not understood)"
    if not f.known:
        return f"{f.type} (not understood)"
    if f.wire_type and f.wire_type != f.type:
        return f"{f.type} (sent as {f.wire_type} of files)" if f.is_file else f"{f.type} (sent as {f.wire_type})"
    return f.type


# -- opus-run schema ---------------------------------------------------------------------------


def schema_document(schema: WorkflowSchema) -> dict[str, Any]:
    """The workflow and its inputs as JSON (``opus-run schema --format json``)."""
    return {
        "workflowId": schema.workflow_id,
        "name": schema.name,
        "description": schema.description,
        "version": schema.version,
        "versionId": schema.version_id,
        "inputs": [
            {
                "variable_name": f.variable_name,
                "display_name": f.display_name,
                "type": f.type,
                "sent_type": f.sent_type,
                "understood": f.known,
                "required": f.required,
                "allowed_file_types": list(f.allowed_file_types),
            }
            for f in schema.inputs
        ],
    }


def schema_table(schema: WorkflowSchema) -> str:
    """The workflow's inputs as a text table (``opus-run schema``)."""
    head = f"workflow {_about(schema)}"
    if not schema.inputs:
        return f"{head}\nno inputs"
    rows = [
        (
            f.variable_name,
            f.display_name,
            type_label(f),
            "yes" if f.required else "no",
            ", ".join(f.allowed_file_types) or "-",
        )
        for f in schema.inputs
    ]
    return printable(head) + "\n" + _table(["variable name", "display name", "type", "required", "allowed files"], rows)


# -- opus-run init -----------------------------------------------------------------------------


def slugify(text: str, fallback: str = "job") -> str:
    """A valid ``metadata.name`` from free text: ``"Summarize a PDF!"`` -> ``"summarize-a-pdf"``."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii").lower()
    slug = re.sub(r"[^a-z0-9._-]+", "-", ascii_text)
    slug = re.sub(r"-{2,}", "-", slug).strip("-._")
    slug = slug[:MAX_NAME].rstrip("-._")
    return slug if slug and NAME_PATTERN.match(slug) else fallback


def check_name(name: str) -> str | None:
    """Why ``name`` is not a valid ``metadata.name``, or None when it is."""
    if not NAME_PATTERN.match(name):
        return "must be lower-case letters, digits, '.', '_' or '-', starting with a letter or digit"
    if len(name) > MAX_NAME:
        return f"must be at most {MAX_NAME} characters"
    return None


def input_keys(schema: WorkflowSchema) -> dict[str, str]:
    """The key each input gets in a spec (variable name -> key): its display name, unless two
    inputs share it, or it equals another input's variable name (keys resolve by variable name
    first), in which case the variable name."""
    counts = Counter(f.display_name for f in schema.inputs)
    variables = {f.variable_name for f in schema.inputs}
    keys: dict[str, str] = {}
    for f in schema.inputs:
        clash = f.display_name in variables and f.display_name != f.variable_name
        usable = counts[f.display_name] == 1 and not clash and f.display_name.strip() != ""
        keys[f.variable_name] = f.display_name if usable else f.variable_name
    return keys


#: Plain scalars made only of these read back as the same string in a block key and in a flow
#: collection alike; anything else is left to the emitter.
_PLAIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_ ()./-]*$")
_YAML_WORDS = {"true", "false", "null", "yes", "no", "on", "off", "y", "n", "~"}
#: What a YAML comment cannot hold: a line break ends it (YAML counts \x85, \u2028 and \u2029
#: as line breaks too), and a non-printable character makes the file unreadable.
_NOT_IN_COMMENT = re.compile(
    "[^\t\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]"
)


def yaml_string(text: str) -> str:
    """``text`` as a one-line YAML scalar: plain when that is unambiguous, else double-quoted by
    the YAML emitter, which escapes line breaks, quotes and control characters (so a name from
    the server cannot end its line and start a key of its own)."""
    if _PLAIN.match(text) and not text.endswith(" ") and text.lower() not in _YAML_WORDS:
        return text
    return yaml.safe_dump(text, default_style='"', allow_unicode=True, width=float("inf")).rstrip("\n")


def _comment(text: Any) -> str:
    """``text`` fit for a ``#`` comment: on one line, printable; a comment has no escapes."""
    return " ".join(_NOT_IN_COMMENT.sub(" ", str(text)).split())


def _extension(f: InputField) -> str | None:
    return f.allowed_file_types[0].lower() if f.allowed_file_types else None


def placeholder(f: InputField, today: _dt.date) -> str:
    """A YAML placeholder value of the right type for ``f`` (flow style, one line)."""
    return _flow(input_type(f.type).placeholder(_extension(f), today), top=True)


def _flow(value: Any, *, top: bool = False) -> str:
    """``value`` (a placeholder: plain data) as one line of flow-style YAML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, _dt.date)):
        return value.isoformat() if isinstance(value, _dt.date) else repr(value)
    if isinstance(value, str):
        # A bare text placeholder is quoted so that it reads as text to replace.
        return json.dumps(value) if top else yaml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_flow(v) for v in value) + "]"
    return "{" + ", ".join(f"{yaml_string(str(k))}: {_flow(v)}" for k, v in value.items()) + "}"


def _commented(lines: Sequence[tuple[str, str]]) -> list[str]:
    """Lines with their comments aligned in one column."""
    width = max((len(code) for code, comment in lines if comment), default=0)
    out = []
    for code, comment in lines:
        out.append(f"{code.ljust(width)}  # {_comment(comment)}" if comment else code)
    return out


def starter_spec(
    schema: WorkflowSchema,
    *,
    ref: WorkflowRef,
    name: str | None = None,
    today: _dt.date | None = None,
) -> str:
    """A starter v1 spec (YAML text with comments) for ``schema``; see ``opus-run init``.

    Every input appears keyed by display name (see :func:`input_keys`) with a placeholder of its
    type and a comment giving type, required/optional and allowed file types. ``ref`` is what
    was asked for: a pinned version or version id is written into ``workflow``.
    """
    today = today or _dt.date.today()
    spec_name = name or slugify(schema.name, fallback=slugify(ref.id))
    keys = input_keys(schema)
    head = [
        f"# A starter spec for workflow {_comment(_about(schema))}, written by 'opus-run init'.",
        "# Replace the placeholders (point file inputs at real files, relative to this file),",
        "# drop the optional inputs you do not need, then check it with: opus-run validate <this file>",
        "# Format reference: docs/spec.md; completion for these inputs in your editor: docs/editors.md",
        "apiVersion: opus-runner/v1",
        "kind: Job",
        "metadata:",
        f"  name: {yaml_string(spec_name)}",
        f'  # title: "{_comment(schema.name or spec_name).replace(chr(34), chr(39))} {{{{ today() }}}}"',
        "workflow:",
        f"  id: {yaml_string(ref.id)}",
    ]
    if ref.version_id:
        head.append(f"  versionId: {yaml_string(ref.version_id)}")
    elif ref.version is not None:
        head.append(f"  version: {ref.version}")
    elif schema.version is not None:
        head.append(f"  # version: {schema.version}  # uncomment to pin the version this spec was written for")
    body: list[tuple[str, str]] = []
    if schema.inputs:
        body.append(("inputs:", ""))
        for f in schema.inputs:
            key = keys[f.variable_name]
            comment = field_summary(f)
            if key != f.variable_name:
                comment += f" ({f.variable_name})"
            body.append((f"  {yaml_string(key)}: {placeholder(f, today)}", comment))
    else:
        body.append(("inputs: {}", "this workflow takes no inputs"))
    tail = [
        "# outputs:  # default: print the result; see docs/spec.md for json, ndjson, download, junit",
        "#   - type: json",
        '#     path: "results/{{ metadata.name }}-{{ job.id }}.json"',
    ]
    text = "\n".join([*head, *_commented(body), *tail]) + "\n"
    _check_reads_back(text, schema, ref, spec_name, [keys[f.variable_name] for f in schema.inputs])
    return text


def _check_reads_back(text: str, schema: WorkflowSchema, ref: WorkflowRef, spec_name: str, keys: list[str]) -> None:
    """The starter spec reads back as exactly the keys it was written with: the names in it come
    from the server, and one that slipped past the escaping must not add a key (a ``notify:``
    webhook, say) to a file the user will run."""
    workflow: dict[str, Any] = {"id": ref.id}
    if ref.version_id:
        workflow["versionId"] = ref.version_id
    elif ref.version is not None:
        workflow["version"] = ref.version
    try:
        data = yaml.safe_load(text)
        inputs = data["inputs"]
        same = (
            list(data) == ["apiVersion", "kind", "metadata", "workflow", "inputs"]
            and data["metadata"] == {"name": spec_name}
            and data["workflow"] == workflow
            and list(inputs) == keys
            and all(isinstance(value, (str, int, bool, list, dict, _dt.date)) for value in inputs.values())
        )
    except (yaml.YAMLError, TypeError, KeyError):
        same = False
    if not same:
        raise ApiError(
            f"the schema of workflow {ref.id} has names that cannot be written into a starter spec "
            "safely; write the spec by hand from `opus-run schema` instead"
        )


# -- opus-run init --editor-schema -------------------------------------------------------------

#: A string holding a template: rendered before it is checked, so any such string is accepted.
TEMPLATE_SCHEMA: dict[str, Any] = {
    "type": "string",
    "pattern": r"\{\{|\{%",
    "description": "A template ({{ ... }}); its rendered value is checked when the spec runs.",
}
def _file_forms(kind: InputType) -> list[dict[str, Any]]:
    if not kind.is_file:
        return []
    path = {"type": "string", "minLength": 1}
    one = {
        "type": "object",
        "properties": {"file": {**path, "description": "A local path (relative to the spec), a glob or a URL."}},
        "required": ["file"],
        "additionalProperties": False,
    }
    if kind.one_file:
        return [one]
    many = {
        "type": "object",
        "properties": {
            "files": {
                "description": "Local paths (relative to the spec), globs or URLs.",
                "anyOf": [{"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1}, TEMPLATE_SCHEMA],
            }
        },
        "required": ["files"],
        "additionalProperties": False,
    }
    return [many, one]


def input_value_schema(f: InputField) -> dict[str, Any]:
    """The JSON Schema of what a spec may write for input ``f``: the shorthand value, the
    ``{file}``/``{files}`` forms, ``{value, type}``, or a template string; null when optional."""
    nullable = [{"type": "null"}] if f.nullable else []
    kind = input_type(f.type)
    shorthand = copy.deepcopy(list(kind.spec_forms))
    value = {"anyOf": [*shorthand, TEMPLATE_SCHEMA, *nullable]}
    explicit = {
        "type": "object",
        "properties": {
            "value": value,
            "type": {
                "enum": sorted({f.type, f.sent_type}),
                "description": "Optional; when given it must be the workflow's type.",
            },
        },
        "required": ["value"],
        "additionalProperties": False,
    }
    return {"anyOf": [*copy.deepcopy(shorthand), *_file_forms(kind), explicit, TEMPLATE_SCHEMA, *nullable]}


def editor_schema(schema: WorkflowSchema) -> dict[str, Any]:
    """A JSON Schema (Draft 2020-12) for specs of this one workflow.

    It is the spec-v1 schema with ``inputs`` replaced by one property per input, under its
    display name and under its variable name, so an editor completes and checks inputs while
    they are typed: unknown inputs and values of the wrong type are flagged, required inputs
    are demanded (by either name), and setting one input by both names is refused.
    """
    from .spec import spec_schema

    result = spec_schema()
    keys = input_keys(schema)
    variables = {f.variable_name for f in schema.inputs}
    properties: dict[str, Any] = {}
    rules: list[dict[str, Any]] = []
    for f in schema.inputs:
        names = [f.variable_name]
        display = keys[f.variable_name]
        if display != f.variable_name:
            names.insert(0, display)
        description = f"{field_summary(f)}. Variable name {f.variable_name}; display name {f.display_name!r}."
        for name in names:
            properties[name] = {
                "title": f.display_name,
                "description": description,
                "examples": [input_type(f.type).example(_extension(f))],
                **input_value_schema(f),
            }
        if len(names) == 2:
            rules.append({"not": {"required": names}})
        if f.required:
            rules.append({"anyOf": [{"required": [n]} for n in names]})
    shared = sorted({f.display_name for f in schema.inputs if keys[f.variable_name] == f.variable_name} - variables)
    description = (
        f"The inputs of workflow {_about(schema)}, by display name or variable name. "
        "Values may be templates; file inputs take {file: path} or {files: [paths]}."
    )
    if shared:
        description += " Shared display names (" + ", ".join(shared) + ") must be given by variable name."
    inputs: dict[str, Any] = {
        "title": "Workflow inputs",
        "description": description,
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
    }
    if rules:
        inputs["allOf"] = rules
    result["properties"]["inputs"] = inputs
    workflow = result["properties"]["workflow"]["properties"]["id"]
    workflow["anyOf"] = [{"const": schema.workflow_id}, TEMPLATE_SCHEMA]
    workflow["description"] = f"This schema describes workflow {schema.workflow_id}; other workflows need their own."
    if any(f.required for f in schema.inputs):
        result["required"] = [*result.get("required", []), "inputs"]
    result["title"] = f"opus-runner spec for workflow {_about(schema)}"
    result["description"] = (
        f"An opus-runner/v1 job spec for workflow {_about(schema)}, generated by "
        f"'opus-run init {schema.workflow_id} --editor-schema'. " + str(result.get("description", ""))
    )
    return result


def spec_schema_with_plugins(host: Any) -> dict[str, Any]:
    """The spec-v1 JSON Schema with the config schemas of the loaded output and notifier types.

    Every type of ``host`` (a :class:`~opus_runner.plugins.PluginHost`: the built-ins and the
    plugins) that registered a schema gets it under ``$defs`` (``outputs-NAME``,
    ``notify-NAME``), applied to the ``outputs``/``notify`` entries whose ``type`` is NAME. As
    ``opus-run validate`` does before rendering, a template is accepted for any property.
    """
    from .spec import spec_schema

    result = spec_schema()
    defs = result.setdefault("$defs", {})
    for kind, table in (("outputs", host.outputs), ("notify", host.notifiers)):
        rules = []
        for name, handler in sorted(table.items()):
            if handler.schema is None:
                continue
            defs[f"{kind}-{name}"] = _embedded(handler.schema, f"urn:opus-runner:{kind}:{name}")
            rules.append(
                {
                    "if": {"properties": {"type": {"const": name}}, "required": ["type"]},
                    "then": {"$ref": f"#/$defs/{kind}-{name}"},
                }
            )
        items = result["properties"][kind]["items"]
        if rules:
            items["allOf"] = [*items.get("allOf", []), *rules]
    return result


def _embedded(schema: dict[str, Any], uri: str) -> dict[str, Any]:
    result = _template_or(json.loads(json.dumps(schema)))
    # The plugin's own "#/..." references point into its schema, not into the spec schema:
    # an $id makes it the base they resolve against.
    if '"$ref": "#' in json.dumps(schema):
        result.setdefault("$id", uri)
    else:
        result.pop("$schema", None)
    return result


def _template_or(schema: Any) -> Any:
    """``schema`` with every property (at any depth) also accepting a template string."""
    if not isinstance(schema, dict):
        return schema
    result = dict(schema)
    if isinstance(result.get("properties"), dict):
        result["properties"] = {
            key: {"anyOf": [_template_or(sub), TEMPLATE_SCHEMA]} if isinstance(sub, dict) else sub
            for key, sub in result["properties"].items()
        }
    if isinstance(result.get("items"), dict):
        result["items"] = {"anyOf": [_template_or(result["items"]), TEMPLATE_SCHEMA]}
    return result


# -- opus-run drift ----------------------------------------------------------------------------

#: Change kinds, in the order they are reported for one input.
CHANGE_KINDS = ("added", "removed", "renamed", "retyped", "made_required", "made_optional", "file_types_changed")


@dataclass(frozen=True)
class Change:
    """One difference between the locked and the live inputs of a workflow.

    ``old``/``new`` are the type (``retyped``, ``added``, ``removed``), the display name
    (``renamed``) or the allowed file types (``file_types_changed``); ``required`` is whether
    the input is required now (before, for ``removed``).
    """

    kind: str
    variable_name: str
    display_name: str
    old: Any = None
    new: Any = None
    required: bool | None = None

    @property
    def label(self) -> str:
        return f"{self.display_name} ({self.variable_name})" if self.display_name != self.variable_name else self.variable_name

    def cells(self) -> tuple[str, str]:
        """The locked and live columns of the text report."""
        def show(value: Any) -> str:
            if value is None:
                return "-"
            if isinstance(value, (list, tuple)):
                return ", ".join(value) or "(any)"
            return str(value)

        if self.kind == "added":
            return "-", f"{self.new}, {'required' if self.required else 'optional'}"
        if self.kind == "removed":
            return f"{self.old}, {'required' if self.required else 'optional'}", "-"
        if self.kind == "made_required":
            return "optional", "required"
        if self.kind == "made_optional":
            return "required", "optional"
        return show(self.old), show(self.new)

    def as_dict(self) -> dict[str, Any]:
        return {
            "change": self.kind,
            "variable_name": self.variable_name,
            "display_name": self.display_name,
            "old": list(self.old) if isinstance(self.old, tuple) else self.old,
            "new": list(self.new) if isinstance(self.new, tuple) else self.new,
            "required": self.required,
        }


def compare_schemas(old: WorkflowSchema, new: WorkflowSchema) -> list[Change]:
    """What changed from ``old`` (locked) to ``new`` (live), matched by variable name."""
    live = new.by_variable_name()
    locked = old.by_variable_name()
    changes: list[Change] = []
    for before in old.inputs:
        after = live.get(before.variable_name)
        if after is None:
            changes.append(Change("removed", before.variable_name, before.display_name, before.type, None, before.required))
            continue
        var, name = after.variable_name, after.display_name
        if before.display_name != after.display_name:
            changes.append(Change("renamed", var, name, before.display_name, after.display_name, after.required))
        if before.type != after.type:
            changes.append(Change("retyped", var, name, before.type, after.type, after.required))
        if before.required != after.required:
            kind = "made_required" if after.required else "made_optional"
            changes.append(Change(kind, var, name, before.required, after.required, after.required))
        if sorted(before.allowed_file_types) != sorted(after.allowed_file_types):
            changes.append(
                Change("file_types_changed", var, name, before.allowed_file_types, after.allowed_file_types, after.required)
            )
    for after in new.inputs:
        if after.variable_name not in locked:
            changes.append(Change("added", after.variable_name, after.display_name, None, after.type, after.required))
    return changes


@dataclass(frozen=True)
class Break:
    """A spec the live workflow no longer accepts, and why."""

    spec: str
    variable_name: str
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"spec": self.spec, "variable_name": self.variable_name, "reason": self.reason}


@dataclass
class WorkflowDrift:
    """The drift of one locked workflow (one WorkflowRef.key)."""

    key: str
    locked: WorkflowSchema
    live: WorkflowSchema
    specs: list[str] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    breaks: list[Break] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "workflowId": self.live.workflow_id,
            "name": self.live.name or self.locked.name,
            "lockedVersion": self.locked.version,
            "liveVersion": self.live.version,
            "specs": self.specs,
            "changes": [c.as_dict() for c in self.changes],
            "breaks": [b.as_dict() for b in self.breaks],
        }


@dataclass
class DriftReport:
    """``opus-run drift``'s findings. ``exit_code``: 0 nothing breaks, 1 some spec breaks."""

    lock_path: Path
    workflows: list[WorkflowDrift] = field(default_factory=list)

    @property
    def breaking(self) -> bool:
        return any(w.breaks for w in self.workflows)

    @property
    def exit_code(self) -> int:
        return 1 if self.breaking else 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "lock": str(self.lock_path),
            "workflows": [w.as_dict() for w in self.workflows],
            "changed": any(w.changes for w in self.workflows),
            "breaking": self.breaking,
            "exit_code": self.exit_code,
        }

    def text(self) -> str:
        lines: list[str] = []
        for w in self.workflows:
            head = w.key + (f" ({printable(_one_line(w.live.name))})" if w.live.name else "")
            if w.locked.version is not None and w.live.version is not None and w.locked.version != w.live.version:
                head += f", version {w.locked.version} -> {w.live.version}"
            if not w.changes:
                lines.append(f"{head}: no input changes")
                continue
            lines.append(f"{head}: {len(w.changes)} change{'s' if len(w.changes) != 1 else ''}")
            rows = [(c.kind.replace("_", " "), c.label, *c.cells()) for c in w.changes]
            lines.append(_table(["change", "input", "locked", "live"], rows, indent="  "))
            for b in w.breaks:
                lines.append(f"  breaks {b.spec}: {b.reason}")
        broken = sorted({b.spec for w in self.workflows for b in w.breaks})
        changed = sum(1 for w in self.workflows if w.changes)
        if broken:
            lines.append(
                f"{len(broken)} spec{'s' if len(broken) != 1 else ''} break{'' if len(broken) != 1 else 's'} "
                f"({', '.join(broken)}): update {'them' if len(broken) != 1 else 'it'}, then run 'opus-run lock' again"
            )
        elif changed:
            lines.append(
                f"{changed} workflow{'s' if changed != 1 else ''} changed without breaking a spec; "
                "run 'opus-run lock' to record the new inputs"
            )
        else:
            lines.append(f"no drift: the live workflows match {self.lock_path.name}")
        return printable("\n".join(lines), newlines=True)


def _spec_breaks(spec: Any, locked: WorkflowSchema, live: WorkflowSchema, changes: list[Change]) -> list[Break]:
    from .workflow import resolve_input

    where = display_path(spec.path)
    raw = spec.data.get("inputs") or {}
    keys = [str(k) for k in raw] if isinstance(raw, dict) else []
    by_var: dict[str, list[Change]] = {}
    for change in changes:
        by_var.setdefault(change.variable_name, []).append(change)
    found: list[Break] = []
    given_live: set[str] = set()
    for key in keys:
        try:
            given_live.add(resolve_input(live, key).variable_name)
        except LookupError:
            pass
        try:
            before = resolve_input(locked, key)
        except LookupError:
            continue  # invalid against the lock already: validate --locked reports it
        for change in by_var.get(before.variable_name, ()):
            if change.kind == "removed":
                found.append(Break(where, change.variable_name, f"sets input {key!r}, which the workflow no longer has"))
            elif change.kind == "retyped":
                found.append(
                    Break(where, change.variable_name, f"sets input {key!r}, whose type changed from {change.old} to {change.new}")
                )
            elif change.kind == "renamed" and key == change.old and key != change.variable_name:
                found.append(
                    Break(where, change.variable_name, f"names input {key!r} by its display name, which is now {change.new!r}")
                )
    for change in changes:
        if change.kind in ("added", "made_required") and change.required and change.variable_name not in given_live:
            found.append(
                Break(where, change.variable_name, f"lacks input {change.label}, which is now required")
            )
    return found


def drift_report(lock: Any, collected: Sequence[tuple[Any, WorkflowRef, WorkflowSchema | None]]) -> DriftReport:
    """Compare the live schemas (from ``Runner.collect_schemas()``) with ``lock``.

    Raises :class:`~opus_runner.lockfile.LockError` (exit 2) when the lock has no entry for a
    workflow the specs use.
    """
    from .lockfile import LockError

    missing: dict[str, tuple[WorkflowRef, list[str]]] = {}
    drifts: dict[str, WorkflowDrift] = {}
    for spec, ref, live in collected:
        where = display_path(spec.path)
        locked = lock.schema(ref)
        if locked is None:
            missing.setdefault(ref.key, (ref, []))[1].append(where)
            continue
        assert live is not None, "collect_schemas(live=True) returns a schema for every ref"
        drift = drifts.get(ref.key)
        if drift is None:
            drift = drifts[ref.key] = WorkflowDrift(ref.key, locked, live, changes=compare_schemas(locked, live))
        if where not in drift.specs:
            drift.specs.append(where)
        drift.breaks.extend(b for b in _spec_breaks(spec, locked, live, drift.changes) if b not in drift.breaks)
    if missing:
        named = "; ".join(f"{_describe_ref(ref)} used by {', '.join(specs)}" for ref, specs in missing.values())
        raise LockError(
            f"{lock.path.name} has no entry for {named}; run 'opus-run lock <specs>' with every spec of "
            "the project, commit the file, then run drift again",
            path=lock.path,
            entry=next(iter(missing)),
        )
    return DriftReport(lock_path=lock.path, workflows=list(drifts.values()))
