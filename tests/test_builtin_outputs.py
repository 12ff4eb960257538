"""Built-in outputs (stdout, json, ndjson, download), notifiers (webhook, log) and opus_runner.files."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

import opus_runner.builtins
from opus_runner import files, redact
from opus_runner.builtins import display_url, is_loopback_host
from opus_runner.builtins.outputs import file_urls, safe_file_name, summary
from opus_runner.errors import DeliveryFailed
from opus_runner.models import Context, JobEvent, JobResult
from opus_runner.plugins import PluginHost, call_handler, make_plugin_host
from conftest import make_ctx, make_result

KEY = "sk-test-key-0123456789abcdef"


@pytest.fixture
def host(monkeypatch: pytest.MonkeyPatch) -> PluginHost:
    monkeypatch.setattr(
        opus_runner.builtins, "BUILTIN_PLUGINS", ("opus_runner.builtins.outputs", "opus_runner.builtins.notifiers")
    )
    return make_plugin_host(entrypoints=False)




def run_output(host: PluginHost, name: str, result: JobResult, config: dict[str, Any], ctx: Context) -> Any:
    return asyncio.run(call_handler(host.outputs[name], result, {"type": name, **config}, ctx))


# -- a loopback HTTP receiver -----------------------------------------------------------------


class Receiver:
    """A tiny HTTP server on 127.0.0.1 that records requests and serves canned answers."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.routes: dict[str, tuple[int, bytes]] = {}
        self.truncated: set[str] = set()  # paths whose body is cut short (connection dropped)
        self.status = 200
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                receiver.requests.append(
                    {"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body}
                )
                path = self.path.split("?")[0]
                status, payload = receiver.routes.get(path, (receiver.status, b"ok"))
                self.send_response(status)
                cut = path in receiver.truncated
                self.send_header("content-length", str(len(payload) * (10 if cut else 1)))
                self.end_headers()
                self.wfile.write(payload)
                if cut:
                    self.close_connection = True

            do_GET = do_POST = _answer

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        # A short poll interval keeps shutdown (and so every test using this) fast.
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as server:
        yield server


def keyed_client() -> httpx.AsyncClient:
    """A client like the run's: the service key is a default header."""
    return httpx.AsyncClient(headers={"x-service-key": KEY}, timeout=5)


# -- files ------------------------------------------------------------------------------------


def test_atomic_write_creates_parents_and_replaces_whole(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "out.json"
    files.atomic_write_text(target, "first")
    assert target.read_text() == "first"
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~_umask()
    os.chmod(target, 0o600)
    files.atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600  # an existing file keeps its mode
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.json"]


def _umask() -> int:
    current = os.umask(0o022)
    os.umask(current)
    return current


def test_a_failed_atomic_write_leaves_the_old_content_and_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "result.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), files.open_atomic(target) as handle:
        handle.write(b"half of the new")
        raise RuntimeError("crash in the middle")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_append_line_refuses_embedded_newlines(tmp_path: Path) -> None:
    files.append_line(tmp_path / "x.ndjson", "one\n")
    files.append_line(tmp_path / "x.ndjson", b"two")
    assert (tmp_path / "x.ndjson").read_text() == "one\ntwo\n"
    with pytest.raises(ValueError, match="contains a newline"):
        files.append_line(tmp_path / "x.ndjson", "a\nb")


def test_locked_append_lets_one_writer_write_the_header(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"

    def add(n: int) -> None:
        with files.locked_append(path) as handle:
            data = b"" if handle.size else b"header\n"
            handle.write(data + f"row {n}\n".encode())

    threads = [threading.Thread(target=add, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = path.read_text().splitlines()
    assert lines[0] == "header"
    assert sorted(lines[1:]) == sorted(f"row {n}" for n in range(16))


# -- stdout -----------------------------------------------------------------------------------


def test_stdout_prints_a_readable_summary(host: PluginHost, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = make_result(
        outputs={
            "summary": "line one\nline two",
            "data": {"a": [1, 2]},
            "long": "x" * 600,
        }
    )
    run_output(host, "stdout", result, {}, make_ctx(tmp_path))
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "invoice-triage[region=eu]: job job-123 COMPLETED"
    assert "  - summary:\n    line one\n    line two\n" in out
    assert '  - data: {"a":[1,2]}\n' in out
    assert "x" * 500 + "… (100 more characters; set full: true to see all)" in out

    run_output(host, "stdout", result, {"full": True}, make_ctx(tmp_path))
    assert "x" * 600 + "\n" in capsys.readouterr().out


def test_stdout_shows_errors_and_masks_secrets(
    host: PluginHost, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = "hunter2-secret-value"
    redact.register(secret)
    result = make_result(status="FAILED", outputs={"echo": f"the key is {secret}"}, error="node 3 failed", plan_key="")
    run_output(host, "stdout", result, {}, make_ctx(tmp_path))
    out = capsys.readouterr().out
    assert out.startswith("invoice-triage: job job-123 FAILED\n  error: node 3 failed\n")
    assert "the key is ***" in out
    assert secret not in out


def test_stdout_is_silent_for_json_format_and_prints_under_quiet(
    host: PluginHost, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_output(host, "stdout", make_result(), {}, make_ctx(tmp_path, output_format="json"))
    assert capsys.readouterr().out == ""
    # --quiet keeps errors and results: this output prints results.
    run_output(host, "stdout", make_result(), {}, make_ctx(tmp_path, quiet=True))
    assert "outputs:" in capsys.readouterr().out


def test_summary_of_a_completed_job_without_outputs() -> None:
    assert summary(make_result(outputs={}, plan_key="invoice-triage")) == (
        "invoice-triage: job job-123 COMPLETED\n  (no outputs)"
    )


# -- json / ndjson ----------------------------------------------------------------------------


def test_json_writes_the_result_relative_to_the_spec(host: PluginHost, tmp_path: Path) -> None:
    written = run_output(host, "json", make_result(), {"path": "results/job.json"}, make_ctx(tmp_path))
    assert written == tmp_path / "results" / "job.json"
    text = written.read_text()
    assert text.startswith('{\n  "job_id": "job-123"')  # indent 2 by default
    assert json.loads(text) == make_result().as_dict()
    compact = run_output(
        host, "json", make_result(), {"path": str(tmp_path / "c.json"), "indent": None}, make_ctx(tmp_path)
    )
    assert "\n" not in compact.read_text().strip()


def test_json_output_never_writes_a_secret(host: PluginHost, tmp_path: Path) -> None:
    secret = "another-secret-for-json"
    redact.register(secret)
    written = run_output(host, "json", make_result(outputs={"echo": secret}), {"path": "r.json"}, make_ctx(tmp_path))
    assert secret not in written.read_text()
    assert json.loads(written.read_text())["outputs"] == {"echo": "***"}


def test_ndjson_appends_one_line_per_job(host: PluginHost, tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    for n in range(3):
        run_output(host, "ndjson", make_result(job_id=f"job-{n}"), {"path": "all.ndjson"}, ctx)
    lines = (tmp_path / "all.ndjson").read_text().splitlines()
    assert [json.loads(line)["job_id"] for line in lines] == ["job-0", "job-1", "job-2"]


def test_ndjson_concurrent_appends_never_interleave(host: PluginHost, tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    handler = host.outputs["ndjson"].func
    config = {"type": "ndjson", "path": "busy.ndjson"}
    # Lines larger than a pipe buffer and many writers make any interleaving show.
    big = "y" * 70_000

    def writer(w: int) -> None:
        for n in range(15):
            handler(make_result(job_id=f"w{w}-n{n}", outputs={"blob": big + str(w)}), config, ctx)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = (tmp_path / "busy.ndjson").read_bytes().split(b"\n")
    assert lines[-1] == b""
    records = [json.loads(line) for line in lines[:-1]]
    assert sorted(r["job_id"] for r in records) == sorted(f"w{w}-n{n}" for w in range(8) for n in range(15))
    assert all(r["outputs"]["blob"] == big + r["job_id"][1] for r in records)


# -- download ---------------------------------------------------------------------------------


def test_safe_file_names_cannot_escape_the_folder() -> None:
    assert safe_file_name("https://x/files/report.pdf?sig=1") == "report.pdf"
    assert safe_file_name("https://x/a/..%2F..%2Fetc%2Fpasswd") == "passwd"
    assert safe_file_name("https://x/a/%2e%2e") == "download"
    assert safe_file_name("https://x/a/..%5C..%5Cwin.ini") == "win.ini"
    assert safe_file_name("https://x/a/.hidden") == "hidden"
    assert safe_file_name("https://x/a/r%C3%A9sum%C3%A9 final.pdf") == "r_sum_final.pdf"
    assert safe_file_name("https://x/", fallback="out_file") == "out_file"
    assert len(safe_file_name("https://x/" + "a" * 400 + ".pdf")) == 150


def test_file_urls_reads_both_result_shapes() -> None:
    current = make_result(
        raw={
            "jobResultsPayloadSchema": {
                "out_report": {"type": "file", "value": "https://f/report.pdf", "displayName": "Report"},
                "out_many": {"type": "array_files", "value": ["https://f/a.csv", "https://f/b.csv"]},
                "out_text": {"type": "str", "value": "https://not-a-file/x"},
                "out_local": {"type": "file", "value": "not a url"},
            }
        }
    )
    assert file_urls(current) == [
        ("out_report", "https://f/report.pdf"),
        ("out_many", "https://f/a.csv"),
        ("out_many", "https://f/b.csv"),
    ]
    assert file_urls(current, ["Report"]) == [("out_report", "https://f/report.pdf")]
    legacy = make_result(raw={"results": {"summary": "s", "outputFiles": ["https://f/x.pdf", 3]}})
    assert file_urls(legacy) == [("outputFiles", "https://f/x.pdf")]
    assert file_urls(legacy, ["other"]) == []


def test_download_saves_file_outputs_safely_without_the_service_key(
    host: PluginHost, tmp_path: Path, receiver: Receiver
) -> None:
    # Without a run's client there is no service host: the receiver is listed in allow_hosts.
    receiver.routes = {
        "/files/report.pdf": (200, b"%PDF-1.7 report"),
        "/other/report.pdf": (200, b"%PDF-1.7 second report"),
        "/a/..%2F..%2Fescape.txt": (200, b"trying to escape"),
        "/a/data.csv": (200, b"a,b\n1,2\n"),
    }
    u = receiver.url
    result = make_result(
        raw={
            "jobResultsPayloadSchema": {
                "out_report": {"type": "file", "value": f"{u}/files/report.pdf?X-Amz-Signature=abc"},
                "out_dupe": {"type": "file", "value": f"{u}/other/report.pdf"},
                "out_evil": {"type": "file", "value": f"{u}/a/..%2F..%2Fescape.txt"},
                "out_csv": {"type": "array_files", "value": [f"{u}/a/data.csv"]},
            }
        }
    )

    async def go() -> list[Path]:
        async with keyed_client() as client:
            ctx = make_ctx(tmp_path, http=client)
            return await call_handler(host.outputs["download"], result, {"type": "download", "dir": "dl", "allow_hosts": ["127.0.0.1"]}, ctx)

    written = asyncio.run(go())
    folder = tmp_path / "dl"
    assert sorted(p.name for p in folder.iterdir()) == ["data.csv", "escape.txt", "report-2.pdf", "report.pdf"]
    assert written == [folder / "report.pdf", folder / "report-2.pdf", folder / "escape.txt", folder / "data.csv"]
    assert (folder / "report.pdf").read_bytes() == b"%PDF-1.7 report"
    assert (folder / "report-2.pdf").read_bytes() == b"%PDF-1.7 second report"
    assert (folder / "escape.txt").read_bytes() == b"trying to escape"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dl"]  # nothing landed outside
    assert len(receiver.requests) == 4
    assert all("x-service-key" not in {k.lower() for k in r["headers"]} for r in receiver.requests)


def test_download_failure_leaves_no_partial_file_and_hides_the_query(
    host: PluginHost, tmp_path: Path, receiver: Receiver
) -> None:
    receiver.routes = {"/gone.pdf": (404, b"missing")}
    result = make_result(raw={"results": {"outputFiles": [f"{receiver.url}/gone.pdf?X-Amz-Signature=topsecret"]}})

    async def go() -> None:
        async with keyed_client() as client:
            await call_handler(
                host.outputs["download"], result, {"type": "download", "dir": "dl", "allow_hosts": ["127.0.0.1"]}, make_ctx(tmp_path, http=client)
            )

    with pytest.raises(RuntimeError) as info:
        asyncio.run(go())
    assert str(info.value) == (
        f"could not download output 'outputFiles' (gone.pdf) of job job-123: {receiver.url}/gone.pdf answered HTTP 404"
    )
    assert not (tmp_path / "dl").exists()


def test_a_download_cut_short_leaves_no_file(host: PluginHost, tmp_path: Path, receiver: Receiver) -> None:
    receiver.routes = {"/big.pdf": (200, b"%PDF" * 50_000)}
    receiver.truncated = {"/big.pdf"}
    (tmp_path / "dl").mkdir()
    (tmp_path / "dl" / "big.pdf").write_bytes(b"previous run")
    result = make_result(raw={"results": {"outputFiles": [f"{receiver.url}/big.pdf"]}})
    with pytest.raises(RuntimeError, match=r"could not download output 'outputFiles' \(big.pdf\) of job job-123: RemoteProtocolError"):
        run_output(host, "download", result, {"dir": "dl", "allow_hosts": ["127.0.0.1"]}, make_ctx(tmp_path))
    assert [p.name for p in (tmp_path / "dl").iterdir()] == ["big.pdf"]
    assert (tmp_path / "dl" / "big.pdf").read_bytes() == b"previous run"


def test_download_with_only_selected_outputs_and_no_run_client(
    host: PluginHost, tmp_path: Path, receiver: Receiver
) -> None:
    receiver.routes = {"/keep.txt": (200, b"keep"), "/skip.txt": (200, b"skip")}
    result = make_result(
        raw={
            "jobResultsPayloadSchema": {
                "out_keep": {"type": "file", "value": f"{receiver.url}/keep.txt", "displayName": "Keep"},
                "out_skip": {"type": "file", "value": f"{receiver.url}/skip.txt"},
            }
        }
    )
    written = run_output(
        host, "download", result, {"dir": str(tmp_path / "only"), "outputs": ["Keep"], "allow_hosts": ["127.0.0.1"]}, make_ctx(tmp_path)
    )
    assert [p.name for p in written] == ["keep.txt"]
    assert [r["path"] for r in receiver.requests] == ["/keep.txt"]
    with pytest.raises(ValueError) as info:
        run_output(host, "download", result, {"dir": "x", "outputs": ["Keep", "kep"]}, make_ctx(tmp_path))
    assert str(info.value) == (
        "download: job job-123 has no file output named 'kep'; its file outputs are: Keep, out_keep, out_skip"
    )


# -- notifiers --------------------------------------------------------------------------------


def make_event(**kw: Any) -> JobEvent:
    base: dict[str, Any] = dict(
        kind="completed",
        job_id="job-123",
        spec_name="invoice-triage",
        status="COMPLETED",
        plan_key="invoice-triage[region=eu]",
        result=make_result(),
        time="2026-11-30T10:00:00Z",
    )
    base.update(kw)
    return JobEvent(**base)


def notify(host: PluginHost, name: str, event: JobEvent, config: dict[str, Any], ctx: Context) -> Any:
    return asyncio.run(call_handler(host.notifiers[name], event, {"type": name, **config}, ctx, timeout=10))


def test_webhook_posts_the_event_without_the_service_key(host: PluginHost, tmp_path: Path, receiver: Receiver) -> None:
    event = make_event()

    async def go() -> None:
        async with keyed_client() as client:
            config = {"type": "webhook", "url": f"{receiver.url}/hook", "headers": {"X-Token": "abc"}}
            await call_handler(host.notifiers["webhook"], event, config, make_ctx(tmp_path, http=client))

    asyncio.run(go())
    [request] = receiver.requests
    assert (request["method"], request["path"]) == ("POST", "/hook")
    headers = {k.lower(): v for k, v in request["headers"].items()}
    assert "x-service-key" not in headers
    assert headers["x-token"] == "abc"
    assert headers["content-type"] == "application/json"
    assert json.loads(request["body"]) == event.as_dict()
    assert len(headers["idempotency-key"]) == 32


def test_webhook_idempotency_key_is_stable_per_event_and_receiver(host: PluginHost, tmp_path: Path, receiver: Receiver) -> None:
    url = f"{receiver.url}/hook"
    for event in (make_event(), make_event(), make_event(kind="failed", status="FAILED"), make_event(job_id="job-9")):
        notify(host, "webhook", event, {"url": url}, make_ctx(tmp_path))
    keys = [{k.lower(): v for k, v in r["headers"].items()}["idempotency-key"] for r in receiver.requests]
    assert keys[0] == keys[1]  # the same event sent again (a resume): the receiver can drop it
    assert len({keys[0], keys[2], keys[3]}) == 3


def test_webhook_reports_a_non_2xx_answer_with_the_status(host: PluginHost, tmp_path: Path, receiver: Receiver) -> None:
    receiver.status = 503
    with pytest.raises(DeliveryFailed) as info:
        notify(host, "webhook", make_event(), {"url": f"{receiver.url}/secret-path-token"}, make_ctx(tmp_path))
    assert str(info.value) == f"webhook {receiver.url}/… answered HTTP 503: ok"
    assert "secret-path-token" not in str(info.value)
    assert info.value.job_id == "job-123"


def test_webhook_reports_an_unreachable_receiver(host: PluginHost, tmp_path: Path) -> None:
    with Receiver() as gone:
        url = gone.url
    with pytest.raises(DeliveryFailed, match=r"webhook http://127\.0\.0\.1:\d+ could not be reached: ConnectError"):
        notify(host, "webhook", make_event(), {"url": url}, make_ctx(tmp_path))


@pytest.mark.parametrize("url", ["http://hooks.example.com/T000", "ftp://127.0.0.1/x", "not a url"])
def test_webhook_refuses_plain_http_to_other_hosts_before_sending(host: PluginHost, tmp_path: Path, url: str) -> None:
    with pytest.raises(
        ValueError, match=r"webhook url must be an https:// URL \(plain http is allowed only to localhost\)"
    ):
        notify(host, "webhook", make_event(), {"url": url}, make_ctx(tmp_path))


def test_loopback_detection_and_url_display() -> None:
    assert all(is_loopback_host(h) for h in ("localhost", "127.0.0.1", "127.3.2.1", "::1", "[::1]"))
    assert not any(is_loopback_host(h) for h in ("example.com", "10.0.0.1", "", None, "localhost.example.com"))
    url = "https://user:pw@hooks.example.com:8443/services/T/B/XYZ?token=abc"
    assert display_url(url) == "https://hooks.example.com:8443/services/T/B/XYZ"
    assert display_url(url, path=False) == "https://hooks.example.com:8443/…"


def test_log_notifier_writes_one_line(host: PluginHost, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ctx = make_ctx(tmp_path)
    with caplog.at_level(logging.DEBUG, logger="t.out"):
        event = make_event(kind="timed_out", status="IN_PROGRESS", error="no result after 30m")
        notify(host, "log", event, {"level": "warning"}, ctx)
        notify(host, "log", make_event(), {}, ctx)
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        (
            "WARNING",
            "invoice-triage [invoice-triage[region=eu]] job job-123 timed_out (IN_PROGRESS): no result after 30m",
        ),
        ("INFO", "invoice-triage [invoice-triage[region=eu]] job job-123 completed"),
    ]


def test_builtin_schemas_accept_the_documented_examples(host: PluginHost) -> None:
    outputs = [
        {"type": "stdout"},
        {"type": "stdout", "full": True},
        {"type": "json", "path": "results/x.json", "indent": 2},
        {"type": "ndjson", "path": "results/all.ndjson"},
        {"type": "download", "dir": "downloads/", "outputs": ["report"]},
    ]
    notify_entries = [
        {
            "type": "webhook",
            "url": "https://hooks.example.com/T000",
            "on": ["completed", "failed"],
            "headers": {"A": "b"},
        },
        {"type": "webhook", "url": "http://127.0.0.1:8080/hook"},
        {"type": "log", "level": "info", "on": ["submitted"]},
    ]
    assert host.check_config("outputs", outputs, file="s.yaml", key="outputs") == []
    assert host.check_config("notify", notify_entries, file="s.yaml", key="notify") == []
