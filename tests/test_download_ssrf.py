"""The ``download`` output fetches only where it should (issue 12, SSRF): from the URL the API's
download route returned, or the service's own origin, or a host of ``allow_hosts``; redirects
to another host, plain http to a non-loopback host and private or local addresses are refused.

"The server" is the sandbox over real loopback HTTP, with workflows whose file outputs point
elsewhere; a second loopback HTTP server stands for an internal service nobody should reach.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from conftest import WORKFLOWS, Project, header, make_project
from test_confinement import HostileProxy, hostile  # noqa: F401 - the fixture

FILES_WF = "00000000-0000-4000-8000-0000000000f1"
SECRET = b"INTERNAL-SERVICE-SECRET-4711"


class InternalService:
    """A loopback HTTP server standing for an internal service (metadata endpoint, admin API)."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                service.paths.append(self.path)
                port = self.server.server_address[1]
                redirects = {
                    "/hop-same": "/secret.txt",
                    "/hop-other": f"http://localhost:{port}/secret.txt",  # same machine, another host name
                    "/loop": "/loop",
                }
                if self.path in redirects:
                    self.send_response(302)
                    self.send_header("location", redirects[self.path])
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("content-length", str(len(SECRET)))
                self.end_headers()
                self.wfile.write(SECRET)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def internal() -> Iterator[InternalService]:
    service = InternalService()
    service.thread.start()
    yield service
    service.server.shutdown()
    service.server.server_close()


def files_project(tmp_path: Path, factory: Any, link: str | None) -> Project:
    """A project whose sandbox workflow returns a real output file and, with ``link``, a file
    output whose URL is ``link`` (what a hostile or confused server would send)."""
    outputs: dict[str, Any] = {"report": {"type": "file", "value": {"name": "report.txt", "content": "REPORT {{ inputs.Question }}"}}}
    if link is not None:
        outputs["link"] = {"type": "file", "value": link}
    workflow = {
        "name": "Files",
        "duration": "0.1s",
        "inputs": [{"variable_name": "workflow_input_q", "display_name": "Question", "type": "str"}],
        "outputs": outputs,
    }
    return make_project(tmp_path, factory, {"workflows": {**WORKFLOWS["workflows"], FILES_WF: workflow}})


def download_spec(project: Project, extra: str = "", only: str = "") -> Path:
    entry = "{type: download, dir: downloads" + (f", outputs: [{only}]" if only else "") + extra + "}"
    return project.spec("d.yaml", header("d", FILES_WF) + f"inputs:\n  Question: q\noutputs:\n  - {entry}\n")


def saved(project: Project) -> dict[str, bytes]:
    folder = project.root / "downloads"
    return {p.name: p.read_bytes() for p in folder.iterdir()} if folder.exists() else {}


def test_the_sandbox_flow_still_downloads_from_the_service(tmp_path: Path, opus_sandbox_factory: Any) -> None:
    project = files_project(tmp_path, opus_sandbox_factory, None)
    result = project.run("run", download_spec(project))
    assert result.exit_code == 0, result.output
    assert saved(project) == {"report.txt": b"REPORT q"}


def test_a_file_output_pointing_at_an_internal_service_is_not_fetched(
    tmp_path: Path, opus_sandbox_factory: Any, internal: InternalService
) -> None:
    project = files_project(tmp_path, opus_sandbox_factory, f"{internal.url}/secret.txt")
    result = project.run("run", download_spec(project))
    assert result.exit_code == 1, result.output
    assert "could not download output 'link'" in result.stderr
    assert "is not on the Opus service's host" in result.stderr and "allow_hosts" in result.stderr
    assert internal.paths == []
    assert SECRET not in b"".join(saved(project).values())


def test_allow_hosts_lets_a_listed_internal_host_through(
    tmp_path: Path, opus_sandbox_factory: Any, internal: InternalService
) -> None:
    project = files_project(tmp_path, opus_sandbox_factory, f"{internal.url}/secret.txt")
    result = project.run("run", download_spec(project, f", allow_hosts: ['{internal.host}']", only="link"))
    assert result.exit_code == 0, result.output
    assert saved(project) == {"secret.txt": SECRET} and internal.paths == ["/secret.txt"]


@pytest.mark.parametrize(
    ("path", "message", "requested"),
    [
        ("/hop-other", "redirects to another host, http://localhost:", ["/hop-other"]),
        ("/loop", "more than 5 redirects", ["/loop"] * 6),
    ],
)
def test_redirects_are_followed_only_on_the_same_host(
    tmp_path: Path, opus_sandbox_factory: Any, internal: InternalService, path: str, message: str, requested: list[str]
) -> None:
    project = files_project(tmp_path, opus_sandbox_factory, f"{internal.url}{path}")
    result = project.run("run", download_spec(project, f", allow_hosts: ['{internal.host}']", only="link"))
    assert result.exit_code == 1, result.output
    assert message in result.stderr
    assert internal.paths == requested and saved(project) == {}


def test_a_redirect_on_the_same_host_is_followed(
    tmp_path: Path, opus_sandbox_factory: Any, internal: InternalService
) -> None:
    project = files_project(tmp_path, opus_sandbox_factory, f"{internal.url}/hop-same")
    result = project.run("run", download_spec(project, f", allow_hosts: ['{internal.host}']", only="link"))
    assert result.exit_code == 0, result.output
    assert internal.paths == ["/hop-same", "/secret.txt"] and saved(project) == {"hop-same": SECRET}


def test_plain_http_to_a_host_that_is_not_loopback_is_refused(tmp_path: Path, opus_sandbox_factory: Any) -> None:
    project = files_project(tmp_path, opus_sandbox_factory, "http://files.example.invalid/report.pdf")
    result = project.run("run", download_spec(project, ", allow_hosts: [files.example.invalid]", only="link"))
    assert result.exit_code == 1, result.output
    assert "http://files.example.invalid/report.pdf is plain http to a host that is not loopback" in result.stderr


def test_a_presigned_url_to_a_private_address_is_refused_unless_listed(
    tmp_path: Path, opus_sandbox_factory: Any, internal: InternalService, hostile: Any  # noqa: F811
) -> None:
    project = files_project(tmp_path, opus_sandbox_factory, None)

    def presign_to_internal(method: str, path: str, data: Any) -> Any:
        if (method, path) == ("POST", "/job/file/download") and isinstance(data, dict):
            return {**data, "presignedUrl": f"{internal.url}/secret.txt?X-Amz-Signature=s"}
        return data

    proxy: HostileProxy = hostile(project.sandbox.base_url, presign_to_internal)
    env = {"OPUS_BASE_URL": proxy.base_url}
    result = project.run("run", download_spec(project), env=env)
    assert result.exit_code == 1, result.output
    assert f"{internal.url}/secret.txt resolves to 127.0.0.1, a private or local address" in result.stderr
    assert "X-Amz-Signature" not in result.output
    assert internal.paths == [] and saved(project) == {}
    listed = project.run("run", download_spec(project, f", allow_hosts: ['{internal.host}']"), env=env)
    assert listed.exit_code == 0, listed.output
    assert saved(project) == {"report.txt": SECRET}


@pytest.mark.parametrize(
    "address",
    ["10.0.0.1", "172.16.5.4", "192.168.1.1", "127.0.0.1", "169.254.169.254", "0.0.0.0", "224.0.0.1",
     "100.64.0.1", "::1", "fe80::1", "fc00::1", "::ffff:127.0.0.1", "ff02::1", "::"],
)
def test_private_local_and_multicast_addresses_are_blocked(address: str) -> None:
    from opus_runner.builtins.download import _blocked_address

    assert _blocked_address(address)


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111"])
def test_public_addresses_are_not_blocked(address: str) -> None:
    from opus_runner.builtins.download import _blocked_address

    assert not _blocked_address(address)


def test_a_name_is_judged_by_the_addresses_it_resolves_to() -> None:
    from opus_runner.builtins.download import DownloadPolicy, DownloadRefused

    with pytest.raises(DownloadRefused, match=r"https://localhost:9/x resolves to (127\.0\.0\.1|::1), a private"):
        asyncio.run(DownloadPolicy().check("https://localhost:9/x"))
    asyncio.run(DownloadPolicy(allow_hosts=frozenset({"localhost"})).check("https://localhost:9/x"))
    asyncio.run(DownloadPolicy(service=("https", "localhost", 9)).check("https://localhost:9/x"))


def test_allow_hosts_is_documented_and_accepted_by_the_schema() -> None:
    from opus_runner.builtins.download import DOWNLOAD_SCHEMA

    assert "allow_hosts" in DOWNLOAD_SCHEMA["properties"]
    text = (Path(__file__).resolve().parent.parent / "docs" / "spec.md").read_text(encoding="utf-8")
    assert "allow_hosts" in text
