"""Plain output and notifier handlers: a built-in's runs inline, any other plugin's in a thread.

The same plugin code is loaded once as a built-in and once from the plugins folder, so only
where it came from differs.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

import opus_runner.builtins
from opus_runner.models import Context, JobEvent, JobResult
from opus_runner.plugins import call_handler, make_plugin_host

PLUGIN = '''
import threading
from opus_runner import hookimpl

def where(result, config, ctx):
    return threading.get_ident()

def heard(event, config, ctx):
    return threading.get_ident()

@hookimpl
def opus_register_outputs(register):
    register("where", where)

@hookimpl
def opus_register_notifiers(register):
    register("heard", heard)
'''


def _ctx(tmp_path: Path) -> Context:
    return Context(spec=None, spec_path=tmp_path / "spec.yaml", spec_dir=tmp_path, log=logging.getLogger("t"))


@pytest.fixture
def as_builtin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "mods"
    folder.mkdir()
    (folder / "threaded_probe.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(sys.modules, "threaded_probe", raising=False)
    monkeypatch.setattr(opus_runner.builtins, "BUILTIN_PLUGINS", ("opus_runner.builtins.outputs", "threaded_probe"))


def _called_in(tmp_path: Path, host: Any) -> tuple[int, int]:
    result = JobResult(job_id="j1", status="COMPLETED", spec_name="demo")
    event = JobEvent("completed", "j1", "demo", "COMPLETED", "demo")

    async def go() -> tuple[int, int]:
        ctx = _ctx(tmp_path)
        output = await call_handler(host.outputs["where"], result, {"type": "where"}, ctx, timeout=5)
        notifier = await call_handler(host.notifiers["heard"], event, {"type": "heard"}, ctx, timeout=5)
        return output, notifier

    return asyncio.run(go())


def test_a_builtin_plain_handler_runs_on_the_event_loop_thread(tmp_path: Path, as_builtin: None) -> None:
    host = make_plugin_host(entrypoints=False)
    assert host.outputs["where"].inline and host.notifiers["heard"].inline
    assert host.outputs["ndjson"].inline  # the real built-ins are marked the same way
    main = threading.get_ident()
    assert _called_in(tmp_path, host) == (main, main)


def test_a_local_plugins_plain_handler_keeps_its_worker_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(opus_runner.builtins, "BUILTIN_PLUGINS", ("opus_runner.builtins.outputs",))
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "probe.py").write_text(PLUGIN)
    host = make_plugin_host(plugins_dir=plugins, entrypoints=False)
    assert not host.outputs["where"].inline and not host.notifiers["heard"].inline
    main = threading.get_ident()
    output, notifier = _called_in(tmp_path, host)
    assert output != main and notifier != main


def test_a_local_plain_handler_still_times_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(opus_runner.builtins, "BUILTIN_PLUGINS", ())
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    release = threading.Event()
    monkeypatch.setattr(sys.modules[__name__], "RELEASE", release, raising=False)
    (plugins / "stuck.py").write_text(
        "from opus_runner import hookimpl\n"
        f"import sys\nrelease = sys.modules[{__name__!r}].RELEASE\n"
        "def stuck(result, config, ctx):\n    release.wait(10)\n"
        "@hookimpl\ndef opus_register_outputs(register):\n    register('stuck', stuck)\n"
    )
    host = make_plugin_host(plugins_dir=plugins, entrypoints=False)
    result = JobResult(job_id="j1", status="COMPLETED", spec_name="demo")
    try:
        with pytest.raises(TimeoutError):
            asyncio.run(call_handler(host.outputs["stuck"], result, {"type": "stuck"}, _ctx(tmp_path), timeout=0.05))
    finally:
        release.set()
