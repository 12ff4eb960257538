"""Slack notifier for opus-runner: post job events to a Slack incoming webhook.

Drop this file into your project's ``plugins/`` folder (or pass ``--plugin slack_notify.py``),
create an incoming webhook in Slack, and add to a spec::

    notify:
      - type: slack
        webhook_url: "{{ secret('SLACK_WEBHOOK_URL') }}"   # the URL is a credential: keep it out of specs
        on: [completed, failed]
        channel: "#finance-bots"                            # optional, where the webhook allows it

Each message has a one-line ``text`` (shown in notifications) and ``blocks`` with the spec
name, status, job id and a short summary of the outputs.

It doubles as an example of an async notifier with a config schema: the handler is an
``async def`` that reuses the run's HTTP client through ``opus_runner.builtins.post_json``, which
never sends the Opus service key and never prints the webhook URL.
"""

from __future__ import annotations

import json
from typing import Any

from opus_runner import hookimpl
from opus_runner.builtins import check_url, post_json
from opus_runner.hookspecs import Register
from opus_runner.models import Context, JobEvent

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "webhook_url": {
            "type": "string",
            "minLength": 1,
            "description": "the Slack incoming-webhook URL (https://hooks.slack.com/services/...)",
        },
        "channel": {"type": "string", "description": "Channel override, e.g. #ops (legacy webhooks only)."},
        "username": {"type": "string", "description": "Sender name override (legacy webhooks only)."},
        "icon_emoji": {"type": "string", "description": "Sender icon override, e.g. :robot_face:."},
        "max_outputs": {"type": "integer", "minimum": 0, "description": "Outputs listed (default 10)."},
    },
    "required": ["webhook_url"],
    "additionalProperties": False,
}

_ICONS = {
    "submitted": ":arrow_forward:",
    "status": ":hourglass_flowing_sand:",
    "completed": ":white_check_mark:",
    "failed": ":x:",
    "cancelled": ":no_entry_sign:",
    "timed_out": ":alarm_clock:",
}
_VALUE_LIMIT = 300


def _escape(text: str) -> str:
    # Slack's mrkdwn treats these three as control characters.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    text = " ".join(text.split())
    if len(text) > _VALUE_LIMIT:
        text = text[: _VALUE_LIMIT - 1] + "…"
    return _escape(text)


def slack_message(event: JobEvent, config: dict[str, Any]) -> dict[str, Any]:
    """The Slack incoming-webhook body for one event."""
    icon = _ICONS.get(event.kind, ":information_source:")
    name = event.spec_name or "job"
    if event.plan_key and event.plan_key != event.spec_name:
        name += f" [{event.plan_key}]"
    status = event.status or event.kind.upper()
    text = f"{icon} {name}: {event.kind.replace('_', ' ')} ({status})"
    fields = [
        {"type": "mrkdwn", "text": f"*Spec*\n{_escape(name)}"},
        {"type": "mrkdwn", "text": f"*Status*\n{_escape(status)}"},
        {"type": "mrkdwn", "text": f"*Job*\n`{_escape(event.job_id or '-')}`"},
    ]
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": _escape(text)}},
        {"type": "section", "fields": fields},
    ]
    if event.error:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": f"*Error*\n{_value(event.error)}"}})
    outputs = event.result.outputs if event.result is not None else {}
    if outputs:
        limit = int(config.get("max_outputs", 10))
        lines = [f"• *{_escape(str(k))}*: {_value(v)}" for k, v in list(outputs.items())[:limit]]
        if len(outputs) > limit:
            lines.append(f"_…and {len(outputs) - limit} more_")
        if lines:
            blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": "*Outputs*\n" + "\n".join(lines)}})
    message: dict[str, Any] = {"text": text, "blocks": blocks}
    for key in ("channel", "username", "icon_emoji"):
        if config.get(key):
            message[key] = config[key]
    return message


async def slack_notifier(event: JobEvent, config: dict[str, Any], ctx: Context) -> None:
    """Post the event to the configured Slack webhook; raise when Slack refuses it."""
    url = check_url(config.get("webhook_url"), what="slack webhook_url")
    await post_json(ctx, url, slack_message(event, config), what="slack webhook", job_id=event.job_id)


@hookimpl
def opus_register_notifiers(register: Register) -> None:
    register("slack", slack_notifier, schema=SCHEMA)
