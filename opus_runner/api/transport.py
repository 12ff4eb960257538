"""One HTTP exchange and the one retry loop around it.

:class:`Transport` owns the ``httpx.AsyncClient`` and everything that is about getting an
answer rather than about what it says:

- the service key goes only in the ``x-service-key`` header of API calls to the base URL's
  origin, never to a presigned storage URL, and never into a trace, repr or exception;
- every answer must arrive whole within ``deadline`` (a server sending one byte at a time never
  trips a per-read timeout) and be at most ``max_answer_bytes`` once decompressed;
- ``--verbose`` traces show every request and answer with secrets masked, URL query strings
  (presigned credentials) dropped and bodies cut at :data:`TRACE_BODY_LIMIT`;
- :meth:`Transport.exchange` is the retry loop of every call: exponential backoff with full
  jitter, ``Retry-After`` honoured with jitter added, timeouts retried only within the
  policy's ``budget``. Whether an ending may be resent is the call's :class:`AttemptRule`:
  :class:`AnswerAsIs` for ordinary calls, :class:`.execute.ExecuteAttempts` for execute.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random as _random
import re
import ssl
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any, Protocol, TypeVar

import httpx

from .. import redact
from ..__about__ import __version__
from ..errors import AnswerTooLarge, ConfigError, NetworkError, SlowAnswerError, TlsError
from ..urls import display_url
from .answers import is_permanent, status_reason

log = logging.getLogger("opus_runner.http")

#: Bodies in ``--verbose`` traces are cut here so a large workflow blueprint does not flood logs.
TRACE_BODY_LIMIT = 2048
KEY_HEADER = "x-service-key"
NO_KEY_MESSAGE = (
    "no Opus service key: set OPUS_SERVICE_KEY (or pass --sandbox to try a local sandbox)"
)

# The request certainly never left this machine: resending execute cannot run a job twice.
NEVER_SENT: tuple[type[Exception], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
)
# Transport errors that are our own fault (bad scheme, malformed request): retrying cannot help.
_NOT_RETRYABLE: tuple[type[Exception], ...] = (httpx.UnsupportedProtocol, httpx.LocalProtocolError)
# A handshake cut short is the network's doing; another attempt may well get through.
_TLS_TRANSIENT: tuple[type[ssl.SSLError], ...] = (ssl.SSLEOFError, ssl.SSLZeroReturnError)
# Only these answers say "come back later" with a Retry-After worth honouring (RFC 9110).
_RETRY_AFTER_STATUSES = frozenset({429, 503})
#: Seconds a whole exchange (request sent, answer read to its end) may take.
DEFAULT_DEADLINE = 60.0
#: Seconds without progress on one read (or on connecting) before it times out.
DEFAULT_TIMEOUT = 30.0
#: The largest answer read, counted after decompression (a gzip bomb is stopped here).
MAX_ANSWER_BYTES = 64 * 1024 * 1024


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


@dataclass(frozen=True)
class RetryNotice:
    """One retry about to happen, for whoever shows it (:attr:`Transport.on_retry`): the
    api layer knows nothing of reporters, the run wires its own in."""

    call: str  # "POST /job/execute": method and path, no query string
    delay: float  # seconds until the next attempt
    attempt: int  # the attempt about to be made (2 for the first retry)
    attempts: int  # the policy's most attempts
    reason: str  # why: "HTTP 503", "ConnectError: ..."
    status: int | None = None  # the HTTP status that asked for it; None for a transport failure

    def text(self) -> str:
        """``retrying in 2.1s: 503 from POST /job/execute (attempt 2 of 6)``."""
        why = f"{self.status} from {self.call}" if self.status is not None else f"{self.call}: {self.reason}"
        return f"retrying in {self.delay:.1f}s: {why} (attempt {self.attempt} of {self.attempts})"

    def as_dict(self) -> dict[str, Any]:
        return {
            "call": self.call,
            "delay": round(self.delay, 3),
            "attempt": self.attempt,
            "attempts": self.attempts,
            "reason": self.reason,
            "status": self.status,
        }


class AnswerTooSlow(httpx.TimeoutException):
    """The answer did not arrive whole within the client's deadline (it may still be coming)."""


# --------------------------------------------------------------------------------------------
# How one attempt ended, and what the call makes of it


@dataclass(frozen=True)
class Ending:
    """How one attempt ended: with an answer (``response``), or with ``error``: a transport
    failure the call's rule would not resend blindly, or :class:`AnswerTooLarge` (an answer
    came, so the request is over, but it was not read)."""

    response: httpx.Response | None = None
    error: Exception | None = None


@dataclass(frozen=True)
class Resend:
    """An attempt's verdict: send the request again, after the usual wait; ``why`` is logged."""

    why: str


T_co = TypeVar("T_co", covariant=True)


class AttemptRule(Protocol[T_co]):
    """What one call makes of each attempt's ending: the only thing calls differ in."""

    def may_resend(self, error: httpx.TransportError) -> bool:
        """Whether a failed attempt may simply be sent again (within the retry budget)."""
        ...

    async def settle(self, ending: Ending, *, last: bool) -> T_co | Resend:
        """The call's value for ``ending`` (or a raised error), or :class:`Resend`."""
        ...


class AnswerAsIs:
    """Ordinary calls: reads and idempotent writes may be resent after any transport failure;
    a 429 or 5xx is asked again, and the last answer is returned as is."""

    def __init__(self, statuses: frozenset[int]) -> None:
        self.statuses = statuses

    def may_resend(self, error: httpx.TransportError) -> bool:
        return True

    async def settle(self, ending: Ending, *, last: bool) -> httpx.Response | Resend:
        response = ending.response
        if response is None:
            assert ending.error is not None
            raise ending.error
        if response.status_code in self.statuses and not last and not is_permanent(response):
            return Resend(status_reason(response))
        return response


# --------------------------------------------------------------------------------------------
# Small helpers


def safe_url(url: str | httpx.URL) -> str:
    """``scheme://host/path`` only: a presigned URL's query string is a credential."""
    return display_url(url)


def origin_of(url: str) -> str:
    return display_url(url, path=False).removesuffix("/…")


def describe(exc: BaseException) -> str:
    text = str(exc).strip()
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


def tls_failure(exc: BaseException) -> ssl.SSLError | None:
    """The TLS error behind a transport failure (httpx wraps httpcore's, which wraps ssl's),
    unless it is a handshake the network cut short; None when TLS is not to blame."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, ssl.SSLError):
            return None if isinstance(cause, _TLS_TRANSIENT) else cause
        cause = cause.__cause__ or cause.__context__
    return None


def _reason(error: ssl.SSLError) -> str:
    """``WRONG_VERSION_NUMBER`` -> ``wrong version number``; the whole text when ssl gave no reason."""
    reason = getattr(error, "reason", None)  # set by the ssl module, not by every raiser
    return reason.replace("_", " ").lower() if reason else describe(error)


def _attempts(n: int) -> str:
    return f"{n} attempt{'s' if n != 1 else ''}"


def parse_retry_after(value: str | None) -> float | None:
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


def scrub(text: str) -> str:
    """Drop the query string of every URL in ``text``: a presigned URL's query is a credential."""
    return _URL_QUERY.sub(r"\1?…", text)


def trace_body(text: str, limit: int = TRACE_BODY_LIMIT) -> str:
    """A body as traced: secrets masked and URL query strings dropped, then cut at ``limit``."""
    text = scrub(redact.mask(text))
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit} more characters)"


class Secret:
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
# The transport


class Transport:
    """Sends requests for one :class:`~.client.OpusClient`: key, deadline, size cap, traces,
    retries. ``origins`` are the API's ``(scheme, host, port)`` (the base URL's, and the v1
    URL's when it is elsewhere): only requests there get the key."""

    def __init__(
        self,
        key: Secret,
        origins: Collection[tuple[str, str, int | None]],
        *,
        http: httpx.AsyncClient | None,
        retry: RetryPolicy,
        timeout: float,
        deadline: float,
        max_answer_bytes: int,
        max_connections: int,
        trace: bool,
    ) -> None:
        self._key = key
        self._origins = frozenset(origins)
        self.retry = retry
        if deadline <= 0 or max_answer_bytes < 1:
            raise ValueError("OpusClient deadline and max_answer_bytes must be positive")
        #: seconds one whole exchange may take, and the most answer bytes read
        self.deadline = deadline
        self.max_answer_bytes = max_answer_bytes
        self.trace = trace
        #: told of every retry before its pause (a run shows them as lines or events); without
        #: one, retries are logged at INFO so commands without a reporter still show them
        self.on_retry: Callable[[RetryNotice], None] | None = None
        self.owns_http = http is None
        if http is None:
            from .pool import lean_transport

            limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
            http = httpx.AsyncClient(
                timeout=httpx.Timeout(timeout),
                limits=limits,
                http2=False,
                # Our own client only: a caller's client keeps the transport it was given.
                transport=lean_transport(limits),
            )
        self.http: httpx.AsyncClient = http

    def require_key(self) -> str:
        key = self._key.get()
        if not key:
            raise ConfigError(NO_KEY_MESSAGE)
        return key

    def _same_origin(self, url: httpx.URL) -> bool:
        return (url.scheme, url.host, url.port) in self._origins

    # ---- one exchange ---------------------------------------------------------------------

    async def send(
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
                headers[KEY_HEADER] = self.require_key()
        if content_type:
            headers["content-type"] = content_type
        tracing = self.trace and log.isEnabledFor(logging.DEBUG)
        shown = redact.without_userinfo(str(request_url)) if api else safe_url(request_url)
        if tracing:
            _trace_request(method, shown, headers, json_body, content)
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
                why = scrub(describe(exc))
                log.debug(redact.mask(f"<- {method} {shown} failed after {elapsed:.0f} ms: {why}"))
            raise
        if tracing:
            elapsed = (time.perf_counter() - started) * 1000
            _trace_response(method, shown, response, elapsed, api=api)
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

    # ---- the retry loop -------------------------------------------------------------------

    async def exchange(
        self,
        label: str,
        target: str,
        send: Callable[[], Awaitable[httpx.Response]],
        rule: AttemptRule[T_co] | None = None,
    ) -> T_co | httpx.Response:
        """Run ``send`` until ``rule`` settles an attempt (default :class:`AnswerAsIs`): the
        one retry loop of every call, ``POST /job/execute`` included.

        ``label`` names the call in retry lines, ``target`` the host in errors. A failure the
        rule may resend is retried with backoff, timeouts only within the budget; any other
        ending is the rule's to settle or to have sent again.
        """
        policy = self.retry
        rule = rule or AnswerAsIs(policy.statuses)
        started = time.monotonic()
        for attempt in range(1, policy.attempts + 1):
            last = attempt == policy.attempts
            try:
                ending = Ending(response=await send())
            except _NOT_RETRYABLE as exc:
                raise self._network_error(exc, label, attempt, target) from exc
            except httpx.TransportError as exc:
                tls = tls_failure(exc)
                if tls is not None:
                    raise self._tls_error(tls, label, target) from exc
                if rule.may_resend(exc):
                    delay = policy.backoff(attempt - 1)
                    if last or not self._may_retry(exc, started, delay):
                        raise self._network_error(exc, label, attempt, target) from exc
                    await self._pause(delay, label, attempt, describe(exc))
                    continue
                ending = Ending(error=exc)
            except AnswerTooLarge as exc:
                ending = Ending(error=exc)
            verdict = await rule.settle(ending, last=last)
            if not isinstance(verdict, Resend):
                return verdict
            status = None
            if ending.response is not None:
                delay = self._delay_for(ending.response, attempt - 1)
                # An error answer names its status; a resend after a 2xx (execute) does not.
                status = ending.response.status_code if ending.response.status_code >= 400 else None
            else:
                delay = policy.backoff(attempt - 1)
            await self._pause(delay, label, attempt, verdict.why, status)
        raise AssertionError("unreachable: the retry loop always returns or raises")

    def _may_retry(self, exc: Exception, started: float, delay: float) -> bool:
        """Whether a transport failure is worth another attempt within the retry budget."""
        if isinstance(exc, AnswerTooSlow):
            return False  # it trickled for the whole deadline: another try would too
        if isinstance(exc, httpx.TimeoutException):
            return time.monotonic() - started + delay < self.retry.budget
        return True

    async def _pause(self, delay: float, label: str, attempt: int, why: str, status: int | None = None) -> None:
        # A user watching a run sees every retry: silence would look like a hang.
        notice = RetryNotice(label, delay, attempt + 1, self.retry.attempts, redact.mask(scrub(why)), status)
        if self.on_retry is not None:
            log.debug(redact.mask(f"{label}: {notice.reason}; retrying in {delay:.1f} s"))
            self.on_retry(notice)
        else:
            log.info(
                redact.mask(
                    f"{label}: {notice.reason}; retrying in {delay:.1f} s "
                    f"(attempt {attempt + 1} of {self.retry.attempts})"
                )
            )
        await self.retry.sleep(delay)

    def _delay_for(self, response: httpx.Response, retry: int) -> float:
        if response.status_code in _RETRY_AFTER_STATUSES:
            wanted = parse_retry_after(response.headers.get("retry-after"))
            if wanted is not None:
                return self.retry.after(wanted)
        # No Retry-After (Opus documents none for its 429s): back off with full jitter.
        return self.retry.backoff(retry)

    def _tls_error(self, error: ssl.SSLError, label: str, target: str) -> TlsError:
        shown = redact.without_userinfo(target)
        if isinstance(error, ssl.SSLCertVerificationError):
            why = getattr(error, "verify_message", None) or _reason(error)
            what = f"the TLS certificate of {shown} was refused ({why})"
            fix = "check the base URL; behind a proxy that re-signs TLS, point SSL_CERT_FILE at its CA certificates"
        else:
            what = f"the TLS handshake with {shown} failed ({_reason(error)})"
            fix = "check the base URL's scheme and port (https:// needs a server that speaks TLS there)"
        return TlsError(redact.mask(scrub(f"{what} during {label}; TLS errors are not retried: {fix}")))

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
        why = describe(exc)
        if isinstance(exc, httpx.TimeoutException) and why == type(exc).__name__:
            phase = "connecting" if isinstance(exc, httpx.ConnectTimeout) else "answering"
            limit = getattr(self.http.timeout, "connect" if phase == "connecting" else "read", None)
            if limit is not None:
                why += f" (nothing for {limit:g} s while {phase}; the retry budget is {self.retry.budget:g} s)"
        shown = redact.without_userinfo(target)
        return NetworkError(redact.mask(f"could not reach {shown} for {label} after {_attempts(attempts)}: " + scrub(why)))


def _trace_request(
    method: str, shown: str, headers: Mapping[str, str], json_body: Any, content: bytes | None
) -> None:
    parts = [f"-> {method} {shown}"]
    shown_headers = {
        k: (redact.MASK if k.lower() == KEY_HEADER else v) for k, v in headers.items()
    }
    parts.append(" headers=" + json.dumps(shown_headers, sort_keys=True))
    if json_body is not None:
        parts.append(" body=" + trace_body(json.dumps(json_body, default=str)))
    elif content is not None:
        parts.append(f" body=<{len(content)} bytes>")
    log.debug(redact.mask("".join(parts)))


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
            line += " body=" + trace_body(text)
    log.debug(redact.mask(line))
