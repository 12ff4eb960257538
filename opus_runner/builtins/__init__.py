"""The built-in plugins, loaded first and registered exactly as third-party plugins are.

:data:`BUILTIN_PLUGINS` is the one place that says which modules they are. Being registered
first, they are asked last by firstresult hooks, so any plugin can take a field, a file or a
workflow lookup over from them.

The helpers below are for plugins that send HTTP requests of their own (the webhook notifier,
the download output, the Slack example): they use the run's client without ever sending the
service key, and show URLs without the parts that tend to be credentials.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .. import jsontext
from ..errors import DeliveryFailed
from ..redact import mask, mask_obj
from ..urls import display_url, is_loopback_host

if TYPE_CHECKING:  # pragma: no cover
    import httpx

BUILTIN_PLUGINS: tuple[str, ...] = (
    "opus_runner.builtins.coerce",
    "opus_runner.builtins.upload",
    "opus_runner.builtins.schema",
    "opus_runner.builtins.outputs",
    "opus_runner.builtins.notifiers",
    "opus_runner.builtins.junit",
)

#: The header that carries the Opus service key; stripped from every request made here.
SERVICE_KEY_HEADER = "x-service-key"
#: Timeout of the stand-alone client used when a handler runs without the run's client.
STANDALONE_TIMEOUT = 30.0

__all__ = [
    "BUILTIN_PLUGINS",
    "SERVICE_KEY_HEADER",
    "check_url",
    "display_url",
    "http_client",
    "is_loopback_host",
    "post_json",
    "request_without_key",
]


def check_url(url: Any, *, what: str) -> str:
    """Return ``url`` if it is https, or http to a loopback host; raise ``ValueError`` otherwise.

    ``what`` names the setting in the message (``"webhook url"``).
    """
    if not isinstance(url, str) or not url:
        raise ValueError(f"{what} must be a URL string, found {type(url).__name__}")
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url
    if parts.scheme == "http" and is_loopback_host(parts.hostname):
        return url
    raise ValueError(
        f"{what} must be an https:// URL (plain http is allowed only to localhost), found {display_url(url)}"
    )


@contextlib.asynccontextmanager
async def http_client(ctx: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The run's ``ctx.http``, or a short-lived client when there is none (offline, tests)."""
    client = getattr(ctx, "http", None)
    if client is not None:
        yield client
        return
    import httpx

    async with httpx.AsyncClient(timeout=STANDALONE_TIMEOUT) as own:
        yield own


def request_without_key(client: httpx.AsyncClient, method: str, url: str, **kwargs: Any) -> httpx.Request:
    """Build a request on ``client`` with the service key header removed.

    The run's client may carry the key as a default header; it must never reach a third party.
    Send it with ``client.send(request, auth=None)`` so no client-level auth is added either.
    """
    request = client.build_request(method, url, **kwargs)
    request.headers.pop(SERVICE_KEY_HEADER, None)
    return request


async def post_json(
    ctx: Any,
    url: str,
    payload: Any,
    *,
    headers: Mapping[str, str] | None = None,
    what: str = "webhook",
    job_id: str | None = None,
) -> httpx.Response:
    """POST ``payload`` (secrets masked) as JSON to ``url`` without the service key.

    The URL must be https (or http to loopback). A non-2xx answer or a network failure raises
    :class:`~opus_runner.errors.DeliveryFailed` naming the host and the status, never the
    URL's path or query.
    """
    import httpx

    check_url(url, what=f"{what} url")
    body = jsontext.dumps(mask_obj(payload), ensure_ascii=False, default=str).encode("utf-8")
    sent_headers = httpx.Headers({"content-type": "application/json"})
    sent_headers.update(dict(headers or {}))  # case-insensitive: the caller's Content-Type wins
    async with http_client(ctx) as client:
        request = request_without_key(client, "POST", url, content=body, headers=sent_headers)
        try:
            response = await client.send(request, auth=None)
        except httpx.HTTPError as exc:
            reason = mask(" ".join(str(exc).split())) or type(exc).__name__
            raise DeliveryFailed(
                f"{what} {display_url(url, path=False)} could not be reached: {type(exc).__name__}: {reason}",
                job_id=job_id,
            ) from None
    if not response.is_success:
        text = mask(" ".join(response.text.split()))[:200]
        raise DeliveryFailed(
            f"{what} {display_url(url, path=False)} answered HTTP {response.status_code}"
            + (f": {text}" if text else ""),
            job_id=job_id,
        )
    return response
