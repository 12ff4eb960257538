"""The local Opus-compatible sandbox (SPEC.md section 6).

Importing this package is cheap: the server (starlette, uvicorn) loads only when a name that
needs it is first used.

```python
from opus_runner.sandbox import SandboxServer

with SandboxServer() as sandbox:          # the packaged demo workflows, a random free port
    print(sandbox.base_url, sandbox.state.requests)
```

It speaks the live service's shapes by default (opus-api.md section 8); a workflow whose fixture
says ``dialect: documented`` speaks the older documented ones. The v1 Case API is served under
``/api/v1`` from the same fixture and jobs. Workflow ids are UUIDs;
``DEMO_IDS`` maps the demo workflows' old names (``demo-summarize``, ...) to theirs.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .asgi import SandboxApp
    from .state import Job, SandboxState
    from .faults import FaultRule, FaultRuleError, FaultSet, load_faults_file
    from .fixture import DEFAULT_WORKFLOWS, DEMO_IDS, Fixture, FixtureError, WorkflowDef, load_fixture
    from .server import SandboxServer, serve

_LAZY = {
    "SandboxServer": ".server",
    "serve": ".server",
    "SandboxApp": ".asgi",
    "SandboxState": ".state",
    "Job": ".state",
    "FaultRule": ".faults",
    "FaultRuleError": ".faults",
    "FaultSet": ".faults",
    "load_faults_file": ".faults",
    "DEFAULT_WORKFLOWS": ".fixture",
    "DEMO_IDS": ".fixture",
    "Fixture": ".fixture",
    "FixtureError": ".fixture",
    "WorkflowDef": ".fixture",
    "load_fixture": ".fixture",
}

__all__ = [
    "DEFAULT_WORKFLOWS",
    "DEMO_IDS",
    "FaultRule",
    "FaultRuleError",
    "FaultSet",
    "Fixture",
    "FixtureError",
    "Job",
    "SandboxApp",
    "SandboxServer",
    "SandboxState",
    "WorkflowDef",
    "load_faults_file",
    "load_fixture",
    "serve",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
