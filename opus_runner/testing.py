"""Test helpers for opus-runner and its plugins (a pytest plugin, loaded automatically).

Two fixtures start the local Opus sandbox over real loopback HTTP:

- ``opus_sandbox``: a started :class:`~opus_runner.sandbox.SandboxServer` on the packaged demo
  workflows, stopped after the test.
- ``opus_sandbox_factory``: call it with a fixture (file path or mapping) and options to get more
  servers; all are stopped after the test.

```python
from opus_runner.sandbox import DEMO_IDS

def test_my_output_plugin(opus_sandbox):
    env = {"OPUS_BASE_URL": opus_sandbox.base_url, "OPUS_SERVICE_KEY": opus_sandbox.key}
    workflow = DEMO_IDS["demo-summarize"]  # workflow ids are UUIDs
    ...
    assert opus_sandbox.state.count("POST", "execute") == 1
```

The sandbox speaks the live service's shapes (opus-api.md section 8) unless a workflow's
fixture says ``dialect: documented``.

The sandbox itself is imported inside the fixtures, so loading this plugin costs nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:  # pragma: no cover
    from opus_runner.sandbox import SandboxServer


@pytest.fixture
def opus_sandbox() -> Iterator[SandboxServer]:
    """A running sandbox serving the packaged demo workflows (ids in ``sandbox.DEMO_IDS``)."""
    from opus_runner.sandbox import SandboxServer

    with SandboxServer() as server:
        yield server


@pytest.fixture
def opus_sandbox_factory() -> Iterator[Callable[..., SandboxServer]]:
    """A function ``factory(workflows=None, *, faults=None, key=None, **options)`` -> started server."""
    from opus_runner.sandbox import SandboxServer

    servers: list[SandboxServer] = []

    def factory(workflows: Any = None, *, faults: Any = None, **options: Any) -> SandboxServer:
        server = SandboxServer(workflows, faults=faults, **options)
        server.start()
        servers.append(server)
        return server

    try:
        yield factory
    finally:
        for server in reversed(servers):
            server.stop()
