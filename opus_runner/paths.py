"""Paths as users think of them, for messages."""

from __future__ import annotations

import functools
import os
from pathlib import Path


@functools.lru_cache(maxsize=512)
def _display(path: str, cwd: str) -> str:
    if path == cwd or path.startswith(cwd.rstrip(os.sep) + os.sep):
        return os.path.relpath(path, cwd)
    return path


def display_path(path: str | Path) -> str:
    """``path`` relative to the current folder when it lies inside it, else absolute.

    Cached per (path, current folder): error messages and per-job contexts ask for it often.
    """
    return _display(os.path.abspath(path), os.getcwd())
