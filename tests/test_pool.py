"""The run client's connection pool (opus_runner/api/pool.py) over real loopback HTTP."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from importlib.metadata import version
from typing import Any

import httpcore
import httpx
import pytest

from opus_runner.api import pool as pool_module
from opus_runner.api.pool import TESTED_HTTPCORE_VERSIONS, LeanConnectionPool, LeanTransport, lean_transport
from opus_runner.sandbox import DEMO_IDS

WORKFLOW = DEMO_IDS["demo-summarize"]


def _client(server: Any, limits: httpx.Limits) -> httpx.AsyncClient:
    transport = lean_transport(limits)
    assert isinstance(transport, LeanTransport)
    return httpx.AsyncClient(
        base_url=server.base_url, headers={"x-service-key": server.key}, transport=transport, timeout=10
    )


def _pool(client: httpx.AsyncClient) -> LeanConnectionPool:
    pool = client._transport._pool  # type: ignore[attr-defined]
    assert isinstance(pool, LeanConnectionPool)
    return pool


async def _get(client: httpx.AsyncClient) -> int:
    """One API call; the local port of the connection it went over."""
    response = await client.get(f"/workflow/{WORKFLOW}")
    assert response.status_code == 200, response.text
    return int(response.extensions["network_stream"].get_extra_info("client_addr")[1])


def test_the_installed_httpcore_is_one_the_pool_was_tested_with() -> None:
    # The test extra pins httpcore to this tuple, so CI always runs the lean pool.
    assert version("httpcore") in TESTED_HTTPCORE_VERSIONS
    assert pool_module.supported()


def test_an_untested_httpcore_gets_the_stock_pool_and_says_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from opus_runner.api.client import OpusClient

    monkeypatch.setattr(httpcore, "__version__", "1.999.0")
    with caplog.at_level(logging.DEBUG, logger="opus_runner.http"):
        assert lean_transport(httpx.Limits()) is None
        client = OpusClient(base_url="http://127.0.0.1:9", service_key="sk-test")
    pool = client.http._transport._pool  # type: ignore[attr-defined]
    assert type(pool) is httpcore.AsyncConnectionPool
    assert "httpcore 1.999.0 is not a version" in caplog.text and "stock pool" in caplog.text
    asyncio.run(client.aclose())


def test_the_runs_own_client_uses_the_lean_pool_and_a_given_client_is_left_alone() -> None:
    from opus_runner.api.client import OpusClient

    own = OpusClient(base_url="http://127.0.0.1:9", service_key="sk-test")
    assert isinstance(own.http._transport._pool, LeanConnectionPool)  # type: ignore[attr-defined]
    given = httpx.AsyncClient()
    theirs = OpusClient(base_url="http://127.0.0.1:9", service_key="sk-test", http=given)
    assert theirs.http is given and type(given._transport._pool) is httpcore.AsyncConnectionPool  # type: ignore[attr-defined]

    async def close() -> None:
        await own.aclose()
        await given.aclose()

    asyncio.run(close())


def test_a_proxy_in_the_environment_keeps_httpx_transport(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    assert lean_transport(httpx.Limits()) is None


def test_connections_are_reused(opus_sandbox: Any) -> None:
    async def go() -> set[int]:
        async with _client(opus_sandbox, httpx.Limits(max_connections=5)) as client:
            return {await _get(client) for _ in range(20)}

    assert len(asyncio.run(go())) == 1


def test_max_connections_is_never_exceeded_by_50_concurrent_requests(opus_sandbox_factory: Callable[..., Any]) -> None:
    # Slow answers keep requests queued for a connection at the same time.
    server = opus_sandbox_factory(faults=[{"route": "workflow", "kind": "delay", "seconds": 0.02}])
    most = 0

    async def go() -> set[int]:
        nonlocal most
        limits = httpx.Limits(max_connections=5, max_keepalive_connections=5)
        async with _client(server, limits) as client:
            pool = _pool(client)
            create = pool.create_connection

            def counted(origin: Any) -> Any:
                nonlocal most
                connection = create(origin)
                most = max(most, len(pool.connections) + 1)  # it is appended after this returns
                return connection

            pool.create_connection = counted  # type: ignore[method-assign]
            ports = await asyncio.gather(*(_get(client) for _ in range(50)))
            return set(ports)

    ports = asyncio.run(go())
    assert 1 < len(ports) <= 5 and 1 < most <= 5
    assert server.state.count("GET", "workflow") == 50


def test_expired_keepalive_connections_are_closed_and_replaced(opus_sandbox_factory: Callable[..., Any]) -> None:
    one, other = opus_sandbox_factory(), opus_sandbox_factory()

    async def call(client: httpx.AsyncClient, server: Any) -> Any:
        response = await client.get(f"{server.base_url}/workflow/{WORKFLOW}", headers={"x-service-key": server.key})
        assert response.status_code == 200
        return response.extensions["network_stream"].get_extra_info("client_addr")[1]

    async def go() -> None:
        limits = httpx.Limits(max_connections=5, keepalive_expiry=0.1)
        async with _client(one, limits) as client:
            first = await call(client, one)
            (old,) = _pool(client).connections
            await asyncio.sleep(0.3)  # past the keep-alive expiry
            # A call elsewhere does not use it, yet closes it: expiry is checked on every round.
            await call(client, other)
            assert old.is_closed() and old not in _pool(client).connections
            # The next call to the first server gets a new connection.
            assert await call(client, one) != first
            assert len(_pool(client).connections) == 2

    asyncio.run(go())


def test_a_connection_the_server_closed_while_idle_is_not_used_again(opus_sandbox: Any) -> None:
    async def go() -> tuple[int, int]:
        async with _client(opus_sandbox, httpx.Limits(max_connections=5)) as client:
            first = await _get(client)
            (connection,) = _pool(client).connections
            # The server's side of the idle connection goes away: only the poll at hand-out sees it.
            stream = connection._connection._network_stream  # type: ignore[attr-defined]
            peer = stream.get_extra_info("socket")
            peer.shutdown(2)  # SHUT_RDWR: the socket reads as closed, as after a server close
            second = await _get(client)
            assert connection not in _pool(client).connections
            return first, second

    first, second = asyncio.run(go())
    assert first != second


def test_a_server_that_drops_connections_is_survived(opus_sandbox_factory: Callable[..., Any]) -> None:
    server = opus_sandbox_factory(faults=[{"route": "workflow", "kind": "drop", "every": 3}])

    async def go() -> tuple[int, int]:
        ok = failed = 0
        async with _client(server, httpx.Limits(max_connections=3)) as client:
            for _ in range(12):
                try:
                    await _get(client)
                    ok += 1
                except httpx.TransportError:
                    failed += 1
            # Closed connections leave the pool at its next sweep (a few times a second).
            await asyncio.sleep(LeanConnectionPool.SWEEP_SECONDS)
            await _get(client)
            ok += 1
            assert all(not c.is_closed() for c in _pool(client).connections)
        return ok, failed

    ok, failed = asyncio.run(go())
    assert (ok, failed) == (9, 4)  # every third call dropped, every other one answered
