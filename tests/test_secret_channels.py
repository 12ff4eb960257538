"""No secret and no service key on any channel, in any form they can take on the way out.

Every test here collects every channel a run writes to (stdout, stderr, ``--verbose`` logs and
tracebacks, ``--format json`` events, the journal's raw bytes with its -wal, every output file)
and searches it for the secret and the key raw, JSON-escaped (``\\u`` and not), repr- and
ascii-escaped, URL-quoted, XML- and CSV-escaped, and for every prefix of 4 characters or more of
each of those forms (what a message cut before masking would leave).

The secret holds characters that escape differently in every form: an umlaut, a quote, a
backslash, a slash, a plus, an ampersand, an equals sign and a space. It is long, so that the
places that cut messages (at 57, 60, 200 or 300 characters) cut through it. Each test makes its
own values: the mask registry is process-wide, and a value registered by an earlier test would
hide a leak.
"""

from __future__ import annotations

import html
import json
import random
import sqlite3
import stat
import string
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest

from conftest import Project, header, journal_jobs, make_project, old_journal, opus_run

ECHO = "00000000-0000-4000-8000-0000000ec405"
SLOW_ECHO = "00000000-0000-4000-8000-0000000ec406"
FAILING = "00000000-0000-4000-8000-0000000ec407"
SPECIAL = 'p\u00e4ss"w\\rd/+&= x'
CSV_PLUGIN = Path(__file__).resolve().parents[1] / "plugins" / "csv_output.py"

_INPUTS = [
    {"variable_name": "workflow_input_q", "display_name": "Question", "type": "str"},
    {"variable_name": "workflow_input_t", "display_name": "Token", "type": "str"},
    {"variable_name": "workflow_input_n", "display_name": "Count", "type": "float", "is_nullable": True},
]
ECHO_WORKFLOWS: dict[str, Any] = {
    "workflows": {
        ECHO: {
            "duration": "0.1s",
            "inputs": _INPUTS,
            "outputs": {"echoed": "{{ inputs.Token }}", "answer": "Answer to {{ inputs.Question }}"},
        },
        SLOW_ECHO: {"duration": "1s", "inputs": _INPUTS, "outputs": {"echoed": "{{ inputs.Token }}"}},
        # The workflow fails with a message that quotes the value (repr-escaped, as Python does).
        FAILING: {
            "duration": "0.1s",
            "inputs": _INPUTS,
            "outputs": {"total": {"value": "{{ inputs.Token }}", "type": "float"}},
        },
    }
}

EVERY_OUTPUT = """\
outputs:
  - type: stdout
    full: true
  - type: json
    path: out/{{ job.id }}.json
  - type: ndjson
    path: out/all.ndjson
  - type: junit
    path: out/junit.xml
  - type: csv
    path: out/all.csv
notify:
  - type: log
    on: [submitted, completed, failed]
"""


def _tag(n: int) -> str:
    # Letters that are not hex digits: a prefix of the tag never matches a job id by chance.
    return "".join(random.choice(string.ascii_lowercase[6:]) for _ in range(n))


def new_secret() -> str:
    return f"{SPECIAL}{_tag(40)}{SPECIAL}"


def new_key() -> str:
    return f"kz-{_tag(30)}\"/+&= k\\{_tag(8)}"


def forms(value: str) -> set[str]:
    return {
        value,
        json.dumps(value)[1:-1],
        json.dumps(value, ensure_ascii=False)[1:-1],
        repr(value)[1:-1],
        ascii(value)[1:-1],
        quote(value, safe=""),
        quote_plus(value, safe=""),
        html.escape(value),
        value.replace('"', '""'),
    }


def needles(value: str) -> set[str]:
    return {form[:n] for form in forms(value) for n in range(4, len(form) + 1)}


def channels(project: Project, *results: Any) -> dict[str, bytes]:
    """Every channel of ``results`` (CliRunner results or (stdout, stderr) pairs) and every file
    the runs left in the project."""
    found: dict[str, bytes] = {}
    for i, result in enumerate(results):
        out, err = (result.stdout, result.stderr) if hasattr(result, "stdout") else result
        found[f"stdout of run {i}"] = out.encode("utf-8")
        found[f"stderr of run {i}"] = err.encode("utf-8")
    for path in sorted(project.root.rglob("*")):
        # secrets.key is 32 random bytes, not text: it could match a 4-byte needle by chance.
        if path.is_file() and path.name != "secrets.key":
            found[str(path.relative_to(project.root))] = path.read_bytes()
    return found


def assert_nowhere(found: dict[str, bytes], *values: str) -> None:
    for value in values:
        for needle in sorted(needles(value), key=len):
            encoded = needle.encode("utf-8")
            for where, data in found.items():
                at = data.find(encoded)
                context = data[max(0, at - 120) : at + len(encoded) + 40].decode("utf-8", "replace")
                assert at < 0, f"{where} holds {needle!r} (a form of a secret): ...{context}..."


@pytest.fixture
def echo(tmp_path: Path, opus_sandbox_factory: Any) -> tuple[Project, str, str]:
    """A project on a sandbox whose workflows echo their inputs back, with its own key and
    secret, and the CSV plugin installed."""
    key = new_key()
    project = make_project(tmp_path, lambda workflows: opus_sandbox_factory(workflows, key=key), ECHO_WORKFLOWS)
    secret = new_secret()
    project.env["MY_TOKEN"] = secret
    project.file("plugins/csv_output.py", CSV_PLUGIN.read_text(encoding="utf-8"))
    return project, secret, key


def echo_spec(project: Project, workflow: str = ECHO, extra: str = EVERY_OUTPUT, name: str = "s") -> Path:
    text = header(
        name,
        workflow,
        "inputs:\n"
        "  Question: \"uses {{ secret('MY_TOKEN') }}\"\n"
        "  Token: \"{{ secret('MY_TOKEN') }}\"\n" + extra,
    )
    # the title goes into the journal, the events and the reports
    text = text.replace(f"  name: {name}\n", f"  name: {name}\n  title: \"run {{{{ secret('MY_TOKEN') }}}}\"\n")
    return project.spec(f"{name}.yaml", text)


# -- a run whose workflow echoes the secret back ----------------------------------------------


def test_a_run_echoing_the_secret_leaks_it_nowhere(echo: tuple[Project, str, str]) -> None:
    project, secret, key = echo
    spec = echo_spec(project)
    results = []
    for args in (["run", "--verbose"], ["run", "--format", "json", "--verbose"], ["render", "--verbose"], ["validate", "--verbose"]):
        result = project.run(args[0], str(spec), *args[1:])
        assert result.exit_code == 0, result.output
        results.append(result)
    # the workflow did get the secret, and echoed it back
    received = [p["jobPayloadSchemaInstance"]["workflow_input_t"]["value"] for p in project.sandbox.state.payloads.values()]
    assert received == [secret, secret]
    found = channels(project, *results)
    assert any(name.startswith("out/") and name.endswith(".csv") for name in found)
    assert b"***" in found["out/all.ndjson"] and b"***" in found["out/junit.xml"]
    assert any(b"-> POST" in data for data in found.values())  # the --verbose trace is there
    assert_nowhere(found, secret, key)


# -- a resume with a rotated secret -------------------------------------------------------------


def _finish(proc: Any) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


def test_resume_refuses_a_rotated_secret_then_finishes_with_the_one_the_run_used(echo: tuple[Project, str, str]) -> None:
    project, secret, key = echo
    spec = echo_spec(project, SLOW_ECHO)
    # Child processes: each starts with an empty mask registry, as a CI job's resume does.
    code, *first = _finish(opus_run(project, "run", str(spec), "--timeout", "0.2s", "--verbose"))
    assert code == 1, first
    [row] = journal_jobs(project)
    assert row["phase"] == "executed" and row["status"] == "TIMED_OUT"
    # the journal keeps a keyed hash per secret, and the key beside it is its owner's only
    with sqlite3.connect(project.root / ".opus-run" / "state.db") as db:
        [(name, digest)] = db.execute("SELECT name, digest FROM secrets").fetchall()
    assert name == "MY_TOKEN" and len(digest) == 64
    key_file = project.root / ".opus-run" / "secrets.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600

    rotated = new_secret()
    project.env["MY_TOKEN"] = rotated
    code, *refused = _finish(opus_run(project, "resume", "--verbose"))
    assert code == 2, refused
    assert "MY_TOKEN has another value than the run used" in refused[1]
    assert journal_jobs(project)[0]["phase"] == "executed"  # nothing was followed or written
    del project.env["MY_TOKEN"]
    code, *unset = _finish(opus_run(project, "resume"))
    assert code == 2 and "MY_TOKEN is not set" in unset[1], unset

    project.env["MY_TOKEN"] = secret
    code, *resumed = _finish(opus_run(project, "resume", "--timeout", "30s", "--verbose"))
    assert code == 0, resumed
    [row] = journal_jobs(project)
    assert row["status"] == "COMPLETED" and "***" in row["result"]
    assert project.sandbox.state.executes and set(project.sandbox.state.executes.values()) == {1}
    assert_nowhere(channels(project, first, refused, unset, resumed), secret, rotated, key)


def test_a_journal_of_schema_2_is_migrated_and_its_runs_resume_without_a_secret_check(tmp_path: Path) -> None:
    from opus_runner import state

    folder = tmp_path / "old"
    old_journal(folder, version=2, up_to="secrets")
    with state.Journal(folder) as journal:
        assert journal.get_run("r1").run_id == "r1"
        assert journal.verify_secrets("r1", {}) == {}  # a run from before: nothing to check
        journal.record_secret("r1", "MY_TOKEN", "a-value")
        assert journal.verify_secrets("r1", {"MY_TOKEN": "a-value"}) == {"MY_TOKEN": "a-value"}
    raw = sqlite3.connect(folder / "state.db")
    try:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == state.SCHEMA_VERSION
    finally:
        raw.close()


def test_the_secret_hashes_are_keyed_per_journal(tmp_path: Path) -> None:
    from opus_runner.state import Journal

    digests = []
    for name in ("a", "b"):
        with Journal(tmp_path / name) as journal:
            journal.begin_run(argv=[], cwd="/", options={}, run_id="r1")
            journal.record_secret("r1", "MY_TOKEN", "hunter22")
        with sqlite3.connect(tmp_path / name / "state.db") as db:
            digests.append(db.execute("SELECT digest FROM secrets").fetchone()[0])
    # the same run id, name and value give other digests: nothing to look up without the key
    assert digests[0] != digests[1]
    (tmp_path / "a" / "secrets.key").unlink()
    with Journal(tmp_path / "a") as journal, pytest.raises(Exception, match=r"secrets\.key.*is missing"):
        journal.verify_secrets("r1", {"MY_TOKEN": "hunter22"})


# -- each failure path --------------------------------------------------------------------------


def test_a_failing_job_whose_error_quotes_the_secret_leaks_it_nowhere(echo: tuple[Project, str, str]) -> None:
    project, secret, key = echo
    spec = echo_spec(project, FAILING)
    results = [project.run("run", str(spec), *args) for args in (["--verbose"], ["--format", "json"])]
    for result in results:
        assert result.exit_code == 1, result.output
    assert b"***" in channels(project)["out/all.ndjson"]
    assert_nowhere(channels(project, *results), secret, key)


def test_a_refused_validation_leaks_the_secret_nowhere(echo: tuple[Project, str, str]) -> None:
    project, secret, key = echo
    # A number input given the secret: the message shows the value, cut at 60 characters.
    spec = project.spec(
        "v.yaml",
        header("v", ECHO, "inputs:\n  Question: ok\n  Token: ok\n  Count: \"{{ secret('MY_TOKEN') }}\"\n" + EVERY_OUTPUT),
    )
    results = [
        project.run(command, str(spec), *args)
        for command, args in (("run", ["--verbose"]), ("run", ["--format", "json"]), ("validate", ["--format", "json"]))
    ]
    for result in results:
        assert result.exit_code == 2, result.output
        assert "Count" in result.stderr
    events = [json.loads(line) for line in results[1].stdout.splitlines() if line.startswith("{")]
    assert events and events[-1]["event"] == "error" and events[-1]["problems"]
    assert_nowhere(channels(project, *results), secret, key)


def test_api_errors_quoting_the_secret_leak_it_nowhere(
    echo: tuple[Project, str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from opus_runner.api import client

    project, secret, key = echo
    fast = client.RetryPolicy(attempts=2, base=0.01, cap=0.02)
    monkeypatch.setattr(client, "RetryPolicy", lambda: fast)  # the CLI's default policy retries for seconds
    spec = echo_spec(project)
    # An execute refused with a message that quotes the request back (raw and JSON-escaped)...
    project.sandbox.faults.add(
        route="execute",
        kind="inner_error",
        inner_status=500,
        message="validation failed for " + "x" * 270 + f" {secret} {json.dumps(secret)}",
    )
    refused = [project.run("run", str(spec), *args) for args in (["--verbose"], ["--format", "json", "--verbose"])]
    for result in refused:
        assert result.exit_code != 0 and "validation failed for" in result.output, result.output
    # ...and a plain HTTP 500 that outlasts the retries.
    project.sandbox.faults.clear()
    project.sandbox.faults.add(route="workflow", kind="status", status=500)
    failed = [project.run("run", str(spec), *args) for args in (["--verbose"], ["--format", "json", "--verbose"])]
    for result in failed:
        assert result.exit_code == 3 and "HTTP 500" in result.stderr, result.output
    assert_nowhere(channels(project, *refused, *failed), secret, key)


def test_a_server_message_is_masked_before_it_is_cut() -> None:
    import httpx

    from opus_runner import redact
    from opus_runner.api import server_message

    secret = new_secret()
    redact.register(secret)
    for padding in range(280, 300):  # every cut through the secret
        response = httpx.Response(422, json={"message": "x" * padding + secret})
        shown = server_message(response)
        assert len(shown) <= 300
        found = {"message": shown.encode("utf-8")}
        assert_nowhere(found, secret)


def test_a_network_error_leaks_neither_the_secret_nor_the_base_url_password(
    echo: tuple[Project, str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    from opus_runner.api import client

    project, secret, key = echo
    fast = client.RetryPolicy(attempts=2, base=0.01, cap=0.02)
    monkeypatch.setattr(client, "RetryPolicy", lambda: fast)  # the CLI's default policy retries for seconds
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    password = f"pw{_tag(12)}/+&= {SPECIAL}"
    short = "pw"  # too short to register: the user info is dropped from shown URLs anyway
    spec = echo_spec(project)
    results = []
    for pw in (password, short):
        base_url = f"http://user:{quote(pw, safe='')}@127.0.0.1:{port}"
        for args in (["--verbose"], ["--format", "json", "--verbose"]):
            result = project.run("run", str(spec), "--base-url", base_url, *args)
            assert result.exit_code == 3, result.output
            assert "could not reach http://127.0.0.1" in result.stderr
            results.append(result)
    json_errors = [json.loads(line) for line in results[1].stdout.splitlines() if line.startswith("{")]
    assert json_errors[-1]["event"] == "error"
    found = channels(project, *results)
    assert_nowhere(found, secret, key, password)
    assert not any(b"user:pw@" in data for data in found.values())


# -- the service key is never templated ----------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [["render", "--offline"], ["validate", "--offline"], ["validate", "--locked"], ["render", "--locked"], ["render"]],
)
def test_the_service_key_cannot_be_read_through_env(echo: tuple[Project, str, str], args: list[str]) -> None:
    project, secret, key = echo
    if "--locked" in args:  # locked from the spec as it was before the key template came in
        plain = project.spec("k.yaml", header("k", ECHO, "inputs:\n  Question: q\n  Token: t\n"))
        assert project.run("lock", str(plain)).exit_code == 0
    spec = project.spec("k.yaml", header("k", ECHO, "inputs:\n  Question: \"key {{ env.OPUS_SERVICE_KEY }}\"\n  Token: t\n"))
    result = project.run(args[0], str(spec), *args[1:], "--format", "json")
    assert result.exit_code == 2, result.output
    assert "OPUS_SERVICE_KEY is the Opus service key, which is never templated" in result.stderr
    assert "secret('NAME')" in result.stderr
    assert_nowhere(channels(project, result), key)


def test_secret_of_the_service_key_is_refused(echo: tuple[Project, str, str]) -> None:
    project, _secret, key = echo
    spec = project.spec("k.yaml", header("k", ECHO, "inputs:\n  Question: q\n  Token: \"{{ secret('OPUS_SERVICE_KEY') }}\"\n"))
    result = project.run("render", str(spec))
    assert result.exit_code == 2
    assert "never templated" in result.stderr
    assert_nowhere(channels(project, result), key)


# -- the minimum length ---------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "said"), [("abc", "has only 3 characters"), ("", "is empty")])
def test_a_secret_too_short_to_mask_is_an_error_naming_the_variable(
    echo: tuple[Project, str, str], value: str, said: str
) -> None:
    project, _secret, _key = echo
    spec = project.spec("t.yaml", header("t", ECHO, "inputs:\n  Question: q\n  Token: \"{{ secret('TINY') }}\"\n"))
    for command in ("run", "render", "validate"):
        result = project.run(command, str(spec), "--format", "json", env={"TINY": value})
        assert result.exit_code == 2, result.output
        assert f"the environment variable TINY {said}; a secret needs at least 4 characters" in result.stderr
        [event] = [json.loads(line) for line in result.stdout.splitlines()]
        assert event["event"] == "error" and "TINY" in event["message"]


def test_a_secret_named_null_keeps_json_events_valid(echo: tuple[Project, str, str]) -> None:
    project, _secret, _key = echo
    spec = project.spec("n.yaml", header("n", ECHO, "inputs:\n  Question: q\n  Token: \"{{ secret('LITERAL') }}\"\n"))
    for command in ("run", "render"):
        result = project.run(command, str(spec), "--format", "json", env={"LITERAL": "null"})
        assert result.exit_code == 0, result.output
        events = [json.loads(line) for line in result.stdout.splitlines()]  # every line parses
        assert any(e.get("event") in ("completed", "rendered") for e in events)
    # the JSON literal null (Count is not given) is still null, the secret is masked
    [payload] = [e["payload"] for e in events if e["event"] == "rendered"]
    assert payload["workflow_input_n"]["value"] is None and payload["workflow_input_t"]["value"] == "***"


def test_a_traced_body_is_masked_before_it_is_cut() -> None:
    from opus_runner import redact
    from opus_runner.api.transport import TRACE_BODY_LIMIT, trace_body

    secret = new_secret()
    redact.register(secret)
    for padding in range(TRACE_BODY_LIMIT - 40, TRACE_BODY_LIMIT - 12):  # cuts through the secret
        body = json.dumps({"value": "x" * padding + secret})  # as traced: \u-escaped JSON
        assert_nowhere({"trace": trace_body(body).encode("utf-8")}, secret)


def test_every_form_is_masked_and_url_user_info_is_dropped() -> None:
    from opus_runner import redact

    secret = new_secret()
    redact.register(secret)
    for form in forms(secret) - {html.escape(secret), secret.replace('"', '""')}:
        assert redact.mask(f"<{form}>") == "<***>", form
    assert redact.mask(json.dumps(json.dumps(secret))) == '"\\"***\\""'  # JSON text in a JSON string
    assert redact.without_userinfo("see https://u:p@ss@host:8/a@b?c=d@e and http://u@h/") == (
        "see https://host:8/a@b?c=d@e and http://h/"
    )
    password = f"pw{_tag(10)}+/"
    redact.register_url_credentials(f"https://user:{quote(password, safe='')}@example.com")
    assert redact.mask(password) == redact.MASK


def test_a_base_url_password_is_not_journaled_and_resume_asks_for_the_url_again(echo: tuple[Project, str, str]) -> None:
    project, secret, key = echo
    password = f"pw{_tag(12)}"
    host = project.sandbox.base_url.split("://", 1)[1]
    base_url = f"http://user:{password}@{host}"
    spec = echo_spec(project, SLOW_ECHO, extra="outputs: [{type: ndjson, path: out/all.ndjson}]\n")
    first = project.run("run", str(spec), "--base-url", base_url, "--timeout", "0.2s", "--format", "json")
    assert first.exit_code == 1, first.output
    refused = project.run("resume")
    assert refused.exit_code == 2
    assert f"ran against http://{host} with a password in the URL" in refused.stderr
    assert "--base-url" in refused.stderr
    resumed = project.run("resume", "--base-url", base_url, "--timeout", "30s")
    assert resumed.exit_code == 0, resumed.output
    assert_nowhere(channels(project, first, refused, resumed), secret, key, password)
