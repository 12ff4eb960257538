"""Built-in output type ``junit``: a JUnit XML report of the run, for CI test-report viewers.

```yaml
outputs:
  - type: junit
    path: reports/opus.xml     # relative to the spec's folder
    suite: nightly-invoices    # optional testsuite name (default: opus-runner)
```

One ``<testcase>`` per job: ``classname`` is the spec's name, ``name`` the job's plan key,
``time`` the seconds from submission to the terminal status. FAILED, CANCELLED, STOPPED and TIMED_OUT
jobs carry a ``<failure message="STATUS">`` holding the error.

Outputs are called once per job, but a report describes the whole run: the per-job call only
notes which jobs go to which report file, and the file is written once, atomically, when the
run ends (``opus_run_finished``), from the journal's results of every job of the run: a resumed
run's report holds the jobs earlier processes finished too. A job given up on (``wait.timeout``)
is not finished in the journal; its ``TIMED_OUT`` result, delivered in this process, is
reported as such. Job durations come from the job events this plugin observes
(``opus_job_event``): submission and terminal times (0 for a job an earlier process followed).
"""

from __future__ import annotations

import datetime as _dt
import json
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import files
from ..hookspecs import Register, hookimpl
from ..models import TERMINAL_STATUSES, Context, JobEvent, JobResult, RunInfo
from ..redact import mask, mask_obj
from ..paths import PATH_KEYWORD
from .outputs import resolve_path

DEFAULT_SUITE = "opus-runner"
#: Statuses reported as a ``<failure>``.
FAILURE_STATUSES = TERMINAL_STATUSES - {"COMPLETED"}

JUNIT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "path": {"type": "string", "minLength": 1, "description": "The XML report file; relative to the spec's folder.", PATH_KEYWORD: True},
        "suite": {"type": "string", "minLength": 1, "description": "The testsuite name (default: opus-runner)."},
    },
    "required": ["path"],
    "additionalProperties": False,
}

_REPORTS = "opus_runner.junit.reports"
_TIMES = "opus_runner.junit.times"
_GUARD = threading.Lock()  # jobs are delivered concurrently (plain handlers run in worker threads)
# Characters XML 1.0 cannot hold at all, even escaped: a raw control byte in an error message
# would otherwise make the whole report unreadable.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


@dataclass
class _Case:
    suite: str
    classname: str
    name: str
    time: float
    status: str
    job_id: str
    error: str | None
    output: str


@dataclass
class _Report:
    """One report file: the jobs delivered to it by this process, and the suite of each spec."""

    #: plan key -> (suite, the result as delivered: a given-up job is in no journal result)
    delivered: dict[str, tuple[str, JobResult]] = field(default_factory=dict)
    #: spec name -> suite: the jobs of a spec that earlier processes finished go with it
    specs: dict[str, str] = field(default_factory=dict)


def _clean(text: Any) -> str:
    return _NOT_XML.sub("\ufffd", mask(str(text)))


def _parse_time(value: str | None) -> _dt.datetime | None:
    if not value:
        return None
    try:
        return _dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _duration(result: JobResult, ctx: Context) -> float:
    """Seconds from submission to the terminal status; 0 when neither is known (a resumed run)."""
    times = ctx.shared.get(_TIMES, {}).get(result.plan_key or result.job_id, {})
    start = _parse_time(times.get("submitted") or result.started_at)
    end = _parse_time(times.get("finished") or result.finished_at)
    if start is None or end is None:
        return 0.0
    return max(0.0, (end - start).total_seconds())


def _case(result: JobResult, config: dict[str, Any], ctx: Context) -> _Case:
    outputs = json.dumps(mask_obj(result.outputs), ensure_ascii=False, indent=2, default=str, sort_keys=True)
    lines = [f"job {result.job_id} {result.status}"]
    if result.url:
        lines.append(f"url: {result.url}")
    if result.outputs:
        lines.append(f"outputs: {outputs}")
    return _Case(
        suite=str(config.get("suite") or DEFAULT_SUITE),
        classname=result.spec_name or "opus-runner",
        name=result.plan_key or result.spec_name or result.job_id,
        time=_duration(result, ctx),
        status=result.status,
        job_id=result.job_id,
        error=result.error,
        output="\n".join(lines),
    )


def render(cases: list[_Case]) -> str:
    """The JUnit XML document for ``cases``: one ``<testsuite>`` per suite name, in first-seen order."""
    import xml.etree.ElementTree as ET

    root = ET.Element("testsuites")
    suites: dict[str, list[_Case]] = {}
    for case in cases:
        suites.setdefault(case.suite, []).append(case)
    total = failures = 0
    total_time = 0.0
    stamp = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0, tzinfo=None).isoformat()
    for suite_name, members in suites.items():
        failed = sum(1 for c in members if c.status in FAILURE_STATUSES)
        seconds = sum(c.time for c in members)
        suite = ET.SubElement(
            root,
            "testsuite",
            name=_clean(suite_name),
            tests=str(len(members)),
            failures=str(failed),
            errors="0",
            skipped="0",
            time=f"{seconds:.3f}",
            timestamp=stamp,
        )
        for c in members:
            case = ET.SubElement(suite, "testcase", classname=_clean(c.classname), name=_clean(c.name), time=f"{c.time:.3f}")
            if c.status in FAILURE_STATUSES:
                failure = ET.SubElement(case, "failure", message=_clean(c.status), type=_clean(c.status))
                failure.text = _clean(c.error or f"job {c.job_id} ended {c.status}")
            out = ET.SubElement(case, "system-out")
            out.text = _clean(c.output)
        total += len(members)
        failures += failed
        total_time += seconds
    root.set("tests", str(total))
    root.set("failures", str(failures))
    root.set("errors", "0")
    root.set("time", f"{total_time:.3f}")
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def junit_output(result: JobResult, config: dict[str, Any], ctx: Context) -> Path:
    """Note the job for the report at ``config["path"]`` (written when the run ends); return its path."""
    path = resolve_path(config["path"], ctx).resolve()
    suite = str(config.get("suite") or DEFAULT_SUITE)
    with _GUARD:
        report = ctx.shared.setdefault(_REPORTS, {}).setdefault(path, _Report())
        report.delivered[result.plan_key or result.job_id] = (suite, result)
        report.specs[result.spec_name] = suite
    return path


def write_reports(results: list[JobResult], ctx: Context) -> list[Path]:
    """Write every report file the run's jobs were delivered to, each once, atomically.

    ``results`` are the run's finished jobs (from the journal); each goes to the files its
    spec's jobs were delivered to. A delivered result that is not among them (given up on)
    is reported as delivered."""
    with _GUARD:
        reports = dict(ctx.shared.get(_REPORTS, {}))
    written = []
    for path, report in reports.items():
        chosen: dict[str, tuple[str, JobResult]] = {}
        for result in results:
            key = result.plan_key or result.job_id
            if key in report.delivered:
                chosen[key] = (report.delivered[key][0], result)
            elif result.spec_name in report.specs:
                chosen[key] = (report.specs[result.spec_name], result)
        for key, delivered in report.delivered.items():
            chosen.setdefault(key, delivered)
        cases = [_case(result, {"suite": suite}, ctx) for suite, result in chosen.values()]
        files.atomic_write_text(path, render(cases))
        written.append(path)
    return written


@hookimpl
def opus_register_outputs(register: Register) -> None:
    """Register the ``junit`` output type."""
    # Called again for jobs delivered before a crash, so a resumed run's report holds them too.
    register("junit", junit_output, schema=JUNIT_SCHEMA, whole_run=True)


@hookimpl
def opus_job_event(event: JobEvent, ctx: Context) -> None:
    """Note when each job was submitted and when it ended, for the report's ``time``."""
    key = event.plan_key or event.job_id
    if not key or not event.time:
        return
    if event.kind == "submitted":
        ctx.shared.setdefault(_TIMES, {}).setdefault(key, {})["submitted"] = event.time
    elif event.kind in ("completed", "failed", "cancelled", "timed_out"):
        ctx.shared.setdefault(_TIMES, {}).setdefault(key, {})["finished"] = event.time


@hookimpl
def opus_run_finished(run: RunInfo, ctx: Context) -> None:
    """Write the reports, once, with every job of the run."""
    write_reports(run.results(), ctx)
