"""Spec templating: a sandboxed Jinja environment that renders only the string leaves of a spec.

Rules (SPEC.md section 1): the document is parsed first and only string leaves are rendered, so a
value can never inject structure; a string that is exactly one ``{{ expression }}`` keeps the
expression's native type; an undefined name is an error naming the file, key path and name;
``secret('NAME')`` reads an environment variable and marks it secret. The service key is never
templated: ``env`` does not hold it and ``secret()`` refuses it.
"""

from __future__ import annotations

import datetime as _dt
import difflib
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from . import redact
from .errors import TemplateError

# "{{ expr }}" and nothing else (the expression itself may not close and reopen a block).
_SINGLE_EXPRESSION = re.compile(r"^\s*\{\{(?P<expr>(?:(?!\}\}|\{\{|\{%|\{#).)*)\}\}\s*$", re.DOTALL)
_TEMPLATE_MARKERS = ("{{", "{%", "{#")
#: The environment variable the runner reads the service key from (runner.py, cli.py).
SERVICE_KEY_VARIABLE = "OPUS_SERVICE_KEY"
_KEY_NEVER_TEMPLATED = (
    f"{SERVICE_KEY_VARIABLE} is the Opus service key, which is never templated (the runner sends "
    "it itself, and never to a workflow); use secret('NAME') with another variable for credentials "
    "a workflow needs"
)


class Namespace(dict):  # type: ignore[type-arg]
    """A mapping exposed to templates under a name (``vars``, ``env``, ``row``...).

    The name makes undefined-key errors readable: "vars has no key 'mnth'; did you mean 'month'?"
    instead of Jinja's "'dict object' has no attribute 'mnth'".
    """

    def __init__(
        self,
        label: str,
        data: Mapping[str, Any] | None = None,
        *,
        listed: bool = True,
        withheld: Mapping[str, str] | None = None,
    ):
        withheld = dict(withheld or {})
        super().__init__({k: v for k, v in (data or {}).items() if k not in withheld})
        self.label = label
        self.listed = listed  # False for env: never list environment variable names in errors
        #: names left out on purpose -> why (what a template asking for one is told)
        self.withheld = withheld


def is_template(text: str) -> bool:
    return any(marker in text for marker in _TEMPLATE_MARKERS)


def contains_template(value: Any) -> bool:
    """True if any string leaf of ``value`` holds a Jinja marker."""
    if isinstance(value, str):
        return is_template(value)
    if isinstance(value, Mapping):
        return any(contains_template(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(contains_template(v) for v in value)
    return False


def _make_undefined_class() -> type:
    from jinja2 import StrictUndefined
    from jinja2.utils import missing

    class SpecUndefined(StrictUndefined):
        @property
        def _undefined_message(self) -> str:
            if self._undefined_hint:  # e.g. the sandbox's "access to attribute ... is unsafe"
                return self._undefined_hint
            obj = self._undefined_obj
            name = self._undefined_name
            if obj is missing:
                return f"{name!r} is undefined"
            if isinstance(obj, Namespace) and name in obj.withheld:
                return f"{obj.label}.{name}: {obj.withheld[name]}"
            if isinstance(obj, Namespace):
                message = f"{obj.label} has no key {name!r}"
                if obj.listed and isinstance(name, str):
                    close = difflib.get_close_matches(name, [str(k) for k in obj], n=1)
                    if close:
                        message += f"; did you mean {close[0]!r}?"
                    elif obj:
                        message += f" (it has: {', '.join(sorted(map(str, obj)))})"
                    else:
                        message += f" ({obj.label} is empty here)"
                return message
            return super()._undefined_message

    return SpecUndefined


def _make_environment(undefined: type) -> Any:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class SpecEnvironment(ImmutableSandboxedEnvironment):
        """Keys of the context mappings win over dict methods: ``vars.items`` is the var."""

        def getattr(self, obj: Any, attribute: str) -> Any:
            if isinstance(obj, Namespace) and attribute in obj:
                return dict.__getitem__(obj, attribute)
            return super().getattr(obj, attribute)

    return SpecEnvironment(undefined=undefined, autoescape=False, keep_trailing_newline=True)


def _plain(value: Any) -> Any:
    """A native result leaves the template world as plain data (no Namespace wrappers)."""
    if isinstance(value, Namespace):
        return dict(value)
    return value


def _utc_now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def _utc_today() -> _dt.date:
    return _utc_now().date()


class Templater:
    """Renders spec values. One per run: compiled templates are cached by their source."""

    def __init__(
        self,
        *,
        globals: Mapping[str, Any] | None = None,
        filters: Mapping[str, Callable[..., Any]] | None = None,
        environ: Mapping[str, str] | None = None,
        missing_secrets_ok: bool = False,
    ) -> None:
        self.environ = dict(os.environ if environ is None else environ)
        # Masked before anything is rendered, even when no client (which registers it) is made.
        redact.register(self.environ.get(SERVICE_KEY_VARIABLE))
        self.missing_secrets_ok = missing_secrets_ok
        #: names of secrets that were not set while ``missing_secrets_ok`` (offline validate)
        self.missing_secrets: set[str] = set()
        #: every secret read so far, by variable name (the journal keeps a keyed hash of each)
        self.secrets_used: dict[str, str] = {}
        #: called with (name, value) the first time a secret is read (the runner journals it)
        self.on_secret: Callable[[str, str], None] | None = None
        self._env = _make_environment(_make_undefined_class())
        self._env.globals.update(
            {"now": _utc_now, "today": _utc_today, "secret": self._secret}
        )
        if globals:
            self._env.globals.update(globals)
        if filters:
            self._env.filters.update(filters)
        self._templates: dict[str, Any] = {}
        self._env_ns: Namespace | None = None
        self._expressions: dict[str, Any] = {}

    def _secret(self, name: str) -> str:
        if not isinstance(name, str) or not name:
            raise ValueError("secret() takes the name of an environment variable, e.g. secret('API_TOKEN')")
        if name == SERVICE_KEY_VARIABLE:
            raise ValueError(f"secret({name!r}): {_KEY_NEVER_TEMPLATED}")
        value = self.environ.get(name)
        if value is None:
            if self.missing_secrets_ok:
                self.missing_secrets.add(name)
                return redact.MASK
            raise ValueError(f"secret({name!r}): the environment variable {name} is not set")
        if not isinstance(value, str) or len(value) < redact.MIN_LENGTH:
            # A shorter value could not be masked (it would mask ordinary words everywhere).
            held = "is empty" if not value else f"has only {len(value)} character{'s' if len(value) > 1 else ''}"
            raise ValueError(
                f"secret({name!r}): the environment variable {name} {held}; a secret needs at least "
                f"{redact.MIN_LENGTH} characters to be masked in output, so set {name} to the real value"
            )
        redact.register(value)
        if self.secrets_used.get(name) != value:
            self.secrets_used[name] = value
            if self.on_secret is not None:
                self.on_secret(name, value)
        return value

    def env_namespace(self) -> Namespace:
        # One shared mapping per run: templates cannot change it (immutable sandbox), and
        # copying the environment for every job of a large foreach is measurable.
        if self._env_ns is None:
            self._env_ns = Namespace(
                "env", self.environ, listed=False, withheld={SERVICE_KEY_VARIABLE: _KEY_NEVER_TEMPLATED}
            )
        return self._env_ns

    # -- rendering ---------------------------------------------------------------------------

    def render(
        self,
        value: Any,
        context: Mapping[str, Any],
        *,
        file: str | Path | None = None,
        key: Sequence[str | int] = (),
    ) -> Any:
        """Render every string leaf of ``value``; other leaves are returned as they are."""
        if isinstance(value, str):
            return self.render_str(value, context, file=file, key=key)
        if isinstance(value, Mapping):
            return {
                k: self.render(v, context, file=file, key=(*key, k)) for k, v in value.items()
            }
        if isinstance(value, list):
            return [
                self.render(v, context, file=file, key=(*key, i)) for i, v in enumerate(value)
            ]
        return value

    def render_str(
        self,
        text: str,
        context: Mapping[str, Any],
        *,
        file: str | Path | None = None,
        key: Sequence[str | int] = (),
    ) -> Any:
        if not is_template(text):
            return text
        from jinja2 import TemplateSyntaxError, UndefinedError
        from jinja2.exceptions import SecurityError
        from jinja2.runtime import Undefined

        try:
            match = _SINGLE_EXPRESSION.match(text)
            if match:
                expr = match.group("expr")
                found = _lookup_path(expr, context)
                if found is not _MISSING:
                    return _plain(found)
                compiled = self._expressions.get(expr)
                if compiled is None:
                    compiled = self._env.compile_expression(expr, undefined_to_none=False)
                    self._expressions[expr] = compiled
                result = compiled(**context)
                if isinstance(result, Undefined):
                    str(result)  # raises UndefinedError with our readable message
                return _plain(result)
            template = self._templates.get(text)
            if template is None:
                template = self._env.from_string(text)
                self._templates[text] = template
            return template.render(**context)
        except UndefinedError as exc:
            raise TemplateError(
                f"undefined name in template {_short(text)}: {exc.message}", file=file, key=key
            ) from None
        except TemplateSyntaxError as exc:
            raise TemplateError(
                f"template syntax error in {_short(text)}: {exc.message}", file=file, key=key
            ) from None
        except SecurityError as exc:
            raise TemplateError(
                f"template {_short(text)} was refused by the sandbox: {exc}; templates may only use "
                "the documented context (vars, env, matrix, row, metadata, now(), today(), secret())",
                file=file,
                key=key,
            ) from None
        except TemplateError:
            raise
        except Exception as exc:  # a filter or global raised: name it with the template
            raise TemplateError(
                f"template {_short(text)} failed: {redact.mask(str(exc)) or type(exc).__name__}",
                file=file,
                key=key,
            ) from None


_MISSING = object()
_DOTTED = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)\s*$")


def _lookup_path(expr: str, context: Mapping[str, Any]) -> Any:
    """``row.customer``-style expressions resolved without Jinja, when every step is a key of a
    context mapping (the common case in large foreach batches). Anything else, including a
    missing key, returns _MISSING and goes through Jinja, which gives the same value or the
    error message.
    """
    match = _DOTTED.match(expr)
    if match is None:
        return _MISSING
    names = match.group(1).split(".")
    current: Any = context.get(names[0], _MISSING)
    if current is _MISSING or len(names) == 1:
        return _MISSING  # a bare name may be a Jinja global (now, today...): let Jinja decide
    for name in names[1:]:
        if not isinstance(current, Namespace) or name not in current:
            return _MISSING
        current = dict.__getitem__(current, name)
    return current


def _short(text: str, limit: int = 80) -> str:
    text = redact.mask(text)
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return repr(text)


def build_context(
    templater: Templater,
    *,
    vars: Mapping[str, Any] | None = None,
    matrix: Mapping[str, Any] | None = None,
    row: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The template context of SPEC.md section 1 (``job``/``result`` come in ``extra``)."""
    context: dict[str, Any] = {
        "vars": Namespace("vars", vars),
        "env": templater.env_namespace(),
        "matrix": Namespace("matrix", matrix),
        "row": Namespace("row", row),
        "metadata": Namespace("metadata", metadata),
    }
    if extra:
        for name, value in extra.items():
            context[name] = Namespace(name, value) if isinstance(value, Mapping) else value
    return context
