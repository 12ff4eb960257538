"""opus-runner: run Opus workflows from declarative, versioned job specs.

The public API::

    import opus_runner
    report = opus_runner.run("specs/summarize.yaml", sandbox=True)
    report.exit_code, report.results

    from opus_runner import hookimpl      # for plugins

Names are imported on first use so ``import opus_runner`` (and ``opus-run --help``) stay fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .__about__ import __version__

if TYPE_CHECKING:  # pragma: no cover
    from .hookspecs import hookimpl
    from .errors import (
        ApiError,
        AuthError,
        ConfigError,
        DeliveryFailed,
        ExecuteRefused,
        Interrupted,
        JobFailed,
        JobTimedOut,
        LockError,
        NetworkError,
        NotFoundError,
        OpusRunnerError,
        PluginError,
        SpecError,
        TemplateError,
        UsageError,
        ValidationFailed,
        WorkflowNotFound,
    )
    from .models import (
        Context,
        InputField,
        JobEvent,
        JobResult,
        UploadSettings,
        WireValue,
        WorkflowRef,
        WorkflowSchema,
    )
    from .engine import JobOutcome, RunOptions, RunReport, Runner, arun, run
    from .spec import Spec, load_spec
    from .temporal.runs import EngineOptions, RunHandle, submit

_LAZY = {
    "hookimpl": "hookspecs",
    "run": "engine",
    "arun": "engine",
    "Runner": "engine",
    "RunOptions": "engine",
    "RunReport": "engine",
    "JobOutcome": "engine",
    "load_spec": "spec",
    "submit": "temporal.runs",
    "RunHandle": "temporal.runs",
    "EngineOptions": "temporal.runs",
    "Spec": "spec",
    "Context": "models",
    "InputField": "models",
    "JobEvent": "models",
    "JobResult": "models",
    "WorkflowRef": "models",
    "WorkflowSchema": "models",
    "WireValue": "models",
    "UploadSettings": "models",
    "ExecuteRefused": "errors",
    "OpusRunnerError": "errors",
    "UsageError": "errors",
    "SpecError": "errors",
    "TemplateError": "errors",
    "ValidationFailed": "errors",
    "PluginError": "errors",
    "ConfigError": "errors",
    "ApiError": "errors",
    "AuthError": "errors",
    "NotFoundError": "errors",
    "NetworkError": "errors",
    "JobFailed": "errors",
    "JobTimedOut": "errors",
    "DeliveryFailed": "errors",
    "Interrupted": "errors",
    "LockError": "errors",
    "WorkflowNotFound": "errors",
}

__all__ = ["__version__", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'opus_runner' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
