"""Start-up cost: ``opus-run --version``, ``--help`` and ``validate --offline`` against ``python -c pass``.

Each command runs ``--repeat`` times (default 15) after one warm-up; the median wall time,
CPU seconds and peak RSS of each are reported with their ratio to the interpreter's own
start-up, measured in the same run. Target: ``--help`` <= 3x ``python -c pass``.

It then runs ``python -X importtime -m opus_runner --help`` and lists what the help imports,
flagging the heavy modules that must stay out of the start-up path (httpx, jinja2,
jsonschema, rich, starlette, uvicorn).

Children read bytecode from a cache outside the work tree (PYTHONPYCACHEPREFIX), as an
installed package would; see bench/README.md.

    python bench/startup.py
    python bench/startup.py --repeat 31 --json
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    PYTHON,
    REPO_ROOT,
    Measurement,
    Ratio,
    Report,
    base_parser,
    clean_env,
    main_guard,
    median_of,
    opus_run_command,
    ratio,
    require_ok,
    run_measured,
    table,
)

HELP_TARGET = 3.0
HEAVY = ("httpx", "jinja2", "jsonschema", "rich", "starlette", "uvicorn", "yaml", "pluggy", "sqlite3", "asyncio")
#: the modules the brief forbids at start-up; the others in HEAVY are shown for information
FORBIDDEN = ("httpx", "jinja2", "jsonschema", "rich", "starlette", "uvicorn", "temporalio")


def parse_importtime(stderr: str) -> list[tuple[str, int, int, int]]:
    """``(module, self_us, cumulative_us, depth)`` per line of ``-X importtime`` output.

    Lines look like ``import time:       412 |       1630 |   encodings.utf_8``; two more
    spaces before the name mean one level deeper (imported by the next shallower line below).
    """
    out = []
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        parts = line[len("import time:") :].split("|", 2)
        if len(parts) != 3:
            continue
        self_us, cumulative, name = parts
        try:
            depth = (len(name) - len(name.lstrip(" ")) - 1) // 2
            out.append((name.strip(), int(self_us), int(cumulative), depth))
        except ValueError:
            continue
    return out


def heavy_imports(entries: list[tuple[str, int, int, int]]) -> dict[str, int]:
    """Heavy top-level packages that were imported, with their cumulative import time (us)."""
    found: dict[str, int] = {}
    for name, _self_us, cumulative, _depth in entries:
        top = name.split(".")[0]
        if top in HEAVY and name == top:
            found[top] = max(found.get(top, 0), cumulative)
    return found


def run() -> int:
    parser = base_parser(__doc__ or "", jobs=1, concurrency=1, repeat=15)
    parser.add_argument("--spec", type=Path, default=REPO_ROOT / "specs" / "summarize.yaml", help="spec for validate --offline [default: specs/summarize.yaml]")
    args = parser.parse_args()
    report = Report("startup", args)
    report.settings(repeat=args.repeat, python=PYTHON)
    opus_run = opus_run_command()
    spec = args.spec.resolve()
    commands: dict[str, list[str]] = {
        "python -c pass": [PYTHON, "-c", "pass"],
        # The least any click CLI pays: opus-run can only get so close to python -c pass.
        "python -c 'import click'": [PYTHON, "-c", "import click"],
        "opus-run --version": [*opus_run, "--version"],
        "opus-run --help": [*opus_run, "--help"],
        "opus-run validate --offline": [*opus_run, "validate", str(spec), "--offline"],
    }
    env = clean_env()
    runs: dict[str, list[Measurement]] = {label: [] for label in commands}
    for label, argv in commands.items():  # warm-up: fills the bytecode cache, the page cache
        require_ok(run_measured(label, argv, env=env, cwd=spec.parent, timeout=120), label)
    for r in range(args.repeat):
        for label, argv in commands.items():  # interleaved, so a busy moment hits every command
            m = run_measured(label, argv, env=env, cwd=spec.parent, timeout=120)
            require_ok(m, label)
            runs[label].append(m)
    medians = {label: median_of(ms) for label, ms in runs.items()}
    base = medians["python -c pass"]
    rows = [[label, m.wall * 1000, m.cpu * 1000, m.maxrss_mb, m.wall / base.wall] for label, m in medians.items()]
    for label, m in medians.items():
        report.result(label, {**m.as_dict(), "min_wall": min(x.wall for x in runs[label]), "ratio": m.wall / base.wall})
    report.say(table(["command", "median ms", "cpu ms", "peak MB", "x python"], rows))

    # What --help imports.
    probe = run_measured(
        "importtime", [PYTHON, "-X", "importtime", "-m", "opus_runner", "--help"], env=env, cwd=spec.parent, timeout=120
    )
    require_ok(probe, "python -X importtime -m opus_runner --help")
    entries = parse_importtime(probe.stderr)
    found = heavy_imports(entries)
    own = [e for e in entries if e[0].split(".")[0] == "opus_runner"]
    report.say("")
    report.say(f"--help imports {len(entries)} modules; heavy ones: " + (", ".join(f"{k} ({v / 1000:.1f} ms)" for k, v in sorted(found.items())) or "none"))
    forbidden = sorted(set(found) & set(FORBIDDEN))
    report.say("forbidden at start-up (" + ", ".join(FORBIDDEN) + "): " + (", ".join(forbidden) or "none imported"))
    top = sorted((e for e in entries if e[3] == 0), key=lambda e: -e[2])[:8]
    report.say(table(["top-level import (--help)", "cumulative ms", "self ms"], [[n, c / 1000, s / 1000] for n, s, c, _d in top]))
    report.result("help_imports", {"modules": len(entries), "heavy": found, "forbidden": forbidden, "opus_runner": [e[0] for e in own]})

    report.add_ratio(ratio("--help ratio opus-run/python", medians["opus-run --help"].wall, base.wall, HELP_TARGET))
    report.add_ratio(ratio("--help ratio opus-run/(python -c 'import click')", medians["opus-run --help"].wall, medians["python -c 'import click'"].wall))
    report.add_ratio(ratio("--version ratio opus-run/python", medians["opus-run --version"].wall, base.wall))
    report.add_ratio(ratio("validate --offline ratio opus-run/python", medians["opus-run validate --offline"].wall, base.wall))
    report.add_ratio(Ratio("forbidden heavy modules imported by --help", float(len(forbidden)), 0.0, unit=" modules"))
    return report.finish()


if __name__ == "__main__":
    main_guard(run)
