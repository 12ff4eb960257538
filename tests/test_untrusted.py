"""Untrusted checkouts: what a pull request can change (the journal, opus-runner.toml, plugin
files) must not run code or send the service key elsewhere under --untrusted, and a project
file's base_url that is not the Opus service is named before anything else."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from conftest import Project, header

#: A plugin file a pull request replaced: importing it is running the attacker's code.
MARKER_PLUGIN = """\
from pathlib import Path
from opus_runner import hookimpl

Path({marker!r}).write_text("imported")

@hookimpl
def opus_template_globals(ctx):
    return {{}}
"""
HARMLESS_PLUGIN = MARKER_PLUGIN.replace("Path({marker!r}).write_text(\"imported\")", "")


class KeyCatcher:
    """A second loopback server standing for someone else's host: it records the service keys
    it receives and answers every request with 401."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        catcher = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                key = self.headers.get("x-service-key")
                if key:
                    catcher.keys.append(key)
                body = b'{"message": "no"}'
                self.send_response(401)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def catcher() -> Iterator[KeyCatcher]:
    server = KeyCatcher()
    try:
        yield server
    finally:
        server.close()


def _quick_spec(project: Project) -> Path:
    return project.spec("q.yaml", header("q", "quick") + "inputs:\n  Question: life\n")


def _edit_recorded_options(project: Project, **changes: Any) -> None:
    """What a pull request can do to a committed journal: rewrite the run's recorded options."""
    import sqlite3

    db = sqlite3.connect(project.root / ".opus-run" / "state.db")
    try:
        (options,) = db.execute("SELECT options FROM runs").fetchone()
        db.execute("UPDATE runs SET options = ?", (json.dumps({**json.loads(options), **changes}),))
        db.commit()
    finally:
        db.close()


def _committed_journal_naming(project: Project, plugin: Path, *extra: str) -> str:
    """A run left unfinished (--no-wait) with ``--plugin plugin`` recorded in its journal, whose
    file the pull request then replaces with code that leaves a marker when imported."""
    plugin.write_text(HARMLESS_PLUGIN.format())  # harmless while the run that records it starts
    result = project.run("run", _quick_spec(project), "--no-wait", "--plugin", plugin.name, *extra)
    assert result.exit_code == 0, result.output
    return str(plugin.with_suffix(".marker"))


def test_resume_no_local_plugins_does_not_import_a_plugin_the_journal_names(project: Project) -> None:
    plugin = project.root / "evil.py"
    marker = _committed_journal_naming(project, plugin)
    plugin.write_text(MARKER_PLUGIN.format(marker=marker))

    result = project.run("resume", "--no-local-plugins")
    assert result.exit_code == 0, result.output
    assert not Path(marker).exists()
    first = result.stderr.splitlines()[0]
    assert first.startswith("--no-local-plugins: ignored --plugin evil.py recorded in the journal of run ")
    assert "give --plugin again" in first


def test_resume_without_the_flag_still_loads_the_journals_plugin(project: Project) -> None:
    # The recorded --plugin is what a resume of one's own run needs: only the flags drop it.
    plugin = project.root / "mine.py"
    marker = _committed_journal_naming(project, plugin)
    plugin.write_text(MARKER_PLUGIN.format(marker=marker))
    result = project.run("resume")
    assert result.exit_code == 0, result.output
    assert Path(marker).exists()
    assert "ignored" not in result.stderr


def test_resume_untrusted_ignores_the_journals_plugin_and_options(project: Project) -> None:
    plugin = project.root / "evil.py"
    marker = _committed_journal_naming(project, plugin, "--allow-outside-root")
    plugin.write_text(MARKER_PLUGIN.format(marker=marker))

    result = project.run("resume", "--untrusted", "--format", "json")
    assert result.exit_code == 0, result.output
    assert not Path(marker).exists()
    first = json.loads(result.stdout.splitlines()[0])
    assert first["event"] == "message" and first["level"] == "warning"
    assert first["message"].startswith("--untrusted: ignored --plugin evil.py recorded in the journal of run ")
    assert "--allow-outside-root recorded in the journal" in first["message"]


def test_a_base_url_from_the_journal_is_named_and_untrusted_ignores_it(
    project: Project, catcher: KeyCatcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A committed journal whose run "was given" --base-url pointing at someone else's host.
    result = project.run("run", _quick_spec(project), "--no-wait")
    assert result.exit_code == 0, result.output
    _edit_recorded_options(project, base_url=catcher.url)
    result = project.run("resume")
    assert result.stderr.splitlines()[0].startswith(f"using base_url {catcher.url} recorded in the journal of run ")
    assert catcher.keys  # the journal's --base-url wins over OPUS_BASE_URL, as the option did

    catcher.keys.clear()
    monkeypatch.setattr("opus_runner.config.DEFAULT_BASE_URL", project.sandbox.base_url)  # the "Opus service"
    result = project.run("resume", "--untrusted", env={"OPUS_BASE_URL": None})
    assert result.exit_code == 0, result.output
    assert catcher.keys == []
    assert result.stderr.splitlines()[0].startswith(f"--untrusted: ignored --base-url {catcher.url} recorded in the journal of run ")


def test_untrusted_ignores_the_project_files_base_url_and_plugins_dir(
    project: Project, catcher: KeyCatcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = project.root / "hook.marker"
    (project.root / "hooks").mkdir()
    (project.root / "hooks" / "evil.py").write_text(MARKER_PLUGIN.format(marker=str(marker)))
    (project.root / "opus-runner.toml").write_text(
        f'state_dir = ".opus-run"\nbase_url = "{catcher.url}"\nplugins_dir = "hooks"\n'
    )
    # The sandbox stands for the Opus service here: where the key goes once base_url is ignored.
    monkeypatch.setattr("opus_runner.config.DEFAULT_BASE_URL", project.sandbox.base_url)
    env = {"OPUS_BASE_URL": None}  # CI that does not set it: the project file would decide
    spec = _quick_spec(project)

    result = project.run("run", spec, "--untrusted", env=env)
    assert result.exit_code == 0, result.output
    assert catcher.keys == [] and not marker.exists()
    assert project.sandbox.state.count("POST", "execute") == 1
    assert result.stderr.splitlines()[0] == (
        f"--untrusted: ignored base_url = '{catcher.url}' and plugins_dir = 'hooks' from opus-runner.toml"
    )

    # Without --untrusted the same checkout sends the key there (and imports the plugin): the
    # first line says where the key goes.
    result = project.run("validate", spec, env=env)
    assert catcher.keys and set(catcher.keys) == {project.env["OPUS_SERVICE_KEY"]}
    assert marker.exists()
    assert result.stderr.splitlines()[0] == (
        f"using base_url {catcher.url} from opus-runner.toml, not the Opus service: "
        "the service key is sent there (--untrusted ignores it)"
    )


def test_untrusted_skips_the_default_plugins_folder_and_says_so(project: Project) -> None:
    marker = project.root / "local.marker"
    (project.root / "plugins").mkdir()
    (project.root / "plugins" / "evil.py").write_text(MARKER_PLUGIN.format(marker=str(marker)))
    result = project.run("validate", _quick_spec(project), "--untrusted")
    assert result.exit_code == 0, result.output
    assert not marker.exists()
    assert result.stderr.splitlines()[0] == "--untrusted: ignored the plugins folder plugins"


@pytest.mark.parametrize("command", ["schema", "lock"])
def test_untrusted_on_the_authoring_commands(project: Project, catcher: KeyCatcher, command: str) -> None:
    from conftest import WF

    (project.root / "opus-runner.toml").write_text(f'base_url = "{catcher.url}"\n')
    args = [WF["quick"]] if command == "schema" else [str(_quick_spec(project))]
    result = project.run(command, *args, "--untrusted")  # OPUS_BASE_URL is the sandbox's
    assert result.exit_code == 0, result.output
    assert catcher.keys == []
    assert result.stderr.splitlines()[0] == f"--untrusted: ignored base_url = '{catcher.url}' from opus-runner.toml"


def test_a_base_url_the_user_gave_is_not_named(project: Project, catcher: KeyCatcher) -> None:
    (project.root / "opus-runner.toml").write_text(f'state_dir = ".opus-run"\nbase_url = "{catcher.url}"\n')
    spec = _quick_spec(project)
    sandbox_url = project.sandbox.base_url
    for args, env in [
        (["--base-url", sandbox_url], {"OPUS_BASE_URL": None}),  # on the command line
        ([], {}),  # OPUS_BASE_URL (the project fixture sets it)
        (["--sandbox"], {"OPUS_BASE_URL": None}),
    ]:
        result = project.run("validate", spec, *args, env=env)
        assert result.exit_code == (2 if "--sandbox" in args else 0), result.output  # its demo workflows lack "quick"
        assert "base_url" not in result.stderr
    assert catcher.keys == []


def test_status_names_a_project_base_url_too(project: Project, catcher: KeyCatcher) -> None:
    (project.root / "opus-runner.toml").write_text(f'base_url = "{catcher.url}"\n')
    result = project.run("status", "job-1", env={"OPUS_BASE_URL": None})
    assert result.exit_code == 3
    assert result.stderr.splitlines()[0].startswith(f"using base_url {catcher.url} from opus-runner.toml")


@pytest.mark.parametrize(
    ("url", "official"),
    [
        ("https://operator.opus.com", True),
        ("https://operator.opus.com/", True),
        ("https://OPERATOR.opus.com:443/v1", True),
        ("http://operator.opus.com", False),
        ("https://operator.opus.com.attacker.example", False),
        ("https://operator.opus.com@attacker.example", False),
        ("https://operator.opus.com:8443", False),
        ("https://[::1", False),
    ],
)
def test_is_opus_service(url: str, official: bool) -> None:
    from opus_runner.config import is_opus_service

    assert is_opus_service(url) is official


# -- server text on a terminal ------------------------------------------------------------------

HOSTILE_TEXT = "\x1b[2J\x1b]0;pwned\x07"
WF_ESCAPES = "00000000-0000-4000-8000-0000000000e1"
WF_ESCAPES_OK = "00000000-0000-4000-8000-0000000000e2"


def _escape_workflows() -> dict[str, Any]:
    question = [{"variable_name": "workflow_input_q", "display_name": "Question", "type": "str"}]
    return {
        "workflows": {
            WF_ESCAPES: {
                "name": "Fails loudly",
                "duration": "0.1s",
                "fail": f"model said {HOSTILE_TEXT}\x9b31m red\rover\nall jobs completed",
                "inputs": question,
                "outputs": {"answer": "never"},
            },
            WF_ESCAPES_OK: {
                "name": "Answers loudly",
                "duration": "0.1s",
                "inputs": question,
                "outputs": {"answer": f"one{HOSTILE_TEXT}\nline two\x1b[31m", f"name{HOSTILE_TEXT}": "x"},
            },
        }
    }


def _no_controls(text: str) -> None:
    assert not any(ch in text for ch in "\x1b\x07\x9b\r"), repr(text)


def test_server_text_reaches_the_terminal_without_controls(tmp_path: Path, opus_sandbox_factory: Any) -> None:
    from conftest import make_project

    project = make_project(tmp_path, opus_sandbox_factory, _escape_workflows())
    failing = project.spec("f.yaml", header("f", WF_ESCAPES) + "inputs:\n  Question: q\n")
    result = project.run("run", failing)
    assert result.exit_code == 1
    _no_controls(result.stdout + result.stderr)
    assert "model said " in result.stderr
    # One line per event: the server's newline cannot forge a line of its own.
    assert not any(line == "all jobs completed" for line in (result.stdout + result.stderr).splitlines())

    answering = project.spec("a.yaml", header("a", WF_ESCAPES_OK) + "inputs:\n  Question: q\n")
    result = project.run("run", answering)
    assert result.exit_code == 0, result.output
    _no_controls(result.stdout + result.stderr)
    assert "    line two" in result.stdout  # a multi-line value is still shown indented

    # --format json keeps the data exact: JSON escapes the controls.
    result = project.run("run", failing, "--format", "json")
    failed = next(e for e in project.events(result) if e["event"] == "failed")
    assert HOSTILE_TEXT in failed["error"]
    _no_controls(result.stdout)


def test_an_api_error_quoting_the_server_is_printed_without_controls(project: Project) -> None:
    class Loud(KeyCatcher):
        pass

    server = Loud()
    try:
        server.server.RequestHandlerClass.do_GET = _loud_answer  # type: ignore[attr-defined]
        result = project.run("status", "job-1", env={"OPUS_BASE_URL": server.url})
    finally:
        server.close()
    assert result.exit_code == 3
    assert "pwned" not in result.stderr and "error: " in result.stderr
    _no_controls(result.stderr)


def _loud_answer(self: BaseHTTPRequestHandler) -> None:
    body = json.dumps({"message": f"denied{HOSTILE_TEXT}"}).encode()
    self.send_response(403)
    self.send_header("content-type", "application/json")
    self.send_header("content-length", str(len(body)))
    self.end_headers()
    self.wfile.write(body)


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (HOSTILE_TEXT + "after", "after"),
        ("bell\x07 nul\x00 del\x7f", "bell\\x07 nul\\x00 del\\x7f"),
        ("csi\x9b2J c1\x85", "csi c1\\x85"),
        ("\x1b\x1b[2J", "\\x1b"),  # what a removed sequence leaves behind is inert
        ("clip\x1b]52;c;ZXZpbA==\x1b\\board", "clipboard"),
        ("tab\tkept", "tab\tkept"),
        ("rtl\u202eevil", "rtl\\u202eevil"),
        ("two\nlines\r", "two\\nlines\\r"),
        ("ünïcödé ✓", "ünïcödé ✓"),
    ],
)
def test_printable(text: str, shown: str) -> None:
    from opus_runner.progress import printable

    assert printable(text) == shown
    assert printable("a\nb\x1b[2J", newlines=True) == "a\nb"
