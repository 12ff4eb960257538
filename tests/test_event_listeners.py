"""Job events are built only for someone who listens; JSON event lines flush once per loop turn."""

from __future__ import annotations

import asyncio
import io
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from opus_runner.engine.delivery import Delivery
from opus_runner.models import Context, JobEvent
from opus_runner.plugins import make_plugin_host
from opus_runner.progress import JsonReporter, PlainReporter, Reporter, RichReporter


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.flushes = 0

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


def _event(kind: str = "status") -> JobEvent:
    return JobEvent(kind, "j1", "demo", "IN_PROGRESS" if kind == "status" else "COMPLETED", "demo")


def test_json_lines_written_in_one_loop_turn_go_out_in_one_flush() -> None:
    stream = CountingStream()
    reporter = JsonReporter(stream)

    async def go() -> list[int]:
        seen = []
        for _ in range(3):
            reporter.event(_event())
        seen.append(stream.flushes)  # written, not yet flushed
        await asyncio.sleep(0)  # the loop's next turn
        seen.append(stream.flushes)
        reporter.event(_event())
        await asyncio.sleep(0)
        seen.append(stream.flushes)
        return seen

    assert asyncio.run(go()) == [0, 1, 2]
    assert len(stream.getvalue().splitlines()) == 4


def test_json_lines_outside_a_loop_and_the_summary_flush_at_once() -> None:
    stream = CountingStream()
    reporter = JsonReporter(stream)
    reporter.event(_event())
    assert stream.flushes == 1

    async def summary() -> int:
        reporter.summary([{"status": "COMPLETED"}])
        return stream.flushes

    assert asyncio.run(summary()) == 2  # the last line of a run does not wait for a loop turn


def test_which_reporters_show_which_events() -> None:
    assert JsonReporter(io.StringIO()).shows("status")
    # Plain lines: a finished job is told by finished() (no event needed); events only with
    # --verbose, and a lone job's submission (its id), never under --quiet.
    plain = PlainReporter(io.StringIO())
    plain.start(3)
    assert not plain.shows("status") and not plain.shows("submitted") and not plain.shows("failed")
    plain.start(1)
    assert plain.shows("submitted") and not plain.shows("completed")
    assert PlainReporter(io.StringIO(), verbose=True).shows("status")
    quiet = PlainReporter(io.StringIO(), quiet=True, verbose=True)
    quiet.start(1)
    assert not quiet.shows("status") and not quiet.shows("submitted") and not quiet.shows("failed")
    assert not Reporter().shows("completed")

    class Collect(Reporter):  # the library guide's reporter: it overrides event only
        def event(self, event: JobEvent) -> None:
            pass

    assert Collect().shows("status")
    pytest.importorskip("rich")
    rich = RichReporter(io.StringIO())
    assert rich.shows("submitted") and not rich.shows("status")


OBSERVER = """
from opus_runner import hookimpl
HEARD = []

@hookimpl
def opus_job_event(event, ctx):
    HEARD.append(event.kind)
"""


class Recording(PlainReporter):
    def __init__(self, quiet: bool) -> None:
        super().__init__(io.StringIO(), quiet=quiet, verbose=True)
        self.seen: list[str] = []

    def event(self, event: JobEvent) -> None:
        self.seen.append(event.kind)


def _deliver(host: Any, reporter: Reporter, notify: list[dict[str, Any]], events: list[JobEvent], tmp_path: Path) -> None:
    session = SimpleNamespace(host=host, reporter=reporter)
    plan = SimpleNamespace(notify=notify)
    ctx = Context(spec=None, spec_path=tmp_path / "s.yaml", spec_dir=tmp_path, log=logging.getLogger("t"))

    async def go() -> None:
        delivery = Delivery(session)  # type: ignore[arg-type]
        for event in events:
            await delivery.event(event, plan, ctx)  # type: ignore[arg-type]

    asyncio.run(go())


def test_an_event_nobody_listens_to_is_not_built(tmp_path: Path) -> None:
    host = make_plugin_host(builtins=False, entrypoints=False)
    assert not host.observes_jobs()
    events = [_event("status"), _event("completed")]
    reporter = Recording(quiet=True)
    _deliver(host, reporter, [], events, tmp_path)
    assert reporter.seen == [] and [e.time for e in events] == ["", ""]  # not even stamped


def test_each_listener_still_hears_what_it_wants(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "observer.py").write_text(OBSERVER)
    host = make_plugin_host(builtins=False, entrypoints=False, plugins_dir=plugins)
    assert host.observes_jobs()
    events = [_event("status"), _event("completed")]
    reporter = Recording(quiet=True)
    _deliver(host, reporter, [], events, tmp_path)
    import sys

    assert sys.modules["opus_runner_local.observer"].HEARD == ["status", "completed"]
    assert all(e.time for e in events)
    # The reporter is called only for what it shows (quiet: neither).
    assert reporter.seen == []
    loud = Recording(quiet=False)
    _deliver(make_plugin_host(builtins=False, entrypoints=False), loud, [], [_event("status")], tmp_path)
    assert loud.seen == ["status"]
