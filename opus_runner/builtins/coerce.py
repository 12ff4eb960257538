"""Built-in value coercion (SPEC.md section 1, "Value coercion"), registered like any plugin.

Registered first, so pluggy calls it last: a plugin's ``opus_coerce_value`` that returns a value
for a field takes that field, and every field it passes on (returns None for) ends here.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from ..hookspecs import hookimpl
from ..models import Context, InputField
from ..redact import mask

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
    text = mask(repr(value))  # before cutting, which could leave a secret's start
    return f"{kind} {text if len(text) <= 60 else text[:57] + '...'}"


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


#: workflow type -> the function that turns a spec value into the value sent
COERCERS: dict[str, Callable[[Any], Any]] = {
    "str": to_str,
    "float": to_float,
    "int": to_int,
    "bool": to_bool,
    "date": to_date,
    "file": to_file_url,
    "array": to_array,
    "array_files": to_file_urls,
    "object": to_object,
    "json_string": to_json_string,
}


@hookimpl
def opus_coerce_value(field: InputField, value: Any, ctx: Context) -> Any:
    coercer = COERCERS.get(field.type)
    if coercer is None:
        # A type this version does not know: send JSON-able values as they are, rather than
        # refusing a workflow the platform added a type to.
        return value
    return coercer(value)
