"""What the hand-written bench clients need to read a workflow's inputs, in either shape.

Kept apart from ``_common`` (the harness) so the measured clients import nothing but httpx and
this: ``GET /workflow/{uuid}`` answers the v2 graph live, or the documented ``jobPayloadSchema``.
"""

from __future__ import annotations

from typing import Any

#: Opus refuses an execute without a callbackUrl; nobody must receive these (RFC 6761).
CALLBACK_URL = "https://no-callback-receiver.opus-runner.invalid/callback"


def workflow_inputs(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{variable_name: {"display_name", "type"}}`` from either answer of ``GET /workflow/{id}``."""
    if isinstance(body.get("jobPayloadSchema"), dict):
        return {var: {"display_name": e["display_name"], "type": e["type"]} for var, e in body["jobPayloadSchema"].items()}
    node = body["nodes"][body["workflow_input_node_id"]]
    entries = node["input_schema"]["schema"]
    return {
        var: {"display_name": e["display_name"], "type": e.get("type") or e["allowed_types"][0]["type"]}
        for var, e in entries.items()
    }
