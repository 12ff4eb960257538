"""Applying a fault rule (faults.py) to one request, in the outer ASGI layer.

Each kind is applied around ``process``, the request's normal handling (key check and route):
some answer instead of it, some run it for real and then spoil, slow or cut the answer.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import math
import struct
import zlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.responses import Response

from .faults import FaultRule
from .responses import error, json_response, phrase

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
#: The request's normal handling, which a fault wraps.
Process = Callable[[Scope, Receive, Send], Awaitable[None]]


class InjectedConnectionDrop(Exception):
    """Raised inside the app to make uvicorn close the connection mid-response (an injected fault)."""


async def _buffered(receive: Receive) -> Receive:
    """Read the whole request body now; return a ``receive`` that hands it out again."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    body = b"".join(chunks)
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


@functools.lru_cache(maxsize=4)


def _gzip_bomb(size: int) -> bytes:
    """A gzip stream of ``size`` spaces (rounded up to whole MiB), about 1 KiB per MiB.

    Deflate blocks after a full flush do not refer back, so one compressed MiB is repeated
    instead of compressing gigabytes; only the CRC is computed over the whole.
    """
    chunk = b" " * (1 << 20)
    count = -(-size // len(chunk))
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    block = compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH)
    end = compressor.flush()
    crc = 0
    for _ in range(count):
        crc = zlib.crc32(chunk, crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    trailer = struct.pack("<II", crc, (count * len(chunk)) & 0xFFFFFFFF)
    return header + block * count + end + trailer


class _BodyTracker:
    """An ASGI ``receive`` that knows whether the request body was read to its end.

    A connection cut while request bytes are unread (or still arriving) is reset (RST) by the
    kernel, and the client may then see a reset instead of the incomplete response we intend;
    so the body is drained before a drop. Draining must stop at the body's end: one more
    ``receive()`` would wait for the client to disconnect.
    """

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self.done = False

    async def __call__(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.disconnect" or not message.get("more_body", False):
            self.done = True
        return message

    async def drain(self) -> None:
        while not self.done:
            await self()


async def apply_fault(
    rule: FaultRule, scope: Scope, receive: Receive, send: Send, process: Process
) -> None:
    """Answer the request as ``rule`` says, instead of or around ``process``."""
    if rule.kind == "delay":
        # The request is taken in whole first, then held: like a slow gateway or server, it
        # is processed late even if the client gave up waiting and closed the connection.
        replay = await _buffered(receive)
        await asyncio.sleep(rule.seconds)
        await process(scope, replay, send)
    elif rule.kind == "lose_response":
        await _lose_response(scope, _BodyTracker(receive), send, process)
    elif rule.kind == "inner_error":
        await _inner_error(rule, scope, _BodyTracker(receive), send, process)
    elif rule.kind == "trickle":
        await _trickle(rule, scope, _BodyTracker(receive), send, process)
    elif rule.kind == "nan":
        await _nan(scope, _BodyTracker(receive), send, process)
    elif rule.kind in ("gzip_bomb", "deep_json"):
        await _hostile_body(rule, scope, _BodyTracker(receive), send)
    else:
        await _inject(rule, scope, _BodyTracker(receive), send, process)


async def _inject(
    rule: FaultRule, scope: Scope, receive: _BodyTracker, send: Send, process: Process
) -> None:
    if rule.process and rule.kind in ("status", "rate_limit"):
        await _capture(scope, receive, process)  # done for real; the gateway's answer wins
    if rule.kind == "drop":
        await receive.drain()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"64")],
            }
        )
        raise InjectedConnectionDrop("connection dropped by an injected fault")
    status = 429 if rule.kind == "rate_limit" else rule.status
    headers = {}
    if rule.kind == "rate_limit" and rule.retry_after is not None:
        headers["retry-after"] = rule.retry_after
    words = phrase(status)
    if rule.body == "json":
        response: Response = error(status, words, words, headers)
    elif rule.body == "html":
        html = (
            f"<html><head><title>{status} {words}</title></head><body>"
            f"<center><h1>{status} {words}</h1></center><hr><center>nginx</center></body></html>"
        )
        response = Response(html, status_code=status, headers=headers, media_type="text/html")
    else:
        response = Response(b"", status_code=status, headers=headers)
    await response(scope, receive, send)


async def _capture(scope: Scope, receive: _BodyTracker, process: Process) -> list[Message]:
    """Process the request for real and return the response messages instead of sending them."""
    captured: list[Message] = []

    async def capture(message: Message) -> None:
        captured.append(message)

    await process(scope, receive, capture)
    await receive.drain()
    return captured


async def _lose_response(scope: Scope, receive: _BodyTracker, send: Send, process: Process) -> None:
    """Process the request for real, then cut the connection before the answer is complete."""
    captured = await _capture(scope, receive, process)
    start = next((m for m in captured if m["type"] == "http.response.start"), None)
    body = b"".join(m.get("body", b"") for m in captured if m["type"] == "http.response.body")
    headers = [(k, v) for k, v in (start or {}).get("headers", []) if k.lower() != b"content-length"]
    # Announce more bytes than will ever come, so the client cannot mistake it for an answer.
    headers.append((b"content-length", str(len(body) + 1).encode()))
    await send(
        {"type": "http.response.start", "status": start["status"] if start else 200, "headers": headers}
    )
    raise InjectedConnectionDrop("response lost by an injected fault")


async def _inner_error(
    rule: FaultRule, scope: Scope, receive: _BodyTracker, send: Send, process: Process
) -> None:
    """Answer a 2xx whose body carries a failure (opus-api.md section 5)."""
    if rule.process:
        await _capture(scope, receive, process)  # the work is done, the answer says it failed
    else:
        await receive.drain()
    if rule.variant == "success_false":
        body: dict[str, Any] = {"success": False, "message": rule.message}
    elif rule.variant == "error_object":
        body = {"error": {"statusCode": rule.inner_status, "message": rule.message}}
    else:
        body = {"statusCode": rule.inner_status, "message": rule.message}
    await json_response(body, rule.status)(scope, receive, send)


async def _trickle(
    rule: FaultRule, scope: Scope, receive: _BodyTracker, send: Send, process: Process
) -> None:
    """Process the request for real, then send the answer one byte every ``rule.seconds``."""
    captured = await _capture(scope, receive, process)
    start = next((m for m in captured if m["type"] == "http.response.start"), None)
    body = b"".join(m.get("body", b"") for m in captured if m["type"] == "http.response.body")
    await send(start or {"type": "http.response.start", "status": 200, "headers": []})

    async def dribble() -> None:
        for index in range(len(body)):
            await asyncio.sleep(rule.seconds)
            await send({"type": "http.response.body", "body": body[index : index + 1], "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    # uvicorn drops writes to a closed connection silently: without watching for the
    # client leaving, a gone client would keep this request alive for len(body) ticks.
    dribbling = asyncio.ensure_future(dribble())
    leaving = asyncio.ensure_future(receive())
    try:
        await asyncio.wait({dribbling, leaving}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (dribbling, leaving):
            task.cancel()
        await asyncio.gather(dribbling, leaving, return_exceptions=True)


async def _nan(scope: Scope, receive: _BodyTracker, send: Send, process: Process) -> None:
    """Process the request for real; answer its 2xx JSON with NaN and infinities for numbers."""
    captured = await _capture(scope, receive, process)
    start = next((m for m in captured if m["type"] == "http.response.start"), None)
    body = b"".join(m.get("body", b"") for m in captured if m["type"] == "http.response.body")
    status = start["status"] if start else 500
    try:
        data = json.loads(body) if 200 <= status < 300 else None
    except ValueError:
        data = None
    if data is None:
        # Nothing numeric to spoil: the real answer goes out unchanged.
        headers = [(k, v) for k, v in (start or {}).get("headers", [])]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})
        return
    spoilers = itertools.cycle((math.nan, math.inf, -math.inf))

    def spoil(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: spoil(v) for k, v in value.items()}
        if isinstance(value, list):
            return [spoil(v) for v in value]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return next(spoilers)
        return value

    text = json.dumps(spoil(data))  # allow_nan (the default) writes the bare literals
    await Response(text, status_code=status, media_type="application/json")(scope, receive, send)


async def _hostile_body(rule: FaultRule, scope: Scope, receive: _BodyTracker, send: Send) -> None:
    """Answer 200 with a gzip bomb or deeply nested JSON; the request is not processed."""
    await receive.drain()
    headers = {}
    if rule.kind == "gzip_bomb":
        body = await asyncio.to_thread(_gzip_bomb, rule.size)  # the CRC takes a second
        headers["content-encoding"] = "gzip"
    else:
        body = b"[" * rule.depth + b"]" * rule.depth
    await Response(body, status_code=200, headers=headers, media_type="application/json")(
        scope, receive, send
    )
