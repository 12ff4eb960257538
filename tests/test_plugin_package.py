"""A plugin package built only from docs/plugins.md, installed into a fresh venv, found by entry point.

The package files are the code blocks of the guide's "Packaging a plugin" section, and the
tests run inside the new venv are the blocks of its "Testing a plugin" section, so the guide
cannot drift from what works.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

from opus_runner.plugins import make_plugin_host

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "plugins.md"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)


def section(title: str) -> str:
    text = GUIDE.read_text(encoding="utf-8")
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def blocks(title: str, language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(section(title)) if lang == language]


def package_files() -> dict[str, str]:
    """The guide's packaging blocks, each opening with a comment naming its file."""
    files = {}
    for body in FENCE.findall(section("Packaging a plugin")):
        first, _, rest = body[1].partition("\n")
        name = first.lstrip("#").strip()
        files[name] = rest
    return files


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{cmd[:4]} failed:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def venv_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding only the guide's package, seeing opus-runner and its dependencies."""
    root = tmp_path_factory.mktemp("pkg")
    package = root / "opus-runner-hello"
    files = package_files()
    assert set(files) == {"pyproject.toml", "opus_runner_hello/__init__.py"}
    for name, content in files.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(content, encoding="utf-8")

    venv = root / "venv"
    # --without-pip: ensurepip takes seconds; this interpreter's pip installs into it below.
    run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)], cwd=root)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    site = run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=root
    ).stdout.strip()
    # --system-site-packages reaches the base interpreter, not the venv running these tests
    # (where opus-runner, pluggy and hatchling are installed): add that one explicitly.
    ours = sysconfig.get_paths()["purelib"]
    Path(site, "_opus_runner_test_env.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            str(package),
        ],
        cwd=root,
    )
    return python


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("OPUS_", "PYTEST_"))}


def test_the_installed_package_is_found_by_its_entry_point(venv_python: Path, tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import asyncio, json, logging, pathlib, sys
        from opus_runner.models import Context, JobResult
        from opus_runner.plugins import call_handler, make_plugin_host

        host = make_plugin_host(plugins_dir=None)
        info = [i for i in host.describe() if i.origin == "entrypoint"]
        spec_dir = pathlib.Path(sys.argv[1])
        ctx = Context(spec=None, spec_path=spec_dir / "s.yaml", spec_dir=spec_dir, log=logging.getLogger("t"))
        config = {"type": "hello", "path": "out/hello.txt", "greeting": "Hi"}
        problems = host.check_config("outputs", [config, {"type": "hello"}], file="s.yaml", key="outputs")
        result = JobResult(job_id="job-7", status="COMPLETED")
        written = asyncio.run(call_handler(host.outputs["hello"], result, config, ctx))
        print(json.dumps({
            "plugins": [[i.name, i.source, i.outputs] for i in info],
            "handler_plugin": host.outputs["hello"].plugin,
            "problems": [str(p) for p in problems],
            "written": str(written),
            "text": pathlib.Path(written).read_text(),
        }))
        """
    )
    done = run([str(venv_python), "-c", script, str(tmp_path)], cwd=tmp_path, env=clean_env())
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["plugins"] == [["hello", "opus-runner-hello 0.1.0 (entry point opus_runner_hello)", ["hello"]]]
    assert report["handler_plugin"] == "hello"
    assert report["problems"] == ["s.yaml: outputs[1]: missing required key 'path'"]
    assert report["written"] == str(tmp_path / "out" / "hello.txt")
    assert report["text"] == "Hi from job job-7: COMPLETED\n"


def test_the_package_is_not_visible_outside_its_venv() -> None:
    # The test above proves the entry point, not some leftover on this interpreter's path.
    assert "hello" not in make_plugin_host(plugins_dir=None).outputs


def test_the_guides_plugin_tests_pass_in_the_venv(venv_python: Path, tmp_path: Path) -> None:
    unit, end_to_end = blocks("Testing a plugin", "python")
    (tmp_path / "test_unit.py").write_text(unit, encoding="utf-8")
    (tmp_path / "test_end_to_end.py").write_text(end_to_end, encoding="utf-8")
    done = run(
        [str(venv_python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path), str(tmp_path)],
        cwd=tmp_path,
        env=clean_env(),
    )
    assert re.search(r"^2 passed", done.stdout, re.M), done.stdout
