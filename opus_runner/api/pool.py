"""A connection pool for the run's client that does not re-check every connection per request.

httpcore's :class:`httpcore.AsyncConnectionPool` re-assigns requests to connections whenever a
request arrives or an answer is closed (about six times per request), and each time it asks
every connection in the pool ``has_expired()``, which for an idle HTTP/1.1 connection polls
its socket (a system call, through anyio's attribute table). At 50 connections that was about
a quarter of the runner's CPU (issue 14). :class:`LeanConnectionPool` keeps the stock pool's
behaviour and changes only how often it looks:

- a few times a second (:attr:`LeanConnectionPool.SWEEP_SECONDS`), and whenever a request
  needs room in a full pool, connections that are closed, or whose keep-alive expired by the clock, leave the pool
  (the clock check reads a timestamp; no socket is touched);
- surplus idle connections beyond ``max_keepalive_connections`` are closed, as before;
- the full ``has_expired()`` check, the socket poll that notices a server having closed an
  idle connection, runs only on the connection about to be handed out. One found closed is
  dropped and the next is tried, so no request is ever sent on it. An idle connection the
  server closed stays in the pool until it is next chosen or its keep-alive runs out;
- a connection already handed to a request that has not started yet is not handed out
  twice (the stock pool may do so and then retry the loser, one more assignment round).

It reads httpcore internals (``AsyncHTTPConnection._connection``, the HTTP/1.1 connection's
``_expire_at``), so it is used only with the httpcore versions in
:data:`TESTED_HTTPCORE_VERSIONS`; with any other, :func:`lean_transport` returns None and the
client keeps the stock pool (correct, slower), saying so in the debug log (``--verbose``). The
test extra pins httpcore to these versions so the tests always exercise this pool.
HTTP/1.1 only, no proxy: with a proxy configured in the environment the stock client is kept.
"""

from __future__ import annotations

import logging
import time
import urllib.request
from typing import Any

import httpcore
import httpx

log = logging.getLogger("opus_runner.http")

#: The httpcore versions this pool was written against and tested with.
TESTED_HTTPCORE_VERSIONS: tuple[str, ...] = ("1.0.9",)


def supported(version: str | None = None) -> bool:
    """Whether ``version`` (default: the installed httpcore's) is one this pool was tested with."""
    return (version or httpcore.__version__) in TESTED_HTTPCORE_VERSIONS


class LeanConnectionPool(httpcore.AsyncConnectionPool):
    """httpcore's pool, checking sockets only of the connection it hands out (see the module)."""

    #: seconds between two sweeps of the whole pool for closed and expired connections
    SWEEP_SECONDS = 0.25
    _next_sweep = 0.0

    def _assign_requests_to_connections(self) -> list[Any]:
        closing: list[Any] = []
        now = time.monotonic()
        # Connections handed to a request (which may not have started on them yet) are taken.
        taken = {id(r.connection) for r in self._requests if r.connection is not None}
        # The sweep costs a look at every connection; a few times a second is enough for
        # keep-alive expiry counted in seconds. _assign sweeps at once when it needs room: a
        # closed connection must not hold the place of a new one.
        swept = now >= self._next_sweep
        if swept:
            self._next_sweep = now + self.SWEEP_SECONDS
            self._sweep(now, taken, closing)
        self._assign(taken, closing, now, swept)
        return closing

    def _sweep(self, now: float, taken: set[int], closing: list[Any]) -> None:
        """Closed connections leave the pool; expired and surplus idle ones go to ``closing``."""
        kept: list[Any] = []
        for connection in self._connections:
            if connection.is_closed():
                continue
            if _expired_by_clock(connection, now):
                closing.append(connection)
            else:
                kept.append(connection)
        # As the stock pool: idle connections go, oldest first, while the pool holds more
        # connections than it may keep alive.
        surplus = len(kept) - self._max_keepalive_connections
        if surplus > 0:
            survivors = []
            for connection in kept:
                if surplus > 0 and id(connection) not in taken and connection.is_idle():
                    closing.append(connection)
                    surplus -= 1
                else:
                    survivors.append(connection)
            kept = survivors
        self._connections = kept

    def _assign(self, taken: set[int], closing: list[Any], now: float, swept: bool) -> None:
        """Each queued request gets a healthy free connection, or a new one while there is room."""
        for pool_request in self._requests:
            if not pool_request.is_queued():
                continue
            origin = pool_request.request.url.origin
            connection = self._healthy_available(origin, taken, closing)
            if connection is None and not swept and len(self._connections) >= self._max_connections:
                swept = True  # room is needed: closed and expired connections make it
                self._sweep(now, taken, closing)
                connection = self._healthy_available(origin, taken, closing)
            if connection is None:
                if len(self._connections) >= self._max_connections:
                    idle = next((c for c in self._connections if id(c) not in taken and c.is_idle()), None)
                    if idle is None:
                        # HTTP/1.1: no free connection and no room, so no queued request of any
                        # origin can be served in this round.
                        break
                    self._connections.remove(idle)
                    closing.append(idle)
                connection = self.create_connection(origin)
                self._connections.append(connection)
            pool_request.assign_to_connection(connection)
            taken.add(id(connection))

    def _healthy_available(self, origin: Any, taken: set[int], closing: list[Any]) -> Any:
        """The first free connection to ``origin`` whose socket is still good, or None; ones
        found expired on the way are moved to ``closing``."""
        index = 0
        while index < len(self._connections):
            connection = self._connections[index]
            if id(connection) in taken or not connection.can_handle_request(origin) or not connection.is_available():
                index += 1
                continue
            if connection.has_expired():  # the socket poll: the server may have closed it
                del self._connections[index]
                closing.append(connection)
                continue
            return connection
        return None


def _expired_by_clock(connection: Any, now: float) -> bool:
    """``has_expired()`` without the socket poll, for the HTTP/1.1 connections of this pool."""
    inner = getattr(connection, "_connection", None)
    if inner is None:  # still connecting (or failed to): nothing to poll
        return bool(connection.has_expired())
    expire_at = getattr(inner, "_expire_at", _NOT_HTTP11)
    if expire_at is _NOT_HTTP11:
        return bool(connection.has_expired())
    return expire_at is not None and now > expire_at


_NOT_HTTP11 = object()


class LeanTransport(httpx.AsyncHTTPTransport):
    """httpx's transport over a :class:`LeanConnectionPool` (HTTP/1.1, no proxy)."""

    def __init__(self, *, limits: httpx.Limits, **kwargs: Any) -> None:
        super().__init__(limits=limits, http1=True, http2=False, **kwargs)
        stock = self._pool
        # Same settings as the pool httpx just built, its SSL context included (built once).
        self._pool = LeanConnectionPool(
            ssl_context=stock._ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            http1=True,
            http2=False,
            retries=stock._retries,
            local_address=stock._local_address,
            uds=stock._uds,
            socket_options=stock._socket_options,
        )


def lean_transport(limits: httpx.Limits) -> LeanTransport | None:
    """The transport for the run's own client, or None to let httpx build its stock one: with
    an untested httpcore, or with a proxy in the environment (which httpx then honours)."""
    if not supported():
        log.debug(
            "httpcore %s is not a version opus-runner's connection pool was tested with (%s): "
            "using httpcore's stock pool, which is correct but costs more CPU per request",
            httpcore.__version__,
            ", ".join(TESTED_HTTPCORE_VERSIONS),
        )
        return None
    proxies = urllib.request.getproxies()
    if any(proxies.get(scheme) for scheme in ("http", "https", "all")):
        log.debug("a proxy is set in the environment: using httpx's own transport, which honours it")
        return None
    return LeanTransport(limits=limits)
