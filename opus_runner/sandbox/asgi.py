"""The sandbox's ASGI application: the Opus API of opus-api.md, computed from a fixture.

Each workflow speaks a dialect (fixture key ``dialect``):

- ``live`` (the default): the shapes clients saw on the live service (opus-api.md section 8):
  numeric-string job ids, ``GET /workflow/{uuid}`` answering the v2 graph, snake_case versions,
  201s, ``callbackUrl`` required, a wrong input ``type`` accepted and the job then FAILED at its
  Input node, presigned PUTs refusing a ``Content-Type``, output files downloadable only through
  ``POST /job/file/download``, ``PENDING`` before execute.
- ``documented``: the older documented shapes (``jobPayloadSchema``, camelCase versions, 200s,
  ``CREATED`` before execute, 400 for a wrong value on execute, 409 on a second execute).

The v1 Case API is served under ``/api/v1`` from the same fixture and state (routes/v1_*.py):
a case is a job of the same store, with v1's shapes.

Job status follows the clock (state.py); outputs are rendered once, when execute is accepted
(routes/execute.py); the only timers are for callbacks (callbacks.py), POSTed to loopback hosts
only.

:class:`SandboxApp` wraps a Starlette router with an outer ASGI layer that names the route,
counts the call, injects faults (injection.py) and checks the service key, in that order, so a
faulted request never reaches a handler. Every error is a NestJS body
``{statusCode, message, error, timestamp, path}`` (responses.py), except on the routes standing
in for S3 (presigned PUT and GET), which answer S3's XML errors.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Match, Route

from .core import SandboxCore
from .faults import FaultSet
from .fixture import Fixture
from .injection import Receive, Scope, Send, apply_fault
from .responses import error, request_path
from .routes import control, execute, files, jobs, v1_cases, v1_files, v1_workflows, workflows
from .state import SandboxState

#: Routes that need no service key: the S3 stand-ins (presigned PUT/GET, file paths) and the
#: /job/v2/initiate redirect.
_KEYLESS_ROUTES = frozenset({"put", "file", "media", "presigned_get", "initiate_v2"})
#: Where the v1 Case API lives (opus-api.md section 0).
V1_PREFIX = "/api/v1"

Handler = Callable[[SandboxCore, Request], Awaitable[Response]]


class SandboxApp(SandboxCore):
    """The sandbox as an ASGI application.

    ``base_url`` is what file URLs are built on; the server sets it once it knows its port
    (without it, the URL the request came in on is used).
    """

    def __init__(
        self,
        fixture: Fixture,
        *,
        key: str,
        state: SandboxState | None = None,
        faults: FaultSet | None = None,
        base_url: str | None = None,
        callback_delay: float | None = None,
    ) -> None:
        super().__init__(fixture, state=state, faults=faults, base_url=base_url, callback_delay=callback_delay)
        self._key = key.encode("utf-8")
        self._router = Starlette(
            routes=self._routes(),
            exception_handlers={404: self._http_error, 405: self._http_error},
            lifespan=self._lifespan,
        )

    def __repr__(self) -> str:
        return f"<SandboxApp {len(self.fixture.workflows)} workflows>"

    def _routes(self) -> list[Route]:
        # The order matters: the first route whose path and method match answers.
        def route(path: str, handler: Handler, methods: list[str], name: str) -> Route:
            async def endpoint(request: Request) -> Response:
                return await handler(self, request)

            return Route(path, endpoint, methods=methods, name=name)

        return [
            route("/workflow/{workflow_id}", workflows.get_workflow, ["GET"], "workflow"),
            route(
                "/reference-workflow/v2/workflow-object/{workflow_id}",
                workflows.get_workflow_object,
                ["GET"],
                "workflow_object",
            ),
            route("/executor/workflow/{workflow_id}/versions", workflows.get_versions, ["GET"], "versions"),
            route("/job/initiate", jobs.initiate, ["POST"], "initiate"),
            route("/job/v2/initiate", jobs.initiate_v2, ["POST"], "initiate_v2"),
            route("/job/file/upload", files.upload, ["POST"], "upload"),
            route("/job/file/download", files.download, ["POST"], "download"),
            route("/job/execute", execute.execute, ["POST"], "execute"),
            route("/job/search", jobs.search, ["GET"], "search"),
            route("/job/{job_id}", jobs.job_detail, ["GET"], "job"),
            route("/job/{job_id}/status", jobs.job_status, ["GET"], "status"),
            route("/job/{job_id}/results", jobs.job_results, ["GET"], "results"),
            route("/job/{job_id}/audit", jobs.job_audit, ["GET"], "audit"),
            route("/job/{job_id}/archive", jobs.archive, ["POST", "DELETE"], "archive"),
            route("/job/{job_id}/delete", jobs.delete, ["DELETE"], "delete"),
            # The v1 Case API: each route has its v0 twin's name, so counts and fault rules
            # (route: execute) apply to whichever generation the client speaks.
            route(f"{V1_PREFIX}/workflow/{{workflow_id}}", v1_workflows.get_workflow, ["GET"], "workflow"),
            route(f"{V1_PREFIX}/case", v1_cases.create_case, ["POST"], "initiate"),
            route(f"{V1_PREFIX}/file/upload/presigned", v1_files.upload, ["POST"], "upload"),
            route(f"{V1_PREFIX}/case/{{job_id}}/execute", v1_cases.execute_case, ["POST"], "execute"),
            route(f"{V1_PREFIX}/case/{{job_id}}", v1_cases.case_detail, ["GET"], "job"),
            route(f"{V1_PREFIX}/case/{{job_id}}/status", v1_cases.case_status, ["GET"], "status"),
            route(f"{V1_PREFIX}/case/{{job_id}}/results", v1_cases.case_results, ["GET"], "results"),
            route(f"{V1_PREFIX}/case/{{job_id}}/audit", v1_cases.case_audit, ["GET"], "audit"),
            route("/_upload/{token}", files.put_upload, ["PUT"], "put"),
            route("/_download/{token}/{name:path}", files.get_presigned, ["GET"], "presigned_get"),
            route("/files/{token}/{name:path}", files.get_file, ["GET"], "file"),
            route("/media/{token}/{name:path}", files.get_media, ["GET"], "media"),
            route("/_sandbox/stats", control.sandbox_stats, ["GET"], "_sandbox_stats"),
            route("/_sandbox/reset", control.sandbox_reset, ["POST"], "_sandbox_reset"),
            route("/_sandbox/faults", control.sandbox_faults, ["GET", "POST", "DELETE"], "_sandbox_faults"),
        ]

    # -- the outer ASGI layer --------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._serve(scope, receive, send)
        except ClientDisconnect:
            # The client went away mid-request (a run stopped by Ctrl-C): no one to answer,
            # and nothing went wrong here, so no "Exception in ASGI application" traceback.
            return

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._router(scope, receive, send)
            return
        query = scope.get("query_string", b"").decode("latin-1")
        request_path.set(scope.get("path", "/") + (f"?{query}" if query else ""))
        route = self._route_name(scope)
        if route is None or route.startswith("_sandbox"):
            await self._router(scope, receive, send)
            return
        method = scope["method"]
        self.state.requests[(method, route)] += 1
        if route not in _KEYLESS_ROUTES:
            self.state.api_requests["v1" if scope.get("path", "").startswith(V1_PREFIX + "/") else "v0"] += 1
        rule = self.faults.pick(route, method)

        async def process(scope: Scope, receive: Receive, send: Send) -> None:
            await self._process(scope, receive, send, route)

        if rule is None:
            await process(scope, receive, send)
        else:
            await apply_fault(rule, scope, receive, send, process)

    def _route_name(self, scope: Scope) -> str | None:
        for candidate in self._router.routes:
            match, _ = candidate.matches(scope)
            if match is Match.FULL:
                return getattr(candidate, "name", None)
        return None

    async def _process(self, scope: Scope, receive: Receive, send: Send, route: str) -> None:
        if route not in _KEYLESS_ROUTES:
            problem = self._key_problem(scope)
            if problem:
                await error(401, problem, "Unauthorized")(scope, receive, send)
                return
        await self._router(scope, receive, send)

    def _key_problem(self, scope: Scope) -> str | None:
        for name, value in scope["headers"]:
            if name == b"x-service-key":
                return None if hmac.compare_digest(value, self._key) else "Invalid or expired API key"
        return "API key is required"

    @asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await self.callbacks.aclose()

    async def _http_error(self, request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        if status == 405:
            return error(405, f"Cannot {request.method} {request.url.path}", "Method Not Allowed")
        return error(404, f"Cannot {request.method} {request.url.path}", "Not Found")
