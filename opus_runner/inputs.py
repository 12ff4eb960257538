"""The input types of the Opus API, described once (SPEC.md section 1; opus-api.md, "Input types").

One :class:`InputType` per type holds every fact the client needs about it: how a spec value is
coerced, the JSON Schema of the value sent, the forms a spec may write (the editor schema), the
placeholder ``opus-run init`` writes, and whether it holds files. Coercion, the payload schema,
the editor schema and the starter spec all read :data:`TYPES`, so adding a type is one entry.

The sandbox (:mod:`opus_runner.sandbox`) keeps its own checks on purpose and does not read this
table: it models the real service, and sharing the client's table would hide a client bug on
both sides of the wire.

No imports from the rest of the package but :mod:`opus_runner.messages`: models.py derives its
``INPUT_TYPES`` and ``FILE_TYPES`` from here.
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .messages import shorten

__all__ = [
    "DATE_PATTERN",
    "FILE_TYPES",
    "INPUT_TYPES",
    "TYPES",
    "InputType",
    "describe",
    "input_type",
    "value_schema",
]

# A calendar date as the API takes it; month and day ranges are checked, leap years are not.
DATE_PATTERN = r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$"

# -- coercion (SPEC.md section 1, "Value coercion") --------------------------------------------

_DATE = re.compile(r"^(\d{4}-\d{2}-\d{2})(?:[T ].*)?$")
_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}


def describe(value: Any) -> str:
    """How a value reads in an error message: its kind and (short) repr."""
    kinds = {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a mapping",
        type(None): "nothing (null)",
        _dt.date: "a date",
        _dt.datetime: "a datetime",
    }
    kind = kinds.get(type(value), type(value).__name__)
    if isinstance(value, (dict, list)):
        return kind
    return f"{kind} {shorten(repr(value), 60, ellipsis='...')}"


def to_str(value: Any) -> str:
    if isinstance(value, bool) or value is None or isinstance(value, (list, dict)):
        raise ValueError(f"expected a string, found {describe(value)}")
    if isinstance(value, (_dt.date, _dt.datetime)):
        return value.isoformat()
    if isinstance(value, float) and value.is_integer():
        return str(int(value)) if abs(value) < 1e16 else str(value)
    return str(value)


def to_float(value: Any) -> int | float:
    if isinstance(value, bool):
        raise ValueError(f"expected a number, found {describe(value)} (booleans are not numbers)")
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        text = value.strip().replace("_", "")
        try:
            number = float(text)
        except ValueError:
            pass
        else:
            if number != number or number in (float("inf"), float("-inf")):
                raise ValueError(f"expected a finite number, found {describe(value)}")
            return int(number) if number.is_integer() and "." not in text and "e" not in text.lower() else number
    raise ValueError(f"expected a number, found {describe(value)}")


def to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"expected a whole number, found {describe(value)} (booleans are not numbers)")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        text = value.strip().replace("_", "")
        try:
            return int(text)
        except ValueError:
            pass
        try:
            number = float(text)
        except ValueError:
            number = None
        if number is not None and number.is_integer() and abs(number) < 2**53:
            return int(number)
    raise ValueError(f"expected a whole number, found {describe(value)}")


def to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise ValueError(f"expected true or false (or yes/no, 1/0), found {describe(value)}")


def to_date(value: Any) -> str:
    if isinstance(value, _dt.datetime):
        return value.date().isoformat()
    if isinstance(value, _dt.date):
        return value.isoformat()
    if isinstance(value, str):
        match = _DATE.match(value.strip())
        if match:
            try:
                return _dt.date.fromisoformat(match.group(1)).isoformat()
            except ValueError:
                raise ValueError(f"expected a real calendar date, found {describe(value)}") from None
    raise ValueError(f"expected a date as YYYY-MM-DD, found {describe(value)}")


def _from_json(value: str, kind: type, name: str) -> Any:
    try:
        parsed = json.loads(value)
    except ValueError:
        raise ValueError(f"expected {name}, found a string that is not JSON: {describe(value)}") from None
    if not isinstance(parsed, kind):
        raise ValueError(f"expected {name}, found a JSON string holding {describe(parsed)}")
    return parsed


def to_array(value: Any) -> list[Any]:
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, str):
        return _from_json(value, list, "a list")
    raise ValueError(f"expected a list, found {describe(value)}")


def to_object(value: Any) -> dict[str, Any]:
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, str):
        return _from_json(value, dict, "a mapping (object)")
    raise ValueError(f"expected a mapping (object), found {describe(value)}")


def _json_default(value: Any) -> Any:
    if isinstance(value, (_dt.date, _dt.datetime)):
        return value.isoformat()  # YAML dates inside a mapping
    raise TypeError(f"{describe(value)} cannot be written as JSON")


def to_json_string(value: Any) -> str:
    """A mapping or list encoded as JSON text, or a string that already holds JSON."""
    if isinstance(value, (Mapping, list, tuple)):
        try:
            return json.dumps(value, ensure_ascii=False, default=_json_default)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"expected JSON-able data, {exc}") from None
    if isinstance(value, str):
        try:
            json.loads(value)
        except ValueError:
            raise ValueError(f"expected JSON text (or a mapping or list), found a string that is not JSON: {describe(value)}") from None
        return value
    raise ValueError(f"expected a mapping, a list or a string holding JSON, found {describe(value)}")


def to_file_url(value: Any) -> str:
    if isinstance(value, str) and value:
        return value
    raise ValueError(f"expected one file, found {describe(value)}")


def to_file_urls(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) and v for v in value):
        return list(value)
    raise ValueError(f"expected a list of files, found {describe(value)}")



def _keep(value: Any) -> Any:
    # A type this version does not know: JSON-able values are sent as they are, rather than
    # refusing a workflow the platform added a type to.
    return value


# -- what a spec may write (the editor schema; SPEC.md's coercion table, templates aside) -------

_NUMERIC = r"^\s*[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?\s*$"
_DATE_TEXT = r"^\s*[0-9]{4}-[0-9]{2}-[0-9]{2}(?:[T ].*)?$"
_PATH: dict[str, Any] = {"type": "string", "minLength": 1}


def _any_case(*words: str) -> str:
    # JSON Schema patterns are ECMA-262 regexes: no inline (?i) flag, so spell each case out.
    spelled = ["".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else re.escape(c) for c in w) for w in words]
    return r"^\s*(?:" + "|".join(spelled) + r")\s*$"


# A mapping shaped like {value, type}, {file} or {files} is read as that form, not as the object
# itself (payload.unwrap), so the plain mapping form excludes those shapes.
_PLAIN_MAPPING: dict[str, Any] = {
    "type": "object",
    "not": {
        "anyOf": [
            {"required": ["value"], "propertyNames": {"enum": ["value", "type"]}},
            {"required": ["file"], "maxProperties": 1},
            {"required": ["files"], "maxProperties": 1},
        ]
    },
}


# -- the table ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputType:
    """Everything the client knows about one input type.

    ``value_schema`` is the JSON Schema of a value as sent (after coercion); ``spec_forms`` the
    JSON Schemas of what a spec may write as the shorthand value; ``placeholder(extension,
    today)`` the spec value ``opus-run init`` writes and ``example(extension)`` the one the
    editor schema shows (``extension``: the first allowed file type, lower case, or None).
    ``file_form`` is the key of the spec's file form (``{file: ...}`` or ``{files: [...]}``) for
    a type that holds files, None for the others. Use :func:`value_schema` for a copy of the
    schema that may be changed.
    """

    name: str
    coerce: Callable[[Any], Any]
    value_schema: Mapping[str, Any]
    spec_forms: tuple[Mapping[str, Any], ...]
    placeholder: Callable[[str | None, _dt.date], Any]
    example: Callable[[str | None], Any]
    file_form: str | None = None
    known: bool = True

    @property
    def is_file(self) -> bool:
        """Whether values of this type are files (uploaded from local paths, globs or URLs)."""
        return self.file_form is not None

    @property
    def one_file(self) -> bool:
        """Whether it takes exactly one file (``file``), not a list of them."""
        return self.file_form == "file"


def _constant(value: Any) -> Callable[..., Any]:
    return lambda *_: copy.deepcopy(value)


def _one_file(extension: str | None, *_: Any) -> dict[str, str]:
    return {"file": f"path/to/file.{extension or 'pdf'}"}


def _many_files(extension: str | None, *_: Any) -> dict[str, list[str]]:
    return {"files": [f"path/to/*.{extension or 'csv'}"]}


#: Every input type of the Opus API, in the order the docs list them.
TYPES: tuple[InputType, ...] = (
    InputType(
        "str",
        to_str,
        {"type": "string"},
        ({"type": ["string", "number"]},),
        placeholder=_constant("TODO"),
        example=_constant("text"),
    ),
    InputType(
        "float",
        to_float,
        {"type": "number"},
        ({"type": "number"}, {"type": "string", "pattern": _NUMERIC}),
        placeholder=_constant(0),
        example=_constant(0),
    ),
    InputType(
        "int",
        to_int,
        {"type": "integer"},
        ({"type": "integer"}, {"type": "string", "pattern": r"^\s*[-+]?[0-9][0-9_]*(?:\.0*)?\s*$"}),
        placeholder=_constant(0),
        example=_constant(0),
    ),
    InputType(
        "bool",
        to_bool,
        {"type": "boolean"},
        (
            {"type": "boolean"},
            {"enum": [0, 1]},
            {"type": "string", "pattern": _any_case("true", "false", "yes", "no", "on", "off", "1", "0")},
        ),
        placeholder=_constant(False),
        example=_constant(False),
    ),
    InputType(
        "date",
        to_date,
        {"type": "string", "pattern": DATE_PATTERN},
        ({"type": "string", "pattern": _DATE_TEXT},),
        placeholder=lambda _extension, today: today,
        example=_constant("2026-01-31"),
    ),
    InputType(
        "file",
        to_file_url,
        {"type": "string", "minLength": 1},
        (_PATH,),
        placeholder=_one_file,
        example=_one_file,
        file_form="file",
    ),
    InputType(
        "array",
        to_array,
        {"type": "array"},
        ({"type": "array"}, {"type": "string", "pattern": r"^\s*\["}),
        placeholder=_constant([]),
        example=_constant([]),
    ),
    InputType(
        "array_files",
        to_file_urls,
        {"type": "array", "items": {"type": "string", "minLength": 1}},
        (_PATH, {"type": "array", "items": _PATH, "minItems": 1}),
        placeholder=_many_files,
        example=_many_files,
        file_form="files",
    ),
    InputType(
        "object",
        to_object,
        {"type": "object"},
        (_PLAIN_MAPPING, {"type": "string", "pattern": r"^\s*\{"}),
        placeholder=_constant({}),
        example=_constant({}),
    ),
    InputType(
        "json_string",
        to_json_string,
        # JSON text; coercion has parsed or produced it, so only its kind is checked here.
        {"type": "string", "minLength": 1},
        ({"type": "array"}, {"type": "object"}, {"type": "string", "minLength": 1}),
        placeholder=_constant({}),
        example=_constant({}),
    ),
)

_BY_NAME: dict[str, InputType] = {t.name: t for t in TYPES}
#: The names of the known input types.
INPUT_TYPES: tuple[str, ...] = tuple(_BY_NAME)
#: The input types that hold files: one file, or a list of files.
FILE_TYPES: frozenset[str] = frozenset(t.name for t in TYPES if t.is_file)


def input_type(name: str) -> InputType:
    """The entry for ``name``; a type this version does not know (or ``""``, none stated) gets
    one that keeps the value as written, checks only its presence and writes ``"TODO"``."""
    known = _BY_NAME.get(name)
    if known is not None:
        return known
    return InputType(
        name,
        _keep,
        {},  # let the server judge the value
        ({},),
        placeholder=_constant("TODO"),
        example=_constant(""),
        known=False,
    )


def value_schema(name: str) -> dict[str, Any]:
    """A fresh copy of the JSON Schema of a value of type ``name`` as sent (``{}`` if unknown)."""
    return copy.deepcopy(dict(input_type(name).value_schema))
