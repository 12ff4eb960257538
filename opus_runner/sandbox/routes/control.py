"""The ``/_sandbox`` routes tests and users drive the sandbox with: stats, reset and faults.

They take no service key and are never counted or faulted.
"""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import Response

from ..core import SandboxCore
from ..faults import FaultRuleError, parse_rules
from ..responses import bad_request, json_response


async def sandbox_stats(sandbox: SandboxCore, request: Request) -> Response:
    """``GET /_sandbox/stats``: the state as JSON, the callbacks not yet done, and the fault rules."""
    return json_response(
        {**sandbox.state.as_json(), "callbacks_pending": sandbox.callbacks.pending, "faults": sandbox.faults.as_list()}
    )


async def sandbox_reset(sandbox: SandboxCore, request: Request) -> Response:
    """``POST /_sandbox/reset``: forget every job, upload and counter."""
    sandbox.state.reset()
    return json_response({"success": True})


async def sandbox_faults(sandbox: SandboxCore, request: Request) -> Response:
    """``GET`` lists the fault rules, ``POST`` adds a JSON list of rules, ``DELETE`` clears them."""
    if request.method == "DELETE":
        sandbox.faults.clear()
    elif request.method == "POST":
        try:
            data = json.loads(await request.body())
            sandbox.faults.extend(parse_rules(data))
        except ValueError as exc:
            index = getattr(exc, "index", None)
            prefix = f"rule {index}: " if isinstance(exc, FaultRuleError) and index is not None else ""
            message = (
                str(exc) if isinstance(exc, FaultRuleError) else "the request body is not valid JSON"
            )
            return bad_request([prefix + message])
    return json_response({"faults": sandbox.faults.as_list()})
