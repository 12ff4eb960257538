"""Built-in notifiers: ``webhook`` (POST the event as JSON) and ``log`` (one log line).

Each handler is ``handler(event, config, ctx)``. The runner calls it only for the event kinds
the entry's ``on:`` lists (default ``[completed, failed]``); that key is added to every
notifier's schema by the plugin host, so it is not repeated here.
"""

from __future__ import annotations

import logging
from typing import Any

from ..hookspecs import Register, hookimpl
from ..models import Context, JobEvent
from ..redact import mask
from . import check_url, post_json

# Loose on purpose: the exact rule (https, or http to a loopback host) is checked at send time;
# this catches the common mistakes at `opus-run validate`.
_URL_PATTERN = r"^(https://[^/?#\s]+|http://(localhost|127\.[0-9.]+|\[::1\])(:[0-9]+)?([/?#].*)?$)"

WEBHOOK_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "url": {
            "type": "string",
            "pattern": _URL_PATTERN,
            "description": "the URL to POST events to: https://, or http:// to localhost only",
        },
        "headers": {
            "type": "object",
            "additionalProperties": {"type": "string"},
            "description": "Extra request headers, e.g. an Authorization for the receiver.",
        },
    },
    "required": ["url"],
    "additionalProperties": False,
}

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
LOG_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"level": {"enum": list(_LEVELS), "description": "Log level (default info)."}},
    "additionalProperties": False,
}


async def webhook_notifier(event: JobEvent, config: dict[str, Any], ctx: Context) -> None:
    """POST ``event.as_dict()`` as JSON to ``config["url"]``; raise on a non-2xx answer.

    The request carries an ``Idempotency-Key`` that is the same whenever the same event of the
    same job reaches the same receiver (a resume that sends it again), so a receiver can drop
    the repeat.
    """
    url = check_url(config.get("url"), what="webhook url")
    headers = {"Idempotency-Key": idempotency_key(event, url), **(config.get("headers") or {})}
    await post_json(ctx, url, event.as_dict(), headers=headers, what="webhook", job_id=event.job_id)


def idempotency_key(event: JobEvent, url: str) -> str:
    """A stable key for one event of one job to one receiver (no secret goes into it)."""
    import hashlib

    text = "\x1f".join([event.plan_key, str(event.job_id), event.kind, str(event.status), url])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def describe_event(event: JobEvent) -> str:
    """One line for an event: ``invoice-triage [eu] job abc123 completed (COMPLETED)``."""
    head = event.spec_name or "job"
    if event.plan_key and event.plan_key != event.spec_name:
        head += f" [{event.plan_key}]"
    line = f"{head} job {event.job_id or '-'} {event.kind}"
    if event.status and event.status.lower() != event.kind:
        line += f" ({event.status})"
    if event.error:
        line += f": {event.error}"
    return mask(line)


def log_notifier(event: JobEvent, config: dict[str, Any], ctx: Context) -> None:
    """Write one line about the event to the run's log at ``config["level"]`` (default info)."""
    name = str(config.get("level", "info")).lower()
    if name not in _LEVELS:
        raise ValueError(f"log notifier: level must be one of {', '.join(_LEVELS)}, found {name!r}")
    level = _LEVELS[name]
    ctx.log.log(level, "%s", describe_event(event))


@hookimpl
def opus_register_notifiers(register: Register) -> None:
    """Register the built-in notifier types."""
    register("webhook", webhook_notifier, schema=WEBHOOK_SCHEMA)
    register("log", log_notifier, schema=LOG_SCHEMA)
