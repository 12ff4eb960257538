"""The Opus HTTP client: endpoints, retries, error mapping, status normalisation, key safety.

One :class:`OpusClient` per run speaks to the Opus Job Operator API (``opus-api.md``) over a
single ``httpx.AsyncClient``. Everything a caller can rely on:

- the service key travels only in the ``x-service-key`` header of API calls to the base URL,
  only over https (or plain http to a loopback host), never to a presigned storage URL, and
  never into a log line, repr or exception;
- transient failures (connect errors, timeouts, dropped connections, 429/500/502/503/504) are
  retried with exponential backoff and full jitter, honouring ``Retry-After``; timeouts only
  within the policy's ``budget``, so a server that does not answer is reported after about
  ``budget`` plus one timeout, not after every attempt has waited its full timeout;
- every answer must arrive whole within ``deadline`` (a server sending one byte at a time never
  trips a per-read timeout) and be at most ``max_answer_bytes`` once decompressed; JSON nested
  too deeply to parse is refused, and ``NaN``/``Infinity`` are read as null (:mod:`.jsontext`);
- ``POST /job/execute`` is never resent once it may have reached the server: its outcome is
  read back from the job's status instead;
- every error the server can answer with becomes one :mod:`opus_runner.errors` exception whose
  message quotes the server's own words.

The CLI imports this module lazily, so httpx is imported at the top here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random as _random
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

import httpx

from . import jsontext, redact
from .__about__ import __version__
from .errors import (
    ApiError,
    AuthError,
    ConfigError,
    ExecuteNotReceived,
    ExecuteOutcomeUnknown,
    ExecuteRefused,
    NetworkError,
    NotFoundError,
    OpusRunnerError,
    UsageError,
)
from .models import AMBIGUOUS_STATUSES, UploadSettings, normalise_status
from .results import ResultsData, parse_results
from .urls import PLACEHOLDER_CALLBACK_URL, display_url, is_loopback_host

__all__ = [
    "AnswerTooLarge",
    "AnswerTooSlow",
    "AuditProgress",
    "ExecuteOutcome",
    "OpusClient",
    "ResultsData",
    "RetryPolicy",
    "SlowAnswerError",
    "error_from_response",
    "job_id_of",
    "parse_results",
    "server_message",
]

log = logging.getLogger("opus_runner.http")

#: Bodies in ``--verbose`` traces are cut here so a large workflow blueprint does not flood logs.
TRACE_BODY_LIMIT = 2048
KEY_HEADER = "x-service-key"
NO_KEY_MESSAGE = (
    "no Opus service key: set OPUS_SERVICE_KEY (or pass --sandbox to try a local sandbox)"
)
HTML_MESSAGE = "the server answered with an HTML page instead of JSON"
EMPTY_MESSAGE = "the server answered with an empty body"

# The request certainly never left this machine: resending execute cannot run a job twice.
_NEVER_SENT: tuple[type[Exception], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
)
# Transport errors that are our own fault (bad scheme, malformed request): retrying cannot help.
_NOT_RETRYABLE: tuple[type[Exception], ...] = (httpx.UnsupportedProtocol, httpx.LocalProtocolError)
# Only these answers say "come back later" with a Retry-After worth honouring (RFC 9110).
_RETRY_AFTER_STATUSES = frozenset({429, 503})
#: Seconds a whole exchange (request sent, answer read to its end) may take.
DEFAULT_DEADLINE = 60.0
#: Seconds without progress on one read (or on connecting) before it times out.
DEFAULT_TIMEOUT = 30.0
#: The largest answer read, counted after decompression (a gzip bomb is stopped here).
MAX_ANSWER_BYTES = 64 * 1024 * 1024
#: Seconds a download URL from ``/job/file/download`` stays valid (the API takes 60 to 86400).
DOWNLOAD_URL_EXPIRY = 900
#: Who may read an uploaded file: opus-aaico's default, seen working live (opus-api.md section 4).
DEFAULT_ACCESS_SCOPE = UploadSettings.access_scope
#: The ``accessScope`` values of ``POST /job/file/upload``; ``unlisted`` sends none.
ACCESS_SCOPES = ("all", "user", "workspace", "organization", "unlisted")


@dataclass(frozen=True)
class RetryPolicy:
    """How hard every call tries before giving up.

    The wait before retry ``n`` (0-based) is ``uniform(0, min(cap, base * 2**n))`` ("full
    jitter", so a crowd of clients does not retry in lockstep), or the server's
    ``Retry-After`` on a 429/503 with jitter added (:meth:`after`), capped at ``cap``.

    A timed-out attempt (connect or read timeout) is retried only while the call has taken
    less than ``budget`` seconds, wait included: a server that does not answer at all is
    reported within ``budget`` plus one timeout. An answer that missed the whole-answer
    deadline is not retried at all.
    """

    attempts: int = 6
    base: float = 0.5
    cap: float = 30.0
    budget: float = 30.0
    statuses: frozenset[int] = frozenset({429, 500, 502, 503, 504})
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    random: Callable[[], float] = _random.random

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"RetryPolicy.attempts must be at least 1, got {self.attempts}")
        if self.base < 0 or self.cap < 0 or self.budget < 0:
            raise ValueError("RetryPolicy.base, RetryPolicy.cap and RetryPolicy.budget must not be negative")

    def after(self, wanted: float) -> float:
        """The wait for a ``Retry-After`` of ``wanted`` seconds: at least that, plus jitter of up
        to a fifth of it (``base`` at least), so jobs told the same instant do not all come
        back at once; capped at ``cap``."""
        spread = max(self.base, 0.2 * wanted)
        return min(self.cap, wanted + self.random() * spread)

    def backoff(self, retry: int) -> float:
        """The jittered wait before retry number ``retry`` (0 for the first retry)."""
        # The exponent is bounded so a very long policy cannot overflow a float.
        ceiling = min(self.cap, self.base * (2.0 ** min(retry, 64)))
        return self.random() * ceiling


class AnswerTooSlow(httpx.TimeoutException):
    """The answer did not arrive whole within the client's deadline (it may still be coming)."""


class AnswerTooLarge(ApiError):
    """The answer was larger than the client reads (``max_answer_bytes``, after decompression)."""


class SlowAnswerError(NetworkError):
    """A call whose answer missed the deadline: the server is up but unusably slow.

    Not ``transient``: the runner's patient loops do not keep asking a server that trickles.
    """

    transient = False


@dataclass
class ExecuteOutcome:
    """What ``POST /job/execute`` led to.

    ``confirmed`` is True when the server answered success; False when the answer was lost and
    the outcome was resolved by reading the job's ``status`` (then set, normalised).
    """

    job_id: str
    confirmed: bool
    status: str | None
    message: str = ""


def _as_int(value: Any, default: int = 0) -> int:
    if isinstance(value, bool):
        return default
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return default


def _node_name(node: Any) -> str:
    if isinstance(node, Mapping):
        for key in ("name", "node_name", "id", "node_id"):
            if node.get(key):
                return str(node[key])
        return json.dumps(node, sort_keys=True, default=str)
    return str(node)


@dataclass
class AuditProgress:
    """Node-level progress of a job, parsed from ``GET /job/{id}/audit``.

    Tolerant of missing keys and odd types: a partial audit still yields a usable progress line.
    """

    nb_nodes: int
    nb_executed: int
    running_node: str | None
    failed_nodes: list[str]
    raw: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_raw(cls, body: Mapping[str, Any] | Any) -> AuditProgress:
        """Read an audit body; missing or malformed fields fall back to counting what is there."""
        data: dict[str, Any] = dict(body) if isinstance(body, Mapping) else {}
        executed = data.get("executed_nodes")
        executed_list = list(executed) if isinstance(executed, list) else []
        remaining = data.get("remaining_nodes_to_execute")
        remaining_list = list(remaining) if isinstance(remaining, list) else []
        failed = data.get("failed_nodes")
        failed_nodes = [_node_name(n) for n in failed] if isinstance(failed, list) else []

        running_raw = data.get("running_node")
        running = _node_name(running_raw).strip() if running_raw else ""
        running_node = running or None

        nb_executed = _as_int(data.get("nb_executed_nodes"), len(executed_list))
        nb_nodes = _as_int(data.get("nb_nodes"), 0)
        if nb_nodes <= 0:
            # No total given: count what the audit lists, so "node n of m" still makes sense.
            per_node = data.get("audit")
            per_node = (
                per_node.get("nodes_execution_data") if isinstance(per_node, Mapping) else None
            )
            listed = nb_executed + len(remaining_list) + (1 if running_node else 0)
            nb_nodes = max(listed, len(per_node) if isinstance(per_node, Mapping) else 0)
        return cls(
            nb_nodes=nb_nodes,
            nb_executed=nb_executed,
            running_node=running_node,
            failed_nodes=failed_nodes,
            raw=data,
        )


# --------------------------------------------------------------------------------------------
# Error mapping


def _one_line(text: str, limit: int = 300) -> str:
    # Mask before cutting: a cut through a secret would leave its start unmasked.
    flat = " ".join(redact.mask(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _looks_html(response: httpx.Response, text: str) -> bool:
    ctype = response.headers.get("content-type", "").lower()
    head = text.lstrip()[:15].lower()
    return "html" in ctype or head.startswith("<!doctype") or head.startswith("<html")


_XML_MESSAGE = re.compile(r"<Message>(.*?)</Message>", re.S | re.I)


def _message_from_json(body: Any) -> str | None:
    if isinstance(body, str):
        return body.strip() or None
    if not isinstance(body, Mapping):
        return None
    message = body.get("message")
    if isinstance(message, str) and message.strip():
        return message.strip()
    if isinstance(message, list) and message:
        # NestJS validation errors: one string per failed constraint.
        return "; ".join(m if isinstance(m, str) else json.dumps(m, default=str) for m in message)
    error = body.get("error")
    if isinstance(error, str) and error.strip():
        return error.strip()
    if isinstance(error, Mapping):
        return _message_from_json(error)
    for key in ("detail", "errorMessage", "msg"):
        value = body.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def server_message(response: httpx.Response) -> str:
    """The server's own words in ``response``, one line, with secrets masked.

    ``message`` (a string, or a NestJS list joined with ``; ``), else ``error``; an HTML page or
    an empty body is named as such rather than dumped.
    """
    try:
        text = response.text
    except (UnicodeDecodeError, httpx.ResponseNotRead):
        text = ""
    if not text.strip():
        return EMPTY_MESSAGE
    if _looks_html(response, text):
        return HTML_MESSAGE
    try:
        body = jsontext.loads(text)
    except RecursionError:
        return "the server answered with JSON nested too deeply to read"
    except ValueError:
        # Object stores answer in XML (<Error><Message>...</Message></Error>).
        match = _XML_MESSAGE.search(text)
        found = match.group(1) if match else text
        return _one_line(found)
    message = _message_from_json(body)
    if message is None:
        message = json.dumps(body, default=str)
    return _one_line(message)


def error_from_response(
    response: httpx.Response,
    *,
    method: str,
    endpoint: str,
    subject: str | None = None,
    job_id: str | None = None,
    api: bool = True,
    workspace: str | None = None,
) -> ApiError:
    """Map an unsuccessful answer to the matching :class:`~opus_runner.errors.ApiError`.

    ``subject`` ("workflow X", "job X") names what a 404 was about; ``workspace`` the workspace
    a 403 was about. ``api=False`` is for answers from somewhere other than the Opus API (a
    presigned storage URL), where a 401/403 says nothing about the service key.
    """
    status = response.status_code
    message = server_message(response)
    common: dict[str, Any] = {
        "status_code": status,
        "method": method,
        "endpoint": endpoint,
        "job_id": job_id,
    }
    if api and "no auth cookie" in message.lower():
        return AuthError(
            f'this endpoint does not accept service keys (the server said "{message}"): it '
            "only works from a signed-in browser session, so opus-runner cannot call it",
            **common,
        )
    if api and status == 401:
        return AuthError(
            f"the service key was rejected (HTTP 401: {message}); check OPUS_SERVICE_KEY (keys "
            "expire: generate a new one under My Organization > API Keys)",
            **common,
        )
    if api and status == 403:
        # 403 is about permission, not the key (opus-api.md section 1).
        where = f"workspace {workspace}" if workspace else "the workspace this call touches"
        return AuthError(
            f"the service key's user lacks permission in {where} (HTTP 403: {message}); ask an "
            "admin of that workspace to add the user, or use a workspace the user belongs to",
            **common,
        )
    if not api and status in (401, 403):
        return ApiError(
            f"the file storage refused the upload ({message}); the presigned URL may have "
            "expired, so run again to get a fresh one",
            **common,
        )
    if status == 404:
        what = f"{subject} not found" if subject else "not found"
        return NotFoundError(f"{what} ({message})", **common)
    if 300 <= status < 400:
        where = response.headers.get("location", "")
        where = _safe_url(where) if where else "another address"
        return ApiError(
            f"the server redirected to {where}; opus-runner does not follow redirects with the "
            "service key, so check the base URL",
            **common,
        )
    return ApiError(message, **common)


# --------------------------------------------------------------------------------------------
# Small helpers


def _safe_url(url: str | httpx.URL) -> str:
    """``scheme://host/path`` only: a presigned URL's query string is a credential."""
    return display_url(url)


def _origin_of(url: str) -> str:
    return display_url(url, path=False).removesuffix("/…")


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


def _attempts(n: int) -> str:
    return f"{n} attempt{'s' if n != 1 else ''}"


def _parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date).

    None when the header is absent or unreadable; a date in the past means "now".
    """
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = (when - datetime.now(timezone.utc)).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


_URL_QUERY = re.compile(r"(https?://[^\s\"'<>?]+)\?[^\s\"'<>]*")


def _scrub(text: str) -> str:
    """Drop the query string of every URL in ``text``: a presigned URL's query is a credential."""
    return _URL_QUERY.sub(r"\1?…", text)


def _trace_body(text: str, limit: int = TRACE_BODY_LIMIT) -> str:
    """A body as traced: secrets masked and URL query strings dropped, then cut at ``limit``."""
    text = _scrub(redact.mask(text))
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit} more characters)"


def _id(value: str) -> str:
    # Ids go into the path: quote everything so an id can never add a segment or a query.
    return quote(str(value), safe="")


class _Secret:
    """Holds the service key so that no repr, str or debugger view of the client shows it."""

    __slots__ = ("_value",)

    def __init__(self, value: str | None) -> None:
        self._value = value or None

    def get(self) -> str | None:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return redact.MASK if self._value else "None"

    __str__ = __repr__


# --------------------------------------------------------------------------------------------
# The client


class OpusClient:
    """Async client of the Opus Job Operator API. One per run; use ``async with`` or ``aclose``.

    ``http`` may be shared (the run's ``httpx.AsyncClient``); it is closed by :meth:`aclose`
    only when this client created it. The service key is registered with
    :func:`opus_runner.redact.register` at once, so it is masked everywhere from then on.
    """

    def __init__(
        self,
        base_url: str,
        service_key: str | None,
        *,
        http: httpx.AsyncClient | None = None,
        retry: RetryPolicy | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        deadline: float = DEFAULT_DEADLINE,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
        max_connections: int = 100,
        trace: bool = False,
    ) -> None:
        redact.register(service_key)
        redact.register_url_credentials(base_url)
        self._key = _Secret(service_key)
        self.base_url = str(base_url).strip().rstrip("/")
        try:
            url = httpx.URL(self.base_url)
        except (httpx.InvalidURL, TypeError, ValueError):
            url = None
        if url is None or url.scheme not in ("http", "https") or not url.host:
            raise UsageError(
                f"the Opus base URL {redact.mask(redact.without_userinfo(self.base_url))!r} is not an http(s) URL; "
                "pass one like https://operator.opus.com with --base-url or OPUS_BASE_URL"
            )
        if url.scheme == "http" and not is_loopback_host(url.host):
            raise UsageError(
                f"refusing to send the service key over plain http to {url.host}; use https"
            )
        self._origin = (url.scheme, url.host, url.port)
        self.retry = retry or RetryPolicy()
        if deadline <= 0 or max_answer_bytes < 1:
            raise ValueError("OpusClient deadline and max_answer_bytes must be positive")
        #: seconds one whole exchange may take, and the most answer bytes read
        self.deadline = deadline
        self.max_answer_bytes = max_answer_bytes
        self.trace = trace
        self._owns_http = http is None
        if http is None:
            http = httpx.AsyncClient(
                timeout=httpx.Timeout(timeout),
                limits=httpx.Limits(
                    max_connections=max_connections,
                    max_keepalive_connections=max_connections,
                ),
                http2=False,
            )
        self.http: httpx.AsyncClient = http

    def __repr__(self) -> str:
        return f"OpusClient(base_url={redact.mask(redact.without_userinfo(self.base_url))!r}, key={self._key!r})"

    async def aclose(self) -> None:
        """Close the HTTP client if this object created it (a shared one is left open)."""
        if self._owns_http:
            await self.http.aclose()

    async def __aenter__(self) -> OpusClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # ---- plumbing -------------------------------------------------------------------------

    def _require_key(self) -> str:
        key = self._key.get()
        if not key:
            raise ConfigError(NO_KEY_MESSAGE)
        return key

    def _same_origin(self, url: httpx.URL) -> bool:
        return (url.scheme, url.host, url.port) == self._origin

    async def _send(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
        content: bytes | None = None,
        content_type: str | None = None,
        api: bool = True,
    ) -> httpx.Response:
        """One HTTP exchange, traced when asked. The key is added only to same-origin API calls."""
        headers: dict[str, str] = {"user-agent": f"opus-runner/{__version__}"}
        request_url = httpx.URL(url, params=params) if params else httpx.URL(url)
        if api:
            headers["accept"] = "application/json"
            if self._same_origin(request_url):
                headers[KEY_HEADER] = self._require_key()
        if content_type:
            headers["content-type"] = content_type
        tracing = self.trace and log.isEnabledFor(logging.DEBUG)
        shown = redact.without_userinfo(str(request_url)) if api else _safe_url(request_url)
        if tracing:
            self._trace_request(method, shown, headers, json_body, content)
        started = time.perf_counter()
        kwargs: dict[str, Any] = {"headers": headers}
        if json_body is not None:
            kwargs["json"] = json_body
        if content is not None:
            kwargs["content"] = content
        request = self.http.build_request(method, request_url, **kwargs)
        # A redirect would carry the key header to wherever it points: never follow.
        follow = {"follow_redirects": False} if api else {}
        try:
            try:
                async with asyncio.timeout(self.deadline):
                    response = await self.http.send(request, stream=True, **follow)
                    try:
                        await self._read_answer(response, method, request_url if api else shown)
                    finally:
                        await response.aclose()
            except TimeoutError:
                raise AnswerTooSlow(
                    f"no complete answer within {self.deadline:g} s", request=request
                ) from None
        except httpx.TransportError as exc:
            if tracing:
                elapsed = (time.perf_counter() - started) * 1000
                why = _scrub(_describe(exc))
                log.debug(redact.mask(f"<- {method} {shown} failed after {elapsed:.0f} ms: {why}"))
            raise
        if tracing:
            elapsed = (time.perf_counter() - started) * 1000
            self._trace_response(method, shown, response, elapsed, api=api)
        return response

    async def _read_answer(self, response: httpx.Response, method: str, where: httpx.URL | str) -> None:
        """Read the body (decompressed) into ``response``, refusing more than ``max_answer_bytes``."""
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > self.max_answer_bytes:
                limit = self.max_answer_bytes
                shown = f"{limit // (1024 * 1024)} MiB" if limit % (1024 * 1024) == 0 else f"{limit} bytes"
                raise AnswerTooLarge(
                    f"the answer is larger than {shown} once decompressed, more than any Opus "
                    "answer needs; it was not read further (a broken or hostile server or proxy)",
                    method=method,
                    endpoint=where.path if isinstance(where, httpx.URL) else where,
                )
            chunks.append(chunk)
        # What Response.aread() would have stored: the decoded body, so .text and .content work.
        response._content = b"".join(chunks)

    @staticmethod
    def _trace_request(
        method: str, shown: str, headers: Mapping[str, str], json_body: Any, content: bytes | None
    ) -> None:
        parts = [f"-> {method} {shown}"]
        shown_headers = {
            k: (redact.MASK if k.lower() == KEY_HEADER else v) for k, v in headers.items()
        }
        parts.append(" headers=" + json.dumps(shown_headers, sort_keys=True))
        if json_body is not None:
            parts.append(" body=" + _trace_body(json.dumps(json_body, default=str)))
        elif content is not None:
            parts.append(f" body=<{len(content)} bytes>")
        log.debug(redact.mask("".join(parts)))

    @staticmethod
    def _trace_response(
        method: str, shown: str, response: httpx.Response, elapsed_ms: float, *, api: bool
    ) -> None:
        line = f"<- {response.status_code} {method} {shown} ({elapsed_ms:.0f} ms)"
        if api:
            try:
                text = response.text
            except UnicodeDecodeError:
                text = f"<{len(response.content)} undecodable bytes>"
            if text:
                line += " body=" + _trace_body(text)
        log.debug(redact.mask(line))

    async def _pause(self, delay: float, label: str, attempt: int, why: str) -> None:
        # A user watching a run sees every retry: silence would look like a hang.
        log.info(
            redact.mask(
                f"{label}: {_scrub(why)}; retrying in {delay:.1f} s "
                f"(attempt {attempt + 1} of {self.retry.attempts})"
            )
        )
        await self.retry.sleep(delay)

    def _delay_for(self, response: httpx.Response, retry: int) -> float:
        if response.status_code in _RETRY_AFTER_STATUSES:
            wanted = _parse_retry_after(response.headers.get("retry-after"))
            if wanted is not None:
                return self.retry.after(wanted)
        # No Retry-After (Opus documents none for its 429s): back off with full jitter.
        return self.retry.backoff(retry)

    @staticmethod
    def _why(response: httpx.Response) -> str:
        if response.status_code == 429:
            hint = "" if response.headers.get("retry-after") else ", no Retry-After"
            return f"rate limited (HTTP 429{hint})"
        return f"HTTP {response.status_code}"

    def _network_error(
        self, exc: Exception, label: str, attempts: int, target: str
    ) -> NetworkError:
        if isinstance(exc, AnswerTooSlow):
            return SlowAnswerError(
                redact.mask(
                    f"{redact.without_userinfo(target)} answered too slowly for {label}: {exc}; the server is "
                    "reachable but did not finish its answer, so it was not asked again"
                )
            )
        why = _describe(exc)
        if isinstance(exc, httpx.TimeoutException) and why == type(exc).__name__:
            phase = "connecting" if isinstance(exc, httpx.ConnectTimeout) else "answering"
            limit = getattr(self.http.timeout, "connect" if phase == "connecting" else "read", None)
            if limit is not None:
                why += f" (nothing for {limit:g} s while {phase}; the retry budget is {self.retry.budget:g} s)"
        shown = redact.without_userinfo(target)
        return NetworkError(redact.mask(f"could not reach {shown} for {label} after {_attempts(attempts)}: " + _scrub(why)))

    async def _with_retries(
        self,
        label: str,
        target: str,
        send: Callable[[], Awaitable[httpx.Response]],
    ) -> httpx.Response:
        """Run ``send`` until it answers something final; the last answer is returned as is."""
        policy = self.retry
        started = time.monotonic()
        for attempt in range(1, policy.attempts + 1):
            try:
                response = await send()
            except _NOT_RETRYABLE as exc:
                raise self._network_error(exc, label, attempt, target) from exc
            except httpx.TransportError as exc:
                delay = policy.backoff(attempt - 1)
                if attempt == policy.attempts or not self._may_retry(exc, started, delay):
                    raise self._network_error(exc, label, attempt, target) from exc
                await self._pause(delay, label, attempt, _describe(exc))
                continue
            if (
                response.status_code in policy.statuses
                and attempt < policy.attempts
                and not _is_permanent(response)
            ):
                await self._pause(
                    self._delay_for(response, attempt - 1), label, attempt, self._why(response)
                )
                continue
            return response
        raise AssertionError("unreachable: the retry loop always returns or raises")

    def _may_retry(self, exc: Exception, started: float, delay: float) -> bool:
        """Whether a transport failure is worth another attempt within the retry budget."""
        if isinstance(exc, AnswerTooSlow):
            return False  # it trickled for the whole deadline: another try would too
        if isinstance(exc, httpx.TimeoutException):
            return time.monotonic() - started + delay < self.retry.budget
        return True

    def _url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    async def _call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
        subject: str | None = None,
        job_id: str | None = None,
        workspace: str | None = None,
    ) -> Any:
        """An API call with retries; returns the decoded JSON body or raises the mapped error."""
        self._require_key()
        label = f"{method} {path}"
        url = self._url(path)

        async def send() -> httpx.Response:
            return await self._send(method, url, params=params, json_body=json_body)

        response = await self._with_retries(label, self.base_url, send)
        if not response.is_success:
            raise error_from_response(
                response,
                method=method,
                endpoint=path,
                subject=subject,
                job_id=job_id,
                workspace=workspace,
            )
        return _decode_json(response, method=method, endpoint=path, job_id=job_id)

    # ---- workflows ------------------------------------------------------------------------

    async def get_workflow(
        self, workflow_id: str, *, version: int | None = None, version_id: str | None = None
    ) -> dict[str, Any]:
        """``GET /workflow/{id}``: the workflow and its ``jobPayloadSchema``.

        ``version_id`` (a version uuid) wins over ``version`` (a number), as on the server.
        """
        params: dict[str, Any] = {}
        if version_id:
            params["workflowVersionId"] = version_id
        elif version is not None:
            params["version"] = version
        body = await self._call(
            "GET",
            f"/workflow/{_id(workflow_id)}",
            params=params or None,
            subject=f"workflow {workflow_id}",
        )
        return _expect_object(body, "GET", f"/workflow/{workflow_id}")

    async def get_workflow_object(
        self, workflow_uuid: str, *, version: int | None = None
    ) -> dict[str, Any]:
        """``GET /reference-workflow/v2/workflow-object/{uuid}``: the v2 graph of a workflow.

        ``version`` is sent as ``?version=N`` to ask for one version's graph.
        """
        path = f"/reference-workflow/v2/workflow-object/{_id(workflow_uuid)}"
        body = await self._call(
            "GET",
            path,
            params={"version": version} if version is not None else None,
            subject=f"workflow {workflow_uuid}",
        )
        return _expect_object(body, "GET", path)

    async def list_versions(self, workflow_uuid: str) -> list[dict[str, Any]]:
        """``GET /executor/workflow/{uuid}/versions``: the workflow's versions, as listed.

        Accepts a bare list or an object holding it under ``versions`` (or ``data``/``items``).
        """
        path = f"/executor/workflow/{_id(workflow_uuid)}/versions"
        body = await self._call("GET", path, subject=f"workflow {workflow_uuid}")
        items: Any = body
        if isinstance(body, Mapping):
            items = next(
                (body[k] for k in ("versions", "data", "items") if isinstance(body.get(k), list)),
                None,
            )
        if not isinstance(items, list):
            raise ApiError(
                "the versions list has an unexpected shape (no list of versions in it)",
                method="GET",
                endpoint=path,
            )
        return [dict(v) for v in items if isinstance(v, Mapping)]

    # ---- jobs -----------------------------------------------------------------------------

    async def initiate(
        self,
        workflow_id: str,
        *,
        title: str,
        description: str = "",
        version: int | None = None,
        version_id: str | None = None,
        workspaces: tuple[str, ...] | list[str] = (),
        extra: Mapping[str, Any] | None = None,
    ) -> str:
        """``POST /job/initiate``: create a job; returns its ``jobExecutionId`` as a str.

        ``version_id`` is sent as ``workflowVersionId`` and wins over ``version``
        (``workflowVersionNumber``); ``workspaces`` as the comma-separated ``workspaces``.
        ``extra`` adds other documented fields. Job ids are numeric strings live; a JSON
        number is accepted and kept as its digits.
        """
        body: dict[str, Any] = {
            "workflowId": workflow_id,
            "title": title,
            "description": description,
            "source": "api",
        }
        if version_id:
            body["workflowVersionId"] = version_id
        elif version is not None:
            body["workflowVersionNumber"] = version
        if workspaces:
            body["workspaces"] = ",".join(workspaces)
        if extra:
            body.update(extra)
        data = await self._call(
            "POST",
            "/job/initiate",
            json_body=body,
            subject=f"workflow {workflow_id}",
            workspace=", ".join(workspaces) or None,
        )
        try:
            job_id = job_id_of(data.get("jobExecutionId") if isinstance(data, Mapping) else None)
        except ValueError as exc:
            raise ApiError(
                f"the answer's jobExecutionId {exc}, so the job is not followed",
                method="POST",
                endpoint="/job/initiate",
            ) from None
        if job_id is None:
            raise ApiError(
                "the answer has no jobExecutionId, so the job cannot be followed",
                method="POST",
                endpoint="/job/initiate",
            )
        return job_id

    async def file_upload_url(
        self,
        *,
        extension: str,
        original_name: str | None,
        workflow_id: str | None = None,
        workspace_id: str | None = None,
        access_scope: str | None = DEFAULT_ACCESS_SCOPE,
    ) -> tuple[str, str]:
        """``POST /job/file/upload``: returns ``(presignedUrl, fileUrl)`` for one file.

        ``extension`` is sent lower-case with its dot (``PDF`` -> ``.pdf``). The platform needs
        a scope: ``workspaceId`` when given (the file then sits in that workspace), else
        ``workflowId``. ``access_scope`` None (or ``"unlisted"``) sends none, which the
        platform takes as unlisted.
        """
        ext = extension.strip().lower()
        if not ext.startswith("."):
            ext = "." + ext
        body: dict[str, Any] = {"fileExtension": ext}
        if access_scope and access_scope != "unlisted":
            body["accessScope"] = access_scope
        if original_name:
            body["originalName"] = original_name
        if workspace_id:
            body["workspaceId"] = workspace_id
        elif workflow_id:
            body["workflowId"] = workflow_id
        else:
            raise UsageError(
                f"cannot upload {original_name or 'a file'!r}: Opus needs the workflow or the "
                "workspace the file belongs to"
            )
        data = await self._call(
            "POST",
            "/job/file/upload",
            json_body=body,
            workspace=workspace_id or (f"of workflow {workflow_id}" if workflow_id else None),
        )
        presigned = data.get("presignedUrl") if isinstance(data, Mapping) else None
        file_url = data.get("fileUrl") if isinstance(data, Mapping) else None
        if not isinstance(presigned, str) or not isinstance(file_url, str) or not presigned:
            raise ApiError(
                f"the answer for {original_name!r} lacks presignedUrl or fileUrl",
                method="POST",
                endpoint="/job/file/upload",
            )
        return presigned, file_url

    async def put_presigned(
        self, presigned_url: str, data: bytes, *, content_type: str | None = None
    ) -> None:
        """``PUT`` the bytes to a presigned storage URL. Never carries the service key.

        No ``Content-Type`` is sent unless given: the platform's presigned URLs are signed
        without one and answer 403 to a request that adds it.
        """
        shown = _safe_url(presigned_url)
        label = f"PUT {shown}"
        target = _origin_of(presigned_url)

        async def send() -> httpx.Response:
            return await self._send(
                "PUT", presigned_url, content=data, content_type=content_type, api=False
            )

        response = await self._with_retries(label, target, send)
        if not response.is_success:
            raise error_from_response(response, method="PUT", endpoint=shown, api=False)

    async def upload_file(
        self,
        data: bytes,
        *,
        original_name: str,
        workflow_id: str | None = None,
        workspace_id: str | None = None,
        access_scope: str | None = DEFAULT_ACCESS_SCOPE,
        content_type: str | None = None,
    ) -> str:
        """Upload one file through the presigned-URL flow; returns the ``fileUrl`` to send.

        No ``Content-Type`` goes with the PUT unless given: presigned URLs signed without one
        refuse a request that adds it (403).
        """
        dot = original_name.rfind(".")
        extension = original_name[dot:] if dot > 0 and dot < len(original_name) - 1 else ""
        if not extension:
            raise UsageError(
                f"cannot upload {original_name!r}: the file name has no extension, and Opus "
                "needs one (.pdf, .csv, ...); rename the file"
            )
        presigned, file_url = await self.file_upload_url(
            extension=extension,
            original_name=original_name,
            workflow_id=workflow_id,
            workspace_id=workspace_id,
            access_scope=access_scope,
        )
        await self.put_presigned(presigned, data, content_type=content_type)
        return file_url

    async def execute(
        self,
        job_id: str,
        payload: Mapping[str, Any],
        *,
        callback_url: str | None = None,
        workspaces: tuple[str, ...] | list[str] = (),
    ) -> ExecuteOutcome:
        """``POST /job/execute``, never sent twice once it may have reached the server.

        ``callbackUrl`` is always sent (Opus refuses an execute without one): ``callback_url``,
        else :data:`~opus_runner.urls.PLACEHOLDER_CALLBACK_URL`, a host that never resolves.

        It is sent again only when the request provably never left (a connect error, a pool
        timeout) or the service shows the job holds no input (:meth:`execute_received`). Any
        other unclear ending (read timeout, dropped connection, 429, 5xx, an unreadable 2xx)
        is settled by reading the job: received -> an unconfirmed :class:`ExecuteOutcome`;
        cannot tell, or still no input after the last attempt -> :class:`ExecuteOutcomeUnknown`
        (the journal keeps the job unconfirmed for ``resume`` to ask again). A refusal, also
        one inside a 2xx body, raises :class:`~opus_runner.errors.ExecuteRefused`.
        """
        self._require_key()
        path = "/job/execute"
        label = f"POST {path}"
        url = self._url(path)
        body: dict[str, Any] = {
            "jobExecutionId": job_id,
            "jobPayloadSchemaInstance": payload,
            "callbackUrl": callback_url or PLACEHOLDER_CALLBACK_URL,
        }
        if workspaces:
            body["workspaces"] = ",".join(workspaces)
        policy = self.retry
        started = time.monotonic()
        for attempt in range(1, policy.attempts + 1):
            last = attempt == policy.attempts
            response: httpx.Response | None = None
            try:
                response = await self._send("POST", url, json_body=body)
            except _NOT_RETRYABLE as exc:
                raise self._network_error(exc, label, attempt, self.base_url) from exc
            except _NEVER_SENT as exc:
                delay = policy.backoff(attempt - 1)
                if last or not self._may_retry(exc, started, delay):
                    raise self._network_error(exc, label, attempt, self.base_url) from exc
                await self._pause(delay, label, attempt, _describe(exc))
                continue
            except AnswerTooLarge as exc:
                # An answer came, so the request is over, but it cannot be read: the job says.
                why, cause = exc.message, None
            except AnswerTooSlow as exc:
                why, cause = f"the server answered too slowly: {exc}", exc
            except httpx.TransportError as exc:
                why, cause = _describe(exc), exc
            else:
                settled = self._execute_answer(job_id, response, path)
                if isinstance(settled, ExecuteOutcome):
                    return settled
                why, cause = settled, None
            # The request may have reached the server: only the job itself can say. With no
            # answer at all (a timeout, a cut connection) it may also still be on its way, held
            # by a slow gateway: "no input" then proves nothing, so it is not sent again here.
            outcome = await self._resolve_execute(job_id, why, cause, last=last or response is None)
            if outcome is not None:
                return outcome
            delay = self._delay_for(response, attempt - 1) if response is not None else policy.backoff(attempt - 1)
            await self._pause(delay, label, attempt, f"{why}; job {job_id} holds no input, so it is sent again")
        raise AssertionError("unreachable: the execute loop always returns or raises")

    def _execute_answer(self, job_id: str, response: httpx.Response, path: str) -> ExecuteOutcome | str:
        """A clear answer to execute as an outcome (or a raised refusal); an unclear one as the
        reason it is unclear, for :meth:`_resolve_execute`."""
        status = response.status_code
        if status == 429 or status >= 500:
            return f"{self._why(response)}: {server_message(response)}"
        if not response.is_success:
            error = error_from_response(
                response, method="POST", endpoint=path, subject=f"job {job_id}", job_id=job_id
            )
            if isinstance(error, (AuthError, NotFoundError)):
                raise error
            raise ExecuteRefused(
                f"Opus refused to execute job {job_id} (HTTP {status}): {error.message}",
                status_code=status,
                method="POST",
                endpoint=path,
                job_id=job_id,
            )
        try:
            data = _decode_json(response, method="POST", endpoint=path, job_id=job_id)
        except ApiError as exc:
            return exc.message  # a 2xx we cannot read: the server may well have taken it
        data = data if isinstance(data, Mapping) else {}
        refusal = _refusal_in(data)
        if refusal is not None:
            inner, why = refusal
            shown = f"HTTP {status}" + (f" carrying status {inner}" if inner else "")
            raise ExecuteRefused(
                f"Opus refused to execute job {job_id} ({shown}): {redact.mask(why)}",
                status_code=inner or status,
                method="POST",
                endpoint=path,
                job_id=job_id,
            )
        message = data.get("message")
        message = message if isinstance(message, str) else ""
        return ExecuteOutcome(job_id=job_id, confirmed=True, status=None, message=redact.mask(message))

    async def _resolve_execute(
        self, job_id: str, reason: str, cause: BaseException | None, *, last: bool = True
    ) -> ExecuteOutcome | None:
        """Execute's ending was unclear: read what the service knows instead of guessing.

        Returns the unconfirmed outcome when the job got its payload, None when it provably
        did not and another attempt is allowed; raises :class:`ExecuteOutcomeUnknown` otherwise.
        """
        again = (
            f"Look again with `opus-run status {job_id}`, or finish the run later with "
            "`opus-run resume`"
        )
        log.debug(redact.mask(f"POST /job/execute: unclear answer ({reason}); reading the job"))
        try:
            received, status = await self.execute_received(job_id)
        except OpusRunnerError as exc:
            unknown = ExecuteOutcomeUnknown(
                redact.mask(
                    f"the answer to execute was lost ({reason}) and job {job_id} could not be "
                    f"read either ({exc}); the request was not resent, so the job may or may "
                    f"not be running. {again}."
                ),
                method="POST",
                endpoint="/job/execute",
                job_id=job_id,
            )
            unknown.answered = cause is None
            raise unknown from exc
        if received:
            return ExecuteOutcome(
                job_id=job_id,
                confirmed=False,
                status=status,
                message=redact.mask(
                    f"the answer to execute was lost ({reason}); job status is {status}"
                ),
            )
        if received is False and not last:
            return None
        answered = cause is None  # an HTTP answer came (429, 5xx...): the request is over
        if received is False and answered:
            shown, error = "still holds no input after the last attempt", ExecuteNotReceived
        elif received is False:
            shown = "holds no input yet, but the request got no answer and may still arrive"
            error = ExecuteOutcomeUnknown
        else:
            shown, error = "does not show whether it got one", ExecuteOutcomeUnknown
        unknown = error(
            redact.mask(
                f"the answer to execute was lost ({reason}) and job {job_id} (status "
                f"{status}) {shown}; the request was not resent, so the job cannot run "
                f"twice. {again}."
            ),
            method="POST",
            endpoint="/job/execute",
            job_id=job_id,
        )
        unknown.answered = answered
        raise unknown from cause

    async def job(self, job_id: str) -> dict[str, Any]:
        """``GET /job/{id}``: the job's detail (``status``, ``input``, ``output``, ``audit``...)."""
        path = f"/job/{_id(job_id)}"
        body = await self._call("GET", path, subject=f"job {job_id}", job_id=job_id)
        return _expect_object(body, "GET", path, job_id=job_id)

    async def execute_received(self, job_id: str) -> tuple[bool | None, str]:
        """Whether Opus received an execute for ``job_id``: ``(True | False | None, status)``.

        A status past PENDING proves it. PENDING is also what an initiated, never-executed job
        may read (opus-api.md section 6), so then the job's detail decides: an ``input``
        holding values means the payload arrived, an empty or null one that it did not. None:
        the detail does not say (no ``input`` field at all).
        """
        status = await self.status(job_id)
        if status not in AMBIGUOUS_STATUSES:
            return True, status
        detail = await self.job(job_id)
        if "input" not in detail and isinstance(detail.get("data"), Mapping):
            detail = dict(detail["data"])
        if "input" not in detail:
            return None, status
        return bool(detail["input"]), normalise_status(detail.get("status") or status)

    async def status(self, job_id: str) -> str:
        """``GET /job/{id}/status``, normalised (``IN PROGRESS`` -> ``IN_PROGRESS``). Never
        raises on an unknown spelling."""
        path = f"/job/{_id(job_id)}/status"
        body = await self._call("GET", path, subject=f"job {job_id}", job_id=job_id)
        raw = body.get("status") if isinstance(body, Mapping) else body
        return normalise_status(raw)

    async def results(self, job_id: str) -> ResultsData:
        """``GET /job/{id}/results``, every published shape normalised (:mod:`opus_runner.results`)."""
        path = f"/job/{_id(job_id)}/results"
        body = await self._call("GET", path, subject=f"job {job_id}", job_id=job_id)
        if not isinstance(body, (Mapping, list)):
            raise ApiError(
                f"expected a JSON object or list, the server answered with a JSON {type(body).__name__}",
                method="GET",
                endpoint=path,
                job_id=job_id,
            )
        return parse_results(body)

    async def file_download_url(
        self, file_url: str, *, expiry: int = DOWNLOAD_URL_EXPIRY
    ) -> dict[str, Any]:
        """``POST /job/file/download``: a presigned URL for an output file reference.

        Returns the answer (``presignedUrl``, ``fileUrl``, ``contentType``, ``contentLength``);
        live clients could not GET ``fileUrl`` references directly (opus-api.md section 4).
        """
        path = "/job/file/download"
        body = await self._call(
            "POST",
            path,
            json_body={"fileUrl": file_url, "customExpiry": expiry},
            subject=f"file {display_url(file_url)}",
        )
        data = _expect_object(body, "POST", path)
        if not isinstance(data.get("presignedUrl"), str) or not data["presignedUrl"]:
            raise ApiError(
                f"the answer for {display_url(file_url)} has no presignedUrl", method="POST", endpoint=path
            )
        return data

    async def audit(self, job_id: str) -> AuditProgress:
        """``GET /job/{id}/audit``: node-level progress."""
        path = f"/job/{_id(job_id)}/audit"
        body = await self._call("GET", path, subject=f"job {job_id}", job_id=job_id)
        return AuditProgress.from_raw(body)

    async def search_jobs(
        self,
        *,
        workflow_id: str | None = None,
        status: str | None = None,
        offset: int = 0,
        max_results: int = 25,
    ) -> Any:
        """``GET /job/search``: the server's answer as decoded JSON (its shape is not fixed)."""
        params: dict[str, Any] = {"offset": offset, "maxResults": max_results}
        if workflow_id:
            params["workflowId"] = workflow_id
        if status:
            params["status"] = status
        return await self._call("GET", "/job/search", params=params)


# --------------------------------------------------------------------------------------------
# Body decoding


#: What a job id may be: live ids are numeric strings, other deployments UUID-like tokens.
#: It names files (``results/{{ job.id }}.json``) and URL paths, so nothing else is accepted.
_JOB_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")


def job_id_of(value: Any) -> str | None:
    """A job id as a string: live ids are numeric strings (``"72964"``); a JSON number is kept
    as its digits. None for anything that is not an id; ``ValueError`` for a string that is
    not a safe token (letters, digits, ``-``, ``_``, ``.``, not starting with a dot, at most
    128 characters), which would otherwise end up in paths."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, (int, str)):
        text = str(value).strip()
        if text and not _JOB_ID.fullmatch(text):
            shown = repr(text[:60]) + ("…" if len(text) > 60 else "")
            raise ValueError(f"{shown} is not a job id (expected letters, digits, '-', '_' or '.')")
        return text or None
    return None


def _refusal_in(data: Mapping[str, Any]) -> tuple[int | None, str] | None:
    """``(inner status, reason)`` when a 2xx execute body carries a failure, else None.

    Seen: ``{statusCode: 500, message: "Request failed with status code 422"}`` inside a 200;
    the DTO has an ``error`` field; ``success: false`` (opus-api.md section 5).
    """
    inner = data.get("statusCode")
    inner_code = _as_int(inner, 0) if not isinstance(inner, bool) else 0
    error = data.get("error")
    if inner_code >= 400:
        return inner_code, _message_from_json(data) or f"inner status {inner_code}"
    if isinstance(error, Mapping) or (isinstance(error, str) and error.strip()):
        return None, _message_from_json(error) or _message_from_json(data) or "an error was reported"
    if data.get("success") is False:
        return None, _message_from_json(data) or "no reason given"
    return None


def _is_permanent(response: httpx.Response) -> bool:
    # The removed v1 route answers 500 "no longer supported": retrying only delays the fallback.
    if response.status_code != 500:
        return False
    return "no longer supported" in server_message(response).lower()


def _decode_json(
    response: httpx.Response, *, method: str, endpoint: str, job_id: str | None = None
) -> Any:
    text = response.text
    if not text.strip():
        raise ApiError(EMPTY_MESSAGE, method=method, endpoint=endpoint, job_id=job_id)
    if _looks_html(response, text):
        raise ApiError(HTML_MESSAGE, method=method, endpoint=endpoint, job_id=job_id)
    try:
        return jsontext.loads(text)
    except RecursionError:
        raise ApiError(
            "the server answered with JSON nested too deeply to read; no Opus answer is, so "
            "the server or a proxy in front of it is broken or hostile",
            method=method,
            endpoint=endpoint,
            job_id=job_id,
        ) from None
    except ValueError:
        raise ApiError(
            "the server answered with something that is not JSON: "
            + _one_line(text, 200),
            method=method,
            endpoint=endpoint,
            job_id=job_id,
        ) from None


def _expect_object(
    body: Any, method: str, endpoint: str, *, job_id: str | None = None
) -> dict[str, Any]:
    if not isinstance(body, Mapping):
        raise ApiError(
            f"expected a JSON object, the server answered with a JSON {type(body).__name__}",
            method=method,
            endpoint=endpoint,
            job_id=job_id,
        )
    return dict(body)
