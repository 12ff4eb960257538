"""Read a spec file (YAML or JSON), dispatch on ``apiVersion`` and check it against the spec schema.

The result is a :class:`Spec`: the document as written (templates are rendered later, by
``templating.py``), plus what error messages need to point at the right place: the file and the
line where every key starts.

Reading is defensive because spec files come from anywhere: the size is checked before the file
is read, YAML aliases cannot expand into a "billion laughs", duplicate keys are refused instead of
silently keeping the last one, and every problem is reported in one pass with its file, line and
key path.

YAML is read with YAML 1.2 scalars rather than PyYAML's YAML 1.1 defaults: only ``true``/``false``
are booleans (so ``on:`` in a notifier, or the country code ``no``, stay strings), ``010`` is the
string ``"010"`` rather than octal 8, and ``1:30`` is not sexagesimal 90. Dates stay
``datetime.date``.
"""

from __future__ import annotations

import datetime
import glob
import hashlib
import json
import os
import re
import stat
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from .durations import DURATION_HELP, parse_duration
from .paths import display_path
from .errors import SpecError, UsageError, ValidationFailed, format_key
from .messages import close_match as _close_match
from .messages import extra_keys as _extra_keys
from .messages import one_line as _one_line
from .messages import shorten

__all__ = [
    "MAX_NESTING",
    "MAX_SPEC_BYTES",
    "MAX_YAML_NODES",
    "SPEC_SUFFIXES",
    "SUPPORTED_API_VERSIONS",
    "Spec",
    "declares_spec",
    "find_specs",
    "load_data",
    "load_spec",
    "spec_schema",
]

SUPPORTED_API_VERSIONS: tuple[str, ...] = ("opus-runner/v1",)
MAX_SPEC_BYTES = 1 * 1024 * 1024  # larger files are refused before parsing
MAX_YAML_NODES = 100_000  # expanded node count (alias bombs)
MAX_NESTING = 100  # lists and mappings inside each other: deeper is refused, not a RecursionError
#: File extensions read as specs, and the parser each one selects.
SPEC_SUFFIXES: tuple[str, ...] = (".yaml", ".yml", ".json")

_SCHEMA_FILES = {"opus-runner/v1": "spec-v1.json"}
_GLOB_CHARS = re.compile(r"[*?\[]")
_MB = 1024 * 1024

Key = tuple[str | int, ...]


# ---------------------------------------------------------------------------------------------
# The Spec
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """One loaded, schema-checked spec file. Templates in ``data`` are not rendered yet."""

    path: Path  # absolute
    data: dict[str, Any] = field(compare=False, repr=False)
    api_version: str = SUPPORTED_API_VERSIONS[0]
    digest: str = ""  # sha256 hex of the file bytes
    # key path -> 1-based line where that key (or list item) starts; empty when unknown
    lines: Mapping[Key, int] = field(default_factory=dict, compare=False, repr=False)

    @property
    def name(self) -> str:
        """``metadata.name``: names the run's state and output files."""
        return str(self.data["metadata"]["name"])

    @property
    def dir(self) -> Path:
        """The spec's folder: relative paths in the spec are relative to it."""
        return self.path.parent

    def line_of(self, key: Sequence[str | int]) -> int | None:
        """The line where ``key`` starts, else where its nearest ancestor starts, else None."""
        return _line_of(self.lines, key)

    def error(self, message: str, key: Sequence[str | int] = ()) -> SpecError:
        """A :class:`SpecError` about ``key`` in this spec, with the file and line filled in."""
        return SpecError(message, file=display_path(self.path), key=tuple(key), line=self.line_of(key))


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def load_spec(path: str | Path) -> Spec:
    """Read, parse and check one spec file.

    Raises :class:`SpecError` for one problem and :class:`ValidationFailed` listing every
    problem when there are several.
    """
    absolute = Path(os.path.abspath(os.path.expanduser(str(path))))
    display = display_path(absolute)
    if absolute.is_dir():
        raise SpecError("is a folder, not a spec file; name a spec file inside it", file=display)
    suffix = absolute.suffix.lower()
    if suffix not in SPEC_SUFFIXES:
        found = f"a {suffix!r} file" if suffix else "a file without an extension"
        raise SpecError(
            f"cannot read {found} as a spec; spec files end in .yaml, .yml or .json",
            file=display,
        )
    try:
        info = absolute.stat()
    except FileNotFoundError:
        raise SpecError("the spec file does not exist; check the path", file=display) from None
    except OSError as exc:
        raise SpecError(f"cannot read the spec file: {exc.strerror or exc}", file=display) from None
    if not stat.S_ISREG(info.st_mode):
        # A FIFO or device would block or never end; specs are regular files.
        raise SpecError("is not a regular file; name a spec file", file=display)
    # Checked before reading anything, so a huge (or sparse) file costs nothing.
    if info.st_size > MAX_SPEC_BYTES:
        raise _too_big(info.st_size, display)

    try:
        raw = _read_limited(absolute)
    except OSError as exc:
        raise SpecError(f"cannot read the spec file: {exc.strerror or exc}", file=display) from None
    if len(raw) > MAX_SPEC_BYTES:  # the file grew after stat()
        raise _too_big(len(raw), display)
    digest = hashlib.sha256(raw).hexdigest()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SpecError(
            f"the spec file is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
            "save it as UTF-8",
            file=display,
        ) from None

    is_json = suffix == ".json"
    if is_json:
        data, lines, problems = _parse_json(text, display)
    else:
        data, lines, problems = _parse_yaml(text, display)
    _raise_all(problems)

    if data is None:
        raise SpecError(
            "the spec file is empty; write a spec (`opus-run init WORKFLOW_ID` starts one)",
            file=display,
        )
    if not isinstance(data, dict):
        raise SpecError(
            f"expected a mapping at the top level, found {_describe(data)}",
            file=display,
            line=lines.get(()),
        )

    api_version = _check_api_version(data, display, lines, is_json)
    problems = [
        SpecError(message, file=display, key=key, line=_line_of(lines, key))
        for key, message in _schema_problems(data, api_version)
    ]
    _raise_all(_sorted_problems(problems))

    return Spec(
        path=absolute,
        data=data,
        api_version=api_version,
        digest=digest,
        lines=MappingProxyType(dict(lines)),
    )


def _read_limited(path: Path) -> bytes:
    """The file's bytes, never more than one byte past the limit (the file may grow after stat)."""
    with open(path, "rb") as handle:
        return handle.read(MAX_SPEC_BYTES + 1)


def _too_big(size: int, display: str) -> SpecError:
    shown = f"{size / _MB:.1f} MB"
    if shown == f"{MAX_SPEC_BYTES / _MB:.1f} MB":  # just over the limit: "1.0 MB" would read as fine
        shown = f"{size} bytes"
    limit = f"{MAX_SPEC_BYTES // _MB} MB" if MAX_SPEC_BYTES % _MB == 0 else f"{MAX_SPEC_BYTES} bytes"
    return SpecError(
        f"spec file is {shown}; specs are limited to {limit} — put large data in a foreach file",
        file=display,
    )


def _raise_all(problems: Sequence[SpecError]) -> None:
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise ValidationFailed(problems)


def _sorted_problems(problems: list[SpecError]) -> list[SpecError]:
    # By position in the file; problems without a line keep their order, after the rest.
    return sorted(problems, key=lambda e: (e.line is None, e.line or 0))


def _line_of(lines: Mapping[Key, int], key: Sequence[str | int]) -> int | None:
    path = tuple(key)
    for end in range(len(path), -1, -1):
        line = lines.get(path[:end])
        if line is not None:
            return line
    return None


def _check_api_version(
    data: dict[str, Any], display: str, lines: Mapping[Key, int], is_json: bool
) -> str:
    supported = ", ".join(SUPPORTED_API_VERSIONS)
    if "apiVersion" not in data:
        example = (
            f'"apiVersion": "{SUPPORTED_API_VERSIONS[0]}"'
            if is_json
            else f"apiVersion: {SUPPORTED_API_VERSIONS[0]}"
        )
        raise SpecError(
            f"missing required key 'apiVersion'; add `{example}` at the top of the file",
            file=display,
            line=lines.get(()),
        )
    version = data["apiVersion"]
    if version not in SUPPORTED_API_VERSIONS:
        raise SpecError(
            f"unsupported apiVersion {_show(version)}; this opus-runner supports {supported} "
            "— change apiVersion, or upgrade opus-runner if the spec needs a newer format",
            file=display,
            key=("apiVersion",),
            line=_line_of(lines, ("apiVersion",)),
        )
    return str(version)


# ---------------------------------------------------------------------------------------------
# YAML
# ---------------------------------------------------------------------------------------------

_Base: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when available: faster


class _SpecLoader(_Base):  # type: ignore[misc, valid-type]
    """A safe loader with YAML 1.2 booleans and integers (see the module docstring)."""


_BOOL = "tag:yaml.org,2002:bool"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_STR = "tag:yaml.org,2002:str"
_MERGE = "tag:yaml.org,2002:merge"

_SpecLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in (_BOOL, _INT, _FLOAT)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_SpecLoader.add_implicit_resolver(
    _BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_SpecLoader.add_implicit_resolver(
    _INT, re.compile(r"^(?:[-+]?(?:0|[1-9][0-9_]*)|0x[0-9a-fA-F_]+)$"), list("-+0123456789")
)
_SpecLoader.add_implicit_resolver(
    _FLOAT,
    re.compile(
        r"""^(?:[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?
            |[-+]?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
            |[-+]?\.(?:inf|Inf|INF)
            |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


class _TooManyNodes(Exception):
    def __init__(self, shared: bool) -> None:
        self.shared = shared


class _Recursive(Exception):
    def __init__(self, node: yaml.Node) -> None:
        self.node = node


class _TooDeep(Exception):
    def __init__(self, line: int | None = None) -> None:
        self.line = line


def _too_deep_message(what: str) -> str:
    return f"{what} nests lists and mappings more than {MAX_NESTING} levels deep; flatten it"


def _parse_yaml(text: str, display: str) -> tuple[Any, dict[Key, int], list[SpecError]]:
    loader = _SpecLoader(text)
    try:
        root = _single_node(loader, text, display, syntax="YAML syntax error", other="YAML error")
        if root is None:
            return None, {}, []

        try:
            _expanded_size(root)
        except _TooManyNodes as exc:
            if exc.shared:
                message = f"YAML aliases expand to more than {MAX_YAML_NODES} nodes; refusing to load it"
            else:
                message = (
                    f"the spec holds more than {MAX_YAML_NODES} values; "
                    "put large data in a foreach file"
                )
            raise SpecError(message, file=display) from None
        except _Recursive as exc:
            raise SpecError(
                "a YAML alias refers to the node that contains it (a recursive structure); "
                "specs must be trees",
                file=display,
                line=exc.node.start_mark.line + 1,
            ) from None
        except _TooDeep as exc:
            raise SpecError(_too_deep_message("the spec"), file=display, line=exc.line) from None

        lines, found = _walk_nodes(root)
        problems = [SpecError(m, file=display, key=k, line=ln) for k, m, ln in found]
        if problems:
            return None, lines, _sorted_problems(problems)

        return _construct(loader, root, text, display, "YAML error"), lines, []
    finally:
        loader.dispose()


def _char_at(text: str, line: int, column: int) -> str:
    rows = text.split("\n", line + 1)
    return rows[line][column : column + 1] if line < len(rows) else ""


def _single_node(loader: Any, text: str, display: str, *, syntax: str, other: str) -> yaml.Node | None:
    """The document's node tree (nothing is built yet), or one sentence on why YAML cannot read it."""
    try:
        return loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        raise _yaml_error(exc, text, display, syntax) from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{other}: {_one_line(exc)}", file=display) from None


def _construct(loader: Any, root: yaml.Node, text: str, display: str, what: str) -> Any:
    """Build the Python data of a checked node tree; a value YAML cannot build (a giant number,
    a bad timestamp) is one sentence naming its line."""
    try:
        return loader.construct_document(root)
    except yaml.MarkedYAMLError as exc:
        raise _yaml_error(exc, text, display, what) from None
    except (yaml.YAMLError, ValueError, TypeError, OverflowError) as exc:
        line = _find_bad_scalar(loader, root)
        where = f" at line {line}" if line else ""
        raise SpecError(
            f"cannot read a value{where}: {_value_problem(exc)}; quote it to keep it as text",
            file=display,
            line=line,
        ) from None


def _yaml_error(exc: yaml.MarkedYAMLError, text: str, display: str, what: str) -> SpecError:
    mark = exc.problem_mark or exc.context_mark
    problem = (exc.problem or exc.context or "invalid YAML").strip()
    if mark is not None and _char_at(text, mark.line, mark.column) == "\t":
        problem += " (a tab; indent YAML with spaces)"
    if exc.context and exc.context_mark is not None and mark is not None:
        if exc.context_mark.line != mark.line:
            problem += f" ({exc.context.strip()} at line {exc.context_mark.line + 1})"
    if mark is None:
        return SpecError(f"{what}: {problem}", file=display)
    line, column = mark.line + 1, mark.column + 1
    return SpecError(f"{what} at line {line}, column {column}: {problem}", file=display, line=line)


def _value_problem(exc: BaseException) -> str:
    if isinstance(exc, ValueError) and "integer string conversion" in str(exc):
        # Python's own words advise sys.set_int_max_str_digits(), which a spec author cannot call.
        return "a number has more than 4300 digits"
    return _one_line(exc)


def _children(node: yaml.Node) -> Iterator[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            yield key
            yield value
    elif isinstance(node, yaml.SequenceNode):
        yield from node.value


def _expanded_size(root: yaml.Node, limit: int | None = MAX_YAML_NODES) -> tuple[int, int]:
    """How many nodes the document has once every alias is expanded, and how many it has as
    written; more than ``limit`` expanded nodes, or nesting deeper than MAX_NESTING, is refused.

    Memoised on node identity (an alias is the same node object as its anchor), so a
    billion-laughs document is measured in a few thousand steps rather than expanded.
    Iterative, so deep nesting cannot exhaust the Python stack.
    """
    memo: dict[int, int] = {}
    heights: dict[int, int] = {}
    active: set[int] = set()  # the current depth-first path: an alias to one of these is a cycle
    shared = False
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        nid = id(node)
        if finished:
            total = 1 + sum(memo[id(child)] for child in _children(node))
            height = 1 + max((heights[id(child)] for child in _children(node)), default=0)
            active.discard(nid)
            memo[nid] = total
            heights[nid] = height
            if limit is not None and total > limit:
                raise _TooManyNodes(shared)
            if height > MAX_NESTING:
                raise _TooDeep(node.start_mark.line + 1)
            continue
        if nid in memo:
            shared = True
            continue
        if nid in active:
            raise _Recursive(node)
        active.add(nid)
        stack.append((node, True))
        for child in _children(node):
            cid = id(child)
            if cid in active:
                raise _Recursive(child)
            if cid in memo:
                shared = True
            else:
                stack.append((child, False))
    return memo[id(root)], len(memo)


def _walk_nodes(root: yaml.Node) -> tuple[dict[Key, int], list[tuple[Key, str, int]]]:
    """Lines of every key path, and the problems of mapping keys (duplicates, non-text keys).

    Runs after :func:`_expanded_size`, so following aliases here is bounded.
    """
    lines: dict[Key, int] = {}
    problems: list[tuple[Key, str, int]] = []
    checked: set[int] = set()  # mapping nodes whose keys were checked (aliases repeat them)
    lines[()] = root.start_mark.line + 1
    stack: list[tuple[yaml.Node, Key]] = [(root, ())]
    while stack:
        node, path = stack.pop()
        if isinstance(node, yaml.SequenceNode):
            # Reversed, so items are visited in order; nothing depends on it but tidy output.
            for index in range(len(node.value) - 1, -1, -1):
                item = node.value[index]
                lines.setdefault(path + (index,), item.start_mark.line + 1)
                stack.append((item, path + (index,)))
            continue
        if not isinstance(node, yaml.MappingNode):
            continue
        check = id(node) not in checked
        checked.add(id(node))
        seen: dict[str, yaml.Node] = {}
        merges: list[yaml.Node] = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                if isinstance(value_node, yaml.SequenceNode):
                    merges.extend(value_node.value)
                else:
                    merges.append(value_node)
                continue
            line = key_node.start_mark.line + 1
            if not (isinstance(key_node, yaml.ScalarNode) and key_node.tag == _STR):
                if check:
                    problems.append((path, _bad_key_message(key_node), line))
                continue
            name = key_node.value
            if name in seen:
                if check:
                    first = seen[name].start_mark.line + 1
                    problems.append(
                        (
                            path + (name,),
                            f"duplicate key {name!r} (first at line {first}, again at line {line}); "
                            "keep one of them",
                            line,
                        )
                    )
                continue
            seen[name] = key_node
            # Explicit keys are recorded before merged ones are visited, and win over them.
            lines[path + (name,)] = line
            stack.append((value_node, path + (name,)))
        # A merged mapping's keys live at this path too, unless given explicitly; the first
        # merge source wins, so they are pushed in reverse (the stack pops the first one first).
        for source in reversed(merges):
            if isinstance(source, yaml.MappingNode):
                stack.append((_without_keys(source, seen), path))
    return lines, problems


def _without_keys(node: yaml.MappingNode, explicit: Mapping[str, yaml.Node]) -> yaml.MappingNode:
    kept = [
        (k, v)
        for k, v in node.value
        if not (isinstance(k, yaml.ScalarNode) and k.tag == _STR and k.value in explicit)
    ]
    copy = yaml.MappingNode(node.tag, kept, node.start_mark, node.end_mark)
    return copy


def _bad_key_message(key_node: yaml.Node) -> str:
    if isinstance(key_node, yaml.MappingNode):
        found = "a mapping"
    elif isinstance(key_node, yaml.SequenceNode):
        found = "a list"
    else:
        kinds = {
            _INT: "the number",
            _FLOAT: "the number",
            _BOOL: "the boolean",
            "tag:yaml.org,2002:timestamp": "the date",
            "tag:yaml.org,2002:null": "null",
        }
        kind = kinds.get(key_node.tag, "a value tagged " + str(key_node.tag))
        found = f"{kind} {key_node.value}".strip() if kind != "null" else "an empty (null) key"
    hint = f"; quote it (\"{key_node.value}\")" if isinstance(key_node, yaml.ScalarNode) else ""
    return f"keys must be text, found {found}{hint}"


def _find_bad_scalar(loader: Any, root: yaml.Node) -> int | None:
    """The line of the first scalar the constructor cannot build (e.g. the date 2026-13-45)."""
    stack = [root]
    seen: set[int] = set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.ScalarNode):
            try:
                loader.construct_object(node)
            except Exception:  # noqa: BLE001 - any failure marks the culprit
                return int(node.start_mark.line) + 1
        else:
            stack.extend(reversed(list(_children(node))))
    return None


def _too_deep(data: Any) -> bool:
    """True if lists and mappings nest more than MAX_NESTING deep (iterative: any depth is safe)."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > MAX_NESTING:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


# ---------------------------------------------------------------------------------------------
# Data files: vars files, foreach data, sandbox fixtures
# ---------------------------------------------------------------------------------------------


def load_data(text: str, *, display: str, json_format: bool = False) -> Any:
    """One YAML or JSON document of data, read with the protections of spec files.

    YAML 1.2 scalars, as in specs (a vars file means what the same ``vars:`` in a spec means);
    aliases may not add more than MAX_YAML_NODES values nor refer to themselves; nesting deeper
    than MAX_NESTING is refused. The document's own size is the caller's to bound. Raises
    :class:`SpecError` with ``file=display`` and the line when known; callers re-word it.
    """
    if json_format:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpecError(f"not valid JSON: {exc.msg} at line {exc.lineno}", file=display, line=exc.lineno) from None
        except ValueError as exc:  # e.g. an integer of more than 4300 digits
            raise SpecError(f"cannot read a value: {_value_problem(exc)}; quote it to keep it as text", file=display) from None
        except RecursionError:
            raise SpecError(_too_deep_message("the file"), file=display) from None
        if _too_deep(data):
            raise SpecError(_too_deep_message("the file"), file=display)
        return data
    loader = _SpecLoader(text)
    try:
        root = _single_node(loader, text, display, syntax="not valid YAML", other="not valid YAML")
        if root is None:
            return None
        try:
            expanded, written = _expanded_size(root, limit=None)
        except _Recursive as exc:
            raise SpecError(
                "a YAML alias refers to the node that contains it (a recursive structure)",
                file=display,
                line=exc.node.start_mark.line + 1,
            ) from None
        except _TooDeep as exc:
            raise SpecError(_too_deep_message("the file"), file=display, line=exc.line) from None
        # Only what aliases add counts: a long file of plain rows is fine, a "billion laughs" is not.
        if expanded - written > MAX_YAML_NODES:
            raise SpecError(
                f"YAML aliases expand to more than {MAX_YAML_NODES} values; refusing to load it",
                file=display,
            )
        return _construct(loader, root, text, display, "not valid YAML")
    finally:
        loader.dispose()


# ---------------------------------------------------------------------------------------------
# JSON
# ---------------------------------------------------------------------------------------------


def _parse_json(text: str, display: str) -> tuple[Any, dict[Key, int], list[SpecError]]:
    if not text.strip():
        return None, {}, []
    duplicates: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in items:
            if key in out:
                duplicates.append(key)
            out[key] = value
        return out

    def constant(name: str) -> Any:
        raise ValueError(f"{name} is not valid JSON; write a number or a string")

    try:
        data = json.loads(text, object_pairs_hook=pairs, parse_constant=constant)
    except json.JSONDecodeError as exc:
        line = _json_error_line(text, exc)
        raise SpecError(_json_error_message(text, exc), file=display, line=line) from None
    except ValueError as exc:
        raise SpecError(f"JSON syntax error: {_value_problem(exc)}", file=display) from None
    except RecursionError:
        raise SpecError(_too_deep_message("the spec"), file=display) from None
    if _too_deep(data):
        raise SpecError(_too_deep_message("the spec"), file=display)

    # Lines come from composing the same text with the YAML composer (JSON is YAML); when it
    # cannot (rare: very long keys, deep nesting), errors simply carry no line.
    lines: dict[Key, int] = {}
    found: list[tuple[Key, str, int]] = []
    loader = _SpecLoader(text)
    try:
        root = loader.get_single_node()
        if root is not None:
            lines, found = _walk_nodes(root)
    except yaml.YAMLError:
        lines, found = {}, []
    finally:
        loader.dispose()
    problems = [SpecError(m, file=display, key=k, line=ln) for k, m, ln in found]
    if duplicates and not problems:
        problems = [
            SpecError(f"duplicate key {name!r}; keep one of them", file=display)
            for name in dict.fromkeys(duplicates)
        ]
    return data, lines, _sorted_problems(problems)


def _json_error_line(text: str, exc: json.JSONDecodeError) -> int:
    comma = _trailing_comma(text, exc)
    return text.count("\n", 0, comma) + 1 if comma is not None else exc.lineno


def _trailing_comma(text: str, exc: json.JSONDecodeError) -> int | None:
    """The offset of a comma directly before a closing bracket, when that caused the error."""
    if exc.msg not in ("Expecting property name enclosed in double quotes", "Expecting value"):
        return None
    before = text[: exc.pos].rstrip()
    after = text[exc.pos : exc.pos + 1]
    if before.endswith(",") and after in ("}", "]"):
        return len(before) - 1
    return None


def _json_error_message(text: str, exc: json.JSONDecodeError) -> str:
    comma = _trailing_comma(text, exc)
    if comma is not None:
        line = text.count("\n", 0, comma) + 1
        column = comma - (text.rfind("\n", 0, comma) + 1) + 1
        return (
            f"JSON syntax error at line {line}, column {column}: trailing comma? "
            "JSON allows no comma after the last item; remove it"
        )
    problem = exc.msg[:1].lower() + exc.msg[1:]
    char = text[exc.pos : exc.pos + 1]
    if char in ("/", "#"):
        problem += " (JSON has no comments; write the spec in YAML to use them)"
    elif char == "'":
        problem += " (JSON strings need double quotes)"
    return f"JSON syntax error at line {exc.lineno}, column {exc.colno}: {problem}"


# ---------------------------------------------------------------------------------------------
# Schema
# ---------------------------------------------------------------------------------------------


@lru_cache(maxsize=None)
def _schema(api_version: str) -> dict[str, Any]:
    from importlib import resources

    name = _SCHEMA_FILES.get(api_version)
    if name is None:
        raise UsageError(
            f"unknown spec apiVersion {api_version!r}; supported: {', '.join(SUPPORTED_API_VERSIONS)}"
        )
    text = (resources.files(__package__ or "opus_runner") / "schemas" / name).read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def spec_schema(api_version: str = SUPPORTED_API_VERSIONS[0]) -> dict[str, Any]:
    """The JSON Schema (Draft 2020-12) of the spec format, as shipped; a fresh copy per call."""
    return json.loads(json.dumps(_schema(api_version)))


@lru_cache(maxsize=None)
def _validator(api_version: str) -> Any:
    import jsonschema

    return jsonschema.Draft202012Validator(_schema(api_version))


def _schema_problems(data: dict[str, Any], api_version: str) -> list[tuple[Key, str]]:
    """Every schema violation as (key path, human sentence), de-duplicated, in schema order."""
    out: dict[tuple[Key, str], None] = {}
    schema = _schema(api_version)
    for error in _validator(api_version).iter_errors(data):
        for key, message in _humanise(error, schema):
            out[(key, message)] = None
    return list(out)


_TYPE_NAMES = {
    "object": "a mapping",
    "array": "a list",
    "string": "a string",
    "number": "a number",
    "integer": "a whole number",
    "boolean": "true or false",
    "null": "null",
}

_MISSING_HINTS = {
    ("kind",): "add `kind: Job`",
    ("metadata",): "add a metadata mapping with a name, e.g. `metadata: {name: my-job}`",
    ("metadata", "name"): "add a name of lower-case letters, digits, '.', '_' or '-'",
    ("workflow",): "add the workflow to run, e.g. `workflow: {id: <workflow id>}`",
    ("workflow", "id"): "set it to the id of the Opus workflow to run",
    ("callback", "url"): "set it to the https URL Opus should POST the result to",
    ("outputs", "type"): "set it to an output type such as stdout, json or ndjson",
    ("notify", "type"): "set it to a notifier type such as webhook or log",
}

_NOT_IN_V1 = {
    "concurrency": "set it with --concurrency or in opus-runner.toml instead",
}


def _humanise(error: Any, schema: dict[str, Any]) -> list[tuple[Key, str]]:
    """Turn one jsonschema error into (key path, sentence) pairs users can act on."""
    path: Key = tuple(error.absolute_path)
    validator = error.validator
    instance = error.instance
    sub_schema = error.schema if isinstance(error.schema, dict) else {}

    if "propertyNames" in error.absolute_schema_path:
        # jsonschema reports a bad property *name* at the object's path, the name as instance.
        message = sub_schema.get("patternErrorMessage") or "is not an allowed name"
        return [(path + (instance,), f"name {instance!r} {message}")]

    if validator == "additionalProperties":
        return [
            (path + (key,), _unknown_key_message(key, path, sub_schema, schema))
            for key in _extra_keys(instance, sub_schema)
        ]

    if validator == "required":
        results = []
        allowed = list(sub_schema.get("properties", {}))
        # A misspelt key ("uri" for "url") is reported once, as an unknown key with a suggestion.
        misspelt = {_close_match(str(k), allowed) for k in _extra_keys(instance, sub_schema)}
        for name in error.validator_value:
            if isinstance(instance, dict) and name not in instance and name not in misspelt:
                full = path + (name,)
                message = f"missing required key {format_key(full)!r}"
                hint = _MISSING_HINTS.get(tuple(p for p in full if isinstance(p, str)))
                results.append((path, f"{message}; {hint}" if hint else message))
        return results

    if validator == "type":
        return [(path, _type_message(error.validator_value, instance))]

    if validator == "const":
        if path == ("kind",):
            return [(path, f"must be 'Job', the only kind in opus-runner/v1 (found {_describe(instance)})")]
        return [(path, f"must be {_show(error.validator_value)} (found {_describe(instance)})")]

    if validator == "enum":
        allowed = [str(v) for v in error.validator_value]
        message = f"must be one of {', '.join(allowed)} (found {_describe(instance)})"
        if isinstance(instance, str):
            close = _close_match(instance, allowed)
            if close:
                message += f"; did you mean {close!r}?"
        return [(path, message)]

    if validator == "pattern":
        message = sub_schema.get("patternErrorMessage") or f"must match the pattern {error.validator_value}"
        return [(path, f"{message} (found {_show(instance)})")]

    if validator == "minLength":
        if error.validator_value == 1:
            return [(path, "must not be empty")]
        return [(path, f"must be at least {error.validator_value} characters long")]

    if validator == "maxLength":
        return [
            (path, f"must be at most {error.validator_value} characters long (found {len(instance)} characters)")
        ]

    if validator == "minimum":
        return [(path, f"must be {error.validator_value} or more (found {_show(instance)})")]

    if validator == "minItems":
        if error.validator_value == 1:
            return [(path, "must list at least one value (found an empty list)")]
        return [(path, f"must list at least {error.validator_value} values (found {len(instance)})")]

    if validator == "dependentRequired":
        results = []
        for key, needed in error.validator_value.items():
            if isinstance(instance, dict) and key in instance:
                for other in needed:
                    if other not in instance:
                        message = f"{key!r} applies only together with {other!r}; add {other!r} or remove {key!r}"
                        results.append((path + (key,), message))
        return results

    if validator == "uniqueItems":
        return [(path, "lists the same value more than once; keep one of each")]

    if validator in ("anyOf", "oneOf"):
        if sub_schema == schema["$defs"]["duration"]:
            return [(path, _duration_message(instance))]
        if "errorMessage" in sub_schema:
            # The schema's own sentence (VS Code shows the same one in the editor).
            return [(path, f"{sub_schema['errorMessage']}, found {_describe(instance)}")]
        if path == ("foreach",):
            if isinstance(instance, dict) and "file" in instance and "rows" in instance:
                return [(path, "give either 'file' or 'rows', not both")]
            return [
                (path, "needs 'file' (a CSV, JSON or YAML file of rows) or 'rows' (a list of mappings)")
            ]
        return _humanise_alternatives(error, schema)

    return [(path, _one_line(error.message))]


def _humanise_alternatives(error: Any, schema: dict[str, Any]) -> list[tuple[Key, str]]:
    """An anyOf/oneOf failure: say which types fit, or explain the closest alternative."""
    import jsonschema

    path: Key = tuple(error.absolute_path)
    branches = error.context or []
    at_top = [e for e in branches if tuple(e.absolute_path) == path and e.validator == "type"]
    if branches and len(at_top) == len(branches):
        expected: list[str] = []
        for branch in at_top:
            value = branch.validator_value
            expected.extend([value] if isinstance(value, str) else value)
        return [(path, _type_message(list(dict.fromkeys(expected)), error.instance))]
    best = jsonschema.exceptions.best_match(branches)
    return _humanise(best, schema) if best is not None else [(path, _one_line(error.message))]


def _unknown_key_message(key: Any, path: Key, sub_schema: dict[str, Any], schema: dict[str, Any]) -> str:
    allowed = list(sub_schema.get("properties", {}))
    message = f"unknown key {key!r}"
    if not path and key in _NOT_IN_V1:
        return f"{message}: {key!r} is not part of opus-runner/v1 specs; {_NOT_IN_V1[key]}"
    close = _close_match(str(key), allowed)
    if close:
        return f"{message}; did you mean {close!r}?"
    if not path:
        # A key written at the top level that belongs one level down: "timeout" -> "wait.timeout".
        for section, section_schema in schema["properties"].items():
            nested = section_schema.get("properties", {}) if isinstance(section_schema, dict) else {}
            if key in nested:
                return f"{message}; did you mean '{section}.{key}'?"
    return f"{message}; allowed keys: {', '.join(allowed)}"


def _type_message(expected: str | list[str], instance: Any) -> str:
    names = [expected] if isinstance(expected, str) else list(expected)
    wanted = " or ".join(_TYPE_NAMES.get(n, n) for n in names)
    message = f"expected {wanted}, found {_describe(instance)}"
    if "string" in names and isinstance(instance, datetime.date):
        message += "; quote it to keep it as text"
    elif "boolean" in names and isinstance(instance, str) and instance.lower() in ("yes", "no", "on", "off"):
        message += "; only true and false are booleans in a spec"
    return message


def _duration_message(value: Any) -> str:
    try:
        parse_duration(value)
    except ValueError as exc:
        return str(exc)
    # parse_duration is more lenient than the schema ("1e3", "inf"); name the documented forms.
    return f"expected {DURATION_HELP}, found {_show(value)}"


def _show(value: Any) -> str:
    """A short quoted rendering of a value for messages."""
    if isinstance(value, str):
        return repr(shorten(value, 60, ellipsis="..."))
    if isinstance(value, datetime.date):
        return value.isoformat()
    return json.dumps(value) if isinstance(value, (bool, type(None))) else repr(value)


def _describe(value: Any) -> str:
    """What a value is, in words: "a list", "the number 3", "the string 'x'"."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {_show(value)}"
    if isinstance(value, datetime.datetime):
        return f"the date and time {value.isoformat()}"
    if isinstance(value, datetime.date):
        return f"the date {value.isoformat()}"
    if isinstance(value, dict):
        return "a mapping" if value else "an empty mapping"
    if isinstance(value, (list, tuple)):
        return "a list" if value else "an empty list"
    if isinstance(value, (bytes, bytearray)):
        return "binary data"
    return f"a {type(value).__name__}"


# ---------------------------------------------------------------------------------------------
# Finding spec files
# ---------------------------------------------------------------------------------------------


#: Folders a folder argument never descends into: tools' and caches' trees hold no specs.
SKIPPED_FOLDERS = frozenset({"node_modules", "__pycache__", "venv"})
#: How much of a file is read to see whether it declares an opus-runner apiVersion.
_SNIFF_BYTES = 64 * 1024
_DECLARES_YAML = re.compile(rb"""^apiVersion[ \t]*:[ \t]*["']?opus-runner/""", re.M)
_DECLARES_JSON = re.compile(rb""""apiVersion"\s*:\s*"opus-runner/""")


def find_specs(args: Sequence[str], *, cwd: Path | None = None, skipped: list[Path] | None = None) -> list[Path]:
    """The spec files named by command-line arguments, absolute, de-duplicated, in order.

    Each argument is a file, a folder (its whole tree, sorted, hidden folders left out) or a
    glob (``specs/*.yaml``, recursive ``specs/**/*.yaml``). Of the ``.yaml``, ``.yml`` and
    ``.json`` files a folder or glob holds, only those that declare ``apiVersion:
    opus-runner/...`` are specs; the rest (a foreach ``rows.json``, a fixture) are appended to
    ``skipped``. A file named on its own is always read as a spec (its problems are reported). A
    file or glob that matches nothing, or a folder without specs, is a :class:`UsageError`.
    """
    base = Path(os.path.abspath(cwd if cwd is not None else os.getcwd()))
    found: dict[str, Path] = {}  # realpath -> path as found; dicts keep first-seen order
    passed = skipped if skipped is not None else []

    def add(path: Path) -> None:
        found.setdefault(os.path.realpath(path), path)

    def add_declared(paths: Sequence[Path]) -> int:
        count = 0
        for path in paths:
            if declares_spec(path):
                add(path)
                count += 1
            elif path not in passed:
                passed.append(path)
        return count

    for arg in args:
        text = os.path.expanduser(str(arg))
        if not text.strip():
            raise UsageError("an empty spec argument was given; name a spec file, folder or glob")
        target = Path(os.path.normpath(base / text))  # an absolute `text` replaces `base`
        if target.is_dir():
            inside = _tree(target)
            if not add_declared(inside):
                what = f"{len(inside)} .yaml, .yml or .json file{'s' if len(inside) != 1 else ''}, none" if inside else "no .yaml, .yml or .json file, so none"
                raise UsageError(
                    f"folder {arg!r} holds no spec files: it has {what} declaring `apiVersion: "
                    f"{SUPPORTED_API_VERSIONS[0]}`; name a folder of specs, or a spec file"
                )
        elif target.exists():
            add(target)
        elif _GLOB_CHARS.search(text):
            matches = sorted(glob.glob(text, root_dir=base, recursive=True))
            files = [
                Path(os.path.normpath(base / m))
                for m in matches
                if _is_spec_name(os.path.basename(m)) and (base / m).is_file()
            ]
            if not add_declared(files):
                if files:
                    raise UsageError(
                        f"none of the {len(files)} file{'s' if len(files) != 1 else ''} matching {arg!r} declares "
                        f"`apiVersion: {SUPPORTED_API_VERSIONS[0]}`, so none is a spec"
                    )
                raise UsageError(f"no spec files match {arg!r} (looked for .yaml, .yml and .json files)")
        else:
            raise UsageError(f"spec file {arg!r} does not exist{_did_you_mean_file(str(arg), target)}")
    return list(found.values())


def declares_spec(path: Path) -> bool:
    """Whether the file says it is an opus-runner spec: a top-level ``apiVersion:
    opus-runner/...`` (YAML) or ``"apiVersion": "opus-runner/..."`` (JSON) in its first 64 KB.
    Any version counts, so a spec of an unsupported one is read and refused with a reason."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(_SNIFF_BYTES)
    except OSError:
        return True  # unreadable: load_spec says why, naming the file
    head = head.removeprefix(b"\xef\xbb\xbf")
    if path.suffix.lower() == ".json":
        return _DECLARES_JSON.search(head) is not None
    return _DECLARES_YAML.search(head) is not None or _DECLARES_JSON.search(head) is not None


def _tree(folder: Path) -> list[Path]:
    """Every file with a spec suffix under ``folder``, sorted folder by folder (a folder's own
    files before its sub-folders'); hidden and :data:`SKIPPED_FOLDERS` folders are left out,
    and symlinked folders are not followed (no loops)."""
    out: list[Path] = []
    for here, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in SKIPPED_FOLDERS)
        out.extend(Path(here) / name for name in sorted(files) if _is_spec_name(name) and (Path(here) / name).is_file())
    return out


def _is_spec_name(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in SPEC_SUFFIXES


def _did_you_mean_file(arg: str, target: Path) -> str:
    try:
        siblings = [p.name for p in target.parent.iterdir()]
    except OSError:
        return ""
    # Stricter than for keys: file names in one folder tend to look alike.
    close = _close_match(target.name, siblings, cutoff=0.75)
    if close is None:
        return ""
    folder = os.path.dirname(arg)
    return f"; did you mean {os.path.join(folder, close) if folder else close!r}?"
