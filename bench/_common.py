"""Shared plumbing of the benchmarks: a sandbox in its own process, measured child processes,
tables, ratio lines and JSON.

Every benchmark measures clients as child processes and reads their CPU seconds and peak RSS
from ``os.wait4`` (the rusage of exactly that child), so neither the harness nor the sandbox
server is counted in a client's figures. The sandbox runs in a process of its own
(``python -m opus_runner sandbox``); its CPU time is read from ``/proc`` where available, as
information only.

Stdlib only, so the harness adds nothing to what it measures.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
PYTHON = sys.executable
#: A workflow id shaped like the platform's current ones: opus-aaico refuses anything but a UUID.
BENCH_WORKFLOW_ID = "6f1c2d3e-0000-4000-8000-00000000be0c"
#: The same workflow in the sandbox's documented dialect, for clients that cannot meet the live
#: one: opus-aaico 0.6.0's workflows.run sends no callbackUrl, which the live service refuses.
BENCH_DOCUMENTED_ID = "6f1c2d3e-0000-4000-8000-00000000d0c0"
SANDBOX_START_TIMEOUT = 30.0
DEFAULT_TIMEOUT = 900.0
PYCACHE_DIR = Path(tempfile.gettempdir()) / "opus-runner-bench-pycache"


class BenchError(Exception):
    """A benchmark could not measure what it set out to (a client failed, the sandbox died)."""


# -- commands ------------------------------------------------------------------------------------


def opus_run_command() -> list[str]:
    """The ``opus-run`` console script next to this interpreter, else ``python -m opus_runner``.

    The console script is what users type, so its start-up is what should be measured.
    """
    script = Path(PYTHON).parent / ("opus-run.exe" if os.name == "nt" else "opus-run")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [PYTHON, "-m", "opus_runner"]


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a measured child: ours without any OPUS_* setting, plus ``extra``.

    A developer's own OPUS_SERVICE_KEY or OPUS_BASE_URL must never leak into a benchmark.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPUS_")}
    env.pop("PYTHONPROFILEIMPORTTIME", None)
    # Measure what an installed package does: read compiled bytecode, not compile every module
    # at every start (PYTHONDONTWRITEBYTECODE, set on some machines, would force that for a
    # source checkout). The cache lives outside the work tree.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(PYCACHE_DIR)
    env.update(extra or {})
    return env


# -- measured child processes --------------------------------------------------------------------


@dataclass
class Measurement:
    """One measured run of a child process."""

    label: str
    wall: float  # seconds
    user: float  # CPU seconds in user mode
    sys: float  # CPU seconds in the kernel
    maxrss_mb: float  # peak resident set size
    returncode: int
    stdout: str = field(default="", repr=False)
    stderr: str = field(default="", repr=False)
    server_cpu: float | None = None  # the sandbox's CPU seconds during the run (info)
    requests: dict[str, int] = field(default_factory=dict)  # sandbox counts during the run
    api_requests: dict[str, int] = field(default_factory=dict)  # the same, per API generation (v0, v1)

    @property
    def cpu(self) -> float:
        return self.user + self.sys

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("stdout")
        data.pop("stderr")
        data["cpu"] = self.cpu
        return data


def _maxrss_mb(ru_maxrss: int) -> float:
    # Linux reports KiB, macOS bytes.
    return ru_maxrss / (1024 * 1024) if sys.platform == "darwin" else ru_maxrss / 1024


def run_measured(
    label: str,
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    stdout_path: Path | None = None,
    stderr_fd: int | None = None,
) -> Measurement:
    """Run ``argv`` to its end and measure wall time, CPU seconds and peak RSS of that child.

    Output goes to temporary files (never a pipe: a chatty child would block on a full pipe
    while nobody reads). ``stdout_path`` keeps stdout in that file instead of reading it back
    (large outputs); ``stderr_fd`` sends stderr to an open descriptor (a pty, to look like a
    terminal). A child still running after ``timeout`` seconds is killed: a benchmark must
    stop by itself.
    """
    with tempfile.TemporaryDirectory(prefix="opus-bench-") as tmp:
        out_path = stdout_path or Path(tmp) / "stdout"
        err_path = Path(tmp) / "stderr"
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            started = time.perf_counter()
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err if stderr_fd is None else stderr_fd,
                env=dict(env) if env is not None else None,
                cwd=str(cwd) if cwd is not None else None,
            )
            killer = threading.Timer(timeout, proc.kill)
            killer.start()
            try:
                # wait4, not proc.wait(): it hands back the rusage of exactly this child.
                _pid, status, usage = os.wait4(proc.pid, 0)
            finally:
                killer.cancel()
            wall = time.perf_counter() - started
            proc.returncode = os.waitstatus_to_exitcode(status)
        stdout = "" if stdout_path is not None else out_path.read_text(encoding="utf-8", errors="replace")
        stderr = err_path.read_text(encoding="utf-8", errors="replace")
    return Measurement(
        label=label,
        wall=wall,
        user=usage.ru_utime,
        sys=usage.ru_stime,
        maxrss_mb=_maxrss_mb(usage.ru_maxrss),
        returncode=proc.returncode,
        stdout=stdout,
        stderr=stderr,
    )


def require_ok(m: Measurement, what: str) -> None:
    """Raise :class:`BenchError` with the child's own words when it did not exit 0."""
    if m.returncode != 0:
        tail = (m.stderr.strip() or m.stdout.strip())[-1500:]
        raise BenchError(f"{what} exited {m.returncode}; its last words:\n{tail}")


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a live process (Linux ``/proc``), else None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    # fields[0] is the state (3rd field of stat); utime and stime are the 14th and 15th.
    return (int(fields[11]) + int(fields[12])) / ticks


# -- the sandbox in its own process --------------------------------------------------------------


class Sandbox:
    """``python -m opus_runner sandbox`` on a free loopback port, in its own process.

    ```python
    with Sandbox(fixture_path) as sandbox:
        m = sandbox.measure("floor", [sys.executable, "bench/floor_client.py", ...])
        m.wall, m.cpu, m.requests  # requests: what the sandbox counted during that run
    ```
    """

    def __init__(self, workflows: Path, *, key: str | None = None) -> None:
        self.workflows = workflows.resolve()
        self.key = key or f"sk-bench-{secrets.token_hex(8)}"
        self.base_url = ""
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> Sandbox:
        """Start the sandbox and return once it accepts connections (its two lines printed)."""
        self._log = tempfile.TemporaryFile()
        cmd = [PYTHON, "-m", "opus_runner", "sandbox", "--port", "0", "--key", self.key, "--workflows", str(self.workflows)]
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._log, env=clean_env(), cwd=str(REPO_ROOT)
        )
        stdout = self.proc.stdout
        assert stdout is not None
        lines: list[str] = []

        def read_banner() -> None:
            # The sandbox prints exactly two lines once it accepts connections (sandbox/server.py).
            lines.extend(stdout.readline().decode() for _ in range(2))

        # A thread, so a sandbox that never prints cannot hang the benchmark.
        reader = threading.Thread(target=read_banner, daemon=True)
        reader.start()
        reader.join(SANDBOX_START_TIMEOUT)
        if len(lines) < 2 or not lines[0].startswith("Opus sandbox listening on "):
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            why = self._log_text().strip()[-1500:] or f"it printed {lines!r}"
            self.stop()
            raise BenchError(f"the sandbox did not start: {why}")
        self.base_url = lines[0].split("listening on ", 1)[1].strip()
        return self

    def _log_text(self) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read().decode("utf-8", errors="replace")

    def stop(self) -> None:
        """Ctrl-C the sandbox and wait for it (killed if it lingers)."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        if self._log is not None:
            self._log.close()
            self._log = None
        self.proc = None

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The child environment that points opus-runner (and the SDK) at this sandbox."""
        return clean_env({"OPUS_BASE_URL": self.base_url, "OPUS_SERVICE_KEY": self.key, "OPUS_API_KEY": self.key, **(extra or {})})

    def _call(self, method: str, path: str) -> Any:
        request = urllib.request.Request(f"{self.base_url}{path}", method=method, data=b"" if method == "POST" else None)
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 - loopback only
            return json.loads(response.read())

    def api(self, path: str) -> Any:
        """``GET path`` of the API itself, with the key (e.g. a job's audit after a run)."""
        request = urllib.request.Request(f"{self.base_url}{path}", headers={"x-service-key": self.key})
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 - loopback only
            return json.loads(response.read())

    def stats(self) -> dict[str, Any]:
        """``GET /_sandbox/stats``."""
        return self._call("GET", "/_sandbox/stats")

    def reset(self) -> None:
        """``POST /_sandbox/reset``: forget jobs and counters, so every run meets the same server."""
        self._call("POST", "/_sandbox/reset")

    def cpu_seconds(self) -> float | None:
        return process_cpu_seconds(self.proc.pid) if self.proc is not None else None

    def measure(self, label: str, argv: Sequence[str], *, env: Mapping[str, str] | None = None, **kwargs: Any) -> Measurement:
        """Reset the sandbox, run one measured client, and attach the requests the sandbox
        counted (``/_sandbox/stats`` before and after) and the server's CPU seconds."""
        self.reset()
        before = self.stats()
        cpu_before = self.cpu_seconds()
        m = run_measured(label, argv, env=env if env is not None else self.env(), **kwargs)
        cpu_after = self.cpu_seconds()
        after = self.stats()
        m.requests = diff_counts(before["requests"], after["requests"])
        m.api_requests = diff_counts(before.get("api_requests", {}), after.get("api_requests", {}))
        if cpu_before is not None and cpu_after is not None:
            m.server_cpu = cpu_after - cpu_before
        if self.proc is not None and self.proc.poll() is not None:
            raise BenchError(f"the sandbox died during {label}: {self._log_text()[-1500:]}")
        return m


def diff_counts(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, int]:
    """Per-route request counts that arrived between two ``/_sandbox/stats`` readings."""
    out = {route: n - before.get(route, 0) for route, n in after.items()}
    return {route: n for route, n in sorted(out.items()) if n}


# -- the workload: one workflow, a CSV of rows, a foreach spec -----------------------------------

#: The CSV columns are the workflow's display names, so the floor needs no mapping table.
BENCH_INPUTS = [
    {"variable_name": "workflow_input_customer", "display_name": "Customer", "type": "str"},
    {"variable_name": "workflow_input_amount", "display_name": "Amount", "type": "float"},
    {"variable_name": "workflow_input_region", "display_name": "Region", "type": "str"},
]


def write_fixture(path: Path, *, duration: str | float = 0) -> Path:
    """A sandbox fixture with the one bench workflow (JSON: the sandbox reads .json fixtures)."""
    workflow = {
        "name": "Bench report",
        "duration": duration,
        "nodes": ["Input", "Report", "Output"],
        "inputs": BENCH_INPUTS,
        "outputs": {"summary": "Report for {{ inputs.Customer }} in {{ inputs.Region }}"},
    }
    fixture = {
        "workflows": {
            BENCH_WORKFLOW_ID: workflow,
            BENCH_DOCUMENTED_ID: {**workflow, "dialect": "documented"},
        }
    }
    path.write_text(json.dumps(fixture, indent=2), encoding="utf-8")
    return path


def write_rows(path: Path, rows: int) -> Path:
    """``rows`` data rows whose columns are the bench workflow's display names."""
    import csv

    regions = ("eu", "us", "apac")
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([i["display_name"] for i in BENCH_INPUTS])
        for n in range(rows):
            writer.writerow([f"customer-{n:06d}", f"{(n % 997) * 1.25:.2f}", regions[n % 3]])
    return path


def write_spec(
    path: Path,
    *,
    rows_file: str,
    wait: Mapping[str, str] | None = None,
    name: str = "bench",
    ndjson: str | None = None,
) -> Path:
    """A foreach spec with one job per CSV row; ``wait`` None leaves the runner's defaults;
    ``ndjson`` names the file of an ``ndjson`` output (else the default ``stdout`` output)."""
    lines = [
        "apiVersion: opus-runner/v1",
        "kind: Job",
        "metadata:",
        f"  name: {name}",
        '  title: "Bench {{ row.Customer }}"',
        "workflow:",
        f"  id: {BENCH_WORKFLOW_ID}",
        "foreach:",
        f"  file: {rows_file}",
        "inputs:",
        '  Customer: "{{ row.Customer }}"',
        '  Amount: "{{ row.Amount }}"',
        '  Region: "{{ row.Region }}"',
    ]
    if wait is not None:
        lines.append("wait:")
        lines += [f"  {k}: {v}" for k, v in wait.items()]
    if ndjson is not None:
        lines += ["outputs:", "  - type: ndjson", f"    path: {ndjson}"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


#: What opus-aaico's HTTP stack imports while it works: its own dependencies (pydantic, httpx and
#: httpx's: httpcore, h11, anyio, certifi, idna) and sniffio, which none of them requires but
#: httpcore imports inside every lock it sets up (``httpcore/_synchronization.py``,
#: ``current_async_library``): without it every request pays a failed import, a search of the
#: whole ``sys.path``, which made 26 % of the SDK's CPU. A fresh ``pip install opus-aaico`` lacks it.
AAICO_STACK = ("pydantic", "httpx", "httpcore", "h11", "anyio", "sniffio", "certifi", "idna")
#: Modules httpx uses when present and that change what goes on the wire (``Accept-Encoding``):
#: the SDK's interpreter should have the same of them as opus-runner's, or the report says so.
WIRE_OPTIONAL = ("brotli", "brotlicffi", "zstandard")

_PROBE = """
import importlib.metadata, importlib.util, json, sys
def has(name):
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False
try:
    version = importlib.metadata.version("opus-aaico")
except importlib.metadata.PackageNotFoundError:
    version = None
json.dump({"version": version, "present": [n for n in sys.argv[1:] if has(n)]}, sys.stdout)
"""


@dataclass
class AaicoEnv:
    """The interpreter opus-aaico runs in and whether it is complete (``missing`` empty)."""

    python: str
    version: str | None
    missing: list[str]
    wire_differences: list[str]  # optional modules one interpreter has and the other lacks

    def refusal(self) -> str | None:
        """Why no comparison with opus-aaico can be published from this interpreter, or None."""
        if self.version is None:
            return (
                f"opus-aaico is not installed for {self.python} (it comes with the test extra: "
                f"pip install -e '.[test]'); to use another interpreter: python -m venv /tmp/aaico && "
                f"/tmp/aaico/bin/pip install opus-aaico sniffio, then pass --aaico-python /tmp/aaico/bin/python"
            )
        if self.missing:
            return (
                f"the opus-aaico environment of {self.python} is incomplete, so its figures would not be "
                f"fair: it lacks {', '.join(self.missing)} (opus-aaico's HTTP stack imports "
                f"{'it' if len(self.missing) == 1 else 'them'} while it runs; without sniffio every "
                f"request pays a failed import). Install with: {self.python} -m pip install {' '.join(self.missing)}"
            )
        return None


def _present(python: str, names: Sequence[str]) -> tuple[str | None, set[str]]:
    probe = subprocess.run(
        [python, "-c", _PROBE, *names], capture_output=True, text=True, timeout=60, env=clean_env()
    )
    if probe.returncode != 0:
        raise OSError(probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else f"exit {probe.returncode}")
    data = json.loads(probe.stdout)
    return data["version"], set(data["present"])


def aaico_env(explicit: str | None) -> tuple[AaicoEnv | None, str]:
    """The interpreter for opus-aaico (``--aaico-python``, ``OPUS_BENCH_AAICO_PYTHON``, else this
    one) and what it has; or None and the reason it cannot be asked."""
    python = explicit or os.environ.get("OPUS_BENCH_AAICO_PYTHON") or PYTHON
    try:
        version, present = _present(python, [*AAICO_STACK, *WIRE_OPTIONAL])
        _, ours = _present(PYTHON, WIRE_OPTIONAL) if python != PYTHON else (None, present)
    except OSError as exc:
        return None, f"{python} cannot be run ({getattr(exc, 'strerror', None) or exc})"
    except subprocess.TimeoutExpired:
        return None, f"{python} did not answer within 60 s"
    missing = [name for name in AAICO_STACK if name not in present]
    differences = [
        f"{name} ({'only opus-runner has it' if name in ours else 'only opus-aaico has it'})"
        for name in WIRE_OPTIONAL
        if (name in ours) != (name in present)
    ]
    return AaicoEnv(python, version, missing, differences), ""


# -- statistics and output -----------------------------------------------------------------------


def median_of(runs: Sequence[Measurement]) -> Measurement:
    """A Measurement whose every figure is the median over ``runs`` (one label)."""
    if not runs:
        raise ValueError("no runs to take the median of")
    first = runs[0]

    def med(get: Callable[[Measurement], float]) -> float:
        return statistics.median(get(r) for r in runs)

    server = [r.server_cpu for r in runs if r.server_cpu is not None]
    routes = sorted({k for r in runs for k in r.requests})
    return Measurement(
        label=first.label,
        wall=med(lambda r: r.wall),
        user=med(lambda r: r.user),
        sys=med(lambda r: r.sys),
        maxrss_mb=med(lambda r: r.maxrss_mb),
        returncode=max(r.returncode for r in runs),
        server_cpu=statistics.median(server) if server else None,
        requests={k: int(statistics.median(r.requests.get(k, 0) for r in runs)) for k in routes},
        api_requests={
            k: int(statistics.median(r.api_requests.get(k, 0) for r in runs)) for k in sorted({k for r in runs for k in r.api_requests})
        },
    )


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A plain aligned text table (right-aligned numbers)."""
    body = [[_cell(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(headers)]

    def line(cells: Sequence[str], numeric: Sequence[bool]) -> str:
        return "  ".join(c.rjust(w) if n else c.ljust(w) for c, w, n in zip(cells, widths, numeric)).rstrip()

    numeric = [all(_is_number(r[i]) for r in body) and i > 0 for i in range(len(headers))]
    out = [line(list(headers), numeric), line(["-" * w for w in widths], numeric)]
    out += [line(r, numeric) for r in body]
    return "\n".join(out)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _is_number(text: str) -> bool:
    return text == "-" or text.replace(",", "").replace(".", "", 1).replace("x", "").replace("-", "", 1).isdigit()


@dataclass
class Ratio:
    """One ratio line: ``wall ratio opus-runner/floor: 1.12x (target <= 1.25x) ok``."""

    name: str
    value: float
    target: float | None = None
    higher_is_better: bool = False
    unit: str = "x"

    @property
    def met(self) -> bool | None:
        if self.target is None:
            return None
        return self.value >= self.target if self.higher_is_better else self.value <= self.target

    def line(self) -> str:
        value = _fmt(self.value, self.unit)
        if self.target is None:
            return f"{self.name}: {value}"
        sign = ">=" if self.higher_is_better else "<="
        if self.unit == " MB" and not self.higher_is_better:
            sign = "<"
        verdict = "ok" if self.met else "MISSED"
        return f"{self.name}: {value} (target {sign} {_fmt(self.target, self.unit)}) {verdict}"

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "target": self.target, "met": self.met, "unit": self.unit.strip()}


def _fmt(value: float, unit: str) -> str:
    if unit == "x":
        return f"{value:.2f}x"
    if unit == " rows/s":
        return f"{value:,.0f} rows/s"
    if float(value).is_integer():
        return f"{int(value):,}{unit}"
    return f"{value:,.1f}{unit}"


def ratio(name: str, numerator: float, denominator: float, target: float | None = None) -> Ratio:
    """``numerator/denominator`` as a Ratio (lower is better)."""
    return Ratio(name, numerator / denominator if denominator else float("inf"), target)


class Report:
    """What a benchmark prints: a title, tables, notes, ratio lines; or JSON with ``--json``.

    With ``--json`` the human report goes to stderr and stdout holds one JSON document, so both
    are visible and stdout stays parseable.
    """

    def __init__(self, name: str, args: argparse.Namespace) -> None:
        self.name = name
        self.args = args
        self.as_json = bool(getattr(args, "json", False))
        self.stream = sys.stderr if self.as_json else sys.stdout
        self.data: dict[str, Any] = {"benchmark": name, "settings": {}, "results": {}, "ratios": [], "notes": []}
        self.ratios: list[Ratio] = []

    def say(self, text: str = "") -> None:
        print(text, file=self.stream, flush=True)

    def settings(self, **values: Any) -> None:
        self.data["settings"].update(values)
        self.say(f"# {self.name}: " + ", ".join(f"{k}={v}" for k, v in values.items()))

    def progress(self, text: str) -> None:
        """A line while measuring (stderr, so a redirected report stays clean)."""
        print(f"  ... {text}", file=sys.stderr, flush=True)

    def note(self, text: str) -> None:
        self.data["notes"].append(text)
        self.say(text)

    def result(self, key: str, value: Any) -> None:
        self.data["results"][key] = value

    def add_ratio(self, r: Ratio) -> Ratio:
        self.ratios.append(r)
        self.data["ratios"].append(r.as_dict())
        return r

    def finish(self) -> int:
        """Print the ratio lines (and the JSON); the exit code (1 only with --check and a miss)."""
        self.say("")
        for r in self.ratios:
            self.say(r.line())
        if self.as_json:
            print(json.dumps(self.data, indent=2, default=str), flush=True)
        missed = [r for r in self.ratios if r.met is False]
        return 1 if missed and getattr(self.args, "check", False) else 0


def base_parser(description: str, *, jobs: int, concurrency: int, repeat: int) -> argparse.ArgumentParser:
    """The options every benchmark takes: ``--jobs``, ``--concurrency``, ``--repeat``, ``--json``, ``--check``."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=_positive, default=jobs, help=f"jobs (or rows) per run [default: {jobs}]")
    parser.add_argument("--concurrency", type=_positive, default=concurrency, help=f"jobs in flight at once [default: {concurrency}]")
    parser.add_argument("--repeat", type=_positive, default=repeat, help=f"runs of each variant; medians are reported [default: {repeat}]")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON document on stdout (the report goes to stderr)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--keep", metavar="DIR", type=Path, help="keep the generated specs, data and journals in DIR")
    return parser


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, found {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, found {value}")
    return value


class Workdir:
    """A temporary folder for generated specs and journals, or ``--keep DIR`` (left in place)."""

    def __init__(self, keep: Path | None) -> None:
        self.keep = keep
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            self.path = keep.resolve()
        else:
            self.path = Path(tempfile.mkdtemp(prefix="opus-bench-"))

    def __enter__(self) -> Path:
        return self.path

    def __exit__(self, *exc: object) -> None:
        if self.keep is None:
            shutil.rmtree(self.path, ignore_errors=True)


def main_guard(run: Callable[[], int]) -> None:
    """Run a benchmark's main; a BenchError is one clear message and exit 2, not a traceback."""
    try:
        code = run()
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    sys.exit(code)
