"""Built-in value coercion (SPEC.md section 1, "Value coercion"), registered like any plugin.

Registered first, so pluggy calls it last: a plugin's ``opus_coerce_value`` that returns a value
for a field takes that field, and every field it passes on (returns None for) ends here. The
coercers themselves live in the input-type table (:mod:`opus_runner.inputs`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..hookspecs import hookimpl
from ..inputs import (  # noqa: F401  (re-exported: plugins and tests import the coercers from here)
    TYPES,
    describe,
    input_type,
    to_array,
    to_bool,
    to_date,
    to_file_url,
    to_file_urls,
    to_float,
    to_int,
    to_json_string,
    to_object,
    to_str,
)
from ..models import Context, InputField

#: workflow type -> the function that turns a spec value into the value sent
COERCERS: dict[str, Callable[[Any], Any]] = {t.name: t.coerce for t in TYPES}


@hookimpl
def opus_coerce_value(field: InputField, value: Any, ctx: Context) -> Any:
    return input_type(field.type).coerce(value)
