"""Every path a spec reads or writes stays inside the project root, whatever the spec, the
checkout or the server says (issue 12): file inputs, foreach data, --vars-file, output files and
download folders; symlinks are followed before the check; --allow-outside-root lifts it.
Values from the server (job ids, output values) cannot lead a path out either.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import WF, WORKFLOWS, Project, header, make_project

PDF = b"%PDF-1.4 test\n"
REPO = Path(__file__).resolve().parent.parent
QUICK = header("quick", "quick") + "inputs:\n  Question: q\n"


def outside(tmp_path: Path) -> Path:
    """A folder beside the project, standing for anything outside it (the rest of the disk)."""
    folder = tmp_path / "OUTSIDE"
    folder.mkdir(exist_ok=True)
    return folder


def nothing_written_outside(tmp_path: Path) -> bool:
    return not (tmp_path / "OUTSIDE").exists() or not any((tmp_path / "OUTSIDE").rglob("*"))


# -- a hostile Opus server: the sandbox behind a proxy that rewrites its answers ---------------


class HostileProxy:
    """Forwards every request to ``upstream`` (the sandbox) over real HTTP and hands each JSON
    answer to ``rewrite(method, path, data)`` first: the sandbox stays the honest model of the
    service, the proxy is the server that lies."""

    def __init__(self, upstream: str, rewrite: Callable[[str, str, Any], Any]) -> None:
        self.upstream = upstream
        self.rewrite = rewrite
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.port = 0

    def _app(self) -> Any:
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import JSONResponse, Response
        from starlette.routing import Route

        async def forward(request: Request) -> Response:
            headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
            async with httpx.AsyncClient(base_url=self.upstream, timeout=10) as client:
                answer = await client.request(
                    request.method,
                    request.url.path,
                    params=list(request.query_params.multi_items()),
                    content=await request.body(),
                    headers=headers,
                )
            if answer.headers.get("content-type", "").startswith("application/json"):
                data = self.rewrite(request.method, request.url.path, answer.json())
                return JSONResponse(data, status_code=answer.status_code)
            return Response(answer.content, status_code=answer.status_code, media_type=answer.headers.get("content-type"))

        methods = ["GET", "POST", "PUT", "DELETE", "PATCH"]
        return Starlette(routes=[Route("/{path:path}", forward, methods=methods)])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> HostileProxy:
        import uvicorn

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self._app(), log_config=None, log_level="warning", access_log=False, lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            assert self._thread.is_alive() and time.monotonic() < deadline, "the hostile proxy did not start"
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)


@pytest.fixture
def hostile() -> Iterator[Callable[..., HostileProxy]]:
    """``hostile(upstream, rewrite)``: a started :class:`HostileProxy`, stopped after the test."""
    proxies: list[HostileProxy] = []

    def start(upstream: str, rewrite: Callable[[str, str, Any], Any]) -> HostileProxy:
        proxies.append(HostileProxy(upstream, rewrite).start())
        return proxies[-1]

    yield start
    for proxy in proxies:
        proxy.stop()


# -- file inputs ------------------------------------------------------------------------------


ALL_TYPES = header("inputs", "all-types") + "inputs:\n  Title: t\n  Budget: 1\n  Approved: true\n  Due date: 2026-01-01\n"


def test_a_file_input_outside_the_project_is_refused_naming_the_input(project: Project, tmp_path: Path) -> None:
    (outside(tmp_path) / "secret.pdf").write_bytes(PDF)
    spec = project.spec("in.yaml", ALL_TYPES + "  Contract: ../OUTSIDE/secret.pdf\n")
    result = project.run("run", spec)
    assert result.exit_code == 2, result.output
    assert "in.yaml" in result.stderr and "inputs.Contract" in result.stderr
    assert "outside the project root" in result.stderr and "--allow-outside-root" in result.stderr
    assert project.sandbox.state.count("POST", "upload") == 0
    assert project.run("run", spec, "--allow-outside-root").exit_code == 0


# -- foreach data -----------------------------------------------------------------------------

ROWS_OUTSIDE = "customer,secret\nacme,PRIVATE-ROW-CONTENT-4711\n"


def foreach_spec(project: Project, source: str) -> Path:
    return project.spec(
        "each.yaml",
        header("each", "quick") + f"foreach:\n  file: {source}\n  key: customer\ninputs:\n  Question: '{{{{ row.customer }}}}'\n",
    )


def test_foreach_data_outside_the_project_is_refused_and_never_quoted(project: Project, tmp_path: Path) -> None:
    (outside(tmp_path) / "rows.csv").write_text(ROWS_OUTSIDE)
    spec = foreach_spec(project, "../OUTSIDE/rows.csv")
    for command in (["validate", "--offline"], ["render", "--offline"], ["run"]):
        result = project.run(*command, spec)
        assert result.exit_code == 2, (command, result.output)
        assert "each.yaml:2: foreach.file:" in result.stderr or "each.yaml" in result.stderr
        assert "foreach.file" in result.stderr and "outside the project root" in result.stderr
        assert "PRIVATE-ROW-CONTENT" not in result.output
    assert project.sandbox.state.count("POST", "initiate") == 0
    allowed = project.run("render", "--offline", "--allow-outside-root", spec)
    assert allowed.exit_code == 0, allowed.output


def test_validate_locked_on_a_pull_request_reading_foreach_data_outside(project: Project, tmp_path: Path) -> None:
    """The documented fork-PR check (docs/ci.md): no key, a committed lock, a hostile spec."""
    (outside(tmp_path) / "rows.yaml").write_text("- customer: acme\n  secret: PRIVATE-ROW-CONTENT-4711\n\t- broken: [\n")
    (project.root / "data").mkdir()
    (project.root / "data" / "ok.csv").write_text("customer\nacme\n")
    spec = foreach_spec(project, "data/ok.csv")
    assert project.run("lock", spec).exit_code == 0
    spec = foreach_spec(project, "../OUTSIDE/rows.yaml")
    result = project.run("validate", "--locked", spec, env={"OPUS_SERVICE_KEY": ""})
    assert result.exit_code == 2, result.output
    assert "foreach.file" in result.stderr and "outside the project root" in result.stderr
    assert "PRIVATE-ROW-CONTENT" not in result.output and "broken" not in result.output


def test_a_symlink_inside_the_project_does_not_lead_foreach_out(project: Project, tmp_path: Path) -> None:
    (outside(tmp_path) / "rows.csv").write_text(ROWS_OUTSIDE)
    (project.root / "data").mkdir()
    os.symlink(tmp_path / "OUTSIDE", project.root / "data" / "linked")
    spec = foreach_spec(project, "data/linked/rows.csv")
    result = project.run("validate", "--offline", spec)
    assert result.exit_code == 2, result.output
    assert "through a symlink" in result.stderr and "foreach.file" in result.stderr
    assert "PRIVATE-ROW-CONTENT" not in result.output


def test_errors_about_rows_name_row_and_column_not_the_data(project: Project) -> None:
    project.file("data/rows.csv", "customer,secret\nacme,ROW-VALUE-ONE\nacme,ROW-VALUE-TWO\n")
    result = project.run("validate", "--offline", foreach_spec(project, "data/rows.csv"))
    assert result.exit_code == 2
    assert "rows 1 and 2 of data/rows.csv have the same value in the key column 'customer'" in result.stderr
    project.file("data/bad.yaml", "- customer: acme\n  note: ROW-VALUE-ONE\n\t- x\n")
    result = project.run("validate", "--offline", foreach_spec(project, "data/bad.yaml"))
    assert result.exit_code == 2 and "not valid YAML at line 3, column 1" in result.stderr
    assert "ROW-VALUE" not in result.output


# -- --vars-file ------------------------------------------------------------------------------


def test_a_vars_file_outside_the_project_is_refused(project: Project, tmp_path: Path) -> None:
    (outside(tmp_path) / "vars.yaml").write_text("who: PRIVATE-VAR-4711\n")
    spec = project.spec("v.yaml", header("v", "quick") + "inputs:\n  Question: '{{ vars.who }}'\n")
    result = project.run("render", "--offline", spec, "--vars-file", "../OUTSIDE/vars.yaml")
    assert result.exit_code == 2, result.output
    assert "--vars-file ../OUTSIDE/vars.yaml:" in result.stderr and "outside the project root" in result.stderr
    assert "PRIVATE-VAR" not in result.output
    allowed = project.run("render", "--offline", spec, "--vars-file", "../OUTSIDE/vars.yaml", "--allow-outside-root")
    assert allowed.exit_code == 0 and "PRIVATE-VAR-4711" in allowed.stdout


# -- output paths -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "key"),
    [
        ("{type: json, path: ../OUTSIDE/result.json}", "outputs[0].path"),
        ("{type: json, path: '{OUT}/result.json'}", "outputs[0].path"),  # absolute, outside
        ("{type: ndjson, path: ../OUTSIDE/all.ndjson}", "outputs[0].path"),
        ("{type: junit, path: ../OUTSIDE/junit.xml}", "outputs[0].path"),
        ("{type: csv, path: ../OUTSIDE/rows.csv}", "outputs[0].path"),
        ("{type: download, dir: ../OUTSIDE/files}", "outputs[0].dir"),
    ],
)
def test_outputs_outside_the_project_are_refused_before_anything_is_sent(
    project: Project, tmp_path: Path, entry: str, key: str
) -> None:
    out = outside(tmp_path)
    spec = project.spec("o.yaml", QUICK + "outputs:\n  - " + entry.replace("{OUT}", str(out)) + "\n")
    csv_plugin = str(REPO / "plugins" / "csv_output.py")
    result = project.run("run", spec, "--plugin", csv_plugin)
    assert result.exit_code == 2, result.output
    assert project.sandbox.state.count("POST", "initiate") == 0
    assert f"o.yaml:{spec.read_text().splitlines().index('outputs:') + 2}: {key}:" in result.stderr
    assert "outside the project root" in result.stderr and "--allow-outside-root" in result.stderr
    assert nothing_written_outside(tmp_path)
    allowed = project.run("run", spec, "--plugin", csv_plugin, "--allow-outside-root")
    assert allowed.exit_code == 0, allowed.output
    assert entry.startswith("{type: download") or any(out.iterdir())


@pytest.mark.parametrize(
    ("entry", "key"),
    [
        ("{type: json, path: '../OUTSIDE/{{ job.id }}.json'}", "outputs[0].path"),
        ("{type: csv, path: '{OUT}/{{ job.id }}.csv'}", "outputs[0].path"),
        ("{type: download, dir: '../OUTSIDE/{{ job.id }}'}", "outputs[0].dir"),
    ],
)
def test_templated_outputs_outside_the_project_are_refused_when_written(
    project: Project, tmp_path: Path, entry: str, key: str
) -> None:
    out = outside(tmp_path)
    spec = project.spec("t.yaml", QUICK + "outputs:\n  - " + entry.replace("{OUT}", str(out)) + "\n")
    result = project.run("run", spec, "--plugin", str(REPO / "plugins" / "csv_output.py"))
    assert result.exit_code == 1, result.output  # the job ran; its result is kept, the output failed
    assert f"t.yaml:{spec.read_text().splitlines().index('outputs:') + 2}: {key}:" in result.stderr
    assert "outside the project root" in result.stderr
    assert nothing_written_outside(tmp_path)


def test_a_symlinked_results_folder_does_not_lead_out(project: Project, tmp_path: Path) -> None:
    os.symlink(outside(tmp_path), project.root / "results")
    spec = project.spec("s.yaml", QUICK + "outputs:\n  - {type: json, path: results/r.json}\n")
    result = project.run("run", spec)
    assert result.exit_code == 2 and "through a symlink" in result.stderr and "outputs[0].path" in result.stderr
    spec = project.spec("s.yaml", QUICK + "outputs:\n  - {type: json, path: 'results/{{ job.id }}.json'}\n")
    result = project.run("run", spec)
    assert result.exit_code == 1 and "through a symlink" in result.stderr and "outputs[0].path" in result.stderr
    assert nothing_written_outside(tmp_path)


def test_an_output_value_from_the_server_cannot_lead_a_path_out(tmp_path: Path, opus_sandbox_factory: Any) -> None:
    workflows = {"workflows": {**WORKFLOWS["workflows"], WF["quick"]: {
        **WORKFLOWS["workflows"][WF["quick"]], "outputs": {"answer": "../../OUTSIDE/evil"},
    }}}
    project = make_project(tmp_path, opus_sandbox_factory, workflows)
    spec = project.spec("h.yaml", QUICK + "outputs:\n  - {type: json, path: 'results/{{ result.outputs.answer }}.json'}\n")
    result = project.run("run", spec)
    assert result.exit_code == 1, result.output
    assert "outputs[0].path" in result.stderr and "outside the project root" in result.stderr
    assert nothing_written_outside(tmp_path)


def test_server_supplied_output_and_file_names_cannot_name_a_path_out(tmp_path: Path) -> None:
    from opus_runner.builtins.outputs import plan_downloads, safe_file_name

    folder = tmp_path / "downloads"
    hostile_names = [("../../OUTSIDE/evil", "https://f.example/"), ("..", "https://f.example/a/%2e%2e%2f%2e%2e%2fx/")]
    planned = list(plan_downloads(hostile_names, folder))
    assert [target.name for _, target in planned] == ["OUTSIDE_evil", "download"]
    assert all(target.parent == folder.resolve() for _, target in planned)
    assert safe_file_name("https://f.example/", fallback="/etc/passwd") == "etc_passwd"


# -- job ids from the server ------------------------------------------------------------------

HOSTILE_ID = "x/../../../OUTSIDE/evil"


def test_a_hostile_job_id_is_refused_before_it_names_a_file(
    project: Project, tmp_path: Path, hostile: Callable[..., HostileProxy]
) -> None:
    def lie(method: str, path: str, data: Any) -> Any:
        if (method, path) == ("POST", "/job/initiate") and isinstance(data, dict):
            return {**data, "jobExecutionId": HOSTILE_ID}
        return data

    proxy = hostile(project.sandbox.base_url, lie)
    readme_output = "outputs:\n  - {type: json, path: 'results/{{ metadata.name }}-{{ job.id }}.json'}\n"
    spec = project.spec("j.yaml", QUICK + readme_output)
    result = project.run("run", spec, env={"OPUS_BASE_URL": proxy.base_url})
    assert result.exit_code == 3, result.output
    assert "POST /job/initiate" in result.stderr and f"jobExecutionId {HOSTILE_ID!r} is not a job id" in result.stderr
    assert project.sandbox.state.count("POST", "execute") == 0
    assert nothing_written_outside(tmp_path) and not (project.root / "results").exists()


@pytest.mark.parametrize("job_id", ["../x", ".hidden", "a/b", "a\\b", "a b", "x\x1b[2J", "7" * 129, "..", "x\ny"])
def test_job_ids_that_are_not_safe_tokens_are_api_errors(job_id: str) -> None:
    from opus_runner.client import OpusClient
    from opus_runner.errors import ApiError

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(201, json={"jobExecutionId": job_id})

    async def go() -> None:
        http = httpx.AsyncClient(transport=httpx.MockTransport(answer))
        async with OpusClient("https://opus.example", "k", http=http) as client:
            await client.initiate("00000000-0000-4000-8000-000000000002", title="t")

    with pytest.raises(ApiError) as info:
        asyncio.run(go())
    assert info.value.exit_code == 3 and "is not a job id" in str(info.value)
    assert "\x1b" not in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("job_id", ["72964", "3f69dcbf-2d6e-4b8a-9c1e-5a7b0c4d2e11", "job_1.2", "7" * 128])
def test_real_job_ids_are_accepted(job_id: str) -> None:
    from opus_runner.client import job_id_of

    assert job_id_of(job_id) == job_id


# -- resume -----------------------------------------------------------------------------------


def test_resume_under_untrusted_does_not_take_allow_outside_root_from_the_journal(
    project: Project, tmp_path: Path
) -> None:
    (outside(tmp_path) / "rows.csv").write_text("customer\nacme\n")
    spec = foreach_spec(project, "../OUTSIDE/rows.csv")
    started = project.run("run", spec, "--allow-outside-root", "--no-wait")
    assert started.exit_code == 0, started.output
    import sqlite3

    def as_a_crash_leaves_it() -> None:
        # unfinished and unowned, as a kill -9 leaves a run once its pid is gone
        db = sqlite3.connect(project.root / ".opus-run" / "state.db")
        db.execute("UPDATE runs SET finished_at = NULL")
        db.execute("DELETE FROM owners")
        db.commit()
        db.close()

    as_a_crash_leaves_it()
    refused = project.run("resume", "--untrusted")
    assert refused.exit_code == 2, refused.output
    assert "foreach.file" in refused.stderr and "--allow-outside-root" in refused.stderr
    # The refused resume gave its claim up with it, though its process lives on: no reset needed.
    again = project.run("resume", "--untrusted", "--allow-outside-root")  # the workflow file's own choice
    assert again.exit_code == 0, again.output
