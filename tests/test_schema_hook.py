"""The built-in opus_workflow_schema hook, called through a real pluggy PluginManager."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import httpx
import pluggy
import pytest

import opus_runner.hookspecs
from opus_runner.builtins import schema as schema_plugin
from opus_runner.client import OpusClient, RetryPolicy
from opus_runner.errors import ApiError, AuthError, NotFoundError
from opus_runner.models import Context, WorkflowRef, WorkflowSchema

pytestmark = pytest.mark.anyio

KEY = "sk-hook-test-5d1c9a77"
BASE = "https://opus.test"
UUID = "3f69dcbf-713a-493d-8d08-3fdb754825ab"
V1_GONE = httpx.Response(
    500, json={"statusCode": 500, "message": "V1 workflow details are no longer supported"}
)

V1_BODY = {
    "workflowId": "CIAwZYFzQJwmADQN",
    "name": "Invoice triage",
    "jobPayloadSchema": {
        "workflow_input_a": {
            "variable_name": "workflow_input_a",
            "display_name": "Title",
            "type": "str",
            "is_nullable": False,
        }
    },
}


def v2_body(version: int = 5, names: tuple[str, ...] = ("doc",)) -> dict[str, Any]:
    schema = {
        n: {
            "variable_name": n,
            "display_name": n.title(),
            "type": "str",
            "allowed_types": [{"type": "file"}],
        }
        for n in names
    }
    return {
        "workflow_id": UUID,
        "name": "V2 flow",
        "version": version,
        "workflow_input_node_id": "n-in",
        "nodes": {"n-in": {"id": "n-in", "type": "input", "output_schema": {"schema": schema}}},
        "edges": {},
    }


VERSIONS = {
    "workflow_id": UUID,
    "latest_version": 5,
    "versions": [
        {"workflow_version_id": "ver-uuid-4", "version": 4, "status": "inactive"},
        {"workflow_version_id": "ver-uuid-5", "version": 5, "status": "active"},
    ],
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Routes:
    """Fake Opus: a dict of path -> response (or callable); records every request."""

    def __init__(self, routes: dict[str, Any]) -> None:
        self.routes = routes
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.routes.get(request.url.path)
        assert answer is not None, f"unexpected request {request.method} {request.url}"
        return answer(request) if callable(answer) else answer

    def paths(self) -> list[str]:
        return [str(r.url.copy_with(scheme=None, host=None)) for r in self.requests]


@pytest.fixture
def pm() -> pluggy.PluginManager:
    manager = pluggy.PluginManager("opus_runner")
    manager.add_hookspecs(opus_runner.hookspecs)
    manager.register(schema_plugin)
    return manager


async def sleep(_: float) -> None:
    return None


def context(client: OpusClient | None, tmp_path: Path) -> Context:
    return Context(
        spec=None,
        spec_path=tmp_path / "job.yaml",
        spec_dir=tmp_path,
        log=logging.getLogger("test"),
        client=client,
    )


async def fetch(
    pm: pluggy.PluginManager, routes: Routes, ref: WorkflowRef, tmp_path: Path
) -> WorkflowSchema | None:
    http = httpx.AsyncClient(transport=httpx.MockTransport(routes))
    async with OpusClient(BASE, KEY, http=http, retry=RetryPolicy(sleep=sleep)) as client:
        pending = pm.hook.opus_workflow_schema(workflow_ref=ref, ctx=context(client, tmp_path))
        result = await pending
    await http.aclose()
    return result


async def test_documented_route_with_version_pin(pm: pluggy.PluginManager, tmp_path: Path) -> None:
    routes = Routes({"/workflow/CIAwZYFzQJwmADQN": httpx.Response(200, json=V1_BODY)})
    schema = await fetch(pm, routes, WorkflowRef("CIAwZYFzQJwmADQN", version=3), tmp_path)
    assert isinstance(schema, WorkflowSchema)
    assert (schema.workflow_id, schema.source, schema.version) == ("CIAwZYFzQJwmADQN", "v1", 3)
    assert [f.display_name for f in schema.inputs] == ["Title"]
    assert routes.paths() == ["/workflow/CIAwZYFzQJwmADQN?version=3"]
    assert routes.requests[0].headers["x-service-key"] == KEY


async def test_version_id_pin_on_the_documented_route(
    pm: pluggy.PluginManager, tmp_path: Path
) -> None:
    routes = Routes({"/workflow/CIAwZYFzQJwmADQN": httpx.Response(200, json=V1_BODY)})
    schema = await fetch(
        pm, routes, WorkflowRef("CIAwZYFzQJwmADQN", version=3, version_id="9b2e"), tmp_path
    )
    assert schema is not None and schema.version_id == "9b2e"
    assert routes.paths() == ["/workflow/CIAwZYFzQJwmADQN?workflowVersionId=9b2e"]


@pytest.mark.parametrize(
    "refusal",
    [httpx.Response(404, json={"message": "Workflow not found"}), V1_GONE],
    ids=["404", "no-longer-supported"],
)
async def test_falls_back_to_the_v2_object(
    pm: pluggy.PluginManager, tmp_path: Path, refusal: httpx.Response
) -> None:
    routes = Routes(
        {
            f"/workflow/{UUID}": refusal,
            f"/reference-workflow/v2/workflow-object/{UUID}": httpx.Response(200, json=v2_body()),
        }
    )
    schema = await fetch(pm, routes, WorkflowRef(UUID), tmp_path)
    assert schema is not None
    assert (schema.source, schema.workflow_id, schema.name, schema.version) == (
        "v2",
        UUID,
        "V2 flow",
        5,
    )
    assert [(f.variable_name, f.type) for f in schema.inputs] == [("doc", "file")]
    # The removed route answers 500, which is not worth retrying: one request, then the fallback.
    assert routes.paths() == [f"/workflow/{UUID}", f"/reference-workflow/v2/workflow-object/{UUID}"]


async def test_pinned_version_is_picked_from_the_version_list(
    pm: pluggy.PluginManager, tmp_path: Path
) -> None:
    routes = Routes(
        {
            f"/workflow/{UUID}": V1_GONE,
            f"/executor/workflow/{UUID}/versions": httpx.Response(200, json=VERSIONS),
            f"/reference-workflow/v2/workflow-object/{UUID}": lambda r: httpx.Response(
                200, json=v2_body(int(r.url.params["version"]), ("old",))
            ),
        }
    )
    schema = await fetch(pm, routes, WorkflowRef(UUID, version=4), tmp_path)
    assert schema is not None
    assert (schema.version, schema.version_id) == (4, "ver-uuid-4")
    assert [f.variable_name for f in schema.inputs] == ["old"]
    assert routes.paths()[1:] == [
        f"/executor/workflow/{UUID}/versions",
        f"/reference-workflow/v2/workflow-object/{UUID}?version=4",
    ]


async def test_pinned_version_id_is_picked_from_the_version_list(
    pm: pluggy.PluginManager, tmp_path: Path
) -> None:
    routes = Routes(
        {
            f"/workflow/{UUID}": httpx.Response(404, json={"message": "nope"}),
            f"/executor/workflow/{UUID}/versions": httpx.Response(200, json=VERSIONS),
            f"/reference-workflow/v2/workflow-object/{UUID}": lambda r: httpx.Response(
                200, json=v2_body(int(r.url.params["version"]))
            ),
        }
    )
    schema = await fetch(pm, routes, WorkflowRef(UUID, version_id="ver-uuid-5"), tmp_path)
    assert schema is not None and (schema.version, schema.version_id) == (5, "ver-uuid-5")


async def test_pinned_version_not_listed(pm: pluggy.PluginManager, tmp_path: Path) -> None:
    routes = Routes(
        {
            f"/workflow/{UUID}": V1_GONE,
            f"/executor/workflow/{UUID}/versions": httpx.Response(200, json=VERSIONS),
        }
    )
    with pytest.raises(NotFoundError) as info:
        await fetch(pm, routes, WorkflowRef(UUID, version=9), tmp_path)
    assert f"workflow {UUID} has no version 9 (its versions: 4, 5)" in str(info.value)
    assert "workflow.version" in str(info.value)


async def test_platform_ignoring_the_pin_is_reported(
    pm: pluggy.PluginManager, tmp_path: Path
) -> None:
    routes = Routes(
        {
            f"/workflow/{UUID}": V1_GONE,
            f"/executor/workflow/{UUID}/versions": httpx.Response(200, json=VERSIONS),
            f"/reference-workflow/v2/workflow-object/{UUID}": httpx.Response(200, json=v2_body(5)),
        }
    )
    with pytest.raises(ApiError, match=r"asked for version 4 .* described version 5"):
        await fetch(pm, routes, WorkflowRef(UUID, version=4), tmp_path)


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (httpx.Response(401, json={"message": "Unauthorized"}), AuthError),
        (httpx.Response(400, json={"message": ["version must be a number"]}), ApiError),
    ],
)
async def test_other_errors_do_not_fall_back(
    pm: pluggy.PluginManager, tmp_path: Path, answer: httpx.Response, error: type[Exception]
) -> None:
    routes = Routes({"/workflow/wf1": answer})
    with pytest.raises(error):
        await fetch(pm, routes, WorkflowRef("wf1"), tmp_path)
    assert routes.paths() == ["/workflow/wf1"]


async def test_unknown_on_both_routes_is_not_found(
    pm: pluggy.PluginManager, tmp_path: Path
) -> None:
    routes = Routes(
        {
            "/workflow/nope": httpx.Response(404, json={"message": "Workflow not found"}),
            "/reference-workflow/v2/workflow-object/nope": httpx.Response(
                404, json={"message": "Not Found"}
            ),
        }
    )
    with pytest.raises(NotFoundError, match="workflow nope not found"):
        await fetch(pm, routes, WorkflowRef("nope"), tmp_path)


async def test_offline_returns_none(pm: pluggy.PluginManager, tmp_path: Path) -> None:
    pending = pm.hook.opus_workflow_schema(
        workflow_ref=WorkflowRef("wf1"), ctx=context(None, tmp_path)
    )
    assert await pending is None


def test_the_impl_is_registered_for_the_hook(pm: pluggy.PluginManager) -> None:
    impls = pm.hook.opus_workflow_schema.get_hookimpls()
    assert [i.plugin for i in impls] == [schema_plugin]
