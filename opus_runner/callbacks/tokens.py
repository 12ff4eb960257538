"""Per-job callback tokens and the receiver's address: stdlib only, cheap to import.

A job's ``callbackUrl`` is ``{public_url}/callback/{token}``, where the token is an HMAC over the
run id, the plan key and the job id with a key derived from the one beside the journal
(:meth:`opus_runner.state.Journal.derived_key`). The journal keeps the token's SHA-256, never the
token, so a copy of the journal (a CI artifact) does not hold working callback URLs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from urllib.parse import urlsplit

from ..urls import is_loopback_host

CALLBACK_PATH = "/callback/"
#: what :meth:`Journal.derived_key` derives the token key for
KEY_PURPOSE = "callback-token"


def job_token(key: bytes, run_id: str, plan_key: str, job_id: str) -> str:
    """The job's token: 43 URL-safe characters (256 bits)."""
    message = "\0".join((run_id, plan_key, job_id)).encode("utf-8")
    mac = hmac.new(key, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")


def token_digest(token: str) -> str:
    """What the journal keeps of a token: its SHA-256, hex."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def callback_url(public_url: str, token: str) -> str:
    return public_url.rstrip("/") + CALLBACK_PATH + token


def public_url_problem(url: object) -> str | None:
    """Why ``url`` cannot be the receiver's public URL, or None. Opus sends a job's result there,
    so it must be https; plain http is accepted for loopback addresses only (the sandbox)."""
    if not isinstance(url, str) or not url:
        return f"must be the URL Opus can reach the receiver at, found {url!r}"
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return f"is not a URL: {url!r}"
    if parts.scheme not in ("http", "https") or not host:
        return f"must be an https URL such as https://ci.example.com/opus, found {url!r}"
    if parts.username is not None or parts.password is not None:
        return "must not hold a user name or password (the per-job token authenticates each callback)"
    if parts.query or parts.fragment:
        return f"must not have a query or fragment (each job's token is added to its path), found {url!r}"
    if parts.scheme != "https" and not is_loopback_host(host):
        return (
            f"must be https (Opus sends each job's result there), found {url!r}; plain http is "
            "accepted for loopback addresses only"
        )
    return None


def parse_listen(text: object) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6; port 0: any free port) as ``(host, port)``;
    raises ValueError with the sentence to show."""
    if not isinstance(text, str) or ":" not in text:
        raise ValueError(f"must be HOST:PORT such as 127.0.0.1:8787, found {text!r}")
    host, _, port_text = text.rpartition(":")
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        raise ValueError(f"must name the address to listen on, such as 127.0.0.1:8787 or 0.0.0.0:8787, found {text!r}")
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise ValueError(f"must end with a port number from 0 to 65535, found {text!r}")
    return host, port


@dataclass(frozen=True)
class ReceiverSettings:
    """Where a run hears its callbacks: a receiver it starts (``listen``) and/or the URL Opus
    reaches it at (``public_url``; without ``listen``, a receiver that runs elsewhere, such as
    ``opus-run callbacks serve``, sharing this journal)."""

    listen: tuple[str, int] | None = None
    public_url: str | None = None

    def __bool__(self) -> bool:
        return self.listen is not None or self.public_url is not None

    def describe(self) -> str:
        parts = []
        if self.listen is not None:
            parts.append(f"listen {self.listen[0]}:{self.listen[1]}")
        if self.public_url is not None:
            parts.append(f"public_url {self.public_url}")
        return ", ".join(parts) or "no receiver"


#: the environment variable that holds the secret engine workers and their receiver share
ENGINE_SECRET_ENV = "OPUS_RUNNER_CALLBACK_SECRET"


def engine_key(secret: str) -> bytes:
    """The key signed tokens are made with, from the secret the workers and the receiver share."""
    return hmac.new(secret.encode("utf-8"), b"opus-runner engine callback token", hashlib.sha256).digest()


def signed_token(key: bytes, workflow_id: str, plan_key: str, job_id: str) -> str:
    """A token that carries where its wake-up goes (a chunk workflow and a plan key) and the
    HMAC that proves a worker made it: a receiver checks it with no journal to look in."""
    import json

    body = base64.urlsafe_b64encode(json.dumps([workflow_id, plan_key, job_id], separators=(",", ":")).encode()).rstrip(b"=")
    mac = hmac.new(key, body, hashlib.sha256).digest()
    return body.decode("ascii") + "." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")


def read_signed(key: bytes, token: str) -> tuple[str, str, str] | None:
    """``(workflow_id, plan_key, job_id)`` of a token :func:`signed_token` made with ``key``, or
    None for anything else (the MAC is compared in constant time)."""
    import binascii
    import json

    body, _, mac = token.partition(".")
    try:
        raw = body.encode("ascii")
        expected = base64.urlsafe_b64encode(hmac.new(key, raw, hashlib.sha256).digest()).rstrip(b"=").decode("ascii")
        if not hmac.compare_digest(expected, mac):
            return None
        found = json.loads(base64.urlsafe_b64decode(raw + b"=" * (-len(raw) % 4)))
    except (UnicodeError, ValueError, binascii.Error):
        return None
    if not (isinstance(found, list) and len(found) == 3 and all(isinstance(part, str) for part in found)):
        return None
    return found[0], found[1], found[2]
