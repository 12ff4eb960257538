"""The checks of an execute body, in the two dialects.

Both dialects refuse the same malformed bodies with 400 (:func:`structural_problems`) and judge
values by the same tests (:data:`_FITS`); they differ in when and in which words:

- live: a value that does not fit is accepted, and the job then fails at its Input node with
  the messages of :func:`input_failures`;
- documented: every problem is a 400 at once (:func:`documented_problems`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from datetime import date
from typing import Any
from urllib.parse import unquote, urlsplit

from ..urls import is_loopback_host
from .fixture import InputDef
from .state import FoundFile, Job, UploadSlot

#: Looks up one of the sandbox's own file URLs: the file, a string saying why an own URL names no
#: file, or None for a URL that is not the sandbox's.
FindFile = Callable[[str], FoundFile | str | None]

_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_url(value: Any) -> bool:
    """An absolute http(s) URL with a host (what NestJS's ``@IsUrl`` accepts, roughly)."""
    if not isinstance(value, str) or not value or any(c.isspace() for c in value):
        return False
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises for a malformed port
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _is_date(value: Any) -> bool:
    if not isinstance(value, str) or _DATE.fullmatch(value) is None:
        return False
    try:
        date.fromisoformat(value)
    except ValueError:
        return False
    return True


def _extension_of(name: str) -> str:
    """``"Q4.Report.PDF"`` -> ``"PDF"``; ``""`` when there is none."""
    base = name.rsplit("/", 1)[-1]
    return base.rsplit(".", 1)[-1].upper() if "." in base.strip(".") else ""


def _type_allowed(extension: str, allowed: tuple[str, ...]) -> bool:
    if not allowed:
        return True
    same = {"JPG": "JPEG"}
    ext = same.get(extension, extension)
    return any(same.get(a, a) == ext for a in allowed)


def _describes_files(definition: Any) -> bool:
    """True when a ``typeDefinition`` says the list's items are files."""
    if not isinstance(definition, Mapping):
        return False
    if definition.get("type") == "file":
        return True
    allowed = definition.get("allowed_types", definition.get("allowedTypes"))
    return isinstance(allowed, list) and any(
        isinstance(item, Mapping) and item.get("type") == "file" for item in allowed
    )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _file_extension(url: str, found: FoundFile | None, slots: Mapping[str, UploadSlot]) -> str:
    """The extension a file input is judged by: the upload's own, else the URL's or name's."""
    if found is None:
        return _extension_of(unquote(urlsplit(url).path))
    token, name, _, _ = found
    slot = slots.get(token)
    return slot.file_type if slot is not None else _extension_of(name)


# --- the shared structure ------------------------------------------------------------------------

#: Whether a value fits an input type (file types aside), and each dialect's words for the type.
#: The live service also takes a whole float for an ``int``; ``json_string`` is checked for
#: parsing separately.
_FITS: dict[str, Callable[[Any], bool]] = {
    "str": lambda value: isinstance(value, str),
    "float": lambda value: not isinstance(value, bool) and isinstance(value, (int, float)),
    "int": is_int,
    "bool": lambda value: isinstance(value, bool),
    "date": _is_date,
    "object": lambda value: isinstance(value, dict),
    "array": lambda value: isinstance(value, list),
    "json_string": lambda value: isinstance(value, str),
    "array_files": lambda value: isinstance(value, list),
}
_LIVE_WORDS = {
    "str": "a string",
    "float": "a number (float)",
    "int": "an integer (int)",
    "bool": "a boolean (bool)",
    "date": "a date formatted YYYY-MM-DD",
    "object": "an object",
    "array": "an array",
    "json_string": "a JSON string (text that parses as JSON)",
    "array_files": "a list of file URLs",
}
_DOCUMENTED_WORDS = {
    "str": "a string",
    "float": "a number",
    "int": "an integer",
    "bool": "a boolean",
    "date": "a date formatted YYYY-MM-DD",
    "object": "an object",
    "array": "an array",
    "json_string": "a JSON string",
    "array_files": "an array of file URLs",
}


def _fits(kind: str, value: Any, *, whole_float_is_int: bool = False) -> bool:
    if kind == "int" and whole_float_is_int and isinstance(value, float):
        return value.is_integer()
    test = _FITS.get(kind)
    return test is None or test(value)


def _parses_as_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def structural_problems(job: Job, instance: Mapping[str, Any], *, field: str = "jobPayloadSchemaInstance") -> list[str]:
    """What refuses an execute with 400 in every dialect (the job does not start); ``field``
    names the body's field holding the inputs (v1: ``payload``)."""
    problems: list[str] = []
    inputs = job.version.inputs_by_var
    for var, entry in instance.items():
        where = f"{field}.{var}"
        input_def = inputs.get(var)
        if input_def is None:
            known = ", ".join(inputs) or "none"
            problems.append(
                f"{where} is not an input of workflow {job.workflow.id} version {job.version.number} "
                f"(its inputs: {known})"
            )
            continue
        if not isinstance(entry, dict):
            problems.append(f"{where} must be an object with value and type")
            continue
        if entry.get("type") in (None, ""):
            problems.append(f"{where}.type should not be empty")
        display = entry.get("displayName")
        if display is not None and not isinstance(display, str):
            problems.append(f"{where}.displayName must be a string")
        if entry.get("value") is None and not input_def.nullable:
            problems.append(f"{where}.value ({input_def.display_name}) is required and must not be null")
    for var, input_def in inputs.items():
        if var not in instance and not input_def.nullable:
            problems.append(f"{field}.{var} ({input_def.display_name}) is required")
    return problems


# --- live: the Input node's failures -------------------------------------------------------------


def input_failures(
    job: Job, instance: Mapping[str, Any], find_file: FindFile, slots: Mapping[str, UploadSlot]
) -> list[str]:
    """Live: what an accepted execute's Input node fails on, one message per input."""
    failures: list[str] = []
    for var, entry in instance.items():
        input_def = job.version.inputs_by_var[var]
        label = f"input {var} ({input_def.display_name})"
        sent, expected = entry.get("type"), input_def.wire_type
        if sent != expected:
            failures.append(
                f"{label}: the workflow expects type {expected!r}, the request sent type {sent!r}"
            )
            continue
        value = entry.get("value")
        if value is None:
            continue  # a nullable input left empty
        if input_def.file_items:
            definition = entry.get("typeDefinition")
            if definition is None:
                hint = (
                    " (found type_definition; the field is typeDefinition)"
                    if "type_definition" in entry
                    else ""
                )
                failures.append(
                    f"{label}: the files arrived as text: type 'array' needs a typeDefinition "
                    f"describing file items (typeDefinition missing){hint}"
                )
                continue
            if not _describes_files(definition):
                failures.append(
                    f"{label}: the files arrived as text: its typeDefinition does not describe "
                    f"file items, found {_short(definition)}"
                )
                continue
        failures.extend(_live_value_failures(job, input_def, value, label, find_file, slots))
    return failures


def _live_value_failures(
    job: Job,
    input_def: InputDef,
    value: Any,
    label: str,
    find_file: FindFile,
    slots: Mapping[str, UploadSlot],
) -> list[str]:
    kind = input_def.type
    if not _fits(kind, value, whole_float_is_int=True):
        return [f"{label}: expected {_LIVE_WORDS[kind]}, found {type(value).__name__} {_short(value)}"]
    if kind == "json_string" and not _parses_as_json(value):
        return [f"{label}: expected a JSON string, found text that does not parse as JSON: " + _short(value)]
    if kind == "file":
        problem = _live_file_problem(job, input_def, value, find_file, slots)
        return [f"{label}: {problem}"] if problem else []
    if kind == "array_files":
        failures = []
        for index, item in enumerate(value):
            problem = _live_file_problem(job, input_def, item, find_file, slots)
            if problem:
                failures.append(f"{label}[{index}]: {problem}")
        return failures
    return []


def _live_file_problem(
    job: Job, input_def: InputDef, url: Any, find_file: FindFile, slots: Mapping[str, UploadSlot]
) -> str | None:
    if not is_url(url):
        return f"expected a file URL from /job/file/upload, found {_short(url)}"
    found = find_file(url)
    if isinstance(found, str):
        return f"the file was never uploaded: {found}"
    if found is not None:
        _, _, data, workspace = found
        if data is None:
            return f"the file {url} was registered by /job/file/upload but never PUT to its presigned URL"
        if workspace != job.workflow.workspace_id:
            return (
                f"403 Forbidden reading {url}: the file is in workspace {workspace}, the workflow in "
                f"workspace {job.workflow.workspace_id}; upload it with this workflow's workflowId "
                "(or its workspaceId)"
            )
    extension = _file_extension(url, found, slots)
    if not _type_allowed(extension, input_def.allowed_file_types):
        allowed = ", ".join(input_def.allowed_file_types)
        shown = f".{extension.lower()}" if extension else "no extension"
        return f"expected a file of type {allowed}, found {shown}"
    return None


# --- documented: the 400 -------------------------------------------------------------------------


def documented_problems(
    job: Job, body: Mapping[str, Any], find_file: FindFile, slots: Mapping[str, UploadSlot]
) -> list[str]:
    """Documented: every problem of an execute body, as NestJS would list them (400)."""
    problems: list[str] = []
    instance = body.get("jobPayloadSchemaInstance")
    inputs = job.version.inputs_by_var
    if not isinstance(instance, dict):
        problems.append(
            "jobPayloadSchemaInstance must be an object mapping input variable names to {value, type}"
        )
        instance = {}
    # The shape of the body is checked as live; the documented service also judged types
    # and values at once (400) instead of failing the job at its Input node.
    problems.extend(structural_problems(job, instance))
    for var, entry in instance.items():
        input_def = inputs.get(var)
        if input_def is None or not isinstance(entry, dict):
            continue
        where = f"jobPayloadSchemaInstance.{var}"
        kind = entry.get("type")
        if kind not in (None, "") and kind != input_def.type:
            problems.append(
                f"{where}.type must be {input_def.type!r} as the workflow declares, found {kind!r}"
            )
        value = entry.get("value")
        if value is not None:
            problems.extend(_documented_value_problems(input_def, value, f"{where}.value", find_file, slots))
    callback = body.get("callbackUrl")
    if callback not in (None, ""):
        problem = _callback_problem(callback)
        if problem:
            problems.append(problem)
    return problems


def _documented_value_problems(
    input_def: InputDef, value: Any, where: str, find_file: FindFile, slots: Mapping[str, UploadSlot]
) -> list[str]:
    kind = input_def.type
    if kind == "json_string" and isinstance(value, str) and not _parses_as_json(value):
        return [f"{where} must be a JSON string, found text that does not parse"]
    if not _fits(kind, value):
        found = repr(value) if kind == "date" else type(value).__name__
        return [f"{where} must be {_DOCUMENTED_WORDS[kind]}, found {found}"]
    if kind == "file":
        return _documented_file_problems(input_def, value, where, find_file, slots)
    if kind == "array_files":
        problems = []
        for index, item in enumerate(value):
            problems.extend(_documented_file_problems(input_def, item, f"{where}[{index}]", find_file, slots))
        return problems
    return []


def _documented_file_problems(
    input_def: InputDef, url: Any, where: str, find_file: FindFile, slots: Mapping[str, UploadSlot]
) -> list[str]:
    if not isinstance(url, str) or not url:
        return [f"{where} must be a file URL (a string), found {type(url).__name__}"]
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return [f"{where} must be a file URL from /job/file/upload or an http(s) URL, found {url!r}"]
    found = find_file(url)
    if isinstance(found, str):
        return [f"{where}: {found}"]
    if found is not None and found[2] is None:
        return [
            f"{where}: the file {url} was registered by /job/file/upload "
            "but never PUT to its presigned URL"
        ]
    extension = _file_extension(url, found, slots)
    if not _type_allowed(extension, input_def.allowed_file_types):
        allowed = ", ".join(input_def.allowed_file_types)
        found_ext = f".{extension.lower()}" if extension else "no extension"
        return [f"{where} ({input_def.display_name}) must be a file of type {allowed}, found {found_ext}"]
    return []


def _callback_problem(url: Any) -> str | None:
    if not isinstance(url, str):
        return "callbackUrl must be a URL string"
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return None
    if parts.scheme == "http" and is_loopback_host(parts.hostname):
        return None  # the sandbox lets tests receive callbacks on a local port
    return f"callbackUrl must be an https URL (http only for loopback addresses), found {url!r}"
