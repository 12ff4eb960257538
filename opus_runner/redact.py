"""Secret masking: the service key and ``secret()`` values never reach output, logs or files.

A value registered here is replaced by ``***`` wherever text leaves the process: log records,
printed payloads, the state journal, result and output files, exception messages. The registry
is process-wide on purpose: once a value was secret in this process it stays masked everywhere,
whichever run or thread later prints it.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

MASK = "***"
# Very short values would mask ordinary words ("a", "on"); they are refused as secrets.
_MIN_LENGTH = 4

_lock = threading.Lock()
_secrets: set[str] = set()
_ordered: list[str] = []  # longest first, so a secret containing another is masked whole


def register(value: str | None) -> None:
    """Mark ``value`` as secret from now on."""
    if not value or len(value) < _MIN_LENGTH:
        return
    with _lock:
        if value in _secrets:
            return
        _secrets.add(value)
        _ordered[:] = sorted(_secrets, key=len, reverse=True)


def is_registered(value: str) -> bool:
    return value in _secrets


def mask(text: str) -> str:
    """Return ``text`` with every registered secret replaced by ``***``."""
    if not _ordered or not isinstance(text, str):
        return text
    for secret in _ordered:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def mask_obj(obj: Any) -> Any:
    """A deep copy of a JSON-like value with every secret masked (keys and values)."""
    if not _ordered:
        return obj
    if isinstance(obj, str):
        return mask(obj)
    if isinstance(obj, dict):
        return {mask(k) if isinstance(k, str) else k: mask_obj(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [mask_obj(v) for v in obj]
    return obj


class MaskingFilter(logging.Filter):
    """A logging filter that masks secrets in the rendered message of every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _ordered:
            record.msg = mask(record.getMessage())
            record.args = None
        return True
