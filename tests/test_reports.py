"""``opus-run report`` and ``run --summary-md``: a run of the journal as HTML and as Markdown,
from real batches against the sandbox; the HTML page opened in headless Chromium."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import WF, Project

#: A title that would run a script if any text reached the page unescaped.
HOSTILE = "<script>document.title='pwned'</script>"


def _batch(project: Project, completed: int = 18, failed: int = 2) -> None:
    """``ok.yaml`` (``completed`` quick jobs, their title hostile) and ``bad.yaml`` (``failed``
    jobs of the broken workflow): one batch of both."""
    ns = ", ".join(str(n) for n in range(1, completed + 1))
    project.spec(
        "ok.yaml",
        f"""\
        apiVersion: opus-runner/v1
        kind: Job
        metadata:
          name: triage
          title: "{HOSTILE} {{{{ matrix.n }}}}"
        workflow:
          id: {WF['quick']}
        matrix:
          n: [{ns}]
        inputs:
          Question: "q {{{{ matrix.n }}}}"
        """,
    )
    fs = ", ".join(str(n) for n in range(1, failed + 1))
    project.spec(
        "bad.yaml",
        f"""\
        apiVersion: opus-runner/v1
        kind: Job
        metadata:
          name: scoring
        workflow:
          id: {WF['broken']}
        matrix:
          n: [{fs}]
        inputs:
          Question: "q {{{{ matrix.n }}}}"
        """,
    )


def _run_batch(project: Project, *extra: str) -> None:
    result = project.run("run", "ok.yaml", "bad.yaml", "--concurrency", "8", *extra)
    assert result.exit_code == 1, result.output


@pytest.fixture
def batch(project: Project) -> Project:
    _batch(project)
    _run_batch(project)
    return project


# -- HTML ------------------------------------------------------------------------------------


def test_html_report_has_totals_timeline_histogram_and_failures(batch: Project) -> None:
    result = batch.run("report", "-o", "run.html")
    assert result.exit_code == 0, result.output
    assert "wrote run.html" in result.stderr and "18 completed, 2 failed in " in result.stderr
    page = (batch.root / "run.html").read_text(encoding="utf-8")
    assert re.search(r'<p id="totals-line">18 completed, 2 failed in [\d.]+m?s</p>', page)
    bars = re.findall(r'<rect class="bar" data-status="(\w+)"', page)
    assert sorted(set(bars)) == ["COMPLETED", "FAILED"] and bars.count("FAILED") == 2 and len(bars) == 20
    counts = [int(n) for n in re.findall(r'<rect class="hist-bar" data-status="\w+" data-count="(\d+)"', page)]
    assert sum(counts) == 20
    failures = re.findall(r'<tr class="failure">(.*?)</tr>', page)
    assert len(failures) == 2
    assert all("scoring[n=" in row and "model quota exceeded" in row for row in failures)


def test_html_report_is_self_contained_and_escapes_every_text(batch: Project) -> None:
    assert batch.run("report", "-o", "run.html").exit_code == 0
    page = (batch.root / "run.html").read_text(encoding="utf-8")
    # Nothing to fetch: no script, no external reference (the SVG namespace is a name, not a load).
    assert "<script" not in page.lower()
    assert not re.search(r"""(src|href)\s*=|@import|url\(""", page)
    assert set(re.findall(r"https?://[^\s\"'<]+", page)) == {"http://www.w3.org/2000/svg"}
    assert "default-src 'none'" in page
    assert "&lt;script&gt;document.title=&#x27;pwned&#x27;&lt;/script&gt;" in page


def test_report_of_a_given_run_and_of_unknown_ones(project: Project) -> None:
    missing = project.run("report")
    assert missing.exit_code == 2
    assert "no journal at" in missing.stderr and "nothing has run in this project yet" in missing.stderr
    assert not (project.root / ".opus-run").exists()  # looking created nothing
    _batch(project, completed=1, failed=1)
    _run_batch(project)
    project.spec("one.yaml", f"apiVersion: opus-runner/v1\nkind: Job\nmetadata: {{name: one}}\nworkflow: {{id: {WF['quick']}}}\ninputs: {{Question: q}}\n")
    assert project.run("run", "one.yaml").exit_code == 0
    first, second = _run_ids(project)
    latest = project.run("report", "--format", "md")
    assert f"### opus-run {second}: passed" in latest.stdout and "**1 completed in" in latest.stdout
    older = project.run("report", first, "-o", "r.md")
    assert older.exit_code == 0
    text = (project.root / "r.md").read_text()
    assert f"### opus-run {first}: exit code 1" in text and "1 completed, 1 failed" in text
    unknown = project.run("report", "nope")
    assert unknown.exit_code == 2 and "no run nope in" in unknown.stderr and second in unknown.stderr
    assert project.run("report", "-o", ".").exit_code == 2


def _run_ids(project: Project) -> list[str]:
    import sqlite3

    db = sqlite3.connect(project.root / ".opus-run" / "state.db")
    try:
        return [row[0] for row in db.execute("SELECT run_id FROM runs ORDER BY rowid")]
    finally:
        db.close()


# -- Markdown --------------------------------------------------------------------------------


def test_summary_md_appends_totals_and_failures_after_what_was_there(project: Project) -> None:
    _batch(project, completed=3, failed=2)
    summary = project.root / "summary.md"
    summary.write_text("## Build\nan earlier step wrote this\n")
    _run_batch(project, "--summary-md", "summary.md")
    _run_batch(project, "--summary-md", str(summary))
    text = summary.read_text()
    assert text.startswith("## Build\nan earlier step wrote this\n\n### opus-run ")
    assert text.count("### opus-run ") == 2 and text.count("\n\n\n") == 0
    assert text.count("**3 completed, 2 failed in ") == 2
    assert "| COMPLETED | 3 |" in text and "| FAILED | 2 |" in text
    rows = [line for line in text.splitlines() if line.startswith("| scoring")]
    assert len(rows) == 4 and all(row.count(" | ") == 3 for row in rows)  # 4 cells: nothing split a row
    assert "model quota exceeded" in rows[0] and "scoring\\[n=1\\]" in rows[0]


def test_markdown_cells_cannot_break_the_table_or_inject_html() -> None:
    from opus_runner.reports.markdown import cell

    assert cell("a|b\nc <img src=x onerror=alert(1)> *d*") == "a\\|b c &lt;img src=x onerror=alert(1)&gt; \\*d\\*"
    assert cell("x" * 400, 10) == "x" * 9 + "…"


def test_summary_md_refuses_an_empty_name(project: Project) -> None:
    _batch(project, completed=1, failed=0)
    result = project.run("run", "ok.yaml", "--summary-md", "")
    assert result.exit_code == 2
    assert "--summary-md was given an empty file name (is $GITHUB_STEP_SUMMARY set?)" in result.stderr
    assert not (project.root / ".opus-run").exists()  # refused before anything ran


# -- in a real browser ------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
REQUIRED = os.environ.get("OPUS_RUNNER_REQUIRE_SERVICES") == "1"


def _chromium(*args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    # --no-sandbox: CI runs as root, where Chromium's own sandbox refuses to start.
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_html_report_renders_in_chromium(batch: Project, tmp_path: Path) -> None:
    if CHROMIUM is None:
        if REQUIRED:
            pytest.fail("chromium is not installed, and OPUS_RUNNER_REQUIRE_SERVICES=1: install it (apt-get install -y chromium)")
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    assert batch.run("report", "-o", "run.html").exit_code == 0
    url = (batch.root / "run.html").resolve().as_uri()
    dom = _chromium("--dump-dom", url)
    assert dom.returncode == 0, dom.stderr
    rendered = dom.stdout
    # The browser built the page as written: 20 bars, the totals, the failures, and the hostile
    # title as text (no script element, the document's title untouched).
    assert len(re.findall(r'<rect class="bar"', rendered)) == 20
    assert re.search(r'id="totals-line">18 completed, 2 failed in ', rendered)
    assert len(re.findall(r'<tr class="failure">', rendered)) == 2
    assert "<script" not in rendered and "pwned</title>" not in rendered
    assert "&lt;script&gt;document.title='pwned'&lt;/script&gt;" in rendered
    artifacts = Path(os.environ.get("OPUS_RUNNER_ARTIFACTS", tmp_path))
    artifacts.mkdir(parents=True, exist_ok=True)
    shot = artifacts / "report.png"
    taken = _chromium("--window-size=1100,1400", f"--screenshot={shot}", url)
    assert taken.returncode == 0, taken.stderr
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
