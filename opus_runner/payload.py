"""Build a job's ``jobPayloadSchemaInstance`` from a spec's rendered inputs.

Resolve each key to a workflow input, turn file sources into file URLs (hook
``opus_upload_file``), coerce every value (hook ``opus_coerce_value``), then validate the whole
payload against the workflow's JSON Schema. Every problem is collected, not just the first, and
reported with the spec file, the input key, what was expected and what was found.

Local file sources are checked here, by the core and before any uploader plugin sees them:
existence, the 10 MB limit, the documented extensions and the field's allowed types, and
confinement to the spec repository root (symlinks resolved). Security checks must not depend on
which plugin uploads.
"""

from __future__ import annotations

import glob
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import SpecError, ValidationFailed
from .models import Context, InputField, WorkflowSchema
from .paths import display_path, outside_root, project_root_of
from .inputs import FILE_TYPES, TYPES, input_type

if TYPE_CHECKING:  # pragma: no cover
    from .plugins import PluginHost

MAX_FILE_BYTES = 10 * 1024 * 1024
#: extensions the upload endpoint documents (opus-api.md, "Files")
UPLOAD_EXTENSIONS = frozenset(
    {".pdf", ".docx", ".csv", ".xls", ".xlsx", ".txt", ".json", ".html", ".xml", ".jpeg", ".jpg", ".png"}
)
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_GLOB_CHARS = set("*?[")
#: the key of a spec's file form -> the type it declares: {file: ...} one file, {files: [...]} many
_FILE_FORMS = {t.file_form: t.name for t in TYPES if t.file_form}


def is_url(source: str) -> bool:
    """True for ``https://...``, ``s3://...`` and the like (anything that is not a local path)."""
    return bool(_SCHEME.match(source))


@dataclass
class InputValue:
    """One spec input, unwrapped from its written form."""

    key: str
    value: Any
    declared_type: str | None = None
    sources: list[str] | None = None  # file sources, for file and array_files inputs


@dataclass
class BuiltPayload:
    payload: dict[str, dict[str, Any]]
    files: list[Path] = field(default_factory=list)  # local files it sends (checked)
    uploads: int = 0  # file sources the uploader hook turned into URLs (placeholders on dry runs)


def unwrap(key: str, raw: Any, spec_field: InputField) -> InputValue:
    """Read the written forms of SPEC.md section 1: shorthand, ``{value, type}``, ``{file}``, ``{files}``."""
    declared: str | None = None
    value = raw
    if isinstance(raw, Mapping):
        keys = set(raw)
        if "value" in keys and keys <= {"value", "type"}:
            value = raw["value"]
            declared = raw.get("type")
        elif len(keys) == 1 and next(iter(keys)) in _FILE_FORMS:
            (form,) = keys
            return InputValue(key, raw[form], _FILE_FORMS[form], _as_sources(raw[form]))
    if spec_field.is_file and value is not None:
        return InputValue(key, value, declared, _as_sources(value))
    return InputValue(key, value, declared)


def _as_sources(value: Any) -> list[str] | None:
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    return None


def resolve_local(source: str, ctx: Context) -> Path:
    """The absolute path a local file source names (relative to the spec's folder)."""
    return (ctx.spec_dir / os.path.expanduser(source)).absolute()


def check_local_file(path: Path, spec_field: InputField, ctx: Context) -> str | None:
    """Why ``path`` may not be sent for ``spec_field``, or None when it may."""
    real = path.resolve()
    if not ctx.allow_outside_root:
        problem = outside_root(path, project_root_of(ctx))
        if problem is not None:
            return problem
    if not real.exists():
        return f"file {path} does not exist"
    if not real.is_file():
        return f"{path} is not a regular file"
    size = real.stat().st_size
    if size > MAX_FILE_BYTES:
        return f"file {path} is {size / 1024 / 1024:.1f} MB; Opus accepts at most 10 MB per file"
    ext = real.suffix.lower() if real.suffix else path.suffix.lower()
    if ext not in UPLOAD_EXTENSIONS:
        allowed = " ".join(sorted(UPLOAD_EXTENSIONS))
        return f"file {path} has extension {ext or '(none)'!r}, which Opus does not accept (allowed: {allowed})"
    if spec_field.allowed_file_types and ext.lstrip(".").upper() not in {
        t.upper().lstrip(".") for t in spec_field.allowed_file_types
    }:
        return (
            f"file {path} is {ext.lstrip('.').upper()}, but input {spec_field.display_name!r} accepts only "
            f"{', '.join(spec_field.allowed_file_types)}"
        )
    return None


def expand_sources(sources: Sequence[str], ctx: Context) -> tuple[list[str], list[str]]:
    """Expand local globs (sorted). Returns (sources, problems); URLs pass through unchanged."""
    out: list[str] = []
    problems: list[str] = []
    for source in sources:
        if is_url(source) or not (_GLOB_CHARS & set(source)):
            out.append(source)
            continue
        pattern = str(resolve_local(source, ctx))
        matches = sorted(glob.glob(pattern, recursive=True))
        if not matches:
            problems.append(f"the pattern {source!r} matches no file (looked in {ctx.spec_dir})")
        out.extend(os.path.relpath(m, ctx.spec_dir) for m in matches)
    return out, problems


async def build_payload(
    inputs: Mapping[str, Any],
    schema: WorkflowSchema,
    host: PluginHost,
    ctx: Context,
    *,
    input_lines: Mapping[str, int | None] | None = None,
    check_schema: bool = True,
) -> BuiltPayload:
    """The ``jobPayloadSchemaInstance`` for ``inputs``; raises ValidationFailed listing every problem.

    With ``ctx.dry_run`` the uploader hook is asked for placeholders, so nothing is uploaded.
    """
    from .workflow import resolve_input

    errors: list[SpecError] = []
    lines = input_lines or {}
    spec_file = display_path(ctx.spec_path)

    def problem(key: str | None, message: str) -> None:
        path: tuple[str, ...] = ("inputs", key) if key is not None else ("inputs",)
        errors.append(SpecError(message, file=spec_file, key=path, line=lines.get(key or "")))

    chosen: dict[str, tuple[InputField, InputValue]] = {}
    for key, raw in inputs.items():
        try:
            spec_field = resolve_input(schema, str(key))
        except LookupError as exc:
            problem(key, str(exc.args[0] if exc.args else exc))
            continue
        if spec_field.variable_name in chosen:
            other = chosen[spec_field.variable_name][1].key
            problem(key, f"{key!r} and {other!r} both set input {spec_field.variable_name}; keep one")
            continue
        item = unwrap(str(key), raw, spec_field)
        if item.declared_type is not None and item.declared_type not in (spec_field.type, spec_field.sent_type):
            problem(
                key,
                f"type {item.declared_type!r} was given, but the workflow's input "
                f"{spec_field.display_name!r} is of type {spec_field.sent_type!r}",
            )
            continue
        chosen[spec_field.variable_name] = (spec_field, item)

    for spec_field in schema.inputs:
        if spec_field.required and spec_field.variable_name not in chosen:
            problem(
                None,
                f"required input {spec_field.display_name!r} ({spec_field.variable_name}, "
                f"type {spec_field.type}) is missing",
            )

    payload: dict[str, dict[str, Any]] = {}
    chosen_wire: set[str] = set()  # inputs whose wire form a coercion plugin chose
    files: list[Path] = []
    uploads = 0
    # Check every local file of the job before the first upload starts.
    sources_by_var: dict[str, list[str]] = {}
    for var, (spec_field, item) in chosen.items():
        if item.value is None:
            continue
        if item.sources is None:
            if spec_field.is_file:
                problem(item.key, f"expected a file path or URL for {spec_field.type} input, found {type(item.value).__name__}")
            elif item.declared_type in FILE_TYPES:
                problem(item.key, f"input {spec_field.display_name!r} is of type {spec_field.type!r}, not a file")
            continue
        if not spec_field.is_file:
            problem(item.key, f"input {spec_field.display_name!r} is of type {spec_field.type!r}, not a file")
            continue
        one_file = input_type(spec_field.type).one_file
        if one_file and len(item.sources) != 1:
            problem(item.key, f"input {spec_field.display_name!r} takes one file, found {len(item.sources)}")
            continue
        expanded, glob_problems = expand_sources(item.sources, ctx)
        for message in glob_problems:
            problem(item.key, message)
        if one_file and len(expanded) != 1:
            if not glob_problems:
                problem(item.key, f"input {spec_field.display_name!r} takes one file, the pattern matched {len(expanded)}")
            continue
        for source in expanded:
            if is_url(source):
                continue
            path = resolve_local(source, ctx)
            why = check_local_file(path, spec_field, ctx)
            if why:
                problem(item.key, why)
            else:
                files.append(path.resolve())
        sources_by_var[var] = expanded
    # Nothing is uploaded while any problem is known; the other values are still checked so
    # that one run lists every problem.
    upload_allowed = not errors

    for var, (spec_field, item) in chosen.items():
        value = item.value
        if value is None:
            if spec_field.required:
                problem(item.key, f"input {spec_field.display_name!r} is required; found nothing (null)")
            continue
        if spec_field.is_file and (not upload_allowed or var not in sources_by_var):
            continue
        if var in sources_by_var:
            urls: list[str] = []
            for source in sources_by_var[var]:
                try:
                    url = await host.upload_file(spec_field, source, ctx)
                except Exception as exc:  # a plugin's words, with our location
                    problem(item.key, f"could not upload {source!r}: {_reason(exc)}")
                    continue
                if url is None:
                    problem(item.key, f"no uploader handles {source!r}; install or enable a plugin for it")
                    continue
                urls.append(url)
                uploads += 1
            value = urls[0] if input_type(spec_field.type).one_file and len(urls) == 1 else urls
        try:
            sent = await host.coerce_value(spec_field, value, ctx)
        except (ValueError, TypeError) as exc:
            problem(item.key, f"input {spec_field.display_name!r} ({spec_field.type}): {_reason(exc)}")
            continue
        if sent is None:
            payload[var] = wire_entry(spec_field, None)
            continue
        payload[var] = wire_entry(spec_field, sent.value, sent.type, sent.type_definition)
        if sent.type is not None:  # without one, the type sent is the schema's own
            chosen_wire.add(var)

    # Nullable inputs the spec leaves out are sent as null, so the payload names every input.
    for spec_field in schema.inputs:
        if spec_field.variable_name not in payload and not spec_field.required:
            payload[spec_field.variable_name] = wire_entry(spec_field, None)
    if errors:
        raise ValidationFailed(errors)
    if check_schema:
        errors.extend(validate_payload(payload, schema, spec_file, chosen, lines, plugin_wire=chosen_wire))
    if errors:
        raise ValidationFailed(errors)
    return BuiltPayload(payload=payload, files=files, uploads=uploads)


def wire_entry(
    spec_field: InputField, value: Any, wire_type: str | None = None, type_definition: Any = None
) -> dict[str, Any]:
    """One ``jobPayloadSchemaInstance`` entry, typed exactly as the workflow's schema states.

    A list of files that the schema describes as ``array`` with file items goes with its
    ``typeDefinition``: without it the platform hands the workflow the URLs as plain text
    (opus-api.md section 5). ``displayName`` is always sent: the Opus UI needs it.
    """
    entry: dict[str, Any] = {"value": value}
    sent_type = wire_type or spec_field.sent_type
    if sent_type:
        entry["type"] = sent_type
    definition = type_definition
    if definition is None and wire_type is None and spec_field.wire_type == "array":
        definition = spec_field.type_definition or {"allowed_types": [{"type": "file"}]}
    if definition is not None:
        entry["typeDefinition"] = definition
    entry["displayName"] = spec_field.display_name
    return entry


#: Compiled payload validators kept at once, most recently used first. A batch validates
#: thousands of payloads against a handful of workflows; a process that sees ever new schemas
#: (a long-lived service, a test suite) keeps only this many, never all of them.
VALIDATOR_CACHE_SIZE = 64
# By identity, holding the schema so that its id cannot be reused while the entry lives:
# equal schemas from two fetches compile twice, which is cheap, where hashing a plugin's
# WorkflowSchema (whose fields may be lists) could fail.
_VALIDATORS: OrderedDict[int, tuple[WorkflowSchema, Any]] = OrderedDict()
_VALIDATORS_LOCK = threading.Lock()


def _payload_validator(schema: WorkflowSchema) -> Any:
    """The compiled validator of ``schema``'s payloads, from the bounded cache."""
    from jsonschema import Draft202012Validator

    from .workflow import payload_json_schema

    with _VALIDATORS_LOCK:
        cached = _VALIDATORS.get(id(schema))
        if cached is not None and cached[0] is schema:
            _VALIDATORS.move_to_end(id(schema))
            return cached[1]
    validator = Draft202012Validator(payload_json_schema(schema))
    with _VALIDATORS_LOCK:
        _VALIDATORS[id(schema)] = (schema, validator)
        _VALIDATORS.move_to_end(id(schema))
        while len(_VALIDATORS) > VALIDATOR_CACHE_SIZE:
            _VALIDATORS.popitem(last=False)
    return validator


def validate_payload(
    payload: Mapping[str, Any],
    schema: WorkflowSchema,
    spec_file: str,
    chosen: Mapping[str, tuple[InputField, InputValue]],
    lines: Mapping[str, int | None],
    *,
    plugin_wire: frozenset[str] | set[str] = frozenset(),
) -> list[SpecError]:
    """Check the final payload against the workflow's JSON Schema (catches plugin coercers too).

    ``plugin_wire`` names inputs whose wire form a coercion plugin chose (a WireValue): their
    ``type`` is the plugin's business, their value is still checked.
    """
    validator = _payload_validator(schema)
    found: list[SpecError] = []
    for err in sorted(validator.iter_errors(payload), key=lambda e: list(map(str, e.path))):
        var = str(err.path[0]) if err.path else None
        if var in plugin_wire and len(err.path) > 1 and err.path[1] == "type":
            continue
        key = chosen[var][1].key if var in chosen else var
        label = key or "inputs"
        found.append(
            SpecError(
                f"the value sent for {label!r} does not fit the workflow: {_explain(err)}",
                file=spec_file,
                key=("inputs", key) if key else ("inputs",),
                line=lines.get(key or ""),
            )
        )
    return found


def _explain(error: Any) -> str:
    from .messages import explain_schema_error

    return "; ".join(message for _, message in explain_schema_error(error))


def _reason(exc: BaseException) -> str:
    from . import redact

    text = str(exc.args[0]) if len(exc.args) == 1 else str(exc)
    return redact.mask(text) or type(exc).__name__
