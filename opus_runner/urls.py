"""URL helpers shared by the client, the built-in plugins and the sandbox (stdlib only)."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from .redact import mask

#: The ``callbackUrl`` sent when nobody configured a receiver. Opus requires one on every execute
#: (``""`` is refused) and POSTs the job's result to it, so it must be a host nobody can own:
#: ``.invalid`` never resolves (RFC 6761), so no third party ever receives a result.
PLACEHOLDER_CALLBACK_URL = "https://no-callback-receiver.opus-runner.invalid/callback"


def is_loopback_host(host: str | None) -> bool:
    """True for ``localhost`` and loopback addresses (``127.0.0.0/8``, ``::1``)."""
    if not host:
        return False
    host = host.strip("[]").rstrip(".").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def display_url(url: object, *, path: bool = True) -> str:
    """``url`` fit for messages and logs: no user info and no query string (presigned URLs
    carry their signature there).

    With ``path=False`` only ``scheme://host[:port]`` is kept, for URLs whose path is itself a
    secret (Slack and most webhook URLs); a non-empty path shows as ``/…``.
    """
    try:
        parts = urlsplit(str(url))
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<an invalid URL>"
    if ":" in host:
        host = f"[{host}]"
    shown = f"{parts.scheme}://{host}" + (f":{port}" if port else "")
    if path:
        shown += parts.path
    elif parts.path not in ("", "/"):
        shown += "/…"
    return mask(shown)
