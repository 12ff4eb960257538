"""Secret masking: the service key and ``secret()`` values never reach output, logs or files.

A value registered here is replaced by ``***`` wherever text leaves the process: log records,
printed payloads, the state journal, result and output files, exception messages. The registry
is process-wide on purpose: once a value was secret in this process it stays masked everywhere,
whichever run or thread later prints it.

A value is masked in every form it takes on the way out, not only raw: JSON-escaped (with and
without ``ensure_ascii``), repr-escaped and URL-quoted. Text that is cut for display must be
masked *before* it is cut: a cut through a secret leaves its start, which no form matches.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from typing import Any
from urllib.parse import quote, quote_plus, urlsplit

MASK = "***"
#: Shorter values would mask ordinary words ("a", "on") everywhere, so they cannot be secrets:
#: ``secret()`` refuses them (docs/spec.md) and :func:`register` ignores them.
MIN_LENGTH = 4

_lock = threading.Lock()
_secrets: set[str] = set()
#: every form of every secret, longest first, so a secret containing another is masked whole
_ordered: list[str] = []
_pattern: re.Pattern[str] | None = None


_ESCAPES = (
    lambda v: json.dumps(v)[1:-1],
    lambda v: json.dumps(v, ensure_ascii=False)[1:-1],
    lambda v: repr(v)[1:-1],
    lambda v: ascii(v)[1:-1],
)


def forms(value: str) -> set[str]:
    """The ways ``value`` can be written out: raw, JSON-, repr-, ascii()- and URL-escaped, and
    escaped twice (a server's JSON error quoting a Python repr, JSON text inside a JSON string)."""
    once = {escape(value) for escape in _ESCAPES}
    twice = {escape(form) for form in once for escape in _ESCAPES}
    found = {value, *once, *twice, quote(value, safe=""), quote_plus(value, safe="")}
    return {form for form in found if len(form) >= MIN_LENGTH}


def register(value: str | None) -> None:
    """Mark ``value`` as secret from now on (in every form :func:`forms` gives)."""
    global _pattern
    if not value or not isinstance(value, str) or len(value) < MIN_LENGTH:
        return
    with _lock:
        if value in _secrets:
            return
        _secrets.add(value)
        everything = sorted(set(_ordered) | forms(value), key=len, reverse=True)
        # One pass over the text whatever the number of forms (about 20 for a secret with
        # characters that escape); longest first, so the longest form matching at a place wins.
        _pattern = re.compile("|".join(map(re.escape, everything)))
        _ordered[:] = everything


def register_url_credentials(url: object) -> None:
    """Mark the password in ``url``'s user info (``https://user:pw@host``) as secret, both as
    written and decoded, so the URL can be shown in messages as it was given."""
    try:
        password = urlsplit(str(url)).password
    except ValueError:
        return
    if password:
        from urllib.parse import unquote

        register(password)
        register(unquote(password))


_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/?#\s]*@")


def without_userinfo(text: str) -> str:
    """``text`` with the ``user:password@`` part of every URL in it dropped, whatever the
    password's length (:func:`register` ignores short values; a URL's user info is always secret)."""
    return _USERINFO.sub(r"\g<scheme>", str(text))


def is_registered(value: str) -> bool:
    return value in _secrets


def mask(text: str) -> str:
    """Return ``text`` with every registered secret replaced by ``***``."""
    pattern = _pattern
    if pattern is None or not isinstance(text, str):
        return text
    return pattern.sub(MASK, text)


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
