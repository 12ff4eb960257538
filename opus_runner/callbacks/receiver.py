"""The callback receiver: an ASGI app (starlette) that turns an authenticated callback into a
wake-up for its job, and ``opus-run callbacks serve`` around it.

``POST /callback/{token}``: the token is looked up by its digest in the journal, then checked in
constant time against the HMAC of the job it names. A match is listed in the journal (with the
body's shape, never its values) and wakes the job: the runner in this process at once
(``on_wake``), a runner in another process at its next look at the journal. Anything else is
404, counted, and changes nothing. The answer never waits for the job: Opus (like any webhook
sender) may give up on a slow receiver.

``GET /healthz``: ``{ok, accepted, rejected}``, for a load balancer or a tunnel's health check.
"""

from __future__ import annotations

import abc
import hmac
import json
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .tokens import CALLBACK_PATH, KEY_PURPOSE, job_token, token_digest

if TYPE_CHECKING:  # pragma: no cover
    from ..state import Journal

#: Bytes of a callback's body read to describe its shape; the rest is not read.
MAX_BODY_BYTES = 64 * 1024
#: Levels of a JSON body described in its shape.
SHAPE_DEPTH = 3

log = logging.getLogger("opus_runner.callbacks")

Wake = Callable[[str, int], None]


def body_shape(body: bytes, content_type: str | None, *, truncated: bool = False) -> Any:
    """What the body looks like, without any of its values: JSON keys and value types."""
    if truncated:
        return {"bytes": f">{MAX_BODY_BYTES}", "content_type": content_type}
    try:
        data = json.loads(body) if body else None
    except ValueError:
        return {"bytes": len(body), "content_type": content_type}
    return _shape(data, SHAPE_DEPTH)


def _shape(value: Any, depth: int) -> Any:
    if isinstance(value, dict):
        if depth <= 0:
            return "object"
        return {str(key): _shape(item, depth - 1) for key, item in list(value.items())[:50]}
    if isinstance(value, list):
        if depth <= 0 or not value:
            return "array"
        return [_shape(value[0], depth - 1)]
    if value is None:
        return "null"
    return {bool: "boolean", int: "number", float: "number", str: "string"}.get(type(value), type(value).__name__)


class Receiver(abc.ABC):
    """The routes of a receiver and its counts; :meth:`deliver`, each kind's own, decides what
    a token means (the journal's receiver, the engine's)."""

    def __init__(self) -> None:
        self.accepted = 0
        self.rejected = 0
        self._lock = threading.Lock()

    def app(self) -> Any:
        from starlette.applications import Starlette
        from starlette.routing import Route

        routes = [
            Route(CALLBACK_PATH + "{token}", self._callback, methods=["POST"]),
            Route(CALLBACK_PATH.rstrip("/"), self._missing_token, methods=["POST"]),
            Route(CALLBACK_PATH, self._missing_token, methods=["POST"]),
            Route("/healthz", self._health, methods=["GET"]),
        ]
        return Starlette(routes=routes)

    @abc.abstractmethod
    async def deliver(self, token: str, shape: Any) -> bool:
        """Wake the job ``token`` belongs to; False when it belongs to none."""

    def counted(self, ok: bool, what: str = "an unknown token") -> bool:
        with self._lock:
            if ok:
                self.accepted += 1
            else:
                self.rejected += 1
        if not ok:
            log.info("a callback with %s was refused (%d so far)", what, self.rejected)
        return ok

    # -- routes --------------------------------------------------------------------------

    async def _callback(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        body, truncated = await _read_some(request)
        shape = body_shape(body, request.headers.get("content-type"), truncated=truncated)
        if not await self.deliver(str(request.path_params["token"]), shape):
            return JSONResponse({"error": "no such callback"}, status_code=404)
        return JSONResponse({"ok": True})

    async def _missing_token(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        self.counted(False, "no token")
        return JSONResponse({"error": "no such callback"}, status_code=404)

    async def _health(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        return JSONResponse({"ok": True, "accepted": self.accepted, "rejected": self.rejected})


class CallbackReceiver(Receiver):
    """Checks callbacks against ``journal`` and calls ``on_wake(run_id, row_id)`` for each one
    accepted (from the server's thread: hand it to your loop with ``call_soon_threadsafe``)."""

    def __init__(self, journal: Journal, *, on_wake: Wake | None = None) -> None:
        super().__init__()
        self.journal = journal
        self.on_wake = on_wake
        self._keys: dict[str, bytes] = {}

    def check(self, token: str) -> tuple[str, int, str] | None:
        """``(run_id, row_id, job_id)`` of the job ``token`` belongs to, or None."""
        target = self.journal.callback_target(token_digest(token))
        if target is None:
            return None
        run_id, row_id, plan_key, job_id = target
        key = self._keys.get(run_id)
        if key is None:
            key = self._keys[run_id] = self.journal.derived_key(KEY_PURPOSE, run_id)
        if not hmac.compare_digest(job_token(key, run_id, plan_key, job_id), token):
            return None
        return run_id, row_id, job_id

    def accept(self, token: str, shape: Any) -> bool:
        """Record and wake the job ``token`` belongs to; False (counted) when it belongs to none."""
        found = self.check(token)
        if not self.counted(found is not None):
            return False
        assert found is not None
        run_id, row_id, job_id = found
        self.journal.record_callback(run_id, row_id, shape)
        log.debug("callback for job %s of run %s; body shape: %s", job_id, run_id, json.dumps(shape, sort_keys=True))
        if self.on_wake is not None:
            self.on_wake(run_id, row_id)
        return True

    async def deliver(self, token: str, shape: Any) -> bool:
        from starlette.concurrency import run_in_threadpool

        # The journal is SQLite: its calls block, so they leave the server's loop free.
        return bool(await run_in_threadpool(self.accept, token, shape))


async def _read_some(request: Any) -> tuple[bytes, bool]:
    """At most :data:`MAX_BODY_BYTES` of the body, and whether there was more."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return b"".join(chunks)[:MAX_BODY_BYTES], True
    return b"".join(chunks), False
