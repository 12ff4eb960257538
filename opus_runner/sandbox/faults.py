"""Fault injection for the sandbox: make chosen calls fail the way real networks and proxies do.

A rule names the route it applies to (or ``*``), the kind of fault, and how often it fires:

- ``status``: answer ``status`` (default 503) with a JSON (NestJS), HTML or empty body.
- ``rate_limit``: answer 429, with no ``Retry-After`` header (as documented) unless the rule
  gives ``retry_after`` (seconds, or an HTTP date).
- ``delay``: wait ``seconds`` and then process the request normally.
- ``drop``: close the connection without a complete response; the request is not processed.
- ``lose_response``: process the request, then close the connection before the answer arrives,
  so the client cannot know the outcome (the case ``POST /job/execute`` must survive).
- ``inner_error``: answer a 2xx (``status``, default 200) whose JSON body carries a failure
  (opus-api.md section 5), by ``variant``:

  - ``status_code`` (default): ``{statusCode: inner_status, message}``;
  - ``success_false``: ``{success: false, message}``;
  - ``error_object``: ``{error: {statusCode: inner_status, message}}``.

  ``inner_status`` defaults to 500 and ``message`` to ``"Request failed with status code 422"``.
  The request is not processed, unless ``process: true``: then it is processed for real and the
  answer still says it failed (the worst case for an execute).
- ``trickle``: process the request, then send the real answer one byte every ``seconds``: every
  read succeeds, so per-read timeouts never fire, but the whole answer takes forever.
- ``gzip_bomb``: answer 200 with ``Content-Encoding: gzip`` and a small body (about 1 KiB per
  MiB) that inflates to ``size`` bytes (default 2 GiB) of spaces. The request is not processed.
- ``deep_json``: answer 200 with a JSON body of ``depth`` nested lists (default 100000). The
  request is not processed.
- ``nan``: process the request, then answer its real 2xx body with every number replaced by
  ``NaN``, ``Infinity`` and ``-Infinity`` in turn (literals Python's json reads, JSON does not);
  a results answer gets them in its outputs too, as an extra output named ``nan``.

How often: ``times: N`` fires on the first N matching calls; ``every: N`` fires on every N-th
matching call; ``probability: p`` (with ``seed`` for a repeatable sequence) fires at random.
``times`` also caps ``every`` and ``probability``. With none of them a rule fires on every call.

Callbacks: the pseudo-route ``callback`` is the POST the sandbox makes to a job's loopback
``callbackUrl`` when the job ends (callbacks.py). It takes three kinds, decided when the callback
is due (``callback_delay`` after the job's end):

- ``drop``: the callback is never sent (counted as ``callbacks_dropped``);
- ``delay``: it is sent ``seconds`` later than due;
- ``duplicate``: it is sent twice, the second time ``gap`` seconds (default 1) after the first
  POST ends, the same body both times (real webhooks are delivered at least once).

``*`` never matches ``callback``: a rule faults callbacks only when it names the route.
``duplicate`` and ``gap`` apply to the ``callback`` route only, and ``method`` does not apply to it.

``status`` and ``rate_limit`` take ``process: true`` too: the request is processed for real,
then the fault's answer replaces the server's (a gateway 502 in front of a server that did
execute the job).

Rules are checked in order and the first that fires wins; a rule only counts the calls that
reached it. Except for ``delay``, ``lose_response``, ``trickle``, ``nan`` and the kinds given
``process: true``, a faulted request is never processed: an injected 503 on execute does not
start the job.

This module has no third-party imports: it is shared by the server, the fixture loader and the CLI.
"""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

from ..durations import parse_duration
from ..errors import ConfigError

#: The pseudo-route of the callbacks the sandbox POSTs (not a route it serves).
CALLBACK_ROUTE = "callback"
#: Route names a rule may target (``*`` targets them all). ``/_sandbox/*`` is never faulted.
ROUTE_NAMES = (
    "workflow",
    "workflow_object",
    "versions",
    "initiate",
    "initiate_v2",
    "upload",
    "put",
    "download",
    "presigned_get",
    "file",
    "media",
    "execute",
    "job",
    "status",
    "results",
    "audit",
    "search",
    "archive",
    "delete",
    CALLBACK_ROUTE,
)
#: The kinds a ``callback`` rule may have: the sandbox is the client there, so only what can
#: happen to an outbound call it makes.
CALLBACK_KINDS = ("drop", "delay", "duplicate")
DEFAULT_DUPLICATE_GAP = 1.0
#: Kinds that may process the request for real before answering (``process: true``): a gateway
#: that times out or is rate limited in front of a server that did the work.
PROCESSING_KINDS = ("status", "rate_limit", "inner_error")
FAULT_KINDS = (
    "status",
    "rate_limit",
    "delay",
    "drop",
    "lose_response",
    "inner_error",
    "trickle",
    "gzip_bomb",
    "deep_json",
    "nan",
    "duplicate",
)
#: Kinds that wait ``seconds`` (required): before the answer, or between its bytes.
TIMED_KINDS = ("delay", "trickle")
DEFAULT_BOMB_SIZE = 2 * 1024**3
DEFAULT_JSON_DEPTH = 100_000
INNER_VARIANTS = ("status_code", "success_false", "error_object")
DEFAULT_INNER_MESSAGE = "Request failed with status code 422"
BODY_KINDS = ("json", "html", "empty")
_FIELDS = (
    "route",
    "kind",
    "method",
    "status",
    "body",
    "retry_after",
    "seconds",
    "gap",
    "size",
    "depth",
    "variant",
    "inner_status",
    "message",
    "process",
    "times",
    "every",
    "probability",
    "seed",
)
_METHODS = ("GET", "POST", "PUT", "DELETE")


class FaultRuleError(ValueError):
    """A fault rule is malformed. ``field`` names the offending field (None for the whole rule)."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.field = field
        super().__init__(message)


@dataclass(eq=False)
class FaultRule:
    """One fault rule. Build it with :func:`parse_rule` (or :meth:`FaultSet.add`) to get checks."""

    kind: str
    route: str = "*"
    method: str | None = None
    status: int = 503
    body: str = "json"
    retry_after: str | None = None
    seconds: float = 0.0
    gap: float = DEFAULT_DUPLICATE_GAP
    size: int = DEFAULT_BOMB_SIZE
    depth: int = DEFAULT_JSON_DEPTH
    variant: str = "status_code"
    inner_status: int = 500
    message: str = DEFAULT_INNER_MESSAGE
    process: bool = False
    times: int | None = None
    every: int | None = None
    probability: float | None = None
    seed: int | None = None
    #: matching calls this rule has seen, and how many of them it faulted
    seen: int = field(default=0, init=False)
    fired: int = field(default=0, init=False)
    _rng: random.Random | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.probability is not None:
            self._rng = random.Random(self.seed)

    def applies_to(self, route: str, method: str) -> bool:
        """True when this rule targets ``route`` called with ``method``."""
        if self.route != route and (self.route != "*" or route == CALLBACK_ROUTE):
            return False
        return self.method is None or self.method == method

    def decide(self) -> bool:
        """Count one matching call and say whether the fault fires on it. Callers hold the lock."""
        if self.times is not None and self.fired >= self.times:
            return False
        self.seen += 1
        if self.every is not None and self.seen % self.every != 0:
            return False
        # The draw happens on every considered call, so the sequence depends only on the seed
        # and the order of calls.
        if self._rng is not None and self.probability is not None and self._rng.random() >= self.probability:
            return False
        self.fired += 1
        return True

    @property
    def exhausted(self) -> bool:
        return self.times is not None and self.fired >= self.times

    def as_dict(self) -> dict[str, Any]:
        """The rule as JSON-ready data, with its counters (``seen``, ``fired``)."""
        data: dict[str, Any] = {"route": self.route, "kind": self.kind}
        if self.method:
            data["method"] = self.method
        if self.kind == "status":
            data.update(status=self.status, body=self.body)
        elif self.kind == "rate_limit":
            data.update(retry_after=self.retry_after, body=self.body)
        elif self.kind in TIMED_KINDS:
            data["seconds"] = self.seconds
        elif self.kind == "duplicate":
            data["gap"] = self.gap
        elif self.kind == "gzip_bomb":
            data["size"] = self.size
        elif self.kind == "deep_json":
            data["depth"] = self.depth
        elif self.kind == "inner_error":
            data.update(
                status=self.status,
                variant=self.variant,
                inner_status=self.inner_status,
                message=self.message,
                process=self.process,
            )
        for name in ("times", "every", "probability", "seed"):
            value = getattr(self, name)
            if value is not None:
                data[name] = value
        data.update(seen=self.seen, fired=self.fired)
        return data


def _positive_int(data: Mapping[str, Any], name: str) -> int | None:
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise FaultRuleError(f"'{name}' must be a whole number of at least 1, found {value!r}", field=name)
    return value


def _retry_after(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise FaultRuleError(
            f"'retry_after' must be a number of seconds or an HTTP date, found {value!r}",
            field="retry_after",
        )
    if isinstance(value, (int, float)):
        if value < 0:
            raise FaultRuleError(f"'retry_after' must not be negative, found {value!r}", field="retry_after")
        return str(int(value)) if float(value).is_integer() else str(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            if float(text) >= 0:
                return text
        except ValueError:
            pass
        try:
            parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            raise FaultRuleError(
                f"'retry_after' must be a number of seconds or an HTTP date such as "
                f"'Wed, 21 Oct 2026 07:28:00 GMT', found {value!r}",
                field="retry_after",
            ) from None
        return text
    raise FaultRuleError(
        f"'retry_after' must be a number of seconds or an HTTP date, found {value!r}", field="retry_after"
    )


def parse_rule(data: Mapping[str, Any] | FaultRule) -> FaultRule:
    """Check one rule given as a mapping and build it; :class:`FaultRuleError` says what is wrong."""
    if isinstance(data, FaultRule):
        return data
    if not isinstance(data, Mapping):
        raise FaultRuleError(
            f"a fault rule must be a mapping such as {{kind: status, status: 503}}, found {data!r}"
        )
    unknown = sorted(str(k) for k in data if k not in _FIELDS)
    if unknown:
        raise FaultRuleError(
            f"unknown field {unknown[0]!r} in a fault rule; known fields: {', '.join(_FIELDS)}",
            field=unknown[0],
        )
    kind = data.get("kind")
    if kind not in FAULT_KINDS:
        raise FaultRuleError(f"'kind' must be one of {', '.join(FAULT_KINDS)}, found {kind!r}", field="kind")
    route = data.get("route", "*")
    if route != "*" and route not in ROUTE_NAMES:
        raise FaultRuleError(
            f"'route' must be '*' or one of {', '.join(ROUTE_NAMES)}, found {route!r}", field="route"
        )
    if route == CALLBACK_ROUTE:
        if kind not in CALLBACK_KINDS:
            raise FaultRuleError(
                f"the 'callback' route is the sandbox's own POST to a job's callbackUrl, so it takes only "
                f"kinds {', '.join(CALLBACK_KINDS)}, not {kind!r}",
                field="kind",
            )
        if "method" in data:
            raise FaultRuleError(
                "'method' does not apply to the 'callback' route (a callback is always a POST); remove it",
                field="method",
            )
    elif kind == "duplicate":
        raise FaultRuleError(
            f"kind 'duplicate' only applies to route 'callback' (a callback sent twice), not {route!r}",
            field="kind",
        )
    method = data.get("method")
    if method is not None:
        if not isinstance(method, str) or method.upper() not in _METHODS:
            raise FaultRuleError(
                f"'method' must be one of {', '.join(_METHODS)}, found {method!r}", field="method"
            )
        method = method.upper()

    status = data.get("status", 200 if kind == "inner_error" else 503)
    if kind == "status":
        if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 599:
            raise FaultRuleError(
                f"'status' must be an HTTP error status from 400 to 599, found {status!r}", field="status"
            )
    elif kind == "inner_error":
        if isinstance(status, bool) or not isinstance(status, int) or not 200 <= status <= 299:
            raise FaultRuleError(
                f"an 'inner_error' answers a success: 'status' must be from 200 to 299, found {status!r}",
                field="status",
            )
    elif "status" in data:
        raise FaultRuleError(
            f"'status' only applies to kinds 'status' and 'inner_error', not {kind!r}", field="status"
        )

    for name in ("variant", "inner_status", "message"):
        if name in data and kind != "inner_error":
            raise FaultRuleError(f"'{name}' only applies to kind 'inner_error', not {kind!r}", field=name)
    if "process" in data and kind not in PROCESSING_KINDS:
        raise FaultRuleError(
            f"'process' only applies to kinds {', '.join(PROCESSING_KINDS)}, not {kind!r}", field="process"
        )
    variant = data.get("variant", "status_code")
    if variant not in INNER_VARIANTS:
        raise FaultRuleError(
            f"'variant' must be one of {', '.join(INNER_VARIANTS)}, found {variant!r}", field="variant"
        )
    inner_status = data.get("inner_status", 500)
    if isinstance(inner_status, bool) or not isinstance(inner_status, int) or not 400 <= inner_status <= 599:
        raise FaultRuleError(
            f"'inner_status' must be an HTTP error status from 400 to 599, found {inner_status!r}",
            field="inner_status",
        )
    message = data.get("message", DEFAULT_INNER_MESSAGE)
    if not isinstance(message, str) or not message:
        raise FaultRuleError(f"'message' must be a non-empty string, found {message!r}", field="message")
    process = data.get("process", False)
    if not isinstance(process, bool):
        raise FaultRuleError(f"'process' must be true or false, found {process!r}", field="process")

    body = data.get("body", "json")
    if body not in BODY_KINDS:
        raise FaultRuleError(f"'body' must be one of {', '.join(BODY_KINDS)}, found {body!r}", field="body")

    retry_after = _retry_after(data.get("retry_after"))

    seconds = 0.0
    if kind in TIMED_KINDS:
        if "seconds" not in data:
            raise FaultRuleError(f"a {kind!r} rule needs 'seconds', e.g. seconds: 0.5", field="seconds")
        try:
            seconds = parse_duration(data["seconds"])
        except ValueError as exc:
            raise FaultRuleError(f"'seconds' is not valid: {exc}", field="seconds") from None
    elif "seconds" in data:
        raise FaultRuleError(
            f"'seconds' only applies to kinds {', '.join(TIMED_KINDS)}, not {kind!r}", field="seconds"
        )
    gap = DEFAULT_DUPLICATE_GAP
    if kind == "duplicate" and "gap" in data:
        try:
            gap = parse_duration(data["gap"])
        except ValueError as exc:
            raise FaultRuleError(f"'gap' is not valid: {exc}", field="gap") from None
    for name, owner in (("size", "gzip_bomb"), ("depth", "deep_json"), ("gap", "duplicate")):
        if name in data and kind != owner:
            raise FaultRuleError(f"'{name}' only applies to kind {owner!r}, not {kind!r}", field=name)
    size = _positive_int(data, "size") or DEFAULT_BOMB_SIZE
    depth = _positive_int(data, "depth") or DEFAULT_JSON_DEPTH

    probability = data.get("probability")
    if probability is not None:
        if (
            isinstance(probability, bool)
            or not isinstance(probability, (int, float))
            or not 0 <= probability <= 1
        ):
            raise FaultRuleError(
                f"'probability' must be a number from 0 to 1, found {probability!r}", field="probability"
            )
        probability = float(probability)
    seed = data.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise FaultRuleError(f"'seed' must be a whole number, found {seed!r}", field="seed")

    return FaultRule(
        kind=kind,
        route=route,
        method=method,
        status=status if kind in ("status", "inner_error") else 503,
        body=body,
        retry_after=retry_after,
        seconds=seconds,
        gap=gap,
        size=size,
        depth=depth,
        variant=variant,
        inner_status=inner_status,
        message=message,
        process=process,
        times=_positive_int(data, "times"),
        every=_positive_int(data, "every"),
        probability=probability,
        seed=seed,
    )


def parse_rules(items: Any) -> list[FaultRule]:
    """Check a list of rules (a single mapping counts as a list of one).

    A :class:`FaultRuleError` from here carries ``index``, the position of the bad rule.
    """
    if isinstance(items, Mapping):
        items = [items]
    if not isinstance(items, list):
        raise FaultRuleError(f"faults must be a list of rules, found {type(items).__name__}")
    rules = []
    for index, item in enumerate(items):
        try:
            rules.append(parse_rule(item))
        except FaultRuleError as exc:
            exc.index = index  # type: ignore[attr-defined]
            raise
    return rules


def load_faults_file(path: str | Path) -> list[FaultRule]:
    """Read rules from a YAML or JSON file: a list, or a mapping with a ``faults:`` list.

    Raises :class:`~opus_runner.errors.ConfigError` naming the file and the rule that is wrong.
    """
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"cannot read the faults file {path}: {exc.strerror or exc}; check the path"
        ) from None
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError(
            f"{path}: the faults file is not valid {path.suffix.lstrip('.') or 'YAML'}: {exc}"
        ) from None
    prefix = ""
    if isinstance(data, Mapping):
        if "faults" not in data:
            raise ConfigError(f"{path}: expected a list of fault rules or a mapping with a 'faults:' list")
        data, prefix = data["faults"], "faults"
    try:
        return parse_rules(data if data is not None else [])
    except FaultRuleError as exc:
        index = getattr(exc, "index", None)
        where = f"{prefix}[{index}]" if index is not None else (prefix or "faults")
        raise ConfigError(f"{path}: {where}: {exc}") from None


class FaultSet:
    """The server's ordered, thread-safe list of fault rules.

    Tests change it from their own thread while the server's event loop reads it.
    """

    def __init__(self, rules: Iterable[Mapping[str, Any] | FaultRule] | None = None) -> None:
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = parse_rules(list(rules)) if rules else []

    def add(self, rule: Mapping[str, Any] | FaultRule | None = None, /, **fields: Any) -> FaultRule:
        """Append one rule, given as a mapping, a FaultRule or keywords; returns the rule.

        ``server.faults.add(route="execute", kind="status", status=503, times=1)``
        """
        if rule is not None and fields:
            raise TypeError("pass a rule or keyword fields, not both")
        built = parse_rule(rule if rule is not None else fields)
        with self._lock:
            self._rules.append(built)
        return built

    def extend(self, rules: Iterable[Mapping[str, Any] | FaultRule]) -> list[FaultRule]:
        """Append several rules at once (all are checked before any is added)."""
        built = parse_rules(list(rules))
        with self._lock:
            self._rules.extend(built)
        return built

    def clear(self) -> None:
        """Remove every rule."""
        with self._lock:
            self._rules.clear()

    @property
    def rules(self) -> list[FaultRule]:
        """A snapshot of the rules, in the order they are checked."""
        with self._lock:
            return list(self._rules)

    def pick(self, route: str, method: str) -> FaultRule | None:
        """The rule that fires on this call, if any (counting the call against each rule seen)."""
        if not self._rules:  # the common case: no lock, no work
            return None
        with self._lock:
            for rule in self._rules:
                if rule.applies_to(route, method) and rule.decide():
                    return rule
        return None

    def as_list(self) -> list[dict[str, Any]]:
        return [rule.as_dict() for rule in self.rules]

    def __len__(self) -> int:
        return len(self._rules)

    def __repr__(self) -> str:
        return f"FaultSet({len(self._rules)} rule{'s' if len(self._rules) != 1 else ''})"
